//! The message archive (XEP-0313) and its preferences (XEP-0441) in SQLite: one row per
//! message, shared by the archives of its two ends (see `migrations/0003_archive.sql`).

use crate::rows::prefs_from_rows;
use std::collections::HashMap;

use sqlx::SqliteConnection;

use super::{SqliteStore, db, require_account};
use crate::{ArchiveEntry, ArchivePrefs, ArchiveQuery, ArchivedMessage, BareJid, Result};

/// Columns bound per archive row in a multi-row INSERT.
const ARCHIVE_COLUMNS: usize = 6;

/// Inserts archive rows with one statement per slice; called inside a batch transaction.
pub(super) async fn insert(conn: &mut SqliteConnection, rows: &[&ArchiveEntry]) -> Result<()> {
    for slice in rows.chunks(super::ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO archive (id, sender, recipient, in_sender, in_recipient, stanza) VALUES ",
        );
        let one = format!("({})", ["?"; ARCHIVE_COLUMNS].join(", "));
        sql.push_str(&vec![one.as_str(); slice.len()].join(", "));
        let mut query = sqlx::query(&sql);
        for e in slice {
            query = query
                .bind(e.id)
                .bind(&e.sender)
                .bind(&e.recipient)
                .bind(e.in_sender)
                .bind(e.in_recipient)
                .bind(&e.stanza);
        }
        query.execute(&mut *conn).await.map_err(db)?;
    }
    Ok(())
}

/// A page of one archive. Both ends of the archive are read in id order from their own
/// index and merged; `UNION` drops the second copy of a message to oneself.
pub(super) async fn page(s: &SqliteStore, q: &ArchiveQuery<'_>) -> Result<Vec<ArchivedMessage>> {
    let order = if q.newest_first { "DESC" } else { "ASC" };
    let side = |me: &str, other: &str, flag: &str| {
        format!(
            "SELECT * FROM (SELECT id, sender, recipient, stanza FROM archive \
             WHERE {me} = ?1 AND {flag} = 1 AND id > ?2 AND id < ?3 \
             AND (?4 IS NULL OR {other} = ?4) ORDER BY id {order} LIMIT ?5)"
        )
    };
    let sql = format!(
        "SELECT id, sender, recipient, stanza FROM ({} UNION {}) ORDER BY id {order} LIMIT ?5",
        side("sender", "recipient", "in_sender"),
        side("recipient", "sender", "in_recipient"),
    );
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(&sql)
        .bind(q.owner)
        .bind(q.after.unwrap_or(i64::MIN))
        .bind(q.before.unwrap_or(i64::MAX))
        .bind(q.with)
        .bind(q.limit)
        .fetch_all(&s.readers)
        .await
        .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(|(id, sender, recipient, stanza)| ArchivedMessage {
            id,
            sender,
            recipient,
            stanza,
        })
        .collect())
}

pub(super) async fn has(s: &SqliteStore, owner: &str, id: i64) -> Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM archive WHERE id = ?2 \
         AND ((sender = ?1 AND in_sender = 1) OR (recipient = ?1 AND in_recipient = 1))",
    )
    .bind(owner)
    .bind(id)
    .fetch_optional(&s.readers)
    .await
    .map_err(db)?;
    Ok(found.is_some())
}

pub(super) async fn bounds(s: &SqliteStore, owner: &str) -> Result<Option<(i64, i64)>> {
    // Four index look-ups, one per end of each side.
    let ends: (Option<i64>, Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT MIN(id) FROM archive WHERE sender = ?1 AND in_sender = 1), \
                (SELECT MIN(id) FROM archive WHERE recipient = ?1 AND in_recipient = 1), \
                (SELECT MAX(id) FROM archive WHERE sender = ?1 AND in_sender = 1), \
                (SELECT MAX(id) FROM archive WHERE recipient = ?1 AND in_recipient = 1)",
    )
    .bind(owner)
    .fetch_one(&s.readers)
    .await
    .map_err(db)?;
    let first = [ends.0, ends.1].into_iter().flatten().min();
    let last = [ends.2, ends.3].into_iter().flatten().max();
    Ok(first.zip(last))
}

pub(super) async fn last_id(s: &SqliteStore) -> Result<i64> {
    sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM archive")
        .fetch_one(&s.readers)
        .await
        .map_err(db)
}

/// Takes `owner`'s end out of every message it archived: rows only it held go, rows the
/// other end holds too stay for that end. Runs inside the caller's transaction.
pub(super) async fn clear_in(conn: &mut SqliteConnection, owner: &str) -> Result<u64> {
    let mut removed = 0;
    for statement in [
        "DELETE FROM archive WHERE sender = ?1 AND in_sender = 1 \
         AND (in_recipient = 0 OR recipient = ?1)",
        "DELETE FROM archive WHERE recipient = ?1 AND in_recipient = 1 AND in_sender = 0",
        "UPDATE archive SET in_sender = 0 WHERE sender = ?1 AND in_sender = 1",
        "UPDATE archive SET in_recipient = 0 WHERE recipient = ?1 AND in_recipient = 1",
    ] {
        removed += sqlx::query(statement)
            .bind(owner)
            .execute(&mut *conn)
            .await
            .map_err(db)?
            .rows_affected();
    }
    Ok(removed)
}

pub(super) async fn clear(s: &SqliteStore, owner: &str) -> Result<u64> {
    let mut tx = s.write().await?;
    let removed = clear_in(&mut tx, owner).await?;
    tx.commit().await.map_err(db)?;
    Ok(removed)
}

pub(super) async fn expire(s: &SqliteStore, before_id: i64, limit: u32) -> Result<u64> {
    let mut tx = s.write().await?;
    let done = sqlx::query(
        "DELETE FROM archive WHERE id IN (SELECT id FROM archive WHERE id < ? ORDER BY id LIMIT ?)",
    )
    .bind(before_id)
    .bind(limit)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(done.rows_affected())
}

type PrefsJidRow = (String, String, bool);

pub(super) async fn prefs(s: &SqliteStore, user: &BareJid) -> Result<Option<ArchivePrefs>> {
    let default: Option<String> =
        sqlx::query_scalar("SELECT default_mode FROM archive_prefs WHERE owner = ?")
            .bind(user)
            .fetch_optional(&s.readers)
            .await
            .map_err(db)?;
    let Some(default) = default else {
        return Ok(None);
    };
    let jids: Vec<(String, bool)> =
        sqlx::query_as("SELECT jid, always FROM archive_prefs_jids WHERE owner = ? ORDER BY jid")
            .bind(user)
            .fetch_all(&s.readers)
            .await
            .map_err(db)?;
    prefs_from_rows(&default, &jids).map(Some)
}

pub(super) async fn set_prefs(s: &SqliteStore, user: &BareJid, prefs: &ArchivePrefs) -> Result<()> {
    let mut tx = s.write().await?;
    require_account(&mut tx, user).await?;
    sqlx::query(
        "INSERT INTO archive_prefs (owner, default_mode) VALUES (?, ?) \
         ON CONFLICT (owner) DO UPDATE SET default_mode = excluded.default_mode",
    )
    .bind(user)
    .bind(prefs.default.as_str())
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    sqlx::query("DELETE FROM archive_prefs_jids WHERE owner = ?")
        .bind(user)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    // A JID in both lists is never archived: "never" is the safer reading.
    let lists = [(&prefs.never, false), (&prefs.always, true)];
    for (list, always) in lists {
        for jid in list {
            sqlx::query(
                "INSERT OR IGNORE INTO archive_prefs_jids (owner, jid, always) VALUES (?, ?, ?)",
            )
            .bind(user)
            .bind(jid)
            .bind(always)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
    }
    tx.commit().await.map_err(db)
}

pub(super) async fn all_prefs(s: &SqliteStore) -> Result<Vec<(String, ArchivePrefs)>> {
    let defaults: Vec<(String, String)> =
        sqlx::query_as("SELECT owner, default_mode FROM archive_prefs ORDER BY owner")
            .fetch_all(&s.readers)
            .await
            .map_err(db)?;
    let jids: Vec<PrefsJidRow> =
        sqlx::query_as("SELECT owner, jid, always FROM archive_prefs_jids ORDER BY owner, jid")
            .fetch_all(&s.readers)
            .await
            .map_err(db)?;
    let mut by_owner: HashMap<String, Vec<(String, bool)>> = HashMap::new();
    for (owner, jid, always) in jids {
        by_owner.entry(owner).or_default().push((jid, always));
    }
    defaults
        .into_iter()
        .map(|(owner, default)| {
            let prefs = prefs_from_rows(&default, by_owner.get(&owner).map_or(&[], Vec::as_slice))?;
            Ok((owner, prefs))
        })
        .collect()
}
