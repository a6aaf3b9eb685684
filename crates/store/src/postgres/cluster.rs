//! The registry of a cluster's nodes and the leases on what one node owns at a time (see
//! `migrations-postgres/0009_cluster.sql`). A claim is one statement: an insert that, on
//! a conflict, takes the row over only where its lease has ended (or it is the claimer's
//! own), so two nodes racing for one name cannot both win.

use super::{PgStore, db};
use crate::rows::to_u64;
use crate::{ClusterLease, ClusterNode, Result};

pub(super) async fn claim(s: &PgStore, n: &ClusterNode, now_ms: i64) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO cluster_nodes (node_id, epoch, address, started_ms, lease_until_ms, sessions)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (node_id) DO UPDATE SET epoch = excluded.epoch,
             address = excluded.address, started_ms = excluded.started_ms,
             lease_until_ms = excluded.lease_until_ms, sessions = excluded.sessions
         WHERE cluster_nodes.lease_until_ms < $7 OR cluster_nodes.epoch = excluded.epoch",
    )
    .bind(&n.node_id)
    .bind(&n.epoch)
    .bind(&n.address)
    .bind(n.started_ms)
    .bind(n.lease_until_ms)
    .bind(i64::try_from(n.sessions).unwrap_or(i64::MAX))
    .bind(now_ms)
    .execute(&s.pool)
    .await
    .map_err(db)?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn renew(
    s: &PgStore,
    node_id: &str,
    epoch: &str,
    until_ms: i64,
    sessions: u64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE cluster_nodes SET lease_until_ms = $3, sessions = $4
         WHERE node_id = $1 AND epoch = $2",
    )
    .bind(node_id)
    .bind(epoch)
    .bind(until_ms)
    .bind(i64::try_from(sessions).unwrap_or(i64::MAX))
    .execute(&s.pool)
    .await
    .map_err(db)?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn release(s: &PgStore, node_id: &str, epoch: &str) -> Result<()> {
    let mut tx = s.pool.begin().await.map_err(db)?;
    for sql in [
        "DELETE FROM cluster_leases WHERE node_id = $1 AND epoch = $2",
        "DELETE FROM cluster_nodes WHERE node_id = $1 AND epoch = $2",
    ] {
        sqlx::query(sql)
            .bind(node_id)
            .bind(epoch)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    tx.commit().await.map_err(db)
}

type NodeRow = (String, String, String, i64, i64, i64);

pub(super) async fn nodes(s: &PgStore) -> Result<Vec<ClusterNode>> {
    let rows: Vec<NodeRow> = sqlx::query_as(
        "SELECT node_id, epoch, address, started_ms, lease_until_ms, sessions
         FROM cluster_nodes ORDER BY node_id",
    )
    .fetch_all(&s.pool)
    .await
    .map_err(db)?;
    rows.into_iter()
        .map(
            |(node_id, epoch, address, started_ms, lease_until_ms, sessions)| {
                Ok(ClusterNode {
                    node_id,
                    epoch,
                    address,
                    started_ms,
                    lease_until_ms,
                    sessions: to_u64("cluster_nodes.sessions", sessions)?,
                })
            },
        )
        .collect()
}

pub(super) async fn take_lease(
    s: &PgStore,
    want: &ClusterLease,
    now_ms: i64,
) -> Result<ClusterLease> {
    type LeaseRow = (String, String, String, i64);
    let taken: Option<LeaseRow> = sqlx::query_as(
        "INSERT INTO cluster_leases AS l (name, node_id, epoch, until_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET node_id = excluded.node_id,
             epoch = excluded.epoch, until_ms = excluded.until_ms
         WHERE l.until_ms < $5 OR (l.node_id = excluded.node_id AND l.epoch = excluded.epoch)
         RETURNING name, node_id, epoch, until_ms",
    )
    .bind(&want.name)
    .bind(&want.node_id)
    .bind(&want.epoch)
    .bind(want.until_ms)
    .bind(now_ms)
    .fetch_optional(&s.pool)
    .await
    .map_err(db)?;
    // Not taken: a live node holds it; say which.
    let row = match taken {
        Some(row) => row,
        None => sqlx::query_as(
            "SELECT name, node_id, epoch, until_ms FROM cluster_leases WHERE name = $1",
        )
        .bind(&want.name)
        .fetch_one(&s.pool)
        .await
        .map_err(db)?,
    };
    let (name, node_id, epoch, until_ms) = row;
    Ok(ClusterLease {
        name,
        node_id,
        epoch,
        until_ms,
    })
}

pub(super) async fn release_lease(
    s: &PgStore,
    name: &str,
    node_id: &str,
    epoch: &str,
) -> Result<()> {
    sqlx::query("DELETE FROM cluster_leases WHERE name = $1 AND node_id = $2 AND epoch = $3")
        .bind(name)
        .bind(node_id)
        .bind(epoch)
        .execute(&s.pool)
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn extend(
    s: &PgStore,
    node_id: &str,
    epoch: &str,
    prefix: &str,
    until_ms: i64,
) -> Result<Vec<String>> {
    let names: Vec<(String,)> = sqlx::query_as(
        "UPDATE cluster_leases SET until_ms = $4
         WHERE node_id = $1 AND epoch = $2 AND starts_with(name, $3)
         RETURNING name",
    )
    .bind(node_id)
    .bind(epoch)
    .bind(prefix)
    .bind(until_ms)
    .fetch_all(&s.pool)
    .await
    .map_err(db)?;
    Ok(names.into_iter().map(|(n,)| n).collect())
}

pub(super) async fn leases(s: &PgStore) -> Result<Vec<ClusterLease>> {
    let rows: Vec<(String, String, String, i64)> =
        sqlx::query_as("SELECT name, node_id, epoch, until_ms FROM cluster_leases ORDER BY name")
            .fetch_all(&s.pool)
            .await
            .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(|(name, node_id, epoch, until_ms)| ClusterLease {
            name,
            node_id,
            epoch,
            until_ms,
        })
        .collect())
}
