//! Personal eventing nodes and items (XEP-0163) and private XML (XEP-0049) in SQLite (see
//! `migrations/0004_pep.sql`).

use crate::rows::{NODE_COLUMNS, NodeRow, node_config_from_row};
use sqlx::SqliteConnection;

use super::{SqliteStore, db, require_account};
use crate::{BareJid, NodeConfig, PepItem, Result, StoreError};

pub(super) async fn node(
    s: &SqliteStore,
    owner: &BareJid,
    node: &str,
) -> Result<Option<NodeConfig>> {
    let row: Option<NodeRow> = sqlx::query_as(&format!(
        "SELECT {NODE_COLUMNS} FROM pep_nodes WHERE owner = ? AND node = ?"
    ))
    .bind(owner)
    .bind(node)
    .fetch_optional(&s.readers)
    .await
    .map_err(db)?;
    row.as_ref().map(node_config_from_row).transpose()
}

pub(super) async fn nodes(s: &SqliteStore, owner: &BareJid) -> Result<Vec<(String, NodeConfig)>> {
    let rows: Vec<NodeRow> = sqlx::query_as(&format!(
        "SELECT {NODE_COLUMNS} FROM pep_nodes WHERE owner = ? ORDER BY node"
    ))
    .bind(owner)
    .fetch_all(&s.readers)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| Ok((r.0.clone(), node_config_from_row(r)?)))
        .collect()
}

/// Drops the oldest items of a node beyond `max_items`.
async fn trim(conn: &mut SqliteConnection, owner: &str, node: &str, max_items: u32) -> Result<()> {
    sqlx::query(
        "DELETE FROM pep_items WHERE owner = ?1 AND node = ?2 AND seq NOT IN \
         (SELECT seq FROM pep_items WHERE owner = ?1 AND node = ?2 ORDER BY seq DESC LIMIT ?3)",
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
    s: &SqliteStore,
    owner: &BareJid,
    node: &str,
    c: &NodeConfig,
) -> Result<()> {
    let mut tx = s.write().await?;
    require_account(&mut tx, owner).await?;
    sqlx::query(
        "INSERT INTO pep_nodes (owner, node, access_model, max_items, send_last, notify_retract, \
         title) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner, node) DO UPDATE SET \
         access_model = excluded.access_model, max_items = excluded.max_items, \
         send_last = excluded.send_last, notify_retract = excluded.notify_retract, \
         title = excluded.title",
    )
    .bind(owner)
    .bind(node)
    .bind(c.access.as_str())
    .bind(c.max_items.max(1))
    .bind(c.send_last.as_str())
    .bind(c.notify_retract)
    .bind(&c.title)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    trim(&mut tx, owner, node, c.max_items.max(1)).await?;
    tx.commit().await.map_err(db)
}

pub(super) async fn delete_node(s: &SqliteStore, owner: &BareJid, node: &str) -> Result<bool> {
    let mut tx = s.write().await?;
    for statement in [
        "DELETE FROM pep_subscriptions WHERE owner = ? AND node = ?",
        "DELETE FROM pep_items WHERE owner = ? AND node = ?",
    ] {
        sqlx::query(statement)
            .bind(owner)
            .bind(node)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    let done = sqlx::query("DELETE FROM pep_nodes WHERE owner = ? AND node = ?")
        .bind(owner)
        .bind(node)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn publish(
    s: &SqliteStore,
    owner: &BareJid,
    node: &str,
    item: &PepItem,
) -> Result<()> {
    let mut tx = s.write().await?;
    let max_items: Option<i64> =
        sqlx::query_scalar("SELECT max_items FROM pep_nodes WHERE owner = ? AND node = ?")
            .bind(owner)
            .bind(node)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
    let Some(max_items) = max_items else {
        return Err(StoreError::NoSuchNode);
    };
    // Replaced items become the newest: delete, then insert with a new sequence number.
    sqlx::query("DELETE FROM pep_items WHERE owner = ? AND node = ? AND item_id = ?")
        .bind(owner)
        .bind(node)
        .bind(&item.id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sqlx::query("INSERT INTO pep_items (owner, node, item_id, payload) VALUES (?, ?, ?, ?)")
        .bind(owner)
        .bind(node)
        .bind(&item.id)
        .bind(&item.payload)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    trim(&mut tx, owner, node, u32::try_from(max_items).unwrap_or(1)).await?;
    tx.commit().await.map_err(db)
}

pub(super) async fn items(
    s: &SqliteStore,
    owner: &BareJid,
    node: &str,
    limit: Option<u32>,
) -> Result<Vec<PepItem>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT item_id, payload FROM pep_items WHERE owner = ? AND node = ? \
         ORDER BY seq DESC LIMIT ?",
    )
    .bind(owner)
    .bind(node)
    .bind(limit.map_or(-1, i64::from))
    .fetch_all(&s.readers)
    .await
    .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(|(id, payload)| PepItem { id, payload })
        .collect())
}

pub(super) async fn item(
    s: &SqliteStore,
    owner: &BareJid,
    node: &str,
    id: &str,
) -> Result<Option<PepItem>> {
    let payload: Option<String> = sqlx::query_scalar(
        "SELECT payload FROM pep_items WHERE owner = ? AND node = ? AND item_id = ?",
    )
    .bind(owner)
    .bind(node)
    .bind(id)
    .fetch_optional(&s.readers)
    .await
    .map_err(db)?;
    Ok(payload.map(|payload| PepItem {
        id: id.to_owned(),
        payload,
    }))
}

pub(super) async fn retract(
    s: &SqliteStore,
    owner: &BareJid,
    node: &str,
    id: &str,
) -> Result<bool> {
    let mut tx = s.write().await?;
    let done = sqlx::query("DELETE FROM pep_items WHERE owner = ? AND node = ? AND item_id = ?")
        .bind(owner)
        .bind(node)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn purge(s: &SqliteStore, owner: &BareJid, node: &str) -> Result<()> {
    let mut tx = s.write().await?;
    sqlx::query("DELETE FROM pep_items WHERE owner = ? AND node = ?")
        .bind(owner)
        .bind(node)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn subscribe(
    s: &SqliteStore,
    owner: &BareJid,
    node: &str,
    jid: &str,
) -> Result<()> {
    let mut tx = s.write().await?;
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM pep_nodes WHERE owner = ? AND node = ?")
            .bind(owner)
            .bind(node)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
    if exists.is_none() {
        return Err(StoreError::NoSuchNode);
    }
    sqlx::query("INSERT OR IGNORE INTO pep_subscriptions (owner, node, jid) VALUES (?, ?, ?)")
        .bind(owner)
        .bind(node)
        .bind(jid)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn unsubscribe(
    s: &SqliteStore,
    owner: &BareJid,
    node: &str,
    jid: &str,
) -> Result<bool> {
    let mut tx = s.write().await?;
    let done =
        sqlx::query("DELETE FROM pep_subscriptions WHERE owner = ? AND node = ? AND jid = ?")
            .bind(owner)
            .bind(node)
            .bind(jid)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn subscriptions(
    s: &SqliteStore,
    owner: &BareJid,
) -> Result<Vec<(String, String)>> {
    sqlx::query_as("SELECT node, jid FROM pep_subscriptions WHERE owner = ? ORDER BY node, jid")
        .bind(owner)
        .fetch_all(&s.readers)
        .await
        .map_err(db)
}

pub(super) async fn private_xml(
    s: &SqliteStore,
    owner: &BareJid,
    ns: &str,
) -> Result<Option<String>> {
    sqlx::query_scalar("SELECT xml FROM private_xml WHERE owner = ? AND ns = ?")
        .bind(owner)
        .bind(ns)
        .fetch_optional(&s.readers)
        .await
        .map_err(db)
}

pub(super) async fn set_private_xml(
    s: &SqliteStore,
    owner: &BareJid,
    ns: &str,
    xml: &str,
) -> Result<()> {
    let mut tx = s.write().await?;
    require_account(&mut tx, owner).await?;
    sqlx::query(
        "INSERT INTO private_xml (owner, ns, xml) VALUES (?, ?, ?) \
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

pub(super) async fn private_xml_all(
    s: &SqliteStore,
    owner: &BareJid,
) -> Result<Vec<(String, String)>> {
    sqlx::query_as("SELECT ns, xml FROM private_xml WHERE owner = ? ORDER BY ns")
        .bind(owner)
        .fetch_all(&s.readers)
        .await
        .map_err(db)
}
