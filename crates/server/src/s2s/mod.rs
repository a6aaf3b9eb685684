//! Federation: server-to-server links (RFC 6120 §4–§6) around the sans-IO machines of
//! `outpost_proto::s2s`, and the durable outbound queue under them. This is the top of the
//! server's layers: it fills in `delivery`'s [`Remote`] handle, and delivers what peers
//! send through `delivery`, `presence` and `roster` like any local stanza.
//!
//! - [`Federation`] is the registry: one link task per (local domain, remote domain)
//!   pair, created on demand and kept for the life of the server; `queue` resumes links
//!   with stanzas left from before a restart and expires old ones (new entries are
//!   committed through the server's `journal`, with everything else on the message path).
//! - `link` is that task: a thin driver around `link::machine::Link`, the sans-IO state of
//!   the link (which path, the stream, the ack window, owed verifications, timers). It
//!   reaches the peer by one of up to four paths, best first: `direct` (TCP: a
//!   `federation.peers` override, else the domain's SRV records, XEP-0368 direct TLS
//!   included, else the domain on port 5269), `websocket` (HTTPS to the peer's
//!   `federation.websocket_peers` URL), `hub` (TCP to `federation.hub`, which relays) and
//!   `hub-websocket`. Link tasks see only a [`LinkEnv`]: settings, where peers are, the
//!   certificate policy, the store and the link board.
//! - `direct` resolves and dials a peer directly (hickory-resolver for SRV); `ws` carries
//!   streams over WebSocket inside HTTPS (RFC 7395 framing) between Outpost servers: the
//!   `s2s-websocket` listener and the client side.
//! - `status` holds each link's state and path as the link task reports it;
//!   [`crate::ServerHandle::link_statuses`] joins it with the store's queue figures.
//! - `inbound` accepts peers' streams (`S2sIncoming`), checks client certificates for SASL
//!   EXTERNAL, verifies dialback keys over our own link to the claimed domain, answers
//!   `db:verify` for ours, deduplicates messages by XEP-0359 origin-id and delivers what
//!   arrives; on a hub, stanzas between two relayed domains go into the hub's own durable
//!   queue for the destination.
//! - `trust` decides which peer certificates are checked (`federation.pinned`,
//!   `trust_self_signed`); for other peers TLS encrypts and dialback proves the domain,
//!   as most deployed servers accept.
//!
//! What goes through the durable queue: messages and presence subscription stanzas (RFC
//! 6121 §3 asks for subscription requests to survive). Other presence and IQs are sent
//! best-effort: held while a link connects, acknowledged like queued stanzas and written
//! again on the next stream if the one they went out on dies, and answered with
//! `remote-server-not-found` (IQ requests) when every path of a round fails.

mod conn;
mod direct;
mod inbound;
mod link;
mod queue;
mod status;
mod trust;
mod ws;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use minidom::Element;
use outpost_proto::s2s::{DialbackVerdict, RelayPolicy, S2sConfig, Transport};
use outpost_proto::stanza::{Condition, ns};
use outpost_store::Store;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub(crate) use crate::clock::now_ms;
use crate::cluster::{Ask, Cluster, LinkAt, LinkHost, Queued};
use crate::config::{Config, FederationConfig, HostPort, WssUrl};
use crate::delivery::{Accepted, Delivery, Remote, RemoteFuture, YesNo};
use crate::journal::Journal;
use crate::tasks::Tasks;
use crate::tls::{TlsError, TlsIdentity};

pub(crate) use inbound::{deliver_one, serve as serve_inbound, serve_tls as serve_inbound_tls};
pub(crate) use status::LinkBoard;
pub use status::{LinkState, LinkStatus};
pub(crate) use trust::AnyClientCert;
pub(crate) use ws::serve_websocket;

/// Commands a link holds while it connects.
const LINK_CHANNEL: usize = 256;
/// How long a peer's dialback key may wait for the verdict of its authoritative server.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a hub tries to reach a site before it stands in for it (see `standby`).
const REACH_TIMEOUT: Duration = Duration::from_secs(3);

/// What a link task is asked to do besides draining its queue.
pub(crate) type LinkCmd = link::Command<oneshot::Sender<bool>>;

/// Two reasons to wake a link, kept apart so that new messages for a peer that is down do
/// not cut its back-off short: only a sign that the peer is reachable again does.
#[derive(Default)]
pub(crate) struct Wakers {
    /// New stanzas are queued.
    pub(crate) work: Notify,
    /// The peer connected to us: it is reachable now (proactive recovery).
    pub(crate) reachable: Notify,
}

struct LinkHandle {
    tx: mpsc::Sender<LinkCmd>,
    wake: Arc<Wakers>,
    /// Stops the link task (on a cluster, when this node lost the link's lease).
    stop: CancellationToken,
}

/// What link tasks and the dialers see: the federation settings, where peers are, the
/// certificate policy, the store and the link board. Nothing of client sessions.
pub(crate) struct LinkEnv {
    pub(crate) config: FederationConfig,
    secret: String,
    /// `federation.peers`, changeable at run time (tests bind port 0).
    peers: RwLock<HashMap<String, HostPort>>,
    /// `federation.websocket_peers`, changeable at run time like `peers`.
    websocket_peers: RwLock<HashMap<String, WssUrl>>,
    /// Replaced by a reload (new certificates).
    trust: RwLock<Arc<trust::Trust>>,
    /// How peers are found and reached directly: the DNS resolver.
    dialer: direct::Dialer,
    /// Each link's state, for operators.
    pub(crate) board: LinkBoard,
    store: Arc<dyn Store>,
    /// Bounces and presence re-probes; gone only while the server stops.
    delivery: Weak<Delivery>,
    shutdown: CancellationToken,
    /// This node's cluster, when it is one: each link runs on one node at a time.
    cluster: OnceLock<Arc<Cluster>>,
}

impl LinkEnv {
    /// The TLS client configuration for a stream to `domain` (see `trust`).
    pub(crate) fn tls_client_for(&self, domain: &str) -> Arc<rustls::ClientConfig> {
        self.trust().client_config(domain)
    }

    /// The certificate policy now.
    pub(crate) fn trust(&self) -> Arc<trust::Trust> {
        self.trust.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `domain`'s entry in `federation.peers`.
    fn peer_override(&self, domain: &str) -> Option<HostPort> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        peers.get(domain).cloned()
    }

    /// `domain`'s entry in `federation.websocket_peers`: the `wss://` URL of its endpoint.
    fn websocket_peer(&self, domain: &str) -> Option<WssUrl> {
        let peers = self
            .websocket_peers
            .read()
            .unwrap_or_else(|p| p.into_inner());
        peers.get(domain).cloned()
    }

    fn delivery(&self) -> Option<Arc<Delivery>> {
        self.delivery.upgrade()
    }
}

/// What can fail before the server starts: the certificate policy and TLS settings.
pub(crate) struct Prepared {
    config: FederationConfig,
    secret: String,
    trust: trust::Trust,
    dialer: direct::Dialer,
    listening: Listening,
    idle_timeout: Duration,
    max_stanza_bytes: usize,
    /// On a hub: the sites whose directories it keeps a replica of.
    replica_sites: Option<Vec<String>>,
}

/// What incoming streams are accepted with: the listeners' TLS and our domains. Replaced by
/// a reload; a stream keeps what it started with.
pub(crate) struct Listening {
    tls_starttls: Arc<rustls::ServerConfig>,
    tls_direct: Arc<rustls::ServerConfig>,
    domains: Vec<String>,
}

impl Listening {
    fn new(server: &Config, identity: &TlsIdentity) -> Result<Listening, TlsError> {
        Ok(Listening {
            tls_starttls: identity.s2s_server_config(&[])?,
            tls_direct: identity.s2s_server_config(&[b"xmpp-server"])?,
            domains: server.all_domains(),
        })
    }
}

impl Prepared {
    pub(crate) fn new(server: &Config, identity: &TlsIdentity) -> Result<Prepared, TlsError> {
        let config = &server.federation;
        Ok(Prepared {
            // Without a configured secret (tests, embedders) a random one serves this run:
            // dialback keys only need to be stable while a verification is in flight.
            secret: config
                .dialback_secret
                .clone()
                .unwrap_or_else(|| crate::ids::random_id(32)),
            trust: trust::Trust::new(config, Some(identity))?,
            dialer: direct::Dialer::new(config),
            listening: Listening::new(server, identity)?,
            idle_timeout: Duration::from_secs(server.limits.idle_timeout_secs),
            max_stanza_bytes: server.limits.max_stanza_bytes,
            replica_sites: (server.role == crate::config::Role::Hub)
                .then(|| config.relay_for.clone()),
            config: config.clone(),
        })
    }
}

/// The registry of server-to-server links.
pub(crate) struct Federation {
    env: Arc<LinkEnv>,
    links: Mutex<HashMap<(String, String), LinkHandle>>,
    tasks: Tasks,
    /// Where outbox entries are committed (see [`Remote::queue`]).
    journal: Journal,
    /// The incoming side: TLS of the listeners and our domains, limits.
    listening: RwLock<Arc<Listening>>,
    idle_timeout: Duration,
    max_stanza_bytes: usize,
    replica_sites: Option<Vec<String>>,
    /// Whether the queue's upkeep runs.
    maintained: AtomicBool,
}

impl Federation {
    pub(crate) fn new(
        p: Prepared,
        store: Arc<dyn Store>,
        journal: Journal,
        delivery: Weak<Delivery>,
        tasks: Tasks,
        shutdown: CancellationToken,
    ) -> Federation {
        let env = LinkEnv {
            peers: RwLock::new(p.config.peers.clone().into_iter().collect()),
            websocket_peers: RwLock::new(p.config.websocket_peers.clone().into_iter().collect()),
            config: p.config,
            secret: p.secret,
            trust: RwLock::new(Arc::new(p.trust)),
            dialer: p.dialer,
            board: LinkBoard::new(),
            store,
            delivery,
            shutdown,
            cluster: OnceLock::new(),
        };
        Federation {
            env: Arc::new(env),
            links: Mutex::new(HashMap::new()),
            tasks,
            journal,
            listening: RwLock::new(Arc::new(p.listening)),
            idle_timeout: p.idle_timeout,
            max_stanza_bytes: p.max_stanza_bytes,
            replica_sites: p.replica_sites,
            maintained: AtomicBool::new(false),
        }
    }

    /// This server is a node of `cluster`: a link runs here only while this node holds
    /// its lease (see `cluster::links`).
    pub(crate) fn join_cluster(self: &Arc<Self>, cluster: &Arc<Cluster>) {
        let _ = self.env.cluster.set(cluster.clone());
        cluster.host_links(self.clone());
    }

    /// This node's cluster, when it is one.
    fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.env.cluster.get()
    }

    /// This server's hub (`federation.hub`).
    pub(crate) fn hub(&self) -> Option<&str> {
        self.env.config.hub.as_deref()
    }

    /// On a hub: the sites it keeps a replica of (`None` on a site).
    pub(crate) fn replica_sites(&self) -> Option<&[String]> {
        self.replica_sites.as_deref()
    }

    pub(crate) fn board(&self) -> &LinkBoard {
        &self.env.board
    }

    fn listening(&self) -> Arc<Listening> {
        self.listening
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A reload: new certificates for listeners and links, and the domains served. Peers,
    /// paths and the rest of `[federation]` take a restart.
    pub(crate) fn reload(&self, server: &Config, identity: &TlsIdentity) -> Result<(), TlsError> {
        let listening = Listening::new(server, identity)?;
        let trust = trust::Trust::new(&self.env.config, Some(identity))?;
        *self.listening.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(listening);
        *self.env.trust.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(trust);
        Ok(())
    }

    /// Starts what federation needs besides listeners: the links with stanzas left in
    /// their queues from before a restart, and the periodic expiry of queued stanzas.
    pub(crate) fn start(self: &Arc<Self>) {
        if !self.maintained.swap(true, Ordering::Relaxed) {
            self.tasks.spawn(queue::maintenance(self.clone()));
        }
    }

    /// The policy of incoming streams: SASL EXTERNAL when a peer's certificate passes,
    /// and relaying (see `outpost_proto::s2s`, "Relaying").
    fn incoming_config(&self, transport: Transport) -> S2sConfig {
        let config = &self.env.config;
        S2sConfig {
            transport,
            allow_plaintext: !config.require_tls,
            dialback: true,
            sasl_external: true,
            stream_management: true,
            relay: RelayPolicy {
                relay_for: config.relay_for.clone(),
                trusted_hubs: config.hub.iter().cloned().collect(),
                outgoing: false,
            },
            ..S2sConfig::default()
        }
    }

    /// Sets or replaces where `domain`'s server is reached.
    pub(crate) fn set_peer_address(&self, domain: &str, addr: HostPort) {
        self.env
            .peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_owned(), addr);
    }

    /// Sets or replaces the `wss://` URL of `domain`'s WebSocket endpoint.
    pub(crate) fn set_websocket_peer(&self, domain: &str, url: WssUrl) {
        self.env
            .websocket_peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_owned(), url);
    }

    /// The link for a pair, started if it does not run yet.
    fn link(&self, local: &str, remote: &str) -> (mpsc::Sender<LinkCmd>, Arc<Wakers>) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let key = (local.to_owned(), remote.to_owned());
        if let Some(h) = links.get(&key)
            && !h.tx.is_closed()
        {
            return (h.tx.clone(), h.wake.clone());
        }
        let (tx, rx) = mpsc::channel(LINK_CHANNEL);
        let wake = Arc::new(Wakers::default());
        let stop = self.env.shutdown.child_token();
        self.env.board.set(local, remote, LinkState::Idle, None);
        let settings = link::settings(&self.env, local, remote);
        let task = link::run(self.env.clone(), settings, rx, wake.clone(), stop.clone());
        self.tasks.spawn(task);
        links.insert(
            key,
            LinkHandle {
                tx: tx.clone(),
                wake: wake.clone(),
                stop,
            },
        );
        (tx, wake)
    }

    /// Stops the link for a pair, if it runs here; what it had not sent stays queued.
    fn stop_link(&self, local: &str, remote: &str) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = links.remove(&(local.to_owned(), remote.to_owned())) {
            h.stop.cancel();
        }
    }

    /// Tells the link for a pair that there is work.
    fn wake(&self, local: &str, remote: &str) {
        let (_, wake) = self.link(local, remote);
        wake.work.notify_one();
    }

    /// Wakes the link for a pair if it exists: a peer that connected to us is reachable.
    fn wake_existing(&self, local: &str, remote: &str) {
        if let Some(c) = self.cluster() {
            let _ = c.ask_link(local, remote, Ask::Reachable);
            return;
        }
        self.reachable_here(local, remote);
    }

    /// Wakes the link for a pair if it runs here.
    fn reachable_here(&self, local: &str, remote: &str) {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = links.get(&(local.to_owned(), remote.to_owned())) {
            h.wake.work.notify_one();
            h.wake.reachable.notify_one();
        }
    }

    /// Asks `remote`'s server, over our link from `local`, whether it sent `key` on our
    /// incoming stream `id` (XEP-0220 §2.1.2–§2.1.3).
    async fn verify(&self, local: &str, remote: &str, id: &str, key: &str) -> DialbackVerdict {
        if let Some(c) = self.cluster() {
            match c.link_at(local, remote).await {
                LinkAt::Here => {}
                LinkAt::Node(node) => return c.verify_remote(&node, local, remote, id, key).await,
                LinkAt::Nowhere => return DialbackVerdict::Error("remote-connection-failed"),
            }
        }
        self.verify_here(local, remote, id, key).await
    }

    /// Verifies a dialback key over the link that runs here.
    async fn verify_here(&self, local: &str, remote: &str, id: &str, key: &str) -> DialbackVerdict {
        let (tx, wake) = self.link(local, remote);
        let (reply, answer) = oneshot::channel();
        let cmd = LinkCmd::Verify {
            id: id.to_owned(),
            key: key.to_owned(),
            reply,
        };
        if tx.try_send(cmd).is_err() {
            return DialbackVerdict::Error("resource-constraint");
        }
        wake.work.notify_one();
        match tokio::time::timeout(VERIFY_TIMEOUT, answer).await {
            Ok(Ok(true)) => DialbackVerdict::Valid,
            Ok(Ok(false)) => DialbackVerdict::Invalid,
            Ok(Err(_)) => DialbackVerdict::Error("remote-connection-failed"),
            Err(_) => DialbackVerdict::Error("remote-server-timeout"),
        }
    }

    /// A stanza from one relayed domain to another, arrived at this hub: stored and
    /// forwarded like our own (messages and subscriptions durably, the rest best-effort),
    /// from the domain the peers authenticated us as.
    async fn relay(
        &self,
        d: &Delivery,
        el: Element,
        from_local: &str,
        to_domain: &str,
    ) -> Accepted {
        if durable(&el) {
            match d.queue_remote(from_local, to_domain, &el).await {
                Ok(accepted) => return accepted,
                Err(error) => d.bounce(&el, error),
            }
        } else if let Err(el) = Remote::send(self, from_local, to_domain, el) {
            d.bounce(&el, Condition::RemoteServerTimeout.into());
        }
        Accepted::default()
    }
}

impl Remote for Federation {
    fn enabled(&self) -> bool {
        true
    }

    /// A TCP connection to its server (or its WebSocket endpoint) opens within
    /// [`REACH_TIMEOUT`]. Not the link's state: a link stays up for seconds after a silent
    /// cut, and a server that was killed refuses at once.
    fn reachable<'a>(&'a self, _local: &'a str, remote: &'a str) -> YesNo<'a> {
        Box::pin(async move {
            let env = &self.env;
            let probes = async {
                let websocket = env.websocket_peer(remote).is_some();
                tokio::select! {
                    biased;
                    true = direct::probe(env, remote) => true,
                    true = async { websocket && ws::probe(env, remote).await } => true,
                    else => false,
                }
            };
            tokio::time::timeout(REACH_TIMEOUT, probes)
                .await
                .unwrap_or(false)
        })
    }

    fn runs_link<'a>(&'a self, local: &'a str, remote: &'a str) -> YesNo<'a> {
        Box::pin(async move {
            match self.cluster() {
                Some(c) => c.link_at(local, remote).await == LinkAt::Here,
                None => true,
            }
        })
    }

    /// Sends a stanza best-effort: on the link's current or next stream (through the
    /// node running the link, on a cluster).
    fn send(&self, local: &str, remote: &str, el: Element) -> Result<(), Element> {
        match self.cluster() {
            Some(c) => c.ask_link(local, remote, Ask::Send(el)),
            None => self.send_here(local, remote, el),
        }
    }

    /// Submits a stanza to the link's durable queue through the journal's group commit;
    /// the link is woken once it is committed, so it never reads the queue before the
    /// entry is there.
    fn queue<'a>(&'a self, local: &'a str, remote: &'a str, el: &'a Element) -> RemoteFuture<'a> {
        Box::pin(async move {
            let mut text = Vec::new();
            if outpost_proto::xml::write_stanza(el, &mut text).is_err() {
                return Err(Condition::NotAcceptable.into());
            }
            let write = outpost_store::BatchWrite::Outbox(outpost_store::OutboxPush {
                local: local.to_owned(),
                remote: remote.to_owned(),
                stanza: String::from_utf8_lossy(&text).into_owned(),
            });
            let wake = self.waker(local, remote);
            let hook: crate::journal::Hook = Box::new(move |outcome| {
                if outcome.is_ok() {
                    wake();
                }
            });
            Ok(self.journal.submit_with(write, Some(hook)).await)
        })
    }
}

impl Federation {
    fn send_here(&self, local: &str, remote: &str, el: Element) -> Result<(), Element> {
        let (tx, wake) = self.link(local, remote);
        match tx.try_send(LinkCmd::Stanza(el)) {
            Ok(()) => {
                wake.work.notify_one();
                Ok(())
            }
            Err(
                mpsc::error::TrySendError::Full(LinkCmd::Stanza(el))
                | mpsc::error::TrySendError::Closed(LinkCmd::Stanza(el)),
            ) => Err(el),
            // Only stanzas are sent here.
            Err(_) => Ok(()),
        }
    }
}

impl Federation {
    /// What tells the link of a pair that its outbox has new entries: its task here, or
    /// on a cluster the node running it (see `cluster::links`).
    fn waker(&self, local: &str, remote: &str) -> Box<dyn Fn() + Send + Sync> {
        match self.cluster() {
            Some(c) => {
                let (c, local, remote) = (c.clone(), local.to_owned(), remote.to_owned());
                Box::new(move || {
                    let _ = c.ask_link(&local, &remote, Ask::Wake);
                })
            }
            None => {
                let (_, wake) = self.link(local, remote);
                Box::new(move || wake.work.notify_one())
            }
        }
    }
}

impl LinkHost for Federation {
    fn send(&self, local: &str, remote: &str, el: Element) -> Result<(), Element> {
        self.send_here(local, remote, el)
    }

    fn wake(&self, local: &str, remote: &str) {
        Federation::wake(self, local, remote);
    }

    fn reachable(&self, local: &str, remote: &str) {
        self.reachable_here(local, remote);
    }

    fn verify<'a>(
        &'a self,
        local: &'a str,
        remote: &'a str,
        id: &'a str,
        key: &'a str,
    ) -> Pin<Box<dyn Future<Output = DialbackVerdict> + Send + 'a>> {
        Box::pin(self.verify_here(local, remote, id, key))
    }

    fn stop(&self, local: &str, remote: &str) {
        self.stop_link(local, remote);
    }

    fn queued(&self) -> Queued<'_> {
        Box::pin(queue::queued(self))
    }

    fn restored(&self, local: &str, remote: &str) {
        if let Some(d) = self.env.delivery() {
            reprobe(&d, local, remote);
        }
    }
}

/// A stanza as the outbox keeps it (written by `write_stanza` from a `jabber:client`
/// element, so within our own depth limits).
pub(crate) fn parse_stanza(text: &str) -> Option<Element> {
    let el: Element = text.parse().ok()?;
    (el.ns() == ns::CLIENT).then_some(el)
}

/// After a link to `remote` came (back) up: every available local user asks for the
/// presence of their contacts there again and tells subscribers there theirs, since what
/// each side believes of the other may be stale (RFC 6121 §4.3; nothing told either side
/// while the link was down).
fn reprobe(d: &Delivery, local: &str, remote: &str) {
    let domain: Arc<str> = Arc::from(remote);
    let n = d.router().each_available(local, |first_of_user| {
        crate::router::ToSession::LinkRestored {
            domain: domain.clone(),
            probe: first_of_user,
        }
    });
    if n > 0 {
        debug!(sessions = n, %remote, "presence re-probed after the link came up");
    }
}

/// Whether a stanza for another domain goes through the durable queue: messages and
/// presence subscription stanzas (RFC 6121 §3).
fn durable(el: &Element) -> bool {
    match el.name() {
        "message" => true,
        "presence" => matches!(
            el.attr("type"),
            Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")
        ),
        _ => false,
    }
}
