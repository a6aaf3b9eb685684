//! Multi-user chat rooms (XEP-0045) in SQLite (see `migrations/0005_muc.sql`).

use std::collections::BTreeMap;

use sqlx::SqliteConnection;

use super::{SqliteStore, db};
use crate::{Result, StoredRoom};

async fn ensure_room(conn: &mut SqliteConnection, room: &str, now_ms: i64) -> Result<()> {
    sqlx::query("INSERT OR IGNORE INTO muc_rooms (jid, created_ms) VALUES (?, ?)")
        .bind(room)
        .bind(now_ms)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn rooms(s: &SqliteStore) -> Result<Vec<StoredRoom>> {
    let jids: Vec<String> = sqlx::query_scalar("SELECT jid FROM muc_rooms ORDER BY jid")
        .fetch_all(&s.readers)
        .await
        .map_err(db)?;
    let config: Vec<(String, String, String)> =
        sqlx::query_as("SELECT room, key, value FROM muc_room_config ORDER BY room, key")
            .fetch_all(&s.readers)
            .await
            .map_err(db)?;
    let affiliations: Vec<(String, String, String)> =
        sqlx::query_as("SELECT room, jid, affiliation FROM muc_affiliations ORDER BY room, jid")
            .fetch_all(&s.readers)
            .await
            .map_err(db)?;
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
    Ok(rooms.into_values().collect())
}

pub(super) async fn save_room(
    s: &SqliteStore,
    room: &str,
    config: &[(String, String)],
    now_ms: i64,
) -> Result<()> {
    let mut tx = s.write().await?;
    ensure_room(&mut tx, room, now_ms).await?;
    sqlx::query("DELETE FROM muc_room_config WHERE room = ?")
        .bind(room)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    for (k, v) in config {
        sqlx::query("INSERT INTO muc_room_config (room, key, value) VALUES (?, ?, ?)")
            .bind(room)
            .bind(k)
            .bind(v)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    tx.commit().await.map_err(db)
}

pub(super) async fn delete_room(s: &SqliteStore, room: &str) -> Result<()> {
    let mut tx = s.write().await?;
    for statement in [
        "DELETE FROM muc_room_config WHERE room = ?",
        "DELETE FROM muc_affiliations WHERE room = ?",
        "DELETE FROM muc_rooms WHERE jid = ?",
    ] {
        sqlx::query(statement)
            .bind(room)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    tx.commit().await.map_err(db)
}

pub(super) async fn set_affiliation(
    s: &SqliteStore,
    room: &str,
    jid: &str,
    affiliation: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    let mut tx = s.write().await?;
    ensure_room(&mut tx, room, now_ms).await?;
    match affiliation {
        Some(a) => {
            sqlx::query(
                "INSERT INTO muc_affiliations (room, jid, affiliation) VALUES (?, ?, ?) \
                 ON CONFLICT (room, jid) DO UPDATE SET affiliation = excluded.affiliation",
            )
            .bind(room)
            .bind(jid)
            .bind(a)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        None => {
            sqlx::query("DELETE FROM muc_affiliations WHERE room = ? AND jid = ?")
                .bind(room)
                .bind(jid)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
    }
    tx.commit().await.map_err(db)
}
