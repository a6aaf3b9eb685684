//! One client connection: the task that owns the socket, drives the sans-IO
//! [`C2sStream`], and carries the session's state (presence, roster cache, block list).
//!
//! The task waits on three things at once: bytes from the client, messages from other
//! sessions (its bounded channel), and its timers. It never waits on another session:
//! deliveries use `try_send` (see `router`), so no cycle of sessions can deadlock.

use std::collections::{HashMap, HashSet};
use std::future::Future as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
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
use crate::router::{BindOutcome, SessionRx, SessionTx, ToSession};
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
const READ_CHUNK: usize = 8192;
/// Most bytes read in one turn before timers and the channel get a look in.
const MAX_READ_PER_TURN: usize = 64 * 1024;

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
    /// Waits until the socket has something to read.
    async fn readable(&self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.readable().await,
            Conn::Tls(s) => s.get_ref().0.readable().await,
            Conn::Detached => Err(detached()),
        }
    }

    /// Reads without waiting: `Ok(None)` when nothing is available now, `Ok(Some(0))` at
    /// the end of the stream.
    fn try_read(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        let result = match self {
            Conn::Plain(s) => s.try_read(buf),
            // One poll with a no-op waker: rustls hands out buffered plaintext first, and
            // reports `Pending` only once the socket has nothing more, which is exactly
            // when waiting on `readable` is right.
            Conn::Tls(s) => {
                let mut read = std::pin::pin!(s.read(buf));
                let mut cx = Context::from_waker(Waker::noop());
                match read.as_mut().poll(&mut cx) {
                    Poll::Ready(r) => r,
                    Poll::Pending => return Ok(None),
                }
            }
            Conn::Detached => Err(detached()),
        };
        match result {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
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
            Transport::DirectTls => match Box::pin(accept_tls(&shared.tls_direct, tcp)).await {
                Some(tls) => tls,
                None => return,
            },
        };
        // Boxed, like the handshake above: a task's memory is the largest state its future
        // can be in, and only the session's should count for an idle connection.
        Box::pin(start(shared, conn, peer, transport)).await;
    }
    .instrument(span)
    .await
}

/// The server side of a TLS handshake, with a deadline.
async fn accept_tls(config: &Arc<rustls::ServerConfig>, tcp: TcpStream) -> Option<Conn> {
    let acceptor = TlsAcceptor::from(config.clone());
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Some(Conn::Tls(Box::new(s))),
        Ok(Err(e)) => {
            debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            None
        }
    }
}

/// Builds the session for an established connection and runs it.
async fn start(shared: Arc<Shared>, conn: Conn, peer: SocketAddr, transport: Transport) {
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
    // The session lives in its own allocation; the task holds only the loop's state.
    let session = Box::new(Session {
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
    });
    session.run(conn, rx).await;
}
pub(crate) struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) proto: C2sStream,
    pub(crate) tx: SessionTx,
    /// Set after SASL.
    pub(crate) user: Option<BareJid>,
    /// Set after resource binding.
    pub(crate) jid: Option<FullJid>,
    /// Whether the client has sent available presence (RFC 6121 §4.2).
    pub(crate) available: bool,
    pub(crate) priority: i8,
    /// The last available presence broadcast, as sent (answers probes).
    /// Kept serialised: an element costs about ten times its text, for every idle session,
    /// and is needed only to answer probes.
    pub(crate) presence: Option<Box<str>>,
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
    async fn run(mut self: Box<Self>, mut conn: Conn, mut rx: SessionRx) {
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
        let shutdown = self.shared.shutdown.clone();
        // Bytes may already be waiting in the TLS layer after a handshake, so the first
        // turn reads without waiting for the socket.
        let mut drain_now = true;
        // One timer, re-armed only when it fires (see `next_deadline`): messages and reads
        // do not touch the timer wheel.
        let mut armed = started + AUTH_TIMEOUT;
        let sleep = tokio::time::sleep_until(armed);
        tokio::pin!(sleep);

        let end = loop {
            // The deadline only moves earlier on rare changes (login, an answered ping);
            // moving later is handled when the timer fires.
            let due = self.next_deadline(started, last_read, ping_interval, idle_timeout);
            if due < armed {
                armed = due;
                sleep.as_mut().reset(due);
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.proto.close(Some("system-shutdown"), None);
                    break End::Closed;
                }
                ready = conn.readable(), if !drain_now => {
                    if let Err(e) = ready {
                        debug!(error = %e, "socket failed");
                        break End::Io;
                    }
                    drain_now = true;
                }
                () = std::future::ready(()), if drain_now => {
                    let (n, more) = match self.drain(&mut conn).await {
                        Ok(r) => r,
                        Err(end) => break end,
                    };
                    // A STARTTLS handshake happens inside `drain`, which then goes on
                    // reading the TLS stream until it is empty, so nothing waits unseen.
                    drain_now = more;
                    if n > 0 {
                        last_read = Instant::now();
                        self.ping_outstanding = false;
                    }
                    if let Some(wait) = budget.spend(n, std::time::Instant::now()) {
                        // Over the read budget: stop reading for a while (RFC 6120 §13.12).
                        tokio::time::sleep(wait).await;
                    }
                }
                msg = rx.recv() => {
                    let Some(msg) = msg else { break End::Io };
                    Box::pin(self.on_message_from_router(*msg)).await;
                    // Take whatever else is queued, so one write carries a batch.
                    for _ in 0..64 {
                        match rx.try_recv() {
                            Ok(msg) => Box::pin(self.on_message_from_router(*msg)).await,
                            Err(_) => break,
                        }
                    }
                    if let Some(end) = self.drive(&mut conn).await {
                        break end;
                    }
                }
                () = &mut sleep => {
                    let now = Instant::now();
                    let deadline = self.next_deadline(started, last_read, ping_interval, idle_timeout);
                    if now < deadline {
                        armed = deadline;
                        sleep.as_mut().reset(deadline);
                        continue;
                    }
                    if self.user.is_none() {
                        self.proto.close(Some("connection-timeout"), Some("authentication took too long"));
                        break End::Closed;
                    } else if !self.ping_outstanding && ping_interval < idle_timeout {
                        self.send_ping();
                        self.ping_outstanding = true;
                        armed = last_read + idle_timeout;
                        sleep.as_mut().reset(armed);
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
        Box::pin(self.finish()).await;
        // Messages still queued for this session must not be lost: keep the chat ones.
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            if let ToSession::Stanza(el) = *msg {
                Box::pin(self.rescue(el)).await;
            }
        }
        conn.shutdown().await;
    }

    /// When the timer must next act: before authentication, the login deadline;
    /// afterwards a ping when the client has been silent, then the idle timeout.
    fn next_deadline(
        &self,
        started: Instant,
        last_read: Instant,
        ping_interval: Duration,
        idle_timeout: Duration,
    ) -> Instant {
        if self.user.is_none() {
            started + AUTH_TIMEOUT
        } else if self.ping_outstanding {
            last_read + idle_timeout
        } else {
            last_read + ping_interval.min(idle_timeout)
        }
    }

    /// Reads what the socket (and the TLS layer) has now, without waiting, and processes
    /// it. Returns the bytes read and whether more may be waiting. The buffer exists only
    /// while reading, so an idle session holds none.
    async fn drain(&mut self, conn: &mut Conn) -> Result<(usize, bool), End> {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut total = 0;
        while total < MAX_READ_PER_TURN {
            match conn.try_read(&mut buf) {
                Ok(None) => return Ok((total, false)),
                Ok(Some(0)) => return Err(End::Io),
                Ok(Some(n)) => {
                    total += n;
                    self.proto.handle_input(&buf[..n]);
                    if let Some(end) = self.drive(conn).await {
                        return Err(end);
                    }
                }
                Err(e) => {
                    debug!(error = %e, "read failed");
                    return Err(End::Io);
                }
            }
        }
        Ok((total, true))
    }

    /// Processes protocol events and writes output; `Some` when the session must end.
    ///
    /// Handlers are awaited boxed: their state exists only while a stanza is handled,
    /// instead of being part of every idle session's task.
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
                        match Box::pin(accept_tls(&self.shared.tls_starttls, tcp)).await {
                            Some(tls) => *conn = tls,
                            None => return Some(End::Io),
                        }
                        self.proto.tls_established();
                    }
                    Event::NeedCredentials { username, domain } => {
                        Box::pin(self.provide_credentials(&username, &domain)).await;
                    }
                    Event::Authenticated { user } => {
                        self.shared.throttle.record_success(user.as_str());
                        // The span's `jid` is recorded once, with the resource, at bind.
                        info!(user = %user, "authenticated");
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
                    Event::PreAuthIq(iq) => Box::pin(self.on_pre_auth_iq(iq)).await,
                    Event::BindRequest { resource } => Box::pin(self.bind(resource)).await,
                    Event::Bound { jid } => {
                        tracing::Span::current().record("jid", jid.as_str());
                        self.jid = Some(jid);
                    }
                    Event::Stanza(el) => Box::pin(self.on_client_stanza(el)).await,
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
                Box::pin(self.offline_written()).await;
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

    /// The last available presence broadcast, for answering probes.
    pub(crate) fn current_presence(&self) -> Option<Element> {
        self.presence.as_deref().and_then(|p| p.parse().ok())
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
