//! `outpost admin cluster`: the nodes of this server's cluster, as the running node sees
//! them (registry and NATS), or the registry alone when it is stopped.

use anyhow::bail;
use outpost_server::config::Config;
use outpost_server::{ClusterStatus, NodeStatus};

use super::ops::{ago, ms_to_rfc3339, table};
use crate::control::{self, Request, Response};

pub(super) async fn show(config: &Config, json: bool) -> anyhow::Result<String> {
    if !config.cluster.enabled() {
        bail!("this server is not a cluster node (no [cluster] nats_url in its configuration)");
    }
    let status = match control::request(config, &Request::Cluster).await? {
        Some(Response {
            ok: true, result, ..
        }) => serde_json::from_value::<Option<ClusterStatus>>(result)?,
        Some(Response { error, .. }) => bail!("{}", error.unwrap_or_else(|| "refused".into())),
        None => None,
    };
    let running = status.is_some();
    let status = match status {
        Some(s) => s,
        None => from_registry(config).await?,
    };
    if json {
        return Ok(serde_json::to_string_pretty(&status)? + "\n");
    }
    Ok(render(&status, running, super::links::now_ms()))
}

/// The registry as PostgreSQL has it, for a node that is not running.
async fn from_registry(config: &Config) -> anyhow::Result<ClusterStatus> {
    let store = crate::serve::open_store(config).await?;
    let nodes = store.cluster_nodes().await;
    let leases = store.cluster_leases().await;
    store.close().await;
    let (leases, now) = (leases?, super::links::now_ms());
    Ok(ClusterStatus {
        node_id: config.cluster.node_id.clone().unwrap_or_default(),
        nats_connected: false,
        postgres_error: None,
        nodes: nodes?
            .into_iter()
            .map(|n| {
                NodeStatus {
                    node_id: n.node_id,
                    address: n.address,
                    started_ms: n.started_ms,
                    lease_until_ms: Some(n.lease_until_ms),
                    sessions: n.sessions,
                    heard_ms_ago: None,
                    directory: 0,
                    rooms: 0,
                    links: 0,
                }
                .with_leases(&n.epoch, &leases, now)
            })
            .collect(),
        published: 0,
        received: 0,
    })
}

fn render(status: &ClusterStatus, running: bool, now: i64) -> String {
    let me = &status.node_id;
    let mut text = match running {
        true => format!(
            "node {me}: NATS {}, PostgreSQL {}; {} messages out, {} in over NATS\n",
            if status.nats_connected {
                "connected"
            } else {
                "NOT CONNECTED"
            },
            status
                .postgres_error
                .as_deref()
                .map_or("answering".to_owned(), |e| format!("NOT ANSWERING ({e})")),
            status.published,
            status.received,
        ),
        false => format!("node {me} is not running; the registry in PostgreSQL says:\n"),
    };
    let rows: Vec<[String; 8]> = status
        .nodes
        .iter()
        .map(|n| row(n, n.node_id == *me, running, now))
        .collect();
    let header = [
        "NODE",
        "ADDRESS",
        "STARTED",
        "LEASE",
        "SESSIONS",
        "HEARD",
        "IN DIRECTORY",
        "RUNS",
    ];
    text.push_str(&table(header, &rows));
    text
}

/// One node's line.
fn row(n: &NodeStatus, me: bool, running: bool, now: i64) -> [String; 8] {
    let lease = match n.lease_until_ms {
        Some(until) if until >= now => format!("{} left", ago(until - now)),
        Some(until) => format!("ended {} ago", ago(now - until)),
        None => "?".to_owned(),
    };
    let heard = match (me, n.heard_ms_ago) {
        (true, _) => "(this node)".to_owned(),
        (false, Some(ms)) => format!("{} ago", ago(ms as i64)),
        (false, None) if running => "not heard".to_owned(),
        (false, None) => "-".to_owned(),
    };
    let started = match n.started_ms {
        0 => "?".to_owned(),
        ms => ms_to_rfc3339(ms),
    };
    [
        n.node_id.clone(),
        n.address.clone(),
        started,
        lease,
        n.sessions.to_string(),
        heard,
        n.directory.to_string(),
        runs(n),
    ]
}

/// What a node runs for the cluster, from its leases: `2 links, 3 rooms`, or `-`.
fn runs(n: &NodeStatus) -> String {
    let mut parts = Vec::new();
    for (count, one, many) in [(n.links, "link", "links"), (n.rooms, "room", "rooms")] {
        match count {
            0 => {}
            1 => parts.push(format!("1 {one}")),
            k => parts.push(format!("{k} {many}")),
        }
    }
    match parts.is_empty() {
        true => "-".to_owned(),
        false => parts.join(", "),
    }
}
