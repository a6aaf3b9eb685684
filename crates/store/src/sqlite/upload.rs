//! HTTP upload slots (XEP-0363) in SQLite (see `migrations/0008_uploads.sql`).

use super::{SqliteStore, db};
use crate::rows::{UPLOAD_COLUMNS, UploadRow, signed, upload_from_row};
use crate::{Result, StoreError, UploadSlot};

pub(super) async fn reserve(s: &SqliteStore, slot: &UploadSlot, quota: u64) -> Result<()> {
    let mut tx = s.write().await?;
    let used: i64 =
        sqlx::query_scalar("SELECT COALESCE(SUM(size), 0) FROM uploads WHERE owner = ?")
            .bind(&slot.owner)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
    if u64::try_from(used).unwrap_or(0).saturating_add(slot.size) > quota {
        return Err(StoreError::UploadQuotaExceeded { quota });
    }
    sqlx::query(&format!(
        "INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
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

pub(super) async fn get(s: &SqliteStore, slot: &str) -> Result<Option<UploadSlot>> {
    let row: Option<UploadRow> = sqlx::query_as(&format!(
        "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE slot = ?"
    ))
    .bind(slot)
    .fetch_optional(&s.readers)
    .await
    .map_err(db)?;
    Ok(row.map(upload_from_row))
}

pub(super) async fn complete(s: &SqliteStore, slot: &str, now_ms: i64) -> Result<bool> {
    let mut tx = s.write().await?;
    let done =
        sqlx::query("UPDATE uploads SET completed_ms = ? WHERE slot = ? AND completed_ms IS NULL")
            .bind(now_ms)
            .bind(slot)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn expired(
    s: &SqliteStore,
    pending_before_ms: i64,
    completed_before_ms: i64,
    limit: u32,
) -> Result<Vec<UploadSlot>> {
    let rows: Vec<UploadRow> = sqlx::query_as(&format!(
        "SELECT {UPLOAD_COLUMNS} FROM uploads \
         WHERE (completed_ms IS NULL AND created_ms < ?) \
            OR (completed_ms IS NOT NULL AND created_ms < ?) \
         ORDER BY created_ms LIMIT ?"
    ))
    .bind(pending_before_ms)
    .bind(completed_before_ms)
    .bind(limit)
    .fetch_all(&s.readers)
    .await
    .map_err(db)?;
    Ok(rows.into_iter().map(upload_from_row).collect())
}

pub(super) async fn remove(s: &SqliteStore, slot: &str) -> Result<bool> {
    let mut tx = s.write().await?;
    let done = sqlx::query("DELETE FROM uploads WHERE slot = ?")
        .bind(slot)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn all(s: &SqliteStore) -> Result<Vec<UploadSlot>> {
    let rows: Vec<UploadRow> = sqlx::query_as(&format!(
        "SELECT {UPLOAD_COLUMNS} FROM uploads ORDER BY slot"
    ))
    .fetch_all(&s.readers)
    .await
    .map_err(db)?;
    Ok(rows.into_iter().map(upload_from_row).collect())
}
