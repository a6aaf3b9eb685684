//! How links reach their peers: through a hub when sites cannot reach each other, with
//! pinned or self-signed certificates and SASL EXTERNAL, and what a link does when it
//! comes back (presence re-probed). Three servers in one process on loopback.

use outpost_proto::xml::XmlEvent;
use outpost_server::LinkState;
use outpost_server::config::{Config, HostPort};
use outpost_store::{RosterItem, Subscription};
use outpost_testkit::*;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::Digest as _;

const HUB: &str = "h.test";

fn site(domain: &'static str, hub: Option<&'static str>) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.domains = vec![domain.to_owned()];
        c.listen.s2s = vec!["127.0.0.1:0".parse().expect("addr")];
        c.federation.enabled = true;
        // Every peer has an address; should a name still be looked up, the question goes
        // to a loopback port where nothing answers, never to a real DNS server.
        c.federation.srv_lookup = false;
        c.federation.dns_server = Some("127.0.0.1:9".parse().expect("addr"));
        c.federation.retry_initial_secs = 1;
        c.federation.retry_max_secs = 2;
        c.federation.probe_interval_secs = 1;
        c.federation.hub = hub.map(str::to_owned);
        // The tests here give links their paths after the servers start, while a
        // replicating site opens its link to the hub at once (with the paths it had then):
        // replication has its own tests.
        c.federation.replicate = false;
    }
}

fn s2s(server: &TestServer) -> HostPort {
    server.s2s.expect("s2s listener").into()
}

fn handle(server: &TestServer) -> &outpost_server::ServerHandle {
    server.handle.as_ref().expect("running")
}

/// alice@a.test sends `n` numbered messages to carol@c.test, who must get each once, in
/// order.
async fn alice_to_carol_once_in_order(
    alice: &mut Client,
    carol: &mut Client,
    text: &str,
    n: usize,
) {
    for i in 0..n {
        alice
            .send(&chat("carol@c.test", &format!("{text} {i}")))
            .await;
    }
    for i in 0..n {
        let got = carol
            .recv_where(|el| is_chat_from(el, "alice@a.test/phone"))
            .await;
        assert_eq!(body(&got), Some(format!("{text} {i}")));
    }
    carol
        .assert_none_before_ping(|el| el.name() == "message", "a duplicate")
        .await;
}

/// Sites a.test and c.test that cannot reach each other, and the hub h.test that relays
/// between them and reaches both.
async fn hub_and_sites(relay_for: &[&str]) -> (TestServer, TestServer, TestServer) {
    let relay_for: Vec<String> = relay_for.iter().map(|d| (*d).to_owned()).collect();
    let hub = TestServer::start_with(move |c| {
        site(HUB, None)(c);
        c.federation.relay_for = relay_for;
    })
    .await;
    let a = TestServer::start_with(site("a.test", Some(HUB))).await;
    let c = TestServer::start_with(site("c.test", Some(HUB))).await;
    let refused = closed_port().await;
    handle(&a).set_peer_address("c.test", refused.into());
    handle(&c).set_peer_address("a.test", refused.into());
    for site in [&a, &c] {
        handle(site).set_peer_address(HUB, s2s(&hub));
    }
    handle(&hub).set_peer_address("a.test", s2s(&a));
    handle(&hub).set_peer_address("c.test", s2s(&c));
    a.add_user("alice", "wonderland").await;
    c.add_user("carol", "christmas").await;
    (hub, a, c)
}

#[tokio::test]
async fn the_hub_relays_chat_between_sites_that_cannot_reach_each_other() {
    let (_hub, a, c) = hub_and_sites(&["a.test", "c.test"]).await;
    let mut alice = a.login("alice", "wonderland", "phone").await;
    let mut carol = c.login("carol", "christmas", "pc").await;
    alice.available().await;
    carol.available().await;

    alice_to_carol_once_in_order(&mut alice, &mut carol, "via hub", 20).await;

    carol
        .send("<message to='alice@a.test/phone' type='chat' id='back-1'><body>and back</body></message>")
        .await;
    let got = alice
        .recv_where(|el| is_chat_from(el, "carol@c.test/pc"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("and back"));
    // Carol's server tells her client that the hub took her message.
    let told = carol
        .recv_where(|el| el.get_child("relayed", "urn:outpost:delivery:0").is_some())
        .await;
    let relayed = told
        .get_child("relayed", "urn:outpost:delivery:0")
        .expect("relayed");
    assert_eq!(told.attr("from"), Some("c.test"));
    assert_eq!(told.attr("type"), Some("headline"));
    assert_eq!(
        (relayed.attr("id"), relayed.attr("by")),
        (Some("back-1"), Some("h.test"))
    );

    // Operators see which path each link took, and why direct did not work.
    let link = a.wait_link("c.test", |l| l.state == LinkState::Up).await;
    assert_eq!(link.path, "hub");
    c.wait_for_empty_outbox("a.test").await;
    let link = c.wait_link("a.test", |l| l.queued == 0).await;
    assert_eq!(link.path, "hub");
}

#[tokio::test]
async fn subscriptions_and_presence_cross_the_hub() {
    let (_hub, a, c) = hub_and_sites(&["a.test", "c.test"]).await;
    let mut alice = a.login("alice", "wonderland", "phone").await;
    let mut carol = c.login("carol", "christmas", "pc").await;
    alice.roster_get().await;
    carol.roster_get().await;
    alice.available().await;
    carol.available().await;

    alice
        .send("<presence to='carol@c.test' type='subscribe'/>")
        .await;
    let request = carol
        .recv_where(|el| el.name() == "presence" && el.attr("type") == Some("subscribe"))
        .await;
    assert_eq!(request.attr("from"), Some("alice@a.test"));
    carol
        .send("<presence to='alice@a.test' type='subscribed'/>")
        .await;
    let item = alice
        .recv_stashing(|el| {
            el.name() == "iq"
                && el
                    .get_child("query", NS_ROSTER)
                    .and_then(|q| q.get_child("item", NS_ROSTER))
                    .is_some_and(|i| i.attr("subscription") == Some("to"))
        })
        .await;
    assert_eq!(item.attr("type"), Some("set"));
    alice.recv_presence_from("carol@c.test/pc").await;
}

#[tokio::test]
async fn a_hub_refuses_domains_it_does_not_relay_for() {
    // The hub relays for a.test only: c.test is not on its list.
    let (_hub, a, c) = hub_and_sites(&["a.test"]).await;
    let mut alice = a.login("alice", "wonderland", "phone").await;
    let mut carol = c.login("carol", "christmas", "pc").await;
    carol.available().await;
    alice.send(&chat("carol@c.test", "not relayed")).await;

    // The hub ends that stream; the message stays queued, and the link says why.
    let link = a
        .wait_link("c.test", |l| {
            l.last_error
                .as_deref()
                .is_some_and(|e| e.contains("host-unknown"))
        })
        .await;
    assert_eq!(link.queued, 1);
    carol
        .assert_none_before_ping(|el| el.name() == "message", "a message")
        .await;
}

fn fingerprint(identity: &outpost_server::TlsIdentity) -> String {
    let cert = CertificateDer::pem_slice_iter(identity.cert_chain_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM");
    sha2::Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// B pinned by A, A trusted self-signed by B; B cannot connect back to A, so dialback
/// could not work: only the certificates can authenticate the link.
async fn pinned_pair(pin: Option<String>) -> (TestServer, TestServer) {
    let b = TestServer::start_with(|c| {
        site("b.test", None)(c);
        c.federation.trust_self_signed = vec!["a.test".to_owned()];
    })
    .await;
    let pin = pin.unwrap_or_else(|| fingerprint(&b.identity));
    let a = TestServer::start_with(move |c| {
        site("a.test", None)(c);
        c.federation
            .pinned
            .insert("b.test".to_owned(), pin.parse().expect("fingerprint"));
    })
    .await;
    handle(&a).set_peer_address("b.test", s2s(&b));
    handle(&b).set_peer_address("a.test", closed_port().await.into());
    a.add_user("alice", "wonderland").await;
    b.add_user("bob", "builder").await;
    (a, b)
}

#[tokio::test]
async fn a_pinned_peer_authenticates_with_certificates_alone() {
    let (a, b) = pinned_pair(None).await;
    let mut alice = a.login("alice", "wonderland", "phone").await;
    let mut bob = b.login("bob", "builder", "pc").await;
    bob.available().await;
    alice.send(&chat("bob@b.test", "pinned")).await;
    let got = bob
        .recv_where(|el| is_chat_from(el, "alice@a.test/phone"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("pinned"));
    a.wait_for_empty_outbox("b.test").await;
    a.wait_link("b.test", |l| l.queued == 0 && l.state == LinkState::Up)
        .await;
}

#[tokio::test]
async fn a_wrong_pin_fails_the_link_and_says_why() {
    let (a, b) = pinned_pair(Some("00".repeat(32))).await;
    let mut alice = a.login("alice", "wonderland", "phone").await;
    let mut bob = b.login("bob", "builder", "pc").await;
    bob.available().await;
    alice.send(&chat("bob@b.test", "must not pass")).await;
    let link = a
        .wait_link("b.test", |l| {
            l.last_error.as_deref().is_some_and(|e| e.contains("TLS"))
        })
        .await;
    assert_eq!(link.queued, 1);
    bob.assert_none_before_ping(|el| el.name() == "message", "a message")
        .await;
}

/// Accepts a.test's next stream to b.test's address, skipping probes (connections the
/// link opens only to see that the address takes them).
async fn accept_stream(listener: &tokio::net::TcpListener) -> Client {
    loop {
        let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("a.test connects in time")
            .expect("accept");
        let mut peer = Client::new(Box::new(tcp));
        match peer.next_event().await {
            Some(XmlEvent::StreamOpen(h)) => {
                assert_eq!(h.to.as_deref(), Some("b.test"));
                return peer;
            }
            None => continue,
            other => panic!("expected a stream header, got {other:?}"),
        }
    }
}

/// Plays b.test's server for one incoming stream from a.test, without TLS: answers the
/// header, accepts the dialback key, and returns the stream for the test to read.
async fn fake_b(listener: &tokio::net::TcpListener) -> Client {
    let mut peer = accept_stream(listener).await;
    peer.send(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' \
         version='1.0' from='b.test' to='a.test' id='fake-b-1'>\
         <stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
    )
    .await;
    let result = peer.recv().await;
    assert_eq!(result.name(), "result");
    peer.send("<db:result from='b.test' to='a.test' type='valid'/>")
        .await;
    peer
}

#[tokio::test]
async fn presence_is_probed_again_when_a_link_comes_back() {
    let a = TestServer::start_with(|c| {
        site("a.test", None)(c);
        c.federation.require_tls = false;
    })
    .await;
    a.add_user("alice", "wonderland").await;
    a.store
        .put_roster_item(
            "alice@a.test",
            &RosterItem {
                jid: "bob@b.test".to_owned(),
                name: None,
                subscription: Subscription::Both,
                ask: false,
                approved: false,
                groups: Vec::new(),
            },
        )
        .await
        .expect("roster");

    // b.test is unreachable while alice comes online: her presence and her probe of bob
    // are dropped with the failed attempt.
    handle(&a).set_peer_address("b.test", closed_port().await.into());
    let mut alice = a.login("alice", "wonderland", "phone").await;
    alice.available().await;
    a.wait_link("b.test", |l| l.state == LinkState::Backoff)
        .await;

    // b.test is back; a message brings the link up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    handle(&a).set_peer_address("b.test", listener.local_addr().expect("addr").into());
    alice.send(&chat("bob@b.test", "are you there?")).await;
    let mut b = fake_b(&listener).await;

    let (mut probed, mut announced, mut message) = (false, false, false);
    while !(probed && announced && message) {
        let el = b.recv().await;
        match (el.name(), el.attr("type")) {
            ("presence", Some("probe")) => {
                assert_eq!(el.attr("from"), Some("alice@a.test"));
                assert_eq!(el.attr("to"), Some("bob@b.test"));
                probed = true;
            }
            ("presence", None) => {
                assert_eq!(el.attr("from"), Some("alice@a.test/phone"));
                announced = true;
            }
            ("message", _) => message = true,
            _ => {}
        }
    }
}

#[tokio::test]
async fn queued_messages_bounce_when_their_lifetime_ends() {
    let a = TestServer::start_with(|c| {
        site("a.test", None)(c);
        c.federation.queue_lifetime_secs = 1;
    })
    .await;
    a.add_user("alice", "wonderland").await;
    handle(&a).set_peer_address("b.test", closed_port().await.into());
    let mut alice = a.login("alice", "wonderland", "phone").await;
    alice.available().await;
    alice
        .send("<message to='bob@b.test' type='chat' id='late'><body>lost cause</body></message>")
        .await;
    // RFC 6120 §8.3.3.17: the sender learns that the remote server never answered.
    let error = alice
        .recv_where(|el| el.name() == "message" && el.attr("type") == Some("error"))
        .await;
    assert_eq!(error.attr("id"), Some("late"));
    assert_eq!(error.attr("from"), Some("bob@b.test"));
    assert_eq!(stanza_error(&error).0, "remote-server-timeout");
    let queued = a
        .store
        .outbox_peek("a.test", "b.test", None, 10)
        .await
        .expect("peek");
    assert!(queued.is_empty(), "expired entries leave the queue");
}

/// Plays a b.test that authenticates a.test and enables stream management, then reads
/// what it is sent and never acknowledges any of it.
async fn silent_b(listener: &tokio::net::TcpListener) -> Client {
    let mut peer = accept_stream(listener).await;
    peer.send(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' \
         version='1.0' from='b.test' to='a.test' id='silent-b'>\
         <stream:features><dialback xmlns='urn:xmpp:features:dialback'/>\
         <sm xmlns='urn:xmpp:sm:3'/></stream:features>",
    )
    .await;
    assert_eq!(peer.recv().await.name(), "result");
    peer.send("<db:result from='b.test' to='a.test' type='valid'/>")
        .await;
    assert_eq!(peer.recv().await.name(), "enable");
    peer.send("<enabled xmlns='urn:xmpp:sm:3'/>").await;
    peer
}

#[tokio::test]
async fn a_peer_that_never_acknowledges_keeps_its_queue_and_harms_no_other_link() {
    let plain = |domain: &'static str| {
        move |c: &mut Config| {
            site(domain, None)(c);
            c.federation.require_tls = false;
        }
    };
    let a = TestServer::start_with(plain("a.test")).await;
    let c = TestServer::start_with(plain("c.test")).await;
    a.add_user("alice", "wonderland").await;
    c.add_user("carol", "christmas").await;
    handle(&a).set_peer_address("c.test", s2s(&c));
    handle(&c).set_peer_address("a.test", s2s(&a));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    handle(&a).set_peer_address("b.test", listener.local_addr().expect("addr").into());

    let mut alice = a.login("alice", "wonderland", "phone").await;
    let mut carol = c.login("carol", "christmas", "pc").await;
    carol.available().await;
    for i in 0..5 {
        alice
            .send(&chat("bob@b.test", &format!("unacknowledged {i}")))
            .await;
    }
    let mut b = silent_b(&listener).await;
    let mut seen = 0;
    while seen < 5 {
        if b.recv().await.name() == "message" {
            seen += 1;
        }
    }

    // The other link carries on.
    alice.send(&chat("carol@c.test", "unaffected")).await;
    let got = carol
        .recv_where(|el| is_chat_from(el, "alice@a.test/phone"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("unaffected"));

    // The silent peer's messages stay queued, and the link says why it backs off.
    // Noticing a silent peer takes the acknowledgement timeout and more: a longer bound
    // than usual.
    let link = a
        .wait_link_within(3 * WAIT, "b.test", |l| {
            l.last_error
                .as_deref()
                .is_some_and(|e| e.contains("acknowledges nothing"))
        })
        .await;
    assert_eq!(link.queued, 5);
    alice
        .assert_none_before_ping(|el| el.attr("type") == Some("error"), "a bounce")
        .await;
}

#[tokio::test]
async fn sites_reach_their_hub_over_websocket_when_only_https_passes() {
    let hub = TestServer::start_with(|c| {
        site(HUB, None)(c);
        c.listen.s2s_websocket = vec!["127.0.0.1:0".parse().expect("addr")];
        c.federation.relay_for = vec!["a.test".to_owned(), "c.test".to_owned()];
    })
    .await;
    let ws = handle(&hub)
        .local_addrs()
        .into_iter()
        .find(|(k, _)| *k == outpost_server::ListenerKind::S2sWebSocket)
        .map(|(_, a)| a)
        .expect("the hub's WebSocket listener");
    let a = TestServer::start_with(site("a.test", Some(HUB))).await;
    let c = TestServer::start_with(site("c.test", Some(HUB))).await;
    let refused = closed_port().await;
    for (site, other) in [(&a, "c.test"), (&c, "a.test")] {
        // Neither the other site nor the hub's TCP port passes; HTTPS to the hub does.
        handle(site).set_peer_address(other, refused.into());
        handle(site).set_peer_address(HUB, refused.into());
        handle(site).set_websocket_peer(HUB, wss_url(&format!("wss://{ws}/xmpp-websocket")));
    }
    handle(&hub).set_peer_address("a.test", s2s(&a));
    handle(&hub).set_peer_address("c.test", s2s(&c));
    a.add_user("alice", "wonderland").await;
    c.add_user("carol", "christmas").await;

    let mut alice = a.login("alice", "wonderland", "phone").await;
    let mut carol = c.login("carol", "christmas", "pc").await;
    carol.available().await;
    alice_to_carol_once_in_order(&mut alice, &mut carol, "over https", 5).await;
    a.wait_for_empty_outbox("c.test").await;
    let link = a.wait_link("c.test", |l| l.queued == 0).await;
    assert_eq!(link.path, "hub-websocket");

    // Subscriptions and presence take the same path.
    alice.roster_get().await;
    carol.roster_get().await;
    alice.available().await;
    alice
        .send("<presence to='carol@c.test' type='subscribe'/>")
        .await;
    let request = carol
        .recv_where(|el| el.name() == "presence" && el.attr("type") == Some("subscribe"))
        .await;
    assert_eq!(request.attr("from"), Some("alice@a.test"));
    carol
        .send("<presence to='alice@a.test' type='subscribed'/>")
        .await;
    alice.recv_presence_from("carol@c.test/pc").await;
}
