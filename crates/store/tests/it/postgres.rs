//! The store battery's PostgreSQL: the test kit's server (`outpost_testkit::postgres`),
//! a fresh database for each test, and the cases only the PostgreSQL backend has.

use outpost_store::PgStore;
use outpost_testkit::postgres::{PgServer, shared};
use sqlx::{Connection, PgConnection};

async fn server() -> &'static PgServer {
    // Starting the server blocks: off the runtime's threads.
    tokio::task::spawn_blocking(shared).await.expect("server")
}

/// A database of its own on the shared server.
pub(crate) struct Database {
    pub(crate) url: String,
    name: String,
}

impl Database {
    /// Drops the database (a test that fails leaves its own behind, which goes with the
    /// server).
    pub(crate) async fn drop(self) {
        let mut admin = admin().await;
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&mut admin)
            .await
            .expect("drop the test database");
        admin.close().await.expect("close");
    }
}

async fn admin() -> PgConnection {
    PgConnection::connect(&server().await.url("postgres"))
        .await
        .expect("connect to the test server")
}

/// Creates a fresh, empty database.
pub(crate) async fn database() -> Database {
    let server = server().await;
    let name = tokio::task::spawn_blocking(|| shared().create_database())
        .await
        .expect("createdb");
    Database {
        url: server.url(&name),
        name,
    }
}

/// A fresh database and a store connected to it.
pub(crate) async fn pg_store() -> (Database, PgStore) {
    let db = database().await;
    let store = PgStore::connect(&db.url)
        .await
        .expect("connect the PostgreSQL store");
    (db, store)
}

// ---- what only the PostgreSQL backend has ----

async fn schema_versions(url: &str) -> Vec<i64> {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let versions = sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .expect("schema_version");
    conn.close().await.expect("close");
    versions
}

/// Connecting applies each migration once, and a schema newer than the build is refused.
#[tokio::test]
async fn migrations_are_recorded_and_a_newer_schema_refused() {
    use outpost_store::{Store, StoreError};
    let db = database().await;
    PgStore::connect(&db.url).await.unwrap().close().await;
    let first = schema_versions(&db.url).await;
    assert_eq!(first, (1..=11).collect::<Vec<i64>>());
    PgStore::connect(&db.url).await.unwrap().close().await;
    assert_eq!(schema_versions(&db.url).await, first);

    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("INSERT INTO schema_version (version) VALUES (1000)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let err = PgStore::connect(&db.url).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    db.drop().await;
}

/// A backup is pg_dump's job, and the store says so.
#[tokio::test]
async fn backup_is_left_to_pg_dump() {
    use outpost_store::{Store, StoreError};
    let (db, store) = pg_store().await;
    let dir = tempfile::tempdir().unwrap();
    let err = store.backup(&dir.path().join("copy")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unsupported(_)), "{err:?}");
    assert!(!dir.path().join("copy").exists());
    store.close().await;
    db.drop().await;
}

fn node(id: &str, epoch: &str, until: i64) -> outpost_store::ClusterNode {
    outpost_store::ClusterNode {
        node_id: id.into(),
        epoch: epoch.into(),
        address: "127.0.0.1:5222".into(),
        started_ms: 1_000,
        lease_until_ms: until,
        sessions: 0,
    }
}

/// A node id is one live node's: a second start is refused while the lease runs, takes
/// it over once it ended, and the first start's renewals then fail; a release frees it.
#[tokio::test]
async fn a_node_id_is_held_by_one_live_node() {
    use outpost_store::Store;
    let (db, store) = pg_store().await;
    assert!(
        store
            .node_claim(&node("a", "e1", 10_000), 1_000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .node_claim(&node("a", "e2", 20_000), 5_000)
            .await
            .unwrap()
    );
    assert!(store.node_renew("a", "e1", 30_000, 7).await.unwrap());
    assert!(
        !store
            .node_claim(&node("a", "e2", 40_000), 29_999)
            .await
            .unwrap()
    );
    // The lease ends unrenewed: another start takes the id.
    assert!(
        store
            .node_claim(&node("a", "e2", 60_000), 30_001)
            .await
            .unwrap()
    );
    assert!(!store.node_renew("a", "e1", 90_000, 7).await.unwrap());
    assert!(
        store
            .node_claim(&node("b", "f1", 60_000), 30_001)
            .await
            .unwrap()
    );
    let nodes = store.cluster_nodes().await.unwrap();
    let held: Vec<(&str, &str)> = nodes
        .iter()
        .map(|n| (n.node_id.as_str(), n.epoch.as_str()))
        .collect();
    assert_eq!(held, [("a", "e2"), ("b", "f1")]);
    store.node_release("a", "e2").await.unwrap();
    assert!(
        store
            .node_claim(&node("a", "e3", 70_000), 30_002)
            .await
            .unwrap()
    );
    store.close().await;
    db.drop().await;
}

/// A lease has one holder: it renews its own, others get the holder back until it ends.
#[tokio::test]
async fn a_lease_has_one_holder_until_it_ends() {
    use outpost_store::{ClusterLease, Store};
    let (db, store) = pg_store().await;
    let want = |node: &str, until| ClusterLease {
        name: "link:a.example>b.example".into(),
        node_id: node.into(),
        epoch: "e".into(),
        until_ms: until,
    };
    assert_eq!(
        store.lease_take(&want("a", 10_000), 1_000).await.unwrap(),
        want("a", 10_000)
    );
    assert_eq!(
        store.lease_take(&want("b", 20_000), 2_000).await.unwrap(),
        want("a", 10_000)
    );
    assert_eq!(
        store.lease_take(&want("a", 30_000), 9_000).await.unwrap(),
        want("a", 30_000)
    );
    assert_eq!(
        store.lease_take(&want("b", 40_000), 30_001).await.unwrap(),
        want("b", 40_000)
    );
    assert_eq!(store.cluster_leases().await.unwrap(), [want("b", 40_000)]);
    // A node's release takes its leases with it.
    store.node_release("b", "e").await.unwrap();
    assert!(store.cluster_leases().await.unwrap().is_empty());
    store.close().await;
    db.drop().await;
}

/// A node extends all its leases of one kind at once, and learns which it still holds.
#[tokio::test]
async fn a_node_extends_its_leases_of_a_kind_and_learns_which_it_lost() {
    use outpost_store::{ClusterLease, Store};
    let (db, store) = pg_store().await;
    let lease = |name: &str, node: &str, until| ClusterLease {
        name: name.into(),
        node_id: node.into(),
        epoch: "e".into(),
        until_ms: until,
    };
    for name in ["room:r1@c.example", "room:r2@c.example", "s2s"] {
        store
            .lease_take(&lease(name, "a", 10_000), 0)
            .await
            .unwrap();
    }
    // r2's lease ran out and b took it.
    let b = lease("room:r2@c.example", "b", 30_000);
    assert_eq!(store.lease_take(&b, 20_000).await.unwrap(), b);
    let held = store
        .leases_extend("a", "e", "room:", 40_000)
        .await
        .unwrap();
    assert_eq!(held, ["room:r1@c.example"]);
    let all = store.cluster_leases().await.unwrap();
    assert_eq!(
        all,
        [
            lease("room:r1@c.example", "a", 40_000),
            b,
            lease("s2s", "a", 10_000)
        ],
        "only a's leases of that kind moved"
    );
    // Another start of the node holds nothing.
    assert!(
        store
            .leases_extend("a", "e2", "", 50_000)
            .await
            .unwrap()
            .is_empty()
    );
    store.close().await;
    db.drop().await;
}

/// SQLite is one server's: it has no cluster registry, and says so.
#[tokio::test]
async fn sqlite_has_no_cluster() {
    use outpost_store::{SqliteStore, Store, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
    let err = store.node_claim(&node("a", "e", 1), 0).await.unwrap_err();
    assert!(matches!(err, StoreError::Unsupported("cluster")), "{err:?}");
    store.close().await;
}

/// Writers on several connections at once while replication is on: every change reaches
/// the log, and a reader that acknowledges up to what it has read never skips one that
/// committed later (positions follow commit order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replication_log_misses_nothing_that_commits_while_it_is_read() {
    use outpost_store::{ReplMode, Store};
    use std::collections::BTreeSet;
    let (db, store) = pg_store().await;
    store.repl_activate(ReplMode::Site).await.unwrap();
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let user = format!("user{w}@site1.test");
                store
                    .create_account(&user, &crate::battery::creds(1))
                    .await
                    .unwrap();
                for n in 0..40 {
                    store.block(&user, &[format!("b{n}@x.test")]).await.unwrap();
                }
            })
        })
        .collect();
    let mut seen = BTreeSet::new();
    let mut after = 0;
    let mut done = false;
    // Bounded: the writers make 246 changes; each round reads what committed meanwhile.
    for _ in 0..100_000 {
        let finished = writers.iter().all(|w| w.is_finished());
        let (records, upto) = store.repl_read(after, 7).await.unwrap();
        for r in &records {
            seen.insert((r.owner.clone(), r.key.clone()));
        }
        store.repl_acked(upto, 1).await.unwrap();
        if finished && upto == after {
            done = true;
            break;
        }
        after = upto;
    }
    assert!(done, "the log was still growing");
    for w in writers {
        w.await.unwrap();
    }
    for w in 0..6 {
        for n in 0..40 {
            let key = (format!("user{w}@site1.test"), format!("b{n}@x.test"));
            assert!(seen.contains(&key), "{key:?} never read");
        }
    }
    store.close().await;
    db.drop().await;
}

/// A node that starts on a database whose replication triggers are already the ones it
/// would make leaves them (making them takes each table's exclusive lock, which the other
/// nodes' writers would wait for); another mode makes them anew.
#[tokio::test]
async fn replication_triggers_are_made_once_per_form() {
    use outpost_store::{ReplMode, Store};
    let (db, first) = pg_store().await;
    first.repl_activate(ReplMode::Site).await.unwrap();
    let triggers = || async {
        let mut conn = PgConnection::connect(&db.url).await.expect("connect");
        let oids: Vec<(String, i64)> = sqlx::query_as(
            "SELECT tgname::text, oid::bigint FROM pg_trigger WHERE tgname LIKE 'repl_%' \
             ORDER BY tgname",
        )
        .fetch_all(&mut conn)
        .await
        .expect("pg_trigger");
        conn.close().await.expect("close");
        oids
    };
    let made = triggers().await;
    assert!(made.len() > 20, "{made:?}");
    let second = PgStore::connect(&db.url).await.unwrap();
    let log = second.repl_activate(ReplMode::Site).await.unwrap();
    assert!(log.active);
    assert_eq!(triggers().await, made);
    second.repl_activate(ReplMode::Hub).await.unwrap();
    let hub = triggers().await;
    assert!(!hub.is_empty() && hub != made, "{hub:?}");
    first.close().await;
    second.close().await;
    db.drop().await;
}
