//! The SQLite backend, Outpost's default: one database file in WAL mode with
//! `synchronous=FULL`, so that a change is on disk when its method returns, even if the
//! process is killed the next instant.
//!
//! Writes go through a pool of exactly one connection and start with `BEGIN IMMEDIATE`:
//! SQLite allows one writer at a time anyway, queueing writers in the pool is fairer than
//! letting them spin on the busy handler, and taking the write lock up front means a
//! transaction that reads before it writes (the quota checks, the stanza-id check) can
//! neither race another writer nor fail half-way on a stale snapshot. Reads use a
//! separate small pool and run in parallel with the writer, as WAL allows.
//!
//! The schema lives in `migrations/`, embedded at compile time and applied in order on
//! open, so that a database an older build left behind is upgraded; the `schema_version`
//! table records which have run. Roster groups are rows of their own (`roster_groups`),
//! one per item and group, rather than an encoded column.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, SqliteConnection, Transaction};

use crate::{
    ApiToken, ArchivePrefs, ArchiveQuery, ArchivedMessage, BareJid, BatchWrite, Credentials,
    NodeConfig, OfflineMessage, OutboxEntry, OutboxStats, PepItem, PushRegistration, Quotas,
    Result, Roster, RosterItem, Store, StoreError, StoredRoom, SubscriptionRequest, UploadSlot,
};

use crate::rows::{
    CredentialsRow, OUTBOX_COLUMNS, OutboxRow, OutboxStatsRow, ROSTER_SELECT, RosterRow,
    credentials_from_row, outbox_entry, roster_from_rows, to_u64,
};

mod archive;
mod batch;
mod muc;
mod pep;
mod repl_apply;
mod replication;
mod tokens;
mod upload;

/// Rows written or looked up by one statement in the batch operations (six parameters a
/// row at most, well under SQLite's limit of 32,766 bound parameters).
const ROWS_PER_STATEMENT: usize = 250;

/// Schema migrations, applied in order; a version once released is never edited.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_initial.sql")),
    (2, include_str!("../../migrations/0002_outbox.sql")),
    (3, include_str!("../../migrations/0003_archive.sql")),
    (4, include_str!("../../migrations/0004_pep.sql")),
    (5, include_str!("../../migrations/0005_muc.sql")),
    (6, include_str!("../../migrations/0006_push.sql")),
    (
        7,
        include_str!("../../migrations/0007_pep_subscriptions.sql"),
    ),
    (8, include_str!("../../migrations/0008_uploads.sql")),
    (9, include_str!("../../migrations/0009_replication.sql")),
    (
        10,
        include_str!("../../migrations/0010_replication_merge.sql"),
    ),
    (11, include_str!("../../migrations/0011_api_tokens.sql")),
];

/// How long a connection waits for a lock held by another process (an `outpost user …`
/// command next to the running server) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Readers run in parallel under WAL. Each connection costs a thread in sqlx, and a few are
/// enough that short reads do not queue behind each other.
const MAX_READERS: u32 = 4;

/// A [`Store`] in one SQLite database file. Clones share the same connections.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Exactly one connection: every write transaction goes through it.
    writer: SqlitePool,
    readers: SqlitePool,
}

/// Data read back from the database that this code could never have written.
#[derive(Debug, thiserror::Error)]
enum Corrupt {
    #[error("database schema version {found} is newer than this build knows ({known})")]
    SchemaTooNew { found: i64, known: i64 },
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn corrupt(e: Corrupt) -> StoreError {
    StoreError::Backend(Box::new(e))
}

impl SqliteStore {
    /// Opens the database at `path`, creating it (and its parent directory) if missing, and
    /// brings its schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        SqliteStore::open_with(path, MIGRATIONS).await
    }

    /// [`SqliteStore::open`] with the schema known to a build that had only `migrations`:
    /// tests use it to make the databases older builds left behind.
    async fn open_with(path: &Path, migrations: &[(i64, &str)]) -> Result<SqliteStore> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::Backend(Box::new(e)))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode, FULL syncs the log at every commit: NORMAL could lose the last
            // transactions on power loss, and an accepted message must survive that.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);

        let writer = SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(db)?;
        migrate(&writer, migrations).await?;
        // The readers connect after the writer has created the file and switched it to WAL.
        let readers = SqlitePoolOptions::new()
            .max_connections(MAX_READERS)
            .connect_with(options)
            .await
            .map_err(db)?;
        Ok(SqliteStore { writer, readers })
    }

    /// Starts a write transaction holding SQLite's write lock from its first statement.
    async fn write(&self) -> Result<Transaction<'static, Sqlite>> {
        self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(db)
    }
}

/// Applies the migrations the database has not seen yet, all in one transaction, so that a
/// database left by any older build is upgraded on open, or left as it was if that fails.
async fn migrate(pool: &SqlitePool, migrations: &[(i64, &str)]) -> Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL PRIMARY KEY) STRICT",
    )
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    let known = migrations.last().map_or(0, |&(version, _)| version);
    if current > known {
        // An older build must not write into a schema it does not understand.
        return Err(corrupt(Corrupt::SchemaTooNew {
            found: current,
            known,
        }));
    }
    for &(version, sql) in migrations.iter().filter(|&&(v, _)| v > current) {
        sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(db)?;
        sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    tx.commit().await.map_err(db)
}

/// Records received stanza ids (see [`Store::seen_stanza_id`]) inside a transaction, one
/// statement per slice; a duplicate keeps the later time.
async fn record_seen(conn: &mut SqliteConnection, ids: &[(&str, &str)], now_ms: i64) -> Result<()> {
    for slice in ids.chunks(ROWS_PER_STATEMENT) {
        let mut sql =
            String::from("INSERT INTO seen_stanza_ids (origin, stanza_id, seen_at_ms) VALUES ");
        sql.push_str(&vec!["(?, ?, ?)"; slice.len()].join(", "));
        sql.push_str(
            " ON CONFLICT (origin, stanza_id) DO UPDATE \
             SET seen_at_ms = MAX(seen_at_ms, excluded.seen_at_ms)",
        );
        let mut query = sqlx::query(&sql);
        for (origin, id) in slice {
            query = query.bind(*origin).bind(*id).bind(now_ms);
        }
        query.execute(&mut *conn).await.map_err(db)?;
    }
    Ok(())
}

/// Fails with `NoSuchAccount` unless `user` has an account: the rule for writes.
async fn require_account(conn: &mut SqliteConnection, user: &BareJid) -> Result<()> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM accounts WHERE jid = ?")
        .bind(user)
        .fetch_optional(conn)
        .await
        .map_err(db)?;
    found.map(|_| ()).ok_or(StoreError::NoSuchAccount)
}

/// Adds one to the user's roster version and returns the new value.
async fn bump_roster_version(conn: &mut SqliteConnection, user: &BareJid) -> Result<u64> {
    let version: i64 = sqlx::query_scalar(
        "INSERT INTO roster_versions (owner, version) VALUES (?, 1) \
         ON CONFLICT (owner) DO UPDATE SET version = version + 1 RETURNING version",
    )
    .bind(user)
    .fetch_one(conn)
    .await
    .map_err(db)?;
    to_u64("roster_versions.version", version)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_account(&self, user: &BareJid, creds: &Credentials) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO accounts (jid, \
             sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key, \
             sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (jid) DO NOTHING",
        )
        .bind(user)
        .bind(&creds.sha1.salt)
        .bind(creds.sha1.iterations)
        .bind(&creds.sha1.stored_key)
        .bind(&creds.sha1.server_key)
        .bind(&creds.sha256.salt)
        .bind(creds.sha256.iterations)
        .bind(&creds.sha256.stored_key)
        .bind(&creds.sha256.server_key)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AccountExists);
        }
        Ok(())
    }

    async fn credentials(&self, user: &BareJid) -> Result<Option<Credentials>> {
        let row: Option<CredentialsRow> = sqlx::query_as(
            "SELECT sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key, \
             sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key \
             FROM accounts WHERE jid = ?",
        )
        .bind(user)
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.map(credentials_from_row).transpose()
    }

    async fn set_credentials(&self, user: &BareJid, creds: &Credentials) -> Result<()> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE accounts SET \
             sha1_salt = ?, sha1_iterations = ?, sha1_stored_key = ?, sha1_server_key = ?, \
             sha256_salt = ?, sha256_iterations = ?, sha256_stored_key = ?, sha256_server_key = ? \
             WHERE jid = ?",
        )
        .bind(&creds.sha1.salt)
        .bind(creds.sha1.iterations)
        .bind(&creds.sha1.stored_key)
        .bind(&creds.sha1.server_key)
        .bind(&creds.sha256.salt)
        .bind(creds.sha256.iterations)
        .bind(&creds.sha256.stored_key)
        .bind(&creds.sha256.server_key)
        .bind(user)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchAccount);
        }
        sqlx::query("DELETE FROM api_tokens WHERE owner = ?")
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn remove_account(&self, user: &BareJid) -> Result<()> {
        let mut tx = self.write().await?;
        require_account(&mut tx, user).await?;
        // Children first, so this holds even on a connection without foreign keys.
        for statement in [
            "DELETE FROM roster_groups WHERE owner = ?",
            "DELETE FROM roster_items WHERE owner = ?",
            "DELETE FROM roster_versions WHERE owner = ?",
            "DELETE FROM subscription_requests WHERE owner = ?",
            "DELETE FROM offline WHERE owner = ?",
            "DELETE FROM vcards WHERE owner = ?",
            "DELETE FROM blocklist WHERE owner = ?",
            "DELETE FROM pep_subscriptions WHERE owner = ?",
            "DELETE FROM pep_items WHERE owner = ?",
            "DELETE FROM pep_nodes WHERE owner = ?",
            "DELETE FROM private_xml WHERE owner = ?",
            "DELETE FROM push_registrations WHERE owner = ?",
            "DELETE FROM api_tokens WHERE owner = ?",
            "DELETE FROM archive_prefs_jids WHERE owner = ?",
            "DELETE FROM archive_prefs WHERE owner = ?",
            "DELETE FROM accounts WHERE jid = ?",
        ] {
            sqlx::query(statement)
                .bind(user)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        archive::clear_in(&mut tx, user).await?;
        tx.commit().await.map_err(db)
    }

    async fn list_accounts(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT jid FROM accounts ORDER BY jid")
            .fetch_all(&self.readers)
            .await
            .map_err(db)
    }

    async fn account_exists(&self, user: &BareJid) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM accounts WHERE jid = ?")
            .bind(user)
            .fetch_optional(&self.readers)
            .await
            .map_err(db)?;
        Ok(found.is_some())
    }

    async fn roster(&self, user: &BareJid) -> Result<Roster> {
        // One read transaction, so that the version matches the items.
        let mut tx = self.readers.begin().await.map_err(db)?;
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM roster_versions WHERE owner = ?")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        let rows: Vec<RosterRow> = sqlx::query_as(&format!(
            "{ROSTER_SELECT} WHERE i.owner = ? ORDER BY i.contact, g.name"
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

    async fn roster_item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<RosterItem>> {
        let rows: Vec<RosterRow> = sqlx::query_as(&format!(
            "{ROSTER_SELECT} WHERE i.owner = ? AND i.contact = ? ORDER BY g.name"
        ))
        .bind(user)
        .bind(contact)
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        Ok(roster_from_rows(rows)?.pop())
    }

    async fn put_roster_item(&self, user: &BareJid, item: &RosterItem) -> Result<u64> {
        let mut tx = self.write().await?;
        require_account(&mut tx, user).await?;
        sqlx::query(
            "INSERT INTO roster_items \
             (owner, contact, name, subscription, ask, approved) \
             VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (owner, contact) DO UPDATE SET name = excluded.name, \
             subscription = excluded.subscription, ask = excluded.ask, \
             approved = excluded.approved",
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
        sqlx::query("DELETE FROM roster_groups WHERE owner = ? AND contact = ?")
            .bind(user)
            .bind(&item.jid)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        for group in &item.groups {
            // OR IGNORE drops duplicate names; reads return them sorted by the primary key.
            sqlx::query(
                "INSERT OR IGNORE INTO roster_groups (owner, contact, name) VALUES (?, ?, ?)",
            )
            .bind(user)
            .bind(&item.jid)
            .bind(group)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        let version = bump_roster_version(&mut tx, user).await?;
        tx.commit().await.map_err(db)?;
        Ok(version)
    }

    async fn remove_roster_item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<u64>> {
        let mut tx = self.write().await?;
        require_account(&mut tx, user).await?;
        sqlx::query("DELETE FROM roster_groups WHERE owner = ? AND contact = ?")
            .bind(user)
            .bind(contact)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let done = sqlx::query("DELETE FROM roster_items WHERE owner = ? AND contact = ?")
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

    async fn put_subscription_request(
        &self,
        user: &BareJid,
        req: &SubscriptionRequest,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        require_account(&mut tx, user).await?;
        // An upsert keeps the row, and so the request's place in arrival order.
        sqlx::query(
            "INSERT INTO subscription_requests (owner, from_jid, stanza) VALUES (?, ?, ?) \
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

    async fn remove_subscription_request(&self, user: &BareJid, from: &BareJid) -> Result<()> {
        let mut tx = self.write().await?;
        require_account(&mut tx, user).await?;
        sqlx::query("DELETE FROM subscription_requests WHERE owner = ? AND from_jid = ?")
            .bind(user)
            .bind(from)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn subscription_requests(&self, user: &BareJid) -> Result<Vec<SubscriptionRequest>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT from_jid, stanza FROM subscription_requests WHERE owner = ? ORDER BY id",
        )
        .bind(user)
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|(from, stanza)| SubscriptionRequest { from, stanza })
            .collect())
    }

    async fn push_offline(&self, user: &BareJid, stanza: &str, quota: u32) -> Result<i64> {
        let mut tx = self.write().await?;
        require_account(&mut tx, user).await?;
        // The count and the insert are one statement inside a transaction that holds the
        // write lock, so two pushes can never both see room for the last message.
        let done = sqlx::query(
            "INSERT INTO offline (owner, stanza) SELECT ?1, ?2 \
             WHERE (SELECT COUNT(*) FROM offline WHERE owner = ?1) < ?3",
        )
        .bind(user)
        .bind(stanza)
        .bind(quota)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::QuotaExceeded { quota });
        }
        tx.commit().await.map_err(db)?;
        Ok(done.last_insert_rowid())
    }

    async fn offline(&self, user: &BareJid, limit: u32) -> Result<Vec<OfflineMessage>> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, stanza FROM offline WHERE owner = ? ORDER BY id LIMIT ?")
                .bind(user)
                .bind(limit)
                .fetch_all(&self.readers)
                .await
                .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|(id, stanza)| OfflineMessage { id, stanza })
            .collect())
    }

    async fn delete_offline(&self, user: &BareJid, up_to: i64) -> Result<()> {
        let mut tx = self.write().await?;
        require_account(&mut tx, user).await?;
        sqlx::query("DELETE FROM offline WHERE owner = ? AND id <= ?")
            .bind(user)
            .bind(up_to)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn offline_own(&self, user: &BareJid, limit: u32) -> Result<Vec<OfflineMessage>> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, stanza FROM offline WHERE owner = ? AND origin_key IS NULL \
             ORDER BY id LIMIT ?",
        )
        .bind(user)
        .bind(limit)
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|(id, stanza)| OfflineMessage { id, stanza })
            .collect())
    }

    async fn delete_offline_own(&self, user: &BareJid, up_to: i64) -> Result<()> {
        sqlx::query("DELETE FROM offline WHERE owner = ? AND id <= ? AND origin_key IS NULL")
            .bind(user)
            .bind(up_to)
            .execute(&self.writer)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn count_offline(&self, user: &BareJid) -> Result<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM offline WHERE owner = ?")
            .bind(user)
            .fetch_one(&self.readers)
            .await
            .map_err(db)?;
        to_u64("COUNT(*)", count)
    }

    async fn archive_page(&self, q: &ArchiveQuery<'_>) -> Result<Vec<ArchivedMessage>> {
        archive::page(self, q).await
    }

    async fn archive_has(&self, owner: &str, id: i64) -> Result<bool> {
        archive::has(self, owner, id).await
    }

    async fn archive_bounds(&self, owner: &str) -> Result<Option<(i64, i64)>> {
        archive::bounds(self, owner).await
    }

    async fn archive_last_id(&self) -> Result<i64> {
        archive::last_id(self).await
    }

    async fn archive_clear(&self, owner: &str) -> Result<u64> {
        archive::clear(self, owner).await
    }

    async fn archive_expire(&self, before_id: i64, limit: u32) -> Result<u64> {
        archive::expire(self, before_id, limit).await
    }

    async fn archive_prefs(&self, user: &BareJid) -> Result<Option<ArchivePrefs>> {
        archive::prefs(self, user).await
    }

    async fn set_archive_prefs(&self, user: &BareJid, prefs: &ArchivePrefs) -> Result<()> {
        archive::set_prefs(self, user, prefs).await
    }

    async fn all_archive_prefs(&self) -> Result<Vec<(String, ArchivePrefs)>> {
        archive::all_prefs(self).await
    }

    async fn write_batch(
        &self,
        writes: &[BatchWrite],
        now_ms: i64,
        quotas: Quotas,
    ) -> Result<Vec<Result<i64>>> {
        batch::write(self, writes, now_ms, quotas).await
    }

    async fn pep_node(&self, owner: &BareJid, node: &str) -> Result<Option<NodeConfig>> {
        pep::node(self, owner, node).await
    }

    async fn pep_nodes(&self, owner: &BareJid) -> Result<Vec<(String, NodeConfig)>> {
        pep::nodes(self, owner).await
    }

    async fn pep_configure(&self, owner: &BareJid, node: &str, config: &NodeConfig) -> Result<()> {
        pep::configure(self, owner, node, config).await
    }

    async fn pep_delete_node(&self, owner: &BareJid, node: &str) -> Result<bool> {
        pep::delete_node(self, owner, node).await
    }

    async fn pep_publish(&self, owner: &BareJid, node: &str, item: &PepItem) -> Result<()> {
        pep::publish(self, owner, node, item).await
    }

    async fn pep_items(
        &self,
        owner: &BareJid,
        node: &str,
        limit: Option<u32>,
    ) -> Result<Vec<PepItem>> {
        pep::items(self, owner, node, limit).await
    }

    async fn pep_item(&self, owner: &BareJid, node: &str, id: &str) -> Result<Option<PepItem>> {
        pep::item(self, owner, node, id).await
    }

    async fn pep_retract(&self, owner: &BareJid, node: &str, id: &str) -> Result<bool> {
        pep::retract(self, owner, node, id).await
    }

    async fn pep_purge(&self, owner: &BareJid, node: &str) -> Result<()> {
        pep::purge(self, owner, node).await
    }

    async fn pep_subscribe(&self, owner: &BareJid, node: &str, jid: &str) -> Result<()> {
        pep::subscribe(self, owner, node, jid).await
    }

    async fn pep_unsubscribe(&self, owner: &BareJid, node: &str, jid: &str) -> Result<bool> {
        pep::unsubscribe(self, owner, node, jid).await
    }

    async fn pep_subscriptions(&self, owner: &BareJid) -> Result<Vec<(String, String)>> {
        pep::subscriptions(self, owner).await
    }

    async fn private_xml(&self, owner: &BareJid, ns: &str) -> Result<Option<String>> {
        pep::private_xml(self, owner, ns).await
    }

    async fn private_xml_all(&self, owner: &BareJid) -> Result<Vec<(String, String)>> {
        pep::private_xml_all(self, owner).await
    }

    async fn set_private_xml(&self, owner: &BareJid, ns: &str, xml: &str) -> Result<()> {
        pep::set_private_xml(self, owner, ns, xml).await
    }

    async fn muc_rooms(&self) -> Result<Vec<StoredRoom>> {
        muc::rooms(self).await
    }

    async fn muc_save_room(
        &self,
        room: &str,
        config: &[(String, String)],
        now_ms: i64,
    ) -> Result<()> {
        muc::save_room(self, room, config, now_ms).await
    }

    async fn muc_delete_room(&self, room: &str) -> Result<()> {
        muc::delete_room(self, room).await
    }

    async fn muc_set_affiliation(
        &self,
        room: &str,
        jid: &str,
        affiliation: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        muc::set_affiliation(self, room, jid, affiliation, now_ms).await
    }

    async fn upload_reserve(&self, slot: &UploadSlot, quota: u64) -> Result<()> {
        upload::reserve(self, slot, quota).await
    }

    async fn token_add(&self, token: &ApiToken) -> Result<()> {
        tokens::add(self, token).await
    }

    async fn token_by_hash(&self, hash: &[u8]) -> Result<Option<ApiToken>> {
        tokens::by_hash(self, hash).await
    }

    async fn tokens_of(&self, owner: &str) -> Result<Vec<ApiToken>> {
        tokens::of(self, owner).await
    }

    async fn token_remove(&self, owner: &str, id: &str) -> Result<bool> {
        tokens::remove(self, owner, id).await
    }

    async fn tokens_remove_all(&self, owner: &str) -> Result<u64> {
        tokens::remove_all(self, owner).await
    }

    async fn tokens_expire(&self, now_ms: i64) -> Result<u64> {
        tokens::expire(self, now_ms).await
    }

    async fn upload_slot(&self, slot: &str) -> Result<Option<UploadSlot>> {
        upload::get(self, slot).await
    }

    async fn upload_slots_all(&self) -> Result<Vec<UploadSlot>> {
        upload::all(self).await
    }

    async fn upload_complete(&self, slot: &str, now_ms: i64) -> Result<bool> {
        upload::complete(self, slot, now_ms).await
    }

    async fn uploads_expired(
        &self,
        pending_before_ms: i64,
        completed_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<UploadSlot>> {
        upload::expired(self, pending_before_ms, completed_before_ms, limit).await
    }

    async fn upload_remove(&self, slot: &str) -> Result<bool> {
        upload::remove(self, slot).await
    }

    async fn push_registrations(&self) -> Result<Vec<(String, PushRegistration)>> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT owner, service, node, options FROM push_registrations \
             ORDER BY owner, service, node",
        )
        .fetch_all(&self.readers)
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

    async fn add_push(&self, user: &BareJid, reg: &PushRegistration) -> Result<()> {
        let mut tx = self.write().await?;
        require_account(&mut tx, user).await?;
        sqlx::query(
            "INSERT INTO push_registrations (owner, service, node, options) VALUES (?, ?, ?, ?) \
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

    async fn remove_push(&self, user: &BareJid, service: &str, node: Option<&str>) -> Result<u64> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "DELETE FROM push_registrations WHERE owner = ? AND service = ? \
             AND (? IS NULL OR node = ?)",
        )
        .bind(user)
        .bind(service)
        .bind(node)
        .bind(node)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn vcard(&self, user: &BareJid) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT vcard FROM vcards WHERE owner = ?")
            .bind(user)
            .fetch_optional(&self.readers)
            .await
            .map_err(db)
    }

    async fn set_vcard(&self, user: &BareJid, vcard: &str) -> Result<()> {
        let mut tx = self.write().await?;
        require_account(&mut tx, user).await?;
        sqlx::query(
            "INSERT INTO vcards (owner, vcard) VALUES (?, ?) \
             ON CONFLICT (owner) DO UPDATE SET vcard = excluded.vcard",
        )
        .bind(user)
        .bind(vcard)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn blocklist(&self, user: &BareJid) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT jid FROM blocklist WHERE owner = ? ORDER BY jid")
            .bind(user)
            .fetch_all(&self.readers)
            .await
            .map_err(db)
    }

    async fn block(&self, user: &BareJid, jids: &[String]) -> Result<()> {
        let mut tx = self.write().await?;
        require_account(&mut tx, user).await?;
        for jid in jids {
            sqlx::query("INSERT OR IGNORE INTO blocklist (owner, jid) VALUES (?, ?)")
                .bind(user)
                .bind(jid)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn unblock(&self, user: &BareJid, jids: &[String]) -> Result<()> {
        let mut tx = self.write().await?;
        require_account(&mut tx, user).await?;
        if jids.is_empty() {
            sqlx::query("DELETE FROM blocklist WHERE owner = ?")
                .bind(user)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        for jid in jids {
            sqlx::query("DELETE FROM blocklist WHERE owner = ? AND jid = ?")
                .bind(user)
                .bind(jid)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn outbox_push(
        &self,
        local: &str,
        remote: &str,
        stanza: &str,
        now_ms: i64,
        quota: u32,
    ) -> Result<i64> {
        // The count and the insert are one statement inside a transaction that holds the
        // write lock, so two pushes can never both see room for the last stanza.
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "INSERT INTO outbox (local_domain, remote_domain, stanza, queued_at_ms) \
             SELECT ?1, ?2, ?3, ?4 WHERE (SELECT COUNT(*) FROM outbox \
             WHERE remote_domain = ?2 AND local_domain = ?1) < ?5",
        )
        .bind(local)
        .bind(remote)
        .bind(stanza)
        .bind(now_ms)
        .bind(quota)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::QuotaExceeded { quota });
        }
        tx.commit().await.map_err(db)?;
        Ok(done.last_insert_rowid())
    }

    async fn outbox_peek(
        &self,
        local: &str,
        remote: &str,
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>> {
        let rows: Vec<OutboxRow> = sqlx::query_as(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox \
             WHERE remote_domain = ? AND local_domain = ? AND id > ? ORDER BY id LIMIT ?"
        ))
        .bind(remote)
        .bind(local)
        // Every id is above i64::MIN, so no `after_id` means from the start.
        .bind(after_id.unwrap_or(i64::MIN))
        .bind(limit)
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        Ok(rows.into_iter().map(outbox_entry).collect())
    }

    async fn outbox_ack(
        &self,
        local: &str,
        remote: &str,
        up_to_id: i64,
        now_ms: i64,
    ) -> Result<u64> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "DELETE FROM outbox WHERE remote_domain = ? AND local_domain = ? AND id <= ?",
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
             VALUES (?, ?, ?) ON CONFLICT (remote_domain, local_domain) DO UPDATE \
             SET last_delivery_ms = MAX(last_delivery_ms, excluded.last_delivery_ms)",
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

    async fn outbox_expire(
        &self,
        now_ms: i64,
        lifetime_ms: i64,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>> {
        let cutoff = now_ms.saturating_sub(lifetime_ms);
        let mut tx = self.write().await?;
        let mut rows: Vec<OutboxRow> = sqlx::query_as(&format!(
            "DELETE FROM outbox WHERE id IN \
             (SELECT id FROM outbox WHERE queued_at_ms <= ? ORDER BY id LIMIT ?) \
             RETURNING {OUTBOX_COLUMNS}"
        ))
        .bind(cutoff)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        // SQLite does not promise any order for the rows RETURNING gives back.
        rows.sort_unstable_by_key(|row| row.0);
        Ok(rows.into_iter().map(outbox_entry).collect())
    }

    async fn outbox_stats(&self) -> Result<Vec<OutboxStats>> {
        // One statement, so that the counts and the deliveries are one snapshot.
        let rows: Vec<OutboxStatsRow> = sqlx::query_as(
            "SELECT local, remote, SUM(queued), MIN(oldest), MAX(delivered) FROM ( \
               SELECT local_domain AS local, remote_domain AS remote, COUNT(*) AS queued, \
                 MIN(queued_at_ms) AS oldest, NULL AS delivered \
               FROM outbox GROUP BY remote_domain, local_domain \
               UNION ALL \
               SELECT local_domain, remote_domain, 0, NULL, last_delivery_ms \
               FROM outbox_deliveries \
             ) GROUP BY remote, local ORDER BY remote, local",
        )
        .fetch_all(&self.readers)
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

    async fn seen_stanza_id(&self, origin: &str, id: &str, now_ms: i64) -> Result<bool> {
        let mut tx = self.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO seen_stanza_ids (origin, stanza_id, seen_at_ms) VALUES (?, ?, ?) \
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
                "UPDATE seen_stanza_ids SET seen_at_ms = MAX(seen_at_ms, ?) \
                 WHERE origin = ? AND stanza_id = ?",
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

    async fn stanza_ids_seen(&self, ids: &[(String, String)]) -> Result<Vec<bool>> {
        let mut known: std::collections::HashSet<(String, String)> =
            std::collections::HashSet::new();
        for slice in ids.chunks(ROWS_PER_STATEMENT) {
            let mut sql = String::from(
                "SELECT origin, stanza_id FROM seen_stanza_ids WHERE (origin, stanza_id) IN (VALUES ",
            );
            sql.push_str(&vec!["(?, ?)"; slice.len()].join(", "));
            sql.push(')');
            let mut query = sqlx::query_as::<_, (String, String)>(&sql);
            for (origin, id) in slice {
                query = query.bind(origin).bind(id);
            }
            known.extend(query.fetch_all(&self.readers).await.map_err(db)?);
        }
        Ok(ids.iter().map(|pair| known.contains(pair)).collect())
    }

    async fn stanza_id_seen(&self, origin: &str, id: &str) -> Result<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM seen_stanza_ids WHERE origin = ? AND stanza_id = ?")
                .bind(origin)
                .bind(id)
                .fetch_optional(&self.readers)
                .await
                .map_err(db)?;
        Ok(row.is_some())
    }

    async fn prune_seen(&self, older_than_ms: i64) -> Result<u64> {
        let mut tx = self.write().await?;
        let done = sqlx::query("DELETE FROM seen_stanza_ids WHERE seen_at_ms < ?")
            .bind(older_than_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn backup(&self, to: &Path) -> Result<()> {
        if to.exists() {
            return Err(StoreError::Exists {
                path: to.to_owned(),
            });
        }
        let Some(target) = to.to_str() else {
            return Err(StoreError::Backend(
                format!("{} is not valid UTF-8", to.display()).into(),
            ));
        };
        // VACUUM INTO writes a consistent, compacted copy from one read transaction, while
        // writers go on (SQLite 3.27); on a reader, so it never waits for the writer.
        sqlx::query("VACUUM INTO ?")
            .bind(target)
            .execute(&self.readers)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn offline_owners(&self, domain: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT DISTINCT owner FROM offline WHERE substr(owner, -length(?1)) = ?1 \
             AND origin_key IS NULL ORDER BY owner",
        )
        .bind(format!("@{domain}"))
        .fetch_all(&self.readers)
        .await
        .map_err(db)
    }

    async fn repl_activate(&self, mode: crate::ReplMode) -> Result<crate::ReplLog> {
        replication::activate(self, mode).await
    }

    async fn repl_log(&self) -> Result<crate::ReplLog> {
        replication::log(self).await
    }

    async fn repl_read(&self, after: i64, limit: u32) -> Result<(Vec<crate::ReplRecord>, i64)> {
        replication::read(self, after, limit).await
    }

    async fn repl_reseed(&self) -> Result<i64> {
        replication::reseed(self).await
    }

    async fn repl_acked(&self, position: i64, now_ms: i64) -> Result<()> {
        replication::acked(self, position, now_ms).await
    }

    async fn repl_apply(&self, batch: &crate::ReplBatch<'_>) -> Result<(bool, crate::ReplOrigin)> {
        repl_apply::apply(self, batch).await
    }

    async fn repl_origin(&self, domain: &str) -> Result<crate::ReplOrigin> {
        replication::origin(self, domain).await
    }

    async fn repl_origins(&self) -> Result<Vec<crate::ReplOrigin>> {
        replication::origins(self).await
    }

    async fn repl_merge_read(
        &self,
        domain: &str,
        limit: u32,
    ) -> Result<(Vec<crate::ReplRecord>, i64)> {
        replication::merge_read(self, domain, limit).await
    }

    async fn repl_merge_done(&self, domain: &str, upto: i64) -> Result<()> {
        replication::merge_done(self, domain, upto).await
    }

    async fn repl_merge(&self, records: &[crate::ReplRecord]) -> Result<u64> {
        repl_apply::merge(self, records).await
    }

    async fn close(&self) {
        // Readers first: the last connection to close checkpoints the WAL into the database
        // file and removes it, and that should be the writer.
        self.readers.close().await;
        self.writer.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ScramKeys;

    /// The durability promise rests on these pragmas holding on every connection.
    #[tokio::test]
    async fn connections_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("outpost.db"))
            .await
            .unwrap();
        for pool in [&store.writer, &store.readers] {
            let mut conn = pool.acquire().await.unwrap();
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(sync, 2, "synchronous=FULL");
            let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(fk, 1);
        }
        assert_eq!(store.writer.options().get_max_connections(), 1);
        store.close().await;
    }

    #[tokio::test]
    async fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outpost.db");
        let store = SqliteStore::open(&path).await.unwrap();
        sqlx::query("INSERT INTO schema_version (version) VALUES (1000)")
            .execute(&store.writer)
            .await
            .unwrap();
        store.close().await;
        let err = SqliteStore::open(&path).await.unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    }

    #[tokio::test]
    async fn reopening_applies_no_migration_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outpost.db");
        SqliteStore::open(&path).await.unwrap().close().await;
        let store = SqliteStore::open(&path).await.unwrap();
        let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_version")
            .fetch_all(&store.readers)
            .await
            .unwrap();
        let known: Vec<i64> = MIGRATIONS.iter().map(|&(version, _)| version).collect();
        assert_eq!(versions, known);
        store.close().await;
    }

    /// A backup taken while writes go on is a store of its own with everything committed
    /// before it, and never overwrites a file.
    #[tokio::test]
    async fn backup_is_a_consistent_copy() {
        let keys = |n: u8, len: usize| ScramKeys {
            salt: vec![n; 16],
            iterations: 4096,
            stored_key: vec![n; len],
            server_key: vec![n; len],
        };
        let creds = Credentials {
            sha1: keys(1, 20),
            sha256: keys(2, 32),
        };
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("outpost.db"))
            .await
            .unwrap();
        store.create_account("alice@x", &creds).await.unwrap();
        store
            .push_offline("alice@x", "<message/>", 10)
            .await
            .unwrap();
        let copy = dir.path().join("copy.db");
        store.backup(&copy).await.unwrap();
        store.create_account("bob@x", &creds).await.unwrap();
        assert!(matches!(
            store.backup(&copy).await,
            Err(StoreError::Exists { .. })
        ));
        let restored = SqliteStore::open(&copy).await.unwrap();
        assert_eq!(restored.list_accounts().await.unwrap(), ["alice@x"]);
        assert_eq!(restored.count_offline("alice@x").await.unwrap(), 1);
        restored.close().await;
        store.close().await;
    }

    /// A database left by a build that knew only version 1 is upgraded on open, and keeps
    /// everything it held.
    #[tokio::test]
    async fn upgrades_a_version_1_database() {
        let creds = Credentials {
            sha1: ScramKeys {
                salt: vec![1; 16],
                iterations: 4096,
                stored_key: vec![2; 20],
                server_key: vec![3; 20],
            },
            sha256: ScramKeys {
                salt: vec![4; 16],
                iterations: 10_000,
                stored_key: vec![5; 32],
                server_key: vec![6; 32],
            },
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outpost.db");

        // What the version 1 build did: open with its migrations, write through the trait.
        let old = SqliteStore::open_with(&path, &MIGRATIONS[..1])
            .await
            .unwrap();
        old.create_account("alice@example.org", &creds)
            .await
            .unwrap();
        let mut item = RosterItem::new("bob@example.net");
        item.groups = vec!["Friends".to_owned()];
        old.put_roster_item("alice@example.org", &item)
            .await
            .unwrap();
        let offline = old
            .push_offline("alice@example.org", "<message/>", 10)
            .await
            .unwrap();
        // That schema really has no outbox: the test starts from version 1, not 2.
        let err = old
            .outbox_push("example.org", "example.net", "<message/>", 0, 10)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        old.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
                .fetch_all(&store.readers)
                .await
                .unwrap();
        let all: Vec<i64> = MIGRATIONS.iter().map(|&(v, _)| v).collect();
        assert_eq!(versions, all);
        assert_eq!(versions.len(), 11);
        assert_eq!(store.list_accounts().await.unwrap(), ["alice@example.org"]);
        assert_eq!(
            store.credentials("alice@example.org").await.unwrap(),
            Some(creds)
        );
        assert_eq!(
            store.roster("alice@example.org").await.unwrap(),
            Roster {
                version: 1,
                items: vec![item],
            }
        );
        let messages = store.offline("alice@example.org", 10).await.unwrap();
        assert_eq!(
            messages,
            [OfflineMessage {
                id: offline,
                stanza: "<message/>".to_owned()
            }]
        );

        // The new tables work, and the old counters carry on.
        let id = store
            .outbox_push("example.org", "example.net", "<message/>", 0, 10)
            .await
            .unwrap();
        assert_eq!(
            store
                .outbox_peek("example.org", "example.net", None, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .outbox_ack("example.org", "example.net", id, 1)
                .await
                .unwrap(),
            1
        );
        assert!(!store.seen_stanza_id("example.net", "x", 0).await.unwrap());
        assert!(
            store
                .push_offline("alice@example.org", "<later/>", 10)
                .await
                .unwrap()
                > offline
        );
        store.close().await;
    }
}
