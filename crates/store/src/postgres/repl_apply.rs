//! Applying replication records from the other side in PostgreSQL: a hub applies its
//! sites' batches (`apply`), a site merges back what its hub wrote for its users while
//! standing in (`merge`). The rules are SQLite's (`sqlite/repl_apply.rs`); the statements
//! read the JSON values in the shape both backends write.

use std::collections::HashMap;

use sqlx::PgConnection;

use super::replication::{APPLYING, ORIGIN_COLUMNS, domain_of, read_origin};
use super::{Lock, PgStore, db, lock, lock_queues};
use crate::replication::{Key, bulk_array, hub_verdict, is_union};
use crate::{ReplBatch, ReplKind, ReplOrigin, ReplRecord, Result, StoreError};

/// A statement parameter: the record's owner, key, sub-key or JSON value (`$1`, `$2`, …
/// in this order of the statement's list).
#[derive(Clone, Copy)]
enum P {
    Owner,
    Key,
    Sub,
    Value,
}

/// The statements that write a record's value, for the kinds written one at a time.
fn upsert(kind: ReplKind) -> &'static [(&'static str, &'static [P])] {
    use P::*;
    match kind {
        // Written in bulk (see `BULK`).
        ReplKind::Account | ReplKind::Roster | ReplKind::Archive => &[],
        ReplKind::SubscriptionRequest => &[(
            "INSERT INTO subscription_requests (owner, from_jid, stanza) \
             VALUES ($1, $2, $3::json->>'stanza') \
             ON CONFLICT (owner, from_jid) DO UPDATE SET stanza = excluded.stanza",
            &[Owner, Key, Value],
        )],
        ReplKind::Vcard => &[(
            "INSERT INTO vcards (owner, vcard) VALUES ($1, $2::json->>'vcard') \
             ON CONFLICT (owner) DO UPDATE SET vcard = excluded.vcard",
            &[Owner, Value],
        )],
        ReplKind::Block => &[(
            "INSERT INTO blocklist (owner, jid) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[Owner, Key],
        )],
        ReplKind::Private => &[(
            "INSERT INTO private_xml (owner, ns, xml) VALUES ($1, $2, $3::json->>'xml') \
             ON CONFLICT (owner, ns) DO UPDATE SET xml = excluded.xml",
            &[Owner, Key, Value],
        )],
        ReplKind::ArchivePrefs => &[
            (
                "INSERT INTO archive_prefs (owner, default_mode) \
                 VALUES ($1, $2::json->>'default') \
                 ON CONFLICT (owner) DO UPDATE SET default_mode = excluded.default_mode",
                &[Owner, Value],
            ),
            ("DELETE FROM archive_prefs_jids WHERE owner = $1", &[Owner]),
            (
                "INSERT INTO archive_prefs_jids (owner, jid, always) \
                 SELECT $1, e->>0, (e->>1)::boolean \
                 FROM json_array_elements($2::json->'jids') e ON CONFLICT DO NOTHING",
                &[Owner, Value],
            ),
        ],
        ReplKind::PepNode => &[(
            "INSERT INTO pep_nodes (owner, node, access_model, max_items, send_last, \
             notify_retract, title) \
             SELECT $1, $2, j->>'access_model', (j->>'max_items')::bigint, j->>'send_last', \
             (j->>'notify_retract')::boolean, j->>'title' FROM (SELECT $3::json AS j) v \
             ON CONFLICT (owner, node) DO UPDATE SET access_model = excluded.access_model, \
             max_items = excluded.max_items, send_last = excluded.send_last, \
             notify_retract = excluded.notify_retract, title = excluded.title",
            &[Owner, Key, Value],
        )],
        // As at the site: a replaced item becomes the newest.
        ReplKind::PepItem => &[
            (
                "DELETE FROM pep_items WHERE owner = $1 AND node = $2 AND item_id = $3",
                &[Owner, Key, Sub],
            ),
            (
                "INSERT INTO pep_items (owner, node, item_id, payload) \
                 VALUES ($1, $2, $3, $4::json->>'payload')",
                &[Owner, Key, Sub, Value],
            ),
        ],
        ReplKind::PepSubscription => &[(
            "INSERT INTO pep_subscriptions (owner, node, jid) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
            &[Owner, Key, Sub],
        )],
        // At a hub, under the site's id (its own rows have none).
        ReplKind::Offline => &[(
            "INSERT INTO offline (owner, stanza, origin_key) \
             SELECT $1, $2::json->>'stanza', $3 \
             WHERE NOT EXISTS (SELECT 1 FROM offline WHERE owner = $1 AND origin_key = $3)",
            &[Owner, Value, Key],
        )],
        ReplKind::MucRoom => &[
            (
                "INSERT INTO muc_rooms (jid, created_ms) \
                 VALUES ($1, ($2::json->>'created_ms')::bigint) \
                 ON CONFLICT (jid) DO UPDATE SET created_ms = excluded.created_ms",
                &[Owner, Value],
            ),
            ("DELETE FROM muc_room_config WHERE room = $1", &[Owner]),
            (
                "INSERT INTO muc_room_config (room, key, value) \
                 SELECT $1, key, value FROM json_each_text($2::json->'config')",
                &[Owner, Value],
            ),
            ("DELETE FROM muc_affiliations WHERE room = $1", &[Owner]),
            (
                "INSERT INTO muc_affiliations (room, jid, affiliation) \
                 SELECT $1, key, value FROM json_each_text($2::json->'affiliations')",
                &[Owner, Value],
            ),
        ],
    }
}

/// A roster's version moves on, unless its account is gone (its removal may come first in
/// a batch, before the removals of what it owned).
const BUMP_ROSTER: &str = "INSERT INTO roster_versions (owner, version) \
    SELECT $1, 1 WHERE EXISTS (SELECT 1 FROM accounts WHERE jid = $1) \
    ON CONFLICT (owner) DO UPDATE SET version = roster_versions.version + 1";

/// The statements that remove a record's key.
fn remove(kind: ReplKind) -> &'static [(&'static str, &'static [P])] {
    use P::*;
    match kind {
        ReplKind::Account => &[("DELETE FROM accounts WHERE jid = $1", &[Owner])],
        ReplKind::Roster => &[
            (
                "DELETE FROM roster_items WHERE owner = $1 AND contact = $2",
                &[Owner, Key],
            ),
            (BUMP_ROSTER, &[Owner]),
        ],
        ReplKind::SubscriptionRequest => &[(
            "DELETE FROM subscription_requests WHERE owner = $1 AND from_jid = $2",
            &[Owner, Key],
        )],
        ReplKind::Vcard => &[("DELETE FROM vcards WHERE owner = $1", &[Owner])],
        ReplKind::Block => &[(
            "DELETE FROM blocklist WHERE owner = $1 AND jid = $2",
            &[Owner, Key],
        )],
        ReplKind::Private => &[(
            "DELETE FROM private_xml WHERE owner = $1 AND ns = $2",
            &[Owner, Key],
        )],
        ReplKind::ArchivePrefs => &[("DELETE FROM archive_prefs WHERE owner = $1", &[Owner])],
        ReplKind::PepNode => &[(
            "DELETE FROM pep_nodes WHERE owner = $1 AND node = $2",
            &[Owner, Key],
        )],
        ReplKind::PepItem => &[(
            "DELETE FROM pep_items WHERE owner = $1 AND node = $2 AND item_id = $3",
            &[Owner, Key, Sub],
        )],
        ReplKind::PepSubscription => &[(
            "DELETE FROM pep_subscriptions WHERE owner = $1 AND node = $2 AND jid = $3",
            &[Owner, Key, Sub],
        )],
        ReplKind::MucRoom => &[("DELETE FROM muc_rooms WHERE jid = $1", &[Owner])],
        ReplKind::Archive => &[("DELETE FROM archive WHERE id = $1::bigint", &[Key])],
        ReplKind::Offline => &[(
            "DELETE FROM offline WHERE owner = $1 AND origin_key = $2",
            &[Owner, Key],
        )],
    }
}

/// Starts or ends a transaction's application of the other side's records: the log's
/// triggers stay quiet meanwhile. Also defers the foreign keys to the commit (records of
/// one batch may name an account after what it owns: one removed and made again).
async fn applying(conn: &mut PgConnection, on: bool) -> Result<()> {
    sqlx::query("SELECT set_config($1, $2, true)")
        .bind(APPLYING)
        .bind(if on { "on" } else { "off" })
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    if on {
        sqlx::query("SET CONSTRAINTS ALL DEFERRED")
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    Ok(())
}

/// The hybrid logical clock's receive rule: stamps given out here from now on are above
/// every stamp received.
async fn observe_stamps(conn: &mut PgConnection, records: &[ReplRecord]) -> Result<()> {
    if let Some(newest) = records.iter().map(|r| r.stamp).max() {
        sqlx::query("UPDATE repl_settings SET clock = GREATEST(clock, $1)")
            .bind(newest)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    Ok(())
}

/// Takes the offline queue locks of the users whose queues the records write, as every
/// writer of a queue does (see `postgres/mod.rs`).
async fn lock_offline(conn: &mut PgConnection, records: &[&ReplRecord]) -> Result<()> {
    let owners = records
        .iter()
        .filter(|r| r.kind == ReplKind::Offline)
        .map(|r| r.owner.as_str());
    lock_queues(conn, Lock::Offline, owners).await
}

pub(super) async fn apply(s: &PgStore, batch: &ReplBatch<'_>) -> Result<(bool, ReplOrigin)> {
    let mut tx = s.write().await?;
    // Batches of one site arriving at two nodes of a hub apply one at a time (a hub's
    // store replicates, so `write` took the lock already; this says so where it matters).
    lock(&mut tx, Lock::Replication).await?;
    let mut origin = read_origin(&mut tx, batch.domain, batch.snapshot).await?;
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
    lock_offline(&mut tx, &winners).await?;
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

async fn save_origin(conn: &mut PgConnection, origin: &ReplOrigin) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO repl_origins ({ORIGIN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (domain) DO UPDATE SET epoch = excluded.epoch, \
         position = excluded.position, head = excluded.head, records = excluded.records, \
         snapshots = excluded.snapshots, synced_ms = excluded.synced_ms, \
         stamp = excluded.stamp, conflicts = excluded.conflicts"
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
    conn: &mut PgConnection,
    batch: &ReplBatch<'b>,
) -> Result<(Vec<&'b ReplRecord>, i64)> {
    let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(&format!(
        "SELECT kind, owner, key, sub, stamp FROM repl_versions WHERE {} = $1",
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
        sqlx::query("DELETE FROM repl_versions WHERE owner = $1")
            .bind(owner)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    for r in &verdict.forget {
        sqlx::query(
            "DELETE FROM repl_versions WHERE kind = $1 AND owner = $2 AND key = $3 AND sub = $4",
        )
        .bind(r.kind.as_str())
        .bind(&r.owner)
        .bind(&r.key)
        .bind(&r.sub)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    Ok((verdict.winners, verdict.lost))
}

/// Writes records: every removal and every record not of a bulk kind one at a time in
/// log order, then the bulk kinds a batch at a time (see SQLite's).
async fn apply_all(conn: &mut PgConnection, records: &[&ReplRecord]) -> Result<()> {
    let (bulk, single): (Vec<&ReplRecord>, Vec<&ReplRecord>) = records
        .iter()
        .partition(|r| r.value.is_some() && BULK.contains(&r.kind));
    for record in single {
        apply_record(&mut *conn, record).await?;
    }
    for kind in BULK {
        let of_kind: Vec<&ReplRecord> = bulk.iter().copied().filter(|r| r.kind == kind).collect();
        apply_bulk(&mut *conn, kind, &of_kind).await?;
    }
    Ok(())
}

pub(super) async fn merge(s: &PgStore, records: &[ReplRecord]) -> Result<u64> {
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
    lock_offline(&mut tx, &winners).await?;
    let (delivered, winners): (Vec<&ReplRecord>, Vec<&ReplRecord>) = winners
        .into_iter()
        .partition(|r| r.kind == ReplKind::Offline);
    for r in delivered {
        // Delivered at the hub: the site's message goes (its key is the site's own id).
        sqlx::query("DELETE FROM offline WHERE owner = $1 AND id::text = $2")
            .bind(&r.owner)
            .bind(&r.key)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    apply_all(&mut tx, &winners).await?;
    keep_versions(&mut tx, &winners).await?;
    observe_stamps(&mut tx, records).await?;
    sqlx::query("UPDATE repl_settings SET conflicts = conflicts + $1")
        .bind(i64::try_from(lost).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    applying(&mut tx, false).await?;
    tx.commit().await.map_err(db)?;
    Ok(lost)
}

/// Each merged record's stamp becomes its key's version here.
async fn keep_versions(conn: &mut PgConnection, merged: &[&ReplRecord]) -> Result<()> {
    for r in merged.iter().filter(|r| !is_union(r.kind.as_str())) {
        sqlx::query(
            "INSERT INTO repl_versions (kind, owner, key, sub, stamp) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, owner, key, sub) \
             DO UPDATE SET stamp = excluded.stamp",
        )
        .bind(r.kind.as_str())
        .bind(&r.owner)
        .bind(&r.key)
        .bind(&r.sub)
        .bind(r.stamp)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    Ok(())
}

/// What a site does with one of its hub's records (see SQLite's).
enum Merge {
    Apply,
    Lost,
    Gone,
}

async fn site_decides(conn: &mut PgConnection, r: &ReplRecord) -> Result<Merge> {
    let account: Option<i32> = sqlx::query_scalar("SELECT 1 FROM accounts WHERE jid = $1")
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
        "SELECT stamp FROM repl_versions WHERE kind = $1 AND owner = $2 AND key = $3 \
         AND sub = $4",
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
        Some(v) if v == r.stamp => Merge::Gone,
        _ => Merge::Apply,
    })
}

async fn apply_record(conn: &mut PgConnection, r: &ReplRecord) -> Result<()> {
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

/// The set-based form of [`upsert`] for the bulk kinds: each statement reads all the
/// records, given as one JSON array of `{"o": owner, "k": key, "v": value}` (the value as a
/// JSON string, parsed here).
const RECORDS: &str = "(SELECT e->>'o' AS o, e->>'k' AS k, (e->>'v')::json AS v \
    FROM json_array_elements($1::json) e)";

fn bulk_upsert(kind: ReplKind) -> Vec<String> {
    match kind {
        ReplKind::Account => vec![format!(
            "INSERT INTO accounts (jid, sha1_salt, sha1_iterations, sha1_stored_key, \
             sha1_server_key, sha256_salt, sha256_iterations, sha256_stored_key, \
             sha256_server_key) \
             SELECT o, decode(v->>'sha1_salt', 'hex'), (v->>'sha1_iterations')::bigint, \
             decode(v->>'sha1_stored_key', 'hex'), decode(v->>'sha1_server_key', 'hex'), \
             decode(v->>'sha256_salt', 'hex'), (v->>'sha256_iterations')::bigint, \
             decode(v->>'sha256_stored_key', 'hex'), decode(v->>'sha256_server_key', 'hex') \
             FROM {RECORDS} r \
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
                 SELECT o, k, v->>'name', v->>'subscription', (v->>'ask')::boolean, \
                 (v->>'approved')::boolean FROM {RECORDS} r \
                 ON CONFLICT (owner, contact) DO UPDATE SET name = excluded.name, \
                 subscription = excluded.subscription, ask = excluded.ask, \
                 approved = excluded.approved"
            ),
            format!(
                "DELETE FROM roster_groups WHERE (owner, contact) IN \
                 (SELECT o, k FROM {RECORDS} r)"
            ),
            format!(
                "INSERT INTO roster_groups (owner, contact, name) \
                 SELECT o, k, g FROM {RECORDS} r, json_array_elements_text(v->'groups') g \
                 ON CONFLICT DO NOTHING"
            ),
            format!(
                "INSERT INTO roster_versions (owner, version) \
                 SELECT DISTINCT o, 1 FROM {RECORDS} r \
                 ON CONFLICT (owner) DO UPDATE SET version = roster_versions.version + 1"
            ),
        ],
        // The id is the message's stanza-id at both servers (see SQLite's).
        ReplKind::Archive => vec![format!(
            "INSERT INTO archive (id, sender, recipient, in_sender, in_recipient, stanza) \
             SELECT k::bigint, v->>'sender', v->>'recipient', (v->>'in_sender')::boolean, \
             (v->>'in_recipient')::boolean, v->>'stanza' FROM {RECORDS} r \
             ON CONFLICT (id) DO UPDATE SET in_sender = excluded.in_sender, \
             in_recipient = excluded.in_recipient \
             WHERE archive.sender = excluded.sender AND archive.recipient = excluded.recipient \
             AND archive.stanza = excluded.stanza"
        )],
        _ => Vec::new(),
    }
}

async fn apply_bulk(
    conn: &mut PgConnection,
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
async fn purge(conn: &mut PgConnection, domain: &str) -> Result<()> {
    let at = format!("@{domain}");
    let sub = format!(".{domain}");
    sqlx::query(&format!(
        "DELETE FROM repl_versions WHERE {} = $1",
        domain_of("owner")
    ))
    .bind(domain)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    sqlx::query("DELETE FROM accounts WHERE right(jid, length($1)) = $1")
        .bind(&at)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    sqlx::query(
        "DELETE FROM archive WHERE (in_sender AND right(sender, length($1)) = $1) \
         OR (NOT in_sender AND right(recipient, length($1)) = $1) \
         OR (in_sender AND right(sender, length($2)) = $2)",
    )
    .bind(&at)
    .bind(&sub)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    sqlx::query(
        "DELETE FROM muc_rooms WHERE right(jid, length($1)) = $1 \
         OR right(jid, length($2)) = $2",
    )
    .bind(&at)
    .bind(&sub)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}
