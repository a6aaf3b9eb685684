//! Federation: server-to-server links (RFC 6120 §4–§6) around the sans-IO machines of
//! `outpost_proto::s2s`, and the durable outbound queue under them.
//!
//! - [`Federation`] is the registry in `Shared`: one link task per (local domain, remote
//!   domain) pair, created on demand and kept for the life of the server.
//! - `link` is that task. It reaches the peer by one of up to four paths, best first:
//!   `direct` (TCP: a `federation.peers` override, else the domain's SRV records, XEP-0368
//!   direct TLS included, else the domain on port 5269), `websocket` (HTTPS to the peer's
//!   `federation.websocket_peers` URL), `hub` (TCP to `federation.hub`, which relays) and
//!   `hub-websocket`. Each path backs off on its own after failures; a stream on a fallback
//!   path probes the better ones and makes way once one accepts connections. On the stream
//!   it negotiates TLS, SASL EXTERNAL or dialback through `S2sOutgoing`, and sends the
//!   link's outbox in id order, removing stanzas only when the peer acknowledged them
//!   (XEP-0198) or, for peers without stream management, as `federation.ack_without_sm`
//!   says. While a queue is not empty it probes a down peer's paths, and it is woken at
//!   once when the peer connects to us. A stream whose acknowledgements are late is
//!   replaced at once when a fresh connection gets through (a silent partition), and
//!   abandoned for the next path when none does. When a link comes up after being down,
//!   local users' presence is sent and probed again across it.
//! - `direct` resolves and dials a peer directly (hickory-resolver for SRV); `ws` carries
//!   streams over WebSocket inside HTTPS (RFC 7395 framing) between Outpost servers: the
//!   `s2s-websocket` listener and the client side.
//! - `status` holds each link's state and path as the link task reports it;
//!   [`crate::ServerHandle::link_statuses`] joins it with the store's queue figures. A link
//!   logs a failure once per path and reason, and "link down" once, not on every retry.
//! - `inbound` accepts peers' streams (`S2sIncoming`), checks client certificates for SASL
//!   EXTERNAL, verifies dialback keys over our own link to the claimed domain, answers
//!   `db:verify` for ours, deduplicates messages by XEP-0359 origin-id and delivers what
//!   arrives through the same code as client stanzas; on a hub, stanzas between two
//!   relayed domains go into the hub's own durable queue for the destination.
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
mod status;
mod trust;
mod ws;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use minidom::Element;
use outpost_proto::s2s::{DialbackVerdict, RelayPolicy, S2sConfig, Transport};
use outpost_proto::stanza::{self, ns};
use outpost_store::{OutboxPush, StoreError};
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{Config, FederationConfig, split_host_port};
use crate::tls::TlsIdentity;
use crate::{ServerError, Shared};

pub(crate) use inbound::{serve as serve_inbound, serve_tls as serve_inbound_tls};
pub(crate) use status::LinkBoard;
pub use status::{LinkState, LinkStatus};
pub(crate) use trust::AnyClientCert;
pub(crate) use ws::serve_websocket;

/// Best-effort stanzas and dialback verifications a link holds while it connects.
const LINK_CHANNEL: usize = 256;
/// How long a peer's dialback key may wait for the verdict of its authoritative server.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often expired queue entries are bounced and old stanza ids forgotten, at most: a
/// short `queue_lifetime_secs` is checked four times per lifetime.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);
/// Entries expired per store call.
const EXPIRE_BATCH: u32 = 500;
/// Stanzas waiting to be committed to the outbox, and the most committed in one write.
const PUSH_QUEUE: usize = 4096;
const PUSH_BATCH: usize = 512;

/// A stanza on its way into the outbox, and who waits for the outcome.
struct PushRequest {
    entry: OutboxPush,
    reply: oneshot::Sender<Result<i64, StoreError>>,
}

/// What a link is asked to do besides draining its queue.
pub(crate) enum LinkCmd {
    /// A best-effort stanza (presence, IQ, an error): sent when the stream is ready, dropped
    /// (an IQ request answered with an error) if this connection attempt fails.
    Stanza(Element),
    /// As the receiving server, ask the peer (authoritative for its domain) whether `key` is
    /// the one it sent on our incoming stream `id` (XEP-0220 §2.1.2).
    Verify {
        id: String,
        key: String,
        reply: oneshot::Sender<bool>,
    },
}

struct LinkHandle {
    tx: mpsc::Sender<LinkCmd>,
    wake: Arc<Wakers>,
}

/// Two reasons to wake a link, kept apart so that new messages for a peer that is down do
/// not cut its back-off short: only a sign that the peer is reachable again does.
#[derive(Default)]
pub(crate) struct Wakers {
    /// New stanzas are queued.
    pub(crate) work: Notify,
    /// The peer connected to us: it is reachable now (proactive recovery).
    pub(crate) reachable: Notify,
}

/// The registry of server-to-server links.
pub(crate) struct Federation {
    pub(crate) config: FederationConfig,
    secret: String,
    /// `federation.peers`, changeable at run time (tests bind port 0).
    peers: RwLock<HashMap<String, String>>,
    /// `federation.websocket_peers`, changeable at run time like `peers`.
    websocket_peers: RwLock<HashMap<String, String>>,
    links: Mutex<HashMap<(String, String), LinkHandle>>,
    /// Which peer certificates are checked, and our TLS client configurations.
    pub(crate) trust: trust::Trust,
    /// How peers are found and reached directly: the DNS resolver.
    dialer: direct::Dialer,
    tracker: TaskTracker,
    /// Each link's state, for operators.
    pub(crate) board: status::LinkBoard,
    /// Into the group commit of the outbox (see [`Federation::queue`]).
    pushes: mpsc::Sender<PushRequest>,
    pushes_rx: Mutex<Option<mpsc::Receiver<PushRequest>>>,
}

/// Unix time in milliseconds, the store's clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Federation {
    pub(crate) fn new(
        server: &Config,
        identity: Option<&TlsIdentity>,
        tracker: TaskTracker,
    ) -> Result<Federation, ServerError> {
        let config = &server.federation;
        // Without a configured secret (tests, embedders) a random one serves this run:
        // dialback keys only need to be stable while a verification is in flight.
        let secret = config.dialback_secret.clone().unwrap_or_else(|| {
            rand::rng()
                .sample_iter(Alphanumeric)
                .take(32)
                .map(char::from)
                .collect()
        });
        let (pushes, pushes_rx) = mpsc::channel(PUSH_QUEUE);
        Ok(Federation {
            pushes,
            pushes_rx: Mutex::new(Some(pushes_rx)),
            dialer: direct::Dialer::new(config),
            config: config.clone(),
            secret,
            peers: RwLock::new(config.peers.clone().into_iter().collect()),
            websocket_peers: RwLock::new(config.websocket_peers.clone().into_iter().collect()),
            links: Mutex::new(HashMap::new()),
            trust: trust::Trust::new(config, identity)?,
            tracker,
            board: status::LinkBoard::new(),
        })
    }

    /// The TLS client configuration for a stream to `domain` (see `trust`).
    pub(crate) fn tls_client_for(&self, domain: &str) -> Arc<rustls::ClientConfig> {
        self.trust.client_config(domain)
    }

    /// The policy of incoming streams: SASL EXTERNAL when a peer's certificate passes,
    /// and relaying (see `outpost_proto::s2s`, "Relaying").
    pub(crate) fn incoming_config(&self, transport: Transport) -> S2sConfig {
        S2sConfig {
            transport,
            allow_plaintext: !self.config.require_tls,
            dialback: true,
            sasl_external: true,
            stream_management: true,
            relay: RelayPolicy {
                relay_for: self.config.relay_for.clone(),
                trusted_hubs: self.config.hub.iter().cloned().collect(),
                outgoing: false,
            },
            ..S2sConfig::default()
        }
    }

    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// `domain`'s entry in `federation.peers`, as (host, port).
    fn peer_override(&self, domain: &str) -> Option<(String, u16)> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let (host, port) = split_host_port(peers.get(domain)?)?;
        Some((host.to_owned(), port))
    }

    /// Sets or replaces where `domain`'s server is reached, as `host:port`.
    pub(crate) fn set_peer_address(&self, domain: &str, addr: &str) {
        self.peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_owned(), addr.to_owned());
    }

    /// `domain`'s entry in `federation.websocket_peers`: the `wss://` URL of its endpoint.
    pub(super) fn websocket_peer(&self, domain: &str) -> Option<String> {
        let peers = self
            .websocket_peers
            .read()
            .unwrap_or_else(|p| p.into_inner());
        peers.get(domain).cloned()
    }

    /// Sets or replaces the `wss://` URL of `domain`'s WebSocket endpoint.
    pub(crate) fn set_websocket_peer(&self, domain: &str, url: &str) {
        self.websocket_peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_owned(), url.to_owned());
    }

    /// The link for a pair, started if it does not run yet.
    fn link(
        &self,
        shared: &Arc<Shared>,
        local: &str,
        remote: &str,
    ) -> (mpsc::Sender<LinkCmd>, Arc<Wakers>) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let key = (local.to_owned(), remote.to_owned());
        if let Some(h) = links.get(&key)
            && !h.tx.is_closed()
        {
            return (h.tx.clone(), h.wake.clone());
        }
        let (tx, rx) = mpsc::channel(LINK_CHANNEL);
        let wake = Arc::new(Wakers::default());
        self.board.set(local, remote, LinkState::Idle, None);
        self.tracker.spawn(link::run(
            shared.clone(),
            local.to_owned(),
            remote.to_owned(),
            rx,
            wake.clone(),
        ));
        links.insert(
            key,
            LinkHandle {
                tx: tx.clone(),
                wake: wake.clone(),
            },
        );
        (tx, wake)
    }

    /// Tells the link for a pair that there is work.
    pub(crate) fn wake(&self, shared: &Arc<Shared>, local: &str, remote: &str) {
        let (_, wake) = self.link(shared, local, remote);
        wake.work.notify_one();
    }

    /// Wakes the link for a pair if it exists: a peer that connected to us is reachable.
    pub(crate) fn wake_existing(&self, local: &str, remote: &str) {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = links.get(&(local.to_owned(), remote.to_owned())) {
            h.wake.work.notify_one();
            h.wake.reachable.notify_one();
        }
    }

    /// Commits a stanza to the link's durable queue; it counts as accepted once this
    /// returns `Ok`. The error is the stanza error condition for the sender.
    ///
    /// Stanzas from every session go through one task that commits whatever has gathered
    /// in one write (group commit): each caller still waits for its own stanza to be
    /// durable, but a hundred senders cost one fsync, not a hundred.
    pub(crate) async fn queue(
        &self,
        shared: &Arc<Shared>,
        local: &str,
        remote: &str,
        el: &Element,
    ) -> Result<(), (&'static str, &'static str)> {
        let mut text = Vec::new();
        if outpost_proto::xml::write_stanza(el, &mut text).is_err() {
            return Err(("modify", "not-acceptable"));
        }
        let (reply, outcome) = oneshot::channel();
        let request = PushRequest {
            entry: OutboxPush {
                local: local.to_owned(),
                remote: remote.to_owned(),
                stanza: String::from_utf8_lossy(&text).into_owned(),
            },
            reply,
        };
        if self.pushes.send(request).await.is_err() {
            return Err(("wait", "internal-server-error"));
        }
        match outcome.await {
            Ok(Ok(_)) => {
                self.wake(shared, local, remote);
                Ok(())
            }
            Ok(Err(StoreError::QuotaExceeded { .. })) => Err(("wait", "resource-constraint")),
            Ok(Err(e)) => {
                warn!(error = %e, "cannot queue stanza for a remote domain");
                Err(("wait", "internal-server-error"))
            }
            // The server is stopping: not committed, so not accepted.
            Err(_) => Err(("wait", "internal-server-error")),
        }
    }

    /// Sends a stanza best-effort: on the link's current or next stream.
    pub(crate) fn send(&self, shared: &Arc<Shared>, local: &str, remote: &str, el: Element) {
        let (tx, wake) = self.link(shared, local, remote);
        match tx.try_send(LinkCmd::Stanza(el)) {
            Ok(()) => wake.work.notify_one(),
            Err(
                mpsc::error::TrySendError::Full(LinkCmd::Stanza(el))
                | mpsc::error::TrySendError::Closed(LinkCmd::Stanza(el)),
            ) => {
                // The link is backed up: best-effort means this one is dropped.
                crate::delivery::bounce(shared, &el, "wait", "remote-server-timeout");
            }
            Err(_) => {}
        }
    }

    /// Asks `remote`'s server, over our link from `local`, whether it sent `key` on our
    /// incoming stream `id` (XEP-0220 §2.1.2–§2.1.3).
    pub(crate) async fn verify(
        &self,
        shared: &Arc<Shared>,
        local: &str,
        remote: &str,
        id: &str,
        key: &str,
    ) -> DialbackVerdict {
        let (tx, wake) = self.link(shared, local, remote);
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
}

/// Starts what federation needs besides listeners: the links with stanzas left in their
/// queues from before a restart, and the periodic expiry of queued stanzas.
pub(crate) fn start(shared: &Arc<Shared>, tracker: &TaskTracker) {
    tracker.spawn(maintenance(shared.clone()));
    let pushes = shared.federation.as_ref().and_then(|fed| {
        fed.pushes_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    });
    if let Some(rx) = pushes {
        tracker.spawn(group_commit(shared.clone(), rx));
    }
}

/// Commits queued stanzas in batches: waits for one, takes whatever else is waiting (up
/// to [`PUSH_BATCH`]), writes them in one transaction and answers each. At shutdown it
/// answers what is already waiting before it stops.
async fn group_commit(shared: Arc<Shared>, mut rx: mpsc::Receiver<PushRequest>) {
    let Some(fed) = shared.federation.as_ref() else {
        return;
    };
    let quota = fed.config.outbox_quota;
    loop {
        let first = tokio::select! {
            r = rx.recv() => r,
            () = shared.shutdown.cancelled() => rx.try_recv().ok(),
        };
        let Some(first) = first else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < PUSH_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let (entries, replies): (Vec<OutboxPush>, Vec<_>) =
            batch.into_iter().map(|r| (r.entry, r.reply)).unzip();
        match shared
            .store
            .outbox_push_batch(&entries, now_ms(), quota)
            .await
        {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let why = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(why.clone().into())));
                }
            }
        }
    }
}

async fn maintenance(shared: Arc<Shared>) {
    let Some(fed) = shared.federation.as_ref() else {
        return;
    };
    // A restart must not wait for new traffic to resume old queues.
    match shared.store.outbox_stats().await {
        Ok(stats) => {
            for s in stats.iter().filter(|s| s.queued > 0) {
                if shared.config.serves_domain(&s.local_domain) {
                    info!(local = %s.local_domain, remote = %s.remote_domain, queued = s.queued, "resuming queued link");
                    fed.wake(&shared, &s.local_domain, &s.remote_domain);
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot read the outbox"),
    }
    let lifetime_ms =
        i64::try_from(fed.config.queue_lifetime_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let maintenance_every = (Duration::from_secs(fed.config.queue_lifetime_secs) / 4)
        .clamp(Duration::from_millis(250), MAINTENANCE_INTERVAL);
    loop {
        expire(&shared, lifetime_ms).await;
        // Ids are remembered a day longer than any peer retries (XEP-0359 dedup window).
        let keep_ms = lifetime_ms.saturating_add(24 * 3600 * 1000);
        if let Err(e) = shared
            .store
            .prune_seen(now_ms().saturating_sub(keep_ms))
            .await
        {
            warn!(error = %e, "cannot prune received stanza ids");
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(maintenance_every) => {}
        }
    }
}

/// Removes queued stanzas whose lifetime ended and tells each sender
/// (`remote-server-timeout`, RFC 6120 §8.3.3.17).
async fn expire(shared: &Arc<Shared>, lifetime_ms: i64) {
    loop {
        let expired = match shared
            .store
            .outbox_expire(now_ms(), lifetime_ms, EXPIRE_BATCH)
            .await
        {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "cannot expire queued stanzas");
                return;
            }
        };
        let n = expired.len();
        if n > 0 {
            info!(count = n, "queued stanzas expired undelivered");
        }
        for entry in expired {
            if let Some(el) = parse_stanza(&entry.stanza) {
                crate::delivery::bounce_durably(shared, &el, "wait", "remote-server-timeout").await;
            }
        }
        if n < EXPIRE_BATCH as usize {
            return;
        }
    }
}

/// A stanza as the outbox keeps it (written by `write_stanza` from a `jabber:client`
/// element, so within our own depth limits).
pub(crate) fn parse_stanza(text: &str) -> Option<Element> {
    let el: Element = text.parse().ok()?;
    (el.ns() == ns::CLIENT).then_some(el)
}

/// Gives a message an XEP-0359 origin-id if it has none, so that every retry of it carries
/// the same id and the receiving server can drop duplicates.
pub(crate) fn ensure_origin_id(el: &mut Element) {
    if el.name() != "message" || el.has_child("origin-id", ns::SID) {
        return;
    }
    let id: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(20)
        .map(char::from)
        .collect();
    el.append_child(
        Element::builder("origin-id", ns::SID)
            .attr(stanza::name("id"), id)
            .build(),
    );
}

/// After a link to `remote` came (back) up: every available local user asks for the
/// presence of their contacts there again and tells subscribers there theirs, since what
/// each side believes of the other may be stale (RFC 6121 §4.3; nothing told either side
/// while the link was down).
pub(crate) fn reprobe(shared: &Arc<Shared>, local: &str, remote: &str) {
    let domain: Arc<str> = Arc::from(remote);
    let n = shared.router.each_available(local, |first_of_user| {
        crate::router::ToSession::LinkRestored {
            domain: domain.clone(),
            probe: first_of_user,
        }
    });
    if n > 0 {
        debug!(sessions = n, %remote, "presence re-probed after the link came up");
    }
}

/// A stanza from one relayed domain to another, arrived at this hub: stored and forwarded
/// like our own (messages and subscriptions durably, the rest best-effort), from the
/// domain the peers authenticated us as.
pub(crate) async fn relay(shared: &Arc<Shared>, el: Element, from_local: &str, to_domain: &str) {
    let Some(fed) = shared.federation.as_ref() else {
        return;
    };
    if durable(&el) {
        if let Err((error_type, condition)) = fed.queue(shared, from_local, to_domain, &el).await {
            crate::delivery::bounce(shared, &el, error_type, condition);
        }
    } else {
        fed.send(shared, from_local, to_domain, el);
    }
}

/// Whether a stanza for another domain goes through the durable queue: messages and
/// presence subscription stanzas (RFC 6121 §3).
pub(crate) fn durable(el: &Element) -> bool {
    match el.name() {
        "message" => true,
        "presence" => matches!(
            el.attr("type"),
            Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")
        ),
        _ => false,
    }
}
