//! One outgoing link: the task that owns our stream from a local domain to a remote one,
//! drains that pair's durable queue over it, and reconnects with back-off when it fails.
//!
//! Ordering and acknowledgement (XEP-0198 §4): queued stanzas are written in id order, at
//! most [`WINDOW`] unacknowledged at a time, each remembered with its sequence number on
//! the stream. `<a h/>` removes from the store every stanza up to `h`; a new stream starts
//! again after the last acknowledged one, so a stanza written but not acknowledged before a
//! failure is sent again (the receiver drops the duplicate by its origin-id, XEP-0359).
//! Without stream management, `federation.ack_without_sm` decides: `on-write` removes
//! stanzas once written and flushed, `hold` sends none.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use outpost_proto::s2s::{
    Event, RelayPolicy, S2sConfig, S2sOutgoing, SendError, Transport, dialback_key,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use super::conn::Conn;
use super::{Federation, LinkCmd, LinkState, now_ms, parse_stanza};
use crate::Shared;
use crate::config::AckWithoutSm;

/// Most queued stanzas written and not yet acknowledged on one stream.
const WINDOW: usize = 256;
/// Stream negotiation (TLS, dialback) must finish within this.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(60);
/// A peer that acknowledges nothing for this long while stanzas are outstanding is treated
/// as broken: the stream is closed and the stanzas are sent again on a new one.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// Acknowledgements this late make the link ask again and try a fresh connection on the
/// side: if that one gets through while the stream stays silent, the stream died without
/// a sound (a partition that dropped packets instead of refusing them) and is replaced at
/// once, instead of waiting for TCP's retransmission back-off or for [`ACK_TIMEOUT`].
const ACK_SUSPECT: Duration = Duration::from_secs(5);
/// A stream with nothing to carry for this long is closed politely.
const IDLE_CLOSE: Duration = Duration::from_secs(600);
const READ_CHUNK: usize = 16 * 1024;

/// How one connection attempt ended.
enum Outcome {
    Shutdown,
    /// The stream ended; `healthy` when it became ready and was not closed for failing to
    /// acknowledge. `recheck` when it ended because better paths may work again.
    Ended {
        healthy: bool,
        reason: String,
        recheck: bool,
    },
}

/// One way to reach the peer, in order of preference (see the module docs of `s2s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// A TCP connection to the peer's server.
    Direct,
    /// WebSocket inside HTTPS to the peer's server (`federation.websocket_peers`).
    WebSocket,
    /// A TCP connection to our hub, which relays (`federation.hub`).
    Hub,
    /// WebSocket inside HTTPS to our hub.
    HubWebSocket,
}

impl Path {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::WebSocket => "websocket",
            Path::Hub => "hub",
            Path::HubWebSocket => "hub-websocket",
        }
    }

    fn via_hub(self) -> bool {
        matches!(self, Path::Hub | Path::HubWebSocket)
    }

    /// The paths configured for `remote`, best first: the peer itself before the hub,
    /// plain TCP before WebSocket (cheaper, and what every XMPP server speaks).
    fn candidates(fed: &Federation, remote: &str) -> Vec<Path> {
        let mut paths = vec![Path::Direct];
        if fed.websocket_peer(remote).is_some() {
            paths.push(Path::WebSocket);
        }
        if let Some(hub) = fed.config.hub.as_deref()
            && hub != remote
        {
            paths.push(Path::Hub);
            if fed.websocket_peer(hub).is_some() {
                paths.push(Path::HubWebSocket);
            }
        }
        paths
    }

    /// The domain the stream on this path is opened to.
    fn peer<'a>(self, fed: &'a Federation, remote: &'a str) -> &'a str {
        match (self.via_hub(), fed.config.hub.as_deref()) {
            (true, Some(hub)) => hub,
            _ => remote,
        }
    }

    /// Opens a connection on this path.
    async fn open(self, fed: &Federation, remote: &str) -> Result<(Conn, Transport), String> {
        let peer = self.peer(fed, remote);
        match self {
            Path::Direct | Path::Hub => super::direct::connect(fed, peer).await,
            Path::WebSocket | Path::HubWebSocket => super::ws::connect(fed, peer)
                .await
                .unwrap_or_else(|| Err(format!("no WebSocket endpoint for {peer}"))),
        }
    }

    /// Whether the path accepts connections again (a TCP connect, no stream).
    async fn probe(self, fed: &Federation, remote: &str) -> bool {
        let peer = self.peer(fed, remote);
        match self {
            Path::Direct | Path::Hub => super::direct::probe(fed, peer).await,
            Path::WebSocket | Path::HubWebSocket => super::ws::probe(fed, peer).await,
        }
    }
}

/// What the link knows of one path: failures back it off on their own, so a broken direct
/// path does not delay the hub, and a path that works is tried first again.
struct PathHealth {
    path: Path,
    failures: u32,
    /// Not before this; `None` when the path has not failed since it last worked.
    retry_at: Option<Instant>,
    /// The failure last logged for this path: a repeat is not logged again.
    logged: Option<String>,
}

impl PathHealth {
    fn new(path: Path) -> PathHealth {
        PathHealth {
            path,
            failures: 0,
            retry_at: None,
            logged: None,
        }
    }

    fn eligible(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| t <= now)
    }

    fn worked(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        self.logged = None;
    }

    /// Records a failure; returns the wait before this path is tried again.
    fn failed(&mut self, initial: Duration, max: Duration) -> Duration {
        let wait = initial.saturating_mul(1 << self.failures.min(20)).min(max);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(Instant::now() + wait);
        wait
    }
}

pub(super) async fn run(
    shared: Arc<Shared>,
    local: String,
    remote: String,
    mut rx: mpsc::Receiver<LinkCmd>,
    wake: Arc<super::Wakers>,
) {
    let span = tracing::info_span!("s2s_out", %local, %remote);
    async move {
        let Some(fed) = shared.federation.as_ref() else {
            return;
        };
        let initial = Duration::from_secs(fed.config.retry_initial_secs);
        let max = Duration::from_secs(fed.config.retry_max_secs);
        let probe_every = Duration::from_secs(fed.config.probe_interval_secs);
        let mut health: Vec<PathHealth> = Path::candidates(fed, &remote)
            .into_iter()
            .map(PathHealth::new)
            .collect();
        let mut held: VecDeque<LinkCmd> = VecDeque::new();
        // The last state logged: a link's ups and downs are logged once each, not per retry.
        let mut logged_up: Option<bool> = None;
        // A fallback stream made way for a better path: take it at once, queue or not, so
        // the link is on its best path before the next message needs it.
        let mut switch_now = false;
        loop {
            // Wait for something to send.
            while !std::mem::take(&mut switch_now) {
                if shared.shutdown.is_cancelled() {
                    return;
                }
                if !held.is_empty() || queue_nonempty(&shared, &local, &remote).await {
                    break;
                }
                fed.board.set(&local, &remote, LinkState::Idle, None);
                tokio::select! {
                    () = shared.shutdown.cancelled() => return,
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => held.push_back(cmd),
                        None => return,
                    },
                    () = wake.work.notified() => {}
                }
            }

            // Each path whose back-off is over, best first, until one carries a stream.
            let mut worked = false;
            let mut failures: Vec<String> = Vec::new();
            for i in 0..health.len() {
                if !health[i].eligible(Instant::now()) {
                    continue;
                }
                let path = health[i].path;
                // On a fallback path, look again at better ones once their back-off ends.
                let better: Vec<Path> = health[..i].iter().map(|h| h.path).collect();
                let outcome = Box::pin(attempt(
                    &shared,
                    fed,
                    &local,
                    &remote,
                    path,
                    &better,
                    &mut rx,
                    &wake,
                    &mut held,
                    &mut logged_up,
                ))
                .await;
                match outcome {
                    Outcome::Shutdown => return,
                    Outcome::Ended { healthy: true, reason, recheck } => {
                        debug!(path = path.as_str(), reason, "stream ended");
                        health[i].worked();
                        if recheck {
                            // A better path works again (a probe connected).
                            for h in &mut health[..i] {
                                h.retry_at = None;
                            }
                            switch_now = true;
                        }
                        worked = true;
                        break;
                    }
                    Outcome::Ended { healthy: false, reason, .. } => {
                        let wait = health[i].failed(initial, max);
                        if health[i].logged.as_deref() != Some(reason.as_str()) {
                            // Once per path and reason, not once per retry.
                            warn!(path = path.as_str(), reason, retry_in = ?wait, "path failed");
                            health[i].logged = Some(reason.clone());
                        } else {
                            debug!(path = path.as_str(), reason, retry_in = ?wait, "path still failing");
                        }
                        failures.push(format!("{}: {reason}", path.as_str()));
                    }
                }
            }
            if worked {
                if switch_now
                    || (held.is_empty() && !queue_nonempty(&shared, &local, &remote).await)
                {
                    continue;
                }
                // Stanzas are waiting: reconnect, but never in a tight loop.
                tokio::select! {
                    () = shared.shutdown.cancelled() => return,
                    () = tokio::time::sleep(initial.min(Duration::from_secs(1))) => {}
                }
                continue;
            }
            // What waited for a round in which every path failed (each tried it) is not
            // carried over: best-effort stanzas are answered, verifications fail (their
            // requester sees the dropped reply). After a stream that worked, they go on the
            // next one.
            for cmd in held.drain(..) {
                if let LinkCmd::Stanza(el) = cmd {
                    crate::delivery::bounce(&shared, &el, "cancel", "remote-server-not-found");
                }
            }
            if !failures.is_empty() && logged_up != Some(false) {
                warn!(reasons = failures.join("; "), "link down; will retry");
                logged_up = Some(false);
            }
            let reason = if failures.is_empty() { None } else { Some(failures.join("; ")) };
            fed.board.set(&local, &remote, LinkState::Backoff, reason);
            // Back off until the first path may be tried again, but probe the paths
            // meanwhile and come back at once when the peer connects to us (proactive
            // recovery).
            let Some(deadline) = health.iter().filter_map(|h| h.retry_at).min() else {
                continue;
            };
            let mut probe = tokio::time::interval_at(Instant::now() + probe_every, probe_every);
            loop {
                tokio::select! {
                    () = shared.shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(deadline) => break,
                    () = wake.reachable.notified() => {
                        for h in &mut health {
                            if !h.path.via_hub() {
                                h.retry_at = None;
                            }
                        }
                        break;
                    }
                    cmd = rx.recv() => match cmd {
                        Some(cmd @ LinkCmd::Verify { .. }) => {
                            // The peer is asking for dialback, so it is up.
                            held.push_back(cmd);
                            for h in &mut health {
                                if !h.path.via_hub() {
                                    h.retry_at = None;
                                }
                            }
                            break;
                        }
                        Some(cmd) => held.push_back(cmd),
                        None => return,
                    },
                    _ = probe.tick() => {
                        if !queue_nonempty(&shared, &local, &remote).await {
                            continue;
                        }
                        let mut any = false;
                        for h in &mut health {
                            if h.retry_at.is_some() && h.path.probe(fed, &remote).await {
                                debug!(path = h.path.as_str(), "probe connected; retrying now");
                                h.retry_at = None;
                                any = true;
                            }
                        }
                        if any {
                            break;
                        }
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}

async fn queue_nonempty(shared: &Shared, local: &str, remote: &str) -> bool {
    match shared.store.outbox_peek(local, remote, None, 1).await {
        Ok(v) => !v.is_empty(),
        Err(e) => {
            warn!(error = %e, "cannot read the outbox");
            false
        }
    }
}

/// The state of one stream of the link.
struct Stream {
    proto: S2sOutgoing,
    ready: bool,
    sm: bool,
    /// (sequence number, outbox id) of queued stanzas written and not yet acknowledged.
    in_flight: VecDeque<(u32, i64)>,
    /// The last outbox id written on this stream.
    last_sent: Option<i64>,
    /// The sequence number of the last stanza written.
    last_seq: u32,
    /// When the peer last acknowledged something, or when stanzas started waiting.
    last_progress: Instant,
    /// Best-effort stanzas written and not yet acknowledged (sequence number, when): a
    /// stream that carries only presence and IQs must not die unnoticed either, and what
    /// it lost is tried again on the next stream.
    best_effort: VecDeque<(u32, Instant, minidom::Element)>,
    /// Whether the peer acknowledged anything on this stream.
    acked_any: bool,
    /// Stanzas were written since the last `<r/>`.
    ack_wanted: bool,
    last_activity: Instant,
    /// Best-effort stanzas waiting for the stream to be ready.
    pending: VecDeque<minidom::Element>,
    /// `db:verify` requests sent, by stream id.
    verifies: HashMap<String, (String, oneshot::Sender<bool>)>,
    /// Since when the oldest unanswered `db:verify` has waited (a stream that carries only
    /// verifications must not die unnoticed either: a peer's dialback waits on it).
    verify_since: Option<Instant>,
    /// Sending stopped because the queue holds more than was read: read on.
    more: bool,
}

impl Stream {
    fn command(&mut self, cmd: LinkCmd) {
        match cmd {
            LinkCmd::Stanza(el) => {
                if self.ready {
                    self.send_best_effort(&el);
                } else if self.pending.len() < super::LINK_CHANNEL {
                    self.pending.push_back(el);
                }
            }
            LinkCmd::Verify { id, key, reply } => {
                self.proto.send_dialback_verify(&id, &key);
                self.verify_since.get_or_insert_with(Instant::now);
                self.verifies.insert(id, (key, reply));
            }
        }
    }

    fn send_best_effort(&mut self, el: &minidom::Element) {
        match self.proto.send_stanza(el) {
            Ok(seq) => {
                self.last_seq = seq;
                if self.sm {
                    if self.best_effort.len() >= super::LINK_CHANNEL {
                        self.best_effort.pop_front();
                    }
                    self.best_effort
                        .push_back((seq, Instant::now(), el.clone()));
                    self.ack_wanted = true;
                }
            }
            Err(e) => debug!(error = %e, "best-effort stanza not sent"),
        }
    }

    /// Since when the peer owes an acknowledgement, if it does.
    fn waiting_since(&self) -> Option<Instant> {
        let queued = (!self.in_flight.is_empty()).then_some(self.last_progress);
        [
            queued,
            self.best_effort.front().map(|(_, t, _)| *t),
            self.verify_since,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// One stream on one path: connects, negotiates, and carries the queue until the stream
/// fails, idles out, or (on a fallback path) makes way for a `better` path that a probe
/// found working again.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    shared: &Arc<Shared>,
    fed: &Federation,
    local: &str,
    remote: &str,
    path: Path,
    better: &[Path],
    rx: &mut mpsc::Receiver<LinkCmd>,
    wakers: &super::Wakers,
    held: &mut VecDeque<LinkCmd>,
    logged_up: &mut Option<bool>,
) -> Outcome {
    let failed = |reason: String| Outcome::Ended {
        healthy: false,
        reason,
        recheck: false,
    };
    let wake = &wakers.work;
    fed.board.set(local, remote, LinkState::Connecting, None);
    fed.board.set_path(local, remote, path.as_str());
    let peer = path.peer(fed, remote);
    let (mut conn, transport) = match path.open(fed, remote).await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let config = S2sConfig {
        transport,
        allow_plaintext: !fed.config.require_tls,
        dialback: true,
        sasl_external: fed.trust.external_with(peer),
        stream_management: true,
        relay: RelayPolicy {
            outgoing: path.via_hub() || !fed.config.relay_for.is_empty(),
            ..RelayPolicy::default()
        },
        ..S2sConfig::default()
    };
    let now = Instant::now();
    let mut st = Stream {
        proto: S2sOutgoing::new(config, local, peer),
        ready: false,
        sm: false,
        in_flight: VecDeque::new(),
        last_sent: None,
        last_seq: 0,
        last_progress: now,
        best_effort: VecDeque::new(),
        acked_any: false,
        ack_wanted: false,
        last_activity: now,
        pending: VecDeque::new(),
        verifies: HashMap::new(),
        verify_since: None,
        more: false,
    };
    for cmd in held.drain(..) {
        st.command(cmd);
    }
    let negotiation_deadline = now + NEGOTIATION_TIMEOUT;
    let policy = fed.config.ack_without_sm;
    let mut ended_healthy = true;
    let outcome_reason;
    // A cause found before the stream closed, better than how it closed.
    let mut failure: Option<String> = None;
    // Set when the stream makes way for a better path.
    let mut recheck = false;
    // On a fallback path: probes of the better paths, every probe interval.
    let recheck_every = Duration::from_secs(fed.config.probe_interval_secs);
    let mut next_recheck = Instant::now() + recheck_every;
    let mut rechecking: Option<tokio::task::JoinHandle<bool>> = None;
    // A better path works: switch once nothing is in flight.
    let mut better_works = false;
    // A fresh connection tried while acknowledgements are overdue (see ACK_SUSPECT).
    let mut liveness: Option<tokio::task::JoinHandle<bool>> = None;
    // Not another one before this (one every ACK_SUSPECT at most).
    let mut next_liveness = Instant::now();
    let mut buf = vec![0u8; READ_CHUNK];
    'stream: loop {
        while let Some(event) = st.proto.poll_event() {
            match event {
                Event::StartTls => {
                    let out = st.proto.take_output();
                    if let Err(e) = conn.write_all(&out).await {
                        outcome_reason = format!("write failed: {e}");
                        ended_healthy = false;
                        break 'stream;
                    }
                    if !conn.connect_tls(&fed.tls_client_for(peer), peer).await {
                        outcome_reason = "TLS handshake failed".to_owned();
                        ended_healthy = false;
                        break 'stream;
                    }
                    st.proto.tls_established();
                }
                Event::NeedDialbackKey {
                    local,
                    remote,
                    stream_id,
                } => {
                    // XEP-0185 §2: the receiving server is the peer, we originate.
                    let key = dialback_key(fed.secret(), &remote, &local, &stream_id);
                    st.proto.provide_dialback_key(&key);
                }
                Event::Ready { stream_management } => {
                    st.ready = true;
                    st.sm = stream_management;
                    fed.board.set(local, remote, LinkState::Up, None);
                    if *logged_up != Some(true) {
                        info!(stream_management, path = path.as_str(), "link up");
                        *logged_up = Some(true);
                        // Presence seen across the link may be stale (RFC 6121 §4.3).
                        super::reprobe(shared, local, remote);
                    }
                    if !st.sm && policy == AckWithoutSm::Hold {
                        warn!("peer offers no stream management; queued stanzas are held");
                    }
                    for el in std::mem::take(&mut st.pending) {
                        st.send_best_effort(&el);
                    }
                }
                Event::Acked { h } => {
                    let mut up_to = None;
                    while let Some(&(seq, id)) = st.in_flight.front() {
                        // Sequence numbers wrap at 2^32 (XEP-0198 §4).
                        if h.wrapping_sub(seq) < 1 << 31 {
                            up_to = Some(id);
                            st.in_flight.pop_front();
                        } else {
                            break;
                        }
                    }
                    st.last_progress = Instant::now();
                    st.acked_any = true;
                    while st
                        .best_effort
                        .front()
                        .is_some_and(|(seq, _, _)| h.wrapping_sub(*seq) < 1 << 31)
                    {
                        st.best_effort.pop_front();
                    }
                    if let Some(id) = up_to
                        && let Err(e) = shared.store.outbox_ack(local, remote, id, now_ms()).await
                    {
                        warn!(error = %e, "cannot remove acknowledged stanzas");
                    }
                }
                Event::VerifyResult { id, valid, .. } => {
                    let answered = st.verifies.remove(&id);
                    if st.verifies.is_empty() {
                        st.verify_since = None;
                    }
                    if let Some((_, reply)) = answered {
                        let _ = reply.send(valid);
                    }
                }
                Event::AuthFailed { reason } => {
                    // Logged by the caller with the link's other failures, once per change.
                    debug!(reason, "authentication failed");
                    failure = Some(format!("dialback failed: {reason}"));
                }
                Event::PeerStreamError { condition, text } => {
                    // The peer refused something on this stream: a failure of the path
                    // (backed off), not a clean end.
                    debug!(condition, ?text, "peer sent a stream error");
                    failure = Some(match text {
                        Some(t) => format!("peer closed the stream with {condition} ({t})"),
                        None => format!("peer closed the stream with {condition}"),
                    });
                    ended_healthy = false;
                }
                Event::Closed { error } => {
                    let out = st.proto.take_output();
                    let _ = conn.write_all(&out).await;
                    outcome_reason = match error {
                        Some(c) => format!("stream closed with {c}"),
                        None => "stream closed".to_owned(),
                    };
                    ended_healthy = st.ready && ended_healthy;
                    break 'stream;
                }
                Event::Authenticated { .. }
                | Event::CheckCertificate { .. }
                | Event::DialbackRequest { .. }
                | Event::VerifyRequest { .. }
                | Event::Stanza(_) => {}
            }
        }

        // Queued stanzas, in order, within the window.
        let sends_queue = st.sm || policy == AckWithoutSm::OnWrite;
        if st.ready && sends_queue && !st.proto.is_closed() {
            st.more = false;
            let mut sent = false;
            while st.in_flight.len() < WINDOW {
                let want = (WINDOW - st.in_flight.len()) as u32;
                let batch = match shared
                    .store
                    .outbox_peek(local, remote, st.last_sent, want)
                    .await
                {
                    Ok(b) => b,
                    Err(e) => {
                        warn!(error = %e, "cannot read the outbox");
                        break;
                    }
                };
                let full = batch.len() as u32 == want;
                for entry in batch {
                    st.last_sent = Some(entry.id);
                    match parse_stanza(&entry.stanza).map(|el| st.proto.send_stanza(&el)) {
                        Some(Ok(seq)) => {
                            if st.in_flight.is_empty() {
                                st.last_progress = Instant::now();
                            }
                            st.last_seq = seq;
                            st.in_flight.push_back((seq, entry.id));
                            sent = true;
                        }
                        Some(Err(SendError::NotReady | SendError::Closed)) => break,
                        _ => {
                            // Nothing the peer could accept: it goes with the
                            // acknowledgement of the stanza before it.
                            warn!(
                                id = entry.id,
                                "dropping a queued stanza that cannot be sent"
                            );
                            st.in_flight.push_back((st.last_seq, entry.id));
                        }
                    }
                }
                if !full {
                    break;
                }
            }
            // Without acknowledgements the window empties once written: go on reading.
            st.more = !st.sm && st.in_flight.len() >= WINDOW;
            st.ack_wanted |= sent && st.sm;
        }

        // One `<r/>` after whatever was written since the last one.
        if std::mem::take(&mut st.ack_wanted) {
            st.proto.request_ack();
        }
        if st.proto.has_output() {
            let out = st.proto.take_output();
            if let Err(e) = conn.write_all(&out).await {
                outcome_reason = format!("write failed: {e}");
                ended_healthy = false;
                break 'stream;
            }
            st.last_activity = Instant::now();
            if st.ready && !st.sm && policy == AckWithoutSm::OnWrite {
                // No acknowledgements on this stream: written and flushed counts.
                if let Some(&(_, id)) = st.in_flight.back()
                    && let Err(e) = shared.store.outbox_ack(local, remote, id, now_ms()).await
                {
                    warn!(error = %e, "cannot remove sent stanzas");
                }
                st.in_flight.clear();
            }
        }
        if better_works && st.ready && st.in_flight.is_empty() && !st.proto.is_closed() {
            // Between bursts: make way for the better path.
            info!(
                path = path.as_str(),
                "a better path works again; leaving this one"
            );
            st.proto.close(None, None);
            recheck = true;
            continue;
        }
        if st.more {
            continue;
        }

        let timer = if !st.ready {
            negotiation_deadline
        } else if let Some(since) = st.waiting_since() {
            let give_up = since + ACK_TIMEOUT;
            if liveness.is_none() {
                (since + ACK_SUSPECT).max(next_liveness).min(give_up)
            } else {
                give_up
            }
        } else {
            let idle = st.last_activity + IDLE_CLOSE;
            if better.is_empty() || rechecking.is_some() {
                idle
            } else {
                next_recheck.min(idle)
            }
        };
        let probed = async {
            match liveness.as_mut() {
                Some(task) => task.await.unwrap_or(false),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.shutdown.cancelled() => {
                st.proto.close(Some("system-shutdown"), None);
                let out = st.proto.take_output();
                let _ = conn.write_all(&out).await;
                conn.shutdown().await;
                return Outcome::Shutdown;
            }
            read = conn.read(&mut buf) => match read {
                Ok(0) => {
                    outcome_reason = "connection closed by the peer".to_owned();
                    ended_healthy = st.ready && ended_healthy;
                    break 'stream;
                }
                Ok(n) => {
                    st.last_activity = Instant::now();
                    st.proto.handle_input(&buf[..n]);
                }
                Err(e) => {
                    outcome_reason = format!("read failed: {e}");
                    ended_healthy = false;
                    break 'stream;
                }
            },
            cmd = rx.recv() => match cmd {
                Some(cmd) => {
                    st.last_activity = Instant::now();
                    st.command(cmd);
                }
                None => return Outcome::Shutdown,
            },
            () = wake.notified() => {}
            works = async {
                match rechecking.as_mut() {
                    Some(task) => task.await.unwrap_or(false),
                    None => std::future::pending().await,
                }
            } => {
                rechecking = None;
                next_recheck = Instant::now() + recheck_every;
                better_works |= works;
            }
            works = probed => {
                liveness = None;
                next_liveness = Instant::now() + ACK_SUSPECT;
                let silent = st.waiting_since().is_some_and(|t| t.elapsed() >= ACK_SUSPECT);
                if silent && works && st.acked_any {
                    // The peer accepts new connections but this stream has gone quiet: it
                    // died without a sound (a silent partition). Start again on a fresh
                    // one rather than wait for TCP to give up on this one.
                    debug!(outstanding = st.in_flight.len(), "stream silent, peer reachable; reconnecting");
                    st.proto.close(Some("connection-timeout"), Some("no acknowledgement"));
                    failure = Some("stream went silent; reconnected".to_owned());
                    recheck = true;
                } else if silent && works {
                    // A peer that takes connections but has acknowledged nothing on this
                    // stream is broken, not cut off: back off (the queue stays) instead
                    // of reconnecting in a loop.
                    st.proto.close(Some("connection-timeout"), Some("no acknowledgement"));
                    failure = Some("peer acknowledges nothing".to_owned());
                    ended_healthy = false;
                } else if silent {
                    // Silent, and the path takes no new connection either: it is cut. Let
                    // the link fail over to its next path now.
                    debug!(outstanding = st.in_flight.len(), "stream silent, path unreachable");
                    st.proto.close(Some("connection-timeout"), Some("no acknowledgement"));
                    failure = Some("stream went silent and the path is unreachable".to_owned());
                    ended_healthy = false;
                }
            }
            () = tokio::time::sleep_until(timer) => {
                if !st.ready {
                    st.proto.close(Some("connection-timeout"), Some("negotiation took too long"));
                    failure = Some("negotiation timed out".to_owned());
                    ended_healthy = false;
                } else if st.waiting_since().is_some_and(|t| t.elapsed() < ACK_TIMEOUT) {
                    // Acknowledgements are overdue: ask again, and see whether a fresh
                    // connection gets through while this stream stays silent.
                    st.proto.request_ack();
                    if liveness.is_none() && Instant::now() >= next_liveness {
                        let peer = peer.to_owned();
                        let shared = shared.clone();
                        liveness = Some(tokio::spawn(async move {
                            let probe = async {
                                match shared.federation.as_ref() {
                                    Some(fed) => path.probe(fed, &peer).await,
                                    None => false,
                                }
                            };
                            // A connection that takes this long counts as not getting through.
                            tokio::time::timeout(ACK_SUSPECT, probe).await.unwrap_or(false)
                        }));
                    }
                } else if st.waiting_since().is_some() {
                    debug!(outstanding = st.in_flight.len(), "peer does not acknowledge; reconnecting");
                    st.proto.close(Some("connection-timeout"), Some("no acknowledgement"));
                    failure = Some(format!(
                        "peer acknowledged nothing for {}s",
                        ACK_TIMEOUT.as_secs()
                    ));
                    ended_healthy = false;
                } else if Instant::now() >= st.last_activity + IDLE_CLOSE {
                    st.proto.close(None, None);
                } else if !better.is_empty() && rechecking.is_none() && Instant::now() >= next_recheck {
                    let (paths, remote, shared) = (better.to_vec(), remote.to_owned(), shared.clone());
                    rechecking = Some(tokio::spawn(async move {
                        let Some(fed) = shared.federation.as_ref() else {
                            return false;
                        };
                        for p in paths {
                            if p.probe(fed, &remote).await {
                                return true;
                            }
                        }
                        false
                    }));
                }
            }
        }
    }
    // Best-effort stanzas that never went out are answered by the caller.
    // Verifications left unanswered are asked again on the next stream, and what the peer
    // never acknowledged goes first on it.
    held.extend(
        st.verifies
            .drain()
            .map(|(id, (key, reply))| LinkCmd::Verify { id, key, reply }),
    );
    held.extend(
        st.best_effort
            .drain(..)
            .map(|(_, _, el)| LinkCmd::Stanza(el)),
    );
    held.extend(st.pending.drain(..).map(LinkCmd::Stanza));
    for task in [liveness, rechecking].into_iter().flatten() {
        task.abort();
    }
    conn.shutdown().await;
    Outcome::Ended {
        healthy: ended_healthy || (recheck && st.ready),
        reason: failure.unwrap_or(outcome_reason),
        recheck,
    }
}
