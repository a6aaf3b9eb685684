//! Accounts and what they own in the directory, in PostgreSQL: credentials, rosters,
//! subscription requests, vCards, block lists and push registrations (see
//! `migrations-postgres/0001_initial.sql` and `0006_push.sql`).

use sqlx::PgConnection;

use crate::rows::{
    CredentialsRow, ROSTER_SELECT, RosterRow, credentials_from_row, roster_from_rows,
};

use super::{PgStore, db, exec_for, require_account, to_u64};
use crate::{
    BareJid, Credentials, PushRegistration, Result, Roster, RosterItem, StoreError,
    SubscriptionRequest,
};

const CREDENTIALS_COLUMNS: &str = "sha1_salt, sha1_iterations, sha1_stored_key, \
     sha1_server_key, sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key";

/// Binds the eight verifier columns, in `CREDENTIALS_COLUMNS` order.
fn bind_credentials<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    c: &'q Credentials,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(&c.sha1.salt)
        .bind(i64::from(c.sha1.iterations))
        .bind(&c.sha1.stored_key)
        .bind(&c.sha1.server_key)
        .bind(&c.sha256.salt)
        .bind(i64::from(c.sha256.iterations))
        .bind(&c.sha256.stored_key)
        .bind(&c.sha256.server_key)
}

pub(super) async fn create_account(s: &PgStore, user: &BareJid, creds: &Credentials) -> Result<()> {
    let sql = format!(
        "INSERT INTO accounts (jid, {CREDENTIALS_COLUMNS}) \
         VALUES ($9, $1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (jid) DO NOTHING"
    );
    let done = s
        .write_one(bind_credentials(sqlx::query(&sql), creds).bind(user))
        .await?;
    if done == 0 {
        return Err(StoreError::AccountExists);
    }
    Ok(())
}

pub(super) async fn credentials(s: &PgStore, user: &BareJid) -> Result<Option<Credentials>> {
    let row: Option<CredentialsRow> = sqlx::query_as(&format!(
        "SELECT {CREDENTIALS_COLUMNS} FROM accounts WHERE jid = $1"
    ))
    .bind(user)
    .fetch_optional(&s.pool)
    .await
    .map_err(db)?;
    row.map(credentials_from_row).transpose()
}

pub(super) async fn set_credentials(
    s: &PgStore,
    user: &BareJid,
    creds: &Credentials,
) -> Result<()> {
    let mut tx = s.write().await?;
    let sql = "UPDATE accounts SET (sha1_salt, sha1_iterations, sha1_stored_key, \
         sha1_server_key, sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key) \
         = ($1, $2, $3, $4, $5, $6, $7, $8) WHERE jid = $9";
    let done = bind_credentials(sqlx::query(sql), creds)
        .bind(user)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NoSuchAccount);
    }
    exec_for(&mut tx, "DELETE FROM api_tokens WHERE owner = $1", user).await?;
    tx.commit().await.map_err(db)
}

pub(super) async fn remove_account(s: &PgStore, user: &BareJid) -> Result<()> {
    let mut tx = s.write().await?;
    // FOR UPDATE: writes for the account that hold its row finish first, and later ones
    // find it gone, so nothing it owns is left behind.
    let found = sqlx::query("SELECT 1 FROM accounts WHERE jid = $1 FOR UPDATE")
        .bind(user)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if found.is_none() {
        return Err(StoreError::NoSuchAccount);
    }
    // The foreign keys cascade; these tables do not reference the account.
    for statement in [
        "DELETE FROM pep_subscriptions WHERE owner = $1",
        "DELETE FROM api_tokens WHERE owner = $1",
        "DELETE FROM accounts WHERE jid = $1",
    ] {
        exec_for(&mut tx, statement, user).await?;
    }
    super::archive::clear_in(&mut tx, user).await?;
    tx.commit().await.map_err(db)
}

pub(super) async fn roster(s: &PgStore, user: &BareJid) -> Result<Roster> {
    // One snapshot, so that the version matches the items.
    let mut tx = s.snapshot().await?;
    let version: Option<i64> =
        sqlx::query_scalar("SELECT version FROM roster_versions WHERE owner = $1")
            .bind(user)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
    let rows: Vec<RosterRow> = sqlx::query_as(&format!(
        "{ROSTER_SELECT} WHERE i.owner = $1 ORDER BY i.contact, g.name"
    ))
    .bind(user)
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(Roster {
        version: version.map_or(Ok(0), |v| to_u64("roster_versions.version", v))?,
        items: roster_from_rows(rows)?,
    })
}

pub(super) async fn roster_item(
    s: &PgStore,
    user: &BareJid,
    contact: &BareJid,
) -> Result<Option<RosterItem>> {
    let rows: Vec<RosterRow> = sqlx::query_as(&format!(
        "{ROSTER_SELECT} WHERE i.owner = $1 AND i.contact = $2 ORDER BY g.name"
    ))
    .bind(user)
    .bind(contact)
    .fetch_all(&s.pool)
    .await
    .map_err(db)?;
    Ok(roster_from_rows(rows)?.pop())
}

/// Adds one to the user's roster version and returns the new value.
async fn bump_roster_version(conn: &mut PgConnection, user: &BareJid) -> Result<u64> {
    let version: i64 = sqlx::query_scalar(
        "INSERT INTO roster_versions (owner, version) VALUES ($1, 1) ON CONFLICT (owner) \
         DO UPDATE SET version = roster_versions.version + 1 RETURNING version",
    )
    .bind(user)
    .fetch_one(conn)
    .await
    .map_err(db)?;
    to_u64("roster_versions.version", version)
}

pub(super) async fn put_roster_item(s: &PgStore, user: &BareJid, item: &RosterItem) -> Result<u64> {
    let mut tx = s.write().await?;
    require_account(&mut tx, user).await?;
    sqlx::query(
        "INSERT INTO roster_items (owner, contact, name, subscription, ask, approved) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (owner, contact) DO UPDATE SET name = excluded.name, \
         subscription = excluded.subscription, ask = excluded.ask, approved = excluded.approved",
    )
    .bind(user)
    .bind(&item.jid)
    .bind(&item.name)
    .bind(item.subscription.as_str())
    .bind(item.ask)
    .bind(item.approved)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    sqlx::query("DELETE FROM roster_groups WHERE owner = $1 AND contact = $2")
        .bind(user)
        .bind(&item.jid)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    // One statement for all groups; DISTINCT drops duplicate names.
    sqlx::query(
        "INSERT INTO roster_groups (owner, contact, name) \
         SELECT DISTINCT $1, $2, g FROM UNNEST($3::text[]) AS g",
    )
    .bind(user)
    .bind(&item.jid)
    .bind(&item.groups)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    let version = bump_roster_version(&mut tx, user).await?;
    tx.commit().await.map_err(db)?;
    Ok(version)
}

pub(super) async fn remove_roster_item(
    s: &PgStore,
    user: &BareJid,
    contact: &BareJid,
) -> Result<Option<u64>> {
    let mut tx = s.write().await?;
    require_account(&mut tx, user).await?;
    // The item's groups go with it (ON DELETE CASCADE).
    let done = sqlx::query("DELETE FROM roster_items WHERE owner = $1 AND contact = $2")
        .bind(user)
        .bind(contact)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    if done.rows_affected() == 0 {
        // Nothing changed, so the version stays; dropping the transaction rolls it back.
        return Ok(None);
    }
    let version = bump_roster_version(&mut tx, user).await?;
    tx.commit().await.map_err(db)?;
    Ok(Some(version))
}

pub(super) async fn put_subscription_request(
    s: &PgStore,
    user: &BareJid,
    req: &SubscriptionRequest,
) -> Result<()> {
    let mut tx = s.write().await?;
    require_account(&mut tx, user).await?;
    // An upsert keeps the row, and so the request's place in arrival order.
    sqlx::query(
        "INSERT INTO subscription_requests (owner, from_jid, stanza) VALUES ($1, $2, $3) \
         ON CONFLICT (owner, from_jid) DO UPDATE SET stanza = excluded.stanza",
    )
    .bind(user)
    .bind(&req.from)
    .bind(&req.stanza)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn remove_subscription_request(
    s: &PgStore,
    user: &BareJid,
    from: &BareJid,
) -> Result<()> {
    let mut tx = s.write().await?;
    require_account(&mut tx, user).await?;
    sqlx::query("DELETE FROM subscription_requests WHERE owner = $1 AND from_jid = $2")
        .bind(user)
        .bind(from)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn subscription_requests(
    s: &PgStore,
    user: &BareJid,
) -> Result<Vec<SubscriptionRequest>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT from_jid, stanza FROM subscription_requests WHERE owner = $1 ORDER BY id",
    )
    .bind(user)
    .fetch_all(&s.pool)
    .await
    .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(|(from, stanza)| SubscriptionRequest { from, stanza })
        .collect())
}

pub(super) async fn vcard(s: &PgStore, user: &BareJid) -> Result<Option<String>> {
    sqlx::query_scalar("SELECT vcard FROM vcards WHERE owner = $1")
        .bind(user)
        .fetch_optional(&s.pool)
        .await
        .map_err(db)
}

pub(super) async fn set_vcard(s: &PgStore, user: &BareJid, vcard: &str) -> Result<()> {
    let mut tx = s.write().await?;
    require_account(&mut tx, user).await?;
    sqlx::query(
        "INSERT INTO vcards (owner, vcard) VALUES ($1, $2) \
         ON CONFLICT (owner) DO UPDATE SET vcard = excluded.vcard",
    )
    .bind(user)
    .bind(vcard)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn blocklist(s: &PgStore, user: &BareJid) -> Result<Vec<String>> {
    sqlx::query_scalar("SELECT jid FROM blocklist WHERE owner = $1 ORDER BY jid")
        .bind(user)
        .fetch_all(&s.pool)
        .await
        .map_err(db)
}

pub(super) async fn block(s: &PgStore, user: &BareJid, jids: &[String]) -> Result<()> {
    let mut tx = s.write().await?;
    require_account(&mut tx, user).await?;
    sqlx::query(
        "INSERT INTO blocklist (owner, jid) SELECT $1, j FROM UNNEST($2::text[]) AS j \
         ON CONFLICT DO NOTHING",
    )
    .bind(user)
    .bind(jids)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn unblock(s: &PgStore, user: &BareJid, jids: &[String]) -> Result<()> {
    let mut tx = s.write().await?;
    require_account(&mut tx, user).await?;
    // No JIDs means all of them.
    sqlx::query(
        "DELETE FROM blocklist WHERE owner = $1 \
         AND (cardinality($2::text[]) = 0 OR jid = ANY ($2::text[]))",
    )
    .bind(user)
    .bind(jids)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn push_registrations(s: &PgStore) -> Result<Vec<(String, PushRegistration)>> {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT owner, service, node, options FROM push_registrations \
         ORDER BY owner, service, node",
    )
    .fetch_all(&s.pool)
    .await
    .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(|(owner, service, node, options)| {
            let reg = PushRegistration {
                service,
                node,
                options,
            };
            (owner, reg)
        })
        .collect())
}

pub(super) async fn add_push(s: &PgStore, user: &BareJid, reg: &PushRegistration) -> Result<()> {
    let mut tx = s.write().await?;
    require_account(&mut tx, user).await?;
    sqlx::query(
        "INSERT INTO push_registrations (owner, service, node, options) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (owner, service, node) DO UPDATE SET options = excluded.options",
    )
    .bind(user)
    .bind(&reg.service)
    .bind(&reg.node)
    .bind(&reg.options)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn remove_push(
    s: &PgStore,
    user: &BareJid,
    service: &str,
    node: Option<&str>,
) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM push_registrations WHERE owner = $1 AND service = $2 \
         AND ($3::text IS NULL OR node = $3)",
    )
    .bind(user)
    .bind(service)
    .bind(node)
    .execute(&s.pool)
    .await
    .map_err(db)?;
    Ok(done.rows_affected())
}
