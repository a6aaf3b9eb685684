//! One client connection: the task that owns the socket, drives the sans-IO
//! [`C2sStream`], and carries the session's state (presence, roster cache, block list).
//!
//! The task waits on three things at once: bytes from the client, messages from other
//! sessions (its bounded channel), and its timers. It never waits on another session:
//! deliveries use `try_send` (see `router`), so no cycle of sessions can deadlock.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use outpost_proto::c2s::{C2sConfig, C2sStream, Event, Transport};
use outpost_proto::sasl::ScramKeys;
use outpost_proto::stanza::{self, ns};
use outpost_store::RosterItem;
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{Instrument, debug, info, warn};

use crate::Shared;
use crate::router::{BindOutcome, ToSession};
use crate::throttle::ReadBudget;

/// Capacity of a session's inbound channel. A client that lets this many stanzas pile up
/// is not reading; its socket write times out and the session ends.
const CHANNEL_CAPACITY: usize = 1024;
/// An unauthenticated connection has this long to log in (slow-loris protection).
const AUTH_TIMEOUT: Duration = Duration::from_secs(60);
/// A write that makes no progress for this long means the client is gone or stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Size of the read buffer; stanzas larger than this arrive over several reads.
const READ_CHUNK: usize = 4096;

/// The socket, before or after TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the TCP stream is handed to the TLS handshake.
    Detached,
}

fn detached() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "socket detached")
}

impl Conn {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
            Conn::Detached => Err(detached()),
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        async fn write<S: AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> std::io::Result<()> {
            s.write_all(data).await?;
            s.flush().await
        }
        match self {
            Conn::Plain(s) => write(s, data).await,
            Conn::Tls(s) => write(s.as_mut(), data).await,
            Conn::Detached => Err(detached()),
        }
    }

    async fn shutdown(&mut self) {
        async fn shut<S: AsyncWrite + AsyncRead + Unpin>(s: &mut S) {
            let _ = tokio::time::timeout(Duration::from_secs(2), s.shutdown()).await;
        }
        match self {
            Conn::Plain(s) => shut(s).await,
            Conn::Tls(s) => shut(s.as_mut()).await,
            Conn::Detached => {}
        }
    }
}

/// Why the loop stopped.
enum End {
    /// The stream is closed on the protocol level (output already queued).
    Closed,
    /// The socket failed or hit EOF.
    Io,
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    transport: Transport,
) {
    let span = tracing::info_span!("c2s", %peer, jid = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let conn = match transport {
            Transport::StartTls => Conn::Plain(tcp),
            Transport::DirectTls => {
                let acceptor = TlsAcceptor::from(shared.tls_direct.clone());
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => Conn::Tls(Box::new(s)),
                    Ok(Err(e)) => {
                        debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!("TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let id = shared.next_session_id();
        let config = C2sConfig {
            domains: shared.config.domains.clone(),
            transport,
            allow_plaintext_auth: shared.config.auth.allow_plaintext_without_tls,
            registration: shared.config.registration_enabled(),
            limits: outpost_proto::xml::Limits {
                max_stanza_bytes: shared.config.limits.max_stanza_bytes,
                max_depth: shared.config.limits.max_depth,
            },
            max_auth_attempts: 3,
        };
        let stream_id: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(16)
            .map(char::from)
            .collect();
        let mut session = Session {
            proto: C2sStream::new(config, stream_id),
            shared,
            id,
            peer,
            tx,
            user: None,
            jid: None,
            available: false,
            priority: 0,
            presence: None,
            directed: HashSet::new(),
            roster: HashMap::new(),
            roster_interested: false,
            blocklist: Arc::new(Vec::new()),
            blocklist_interested: false,
            offline_pending: None,
            offline_claimed: false,
            ping_outstanding: false,
        };
        session.run(conn, rx).await;
    }
    .instrument(span)
    .await
}

pub(crate) struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) proto: C2sStream,
    pub(crate) tx: mpsc::Sender<ToSession>,
    /// Set after SASL.
    pub(crate) user: Option<BareJid>,
    /// Set after resource binding.
    pub(crate) jid: Option<FullJid>,
    /// Whether the client has sent available presence (RFC 6121 §4.2).
    pub(crate) available: bool,
    pub(crate) priority: i8,
    /// The last available presence broadcast, as sent (answers probes).
    pub(crate) presence: Option<Element>,
    /// Entities that got directed presence and must hear of unavailability (RFC 6121 §4.6).
    pub(crate) directed: HashSet<Jid>,
    /// The user's roster by contact bare JID, loaded at bind and kept current by pushes.
    pub(crate) roster: HashMap<String, RosterItem>,
    /// The client asked for the roster, so it gets roster pushes (RFC 6121 §2.1.6).
    pub(crate) roster_interested: bool,
    pub(crate) blocklist: Arc<Vec<String>>,
    pub(crate) blocklist_interested: bool,
    /// Id of the last offline message in the output not yet written to the socket.
    pub(crate) offline_pending: Option<i64>,
    /// This session holds the user's offline-delivery claim.
    pub(crate) offline_claimed: bool,
    ping_outstanding: bool,
}

impl Session {
    async fn run(&mut self, mut conn: Conn, mut rx: mpsc::Receiver<ToSession>) {
        let limits = &self.shared.config.limits;
        let ping_interval = Duration::from_secs(limits.ping_interval_secs);
        let idle_timeout = Duration::from_secs(limits.idle_timeout_secs);
        let mut budget = ReadBudget::new(
            limits.read_rate_bytes_per_sec,
            limits.read_burst_bytes,
            std::time::Instant::now(),
        );
        let started = Instant::now();
        let mut last_read = Instant::now();
        let mut buf = vec![0u8; READ_CHUNK];
        let shutdown = self.shared.shutdown.clone();

        let end = loop {
            // Deadline for the next timer action: before authentication, the login
            // deadline; afterwards a ping when the client has been silent, then the idle
            // timeout.
            let deadline = if self.user.is_none() {
                started + AUTH_TIMEOUT
            } else if self.ping_outstanding {
                last_read + idle_timeout
            } else {
                last_read + ping_interval.min(idle_timeout)
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    self.proto.close(Some("system-shutdown"), None);
                    break End::Closed;
                }
                read = conn.read(&mut buf) => {
                    let n = match read {
                        Ok(0) => break End::Io,
                        Ok(n) => n,
                        Err(e) => {
                            debug!(error = %e, "read failed");
                            break End::Io;
                        }
                    };
                    last_read = Instant::now();
                    self.ping_outstanding = false;
                    self.proto.handle_input(&buf[..n]);
                    if let Some(end) = self.drive(&mut conn).await {
                        break end;
                    }
                    if let Some(wait) = budget.spend(n, std::time::Instant::now()) {
                        // Over the read budget: stop reading for a while (RFC 6120 §13.12).
                        tokio::time::sleep(wait).await;
                    }
                }
                msg = rx.recv() => {
                    let Some(msg) = msg else { break End::Io };
                    self.on_message_from_router(msg).await;
                    // Take whatever else is queued, so one write carries a batch.
                    for _ in 0..64 {
                        match rx.try_recv() {
                            Ok(msg) => self.on_message_from_router(msg).await,
                            Err(_) => break,
                        }
                    }
                    if let Some(end) = self.drive(&mut conn).await {
                        break end;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    if self.user.is_none() {
                        self.proto.close(Some("connection-timeout"), Some("authentication took too long"));
                        break End::Closed;
                    } else if !self.ping_outstanding && last_read + ping_interval <= Instant::now()
                        && ping_interval < idle_timeout
                    {
                        self.send_ping();
                        self.ping_outstanding = true;
                        if let Some(end) = self.flush(&mut conn).await {
                            break end;
                        }
                    } else {
                        self.proto.close(Some("connection-timeout"), None);
                        break End::Closed;
                    }
                }
            }
        };
        if matches!(end, End::Closed) {
            let _ = self.flush(&mut conn).await;
        }
        self.finish().await;
        // Messages still queued for this session must not be lost: keep the chat ones.
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            if let ToSession::Stanza(el) = msg {
                self.rescue(el).await;
            }
        }
        conn.shutdown().await;
    }

    /// Processes protocol events and writes output; `Some` when the session must end.
    async fn drive(&mut self, conn: &mut Conn) -> Option<End> {
        loop {
            while let Some(event) = self.proto.poll_event() {
                match event {
                    Event::StartTls => {
                        if let Some(end) = self.flush(conn).await {
                            return Some(end);
                        }
                        let Conn::Plain(tcp) = std::mem::replace(conn, Conn::Detached) else {
                            return Some(End::Io);
                        };
                        let acceptor = TlsAcceptor::from(self.shared.tls_starttls.clone());
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(tls)) => *conn = Conn::Tls(Box::new(tls)),
                            _ => {
                                debug!("STARTTLS handshake failed");
                                return Some(End::Io);
                            }
                        }
                        self.proto.tls_established();
                    }
                    Event::NeedCredentials { username, domain } => {
                        self.provide_credentials(&username, &domain).await;
                    }
                    Event::Authenticated { user } => {
                        self.shared.throttle.record_success(user.as_str());
                        tracing::Span::current().record("jid", user.as_str());
                        info!("authenticated");
                        self.user = Some(user);
                    }
                    Event::AuthFailed {
                        username,
                        condition,
                    } => {
                        let account = username.map(|u| format!("{u}@{}", self.proto.domain()));
                        info!(
                            account = account.as_deref().unwrap_or(""),
                            condition, "authentication failed"
                        );
                        self.shared.throttle.record_failure(
                            std::time::Instant::now(),
                            self.peer.ip(),
                            account.as_deref(),
                        );
                    }
                    Event::PreAuthIq(iq) => self.on_pre_auth_iq(iq).await,
                    Event::BindRequest { resource } => self.bind(resource).await,
                    Event::Bound { jid } => {
                        tracing::Span::current().record("jid", jid.as_str());
                        self.jid = Some(jid);
                    }
                    Event::Stanza(el) => self.on_client_stanza(el).await,
                    Event::Closed { error } => {
                        if let Some(condition) = error {
                            info!(condition, "stream closed with error");
                        }
                        let _ = self.flush(conn).await;
                        return Some(End::Closed);
                    }
                }
            }
            if let Some(end) = self.flush(conn).await {
                return Some(end);
            }
            // Peek, not poll: a polled event would be lost.
            if !self.proto.has_event() {
                return None;
            }
        }
    }

    /// Writes all pending output. After each successful write, a delivered offline batch
    /// is deleted and the next one queued, so this loops until the queue is drained.
    async fn flush(&mut self, conn: &mut Conn) -> Option<End> {
        while self.proto.has_output() {
            let out = self.proto.take_output();
            match tokio::time::timeout(WRITE_TIMEOUT, conn.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(error = %e, "write failed");
                    return Some(End::Io);
                }
                Err(_) => {
                    info!("write timed out; closing a client that does not read");
                    return Some(End::Io);
                }
            }
            if self.offline_pending.is_some() && !self.proto.is_closed() {
                self.offline_written().await;
            }
        }
        None
    }

    async fn provide_credentials(&mut self, username: &str, domain: &str) {
        let account = format!("{username}@{domain}");
        if self
            .shared
            .throttle
            .is_blocked(std::time::Instant::now(), self.peer.ip(), &account)
        {
            self.proto.auth_rejected("temporary-auth-failure");
            return;
        }
        let creds = match BareJid::new(&account) {
            Ok(jid) => match self.shared.store.credentials(jid.as_str()).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "cannot read credentials");
                    self.proto.auth_rejected("temporary-auth-failure");
                    return;
                }
            },
            Err(_) => None,
        };
        let keys = |k: &outpost_store::ScramKeys| ScramKeys {
            salt: k.salt.clone(),
            iterations: k.iterations,
            stored_key: k.stored_key.clone(),
            server_key: k.server_key.clone(),
        };
        let (sha1, sha256) = match &creds {
            Some(c) => (Some(keys(&c.sha1)), Some(keys(&c.sha256))),
            None => (None, None),
        };
        let mut rng = rand::rng();
        let nonce: String = (&mut rng)
            .sample_iter(Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let seed: [u8; 16] = rng.random();
        self.proto.provide_credentials(sha1, sha256, &nonce, &seed);
    }

    async fn bind(&mut self, requested: Option<String>) {
        let Some(user) = self.user.clone() else {
            self.proto.bind_result(Err("not-authorized"));
            return;
        };
        let resource = requested.unwrap_or_else(|| {
            let suffix: String = rand::rng()
                .sample_iter(Alphanumeric)
                .take(8)
                .map(char::from)
                .collect();
            format!("outpost-{suffix}")
        });
        let Ok(jid) = user.with_resource_str(&resource) else {
            self.proto.bind_result(Err("bad-request"));
            return;
        };
        // Load what the session needs before it can receive anything.
        let roster = match self.shared.store.roster(user.as_str()).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot load roster");
                self.proto.bind_result(Err("internal-server-error"));
                return;
            }
        };
        let blocklist = match self.shared.store.blocklist(user.as_str()).await {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot load block list");
                self.proto.bind_result(Err("internal-server-error"));
                return;
            }
        };
        self.roster = roster
            .items
            .into_iter()
            .map(|i| (i.jid.clone(), i))
            .collect();
        self.blocklist = Arc::new(blocklist);
        let max = self.shared.config.limits.max_resources_per_account;
        match self.shared.router.bind(&jid, self.id, self.tx.clone(), max) {
            BindOutcome::Bound => self.proto.bind_result(Ok(jid)),
            BindOutcome::TooMany => self.proto.bind_result(Err("resource-constraint")),
        }
    }

    fn send_ping(&mut self) {
        let mut iq = Element::builder("iq", ns::CLIENT)
            .attr(stanza::name("type"), "get")
            .attr(stanza::name("id"), format!("ping-{}", self.id))
            .append(Element::builder("ping", ns::PING).build())
            .build();
        stanza::set_attr(&mut iq, "from", self.proto.domain());
        if let Some(jid) = &self.jid {
            stanza::set_attr(&mut iq, "to", jid.as_str());
        }
        self.proto.send(&iq);
    }

    /// Ends the session: unavailable presence to everyone who had presence (on clean and
    /// abrupt disconnects alike, RFC 6121 §4.5.2), and the router entry removed.
    async fn finish(&mut self) {
        self.release_offline();
        if let Some(jid) = self.jid.clone() {
            if self.available || !self.directed.is_empty() {
                let mut unavailable = Element::builder("presence", ns::CLIENT)
                    .attr(stanza::name("type"), "unavailable")
                    .build();
                stanza::set_attr(&mut unavailable, "from", jid.as_str());
                self.broadcast_unavailable(unavailable).await;
            }
            self.shared.router.unbind(&jid, self.id);
            info!("session ended");
        }
    }
}
