//! Message routing (RFC 6121 §8) and offline storage (XEP-0160) over real sockets.

use outpost_proto::minidom::Element;
use outpost_testkit::*;

async fn users(server: &TestServer) {
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
}

fn is_message_from_alice(el: &Element) -> bool {
    el.name() == "message" && el.attr("from") == Some("alice@localhost/phone")
}

#[tokio::test]
async fn message_to_a_full_jid_reaches_only_that_resource() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob_pc = server.login("bob", "builder", "pc").await;
    let mut bob_phone = server.login("bob", "builder", "phone").await;
    bob_pc.available_with_priority(1).await;
    bob_phone.available_with_priority(10).await;

    // Even to the lower-priority resource: a full JID is exact (RFC 6121 §8.5.3.1).
    alice.send(&chat("bob@localhost/pc", "just you")).await;
    let got = bob_pc.recv_message().await;
    assert!(is_message(&got, "alice@localhost/phone", "just you"));
    assert_eq!(got.attr("to"), Some("bob@localhost/pc"));
    bob_phone
        .assert_none_before_ping(is_message_from_alice, "message")
        .await;
}

#[tokio::test]
async fn message_to_a_bare_jid_goes_to_the_highest_priority() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob_pc = server.login("bob", "builder", "pc").await;
    let mut bob_phone = server.login("bob", "builder", "phone").await;
    bob_pc.available_with_priority(5).await;
    bob_phone.available_with_priority(1).await;

    // RFC 6121 §8.5.2.1.1: the most available resource only.
    alice.send(&chat("bob@localhost", "to the best")).await;
    let got = bob_pc.recv_message().await;
    assert!(is_message(&got, "alice@localhost/phone", "to the best"));
    bob_phone
        .assert_none_before_ping(is_message_from_alice, "message")
        .await;

    // Equal priorities: every one of them (the server's choice, allowed by the RFC).
    bob_phone.available_with_priority(5).await;
    alice.send(&chat("bob@localhost", "to both")).await;
    for bob in [&mut bob_pc, &mut bob_phone] {
        let got = bob.recv_message().await;
        assert!(
            is_message(&got, "alice@localhost/phone", "to both"),
            "{got:?}"
        );
    }
}

#[tokio::test]
async fn negative_priority_gets_nothing_by_bare_jid() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob_bot = server.login("bob", "builder", "bot").await;
    bob_bot.available_with_priority(-1).await;

    // RFC 6121 §8.5.2.1.1: a negative priority never receives messages to the bare JID;
    // with no other resource the message is stored as if the user were offline.
    alice.send(&chat("bob@localhost", "for a human")).await;
    alice.assert_quiet().await; // no error bounced
    bob_bot
        .assert_none_before_ping(is_message_from_alice, "message")
        .await;
    // To the full JID it does arrive.
    alice.send(&chat("bob@localhost/bot", "for the bot")).await;
    let got = bob_bot.recv_message().await;
    assert!(is_message(&got, "alice@localhost/phone", "for the bot"));

    // A resource with non-negative priority gets the stored one.
    let mut bob_pc = server.login("bob", "builder", "pc").await;
    bob_pc.available().await;
    let got = bob_pc.recv_message().await;
    assert!(is_message(&got, "alice@localhost/phone", "for a human"));
    assert!(got.has_child("delay", NS_DELAY));
}

#[tokio::test]
async fn message_to_an_unbound_full_jid_falls_back_to_the_bare_jid() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;
    // RFC 6121 §8.5.3.2.1: chat to a resource that is not there goes to the bare JID.
    alice
        .send(&chat("bob@localhost/gone", "wherever you are"))
        .await;
    let got = bob.recv_message().await;
    assert!(is_message(
        &got,
        "alice@localhost/phone",
        "wherever you are"
    ));
}

#[tokio::test]
async fn headline_goes_to_every_non_negative_resource_and_is_not_stored() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob_pc = server.login("bob", "builder", "pc").await;
    let mut bob_phone = server.login("bob", "builder", "phone").await;
    let mut bob_bot = server.login("bob", "builder", "bot").await;
    bob_pc.available_with_priority(5).await;
    bob_phone.available_with_priority(0).await;
    bob_bot.available_with_priority(-5).await;

    // RFC 6121 §8.5.2.1.1: headlines go to all resources with non-negative priority.
    alice
        .send("<message to='bob@localhost' type='headline'><body>news</body></message>")
        .await;
    for bob in [&mut bob_pc, &mut bob_phone] {
        let got = bob.recv_message().await;
        assert!(is_message(&got, "alice@localhost/phone", "news"));
    }
    bob_bot
        .assert_none_before_ping(is_message_from_alice, "headline")
        .await;

    // §8.5.2.2.1: with nobody online a headline is dropped silently, not stored.
    server.add_user("carol", "secret").await;
    alice
        .send("<message to='carol@localhost' type='headline'><body>old news</body></message>")
        .await;
    alice.assert_quiet().await;
    let mut carol = server.login("carol", "secret", "pc").await;
    carol.available().await;
    carol
        .assert_none_before_ping(|el| el.name() == "message", "stored headline")
        .await;
}

#[tokio::test]
async fn message_to_a_nonexistent_user_bounces() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    alice
        .send("<message to='nobody@localhost' id='m1' type='chat'><body>hello?</body></message>")
        .await;
    let err = alice.recv_message().await;
    assert_eq!(err.attr("id"), Some("m1"));
    assert_eq!(err.attr("from"), Some("nobody@localhost"));
    assert_eq!(err.attr("to"), Some("alice@localhost/phone"));
    assert_eq!(
        stanza_error(&err),
        ("service-unavailable".to_owned(), "cancel".to_owned())
    );
}

#[tokio::test]
async fn message_to_a_remote_domain_gets_remote_server_not_found() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    alice
        .send("<message to='bob@elsewhere.example' id='m2'><body>hi</body></message>")
        .await;
    let err = alice.recv_message().await;
    assert_eq!(err.attr("id"), Some("m2"));
    assert_eq!(stanza_error(&err).0, "remote-server-not-found");
}

#[tokio::test]
async fn offline_messages_are_delivered_in_order_once() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    for i in 1..=3 {
        alice
            .send(&chat("bob@localhost", &format!("offline {i}")))
            .await;
    }
    alice.assert_quiet().await; // stored, not bounced

    let mut bob = server.login("bob", "builder", "pc").await;
    // Nothing before available presence (XEP-0160 §3).
    bob.assert_quiet().await;
    bob.send("<presence/>").await;
    for i in 1..=3 {
        let got = bob.recv_message().await;
        assert!(
            is_message(&got, "alice@localhost/phone", &format!("offline {i}")),
            "{got:?}"
        );
        let delay = got.get_child("delay", NS_DELAY).expect("XEP-0203 delay");
        assert_eq!(delay.attr("from"), Some("localhost"));
        assert!(delay.attr("stamp").is_some_and(|s| s.ends_with('Z')));
    }
    bob.assert_none_before_ping(|el| el.name() == "message", "message")
        .await;
    bob.close().await;

    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;
    bob.assert_none_before_ping(|el| el.name() == "message", "message again")
        .await;
}

#[tokio::test]
async fn messages_stored_while_unavailable_arrive_when_available_again() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;

    // Connected but unavailable (RFC 6121 §4.5): messages to the bare JID are stored ...
    bob.presence("<presence type='unavailable'/>").await;
    alice.send(&chat("bob@localhost", "while away")).await;
    alice.assert_quiet().await;
    bob.assert_none_before_ping(|el| el.name() == "message", "message")
        .await;
    // ... and delivered when this session is available again (XEP-0160 §3).
    bob.send("<presence/>").await;
    let got = bob.recv_message().await;
    assert!(is_message(&got, "alice@localhost/phone", "while away"));
    assert!(got.has_child("delay", NS_DELAY));

    // The same for a priority that went negative and back.
    bob.available_with_priority(-1).await;
    alice.send(&chat("bob@localhost", "while hidden")).await;
    alice.assert_quiet().await;
    bob.assert_none_before_ping(|el| el.name() == "message", "message")
        .await;
    bob.send("<presence><priority>1</priority></presence>")
        .await;
    let got = bob.recv_message().await;
    assert!(is_message(&got, "alice@localhost/phone", "while hidden"));
}

#[tokio::test]
async fn offline_quota_bounces_the_excess() {
    let server = TestServer::start_with(|c| c.limits.offline_quota = 3).await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    for i in 1..=3 {
        alice.send(&chat("bob@localhost", &format!("q{i}"))).await;
    }
    alice.assert_quiet().await;
    alice
        .send("<message to='bob@localhost' id='q4' type='chat'><body>q4</body></message>")
        .await;
    let err = alice.recv_message().await;
    assert_eq!(err.attr("id"), Some("q4"));
    assert_eq!(stanza_error(&err).0, "resource-constraint");

    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;
    for i in 1..=3 {
        let got = bob.recv_message().await;
        assert_eq!(body(&got), Some(format!("q{i}")));
    }
    bob.assert_none_before_ping(|el| el.name() == "message", "message")
        .await;
}

#[tokio::test]
async fn chat_states_alone_are_not_stored() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    alice
        .send(
            "<message to='bob@localhost' type='chat'>\
             <composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        )
        .await;
    alice.send(&chat("bob@localhost", "real one")).await;
    alice.assert_quiet().await;

    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;
    let got = bob.recv_message().await;
    assert!(
        is_message(&got, "alice@localhost/phone", "real one"),
        "{got:?}"
    );
    bob.assert_none_before_ping(|el| el.name() == "message", "message")
        .await;
}

/// About 10 KiB of text with XML's special characters and characters outside ASCII.
fn tricky_text() -> String {
    let unit = "<tag attr=\"x\"> & 'quote' ]]> Grüße 日本語 😀 \u{200d}\t";
    let mut s = String::new();
    while s.len() < 10 * 1024 {
        s.push_str(unit);
    }
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[tokio::test]
async fn large_unicode_body_arrives_intact() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let text = tricky_text();
    let xml = chat("bob@localhost", &escape(&text));

    // Offline: through the store.
    alice.send(&xml).await;
    alice.assert_quiet().await;
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;
    let got = bob.recv_message().await;
    assert!(body(&got) == Some(text.clone()), "offline body changed");

    // Online: straight through the router.
    alice.send(&xml).await;
    let got = bob.recv_message().await;
    assert!(body(&got) == Some(text), "online body changed");
}

#[tokio::test]
async fn offline_message_survives_a_restart() {
    let mut server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    alice.send(&chat("bob@localhost", "kept on disk")).await;
    alice.assert_quiet().await;
    let ((), _) = tokio::join!(server.stop(), alice.expect_close());

    server.restart().await;
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;
    let got = bob.recv_message().await;
    assert!(is_message(&got, "alice@localhost/phone", "kept on disk"));
    assert!(got.has_child("delay", NS_DELAY));
    bob.assert_none_before_ping(|el| el.name() == "message", "message")
        .await;
}

#[tokio::test]
async fn message_without_to_goes_to_own_account() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut phone = server.login("alice", "wonderland", "phone").await;
    let mut pc = server.login("alice", "wonderland", "pc").await;
    phone.available().await;
    pc.available().await;
    // RFC 6120 §10.3.1: no `to` means the sender's bare JID.
    phone
        .send("<message type='chat'><body>note to self</body></message>")
        .await;
    for c in [&mut phone, &mut pc] {
        let got = c.recv_message().await;
        assert!(is_message(&got, "alice@localhost/phone", "note to self"));
    }
}
