//! A real Outpost ([`outpost_server::ServerHandle`]) on 127.0.0.1:0, with a fresh store
//! and a self-signed certificate, and the ways tests reach it and watch it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_server::config::Config;
use outpost_server::{HttpService, LinkStatus, ListenerKind, ServerHandle, TlsIdentity};
use outpost_store::{MemoryStore, SqliteStore, Store};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::client::Client;
use crate::wait::{WAIT, poll_until};

pub struct TestServer {
    pub handle: Option<ServerHandle>,
    pub starttls: SocketAddr,
    pub direct_tls: SocketAddr,
    pub identity: TlsIdentity,
    /// The server-to-server listener, when federation is on.
    pub s2s: Option<SocketAddr>,
    pub store: Arc<dyn Store>,
    /// The configuration the server runs with (after the test's tweaks).
    pub config: Config,
    pub dir: tempfile::TempDir,
    /// The store is a [`MemoryStore`], which a restart keeps rather than reopens.
    in_memory: bool,
    /// What serves `listen.https`, if anything.
    http: Option<Arc<dyn HttpService>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// A server on a fresh SQLite file, with `tweak` applied to a loopback config.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_sqlite(&dir).await;
        Self::start_on(store, false, dir, tweak, None).await
    }

    /// [`TestServer::start_with`], with `http` serving the HTTPS listener.
    pub async fn start_with_http(
        tweak: impl FnOnce(&mut Config),
        http: Arc<dyn HttpService>,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_sqlite(&dir).await;
        Self::start_on(store, false, dir, tweak, Some(http)).await
    }

    /// A server on a fresh database of the test process's PostgreSQL
    /// ([`crate::postgres::shared`]), with `tweak` applied to a loopback config.
    #[cfg(feature = "postgres")]
    pub async fn start_on_postgres(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let url = tokio::task::spawn_blocking(|| {
            let server = crate::postgres::shared();
            server.url(&server.create_database())
        })
        .await
        .expect("create a database");
        let store = outpost_store::PgStore::connect(&url)
            .await
            .expect("connect PostgreSQL");
        let tweak = move |c: &mut Config| {
            c.storage.backend = outpost_server::config::StorageBackend::Postgres;
            c.storage.url = Some(url);
            tweak(c);
        };
        Self::start_with_store(Arc::new(store), tweak, None).await
    }

    pub async fn start_in_memory() -> TestServer {
        Self::start_in_memory_with(|_| {}).await
    }

    /// A server on a fresh [`MemoryStore`], with `tweak` applied to a loopback config.
    /// Nothing in it waits on a blocking thread, which paused-clock tests need.
    pub async fn start_in_memory_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_on(Arc::new(MemoryStore::new()), true, dir, tweak, None).await
    }

    /// A server on `store` (a PostgreSQL one, say, that other servers share), with `tweak`
    /// applied to a loopback config, and `http` serving the HTTPS listener if given.
    pub async fn start_with_store(
        store: Arc<dyn Store>,
        tweak: impl FnOnce(&mut Config),
        http: Option<Arc<dyn HttpService>>,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_on(store, true, dir, tweak, http).await
    }

    async fn start_on(
        store: Arc<dyn Store>,
        in_memory: bool,
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut Config),
        http: Option<Arc<dyn HttpService>>,
    ) -> TestServer {
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        config.listen.c2s = vec!["127.0.0.1:0".parse().expect("addr")];
        config.listen.c2s_tls = vec!["127.0.0.1:0".parse().expect("addr")];
        config.listen.component = vec!["127.0.0.1:0".parse().expect("addr")];
        config.listen.proxy65 = vec!["127.0.0.1:0".parse().expect("addr")];
        config.listen.https = vec!["127.0.0.1:0".parse().expect("addr")];
        config.listen.http = vec!["127.0.0.1:0".parse().expect("addr")];
        config.registration.enabled = Some(true);
        tweak(&mut config);
        config.validate().expect("valid test config");
        let identity = TlsIdentity::self_signed(&config.certificate_names()).expect("certificate");
        let handle = ServerHandle::start_with_http(
            config.clone(),
            store.clone(),
            identity.clone(),
            http.clone(),
        )
        .await
        .expect("server starts");
        let (starttls, direct_tls) = listener_addrs(&handle);
        TestServer {
            s2s: s2s_addr(&handle),
            handle: Some(handle),
            starttls,
            direct_tls,
            identity,
            store,
            config,
            dir,
            in_memory,
            http,
        }
    }

    /// The listener of one kind, if the server has one.
    pub fn listener(&self, kind: ListenerKind) -> Option<SocketAddr> {
        let handle = self.handle.as_ref()?;
        handle
            .local_addrs()
            .into_iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| a)
    }

    /// Stops the server and starts a new one with the same configuration on the same
    /// store (the same SQLite file reopened, or PostgreSQL database connected again), as
    /// after a process restart. Listeners get new ports.
    pub async fn restart(&mut self) {
        self.stop().await;
        if let Some(url) = self.config.storage.url.as_deref() {
            // A PostgreSQL store: the stopped server closed its pool.
            let store = outpost_store::PgStore::connect(url).await;
            self.store = Arc::new(store.expect("reconnect PostgreSQL"));
        } else if !self.in_memory {
            self.store = open_sqlite(&self.dir).await;
        }
        let handle = ServerHandle::start_with_http(
            self.config.clone(),
            self.store.clone(),
            self.identity.clone(),
            self.http.clone(),
        )
        .await
        .expect("server restarts");
        (self.starttls, self.direct_tls) = listener_addrs(&handle);
        self.s2s = s2s_addr(&handle);
        self.handle = Some(handle);
    }

    /// The first domain the server serves: `localhost` unless the test changed it.
    pub fn domain(&self) -> &str {
        &self.config.domains[0]
    }

    fn running(&self) -> &ServerHandle {
        self.handle.as_ref().expect("the server is running")
    }

    pub async fn add_user(&self, user: &str, password: &str) {
        outpost_server::accounts::add_user(
            self.store.as_ref(),
            &format!("{user}@{}", self.domain()),
            password,
            4096,
        )
        .await
        .expect("add user");
    }

    /// A TLS connector that trusts this server's certificate, and only it.
    pub fn tls_connector(&self) -> TlsConnector {
        self.tls_connector_with_alpn(Vec::new())
    }

    fn tls_connector_with_alpn(&self, alpn: Vec<Vec<u8>>) -> TlsConnector {
        let config = crate::tls::trusting_pem(&self.identity.cert_chain_pem, alpn);
        TlsConnector::from(Arc::new(config))
    }

    /// Connects, upgrades with STARTTLS, logs in with PLAIN and binds `resource`.
    pub async fn login(&self, user: &str, password: &str, resource: &str) -> Client {
        let mut c = self.connect_starttls().await;
        c.login_plain(user, password, resource).await;
        c
    }

    /// A plain TCP connection to the STARTTLS listener, with nothing sent yet.
    pub async fn connect_tcp(&self) -> Client {
        Client::connect(self.starttls, self.domain()).await
    }

    /// A plain TCP client with the stream opened and the (pre-TLS) features read.
    pub async fn connect_plain(&self) -> Client {
        Client::connect_open(self.starttls, self.domain()).await
    }

    /// A TLS client past STARTTLS, with the post-TLS features read.
    pub async fn connect_starttls(&self) -> Client {
        let mut c = self.connect_plain().await;
        c.starttls(&self.tls_connector()).await;
        c
    }

    /// A client on the direct TLS listener (XEP-0368), with the features read.
    pub async fn connect_direct_tls(&self) -> Client {
        let tcp = TcpStream::connect(self.direct_tls).await.expect("connect");
        let tls = self
            .tls_connector_with_alpn(vec![b"xmpp-client".to_vec()])
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").expect("name"),
                tcp,
            )
            .await
            .expect("TLS handshake");
        let mut c = Client::new(Box::new(tls));
        c.open().await;
        c.features = Some(c.recv().await);
        c
    }

    /// Waits, on the link board's change signal ([`ServerHandle::link_changes`]), until
    /// this server's link to `remote` satisfies `pred`, and returns it. `pred` may look at
    /// the queue figures too, but a change of those alone wakes nobody: wait for the queue
    /// with [`TestServer::wait_for_empty_outbox`] first.
    pub async fn wait_link(&self, remote: &str, pred: impl Fn(&LinkStatus) -> bool) -> LinkStatus {
        self.wait_link_within(WAIT, remote, pred).await
    }

    /// [`TestServer::wait_link`] with its own bound.
    pub async fn wait_link_within(
        &self,
        within: Duration,
        remote: &str,
        pred: impl Fn(&LinkStatus) -> bool,
    ) -> LinkStatus {
        let handle = self.running();
        // Subscribed before the first look, so no change between the two is missed.
        let mut changes = handle.link_changes().expect("federation is on");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let links = handle.link_statuses().await.expect("link statuses");
            if let Some(link) = links
                .iter()
                .find(|l| l.remote == remote && self.config.domains.contains(&l.local) && pred(l))
            {
                return link.clone();
            }
            tokio::time::timeout_at(deadline, changes.changed())
                .await
                .unwrap_or_else(|_| panic!("the link to {remote} never got there: {links:?}"))
                .expect("the link board is alive");
        }
    }

    /// Waits, within [`WAIT`], until nothing is queued from this server's domain to
    /// `remote`: the peer acknowledged every stanza (XEP-0198).
    pub async fn wait_for_empty_outbox(&self, remote: &str) {
        let local = self.domain();
        // The outbox shrinks when the peer's acknowledgement is processed, which the server
        // announces nowhere (link_changes is for states, not queues): only the store shows
        // it, so look again until it does.
        poll_until(tokio::time::Instant::now() + WAIT, || async {
            let queued = self
                .store
                .outbox_peek(local, remote, None, 100)
                .await
                .expect("peek");
            if queued.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} stanzas from {local} to {remote} still queued",
                    queued.len()
                ))
            }
        })
        .await;
    }

    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

async fn open_sqlite(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(
        SqliteStore::open(&dir.path().join("outpost.db"))
            .await
            .expect("open store"),
    )
}

fn s2s_addr(handle: &ServerHandle) -> Option<SocketAddr> {
    handle
        .local_addrs()
        .into_iter()
        .find(|(k, _)| *k == ListenerKind::S2s)
        .map(|(_, a)| a)
}

fn listener_addrs(handle: &ServerHandle) -> (SocketAddr, SocketAddr) {
    let addr = |kind| {
        handle
            .local_addrs()
            .into_iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| a)
            .expect("listener")
    };
    (
        addr(ListenerKind::C2sStartTls),
        addr(ListenerKind::C2sDirectTls),
    )
}

/// A `wss://` URL for [`outpost_server::ServerHandle::set_websocket_peer`].
pub fn wss_url(s: &str) -> outpost_server::config::WssUrl {
    s.parse().expect("wss:// URL")
}
