//! The offline queue (XEP-0160) in PostgreSQL (see `migrations-postgres/0001_initial.sql`).

use super::{Lock, PgStore, db, lock_queues, require_account, to_u64};
use crate::{BareJid, OfflineMessage, Result, StoreError};

pub(super) async fn push(s: &PgStore, user: &BareJid, stanza: &str, quota: u32) -> Result<i64> {
    let mut tx = s.write().await?;
    // The queue's lock first, as every writer of the queue does (see the module's
    // notes): the count below then sees every push that committed before, and no other
    // can commit until this one has.
    lock_queues(&mut tx, Lock::Offline, [user]).await?;
    require_account(&mut tx, user).await?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO offline (owner, stanza) SELECT $1, $2 \
         WHERE (SELECT COUNT(*) FROM offline WHERE owner = $1) < $3 RETURNING id",
    )
    .bind(user)
    .bind(stanza)
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

pub(super) async fn read(s: &PgStore, user: &BareJid, limit: u32) -> Result<Vec<OfflineMessage>> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, stanza FROM offline WHERE owner = $1 ORDER BY id LIMIT $2")
            .bind(user)
            .bind(i64::from(limit))
            .fetch_all(&s.pool)
            .await
            .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(|(id, stanza)| OfflineMessage { id, stanza })
        .collect())
}

pub(super) async fn delete(s: &PgStore, user: &BareJid, up_to: i64) -> Result<()> {
    let mut tx = s.write().await?;
    require_account(&mut tx, user).await?;
    sqlx::query("DELETE FROM offline WHERE owner = $1 AND id <= $2")
        .bind(user)
        .bind(up_to)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn count(s: &PgStore, user: &BareJid) -> Result<u64> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM offline WHERE owner = $1")
        .bind(user)
        .fetch_one(&s.pool)
        .await
        .map_err(db)?;
    to_u64("COUNT(*)", count)
}

/// On a hub: the messages it stored itself (not the replica of a site's queue).
pub(super) async fn read_own(
    s: &PgStore,
    user: &BareJid,
    limit: u32,
) -> Result<Vec<OfflineMessage>> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, stanza FROM offline WHERE owner = $1 AND origin_key IS NULL \
         ORDER BY id LIMIT $2",
    )
    .bind(user)
    .bind(i64::from(limit))
    .fetch_all(&s.pool)
    .await
    .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(|(id, stanza)| OfflineMessage { id, stanza })
        .collect())
}

pub(super) async fn delete_own(s: &PgStore, user: &BareJid, up_to: i64) -> Result<()> {
    s.write_one(
        sqlx::query("DELETE FROM offline WHERE owner = $1 AND id <= $2 AND origin_key IS NULL")
            .bind(user)
            .bind(up_to),
    )
    .await?;
    Ok(())
}

/// The accounts of `domain` with messages of this server's own waiting, sorted.
pub(super) async fn owners(s: &PgStore, domain: &str) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT DISTINCT owner FROM offline WHERE right(owner, length($1)) = $1 \
         AND origin_key IS NULL ORDER BY owner",
    )
    .bind(format!("@{domain}"))
    .fetch_all(&s.pool)
    .await
    .map_err(db)
}
