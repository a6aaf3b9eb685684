//! Applying replication records from the other side in SQLite: a hub applies its sites'
//! batches (`apply`), a site merges back what its hub wrote for its users while standing in
//! (`merge`). Both keep, per key, the write with the later stamp (see
//! `migrations/0010_replication_merge.sql`) and apply records with one statement list per
//! kind, reading the JSON values as the other side's SQLite built them, so a record is
//! applied exactly as it was read.

use std::collections::HashMap;

use sqlx::SqliteConnection;

use super::replication::{ORIGIN_COLUMNS, domain_of, read_origin};
use super::{SqliteStore, db};
use crate::replication::{Key, bulk_array, hub_verdict, is_union};
use crate::{ReplBatch, ReplKind, ReplOrigin, ReplRecord, Result, StoreError};

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
        // At a hub, under the site's id (its own rows have none).
        ReplKind::Offline => &[(
            "INSERT INTO offline (owner, stanza, origin_key) SELECT ?, json(?)->>'stanza', ? \
             WHERE NOT EXISTS (SELECT 1 FROM offline WHERE owner = ? AND origin_key = ?)",
            &[Owner, Value, Key, Owner, Key],
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

/// A roster's version moves on, unless its account is gone (its removal may come first in
/// a batch, before the removals of what it owned: PostgreSQL logs them in that order).
const BUMP_ROSTER: &str = "INSERT INTO roster_versions (owner, version) \
    SELECT ?1, 1 WHERE EXISTS (SELECT 1 FROM accounts WHERE jid = ?1) \
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
        ReplKind::Offline => &[(
            "DELETE FROM offline WHERE owner = ? AND origin_key = ?",
            &[Owner, Key],
        )],
    }
}

/// Starts or ends a transaction's application of the other side's records: the log's
/// triggers stay quiet meanwhile.
async fn applying(conn: &mut SqliteConnection, on: bool) -> Result<()> {
    sqlx::query("UPDATE repl_settings SET applying = ?")
        .bind(i64::from(on))
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(())
}

/// The hybrid logical clock's receive rule: stamps given out here from now on are above
/// every stamp received.
async fn observe_stamps(conn: &mut SqliteConnection, records: &[ReplRecord]) -> Result<()> {
    if let Some(newest) = records.iter().map(|r| r.stamp).max() {
        sqlx::query("UPDATE repl_settings SET clock = MAX(clock, ?)")
            .bind(newest)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    Ok(())
}

pub(super) async fn apply(s: &SqliteStore, batch: &ReplBatch<'_>) -> Result<(bool, ReplOrigin)> {
    let mut tx = s.write().await?;
    // Records of one batch may name an account after what it owns (an account removed and
    // made again): the foreign keys are checked once, at commit.
    sqlx::query("PRAGMA defer_foreign_keys = ON")
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let mut origin = read_origin(&mut tx, batch.domain, batch.snapshot).await?;
    // Until the commit (a batch not applied rolls back).
    applying(&mut tx, true).await?;
    if batch.snapshot {
        if origin.pending > 0 {
            // What the hub wrote for the site's users goes back to the site first: a
            // snapshot would drop it.
            return Ok((false, origin));
        }
        purge(&mut tx, batch.domain).await?;
        origin.epoch = batch.epoch.to_owned();
        origin.snapshots += 1;
    } else if origin.epoch != batch.epoch || origin.position != batch.after {
        return Ok((false, origin));
    }
    let (winners, lost) = hub_winners(&mut tx, batch).await?;
    apply_all(&mut tx, &winners).await?;
    observe_stamps(&mut tx, batch.records).await?;
    applying(&mut tx, false).await?;
    origin.position = batch.upto;
    origin.head = batch.head.max(batch.upto);
    origin.records += i64::try_from(batch.records.len()).unwrap_or(i64::MAX);
    origin.synced_ms = batch.now_ms;
    origin.conflicts += lost;
    if let Some(newest) = batch.records.iter().map(|r| r.stamp).max() {
        origin.stamp = newest;
    }
    save_origin(&mut tx, &origin).await?;
    tx.commit().await.map_err(db)?;
    Ok((true, origin))
}

async fn save_origin(conn: &mut SqliteConnection, origin: &ReplOrigin) -> Result<()> {
    sqlx::query(&format!(
        "INSERT OR REPLACE INTO repl_origins ({ORIGIN_COLUMNS}) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&origin.domain)
    .bind(&origin.epoch)
    .bind(origin.position)
    .bind(origin.head)
    .bind(origin.records)
    .bind(origin.snapshots)
    .bind(origin.synced_ms)
    .bind(origin.stamp)
    .bind(origin.conflicts)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// The records of a site's batch the hub applies, and how many conflicts they met (the
/// rule is `replication::hub_verdict`); the hub's versions its batch superseded go.
async fn hub_winners<'b>(
    conn: &mut SqliteConnection,
    batch: &ReplBatch<'b>,
) -> Result<(Vec<&'b ReplRecord>, i64)> {
    let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(&format!(
        "SELECT kind, owner, key, sub, stamp FROM repl_versions WHERE {} = ?",
        domain_of("owner")
    ))
    .bind(batch.domain)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let versions: HashMap<Key, i64> = rows
        .into_iter()
        .map(|(kind, owner, key, sub, stamp)| ((kind, owner, key, sub), stamp))
        .collect();
    let verdict = hub_verdict(batch.records, &versions);
    for owner in &verdict.removed {
        sqlx::query("DELETE FROM repl_versions WHERE owner = ?")
            .bind(owner)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    for r in &verdict.forget {
        forget_version(conn, r).await?;
    }
    Ok((verdict.winners, verdict.lost))
}

async fn forget_version(conn: &mut SqliteConnection, r: &ReplRecord) -> Result<()> {
    sqlx::query("DELETE FROM repl_versions WHERE kind = ? AND owner = ? AND key = ? AND sub = ?")
        .bind(r.kind.as_str())
        .bind(&r.owner)
        .bind(&r.key)
        .bind(&r.sub)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(())
}

/// Writes records: the bulk of a directory, accounts and roster items (and the archive),
/// a batch at a time; every other record, and every removal, one at a time in log order
/// first. Neither order can matter: a batch holds one record per key, each with its
/// current value.
async fn apply_all(conn: &mut SqliteConnection, records: &[&ReplRecord]) -> Result<()> {
    let (bulk, single): (Vec<&ReplRecord>, Vec<&ReplRecord>) = records
        .iter()
        .partition(|r| r.value.is_some() && is_bulk(r.kind));
    for record in single {
        apply_record(&mut *conn, record).await?;
    }
    for kind in BULK {
        let of_kind: Vec<&ReplRecord> = bulk.iter().copied().filter(|r| r.kind == kind).collect();
        apply_bulk(&mut *conn, kind, &of_kind).await?;
    }
    Ok(())
}

pub(super) async fn merge(s: &SqliteStore, records: &[ReplRecord]) -> Result<u64> {
    if let Some(r) = records
        .iter()
        .find(|r| matches!(r.kind, ReplKind::Account | ReplKind::MucRoom))
    {
        return Err(StoreError::Rejected(format!(
            "{} record for {}: it changes at home only",
            r.kind.as_str(),
            r.owner
        )));
    }
    let mut tx = s.write().await?;
    applying(&mut tx, true).await?;
    let mut winners = Vec::with_capacity(records.len());
    let mut lost = 0u64;
    for r in records {
        match site_decides(&mut tx, r).await? {
            Merge::Apply => winners.push(r),
            Merge::Lost => lost += 1,
            Merge::Gone => {}
        }
    }
    let (delivered, winners): (Vec<&ReplRecord>, Vec<&ReplRecord>) = winners
        .into_iter()
        .partition(|r| r.kind == ReplKind::Offline);
    for r in delivered {
        // Delivered at the hub: the site's message goes (its key is the site's own id).
        sqlx::query("DELETE FROM offline WHERE owner = ? AND id = CAST(? AS INTEGER)")
            .bind(&r.owner)
            .bind(&r.key)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    apply_all(&mut tx, &winners).await?;
    for r in winners.iter().filter(|r| !is_union(r.kind.as_str())) {
        sqlx::query(
            "INSERT INTO repl_versions (kind, owner, key, sub, stamp) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT DO UPDATE SET stamp = excluded.stamp",
        )
        .bind(r.kind.as_str())
        .bind(&r.owner)
        .bind(&r.key)
        .bind(&r.sub)
        .bind(r.stamp)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    observe_stamps(&mut tx, records).await?;
    sqlx::query("UPDATE repl_settings SET conflicts = conflicts + ?")
        .bind(i64::try_from(lost).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    applying(&mut tx, false).await?;
    tx.commit().await.map_err(db)?;
    Ok(lost)
}

/// What a site does with one of its hub's records.
enum Merge {
    Apply,
    /// This side wrote the key later.
    Lost,
    /// Nothing: its account was removed here (a removal dominates what it races with), it
    /// would remove an archived message (the archive is a union) or add an offline one
    /// (a hub sends only the site's it delivered), or it was applied before.
    Gone,
}

async fn site_decides(conn: &mut SqliteConnection, r: &ReplRecord) -> Result<Merge> {
    let account: Option<i64> = sqlx::query_scalar("SELECT 1 FROM accounts WHERE jid = ?")
        .bind(&r.owner)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    if account.is_none() {
        return Ok(Merge::Gone);
    }
    match (r.kind, &r.value) {
        (ReplKind::Archive, Some(_)) | (ReplKind::Offline, None) => return Ok(Merge::Apply),
        (ReplKind::Archive | ReplKind::Offline, _) => return Ok(Merge::Gone),
        _ => {}
    }
    let version: Option<i64> = sqlx::query_scalar(
        "SELECT stamp FROM repl_versions WHERE kind = ? AND owner = ? AND key = ? AND sub = ?",
    )
    .bind(r.kind.as_str())
    .bind(&r.owner)
    .bind(&r.key)
    .bind(&r.sub)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    Ok(match version {
        Some(v) if v > r.stamp => Merge::Lost,
        // Applied before (or written here in the same tick: the site wins ties).
        Some(v) if v == r.stamp => Merge::Gone,
        _ => Merge::Apply,
    })
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
    let array = bulk_array(records);
    for sql in bulk_upsert(kind) {
        sqlx::query(&sql)
            .bind(&array)
            .execute(&mut *conn)
            .await
            .map_err(|e| rejected(kind, "a batch", e))?;
    }
    Ok(())
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
    sqlx::query(&format!(
        "DELETE FROM repl_versions WHERE {} = ?",
        domain_of("owner")
    ))
    .bind(domain)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
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
