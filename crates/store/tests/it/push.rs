//! Push registrations (XEP-0357), against every backend.

use outpost_store::{PushRegistration, Store, StoreError};

use crate::battery::{ALICE, BOB, NOBODY, creds};

crate::battery! {
    push_registrations_are_added_replaced_and_removed,
}

fn reg(service: &str, node: &str, options: &str) -> PushRegistration {
    PushRegistration {
        service: service.to_owned(),
        node: node.to_owned(),
        options: options.to_owned(),
    }
}

async fn push_registrations_are_added_replaced_and_removed(store: &dyn Store) {
    assert!(matches!(
        store.add_push(NOBODY, &reg("push.example", "n", "")).await,
        Err(StoreError::NoSuchAccount)
    ));
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.create_account(BOB, &creds(2)).await.unwrap();
    store
        .add_push(ALICE, &reg("push.example", "n1", "<x/>"))
        .await
        .unwrap();
    store
        .add_push(ALICE, &reg("push.example", "n2", ""))
        .await
        .unwrap();
    store
        .add_push(ALICE, &reg("other.example", "n1", ""))
        .await
        .unwrap();
    store
        .add_push(BOB, &reg("push.example", "b", ""))
        .await
        .unwrap();
    // The same service and node again: options replaced.
    store
        .add_push(ALICE, &reg("push.example", "n1", "<y/>"))
        .await
        .unwrap();
    let all = store.push_registrations().await.unwrap();
    assert_eq!(
        all,
        vec![
            (ALICE.to_owned(), reg("other.example", "n1", "")),
            (ALICE.to_owned(), reg("push.example", "n1", "<y/>")),
            (ALICE.to_owned(), reg("push.example", "n2", "")),
            (BOB.to_owned(), reg("push.example", "b", "")),
        ]
    );
    assert_eq!(
        store
            .remove_push(ALICE, "push.example", Some("n2"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .remove_push(ALICE, "push.example", None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .remove_push(ALICE, "push.example", None)
            .await
            .unwrap(),
        0
    );
    store.remove_account(BOB).await.unwrap();
    assert_eq!(
        store.push_registrations().await.unwrap(),
        vec![(ALICE.to_owned(), reg("other.example", "n1", ""))]
    );
}
