//! The message archive (XEP-0313) and its preferences (XEP-0441) in PostgreSQL: one row
//! per message, shared by the archives of its two ends (see
//! `migrations-postgres/0003_archive.sql`).

use crate::rows::prefs_from_rows;
use std::collections::HashMap;

use sqlx::PgConnection;

use super::{PgStore, db, exec_for, require_account};
use crate::{ArchiveEntry, ArchivePrefs, ArchiveQuery, ArchivedMessage, BareJid, Result};

/// Inserts archive rows in one statement, the columns as arrays; called inside a batch
/// transaction. An id already archived fails the statement, and so the batch.
pub(super) async fn insert(conn: &mut PgConnection, rows: &[&ArchiveEntry]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&ArchiveEntry) -> &str| rows.iter().map(|e| f(e)).collect::<Vec<_>>();
    let flag = |f: fn(&ArchiveEntry) -> bool| rows.iter().map(|e| f(e)).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO archive (id, sender, recipient, in_sender, in_recipient, stanza) \
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bool[], $5::bool[], \
         $6::text[])",
    )
    .bind(rows.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(column(|e| &e.sender))
    .bind(column(|e| &e.recipient))
    .bind(flag(|e| e.in_sender))
    .bind(flag(|e| e.in_recipient))
    .bind(column(|e| &e.stanza))
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// A page of one archive. Both ends of the archive are read in id order from their own
/// index and merged; `UNION` drops the second copy of a message to oneself.
pub(super) async fn page(s: &PgStore, q: &ArchiveQuery<'_>) -> Result<Vec<ArchivedMessage>> {
    let order = if q.newest_first { "DESC" } else { "ASC" };
    let side = |me: &str, other: &str, flag: &str| {
        format!(
            "(SELECT id, sender, recipient, stanza FROM archive \
             WHERE {me} = $1 AND {flag} AND id > $2 AND id < $3 \
             AND ($4::text IS NULL OR {other} = $4) ORDER BY id {order} LIMIT $5)"
        )
    };
    let sql = format!(
        "SELECT id, sender, recipient, stanza FROM ({} UNION {}) AS both_ends \
         ORDER BY id {order} LIMIT $5",
        side("sender", "recipient", "in_sender"),
        side("recipient", "sender", "in_recipient"),
    );
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(&sql)
        .bind(q.owner)
        .bind(q.after.unwrap_or(i64::MIN))
        .bind(q.before.unwrap_or(i64::MAX))
        .bind(q.with)
        .bind(i64::from(q.limit))
        .fetch_all(&s.pool)
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

pub(super) async fn has(s: &PgStore, owner: &str, id: i64) -> Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM archive WHERE id = $2 \
         AND ((sender = $1 AND in_sender) OR (recipient = $1 AND in_recipient)))",
    )
    .bind(owner)
    .bind(id)
    .fetch_one(&s.pool)
    .await
    .map_err(db)
}

pub(super) async fn bounds(s: &PgStore, owner: &str) -> Result<Option<(i64, i64)>> {
    // Four index look-ups, one per end of each side.
    let ends: (Option<i64>, Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT MIN(id) FROM archive WHERE sender = $1 AND in_sender), \
                (SELECT MIN(id) FROM archive WHERE recipient = $1 AND in_recipient), \
                (SELECT MAX(id) FROM archive WHERE sender = $1 AND in_sender), \
                (SELECT MAX(id) FROM archive WHERE recipient = $1 AND in_recipient)",
    )
    .bind(owner)
    .fetch_one(&s.pool)
    .await
    .map_err(db)?;
    let first = [ends.0, ends.1].into_iter().flatten().min();
    let last = [ends.2, ends.3].into_iter().flatten().max();
    Ok(first.zip(last))
}

pub(super) async fn last_id(s: &PgStore) -> Result<i64> {
    sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM archive")
        .fetch_one(&s.pool)
        .await
        .map_err(db)
}

/// Takes `owner`'s end out of every message it archived: rows only it held go, rows the
/// other end holds too stay for that end. Runs inside the caller's transaction.
pub(super) async fn clear_in(conn: &mut PgConnection, owner: &str) -> Result<u64> {
    let mut removed = 0;
    for statement in [
        "DELETE FROM archive WHERE sender = $1 AND in_sender \
         AND (NOT in_recipient OR recipient = $1)",
        "DELETE FROM archive WHERE recipient = $1 AND in_recipient AND NOT in_sender",
        "UPDATE archive SET in_sender = FALSE WHERE sender = $1 AND in_sender",
        "UPDATE archive SET in_recipient = FALSE WHERE recipient = $1 AND in_recipient",
    ] {
        removed += exec_for(conn, statement, owner).await?;
    }
    Ok(removed)
}

pub(super) async fn clear(s: &PgStore, owner: &str) -> Result<u64> {
    let mut tx = s.write().await?;
    let removed = clear_in(&mut tx, owner).await?;
    tx.commit().await.map_err(db)?;
    Ok(removed)
}

pub(super) async fn expire(s: &PgStore, before_id: i64, limit: u32) -> Result<u64> {
    let done = s
        .write_one(
            sqlx::query(
                "DELETE FROM archive WHERE id IN \
         (SELECT id FROM archive WHERE id < $1 ORDER BY id LIMIT $2)",
            )
            .bind(before_id)
            .bind(i64::from(limit)),
        )
        .await?;
    Ok(done)
}

pub(super) async fn prefs(s: &PgStore, user: &BareJid) -> Result<Option<ArchivePrefs>> {
    let mut tx = s.snapshot().await?;
    let default: Option<String> =
        sqlx::query_scalar("SELECT default_mode FROM archive_prefs WHERE owner = $1")
            .bind(user)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
    let Some(default) = default else {
        return Ok(None);
    };
    let jids: Vec<(String, bool)> =
        sqlx::query_as("SELECT jid, always FROM archive_prefs_jids WHERE owner = $1 ORDER BY jid")
            .bind(user)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
    tx.commit().await.map_err(db)?;
    prefs_from_rows(&default, &jids).map(Some)
}

pub(super) async fn set_prefs(s: &PgStore, user: &BareJid, prefs: &ArchivePrefs) -> Result<()> {
    let mut tx = s.write().await?;
    require_account(&mut tx, user).await?;
    sqlx::query(
        "INSERT INTO archive_prefs (owner, default_mode) VALUES ($1, $2) \
         ON CONFLICT (owner) DO UPDATE SET default_mode = excluded.default_mode",
    )
    .bind(user)
    .bind(prefs.default.as_str())
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    exec_for(
        &mut tx,
        "DELETE FROM archive_prefs_jids WHERE owner = $1",
        user,
    )
    .await?;
    // A JID in both lists is never archived: "never" is the safer reading, so the never
    // list goes in first and the always list cannot replace its rows.
    for (list, always) in [(&prefs.never, false), (&prefs.always, true)] {
        sqlx::query(
            "INSERT INTO archive_prefs_jids (owner, jid, always) \
             SELECT $1, j, $3 FROM UNNEST($2::text[]) AS j ON CONFLICT DO NOTHING",
        )
        .bind(user)
        .bind(list)
        .bind(always)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)
}

pub(super) async fn all_prefs(s: &PgStore) -> Result<Vec<(String, ArchivePrefs)>> {
    let mut tx = s.snapshot().await?;
    let defaults: Vec<(String, String)> =
        sqlx::query_as("SELECT owner, default_mode FROM archive_prefs ORDER BY owner")
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
    let jids: Vec<(String, String, bool)> =
        sqlx::query_as("SELECT owner, jid, always FROM archive_prefs_jids ORDER BY owner, jid")
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
    tx.commit().await.map_err(db)?;
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
