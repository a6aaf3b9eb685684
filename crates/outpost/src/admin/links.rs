//! `outpost admin links`: each server-to-server link's health.
//!
//! The queue figures come from the store itself, so they are right whether or not the
//! server runs. The live part (state, since when, why the last attempt failed) comes from
//! `<data_dir>/links.json`, which `outpost serve` rewrites on every change of a link's
//! state and every [`PUBLISH_INTERVAL`] ([`publish_links`]). A file older than
//! [`STALE_AFTER`], or written by a process that no longer exists, means the server is not
//! running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use outpost_server::config::Config;
use outpost_server::{LinkStatus, ServerHandle};
use outpost_store::OutboxStats;
use serde::{Deserialize, Serialize};

use crate::serve::open_store;

/// How often `serve` rewrites `links.json` when nothing changes.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(2);
/// A `links.json` not rewritten for this long belongs to a server that stopped.
const STALE_AFTER: Duration = Duration::from_secs(10);
/// The state shown for every link when the server does not run.
const NOT_RUNNING: &str = "server not running";

/// What `serve` writes to `links.json`.
#[derive(Debug, Serialize, Deserialize)]
struct LinksFile {
    pid: u32,
    written_at_ms: i64,
    links: Vec<LinkStatus>,
}

/// `outpost admin links`.
pub(super) async fn show(config: &Config, json: bool) -> anyhow::Result<String> {
    if !config.federation.enabled {
        let mut text = "federation is off (federation.enabled = false): this server has no \
                        links to other servers\n"
            .to_owned();
        // Stanzas queued while it was on are still in the store; say so.
        if !config.storage_path().exists() {
            return Ok(text);
        }
        let rows = link_rows(config).await?;
        if rows.iter().any(|r| r.queued > 0) {
            text.push_str("stanzas queued while it was on:\n");
            text.push_str(&table(&rows, now_ms()));
        }
        return Ok(text);
    }
    let rows = link_rows(config).await?;
    Ok(if json {
        let mut text = serde_json::to_string_pretty(&json_rows(&rows, now_ms()))?;
        text.push('\n');
        text
    } else {
        table(&rows, now_ms())
    })
}

async fn link_rows(config: &Config) -> anyhow::Result<Vec<Row>> {
    crate::serve::require_store(config)?;
    let store = open_store(config).await?;
    let stats = store.outbox_stats().await;
    store.close().await;
    let stats = stats.context("cannot read the outbox")?;
    let live = read_live(&config.links_status_path(), now_ms());
    Ok(merge(stats, live.map(|f| f.links)))
}

/// The live links from `path`, if a running server wrote it recently.
fn read_live(path: &Path, now_ms: i64) -> Option<LinksFile> {
    let text = std::fs::read_to_string(path).ok()?;
    let file: LinksFile = match serde_json::from_str(&text) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable links file");
            return None;
        }
    };
    let stale_ms = i64::try_from(STALE_AFTER.as_millis()).unwrap_or(i64::MAX);
    (now_ms.saturating_sub(file.written_at_ms) <= stale_ms && process_alive(file.pid))
        .then_some(file)
}

/// Whether a process with this id exists. Without `/proc` (not Linux) only the file's
/// age decides.
fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// One link as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    local: String,
    remote: String,
    /// `up`, `connecting`, `backoff`, `idle`, or [`NOT_RUNNING`].
    state: String,
    path: String,
    since_ms: Option<i64>,
    last_error: Option<String>,
    queued: u64,
    oldest_queued_at_ms: Option<i64>,
    last_delivery_ms: Option<i64>,
}

/// The rows to show: the live states with the store's current queue figures when the
/// server runs (`live`), else the store's figures with the state [`NOT_RUNNING`].
fn merge(stats: Vec<OutboxStats>, live: Option<Vec<LinkStatus>>) -> Vec<Row> {
    let running = live.is_some();
    let mut rows: Vec<Row> = live
        .unwrap_or_default()
        .into_iter()
        .map(|l| Row {
            local: l.local,
            remote: l.remote,
            state: l.state.as_str().to_owned(),
            path: l.path,
            since_ms: l.since_ms,
            last_error: l.last_error,
            // The store's figures below are newer; a pair it does not list has none.
            queued: 0,
            oldest_queued_at_ms: None,
            last_delivery_ms: l.last_delivery_ms,
        })
        .collect();
    for s in stats {
        match rows
            .iter_mut()
            .find(|r| r.local == s.local_domain && r.remote == s.remote_domain)
        {
            Some(row) => {
                row.queued = s.queued;
                row.oldest_queued_at_ms = s.oldest_queued_at_ms;
                row.last_delivery_ms = s.last_delivery_ms.or(row.last_delivery_ms);
            }
            None => rows.push(Row {
                local: s.local_domain,
                remote: s.remote_domain,
                // Running, but no link task for this pair in this run.
                state: if running { "idle" } else { NOT_RUNNING }.to_owned(),
                path: "direct".to_owned(),
                since_ms: None,
                last_error: None,
                queued: s.queued,
                oldest_queued_at_ms: s.oldest_queued_at_ms,
                last_delivery_ms: s.last_delivery_ms,
            }),
        }
    }
    rows.sort_by(|a, b| (&a.remote, &a.local).cmp(&(&b.remote, &b.local)));
    rows
}

/// One link in `--json` output.
#[derive(Debug, Serialize)]
struct JsonRow<'a> {
    local: &'a str,
    remote: &'a str,
    state: &'a str,
    path: &'a str,
    since: Option<String>,
    queued: u64,
    oldest_queued_at: Option<String>,
    oldest_queued_age_secs: Option<u64>,
    last_delivery_at: Option<String>,
    last_delivery_age_secs: Option<u64>,
    last_error: Option<&'a str>,
}

fn json_rows(rows: &[Row], now_ms: i64) -> Vec<JsonRow<'_>> {
    rows.iter()
        .map(|r| JsonRow {
            local: &r.local,
            remote: &r.remote,
            state: &r.state,
            path: &r.path,
            since: r.since_ms.and_then(rfc3339),
            queued: r.queued,
            oldest_queued_at: r.oldest_queued_at_ms.and_then(rfc3339),
            oldest_queued_age_secs: r.oldest_queued_at_ms.map(|t| age_secs(t, now_ms)),
            last_delivery_at: r.last_delivery_ms.and_then(rfc3339),
            last_delivery_age_secs: r.last_delivery_ms.map(|t| age_secs(t, now_ms)),
            last_error: r.last_error.as_deref(),
        })
        .collect()
}

/// The table `admin links` prints, one link per line under a header.
fn table(rows: &[Row], now_ms: i64) -> String {
    if rows.is_empty() {
        return "no server-to-server links\n".to_owned();
    }
    let header = [
        "LINK",
        "STATE",
        "PATH",
        "QUEUED",
        "OLDEST",
        "LAST DELIVERY",
        "ERROR",
    ]
    .map(str::to_owned);
    let mut lines = vec![header];
    for r in rows {
        let state = match r.since_ms {
            Some(since) => format!("{} {}", r.state, human_age(age_secs(since, now_ms))),
            None => r.state.clone(),
        };
        lines.push([
            format!("{} -> {}", r.local, r.remote),
            state,
            r.path.clone(),
            r.queued.to_string(),
            r.oldest_queued_at_ms
                .map_or("-".to_owned(), |t| human_age(age_secs(t, now_ms))),
            r.last_delivery_ms.map_or("never".to_owned(), |t| {
                format!("{} ago", human_age(age_secs(t, now_ms)))
            }),
            r.last_error.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let mut widths = [0usize; 7];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (i, (cell, w)) in line.iter().zip(widths).enumerate() {
            if i + 1 == line.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// Whole seconds from `then_ms` to `now_ms`; 0 for a time in the future (clock skew).
fn age_secs(then_ms: i64, now_ms: i64) -> u64 {
    u64::try_from(now_ms.saturating_sub(then_ms) / 1000).unwrap_or(0)
}

/// An age for people: `42s`, `3m12s`, `2h05m`, `3d04h`.
fn human_age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// A Unix time in milliseconds as RFC 3339 (UTC); `None` if out of range.
fn rfc3339(ms: i64) -> Option<String> {
    let nanos = i128::from(ms) * 1_000_000;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Run by `serve` beside the server: writes the links' state to `path` at once, on every
/// change and every [`PUBLISH_INTERVAL`]. Never returns; stop it by dropping it, then
/// call [`remove_links_file`].
pub(crate) async fn publish_links(handle: &ServerHandle, path: &Path) {
    let mut changes = handle.link_changes();
    // A failure to write is logged when it starts or changes, not every time.
    let mut last_problem: Option<String> = None;
    loop {
        let problem = match handle.link_statuses().await {
            Ok(links) => {
                let file = LinksFile {
                    pid: std::process::id(),
                    written_at_ms: now_ms(),
                    links,
                };
                write_atomically(path, &file)
                    .err()
                    .map(|e| format!("{e:#}"))
            }
            Err(e) => Some(format!("cannot read the links' queues: {e}")),
        };
        if problem != last_problem {
            match &problem {
                Some(p) => {
                    tracing::warn!(path = %path.display(), problem = %p, "cannot publish the links' state")
                }
                None if last_problem.is_some() => {
                    tracing::info!(path = %path.display(), "publishing the links' state again");
                }
                None => {}
            }
            last_problem = problem;
        }
        let tick = tokio::time::sleep(PUBLISH_INTERVAL);
        match changes.as_mut() {
            Some(rx) => {
                tokio::select! {
                    () = tick => {}
                    changed = rx.changed() => {
                        if changed.is_err() {
                            changes = None;
                        }
                    }
                }
            }
            None => tick.await,
        }
    }
}

/// Writes `file` as JSON to a temporary file beside `path` and renames it over `path`, so
/// that a reader sees the old content or the new, never a part.
fn write_atomically(path: &Path, file: &LinksFile) -> anyhow::Result<()> {
    let text = serde_json::to_vec_pretty(file)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// Removes `links.json` at shutdown, so that `admin links` reports the server stopped at
/// once rather than after [`STALE_AFTER`].
pub(crate) fn remove_links_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the links file")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_server::LinkState;

    fn live(remote: &str, state: LinkState) -> LinkStatus {
        LinkStatus {
            local: "a.test".to_owned(),
            remote: remote.to_owned(),
            state,
            path: "direct".to_owned(),
            since_ms: Some(1_000),
            last_error: (state == LinkState::Backoff).then(|| "cannot connect: refused".to_owned()),
            queued: 7,
            oldest_queued_at_ms: Some(500),
            last_delivery_ms: Some(900),
        }
    }

    fn stats(
        remote: &str,
        queued: u64,
        oldest: Option<i64>,
        delivered: Option<i64>,
    ) -> OutboxStats {
        OutboxStats {
            local_domain: "a.test".to_owned(),
            remote_domain: remote.to_owned(),
            queued,
            oldest_queued_at_ms: oldest,
            last_delivery_ms: delivered,
        }
    }

    #[test]
    fn human_ages() {
        assert_eq!(human_age(0), "0s");
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(192), "3m12s");
        assert_eq!(human_age(3600 + 5 * 60 + 9), "1h05m");
        assert_eq!(human_age(3 * 86400 + 4 * 3600), "3d04h");
        assert_eq!(age_secs(10_000, 4_000), 0, "a future time is no age");
        assert_eq!(age_secs(1_000, 193_999), 192);
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(
            rfc3339(1_764_080_000_250).as_deref(),
            Some("2025-11-25T14:13:20.25Z")
        );
    }

    #[test]
    fn live_states_take_the_stores_queue_figures() {
        let rows = merge(
            vec![
                stats("b.test", 3, Some(2_000), Some(1_500)),
                stats("d.test", 1, Some(10), None),
            ],
            Some(vec![
                live("b.test", LinkState::Backoff),
                live("c.test", LinkState::Up),
            ]),
        );
        let summary: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.remote.as_str(),
                    r.state.as_str(),
                    r.queued,
                    r.oldest_queued_at_ms,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("b.test", "backoff", 3, Some(2_000)),
                // Gone from the outbox since the file was written: delivered.
                ("c.test", "up", 0, None),
                ("d.test", "idle", 1, Some(10)),
            ]
        );
        assert_eq!(rows[0].last_delivery_ms, Some(1_500));
        assert_eq!(
            rows[0].last_error.as_deref(),
            Some("cannot connect: refused")
        );
    }

    #[test]
    fn without_a_server_every_link_says_so() {
        let rows = merge(vec![stats("b.test", 3, Some(2_000), None)], None);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, NOT_RUNNING);
        assert_eq!(rows[0].queued, 3);
        assert_eq!(rows[0].since_ms, None);
    }

    #[test]
    fn table_and_json_show_ages() {
        let now = 1_764_080_000_000;
        let rows = merge(
            vec![stats(
                "b.test",
                3,
                Some(now - 192_000),
                Some(now - 3_600_000),
            )],
            Some(vec![LinkStatus {
                since_ms: Some(now - 5_000),
                ..live("b.test", LinkState::Backoff)
            }]),
        );
        let text = table(&rows, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("LINK"), "{text}");
        let cells: Vec<&str> = lines[1]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            cells,
            [
                "a.test -> b.test",
                "backoff 5s",
                "direct",
                "3",
                "3m12s",
                "1h00m ago",
                "cannot connect: refused"
            ]
        );
        let json = serde_json::to_value(json_rows(&rows, now)).expect("serialisable");
        let row = &json[0];
        assert_eq!(row["state"], "backoff");
        assert_eq!(row["queued"], 3);
        assert_eq!(row["oldest_queued_age_secs"], 192);
        assert_eq!(row["last_delivery_age_secs"], 3600);
        assert_eq!(row["last_delivery_at"], "2025-11-25T13:13:20Z");
        assert_eq!(row["path"], "direct");
        assert_eq!(row["last_error"], "cannot connect: refused");
        assert_eq!(table(&[], now), "no server-to-server links\n");
    }

    #[test]
    fn a_stale_or_orphaned_file_means_not_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("links.json");
        let now = now_ms();
        let file = LinksFile {
            pid: std::process::id(),
            written_at_ms: now,
            links: vec![live("b.test", LinkState::Up)],
        };
        write_atomically(&path, &file).expect("write");
        let read = read_live(&path, now).expect("fresh file from a live process");
        assert_eq!(read.links, file.links);
        let stale_ms = i64::try_from(STALE_AFTER.as_millis()).expect("small");
        assert!(read_live(&path, now + stale_ms + 1).is_none(), "stale");
        // No process has the largest pid the kernel allows plus one.
        let orphan = LinksFile {
            pid: 4_194_305,
            ..file
        };
        write_atomically(&path, &orphan).expect("write");
        assert!(read_live(&path, now).is_none(), "writer gone");
        remove_links_file(&path);
        assert!(read_live(&path, now).is_none(), "no file");
        remove_links_file(&path);
    }
}
