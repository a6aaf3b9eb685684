//! The WebSocket and HTTP API scenarios against a real Outpost with its HTTP service, so
//! that they cannot rot: every message and event arrives, none is refused; no timing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_bench::scenarios::{self, users};
use outpost_bench::{Target, rest};
use outpost_server::ListenerKind;
use outpost_testkit::TestServer;

const DOMAIN: &str = "bench.local";

fn target(addr: SocketAddr, ws: bool) -> Arc<Target> {
    let mut t = Target::new(addr, DOMAIN, "smokepass");
    t.tls = true;
    t.ws_path = ws.then(|| "/xmpp-websocket".to_owned());
    t.server_pids = vec![std::process::id()];
    t.step_timeout = Duration::from_secs(20);
    Arc::new(t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_http_api_scenarios_run() {
    let mut server = TestServer::start_with_http(
        |config| {
            config.domains = vec![DOMAIN.to_owned()];
            config.auth.scram_iterations = 16;
        },
        Arc::new(outpost_web::Web::new()),
    )
    .await;
    let https = server.listener(ListenerKind::Https).expect("HTTPS");
    let tcp = target(server.starttls, false);
    let ws = target(https, true);

    // Users registered over WebSocket, so that transport's SASL and streams are used.
    let reg = scenarios::register(&ws, "u", 1, 8, 4).await;
    assert_eq!((reg.created, reg.errors), (8, 0), "{reg:?}");
    let idle = scenarios::idle(&ws, "u", 1, 4, 2, Duration::ZERO, Duration::ZERO).await;
    assert_eq!(
        (idle.connected, idle.alive_at_end, idle.errors),
        (4, 4, 0),
        "{idle:?}"
    );
    let window = (Duration::from_millis(300), Duration::from_millis(700));
    let tp = scenarios::throughput(&ws, "u", 1, 2, 4, window.0, window.1, 1)
        .await
        .expect("throughput over WebSocket");
    assert!(tp.delivered_in_window > 0, "{tp:?}");
    assert_eq!(tp.total_sent, tp.total_delivered, "{tp:?}");
    assert!(tp.failures.is_empty(), "{tp:?}");

    let sent = rest::rest_send(&tcp, https, "u", 5, 2, window.0, window.1)
        .await
        .expect("REST sends");
    assert!(sent.requests_in_window > 0, "{sent:?}");
    assert_eq!(
        (sent.undelivered_after_drain, sent.error_answers),
        (0, 0),
        "{sent:?}"
    );
    assert!(sent.failures.is_empty(), "{sent:?}");

    for prefix in ["rc", "ro"] {
        let r = scenarios::register(&tcp, prefix, 1, 4, 4).await;
        assert_eq!(r.errors, 0, "{r:?}");
    }
    let contacts = users("rc", 1, 4);
    let setup = scenarios::roster_setup(&tcp, "ro1", &contacts, 4)
        .await
        .expect("roster setup");
    assert_eq!(setup.mutual_at_end, 4, "{setup:?}");
    let fan = rest::sse_fanout(&tcp, https, "ro1", "rc", 4, 3)
        .await
        .expect("fan-out");
    assert_eq!(
        (fan.streams_open, fan.events_delivered, fan.events_missing),
        (4, 12, 0),
        "{fan:?}"
    );
    server.stop().await;
}
