//! The store battery: one set of cases written against `&dyn Store`, run against every
//! backend, so that the backends cannot drift apart. Each case becomes one test per
//! backend (`memory::case`, `sqlite::case` and `postgres::case`, the last against a real
//! PostgreSQL server, see `postgres.rs`). Cases that only make sense for a durable backend
//! (reopening the file or the database) follow the battery.

use std::path::Path;
use std::sync::Arc;

use outpost_store::{
    ArchiveDefault, ArchiveEntry, ArchivePrefs, ArchiveQuery, BatchWrite, Credentials, MemoryStore,
    OfflineMessage, OutboxEntry, OutboxPush, OutboxStats, PgStore, Quotas, RosterItem, ScramKeys,
    SqliteStore, Store, StoreError, Subscription, SubscriptionRequest,
};
use tempfile::TempDir;

/// Runs each listed case against a fresh `MemoryStore`, a fresh SQLite file and a fresh
/// PostgreSQL database.
#[macro_export]
macro_rules! battery {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    let store = outpost_store::MemoryStore::new();
                    super::$case(&store).await;
                    outpost_store::Store::close(&store).await;
                }
            )*
        }

        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let (_dir, store) = $crate::battery::sqlite_store().await;
                    super::$case(&store).await;
                    outpost_store::Store::close(&store).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let (db, store) = $crate::postgres::pg_store().await;
                    super::$case(&store).await;
                    outpost_store::Store::close(&store).await;
                    db.drop().await;
                }
            )*
        }
    };
}

battery! {
    account_lifecycle,
    credentials_replaced,
    accounts_listed_sorted,
    remove_account_removes_everything_it_owns,
    writes_for_unknown_account_fail_and_reads_are_empty,
    roster_versions_grow_with_each_change,
    roster_item_fields_and_groups_roundtrip,
    rosters_are_per_user,
    subscription_requests_keep_arrival_order,
    offline_queue_keeps_order_and_limit,
    offline_quota_is_enforced,
    offline_ids_grow_across_users_and_deletions,
    delete_offline_removes_only_up_to_and_only_that_user,
    vcard_set_and_replaced,
    blocklist_block_and_unblock,
    outbox_keeps_fifo_order_per_link,
    outbox_ids_grow_across_links_and_acks,
    outbox_ack_removes_only_up_to_and_only_that_link,
    outbox_quota_is_per_link,
    outbox_expire_returns_exactly_the_old_entries,
    outbox_stats_report_every_link,
    seen_stanza_ids_detect_duplicates,
    batch_writes_in_order_within_quotas,
    seen_stanza_ids_batch_records_every_pair,
    prune_seen_forgets_only_old_ids,
    offline_owners_are_those_of_the_domain_with_messages,
}

pub(crate) async fn sqlite_store() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(&dir.path().join("outpost.db"))
        .await
        .expect("open SQLite store");
    (dir, store)
}

fn keys(seed: u8, iterations: u32) -> ScramKeys {
    ScramKeys {
        salt: vec![seed; 16],
        iterations,
        stored_key: vec![seed.wrapping_add(1); 20],
        server_key: vec![seed.wrapping_add(2); 32],
    }
}

pub(crate) fn creds(seed: u8) -> Credentials {
    Credentials {
        sha1: keys(seed, 4096),
        sha256: keys(seed.wrapping_add(100), 10_000),
    }
}

fn request(from: &str, stanza: &str) -> SubscriptionRequest {
    SubscriptionRequest {
        from: from.to_owned(),
        stanza: stanza.to_owned(),
    }
}

pub(crate) fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn stanzas(messages: &[OfflineMessage]) -> Vec<&str> {
    messages.iter().map(|m| m.stanza.as_str()).collect()
}

fn outbox_ids(entries: &[OutboxEntry]) -> Vec<i64> {
    entries.iter().map(|e| e.id).collect()
}

fn outbox_stanzas(entries: &[OutboxEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.stanza.as_str()).collect()
}

/// Stats for a link, as `outbox_stats` should report them.
fn link_stats(
    local: &str,
    remote: &str,
    queued: u64,
    oldest_queued_at_ms: Option<i64>,
    last_delivery_ms: Option<i64>,
) -> OutboxStats {
    OutboxStats {
        local_domain: local.to_owned(),
        remote_domain: remote.to_owned(),
        queued,
        oldest_queued_at_ms,
        last_delivery_ms,
    }
}

pub(crate) const ALICE: &str = "alice@example.org";
pub(crate) const BOB: &str = "bob@example.org";
pub(crate) const CAROL: &str = "carol@example.org";
pub(crate) const NOBODY: &str = "nobody@example.org";

/// Our two domains and two peers, for the outbox: four possible links. The second of
/// each sorts first, so that the order of `outbox_stats` is not the order of pushes.
const LOCAL: &str = "example.org";
const LOCAL2: &str = "chat.example.org";
const REMOTE: &str = "example.net";
const REMOTE2: &str = "another.example";

/// A plausible "now", in unix milliseconds (November 2023).
const T0: i64 = 1_700_000_000_000;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

async fn account_lifecycle(store: &dyn Store) {
    assert!(!store.account_exists(ALICE).await.unwrap());
    assert_eq!(store.credentials(ALICE).await.unwrap(), None);

    store.create_account(ALICE, &creds(1)).await.unwrap();
    assert!(store.account_exists(ALICE).await.unwrap());
    assert_eq!(store.credentials(ALICE).await.unwrap(), Some(creds(1)));

    let err = store.create_account(ALICE, &creds(2)).await.unwrap_err();
    assert!(matches!(err, StoreError::AccountExists), "{err:?}");
    // The failed attempt must not have touched the existing verifiers.
    assert_eq!(store.credentials(ALICE).await.unwrap(), Some(creds(1)));

    store.remove_account(ALICE).await.unwrap();
    assert!(!store.account_exists(ALICE).await.unwrap());
    assert_eq!(store.credentials(ALICE).await.unwrap(), None);
    let err = store.remove_account(ALICE).await.unwrap_err();
    assert!(matches!(err, StoreError::NoSuchAccount), "{err:?}");

    // The JID is free again.
    store.create_account(ALICE, &creds(3)).await.unwrap();
    assert_eq!(store.credentials(ALICE).await.unwrap(), Some(creds(3)));
}

async fn credentials_replaced(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.create_account(BOB, &creds(1)).await.unwrap();

    // Extreme values must survive the trip: empty salt, the largest iteration count.
    let changed = Credentials {
        sha1: ScramKeys {
            salt: Vec::new(),
            iterations: u32::MAX,
            stored_key: vec![0; 20],
            server_key: vec![255; 20],
        },
        sha256: keys(9, 1),
    };
    store.set_credentials(ALICE, &changed).await.unwrap();
    assert_eq!(store.credentials(ALICE).await.unwrap(), Some(changed));
    assert_eq!(store.credentials(BOB).await.unwrap(), Some(creds(1)));

    let err = store.set_credentials(NOBODY, &creds(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::NoSuchAccount), "{err:?}");
    assert!(!store.account_exists(NOBODY).await.unwrap());
}

async fn accounts_listed_sorted(store: &dyn Store) {
    assert!(store.list_accounts().await.unwrap().is_empty());
    for user in [CAROL, ALICE, "zed@example.org", BOB, "Adam@example.org"] {
        store.create_account(user, &creds(1)).await.unwrap();
    }
    assert_eq!(
        store.list_accounts().await.unwrap(),
        strings(&["Adam@example.org", ALICE, BOB, CAROL, "zed@example.org"])
    );
    store.remove_account(BOB).await.unwrap();
    assert_eq!(
        store.list_accounts().await.unwrap(),
        strings(&["Adam@example.org", ALICE, CAROL, "zed@example.org"])
    );
}

/// Gives `user` something in every table a user owns.
async fn populate(store: &dyn Store, user: &str) {
    let mut item = RosterItem::new(BOB);
    item.groups = strings(&["Friends"]);
    store.put_roster_item(user, &item).await.unwrap();
    store
        .put_subscription_request(user, &request(CAROL, "<presence type='subscribe'/>"))
        .await
        .unwrap();
    store.push_offline(user, "<message/>", 10).await.unwrap();
    store.set_vcard(user, "<vCard/>").await.unwrap();
    store
        .block(user, &strings(&["spam@example.net"]))
        .await
        .unwrap();
}

async fn remove_account_removes_everything_it_owns(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.create_account(CAROL, &creds(2)).await.unwrap();
    populate(store, ALICE).await;
    populate(store, CAROL).await;

    store.remove_account(ALICE).await.unwrap();
    let roster = store.roster(ALICE).await.unwrap();
    assert_eq!(roster.version, 0);
    assert!(roster.items.is_empty());
    assert_eq!(store.roster_item(ALICE, BOB).await.unwrap(), None);
    assert!(store.subscription_requests(ALICE).await.unwrap().is_empty());
    assert!(store.offline(ALICE, 100).await.unwrap().is_empty());
    assert_eq!(store.count_offline(ALICE).await.unwrap(), 0);
    assert_eq!(store.vcard(ALICE).await.unwrap(), None);
    assert!(store.blocklist(ALICE).await.unwrap().is_empty());

    // A new account under the same JID starts empty, not with the old one's data.
    store.create_account(ALICE, &creds(3)).await.unwrap();
    let roster = store.roster(ALICE).await.unwrap();
    assert_eq!(roster.version, 0);
    assert!(roster.items.is_empty());
    assert!(store.subscription_requests(ALICE).await.unwrap().is_empty());
    assert_eq!(store.count_offline(ALICE).await.unwrap(), 0);
    assert_eq!(store.vcard(ALICE).await.unwrap(), None);
    assert!(store.blocklist(ALICE).await.unwrap().is_empty());

    // The other user's data is untouched.
    let roster = store.roster(CAROL).await.unwrap();
    assert_eq!(roster.version, 1);
    assert_eq!(roster.items.len(), 1);
    assert_eq!(roster.items[0].groups, strings(&["Friends"]));
    assert_eq!(store.subscription_requests(CAROL).await.unwrap().len(), 1);
    assert_eq!(store.count_offline(CAROL).await.unwrap(), 1);
    assert_eq!(
        store.vcard(CAROL).await.unwrap().as_deref(),
        Some("<vCard/>")
    );
    assert_eq!(
        store.blocklist(CAROL).await.unwrap(),
        strings(&["spam@example.net"])
    );
}

async fn writes_for_unknown_account_fail_and_reads_are_empty(store: &dyn Store) {
    fn no_such<T: std::fmt::Debug>(r: Result<T, StoreError>) {
        assert!(matches!(r, Err(StoreError::NoSuchAccount)), "{r:?}");
    }
    no_such(store.set_credentials(NOBODY, &creds(1)).await);
    no_such(store.remove_account(NOBODY).await);
    no_such(store.put_roster_item(NOBODY, &RosterItem::new(BOB)).await);
    no_such(store.remove_roster_item(NOBODY, BOB).await);
    no_such(
        store
            .put_subscription_request(NOBODY, &request(BOB, "<presence/>"))
            .await,
    );
    no_such(store.remove_subscription_request(NOBODY, BOB).await);
    no_such(store.push_offline(NOBODY, "<message/>", 10).await);
    no_such(store.delete_offline(NOBODY, i64::MAX).await);
    no_such(store.set_vcard(NOBODY, "<vCard/>").await);
    no_such(store.block(NOBODY, &strings(&[BOB])).await);
    no_such(store.unblock(NOBODY, &[]).await);

    // None of the failed writes created the account or left anything behind.
    assert!(!store.account_exists(NOBODY).await.unwrap());
    assert!(store.list_accounts().await.unwrap().is_empty());
    assert_eq!(store.credentials(NOBODY).await.unwrap(), None);
    assert_eq!(
        store.roster(NOBODY).await.unwrap(),
        outpost_store::Roster::default()
    );
    assert_eq!(store.roster_item(NOBODY, BOB).await.unwrap(), None);
    assert!(
        store
            .subscription_requests(NOBODY)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.offline(NOBODY, 10).await.unwrap().is_empty());
    assert_eq!(store.count_offline(NOBODY).await.unwrap(), 0);
    assert_eq!(store.vcard(NOBODY).await.unwrap(), None);
    assert!(store.blocklist(NOBODY).await.unwrap().is_empty());
}

async fn roster_versions_grow_with_each_change(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    let roster = store.roster(ALICE).await.unwrap();
    assert_eq!(roster.version, 0);
    assert!(roster.items.is_empty());

    let v1 = store
        .put_roster_item(ALICE, &RosterItem::new(BOB))
        .await
        .unwrap();
    let v2 = store
        .put_roster_item(ALICE, &RosterItem::new(CAROL))
        .await
        .unwrap();
    let mut bob = RosterItem::new(BOB);
    bob.name = Some("Bobby".to_owned());
    bob.subscription = Subscription::Both;
    let v3 = store.put_roster_item(ALICE, &bob).await.unwrap();
    assert_eq!((v1, v2, v3), (1, 2, 3));

    // Replacing kept one item per contact, sorted by JID.
    let roster = store.roster(ALICE).await.unwrap();
    assert_eq!(roster.version, 3);
    assert_eq!(roster.items, vec![bob.clone(), RosterItem::new(CAROL)]);

    // Removing an absent item changes nothing, the version included.
    assert_eq!(store.remove_roster_item(ALICE, NOBODY).await.unwrap(), None);
    assert_eq!(store.roster(ALICE).await.unwrap().version, 3);

    assert_eq!(
        store.remove_roster_item(ALICE, CAROL).await.unwrap(),
        Some(4)
    );
    assert_eq!(store.remove_roster_item(ALICE, CAROL).await.unwrap(), None);
    assert_eq!(store.roster_item(ALICE, CAROL).await.unwrap(), None);
    let roster = store.roster(ALICE).await.unwrap();
    assert_eq!(roster.version, 4);
    assert_eq!(roster.items, vec![bob.clone()]);

    assert_eq!(store.remove_roster_item(ALICE, BOB).await.unwrap(), Some(5));
    let roster = store.roster(ALICE).await.unwrap();
    assert_eq!(roster.version, 5);
    assert!(roster.items.is_empty());

    // Re-adding continues from there: versions never go back.
    assert_eq!(
        store
            .put_roster_item(ALICE, &RosterItem::new(BOB))
            .await
            .unwrap(),
        6
    );
}

async fn roster_item_fields_and_groups_roundtrip(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    let subscriptions = [
        Subscription::None,
        Subscription::To,
        Subscription::From,
        Subscription::Both,
    ];
    let mut expected = Vec::new();
    for (i, subscription) in subscriptions.into_iter().enumerate() {
        let item = RosterItem {
            jid: format!("contact{i}@example.net"),
            name: (i % 2 == 0).then(|| format!("Contact «{i}»")),
            subscription,
            ask: i & 1 == 1,
            approved: i == 0,
            groups: match i {
                0 => Vec::new(),
                1 => strings(&["Work"]),
                // Group names may hold anything, separators and newlines included.
                2 => strings(&["a\nb", "a,b", "", "Été"]),
                _ => strings(&["Zeta", "Alpha", "Mu"]),
            },
        };
        store.put_roster_item(ALICE, &item).await.unwrap();
        let mut stored = item.clone();
        stored.groups.sort();
        assert_eq!(
            store.roster_item(ALICE, &item.jid).await.unwrap(),
            Some(stored.clone())
        );
        expected.push(stored);
    }
    assert_eq!(store.roster(ALICE).await.unwrap().items, expected);

    // Groups come back sorted and without duplicates, whatever order they went in.
    let mut item = RosterItem::new(BOB);
    item.groups = strings(&["b", "a", "b", "c", "a"]);
    store.put_roster_item(ALICE, &item).await.unwrap();
    assert_eq!(
        store.roster_item(ALICE, BOB).await.unwrap().unwrap().groups,
        strings(&["a", "b", "c"])
    );

    // Replacing an item replaces its groups, and can clear its name and flags.
    item.groups = strings(&["d"]);
    store.put_roster_item(ALICE, &item).await.unwrap();
    assert_eq!(
        store.roster_item(ALICE, BOB).await.unwrap().unwrap().groups,
        strings(&["d"])
    );
    let cleared = RosterItem::new("contact1@example.net");
    store.put_roster_item(ALICE, &cleared).await.unwrap();
    assert_eq!(
        store
            .roster_item(ALICE, "contact1@example.net")
            .await
            .unwrap(),
        Some(cleared)
    );

    // A removed item takes its groups with it: re-adding starts from what is given.
    store.remove_roster_item(ALICE, BOB).await.unwrap();
    store
        .put_roster_item(ALICE, &RosterItem::new(BOB))
        .await
        .unwrap();
    assert!(
        store
            .roster_item(ALICE, BOB)
            .await
            .unwrap()
            .unwrap()
            .groups
            .is_empty()
    );
}

async fn rosters_are_per_user(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.create_account(BOB, &creds(2)).await.unwrap();
    let mut for_alice = RosterItem::new(CAROL);
    for_alice.groups = strings(&["Alice's"]);
    let mut for_bob = RosterItem::new(CAROL);
    for_bob.groups = strings(&["Bob's"]);
    for_bob.subscription = Subscription::To;

    assert_eq!(store.put_roster_item(ALICE, &for_alice).await.unwrap(), 1);
    assert_eq!(store.put_roster_item(BOB, &for_bob).await.unwrap(), 1);
    assert_eq!(
        store
            .put_roster_item(BOB, &RosterItem::new(ALICE))
            .await
            .unwrap(),
        2
    );

    let alice = store.roster(ALICE).await.unwrap();
    assert_eq!(alice.version, 1);
    assert_eq!(alice.items, vec![for_alice.clone()]);
    assert_eq!(store.roster(BOB).await.unwrap().items.len(), 2);
    assert_eq!(store.roster_item(BOB, CAROL).await.unwrap(), Some(for_bob));

    assert_eq!(store.remove_roster_item(BOB, CAROL).await.unwrap(), Some(3));
    assert_eq!(
        store.roster_item(ALICE, CAROL).await.unwrap(),
        Some(for_alice)
    );
    assert_eq!(store.roster(ALICE).await.unwrap().version, 1);
}

async fn subscription_requests_keep_arrival_order(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.create_account(BOB, &creds(2)).await.unwrap();
    assert!(store.subscription_requests(ALICE).await.unwrap().is_empty());

    // Arrival order, deliberately not alphabetical.
    for from in [CAROL, BOB, "aaron@example.net"] {
        store
            .put_subscription_request(ALICE, &request(from, &format!("<presence from='{from}'/>")))
            .await
            .unwrap();
    }
    store
        .put_subscription_request(BOB, &request(CAROL, "<for-bob/>"))
        .await
        .unwrap();
    let froms = |reqs: Vec<SubscriptionRequest>| -> Vec<String> {
        reqs.into_iter().map(|r| r.from).collect()
    };
    assert_eq!(
        froms(store.subscription_requests(ALICE).await.unwrap()),
        strings(&[CAROL, BOB, "aaron@example.net"])
    );

    // A repeated request replaces the stanza and keeps its place.
    store
        .put_subscription_request(ALICE, &request(CAROL, "<again/>"))
        .await
        .unwrap();
    let reqs = store.subscription_requests(ALICE).await.unwrap();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0], request(CAROL, "<again/>"));
    assert_eq!(reqs[1], request(BOB, &format!("<presence from='{BOB}'/>")));

    store.remove_subscription_request(ALICE, BOB).await.unwrap();
    // Removing an absent request is not an error.
    store.remove_subscription_request(ALICE, BOB).await.unwrap();
    assert_eq!(
        froms(store.subscription_requests(ALICE).await.unwrap()),
        strings(&[CAROL, "aaron@example.net"])
    );

    // A new request goes last.
    store
        .put_subscription_request(ALICE, &request(BOB, "<back/>"))
        .await
        .unwrap();
    assert_eq!(
        froms(store.subscription_requests(ALICE).await.unwrap()),
        strings(&[CAROL, "aaron@example.net", BOB])
    );

    // Bob's requests were never touched by any of this.
    assert_eq!(
        store.subscription_requests(BOB).await.unwrap(),
        vec![request(CAROL, "<for-bob/>")]
    );
}

async fn offline_queue_keeps_order_and_limit(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            store
                .push_offline(ALICE, &format!("<message id='{i}'/>"), 100)
                .await
                .unwrap(),
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(store.count_offline(ALICE).await.unwrap(), 5);

    let all = store.offline(ALICE, 100).await.unwrap();
    assert_eq!(all.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert_eq!(
        stanzas(&all),
        [
            "<message id='0'/>",
            "<message id='1'/>",
            "<message id='2'/>",
            "<message id='3'/>",
            "<message id='4'/>"
        ]
    );
    assert_eq!(store.offline(ALICE, 2).await.unwrap(), all[..2].to_vec());
    assert!(store.offline(ALICE, 0).await.unwrap().is_empty());
    // Reading does not consume.
    assert_eq!(store.count_offline(ALICE).await.unwrap(), 5);
}

async fn offline_quota_is_enforced(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.create_account(BOB, &creds(2)).await.unwrap();

    let first = store.push_offline(ALICE, "<one/>", 2).await.unwrap();
    store.push_offline(ALICE, "<two/>", 2).await.unwrap();
    let err = store.push_offline(ALICE, "<three/>", 2).await.unwrap_err();
    assert!(
        matches!(err, StoreError::QuotaExceeded { quota: 2 }),
        "{err:?}"
    );
    assert_eq!(store.count_offline(ALICE).await.unwrap(), 2);
    assert_eq!(
        stanzas(&store.offline(ALICE, 10).await.unwrap()),
        ["<one/>", "<two/>"]
    );

    // The quota is per user: Bob's queue is empty.
    store.push_offline(BOB, "<for-bob/>", 2).await.unwrap();

    // A quota of zero refuses everything.
    let err = store.push_offline(BOB, "<no/>", 0).await.unwrap_err();
    assert!(
        matches!(err, StoreError::QuotaExceeded { quota: 0 }),
        "{err:?}"
    );

    // Delivering makes room again.
    store.delete_offline(ALICE, first).await.unwrap();
    store.push_offline(ALICE, "<three/>", 2).await.unwrap();
    assert_eq!(
        stanzas(&store.offline(ALICE, 10).await.unwrap()),
        ["<two/>", "<three/>"]
    );
    // A larger quota lets more in; the quota is the caller's to choose per push.
    store.push_offline(ALICE, "<four/>", 3).await.unwrap();
    assert_eq!(store.count_offline(ALICE).await.unwrap(), 3);
}

async fn offline_ids_grow_across_users_and_deletions(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.create_account(BOB, &creds(2)).await.unwrap();
    let a1 = store.push_offline(ALICE, "<a1/>", 10).await.unwrap();
    let b1 = store.push_offline(BOB, "<b1/>", 10).await.unwrap();
    let a2 = store.push_offline(ALICE, "<a2/>", 10).await.unwrap();
    assert!(a1 < b1 && b1 < a2, "{a1} {b1} {a2}");

    // Emptying every queue must not let an id be handed out again: a session holding
    // "delivered up to a2" must never delete a message that came later.
    store.delete_offline(ALICE, i64::MAX).await.unwrap();
    store.delete_offline(BOB, i64::MAX).await.unwrap();
    let a3 = store.push_offline(ALICE, "<a3/>", 10).await.unwrap();
    assert!(a3 > a2, "{a3} after {a2}");
    store.delete_offline(ALICE, a2).await.unwrap();
    assert_eq!(
        store.offline(ALICE, 10).await.unwrap(),
        vec![OfflineMessage {
            id: a3,
            stanza: "<a3/>".to_owned()
        }]
    );
}

async fn delete_offline_removes_only_up_to_and_only_that_user(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.create_account(BOB, &creds(2)).await.unwrap();
    let mut alice = Vec::new();
    let mut bob = Vec::new();
    for i in 0..4 {
        alice.push(
            store
                .push_offline(ALICE, &format!("<a{i}/>"), 10)
                .await
                .unwrap(),
        );
        bob.push(
            store
                .push_offline(BOB, &format!("<b{i}/>"), 10)
                .await
                .unwrap(),
        );
    }

    // Up to Alice's second message: Bob has messages with smaller ids, which must stay.
    store.delete_offline(ALICE, alice[1]).await.unwrap();
    let left = store.offline(ALICE, 10).await.unwrap();
    assert_eq!(left.iter().map(|m| m.id).collect::<Vec<_>>(), alice[2..]);
    assert_eq!(stanzas(&left), ["<a2/>", "<a3/>"]);
    assert_eq!(store.count_offline(ALICE).await.unwrap(), 2);
    assert_eq!(store.count_offline(BOB).await.unwrap(), 4);

    // An id between two of the user's messages deletes only those at or below it.
    store.delete_offline(BOB, alice[2]).await.unwrap();
    assert_eq!(
        stanzas(&store.offline(BOB, 10).await.unwrap()),
        ["<b2/>", "<b3/>"]
    );

    // Below everything: nothing goes.
    store.delete_offline(ALICE, 0).await.unwrap();
    assert_eq!(store.count_offline(ALICE).await.unwrap(), 2);

    store.delete_offline(ALICE, alice[3]).await.unwrap();
    assert_eq!(store.count_offline(ALICE).await.unwrap(), 0);
    assert!(store.offline(ALICE, 10).await.unwrap().is_empty());
    assert_eq!(store.count_offline(BOB).await.unwrap(), 2);
}

async fn vcard_set_and_replaced(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.create_account(BOB, &creds(2)).await.unwrap();
    assert_eq!(store.vcard(ALICE).await.unwrap(), None);

    store
        .set_vcard(ALICE, "<vCard xmlns='vcard-temp'><FN>Alice</FN></vCard>")
        .await
        .unwrap();
    assert_eq!(
        store.vcard(ALICE).await.unwrap().as_deref(),
        Some("<vCard xmlns='vcard-temp'><FN>Alice</FN></vCard>")
    );
    store
        .set_vcard(ALICE, "<vCard xmlns='vcard-temp'/>")
        .await
        .unwrap();
    assert_eq!(
        store.vcard(ALICE).await.unwrap().as_deref(),
        Some("<vCard xmlns='vcard-temp'/>")
    );
    assert_eq!(store.vcard(BOB).await.unwrap(), None);
}

async fn blocklist_block_and_unblock(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.create_account(BOB, &creds(2)).await.unwrap();
    assert!(store.blocklist(ALICE).await.unwrap().is_empty());

    // Any JID form, kept as given; duplicates within and across calls are kept once.
    store
        .block(
            ALICE,
            &strings(&[
                "spam.example",
                "c@example.net/res",
                "a@example.net",
                "c@example.net/res",
            ]),
        )
        .await
        .unwrap();
    store
        .block(ALICE, &strings(&["a@example.net", "b@example.net"]))
        .await
        .unwrap();
    store
        .block(BOB, &strings(&["z@example.net"]))
        .await
        .unwrap();
    assert_eq!(
        store.blocklist(ALICE).await.unwrap(),
        strings(&[
            "a@example.net",
            "b@example.net",
            "c@example.net/res",
            "spam.example"
        ])
    );

    // Blocking nothing changes nothing.
    store.block(ALICE, &[]).await.unwrap();
    assert_eq!(store.blocklist(ALICE).await.unwrap().len(), 4);

    // Unblocking some, including one that was never blocked.
    store
        .unblock(
            ALICE,
            &strings(&["b@example.net", "never@example.net", "spam.example"]),
        )
        .await
        .unwrap();
    assert_eq!(
        store.blocklist(ALICE).await.unwrap(),
        strings(&["a@example.net", "c@example.net/res"])
    );

    // An empty list unblocks everything, for this user only.
    store.unblock(ALICE, &[]).await.unwrap();
    assert!(store.blocklist(ALICE).await.unwrap().is_empty());
    assert_eq!(
        store.blocklist(BOB).await.unwrap(),
        strings(&["z@example.net"])
    );
}

async fn outbox_keeps_fifo_order_per_link(store: &dyn Store) {
    assert!(
        store
            .outbox_peek(LOCAL, REMOTE, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Interleaved pushes on three links: ours to two peers, and our second domain to the
    // first peer. Each link must see only its own stanzas, in the order they were pushed.
    let mut pushed = Vec::new();
    for i in 0..3 {
        let to_remote = format!("<message id='r{i}'/>");
        let to_remote2 = format!("<message id='s{i}'/>");
        let from_local2 = format!("<message id='l{i}'/>");
        let a = store
            .outbox_push(LOCAL, REMOTE, &to_remote, T0 + i, 100)
            .await
            .unwrap();
        let b = store
            .outbox_push(LOCAL, REMOTE2, &to_remote2, T0 + i, 100)
            .await
            .unwrap();
        let c = store
            .outbox_push(LOCAL2, REMOTE, &from_local2, T0 + i, 100)
            .await
            .unwrap();
        pushed.push((a, b, c));
    }

    let to_remote = store.outbox_peek(LOCAL, REMOTE, None, 10).await.unwrap();
    assert_eq!(
        to_remote,
        pushed
            .iter()
            .zip(0..)
            .map(|(&(id, _, _), i)| OutboxEntry {
                id,
                local_domain: LOCAL.to_owned(),
                remote_domain: REMOTE.to_owned(),
                stanza: format!("<message id='r{i}'/>"),
                queued_at_ms: T0 + i,
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(
        outbox_stanzas(&store.outbox_peek(LOCAL, REMOTE2, None, 10).await.unwrap()),
        [
            "<message id='s0'/>",
            "<message id='s1'/>",
            "<message id='s2'/>"
        ]
    );
    let from_local2 = store.outbox_peek(LOCAL2, REMOTE, None, 10).await.unwrap();
    assert_eq!(
        outbox_stanzas(&from_local2),
        [
            "<message id='l0'/>",
            "<message id='l1'/>",
            "<message id='l2'/>"
        ]
    );
    assert!(from_local2.iter().all(|e| e.local_domain == LOCAL2));
    // The link nobody pushed to is empty, though both of its domains are in use.
    assert!(
        store
            .outbox_peek(LOCAL2, REMOTE2, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A limit takes the oldest; `after_id` resumes after the last one written, even when
    // that id is not on this link.
    assert_eq!(
        store.outbox_peek(LOCAL, REMOTE, None, 2).await.unwrap(),
        to_remote[..2]
    );
    assert_eq!(
        store
            .outbox_peek(LOCAL, REMOTE, Some(to_remote[0].id), 10)
            .await
            .unwrap(),
        to_remote[1..]
    );
    assert_eq!(
        store
            .outbox_peek(LOCAL, REMOTE, Some(pushed[1].1), 10)
            .await
            .unwrap(),
        to_remote[2..]
    );
    assert!(
        store
            .outbox_peek(LOCAL, REMOTE, Some(to_remote[2].id), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .outbox_peek(LOCAL, REMOTE, None, 0)
            .await
            .unwrap()
            .is_empty()
    );
    // Reading does not consume.
    assert_eq!(
        store.outbox_peek(LOCAL, REMOTE, None, 10).await.unwrap(),
        to_remote
    );

    // Queued stanzas belong to no account: removing the sender's leaves them.
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.remove_account(ALICE).await.unwrap();
    assert_eq!(
        store.outbox_peek(LOCAL, REMOTE, None, 10).await.unwrap(),
        to_remote
    );
}

async fn outbox_ids_grow_across_links_and_acks(store: &dyn Store) {
    let mut ids = Vec::new();
    for (local, remote) in [
        (LOCAL, REMOTE),
        (LOCAL, REMOTE2),
        (LOCAL2, REMOTE),
        (LOCAL, REMOTE),
    ] {
        ids.push(
            store
                .outbox_push(local, remote, "<message/>", T0, 10)
                .await
                .unwrap(),
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // Emptying every queue must not let an id be handed out again: a stream holding
    // "acknowledged up to the last id" must never remove a stanza queued later.
    let last = ids[3];
    for (local, remote) in [(LOCAL, REMOTE), (LOCAL, REMOTE2), (LOCAL2, REMOTE)] {
        store
            .outbox_ack(local, remote, i64::MAX, T0 + 1)
            .await
            .unwrap();
    }
    let next = store
        .outbox_push(LOCAL, REMOTE, "<later/>", T0 + 2, 10)
        .await
        .unwrap();
    assert!(next > last, "{next} after {last}");
    assert_eq!(
        store.outbox_ack(LOCAL, REMOTE, last, T0 + 3).await.unwrap(),
        0
    );
    assert_eq!(
        outbox_ids(&store.outbox_peek(LOCAL, REMOTE, None, 10).await.unwrap()),
        [next]
    );
}

async fn outbox_ack_removes_only_up_to_and_only_that_link(store: &dyn Store) {
    let mut remote = Vec::new();
    let mut remote2 = Vec::new();
    let mut local2 = Vec::new();
    for i in 0..4 {
        remote.push(
            store
                .outbox_push(LOCAL, REMOTE, &format!("<r{i}/>"), T0, 10)
                .await
                .unwrap(),
        );
        remote2.push(
            store
                .outbox_push(LOCAL, REMOTE2, &format!("<s{i}/>"), T0, 10)
                .await
                .unwrap(),
        );
        local2.push(
            store
                .outbox_push(LOCAL2, REMOTE, &format!("<l{i}/>"), T0, 10)
                .await
                .unwrap(),
        );
    }

    // Up to the link's second stanza: the other links have smaller ids, which must stay.
    assert_eq!(
        store
            .outbox_ack(LOCAL, REMOTE, remote[1], T0 + 10)
            .await
            .unwrap(),
        2
    );
    let left = store.outbox_peek(LOCAL, REMOTE, None, 10).await.unwrap();
    assert_eq!(outbox_ids(&left), remote[2..]);
    assert_eq!(outbox_stanzas(&left), ["<r2/>", "<r3/>"]);
    assert_eq!(
        outbox_ids(&store.outbox_peek(LOCAL, REMOTE2, None, 10).await.unwrap()),
        remote2
    );
    assert_eq!(
        outbox_ids(&store.outbox_peek(LOCAL2, REMOTE, None, 10).await.unwrap()),
        local2
    );
    assert_eq!(
        store.outbox_stats().await.unwrap(),
        vec![
            link_stats(LOCAL, REMOTE2, 4, Some(T0), None),
            link_stats(LOCAL2, REMOTE, 4, Some(T0), None),
            link_stats(LOCAL, REMOTE, 2, Some(T0), Some(T0 + 10)),
        ]
    );

    // An id between two of the link's stanzas removes only those at or below it.
    assert_eq!(
        store
            .outbox_ack(LOCAL, REMOTE2, remote[2], T0 + 20)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        outbox_stanzas(&store.outbox_peek(LOCAL, REMOTE2, None, 10).await.unwrap()),
        ["<s2/>", "<s3/>"]
    );

    // Acknowledging nothing new (a repeated or stale acknowledgement) removes nothing and
    // is not a delivery: the last delivery stays where it was.
    assert_eq!(
        store
            .outbox_ack(LOCAL, REMOTE, remote[1], T0 + 30)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store.outbox_ack(LOCAL, REMOTE, 0, T0 + 30).await.unwrap(),
        0
    );
    // Nor does acknowledging on a link that never had anything queued create it.
    assert_eq!(
        store
            .outbox_ack(LOCAL2, REMOTE2, i64::MAX, T0 + 30)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store.outbox_stats().await.unwrap(),
        vec![
            link_stats(LOCAL, REMOTE2, 2, Some(T0), Some(T0 + 20)),
            link_stats(LOCAL2, REMOTE, 4, Some(T0), None),
            link_stats(LOCAL, REMOTE, 2, Some(T0), Some(T0 + 10)),
        ]
    );

    // The last delivery never goes back, even if the clock does.
    assert_eq!(
        store
            .outbox_ack(LOCAL, REMOTE, remote[2], T0 + 5)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.outbox_stats().await.unwrap()[2],
        link_stats(LOCAL, REMOTE, 1, Some(T0), Some(T0 + 10))
    );
    assert_eq!(
        store
            .outbox_ack(LOCAL, REMOTE, remote[3], T0 + 40)
            .await
            .unwrap(),
        1
    );
    assert!(
        store
            .outbox_peek(LOCAL, REMOTE, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.outbox_stats().await.unwrap()[2],
        link_stats(LOCAL, REMOTE, 0, None, Some(T0 + 40))
    );
}

async fn outbox_quota_is_per_link(store: &dyn Store) {
    let first = store
        .outbox_push(LOCAL, REMOTE, "<one/>", T0, 2)
        .await
        .unwrap();
    store
        .outbox_push(LOCAL, REMOTE, "<two/>", T0, 2)
        .await
        .unwrap();
    let err = store
        .outbox_push(LOCAL, REMOTE, "<three/>", T0, 2)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::QuotaExceeded { quota: 2 }),
        "{err:?}"
    );
    assert_eq!(
        outbox_stanzas(&store.outbox_peek(LOCAL, REMOTE, None, 10).await.unwrap()),
        ["<one/>", "<two/>"]
    );

    // The quota is per link: another peer, or another of our domains, has room.
    store
        .outbox_push(LOCAL, REMOTE2, "<elsewhere/>", T0, 2)
        .await
        .unwrap();
    store
        .outbox_push(LOCAL2, REMOTE, "<from-chat/>", T0, 2)
        .await
        .unwrap();

    // A quota of zero refuses everything, and the refusal leaves no trace.
    let err = store
        .outbox_push(LOCAL2, REMOTE2, "<no/>", T0, 0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::QuotaExceeded { quota: 0 }),
        "{err:?}"
    );
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!(stats.len(), 3, "{stats:?}");
    assert!(
        !stats
            .iter()
            .any(|s| s.local_domain == LOCAL2 && s.remote_domain == REMOTE2),
        "{stats:?}"
    );

    // Acknowledging makes room again; a larger quota lets more in.
    store
        .outbox_ack(LOCAL, REMOTE, first, T0 + 1)
        .await
        .unwrap();
    store
        .outbox_push(LOCAL, REMOTE, "<three/>", T0, 2)
        .await
        .unwrap();
    store
        .outbox_push(LOCAL, REMOTE, "<four/>", T0, 3)
        .await
        .unwrap();
    assert_eq!(
        outbox_stanzas(&store.outbox_peek(LOCAL, REMOTE, None, 10).await.unwrap()),
        ["<two/>", "<three/>", "<four/>"]
    );
}

async fn outbox_expire_returns_exactly_the_old_entries(store: &dyn Store) {
    const LIFETIME: i64 = 7 * DAY_MS;
    let now = T0 + 10 * DAY_MS;
    let cutoff = now - LIFETIME;
    // (link, queued at, expired by `now`?)
    let plan = [
        ((LOCAL, REMOTE), cutoff - DAY_MS, true),
        ((LOCAL, REMOTE2), cutoff + 1, false),
        ((LOCAL, REMOTE), cutoff, true),
        ((LOCAL2, REMOTE), cutoff - 1, true),
        ((LOCAL, REMOTE), cutoff + 1, false),
        // The clock went back: queued later, yet earlier than the stanza before it.
        ((LOCAL, REMOTE), cutoff - 2, true),
        ((LOCAL2, REMOTE), now, false),
    ];
    let mut expected_expired = Vec::new();
    let mut expected_kept = Vec::new();
    for (i, ((local, remote), at, expires)) in plan.into_iter().enumerate() {
        let stanza = format!("<m{i}/>");
        let id = store
            .outbox_push(local, remote, &stanza, at, 100)
            .await
            .unwrap();
        let entry = OutboxEntry {
            id,
            local_domain: local.to_owned(),
            remote_domain: remote.to_owned(),
            stanza,
            queued_at_ms: at,
        };
        if expires {
            expected_expired.push(entry);
        } else {
            expected_kept.push(entry);
        }
    }

    // Nothing has lived its lifetime a day before the first one does.
    assert!(
        store
            .outbox_expire(cutoff - 2 * DAY_MS + LIFETIME, LIFETIME, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // With a limit, the lowest ids go first; the next call takes the rest.
    let first = store.outbox_expire(now, LIFETIME, 2).await.unwrap();
    assert_eq!(first, expected_expired[..2]);
    let rest = store.outbox_expire(now, LIFETIME, 100).await.unwrap();
    assert_eq!(rest, expected_expired[2..]);
    assert!(
        store
            .outbox_expire(now, LIFETIME, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // Exactly the young ones are left, each on its link and in order.
    let mut left = Vec::new();
    for (local, remote) in [(LOCAL, REMOTE), (LOCAL, REMOTE2), (LOCAL2, REMOTE)] {
        left.extend(store.outbox_peek(local, remote, None, 100).await.unwrap());
    }
    left.sort_by_key(|e| e.id);
    assert_eq!(left, expected_kept);
    assert_eq!(
        store.outbox_stats().await.unwrap(),
        vec![
            link_stats(LOCAL, REMOTE2, 1, Some(cutoff + 1), None),
            link_stats(LOCAL2, REMOTE, 1, Some(now), None),
            link_stats(LOCAL, REMOTE, 1, Some(cutoff + 1), None),
        ]
    );

    // A limit of zero expires nothing; one millisecond later the next two are due.
    assert!(
        store
            .outbox_expire(now + 1, LIFETIME, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.outbox_expire(now + 1, LIFETIME, 100).await.unwrap(),
        expected_kept[..2]
    );
    // A link emptied by expiry, having never delivered, is no longer listed.
    assert_eq!(
        store.outbox_stats().await.unwrap(),
        vec![link_stats(LOCAL2, REMOTE, 1, Some(now), None)]
    );
}

async fn outbox_stats_report_every_link(store: &dyn Store) {
    assert!(store.outbox_stats().await.unwrap().is_empty());

    // The oldest is the earliest time, not the first pushed: the clock can go back.
    let r1 = store
        .outbox_push(LOCAL, REMOTE, "<r1/>", T0 + 100, 10)
        .await
        .unwrap();
    store
        .outbox_push(LOCAL, REMOTE, "<r2/>", T0 + 50, 10)
        .await
        .unwrap();
    store
        .outbox_push(LOCAL, REMOTE, "<r3/>", T0 + 200, 10)
        .await
        .unwrap();
    let s1 = store
        .outbox_push(LOCAL, REMOTE2, "<s1/>", T0 + 300, 10)
        .await
        .unwrap();
    store
        .outbox_push(LOCAL2, REMOTE2, "<l1/>", T0 + 400, 10)
        .await
        .unwrap();

    // Sorted by remote domain, then local domain.
    assert_eq!(
        store.outbox_stats().await.unwrap(),
        vec![
            link_stats(LOCAL2, REMOTE2, 1, Some(T0 + 400), None),
            link_stats(LOCAL, REMOTE2, 1, Some(T0 + 300), None),
            link_stats(LOCAL, REMOTE, 3, Some(T0 + 50), None),
        ]
    );

    store
        .outbox_ack(LOCAL, REMOTE, r1, T0 + 1000)
        .await
        .unwrap();
    store
        .outbox_ack(LOCAL, REMOTE2, s1, T0 + 2000)
        .await
        .unwrap();
    // A link with nothing queued but a delivery on record is still listed.
    assert_eq!(
        store.outbox_stats().await.unwrap(),
        vec![
            link_stats(LOCAL2, REMOTE2, 1, Some(T0 + 400), None),
            link_stats(LOCAL, REMOTE2, 0, None, Some(T0 + 2000)),
            link_stats(LOCAL, REMOTE, 2, Some(T0 + 50), Some(T0 + 1000)),
        ]
    );

    // Queuing again on a link that had emptied counts from the new stanza.
    store
        .outbox_push(LOCAL, REMOTE2, "<s2/>", T0 + 3000, 10)
        .await
        .unwrap();
    assert_eq!(
        store.outbox_stats().await.unwrap()[1],
        link_stats(LOCAL, REMOTE2, 1, Some(T0 + 3000), Some(T0 + 2000))
    );

    // Expiring everything leaves the links that delivered, with their last delivery.
    let expired = store.outbox_expire(T0 + 3000, 0, 100).await.unwrap();
    assert_eq!(expired.len(), 4, "{expired:?}");
    assert_eq!(
        store.outbox_stats().await.unwrap(),
        vec![
            link_stats(LOCAL, REMOTE2, 0, None, Some(T0 + 2000)),
            link_stats(LOCAL, REMOTE, 0, None, Some(T0 + 1000)),
        ]
    );
}

async fn seen_stanza_ids_detect_duplicates(store: &dyn Store) {
    const ORIGIN: &str = "bob@example.net";
    const OTHER: &str = "example.net";
    assert!(!store.stanza_id_seen(ORIGIN, "id-1").await.unwrap());
    assert!(!store.seen_stanza_id(ORIGIN, "id-1", T0).await.unwrap());
    // Looking does not record, recording is what looking finds.
    assert!(store.stanza_id_seen(ORIGIN, "id-1").await.unwrap());
    assert!(!store.stanza_id_seen(OTHER, "id-1").await.unwrap());
    assert!(store.seen_stanza_id(ORIGIN, "id-1", T0 + 1).await.unwrap());
    assert!(store.seen_stanza_id(ORIGIN, "id-1", T0 + 2).await.unwrap());

    // Another id from the same origin, or the same id from another origin, is new.
    assert!(!store.seen_stanza_id(ORIGIN, "id-2", T0).await.unwrap());
    assert!(!store.seen_stanza_id(OTHER, "id-1", T0).await.unwrap());
    assert!(!store.seen_stanza_id(ALICE, "id-1", T0).await.unwrap());
    assert!(store.seen_stanza_id(OTHER, "id-1", T0).await.unwrap());

    // Ids are compared exactly: no case folding, no trimming, the empty id included.
    assert!(!store.seen_stanza_id(ORIGIN, "ID-1", T0).await.unwrap());
    assert!(!store.seen_stanza_id(ORIGIN, "id-1 ", T0).await.unwrap());
    assert!(!store.seen_stanza_id(ORIGIN, "", T0).await.unwrap());
    assert!(store.seen_stanza_id(ORIGIN, "", T0).await.unwrap());
}

async fn batch_writes_in_order_within_quotas(store: &dyn Store) {
    const QUOTAS: Quotas = Quotas {
        offline: 2,
        outbox: 3,
    };
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store
        .outbox_push(LOCAL, REMOTE, "<m0/>", T0, 3)
        .await
        .unwrap();
    store.push_offline(ALICE, "<o0/>", 2).await.unwrap();
    let push = |local: &str, remote: &str, stanza: &str| {
        BatchWrite::Outbox(OutboxPush {
            local: local.to_owned(),
            remote: remote.to_owned(),
            stanza: stanza.to_owned(),
        })
    };
    let offline = |user: &str, stanza: &str| BatchWrite::Offline {
        user: user.to_owned(),
        stanza: stanza.to_owned(),
    };
    let batch = [
        push(LOCAL, REMOTE, "<m1/>"),
        offline(ALICE, "<o1/>"),
        BatchWrite::Archive(archived(T0 + 5, ALICE, BOB, "<a1/>")),
        push(LOCAL, REMOTE2, "<n1/>"),
        push(LOCAL, REMOTE, "<m2/>"),
        // REMOTE holds three now: this one is over the quota, the next link is not.
        push(LOCAL, REMOTE, "<m3/>"),
        // ALICE's queue is full, and NOBODY has no account: both fail alone.
        offline(ALICE, "<o2/>"),
        offline(NOBODY, "<x/>"),
        push(LOCAL, REMOTE2, "<n2/>"),
    ];
    let results = store.write_batch(&batch, T0 + 1, QUOTAS).await.unwrap();
    assert_eq!(results.len(), batch.len());
    assert!(matches!(
        results[5],
        Err(StoreError::QuotaExceeded { quota: 3 })
    ));
    assert!(matches!(
        results[6],
        Err(StoreError::QuotaExceeded { quota: 2 })
    ));
    assert!(matches!(results[7], Err(StoreError::NoSuchAccount)));
    assert_eq!(*results[2].as_ref().unwrap(), T0 + 5);
    let outbox: Vec<i64> = [0, 3, 4, 8]
        .iter()
        .map(|&i| *results[i].as_ref().unwrap())
        .collect();
    assert!(outbox.windows(2).all(|w| w[0] < w[1]), "{outbox:?}");
    let queued = store.outbox_peek(LOCAL, REMOTE, None, 10).await.unwrap();
    assert_eq!(outbox_stanzas(&queued), ["<m0/>", "<m1/>", "<m2/>"]);
    let queued = store.outbox_peek(LOCAL, REMOTE2, None, 10).await.unwrap();
    assert_eq!(outbox_stanzas(&queued), ["<n1/>", "<n2/>"]);
    assert!(queued.iter().all(|e| e.queued_at_ms == T0 + 1));
    let held = store.offline(ALICE, 10).await.unwrap();
    assert_eq!(stanzas(&held), ["<o0/>", "<o1/>"]);
    assert_eq!(held[1].id, *results[1].as_ref().unwrap());
    assert!(store.archive_has(ALICE, T0 + 5).await.unwrap());
    assert!(store.write_batch(&[], T0, QUOTAS).await.unwrap().is_empty());

    // More rows than one statement takes keep their order and ids.
    let many: Vec<BatchWrite> = (0..600)
        .map(|i| push(LOCAL2, REMOTE, &format!("<b{i}/>")))
        .collect();
    let quotas = Quotas {
        offline: 10,
        outbox: 1000,
    };
    let results = store.write_batch(&many, T0 + 2, quotas).await.unwrap();
    let ids: Vec<i64> = results.into_iter().map(|r| r.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let queued = store.outbox_peek(LOCAL2, REMOTE, None, 1000).await.unwrap();
    assert_eq!(outbox_ids(&queued), ids);
    assert_eq!(queued[599].stanza, "<b599/>");
}

/// A message between two local users, in both archives.
pub(crate) fn archived(id: i64, sender: &str, recipient: &str, stanza: &str) -> ArchiveEntry {
    ArchiveEntry {
        id,
        sender: sender.to_owned(),
        recipient: recipient.to_owned(),
        in_sender: true,
        in_recipient: true,
        stanza: stanza.to_owned(),
    }
}

/// Records `(origin, id)` pairs through the group commit, as the server does.
async fn record_seen(store: &dyn Store, pairs: &[(String, String)], now_ms: i64) {
    let writes: Vec<BatchWrite> = pairs
        .iter()
        .map(|(origin, id)| BatchWrite::Seen {
            origin: origin.clone(),
            id: id.clone(),
        })
        .collect();
    let quotas = Quotas {
        offline: 1,
        outbox: 1,
    };
    for r in store.write_batch(&writes, now_ms, quotas).await.unwrap() {
        assert_eq!(r.unwrap(), 0);
    }
}

async fn seen_stanza_ids_batch_records_every_pair(store: &dyn Store) {
    assert!(!store.seen_stanza_id(REMOTE, "old", T0).await.unwrap());
    let pairs: Vec<(String, String)> = [
        (REMOTE, "old"),
        (REMOTE, "a"),
        (REMOTE2, "a"),
        (REMOTE, "b"),
    ]
    .iter()
    .map(|(o, i)| ((*o).to_owned(), (*i).to_owned()))
    .collect();
    record_seen(store, &pairs, T0 + 10).await;
    for (origin, id) in &pairs {
        assert!(
            store.stanza_id_seen(origin, id).await.unwrap(),
            "{origin} {id}"
        );
    }
    assert!(!store.stanza_id_seen(REMOTE2, "b").await.unwrap());
    let asked: Vec<(String, String)> =
        [(REMOTE, "a"), (REMOTE2, "b"), (REMOTE2, "a"), (ALICE, "a")]
            .iter()
            .map(|(o, i)| ((*o).to_owned(), (*i).to_owned()))
            .collect();
    assert_eq!(
        store.stanza_ids_seen(&asked).await.unwrap(),
        [true, false, true, false]
    );
    assert!(store.stanza_ids_seen(&[]).await.unwrap().is_empty());
    // More pairs than one statement takes.
    let many: Vec<(String, String)> = (0..600)
        .map(|i| (REMOTE.to_owned(), format!("m{i}")))
        .collect();
    record_seen(store, &many[..300], T0 + 10).await;
    let seen = store.stanza_ids_seen(&many).await.unwrap();
    assert!(seen[..300].iter().all(|s| *s) && seen[300..].iter().all(|s| !*s));
    // The batch refreshed the old record: pruning before T0 + 10 keeps it.
    assert_eq!(store.prune_seen(T0 + 5).await.unwrap(), 0);
    record_seen(store, &[], T0).await;
}

async fn prune_seen_forgets_only_old_ids(store: &dyn Store) {
    assert_eq!(store.prune_seen(T0).await.unwrap(), 0);
    for (id, at) in [("a", T0), ("b", T0 + 10), ("c", T0 + 20), ("d", T0 + 30)] {
        assert!(!store.seen_stanza_id(REMOTE, id, at).await.unwrap());
    }
    // Seeing "a" again refreshes it: a peer still retrying is still recognised.
    assert!(store.seen_stanza_id(REMOTE, "a", T0 + 25).await.unwrap());
    // A duplicate seen with an older clock does not make the record older.
    assert!(store.seen_stanza_id(REMOTE, "d", T0).await.unwrap());

    // Strictly before the cutoff goes: "b" (T0 + 10) and "c" (T0 + 20) but not "a" (T0 + 25)
    // nor "d" (T0 + 30).
    assert_eq!(store.prune_seen(T0 + 21).await.unwrap(), 2);
    assert_eq!(store.prune_seen(T0 + 21).await.unwrap(), 0);
    assert!(store.seen_stanza_id(REMOTE, "a", T0 + 40).await.unwrap());
    assert!(store.seen_stanza_id(REMOTE, "d", T0 + 40).await.unwrap());
    // Forgotten ids are new again.
    assert!(!store.seen_stanza_id(REMOTE, "b", T0 + 40).await.unwrap());
    assert!(!store.seen_stanza_id(REMOTE, "c", T0 + 40).await.unwrap());

    // Everything seen at T0 + 40 stays when the cutoff is T0 + 40.
    assert_eq!(store.prune_seen(T0 + 40).await.unwrap(), 0);
    assert_eq!(store.prune_seen(T0 + 41).await.unwrap(), 4);
    assert!(!store.seen_stanza_id(REMOTE, "a", T0 + 50).await.unwrap());
}

// ---- concurrency, for every backend ----

/// Many tasks pushing at once into one queue must never get past the quota together.
async fn concurrent_pushes_respect_quota(store: Arc<dyn Store>) {
    const QUOTA: u32 = 10;
    const TASKS: usize = 64;
    store.create_account(ALICE, &creds(1)).await.unwrap();
    // Start with some messages already queued so the check is not only against zero.
    for i in 0..3 {
        store
            .push_offline(ALICE, &format!("<pre{i}/>"), QUOTA)
            .await
            .unwrap();
    }

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.spawn(async move { store.push_offline(ALICE, &format!("<m{i}/>"), QUOTA).await });
    }
    let mut accepted = Vec::new();
    let mut refused = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task did not panic") {
            Ok(id) => accepted.push(id),
            Err(StoreError::QuotaExceeded { quota: QUOTA }) => refused += 1,
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(accepted.len(), QUOTA as usize - 3);
    assert_eq!(refused, TASKS - accepted.len());
    assert_eq!(store.count_offline(ALICE).await.unwrap(), u64::from(QUOTA));

    // Every accepted id is in the queue, in id order.
    accepted.sort_unstable();
    let queued = store.offline(ALICE, 100).await.unwrap();
    let queued_ids: Vec<i64> = queued.iter().map(|m| m.id).collect();
    assert_eq!(queued_ids[3..], accepted[..]);
    assert!(queued_ids.windows(2).all(|w| w[0] < w[1]));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_concurrent_pushes_respect_quota() {
    concurrent_pushes_respect_quota(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_pushes_respect_quota() {
    let (_dir, store) = sqlite_store().await;
    concurrent_pushes_respect_quota(Arc::new(store)).await;
}

/// The outbox quota holds under concurrent pushes too, and on one link only.
async fn concurrent_outbox_pushes_respect_quota(store: Arc<dyn Store>) {
    const QUOTA: u32 = 10;
    const TASKS: usize = 64;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..TASKS {
        let store = Arc::clone(&store);
        // Every fourth push goes to another peer, whose queue has room of its own.
        let remote = if i % 4 == 0 { REMOTE2 } else { REMOTE };
        tasks.spawn(async move {
            let stanza = format!("<m{i}/>");
            (
                remote,
                store.outbox_push(LOCAL, remote, &stanza, T0, QUOTA).await,
            )
        });
    }
    let mut accepted = Vec::new();
    let mut refused = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task did not panic") {
            (remote, Ok(id)) => accepted.push((remote, id)),
            (_, Err(StoreError::QuotaExceeded { quota: QUOTA })) => refused += 1,
            (_, Err(other)) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(accepted.len(), 2 * QUOTA as usize);
    assert_eq!(refused, TASKS - accepted.len());
    for remote in [REMOTE, REMOTE2] {
        let mut ids: Vec<i64> = accepted
            .iter()
            .filter(|&&(r, _)| r == remote)
            .map(|&(_, id)| id)
            .collect();
        ids.sort_unstable();
        let queued = store.outbox_peek(LOCAL, remote, None, 100).await.unwrap();
        assert_eq!(outbox_ids(&queued), ids);
    }
    store.close().await;
}

/// Of many concurrent sightings of one stanza id, exactly one is the first.
async fn concurrent_sightings_have_one_first(store: Arc<dyn Store>) {
    const TASKS: usize = 32;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..TASKS {
        let store = Arc::clone(&store);
        // Two ids, seen by half the tasks each.
        let id = if i % 2 == 0 { "even" } else { "odd" };
        tasks.spawn(async move { (id, store.seen_stanza_id(REMOTE, id, T0).await) });
    }
    let mut firsts = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (id, duplicate) = joined.expect("task did not panic");
        if !duplicate.unwrap() {
            firsts.push(id);
        }
    }
    firsts.sort_unstable();
    assert_eq!(firsts, ["even", "odd"]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_pushes_respect_quota() {
    let (db, store) = crate::postgres::pg_store().await;
    concurrent_pushes_respect_quota(Arc::new(store)).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_concurrent_outbox_pushes_respect_quota() {
    concurrent_outbox_pushes_respect_quota(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_outbox_pushes_respect_quota() {
    let (_dir, store) = sqlite_store().await;
    concurrent_outbox_pushes_respect_quota(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_outbox_pushes_respect_quota() {
    let (db, store) = crate::postgres::pg_store().await;
    concurrent_outbox_pushes_respect_quota(Arc::new(store)).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_concurrent_sightings_have_one_first() {
    concurrent_sightings_have_one_first(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_sightings_have_one_first() {
    let (_dir, store) = sqlite_store().await;
    concurrent_sightings_have_one_first(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_sightings_have_one_first() {
    let (db, store) = crate::postgres::pg_store().await;
    concurrent_sightings_have_one_first(Arc::new(store)).await;
    db.drop().await;
}

// ---- durability: SQLite and PostgreSQL ----

/// The ids `write_everything` was given, which reopening must find again.
#[derive(Debug, PartialEq)]
pub(crate) struct Written {
    offline: Vec<i64>,
    outbox: Vec<i64>,
}

impl Written {
    /// `1,2,3;4,5`: how the child process of the kill test reports them.
    fn to_line(&self) -> String {
        let join = |ids: &[i64]| ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        format!("{};{}", join(&self.offline), join(&self.outbox))
    }

    fn from_line(line: &str) -> Written {
        let parse = |ids: &str| -> Vec<i64> {
            ids.split(',')
                .map(|id| id.parse().expect("an id"))
                .collect()
        };
        let (offline, outbox) = line.split_once(';').expect("two lists");
        Written {
            offline: parse(offline),
            outbox: parse(outbox),
        }
    }
}

/// Writes one of everything, so that reopening can check it all came back.
pub(crate) async fn write_everything(store: &dyn Store) -> Written {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.create_account(BOB, &creds(2)).await.unwrap();
    let mut item = RosterItem::new(BOB);
    item.name = Some("Bob".to_owned());
    item.subscription = Subscription::From;
    item.ask = true;
    item.approved = true;
    item.groups = strings(&["Friends", "Work"]);
    store.put_roster_item(ALICE, &item).await.unwrap();
    store
        .put_roster_item(ALICE, &RosterItem::new(CAROL))
        .await
        .unwrap();
    store
        .put_subscription_request(ALICE, &request(CAROL, "<carol/>"))
        .await
        .unwrap();
    store
        .put_subscription_request(ALICE, &request(BOB, "<bob/>"))
        .await
        .unwrap();
    let mut offline = Vec::new();
    for stanza in ["<m1/>", "<m2/>", "<m3/>"] {
        offline.push(store.push_offline(ALICE, stanza, 10).await.unwrap());
    }
    store.set_vcard(ALICE, "<vCard/>").await.unwrap();
    store
        .block(ALICE, &strings(&["x@example.net", "w@example.net"]))
        .await
        .unwrap();
    // Four stanzas for a peer, of which it acknowledged the first, and one for another.
    let mut outbox = Vec::new();
    for (i, remote) in [REMOTE, REMOTE, REMOTE2, REMOTE, REMOTE]
        .into_iter()
        .enumerate()
    {
        let stanza = format!("<s{i}/>");
        let at = T0 + i64::try_from(i).unwrap();
        outbox.push(
            store
                .outbox_push(LOCAL, remote, &stanza, at, 10)
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        store
            .outbox_ack(LOCAL, REMOTE, outbox[0], T0 + 10)
            .await
            .unwrap(),
        1
    );
    assert!(!store.seen_stanza_id(REMOTE, "seen-1", T0).await.unwrap());
    let quotas = Quotas {
        offline: 10,
        outbox: 10,
    };
    store
        .write_batch(
            &[BatchWrite::Archive(archived(T0, ALICE, BOB, "<hi/>"))],
            T0,
            quotas,
        )
        .await
        .unwrap();
    store
        .set_archive_prefs(ALICE, &prefs(ArchiveDefault::Roster, &[BOB], &[CAROL]))
        .await
        .unwrap();
    Written { offline, outbox }
}

async fn check_everything(store: &dyn Store, written: &Written) {
    let ids = &written.offline;
    assert_eq!(store.list_accounts().await.unwrap(), strings(&[ALICE, BOB]));
    assert_eq!(store.credentials(ALICE).await.unwrap(), Some(creds(1)));
    assert_eq!(store.credentials(BOB).await.unwrap(), Some(creds(2)));
    let roster = store.roster(ALICE).await.unwrap();
    assert_eq!(roster.version, 2);
    assert_eq!(
        roster.items,
        vec![
            RosterItem {
                jid: BOB.to_owned(),
                name: Some("Bob".to_owned()),
                subscription: Subscription::From,
                ask: true,
                approved: true,
                groups: strings(&["Friends", "Work"]),
            },
            RosterItem::new(CAROL),
        ]
    );
    assert_eq!(
        store.subscription_requests(ALICE).await.unwrap(),
        vec![request(CAROL, "<carol/>"), request(BOB, "<bob/>")]
    );
    let offline = store.offline(ALICE, 10).await.unwrap();
    assert_eq!(offline.iter().map(|m| m.id).collect::<Vec<_>>(), *ids);
    assert_eq!(stanzas(&offline), ["<m1/>", "<m2/>", "<m3/>"]);
    assert_eq!(
        store.vcard(ALICE).await.unwrap().as_deref(),
        Some("<vCard/>")
    );
    assert_eq!(
        store.blocklist(ALICE).await.unwrap(),
        strings(&["w@example.net", "x@example.net"])
    );
    let ids = &written.outbox;
    assert_eq!(
        store.outbox_peek(LOCAL, REMOTE, None, 10).await.unwrap(),
        [(ids[1], 1), (ids[3], 3), (ids[4], 4)]
            .into_iter()
            .map(|(id, i)| OutboxEntry {
                id,
                local_domain: LOCAL.to_owned(),
                remote_domain: REMOTE.to_owned(),
                stanza: format!("<s{i}/>"),
                queued_at_ms: T0 + i,
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(
        outbox_ids(&store.outbox_peek(LOCAL, REMOTE2, None, 10).await.unwrap()),
        [ids[2]]
    );
    assert_eq!(
        store.outbox_stats().await.unwrap(),
        vec![
            link_stats(LOCAL, REMOTE2, 1, Some(T0 + 2), None),
            link_stats(LOCAL, REMOTE, 3, Some(T0 + 1), Some(T0 + 10)),
        ]
    );
    assert!(store.seen_stanza_id(REMOTE, "seen-1", T0).await.unwrap());
    let page = store
        .archive_page(&ArchiveQuery {
            owner: BOB,
            with: None,
            after: None,
            before: None,
            limit: 10,
            newest_first: false,
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!((page[0].id, page[0].stanza.as_str()), (T0, "<hi/>"));
    assert_eq!(store.archive_last_id().await.unwrap(), T0);
    assert_eq!(
        store.archive_prefs(ALICE).await.unwrap(),
        Some(prefs(ArchiveDefault::Roster, &[BOB], &[CAROL]))
    );
}

pub(crate) fn prefs(default: ArchiveDefault, always: &[&str], never: &[&str]) -> ArchivePrefs {
    ArchivePrefs {
        default,
        always: strings(always),
        never: strings(never),
    }
}

async fn reopen(path: &Path) -> SqliteStore {
    SqliteStore::open(path).await.expect("reopen SQLite store")
}

/// Writes everything, closes, opens the store again (with `open`) and finds it all, twice;
/// counters carry on from where they were.
async fn everything_survives_reopen<S, F, Fut>(open: F)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    let store = open().await;
    let written = write_everything(&store).await;
    check_everything(&store, &written).await;
    store.close().await;

    let store = open().await;
    check_everything(&store, &written).await;
    // Empty the queues before closing: the counters must survive that too.
    assert_eq!(
        store
            .put_roster_item(ALICE, &RosterItem::new("dave@example.org"))
            .await
            .unwrap(),
        3
    );
    store.delete_offline(ALICE, i64::MAX).await.unwrap();
    assert_eq!(
        store
            .outbox_ack(LOCAL, REMOTE, i64::MAX, T0 + 20)
            .await
            .unwrap(),
        3
    );
    assert_eq!(store.outbox_expire(T0 + 20, 0, 10).await.unwrap().len(), 1);
    store.close().await;

    let store = open().await;
    counters_carried_on(&store, &written).await;
    store.close().await;
}

async fn counters_carried_on(store: &dyn Store, written: &Written) {
    assert_eq!(store.roster(ALICE).await.unwrap().version, 3);
    assert_eq!(store.count_offline(ALICE).await.unwrap(), 0);
    let ids = &written.offline;
    let next = store.push_offline(ALICE, "<m4/>", 10).await.unwrap();
    assert!(next > ids[2], "{next} after {ids:?}");
    // The emptied link is still listed with its last delivery; the expired one is gone.
    assert_eq!(
        store.outbox_stats().await.unwrap(),
        vec![link_stats(LOCAL, REMOTE, 0, None, Some(T0 + 20))]
    );
    let ids = &written.outbox;
    let next = store
        .outbox_push(LOCAL, REMOTE, "<s5/>", T0 + 30, 10)
        .await
        .unwrap();
    assert!(next > ids[4], "{next} after {ids:?}");
}

#[tokio::test]
async fn sqlite_everything_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outpost.db");
    everything_survives_reopen(|| reopen(&path)).await;
}

/// The same against PostgreSQL: a new pool connected to the same database.
#[tokio::test]
async fn postgres_everything_survives_reconnect() {
    let db = crate::postgres::database().await;
    let url = db.url.clone();
    everything_survives_reopen(|| {
        let url = url.clone();
        async move { PgStore::connect(&url).await.expect("connect again") }
    })
    .await;
    db.drop().await;
}

/// Set in the child process of `sqlite_committed_writes_survive_kill`: the database path.
const CRASH_CHILD_DB: &str = "OUTPOST_STORE_TEST_CRASH_CHILD_DB";
const CRASH_CHILD_READY: &str = "OUTPOST-STORE-READY";

/// The durability promise: a change whose method returned `Ok` is on disk, even if the
/// process is killed the next instant with no chance to close or checkpoint. The test
/// runs itself again as a child process that writes, reports the ids it got, and is then
/// killed with SIGKILL by the parent, which reopens the file and reads everything back.
#[tokio::test]
async fn sqlite_committed_writes_survive_kill() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    if let Some(path) = std::env::var_os(CRASH_CHILD_DB) {
        let store = reopen(Path::new(&path)).await;
        let written = write_everything(&store).await;
        println!("{CRASH_CHILD_READY} {}", written.to_line());
        // Wait, store open, for the parent's SIGKILL; stdin never delivers a line.
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        panic!("the parent should have killed this process");
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outpost.db");
    // The test's name in this binary: its module path without the crate's name.
    let (_crate, module) = module_path!().split_once("::").unwrap();
    let name = format!("{module}::sqlite_committed_writes_survive_kill");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &name, "--nocapture"])
        .env(CRASH_CHILD_DB, &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let ready = stdout
        .lines()
        .map(|line| line.unwrap())
        .find_map(|line| line.strip_prefix(CRASH_CHILD_READY).map(str::to_owned))
        .expect("the child reported its writes");
    let written = Written::from_line(ready.trim());
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");
    // Killed with its connections open, the child never checkpointed: the changes are
    // (at least partly) only in the write-ahead log.
    assert!(dir.path().join("outpost.db-wal").exists());

    let store = reopen(&path).await;
    check_everything(&store, &written).await;
    store.close().await;
}

#[tokio::test]
async fn sqlite_open_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var").join("lib").join("outpost.db");
    let store = reopen(&path).await;
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.close().await;
    assert!(path.is_file());

    let store = reopen(&path).await;
    assert!(store.account_exists(ALICE).await.unwrap());
    store.close().await;
}

async fn offline_owners_are_those_of_the_domain_with_messages(store: &dyn Store) {
    for user in [ALICE, BOB, CAROL, "dave@example.net"] {
        store.create_account(user, &creds(1)).await.unwrap();
    }
    store.push_offline(BOB, "<message/>", 10).await.unwrap();
    store.push_offline(ALICE, "<message/>", 10).await.unwrap();
    store
        .push_offline("dave@example.net", "<message/>", 10)
        .await
        .unwrap();
    assert_eq!(store.offline_owners(LOCAL).await.unwrap(), [ALICE, BOB]);
    let up_to = store.offline(ALICE, 10).await.unwrap()[0].id;
    store.delete_offline(ALICE, up_to).await.unwrap();
    assert_eq!(store.offline_owners(LOCAL).await.unwrap(), [BOB]);
    assert!(
        store
            .offline_owners("chat.example.org")
            .await
            .unwrap()
            .is_empty()
    );
}
