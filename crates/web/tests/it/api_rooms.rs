//! Group chat and files through the HTTP API: a REST user and an XMPP user in one room,
//! rooms that come back at the next login (bookmarks), and a file uploaded through an API
//! slot and shared in a message.

use outpost_testkit::*;
use serde_json::{Value, json};

use crate::api::{Events, assert_problem, call, events, get, json_of, login, server_with};
use crate::http::request;

const ROOM: &str = "tea@conference.localhost";

/// The resource (in a room, the nickname) of a full JID.
fn nick_of(from: &str) -> &str {
    from.split_once('/').map_or("", |(_, nick)| nick)
}

/// `token`'s user enters `room` as `nick`; the room as the API answers.
async fn join(server: &TestServer, token: &str, room: &str, nick: &str) -> Value {
    let body = json!({"jid": room, "nick": nick});
    let reply = call(server, "POST", "/api/v1/rooms", Some(token), Some(body)).await;
    assert_eq!(
        reply.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    json_of(&reply)
}

/// Bob (XMPP) enters the room and sees its occupants come in, himself last.
async fn xmpp_join(bob: &mut Client, room: &str, nick: &str) {
    bob.send(&format!(
        "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    bob.recv_where(|p| {
        p.name() == "presence"
            && p.attr("from") == Some(&format!("{room}/{nick}"))
            && p.get_child("x", "http://jabber.org/protocol/muc#user")
                .is_some_and(|x| x.children().any(|s| s.attr("code") == Some("110")))
    })
    .await;
}

/// The next `occupant` event about `nick`.
async fn occupant_event(stream: &mut Events, nick: &str) -> Value {
    loop {
        let e = stream.next_of("occupant").await;
        if e.data["nick"] == nick {
            return e.data;
        }
    }
}

#[tokio::test]
async fn a_rest_user_and_an_xmpp_user_talk_in_a_room() {
    let server = server_with(|_| {}).await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    server.add_user("carol", "singer").await;
    let token = login(&server, "alice@localhost", "wonderland").await;
    let mut stream = events(&server, &token, None).await;

    // Alice makes the room by entering it: she is its owner, and in it.
    let room = join(&server, &token, ROOM, "alice").await;
    assert_eq!(room["joined"], true, "{room}");
    assert_eq!(room["nick"], "alice");
    let me = &room["occupants"][0];
    assert_eq!(
        (me["nick"].as_str(), me["affiliation"].as_str()),
        (Some("alice"), Some("owner")),
        "{room}"
    );

    let mut bob = server.login("bob", "builder", "pc").await;
    xmpp_join(&mut bob, ROOM, "bob").await;
    let came = occupant_event(&mut stream, "bob").await;
    let shown = get(&server, &format!("/api/v1/rooms/{ROOM}"), &token).await;
    let nicks: Vec<&str> = (shown["occupants"].as_array().unwrap().iter())
        .map(|o| o["nick"].as_str().unwrap())
        .collect();
    assert_eq!(nicks, ["alice", "bob"], "{shown}");
    assert_eq!(
        (came["presence"].as_str(), came["self"].as_bool()),
        (Some("available"), Some(false))
    );

    let path = format!("/api/v1/rooms/{ROOM}/messages");
    talk(&server, &token, &mut stream, &mut bob, &path).await;

    refusals(&server, &path).await;

    // Alice leaves: bob sees her go, and her list is empty.
    let left = call(
        &server,
        "DELETE",
        &format!("/api/v1/rooms/{ROOM}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(left.status.as_u16(), 204);
    let gone = bob
        .recv_where(|p| p.name() == "presence" && p.attr("type") == Some("unavailable"))
        .await;
    assert_eq!(gone.attr("from").map(nick_of), Some("alice"));
    assert_eq!(get(&server, "/api/v1/rooms", &token).await, json!([]));
    let again = call(
        &server,
        "POST",
        &path,
        Some(&token),
        Some(json!({"body": "still here?"})),
    )
    .await;
    assert_problem(&again, 409, "not-joined");
}

/// Bob (XMPP) and alice (REST) say something each in the room; both see both, and the
/// room's archive has them.
async fn talk(server: &TestServer, token: &str, stream: &mut Events, bob: &mut Client, path: &str) {
    // Bob speaks; alice's stream has it, with the room and his nickname.
    bob.send(&format!(
        "<message to='{ROOM}' type='groupchat' id='b1'><body>hello room</body></message>"
    ))
    .await;
    let said = stream.next_of("groupchat").await;
    assert_eq!(
        (said.data["room"].as_str(), said.data["nick"].as_str()),
        (Some(ROOM), Some("bob"))
    );
    assert_eq!(said.data["body"], "hello room");
    assert!(said.data["stanza_id"].is_string(), "{:?}", said.data);

    // Alice answers over REST: bob gets it from her occupant JID, with her id, and her
    // own stream has it back from the room.
    let reply = call(
        server,
        "POST",
        path,
        Some(token),
        Some(json!({"body": "hi bob"})),
    )
    .await;
    let sent = json_of(&reply);
    assert_eq!(sent["state"], "delivered", "{sent}");
    // (Bob's own message comes back to him first.)
    let alice_in_room = format!("{ROOM}/alice");
    let got = bob
        .recv_where(|m| m.name() == "message" && m.attr("from") == Some(&alice_in_room))
        .await;
    assert_eq!(got.attr("id"), sent["id"].as_str());
    let mine = stream.next_of("groupchat").await;
    assert_eq!(
        (mine.data["nick"].as_str(), mine.data["id"].as_str()),
        (Some("alice"), sent["id"].as_str())
    );

    // The room's archive has both, oldest first, with who said them.
    let page = get(server, path, token).await;
    let said: Vec<(&str, &str)> = (page["messages"].as_array().unwrap().iter())
        .map(|m| (m["nick"].as_str().unwrap(), m["body"].as_str().unwrap()))
        .collect();
    assert_eq!(said, [("bob", "hello room"), ("alice", "hi bob")], "{page}");
    assert_eq!(page["messages"][1]["message_id"], sent["id"]);
}

/// What a room refuses: a nickname in use, an address that is a user's, a message from
/// someone not in it.
async fn refusals(server: &TestServer, path: &str) {
    let carol = login(server, "carol@localhost", "singer").await;
    let taken = json!({"jid": ROOM, "nick": "bob"});
    let reply = call(server, "POST", "/api/v1/rooms", Some(&carol), Some(taken)).await;
    assert_problem(&reply, 409, "conflict");
    let user = json!({"jid": "bob@localhost"});
    let reply = call(server, "POST", "/api/v1/rooms", Some(&carol), Some(user)).await;
    assert_problem(&reply, 400, "bad-request");
    let reply = call(
        server,
        "POST",
        path,
        Some(&carol),
        Some(json!({"body": "let me in"})),
    )
    .await;
    assert_problem(&reply, 409, "not-joined");
    assert_eq!(get(server, "/api/v1/rooms", &carol).await, json!([]));
}

#[tokio::test]
async fn rooms_come_back_at_the_next_login() {
    let server = server_with(|_| {}).await;
    server.add_user("alice", "wonderland").await;
    let first = login(&server, "alice@localhost", "wonderland").await;
    join(&server, &first, ROOM, "ali").await;
    let out = call(&server, "POST", "/api/v1/logout", Some(&first), None).await;
    assert_eq!(out.status.as_u16(), 204);

    // Her XMPP client finds the room among her bookmarks (XEP-0402).
    let mut xmpp = server.login("alice", "wonderland", "phone").await;
    let items = xmpp
        .query(
            "get",
            None,
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <items node='urn:xmpp:bookmarks:1'/></pubsub>",
        )
        .await;
    let item = items
        .get_child("pubsub", "http://jabber.org/protocol/pubsub")
        .and_then(|p| p.get_child("items", "http://jabber.org/protocol/pubsub"))
        .and_then(|i| i.get_child("item", "http://jabber.org/protocol/pubsub"))
        .expect("a bookmark");
    assert_eq!(item.attr("id"), Some(ROOM));
    let conference = item
        .get_child("conference", "urn:xmpp:bookmarks:1")
        .expect("a conference");
    assert_eq!(conference.attr("autojoin"), Some("true"));

    // A new session enters it again by itself, under the same nickname.
    let second = login(&server, "alice@localhost", "wonderland").await;
    let mut stream = events(&server, &second, None).await;
    let back = occupant_event(&mut stream, "ali").await;
    assert_eq!(back["self"], true, "{back}");
    let rooms = get(&server, "/api/v1/rooms", &second).await;
    assert_eq!(
        (rooms[0]["jid"].as_str(), rooms[0]["joined"].as_bool()),
        (Some(ROOM), Some(true)),
        "{rooms}"
    );
}

#[tokio::test]
async fn a_file_goes_up_through_a_slot_and_out_in_a_message() {
    let server = server_with(|c| c.upload.max_file_bytes = 1000).await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let token = login(&server, "alice@localhost", "wonderland").await;
    let me = get(&server, "/api/v1/me", &token).await;
    assert_eq!(
        (me["upload"].as_bool(), me["rooms_service"].as_str()),
        (Some(true), Some("conference.localhost"))
    );

    let file: Vec<u8> = (0..=255u8).cycle().take(700).collect();
    let ask = json!({"filename": "notes.bin", "size": file.len(), "content_type": "application/octet-stream"});
    let reply = call(&server, "POST", "/api/v1/uploads", Some(&token), Some(ask)).await;
    assert_eq!(
        reply.status.as_u16(),
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let slot = json_of(&reply);
    let mut headers = vec![("content-type", "application/octet-stream")];
    let put_headers = slot["put_headers"].as_object().expect("headers");
    headers.extend(
        put_headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap())),
    );
    let put = request(
        &server,
        "PUT",
        slot["put_path"].as_str().unwrap(),
        &headers,
        file.clone(),
    )
    .await;
    assert_eq!(put.status.as_u16(), 201);

    // Shared in a message: bob gets the URL out of band, and the bytes behind it.
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;
    let url = slot["get_url"].as_str().unwrap();
    let send = json!({"to": "bob@localhost", "body": url, "url": url});
    let reply = call(
        &server,
        "POST",
        "/api/v1/messages",
        Some(&token),
        Some(send),
    )
    .await;
    assert_eq!(reply.status.as_u16(), 200);
    let got = bob
        .recv_where(|m| m.name() == "message" && m.has_child("body", "jabber:client"))
        .await;
    let oob = got
        .get_child("x", "jabber:x:oob")
        .and_then(|x| x.get_child("url", "jabber:x:oob"));
    assert_eq!(oob.map(|u| u.text()).as_deref(), Some(url));
    let path = &url[url.find("/upload/").expect("an upload URL")..];
    let fetched = request(&server, "GET", path, &[], vec![]).await;
    assert_eq!(fetched.body, file);
    let history = get(&server, "/api/v1/messages?with=bob@localhost", &token).await;
    assert_eq!(history["messages"][0]["url"], url, "{history}");

    // Too large, and a name with a slash, are refused before any slot is made.
    let big = json!({"filename": "big.bin", "size": 1001});
    let reply = call(&server, "POST", "/api/v1/uploads", Some(&token), Some(big)).await;
    assert_problem(&reply, 413, "file-too-large");
    let bad = json!({"filename": "../etc/passwd", "size": 10});
    let reply = call(&server, "POST", "/api/v1/uploads", Some(&token), Some(bad)).await;
    assert_problem(&reply, 400, "bad-request");
    let not_web = json!({"to": "bob@localhost", "body": "x", "url": "file:///etc/passwd"});
    let reply = call(
        &server,
        "POST",
        "/api/v1/messages",
        Some(&token),
        Some(not_web),
    )
    .await;
    assert_problem(&reply, 400, "bad-request");
}
