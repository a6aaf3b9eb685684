//! Bearer tokens of the HTTP API in SQLite (see `migrations/0011_api_tokens.sql`).

use super::{SqliteStore, db};
use crate::rows::{TOKEN_COLUMNS, TokenRow, token_from_row};
use crate::{ApiToken, Result, StoreError};

pub(super) async fn add(s: &SqliteStore, token: &ApiToken) -> Result<()> {
    let mut tx = s.write().await?;
    let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM accounts WHERE jid = ?")
        .bind(&token.owner)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if exists.is_none() {
        return Err(StoreError::NoSuchAccount);
    }
    sqlx::query(&format!(
        "INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
    ))
    .bind(&token.id)
    .bind(&token.hash)
    .bind(&token.owner)
    .bind(&token.label)
    .bind(token.created_ms)
    .bind(token.expires_ms)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn by_hash(s: &SqliteStore, hash: &[u8]) -> Result<Option<ApiToken>> {
    let row: Option<TokenRow> = sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = ?"
    ))
    .bind(hash)
    .fetch_optional(&s.readers)
    .await
    .map_err(db)?;
    Ok(row.map(token_from_row))
}

pub(super) async fn of(s: &SqliteStore, owner: &str) -> Result<Vec<ApiToken>> {
    let rows: Vec<TokenRow> = sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE owner = ? ORDER BY created_ms, id"
    ))
    .bind(owner)
    .fetch_all(&s.readers)
    .await
    .map_err(db)?;
    Ok(rows.into_iter().map(token_from_row).collect())
}

pub(super) async fn remove(s: &SqliteStore, owner: &str, id: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM api_tokens WHERE owner = ? AND id = ?")
        .bind(owner)
        .bind(id)
        .execute(&s.writer)
        .await
        .map_err(db)?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn remove_all(s: &SqliteStore, owner: &str) -> Result<u64> {
    let done = sqlx::query("DELETE FROM api_tokens WHERE owner = ?")
        .bind(owner)
        .execute(&s.writer)
        .await
        .map_err(db)?;
    Ok(done.rows_affected())
}

pub(super) async fn expire(s: &SqliteStore, now_ms: i64) -> Result<u64> {
    let done = sqlx::query("DELETE FROM api_tokens WHERE expires_ms < ?")
        .bind(now_ms)
        .execute(&s.writer)
        .await
        .map_err(db)?;
    Ok(done.rows_affected())
}
