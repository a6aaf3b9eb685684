//! A small run of every scenario against a real Outpost on 127.0.0.1:0 (and the relay), so
//! that the benchmark code cannot rot. Only correctness is asserted (logins succeed, every message
//! arrives once and in order, counts match), never a timing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_bench::scenarios::{self, users};
use outpost_bench::{Mech, Target, mam, muc, relay};
use outpost_testkit::TestServer;

const DOMAIN: &str = "bench.local";

async fn start_server() -> TestServer {
    TestServer::start_in_memory_with(|config| {
        config.domains = vec![DOMAIN.to_owned()];
        config.auth.allow_plaintext_without_tls = true;
        // Fast hashing: timings are not the point here.
        config.auth.scram_iterations = 16;
    })
    .await
}

fn target(addr: SocketAddr, tls: bool) -> Arc<Target> {
    let mut t = Target::new(addr, DOMAIN, "smokepass");
    t.tls = tls;
    t.server_pids = vec![std::process::id()];
    t.step_timeout = Duration::from_secs(20);
    Arc::new(t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_against_outpost() {
    let mut server = start_server().await;
    let addr = server.starttls;
    let t = target(addr, false);

    let reg = scenarios::register(&t, "u", 1, 8, 4).await;
    assert_eq!((reg.created, reg.errors), (8, 0), "{reg:?}");
    let again = scenarios::register(&t, "u", 1, 2, 2).await;
    assert_eq!((again.existed, again.errors), (2, 0), "{again:?}");
    for (prefix, n) in [("rc", 6), ("ro", 1), ("off", 2)] {
        let r = scenarios::register(&t, prefix, 1, n, 4).await;
        assert_eq!(r.errors, 0, "{r:?}");
    }

    let idle = scenarios::idle(
        &t,
        "u",
        1,
        6,
        3,
        Duration::from_millis(100),
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(
        (idle.connected, idle.alive_at_end, idle.errors),
        (6, 6, 0),
        "{idle:?}"
    );

    let tp = scenarios::throughput(
        &t,
        "u",
        1,
        2,
        4,
        Duration::from_millis(300),
        Duration::from_millis(700),
        1,
    )
    .await
    .expect("throughput");
    assert!(tp.delivered_in_window > 0, "{tp:?}");
    assert_eq!(tp.total_sent, tp.total_delivered, "{tp:?}");
    assert_eq!((tp.out_of_order, tp.error_replies), (0, 0), "{tp:?}");
    assert!(tp.failures.is_empty(), "{tp:?}");

    let lat = scenarios::latency(
        &t,
        &t,
        "u",
        1,
        2,
        100.0,
        Duration::from_millis(200),
        Duration::from_millis(800),
    )
    .await
    .expect("latency");
    assert!(lat.latency.samples > 0, "{lat:?}");
    assert_eq!(lat.total_sent, lat.total_delivered, "{lat:?}");
    assert_eq!((lat.out_of_order, lat.error_replies), (0, 0), "{lat:?}");
    assert!(lat.failures.is_empty(), "{lat:?}");

    let login = scenarios::login_storm(&t, "u", 1, 5, 3, Mech::ScramSha1).await;
    assert_eq!(
        (login.pass1_cold_client_cache.errors, login.pass2.errors),
        (0, 0),
        "{login:?}"
    );
    assert_eq!(login.scram_iterations_seen, vec![16]);

    let off = scenarios::offline(&t, "off1", "off2", 300, Duration::from_secs(30))
        .await
        .expect("offline");
    assert_eq!(
        (off.received, off.missing, off.duplicates),
        (300, 0, 0),
        "{off:?}"
    );
    assert!(off.in_order, "{off:?}");
    assert!(off.flush_from_connect_s.is_some(), "{off:?}");

    let contacts = users("rc", 1, 6);
    let setup = scenarios::roster_setup(&t, "ro1", &contacts, 3)
        .await
        .expect("roster setup");
    assert_eq!((setup.mutual_at_end, setup.errors), (6, 0), "{setup:?}");
    let rerun = scenarios::roster_setup(&t, "ro1", &contacts, 3)
        .await
        .expect("roster setup again");
    assert_eq!(rerun.already_mutual, 6, "{rerun:?}");
    let roster = scenarios::roster_login(&t, "ro1", &contacts, 3, 2)
        .await
        .expect("roster login");
    for run in &roster.runs {
        assert_eq!((run.roster_items, run.presences), (6, 3), "{roster:?}");
        assert!(run.all_presences_s.is_some(), "{roster:?}");
    }

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_logins_work() {
    let mut server = start_server().await;
    let addr = server.starttls;
    let t = target(addr, true);
    let reg = scenarios::register(&t, "t", 1, 3, 3).await;
    assert_eq!(reg.created, 3, "{reg:?}");
    let login = scenarios::login_storm(&t, "t", 1, 3, 3, Mech::ScramSha1).await;
    assert_eq!(login.pass2.errors, 0, "{login:?}");
    let idle = scenarios::idle(
        &t,
        "t",
        1,
        3,
        3,
        Duration::from_millis(50),
        Duration::from_millis(50),
    )
    .await;
    assert_eq!((idle.connected, idle.alive_at_end), (3, 3), "{idle:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muc_archive_and_stream_management_work() {
    let mut server = start_server().await;
    let t = target(server.starttls, true);
    let reg = scenarios::register(&t, "m", 1, 6, 3).await;
    assert_eq!((reg.created, reg.errors), (6, 0), "{reg:?}");

    let opts = scenarios::IdleOpts {
        concurrency: 3,
        settle: Duration::from_millis(50),
        hold: Duration::from_millis(50),
        sm: true,
    };
    let idle = scenarios::idle_with(&t, "m", 1, 3, opts).await;
    assert_eq!(
        (idle.connected, idle.alive_at_end, idle.sm),
        (3, 3, true),
        "{idle:?}"
    );

    let tp = scenarios::throughput(
        &t,
        "m",
        1,
        2,
        4,
        Duration::from_millis(300),
        Duration::from_millis(700),
        1,
    )
    .await
    .expect("throughput");
    assert_eq!(tp.total_sent, tp.total_delivered, "{tp:?}");
    let check = mam::check_first_pair(&t, "m", 1, 2, tp.sent_per_pair[0]).await;
    assert!(check.ok, "{check:?}");

    let o = muc::MucOpts {
        prefix: "m".into(),
        start: 1,
        occupants: 6,
        senders: 0,
        window: 2,
        warmup: Duration::from_millis(300),
        duration: Duration::from_millis(700),
        lat_sample: 1,
        room: "smoke".into(),
        service: format!("conference.{DOMAIN}"),
        concurrency: 3,
        mam_check: true,
    };
    let r = muc::muc(&t, None, &o).await.expect("muc");
    assert_eq!((r.joined, r.senders), (6, 6), "{r:?}");
    assert!(r.msgs_in_window > 0, "{r:?}");
    assert_eq!(r.total_sent, r.total_fully_delivered, "{r:?}");
    assert_eq!(
        (r.undelivered_after_drain, r.out_of_order, r.error_replies),
        (0, 0, 0),
        "{r:?}"
    );
    assert!(r.failures.is_empty(), "{r:?}");
    assert!(r.room_archive.as_ref().is_some_and(|a| a.ok), "{r:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_runs_raw_against_the_relay() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let tls = relay::tls_acceptor(DOMAIN).expect("certificate");
    let relay = tokio::spawn(relay::serve(listener, Some(tls)));
    let mut t = Target::new(addr, DOMAIN, "unused");
    t.tls = true;
    t.raw = true;
    t.step_timeout = Duration::from_secs(20);
    let t = Arc::new(t);
    let tp = scenarios::throughput(
        &t,
        "u",
        1,
        3,
        4,
        Duration::from_millis(200),
        Duration::from_millis(500),
        1,
    )
    .await
    .expect("throughput");
    assert!(tp.raw && tp.delivered_in_window > 0, "{tp:?}");
    assert_eq!(tp.total_sent, tp.total_delivered, "{tp:?}");
    assert_eq!((tp.out_of_order, tp.error_replies), (0, 0), "{tp:?}");
    assert!(tp.failures.is_empty(), "{tp:?}");
    relay.abort();
}
