//! The PostgreSQL backend: the same [`Store`] as [`crate::SqliteStore`], on a server that
//! several Outpost processes (or an operator's tools) can share, replication between a
//! site and its hub included (`replication.rs`: while it is on, write transactions take
//! one lock first and so commit one at a time, as in SQLite).
//!
//! Every write is one transaction on a pooled connection, committed with
//! `synchronous_commit=on` (set on every connection, whatever the server's default), so a
//! change is in the server's write-ahead log on disk when its method returns.
//!
//! Where SQLite's single writer serialises everything, this backend locks only what must
//! not race:
//!
//! - The offline queue and the outbox take their ids from sequences, under a transaction
//!   advisory lock per queue ([`Lock::Offline`] with the user, [`Lock::Outbox`] with the
//!   link: [`lock_queues`]) held until commit. Within a queue, ids are then not only
//!   unique and growing but also *visible* in the order they grow: a reader that saw id N
//!   of a queue has seen every lower id of it that will ever commit, so a session (or a
//!   peer) acknowledging "up to N" never removes a message it was not shown. The same lock
//!   makes each quota check (a count) and its insert atomic. Writers of different users'
//!   queues, or different links, do not wait for each other.
//! - Upload quotas lock the owner's key ([`Lock::Uploads`]) for the same reason.
//! - Writes for an account lock its row (`FOR KEY SHARE`, which a password change does
//!   not wait for), so that removing the account waits for them or they see it gone;
//!   removal itself locks it `FOR UPDATE`.
//!
//! Reads that take several statements run in one `REPEATABLE READ` transaction so that
//! they see one snapshot (a roster's version and its items).
//!
//! The schema lives in `migrations-postgres/`, numbered on its own, embedded at compile
//! time and applied in order by [`PgStore::connect`]; the `schema_version` table records
//! which have run, as in SQLite.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Transaction};

use crate::{
    ApiToken, ArchivePrefs, ArchiveQuery, ArchivedMessage, BareJid, BatchWrite, ClusterLease,
    ClusterNode, Credentials, NodeConfig, OfflineMessage, OutboxEntry, OutboxStats, PepItem,
    PushRegistration, Quotas, Result, Roster, RosterItem, Store, StoreError, StoredRoom,
    SubscriptionRequest, UploadSlot,
};

use crate::rows::to_u64;

mod archive;
mod batch;
mod cluster;
mod directory;
mod muc;
mod offline;
mod outbox;
mod pep;
mod repl_apply;
mod replication;
mod tokens;
mod upload;

/// Schema migrations, applied in order; a version once released is never edited.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        include_str!("../../migrations-postgres/0001_initial.sql"),
    ),
    (2, include_str!("../../migrations-postgres/0002_outbox.sql")),
    (
        3,
        include_str!("../../migrations-postgres/0003_archive.sql"),
    ),
    (4, include_str!("../../migrations-postgres/0004_pep.sql")),
    (5, include_str!("../../migrations-postgres/0005_muc.sql")),
    (6, include_str!("../../migrations-postgres/0006_push.sql")),
    (
        7,
        include_str!("../../migrations-postgres/0007_uploads.sql"),
    ),
    (
        8,
        include_str!("../../migrations-postgres/0008_api_tokens.sql"),
    ),
    (
        9,
        include_str!("../../migrations-postgres/0009_cluster.sql"),
    ),
    (
        10,
        include_str!("../../migrations-postgres/0010_replication.sql"),
    ),
    (
        11,
        include_str!("../../migrations-postgres/0011_replication_triggers.sql"),
    ),
];

/// Connections in the pool: writers no longer queue behind one connection as in SQLite,
/// but the server's own limit (100 by default) is shared with everyone else.
const MAX_CONNECTIONS: u32 = 8;

/// The transaction advisory locks this backend takes (`pg_advisory_xact_lock`), by key.
/// Advisory locks are per database, so stores in other databases of the same server do not
/// contend. A transaction that takes both queue locks takes `Offline` first.
#[derive(Clone, Copy, Debug)]
enum Lock {
    /// Applying migrations: two processes connecting at once must not both apply one.
    Migrate = 0x4f50_0000,
    /// Taking offline ids and checking offline quotas.
    Offline = 0x4f50_0001,
    /// Taking outbox ids and checking outbox quotas.
    Outbox = 0x4f50_0002,
    /// With the owner's hash as the second key: checking an upload quota.
    Uploads = 0x4f50_0003,
    /// Writing while replication is on: taken first by every write transaction, held to
    /// commit, so the log's positions and stamps follow commit order (`replication.rs`).
    Replication = 0x4f50_0004,
}

/// A [`Store`] in one PostgreSQL database. Clones share the same pool.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Replication is on ([`Store::repl_activate`]): writes take [`Lock::Replication`].
    replicating: std::sync::Arc<std::sync::atomic::AtomicBool>,
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

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host/database`, or with
    /// `?host=/socket/dir` for a unix socket) and brings its schema up to date. The
    /// database must exist.
    pub async fn connect(url: &str) -> Result<PgStore> {
        let options = PgConnectOptions::from_str(url)
            .map_err(db)?
            .application_name("outpost")
            // The server's default may be `off`; the durability promise needs `on`.
            .options([("synchronous_commit", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(db)?;
        migrate(&pool).await?;
        // A database another node replicates from: this process's writes take the lock
        // first from the start, not only once it has activated replication itself.
        let replicating: bool = sqlx::query_scalar("SELECT active OR hub FROM repl_settings")
            .fetch_one(&pool)
            .await
            .map_err(db)?;
        Ok(PgStore {
            pool,
            replicating: std::sync::Arc::new(replicating.into()),
        })
    }

    /// Starts a write transaction (READ COMMITTED: each statement sees what committed
    /// before it, which the locks above make enough). While replication is on it takes
    /// the replication lock first, before any other lock, so that no lock order can cycle
    /// through it.
    async fn write(&self) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        if self.replicating.load(std::sync::atomic::Ordering::SeqCst) {
            lock(&mut tx, Lock::Replication).await?;
        }
        Ok(tx)
    }

    /// Runs one statement in a transaction of its own through [`PgStore::write`]: a
    /// write to a table the replication log follows must not run outside one.
    async fn write_one(
        &self,
        query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<u64> {
        let mut tx = self.write().await?;
        let done = query.execute(&mut *tx).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected())
    }

    /// Starts a read-only transaction that sees one snapshot throughout.
    async fn snapshot(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(db)
    }
}

/// Takes one of the backend's advisory locks until the transaction ends.
async fn lock(conn: &mut PgConnection, lock: Lock) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock as i64)
        .execute(conn)
        .await
        .map_err(db)?;
    Ok(())
}

/// Takes the lock of each queue `keys` names (a user's offline queue, a link's outbox),
/// in the order of the lock ids, so that two transactions taking several never wait for
/// each other in a cycle. Writers of different queues do not wait for each other at all.
async fn lock_queues<'a>(
    conn: &mut PgConnection,
    kind: Lock,
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    let ids: std::collections::BTreeSet<i32> = keys.into_iter().map(queue_key).collect();
    for id in ids {
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(kind as i32)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    Ok(())
}

/// A queue's lock id: 32-bit FNV-1a of its name (two names sharing one only wait for
/// each other).
fn queue_key(name: &str) -> i32 {
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    i32::from_ne_bytes(hash.to_ne_bytes())
}

/// The name of a link's outbox queue, for [`lock_queues`].
fn link_key(local: &str, remote: &str) -> String {
    format!("{local}\u{0}{remote}")
}

/// Applies the migrations the database has not seen yet, all in one transaction (DDL is
/// transactional in PostgreSQL), so a failed upgrade leaves the schema as it was.
async fn migrate(pool: &PgPool) -> Result<()> {
    let mut tx = pool.begin().await.map_err(db)?;
    lock(&mut tx, Lock::Migrate).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL PRIMARY KEY)",
    )
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    let known = MIGRATIONS.last().map_or(0, |&(version, _)| version);
    if current > known {
        // An older build must not write into a schema it does not understand.
        return Err(corrupt(Corrupt::SchemaTooNew {
            found: current,
            known,
        }));
    }
    for &(version, sql) in MIGRATIONS.iter().filter(|&&(v, _)| v > current) {
        sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(db)?;
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    tx.commit().await.map_err(db)
}

/// Fails with `NoSuchAccount` unless `user` has an account: the rule for writes. Locks the
/// account's row (`FOR KEY SHARE`) until the transaction ends, so that it cannot be removed
/// under the write.
async fn require_account(conn: &mut PgConnection, user: &BareJid) -> Result<()> {
    let found = sqlx::query("SELECT 1 FROM accounts WHERE jid = $1 FOR KEY SHARE")
        .bind(user)
        .fetch_optional(conn)
        .await
        .map_err(db)?;
    found.map(|_| ()).ok_or(StoreError::NoSuchAccount)
}

/// Runs one statement binding `user` as `$1` inside the transaction.
async fn exec_for(conn: &mut PgConnection, sql: &str, user: &str) -> Result<u64> {
    let done = sqlx::query(sql)
        .bind(user)
        .execute(conn)
        .await
        .map_err(db)?;
    Ok(done.rows_affected())
}

#[async_trait]
impl Store for PgStore {
    async fn create_account(&self, user: &BareJid, creds: &Credentials) -> Result<()> {
        directory::create_account(self, user, creds).await
    }

    async fn credentials(&self, user: &BareJid) -> Result<Option<Credentials>> {
        directory::credentials(self, user).await
    }

    async fn set_credentials(&self, user: &BareJid, creds: &Credentials) -> Result<()> {
        directory::set_credentials(self, user, creds).await
    }

    async fn remove_account(&self, user: &BareJid) -> Result<()> {
        directory::remove_account(self, user).await
    }

    async fn list_accounts(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT jid FROM accounts ORDER BY jid")
            .fetch_all(&self.pool)
            .await
            .map_err(db)
    }

    async fn account_exists(&self, user: &BareJid) -> Result<bool> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE jid = $1)")
            .bind(user)
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    async fn roster(&self, user: &BareJid) -> Result<Roster> {
        directory::roster(self, user).await
    }

    async fn roster_item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<RosterItem>> {
        directory::roster_item(self, user, contact).await
    }

    async fn put_roster_item(&self, user: &BareJid, item: &RosterItem) -> Result<u64> {
        directory::put_roster_item(self, user, item).await
    }

    async fn remove_roster_item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<u64>> {
        directory::remove_roster_item(self, user, contact).await
    }

    async fn put_subscription_request(
        &self,
        user: &BareJid,
        req: &SubscriptionRequest,
    ) -> Result<()> {
        directory::put_subscription_request(self, user, req).await
    }

    async fn remove_subscription_request(&self, user: &BareJid, from: &BareJid) -> Result<()> {
        directory::remove_subscription_request(self, user, from).await
    }

    async fn subscription_requests(&self, user: &BareJid) -> Result<Vec<SubscriptionRequest>> {
        directory::subscription_requests(self, user).await
    }

    async fn push_offline(&self, user: &BareJid, stanza: &str, quota: u32) -> Result<i64> {
        offline::push(self, user, stanza, quota).await
    }

    async fn offline(&self, user: &BareJid, limit: u32) -> Result<Vec<OfflineMessage>> {
        offline::read(self, user, limit).await
    }

    async fn delete_offline(&self, user: &BareJid, up_to: i64) -> Result<()> {
        offline::delete(self, user, up_to).await
    }

    async fn count_offline(&self, user: &BareJid) -> Result<u64> {
        offline::count(self, user).await
    }

    async fn offline_own(&self, user: &BareJid, limit: u32) -> Result<Vec<OfflineMessage>> {
        offline::read_own(self, user, limit).await
    }

    async fn delete_offline_own(&self, user: &BareJid, up_to: i64) -> Result<()> {
        offline::delete_own(self, user, up_to).await
    }

    async fn offline_owners(&self, domain: &str) -> Result<Vec<String>> {
        offline::owners(self, domain).await
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

    async fn muc_room(&self, room: &str) -> Result<Option<StoredRoom>> {
        muc::room(self, room).await
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

    async fn push_registrations(&self) -> Result<Vec<(String, PushRegistration)>> {
        directory::push_registrations(self).await
    }

    async fn add_push(&self, user: &BareJid, reg: &PushRegistration) -> Result<()> {
        directory::add_push(self, user, reg).await
    }

    async fn remove_push(&self, user: &BareJid, service: &str, node: Option<&str>) -> Result<u64> {
        directory::remove_push(self, user, service, node).await
    }

    async fn upload_reserve(&self, slot: &UploadSlot, quota: u64) -> Result<()> {
        upload::reserve(self, slot, quota).await
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

    async fn token_add(&self, token: &ApiToken) -> Result<()> {
        tokens::add(self, token).await
    }

    async fn node_claim(&self, node: &ClusterNode, now_ms: i64) -> Result<bool> {
        cluster::claim(self, node, now_ms).await
    }

    async fn node_renew(
        &self,
        node_id: &str,
        epoch: &str,
        until_ms: i64,
        sessions: u64,
    ) -> Result<bool> {
        cluster::renew(self, node_id, epoch, until_ms, sessions).await
    }

    async fn node_release(&self, node_id: &str, epoch: &str) -> Result<()> {
        cluster::release(self, node_id, epoch).await
    }

    async fn cluster_nodes(&self) -> Result<Vec<ClusterNode>> {
        cluster::nodes(self).await
    }

    async fn lease_take(&self, want: &ClusterLease, now_ms: i64) -> Result<ClusterLease> {
        cluster::take_lease(self, want, now_ms).await
    }

    async fn lease_release(&self, name: &str, node_id: &str, epoch: &str) -> Result<()> {
        cluster::release_lease(self, name, node_id, epoch).await
    }

    async fn leases_extend(
        &self,
        node_id: &str,
        epoch: &str,
        prefix: &str,
        until_ms: i64,
    ) -> Result<Vec<String>> {
        cluster::extend(self, node_id, epoch, prefix, until_ms).await
    }

    async fn cluster_leases(&self) -> Result<Vec<ClusterLease>> {
        cluster::leases(self).await
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

    async fn vcard(&self, user: &BareJid) -> Result<Option<String>> {
        directory::vcard(self, user).await
    }

    async fn set_vcard(&self, user: &BareJid, vcard: &str) -> Result<()> {
        directory::set_vcard(self, user, vcard).await
    }

    async fn blocklist(&self, user: &BareJid) -> Result<Vec<String>> {
        directory::blocklist(self, user).await
    }

    async fn block(&self, user: &BareJid, jids: &[String]) -> Result<()> {
        directory::block(self, user, jids).await
    }

    async fn unblock(&self, user: &BareJid, jids: &[String]) -> Result<()> {
        directory::unblock(self, user, jids).await
    }

    async fn outbox_push(
        &self,
        local: &str,
        remote: &str,
        stanza: &str,
        now_ms: i64,
        quota: u32,
    ) -> Result<i64> {
        outbox::push(self, local, remote, stanza, now_ms, quota).await
    }

    async fn outbox_peek(
        &self,
        local: &str,
        remote: &str,
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>> {
        outbox::peek(self, local, remote, after_id, limit).await
    }

    async fn outbox_ack(
        &self,
        local: &str,
        remote: &str,
        up_to_id: i64,
        now_ms: i64,
    ) -> Result<u64> {
        outbox::ack(self, local, remote, up_to_id, now_ms).await
    }

    async fn outbox_expire(
        &self,
        now_ms: i64,
        lifetime_ms: i64,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>> {
        outbox::expire(self, now_ms, lifetime_ms, limit).await
    }

    async fn outbox_stats(&self) -> Result<Vec<OutboxStats>> {
        outbox::stats(self).await
    }

    async fn seen_stanza_id(&self, origin: &str, id: &str, now_ms: i64) -> Result<bool> {
        outbox::seen_stanza_id(self, origin, id, now_ms).await
    }

    async fn stanza_ids_seen(&self, ids: &[(String, String)]) -> Result<Vec<bool>> {
        outbox::stanza_ids_seen(self, ids).await
    }

    async fn stanza_id_seen(&self, origin: &str, id: &str) -> Result<bool> {
        outbox::stanza_id_seen(self, origin, id).await
    }

    async fn prune_seen(&self, older_than_ms: i64) -> Result<u64> {
        outbox::prune_seen(self, older_than_ms).await
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

    /// Not done by the store: a consistent copy of a PostgreSQL database is the server's
    /// business (`pg_dump`, or its base backups and archived WAL), so this returns
    /// `Unsupported`.
    async fn backup(&self, _to: &std::path::Path) -> Result<()> {
        Err(StoreError::Unsupported(
            "backup of a PostgreSQL store: use pg_dump",
        ))
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
