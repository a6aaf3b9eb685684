//! Federation (RFC 6120 server-to-server, XEP-0220 dialback, XEP-0198 acknowledgements)
//! between two servers in one process, `a.test` and `b.test`, on loopback.

use outpost_proto::s2s::dialback_key;
use outpost_proto::xml::XmlEvent;
use outpost_server::config::Config;
use outpost_testkit::*;

const SECRET_A: &str = "a-test-dialback-secret";

/// A federated server for `domain`. Peers are introduced by address; DNS is asked nothing
/// but `dns`, a loopback server that knows no names, so no test reaches a real one.
fn federated(
    domain: &'static str,
    require_tls: bool,
    dns: std::net::SocketAddr,
) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.domains = vec![domain.to_owned()];
        c.federation.srv_lookup = false;
        c.federation.dns_server = Some(dns);
        c.listen.s2s = vec!["127.0.0.1:0".parse().expect("addr")];
        c.federation.enabled = true;
        c.federation.require_tls = require_tls;
        c.federation.retry_initial_secs = 1;
        c.federation.retry_max_secs = 2;
        c.federation.probe_interval_secs = 1;
        if domain == "a.test" {
            c.federation.dialback_secret = Some(SECRET_A.to_owned());
        }
    }
}

/// Tells each server where the other one listens now.
fn introduce(a: &TestServer, b: &TestServer) {
    let addr = |s: &TestServer| -> outpost_server::config::HostPort {
        s.s2s.expect("s2s listener").into()
    };
    a.handle
        .as_ref()
        .expect("a")
        .set_peer_address("b.test", addr(b));
    b.handle
        .as_ref()
        .expect("b")
        .set_peer_address("a.test", addr(a));
}

async fn pair(require_tls: bool) -> (TestServer, TestServer) {
    let dns = dns::DnsServer::start().await;
    let a = TestServer::start_with(federated("a.test", require_tls, dns.addr)).await;
    let b = TestServer::start_with(federated("b.test", require_tls, dns.addr)).await;
    introduce(&a, &b);
    a.add_user("alice", "wonderland").await;
    b.add_user("bob", "builder").await;
    (a, b)
}

#[tokio::test]
async fn chat_crosses_servers_both_ways_over_tls() {
    let (a, b) = pair(true).await;
    let mut alice = a.login("alice", "wonderland", "phone").await;
    let mut bob = b.login("bob", "builder", "pc").await;
    alice.available().await;
    bob.available().await;

    alice.send(&chat("bob@b.test", "hello across")).await;
    let got = bob
        .recv_where(|el| is_chat_from(el, "alice@a.test/phone"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("hello across"));
    assert_eq!(got.attr("to"), Some("bob@b.test"));
    // The sending server gave it an origin-id for deduplication (XEP-0359).
    assert!(got.has_child("origin-id", "urn:xmpp:sid:0"));

    bob.send(&chat("alice@a.test/phone", "hello back")).await;
    let got = alice
        .recv_where(|el| is_chat_from(el, "bob@b.test/pc"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("hello back"));

    // Acknowledged stanzas leave the queue (XEP-0198 between Outpost servers).
    a.wait_for_empty_outbox("b.test").await;
    b.wait_for_empty_outbox("a.test").await;
}

#[tokio::test]
async fn messages_for_a_down_peer_arrive_once_in_order_after_it_restarts() {
    let (a, mut b) = pair(true).await;
    let mut alice = a.login("alice", "wonderland", "phone").await;
    alice.available().await;
    b.stop().await;

    for i in 0..5 {
        alice
            .send(&chat("bob@b.test", &format!("queued {i}")))
            .await;
    }
    // Accepted, not bounced: the queue holds them.
    alice
        .assert_none_before_ping(|el| el.attr("type") == Some("error"), "an error")
        .await;
    let queued = a
        .store
        .outbox_peek("a.test", "b.test", None, 10)
        .await
        .expect("peek");
    assert_eq!(queued.len(), 5);

    // B comes back on the same database, at a new address.
    b.restart().await;
    introduce(&a, &b);
    a.wait_for_empty_outbox("b.test").await;

    let mut bob = b.login("bob", "builder", "pc").await;
    bob.available().await;
    for i in 0..5 {
        let got = bob
            .recv_where(|el| is_chat_from(el, "alice@a.test/phone"))
            .await;
        assert_eq!(body(&got), Some(format!("queued {i}")));
    }
    bob.assert_none_before_ping(|el| el.name() == "message", "a duplicate")
        .await;
}

/// Opens an s2s stream to `server` by hand, claiming `from`, and returns the client and the
/// stream id the server gave.
async fn raw_s2s(server: &TestServer, from: &str) -> (Client, String) {
    let tcp = tokio::net::TcpStream::connect(server.s2s.expect("s2s"))
        .await
        .expect("connect");
    let mut c = Client::new(Box::new(tcp));
    c.send(&format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' \
         version='1.0' from='{from}' to='{}'>",
        server.domain()
    ))
    .await;
    let id = match c.next_event().await {
        Some(XmlEvent::StreamOpen(h)) => h.id.expect("stream id"),
        other => panic!("expected a header, got {other:?}"),
    };
    let features = c.recv().await;
    assert!(features.has_child("dialback", "urn:xmpp:features:dialback"));
    (c, id)
}

#[tokio::test]
async fn a_peer_proven_by_dialback_cannot_send_for_another_domain() {
    // Plaintext, so the test can speak the stream itself.
    let (a, b) = pair(false).await;
    let mut bob = b.login("bob", "builder", "pc").await;
    bob.available().await;

    // We claim a.test with the key a.test's server would compute; b.test checks it with
    // a.test's real server (XEP-0220 §2.1.2), which confirms it.
    let (mut peer, id) = raw_s2s(&b, "a.test").await;
    let key = dialback_key(SECRET_A, "b.test", "a.test", &id);
    peer.send(&format!(
        "<db:result from='a.test' to='b.test'>{key}</db:result>"
    ))
    .await;
    let verdict = peer.recv().await;
    assert_eq!(verdict.name(), "result");
    assert_eq!(verdict.attr("type"), Some("valid"));

    peer.send(
        "<message xmlns='jabber:server' from='mallory@a.test/x' to='bob@b.test' type='chat'>\
         <body>proven</body></message>",
    )
    .await;
    let got = bob
        .recv_where(|el| is_chat_from(el, "mallory@a.test/x"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("proven"));

    // RFC 6120 §4.9.3.9: a from domain the stream did not prove ends it.
    peer.send(
        "<message xmlns='jabber:server' from='eve@c.test/x' to='bob@b.test' type='chat'>\
         <body>spoofed</body></message>",
    )
    .await;
    assert_eq!(peer.expect_stream_error().await, "invalid-from");
    bob.assert_none_before_ping(|el| is_chat_from(el, "eve@c.test/x"), "the spoofed message")
        .await;
    drop(a);
}

#[tokio::test]
async fn a_wrong_dialback_key_is_refused_and_garbage_harms_no_link() {
    let (a, b) = pair(false).await;
    let (mut liar, _) = raw_s2s(&b, "a.test").await;
    liar.send("<db:result from='a.test' to='b.test'>0123456789abcdef</db:result>")
        .await;
    let verdict = liar.recv().await;
    assert_eq!(verdict.attr("type"), Some("invalid"));

    let (mut garbage, _) = raw_s2s(&b, "a.test").await;
    garbage.send("<<<not xml").await;
    assert_eq!(garbage.expect_stream_error().await, "not-well-formed");

    // The real link between the servers still works.
    let mut alice = a.login("alice", "wonderland", "phone").await;
    let mut bob = b.login("bob", "builder", "pc").await;
    bob.available().await;
    alice.send(&chat("bob@b.test", "still fine")).await;
    let got = bob
        .recv_where(|el| is_chat_from(el, "alice@a.test/phone"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("still fine"));
}

#[tokio::test]
async fn subscription_and_presence_cross_servers() {
    let (a, b) = pair(true).await;
    let mut alice = a.login("alice", "wonderland", "phone").await;
    let mut bob = b.login("bob", "builder", "pc").await;
    alice.roster_get().await;
    bob.roster_get().await;
    alice.available().await;
    bob.available().await;

    alice
        .send("<presence to='bob@b.test' type='subscribe'/>")
        .await;
    let request = bob
        .recv_where(|el| el.name() == "presence" && el.attr("type") == Some("subscribe"))
        .await;
    assert_eq!(request.attr("from"), Some("alice@a.test"));
    // Alice's own roster shows the pending request first (RFC 6121 §3.1.2).
    let item = alice.recv_roster_push("bob@b.test").await;
    assert_eq!(item.attr("ask"), Some("subscribe"));

    bob.send("<presence to='alice@a.test' type='subscribed'/>")
        .await;
    let item = alice.recv_roster_push("bob@b.test").await;
    assert_eq!(item.attr("subscription"), Some("to"));
    // Bob's server announces his presence once the subscription is approved (RFC 6121
    // §3.1.5).
    alice.recv_presence_from("bob@b.test/pc").await;
}

#[tokio::test]
async fn users_of_other_servers_get_the_answers_local_users_get() {
    let (a, b) = pair(true).await;
    let mut bob = b.login("bob", "builder", "pc").await;
    let features = |reply: &outpost_proto::minidom::Element| -> Vec<String> {
        reply
            .get_child("query", NS_DISCO_INFO)
            .map(|q| {
                q.children()
                    .filter_map(|f| f.attr("var").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    // The server: discovery, version, ping.
    let disco = bob
        .query(
            "get",
            Some("a.test"),
            &format!("<query xmlns='{NS_DISCO_INFO}'/>"),
        )
        .await;
    assert_eq!(disco.attr("type"), Some("result"), "{disco:?}");
    assert_eq!(disco.attr("from"), Some("a.test"));
    assert!(features(&disco).contains(&NS_PING.to_owned()), "{disco:?}");
    let items = bob
        .query(
            "get",
            Some("a.test"),
            &format!("<query xmlns='{NS_DISCO_ITEMS}'/>"),
        )
        .await;
    assert_eq!(items.attr("type"), Some("result"), "{items:?}");
    let version = bob
        .query(
            "get",
            Some("a.test"),
            &format!("<query xmlns='{NS_VERSION}'/>"),
        )
        .await;
    assert!(
        version.get_child("query", NS_VERSION).is_some(),
        "{version:?}"
    );
    // A user's bare JID: discovery, vCard, ping.
    let alice = a.login("alice", "wonderland", "phone").await;
    let mut card_setter = alice;
    card_setter
        .query(
            "set",
            None,
            "<vCard xmlns='vcard-temp'><FN>Alice</FN></vCard>",
        )
        .await;
    let disco = bob
        .query(
            "get",
            Some("alice@a.test"),
            &format!("<query xmlns='{NS_DISCO_INFO}'/>"),
        )
        .await;
    assert_eq!(disco.attr("from"), Some("alice@a.test"));
    let identity = disco
        .get_child("query", NS_DISCO_INFO)
        .and_then(|q| q.get_child("identity", NS_DISCO_INFO))
        .expect("an identity");
    assert_eq!(identity.attr("category"), Some("account"));
    let card = bob
        .query("get", Some("alice@a.test"), "<vCard xmlns='vcard-temp'/>")
        .await;
    let fn_ = card
        .get_child("vCard", NS_VCARD)
        .and_then(|v| v.get_child("FN", NS_VCARD))
        .map(|f| f.text());
    assert_eq!(fn_.as_deref(), Some("Alice"));
    let ping = bob
        .query(
            "get",
            Some("alice@a.test"),
            &format!("<ping xmlns='{NS_PING}'/>"),
        )
        .await;
    assert_eq!(ping.attr("type"), Some("result"), "{ping:?}");
    // Nobody answers for an account that does not exist.
    let nobody = bob
        .query("get", Some("nobody@a.test"), "<vCard xmlns='vcard-temp'/>")
        .await;
    assert_eq!(stanza_error(&nobody).0, "service-unavailable");
}

/// A room on a.test with an occupant on b.test: they talk across; when b.test cannot reach
/// the room, a.test's occupants go on talking, and what bob said meanwhile reaches the
/// room once the link is back, once and in order.
#[tokio::test]
async fn a_room_with_an_occupant_on_another_server_survives_a_cut() {
    const ROOM: &str = "lobby@conference.a.test";
    let (a, b) = pair(true).await;
    // b.test reaches the room's service through a link the test can cut.
    let wan = relay::Relay::start(a.s2s.expect("s2s")).await;
    let b_handle = b.handle.as_ref().expect("b");
    b_handle.set_peer_address("conference.a.test", wan.addr.into());
    let mut alice = a.login("alice", "wonderland", "phone").await;
    let mut bob = b.login("bob", "builder", "pc").await;
    let join = |nick: &str| {
        format!(
            "<presence to='{ROOM}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        )
    };
    let until_subject = |el: &outpost_proto::minidom::Element| el.has_child("subject", NS_CLIENT);
    alice.send(&join("alice")).await;
    alice.recv_until(until_subject).await;
    let instant = "<query xmlns='http://jabber.org/protocol/muc#owner'>\
                   <x xmlns='jabber:x:data' type='submit'/></query>";
    assert_eq!(
        alice.query("set", Some(ROOM), instant).await.attr("type"),
        Some("result")
    );
    bob.send(&join("bob")).await;
    let got = bob.recv_until(until_subject).await;
    assert!(
        got.iter()
            .any(|p| p.attr("from") == Some("lobby@conference.a.test/alice")),
        "{got:?}"
    );
    let said = |text: String| {
        move |el: &outpost_proto::minidom::Element| {
            el.attr("type") == Some("groupchat") && body(el).as_deref() == Some(text.as_str())
        }
    };
    let groupchat =
        |text: &str| format!("<message to='{ROOM}' type='groupchat'><body>{text}</body></message>");
    bob.send(&groupchat("hello from b")).await;
    alice.recv_where(said("hello from b".into())).await;

    // b.test loses its way to the room.
    wan.cut();
    for i in 0..3 {
        bob.send(&groupchat(&format!("cut {i}"))).await;
    }
    assert!(
        bob.barrier()
            .await
            .iter()
            .all(|el| el.attr("type") != Some("error"))
    );
    // Alice's side goes on, and bob still hears it (the room reaches b.test).
    alice.send(&groupchat("still here")).await;
    alice.recv_where(said("still here".into())).await;
    bob.recv_where(said("still here".into())).await;

    wan.heal();
    let got = alice.recv_until(said("cut 2".into())).await;
    let cut: Vec<String> = got
        .iter()
        .filter_map(|el| body(el).filter(|b| b.starts_with("cut ")))
        .collect();
    assert_eq!(cut, ["cut 0", "cut 1", "cut 2"], "once, in order");
}
