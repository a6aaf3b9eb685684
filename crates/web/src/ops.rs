//! Operators' routes: `/healthz` for load balancers and supervisors, and `/metrics` in the
//! OpenMetrics text format that Prometheus scrapes (prometheus-client, the Prometheus
//! project's own Rust client).
//!
//! Gauges (sessions, links, queues, standby) are read from the server when scraped, into a
//! registry made for that scrape; counters the server keeps since it started
//! ([`outpost_server::Counts`]) are reported as they stand. HTTP requests are counted here,
//! by route template (not path: a path is chosen by the client, and a label per path would
//! let anyone grow the registry) and status.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use outpost_server::{LinkState, ServerStatus, ServerView};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tracing::warn;

/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// HTTP requests by route template and status, counted since the server started.
pub(crate) type HttpRequests = Family<HttpLabels, Counter>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabels {
    route: String,
    status: u16,
}

#[derive(Clone)]
struct Ops {
    server: ServerView,
    http: HttpRequests,
}

pub(crate) fn routes(server: ServerView, http: HttpRequests) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(Ops { server, http })
}

/// Counts every request the router answers (a middleware over all routes).
pub(crate) async fn count(State(http): State<HttpRequests>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let response = next.run(req).await;
    let labels = HttpLabels {
        route,
        status: response.status().as_u16(),
    };
    http.get_or_create(&labels).inc();
    response
}

/// 200 while the server serves, 503 once it is stopping.
async fn healthz(State(ops): State<Ops>) -> Response {
    let body = |status: &str| {
        serde_json::json!({
            "status": status,
            "version": env!("CARGO_PKG_VERSION"),
            "sessions": ops.server.session_count(),
        })
        .to_string()
    };
    let (code, text) = match ops.server.stopping() {
        true => (StatusCode::SERVICE_UNAVAILABLE, body("stopping")),
        false => (StatusCode::OK, body("ok")),
    };
    (code, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

async fn metrics(State(ops): State<Ops>) -> Response {
    let status = match ops.server.status().await {
        Ok(status) => status,
        Err(e) => {
            warn!(error = %e, "metrics: cannot read the server's status");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    let mut registry = Registry::with_prefix("outpost");
    register_server(&mut registry, &ops.server, &status);
    register_links(&mut registry, &status);
    if let Some(cluster) = ops.server.cluster().await {
        register_cluster(&mut registry, &cluster);
    }
    registry.register(
        "http_requests",
        "HTTP requests answered, by route and status",
        ops.http.clone(),
    );
    let mut text = String::new();
    if let Err(e) = encode(&mut text, &registry) {
        warn!(error = %e, "metrics: cannot encode");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn count_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Sessions, standby and replication, and what the server counted.
fn register_server(registry: &mut Registry, server: &ServerView, status: &ServerStatus) {
    let uptime = (now_ms() - status.started_at_ms).max(0) / 1000;
    gauge(
        registry,
        "uptime_seconds",
        "Seconds since the server started",
        uptime,
    );
    gauge(
        registry,
        "sessions",
        "Bound client sessions",
        count_of(status.sessions),
    );
    gauge(
        registry,
        "users_online",
        "Accounts with at least one bound session",
        count_of(status.users_online),
    );
    register_counts(registry, server);
    let standby = Family::<Vec<(String, String)>, Gauge>::default();
    for (site, sessions) in &status.standby {
        standby
            .get_or_create(&vec![("site".to_owned(), site.clone())])
            .set(count_of(*sessions));
    }
    registry.register(
        "standby_sessions",
        "On a hub: the sites it stands in for, with their users' sessions here",
        standby,
    );
    if let Some(r) = &status.replication {
        gauge(
            registry,
            "replication_acknowledged_position",
            "On a site: the last position of its replication log the hub acknowledged",
            r.acked,
        );
    }
}

/// A cluster node: whether NATS answers, and each other node's sessions in this node's
/// directory and how long ago it was heard.
fn register_cluster(registry: &mut Registry, cluster: &outpost_server::ClusterStatus) {
    gauge(
        registry,
        "cluster_nats_connected",
        "On a cluster node: 1 while it is connected to NATS",
        i64::from(cluster.nats_connected),
    );
    gauge(
        registry,
        "cluster_postgres_answering",
        "On a cluster node: 1 if the registry in PostgreSQL answered this scrape",
        i64::from(cluster.postgres_error.is_none()),
    );
    counter(
        registry,
        "cluster_published",
        "On a cluster node: messages it published on NATS since it started",
        cluster.published,
    );
    counter(
        registry,
        "cluster_received",
        "On a cluster node: messages it received from the other nodes since it started",
        cluster.received,
    );
    let directory = Family::<Vec<(String, String)>, Gauge>::default();
    let heard = Family::<Vec<(String, String)>, Gauge<f64, AtomicU64>>::default();
    for n in cluster
        .nodes
        .iter()
        .filter(|n| n.node_id != cluster.node_id)
    {
        let labels = vec![("node".to_owned(), n.node_id.clone())];
        directory
            .get_or_create(&labels)
            .set(i64::try_from(n.directory).unwrap_or(i64::MAX));
        if let Some(ms) = n.heard_ms_ago {
            heard.get_or_create(&labels).set(ms as f64 / 1000.0);
        }
    }
    registry.register(
        "cluster_directory_sessions",
        "On a cluster node: each other node's sessions in this node's directory",
        directory,
    );
    registry.register(
        "cluster_heard_seconds",
        "On a cluster node: seconds since each other node was last heard over NATS",
        heard,
    );
}

/// What the server counted since it started.
fn register_counts(registry: &mut Registry, server: &ServerView) {
    let counts = server.counts();
    let stanzas = Family::<Vec<(String, String)>, Counter>::default();
    for (kind, n) in [
        ("message", counts.messages),
        ("presence", counts.presences),
        ("iq", counts.iqs),
    ] {
        stanzas
            .get_or_create(&vec![("kind".to_owned(), kind.to_owned())])
            .inc_by(n);
    }
    registry.register(
        "stanzas_received",
        "Stanzas read from clients and peer servers, by kind",
        stanzas,
    );
    counter(
        registry,
        "login_failures",
        "Failed authentications",
        counts.login_failures,
    );
    counter(
        registry,
        "offline_stored",
        "Messages committed to an offline queue",
        counts.offline_stored,
    );
    counter(
        registry,
        "archived",
        "Archive rows committed",
        counts.archived,
    );
}

/// Each server-to-server link: its state and its durable queue.
fn register_links(registry: &mut Registry, status: &ServerStatus) {
    let up = Family::<Vec<(String, String)>, Gauge>::default();
    let queued = Family::<Vec<(String, String)>, Gauge>::default();
    let oldest = Family::<Vec<(String, String)>, Gauge<f64, AtomicU64>>::default();
    let now = now_ms();
    for link in &status.links {
        let pair = vec![
            ("local".to_owned(), link.local.clone()),
            ("remote".to_owned(), link.remote.clone()),
        ];
        let mut with_path = pair.clone();
        with_path.push(("path".to_owned(), link.path.clone()));
        up.get_or_create(&with_path)
            .set(i64::from(link.state == LinkState::Up));
        queued
            .get_or_create(&pair)
            .set(i64::try_from(link.queued).unwrap_or(i64::MAX));
        let age = link
            .oldest_queued_at_ms
            .map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0);
        oldest.get_or_create(&pair).set(age);
    }
    registry.register(
        "s2s_link_up",
        "Whether the link to a peer domain is up (1) or not (0), with the path it takes",
        up,
    );
    registry.register(
        "s2s_queued",
        "Stanzas in a link's durable queue, not yet acknowledged by the peer",
        queued,
    );
    registry.register(
        "s2s_oldest_queued_age_seconds",
        "How long the oldest stanza in a link's queue has waited",
        oldest,
    );
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_server::LinkStatus;

    #[test]
    fn each_link_says_its_state_path_and_queue() {
        let link = |remote: &str, state, queued, oldest| LinkStatus {
            local: "a.test".to_owned(),
            remote: remote.to_owned(),
            state,
            path: "hub".to_owned(),
            since_ms: None,
            last_error: None,
            queued,
            oldest_queued_at_ms: oldest,
            last_delivery_ms: None,
        };
        let status = ServerStatus {
            version: String::new(),
            started_at_ms: 0,
            domains: Vec::new(),
            sessions: 0,
            users_online: 0,
            federation: true,
            links: vec![
                link("b.test", LinkState::Up, 0, None),
                link("c.test", LinkState::Backoff, 3, Some(now_ms() - 90_000)),
            ],
            standby: Vec::new(),
            replication: None,
        };
        let mut registry = Registry::with_prefix("outpost");
        register_links(&mut registry, &status);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        let up = r#"outpost_s2s_link_up{local="a.test",remote="b.test",path="hub"}"#;
        let down = r#"outpost_s2s_link_up{local="a.test",remote="c.test",path="hub"}"#;
        assert_eq!((value(up), value(down)), (1.0, 0.0));
        assert_eq!(
            value(r#"outpost_s2s_queued{local="a.test",remote="c.test"}"#),
            3.0
        );
        let age = value(r#"outpost_s2s_oldest_queued_age_seconds{local="a.test",remote="c.test"}"#);
        assert!((90.0..100.0).contains(&age), "{age}");
    }
}
