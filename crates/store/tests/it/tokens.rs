//! Bearer tokens of the HTTP API, against every backend.

use outpost_store::{ApiToken, Store, StoreError};

use crate::battery::{ALICE, BOB, creds};

crate::battery! {
    tokens_are_found_by_hash_listed_and_revoked,
    tokens_go_with_the_account_and_the_password,
}

fn token(id: &str, owner: &str, created_ms: i64, expires_ms: i64) -> ApiToken {
    ApiToken {
        id: id.to_owned(),
        hash: id.bytes().chain([0; 8]).collect(),
        owner: owner.to_owned(),
        label: Some(format!("{id} laptop")),
        created_ms,
        expires_ms,
    }
}

async fn tokens_are_found_by_hash_listed_and_revoked(store: &dyn Store) {
    assert!(matches!(
        store.token_add(&token("t0", ALICE, 1, 100)).await,
        Err(StoreError::NoSuchAccount)
    ));
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.create_account(BOB, &creds(2)).await.unwrap();
    store.token_add(&token("t2", ALICE, 2, 100)).await.unwrap();
    store.token_add(&token("t1", ALICE, 1, 50)).await.unwrap();
    store.token_add(&token("t3", BOB, 3, 100)).await.unwrap();
    let t1 = token("t1", ALICE, 1, 50);
    assert_eq!(store.token_by_hash(&t1.hash).await.unwrap(), Some(t1));
    assert_eq!(store.token_by_hash(b"nothing").await.unwrap(), None);
    let ids = |tokens: Vec<ApiToken>| tokens.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids(store.tokens_of(ALICE).await.unwrap()), ["t1", "t2"]);
    // One account cannot revoke another's token by its id.
    assert!(!store.token_remove(ALICE, "t3").await.unwrap());
    assert!(store.token_remove(ALICE, "t2").await.unwrap());
    assert!(!store.token_remove(ALICE, "t2").await.unwrap());
    assert_eq!(ids(store.tokens_of(ALICE).await.unwrap()), ["t1"]);
    // Expiry forgets those past their time only.
    assert_eq!(store.tokens_expire(60).await.unwrap(), 1);
    assert!(store.tokens_of(ALICE).await.unwrap().is_empty());
    assert_eq!(ids(store.tokens_of(BOB).await.unwrap()), ["t3"]);
    assert_eq!(store.tokens_remove_all(BOB).await.unwrap(), 1);
    assert_eq!(store.tokens_remove_all(BOB).await.unwrap(), 0);
}

async fn tokens_go_with_the_account_and_the_password(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.create_account(BOB, &creds(2)).await.unwrap();
    store.token_add(&token("a", ALICE, 1, 100)).await.unwrap();
    store.token_add(&token("b", BOB, 1, 100)).await.unwrap();
    store.set_credentials(ALICE, &creds(3)).await.unwrap();
    assert_eq!(
        store
            .token_by_hash(&token("a", ALICE, 1, 100).hash)
            .await
            .unwrap(),
        None
    );
    store.remove_account(BOB).await.unwrap();
    assert_eq!(
        store
            .token_by_hash(&token("b", BOB, 1, 100).hash)
            .await
            .unwrap(),
        None
    );
    // A new account of the same name starts with none.
    store.create_account(BOB, &creds(4)).await.unwrap();
    assert!(store.tokens_of(BOB).await.unwrap().is_empty());
}
