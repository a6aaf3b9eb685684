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
    assert_eq!(first, (1..=8).collect::<Vec<i64>>());
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
