//! Group commit: the writes of the message path (archive rows, offline messages, outbox
//! entries) from many sessions, in one transaction and one fsync, with one multi-row INSERT
//! per kind and slice of rows.

use std::collections::HashMap;

use sqlx::SqliteConnection;

use super::{ROWS_PER_STATEMENT, SqliteStore, db};
use crate::{ArchiveEntry, BatchWrite, OutboxPush, Quotas, Result, StoreError};

/// What one write's result will be, decided before the inserts.
enum Slot {
    /// Known already: an archive row's id (or 0 for a stanza id record).
    Archive(i64),
    /// Admitted: the n-th offline (or outbox) row of the batch, whose id comes back from
    /// its INSERT.
    Offline(usize),
    Outbox(usize),
    Refused(StoreError),
}

pub(super) async fn write(
    s: &SqliteStore,
    writes: &[BatchWrite],
    now_ms: i64,
    quotas: Quotas,
) -> Result<Vec<Result<i64>>> {
    let mut tx = s.write().await?;
    // Each queue's count (and each offline owner's existence) is read once and kept up to
    // date here, under the write lock, so quotas hold as with single pushes.
    let mut room = Room::default();
    let mut slots = Vec::with_capacity(writes.len());
    let mut archive: Vec<&ArchiveEntry> = Vec::new();
    let mut offline: Vec<(&str, &str)> = Vec::new();
    let mut outbox: Vec<&OutboxPush> = Vec::new();
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for w in writes {
        let slot = match w {
            BatchWrite::Archive(e) => {
                archive.push(e);
                Slot::Archive(e.id)
            }
            BatchWrite::Offline { user, stanza } => {
                match room.offline(&mut tx, user, quotas.offline).await? {
                    Ok(()) => {
                        offline.push((user, stanza));
                        Slot::Offline(offline.len() - 1)
                    }
                    Err(refused) => Slot::Refused(refused),
                }
            }
            BatchWrite::Outbox(e) => match room.outbox(&mut tx, e, quotas.outbox).await? {
                Ok(()) => {
                    outbox.push(e);
                    Slot::Outbox(outbox.len() - 1)
                }
                Err(refused) => Slot::Refused(refused),
            },
            BatchWrite::Seen { origin, id } => {
                seen.push((origin, id));
                Slot::Archive(0)
            }
        };
        slots.push(slot);
    }
    super::archive::insert(&mut tx, &archive).await?;
    let offline_ids = insert_offline(&mut tx, &offline).await?;
    let outbox_ids = insert_outbox(&mut tx, &outbox, now_ms).await?;
    super::record_seen(&mut tx, &seen, now_ms).await?;
    tx.commit().await.map_err(db)?;
    let id = |ids: &[i64], n: usize| {
        ids.get(n)
            .copied()
            .ok_or_else(|| StoreError::Backend("an inserted row returned no id".into()))
    };
    Ok(slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Archive(i) => Ok(i),
            Slot::Offline(n) => id(&offline_ids, n),
            Slot::Outbox(n) => id(&outbox_ids, n),
            Slot::Refused(e) => Err(e),
        })
        .collect())
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
        conn: &mut SqliteConnection,
        user: &str,
        quota: u32,
    ) -> Result<Result<(), StoreError>> {
        let count = match self.offline.get(user) {
            Some(c) => *c,
            None => {
                let (exists, count): (bool, i64) = sqlx::query_as(
                    "SELECT EXISTS (SELECT 1 FROM accounts WHERE jid = ?1), \
                     (SELECT COUNT(*) FROM offline WHERE owner = ?1)",
                )
                .bind(user)
                .fetch_one(&mut *conn)
                .await
                .map_err(db)?;
                exists.then_some(count)
            }
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
        conn: &mut SqliteConnection,
        e: &OutboxPush,
        quota: u32,
    ) -> Result<Result<(), StoreError>> {
        let key = (e.local.clone(), e.remote.clone());
        let count = match self.outbox.get(&key) {
            Some(c) => *c,
            None => sqlx::query_scalar(
                "SELECT COUNT(*) FROM outbox WHERE remote_domain = ? AND local_domain = ?",
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

type Insert<'q> = sqlx::query::QueryAs<'q, sqlx::Sqlite, (i64,), sqlx::sqlite::SqliteArguments<'q>>;

/// Runs multi-row INSERTs of `rows`, `columns` values each, and returns the new ids in the
/// order of the rows. RETURNING gives no order, but AUTOINCREMENT ids grow in the order
/// the rows were inserted, so sorting them restores it.
async fn insert_returning<T>(
    conn: &mut SqliteConnection,
    table_and_columns: &str,
    columns: usize,
    rows: &[T],
    bind: impl for<'q> Fn(Insert<'q>, &'q T) -> Insert<'q>,
) -> Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(rows.len());
    let one = format!("({})", vec!["?"; columns].join(", "));
    for slice in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO {table_and_columns} VALUES {} RETURNING id",
            vec![one.as_str(); slice.len()].join(", ")
        );
        let mut query = sqlx::query_as::<_, (i64,)>(&sql);
        for row in slice {
            query = bind(query, row);
        }
        let mut got: Vec<i64> = query
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?
            .into_iter()
            .map(|(id,)| id)
            .collect();
        got.sort_unstable();
        ids.extend(got);
    }
    Ok(ids)
}

async fn insert_offline(conn: &mut SqliteConnection, rows: &[(&str, &str)]) -> Result<Vec<i64>> {
    insert_returning(
        conn,
        "offline (owner, stanza)",
        2,
        rows,
        |q, (user, stanza)| q.bind(*user).bind(*stanza),
    )
    .await
}

async fn insert_outbox(
    conn: &mut SqliteConnection,
    rows: &[&OutboxPush],
    now_ms: i64,
) -> Result<Vec<i64>> {
    insert_returning(
        conn,
        "outbox (local_domain, remote_domain, stanza, queued_at_ms)",
        4,
        rows,
        |q, e| {
            q.bind(e.local.as_str())
                .bind(e.remote.as_str())
                .bind(e.stanza.as_str())
                .bind(now_ms)
        },
    )
    .await
}
