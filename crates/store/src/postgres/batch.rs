//! Group commit in PostgreSQL: the writes of the message path (archive rows, offline
//! messages, outbox entries, received stanza ids) from many sessions, in one transaction
//! and one WAL flush, with one multi-row INSERT per kind (the rows travel as arrays).

use std::collections::HashMap;

use sqlx::PgConnection;

use super::{Lock, PgStore, db, link_key, lock_queues};
use crate::{ArchiveEntry, BatchWrite, OutboxPush, Quotas, Result, StoreError};

/// What one write's result will be, decided before the inserts.
enum Slot {
    /// Known already: an archive row's id (or 0 for a stanza id record).
    Known(i64),
    /// Admitted: the n-th offline (or outbox) row of the batch, whose id comes back from
    /// its INSERT.
    Offline(usize),
    Outbox(usize),
    Refused(StoreError),
}

/// The batch's rows, by kind, in the order they came.
#[derive(Default)]
struct Rows<'a> {
    archive: Vec<&'a ArchiveEntry>,
    offline: Vec<(&'a str, &'a str)>,
    outbox: Vec<&'a OutboxPush>,
    seen: Vec<(&'a str, &'a str)>,
}

pub(super) async fn write(
    s: &PgStore,
    writes: &[BatchWrite],
    now_ms: i64,
    quotas: Quotas,
) -> Result<Vec<Result<i64>>> {
    let mut tx = s.write().await?;
    take_locks(&mut tx, writes).await?;
    let mut rows = Rows::default();
    let slots = admit(&mut tx, writes, quotas, &mut rows).await?;
    super::archive::insert(&mut tx, &rows.archive).await?;
    let offline_ids = insert_offline(&mut tx, &rows.offline).await?;
    let outbox_ids = insert_outbox(&mut tx, &rows.outbox, now_ms).await?;
    super::outbox::record_seen(&mut tx, &rows.seen, now_ms).await?;
    tx.commit().await.map_err(db)?;
    let id = |ids: &[i64], n: usize| {
        ids.get(n)
            .copied()
            .ok_or_else(|| StoreError::Backend("an inserted row returned no id".into()))
    };
    Ok(slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Known(i) => Ok(i),
            Slot::Offline(n) => id(&offline_ids, n),
            Slot::Outbox(n) => id(&outbox_ids, n),
            Slot::Refused(e) => Err(e),
        })
        .collect())
}

/// Takes the locks of the queues the batch writes to, offline before outbox as
/// everywhere, so that its quota checks hold and its ids become visible in order (see
/// `mod.rs`).
async fn take_locks(conn: &mut PgConnection, writes: &[BatchWrite]) -> Result<()> {
    let users = writes.iter().filter_map(|w| match w {
        BatchWrite::Offline { user, .. } => Some(user.as_str()),
        _ => None,
    });
    lock_queues(conn, Lock::Offline, users).await?;
    let links: Vec<String> = writes
        .iter()
        .filter_map(|w| match w {
            BatchWrite::Outbox(p) => Some(link_key(&p.local, &p.remote)),
            _ => None,
        })
        .collect();
    lock_queues(conn, Lock::Outbox, links.iter().map(String::as_str)).await
}

/// Decides each write's fate, checking quotas, and sorts the admitted rows by kind.
async fn admit<'a>(
    conn: &mut PgConnection,
    writes: &'a [BatchWrite],
    quotas: Quotas,
    rows: &mut Rows<'a>,
) -> Result<Vec<Slot>> {
    // Each queue's count (and each offline owner's existence) is read once and kept up to
    // date here, under the queue locks, so quotas hold as with single pushes.
    let mut room = Room::default();
    let mut slots = Vec::with_capacity(writes.len());
    for w in writes {
        let slot = match w {
            BatchWrite::Archive(e) => {
                rows.archive.push(e);
                Slot::Known(e.id)
            }
            BatchWrite::Offline { user, stanza } => {
                match room.offline(conn, user, quotas.offline).await? {
                    Ok(()) => {
                        rows.offline.push((user, stanza));
                        Slot::Offline(rows.offline.len() - 1)
                    }
                    Err(refused) => Slot::Refused(refused),
                }
            }
            BatchWrite::Outbox(e) => match room.outbox(conn, e, quotas.outbox).await? {
                Ok(()) => {
                    rows.outbox.push(e);
                    Slot::Outbox(rows.outbox.len() - 1)
                }
                Err(refused) => Slot::Refused(refused),
            },
            BatchWrite::Seen { origin, id } => {
                rows.seen.push((origin, id));
                Slot::Known(0)
            }
        };
        slots.push(slot);
    }
    Ok(slots)
}

/// What the queues touched by one batch hold, counted as the batch goes.
#[derive(Default)]
struct Room {
    /// Offline messages per user; `None` for a user without an account.
    offline: HashMap<String, Option<i64>>,
    outbox: HashMap<(String, String), i64>,
}

impl Room {
    async fn offline(
        &mut self,
        conn: &mut PgConnection,
        user: &str,
        quota: u32,
    ) -> Result<Result<(), StoreError>> {
        let count = match self.offline.get(user) {
            Some(c) => *c,
            None => offline_count(conn, user).await?,
        };
        let outcome = match count {
            None => Err(StoreError::NoSuchAccount),
            Some(c) if c >= i64::from(quota) => Err(StoreError::QuotaExceeded { quota }),
            Some(c) => {
                self.offline.insert(user.to_owned(), Some(c + 1));
                return Ok(Ok(()));
            }
        };
        self.offline.insert(user.to_owned(), count);
        Ok(outcome)
    }

    async fn outbox(
        &mut self,
        conn: &mut PgConnection,
        e: &OutboxPush,
        quota: u32,
    ) -> Result<Result<(), StoreError>> {
        let key = (e.local.clone(), e.remote.clone());
        let count = match self.outbox.get(&key) {
            Some(c) => *c,
            None => sqlx::query_scalar(
                "SELECT COUNT(*) FROM outbox WHERE remote_domain = $1 AND local_domain = $2",
            )
            .bind(&e.remote)
            .bind(&e.local)
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?,
        };
        if count >= i64::from(quota) {
            self.outbox.insert(key, count);
            return Ok(Err(StoreError::QuotaExceeded { quota }));
        }
        self.outbox.insert(key, count + 1);
        Ok(Ok(()))
    }
}

/// The user's offline count, or `None` without an account; locks the account's row
/// (`FOR KEY SHARE`) so that it stays until the batch commits.
async fn offline_count(conn: &mut PgConnection, user: &str) -> Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM offline WHERE owner = $1) FROM accounts \
         WHERE jid = $1 FOR KEY SHARE",
    )
    .bind(user)
    .fetch_optional(conn)
    .await
    .map_err(db)
}

/// Inserts offline rows and returns their ids in the order of the rows: WITH ORDINALITY
/// and ORDER BY feed the rows to the sequence in order, and the ids, sorted, follow it.
async fn insert_offline(conn: &mut PgConnection, rows: &[(&str, &str)]) -> Result<Vec<i64>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let (owners, stanzas): (Vec<&str>, Vec<&str>) = rows.iter().copied().unzip();
    let mut ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO offline (owner, stanza) SELECT o, s \
         FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS u (o, s, n) ORDER BY n \
         RETURNING id",
    )
    .bind(owners)
    .bind(stanzas)
    .fetch_all(conn)
    .await
    .map_err(db)?;
    ids.sort_unstable();
    Ok(ids)
}

/// Inserts outbox rows and returns their ids in the order of the rows, as above.
async fn insert_outbox(
    conn: &mut PgConnection,
    rows: &[&OutboxPush],
    now_ms: i64,
) -> Result<Vec<i64>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let column = |f: fn(&OutboxPush) -> &str| rows.iter().map(|e| f(e)).collect::<Vec<_>>();
    let mut ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO outbox (local_domain, remote_domain, stanza, queued_at_ms) \
         SELECT l, r, s, $4 FROM UNNEST($1::text[], $2::text[], $3::text[]) \
         WITH ORDINALITY AS u (l, r, s, n) ORDER BY n RETURNING id",
    )
    .bind(column(|e| &e.local))
    .bind(column(|e| &e.remote))
    .bind(column(|e| &e.stanza))
    .bind(now_ms)
    .fetch_all(conn)
    .await
    .map_err(db)?;
    ids.sort_unstable();
    Ok(ids)
}
