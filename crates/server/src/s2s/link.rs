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

use outpost_proto::s2s::{Event, S2sConfig, S2sOutgoing, SendError, dialback_key};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

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
/// A stream with nothing to carry for this long is closed politely.
const IDLE_CLOSE: Duration = Duration::from_secs(600);
const READ_CHUNK: usize = 16 * 1024;

/// How one connection attempt ended.
enum Outcome {
    Shutdown,
    /// The stream ended; `healthy` when it became ready and was not closed for failing to
    /// acknowledge.
    Ended {
        healthy: bool,
        reason: String,
    },
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
        let mut backoff = initial;
        let mut held: VecDeque<LinkCmd> = VecDeque::new();
        // The last state logged: a link's ups and downs are logged once each, not per retry.
        let mut logged_up: Option<bool> = None;
        // Why the link was last logged as failing: a new reason is logged, a repeat is not.
        let mut logged_reason: Option<String> = None;
        loop {
            // Wait for something to send.
            loop {
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
            let outcome = Box::pin(attempt(
                &shared,
                fed,
                &local,
                &remote,
                &mut rx,
                &wake.work,
                &mut held,
                &mut logged_up,
            ))
            .await;
            let (healthy, reason) = match outcome {
                Outcome::Shutdown => return,
                Outcome::Ended { healthy, reason } => (healthy, reason),
            };
            // What waited for this attempt is not carried over: best-effort stanzas are
            // answered, verifications fail (their requester sees the dropped reply).
            for cmd in held.drain(..) {
                if let LinkCmd::Stanza(el) = cmd {
                    crate::delivery::bounce(&shared, &el, "cancel", "remote-server-not-found");
                }
            }
            if healthy {
                backoff = initial;
                debug!(reason, "stream ended");
                if !queue_nonempty(&shared, &local, &remote).await {
                    continue;
                }
            } else if logged_up != Some(false) || logged_reason.as_deref() != Some(&reason) {
                // Once when the link goes down, and again only if the reason changes.
                warn!(reason, retry_in = ?backoff, "link down; will retry");
                logged_up = Some(false);
                logged_reason = Some(reason.clone());
            } else {
                debug!(reason, retry_in = ?backoff, "link still down");
            }
            fed.board
                .set(&local, &remote, LinkState::Backoff, Some(reason));
            // Back off, but probe the peer meanwhile and come back at once when it
            // connects to us (proactive recovery).
            let deadline = Instant::now() + backoff;
            let mut probe = tokio::time::interval_at(Instant::now() + probe_every, probe_every);
            loop {
                tokio::select! {
                    () = shared.shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(deadline) => break,
                    () = wake.reachable.notified() => break,
                    cmd = rx.recv() => match cmd {
                        Some(cmd @ LinkCmd::Verify { .. }) => {
                            // The peer is asking for dialback, so it is up.
                            held.push_back(cmd);
                            break;
                        }
                        Some(cmd) => held.push_back(cmd),
                        None => return,
                    },
                    _ = probe.tick() => {
                        if queue_nonempty(&shared, &local, &remote).await
                            && super::direct::probe(fed, &remote).await
                        {
                            debug!("probe connected; retrying now");
                            break;
                        }
                    }
                }
            }
            if !healthy {
                backoff = (backoff * 2).min(max);
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
    last_activity: Instant,
    /// Best-effort stanzas waiting for the stream to be ready.
    pending: VecDeque<minidom::Element>,
    /// `db:verify` requests sent, by stream id.
    verifies: HashMap<String, oneshot::Sender<bool>>,
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
                self.verifies.insert(id, reply);
            }
        }
    }

    fn send_best_effort(&mut self, el: &minidom::Element) {
        match self.proto.send_stanza(el) {
            Ok(seq) => self.last_seq = seq,
            Err(e) => debug!(error = %e, "best-effort stanza not sent"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    shared: &Arc<Shared>,
    fed: &Federation,
    local: &str,
    remote: &str,
    rx: &mut mpsc::Receiver<LinkCmd>,
    wake: &Notify,
    held: &mut VecDeque<LinkCmd>,
    logged_up: &mut Option<bool>,
) -> Outcome {
    let failed = |reason: String| Outcome::Ended {
        healthy: false,
        reason,
    };
    fed.board.set(local, remote, LinkState::Connecting, None);
    let (mut conn, transport) = match super::direct::connect(fed, remote).await {
        Ok(c) => c,
        // Where direct TCP does not pass, a configured WebSocket endpoint may.
        Err(e) => match super::ws::connect(fed, remote).await {
            Some(Ok(c)) => c,
            Some(Err(ws)) => return failed(format!("{e}; {ws}")),
            None => return failed(e),
        },
    };
    let config = S2sConfig {
        transport,
        allow_plaintext: !fed.config.require_tls,
        dialback: true,
        // Not yet: we present a certificate, but nothing decides which peers verify it.
        sasl_external: false,
        stream_management: true,
        ..S2sConfig::default()
    };
    let now = Instant::now();
    let mut st = Stream {
        proto: S2sOutgoing::new(config, local, remote),
        ready: false,
        sm: false,
        in_flight: VecDeque::new(),
        last_sent: None,
        last_seq: 0,
        last_progress: now,
        last_activity: now,
        pending: VecDeque::new(),
        verifies: HashMap::new(),
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
                    if !conn.connect_tls(&fed.tls_client, remote).await {
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
                        info!(stream_management, "link up");
                        *logged_up = Some(true);
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
                    if let Some(id) = up_to
                        && let Err(e) = shared.store.outbox_ack(local, remote, id, now_ms()).await
                    {
                        warn!(error = %e, "cannot remove acknowledged stanzas");
                    }
                }
                Event::VerifyResult { id, valid, .. } => {
                    if let Some(reply) = st.verifies.remove(&id) {
                        let _ = reply.send(valid);
                    }
                }
                Event::AuthFailed { reason } => {
                    // Logged by the caller with the link's other failures, once per change.
                    debug!(reason, "authentication failed");
                    failure = Some(format!("dialback failed: {reason}"));
                }
                Event::PeerStreamError { condition, .. } => {
                    debug!(condition, "peer sent a stream error");
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
            if sent && st.sm {
                st.proto.request_ack();
            }
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
        if st.more {
            continue;
        }

        let timer = if !st.ready {
            negotiation_deadline
        } else if !st.in_flight.is_empty() {
            st.last_progress + ACK_TIMEOUT
        } else {
            st.last_activity + IDLE_CLOSE
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
            () = tokio::time::sleep_until(timer) => {
                if !st.ready {
                    st.proto.close(Some("connection-timeout"), Some("negotiation took too long"));
                    failure = Some("negotiation timed out".to_owned());
                    ended_healthy = false;
                } else if !st.in_flight.is_empty() {
                    debug!(outstanding = st.in_flight.len(), "peer does not acknowledge; reconnecting");
                    st.proto.close(Some("connection-timeout"), Some("no acknowledgement"));
                    failure = Some(format!(
                        "peer acknowledged nothing for {}s",
                        ACK_TIMEOUT.as_secs()
                    ));
                    ended_healthy = false;
                } else if Instant::now() >= st.last_activity + IDLE_CLOSE {
                    st.proto.close(None, None);
                }
            }
        }
    }
    // Best-effort stanzas that never went out are answered by the caller.
    held.extend(st.pending.drain(..).map(LinkCmd::Stanza));
    conn.shutdown().await;
    Outcome::Ended {
        healthy: ended_healthy,
        reason: failure.unwrap_or(outcome_reason),
    }
}
