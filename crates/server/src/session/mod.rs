//! One client connection: the task that owns the socket, drives the sans-IO
//! [`C2sStream`], and carries the session's state (presence, roster cache, block list),
//! which no other module sees.
//!
//! The task waits on three things at once: bytes from the client, messages from other
//! sessions (its bounded channel), and its timers. It never waits on another session:
//! deliveries use `try_send` (see `router`), so no cycle of sessions can deadlock.
//!
//! - `login`: SASL credentials and resource binding;
//! - `stanzas`: what the client sends (messages, IQs) and the answers it gets;
//! - `presence`: the user's presence: broadcasts, probes, directed presence;
//! - `inbox`: what other sessions and the server send this one;
//! - `offline`: writing the user's offline messages to this session;
//! - `resume`: stream management (XEP-0198): resumption, hibernation, and what becomes of
//!   unacknowledged stanzas;
//! - `migrate`: a session moving between nodes of a cluster when its stream is resumed at
//!   another node.

mod inbox;
mod login;
mod migrate;
mod offline;
mod presence;
mod resume;
mod stanzas;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use outpost_proto::StreamMachine;
use outpost_proto::c2s::{C2sConfig, C2sStream, Event, Transport};
use outpost_proto::stanza::{self, StanzaError, ns};
use outpost_store::RosterItem;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info};

use crate::c2s_conn::Conn;
use crate::config::Config;
use crate::delivery::{Accepted, Delivery, Undeliverable};
use crate::router::{SessionRx, SessionTx, ToSession};
use crate::throttle::{LoginLimits, LoginThrottle, ReadBudget, RegistrationThrottle};

/// Capacity of a session's inbound channel. A client that lets this many stanzas pile up
/// is not reading; its socket write times out and the session ends.
const CHANNEL_CAPACITY: usize = 1024;
/// An unauthenticated connection has this long to log in (slow-loris protection).
const AUTH_TIMEOUT: Duration = Duration::from_secs(60);
/// A write that makes no progress for this long means the client is gone or stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Size of the read buffer; stanzas larger than this arrive over several reads.
const READ_CHUNK: usize = 8192;
/// Most bytes read in one turn before timers and the channel get a look in.
const MAX_READ_PER_TURN: usize = 64 * 1024;
/// Messages from other sessions handled in one turn before the output is written.
const INBOX_BATCH: usize = 64;
/// Writes a session lets wait for their commit while it has nothing to write; more, and it
/// waits for them (which bounds what a sender that never reads an answer keeps pending).
const MAX_UNSETTLED: usize = 4096;
/// Stanzas held for an inactive client (XEP-0352) before they are written anyway.
const CSI_MAX_HELD: usize = 256;

/// What every client session shares.
pub(crate) struct Env {
    delivery: Arc<Delivery>,
    /// Replaced as a whole by a reload; a session reads it when it needs it, and the limits
    /// of a connection are those of the moment it was accepted.
    config: RwLock<Arc<Config>>,
    pub(crate) throttle: LoginThrottle,
    pub(crate) registrations: RegistrationThrottle,
    tls: RwLock<Arc<ClientTls>>,
    pub(crate) shutdown: CancellationToken,
    next_session: AtomicU64,
    /// Users whose offline queue a session is writing right now.
    offline_claims: Mutex<HashSet<BareJid>>,
    /// The cluster this server is a node of, where streams held at other nodes are
    /// resumed from.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The TLS configurations of the client listeners (and of HTTPS, which clients use too).
#[derive(Clone)]
pub(crate) struct ClientTls {
    pub(crate) starttls: Arc<rustls::ServerConfig>,
    pub(crate) direct: Arc<rustls::ServerConfig>,
    pub(crate) https: Arc<rustls::ServerConfig>,
}

impl ClientTls {
    pub(crate) fn new(
        identity: &crate::tls::TlsIdentity,
    ) -> Result<ClientTls, crate::tls::TlsError> {
        Ok(ClientTls {
            starttls: identity.server_config(&[])?,
            direct: identity.server_config(&[b"xmpp-client"])?,
            https: identity.server_config(&[b"http/1.1"])?,
        })
    }
}

impl Env {
    pub(crate) fn new(
        delivery: Arc<Delivery>,
        config: Config,
        tls: ClientTls,
        shutdown: CancellationToken,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Env {
        let limits = &config.limits;
        let throttle = LoginThrottle::new(login_limits(&config));
        let registrations = RegistrationThrottle::new(
            limits.registrations_per_ip,
            Duration::from_secs(limits.registration_window_secs),
        );
        Env {
            delivery,
            throttle,
            registrations,
            tls: RwLock::new(Arc::new(tls)),
            config: RwLock::new(Arc::new(config)),
            shutdown,
            next_session: AtomicU64::new(1),
            offline_claims: Mutex::new(HashSet::new()),
            cluster,
        }
    }

    /// The configuration now.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The domains served now.
    pub(crate) fn domains(&self) -> Vec<String> {
        self.config().domains.clone()
    }

    fn tls(&self) -> Arc<ClientTls> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The TLS configuration of `listen.https` now.
    pub(crate) fn https_tls(&self) -> Arc<rustls::ServerConfig> {
        self.tls().https.clone()
    }

    /// A reload: new connections get the new configuration and certificates, login limits
    /// apply at once; sessions go on.
    pub(crate) fn reload(&self, config: Config, tls: ClientTls) {
        self.throttle.set_limits(login_limits(&config));
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tls);
    }

    /// Forgets failed-login counts (see [`LoginThrottle::unblock`]).
    pub(crate) fn unblock(
        &self,
        account: Option<&str>,
        address: Option<std::net::IpAddr>,
    ) -> usize {
        self.throttle.unblock(account, address)
    }

    fn claim_offline(&self, user: &BareJid) -> bool {
        self.offline_claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.clone())
    }

    fn release_offline(&self, user: &BareJid) {
        self.offline_claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
    }
}

fn login_limits(config: &Config) -> LoginLimits {
    let l = &config.limits;
    LoginLimits {
        per_ip: l.login_failures_per_ip,
        per_account: l.login_failures_per_account,
        per_pair: l.login_failures_per_address_account,
        window: Duration::from_secs(l.login_failure_window_secs),
    }
}

/// Serves one client connection until it ends.
pub(crate) async fn serve(env: Arc<Env>, tcp: TcpStream, peer: SocketAddr, transport: Transport) {
    let span = tracing::info_span!("c2s", %peer, jid = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let conn = match transport {
            Transport::StartTls => Conn::Plain(tcp),
            Transport::DirectTls => {
                match Box::pin(Conn::Plain(tcp).accept_tls(&env.tls().direct)).await {
                    Some(tls) => tls,
                    None => return,
                }
            }
        };
        // Boxed, like the handshake above: a task's memory is the largest state its future
        // can be in, and only the session's should count for an idle connection.
        Box::pin(start(env, conn, peer, transport, None)).await;
    }
    .instrument(span)
    .await
}

/// Serves one client stream over a WebSocket the HTTP service accepted (TLS done there),
/// until it ends: the same session as on a direct TLS connection.
pub(crate) async fn serve_websocket(
    env: Arc<Env>,
    conn: Box<crate::c2s_ws::WsConn>,
    peer: SocketAddr,
) {
    let span =
        tracing::info_span!("c2s", %peer, transport = "websocket", jid = tracing::field::Empty);
    Box::pin(start(env, Conn::Ws(conn), peer, Transport::DirectTls, None))
        .instrument(span)
        .await
}

/// Serves the stream of an API session (see `api`): its user was authenticated by the
/// HTTP API's token, so the stream starts at resource binding.
pub(crate) async fn serve_api(
    env: Arc<Env>,
    conn: Box<crate::c2s_ws::WsConn>,
    peer: SocketAddr,
    user: BareJid,
) {
    let span = tracing::info_span!("c2s", %peer, transport = "api", jid = tracing::field::Empty);
    let conn = Conn::Ws(conn);
    Box::pin(start(env, conn, peer, Transport::DirectTls, Some(user)))
        .instrument(span)
        .await
}

/// Builds the session for an established connection and runs it; `user` when the server
/// authenticated it already.
async fn start(
    env: Arc<Env>,
    conn: Conn,
    peer: SocketAddr,
    transport: Transport,
    user: Option<BareJid>,
) {
    let (session, rx) = Session::new(env, peer, transport, user);
    session.run(conn, rx).await;
}

impl Session {
    /// A session that has read nothing yet. Not async, so the stream machine it builds
    /// (over a kilobyte) never sits in the task's future beside the session that owns it.
    fn new(
        env: Arc<Env>,
        peer: SocketAddr,
        transport: Transport,
        user: Option<BareJid>,
    ) -> (Box<Session>, SessionRx) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let id = env.next_session.fetch_add(1, Ordering::Relaxed);
        let now = env.config();
        // On a hub, its sites' domains too: whether it serves them is decided at login.
        let mut domains = now.domains.clone();
        domains.extend(env.delivery.standby().sites().iter().cloned());
        let config = C2sConfig {
            domains,
            transport,
            allow_plaintext_auth: now.auth.allow_plaintext_without_tls,
            registration: now.registration_enabled(),
            limits: outpost_proto::xml::Limits {
                max_stanza_bytes: now.limits.max_stanza_bytes,
                max_depth: now.limits.max_depth,
            },
            max_auth_attempts: 3,
            stream_management: now.stream_management.enabled,
        };
        let mut proto = C2sStream::new(config, crate::ids::random_id(16));
        if let Some(user) = &user {
            proto.authenticated_externally(user.clone());
        }
        let session = Box::new(Session {
            proto,
            env,
            id,
            peer,
            tx,
            user,
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
            accepted: Accepted::default(),
            detached: false,
            csi: Csi::default(),
            avatar_hash: None,
        });
        (session, rx)
    }
}

struct Session {
    env: Arc<Env>,
    id: u64,
    peer: SocketAddr,
    proto: C2sStream,
    tx: SessionTx,
    /// Set after SASL.
    user: Option<BareJid>,
    /// Set after resource binding.
    jid: Option<FullJid>,
    /// Whether the client has sent available presence (RFC 6121 §4.2).
    available: bool,
    priority: i8,
    /// The last available presence broadcast, as sent (answers probes).
    /// Kept serialised: an element costs about ten times its text, for every idle session,
    /// and is needed only to answer probes.
    presence: Option<Box<str>>,
    /// Entities that got directed presence and must hear of unavailability (RFC 6121 §4.6).
    directed: HashSet<Jid>,
    /// The user's roster by contact bare JID, loaded at bind and kept current by pushes.
    roster: HashMap<String, RosterItem>,
    /// The client asked for the roster, so it gets roster pushes (RFC 6121 §2.1.6).
    roster_interested: bool,
    blocklist: Arc<Vec<String>>,
    blocklist_interested: bool,
    /// Id of the last offline message in the output not yet written to the socket.
    offline_pending: Option<i64>,
    /// This session holds the user's offline-delivery claim.
    offline_claimed: bool,
    ping_outstanding: bool,
    /// What the client's stanzas wrote that is not yet known to be durable: settled
    /// before anything more is written to the client (see `delivery`).
    accepted: Accepted,
    /// The connection is gone and the session waits to be resumed (see `resume`).
    detached: bool,
    /// Client state indication (XEP-0352): what the client asked for and what is held.
    csi: Csi,
    /// The hash of the user's avatar, put into its presence (XEP-0398); read again after
    /// this client changes the avatar.
    avatar_hash: Option<String>,
}

/// While the client says it is inactive (XEP-0352), output waits until something important
/// is in it, the client speaks, or [`CSI_MAX_HELD`] stanzas are held. Held stanzas are in
/// the output buffer already, in order and counted for stream management, so nothing is
/// reordered or dropped; they are only written later.
#[derive(Default)]
struct Csi {
    inactive: bool,
    /// Stanzas written to the output buffer since the last write.
    held: usize,
    /// Something important is in the output buffer, or the client spoke: write now.
    urgent: bool,
}

/// Why the loop stopped.
enum End {
    /// The stream is closed on the protocol level (output already queued).
    Closed,
    /// The socket failed or hit EOF.
    Io,
    /// A new connection resumes this session (XEP-0198): the current one, if it is still
    /// open, is abandoned.
    Resume(Box<crate::c2s_conn::Resumption>),
    /// This connection resumed another session, which took the socket.
    HandedOff,
    /// A connection at another node resumes this session, which moves there.
    Migrate(Box<crate::handover::Migration>),
}

/// The session's one timer and what it measures (see [`Session::next_deadline`]).
struct Clock {
    started: Instant,
    last_read: Instant,
    ping_interval: Duration,
    idle_timeout: Duration,
    /// When the timer is set to fire. Re-armed only when it fires or must move earlier:
    /// messages and reads do not touch the timer wheel.
    armed: Instant,
}

impl Session {
    fn delivery(&self) -> &Delivery {
        &self.env.delivery
    }

    async fn run(mut self: Box<Self>, mut conn: Conn, mut rx: SessionRx) {
        let end = loop {
            let resumed = match self.serve(&mut conn, &mut rx).await {
                End::Resume(r) => {
                    // XEP-0198 §5: the old connection, if still open, is told why it ends.
                    conn.abandon("resumed by a new connection").await;
                    Some(r)
                }
                End::Migrate(m) => {
                    conn.abandon("resumed by a new connection").await;
                    break End::Migrate(m);
                }
                End::Io if self.resumable() => {
                    conn.shutdown().await;
                    match self.hibernate(&mut rx).await {
                        Some(End::Resume(r)) => Some(r),
                        Some(End::Migrate(m)) => break End::Migrate(m),
                        _ => None,
                    }
                }
                end => break end,
            };
            match resumed {
                Some(r) => conn = self.adopt(*r),
                None => break End::Io,
            }
        };
        match end {
            End::HandedOff => return,
            End::Migrate(m) => return Box::pin(self.move_away(*m, rx)).await,
            _ => {}
        }
        if matches!(end, End::Closed) {
            let _ = self.flush(&mut conn).await;
        }
        self.settle().await;
        Box::pin(self.finish()).await;
        // Messages still queued for this session must not be lost: keep the chat ones.
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            if let ToSession::Stanza(el) = *msg {
                Box::pin(self.rescue(el)).await;
            }
        }
        conn.shutdown().await;
        if matches!(end, End::Closed) {
            conn.linger().await;
        }
    }

    /// Whether the client may be sent more: fewer stanzas unacknowledged than allowed.
    fn window_open(&self, max_unacked: usize) -> bool {
        self.proto
            .sm()
            .is_none_or(|sm| sm.unacked_len() < max_unacked)
    }

    /// The clock and the read budget a connection starts with.
    fn loop_state(&self) -> (Clock, ReadBudget) {
        let config = self.env.config();
        let limits = &config.limits;
        let now = Instant::now();
        let clock = Clock {
            started: now,
            last_read: now,
            ping_interval: Duration::from_secs(limits.ping_interval_secs),
            idle_timeout: Duration::from_secs(limits.idle_timeout_secs),
            armed: now + AUTH_TIMEOUT,
        };
        let budget = ReadBudget::new(
            limits.read_rate_bytes_per_sec,
            limits.read_burst_bytes,
            std::time::Instant::now(),
        );
        (clock, budget)
    }

    /// Serves the connection until it ends: reads the client, takes what others send,
    /// keeps the timers. Stops taking from the channel while the client has as many
    /// stanzas unacknowledged as allowed.
    ///
    /// What each branch does is boxed while it runs: an idle session waits in the
    /// `select!`, and its task should be the size of that wait (about 700 bytes), not of
    /// the largest handler (over a kilobyte), for as long as it stays connected.
    async fn serve(&mut self, conn: &mut Conn, rx: &mut SessionRx) -> End {
        let max_unacked = self.env.config().stream_management.max_unacked;
        let (mut clock, mut budget) = self.loop_state();
        let shutdown = self.env.shutdown.clone();
        // Bytes may already be waiting in the TLS layer after a handshake (or be queued
        // for the client after a resumption), so the first turn reads without waiting.
        let mut drain_now = true;
        if let Some(end) = self.flush(conn).await {
            return end;
        }
        let sleep = tokio::time::sleep_until(clock.armed);
        tokio::pin!(sleep);

        loop {
            let due = self.next_deadline(&clock);
            if due < clock.armed {
                clock.armed = due;
                sleep.as_mut().reset(due);
            }
            let window_open = self.window_open(max_unacked);
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.proto.close(Some("system-shutdown"), None);
                    return End::Closed;
                }
                ready = conn.readable(), if !drain_now => {
                    if let Err(e) = ready {
                        debug!(error = %e, "socket failed");
                        return End::Io;
                    }
                    drain_now = true;
                }
                () = std::future::ready(()), if drain_now => {
                    match Box::pin(self.read_turn(conn, &mut clock, &mut budget)).await {
                        Ok(more) => drain_now = more,
                        Err(end) => return end,
                    }
                }
                // What the client wrote is committed: a failure is told at once.
                () = self.accepted.oldest_done(), if !self.accepted.is_empty() => {
                    if let Some(end) = Box::pin(self.flush(conn)).await {
                        return end;
                    }
                }
                msg = rx.recv(), if window_open => {
                    let Some(msg) = msg else { return End::Io };
                    if let Some(end) = Box::pin(self.inbox(*msg, rx, conn)).await {
                        return end;
                    }
                }
                () = &mut sleep => {
                    if let Some(end) = Box::pin(self.on_timer(&mut clock, conn)).await {
                        return end;
                    }
                    sleep.as_mut().reset(clock.armed);
                }
            }
        }
    }

    /// Reads and handles what the client sent; `Ok(true)` when more is waiting. A
    /// STARTTLS handshake happens inside `drain`, which then goes on reading the TLS
    /// stream until it is empty, so nothing waits unseen.
    async fn read_turn(
        &mut self,
        conn: &mut Conn,
        clock: &mut Clock,
        budget: &mut ReadBudget,
    ) -> Result<bool, End> {
        let (n, more) = self.drain(conn).await?;
        if n > 0 {
            clock.last_read = Instant::now();
            self.ping_outstanding = false;
        }
        if let Some(wait) = budget.spend(n, std::time::Instant::now()) {
            // Over the read budget: stop reading for a while (RFC 6120 §13.12).
            tokio::time::sleep(wait).await;
        }
        Ok(more)
    }

    /// Handles a message from another session and whatever else is queued, so one write
    /// carries a batch.
    async fn inbox(
        &mut self,
        first: ToSession,
        rx: &mut SessionRx,
        conn: &mut Conn,
    ) -> Option<End> {
        self.proto.set_time(crate::clock::now_ms());
        let mut msg = first;
        let mut handled = 0;
        loop {
            match msg {
                ToSession::Resume(r) => {
                    // What came before goes out on the old connection, if it still takes it.
                    let _ = self.drive(conn).await;
                    return Some(End::Resume(r));
                }
                ToSession::Migrate(m) => {
                    let _ = self.drive(conn).await;
                    return Some(End::Migrate(m));
                }
                other => msg = other,
            }
            Box::pin(self.on_message_from_router(msg)).await;
            handled += 1;
            if handled > INBOX_BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(next) => msg = *next,
                Err(_) => break,
            }
        }
        self.drive(conn).await
    }

    /// The timer fired: the login deadline, a ping to a silent client, or the idle timeout.
    /// Leaves `clock.armed` at the next deadline.
    async fn on_timer(&mut self, clock: &mut Clock, conn: &mut Conn) -> Option<End> {
        let now = Instant::now();
        let deadline = self.next_deadline(clock);
        if now < deadline {
            clock.armed = deadline;
            return None;
        }
        if self.user.is_none() {
            self.proto.close(
                Some("connection-timeout"),
                Some("authentication took too long"),
            );
            return Some(End::Closed);
        }
        if !self.ping_outstanding && clock.ping_interval < clock.idle_timeout {
            self.send_ping();
            self.ping_outstanding = true;
            clock.armed = clock.last_read + clock.idle_timeout;
            return self.flush(conn).await;
        }
        self.proto.close(Some("connection-timeout"), None);
        Some(End::Closed)
    }

    /// When the timer must next act: before authentication, the login deadline;
    /// afterwards a ping when the client has been silent, then the idle timeout.
    fn next_deadline(&self, clock: &Clock) -> Instant {
        if self.user.is_none() {
            clock.started + AUTH_TIMEOUT
        } else if self.ping_outstanding {
            clock.last_read + clock.idle_timeout
        } else {
            clock.last_read + clock.ping_interval.min(clock.idle_timeout)
        }
    }

    /// Reads what the socket (and the TLS layer) has now, without waiting, and processes
    /// it. Returns the bytes read and whether more may be waiting. The buffer exists only
    /// while reading, so an idle session holds none.
    async fn drain(&mut self, conn: &mut Conn) -> Result<(usize, bool), End> {
        self.proto.set_time(crate::clock::now_ms());
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
                if let Some(end) = Box::pin(self.on_event(event, conn)).await {
                    return Some(end);
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

    async fn on_event(&mut self, event: Event, conn: &mut Conn) -> Option<End> {
        match event {
            Event::StartTls => {
                if let Some(end) = self.flush(conn).await {
                    return Some(end);
                }
                let plain = std::mem::replace(conn, Conn::Detached);
                match Box::pin(plain.accept_tls(&self.env.tls().starttls)).await {
                    Some(tls) => *conn = tls,
                    None => return Some(End::Io),
                }
                self.proto.tls_established();
            }
            Event::NeedCredentials { username, domain } => {
                self.provide_credentials(&username, &domain).await;
            }
            Event::Authenticated { user } => self.authenticated(user),
            Event::AuthFailed {
                username,
                condition,
            } => self.auth_failed(username, condition),
            Event::PreAuthIq(iq) => self.on_pre_auth_iq(iq).await,
            Event::BindRequest { resource } => self.bind(resource).await,
            Event::Bound { jid } => {
                tracing::Span::current().record("jid", jid.as_str());
                self.jid = Some(jid);
            }
            Event::Stanza(el) => {
                self.env.delivery.counters().stanza(el.name());
                // A client that sends a stanza is awake: what was held goes out with the
                // answer (XEP-0352 §2). Acknowledgements alone do not wake it.
                self.csi.urgent = true;
                self.on_client_stanza(el).await;
            }
            Event::SmEnable { resume, max } => self.enable_sm(resume, max),
            Event::SmResume { previd, h } => return self.hand_off(previd, h, conn).await,
            Event::ClientState { active } => self.client_state(active),
            Event::Closed { error, text } => {
                if let Some(condition) = error {
                    // Once per connection, with the peer in the span and the cause.
                    info!(
                        condition,
                        reason = text.as_deref().unwrap_or(""),
                        "stream closed with error"
                    );
                }
                let _ = self.flush(conn).await;
                return Some(End::Closed);
            }
        }
        None
    }

    /// Writes all pending output. The client's accepted stanzas are durable first: what
    /// follows them on the wire (a reply, an acknowledgement) says they were accepted.
    /// After each successful write, a delivered offline batch is deleted and the next one
    /// queued, so this loops until the queue is drained.
    async fn flush(&mut self, conn: &mut Conn) -> Option<End> {
        // Nothing to write acknowledges nothing: the client's writes may still be on their
        // way to the disk, and the session goes on reading meanwhile (a sender streaming
        // messages is not held to one commit per read).
        for u in self.accepted.settled_so_far() {
            self.error_to_sender(&u.stanza, u.error);
        }
        if !self.proto.has_output() && self.accepted.len() < MAX_UNSETTLED {
            return None;
        }
        self.settle().await;
        if self.csi.inactive && !self.csi.urgent && self.csi.held < CSI_MAX_HELD {
            return None;
        }
        self.csi.held = 0;
        self.csi.urgent = false;
        // On a managed stream, what goes out now is acknowledged as one batch.
        self.proto.request_ack();
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

    /// Answers a stanza from our own client with an error, unless it is itself an error or
    /// a result (RFC 6120 §8.3.1: never answer an error with an error).
    fn reply_error(&mut self, el: &Element, error: &StanzaError) {
        if matches!(el.attr("type"), Some("error") | Some("result")) {
            return;
        }
        let mut reply = stanza::error_reply(el, error);
        if el.attr("to").is_none() {
            let domain = self.proto.domain().to_owned();
            stanza::set_attr(&mut reply, "from", &domain);
        }
        self.proto.send(&reply);
    }

    /// Sends an error to whoever sent `el`: our own client, or anyone else wherever they
    /// are.
    fn error_to_sender(&mut self, el: &Element, error: StanzaError) {
        let from = el.attr("from");
        if from.is_some() && from == self.jid.as_ref().map(|j| j.as_str()) {
            self.reply_error(el, &error);
        } else {
            self.delivery().bounce(el, error);
        }
    }

    /// Keeps what routing a stanza left to commit, or tells its sender why it was not
    /// delivered.
    fn undeliverable(&mut self, result: Result<Accepted, Box<Undeliverable>>) {
        match result {
            Ok(accepted) => self.accepted.join(accepted),
            Err(u) => self.error_to_sender(&u.stanza, u.error),
        }
    }

    /// Waits until what the client's stanzas wrote is durable; the senders of what could
    /// not be stored hear why.
    async fn settle(&mut self) {
        if self.accepted.is_empty() {
            return;
        }
        for u in std::mem::take(&mut self.accepted).settle().await {
            self.error_to_sender(&u.stanza, u.error);
        }
    }

    /// Whether the user blocks `jid` (XEP-0191).
    fn blocks(&self, jid: &str) -> bool {
        crate::blocking::matches(&self.blocklist, jid)
    }

    /// The last available presence broadcast, for answering probes.
    fn current_presence(&self) -> Option<Element> {
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
    /// abrupt disconnects alike, RFC 6121 §4.5.2), the router entry removed, and what the
    /// client never acknowledged handed on.
    async fn finish(&mut self) {
        self.release_offline();
        if let Some(jid) = self.jid.clone() {
            if self.available || !self.directed.is_empty() {
                let unavailable = stanza::presence(Some("unavailable"), jid.as_str(), None);
                self.broadcast_unavailable(unavailable);
            }
            self.delivery().router().unbind(&jid, self.id);
            self.delivery().caps().unavailable(&jid);
            info!("session ended");
        }
        // Unbound first, so that what goes back to the offline store may go straight to
        // another of the user's sessions.
        self.hand_on_unacked().await;
    }
}
