//! The message archive (XEP-0313) and archiving preferences (XEP-0441), against every
//! backend.

use outpost_store::{ArchiveDefault, ArchiveQuery, BatchWrite, Quotas, Store, StoreError};

use crate::battery::{ALICE, BOB, CAROL, NOBODY, archived, creds, prefs};

crate::battery! {
    archive_pages_forwards_and_backwards,
    archive_merges_both_ends_and_filters_by_contact,
    archive_cursor_and_bounds,
    archive_clear_keeps_the_other_end,
    removing_an_account_removes_its_archive_and_prefs,
    archive_expire_removes_only_old_ids,
    archive_of_a_room,
    archive_prefs_roundtrip,
}

const QUOTAS: Quotas = Quotas {
    offline: 100,
    outbox: 100,
};

async fn put(store: &dyn Store, entries: Vec<outpost_store::ArchiveEntry>) {
    let writes: Vec<BatchWrite> = entries.into_iter().map(BatchWrite::Archive).collect();
    for r in store.write_batch(&writes, 0, QUOTAS).await.unwrap() {
        r.unwrap();
    }
}

fn query(owner: &str) -> ArchiveQuery<'_> {
    ArchiveQuery {
        owner,
        with: None,
        after: None,
        before: None,
        limit: 100,
        newest_first: false,
    }
}

async fn ids(store: &dyn Store, q: ArchiveQuery<'_>) -> Vec<i64> {
    store
        .archive_page(&q)
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect()
}

async fn archive_pages_forwards_and_backwards(store: &dyn Store) {
    put(
        store,
        (1..=10)
            .map(|i| archived(i * 10, ALICE, BOB, &format!("<m{i}/>")))
            .collect(),
    )
    .await;
    let first = store
        .archive_page(&ArchiveQuery {
            limit: 3,
            ..query(ALICE)
        })
        .await
        .unwrap();
    assert_eq!(first.iter().map(|m| m.id).collect::<Vec<_>>(), [10, 20, 30]);
    assert_eq!(first[0].stanza, "<m1/>");
    assert_eq!(
        (first[0].sender.as_str(), first[0].recipient.as_str()),
        (ALICE, BOB)
    );
    let q = |after, before, newest_first| ArchiveQuery {
        after,
        before,
        limit: 3,
        newest_first,
        ..query(BOB)
    };
    // The next page after the last id seen; the last page; the page before a cursor.
    assert_eq!(ids(store, q(Some(30), None, false)).await, [40, 50, 60]);
    assert_eq!(ids(store, q(None, None, true)).await, [100, 90, 80]);
    assert_eq!(ids(store, q(None, Some(40), true)).await, [30, 20, 10]);
    assert_eq!(ids(store, q(Some(20), Some(60), false)).await, [30, 40, 50]);
    assert_eq!(ids(store, q(Some(45), Some(55), false)).await, [50]);
    assert!(ids(store, q(Some(100), None, false)).await.is_empty());
}

async fn archive_merges_both_ends_and_filters_by_contact(store: &dyn Store) {
    let mut to_self = archived(60, ALICE, ALICE, "<note/>");
    to_self.in_recipient = true;
    let mut not_in_bobs = archived(40, ALICE, BOB, "<secret/>");
    not_in_bobs.in_recipient = false;
    put(
        store,
        vec![
            archived(10, ALICE, BOB, "<a/>"),
            archived(20, BOB, ALICE, "<b/>"),
            archived(30, CAROL, ALICE, "<c/>"),
            not_in_bobs,
            archived(50, BOB, CAROL, "<d/>"),
            to_self,
        ],
    )
    .await;
    assert_eq!(ids(store, query(ALICE)).await, [10, 20, 30, 40, 60]);
    assert_eq!(ids(store, query(BOB)).await, [10, 20, 50]);
    assert_eq!(ids(store, query(CAROL)).await, [30, 50]);
    let with = |owner, with| ArchiveQuery {
        with: Some(with),
        ..query(owner)
    };
    assert_eq!(ids(store, with(ALICE, BOB)).await, [10, 20, 40]);
    assert_eq!(ids(store, with(ALICE, ALICE)).await, [60]);
    assert_eq!(ids(store, with(BOB, ALICE)).await, [10, 20]);
    assert_eq!(ids(store, with(CAROL, NOBODY)).await, Vec::<i64>::new());
    let newest = ArchiveQuery {
        limit: 2,
        newest_first: true,
        ..query(ALICE)
    };
    assert_eq!(ids(store, newest).await, [60, 40]);
}

async fn archive_cursor_and_bounds(store: &dyn Store) {
    assert_eq!(store.archive_bounds(ALICE).await.unwrap(), None);
    assert_eq!(store.archive_last_id().await.unwrap(), 0);
    let mut remote = archived(7, ALICE, "dave@example.net", "<r/>");
    remote.in_recipient = false;
    put(
        store,
        vec![
            remote,
            archived(9, BOB, ALICE, "<b/>"),
            archived(12, BOB, CAROL, "<c/>"),
        ],
    )
    .await;
    assert!(store.archive_has(ALICE, 7).await.unwrap());
    assert!(store.archive_has(ALICE, 9).await.unwrap());
    assert!(!store.archive_has(ALICE, 12).await.unwrap());
    assert!(!store.archive_has("dave@example.net", 7).await.unwrap());
    assert!(!store.archive_has(ALICE, 8).await.unwrap());
    assert_eq!(store.archive_bounds(ALICE).await.unwrap(), Some((7, 9)));
    assert_eq!(store.archive_bounds(CAROL).await.unwrap(), Some((12, 12)));
    assert_eq!(store.archive_last_id().await.unwrap(), 12);
}

async fn archive_clear_keeps_the_other_end(store: &dyn Store) {
    put(
        store,
        vec![
            archived(1, ALICE, BOB, "<1/>"),
            archived(2, BOB, ALICE, "<2/>"),
            archived(3, ALICE, ALICE, "<3/>"),
            archived(4, CAROL, BOB, "<4/>"),
        ],
    )
    .await;
    assert_eq!(store.archive_clear(ALICE).await.unwrap(), 3);
    assert!(ids(store, query(ALICE)).await.is_empty());
    assert_eq!(ids(store, query(BOB)).await, [1, 2, 4]);
    assert_eq!(store.archive_clear(ALICE).await.unwrap(), 0);
    assert_eq!(store.archive_clear(BOB).await.unwrap(), 3);
    assert_eq!(ids(store, query(CAROL)).await, [4]);
}

async fn removing_an_account_removes_its_archive_and_prefs(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.create_account(BOB, &creds(2)).await.unwrap();
    put(
        store,
        vec![
            archived(1, ALICE, BOB, "<1/>"),
            archived(2, ALICE, CAROL, "<2/>"),
        ],
    )
    .await;
    store
        .set_archive_prefs(ALICE, &prefs(ArchiveDefault::Never, &[], &[]))
        .await
        .unwrap();
    store.remove_account(ALICE).await.unwrap();
    assert!(ids(store, query(ALICE)).await.is_empty());
    assert_eq!(ids(store, query(BOB)).await, [1]);
    assert_eq!(ids(store, query(CAROL)).await, [2]);
    assert_eq!(store.archive_prefs(ALICE).await.unwrap(), None);
    assert!(store.all_archive_prefs().await.unwrap().is_empty());
    // A new account under the same name starts with an empty archive.
    store.create_account(ALICE, &creds(3)).await.unwrap();
    assert!(ids(store, query(ALICE)).await.is_empty());
    assert_eq!(store.archive_bounds(ALICE).await.unwrap(), None);
}

async fn archive_expire_removes_only_old_ids(store: &dyn Store) {
    put(
        store,
        (1..=5).map(|i| archived(i, ALICE, BOB, "<m/>")).collect(),
    )
    .await;
    assert_eq!(store.archive_expire(4, 2).await.unwrap(), 2);
    assert_eq!(store.archive_expire(4, 2).await.unwrap(), 1);
    assert_eq!(store.archive_expire(4, 2).await.unwrap(), 0);
    assert_eq!(ids(store, query(ALICE)).await, [4, 5]);
    assert_eq!(ids(store, query(BOB)).await, [4, 5]);
}

async fn archive_of_a_room(store: &dyn Store) {
    const ROOM: &str = "lobby@conference.example.org";
    let said = |id, nick: &str| {
        let mut e = archived(id, &format!("{ROOM}/{nick}"), ROOM, "<groupchat/>");
        e.in_sender = false;
        e
    };
    put(
        store,
        vec![said(1, "alice"), said(2, "bob"), said(3, "alice")],
    )
    .await;
    assert_eq!(ids(store, query(ROOM)).await, [1, 2, 3]);
    let alices = ArchiveQuery {
        with: Some("lobby@conference.example.org/alice"),
        ..query(ROOM)
    };
    assert_eq!(ids(store, alices).await, [1, 3]);
    assert!(
        ids(store, query("lobby@conference.example.org/alice"))
            .await
            .is_empty()
    );
    assert_eq!(store.archive_clear(ROOM).await.unwrap(), 3);
    assert!(ids(store, query(ROOM)).await.is_empty());
}

async fn archive_prefs_roundtrip(store: &dyn Store) {
    assert!(matches!(
        store
            .set_archive_prefs(NOBODY, &prefs(ArchiveDefault::Never, &[], &[]))
            .await,
        Err(StoreError::NoSuchAccount)
    ));
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.create_account(BOB, &creds(2)).await.unwrap();
    assert_eq!(store.archive_prefs(ALICE).await.unwrap(), None);
    // Unsorted, repeated, and one JID in both lists: that one is never archived.
    let given = prefs(
        ArchiveDefault::Roster,
        &[CAROL, BOB, CAROL, NOBODY],
        &[NOBODY],
    );
    store.set_archive_prefs(ALICE, &given).await.unwrap();
    let expected = prefs(ArchiveDefault::Roster, &[BOB, CAROL], &[NOBODY]);
    assert_eq!(
        store.archive_prefs(ALICE).await.unwrap(),
        Some(expected.clone())
    );
    let bobs = prefs(ArchiveDefault::Never, &[], &[]);
    store.set_archive_prefs(BOB, &bobs).await.unwrap();
    assert_eq!(
        store.all_archive_prefs().await.unwrap(),
        vec![(ALICE.to_owned(), expected), (BOB.to_owned(), bobs)]
    );
    // Setting replaces the lists as a whole.
    let replaced = prefs(ArchiveDefault::Always, &[], &[CAROL]);
    store.set_archive_prefs(ALICE, &replaced).await.unwrap();
    assert_eq!(store.archive_prefs(ALICE).await.unwrap(), Some(replaced));
}
