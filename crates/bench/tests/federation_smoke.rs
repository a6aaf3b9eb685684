//! The federation scenarios with tiny parameters against two in-process Outpost servers,
//! `a.bench` and `b.bench`, federating over TLS with dialback on loopback. Only correctness
//! is asserted, never a timing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_bench::Target;
use outpost_bench::scenarios;
use outpost_server::config::Config;
use outpost_server::{ListenerKind, ServerHandle, TlsIdentity};
use outpost_store::MemoryStore;

struct Server {
    handle: ServerHandle,
    c2s: SocketAddr,
    s2s: SocketAddr,
}

async fn start(domain: &str, dir: &tempfile::TempDir, store: Arc<MemoryStore>) -> Server {
    let mut config = Config {
        domains: vec![domain.to_owned()],
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    config.listen.c2s = vec!["127.0.0.1:0".parse().expect("addr")];
    config.listen.c2s_tls = vec![];
    config.listen.s2s = vec!["127.0.0.1:0".parse().expect("addr")];
    config.registration.enabled = Some(true);
    config.auth.allow_plaintext_without_tls = true;
    config.auth.scram_iterations = 16;
    config.federation.enabled = true;
    config.federation.require_tls = true;
    config.federation.srv_lookup = false;
    // Nothing answers there: no name is ever looked up in a real DNS server.
    config.federation.dns_server = Some("127.0.0.1:9".parse().expect("addr"));
    config.federation.dialback_secret = Some(format!("{domain}-smoke-dialback-secret"));
    config.federation.retry_initial_secs = 1;
    config.federation.retry_max_secs = 2;
    config.federation.probe_interval_secs = 1;
    config.validate().expect("valid config");
    let identity = TlsIdentity::self_signed(&config.domains).expect("certificate");
    let handle = ServerHandle::start(config, store, identity)
        .await
        .expect("server starts");
    let addr = |kind| {
        handle
            .local_addrs()
            .into_iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| a)
            .expect("listener")
    };
    let (c2s, s2s) = (addr(ListenerKind::C2sStartTls), addr(ListenerKind::S2s));
    Server { handle, c2s, s2s }
}

fn target(addr: SocketAddr, domain: &str) -> Arc<Target> {
    let mut t = Target::new(addr, domain, "smokepass");
    t.step_timeout = Duration::from_secs(20);
    Arc::new(t)
}

fn introduce(a: &Server, b: &Server) {
    a.handle
        .set_peer_address("b.bench", host_port(&b.s2s.to_string()));
    b.handle
        .set_peer_address("a.bench", host_port(&a.s2s.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_scenarios_run_across_two_outposts() {
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let store_b = Arc::new(MemoryStore::new());
    let a = start("a.bench", &dir_a, Arc::new(MemoryStore::new())).await;
    let b = start("b.bench", &dir_b, store_b.clone()).await;
    introduce(&a, &b);
    let ta = target(a.c2s, "a.bench");
    let tb = target(b.c2s, "b.bench");
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
    b.handle.shutdown().await;
    let fill =
        scenarios::federation_backlog_fill(&ta, "bs1", "br1@b.bench", 200, Duration::from_secs(30))
            .await
            .expect("fill");
    assert_eq!(fill.error_replies, 0, "{fill:?}");
    let b = start("b.bench", &dir_b, store_b).await;
    introduce(&a, &b);
    let tb = target(b.c2s, "b.bench");
    let report = scenarios::federation_backlog_drain(
        &tb,
        b.s2s,
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

    b.handle.shutdown().await;
    a.handle.shutdown().await;
}

fn host_port(s: &str) -> outpost_server::config::HostPort {
    s.parse().expect("host:port")
}
