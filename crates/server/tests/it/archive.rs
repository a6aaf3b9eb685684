//! The message archive (XEP-0313) and stanza-ids (XEP-0359) over real sockets: what is
//! archived for whom, paging, preferences, hints, and forged ids.

use outpost_proto::minidom::Element;
use outpost_testkit::*;

async fn users(server: &TestServer) {
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    server.add_user("carol", "singer").await;
}

fn bodies(results: &[(String, Element)]) -> Vec<String> {
    results.iter().filter_map(|(_, m)| body(m)).collect()
}

fn fin(iq: &Element) -> &Element {
    assert_eq!(iq.attr("type"), Some("result"), "{iq:?}");
    iq.get_child("fin", NS_MAM).expect("<fin/>")
}

fn complete(iq: &Element) -> bool {
    fin(iq).attr("complete") == Some("true")
}

fn rsm(iq: &Element, name: &str) -> Option<String> {
    fin(iq)
        .get_child("set", NS_RSM)
        .and_then(|s| s.get_child(name, NS_RSM))
        .map(Element::text)
}

fn form(fields: &[(&str, &str)]) -> String {
    let fields: String = fields
        .iter()
        .map(|(var, value)| format!("<field var='{var}'><value>{value}</value></field>"))
        .collect();
    format!(
        "<x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>{fields}</x>"
    )
}

fn stanza_id_of(el: &Element, by: &str) -> Option<String> {
    el.children()
        .filter(|c| c.is("stanza-id", NS_SID))
        .find(|c| c.attr("by") == Some(by))
        .and_then(|c| c.attr("id"))
        .map(str::to_owned)
}

/// Sends `n` chats from `from` to `to`, numbered, and waits until they are handled.
async fn send_numbered(from: &mut Client, to: &str, prefix: &str, n: usize) {
    for i in 0..n {
        from.send(&chat(to, &format!("{prefix}{i}"))).await;
    }
    assert!(from.barrier().await.is_empty());
}

#[tokio::test]
async fn both_ends_archive_a_message_under_the_stanza_id_the_recipient_saw() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;

    alice.send(&chat("bob@localhost", "hello bob")).await;
    let live = bob.recv_message().await;
    let id = stanza_id_of(&live, "bob@localhost").expect("a stanza-id from bob's archive");
    // Delivered at once, archived in the next group commit: a query right after the live
    // message waits for that commit, so the id the recipient saw is always found.
    let (theirs, done) = bob.mam(None, "").await;
    assert!(complete(&done));
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].0, id, "the archive id is the live stanza-id");
    let archived = &theirs[0].1;
    assert_eq!(body(archived).as_deref(), Some("hello bob"));
    assert_eq!(archived.attr("from"), Some("alice@localhost/phone"));
    assert_eq!(archived.attr("to"), Some("bob@localhost"));

    let (mine, _) = alice.mam(None, "").await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].0, id, "one id in both archives");
    // The result carries when the server received it.
    let (_, iq) = alice.mam(None, &form(&[("with", "bob@localhost")])).await;
    assert_eq!(rsm(&iq, "first").as_deref(), Some(id.as_str()));
    let (other, _) = alice.mam(None, &form(&[("with", "carol@localhost")])).await;
    assert!(other.is_empty());
    // Carol's archive has nothing of theirs.
    let mut carol = server.login("carol", "singer", "tab").await;
    let (hers, done) = carol.mam(None, "").await;
    assert!(hers.is_empty() && complete(&done));
}

#[tokio::test]
async fn pages_forwards_and_backwards_with_rsm() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    send_numbered(&mut alice, "bob@localhost", "m", 7).await;

    let page = |set: &str| format!("<set xmlns='{NS_RSM}'>{set}</set>");
    let (first, iq) = alice.mam(None, &page("<max>3</max>")).await;
    assert_eq!(bodies(&first), ["m0", "m1", "m2"]);
    assert!(!complete(&iq));
    let last = rsm(&iq, "last").unwrap();
    let (second, iq) = alice
        .mam(None, &page(&format!("<max>3</max><after>{last}</after>")))
        .await;
    assert_eq!(bodies(&second), ["m3", "m4", "m5"]);
    let last = rsm(&iq, "last").unwrap();
    let (third, iq) = alice
        .mam(None, &page(&format!("<max>3</max><after>{last}</after>")))
        .await;
    assert_eq!(bodies(&third), ["m6"]);
    assert!(complete(&iq));

    // The last page, then the one before it: oldest first within each page.
    let (end, iq) = alice.mam(None, &page("<max>3</max><before/>")).await;
    assert_eq!(bodies(&end), ["m4", "m5", "m6"]);
    assert!(!complete(&iq));
    let first_id = rsm(&iq, "first").unwrap();
    let (before, _) = alice
        .mam(
            None,
            &page(&format!("<max>3</max><before>{first_id}</before>")),
        )
        .await;
    assert_eq!(bodies(&before), ["m1", "m2", "m3"]);
    let (flipped, _) = alice
        .mam(
            None,
            &format!("{}<flip-page/>", page("<max>2</max><before/>")),
        )
        .await;
    assert_eq!(bodies(&flipped), ["m6", "m5"]);

    // By id range, and by ids (the extended fields).
    let ids: Vec<String> = first.iter().map(|(id, _)| id.clone()).collect();
    let (between, _) = alice
        .mam(
            None,
            &form(&[("after-id", &ids[0]), ("before-id", &ids[2])]),
        )
        .await;
    assert_eq!(bodies(&between), ["m1"]);
    let two_ids = form(&[]).replace(
        "</x>",
        &format!(
            "<field var='ids'><value>{}</value><value>{}</value></field></x>",
            ids[2], ids[0]
        ),
    );
    let (picked, _) = alice.mam(None, &two_ids).await;
    assert_eq!(bodies(&picked), ["m2", "m0"]);

    // A cursor that names no message is item-not-found, so clients can heal stale ones.
    let (none, iq) = alice.mam(None, &page("<after>0000000000000</after>")).await;
    assert!(none.is_empty());
    assert_eq!(stanza_error(&iq).0, "item-not-found");
    let (_, iq) = alice.mam(None, &page("<after>garbage</after>")).await;
    assert_eq!(stanza_error(&iq).0, "item-not-found");
}

#[tokio::test]
async fn time_ranges_and_the_form_and_metadata() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    send_numbered(&mut alice, "bob@localhost", "t", 3).await;

    let (all, _) = alice
        .mam(None, &form(&[("start", "2000-01-01T00:00:00Z")]))
        .await;
    assert_eq!(bodies(&all), ["t0", "t1", "t2"]);
    let (none, iq) = alice
        .mam(None, &form(&[("end", "2000-01-01T00:00:00Z")]))
        .await;
    assert!(none.is_empty() && complete(&iq));
    let (_, iq) = alice.mam(None, &form(&[("start", "last tuesday")])).await;
    assert_eq!(stanza_error(&iq).0, "bad-request");

    let reply = alice
        .query("get", None, "<query xmlns='urn:xmpp:mam:2'/>")
        .await;
    let vars: Vec<&str> = reply
        .get_child("query", NS_MAM)
        .and_then(|q| q.get_child("x", "jabber:x:data"))
        .map(|x| x.children().filter_map(|f| f.attr("var")).collect())
        .unwrap_or_default();
    for var in [
        "FORM_TYPE",
        "with",
        "start",
        "end",
        "before-id",
        "after-id",
        "ids",
    ] {
        assert!(vars.contains(&var), "{var} missing from {reply:?}");
    }

    let meta = alice
        .query("get", None, "<metadata xmlns='urn:xmpp:mam:2'/>")
        .await;
    let meta = meta.get_child("metadata", NS_MAM).expect("metadata");
    let start = meta.get_child("start", NS_MAM).expect("start");
    let end = meta.get_child("end", NS_MAM).expect("end");
    assert_eq!(start.attr("id"), Some(all[0].0.as_str()));
    assert_eq!(end.attr("id"), Some(all[2].0.as_str()));
    assert!(start.attr("timestamp").is_some_and(|t| t.ends_with('Z')));

    let disco = alice
        .query(
            "get",
            Some("alice@localhost"),
            &format!("<query xmlns='{NS_DISCO_INFO}'/>"),
        )
        .await;
    let features: Vec<&str> = disco
        .get_child("query", NS_DISCO_INFO)
        .map(|q| q.children().filter_map(|f| f.attr("var")).collect())
        .unwrap_or_default();
    for f in [NS_MAM, "urn:xmpp:mam:2#extended", NS_SID] {
        assert!(features.contains(&f), "{f} missing from {disco:?}");
    }
}

#[tokio::test]
async fn preferences_decide_per_contact_and_per_side() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;

    // Alice keeps nothing but what she exchanges with carol.
    let set = alice
        .query(
            "set",
            None,
            "<prefs xmlns='urn:xmpp:mam:2' default='never'>\
             <always><jid>carol@localhost</jid></always><never/></prefs>",
        )
        .await;
    let prefs = set.get_child("prefs", NS_MAM).expect("prefs echoed");
    assert_eq!(prefs.attr("default"), Some("never"));
    alice
        .send(&chat("bob@localhost", "not for alice's archive"))
        .await;
    alice.send(&chat("carol@localhost", "kept")).await;
    let live = bob.recv_message().await;
    assert!(stanza_id_of(&live, "bob@localhost").is_some());
    assert!(alice.barrier().await.is_empty());
    let (mine, _) = alice.mam(None, "").await;
    assert_eq!(bodies(&mine), ["kept"]);
    // Bob's preferences are his own: he still keeps it.
    let (his, _) = bob.mam(None, "").await;
    assert_eq!(bodies(&his), ["not for alice's archive"]);

    let got = alice
        .query("get", None, "<prefs xmlns='urn:xmpp:mam:2'/>")
        .await;
    let prefs = got.get_child("prefs", NS_MAM).expect("prefs");
    assert_eq!(prefs.attr("default"), Some("never"));
    let always = prefs.get_child("always", NS_MAM).expect("always");
    assert_eq!(
        always.children().map(Element::text).collect::<Vec<_>>(),
        ["carol@localhost"]
    );

    // "roster": only contacts. Bob is not in alice's roster; after adding him, he is.
    alice
        .query(
            "set",
            None,
            "<prefs xmlns='urn:xmpp:mam:2' default='roster'/>",
        )
        .await;
    alice.send(&chat("bob@localhost", "stranger")).await;
    alice
        .query(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'><item jid='bob@localhost'/></query>",
        )
        .await;
    alice.send(&chat("bob@localhost", "contact")).await;
    assert!(alice.barrier().await.iter().all(|e| e.name() != "message"));
    let (mine, _) = alice.mam(None, "").await;
    assert_eq!(bodies(&mine), ["kept", "contact"]);

    let bad = alice
        .query(
            "set",
            None,
            "<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>",
        )
        .await;
    assert_eq!(stanza_error(&bad).0, "bad-request");
}

#[tokio::test]
async fn hints_and_chat_states_decide_what_is_stored() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let hinted = |hint: &str, text: &str| {
        format!(
            "<message to='bob@localhost' type='chat' id='{text}'><body>{text}</body>\
             <{hint} xmlns='urn:xmpp:hints'/></message>"
        )
    };
    // Bob is offline: no-store cannot be delivered at all, no-permanent-store waits in
    // the offline store but not in the archive, a bare chat state is dropped.
    alice.send(&hinted("no-store", "nowhere")).await;
    let error = alice.recv_message().await;
    assert_eq!(stanza_error(&error).0, "service-unavailable");
    alice.send(&hinted("no-permanent-store", "fleeting")).await;
    alice
        .send(
            "<message to='bob@localhost' type='chat'>\
             <composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        )
        .await;
    alice.send(&hinted("store", "kept")).await;
    assert!(alice.barrier().await.is_empty());
    let (mine, _) = alice.mam(None, "").await;
    assert_eq!(bodies(&mine), ["kept"]);

    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;
    let a = bob.recv_message().await;
    let b = bob.recv_message().await;
    assert_eq!(
        (body(&a).as_deref(), body(&b).as_deref()),
        (Some("fleeting"), Some("kept"))
    );
    // The offline copy carries the same stanza-id as the archive.
    let (his, _) = bob.mam(None, "").await;
    assert_eq!(stanza_id_of(&b, "bob@localhost"), Some(his[0].0.clone()));
    bob.assert_quiet().await;
}

#[tokio::test]
async fn forged_stanza_ids_are_removed_and_others_kept() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;
    alice
        .send(
            "<message to='bob@localhost' type='chat'><body>forged</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='fake'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='localhost' id='fake2'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='room@elsewhere.example' id='theirs'/></message>",
        )
        .await;
    let got = bob.recv_message().await;
    let ids: Vec<(&str, &str)> = got
        .children()
        .filter(|c| c.is("stanza-id", NS_SID))
        .map(|c| (c.attr("by").unwrap_or(""), c.attr("id").unwrap_or("")))
        .collect();
    assert_eq!(ids.len(), 2, "{got:?}");
    assert!(ids.contains(&("room@elsewhere.example", "theirs")));
    assert!(
        ids.iter()
            .any(|(by, id)| *by == "bob@localhost" && *id != "fake")
    );
}

#[tokio::test]
async fn removing_an_account_removes_its_archive() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    send_numbered(&mut alice, "bob@localhost", "r", 2).await;
    let reply = alice
        .query(
            "set",
            None,
            "<query xmlns='jabber:iq:register'><remove/></query>",
        )
        .await;
    assert_eq!(reply.attr("type"), Some("result"));
    server.add_user("alice", "again").await;
    let mut alice = server.login("alice", "again", "phone").await;
    let (mine, done) = alice.mam(None, "").await;
    assert!(mine.is_empty() && complete(&done));
    // Bob keeps his side.
    let mut bob = server.login("bob", "builder", "pc").await;
    let (his, _) = bob.mam(None, "").await;
    assert_eq!(bodies(&his), ["r0", "r1"]);
}

#[tokio::test]
async fn archive_off_keeps_nothing_and_is_not_offered() {
    let server = TestServer::start_with(|c| c.archive.enabled = false).await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;
    alice.send(&chat("bob@localhost", "unarchived")).await;
    let live = bob.recv_message().await;
    assert_eq!(stanza_id_of(&live, "bob@localhost"), None);
    let (his, iq) = bob.mam(None, "").await;
    assert!(his.is_empty());
    assert_eq!(stanza_error(&iq).0, "service-unavailable");
    let disco = bob
        .query("get", None, &format!("<query xmlns='{NS_DISCO_INFO}'/>"))
        .await;
    let q = disco.get_child("query", NS_DISCO_INFO).expect("disco");
    assert!(
        q.children().all(|f| f.attr("var") != Some(NS_MAM)),
        "{disco:?}"
    );
}
