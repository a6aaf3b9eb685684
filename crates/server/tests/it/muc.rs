//! Multi-user chat (XEP-0045) over real sockets: creating and configuring rooms, talking,
//! history, the room archive (XEP-0313), self-ping (XEP-0410), persistence across a
//! restart, and occupants on another server across a WAN cut.

use outpost_proto::minidom::Element;
use outpost_testkit::*;

const ROOM: &str = "lobby@conference.localhost";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";

async fn users(server: &TestServer) {
    for (u, p) in [
        ("alice", "wonderland"),
        ("bob", "builder"),
        ("carol", "singer"),
    ] {
        server.add_user(u, p).await;
    }
}

fn status_codes(p: &Element) -> Vec<String> {
    p.get_child("x", NS_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.is("status", NS_USER))
                .filter_map(|c| c.attr("code").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Joins `room` as `nick` and reads up to the subject, which ends the join (§7.2.16).
async fn join(c: &mut Client, room: &str, nick: &str, extra: &str) -> Vec<Element> {
    c.send(&format!(
        "<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'>{extra}</x></presence>"
    ))
    .await;
    c.recv_until(|el| el.has_child("subject", NS_CLIENT) || el.attr("type") == Some("error"))
        .await
}

/// Alice creates the room and accepts the default configuration (an instant room).
async fn create(alice: &mut Client, room: &str, fields: &str) {
    let got = join(alice, room, "alice", "").await;
    let own = got
        .iter()
        .find(|el| el.name() == "presence" && status_codes(el).contains(&"110".to_owned()))
        .expect("own presence");
    assert!(
        status_codes(own).contains(&"201".to_owned()),
        "created: {own:?}"
    );
    let reply = alice
        .query(
            "set",
            Some(room),
            &format!(
                "<query xmlns='{NS_OWNER}'><x xmlns='jabber:x:data' type='submit'>{fields}</x></query>"
            ),
        )
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
}

fn field(var: &str, value: &str) -> String {
    format!("<field var='muc#roomconfig_{var}'><value>{value}</value></field>")
}

fn groupchat(room: &str, id: &str, text: &str) -> String {
    format!("<message to='{room}' type='groupchat' id='{id}'><body>{text}</body></message>")
}

async fn said(c: &mut Client, text: &str) -> Element {
    c.recv_where(|el| el.attr("type") == Some("groupchat") && body(el).as_deref() == Some(text))
        .await
}

#[tokio::test]
async fn rooms_are_created_joined_and_talked_in() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    // The server lists its chat service, which says what it is.
    let items = alice
        .query(
            "get",
            Some("localhost"),
            &format!("<query xmlns='{NS_DISCO_ITEMS}'/>"),
        )
        .await;
    let services: Vec<&str> = items
        .get_child("query", NS_DISCO_ITEMS)
        .map(|q| q.children().filter_map(|i| i.attr("jid")).collect())
        .unwrap_or_default();
    assert!(services.contains(&"conference.localhost"), "{items:?}");
    create(&mut alice, ROOM, "").await;
    let got = join(&mut bob, ROOM, "bob", "").await;
    assert!(
        got.iter()
            .any(|p| p.attr("from") == Some("lobby@conference.localhost/alice"))
    );
    alice
        .recv_presence_from("lobby@conference.localhost/bob")
        .await;

    bob.send(&groupchat(ROOM, "b1", "hello room")).await;
    for c in [&mut alice, &mut bob] {
        let m = said(c, "hello room").await;
        assert_eq!(m.attr("from"), Some("lobby@conference.localhost/bob"));
        assert_eq!(m.attr("id"), Some("b1"), "stable ids");
        let sid = m.get_child("stanza-id", NS_SID).expect("a stanza-id");
        assert_eq!(sid.attr("by"), Some(ROOM));
    }
    // A newcomer gets the history, then the subject.
    let mut carol = server.login("carol", "singer", "tab").await;
    let got = join(&mut carol, ROOM, "carol", "").await;
    let history: Vec<&Element> = got.iter().filter(|el| body(el).is_some()).collect();
    assert_eq!(history.len(), 1);
    assert!(history[0].has_child("delay", NS_DELAY));
    // The room's archive holds it for its occupants.
    let (results, fin) = carol.mam(Some(ROOM), "").await;
    assert_eq!(fin.attr("type"), Some("result"), "{fin:?}");
    assert_eq!(results.len(), 1);
    assert_eq!(body(&results[0].1).as_deref(), Some("hello room"));
    // Private messages go to the occupant, marked by the room.
    alice
        .send(
            "<message to='lobby@conference.localhost/bob' type='chat'><body>psst</body></message>",
        )
        .await;
    let pm = bob
        .recv_where(|el| body(el).as_deref() == Some("psst"))
        .await;
    assert_eq!(pm.attr("from"), Some("lobby@conference.localhost/alice"));
    assert!(pm.has_child("x", NS_USER));
}

#[tokio::test]
async fn self_ping_and_leaving() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    create(&mut alice, ROOM, "").await;
    let pong = alice
        .query(
            "get",
            Some("lobby@conference.localhost/alice"),
            &format!("<ping xmlns='{NS_PING}'/>"),
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"), "{pong:?}");
    let mut bob = server.login("bob", "builder", "pc").await;
    let refused = bob
        .query(
            "get",
            Some("lobby@conference.localhost/alice"),
            &format!("<ping xmlns='{NS_PING}'/>"),
        )
        .await;
    assert_eq!(stanza_error(&refused).0, "not-acceptable");
    // Alice leaves the temporary room: it is gone, and joining again creates it anew.
    alice
        .send("<presence to='lobby@conference.localhost/alice' type='unavailable'/>")
        .await;
    let gone = alice
        .recv_where(|el| el.name() == "presence" && el.attr("type") == Some("unavailable"))
        .await;
    assert!(status_codes(&gone).contains(&"110".to_owned()));
    let again = join(&mut bob, ROOM, "bob", "").await;
    assert!(
        again
            .iter()
            .any(|p| status_codes(p).contains(&"201".to_owned()))
    );
}

#[tokio::test]
async fn members_only_rooms_and_bans_hold_across_a_restart() {
    let mut server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    create(
        &mut alice,
        ROOM,
        &format!(
            "{}{}{}",
            field("persistentroom", "1"),
            field("membersonly", "1"),
            field("roomname", "Lobby")
        ),
    )
    .await;
    alice
        .query(
            "set",
            Some(ROOM),
            "<query xmlns='http://jabber.org/protocol/muc#admin'>\
             <item jid='bob@localhost' affiliation='member'/>\
             <item jid='carol@localhost' affiliation='outcast'/></query>",
        )
        .await;
    alice
        .send(&groupchat(ROOM, "a1", "before the restart"))
        .await;
    said(&mut alice, "before the restart").await;
    drop(alice);
    server.restart().await;

    let mut bob = server.login("bob", "builder", "pc").await;
    let got = join(&mut bob, ROOM, "bob", "").await;
    assert!(
        got.iter().all(|el| el.attr("type") != Some("error")),
        "{got:?}"
    );
    let history: Vec<Option<String>> = got.iter().filter_map(|el| body(el).map(Some)).collect();
    assert_eq!(history, [Some("before the restart".to_owned())]);
    let mut carol = server.login("carol", "singer", "tab").await;
    let refused = join(&mut carol, ROOM, "carol", "").await;
    assert_eq!(stanza_error(refused.last().unwrap()).0, "forbidden");
    // The room is listed by name.
    let items = bob
        .query(
            "get",
            Some("conference.localhost"),
            &format!("<query xmlns='{NS_DISCO_ITEMS}'/>"),
        )
        .await;
    let names: Vec<&str> = items
        .get_child("query", NS_DISCO_ITEMS)
        .map(|q| q.children().filter_map(|i| i.attr("name")).collect())
        .unwrap_or_default();
    assert_eq!(names, ["Lobby"]);
}

#[tokio::test]
async fn kicking_and_a_client_that_vanishes() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    create(&mut alice, ROOM, "").await;
    join(&mut bob, ROOM, "bob", "").await;
    let reply = alice
        .query(
            "set",
            Some(ROOM),
            "<query xmlns='http://jabber.org/protocol/muc#admin'><item nick='bob' role='none'><reason>spam</reason></item></query>",
        )
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let kicked = bob
        .recv_where(|el| el.name() == "presence" && el.attr("type") == Some("unavailable"))
        .await;
    assert!(
        status_codes(&kicked).contains(&"307".to_owned()),
        "{kicked:?}"
    );
    // Carol's client disappears without leaving: her session's end leaves the room for
    // her, and alice sees it.
    let mut carol = server.login("carol", "singer", "tab").await;
    join(&mut carol, ROOM, "carol", "").await;
    drop(carol);
    let left = alice
        .recv_where(|el| {
            el.attr("from") == Some("lobby@conference.localhost/carol")
                && el.attr("type") == Some("unavailable")
        })
        .await;
    assert_eq!(left.name(), "presence");
}
