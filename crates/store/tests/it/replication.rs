//! Directory replication from a site's store to a hub's (the log is written by triggers
//! in the same transaction as each change). Each case runs with the site and the hub on
//! SQLite, both on PostgreSQL, and on one of each both ways (`pairs!`): the records are the
//! wire between them, so each backend must read what the other writes.

use outpost_store::{
    AccessModel, ArchiveDefault, ArchiveEntry, ArchivePrefs, ArchiveQuery, BatchWrite, NodeConfig,
    PepItem, Quotas, ReplBatch, ReplKind, ReplMode, ReplRecord, RosterItem, SendLast, Store,
    StoreError, Subscription, SubscriptionRequest,
};

use crate::battery::{creds, sqlite_store};

/// A store's backend in a case.
#[derive(Clone, Copy)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// What keeps a test's store alive: its file's directory, or its database.
#[allow(dead_code)]
enum Keep {
    Dir(tempfile::TempDir),
    Database(crate::postgres::Database),
}

/// A fresh store on `backend`.
async fn open(backend: Backend) -> (Keep, Box<dyn Store>) {
    match backend {
        Backend::Sqlite => {
            let (dir, store) = sqlite_store().await;
            (Keep::Dir(dir), Box::new(store))
        }
        Backend::Postgres => {
            let (db, store) = crate::postgres::pg_store().await;
            (Keep::Database(db), Box::new(store))
        }
    }
}

/// Runs each case, `async fn case(site: Backend, hub: Backend)`, once per pairing.
macro_rules! pairs {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $case() {
                super::$case(super::Backend::Sqlite, super::Backend::Sqlite).await
            } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $case() {
                super::$case(super::Backend::Postgres, super::Backend::Postgres).await
            } )*
        }
        mod sqlite_site_postgres_hub {
            $( #[tokio::test] async fn $case() {
                super::$case(super::Backend::Sqlite, super::Backend::Postgres).await
            } )*
        }
        mod postgres_site_sqlite_hub {
            $( #[tokio::test] async fn $case() {
                super::$case(super::Backend::Postgres, super::Backend::Sqlite).await
            } )*
        }
    };
}

pairs! {
    every_kind_of_record_reaches_the_hub_and_so_do_removals,
    the_log_names_each_change_once_per_batch_with_growing_stamps,
    nothing_is_logged_while_replication_is_off,
    a_snapshot_copies_everything_and_drops_what_the_site_no_longer_has,
    a_batch_that_does_not_follow_the_replica_is_not_applied,
    a_record_the_hub_cannot_store_fails_the_whole_batch,
    after_a_partition_both_sides_hold_the_later_write_of_every_key,
    a_merge_applied_twice_changes_nothing_and_accounts_change_at_home_only,
    a_hub_merges_back_only_what_it_archived_for_a_sites_users,
    offline_messages_are_delivered_once_at_either_side,
}

const ALICE: &str = "alice@site1.test";
const BOB: &str = "bob@site1.test";
const ROOM: &str = "lounge@conference.site1.test";

fn roster_item(jid: &str, groups: &[&str]) -> RosterItem {
    RosterItem {
        jid: jid.to_owned(),
        name: Some("Carol".to_owned()),
        subscription: Subscription::Both,
        ask: false,
        approved: true,
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

fn node() -> NodeConfig {
    NodeConfig {
        access: AccessModel::Open,
        max_items: 5,
        send_last: SendLast::OnSub,
        notify_retract: true,
        title: Some("keys".to_owned()),
    }
}

/// Writes one of everything the directory holds for alice (and a room).
async fn populate(s: &dyn Store) {
    s.create_account(ALICE, &creds(1)).await.unwrap();
    s.create_account(BOB, &creds(2)).await.unwrap();
    s.put_roster_item(
        ALICE,
        &roster_item("carol@site2.test", &["Friends", "Work"]),
    )
    .await
    .unwrap();
    s.put_roster_item(ALICE, &roster_item(BOB, &[]))
        .await
        .unwrap();
    let req = SubscriptionRequest {
        from: "dave@site2.test".to_owned(),
        stanza: "<presence type='subscribe'/>".to_owned(),
    };
    s.put_subscription_request(ALICE, &req).await.unwrap();
    s.set_vcard(ALICE, "<vCard xmlns='vcard-temp'><FN>Alice</FN></vCard>")
        .await
        .unwrap();
    s.block(
        ALICE,
        &[
            "spam@example.org".to_owned(),
            "troll@example.org".to_owned(),
        ],
    )
    .await
    .unwrap();
    s.set_private_xml(
        ALICE,
        "storage:bookmarks",
        "<storage xmlns='storage:bookmarks'/>",
    )
    .await
    .unwrap();
    let prefs = ArchivePrefs {
        default: ArchiveDefault::Roster,
        always: vec![BOB.to_owned()],
        never: vec!["spam@example.org".to_owned()],
    };
    s.set_archive_prefs(ALICE, &prefs).await.unwrap();
    s.pep_configure(ALICE, "urn:xmpp:omemo:2:bundles", &node())
        .await
        .unwrap();
    for (id, payload) in [("1", "<bundle n='1'/>"), ("2", "<bundle n='2'/>")] {
        let item = PepItem {
            id: id.to_owned(),
            payload: payload.to_owned(),
        };
        s.pep_publish(ALICE, "urn:xmpp:omemo:2:bundles", &item)
            .await
            .unwrap();
    }
    s.pep_subscribe(ALICE, "urn:xmpp:omemo:2:bundles", BOB)
        .await
        .unwrap();
    let config = [("name".to_owned(), "Lounge".to_owned())];
    s.muc_save_room(ROOM, &config, 1_000).await.unwrap();
    s.muc_set_affiliation(ROOM, ALICE, Some("owner"), 1_000)
        .await
        .unwrap();
    populate_archive(s).await;
}

/// Two archived messages: alice to bob, carol (of another domain) to alice.
async fn populate_archive(s: &dyn Store) {
    let messages = [(ALICE, BOB, 7_000), ("carol@site2.test", ALICE, 7_001)];
    let writes: Vec<BatchWrite> = messages
        .iter()
        .map(|(from, to, id)| {
            BatchWrite::Archive(ArchiveEntry {
                id: *id,
                sender: (*from).to_owned(),
                recipient: (*to).to_owned(),
                in_sender: from.ends_with("@site1.test"),
                in_recipient: true,
                stanza: format!("<message from='{from}' to='{to}'><body>{id}</body></message>"),
            })
        })
        .collect();
    let quotas = Quotas {
        offline: 10,
        outbox: 10,
    };
    for r in s.write_batch(&writes, 0, quotas).await.unwrap() {
        r.unwrap();
    }
}

fn archive_of(owner: &str) -> ArchiveQuery<'_> {
    ArchiveQuery {
        owner,
        with: None,
        after: None,
        before: None,
        limit: 100,
        newest_first: false,
    }
}

/// Everything `populate` touches, as the store answers for it.
async fn directory(s: &dyn Store) -> String {
    let node = "urn:xmpp:omemo:2:bundles";
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        s.credentials(ALICE).await.unwrap(),
        s.credentials(BOB).await.unwrap(),
        s.roster(ALICE).await.unwrap().items,
        s.subscription_requests(ALICE).await.unwrap(),
        s.vcard(ALICE).await.unwrap(),
        s.blocklist(ALICE).await.unwrap(),
        s.private_xml(ALICE, "storage:bookmarks").await.unwrap(),
        s.archive_prefs(ALICE).await.unwrap(),
        s.pep_nodes(ALICE).await.unwrap(),
        s.pep_items(ALICE, node, None).await.unwrap(),
        s.pep_subscriptions(ALICE).await.unwrap(),
        s.muc_rooms().await.unwrap(),
        s.archive_page(&archive_of(ALICE)).await.unwrap(),
        s.archive_page(&archive_of(BOB)).await.unwrap(),
    )
}

/// Ships everything the site logged after `after` to the hub; returns the new position.
async fn ship(site: &dyn Store, hub: &dyn Store, after: i64, snapshot: bool) -> i64 {
    let log = site.repl_log().await.unwrap();
    let (records, upto) = site.repl_read(after, 10_000).await.unwrap();
    let batch = ReplBatch {
        domain: "site1.test",
        epoch: &log.epoch,
        after,
        upto,
        head: log.last,
        snapshot,
        records: &records,
        now_ms: 5,
    };
    let (applied, origin) = hub.repl_apply(&batch).await.unwrap();
    assert!(applied, "batch after {after} refused: hub at {origin:?}");
    assert_eq!(origin.position, upto);
    site.repl_acked(upto, 5).await.unwrap();
    upto
}

async fn every_kind_of_record_reaches_the_hub_and_so_do_removals(
    site_on: Backend,
    hub_on: Backend,
) {
    let (_d1, site) = open(site_on).await;
    let (_d2, hub) = open(hub_on).await;
    site.repl_activate(ReplMode::Site).await.unwrap();
    populate(&*site).await;
    // A hub that has nothing takes the first batch as a snapshot.
    let position = ship(&*site, &*hub, 0, true).await;
    let (_d3, empty) = open(hub_on).await;
    assert_ne!(directory(&*empty).await, directory(&*site).await);
    assert_eq!(directory(&*hub).await, directory(&*site).await);

    // Changes and removals of each kind.
    site.set_credentials(ALICE, &creds(9)).await.unwrap();
    site.remove_roster_item(ALICE, BOB).await.unwrap();
    site.put_roster_item(ALICE, &roster_item("carol@site2.test", &["Family"]))
        .await
        .unwrap();
    site.remove_subscription_request(ALICE, "dave@site2.test")
        .await
        .unwrap();
    site.unblock(ALICE, &["troll@example.org".to_owned()])
        .await
        .unwrap();
    site.pep_retract(ALICE, "urn:xmpp:omemo:2:bundles", "1")
        .await
        .unwrap();
    site.pep_unsubscribe(ALICE, "urn:xmpp:omemo:2:bundles", BOB)
        .await
        .unwrap();
    site.muc_delete_room(ROOM).await.unwrap();
    site.archive_clear(BOB).await.unwrap();
    let position = ship(&*site, &*hub, position, false).await;
    assert_eq!(directory(&*hub).await, directory(&*site).await);
    assert_eq!(hub.credentials(ALICE).await.unwrap(), Some(creds(9)));

    // The hub's roster version moved, so clients caching the roster see the change.
    assert!(hub.roster(ALICE).await.unwrap().version > 0);

    site.remove_account(ALICE).await.unwrap();
    ship(&*site, &*hub, position, false).await;
    assert!(!hub.account_exists(ALICE).await.unwrap());
    assert!(hub.account_exists(BOB).await.unwrap());
    assert_eq!(directory(&*hub).await, directory(&*site).await);
}

async fn the_log_names_each_change_once_per_batch_with_growing_stamps(
    site_on: Backend,
    _: Backend,
) {
    let (_d, site) = open(site_on).await;
    site.repl_activate(ReplMode::Site).await.unwrap();
    site.create_account(ALICE, &creds(1)).await.unwrap();
    for _ in 0..3 {
        site.set_vcard(ALICE, "<vCard xmlns='vcard-temp'/>")
            .await
            .unwrap();
    }
    let log = site.repl_log().await.unwrap();
    let (records, upto) = site.repl_read(0, 100).await.unwrap();
    assert_eq!(upto, log.last);
    let kinds: Vec<ReplKind> = records.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [ReplKind::Account, ReplKind::Vcard]);
    // The vCard's record is its last write; the entries of its earlier writes are left
    // out, superseded.
    assert_eq!(records[1].seq, log.last);
    let (first, _) = site.repl_read(0, 2).await.unwrap();
    assert_eq!(first, records[..1]);
    assert!(records[0].stamp < records[1].stamp);

    // Acknowledged entries leave the log.
    site.repl_acked(upto, 1).await.unwrap();
    let log = site.repl_log().await.unwrap();
    assert_eq!((log.acked, log.first), (upto, upto + 1));
    assert!(site.repl_read(upto, 100).await.unwrap().0.is_empty());
}

async fn nothing_is_logged_while_replication_is_off(site_on: Backend, _: Backend) {
    let (_d, site) = open(site_on).await;
    site.create_account(ALICE, &creds(1)).await.unwrap();
    assert!(site.repl_read(0, 100).await.unwrap().0.is_empty());
    let on = site.repl_activate(ReplMode::Site).await.unwrap();
    assert!(on.active && !on.epoch.is_empty());
    // Turning it on again keeps the epoch; off and on makes a new one.
    assert_eq!(
        site.repl_activate(ReplMode::Site).await.unwrap().epoch,
        on.epoch
    );
    site.repl_activate(ReplMode::Off).await.unwrap();
    // Off, archived messages log nothing either (their triggers are gone).
    populate_archive(&*site).await;
    assert!(site.repl_read(0, 100).await.unwrap().0.is_empty());
    let again = site.repl_activate(ReplMode::Site).await.unwrap();
    assert_ne!(again.epoch, on.epoch);
}

async fn a_snapshot_copies_everything_and_drops_what_the_site_no_longer_has(
    site_on: Backend,
    hub_on: Backend,
) {
    let (_d1, site) = open(site_on).await;
    let (_d2, hub) = open(hub_on).await;
    // Written before replication was on: only a snapshot carries it.
    populate(&*site).await;
    site.repl_activate(ReplMode::Site).await.unwrap();
    // The hub holds an account the site no longer has, and one of another domain.
    hub.create_account("gone@site1.test", &creds(3))
        .await
        .unwrap();
    hub.create_account("hubuser@hub.test", &creds(4))
        .await
        .unwrap();

    let before = site.repl_reseed().await.unwrap();
    ship(&*site, &*hub, before, true).await;
    assert_eq!(directory(&*hub).await, directory(&*site).await);
    assert!(!hub.account_exists("gone@site1.test").await.unwrap());
    assert!(hub.account_exists("hubuser@hub.test").await.unwrap());
    let origin = hub.repl_origin("site1.test").await.unwrap();
    assert_eq!(origin.snapshots, 1);
    assert_eq!(hub.repl_origins().await.unwrap(), vec![origin]);
}

async fn a_batch_that_does_not_follow_the_replica_is_not_applied(
    site_on: Backend,
    hub_on: Backend,
) {
    let (_d1, site) = open(site_on).await;
    let (_d2, hub) = open(hub_on).await;
    site.repl_activate(ReplMode::Site).await.unwrap();
    site.create_account(ALICE, &creds(1)).await.unwrap();
    let epoch = site.repl_log().await.unwrap().epoch;
    let (records, upto) = site.repl_read(0, 100).await.unwrap();
    let batch = |after, epoch| ReplBatch {
        domain: "site1.test",
        epoch,
        after,
        upto,
        head: upto,
        snapshot: false,
        records: &records,
        now_ms: 1,
    };
    // A gap, or another epoch: refused, and the hub says where it stands.
    let (applied, origin) = hub.repl_apply(&batch(upto - 1 + 5, &epoch)).await.unwrap();
    assert!(!applied);
    assert_eq!(origin.position, 0);
    assert!(!hub.account_exists(ALICE).await.unwrap());
    // The hub starts from a snapshot of epoch ""; a batch of the site's epoch from 0 does
    // not follow it either.
    let (applied, _) = hub.repl_apply(&batch(0, &epoch)).await.unwrap();
    assert!(!applied);
    let (applied, _) = hub.repl_apply(&batch(0, "")).await.unwrap();
    assert!(applied);
    // The same batch again: already applied, so refused, and counted once.
    let (applied, origin) = hub.repl_apply(&batch(0, "")).await.unwrap();
    assert!(!applied);
    assert_eq!((origin.position, origin.records), (upto, 1));
}

async fn a_record_the_hub_cannot_store_fails_the_whole_batch(_: Backend, hub_on: Backend) {
    let (_d, hub) = open(hub_on).await;
    let good = ReplRecord {
        seq: 1,
        stamp: 1,
        kind: ReplKind::MucRoom,
        owner: ROOM.to_owned(),
        key: String::new(),
        sub: String::new(),
        value: Some(r#"{"created_ms":1,"config":{},"affiliations":{}}"#.to_owned()),
    };
    let bad = ReplRecord {
        seq: 2,
        kind: ReplKind::Vcard,
        owner: ALICE.to_owned(),
        value: Some("not json".to_owned()),
        ..good.clone()
    };
    let records = [good, bad];
    let batch = ReplBatch {
        domain: "site1.test",
        epoch: "e",
        after: 0,
        upto: 2,
        head: 2,
        snapshot: true,
        records: &records,
        now_ms: 1,
    };
    let err = hub.repl_apply(&batch).await.unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    assert!(hub.muc_rooms().await.unwrap().is_empty());

    // Roster items go in bulk: a value that tries to close the array and add a record of
    // its own is only a malformed value.
    hub.create_account(ALICE, &creds(1)).await.unwrap();
    let sneaky = ReplRecord {
        seq: 1,
        stamp: 1,
        kind: ReplKind::Roster,
        owner: ALICE.to_owned(),
        key: "bob@site2.test".to_owned(),
        sub: String::new(),
        value: Some(
            r#"{"subscription":"both"}"},{"o":"victim@elsewhere","k":"x","v":"{}"#.to_owned(),
        ),
    };
    let records = [sneaky];
    let err = hub
        .repl_apply(&ReplBatch {
            records: &records,
            ..batch
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    assert!(hub.roster(ALICE).await.unwrap().items.is_empty());
    assert!(
        hub.roster("victim@elsewhere")
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(hub.repl_origin("site1.test").await.unwrap().position, 0);
}

/// Writes an archived message at `s` (the hub, standing in), in the recipient's archive.
async fn archive_one(s: &dyn Store, id: i64, from: &str, to: &str) {
    archive_in(s, id, (from, false), (to, true)).await;
}

/// Writes an archived message at `s`: each end with whether its archive holds it.
async fn archive_in(s: &dyn Store, id: i64, from: (&str, bool), to: (&str, bool)) {
    let (from, in_sender) = from;
    let (to, in_recipient) = to;
    let write = BatchWrite::Archive(ArchiveEntry {
        id,
        sender: from.to_owned(),
        recipient: to.to_owned(),
        in_sender,
        in_recipient,
        stanza: format!("<message from='{from}' to='{to}'><body>{id}</body></message>"),
    });
    let quotas = Quotas {
        offline: 10,
        outbox: 10,
    };
    for r in s.write_batch(&[write], 0, quotas).await.unwrap() {
        r.unwrap();
    }
}

/// The stamp `records` carry for `kind` of alice's.
fn stamp_of(records: &[ReplRecord], kind: ReplKind) -> i64 {
    records
        .iter()
        .find(|r| r.kind == kind && r.owner == ALICE)
        .unwrap_or_else(|| panic!("no {kind:?} in {records:?}"))
        .stamp
}

/// During a partition: both sides write alice's directory, and bob's account is removed at
/// the site while the hub writes his vCard.
async fn both_write_during_a_partition(site: &dyn Store, hub: &dyn Store) {
    // Both write alice's vCard and bookmarks, in both orders.
    site.set_vcard(ALICE, "<vCard xmlns='vcard-temp'><FN>site</FN></vCard>")
        .await
        .unwrap();
    hub.set_vcard(ALICE, "<vCard xmlns='vcard-temp'><FN>hub</FN></vCard>")
        .await
        .unwrap();
    let bookmarks =
        |by: &str| format!("<storage xmlns='storage:bookmarks'><by>{by}</by></storage>");
    hub.set_private_xml(ALICE, "storage:bookmarks", &bookmarks("hub"))
        .await
        .unwrap();
    site.set_private_xml(ALICE, "storage:bookmarks", &bookmarks("site"))
        .await
        .unwrap();
    // The hub adds a contact and removes one, blocks someone; the site unblocks someone.
    hub.put_roster_item(ALICE, &roster_item("erin@site2.test", &["New"]))
        .await
        .unwrap();
    hub.remove_roster_item(ALICE, "carol@site2.test")
        .await
        .unwrap();
    hub.block(ALICE, &["pest@example.org".to_owned()])
        .await
        .unwrap();
    site.unblock(ALICE, &["troll@example.org".to_owned()])
        .await
        .unwrap();
    // Each archives a message of its own; ids do not collide (see `Archive::next_id`).
    archive_one(hub, 9_001, "erin@site2.test", ALICE).await;
    archive_one(site, 9_002, "frank@site2.test", ALICE).await;
    // Bob's account is removed at the site while the hub writes his vCard.
    hub.set_vcard(BOB, "<vCard xmlns='vcard-temp'/>")
        .await
        .unwrap();
    site.remove_account(BOB).await.unwrap();
}

/// Both sides write alice's directory during a partition (she is logged in at the hub;
/// the site goes on too). On heal the site replicates, the hub merges back, and both hold
/// the same: per key the later write, deletions included, the union of the archives.
async fn after_a_partition_both_sides_hold_the_later_write_of_every_key(
    site_on: Backend,
    hub_on: Backend,
) {
    let (_d1, site) = open(site_on).await;
    let (_d2, hub) = open(hub_on).await;
    site.repl_activate(ReplMode::Site).await.unwrap();
    hub.repl_activate(ReplMode::Hub).await.unwrap();
    populate(&*site).await;
    let position = ship(&*site, &*hub, 0, true).await;
    // Nothing the hub applied is its own write.
    assert_eq!(hub.repl_merge_read("site1.test", 100).await.unwrap().0, []);

    both_write_during_a_partition(&*site, &*hub).await;

    // The hub refuses a snapshot while it holds writes of its own for the site.
    let (records, _) = site.repl_read(position, 10_000).await.unwrap();
    let (hub_records, _) = hub.repl_merge_read("site1.test", 10_000).await.unwrap();
    let snapshot = ReplBatch {
        domain: "site1.test",
        epoch: "other",
        after: 0,
        upto: 1,
        head: 1,
        snapshot: true,
        records: &[],
        now_ms: 1,
    };
    let (applied, origin) = hub.repl_apply(&snapshot).await.unwrap();
    assert!(!applied && origin.pending > 0, "{origin:?}");

    // Heal: the site replicates, then the hub merges back.
    let position = ship(&*site, &*hub, position, false).await;
    let (merged, upto) = hub.repl_merge_read("site1.test", 10_000).await.unwrap();
    let lost_at_site = site.repl_merge(&merged).await.unwrap();
    hub.repl_merge_done("site1.test", upto).await.unwrap();
    ship(&*site, &*hub, position, false).await;
    assert_eq!(directory(&*hub).await, directory(&*site).await);

    // Per key, the later stamp won, whichever side wrote it.
    let later = |kind| stamp_of(&hub_records, kind) > stamp_of(&records, kind);
    let vcard = site.vcard(ALICE).await.unwrap().unwrap();
    assert_eq!(vcard.contains("hub"), later(ReplKind::Vcard), "{vcard}");
    let private = site.private_xml(ALICE, "storage:bookmarks").await.unwrap();
    assert_eq!(private.unwrap().contains("hub"), later(ReplKind::Private));
    // The site replicated first, so the hub met both conflicts and merged back only
    // what won.
    assert_eq!(hub.repl_origin("site1.test").await.unwrap().conflicts, 2);
    assert_eq!(lost_at_site, 0);
    assert_eq!(site.repl_log().await.unwrap().conflicts, 0);

    // Nothing resurrected, nothing lost.
    let contacts: Vec<String> = site
        .roster(ALICE)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.jid)
        .collect();
    assert!(
        contacts.contains(&"erin@site2.test".to_owned()),
        "{contacts:?}"
    );
    assert!(
        !contacts.contains(&"carol@site2.test".to_owned()),
        "{contacts:?}"
    );
    assert_eq!(
        site.blocklist(ALICE).await.unwrap(),
        ["pest@example.org", "spam@example.org"]
    );
    let archived: Vec<i64> = site
        .archive_page(&archive_of(ALICE))
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert!(
        archived.contains(&9_001) && archived.contains(&9_002),
        "{archived:?}"
    );
    assert!(!site.account_exists(BOB).await.unwrap());
    assert!(!hub.account_exists(BOB).await.unwrap());
    assert_eq!(hub.repl_origin("site1.test").await.unwrap().pending, 0);

    // The stamps given out from now on are above every stamp received: a change at the
    // site after the merge beats what the hub wrote.
    site.set_vcard(ALICE, "<vCard xmlns='vcard-temp'><FN>after</FN></vCard>")
        .await
        .unwrap();
    let (after, _) = site.repl_read(0, 100).await.unwrap();
    assert!(stamp_of(&after, ReplKind::Vcard) > stamp_of(&hub_records, ReplKind::Vcard));
}

/// The records a hub merges back may repeat, or come after the site changed the key again:
/// applying them twice changes nothing, and an account or room record is refused.
async fn a_merge_applied_twice_changes_nothing_and_accounts_change_at_home_only(
    site_on: Backend,
    hub_on: Backend,
) {
    let (_d1, site) = open(site_on).await;
    let (_d2, hub) = open(hub_on).await;
    site.repl_activate(ReplMode::Site).await.unwrap();
    hub.repl_activate(ReplMode::Hub).await.unwrap();
    populate(&*site).await;
    ship(&*site, &*hub, 0, true).await;
    hub.set_vcard(ALICE, "<vCard xmlns='vcard-temp'><FN>hub</FN></vCard>")
        .await
        .unwrap();
    let (records, _) = hub.repl_merge_read("site1.test", 100).await.unwrap();
    let log = site.repl_log().await.unwrap();
    assert_eq!(site.repl_merge(&records).await.unwrap(), 0);
    // Merged records are not the site's own changes: nothing new to replicate.
    assert_eq!(site.repl_log().await.unwrap().last, log.last);
    let once = directory(&*site).await;
    assert_eq!(site.repl_merge(&records).await.unwrap(), 0);
    assert_eq!(directory(&*site).await, once);
    // Written at the site since: the hub's record loses.
    let later = "<vCard xmlns='vcard-temp'><FN>site</FN></vCard>";
    site.set_vcard(ALICE, later).await.unwrap();
    assert_eq!(site.repl_merge(&records).await.unwrap(), 1);
    assert_eq!(site.vcard(ALICE).await.unwrap().as_deref(), Some(later));

    let account = ReplRecord {
        kind: ReplKind::Account,
        ..records[0].clone()
    };
    let err = site.repl_merge(&[account]).await.unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
}

/// A hub logs for merging back only what it archived for a site's users: not a message a
/// site's user sent to one of the hub's own users outside a standby (only the hub user's
/// archive holds it), nor anything of its own users.
async fn a_hub_merges_back_only_what_it_archived_for_a_sites_users(
    site_on: Backend,
    hub_on: Backend,
) {
    let (_d1, site) = open(site_on).await;
    let (_d2, hub) = open(hub_on).await;
    site.repl_activate(ReplMode::Site).await.unwrap();
    hub.repl_activate(ReplMode::Hub).await.unwrap();
    populate(&*site).await;
    ship(&*site, &*hub, 0, true).await;
    let carol = "carol@hub.test";
    hub.create_account(carol, &creds(5)).await.unwrap();
    archive_in(&*hub, 9_100, (ALICE, false), (carol, true)).await;
    archive_in(&*hub, 9_101, (carol, true), (ALICE, true)).await;
    archive_in(&*hub, 9_102, (ALICE, true), (carol, true)).await;
    archive_in(&*hub, 9_103, (carol, true), ("dave@hub.test", true)).await;
    let (records, _) = hub.repl_merge_read("site1.test", 100).await.unwrap();
    let logged: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.key.as_str(), r.owner.as_str()))
        .collect();
    assert_eq!(logged, [("9101", ALICE), ("9102", ALICE)]);
}

/// The site's offline queue replicates: a message delivered at the hub (the user logged in
/// there) is dropped at the site by the merge, one delivered at the site is dropped at the
/// hub; what the hub stored itself stays apart, for the hand-back.
async fn offline_messages_are_delivered_once_at_either_side(site_on: Backend, hub_on: Backend) {
    let (_d1, site) = open(site_on).await;
    let (_d2, hub) = open(hub_on).await;
    site.repl_activate(ReplMode::Site).await.unwrap();
    hub.repl_activate(ReplMode::Hub).await.unwrap();
    populate(&*site).await;
    let first = site
        .push_offline(BOB, "<message id='1'/>", 10)
        .await
        .unwrap();
    site.push_offline(BOB, "<message id='2'/>", 10)
        .await
        .unwrap();
    let position = ship(&*site, &*hub, 0, true).await;
    let at_hub = hub.offline(BOB, 10).await.unwrap();
    let stanzas: Vec<&str> = at_hub.iter().map(|m| m.stanza.as_str()).collect();
    assert_eq!(stanzas, ["<message id='1'/>", "<message id='2'/>"]);
    // The hub stores one of its own; it is not the site's.
    hub.push_offline(BOB, "<message id='hub'/>", 10)
        .await
        .unwrap();
    let own = hub.offline_own(BOB, 10).await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].stanza, "<message id='hub'/>");
    assert_eq!(hub.offline_owners("site1.test").await.unwrap(), [BOB]);

    // bob, at the hub, gets the first; at home, later, the second.
    hub.delete_offline(BOB, at_hub[0].id).await.unwrap();
    let (merged, upto) = hub.repl_merge_read("site1.test", 100).await.unwrap();
    assert!(
        merged
            .iter()
            .all(|r| r.kind == ReplKind::Offline && r.value.is_none())
    );
    site.repl_merge(&merged).await.unwrap();
    hub.repl_merge_done("site1.test", upto).await.unwrap();
    let left = site.offline(BOB, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].id > first);
    site.delete_offline(BOB, left[0].id).await.unwrap();
    ship(&*site, &*hub, position, false).await;
    let at_hub: Vec<String> = hub
        .offline(BOB, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.stanza)
        .collect();
    assert_eq!(at_hub, ["<message id='hub'/>"]);
    // Handing its own back clears what the hub holds for the site.
    hub.delete_offline_own(BOB, i64::MAX).await.unwrap();
    assert_eq!(hub.repl_origin("site1.test").await.unwrap().pending, 0);
    assert!(hub.offline_owners("site1.test").await.unwrap().is_empty());
}
