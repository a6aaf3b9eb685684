//! Bearer tokens of the HTTP API in PostgreSQL (see
//! `migrations-postgres/0008_api_tokens.sql`).

use super::{PgStore, db, exec_for, require_account};
use crate::rows::{TOKEN_COLUMNS, TokenRow, token_from_row};
use crate::{ApiToken, Result};

pub(super) async fn add(s: &PgStore, token: &ApiToken) -> Result<()> {
    let mut tx = s.write().await?;
    // The account's row stays locked until commit: removing it waits, then takes the
    // token with it.
    require_account(&mut tx, &token.owner).await?;
    sqlx::query(&format!(
        "INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
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

pub(super) async fn by_hash(s: &PgStore, hash: &[u8]) -> Result<Option<ApiToken>> {
    let row: Option<TokenRow> = sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = $1"
    ))
    .bind(hash)
    .fetch_optional(&s.pool)
    .await
    .map_err(db)?;
    Ok(row.map(token_from_row))
}

pub(super) async fn of(s: &PgStore, owner: &str) -> Result<Vec<ApiToken>> {
    let rows: Vec<TokenRow> = sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE owner = $1 ORDER BY created_ms, id"
    ))
    .bind(owner)
    .fetch_all(&s.pool)
    .await
    .map_err(db)?;
    Ok(rows.into_iter().map(token_from_row).collect())
}

pub(super) async fn remove(s: &PgStore, owner: &str, id: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM api_tokens WHERE owner = $1 AND id = $2")
        .bind(owner)
        .bind(id)
        .execute(&s.pool)
        .await
        .map_err(db)?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn remove_all(s: &PgStore, owner: &str) -> Result<u64> {
    let mut conn = s.pool.acquire().await.map_err(db)?;
    exec_for(&mut conn, "DELETE FROM api_tokens WHERE owner = $1", owner).await
}

pub(super) async fn expire(s: &PgStore, now_ms: i64) -> Result<u64> {
    let done = sqlx::query("DELETE FROM api_tokens WHERE expires_ms < $1")
        .bind(now_ms)
        .execute(&s.pool)
        .await
        .map_err(db)?;
    Ok(done.rows_affected())
}
