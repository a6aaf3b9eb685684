//! `outpost admin replication`: how a site's directory replication to its hub goes, or, on
//! a hub, where its replica of each site stands and which sites it stands in for.
//!
//! Positions come from the store, so they are right whether or not the server runs; the
//! live part (the shipper's last error, the sessions of standby sites) from the running
//! server, when there is one.

use std::fmt::Write as _;

use anyhow::Context as _;
use outpost_server::ServerStatus;
use outpost_server::config::{Config, Role};
use outpost_store::{ReplLog, ReplOrigin};
use serde::Serialize;

use crate::control::{self, Request};
use crate::serve::open_store;

/// A site's side, as `--json` prints it.
#[derive(Debug, Serialize)]
struct SiteView {
    role: &'static str,
    hub: Option<String>,
    active: bool,
    epoch: String,
    /// The last position the hub acknowledged.
    position: i64,
    /// The log's last position.
    head: i64,
    /// Entries the hub has not acknowledged yet.
    lag: i64,
    last_sync: Option<String>,
    /// The same, in milliseconds since the epoch (0: never).
    last_sync_ms: i64,
    /// Records the hub merged back that lost to a later write here.
    conflicts: i64,
    running: bool,
    error: Option<String>,
}

/// One site's replica on a hub.
#[derive(Debug, Serialize)]
struct SiteReplica {
    domain: String,
    position: i64,
    head: i64,
    lag: i64,
    records: i64,
    snapshots: i64,
    last_sync: Option<String>,
    last_sync_ms: i64,
    /// How long after its newest change the last batch arrived, in milliseconds.
    last_lag_ms: Option<i64>,
    /// Writes of the same key by both sides that the hub settled (one of them lost).
    conflicts: i64,
    /// What the hub wrote or stored for the site's users, not back at the site yet.
    unmerged: i64,
    standby: bool,
    standby_sessions: usize,
}

#[derive(Debug, Serialize)]
struct HubView {
    role: &'static str,
    running: bool,
    sites: Vec<SiteReplica>,
}

/// `outpost admin replication`.
pub(super) async fn show(config: &Config, json: bool) -> anyhow::Result<String> {
    crate::serve::require_store(config)?;
    let live = running_status(config).await;
    let store = open_store(config).await?;
    let (log, origins) = (store.repl_log().await, store.repl_origins().await);
    store.close().await;
    let text = match config.role {
        Role::Site => {
            let view = site_view(
                config,
                log.context("cannot read the replication log")?,
                live,
            );
            match json {
                true => serde_json::to_string_pretty(&view)?,
                false => site_text(&view),
            }
        }
        Role::Hub => {
            let origins = origins.context("cannot read the replicas")?;
            let view = hub_view(config, origins, live);
            match json {
                true => serde_json::to_string_pretty(&view)?,
                false => hub_text(&view),
            }
        }
    };
    Ok(if text.ends_with('\n') {
        text
    } else {
        text + "\n"
    })
}

/// The running server's status, if one runs here.
async fn running_status(config: &Config) -> Option<ServerStatus> {
    match control::request(config, &Request::Status).await {
        Ok(Some(r)) if r.ok => serde_json::from_value(r.result).ok(),
        _ => None,
    }
}

fn time(ms: i64) -> Option<String> {
    (ms > 0).then(|| crate::tls::rfc3339(ms.div_euclid(1000)))
}

fn site_view(config: &Config, log: ReplLog, live: Option<ServerStatus>) -> SiteView {
    let running = live.is_some();
    let error = live.and_then(|s| s.replication).and_then(|r| r.error);
    SiteView {
        role: "site",
        hub: config.federation.hub.clone(),
        active: log.active,
        epoch: log.epoch,
        position: log.acked,
        head: log.last,
        lag: (log.last - log.acked).max(0),
        last_sync: time(log.synced_ms),
        last_sync_ms: log.synced_ms,
        conflicts: log.conflicts,
        running,
        error,
    }
}

fn site_text(v: &SiteView) -> String {
    let mut text = String::new();
    let Some(hub) = &v.hub else {
        return "no hub (federation.hub): this site replicates its directory nowhere\n".into();
    };
    if !v.active {
        let _ = writeln!(
            text,
            "replication to {hub} is off (federation.replicate, or the server never ran with it)"
        );
        return text;
    }
    let _ = writeln!(text, "replicating to {hub} (log epoch {})", v.epoch);
    let _ = writeln!(
        text,
        "acknowledged: {} of {} ({} waiting)",
        v.position, v.head, v.lag
    );
    let _ = writeln!(
        text,
        "last sync: {}",
        v.last_sync.as_deref().unwrap_or("never")
    );
    let _ = writeln!(
        text,
        "conflicts merged: {} (records from the hub that lost to a later write here)",
        v.conflicts
    );
    let _ = writeln!(
        text,
        "now: {}",
        match (v.running, &v.error) {
            (false, _) => "server not running".to_owned(),
            (true, None) => "in step".to_owned(),
            (true, Some(e)) => format!("waiting: {e}"),
        }
    );
    text
}

fn hub_view(config: &Config, origins: Vec<ReplOrigin>, live: Option<ServerStatus>) -> HubView {
    let running = live.is_some();
    let standby = live.map(|s| s.standby).unwrap_or_default();
    let mut sites: Vec<SiteReplica> = config
        .federation
        .relay_for
        .iter()
        .map(|domain| {
            let o = origins.iter().find(|o| o.domain == *domain);
            let o = o.cloned().unwrap_or_default();
            let here = standby.iter().find(|(s, _)| s == domain);
            SiteReplica {
                domain: domain.clone(),
                position: o.position,
                head: o.head,
                lag: (o.head - o.position).max(0),
                records: o.records,
                snapshots: o.snapshots,
                last_sync: time(o.synced_ms),
                last_sync_ms: o.synced_ms,
                last_lag_ms: o.lag_ms(),
                conflicts: o.conflicts,
                unmerged: o.pending,
                standby: here.is_some(),
                standby_sessions: here.map_or(0, |(_, n)| *n),
            }
        })
        .collect();
    sites.sort_by(|a, b| a.domain.cmp(&b.domain));
    HubView {
        role: "hub",
        running,
        sites,
    }
}

fn hub_text(v: &HubView) -> String {
    let mut text = format!(
        "{:<24} {:>10} {:>10} {:>8} {:>10} {:>9}  {:<20} {:>9} {:>9} {:>8}  {}\n",
        "SITE",
        "POSITION",
        "HEAD",
        "LAG",
        "RECORDS",
        "SNAPSHOTS",
        "LAST SYNC",
        "DELAY",
        "CONFLICTS",
        "UNMERGED",
        "STANDBY"
    );
    for s in &v.sites {
        let standby = match (v.running, s.standby) {
            (false, _) => "server not running".to_owned(),
            (true, false) => "no".to_owned(),
            (true, true) => format!("yes, {} sessions here", s.standby_sessions),
        };
        let delay = s
            .last_lag_ms
            .map_or("-".to_owned(), |ms| format!("{ms} ms"));
        let _ = writeln!(
            text,
            "{:<24} {:>10} {:>10} {:>8} {:>10} {:>9}  {:<20} {delay:>9} {:>9} {:>8}  {standby}",
            s.domain,
            s.position,
            s.head,
            s.lag,
            s.records,
            s.snapshots,
            s.last_sync.as_deref().unwrap_or("never"),
            s.conflicts,
            s.unmerged,
        );
    }
    text
}
