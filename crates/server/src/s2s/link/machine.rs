//! The protocol state of one link, sans IO: which path to try, the stream on it, the ack
//! window over the durable queue, the dialback verifications it owes, and its timers.
//!
//! [`Link`] is driven like the stream machines of `outpost_proto`: the task feeds it what
//! happened (`connected`, `handle_input`, `queue_batch`, `probe_result`, `handle_timeout`
//! …, each with the time) and carries out the [`Action`]s it asks for, in order, reporting
//! each outcome before it asks for the next action. It reads no clock and touches no
//! socket or store, so tests run it against a simulated peer on a virtual clock.
//!
//! Rounds and paths. While anything waits (the queue, best-effort stanzas, verifications),
//! the link tries its paths best first, each whose back-off is over, until one carries a
//! stream. A stream that ends after working (idle, closed by the peer, or making way)
//! starts the next round from the best path; a path that fails backs off on its own
//! (doubling from `retry_initial` up to `retry_max`). When every path of a round failed,
//! best-effort stanzas are answered with `remote-server-not-found`, and the link waits for
//! the first back-off to end, probing the paths every [`PROBE_TICK`] while stanzas wait
//! (a TCP connection attempt each, overlapping: one that hangs in SYN back-off on a dead
//! path does not delay the next, so the backlog flows within a second of a path's return),
//! and starting again at once when a probe connects or the peer reaches us.
//!
//! The stream. Queued stanzas go out in id order, at most [`WINDOW`] unacknowledged; an
//! acknowledgement removes them from the store; a new stream resends from the last
//! acknowledged one. Every stanza on a stream with stream management is acknowledged,
//! presence and IQs included: acknowledgements [`ACK_SUSPECT`] late start a probe of the
//! path. If the probe connects, the stream died without a sound and is replaced at once
//! (or, when the peer never acknowledged anything, the peer is broken and backed off); if
//! it does not, the path is cut and the link moves on. [`ACK_TIMEOUT`] without an answer
//! gives up on the stream in any case. On a fallback path, the better paths are probed
//! every `probe_every`, and once one connects the stream makes way between bursts.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use minidom::Element;
use outpost_proto::StreamMachine;
use outpost_proto::s2s::{
    Event, RelayPolicy, S2sConfig, S2sOutgoing, SendError, Transport, dialback_key,
};
use outpost_proto::stanza::{Condition, StanzaError};
use outpost_store::OutboxEntry;
use tracing::{debug, info, warn};

use crate::config::AckWithoutSm;
use crate::s2s::status::LinkState;

/// Most queued stanzas written and not yet acknowledged on one stream.
pub(crate) const WINDOW: usize = 256;
/// Best-effort stanzas a link holds while it connects, and remembers unacknowledged.
pub(crate) const HELD_MAX: usize = 256;
/// Stream negotiation (TLS, dialback) must finish within this.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(60);
/// A peer that acknowledges nothing for this long while stanzas are outstanding is treated
/// as broken: the stream is closed and the stanzas are sent again on a new one.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// Acknowledgements this late make the link ask again and probe the path (see the module
/// documentation).
pub(crate) const ACK_SUSPECT: Duration = Duration::from_secs(5);
/// A stream with nothing to carry for this long is closed politely.
const IDLE_CLOSE: Duration = Duration::from_secs(600);
/// Longest pause between two streams while stanzas wait: never a tight reconnect loop.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// While every path is down and stanzas wait, a probe of the failed paths starts this
/// often (one TCP connection attempt per path; without waiting stanzas, `probe_every`).
pub(crate) const PROBE_TICK: Duration = Duration::from_millis(500);
/// Probes of a backing-off link outstanding at once (each ends with its connection
/// timeout at the latest).
const MAX_PROBES: usize = 32;

/// One way to reach the peer, in order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

    pub(crate) fn via_hub(self) -> bool {
        matches!(self, Path::Hub | Path::HubWebSocket)
    }
}

/// A path as this link uses it: the domain its stream is opened to (the peer, or the
/// hub), and whether that domain authenticates us by certificate (SASL EXTERNAL).
#[derive(Clone, Debug)]
pub(crate) struct PathSpec {
    pub(crate) path: Path,
    pub(crate) peer: String,
    pub(crate) external: bool,
}

/// What a link is configured with.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) local: String,
    pub(crate) remote: String,
    /// Best first; never empty.
    pub(crate) paths: Vec<PathSpec>,
    /// The dialback secret (XEP-0185).
    pub(crate) secret: String,
    pub(crate) require_tls: bool,
    /// We are a hub: our streams may carry stanzas of other domains.
    pub(crate) relays: bool,
    pub(crate) ack_without_sm: AckWithoutSm,
    pub(crate) retry_initial: Duration,
    pub(crate) retry_max: Duration,
    pub(crate) probe_every: Duration,
}

/// What a link is asked to do besides draining its queue. `R` answers a verification.
pub(crate) enum Command<R> {
    /// A best-effort stanza (presence, IQ, an error): sent when a stream is ready,
    /// answered with an error if every path of a round fails.
    Stanza(Element),
    /// As the receiving server, ask the peer (authoritative for its domain) whether `key` is
    /// the one it sent on our incoming stream `id` (XEP-0220 §2.1.2).
    Verify { id: String, key: String, reply: R },
}

/// What the task must do for the link. Each action's outcome is reported before the next
/// action is taken.
#[derive(Debug)]
pub(crate) enum Action<R> {
    /// Whether anything is queued for the link: answer with [`Link::queue_checked`].
    CheckQueue,
    /// Up to `max` queued stanzas after `after`: answer with [`Link::queue_batch`].
    ReadQueue { after: Option<i64>, max: u32 },
    /// The peer has the queued stanzas up to `up_to`: remove them from the store.
    Ack { up_to: i64 },
    /// Open a connection on `path` to `peer`'s server: answer with [`Link::connected`] or
    /// [`Link::connect_failed`].
    Connect { path: Path, peer: String },
    /// Write and flush these bytes: then [`Link::transmitted`], or
    /// [`Link::connection_lost`].
    Transmit(Vec<u8>),
    /// Run the client side of a TLS handshake naming `peer`: then
    /// [`Link::tls_established`] or [`Link::tls_failed`].
    StartTls { peer: String },
    /// Close the connection.
    Disconnect,
    /// Try a TCP connection on each path (to its `peer`), stopping at the first that
    /// connects if `first_success`, giving up on one after `timeout`: answer with
    /// [`Link::probe_result`], whenever it is done.
    Probe {
        token: u64,
        targets: Vec<(Path, String)>,
        first_success: bool,
        timeout: Option<Duration>,
    },
    /// The answers of probes asked for so far are no longer wanted.
    CancelProbes,
    /// The link's state changed, for operators.
    State {
        state: LinkState,
        error: Option<String>,
    },
    /// The link uses, or tries, this path now.
    Path(Path),
    /// The link is up after being down (or for the first time): presence across it may
    /// be stale (RFC 6121 §4.3).
    Up,
    /// Tell the sender of `stanza` it was not delivered.
    Bounce {
        stanza: Box<Element>,
        error: StanzaError,
    },
    /// The peer answered a verification.
    Verified { reply: R, valid: bool },
}

/// What the link knows of one path: failures back it off on their own, so a broken direct
/// path does not delay the hub, and a path that works is tried first again.
#[derive(Debug)]
struct PathHealth {
    spec: PathSpec,
    failures: u32,
    /// Not before this; `None` when the path has not failed since it last worked.
    retry_at: Option<Instant>,
    /// The failure last logged for this path: a repeat is not logged again.
    logged: Option<String>,
    /// It last failed because nothing answered there (no connection, or a stream gone
    /// silent on a path that took no new one): probed every [`PROBE_TICK`], since it may
    /// come back at any moment. Other failures (a peer that refuses the stream, or
    /// acknowledges nothing) only wait out their back-off.
    unreachable: bool,
}

impl PathHealth {
    fn eligible(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| t <= now)
    }

    fn worked(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        self.logged = None;
        self.unreachable = false;
    }

    /// Records a failure; returns the wait before this path is tried again.
    fn failed(&mut self, s: &Settings, unreachable: bool, now: Instant) -> Duration {
        let wait = (s.retry_initial)
            .saturating_mul(1 << self.failures.min(20))
            .min(s.retry_max);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + wait);
        self.unreachable = unreachable;
        wait
    }
}

/// Why the link asked whether its queue holds anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Waiting for work.
    Idle,
    /// A stream just ended: reconnect (after a pause) only if something waits.
    AfterStream,
    /// Backing off: probe the paths only if something waits.
    Probe,
}

enum Phase<R> {
    /// No stream and nothing known to send.
    Idle,
    /// A `Connect` for the path at this index is out.
    Connecting(usize),
    Stream(Box<Stream<R>>),
    /// Between two streams while stanzas wait.
    Pausing {
        until: Instant,
    },
    /// Every path of the last round failed.
    Backoff {
        until: Instant,
        /// The next probe of the unreachable paths ([`PROBE_TICK`]).
        next_probe: Instant,
        /// The next probe of every failed path (`probe_every`).
        next_full: Instant,
        /// The probes not yet answered, by token.
        probing: Vec<u64>,
    },
    Done,
}

/// A link from one of our domains to a remote one. `R` answers a verification (a channel
/// in the server, anything in tests).
pub(crate) struct Link<R> {
    s: Settings,
    health: Vec<PathHealth>,
    /// Commands waiting for a stream.
    held: VecDeque<Command<R>>,
    phase: Phase<R>,
    /// Where the current round goes on from.
    round_next: usize,
    /// The failures of the current round, one per path tried.
    failures: Vec<String>,
    /// Outstanding queue check.
    check: Option<Check>,
    /// The last state logged: ups and downs are logged once each, not per retry.
    logged_up: Option<bool>,
    actions: VecDeque<Action<R>>,
    next_token: u64,
}

impl<R> Link<R> {
    /// A new link, idle, asking whether its queue holds anything (it may after a restart).
    pub(crate) fn new(s: Settings) -> Link<R> {
        let health = s
            .paths
            .iter()
            .map(|spec| PathHealth {
                spec: spec.clone(),
                failures: 0,
                retry_at: None,
                logged: None,
                unreachable: false,
            })
            .collect();
        let mut link = Link {
            s,
            health,
            held: VecDeque::new(),
            phase: Phase::Idle,
            round_next: 0,
            failures: Vec::new(),
            check: None,
            logged_up: None,
            actions: VecDeque::new(),
            next_token: 1,
        };
        link.ask_queue(Check::Idle);
        link
    }

    /// The next thing to do, if any.
    pub(crate) fn poll_action(&mut self) -> Option<Action<R>> {
        self.actions.pop_front()
    }

    /// Whether the link has stopped (after [`Link::shutdown`]) and has nothing left to do.
    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done) && self.actions.is_empty()
    }

    /// When [`Link::handle_timeout`] must be called next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Stream(st) => Some(st.timer()),
            Phase::Pausing { until } => Some(*until),
            Phase::Backoff {
                until,
                next_probe,
                next_full,
                probing,
            } => {
                let mut due = *until;
                if self.check.is_none() && probing.len() < MAX_PROBES {
                    due = due.min(*next_full);
                    if (self.health.iter()).any(|h| h.unreachable && h.retry_at.is_some()) {
                        due = due.min(*next_probe);
                    }
                }
                Some(due)
            }
            Phase::Idle | Phase::Connecting(_) | Phase::Done => None,
        }
    }

    fn push(&mut self, action: Action<R>) {
        self.actions.push_back(action);
    }

    fn ask_queue(&mut self, why: Check) {
        self.check = Some(why);
        self.push(Action::CheckQueue);
    }

    // ---- inputs ----

    /// A best-effort stanza or a verification for the peer.
    pub(crate) fn command(&mut self, cmd: Command<R>, now: Instant) {
        match &mut self.phase {
            Phase::Stream(st) => {
                st.command(cmd, now);
                self.pump(now);
            }
            Phase::Idle => {
                self.held.push_back(cmd);
                self.start_round(now);
            }
            Phase::Backoff { .. } => {
                let verify = matches!(cmd, Command::Verify { .. });
                self.held.push_back(cmd);
                if verify {
                    // The peer is asking for dialback, so it is up.
                    self.peer_reachable(now);
                }
            }
            Phase::Connecting(_) | Phase::Pausing { .. } => self.held.push_back(cmd),
            Phase::Done => {}
        }
    }

    /// New stanzas may be queued.
    pub(crate) fn queue_changed(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::Idle if self.check.is_none() => self.ask_queue(Check::Idle),
            Phase::Stream(st) => {
                st.queue_more = true;
                self.pump(now);
            }
            _ => {}
        }
    }

    /// The peer connected to us, so it is reachable now (proactive recovery): a link that
    /// backs off tries its paths to the peer at once.
    pub(crate) fn peer_reachable(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Backoff { .. }) {
            return;
        }
        for h in &mut self.health {
            if !h.spec.path.via_hub() {
                h.retry_at = None;
            }
        }
        self.start_round(now);
    }

    /// The answer to [`Action::CheckQueue`].
    pub(crate) fn queue_checked(&mut self, nonempty: bool, now: Instant) {
        let Some(why) = self.check.take() else {
            return;
        };
        match (&mut self.phase, why) {
            (Phase::Idle, Check::Idle) if nonempty => self.start_round(now),
            (Phase::Idle, Check::AfterStream) if nonempty => {
                self.phase = Phase::Pausing {
                    until: now + self.s.retry_initial.min(RECONNECT_PAUSE),
                };
            }
            (Phase::Idle, Check::Idle | Check::AfterStream) => self.push(Action::State {
                state: LinkState::Idle,
                error: None,
            }),
            (
                Phase::Backoff {
                    next_probe,
                    next_full,
                    ..
                },
                Check::Probe,
            ) if !nonempty => {
                *next_probe = now + self.s.probe_every;
                *next_full = now + self.s.probe_every;
            }
            (
                Phase::Backoff {
                    probing,
                    next_probe,
                    next_full,
                    ..
                },
                Check::Probe,
            ) => {
                let full = now >= *next_full;
                if full {
                    *next_full = now + self.s.probe_every;
                }
                *next_probe = now + PROBE_TICK;
                let targets: Vec<(Path, String)> = self
                    .health
                    .iter()
                    .filter(|h| h.retry_at.is_some() && (full || h.unreachable))
                    .map(|h| (h.spec.path, h.spec.peer.clone()))
                    .collect();
                if targets.is_empty() {
                    return;
                }
                self.next_token += 1;
                let token = self.next_token;
                probing.push(token);
                self.push(Action::Probe {
                    token,
                    targets,
                    first_success: false,
                    timeout: None,
                });
            }
            // The link moved on meanwhile.
            _ => {}
        }
    }

    /// The connection asked for by [`Action::Connect`] is open; `transport` says whether
    /// TLS is still to be negotiated.
    pub(crate) fn connected(&mut self, transport: Transport, now: Instant) {
        let Phase::Connecting(index) = self.phase else {
            return;
        };
        let spec = &self.health[index].spec;
        let config = S2sConfig {
            transport,
            allow_plaintext: !self.s.require_tls,
            dialback: true,
            sasl_external: spec.external,
            stream_management: true,
            relay: RelayPolicy {
                outgoing: spec.path.via_hub() || self.s.relays,
                ..RelayPolicy::default()
            },
            ..S2sConfig::default()
        };
        let proto = S2sOutgoing::new(config, &self.s.local, &spec.peer);
        let mut st = Box::new(Stream::new(index, spec, proto, now, self.s.probe_every));
        for cmd in self.held.drain(..) {
            st.command(cmd, now);
        }
        self.phase = Phase::Stream(st);
        self.pump(now);
    }

    /// The connection could not be opened.
    pub(crate) fn connect_failed(&mut self, reason: String, now: Instant) {
        if let Phase::Connecting(index) = self.phase {
            self.attempt_failed(index, reason, true, now);
        }
    }

    pub(crate) fn tls_established(&mut self, now: Instant) {
        if let Phase::Stream(st) = &mut self.phase
            && st.awaiting_tls
        {
            st.awaiting_tls = false;
            st.proto.tls_established();
            self.pump(now);
        }
    }

    pub(crate) fn tls_failed(&mut self, now: Instant) {
        self.stream_broke("TLS handshake failed".to_owned(), now);
    }

    /// Bytes from the peer.
    pub(crate) fn handle_input(&mut self, data: &[u8], now: Instant) {
        if let Phase::Stream(st) = &mut self.phase {
            st.last_activity = now;
            st.proto.handle_input(data);
            self.pump(now);
        }
    }

    /// The bytes of the oldest [`Action::Transmit`] not yet reported are written.
    pub(crate) fn transmitted(&mut self, now: Instant) {
        let Phase::Stream(st) = &mut self.phase else {
            return;
        };
        st.last_activity = now;
        let written_up_to = st.written.pop_front().flatten();
        if st.ready && !st.sm && self.s.ack_without_sm == AckWithoutSm::OnWrite {
            // No acknowledgements on this stream: written and flushed counts.
            if let Some(up_to) = written_up_to {
                while st.in_flight.front().is_some_and(|(_, id)| *id <= up_to) {
                    st.in_flight.pop_front();
                }
                self.actions.push_back(Action::Ack { up_to });
            }
        }
        self.pump(now);
    }

    /// The peer closed the connection.
    pub(crate) fn connection_closed(&mut self, now: Instant) {
        if let Phase::Stream(st) = &mut self.phase {
            st.reason = "connection closed by the peer".to_owned();
            st.healthy &= st.ready;
            self.end_stream(now);
        }
    }

    /// Reading or writing failed.
    pub(crate) fn connection_lost(&mut self, reason: String, now: Instant) {
        self.stream_broke(reason, now);
    }

    fn stream_broke(&mut self, reason: String, now: Instant) {
        if let Phase::Stream(st) = &mut self.phase {
            st.reason = reason;
            st.healthy = false;
            // What was to be written on this connection never will be.
            self.actions
                .retain(|a| !matches!(a, Action::Transmit(_) | Action::StartTls { .. }));
            self.end_stream(now);
        }
    }

    /// The answer to [`Action::ReadQueue`].
    pub(crate) fn queue_batch(&mut self, batch: Vec<OutboxEntry>, now: Instant) {
        if let Phase::Stream(st) = &mut self.phase {
            st.send_queued(batch, &mut self.actions, now);
            self.pump(now);
        }
    }

    /// The answer to [`Action::Probe`]: whether each path tried connected.
    pub(crate) fn probe_result(&mut self, token: u64, results: Vec<(Path, bool)>, now: Instant) {
        match &mut self.phase {
            Phase::Backoff { probing, .. } if probing.contains(&token) => {
                probing.retain(|t| *t != token);
                let mut any = false;
                for (path, ok) in results {
                    if let (true, Some(h)) =
                        (ok, self.health.iter_mut().find(|h| h.spec.path == path))
                    {
                        debug!(path = path.as_str(), "probe connected; retrying now");
                        h.retry_at = None;
                        any = true;
                    }
                }
                if any {
                    // The other probes still out have nothing more to say.
                    self.push(Action::CancelProbes);
                    self.start_round(now);
                }
            }
            Phase::Stream(st) => {
                let works = results.iter().any(|(_, ok)| *ok);
                if st.liveness == Some(token) {
                    st.liveness_result(works, now);
                } else if st.rechecking == Some(token) {
                    st.rechecking = None;
                    st.next_recheck = now + self.s.probe_every;
                    st.better_works |= works;
                }
                self.pump(now);
            }
            _ => {}
        }
    }

    /// The server is stopping: close the stream politely and finish.
    pub(crate) fn shutdown(&mut self) {
        if let Phase::Stream(st) = &mut self.phase {
            st.proto.close(Some("system-shutdown"), None);
            let out = st.proto.take_output();
            self.actions.push_back(Action::Transmit(out));
            self.actions.push_back(Action::Disconnect);
        }
        self.phase = Phase::Done;
    }

    /// Time passed; acts on every timer that is due at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_none_or(|t| now < t) {
            return;
        }
        match &mut self.phase {
            Phase::Stream(st) => {
                let better: Vec<(Path, String)> = self.health[..st.index]
                    .iter()
                    .map(|h| (h.spec.path, h.spec.peer.clone()))
                    .collect();
                let token = self.next_token + 1;
                if st.on_timer(now, better, token, &mut self.actions) {
                    self.next_token = token;
                }
                self.pump(now);
            }
            Phase::Pausing { .. } => {
                self.phase = Phase::Idle;
                self.enter_idle(now);
            }
            Phase::Backoff { until, .. } if now >= *until => {
                self.push(Action::CancelProbes);
                self.start_round(now);
            }
            Phase::Backoff { probing, .. }
                if self.check.is_none() && probing.len() < MAX_PROBES =>
            {
                self.ask_queue(Check::Probe);
            }
            Phase::Backoff { .. } => {}
            Phase::Idle | Phase::Connecting(_) | Phase::Done => {}
        }
    }

    // ---- rounds ----

    fn enter_idle(&mut self, now: Instant) {
        if self.held.is_empty() {
            self.ask_queue(Check::Idle);
        } else {
            self.start_round(now);
        }
    }

    fn start_round(&mut self, now: Instant) {
        self.check = None;
        self.failures.clear();
        self.round_next = 0;
        self.next_path(now);
    }

    /// Tries the next path of the round whose back-off is over, or ends the round.
    fn next_path(&mut self, now: Instant) {
        let next = (self.round_next..self.health.len()).find(|&i| self.health[i].eligible(now));
        let Some(index) = next else {
            self.round_failed(now);
            return;
        };
        self.round_next = index + 1;
        self.phase = Phase::Connecting(index);
        let spec = self.health[index].spec.clone();
        self.push(Action::State {
            state: LinkState::Connecting,
            error: None,
        });
        self.push(Action::Path(spec.path));
        self.push(Action::Connect {
            path: spec.path,
            peer: spec.peer,
        });
    }

    fn attempt_failed(&mut self, index: usize, reason: String, unreachable: bool, now: Instant) {
        let h = &mut self.health[index];
        let wait = h.failed(&self.s, unreachable, now);
        let path = h.spec.path.as_str();
        if h.logged.as_deref() != Some(reason.as_str()) {
            // Once per path and reason, not once per retry.
            warn!(path, reason, retry_in = ?wait, "path failed");
            h.logged = Some(reason.clone());
        } else {
            debug!(path, reason, retry_in = ?wait, "path still failing");
        }
        self.failures.push(format!("{path}: {reason}"));
        self.next_path(now);
    }

    /// A stream worked and ended. `recheck`: it made way for a better path, or was
    /// replaced after going silent: start again at once from the best path.
    fn attempt_worked(&mut self, index: usize, recheck: bool, now: Instant) {
        self.health[index].worked();
        if recheck {
            for h in &mut self.health[..index] {
                h.retry_at = None;
            }
            self.start_round(now);
            return;
        }
        self.phase = Phase::Idle;
        if self.held.is_empty() {
            self.ask_queue(Check::AfterStream);
        } else {
            self.phase = Phase::Pausing {
                until: now + self.s.retry_initial.min(RECONNECT_PAUSE),
            };
        }
    }

    /// Every path of the round failed (each tried what waited): best-effort stanzas are
    /// answered, verifications fail (their requester sees the dropped reply), and the link
    /// backs off.
    fn round_failed(&mut self, now: Instant) {
        for cmd in std::mem::take(&mut self.held) {
            if let Command::Stanza(stanza) = cmd {
                self.push(Action::Bounce {
                    stanza: Box::new(stanza),
                    error: StanzaError::new(Condition::RemoteServerNotFound),
                });
            }
        }
        let reason = (!self.failures.is_empty()).then(|| self.failures.join("; "));
        if let Some(reasons) = &reason
            && self.logged_up != Some(false)
        {
            warn!(reasons, "link down; will retry");
            self.logged_up = Some(false);
        }
        self.push(Action::State {
            state: LinkState::Backoff,
            error: reason,
        });
        let until = self
            .health
            .iter()
            .filter_map(|h| h.retry_at)
            .min()
            .unwrap_or(now + self.s.retry_initial);
        self.phase = Phase::Backoff {
            until,
            next_probe: now + PROBE_TICK,
            next_full: now + self.s.probe_every,
            probing: Vec::new(),
        };
    }

    // ---- the stream ----

    /// Runs the stream's machine until it waits for input: events, queue reads, the `<r/>`
    /// and the output to write. Ends the stream when its machine closed.
    fn pump(&mut self, now: Instant) {
        let Phase::Stream(st) = &mut self.phase else {
            return;
        };
        let mut cx = StreamCx {
            s: &self.s,
            actions: &mut self.actions,
            logged_up: &mut self.logged_up,
        };
        if st.pump(&mut cx, now) {
            self.end_stream(now);
        }
    }

    /// The stream is over: what it did not deliver waits for the next one, and the round
    /// goes on.
    fn end_stream(&mut self, now: Instant) {
        let Phase::Stream(st) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        let st = *st;
        if st.liveness.is_some() || st.rechecking.is_some() {
            self.push(Action::CancelProbes);
        }
        self.push(Action::Disconnect);
        let healthy = st.healthy || (st.recheck && st.ready);
        let reason = st.failure.clone().unwrap_or_else(|| st.reason.clone());
        let (index, recheck, cut) = (st.index, st.recheck, st.cut);
        // Verifications left unanswered are asked again on the next stream, and what the
        // peer never acknowledged goes first on it.
        self.held.extend(st.leftovers());
        if healthy {
            debug!(
                path = self.health[index].spec.path.as_str(),
                reason, "stream ended"
            );
            self.attempt_worked(index, recheck, now);
        } else {
            self.attempt_failed(index, reason, cut, now);
        }
    }
}

/// What a stream reaches of its link while it runs.
struct StreamCx<'a, R> {
    s: &'a Settings,
    actions: &'a mut VecDeque<Action<R>>,
    logged_up: &'a mut Option<bool>,
}

/// One stream on one path.
struct Stream<R> {
    index: usize,
    path: Path,
    peer: String,
    proto: S2sOutgoing,
    ready: bool,
    sm: bool,
    awaiting_tls: bool,
    negotiation_deadline: Instant,
    /// (sequence number, outbox id) of queued stanzas written and not yet acknowledged.
    in_flight: VecDeque<(u32, i64)>,
    /// The last outbox id written on this stream.
    last_sent: Option<i64>,
    /// The sequence number of the last stanza written.
    last_seq: u32,
    /// The queue may hold stanzas after `last_sent`.
    queue_more: bool,
    /// A [`Action::ReadQueue`] is out.
    reading: bool,
    /// For each [`Action::Transmit`] not yet reported written: the last outbox id in it.
    written: VecDeque<Option<i64>>,
    /// When the peer last acknowledged something, or when stanzas started waiting.
    last_progress: Instant,
    /// Best-effort stanzas written and not yet acknowledged (sequence number, when): a
    /// stream that carries only presence and IQs must not die unnoticed either, and what
    /// it lost is tried again on the next stream.
    best_effort: VecDeque<(u32, Instant, Element)>,
    /// Whether the peer acknowledged anything on this stream.
    acked_any: bool,
    /// Stanzas were written since the last `<r/>`.
    ack_wanted: bool,
    last_activity: Instant,
    /// Best-effort stanzas waiting for the stream to be ready.
    pending: VecDeque<Element>,
    /// `db:verify` requests sent, by stream id.
    verifies: HashMap<String, (String, R)>,
    /// Since when the oldest unanswered `db:verify` has waited (a peer's dialback waits on
    /// it, so a stream that carries only verifications must not die unnoticed either).
    verify_since: Option<Instant>,
    /// A liveness probe is out (see [`ACK_SUSPECT`]), and not another before this.
    liveness: Option<u64>,
    next_liveness: Instant,
    /// On a fallback path: a probe of the better paths is out, and the next one's time.
    rechecking: Option<u64>,
    next_recheck: Instant,
    /// A better path works: make way once nothing is in flight.
    better_works: bool,
    /// How it ended: `healthy` unless it failed; `reason` how it closed; `failure` a cause
    /// found before that, better than how it closed; `recheck` when it made way.
    healthy: bool,
    /// The path took no new connection while this stream was silent.
    cut: bool,
    reason: String,
    failure: Option<String>,
    recheck: bool,
}

impl<R> Stream<R> {
    fn new(
        index: usize,
        spec: &PathSpec,
        proto: S2sOutgoing,
        now: Instant,
        probe_every: Duration,
    ) -> Stream<R> {
        Stream {
            index,
            path: spec.path,
            peer: spec.peer.clone(),
            proto,
            ready: false,
            sm: false,
            awaiting_tls: false,
            negotiation_deadline: now + NEGOTIATION_TIMEOUT,
            in_flight: VecDeque::new(),
            last_sent: None,
            last_seq: 0,
            queue_more: true,
            reading: false,
            written: VecDeque::new(),
            last_progress: now,
            best_effort: VecDeque::new(),
            acked_any: false,
            ack_wanted: false,
            last_activity: now,
            pending: VecDeque::new(),
            verifies: HashMap::new(),
            verify_since: None,
            liveness: None,
            next_liveness: now,
            rechecking: None,
            next_recheck: now + probe_every,
            better_works: false,
            healthy: true,
            cut: false,
            reason: String::new(),
            failure: None,
            recheck: false,
        }
    }

    fn command(&mut self, cmd: Command<R>, now: Instant) {
        self.last_activity = now;
        match cmd {
            Command::Stanza(el) => {
                if self.ready {
                    self.send_best_effort(&el, now);
                } else if self.pending.len() < HELD_MAX {
                    self.pending.push_back(el);
                }
            }
            Command::Verify { id, key, reply } => {
                self.proto.send_dialback_verify(&id, &key);
                self.verify_since.get_or_insert(now);
                self.verifies.insert(id, (key, reply));
            }
        }
    }

    fn send_best_effort(&mut self, el: &Element, now: Instant) {
        match self.proto.send_stanza(el) {
            Ok(seq) => {
                self.last_seq = seq;
                if self.sm {
                    if self.best_effort.len() >= HELD_MAX {
                        self.best_effort.pop_front();
                    }
                    self.best_effort.push_back((seq, now, el.clone()));
                    self.ack_wanted = true;
                }
            }
            Err(e) => debug!(error = %e, "best-effort stanza not sent"),
        }
    }

    /// Writes a batch read from the queue, in order, within the window.
    fn send_queued(
        &mut self,
        batch: Vec<OutboxEntry>,
        actions: &mut VecDeque<Action<R>>,
        now: Instant,
    ) {
        let asked = (WINDOW - self.in_flight.len().min(WINDOW)) as u32;
        self.reading = false;
        self.queue_more = batch.len() as u32 >= asked && asked > 0;
        for entry in batch {
            self.last_sent = Some(entry.id);
            match crate::s2s::parse_stanza(&entry.stanza).map(|el| self.proto.send_stanza(&el)) {
                Some(Ok(seq)) => {
                    if self.in_flight.is_empty() {
                        self.last_progress = now;
                    }
                    self.last_seq = seq;
                    self.in_flight.push_back((seq, entry.id));
                    self.ack_wanted |= self.sm;
                }
                Some(Err(SendError::NotReady | SendError::Closed)) => break,
                _ => {
                    // Nothing the peer could accept: it goes with the acknowledgement of
                    // the stanza before it, or at once when none is outstanding.
                    warn!(
                        id = entry.id,
                        "dropping a queued stanza that cannot be sent"
                    );
                    if self.in_flight.is_empty() {
                        actions.push_back(Action::Ack { up_to: entry.id });
                    } else {
                        self.in_flight.push_back((self.last_seq, entry.id));
                    }
                }
            }
        }
    }

    /// See [`Link::pump`]; `true` when the stream is over.
    fn pump(&mut self, cx: &mut StreamCx<'_, R>, now: Instant) -> bool {
        loop {
            if self.awaiting_tls {
                return false;
            }
            while let Some(event) = self.proto.poll_event() {
                if self.on_event(event, cx, now) {
                    return true;
                }
                if self.awaiting_tls {
                    return false;
                }
            }
            let sends_queue = self.sm || cx.s.ack_without_sm == AckWithoutSm::OnWrite;
            if self.ready
                && sends_queue
                && !self.proto.is_closed()
                && !self.reading
                && self.queue_more
                && self.in_flight.len() < WINDOW
            {
                self.reading = true;
                cx.actions.push_back(Action::ReadQueue {
                    after: self.last_sent,
                    max: (WINDOW - self.in_flight.len()) as u32,
                });
            }
            // One `<r/>` after whatever was written since the last one.
            if std::mem::take(&mut self.ack_wanted) {
                self.proto.request_ack();
            }
            if self.proto.has_output() {
                self.written
                    .push_back(self.in_flight.back().map(|(_, id)| *id));
                cx.actions
                    .push_back(Action::Transmit(self.proto.take_output()));
            }
            if self.better_works
                && self.ready
                && self.in_flight.is_empty()
                && !self.reading
                && !self.proto.is_closed()
            {
                // Between bursts: make way for the better path.
                info!(
                    path = self.path.as_str(),
                    "a better path works again; leaving this one"
                );
                self.proto.close(None, None);
                self.recheck = true;
                continue;
            }
            return false;
        }
    }

    /// Handles one event of the stream's machine; `true` when the stream is over.
    fn on_event(&mut self, event: Event, cx: &mut StreamCx<'_, R>, now: Instant) -> bool {
        match event {
            Event::StartTls => {
                cx.actions
                    .push_back(Action::Transmit(self.proto.take_output()));
                self.written.push_back(None);
                cx.actions.push_back(Action::StartTls {
                    peer: self.peer.clone(),
                });
                self.awaiting_tls = true;
            }
            Event::NeedDialbackKey {
                local,
                remote,
                stream_id,
            } => {
                // XEP-0185 §2: the receiving server is the peer, we originate.
                let key = dialback_key(&cx.s.secret, &remote, &local, &stream_id);
                self.proto.provide_dialback_key(&key);
            }
            Event::Ready { stream_management } => self.on_ready(stream_management, cx, now),
            Event::Acked { h } => self.on_acked(h, cx, now),
            Event::VerifyResult { id, valid, .. } => {
                let answered = self.verifies.remove(&id);
                if self.verifies.is_empty() {
                    self.verify_since = None;
                }
                if let Some((_, reply)) = answered {
                    cx.actions.push_back(Action::Verified { reply, valid });
                }
            }
            Event::AuthFailed { reason } => {
                // Logged by the link with its other failures, once per change.
                debug!(reason, "authentication failed");
                self.failure = Some(format!("dialback failed: {reason}"));
            }
            Event::PeerStreamError { condition, text } => {
                // The peer refused something on this stream: a failure of the path
                // (backed off), not a clean end.
                debug!(condition, ?text, "peer sent a stream error");
                self.failure = Some(match text {
                    Some(t) => format!("peer closed the stream with {condition} ({t})"),
                    None => format!("peer closed the stream with {condition}"),
                });
                self.healthy = false;
            }
            Event::Closed { error } => {
                let out = self.proto.take_output();
                if !out.is_empty() {
                    self.written.push_back(None);
                    cx.actions.push_back(Action::Transmit(out));
                }
                self.reason = match error {
                    Some(c) => format!("stream closed with {c}"),
                    None => "stream closed".to_owned(),
                };
                self.healthy &= self.ready;
                return true;
            }
            Event::Authenticated { .. }
            | Event::CheckCertificate { .. }
            | Event::DialbackRequest { .. }
            | Event::VerifyRequest { .. }
            | Event::Stanza(_) => {}
        }
        false
    }

    fn on_ready(&mut self, sm: bool, cx: &mut StreamCx<'_, R>, now: Instant) {
        self.ready = true;
        self.sm = sm;
        cx.actions.push_back(Action::State {
            state: LinkState::Up,
            error: None,
        });
        if *cx.logged_up != Some(true) {
            info!(stream_management = sm, path = self.path.as_str(), "link up");
            *cx.logged_up = Some(true);
            cx.actions.push_back(Action::Up);
        }
        if !sm && cx.s.ack_without_sm == AckWithoutSm::Hold {
            warn!("peer offers no stream management; queued stanzas are held");
        }
        for el in std::mem::take(&mut self.pending) {
            self.send_best_effort(&el, now);
        }
    }

    fn on_acked(&mut self, h: u32, cx: &mut StreamCx<'_, R>, now: Instant) {
        // Sequence numbers wrap at 2^32 (XEP-0198 §4).
        let covered = |seq: u32| h.wrapping_sub(seq) < 1 << 31;
        let mut up_to = None;
        while let Some(&(seq, id)) = self.in_flight.front() {
            if !covered(seq) {
                break;
            }
            up_to = Some(id);
            self.in_flight.pop_front();
        }
        self.last_progress = now;
        self.acked_any = true;
        while self
            .best_effort
            .front()
            .is_some_and(|(seq, _, _)| covered(*seq))
        {
            self.best_effort.pop_front();
        }
        if let Some(up_to) = up_to {
            cx.actions.push_back(Action::Ack { up_to });
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

    fn has_better(&self) -> bool {
        self.index > 0
    }

    /// When the stream's next timer is due.
    fn timer(&self) -> Instant {
        if !self.ready {
            return self.negotiation_deadline;
        }
        if let Some(since) = self.waiting_since() {
            let give_up = since + ACK_TIMEOUT;
            return match self.liveness {
                None => (since + ACK_SUSPECT).max(self.next_liveness).min(give_up),
                Some(_) => give_up,
            };
        }
        let idle = self.last_activity + IDLE_CLOSE;
        if !self.has_better() || self.rechecking.is_some() {
            idle
        } else {
            self.next_recheck.min(idle)
        }
    }

    /// A timer is due. `better` are the better paths, `token` the token for a probe.
    /// Returns whether the token was used.
    fn on_timer(
        &mut self,
        now: Instant,
        better: Vec<(Path, String)>,
        token: u64,
        actions: &mut VecDeque<Action<R>>,
    ) -> bool {
        let waiting = self.waiting_since();
        if !self.ready {
            self.proto.close(
                Some("connection-timeout"),
                Some("negotiation took too long"),
            );
            self.failure = Some("negotiation timed out".to_owned());
            self.healthy = false;
        } else if waiting.is_some_and(|t| now.duration_since(t) < ACK_TIMEOUT) {
            // Acknowledgements are overdue: ask again, and see whether a fresh connection
            // gets through while this stream stays silent.
            self.proto.request_ack();
            if self.liveness.is_none() && now >= self.next_liveness {
                self.liveness = Some(token);
                actions.push_back(Action::Probe {
                    token,
                    targets: vec![(self.path, self.peer.clone())],
                    first_success: true,
                    timeout: Some(ACK_SUSPECT),
                });
                return true;
            }
        } else if waiting.is_some() {
            debug!(
                outstanding = self.in_flight.len(),
                "peer does not acknowledge; reconnecting"
            );
            self.proto
                .close(Some("connection-timeout"), Some("no acknowledgement"));
            self.failure = Some(format!(
                "peer acknowledged nothing for {}s",
                ACK_TIMEOUT.as_secs()
            ));
            self.healthy = false;
        } else if now >= self.last_activity + IDLE_CLOSE {
            self.proto.close(None, None);
        } else if !better.is_empty() && self.rechecking.is_none() && now >= self.next_recheck {
            self.rechecking = Some(token);
            actions.push_back(Action::Probe {
                token,
                targets: better,
                first_success: true,
                timeout: None,
            });
            return true;
        }
        false
    }

    /// The answer of the liveness probe: whether a fresh connection on the path connected.
    fn liveness_result(&mut self, works: bool, now: Instant) {
        self.liveness = None;
        self.next_liveness = now + ACK_SUSPECT;
        let silent = self
            .waiting_since()
            .is_some_and(|t| now.duration_since(t) >= ACK_SUSPECT);
        if !silent {
            return;
        }
        self.proto
            .close(Some("connection-timeout"), Some("no acknowledgement"));
        if works && self.acked_any {
            // The peer accepts new connections but this stream has gone quiet: it died
            // without a sound (a silent partition). Start again on a fresh one rather than
            // wait for TCP to give up on this one.
            debug!(
                outstanding = self.in_flight.len(),
                "stream silent, peer reachable; reconnecting"
            );
            self.failure = Some("stream went silent; reconnected".to_owned());
            self.recheck = true;
        } else if works {
            // A peer that takes connections but has acknowledged nothing on this stream
            // is broken, not cut off: back off (the queue stays) instead of reconnecting in
            // a loop.
            self.failure = Some("peer acknowledges nothing".to_owned());
            self.healthy = false;
        } else {
            // Silent, and the path takes no new connection either: it is cut. Let the link
            // fail over to its next path now.
            debug!(
                outstanding = self.in_flight.len(),
                "stream silent, path unreachable"
            );
            self.failure = Some("stream went silent and the path is unreachable".to_owned());
            self.healthy = false;
            self.cut = true;
        }
    }

    /// What the stream leaves for the next one: unanswered verifications, best-effort
    /// stanzas the peer never acknowledged, and those never sent.
    fn leftovers(self) -> impl Iterator<Item = Command<R>> {
        let verifies = self
            .verifies
            .into_iter()
            .map(|(id, (key, reply))| Command::Verify { id, key, reply });
        let unacked = self
            .best_effort
            .into_iter()
            .map(|(_, _, el)| Command::Stanza(el));
        let unsent = self.pending.into_iter().map(Command::Stanza);
        verifies.chain(unacked).chain(unsent)
    }
}
