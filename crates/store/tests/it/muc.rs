//! Multi-user chat rooms (XEP-0045): configuration and affiliations, against every backend.

use outpost_store::{Store, StoredRoom};

crate::battery! {
    rooms_keep_configuration_and_affiliations,
}

const LOBBY: &str = "lobby@conference.example.org";
const OPS: &str = "ops@conference.example.org";

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn rooms_keep_configuration_and_affiliations(store: &dyn Store) {
    assert!(store.muc_rooms().await.unwrap().is_empty());
    store
        .muc_save_room(
            LOBBY,
            &pairs(&[("roomname", "Lobby"), ("persistentroom", "1")]),
            1,
        )
        .await
        .unwrap();
    store
        .muc_set_affiliation(LOBBY, "alice@example.org", Some("owner"), 2)
        .await
        .unwrap();
    store
        .muc_set_affiliation(LOBBY, "bob@example.net", Some("member"), 3)
        .await
        .unwrap();
    // An affiliation alone makes a room's record too.
    store
        .muc_set_affiliation(OPS, "carol@example.org", Some("admin"), 4)
        .await
        .unwrap();
    // Saving again replaces the configuration; affiliations change one by one.
    store
        .muc_save_room(
            LOBBY,
            &pairs(&[("roomname", "The lobby"), ("subject", "Hi")]),
            5,
        )
        .await
        .unwrap();
    store
        .muc_set_affiliation(LOBBY, "bob@example.net", Some("outcast"), 6)
        .await
        .unwrap();
    store
        .muc_set_affiliation(LOBBY, "dave@example.org", Some("member"), 7)
        .await
        .unwrap();
    store
        .muc_set_affiliation(LOBBY, "dave@example.org", None, 8)
        .await
        .unwrap();
    assert_eq!(
        store.muc_rooms().await.unwrap(),
        vec![
            StoredRoom {
                jid: LOBBY.to_owned(),
                config: pairs(&[("roomname", "The lobby"), ("subject", "Hi")]),
                affiliations: pairs(&[
                    ("alice@example.org", "owner"),
                    ("bob@example.net", "outcast")
                ]),
            },
            StoredRoom {
                jid: OPS.to_owned(),
                config: Vec::new(),
                affiliations: pairs(&[("carol@example.org", "admin")]),
            },
        ]
    );
    // One room alone reads the same.
    let all = store.muc_rooms().await.unwrap();
    assert_eq!(store.muc_room(LOBBY).await.unwrap().as_ref(), all.first());
    assert_eq!(store.muc_room(OPS).await.unwrap().as_ref(), all.get(1));
    assert_eq!(
        store.muc_room("none@conference.example.org").await.unwrap(),
        None
    );
    store.muc_delete_room(LOBBY).await.unwrap();
    assert_eq!(store.muc_room(LOBBY).await.unwrap(), None);
    let left = store.muc_rooms().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].jid, OPS);
}
