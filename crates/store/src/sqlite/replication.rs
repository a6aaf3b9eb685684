//! Directory replication in SQLite (see `migrations/0009_replication.sql` and
//! `0010_replication_merge.sql`): the log's triggers, and reading the log joined with each
//! key's current value as JSON, built by SQLite itself. Applying records from the other
//! side is `repl_apply.rs`.

use sqlx::SqliteConnection;

use super::{SqliteStore, db};
use crate::replication::{
    HubForm, LogRow, OriginRow, Tracked, is_union, origin_from, records, tracked,
};
use crate::{ReplLog, ReplMode, ReplOrigin, ReplRecord, Result};

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
    WHEN 'offline' THEN (SELECT json_object('stanza', stanza) FROM offline \
        WHERE id = CAST(l.key AS INTEGER) AND origin_key IS NULL) \
    WHEN 'archive' THEN (SELECT json_object('sender', sender, 'recipient', recipient, \
        'in_sender', in_sender, 'in_recipient', in_recipient, 'stanza', stanza) \
        FROM archive WHERE id = CAST(l.key AS INTEGER)) \
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
    // Each archived message is a key of its own (its id, the message's stanza-id at both
    // servers); its owner is its local end: the sender if its archive holds the row, the
    // recipient otherwise (a room's archive row is its room's). A hub logs new rows only.
    Tracked {
        order: "ORDER BY r.id",
        hub: Some(HubForm {
            ops: &["INSERT"],
            owner: HUB_ARCHIVE_OWNER,
            key: "CAST(r.id AS TEXT)",
            when: "true",
        }),
        ..tracked(
            "archive",
            "archive",
            "CASE WHEN r.in_sender = 1 THEN r.sender ELSE r.recipient END",
            "CAST(r.id AS TEXT)",
            "''",
            true,
        )
    },
    // Each message waiting in the offline queue, keyed by the site's id. A hub keeps the
    // site's under that key (`origin_key`) and logs their deletion, which means it
    // delivered them, so that the site does not deliver them again; its own it hands back.
    Tracked {
        order: "ORDER BY r.id",
        hub: Some(HubForm {
            ops: &["DELETE"],
            owner: "r.owner",
            key: "r.origin_key",
            when: "r.origin_key IS NOT NULL",
        }),
        ..tracked(
            "offline",
            "offline",
            "r.owner",
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

/// The domain of a bare JID, in SQL.
pub(super) fn domain_of(jid: &str) -> String {
    format!("substr({jid}, instr({jid}, '@') + 1)")
}

/// On a hub, an archived message is logged for the end it stood in for: the recipient if
/// it is one of a site's users and the row is in its archive, else the sender if the row
/// is in the sender's (whose domain the trigger then checks).
const HUB_ARCHIVE_OWNER: &str = "CASE WHEN r.in_recipient = 1 AND \
    substr(r.recipient, instr(r.recipient, '@') + 1) IN (SELECT domain FROM repl_origins) \
    THEN r.recipient WHEN r.in_sender = 1 THEN r.sender ELSE '' END";

/// The triggers that log the changes of the tracked tables in `mode`; they exist only
/// while replication is on, so a server that does not replicate pays nothing for them (for
/// the archive, a check on every message would cost a few percent of throughput,
/// measured). None fires while records from the other side are applied (`applying`). Each
/// logs the key with a fresh stamp and, except for the union kinds ([`is_union`]), keeps
/// the stamp as the key's version. A hub logs only what it writes for its sites' users
/// (its form of a table, [`HubForm`]): of the archive only new messages (what it prunes
/// stays at the site), of the offline queue the site's messages it delivered.
fn triggers(mode: ReplMode) -> Vec<String> {
    let mut all = Vec::new();
    for t in TRACKED {
        for (op, row) in OPERATIONS {
            let name = |sql: &str| sql.replace("r.", &format!("{row}."));
            let (owner, key, only) = match (mode, &t.hub) {
                (ReplMode::Hub, Some(h)) if !h.ops.contains(&op) => continue,
                (ReplMode::Hub, Some(h)) => (name(h.owner), name(h.key), name(h.when)),
                _ => (name(t.owner), name(t.key), "true".to_owned()),
            };
            let sub = name(t.sub);
            let mut when = format!("(SELECT applying FROM repl_settings) = 0 AND {only}");
            if mode == ReplMode::Hub {
                when += &format!(
                    " AND {} IN (SELECT domain FROM repl_origins)",
                    domain_of(&owner)
                );
            }
            let version = match is_union(t.kind) {
                true => String::new(),
                false => format!(
                    "INSERT INTO repl_versions (kind, owner, key, sub, stamp) VALUES \
                     ('{}', {owner}, {key}, {sub}, (SELECT clock FROM repl_settings)) \
                     ON CONFLICT DO UPDATE SET stamp = excluded.stamp;",
                    t.kind
                ),
            };
            all.push(format!(
                "CREATE TRIGGER repl_{}_{} AFTER {op} ON {} WHEN {when} BEGIN {TICK}; \
                 INSERT INTO repl_log (kind, owner, key, sub, stamp) VALUES ('{}', {owner}, \
                 {key}, {sub}, (SELECT clock FROM repl_settings)); {version} END",
                t.table,
                op.to_lowercase(),
                t.table,
                t.kind,
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

pub(super) async fn activate(s: &SqliteStore, mode: ReplMode) -> Result<ReplLog> {
    let mut tx = s.write().await?;
    // Made again on every start: a newer build may log differently.
    let mut statements = drop_triggers();
    if mode != ReplMode::Off {
        statements.extend(triggers(mode));
    }
    for sql in statements {
        sqlx::query(&sql).execute(&mut *tx).await.map_err(db)?;
    }
    let (active, hub): (i64, i64) = sqlx::query_as("SELECT active, hub FROM repl_settings")
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    let site = mode == ReplMode::Site;
    if (active == 1) != site || (hub == 1) != (mode == ReplMode::Hub) {
        // A new log; a site's has a new epoch: the clock in nanoseconds names it, unique
        // on this store.
        let epoch = format!("{:x}", now_nanos());
        sqlx::query("DELETE FROM repl_log")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query(
            "UPDATE repl_settings SET active = ?, hub = ?, epoch = ?, acked = 0, synced_ms = 0",
        )
        .bind(i64::from(site))
        .bind(i64::from(mode == ReplMode::Hub))
        .bind(if site { epoch } else { String::new() })
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
    let (active, epoch, acked, synced_ms, conflicts): (i64, String, i64, i64, i64) =
        sqlx::query_as("SELECT active, epoch, acked, synced_ms, conflicts FROM repl_settings")
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
        conflicts,
    })
}

pub(super) async fn log(s: &SqliteStore) -> Result<ReplLog> {
    let mut conn = s.readers.acquire().await.map_err(db)?;
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

pub(super) async fn read(
    s: &SqliteStore,
    after: i64,
    limit: u32,
) -> Result<(Vec<ReplRecord>, i64)> {
    let rows: Vec<LogRow> = sqlx::query_as(&format!(
        "SELECT {} FROM repl_log l WHERE l.seq > ? ORDER BY l.seq LIMIT ?",
        log_columns()
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(&s.readers)
    .await
    .map_err(db)?;
    let upto = rows.last().map_or(after, |r| r.0);
    Ok((records(rows, false), upto))
}

/// On a hub: its own writes for `domain`'s users, from the start of its log (the site's
/// acknowledgement drops them).
pub(super) async fn merge_read(
    s: &SqliteStore,
    domain: &str,
    limit: u32,
) -> Result<(Vec<ReplRecord>, i64)> {
    let rows: Vec<LogRow> = sqlx::query_as(&format!(
        "SELECT {} FROM repl_log l WHERE {} = ? ORDER BY l.seq LIMIT ?",
        log_columns(),
        domain_of("l.owner")
    ))
    .bind(domain)
    .bind(limit)
    .fetch_all(&s.readers)
    .await
    .map_err(db)?;
    let upto = rows.last().map_or(0, |r| r.0);
    Ok((records(rows, true), upto))
}

pub(super) async fn merge_done(s: &SqliteStore, domain: &str, upto: i64) -> Result<()> {
    sqlx::query(&format!(
        "DELETE FROM repl_log WHERE seq <= ? AND {} = ?",
        domain_of("owner")
    ))
    .bind(upto)
    .bind(domain)
    .execute(&s.writer)
    .await
    .map_err(db)?;
    Ok(())
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

pub(super) const ORIGIN_COLUMNS: &str =
    "domain, epoch, position, head, records, snapshots, synced_ms, stamp, conflicts";

/// What the hub holds for the origin `o`'s users that has not gone back to the site yet:
/// its log entries, and the messages it stored itself.
fn pending() -> String {
    format!(
        "((SELECT COUNT(*) FROM repl_log l WHERE {} = o.domain) + (SELECT COUNT(*) FROM \
         offline f WHERE f.origin_key IS NULL AND {} = o.domain))",
        domain_of("l.owner"),
        domain_of("f.owner")
    )
}

/// Where the replica of `domain` stands; what the hub holds that has not gone back to the
/// site only `with_pending` (it scans the hub's offline queue).
pub(super) async fn read_origin(
    conn: &mut SqliteConnection,
    domain: &str,
    with_pending: bool,
) -> Result<ReplOrigin> {
    let pending = match with_pending {
        true => pending(),
        false => "0".to_owned(),
    };
    let row: Option<OriginRow> = sqlx::query_as(&format!(
        "SELECT {ORIGIN_COLUMNS}, {pending} FROM repl_origins o WHERE domain = ?"
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
    read_origin(&mut conn, domain, true).await
}

pub(super) async fn origins(s: &SqliteStore) -> Result<Vec<ReplOrigin>> {
    let rows: Vec<OriginRow> = sqlx::query_as(&format!(
        "SELECT {ORIGIN_COLUMNS}, {} FROM repl_origins o ORDER BY domain",
        pending()
    ))
    .fetch_all(&s.readers)
    .await
    .map_err(db)?;
    Ok(rows.into_iter().map(origin_from).collect())
}
