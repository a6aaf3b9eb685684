//! HTTP upload slots (XEP-0363), against every backend.

use outpost_store::{Store, StoreError, UploadSlot};

use crate::battery::{ALICE, BOB, creds};

crate::battery! {
    upload_slots_are_reserved_within_the_quota,
    upload_slots_complete_once_and_expire,
}

fn slot(id: &str, owner: &str, size: u64, created_ms: i64) -> UploadSlot {
    UploadSlot {
        slot: id.to_owned(),
        owner: owner.to_owned(),
        filename: format!("{id}.jpg"),
        size,
        content_type: Some("image/jpeg".to_owned()),
        put_token: vec![7; 32],
        created_ms,
        completed_ms: None,
    }
}

async fn upload_slots_are_reserved_within_the_quota(store: &dyn Store) {
    store
        .upload_reserve(&slot("a", ALICE, 600, 1), 1000)
        .await
        .unwrap();
    assert!(matches!(
        store.upload_reserve(&slot("b", ALICE, 401, 2), 1000).await,
        Err(StoreError::UploadQuotaExceeded { quota: 1000 })
    ));
    // Exactly at the quota is fine; another owner has a quota of its own.
    store
        .upload_reserve(&slot("c", ALICE, 400, 3), 1000)
        .await
        .unwrap();
    store
        .upload_reserve(&slot("d", BOB, 1000, 4), 1000)
        .await
        .unwrap();
    assert_eq!(
        store.upload_slot("a").await.unwrap(),
        Some(slot("a", ALICE, 600, 1))
    );
    assert_eq!(store.upload_slot("b").await.unwrap(), None);
    // A removed slot frees its share.
    assert!(store.upload_remove("a").await.unwrap());
    assert!(!store.upload_remove("a").await.unwrap());
    store
        .upload_reserve(&slot("e", ALICE, 600, 5), 1000)
        .await
        .unwrap();
}

async fn upload_slots_complete_once_and_expire(store: &dyn Store) {
    // Slots are not the account's: they need none, and outlive one.
    store.create_account(ALICE, &creds(1)).await.unwrap();
    for (id, created) in [("old-done", 10), ("old-pending", 20), ("new-done", 30)] {
        store
            .upload_reserve(&slot(id, ALICE, 1, created), 100)
            .await
            .unwrap();
    }
    assert!(store.upload_complete("old-done", 11).await.unwrap());
    assert!(!store.upload_complete("old-done", 12).await.unwrap());
    assert!(store.upload_complete("new-done", 31).await.unwrap());
    assert!(!store.upload_complete("missing", 31).await.unwrap());
    assert_eq!(
        store
            .upload_slot("old-done")
            .await
            .unwrap()
            .unwrap()
            .completed_ms,
        Some(11)
    );
    store.remove_account(ALICE).await.unwrap();
    let ids = |v: Vec<UploadSlot>| v.into_iter().map(|u| u.slot).collect::<Vec<_>>();
    // Pending ones go after a short wait, completed ones after the long one.
    assert_eq!(
        ids(store.uploads_expired(25, 0, 10).await.unwrap()),
        ["old-pending"]
    );
    assert_eq!(
        ids(store.uploads_expired(25, 35, 10).await.unwrap()),
        ["old-done", "old-pending", "new-done"]
    );
    assert_eq!(
        ids(store.uploads_expired(25, 35, 1).await.unwrap()),
        ["old-done"]
    );
}
