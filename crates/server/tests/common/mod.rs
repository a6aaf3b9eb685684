//! A real server on 127.0.0.1:0 and a small raw XMPP client for integration tests.
//!
//! The client speaks just enough XMPP (STARTTLS, SASL PLAIN, bind) to drive the server
//! over real sockets; everything after login is raw XML strings in and parsed elements
//! out, so tests see exactly what a client would.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use outpost_proto::minidom::Element;
use outpost_proto::xml::{Limits, StreamReader, XmlEvent};
use outpost_server::config::Config;
use outpost_server::{ListenerKind, ServerHandle, TlsIdentity};
use outpost_store::{MemoryStore, SqliteStore, Store};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long a test waits for something it expects before failing.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub handle: Option<ServerHandle>,
    pub starttls: SocketAddr,
    pub direct_tls: SocketAddr,
    pub identity: TlsIdentity,
    pub store: Arc<dyn Store>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// A server on a fresh SQLite file, with `tweak` applied to a loopback config.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("outpost.db"))
                .await
                .expect("open store"),
        );
        Self::start_on(store, dir, tweak).await
    }

    pub async fn start_in_memory() -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_on(Arc::new(MemoryStore::new()), dir, |_| {}).await
    }

    async fn start_on(
        store: Arc<dyn Store>,
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let mut config = Config::default();
        config.data_dir = dir.path().to_owned();
        config.listen.c2s = vec!["127.0.0.1:0".parse().expect("addr")];
        config.listen.c2s_tls = vec!["127.0.0.1:0".parse().expect("addr")];
        config.registration.enabled = Some(true);
        tweak(&mut config);
        config.validate().expect("valid test config");
        let identity = TlsIdentity::self_signed(&config.domains).expect("certificate");
        let handle = ServerHandle::start(config, store.clone(), identity.clone())
            .await
            .expect("server starts");
        let addr = |kind| {
            handle
                .local_addrs()
                .into_iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, a)| a)
                .expect("listener")
        };
        TestServer {
            starttls: addr(ListenerKind::C2sStartTls),
            direct_tls: addr(ListenerKind::C2sDirectTls),
            handle: Some(handle),
            identity,
            store,
            dir,
        }
    }

    pub async fn add_user(&self, user: &str, password: &str) {
        outpost_server::accounts::add_user(
            self.store.as_ref(),
            &format!("{user}@localhost"),
            password,
            4096,
        )
        .await
        .expect("add user");
    }

    pub fn tls_connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(
            self.identity.cert_chain_pem.as_bytes(),
        ) {
            roots.add(cert.expect("pem")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    /// Connects, upgrades with STARTTLS, logs in with PLAIN and binds `resource`.
    pub async fn login(&self, user: &str, password: &str, resource: &str) -> Client {
        let mut c = self.connect_starttls().await;
        c.auth_plain(user, password)
            .await
            .unwrap_or_else(|e| panic!("login {user}: {e}"));
        c.bind(resource).await;
        c
    }

    /// A TLS client past STARTTLS, with the post-TLS features read.
    pub async fn connect_starttls(&self) -> Client {
        let tcp = TcpStream::connect(self.starttls).await.expect("connect");
        let mut c = Client::new(Box::new(tcp));
        c.open().await;
        let features = c.recv().await;
        assert!(features.has_child("starttls", "urn:ietf:params:xml:ns:xmpp-tls"));
        c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let proceed = c.recv().await;
        assert_eq!(proceed.name(), "proceed");
        let Transport::Raw(tcp) = std::mem::replace(&mut c.io, Transport::Gone) else {
            panic!("not raw")
        };
        let tls = self
            .tls_connector()
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake");
        c.io = Transport::Raw(Box::new(tls));
        c.reader.reset();
        c.open().await;
        c.features = Some(c.recv().await);
        c
    }

    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub enum Transport {
    Raw(Box<dyn Io>),
    Gone,
}

pub struct Client {
    pub io: Transport,
    pub reader: StreamReader,
    pub features: Option<Element>,
    pub jid: String,
    pub closed: bool,
}

impl Client {
    pub fn new(io: Box<dyn Io>) -> Client {
        Client {
            io: Transport::Raw(io),
            reader: StreamReader::new(Limits {
                max_stanza_bytes: 16 << 20,
                max_depth: 256,
            }),
            features: None,
            jid: String::new(),
            closed: false,
        }
    }

    fn io(&mut self) -> &mut Box<dyn Io> {
        match &mut self.io {
            Transport::Raw(io) => io,
            Transport::Gone => panic!("no transport"),
        }
    }

    pub async fn send(&mut self, xml: &str) {
        let io = self.io();
        io.write_all(xml.as_bytes()).await.expect("write");
        io.flush().await.expect("flush");
    }

    /// Writes, tolerating a server that already closed the connection.
    pub async fn try_send(&mut self, xml: &[u8]) -> std::io::Result<()> {
        let io = self.io();
        io.write_all(xml).await?;
        io.flush().await
    }

    pub async fn open(&mut self) {
        self.send(
            "<?xml version='1.0'?><stream:stream to='localhost' version='1.0' \
             xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
        )
        .await;
        match self.next_event().await {
            Some(XmlEvent::StreamOpen(_)) => {}
            other => panic!("expected a stream header, got {other:?}"),
        }
    }

    /// The next event from the server, or `None` at EOF.
    pub async fn next_event(&mut self) -> Option<XmlEvent> {
        let mut buf = vec![0u8; 8192];
        loop {
            match self.reader.next() {
                Ok(Some(ev)) => return Some(ev),
                Ok(None) => {}
                Err(e) => panic!("server sent bad XML: {e}"),
            }
            let n = tokio::time::timeout(WAIT, self.io().read(&mut buf))
                .await
                .expect("timed out waiting for the server")
                .unwrap_or(0);
            if n == 0 {
                self.closed = true;
                return None;
            }
            self.reader.feed(&buf[..n]);
        }
    }

    /// The next stanza; panics on close or timeout.
    pub async fn recv(&mut self) -> Element {
        match self.next_event().await {
            Some(XmlEvent::Stanza(el)) => el,
            other => panic!("expected a stanza, got {other:?}"),
        }
    }

    /// The next stanza for which `pred` holds, skipping others.
    pub async fn recv_where(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "no matching stanza");
            let el = self.recv().await;
            if pred(&el) {
                return el;
            }
        }
    }

    /// Reads until the server closes the stream; returns the stream error condition.
    pub async fn expect_close(&mut self) -> Option<String> {
        let mut condition = None;
        loop {
            match self.next_event().await {
                Some(XmlEvent::Stanza(el)) if el.name() == "error" => {
                    condition = el.children().next().map(|c| c.name().to_owned());
                }
                Some(XmlEvent::Stanza(_)) => {}
                Some(XmlEvent::StreamOpen(_)) => {}
                Some(XmlEvent::StreamClose) | None => return condition,
            }
        }
    }

    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Result<(), String> {
        let payload =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
        ))
        .await;
        let answer = self.recv().await;
        if answer.name() != "success" {
            return Err(answer
                .children()
                .next()
                .map(|c| c.name().to_owned())
                .unwrap_or_default());
        }
        self.reader.reset();
        self.open().await;
        self.features = Some(self.recv().await);
        self.jid = format!("{user}@localhost");
        Ok(())
    }

    pub async fn bind(&mut self, resource: &str) {
        self.send(&format!(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{resource}</resource></bind></iq>"
        ))
        .await;
        let reply = self.recv().await;
        assert_eq!(reply.attr("type"), Some("result"), "bind failed: {reply:?}");
        let jid = reply
            .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .and_then(|b| b.get_child("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
            .map(|j| j.text())
            .expect("bound jid");
        self.jid = jid;
    }

    /// Sends initial presence and waits for its reflection.
    pub async fn available(&mut self) {
        self.send("<presence/>").await;
        let me = self.jid.clone();
        self.recv_where(|el| el.name() == "presence" && el.attr("from") == Some(me.as_str()))
            .await;
    }

    /// Sends an IQ and returns its answer (skipping other stanzas).
    pub async fn iq(&mut self, id: &str, xml: &str) -> Element {
        self.send(xml).await;
        self.recv_where(|el| el.name() == "iq" && el.attr("id") == Some(id))
            .await
    }
}
