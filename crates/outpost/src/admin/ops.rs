//! The `outpost admin` commands that manage a server: through its control socket when it
//! runs, on the files themselves when they must.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context as _, bail};
use outpost_server::config::Config;
use outpost_server::{Reloaded, ServerStatus, SessionInfo};
use outpost_store::Store as _;

use crate::control::{self, Request};
use crate::serve::open_store;
use crate::tls::rfc3339;

pub(super) fn ms_to_rfc3339(ms: i64) -> String {
    rfc3339(ms.div_euclid(1000))
}

/// A duration in days, hours, minutes and seconds, largest two units.
pub(super) fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (d, h, _) if d > 0 => format!("{d}d {h}h"),
        (_, h, m) if h > 0 => format!("{h}h {m}m"),
        (_, _, m) if m > 0 => format!("{m}m {}s", s % 60),
        _ => format!("{s}s"),
    }
}

pub(super) async fn status(config: &Config) -> anyhow::Result<String> {
    let status: ServerStatus =
        serde_json::from_value(control::require(config, &Request::Status).await?)?;
    let now = super::links::now_ms();
    let db = std::fs::metadata(config.storage_path())
        .map(|m| m.len())
        .ok();
    let mut text = String::new();
    writeln!(text, "outpost {} running", status.version)?;
    writeln!(
        text,
        "up since {} ({})",
        ms_to_rfc3339(status.started_at_ms),
        ago(now - status.started_at_ms)
    )?;
    writeln!(text, "domains: {}", status.domains.join(", "))?;
    writeln!(
        text,
        "sessions: {} ({} users online)",
        status.sessions, status.users_online
    )?;
    if status.federation {
        let up = status
            .links
            .iter()
            .filter(|l| l.state.as_str() == "up")
            .count();
        let queued: u64 = status.links.iter().map(|l| l.queued).sum();
        writeln!(
            text,
            "links: {} ({up} up), {queued} stanzas queued",
            status.links.len()
        )?;
    } else {
        writeln!(text, "links: federation is off")?;
    }
    for (site, sessions) in &status.standby {
        writeln!(text, "standing in for {site}: {sessions} sessions here")?;
    }
    if let Some(r) = &status.replication {
        let state = r
            .error
            .as_deref()
            .map_or("in step".to_owned(), |e| format!("waiting: {e}"));
        writeln!(
            text,
            "replication to {}: position {} acknowledged, {state}",
            r.hub, r.acked
        )?;
    }
    writeln!(text, "{}", store_line(config, db))?;
    Ok(text)
}

/// Where the store is: the SQLite file and its size, or the PostgreSQL database.
fn store_line(config: &Config, db: Option<u64>) -> String {
    if config.storage.backend == outpost_server::config::StorageBackend::Postgres {
        let url = config.storage.url.as_deref().unwrap_or_default();
        return format!(
            "store: PostgreSQL {}",
            outpost_server::config::redact_url(url)
        );
    }
    match db {
        Some(bytes) => format!(
            "store: {} ({:.1} MiB)",
            config.storage_path().display(),
            bytes as f64 / (1 << 20) as f64
        ),
        None => format!("store: {}", config.storage_path().display()),
    }
}

pub(super) async fn sessions(config: &Config, json: bool) -> anyhow::Result<String> {
    let value = control::require(config, &Request::Sessions).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&value)? + "\n");
    }
    let sessions: Vec<SessionInfo> = serde_json::from_value(value)?;
    if sessions.is_empty() {
        return Ok("no sessions\n".to_owned());
    }
    let now = super::links::now_ms();
    let rows: Vec<[String; 4]> = sessions
        .iter()
        .map(|s| {
            let presence = match s.available {
                true => format!("available ({})", s.priority),
                false => "not available".to_owned(),
            };
            [
                s.jid.clone(),
                s.peer.to_string(),
                ago(now - s.since_ms),
                presence,
            ]
        })
        .collect();
    Ok(table(["JID", "ADDRESS", "CONNECTED", "PRESENCE"], &rows))
}

pub(super) fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        text.push_str(l.trim_end());
        text.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    text
}

pub(super) async fn kick(config: &Config, jid: &str) -> anyhow::Result<String> {
    let n = control::require(
        config,
        &Request::Kick {
            jid: jid.to_owned(),
        },
    )
    .await?;
    Ok(match n.as_u64().unwrap_or(0) {
        0 => format!("no session of {jid}\n"),
        1 => format!("disconnected 1 session of {jid}\n"),
        n => format!("disconnected {n} sessions of {jid}\n"),
    })
}

pub(super) async fn reload(config: &Config) -> anyhow::Result<String> {
    let report: Reloaded =
        serde_json::from_value(control::require(config, &Request::Reload).await?)?;
    let mut text = "configuration reloaded\n".to_owned();
    if !report.domains_removed.is_empty() {
        writeln!(
            text,
            "no longer served: {} ({} sessions ended)",
            report.domains_removed.join(", "),
            report.sessions_ended
        )?;
    }
    if !report.needs_restart.is_empty() {
        writeln!(
            text,
            "not applied, take a restart: {}",
            report.needs_restart.join(", ")
        )?;
    }
    Ok(text)
}

pub(super) async fn unblock(
    config: &Config,
    account: Option<String>,
    address: Option<IpAddr>,
) -> anyhow::Result<String> {
    let account = account
        .map(|a| outpost_server::accounts::normalize_user_jid(&a))
        .transpose()?;
    let request = Request::Unblock { account, address };
    let n = control::require(config, &request).await?;
    Ok(format!(
        "forgot {} failed-login counts\n",
        n.as_u64().unwrap_or(0)
    ))
}

/// PostgreSQL databases are backed up and restored with PostgreSQL's own tools.
fn sqlite_only(config: &Config, what: &str) -> anyhow::Result<()> {
    if config.storage.backend == outpost_server::config::StorageBackend::Postgres {
        bail!("{what} works on the SQLite store; for PostgreSQL use pg_dump and pg_restore");
    }
    Ok(())
}

pub(super) async fn backup(config: &Config, file: &Path) -> anyhow::Result<String> {
    sqlite_only(config, "outpost admin backup")?;
    // The server writes the file itself, so the path must mean the same to it.
    let file =
        std::path::absolute(file).with_context(|| format!("cannot resolve {}", file.display()))?;
    let request = Request::Backup { path: file.clone() };
    match control::request(config, &request).await? {
        Some(r) if r.ok => {}
        Some(r) => bail!("{}", r.error.unwrap_or_else(|| "backup failed".to_owned())),
        None => {
            // No server: back up the file directly.
            crate::serve::require_store(config)?;
            let store = open_store(config).await?;
            let result = store.backup(&file).await;
            store.close().await;
            result.with_context(|| format!("cannot back up to {}", file.display()))?;
        }
    }
    Ok(format!("backed up to {}\n", file.display()))
}

/// Replaces the database with `file`, a backup: checked by opening it as a store (which
/// also brings an older one's schema up to date) in a copy next to the database, then moved
/// into place in one rename. Refused while a server runs on the data directory.
pub(super) async fn restore(config: &Config, file: &Path) -> anyhow::Result<String> {
    sqlite_only(config, "outpost admin restore")?;
    if control::request(config, &Request::Status).await?.is_some() {
        bail!("the server is running: stop it before restoring (a backup needs no stop)");
    }
    if !file.is_file() {
        bail!("{} is not a file", file.display());
    }
    let db = config.storage_path();
    crate::serve::create_private_dir(db.parent().unwrap_or(Path::new(".")))?;
    let staged = db.with_extension("restoring");
    let _ = std::fs::remove_file(&staged);
    std::fs::copy(file, &staged)
        .with_context(|| format!("cannot copy {} to {}", file.display(), staged.display()))?;
    let check = outpost_store::SqliteStore::open(&staged).await;
    let accounts = match check {
        Ok(store) => {
            let accounts = store.list_accounts().await.map(|a| a.len());
            store.close().await;
            accounts
        }
        Err(e) => Err(e),
    };
    let accounts = match accounts {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(e)
                .with_context(|| format!("{} is not an Outpost database", file.display()));
        }
    };
    for suffix in ["-wal", "-shm"] {
        let mut side = db.clone().into_os_string();
        side.push(suffix);
        let _ = std::fs::remove_file(side);
    }
    std::fs::rename(&staged, &db)
        .with_context(|| format!("cannot move {} to {}", staged.display(), db.display()))?;
    Ok(format!(
        "restored {} from {} ({accounts} accounts)\n",
        db.display(),
        file.display()
    ))
}

pub(super) fn cert(config: &Config) -> anyhow::Result<String> {
    let identity = match (&config.tls.cert, &config.tls.key) {
        (Some(_), Some(_)) => crate::tls::load_identity(config)?,
        _ => {
            let (cert, key) = config.self_signed_paths();
            if !cert.exists() || !key.exists() {
                bail!(
                    "no certificate yet: the server generates a self-signed one in {} at its first start",
                    config.tls_dir().display()
                );
            }
            crate::tls::read_identity(&cert, &key)?
        }
    };
    let info = identity.certificate_info()?;
    let mut text = String::new();
    writeln!(text, "subject:  {}", info.subject)?;
    writeln!(text, "issuer:   {}", info.issuer)?;
    writeln!(text, "names:    {}", info.names.join(", "))?;
    writeln!(
        text,
        "valid:    {} to {}",
        rfc3339(info.not_before),
        rfc3339(info.not_after)
    )?;
    writeln!(text, "SHA-256:  {}", info.fingerprint)?;
    Ok(text)
}

/// Copies the configured SQLite store into the empty PostgreSQL database at `url`
/// (`outpost_store::copy_store`), with the server stopped; says what was copied and what
/// to change in the configuration.
pub(super) async fn migrate_store(config: &Config, url: &str) -> anyhow::Result<String> {
    sqlite_only(config, "outpost admin migrate-store")?;
    if control::request(config, &Request::Status).await?.is_some() {
        bail!("the server is running: stop it before migrating its store");
    }
    crate::serve::require_store(config)?;
    let shown = outpost_server::config::redact_url(url);
    let from = open_store(config).await?;
    let to = outpost_store::PgStore::connect(url)
        .await
        .with_context(|| format!("cannot open the database {shown}"))?;
    let copied = outpost_store::copy_store(&*from, &to, super::links::now_ms()).await;
    from.close().await;
    outpost_store::Store::close(&to).await;
    let r = copied.with_context(|| format!("cannot copy the store into {shown}"))?;
    Ok(format!(
        "copied into {shown}: {} accounts, {} roster items, {} offline messages, {} archived \
         messages, {} PEP items, {} rooms, {} queued for other servers, {} uploads\n\
         now set in the configuration: [storage] backend = \"postgres\", url = \"…\"\n",
        r.accounts, r.roster_items, r.offline, r.archive, r.pep_items, r.rooms, r.outbox, r.uploads
    ))
}
