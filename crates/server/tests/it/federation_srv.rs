//! How a server finds and reaches a peer: SRV records (RFC 6120 §3.2.1, XEP-0368) served
//! by a DNS server the test runs on loopback, direct TLS and STARTTLS targets, fail-over
//! between targets, the `federation.peers` override, and the `.` target.
//!
//! `a.test` asks the test's DNS server and has no `federation.peers` entry for `b.test`
//! (except where the override is the subject); `b.test` reaches `a.test` through a
//! `federation.peers` entry, so only the A → B direction depends on DNS.

use std::net::{Ipv4Addr, SocketAddr};

use outpost_server::config::Config;
use outpost_server::{LinkState, ListenerKind};
use outpost_testkit::dns::{DnsServer, RecordType};
use outpost_testkit::*;

fn federated(domain: &'static str, dns: SocketAddr, srv_lookup: bool) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.domains = vec![domain.to_owned()];
        c.listen.s2s = vec!["127.0.0.1:0".parse().expect("addr")];
        c.federation.enabled = true;
        c.federation.require_tls = true;
        c.federation.retry_initial_secs = 1;
        c.federation.retry_max_secs = 2;
        c.federation.probe_interval_secs = 1;
        c.federation.srv_lookup = srv_lookup;
        c.federation.dns_server = Some(dns);
    }
}

/// `b.test` with its STARTTLS listener and, if `direct_tls`, a direct TLS one; it asks
/// DNS for nothing it could need (it reaches `a.test` by its `federation.peers` entry).
async fn start_b(dns: &DnsServer, direct_tls: bool) -> TestServer {
    let tweak = federated("b.test", dns.addr, false);
    let b = TestServer::start_with(move |c| {
        tweak(c);
        if direct_tls {
            c.listen.s2s_tls = vec!["127.0.0.1:0".parse().expect("addr")];
        }
    })
    .await;
    b.add_user("bob", "builder").await;
    b
}

/// `a.test`, asking `dns` for SRV records; `b` learns where it listens.
async fn start_a(dns: &DnsServer, b: Option<&TestServer>) -> TestServer {
    let a = TestServer::start_with(federated("a.test", dns.addr, true)).await;
    a.add_user("alice", "wonderland").await;
    if let Some(b) = b {
        handle(b).set_peer_address("a.test", listener(&a, ListenerKind::S2s).into());
    }
    a
}

fn handle(server: &TestServer) -> &outpost_server::ServerHandle {
    server.handle.as_ref().expect("running")
}

fn listener(server: &TestServer, kind: ListenerKind) -> SocketAddr {
    handle(server)
        .local_addrs()
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, a)| a)
        .expect("listener")
}

/// Alice (on A) writes to Bob (on B) and Bob answers: both directions carry a message.
async fn exchange(a: &TestServer, b: &TestServer) {
    let mut alice = a.login("alice", "wonderland", "phone").await;
    let mut bob = b.login("bob", "builder", "pc").await;
    alice.available().await;
    bob.available().await;

    alice.send(&chat("bob@b.test", "found you")).await;
    let got = bob
        .recv_where(|el| is_message(el, "alice@a.test/phone", "found you"))
        .await;
    assert_eq!(got.attr("to"), Some("bob@b.test"));

    bob.send(&chat("alice@a.test/phone", "found you too")).await;
    alice
        .recv_where(|el| is_message(el, "bob@b.test/pc", "found you too"))
        .await;
}

#[tokio::test]
async fn an_xmpps_server_record_leads_to_direct_tls() {
    let dns = DnsServer::start().await;
    let b = start_b(&dns, true).await;
    // Only the direct TLS port is published: B's STARTTLS listener is not in DNS.
    let port = listener(&b, ListenerKind::S2sDirectTls).port();
    dns.add_srv("_xmpps-server._tcp.b.test", 0, 0, port, "tls.b.test");
    dns.add_a("tls.b.test", Ipv4Addr::LOCALHOST);
    let a = start_a(&dns, Some(&b)).await;

    exchange(&a, &b).await;
    assert!(dns.was_asked("_xmpps-server._tcp.b.test", RecordType::SRV));
    assert!(dns.was_asked("tls.b.test", RecordType::A));
    let status = a.wait_link("b.test", |s| s.state == LinkState::Up).await;
    assert_eq!(status.last_error, None);
}

#[tokio::test]
async fn an_xmpp_server_record_leads_to_starttls() {
    let dns = DnsServer::start().await;
    let b = start_b(&dns, false).await;
    let port = listener(&b, ListenerKind::S2s).port();
    dns.add_srv("_xmpp-server._tcp.b.test", 5, 0, port, "xmpp.b.test");
    dns.add_a("xmpp.b.test", Ipv4Addr::LOCALHOST);
    let a = start_a(&dns, Some(&b)).await;

    // B's only listener is the STARTTLS one, and both sides require TLS.
    exchange(&a, &b).await;
    assert!(dns.was_asked("_xmpp-server._tcp.b.test", RecordType::SRV));
    assert!(dns.was_asked("xmpp.b.test", RecordType::A));
    // SRV records were found, so the domain's own address was not needed.
    assert!(!dns.was_asked("b.test", RecordType::A));
}

#[tokio::test]
async fn a_dead_better_target_fails_over_to_the_next() {
    let dns = DnsServer::start().await;
    let b = start_b(&dns, true).await;
    let dead = closed_port().await.port();
    // The preferred record (lower priority value) points at a closed port.
    dns.add_srv("_xmpps-server._tcp.b.test", 0, 0, dead, "dead.b.test");
    dns.add_a("dead.b.test", Ipv4Addr::LOCALHOST);
    let port = listener(&b, ListenerKind::S2s).port();
    dns.add_srv("_xmpp-server._tcp.b.test", 10, 0, port, "live.b.test");
    dns.add_a("live.b.test", Ipv4Addr::LOCALHOST);
    let a = start_a(&dns, Some(&b)).await;

    exchange(&a, &b).await;
    assert!(
        dns.was_asked("dead.b.test", RecordType::A),
        "the better target came first"
    );
    assert!(dns.was_asked("live.b.test", RecordType::A));
}

#[tokio::test]
async fn when_every_target_fails_the_link_names_each() {
    let dns = DnsServer::start().await;
    let (first, second) = (closed_port().await.port(), closed_port().await.port());
    dns.add_srv("_xmpps-server._tcp.b.test", 0, 0, first, "one.b.test");
    dns.add_srv("_xmpp-server._tcp.b.test", 1, 0, second, "two.b.test");
    dns.add_a("one.b.test", Ipv4Addr::LOCALHOST);
    dns.add_a("two.b.test", Ipv4Addr::LOCALHOST);
    let a = start_a(&dns, None).await;
    let mut alice = a.login("alice", "wonderland", "phone").await;
    alice.send(&chat("bob@b.test", "anyone?")).await;

    let status = a.wait_link("b.test", |s| s.last_error.is_some()).await;
    let error = status.last_error.expect("an error");
    assert!(
        error.contains(&format!("xmpps one.b.test:{first}"))
            && error.contains(&format!("xmpp two.b.test:{second}")),
        "{error}"
    );
}

#[tokio::test]
async fn a_peers_entry_beats_srv_records() {
    let dns = DnsServer::start().await;
    let b = start_b(&dns, false).await;
    // DNS points at a closed port; the override points at B.
    let dead = closed_port().await.port();
    dns.add_srv("_xmpp-server._tcp.b.test", 0, 0, dead, "dead.b.test");
    dns.add_a("dead.b.test", Ipv4Addr::LOCALHOST);
    let a = start_a(&dns, Some(&b)).await;
    handle(&a).set_peer_address("b.test", listener(&b, ListenerKind::S2s).into());

    exchange(&a, &b).await;
    let asked = dns.asked();
    assert!(
        !asked.iter().any(|(name, _)| name.ends_with("b.test.")),
        "DNS was asked about b.test: {asked:?}"
    );
}

#[tokio::test]
async fn a_root_target_means_no_service_and_no_fallback() {
    let dns = DnsServer::start().await;
    dns.add_srv("_xmpp-server._tcp.b.test", 0, 0, 0, ".");
    // Were the "." ignored, the fallback would ask for b.test's own address.
    dns.add_a("b.test", Ipv4Addr::LOCALHOST);
    let a = start_a(&dns, None).await;
    let mut alice = a.login("alice", "wonderland", "phone").await;
    alice.available().await;
    alice.send(&chat("bob@b.test", "is anyone there?")).await;

    let status = a
        .wait_link("b.test", |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("offers no server-to-server service"))
        })
        .await;
    assert_ne!(status.state, LinkState::Up);
    assert!(dns.was_asked("_xmpp-server._tcp.b.test", RecordType::SRV));
    assert!(!dns.was_asked("b.test", RecordType::A));
    assert!(!dns.was_asked("b.test", RecordType::AAAA));
    // Nothing was delivered: the message is still queued, and it was accepted, not bounced.
    let queued = a
        .store
        .outbox_peek("a.test", "b.test", None, 10)
        .await
        .expect("peek");
    assert_eq!(queued.len(), 1);
    alice
        .assert_none_before_ping(|el| el.attr("type") == Some("error"), "an error")
        .await;
}
