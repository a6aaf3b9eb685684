//! Personal eventing nodes and items (XEP-0163) and private XML (XEP-0049), against every
//! backend.

use outpost_store::{AccessModel, NodeConfig, PepItem, SendLast, Store, StoreError};

use crate::battery::{ALICE, BOB, NOBODY, creds};

crate::battery! {
    pep_nodes_are_created_configured_and_deleted,
    pep_items_keep_publish_order_and_max_items,
    pep_retract_and_purge,
    pep_subscriptions_follow_the_node,
    pep_and_private_xml_go_with_the_account,
    private_xml_roundtrip,
}

fn config(access: AccessModel, max_items: u32) -> NodeConfig {
    NodeConfig {
        access,
        max_items,
        send_last: SendLast::OnSubAndPresence,
        notify_retract: false,
        title: None,
    }
}

fn item(id: &str, payload: &str) -> PepItem {
    PepItem {
        id: id.to_owned(),
        payload: payload.to_owned(),
    }
}

async fn ids(store: &dyn Store, owner: &str, node: &str, limit: Option<u32>) -> Vec<String> {
    store
        .pep_items(owner, node, limit)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect()
}

async fn pep_nodes_are_created_configured_and_deleted(store: &dyn Store) {
    assert!(matches!(
        store
            .pep_configure(NOBODY, "n", &config(AccessModel::Open, 1))
            .await,
        Err(StoreError::NoSuchAccount)
    ));
    store.create_account(ALICE, &creds(1)).await.unwrap();
    assert_eq!(
        store.pep_node(ALICE, "urn:xmpp:avatar:data").await.unwrap(),
        None
    );
    let mut c = config(AccessModel::Presence, 1);
    c.title = Some("My avatar".to_owned());
    c.send_last = SendLast::Never;
    c.notify_retract = true;
    store
        .pep_configure(ALICE, "urn:xmpp:avatar:data", &c)
        .await
        .unwrap();
    store
        .pep_configure(
            ALICE,
            "eu.siacs.conversations.axolotl.devicelist",
            &config(AccessModel::Open, 1),
        )
        .await
        .unwrap();
    assert_eq!(
        store.pep_node(ALICE, "urn:xmpp:avatar:data").await.unwrap(),
        Some(c.clone())
    );
    let names: Vec<String> = store
        .pep_nodes(ALICE)
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [
            "eu.siacs.conversations.axolotl.devicelist",
            "urn:xmpp:avatar:data"
        ]
    );
    // Reconfiguring replaces the configuration.
    c.access = AccessModel::Open;
    store
        .pep_configure(ALICE, "urn:xmpp:avatar:data", &c)
        .await
        .unwrap();
    assert_eq!(
        store
            .pep_node(ALICE, "urn:xmpp:avatar:data")
            .await
            .unwrap()
            .map(|c| c.access),
        Some(AccessModel::Open)
    );
    assert!(
        store
            .pep_delete_node(ALICE, "urn:xmpp:avatar:data")
            .await
            .unwrap()
    );
    assert!(
        !store
            .pep_delete_node(ALICE, "urn:xmpp:avatar:data")
            .await
            .unwrap()
    );
    assert_eq!(store.pep_nodes(ALICE).await.unwrap().len(), 1);
}

async fn pep_items_keep_publish_order_and_max_items(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    assert!(matches!(
        store
            .pep_publish(ALICE, "missing", &item("a", "<x/>"))
            .await,
        Err(StoreError::NoSuchNode)
    ));
    store
        .pep_configure(ALICE, "bundles", &config(AccessModel::Open, 3))
        .await
        .unwrap();
    for id in ["a", "b", "c"] {
        store
            .pep_publish(ALICE, "bundles", &item(id, &format!("<{id}/>")))
            .await
            .unwrap();
    }
    assert_eq!(ids(store, ALICE, "bundles", None).await, ["c", "b", "a"]);
    // Publishing an existing id replaces it and makes it the newest.
    store
        .pep_publish(ALICE, "bundles", &item("a", "<a2/>"))
        .await
        .unwrap();
    assert_eq!(ids(store, ALICE, "bundles", None).await, ["a", "c", "b"]);
    assert_eq!(
        store.pep_item(ALICE, "bundles", "a").await.unwrap(),
        Some(item("a", "<a2/>"))
    );
    // Over max_items: the oldest goes.
    store
        .pep_publish(ALICE, "bundles", &item("d", "<d/>"))
        .await
        .unwrap();
    assert_eq!(ids(store, ALICE, "bundles", None).await, ["d", "a", "c"]);
    assert_eq!(ids(store, ALICE, "bundles", Some(1)).await, ["d"]);
    // Lowering max_items trims at once.
    store
        .pep_configure(ALICE, "bundles", &config(AccessModel::Open, 1))
        .await
        .unwrap();
    assert_eq!(ids(store, ALICE, "bundles", None).await, ["d"]);
    assert_eq!(store.pep_item(ALICE, "bundles", "a").await.unwrap(), None);
    // Nodes are per owner.
    assert!(ids(store, BOB, "bundles", None).await.is_empty());
}

async fn pep_retract_and_purge(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store
        .pep_configure(ALICE, "n", &config(AccessModel::Presence, 10))
        .await
        .unwrap();
    for id in ["a", "b", "c"] {
        store
            .pep_publish(ALICE, "n", &item(id, "<p/>"))
            .await
            .unwrap();
    }
    assert!(store.pep_retract(ALICE, "n", "b").await.unwrap());
    assert!(!store.pep_retract(ALICE, "n", "b").await.unwrap());
    assert_eq!(ids(store, ALICE, "n", None).await, ["c", "a"]);
    store.pep_purge(ALICE, "n").await.unwrap();
    assert!(ids(store, ALICE, "n", None).await.is_empty());
    assert!(store.pep_node(ALICE, "n").await.unwrap().is_some());
}

async fn pep_subscriptions_follow_the_node(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    assert!(matches!(
        store.pep_subscribe(ALICE, "n", "bob@example.org").await,
        Err(StoreError::NoSuchNode)
    ));
    for node in ["m", "n"] {
        store
            .pep_configure(ALICE, node, &config(AccessModel::Open, 1))
            .await
            .unwrap();
    }
    for (node, jid) in [
        ("n", "bob@example.org"),
        ("n", "carol@elsewhere.example/phone"),
        ("m", "bob@example.org"),
        ("n", "bob@example.org"),
    ] {
        store.pep_subscribe(ALICE, node, jid).await.unwrap();
    }
    let pair = |n: &str, j: &str| (n.to_owned(), j.to_owned());
    assert_eq!(
        store.pep_subscriptions(ALICE).await.unwrap(),
        [
            pair("m", "bob@example.org"),
            pair("n", "bob@example.org"),
            pair("n", "carol@elsewhere.example/phone"),
        ]
    );
    assert!(
        store
            .pep_unsubscribe(ALICE, "m", "bob@example.org")
            .await
            .unwrap()
    );
    assert!(
        !store
            .pep_unsubscribe(ALICE, "m", "bob@example.org")
            .await
            .unwrap()
    );
    // A node deleted and made again starts without subscribers.
    assert!(store.pep_delete_node(ALICE, "n").await.unwrap());
    store
        .pep_configure(ALICE, "n", &config(AccessModel::Open, 1))
        .await
        .unwrap();
    assert!(store.pep_subscriptions(ALICE).await.unwrap().is_empty());
    store
        .pep_subscribe(ALICE, "n", "bob@example.org")
        .await
        .unwrap();
    store.remove_account(ALICE).await.unwrap();
    store.create_account(ALICE, &creds(2)).await.unwrap();
    assert!(store.pep_subscriptions(ALICE).await.unwrap().is_empty());
}

async fn pep_and_private_xml_go_with_the_account(store: &dyn Store) {
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store
        .pep_configure(ALICE, "n", &config(AccessModel::Presence, 10))
        .await
        .unwrap();
    store
        .pep_publish(ALICE, "n", &item("a", "<p/>"))
        .await
        .unwrap();
    store
        .set_private_xml(
            ALICE,
            "storage:bookmarks",
            "<storage xmlns='storage:bookmarks'/>",
        )
        .await
        .unwrap();
    store.remove_account(ALICE).await.unwrap();
    store.create_account(ALICE, &creds(2)).await.unwrap();
    assert!(store.pep_nodes(ALICE).await.unwrap().is_empty());
    assert!(ids(store, ALICE, "n", None).await.is_empty());
    assert_eq!(
        store.private_xml(ALICE, "storage:bookmarks").await.unwrap(),
        None
    );
}

async fn private_xml_roundtrip(store: &dyn Store) {
    assert!(matches!(
        store.set_private_xml(NOBODY, "a:b", "<x/>").await,
        Err(StoreError::NoSuchAccount)
    ));
    store.create_account(ALICE, &creds(1)).await.unwrap();
    store.set_private_xml(ALICE, "a:b", "<x/>").await.unwrap();
    store.set_private_xml(ALICE, "c:d", "<y/>").await.unwrap();
    store.set_private_xml(ALICE, "a:b", "<x2/>").await.unwrap();
    assert_eq!(
        store.private_xml(ALICE, "a:b").await.unwrap().as_deref(),
        Some("<x2/>")
    );
    assert_eq!(
        store.private_xml(ALICE, "c:d").await.unwrap().as_deref(),
        Some("<y/>")
    );
    assert_eq!(store.private_xml(BOB, "a:b").await.unwrap(), None);
}
