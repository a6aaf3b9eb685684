//! The server-to-server outbox and the stanza ids already received (XEP-0359) in
//! PostgreSQL (see `migrations-postgres/0002_outbox.sql`).

use crate::rows::{OUTBOX_COLUMNS, OutboxRow, OutboxStatsRow, outbox_entry};
use std::collections::HashSet;

use sqlx::PgConnection;

use super::{Lock, PgStore, db, link_key, lock_queues, to_u64};
use crate::{OutboxEntry, OutboxStats, Result, StoreError};

pub(super) async fn push(
    s: &PgStore,
    local: &str,
    remote: &str,
    stanza: &str,
    now_ms: i64,
    quota: u32,
) -> Result<i64> {
    let mut tx = s.write().await?;
    // Under the outbox lock the count and the insert cannot race another push, and the id
    // becomes visible before any later one (see the module's notes in `mod.rs`).
    lock_queues(&mut tx, Lock::Outbox, [link_key(local, remote).as_str()]).await?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO outbox (local_domain, remote_domain, stanza, queued_at_ms) \
         SELECT $1, $2, $3, $4 WHERE (SELECT COUNT(*) FROM outbox \
         WHERE remote_domain = $2 AND local_domain = $1) < $5 RETURNING id",
    )
    .bind(local)
    .bind(remote)
    .bind(stanza)
    .bind(now_ms)
    .bind(i64::from(quota))
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let Some(id) = id else {
        return Err(StoreError::QuotaExceeded { quota });
    };
    tx.commit().await.map_err(db)?;
    Ok(id)
}

pub(super) async fn peek(
    s: &PgStore,
    local: &str,
    remote: &str,
    after_id: Option<i64>,
    limit: u32,
) -> Result<Vec<OutboxEntry>> {
    let rows: Vec<OutboxRow> = sqlx::query_as(&format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox \
         WHERE remote_domain = $1 AND local_domain = $2 AND id > $3 ORDER BY id LIMIT $4"
    ))
    .bind(remote)
    .bind(local)
    // Every id is above i64::MIN, so no `after_id` means from the start.
    .bind(after_id.unwrap_or(i64::MIN))
    .bind(i64::from(limit))
    .fetch_all(&s.pool)
    .await
    .map_err(db)?;
    Ok(rows.into_iter().map(outbox_entry).collect())
}

pub(super) async fn ack(
    s: &PgStore,
    local: &str,
    remote: &str,
    up_to_id: i64,
    now_ms: i64,
) -> Result<u64> {
    let mut tx = s.write().await?;
    let done = sqlx::query(
        "DELETE FROM outbox WHERE remote_domain = $1 AND local_domain = $2 AND id <= $3",
    )
    .bind(remote)
    .bind(local)
    .bind(up_to_id)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    if done.rows_affected() == 0 {
        // Nothing was delivered, so the last delivery stays; dropping rolls back.
        return Ok(0);
    }
    sqlx::query(
        "INSERT INTO outbox_deliveries (remote_domain, local_domain, last_delivery_ms) \
         VALUES ($1, $2, $3) ON CONFLICT (remote_domain, local_domain) DO UPDATE SET \
         last_delivery_ms = GREATEST(outbox_deliveries.last_delivery_ms, excluded.last_delivery_ms)",
    )
    .bind(remote)
    .bind(local)
    .bind(now_ms)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(done.rows_affected())
}

pub(super) async fn expire(
    s: &PgStore,
    now_ms: i64,
    lifetime_ms: i64,
    limit: u32,
) -> Result<Vec<OutboxEntry>> {
    let cutoff = now_ms.saturating_sub(lifetime_ms);
    let mut tx = s.write().await?;
    let mut rows: Vec<OutboxRow> = sqlx::query_as(&format!(
        "DELETE FROM outbox WHERE id IN \
         (SELECT id FROM outbox WHERE queued_at_ms <= $1 ORDER BY id LIMIT $2) \
         RETURNING {OUTBOX_COLUMNS}"
    ))
    .bind(cutoff)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    // RETURNING promises no order.
    rows.sort_unstable_by_key(|row| row.0);
    Ok(rows.into_iter().map(outbox_entry).collect())
}

pub(super) async fn stats(s: &PgStore) -> Result<Vec<OutboxStats>> {
    // One statement, so that the counts and the deliveries are one snapshot.
    let rows: Vec<OutboxStatsRow> = sqlx::query_as(
        "SELECT local, remote, SUM(queued)::BIGINT, MIN(oldest), MAX(delivered) FROM ( \
           SELECT local_domain AS local, remote_domain AS remote, COUNT(*) AS queued, \
             MIN(queued_at_ms) AS oldest, NULL::BIGINT AS delivered \
           FROM outbox GROUP BY remote_domain, local_domain \
           UNION ALL \
           SELECT local_domain, remote_domain, 0, NULL, last_delivery_ms \
           FROM outbox_deliveries \
         ) AS links GROUP BY remote, local ORDER BY remote, local",
    )
    .fetch_all(&s.pool)
    .await
    .map_err(db)?;
    rows.into_iter()
        .map(|(local, remote, queued, oldest, delivered)| {
            Ok(OutboxStats {
                local_domain: local,
                remote_domain: remote,
                queued: to_u64("COUNT(*)", queued)?,
                oldest_queued_at_ms: oldest,
                last_delivery_ms: delivered,
            })
        })
        .collect()
}

/// Records received stanza ids inside a transaction, in one statement; a duplicate keeps
/// the later time. Pairs repeated in `ids` are recorded once (PostgreSQL refuses to
/// update one row twice in a statement).
pub(super) async fn record_seen(
    conn: &mut PgConnection,
    ids: &[(&str, &str)],
    now_ms: i64,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let (origins, stanza_ids): (Vec<&str>, Vec<&str>) = ids.iter().copied().unzip();
    sqlx::query(
        "INSERT INTO seen_stanza_ids (origin, stanza_id, seen_at_ms) \
         SELECT DISTINCT o, i, $3::BIGINT FROM UNNEST($1::text[], $2::text[]) AS u (o, i) \
         ON CONFLICT (origin, stanza_id) DO UPDATE SET \
         seen_at_ms = GREATEST(seen_stanza_ids.seen_at_ms, excluded.seen_at_ms)",
    )
    .bind(origins)
    .bind(stanza_ids)
    .bind(now_ms)
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(())
}

pub(super) async fn seen_stanza_id(
    s: &PgStore,
    origin: &str,
    id: &str,
    now_ms: i64,
) -> Result<bool> {
    let mut tx = s.write().await?;
    // Of two concurrent inserts of one pair, the second waits for the first to commit and
    // then does nothing: exactly one sees it new.
    let inserted = sqlx::query(
        "INSERT INTO seen_stanza_ids (origin, stanza_id, seen_at_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (origin, stanza_id) DO NOTHING",
    )
    .bind(origin)
    .bind(id)
    .bind(now_ms)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    let duplicate = inserted.rows_affected() == 0;
    if duplicate {
        sqlx::query(
            "UPDATE seen_stanza_ids SET seen_at_ms = GREATEST(seen_at_ms, $1) \
             WHERE origin = $2 AND stanza_id = $3",
        )
        .bind(now_ms)
        .bind(origin)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(duplicate)
}

pub(super) async fn stanza_ids_seen(s: &PgStore, ids: &[(String, String)]) -> Result<Vec<bool>> {
    let (origins, stanza_ids): (Vec<&str>, Vec<&str>) =
        ids.iter().map(|(o, i)| (o.as_str(), i.as_str())).unzip();
    // One statement whatever the number of pairs: they travel as two arrays.
    let known: HashSet<(String, String)> = sqlx::query_as(
        "SELECT origin, stanza_id FROM seen_stanza_ids WHERE (origin, stanza_id) IN \
         (SELECT o, i FROM UNNEST($1::text[], $2::text[]) AS u (o, i))",
    )
    .bind(origins)
    .bind(stanza_ids)
    .fetch_all(&s.pool)
    .await
    .map_err(db)?
    .into_iter()
    .collect();
    Ok(ids.iter().map(|pair| known.contains(pair)).collect())
}

pub(super) async fn stanza_id_seen(s: &PgStore, origin: &str, id: &str) -> Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM seen_stanza_ids WHERE origin = $1 AND stanza_id = $2)",
    )
    .bind(origin)
    .bind(id)
    .fetch_one(&s.pool)
    .await
    .map_err(db)
}

pub(super) async fn prune_seen(s: &PgStore, older_than_ms: i64) -> Result<u64> {
    let done = sqlx::query("DELETE FROM seen_stanza_ids WHERE seen_at_ms < $1")
        .bind(older_than_ms)
        .execute(&s.pool)
        .await
        .map_err(db)?;
    Ok(done.rows_affected())
}
