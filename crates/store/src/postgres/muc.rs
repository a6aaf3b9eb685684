//! Multi-user chat rooms (XEP-0045) in PostgreSQL (see `migrations-postgres/0005_muc.sql`).

use std::collections::BTreeMap;

use sqlx::PgConnection;

use super::{PgStore, db, exec_for};
use crate::{Result, StoredRoom};

async fn ensure_room(conn: &mut PgConnection, room: &str, now_ms: i64) -> Result<()> {
    sqlx::query("INSERT INTO muc_rooms (jid, created_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(room)
        .bind(now_ms)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(())
}

type Triple = (String, String, String);

pub(super) async fn rooms(s: &PgStore) -> Result<Vec<StoredRoom>> {
    // One snapshot: no affiliation of a room deleted between the reads.
    let mut tx = s.snapshot().await?;
    let jids: Vec<String> = sqlx::query_scalar("SELECT jid FROM muc_rooms ORDER BY jid")
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
    let config: Vec<Triple> =
        sqlx::query_as("SELECT room, key, value FROM muc_room_config ORDER BY room, key")
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
    let affiliations: Vec<Triple> =
        sqlx::query_as("SELECT room, jid, affiliation FROM muc_affiliations ORDER BY room, jid")
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(assemble(jids, config, affiliations))
}

/// One room, read in one snapshot.
pub(super) async fn room(s: &PgStore, jid: &str) -> Result<Option<StoredRoom>> {
    let mut tx = s.snapshot().await?;
    let found: Option<String> = sqlx::query_scalar("SELECT jid FROM muc_rooms WHERE jid = $1")
        .bind(jid)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    let Some(found) = found else {
        tx.commit().await.map_err(db)?;
        return Ok(None);
    };
    let config: Vec<Triple> =
        sqlx::query_as("SELECT room, key, value FROM muc_room_config WHERE room = $1 ORDER BY key")
            .bind(jid)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
    let affiliations: Vec<Triple> = sqlx::query_as(
        "SELECT room, jid, affiliation FROM muc_affiliations WHERE room = $1 ORDER BY jid",
    )
    .bind(jid)
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(assemble(vec![found], config, affiliations).pop())
}

fn assemble(jids: Vec<String>, config: Vec<Triple>, affiliations: Vec<Triple>) -> Vec<StoredRoom> {
    let mut rooms: BTreeMap<String, StoredRoom> = jids
        .into_iter()
        .map(|jid| {
            let room = StoredRoom {
                jid: jid.clone(),
                config: Vec::new(),
                affiliations: Vec::new(),
            };
            (jid, room)
        })
        .collect();
    for (room, k, v) in config {
        if let Some(r) = rooms.get_mut(&room) {
            r.config.push((k, v));
        }
    }
    for (room, j, a) in affiliations {
        if let Some(r) = rooms.get_mut(&room) {
            r.affiliations.push((j, a));
        }
    }
    rooms.into_values().collect()
}

pub(super) async fn save_room(
    s: &PgStore,
    room: &str,
    config: &[(String, String)],
    now_ms: i64,
) -> Result<()> {
    let mut tx = s.write().await?;
    ensure_room(&mut tx, room, now_ms).await?;
    exec_for(&mut tx, "DELETE FROM muc_room_config WHERE room = $1", room).await?;
    let (keys, values): (Vec<&str>, Vec<&str>) =
        config.iter().map(|(k, v)| (k.as_str(), v.as_str())).unzip();
    sqlx::query(
        "INSERT INTO muc_room_config (room, key, value) \
         SELECT $1, k, v FROM UNNEST($2::text[], $3::text[]) AS u (k, v)",
    )
    .bind(room)
    .bind(keys)
    .bind(values)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn delete_room(s: &PgStore, room: &str) -> Result<()> {
    // Its configuration and affiliations go with it (ON DELETE CASCADE).
    s.write_one(sqlx::query("DELETE FROM muc_rooms WHERE jid = $1").bind(room))
        .await?;
    Ok(())
}

pub(super) async fn set_affiliation(
    s: &PgStore,
    room: &str,
    jid: &str,
    affiliation: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    let mut tx = s.write().await?;
    ensure_room(&mut tx, room, now_ms).await?;
    let sql = match affiliation {
        Some(_) => {
            "INSERT INTO muc_affiliations (room, jid, affiliation) VALUES ($1, $2, $3) \
             ON CONFLICT (room, jid) DO UPDATE SET affiliation = excluded.affiliation"
        }
        None => "DELETE FROM muc_affiliations WHERE room = $1 AND jid = $2",
    };
    let mut query = sqlx::query(sql).bind(room).bind(jid);
    if let Some(a) = affiliation {
        query = query.bind(a);
    }
    query.execute(&mut *tx).await.map_err(db)?;
    tx.commit().await.map_err(db)
}
