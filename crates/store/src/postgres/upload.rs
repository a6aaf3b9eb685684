//! HTTP upload slots (XEP-0363) in PostgreSQL (see `migrations-postgres/0007_uploads.sql`).

use super::{Lock, PgStore, db};
use crate::rows::{UPLOAD_COLUMNS, UploadRow, signed, upload_from_row};
use crate::{Result, StoreError, UploadSlot};

pub(super) async fn reserve(s: &PgStore, slot: &UploadSlot, quota: u64) -> Result<()> {
    let mut tx = s.write().await?;
    // The owner need not have an account, so the lock is an advisory one on the owner's
    // name: two reservations for one owner cannot both see room for the last bytes.
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(Lock::Uploads as i32)
        .bind(&slot.owner)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let used: i64 =
        sqlx::query_scalar("SELECT COALESCE(SUM(size), 0)::BIGINT FROM uploads WHERE owner = $1")
            .bind(&slot.owner)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
    if u64::try_from(used).unwrap_or(0).saturating_add(slot.size) > quota {
        return Err(StoreError::UploadQuotaExceeded { quota });
    }
    sqlx::query(&format!(
        "INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    ))
    .bind(&slot.slot)
    .bind(&slot.owner)
    .bind(&slot.filename)
    .bind(signed(slot.size))
    .bind(&slot.content_type)
    .bind(&slot.put_token)
    .bind(slot.created_ms)
    .bind(slot.completed_ms)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn get(s: &PgStore, slot: &str) -> Result<Option<UploadSlot>> {
    let row: Option<UploadRow> = sqlx::query_as(&format!(
        "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE slot = $1"
    ))
    .bind(slot)
    .fetch_optional(&s.pool)
    .await
    .map_err(db)?;
    Ok(row.map(upload_from_row))
}

pub(super) async fn complete(s: &PgStore, slot: &str, now_ms: i64) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE uploads SET completed_ms = $1 WHERE slot = $2 AND completed_ms IS NULL",
    )
    .bind(now_ms)
    .bind(slot)
    .execute(&s.pool)
    .await
    .map_err(db)?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn expired(
    s: &PgStore,
    pending_before_ms: i64,
    completed_before_ms: i64,
    limit: u32,
) -> Result<Vec<UploadSlot>> {
    let rows: Vec<UploadRow> = sqlx::query_as(&format!(
        "SELECT {UPLOAD_COLUMNS} FROM uploads \
         WHERE (completed_ms IS NULL AND created_ms < $1) \
            OR (completed_ms IS NOT NULL AND created_ms < $2) \
         ORDER BY created_ms LIMIT $3"
    ))
    .bind(pending_before_ms)
    .bind(completed_before_ms)
    .bind(i64::from(limit))
    .fetch_all(&s.pool)
    .await
    .map_err(db)?;
    Ok(rows.into_iter().map(upload_from_row).collect())
}

pub(super) async fn remove(s: &PgStore, slot: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM uploads WHERE slot = $1")
        .bind(slot)
        .execute(&s.pool)
        .await
        .map_err(db)?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn all(s: &PgStore) -> Result<Vec<UploadSlot>> {
    let rows: Vec<UploadRow> = sqlx::query_as(&format!(
        "SELECT {UPLOAD_COLUMNS} FROM uploads ORDER BY slot"
    ))
    .fetch_all(&s.pool)
    .await
    .map_err(db)?;
    Ok(rows.into_iter().map(upload_from_row).collect())
}
