//! Directory replication in SQLite (see `migrations/0009_replication.sql`): the site reads
//! its trigger-written log joined with each key's current value as JSON, built by SQLite
//! itself; the hub applies records with one statement list per kind, reading the same JSON.
//! Values never pass through Rust types, so a record is applied exactly as it was read.

use std::collections::HashMap;

use sqlx::SqliteConnection;

use super::{SqliteStore, db};
use crate::{ReplBatch, ReplKind, ReplLog, ReplOrigin, ReplRecord, Result, StoreError};

/// Each kind's current value for a log entry `l`, as a JSON object; NULL once the key is
/// gone. Blobs (the SCRAM salts and keys) travel as hex.
const VALUE: &str = "CASE l.kind \
    WHEN 'account' THEN (SELECT json_object( \
        'sha1_salt', hex(sha1_salt), 'sha1_iterations', sha1_iterations, \
        'sha1_stored_key', hex(sha1_stored_key), 'sha1_server_key', hex(sha1_server_key), \
        'sha256_salt', hex(sha256_salt), 'sha256_iterations', sha256_iterations, \
        'sha256_stored_key', hex(sha256_stored_key), 'sha256_server_key', hex(sha256_server_key)) \
        FROM accounts WHERE jid = l.owner) \
    WHEN 'roster' THEN (SELECT json_object('name', name, 'subscription', subscription, \
        'ask', ask, 'approved', approved, 'groups', (SELECT json_group_array(g.name) \
        FROM roster_groups g WHERE g.owner = r.owner AND g.contact = r.contact)) \
        FROM roster_items r WHERE owner = l.owner AND contact = l.key) \
    WHEN 'subreq' THEN (SELECT json_object('stanza', stanza) FROM subscription_requests \
        WHERE owner = l.owner AND from_jid = l.key) \
    WHEN 'vcard' THEN (SELECT json_object('vcard', vcard) FROM vcards WHERE owner = l.owner) \
    WHEN 'block' THEN (SELECT '{}' FROM blocklist WHERE owner = l.owner AND jid = l.key) \
    WHEN 'private' THEN (SELECT json_object('xml', xml) FROM private_xml \
        WHERE owner = l.owner AND ns = l.key) \
    WHEN 'mam_prefs' THEN (SELECT json_object('default', default_mode, 'jids', \
        (SELECT json_group_array(json_array(j.jid, j.always)) FROM archive_prefs_jids j \
        WHERE j.owner = p.owner)) FROM archive_prefs p WHERE owner = l.owner) \
    WHEN 'pep_node' THEN (SELECT json_object('access_model', access_model, \
        'max_items', max_items, 'send_last', send_last, 'notify_retract', notify_retract, \
        'title', title) FROM pep_nodes WHERE owner = l.owner AND node = l.key) \
    WHEN 'pep_item' THEN (SELECT json_object('payload', payload) FROM pep_items \
        WHERE owner = l.owner AND node = l.key AND item_id = l.sub) \
    WHEN 'pep_sub' THEN (SELECT '{}' FROM pep_subscriptions \
        WHERE owner = l.owner AND node = l.key AND jid = l.sub) \
    WHEN 'muc_room' THEN (SELECT json_object('created_ms', created_ms, \
        'config', (SELECT json_group_object(c.key, c.value) FROM muc_room_config c \
        WHERE c.room = m.jid), \
        'affiliations', (SELECT json_group_object(a.jid, a.affiliation) \
        FROM muc_affiliations a WHERE a.room = m.jid)) FROM muc_rooms m WHERE jid = l.owner) \
    WHEN 'archive' THEN (SELECT json_object('sender', sender, 'recipient', recipient, \
        'in_sender', in_sender, 'in_recipient', in_recipient, 'stanza', stanza) \
        FROM archive WHERE id = CAST(l.key AS INTEGER)) \
    END";

/// A table the log follows: the kind of its records and how a row names its key, as SQL
/// over the row `r`. `main` when its rows are the kind's keys (what a snapshot logs again),
/// `order` how a snapshot lists them.
struct Tracked {
    table: &'static str,
    kind: &'static str,
    owner: &'static str,
    key: &'static str,
    sub: &'static str,
    main: bool,
    order: &'static str,
}

const fn tracked(
    table: &'static str,
    kind: &'static str,
    owner: &'static str,
    key: &'static str,
    sub: &'static str,
    main: bool,
) -> Tracked {
    Tracked {
        table,
        kind,
        owner,
        key,
        sub,
        main,
        order: "",
    }
}

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
    // Each archived message is a key of its own (its id, the message's stanza-id at both
    // servers); its owner is its local end: the sender if its archive holds the row, the
    // recipient otherwise (a room's archive row is its room's).
    Tracked {
        order: "ORDER BY r.id",
        ..tracked(
            "archive",
            "archive",
            "CASE WHEN r.in_sender = 1 THEN r.sender ELSE r.recipient END",
            "CAST(r.id AS TEXT)",
            "''",
            true,
        )
    },
];

/// The next stamp of the log's clock (see `migrations/0009_replication.sql`).
const TICK: &str = "UPDATE repl_settings SET clock = \
    MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16)";

const OPERATIONS: [(&str, &str); 3] = [("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")];

/// The triggers that log every change of the tracked tables; they exist only while
/// replication is on, so a server that does not replicate pays nothing for them (for the
/// archive, a check on every message would cost a few percent of throughput, measured).
fn triggers() -> Vec<String> {
    let mut all = Vec::new();
    for t in TRACKED {
        for (op, row) in OPERATIONS {
            let name = |sql: &str| sql.replace("r.", &format!("{row}."));
            all.push(format!(
                "CREATE TRIGGER IF NOT EXISTS repl_{}_{} AFTER {op} ON {} BEGIN {TICK}; \
                 INSERT INTO repl_log (kind, owner, key, sub, stamp) VALUES ('{}', {}, {}, {}, \
                 (SELECT clock FROM repl_settings)); END",
                t.table,
                op.to_lowercase(),
                t.table,
                t.kind,
                name(t.owner),
                name(t.key),
                name(t.sub),
            ));
        }
    }
    all
}

fn drop_triggers() -> Vec<String> {
    let mut all = Vec::new();
    for t in TRACKED {
        for (op, _) in OPERATIONS {
            all.push(format!(
                "DROP TRIGGER IF EXISTS repl_{}_{}",
                t.table,
                op.to_lowercase()
            ));
        }
    }
    all
}

/// Every key the directory holds, as log entries with stamp `?1` (`repl_reseed`).
fn reseed_statements() -> impl Iterator<Item = String> {
    TRACKED.iter().filter(|t| t.main).map(|t| {
        format!(
            "INSERT INTO repl_log (kind, owner, key, sub, stamp) \
             SELECT '{}', {}, {}, {}, ?1 FROM {} r {}",
            t.kind, t.owner, t.key, t.sub, t.table, t.order
        )
    })
}

/// A statement parameter: the record's owner, key, sub-key or JSON value.
#[derive(Clone, Copy)]
enum P {
    Owner,
    Key,
    Sub,
    Value,
}

/// The statements that write a record's value (`?` in the order of the parameters), for
/// the kinds written one record at a time.
fn upsert(kind: ReplKind) -> &'static [(&'static str, &'static [P])] {
    use P::*;
    match kind {
        // Written in bulk (see `BULK`).
        ReplKind::Account | ReplKind::Roster | ReplKind::Archive => &[],
        ReplKind::SubscriptionRequest => &[(
            "INSERT INTO subscription_requests (owner, from_jid, stanza) \
             SELECT ?, ?, json(?)->>'stanza' WHERE true \
             ON CONFLICT (owner, from_jid) DO UPDATE SET stanza = excluded.stanza",
            &[Owner, Key, Value],
        )],
        ReplKind::Vcard => &[(
            "INSERT INTO vcards (owner, vcard) SELECT ?, json(?)->>'vcard' WHERE true \
             ON CONFLICT (owner) DO UPDATE SET vcard = excluded.vcard",
            &[Owner, Value],
        )],
        ReplKind::Block => &[(
            "INSERT OR IGNORE INTO blocklist (owner, jid) VALUES (?, ?)",
            &[Owner, Key],
        )],
        ReplKind::Private => &[(
            "INSERT INTO private_xml (owner, ns, xml) SELECT ?, ?, json(?)->>'xml' WHERE true \
             ON CONFLICT (owner, ns) DO UPDATE SET xml = excluded.xml",
            &[Owner, Key, Value],
        )],
        ReplKind::ArchivePrefs => &[
            (
                "INSERT INTO archive_prefs (owner, default_mode) \
                 SELECT ?, json(?)->>'default' WHERE true \
                 ON CONFLICT (owner) DO UPDATE SET default_mode = excluded.default_mode",
                &[Owner, Value],
            ),
            ("DELETE FROM archive_prefs_jids WHERE owner = ?", &[Owner]),
            (
                "INSERT OR IGNORE INTO archive_prefs_jids (owner, jid, always) \
                 SELECT ?, value->>0, value->>1 FROM json_each(?, '$.jids')",
                &[Owner, Value],
            ),
        ],
        ReplKind::PepNode => &[(
            "INSERT INTO pep_nodes (owner, node, access_model, max_items, send_last, \
             notify_retract, title) \
             SELECT ?, ?, j->>'access_model', j->>'max_items', j->>'send_last', \
             j->>'notify_retract', j->>'title' FROM (SELECT json(?) AS j) WHERE true \
             ON CONFLICT (owner, node) DO UPDATE SET access_model = excluded.access_model, \
             max_items = excluded.max_items, send_last = excluded.send_last, \
             notify_retract = excluded.notify_retract, title = excluded.title",
            &[Owner, Key, Value],
        )],
        // As at the site: a replaced item becomes the newest.
        ReplKind::PepItem => &[
            (
                "DELETE FROM pep_items WHERE owner = ? AND node = ? AND item_id = ?",
                &[Owner, Key, Sub],
            ),
            (
                "INSERT INTO pep_items (owner, node, item_id, payload) \
                 SELECT ?, ?, ?, json(?)->>'payload'",
                &[Owner, Key, Sub, Value],
            ),
        ],
        ReplKind::PepSubscription => &[(
            "INSERT OR IGNORE INTO pep_subscriptions (owner, node, jid) VALUES (?, ?, ?)",
            &[Owner, Key, Sub],
        )],
        ReplKind::MucRoom => &[
            (
                "INSERT INTO muc_rooms (jid, created_ms) SELECT ?, json(?)->>'created_ms' \
                 WHERE true ON CONFLICT (jid) DO UPDATE SET created_ms = excluded.created_ms",
                &[Owner, Value],
            ),
            ("DELETE FROM muc_room_config WHERE room = ?", &[Owner]),
            (
                "INSERT INTO muc_room_config (room, key, value) \
                 SELECT ?, key, value FROM json_each(?, '$.config')",
                &[Owner, Value],
            ),
            ("DELETE FROM muc_affiliations WHERE room = ?", &[Owner]),
            (
                "INSERT INTO muc_affiliations (room, jid, affiliation) \
                 SELECT ?, key, value FROM json_each(?, '$.affiliations')",
                &[Owner, Value],
            ),
        ],
    }
}

const BUMP_ROSTER: &str = "INSERT INTO roster_versions (owner, version) VALUES (?, 1) \
    ON CONFLICT (owner) DO UPDATE SET version = version + 1";

/// The statements that remove a record's key.
fn remove(kind: ReplKind) -> &'static [(&'static str, &'static [P])] {
    use P::*;
    match kind {
        ReplKind::Account => &[("DELETE FROM accounts WHERE jid = ?", &[Owner])],
        ReplKind::Roster => &[
            (
                "DELETE FROM roster_items WHERE owner = ? AND contact = ?",
                &[Owner, Key],
            ),
            (BUMP_ROSTER, &[Owner]),
        ],
        ReplKind::SubscriptionRequest => &[(
            "DELETE FROM subscription_requests WHERE owner = ? AND from_jid = ?",
            &[Owner, Key],
        )],
        ReplKind::Vcard => &[("DELETE FROM vcards WHERE owner = ?", &[Owner])],
        ReplKind::Block => &[(
            "DELETE FROM blocklist WHERE owner = ? AND jid = ?",
            &[Owner, Key],
        )],
        ReplKind::Private => &[(
            "DELETE FROM private_xml WHERE owner = ? AND ns = ?",
            &[Owner, Key],
        )],
        ReplKind::ArchivePrefs => &[("DELETE FROM archive_prefs WHERE owner = ?", &[Owner])],
        ReplKind::PepNode => &[(
            "DELETE FROM pep_nodes WHERE owner = ? AND node = ?",
            &[Owner, Key],
        )],
        ReplKind::PepItem => &[(
            "DELETE FROM pep_items WHERE owner = ? AND node = ? AND item_id = ?",
            &[Owner, Key, Sub],
        )],
        ReplKind::PepSubscription => &[(
            "DELETE FROM pep_subscriptions WHERE owner = ? AND node = ? AND jid = ?",
            &[Owner, Key, Sub],
        )],
        ReplKind::MucRoom => &[("DELETE FROM muc_rooms WHERE jid = ?", &[Owner])],
        ReplKind::Archive => &[("DELETE FROM archive WHERE id = CAST(? AS INTEGER)", &[Key])],
    }
}

pub(super) async fn activate(s: &SqliteStore, on: bool) -> Result<ReplLog> {
    let mut tx = s.write().await?;
    let statements = match on {
        true => triggers(),
        false => drop_triggers(),
    };
    for sql in statements {
        sqlx::query(&sql).execute(&mut *tx).await.map_err(db)?;
    }
    let active: i64 = sqlx::query_scalar("SELECT active FROM repl_settings")
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    if (active == 1) != on {
        // A new epoch: the clock in nanoseconds names it, unique on this store.
        let epoch = format!("{:x}", now_nanos());
        sqlx::query("DELETE FROM repl_log")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("UPDATE repl_settings SET active = ?, epoch = ?, acked = 0, synced_ms = 0")
            .bind(i64::from(on))
            .bind(if on { epoch } else { String::new() })
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    let log = read_log(&mut tx).await?;
    tx.commit().await.map_err(db)?;
    Ok(log)
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn read_log(conn: &mut SqliteConnection) -> Result<ReplLog> {
    let (active, epoch, acked, synced_ms): (i64, String, i64, i64) =
        sqlx::query_as("SELECT active, epoch, acked, synced_ms FROM repl_settings")
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?;
    let (first, last): (Option<i64>, Option<i64>) =
        // Two subqueries: each is one step down the rowid index, where a single query
        // asking for both reads the whole table.
        sqlx::query_as("SELECT (SELECT MIN(seq) FROM repl_log), (SELECT MAX(seq) FROM repl_log)")
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?;
    // An empty log: everything up to what was acknowledged is gone from it.
    let last = last.unwrap_or(acked);
    Ok(ReplLog {
        active: active == 1,
        epoch,
        first: first.unwrap_or(last + 1),
        last,
        acked,
        synced_ms,
    })
}

pub(super) async fn log(s: &SqliteStore) -> Result<ReplLog> {
    let mut conn = s.readers.acquire().await.map_err(db)?;
    read_log(&mut conn).await
}

type LogRow = (i64, i64, String, String, String, String, Option<String>);

pub(super) async fn read(
    s: &SqliteStore,
    after: i64,
    limit: u32,
) -> Result<(Vec<ReplRecord>, i64)> {
    let rows: Vec<LogRow> = sqlx::query_as(&format!(
        "SELECT l.seq, l.stamp, l.kind, l.owner, l.key, l.sub, {VALUE} \
         FROM repl_log l WHERE l.seq > ? ORDER BY l.seq LIMIT ?"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(&s.readers)
    .await
    .map_err(db)?;
    let upto = rows.last().map_or(after, |r| r.0);
    let mut records: Vec<ReplRecord> = Vec::with_capacity(rows.len());
    let mut seen: HashMap<(String, String, String, String), usize> = HashMap::new();
    for (seq, stamp, kind, owner, key, sub, value) in rows {
        let Some(kind_) = ReplKind::parse(&kind) else {
            continue;
        };
        // Keep the first position (the value is the current one anyway): every account's
        // record then comes before the records of what it owns.
        match seen.entry((kind, owner.clone(), key.clone(), sub.clone())) {
            std::collections::hash_map::Entry::Occupied(at) => {
                let r = &mut records[*at.get()];
                r.stamp = r.stamp.max(stamp);
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(records.len());
                records.push(ReplRecord {
                    seq,
                    stamp,
                    kind: kind_,
                    owner,
                    key,
                    sub,
                    value,
                });
            }
        }
    }
    Ok((records, upto))
}

pub(super) async fn reseed(s: &SqliteStore) -> Result<i64> {
    let mut tx = s.write().await?;
    let before = read_log(&mut tx).await?.last;
    let stamp: i64 = sqlx::query_scalar(&format!("{TICK} RETURNING clock"))
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    for sql in reseed_statements() {
        sqlx::query(&sql)
            .bind(stamp)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(before)
}

pub(super) async fn acked(s: &SqliteStore, position: i64, now_ms: i64) -> Result<()> {
    let mut tx = s.write().await?;
    sqlx::query("DELETE FROM repl_log WHERE seq <= ?")
        .bind(position)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sqlx::query("UPDATE repl_settings SET acked = MAX(acked, ?), synced_ms = ?")
        .bind(position)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)
}

type OriginRow = (String, String, i64, i64, i64, i64, i64, i64);

fn origin_from(r: OriginRow) -> ReplOrigin {
    ReplOrigin {
        domain: r.0,
        epoch: r.1,
        position: r.2,
        head: r.3,
        records: r.4,
        snapshots: r.5,
        synced_ms: r.6,
        stamp: r.7,
    }
}

const ORIGIN_COLUMNS: &str = "domain, epoch, position, head, records, snapshots, synced_ms, stamp";

async fn read_origin(conn: &mut SqliteConnection, domain: &str) -> Result<ReplOrigin> {
    let row: Option<OriginRow> = sqlx::query_as(&format!(
        "SELECT {ORIGIN_COLUMNS} FROM repl_origins WHERE domain = ?"
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

pub(super) async fn origin(s: &SqliteStore, domain: &str) -> Result<ReplOrigin> {
    let mut conn = s.readers.acquire().await.map_err(db)?;
    read_origin(&mut conn, domain).await
}

pub(super) async fn origins(s: &SqliteStore) -> Result<Vec<ReplOrigin>> {
    let rows: Vec<OriginRow> = sqlx::query_as(&format!(
        "SELECT {ORIGIN_COLUMNS} FROM repl_origins ORDER BY domain"
    ))
    .fetch_all(&s.readers)
    .await
    .map_err(db)?;
    Ok(rows.into_iter().map(origin_from).collect())
}

pub(super) async fn apply(s: &SqliteStore, batch: &ReplBatch<'_>) -> Result<(bool, ReplOrigin)> {
    let mut tx = s.write().await?;
    // Records of one batch may name an account after what it owns (an account removed and
    // made again): the foreign keys are checked once, at commit.
    sqlx::query("PRAGMA defer_foreign_keys = ON")
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let mut origin = read_origin(&mut tx, batch.domain).await?;
    if batch.snapshot {
        purge(&mut tx, batch.domain).await?;
        origin.epoch = batch.epoch.to_owned();
        origin.snapshots += 1;
    } else if origin.epoch != batch.epoch || origin.position != batch.after {
        return Ok((false, origin));
    }
    // The bulk of a directory, accounts and roster items, is written a batch at a time;
    // every other record, and every removal, one at a time in log order first. Neither
    // order can matter: a batch holds one record per key, each with its current value.
    let (bulk, single): (Vec<&ReplRecord>, Vec<&ReplRecord>) = batch
        .records
        .iter()
        .partition(|r| r.value.is_some() && is_bulk(r.kind));
    for record in single {
        apply_record(&mut tx, record).await?;
    }
    for kind in BULK {
        let of_kind: Vec<&ReplRecord> = bulk.iter().copied().filter(|r| r.kind == kind).collect();
        apply_bulk(&mut tx, kind, &of_kind).await?;
    }
    origin.position = batch.upto;
    origin.head = batch.head.max(batch.upto);
    origin.records += i64::try_from(batch.records.len()).unwrap_or(i64::MAX);
    origin.synced_ms = batch.now_ms;
    if let Some(newest) = batch.records.iter().map(|r| r.stamp).max() {
        origin.stamp = newest;
    }
    sqlx::query(&format!(
        "INSERT OR REPLACE INTO repl_origins ({ORIGIN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&origin.domain)
    .bind(&origin.epoch)
    .bind(origin.position)
    .bind(origin.head)
    .bind(origin.records)
    .bind(origin.snapshots)
    .bind(origin.synced_ms)
    .bind(origin.stamp)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok((true, origin))
}

async fn apply_record(conn: &mut SqliteConnection, r: &ReplRecord) -> Result<()> {
    let statements = match r.value {
        Some(_) => upsert(r.kind),
        None => remove(r.kind),
    };
    for (sql, params) in statements {
        let mut q = sqlx::query(sql);
        for p in *params {
            q = match p {
                P::Owner => q.bind(&r.owner),
                P::Key => q.bind(&r.key),
                P::Sub => q.bind(&r.sub),
                P::Value => q.bind(r.value.as_deref()),
            };
        }
        // A value that is not the JSON this kind needs, or breaks a constraint: the
        // sender's fault, said as such.
        q.execute(&mut *conn)
            .await
            .map_err(|e| rejected(r.kind, &r.owner, e))?;
    }
    Ok(())
}

/// The kinds written a batch at a time: the bulk of what replicates.
const BULK: [ReplKind; 3] = [ReplKind::Account, ReplKind::Roster, ReplKind::Archive];

fn is_bulk(kind: ReplKind) -> bool {
    BULK.contains(&kind)
}

/// The set-based form of [`upsert`] for the bulk kinds: each statement reads all the
/// records, given as one JSON array of `{"o": owner, "k": key, "v": value}` (the value as a
/// JSON string, parsed here, so a malformed one fails the statement and cannot reach into
/// the array).
const RECORDS: &str = "(SELECT e.value->>'o' AS o, e.value->>'k' AS k, json(e.value->>'v') AS v \
    FROM json_each(?) e)";

fn bulk_upsert(kind: ReplKind) -> Vec<String> {
    match kind {
        ReplKind::Account => vec![format!(
            "INSERT INTO accounts (jid, sha1_salt, sha1_iterations, sha1_stored_key, \
             sha1_server_key, sha256_salt, sha256_iterations, sha256_stored_key, \
             sha256_server_key) \
             SELECT o, unhex(v->>'sha1_salt'), v->>'sha1_iterations', \
             unhex(v->>'sha1_stored_key'), unhex(v->>'sha1_server_key'), \
             unhex(v->>'sha256_salt'), v->>'sha256_iterations', \
             unhex(v->>'sha256_stored_key'), unhex(v->>'sha256_server_key') \
             FROM {RECORDS} WHERE true \
             ON CONFLICT (jid) DO UPDATE SET sha1_salt = excluded.sha1_salt, \
             sha1_iterations = excluded.sha1_iterations, \
             sha1_stored_key = excluded.sha1_stored_key, \
             sha1_server_key = excluded.sha1_server_key, sha256_salt = excluded.sha256_salt, \
             sha256_iterations = excluded.sha256_iterations, \
             sha256_stored_key = excluded.sha256_stored_key, \
             sha256_server_key = excluded.sha256_server_key"
        )],
        ReplKind::Roster => vec![
            format!(
                "INSERT INTO roster_items (owner, contact, name, subscription, ask, approved) \
                 SELECT o, k, v->>'name', v->>'subscription', v->>'ask', v->>'approved' \
                 FROM {RECORDS} WHERE true \
                 ON CONFLICT (owner, contact) DO UPDATE SET name = excluded.name, \
                 subscription = excluded.subscription, ask = excluded.ask, \
                 approved = excluded.approved"
            ),
            format!(
                "DELETE FROM roster_groups WHERE (owner, contact) IN (SELECT o, k FROM {RECORDS})"
            ),
            format!(
                "INSERT OR IGNORE INTO roster_groups (owner, contact, name) \
                 SELECT o, k, g.value FROM {RECORDS}, json_each(v, '$.groups') g"
            ),
            format!(
                "INSERT INTO roster_versions (owner, version) \
                 SELECT DISTINCT o, 1 FROM {RECORDS} WHERE true \
                 ON CONFLICT (owner) DO UPDATE SET version = version + 1"
            ),
        ],
        // The id is the message's stanza-id at both servers. One the hub gave a message of
        // its own already keeps that message: the hub's archive misses this one, the site's
        // has it (see `Archive::observe`, which keeps the hub's ids above the site's).
        ReplKind::Archive => vec![format!(
            "INSERT INTO archive (id, sender, recipient, in_sender, in_recipient, stanza) \
             SELECT CAST(k AS INTEGER), v->>'sender', v->>'recipient', v->>'in_sender', \
             v->>'in_recipient', v->>'stanza' FROM {RECORDS} WHERE true \
             ON CONFLICT (id) DO UPDATE SET in_sender = excluded.in_sender, \
             in_recipient = excluded.in_recipient \
             WHERE archive.sender = excluded.sender AND archive.recipient = excluded.recipient \
             AND archive.stanza = excluded.stanza"
        )],
        _ => Vec::new(),
    }
}

async fn apply_bulk(
    conn: &mut SqliteConnection,
    kind: ReplKind,
    records: &[&ReplRecord],
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut array = String::from("[");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            array.push(',');
        }
        array.push_str("{\"o\":");
        json_string(&mut array, &r.owner);
        array.push_str(",\"k\":");
        json_string(&mut array, &r.key);
        array.push_str(",\"v\":");
        json_string(&mut array, r.value.as_deref().unwrap_or("null"));
        array.push('}');
    }
    array.push(']');
    for sql in bulk_upsert(kind) {
        sqlx::query(&sql)
            .bind(&array)
            .execute(&mut *conn)
            .await
            .map_err(|e| rejected(kind, "a batch", e))?;
    }
    Ok(())
}

/// `s` as a JSON string literal (RFC 8259 §7).
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A statement the sender's data made fail: [`StoreError::Rejected`], saying why.
fn rejected(kind: ReplKind, owner: &str, e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(d) => StoreError::Rejected(format!(
            "{} record for {owner}: {}",
            kind.as_str(),
            d.message()
        )),
        e => db(e),
    }
}

/// Drops everything the hub holds for `domain`'s accounts and rooms (a snapshot follows).
async fn purge(conn: &mut SqliteConnection, domain: &str) -> Result<()> {
    let at = format!("@{domain}");
    let sub = format!(".{domain}");
    sqlx::query("DELETE FROM accounts WHERE substr(jid, -length(?1)) = ?1")
        .bind(&at)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    sqlx::query(
        "DELETE FROM archive WHERE (in_sender = 1 AND substr(sender, -length(?1)) = ?1) \
         OR (in_sender = 0 AND substr(recipient, -length(?1)) = ?1) \
         OR (in_sender = 1 AND substr(sender, -length(?2)) = ?2)",
    )
    .bind(&at)
    .bind(&sub)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    sqlx::query(
        "DELETE FROM muc_rooms WHERE substr(jid, -length(?1)) = ?1 \
         OR substr(jid, -length(?2)) = ?2",
    )
    .bind(&at)
    .bind(&sub)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}
