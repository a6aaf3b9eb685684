//! `/healthz` and `/metrics` over the real HTTPS listener: the health answer, and metrics
//! that follow what the server does (a login that fails, messages stored offline and
//! archived, requests counted by route and status), in the OpenMetrics text format.

use std::sync::Arc;

use outpost_testkit::*;
use outpost_web::Web;

use crate::http::request;

async fn get(server: &TestServer, path: &str) -> (u16, String, String) {
    let reply = request(server, "GET", path, &[], Vec::new()).await;
    let content_type = reply.header("content-type").unwrap_or_default().to_owned();
    let body = String::from_utf8(reply.body).expect("text");
    (reply.status.as_u16(), content_type, body)
}

/// The value of the sample `name` (with its labels, as written) in a scrape.
fn sample(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn health_says_ok_with_the_sessions() {
    let server = TestServer::start_with_http(|_| {}, Arc::new(Web::new())).await;
    server.add_user("alice", "wonderland").await;
    let _alice = server.login("alice", "wonderland", "phone").await;
    let (status, content_type, body) = get(&server, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "application/json");
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["sessions"], 1);
}

#[tokio::test]
async fn metrics_follow_what_the_server_does() {
    // Without upload: the listener serves health and metrics all the same.
    let server =
        TestServer::start_with_http(|c| c.upload.enabled = false, Arc::new(Web::new())).await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let (status, content_type, before) = get(&server, "/metrics").await;
    assert_eq!(status, 200, "{before}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(before.ends_with("# EOF\n"), "{before}");

    let mut wrong = Client::connect_open(server.starttls, server.domain()).await;
    wrong.starttls(&server.tls_connector()).await;
    assert!(wrong.auth_plain("alice", "not-her-password").await.is_err());
    let mut alice = server.login("alice", "wonderland", "phone").await;
    alice
        .send(&chat("bob@localhost", "while you were away"))
        .await;
    alice.barrier().await;
    let _ = get(&server, "/nowhere").await;

    let (_, _, after) = get(&server, "/metrics").await;
    assert_eq!(sample(&after, "outpost_sessions"), Some(1.0), "{after}");
    assert_eq!(
        sample(&after, "outpost_login_failures_total"),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, "outpost_offline_stored_total"),
        Some(1.0),
        "{after}"
    );
    // Both ends' archives hold it: one row.
    assert_eq!(
        sample(&after, "outpost_archived_total"),
        Some(1.0),
        "{after}"
    );
    let messages = r#"outpost_stanzas_received_total{kind="message"}"#;
    assert_eq!(sample(&after, messages), Some(1.0), "{after}");
    let scraped = r#"outpost_http_requests_total{route="/metrics",status="200"}"#;
    assert_eq!(sample(&after, scraped), Some(1.0), "{after}");
    let unknown = r#"outpost_http_requests_total{route="unmatched",status="404"}"#;
    assert_eq!(sample(&after, unknown), Some(1.0), "{after}");
    assert!(
        !after.contains("/nowhere"),
        "a path chosen by a client is no label: {after}"
    );
}

/// A cluster node's scrape says whether NATS and PostgreSQL answer and, per other node,
/// its sessions in this node's directory and when it was last heard.
#[tokio::test]
async fn a_cluster_node_reports_its_cluster() {
    use outpost_server::config::{Config, StorageBackend};
    use outpost_testkit::nats::NatsServer;
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap();
    let url = tokio::task::spawn_blocking(|| {
        let pg = outpost_testkit::postgres::shared();
        pg.url(&pg.create_database())
    })
    .await
    .unwrap();
    let node = |id: &'static str| {
        let (url, nats) = (url.clone(), nats.url().to_owned());
        move |c: &mut Config| {
            c.storage.backend = StorageBackend::Postgres;
            c.storage.url = Some(url);
            c.cluster.nats_url = Some(nats);
            c.cluster.node_id = Some(id.to_owned());
        }
    };
    let store = || async {
        let s = outpost_store::PgStore::connect(&url)
            .await
            .expect("PostgreSQL");
        Arc::new(s) as Arc<dyn outpost_store::Store>
    };
    let web: Arc<dyn outpost_server::HttpService> = Arc::new(Web::new());
    let n1 = TestServer::start_with_store(store().await, node("n1"), Some(web)).await;
    let n2 = TestServer::start_with_store(store().await, node("n2"), None).await;
    n1.add_user("bob", "builder").await;
    let _bob = n2.login("bob", "builder", "pc").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let scrape = poll_until(deadline, async || {
        let (_, _, scrape) = get(&n1, "/metrics").await;
        let seen = sample(&scrape, "outpost_cluster_directory_sessions{node=\"n2\"}");
        match seen {
            Some(1.0) => Ok(scrape),
            _ => Err(format!("n2's session not in n1's directory: {scrape}")),
        }
    })
    .await;
    assert_eq!(sample(&scrape, "outpost_cluster_nats_connected"), Some(1.0));
    assert_eq!(
        sample(&scrape, "outpost_cluster_postgres_answering"),
        Some(1.0)
    );
    let heard = sample(&scrape, "outpost_cluster_heard_seconds{node=\"n2\"}").expect("heard");
    assert!(heard < 5.0, "{scrape}");
    drop((n1, n2, nats));
}
