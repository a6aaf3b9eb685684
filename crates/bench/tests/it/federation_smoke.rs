//! The federation scenarios with tiny parameters against two in-process Outpost servers,
//! `a.bench` and `b.bench`, federating over TLS with dialback on loopback. Only correctness
//! is asserted, never a timing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_bench::Target;
use outpost_bench::scenarios;
use outpost_testkit::TestServer;

async fn start(domain: &str) -> TestServer {
    let secret = format!("{domain}-smoke-dialback-secret");
    TestServer::start_in_memory_with(|config| {
        config.domains = vec![domain.to_owned()];
        config.listen.s2s = vec!["127.0.0.1:0".parse().expect("addr")];
        config.auth.allow_plaintext_without_tls = true;
        config.auth.scram_iterations = 16;
        config.federation.enabled = true;
        config.federation.require_tls = true;
        config.federation.srv_lookup = false;
        // Nothing answers there: no name is ever looked up in a real DNS server.
        config.federation.dns_server = Some("127.0.0.1:9".parse().expect("addr"));
        config.federation.dialback_secret = Some(secret);
        config.federation.retry_initial_secs = 1;
        config.federation.retry_max_secs = 2;
        config.federation.probe_interval_secs = 1;
    })
    .await
}

fn target(addr: SocketAddr, domain: &str) -> Arc<Target> {
    let mut t = Target::new(addr, domain, "smokepass");
    t.step_timeout = Duration::from_secs(20);
    Arc::new(t)
}

fn s2s(server: &TestServer) -> SocketAddr {
    server.s2s.expect("s2s listener")
}

fn introduce(a: &TestServer, b: &TestServer) {
    let a_handle = a.handle.as_ref().expect("a runs");
    let b_handle = b.handle.as_ref().expect("b runs");
    a_handle.set_peer_address("b.bench", s2s(b).into());
    b_handle.set_peer_address("a.bench", s2s(a).into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_scenarios_run_across_two_outposts() {
    let mut a = start("a.bench").await;
    let mut b = start("b.bench").await;
    introduce(&a, &b);
    let ta = target(a.starttls, "a.bench");
    let tb = target(b.starttls, "b.bench");
    for (t, prefix, n) in [(&ta, "u", 4), (&tb, "u", 4), (&ta, "bs", 1), (&tb, "br", 1)] {
        let r = scenarios::register(t, prefix, 1, n, 4).await;
        assert_eq!(r.errors, 0, "{r:?}");
    }

    let tp = scenarios::federation_throughput(
        &ta,
        &tb,
        "u",
        1,
        2,
        4,
        Duration::from_millis(1500),
        Duration::from_millis(700),
        1,
    )
    .await
    .expect("federation throughput");
    assert!(tp.delivered_in_window > 0, "{tp:?}");
    assert_eq!(tp.total_sent, tp.total_delivered, "{tp:?}");
    assert_eq!((tp.out_of_order, tp.error_replies), (0, 0), "{tp:?}");
    assert!(tp.failures.is_empty(), "{tp:?}");

    // The backlog: B down, messages queued on A, B back on the same store.
    b.stop().await;
    let fill =
        scenarios::federation_backlog_fill(&ta, "bs1", "br1@b.bench", 200, Duration::from_secs(30))
            .await
            .expect("fill");
    assert_eq!(fill.error_replies, 0, "{fill:?}");
    b.restart().await;
    introduce(&a, &b);
    let tb = target(b.starttls, "b.bench");
    let report = scenarios::federation_backlog_drain(
        &tb,
        s2s(&b),
        "br1",
        200,
        None,
        &Vec::new,
        Duration::from_secs(10),
        Duration::from_secs(60),
    )
    .await
    .expect("drain");
    assert_eq!(
        (report.received, report.missing, report.duplicates),
        (200, 0, 0),
        "{report:?}"
    );
    assert!(report.in_order, "{report:?}");
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(report.delivery_s.is_some(), "{report:?}");

    b.stop().await;
    a.stop().await;
}
