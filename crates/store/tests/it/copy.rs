//! Copying a store into another (`copy_store`, behind `outpost admin migrate-store`): a
//! SQLite store with one of everything, copied into PostgreSQL, reads back the same
//! through every method, archive ids included.

use outpost_store::{
    AccessModel, ApiToken, NodeConfig, PepItem, PushRegistration, SendLast, Store, UploadSlot,
    copy_store,
};

use crate::battery::{ALICE, BOB, write_everything};

const ROOM: &str = "lounge@conference.example.org";
const T: i64 = 1_700_000_000_000;

/// What `write_everything` leaves out: private XML, PEP, a room, a token, an upload, a
/// push registration, and a room's archive.
async fn write_the_rest(store: &dyn Store) {
    store
        .set_private_xml(ALICE, "storage:rosternotes", "<notes/>")
        .await
        .unwrap();
    let config = NodeConfig {
        access: AccessModel::Presence,
        max_items: 5,
        send_last: SendLast::OnSubAndPresence,
        notify_retract: true,
        title: Some("Keys".to_owned()),
    };
    store
        .pep_configure(ALICE, "urn:x:keys", &config)
        .await
        .unwrap();
    for n in 1..=3 {
        let item = PepItem {
            id: format!("i{n}"),
            payload: format!("<k n='{n}'/>"),
        };
        store.pep_publish(ALICE, "urn:x:keys", &item).await.unwrap();
    }
    store.pep_subscribe(ALICE, "urn:x:keys", BOB).await.unwrap();
    write_services(store).await;
}

/// A room with its archive, a token, an upload and a push registration.
async fn write_services(store: &dyn Store) {
    let room_config = [("name".to_owned(), "Lounge".to_owned())];
    store.muc_save_room(ROOM, &room_config, T).await.unwrap();
    store
        .muc_set_affiliation(ROOM, ALICE, Some("owner"), T)
        .await
        .unwrap();
    let token = ApiToken {
        id: "t1".to_owned(),
        hash: vec![1; 32],
        owner: ALICE.to_owned(),
        label: Some("laptop".to_owned()),
        created_ms: T,
        expires_ms: T + 1000,
    };
    store.token_add(&token).await.unwrap();
    let slot = UploadSlot {
        slot: "s1".to_owned(),
        owner: BOB.to_owned(),
        filename: "a.jpg".to_owned(),
        size: 10,
        content_type: Some("image/jpeg".to_owned()),
        put_token: vec![7; 32],
        created_ms: T,
        completed_ms: None,
    };
    store.upload_reserve(&slot, 1000).await.unwrap();
    store.upload_complete("s1", T + 5).await.unwrap();
    let push = PushRegistration {
        service: "push.example.net".to_owned(),
        node: "n1".to_owned(),
        options: String::new(),
    };
    store.add_push(BOB, &push).await.unwrap();
    let said = crate::battery::archived(T + 7, &format!("{ROOM}/alice"), ROOM, "<said/>");
    let said = outpost_store::ArchiveEntry {
        in_sender: false,
        ..said
    };
    let quotas = outpost_store::Quotas {
        offline: 10,
        outbox: 10,
    };
    let written = store
        .write_batch(&[outpost_store::BatchWrite::Archive(said)], T, quotas)
        .await
        .unwrap();
    assert!(written.iter().all(Result::is_ok));
}

/// Everything a store holds, as its methods read it back (queue ids left out: they start
/// again in the new store; roster versions too).
async fn read_everything(store: &dyn Store) -> Vec<String> {
    let mut out = Vec::new();
    let accounts = store.list_accounts().await.unwrap();
    out.push(format!("{accounts:?}"));
    for user in accounts.iter().map(String::as_str) {
        out.push(format!("{:?}", store.credentials(user).await.unwrap()));
        out.push(format!("{:?}", store.roster(user).await.unwrap().items));
        out.push(format!(
            "{:?}",
            store.subscription_requests(user).await.unwrap()
        ));
        let offline = store.offline(user, 100).await.unwrap();
        out.push(format!(
            "{:?}",
            offline.iter().map(|m| &m.stanza).collect::<Vec<_>>()
        ));
        out.push(format!("{:?}", store.vcard(user).await.unwrap()));
        out.push(format!("{:?}", store.blocklist(user).await.unwrap()));
        out.push(format!("{:?}", store.archive_prefs(user).await.unwrap()));
        out.push(format!("{:?}", store.private_xml_all(user).await.unwrap()));
        out.push(format!("{:?}", store.tokens_of(user).await.unwrap()));
        for (node, config) in store.pep_nodes(user).await.unwrap() {
            let items = store.pep_items(user, &node, None).await.unwrap();
            out.push(format!("{node} {config:?} {items:?}"));
        }
        out.push(format!(
            "{:?}",
            store.pep_subscriptions(user).await.unwrap()
        ));
    }
    out.push(format!("{:?}", store.muc_rooms().await.unwrap()));
    out.push(format!("{:?}", store.push_registrations().await.unwrap()));
    out.push(format!("{:?}", store.upload_slots_all().await.unwrap()));
    for link in store.outbox_stats().await.unwrap() {
        let (local, remote) = (&link.local_domain, &link.remote_domain);
        let queued = store.outbox_peek(local, remote, None, 100).await.unwrap();
        let queued: Vec<_> = queued.iter().map(|e| (&e.stanza, e.queued_at_ms)).collect();
        out.push(format!("{local} {remote} {queued:?}"));
    }
    for owner in accounts.iter().map(String::as_str).chain([ROOM]) {
        let q = outpost_store::ArchiveQuery {
            owner,
            with: None,
            after: None,
            before: None,
            limit: 100,
            newest_first: false,
        };
        out.push(format!(
            "{owner} {:?}",
            store.archive_page(&q).await.unwrap()
        ));
    }
    out
}

#[tokio::test]
async fn a_sqlite_store_copied_into_postgresql_reads_back_the_same() {
    let (_dir, from) = crate::battery::sqlite_store().await;
    write_everything(&from).await;
    write_the_rest(&from).await;
    let (db, to) = crate::postgres::pg_store().await;
    let report = copy_store(&from, &to, T).await.unwrap();
    assert_eq!(
        (
            report.accounts,
            report.archive,
            report.pep_items,
            report.rooms
        ),
        (2, 2, 3, 1)
    );
    let (expected, got) = (read_everything(&from).await, read_everything(&to).await);
    for (e, g) in expected.iter().zip(&got) {
        assert_eq!(e, g);
    }
    assert_eq!(expected.len(), got.len());

    // Copying again into a store that holds accounts is refused.
    assert!(copy_store(&from, &to, T).await.is_err());
    to.close().await;
    db.drop().await;
}
