//! Directory replication in PostgreSQL (see `migrations-postgres/0010_replication.sql`),
//! the same log as SQLite's (`sqlite/replication.rs`) in PostgreSQL's SQL: triggers in
//! PL/pgSQL, and the log read with each key's current value as JSON that PostgreSQL
//! builds in the same shape as SQLite does (booleans as 0 and 1, blobs as upper-case
//! hex), so a site and its hub may use either backend. Applying records from the other
//! side is `repl_apply.rs`.
//!
//! Positions and stamps must follow commit order (a hub acknowledging position N must
//! have been shown every entry below N that will ever commit). SQLite's single writer
//! gives that for free; here every write transaction of a replicating store takes the
//! replication lock first ([`Lock::Replication`], see [`PgStore::write`]) and holds it to
//! commit, and the triggers take it too (for a statement outside such a transaction), so
//! logging transactions commit one at a time, in the order of their entries. A replicating
//! store thus writes as SQLite does, one transaction at a time. Unlike SQLite's, the
//! entries of one transaction share one stamp (see [`stamp_function`]).

use sqlx::PgConnection;

use super::{Lock, PgStore, db, lock};
use crate::replication::{
    HubForm, LogRow, OriginRow, Tracked, is_union, origin_from, records, tracked,
};
use crate::{ReplLog, ReplMode, ReplOrigin, ReplRecord, Result, StoreError};

/// Each kind's current value for a log entry `l`, as JSON text; NULL once the key is gone.
const VALUE: &str = "CASE l.kind \
    WHEN 'account' THEN (SELECT json_build_object( \
        'sha1_salt', upper(encode(a.sha1_salt, 'hex')), 'sha1_iterations', a.sha1_iterations, \
        'sha1_stored_key', upper(encode(a.sha1_stored_key, 'hex')), \
        'sha1_server_key', upper(encode(a.sha1_server_key, 'hex')), \
        'sha256_salt', upper(encode(a.sha256_salt, 'hex')), \
        'sha256_iterations', a.sha256_iterations, \
        'sha256_stored_key', upper(encode(a.sha256_stored_key, 'hex')), \
        'sha256_server_key', upper(encode(a.sha256_server_key, 'hex')))::text \
        FROM accounts a WHERE a.jid = l.owner) \
    WHEN 'roster' THEN (SELECT json_build_object('name', r.name, \
        'subscription', r.subscription, 'ask', r.ask::int, 'approved', r.approved::int, \
        'groups', COALESCE((SELECT json_agg(g.name ORDER BY g.name) FROM roster_groups g \
        WHERE g.owner = r.owner AND g.contact = r.contact), '[]'::json))::text \
        FROM roster_items r WHERE r.owner = l.owner AND r.contact = l.key) \
    WHEN 'subreq' THEN (SELECT json_build_object('stanza', q.stanza)::text \
        FROM subscription_requests q WHERE q.owner = l.owner AND q.from_jid = l.key) \
    WHEN 'vcard' THEN (SELECT json_build_object('vcard', v.vcard)::text FROM vcards v \
        WHERE v.owner = l.owner) \
    WHEN 'block' THEN (SELECT '{}' FROM blocklist b WHERE b.owner = l.owner AND b.jid = l.key) \
    WHEN 'private' THEN (SELECT json_build_object('xml', x.xml)::text FROM private_xml x \
        WHERE x.owner = l.owner AND x.ns = l.key) \
    WHEN 'mam_prefs' THEN (SELECT json_build_object('default', p.default_mode, 'jids', \
        COALESCE((SELECT json_agg(json_build_array(j.jid, j.always::int) ORDER BY j.jid) \
        FROM archive_prefs_jids j WHERE j.owner = p.owner), '[]'::json))::text \
        FROM archive_prefs p WHERE p.owner = l.owner) \
    WHEN 'pep_node' THEN (SELECT json_build_object('access_model', n.access_model, \
        'max_items', n.max_items, 'send_last', n.send_last, \
        'notify_retract', n.notify_retract::int, 'title', n.title)::text \
        FROM pep_nodes n WHERE n.owner = l.owner AND n.node = l.key) \
    WHEN 'pep_item' THEN (SELECT json_build_object('payload', i.payload)::text FROM pep_items i \
        WHERE i.owner = l.owner AND i.node = l.key AND i.item_id = l.sub) \
    WHEN 'pep_sub' THEN (SELECT '{}' FROM pep_subscriptions s \
        WHERE s.owner = l.owner AND s.node = l.key AND s.jid = l.sub) \
    WHEN 'muc_room' THEN (SELECT json_build_object('created_ms', m.created_ms, \
        'config', COALESCE((SELECT json_object_agg(c.key, c.value) FROM muc_room_config c \
        WHERE c.room = m.jid), '{}'::json), \
        'affiliations', COALESCE((SELECT json_object_agg(f.jid, f.affiliation) \
        FROM muc_affiliations f WHERE f.room = m.jid), '{}'::json))::text \
        FROM muc_rooms m WHERE m.jid = l.owner) \
    WHEN 'offline' THEN (SELECT json_build_object('stanza', o.stanza)::text FROM offline o \
        WHERE o.id = l.key::bigint AND o.origin_key IS NULL) \
    WHEN 'archive' THEN (SELECT json_build_object('sender', a.sender, \
        'recipient', a.recipient, 'in_sender', a.in_sender::int, \
        'in_recipient', a.in_recipient::int, 'stanza', a.stanza)::text \
        FROM archive a WHERE a.id = l.key::bigint) \
    END";

const TRACKED: &[Tracked] = &[
    tracked("accounts", "account", "r.jid", "''", "''", true),
    tracked("roster_items", "roster", "r.owner", "r.contact", "''", true),
    tracked(
        "roster_groups",
        "roster",
        "r.owner",
        "r.contact",
        "''",
        false,
    ),
    tracked(
        "subscription_requests",
        "subreq",
        "r.owner",
        "r.from_jid",
        "''",
        true,
    ),
    tracked("vcards", "vcard", "r.owner", "''", "''", true),
    tracked("blocklist", "block", "r.owner", "r.jid", "''", true),
    tracked("private_xml", "private", "r.owner", "r.ns", "''", true),
    tracked("archive_prefs", "mam_prefs", "r.owner", "''", "''", true),
    tracked(
        "archive_prefs_jids",
        "mam_prefs",
        "r.owner",
        "''",
        "''",
        false,
    ),
    tracked("pep_nodes", "pep_node", "r.owner", "r.node", "''", true),
    Tracked {
        order: "ORDER BY r.seq",
        ..tracked(
            "pep_items",
            "pep_item",
            "r.owner",
            "r.node",
            "r.item_id",
            true,
        )
    },
    tracked(
        "pep_subscriptions",
        "pep_sub",
        "r.owner",
        "r.node",
        "r.jid",
        true,
    ),
    tracked("muc_rooms", "muc_room", "r.jid", "''", "''", true),
    tracked("muc_room_config", "muc_room", "r.room", "''", "''", false),
    tracked("muc_affiliations", "muc_room", "r.room", "''", "''", false),
    // Each archived message, keyed by its id; owned by its local end (see SQLite's).
    Tracked {
        order: "ORDER BY r.id",
        hub: Some(HubForm {
            ops: &["INSERT"],
            owner: HUB_ARCHIVE_OWNER,
            key: "r.id::text",
            when: "true",
        }),
        ..tracked(
            "archive",
            "archive",
            "CASE WHEN r.in_sender THEN r.sender ELSE r.recipient END",
            "r.id::text",
            "''",
            true,
        )
    },
    // Each message waiting in the offline queue, keyed by the site's id; a hub logs the
    // deletion of the site's it keeps (see SQLite's).
    Tracked {
        order: "ORDER BY r.id",
        hub: Some(HubForm {
            ops: &["DELETE"],
            owner: "r.owner",
            key: "r.origin_key",
            when: "r.origin_key IS NOT NULL",
        }),
        ..tracked("offline", "offline", "r.owner", "r.id::text", "''", true)
    },
];

/// The next stamp of the log's clock (see [`stamp_function`]).
const TICK: &str = "UPDATE repl_settings SET clock = GREATEST(clock + 1, \
    floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint << 16)";

/// The domain of a bare JID, in SQL (the whole of a JID without `@`, as SQLite's).
pub(super) fn domain_of(jid: &str) -> String {
    format!("substr({jid}, strpos({jid}, '@') + 1)")
}

const HUB_ARCHIVE_OWNER: &str = "CASE WHEN r.in_recipient AND \
    substr(r.recipient, strpos(r.recipient, '@') + 1) IN (SELECT domain FROM repl_origins) \
    THEN r.recipient WHEN r.in_sender THEN r.sender ELSE '' END";

/// Whether a transaction is applying the other side's records (the triggers stay quiet):
/// a setting local to the transaction, so it can never outlive one.
pub(super) const APPLYING: &str = "outpost.applying";

/// The trigger functions and triggers that log the changes of `t` in `mode` (see SQLite's
/// `triggers` for what each mode logs): one per operation, for each statement, reading
/// the rows it changed from its transition table (`changed`), so a statement writing many
/// rows (the journal's group commit of archive rows) logs them in one insert.
fn triggers(t: &Tracked, mode: ReplMode) -> Vec<String> {
    let all: &[&str] = &["INSERT", "UPDATE", "DELETE"];
    let (ops, owner, key, when) = match (mode, &t.hub) {
        (ReplMode::Hub, Some(h)) => (h.ops, h.owner, h.key, h.when),
        _ => (all, t.owner, t.key, "true"),
    };
    let only_sites = match mode {
        ReplMode::Hub => format!(
            "WHERE {} IN (SELECT domain FROM repl_origins)",
            domain_of("c.o")
        ),
        _ => String::new(),
    };
    let changed = format!(
        "(SELECT {owner} AS o, {key} AS k, {sub} AS s FROM changed r WHERE {when}) c {only_sites}",
        sub = t.sub
    );
    // `repl_stamp()` runs for the first row logged only (the rest read its stamp), and
    // not at all when no row is.
    let version = match is_union(t.kind) {
        true => String::new(),
        false => format!(
            "INSERT INTO repl_versions (kind, owner, key, sub, stamp) \
             SELECT '{kind}', d.o, d.k, d.s, repl_stamp() FROM \
             (SELECT DISTINCT c.o, c.k, c.s FROM {changed}) d \
             ON CONFLICT (kind, owner, key, sub) DO UPDATE SET stamp = excluded.stamp;",
            kind = t.kind
        ),
    };
    let mut all_sql = Vec::new();
    for op in ops {
        let name = format!("repl_{}_{}", t.table, op.to_lowercase());
        let rows = match *op {
            "DELETE" => "OLD",
            _ => "NEW",
        };
        all_sql.push(format!(
            "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $f$ \
             BEGIN \
               IF current_setting('{APPLYING}', true) = 'on' THEN RETURN NULL; END IF; \
               INSERT INTO repl_log (kind, owner, key, sub, stamp) \
               SELECT '{kind}', c.o, c.k, c.s, repl_stamp() FROM {changed}; \
               {version} \
               RETURN NULL; \
             END $f$",
            kind = t.kind,
        ));
        all_sql.push(format!(
            "CREATE TRIGGER {name} AFTER {op} ON {table} REFERENCING {rows} TABLE AS changed \
             FOR EACH STATEMENT EXECUTE FUNCTION {name}()",
            table = t.table,
        ));
    }
    all_sql
}

/// The stamp of the calling transaction's log entries: the first entry of a transaction
/// takes the replication lock and ticks the clock, the others read what it took (kept in
/// a setting local to the transaction, with the transaction's id). One tick per entry
/// would update the clock's row once per row written, and a transaction updating one row
/// a thousand times walks an ever longer chain of its versions (measured: with a tick
/// and a trigger call per row, a node on PostgreSQL replicating delivered a tenth of the
/// messages it delivers without; see BENCHMARKS.md "Replication on PostgreSQL").
/// The entries of one transaction share its stamp; transactions commit one at a time
/// under the lock, so stamps still follow commit order.
fn stamp_function() -> String {
    format!(
        "CREATE FUNCTION repl_stamp() RETURNS BIGINT LANGUAGE plpgsql AS $f$ \
         DECLARE tx TEXT := txid_current()::text; \
           held TEXT := current_setting('{STAMP}', true); st BIGINT; \
         BEGIN \
           IF held IS NOT NULL AND split_part(held, ':', 1) = tx THEN \
             RETURN split_part(held, ':', 2)::bigint; \
           END IF; \
           PERFORM pg_advisory_xact_lock({lock}); \
           {TICK} RETURNING clock INTO st; \
           PERFORM set_config('{STAMP}', tx || ':' || st, true); \
           RETURN st; \
         END $f$",
        lock = Lock::Replication as i64,
    )
}

/// The setting that holds a transaction's stamp (see [`stamp_function`]).
const STAMP: &str = "outpost.stamp";

fn drop_triggers() -> impl Iterator<Item = String> {
    TRACKED
        .iter()
        .flat_map(|t| {
            ["insert", "update", "delete"].into_iter().flat_map(|op| {
                [
                    format!("DROP TRIGGER IF EXISTS repl_{0}_{op} ON {0}", t.table),
                    format!("DROP FUNCTION IF EXISTS repl_{0}_{op}()", t.table),
                ]
            })
        })
        .chain(["DROP FUNCTION IF EXISTS repl_stamp()".to_owned()])
}

pub(super) async fn activate(s: &PgStore, mode: ReplMode) -> Result<ReplLog> {
    let mut statements: Vec<String> = drop_triggers().collect();
    if mode != ReplMode::Off {
        statements.push(stamp_function());
        statements.extend(TRACKED.iter().flat_map(|t| triggers(t, mode)));
    }
    let form = format!("{mode:?}:{:016x}", digest(&statements));
    // Making triggers takes each table's exclusive lock, which a writer holding one table
    // and waiting for another may deadlock with: PostgreSQL then aborts one of the two.
    let mut tries = 0;
    loop {
        match activate_once(s, mode, &statements, &form).await {
            Err(StoreError::Backend(e)) if is_deadlock(&*e) && tries < 5 => tries += 1,
            done => break done,
        }
    }
}

/// Whether an error is PostgreSQL's deadlock detector aborting the transaction.
fn is_deadlock(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .and_then(|d| d.code())
        .is_some_and(|code| code == "40P01")
}

/// A digest of the triggers' definitions (FNV-1a, the same on every build).
fn digest(statements: &[String]) -> u64 {
    statements
        .iter()
        .flat_map(|s| s.bytes().chain([0]))
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

async fn activate_once(
    s: &PgStore,
    mode: ReplMode,
    statements: &[String],
    form: &str,
) -> Result<ReplLog> {
    let mut tx = s.pool.begin().await.map_err(db)?;
    // Nodes of a cluster starting together activate one after the other.
    lock(&mut tx, Lock::Migrate).await?;
    let (active, hub, held): (bool, bool, String) =
        sqlx::query_as("SELECT active, hub, triggers FROM repl_settings")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
    // Made again when this build would make them otherwise (or the mode changed).
    if held != form {
        for sql in statements {
            sqlx::query(sql).execute(&mut *tx).await.map_err(db)?;
        }
        sqlx::query("UPDATE repl_settings SET triggers = $1")
            .bind(form)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    let site = mode == ReplMode::Site;
    if active != site || hub != (mode == ReplMode::Hub) {
        // A new log; a site's has a new epoch (the clock in nanoseconds names it).
        sqlx::query("DELETE FROM repl_log")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query(
            "UPDATE repl_settings SET active = $1, hub = $2, epoch = $3, acked = 0, \
             synced_ms = 0",
        )
        .bind(site)
        .bind(mode == ReplMode::Hub)
        .bind(if site { epoch() } else { String::new() })
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    let log = read_log(&mut tx).await?;
    tx.commit().await.map_err(db)?;
    s.replicating
        .store(mode != ReplMode::Off, std::sync::atomic::Ordering::SeqCst);
    Ok(log)
}

fn epoch() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}")
}

async fn read_log(conn: &mut PgConnection) -> Result<ReplLog> {
    let (active, epoch, acked, synced_ms, conflicts): (bool, String, i64, i64, i64) =
        sqlx::query_as("SELECT active, epoch, acked, synced_ms, conflicts FROM repl_settings")
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?;
    let (first, last): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT (SELECT MIN(seq) FROM repl_log), (SELECT MAX(seq) FROM repl_log)")
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?;
    // An empty log: everything up to what was acknowledged is gone from it.
    let last = last.unwrap_or(acked);
    Ok(ReplLog {
        active,
        epoch,
        first: first.unwrap_or(last + 1),
        last,
        acked,
        synced_ms,
        conflicts,
    })
}

pub(super) async fn log(s: &PgStore) -> Result<ReplLog> {
    let mut conn = s.pool.acquire().await.map_err(db)?;
    read_log(&mut conn).await
}

/// A log entry's columns: position, stamp, key, current value, and the key's version.
fn log_columns() -> String {
    format!(
        "l.seq, l.stamp, l.kind, l.owner, l.key, l.sub, {VALUE}, (SELECT v.stamp \
         FROM repl_versions v WHERE v.kind = l.kind AND v.owner = l.owner AND v.key = l.key \
         AND v.sub = l.sub)"
    )
}

pub(super) async fn read(s: &PgStore, after: i64, limit: u32) -> Result<(Vec<ReplRecord>, i64)> {
    // One snapshot, so that each value is read as of the same moment.
    let mut tx = s.snapshot().await?;
    let rows: Vec<LogRow> = sqlx::query_as(&format!(
        "SELECT {} FROM repl_log l WHERE l.seq > $1 ORDER BY l.seq LIMIT $2",
        log_columns()
    ))
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    let upto = rows.last().map_or(after, |r| r.0);
    Ok((records(rows, false), upto))
}

/// On a hub: its own writes for `domain`'s users, from the start of its log.
pub(super) async fn merge_read(
    s: &PgStore,
    domain: &str,
    limit: u32,
) -> Result<(Vec<ReplRecord>, i64)> {
    let mut tx = s.snapshot().await?;
    let rows: Vec<LogRow> = sqlx::query_as(&format!(
        "SELECT {} FROM repl_log l WHERE {} = $1 ORDER BY l.seq LIMIT $2",
        log_columns(),
        domain_of("l.owner")
    ))
    .bind(domain)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    let upto = rows.last().map_or(0, |r| r.0);
    Ok((records(rows, true), upto))
}

pub(super) async fn merge_done(s: &PgStore, domain: &str, upto: i64) -> Result<()> {
    let mut tx = s.write().await?;
    sqlx::query(&format!(
        "DELETE FROM repl_log WHERE seq <= $1 AND {} = $2",
        domain_of("owner")
    ))
    .bind(upto)
    .bind(domain)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn reseed(s: &PgStore) -> Result<i64> {
    let mut tx = s.write().await?;
    lock(&mut tx, Lock::Replication).await?;
    let before = read_log(&mut tx).await?.last;
    let stamp: i64 = sqlx::query_scalar(&format!("{TICK} RETURNING clock"))
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    for t in TRACKED.iter().filter(|t| t.main) {
        sqlx::query(&format!(
            "INSERT INTO repl_log (kind, owner, key, sub, stamp) \
             SELECT '{}', {}, {}, {}, $1 FROM {} r {}",
            t.kind, t.owner, t.key, t.sub, t.table, t.order
        ))
        .bind(stamp)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(before)
}

pub(super) async fn acked(s: &PgStore, position: i64, now_ms: i64) -> Result<()> {
    let mut tx = s.write().await?;
    sqlx::query("DELETE FROM repl_log WHERE seq <= $1")
        .bind(position)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sqlx::query("UPDATE repl_settings SET acked = GREATEST(acked, $1), synced_ms = $2")
        .bind(position)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) const ORIGIN_COLUMNS: &str =
    "domain, epoch, position, head, records, snapshots, synced_ms, stamp, conflicts";

/// What the hub holds for the origin `o`'s users that has not gone back to the site yet.
fn pending() -> String {
    format!(
        "((SELECT COUNT(*) FROM repl_log l WHERE {} = o.domain) + (SELECT COUNT(*) FROM \
         offline f WHERE f.origin_key IS NULL AND {} = o.domain))",
        domain_of("l.owner"),
        domain_of("f.owner")
    )
}

/// Where the replica of `domain` stands; what the hub holds that has not gone back to the
/// site only `with_pending`.
pub(super) async fn read_origin(
    conn: &mut PgConnection,
    domain: &str,
    with_pending: bool,
) -> Result<ReplOrigin> {
    let pending = match with_pending {
        true => pending(),
        false => "0::bigint".to_owned(),
    };
    let row: Option<OriginRow> = sqlx::query_as(&format!(
        "SELECT {ORIGIN_COLUMNS}, {pending} FROM repl_origins o WHERE domain = $1"
    ))
    .bind(domain)
    .fetch_optional(conn)
    .await
    .map_err(db)?;
    Ok(row.map(origin_from).unwrap_or_else(|| ReplOrigin {
        domain: domain.to_owned(),
        ..ReplOrigin::default()
    }))
}

pub(super) async fn origin(s: &PgStore, domain: &str) -> Result<ReplOrigin> {
    let mut conn = s.pool.acquire().await.map_err(db)?;
    read_origin(&mut conn, domain, true).await
}

pub(super) async fn origins(s: &PgStore) -> Result<Vec<ReplOrigin>> {
    let rows: Vec<OriginRow> = sqlx::query_as(&format!(
        "SELECT {ORIGIN_COLUMNS}, {} FROM repl_origins o ORDER BY domain",
        pending()
    ))
    .fetch_all(&s.pool)
    .await
    .map_err(db)?;
    Ok(rows.into_iter().map(origin_from).collect())
}
