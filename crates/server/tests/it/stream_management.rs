//! Stream management for clients (XEP-0198) and client state indication (XEP-0352) over
//! real sockets: acknowledgements, resumption after a connection dies mid-burst, what
//! becomes of unacknowledged messages when nobody resumes, and what an inactive client is
//! spared.

use std::time::Duration;

use outpost_proto::minidom::Element;
use outpost_testkit::*;

async fn users(server: &TestServer) {
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    server.add_user("carol", "singer").await;
}

/// Bob logged in with stream management, acknowledgements held back so that the server
/// keeps everything it sent him, and available.
async fn managed_bob(server: &TestServer) -> (Client, String) {
    let mut bob = server.login("bob", "builder", "pc").await;
    let enabled = bob.enable_sm().await;
    assert_eq!(enabled.name(), "enabled", "{enabled:?}");
    assert_eq!(enabled.attr("resume"), Some("true"));
    let id = enabled.attr("id").expect("a resumption id").to_owned();
    if let Some(sm) = bob.sm.as_mut() {
        sm.auto_ack = false;
    }
    bob.available().await;
    (bob, id)
}

/// A new connection for bob, authenticated and not bound.
async fn bob_again(server: &TestServer) -> Client {
    let mut c = server.connect_starttls().await;
    c.auth_plain("bob", "builder").await.expect("auth");
    c
}

/// Waits until the server has this many sessions (one ended, or stopped waiting).
async fn sessions_left(server: &TestServer, n: usize) {
    let handle = server.handle.as_ref().expect("running");
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        match handle.session_count() {
            c if c == n => Ok(()),
            c => Err(format!("{c} sessions")),
        }
    })
    .await;
}

/// Waits until bob's offline store holds `n` messages.
async fn offline_for_bob(server: &TestServer, n: u64) {
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        match server.store.count_offline("bob@localhost").await {
            Ok(c) if c == n => Ok(()),
            other => Err(format!("{other:?} offline")),
        }
    })
    .await;
}

fn number(el: &Element) -> Option<usize> {
    body(el)?.strip_prefix("m")?.parse().ok()
}

async fn send_numbered(alice: &mut Client, range: std::ops::Range<usize>) {
    for i in range {
        alice
            .send(&chat("bob@localhost/pc", &format!("m{i}")))
            .await;
    }
    assert!(alice.barrier().await.is_empty());
}

#[tokio::test]
async fn acknowledgements_flow_both_ways() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut bob = server.login("bob", "builder", "pc").await;
    let features = bob.features.clone().expect("features");
    assert!(features.has_child("sm", NS_SM), "{features:?}");
    assert!(features.has_child("csi", NS_CSI), "{features:?}");
    let enabled = bob.enable_sm().await;
    // The server's window, five minutes by default.
    assert_eq!(enabled.attr("max"), Some("300"));
    bob.available().await;
    bob.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    let a = bob.recv_stashing(|el| el.is("a", NS_SM)).await;
    // The presence is the one stanza the server handled since <enable/>.
    assert_eq!(a.attr("h"), Some("1"));
    let mut alice = server.login("alice", "wonderland", "phone").await;
    send_numbered(&mut alice, 0..3).await;
    for _ in 0..3 {
        bob.recv_message().await;
    }
    // The client answers the server's <r/> on its own; a ping round trip later the
    // server holds nothing unacknowledged, which a stream that ends now shows: nothing
    // goes to the offline store.
    bob.barrier().await;
    bob.send("<presence type='unavailable'/></stream:stream>")
        .await;
    bob.expect_close().await;
    sessions_left(&server, 1).await;
    assert_eq!(
        server.store.count_offline("bob@localhost").await.unwrap(),
        0
    );
}

/// A client may pipeline its first stanzas behind `<enable/>`: they count, and only they.
#[tokio::test]
async fn stanzas_written_with_enable_are_counted() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.send("<enable xmlns='urn:xmpp:sm:3'/><presence/><r xmlns='urn:xmpp:sm:3'/>")
        .await;
    let enabled = bob.recv_stashing(|el| el.is("enabled", NS_SM)).await;
    assert_eq!(enabled.attr("resume"), None, "{enabled:?}");
    let a = bob.recv_stashing(|el| el.is("a", NS_SM)).await;
    assert_eq!(a.attr("h"), Some("1"), "{a:?}");
}

#[tokio::test]
async fn a_client_cut_mid_burst_resumes_and_gets_every_message_once() {
    let server = TestServer::start().await;
    users(&server).await;
    let (mut bob, previd) = managed_bob(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    send_numbered(&mut alice, 0..50).await;
    let mut first = Vec::new();
    while first.len() < 20 {
        if let Some(n) = number(&bob.recv_message().await) {
            first.push(n);
        }
    }
    let h = bob.sm.expect("managed").h;
    // The TCP connection dies with 30 messages unread (and none acknowledged).
    drop(bob);
    // More arrive while nobody is connected.
    send_numbered(&mut alice, 50..60).await;

    let mut bob = bob_again(&server).await;
    let resumed = bob.resume(&previd, h, "bob@localhost/pc").await;
    assert_eq!(resumed.name(), "resumed", "{resumed:?}");
    assert_eq!(resumed.attr("previd"), Some(previd.as_str()));
    let got = bob.recv_until(|el| number(el) == Some(59)).await;
    let rest: Vec<usize> = got.iter().filter_map(number).collect();
    let all: Vec<usize> = first.iter().chain(&rest).copied().collect();
    assert_eq!(
        all,
        (0..60).collect::<Vec<_>>(),
        "every message once, in order"
    );
    // The resumed stream is the old session: still bound, still available.
    send_numbered(&mut alice, 60..61).await;
    assert_eq!(number(&bob.recv_message().await), Some(60));
    assert_eq!(server.handle.as_ref().expect("running").session_count(), 2);
}

#[tokio::test]
async fn resuming_while_the_old_connection_seems_alive_takes_it_over() {
    let server = TestServer::start().await;
    users(&server).await;
    let (mut old, previd) = managed_bob(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    send_numbered(&mut alice, 0..3).await;
    // The old connection is half-open: the client moved on without reading.
    let mut new = bob_again(&server).await;
    let resumed = new.resume(&previd, 1, "bob@localhost/pc").await;
    assert_eq!(resumed.name(), "resumed", "{resumed:?}");
    let got = new.recv_until(|el| number(el) == Some(2)).await;
    assert_eq!(got.iter().filter_map(number).collect::<Vec<_>>(), [0, 1, 2]);
    // The old one is told it was replaced (XEP-0198 §5).
    assert_eq!(old.expect_close().await.as_deref(), Some("conflict"));
}

#[tokio::test]
async fn unacknowledged_messages_go_offline_when_nobody_resumes() {
    let server = TestServer::start_with(|c| c.stream_management.resume_timeout_secs = 1).await;
    users(&server).await;
    let mut bob = server.login("bob", "builder", "pc").await;
    let enabled = bob.enable_sm().await;
    assert_eq!(enabled.attr("max"), Some("1"));
    if let Some(sm) = bob.sm.as_mut() {
        sm.auto_ack = false;
    }
    bob.available().await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    send_numbered(&mut alice, 0..5).await;
    for _ in 0..5 {
        bob.recv_message().await;
    }
    drop(bob);
    // The window ends; the five unacknowledged messages are stored for bob.
    offline_for_bob(&server, 5).await;

    let mut bob = server.login("bob", "builder", "tablet").await;
    bob.available().await;
    let mut got = Vec::new();
    while got.len() < 5 {
        let el = bob.recv_message().await;
        let stamp = el
            .get_child("delay", NS_DELAY)
            .and_then(|d| d.attr("stamp"))
            .expect("a delay stamp")
            .to_owned();
        got.push((number(&el).expect("numbered"), stamp));
    }
    assert_eq!(
        got.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    // One stamp each, from when the server first had them: not all the same second as
    // the hand-on a second later, and in order.
    let at = |stamp: &str| -> (String, u32) {
        // XEP-0082: the fraction of a second is optional ("…:01Z" is before "…:01.001Z").
        let stamp = stamp.trim_end_matches('Z');
        let (secs, frac) = stamp.split_once('.').unwrap_or((stamp, "0"));
        let nanos = format!("{frac:0<9}")
            .parse()
            .expect("a fraction of a second");
        (secs.to_owned(), nanos)
    };
    assert!(
        got.windows(2).all(|w| at(&w[0].1) <= at(&w[1].1)),
        "{got:?}"
    );
    // Resuming after the window is refused, with the count the old stream reached.
    let mut late = bob_again(&server).await;
    let failed = late.resume("whatever", 0, "bob@localhost/pc").await;
    assert_eq!(failed.name(), "failed");
    assert!(failed.has_child("item-not-found", NS_STANZAS));
}

#[tokio::test]
async fn a_resumption_id_is_good_only_for_its_owner_and_its_window() {
    let server = TestServer::start_with(|c| c.stream_management.resume_timeout_secs = 1).await;
    users(&server).await;
    let (bob, previd) = managed_bob(&server).await;
    drop(bob);
    let mut carol = server.connect_starttls().await;
    carol.auth_plain("carol", "singer").await.expect("auth");
    let failed = carol.resume(&previd, 0, "carol@localhost/x").await;
    assert_eq!(failed.name(), "failed", "{failed:?}");
    assert!(failed.has_child("item-not-found", NS_STANZAS));
    assert_eq!(
        failed.attr("h"),
        None,
        "carol learns nothing of bob's stream"
    );
    // The refused stream may still bind.
    carol.bind("x").await;

    // Once the window is over, bob's own late resumption learns the old count.
    sessions_left(&server, 1).await;
    let mut bob = bob_again(&server).await;
    let failed = bob.resume(&previd, 0, "bob@localhost/pc").await;
    assert_eq!(failed.name(), "failed", "{failed:?}");
    assert_eq!(
        failed.attr("h"),
        Some("1"),
        "the presence bob sent was handled"
    );
}

#[tokio::test]
async fn a_clean_close_hands_unacknowledged_messages_on_too() {
    let server = TestServer::start().await;
    users(&server).await;
    let (mut bob, _) = managed_bob(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    send_numbered(&mut alice, 0..2).await;
    bob.recv_message().await;
    bob.send("</stream:stream>").await;
    bob.expect_close().await;
    offline_for_bob(&server, 2).await;
}

#[tokio::test]
async fn an_inactive_client_gets_presence_late_and_messages_at_once() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.enable_sm().await;
    bob.available().await;
    bob.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    // Directed presence and a chat state are not urgent: they wait.
    alice.send("<presence to='bob@localhost/pc'/>").await;
    alice
        .send(
            "<message to='bob@localhost/pc' type='chat'>\
             <composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        )
        .await;
    assert!(alice.barrier().await.is_empty());
    let quiet = tokio::time::timeout(Duration::from_millis(300), bob.recv()).await;
    assert!(quiet.is_err(), "an inactive client was woken: {quiet:?}");
    // A message with a body is: it comes with what was held, in order.
    alice.send(&chat("bob@localhost/pc", "wake up")).await;
    let got = bob
        .recv_until(|el| body(el).as_deref() == Some("wake up"))
        .await;
    let kinds: Vec<&str> = got.iter().map(|el| el.name()).collect();
    assert_eq!(kinds, ["presence", "message", "message"], "{got:?}");
    // Active again: everything at once.
    bob.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    alice
        .send("<presence to='bob@localhost/pc' type='unavailable'/>")
        .await;
    let presence = bob.recv_where(|el| el.name() == "presence").await;
    assert_eq!(presence.attr("type"), Some("unavailable"));
}
