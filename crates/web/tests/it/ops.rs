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
