//! Personal eventing nodes, items and subscriptions (XEP-0163) and private XML
//! (XEP-0049) in PostgreSQL (see `migrations-postgres/0004_pep.sql`).

use crate::rows::{NODE_COLUMNS, NodeRow, node_config_from_row};
use sqlx::PgConnection;

use super::{PgStore, db, require_account};
use crate::{BareJid, NodeConfig, PepItem, Result, StoreError};

pub(super) async fn node(s: &PgStore, owner: &BareJid, node: &str) -> Result<Option<NodeConfig>> {
    let row: Option<NodeRow> = sqlx::query_as(&format!(
        "SELECT {NODE_COLUMNS} FROM pep_nodes WHERE owner = $1 AND node = $2"
    ))
    .bind(owner)
    .bind(node)
    .fetch_optional(&s.pool)
    .await
    .map_err(db)?;
    row.as_ref().map(node_config_from_row).transpose()
}

pub(super) async fn nodes(s: &PgStore, owner: &BareJid) -> Result<Vec<(String, NodeConfig)>> {
    let rows: Vec<NodeRow> = sqlx::query_as(&format!(
        "SELECT {NODE_COLUMNS} FROM pep_nodes WHERE owner = $1 ORDER BY node"
    ))
    .bind(owner)
    .fetch_all(&s.pool)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| Ok((r.0.clone(), node_config_from_row(r)?)))
        .collect()
}

/// Drops the oldest items of a node beyond `max_items`.
async fn trim(conn: &mut PgConnection, owner: &str, node: &str, max_items: i64) -> Result<()> {
    sqlx::query(
        "DELETE FROM pep_items WHERE owner = $1 AND node = $2 AND seq NOT IN \
         (SELECT seq FROM pep_items WHERE owner = $1 AND node = $2 ORDER BY seq DESC LIMIT $3)",
    )
    .bind(owner)
    .bind(node)
    .bind(max_items)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

pub(super) async fn configure(
    s: &PgStore,
    owner: &BareJid,
    node: &str,
    c: &NodeConfig,
) -> Result<()> {
    let max_items = i64::from(c.max_items.max(1));
    let mut tx = s.write().await?;
    require_account(&mut tx, owner).await?;
    sqlx::query(
        "INSERT INTO pep_nodes (owner, node, access_model, max_items, send_last, notify_retract, \
         title) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (owner, node) DO UPDATE SET \
         access_model = excluded.access_model, max_items = excluded.max_items, \
         send_last = excluded.send_last, notify_retract = excluded.notify_retract, \
         title = excluded.title",
    )
    .bind(owner)
    .bind(node)
    .bind(c.access.as_str())
    .bind(max_items)
    .bind(c.send_last.as_str())
    .bind(c.notify_retract)
    .bind(&c.title)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    trim(&mut tx, owner, node, max_items).await?;
    tx.commit().await.map_err(db)
}

pub(super) async fn delete_node(s: &PgStore, owner: &BareJid, node: &str) -> Result<bool> {
    // Its items and subscriptions go with it (ON DELETE CASCADE).
    let done = s
        .write_one(
            sqlx::query("DELETE FROM pep_nodes WHERE owner = $1 AND node = $2")
                .bind(owner)
                .bind(node),
        )
        .await?;
    Ok(done > 0)
}

pub(super) async fn publish(
    s: &PgStore,
    owner: &BareJid,
    node: &str,
    item: &PepItem,
) -> Result<()> {
    let mut tx = s.write().await?;
    // FOR UPDATE: publishes to one node take turns, so trimming sees every item.
    let max_items: Option<i64> = sqlx::query_scalar(
        "SELECT max_items FROM pep_nodes WHERE owner = $1 AND node = $2 FOR UPDATE",
    )
    .bind(owner)
    .bind(node)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let Some(max_items) = max_items else {
        return Err(StoreError::NoSuchNode);
    };
    // Replaced items become the newest: delete, then insert with a new sequence number.
    sqlx::query("DELETE FROM pep_items WHERE owner = $1 AND node = $2 AND item_id = $3")
        .bind(owner)
        .bind(node)
        .bind(&item.id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sqlx::query("INSERT INTO pep_items (owner, node, item_id, payload) VALUES ($1, $2, $3, $4)")
        .bind(owner)
        .bind(node)
        .bind(&item.id)
        .bind(&item.payload)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    trim(&mut tx, owner, node, max_items).await?;
    tx.commit().await.map_err(db)
}

pub(super) async fn items(
    s: &PgStore,
    owner: &BareJid,
    node: &str,
    limit: Option<u32>,
) -> Result<Vec<PepItem>> {
    // LIMIT NULL is no limit.
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT item_id, payload FROM pep_items WHERE owner = $1 AND node = $2 \
         ORDER BY seq DESC LIMIT $3",
    )
    .bind(owner)
    .bind(node)
    .bind(limit.map(i64::from))
    .fetch_all(&s.pool)
    .await
    .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(|(id, payload)| PepItem { id, payload })
        .collect())
}

pub(super) async fn item(
    s: &PgStore,
    owner: &BareJid,
    node: &str,
    id: &str,
) -> Result<Option<PepItem>> {
    let payload: Option<String> = sqlx::query_scalar(
        "SELECT payload FROM pep_items WHERE owner = $1 AND node = $2 AND item_id = $3",
    )
    .bind(owner)
    .bind(node)
    .bind(id)
    .fetch_optional(&s.pool)
    .await
    .map_err(db)?;
    Ok(payload.map(|payload| PepItem {
        id: id.to_owned(),
        payload,
    }))
}

pub(super) async fn retract(s: &PgStore, owner: &BareJid, node: &str, id: &str) -> Result<bool> {
    let done = s
        .write_one(
            sqlx::query("DELETE FROM pep_items WHERE owner = $1 AND node = $2 AND item_id = $3")
                .bind(owner)
                .bind(node)
                .bind(id),
        )
        .await?;
    Ok(done > 0)
}

pub(super) async fn purge(s: &PgStore, owner: &BareJid, node: &str) -> Result<()> {
    s.write_one(
        sqlx::query("DELETE FROM pep_items WHERE owner = $1 AND node = $2")
            .bind(owner)
            .bind(node),
    )
    .await?;
    Ok(())
}

pub(super) async fn subscribe(s: &PgStore, owner: &BareJid, node: &str, jid: &str) -> Result<()> {
    // One statement: the node must exist when the row goes in (its foreign key holds it).
    let done = s
        .write_one(
            sqlx::query(
                "INSERT INTO pep_subscriptions (owner, node, jid) \
         SELECT owner, node, $3 FROM pep_nodes WHERE owner = $1 AND node = $2 \
         ON CONFLICT (owner, node, jid) DO UPDATE SET jid = excluded.jid",
            )
            .bind(owner)
            .bind(node)
            .bind(jid),
        )
        .await?;
    if done == 0 {
        return Err(StoreError::NoSuchNode);
    }
    Ok(())
}

pub(super) async fn unsubscribe(
    s: &PgStore,
    owner: &BareJid,
    node: &str,
    jid: &str,
) -> Result<bool> {
    let done = s
        .write_one(
            sqlx::query(
                "DELETE FROM pep_subscriptions WHERE owner = $1 AND node = $2 AND jid = $3",
            )
            .bind(owner)
            .bind(node)
            .bind(jid),
        )
        .await?;
    Ok(done > 0)
}

pub(super) async fn subscriptions(s: &PgStore, owner: &BareJid) -> Result<Vec<(String, String)>> {
    sqlx::query_as("SELECT node, jid FROM pep_subscriptions WHERE owner = $1 ORDER BY node, jid")
        .bind(owner)
        .fetch_all(&s.pool)
        .await
        .map_err(db)
}

pub(super) async fn private_xml(s: &PgStore, owner: &BareJid, ns: &str) -> Result<Option<String>> {
    sqlx::query_scalar("SELECT xml FROM private_xml WHERE owner = $1 AND ns = $2")
        .bind(owner)
        .bind(ns)
        .fetch_optional(&s.pool)
        .await
        .map_err(db)
}

pub(super) async fn set_private_xml(
    s: &PgStore,
    owner: &BareJid,
    ns: &str,
    xml: &str,
) -> Result<()> {
    let mut tx = s.write().await?;
    require_account(&mut tx, owner).await?;
    sqlx::query(
        "INSERT INTO private_xml (owner, ns, xml) VALUES ($1, $2, $3) \
         ON CONFLICT (owner, ns) DO UPDATE SET xml = excluded.xml",
    )
    .bind(owner)
    .bind(ns)
    .bind(xml)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn private_xml_all(s: &PgStore, owner: &BareJid) -> Result<Vec<(String, String)>> {
    sqlx::query_as("SELECT ns, xml FROM private_xml WHERE owner = $1 ORDER BY ns")
        .bind(owner)
        .fetch_all(&s.pool)
        .await
        .map_err(db)
}
