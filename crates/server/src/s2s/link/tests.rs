//! The link machine against simulated peers on a virtual clock: a real `S2sIncoming` on
//! the other end of an in-memory connection, a map for the durable queue, and a network
//! whose paths the tests cut, silence and restore.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use minidom::Element;
use outpost_proto::StreamMachine;
use outpost_proto::s2s::{DialbackVerdict, Event, RelayPolicy, S2sConfig, S2sIncoming, Transport};
use outpost_proto::stanza::{Condition, StanzaError};
use outpost_store::OutboxEntry;

use super::machine::{ACK_SUSPECT, Action, Command, Link, PROBE_TICK, Path, PathSpec, Settings};
use crate::config::AckWithoutSm;
use crate::s2s::LinkState;

const LOCAL: &str = "a.test";
const REMOTE: &str = "b.test";
const HUB: &str = "hub.test";
const RETRY: Duration = Duration::from_secs(1);
const PROBE_EVERY: Duration = Duration::from_secs(30);

fn settings(paths: &[Path]) -> Settings {
    Settings {
        local: LOCAL.to_owned(),
        remote: REMOTE.to_owned(),
        paths: paths
            .iter()
            .map(|&path| PathSpec {
                path,
                peer: if path.via_hub() { HUB } else { REMOTE }.to_owned(),
                external: false,
            })
            .collect(),
        secret: "a secret of sixteen".to_owned(),
        require_tls: false,
        relays: false,
        ack_without_sm: AckWithoutSm::OnWrite,
        retry_initial: RETRY,
        retry_max: Duration::from_secs(300),
        probe_every: PROBE_EVERY,
    }
}

fn message(n: i64) -> String {
    format!(
        "<message xmlns='jabber:client' from='alice@{LOCAL}/r' to='bob@{REMOTE}' \
         type='chat' id='m{n}'><body>{n}</body></message>"
    )
}

/// The other end of a connection: a real incoming stream machine.
struct Peer {
    machine: S2sIncoming,
    path: Path,
    /// Answers `<r/>`; a broken peer that never acknowledges does not.
    acks: bool,
    /// The connection is a black hole: bytes go out, nothing comes back or arrives.
    silent: bool,
}

impl Peer {
    fn new(path: Path, acks: bool) -> Peer {
        let domain = if path.via_hub() { HUB } else { REMOTE };
        let config = S2sConfig {
            transport: Transport::DirectTls,
            allow_plaintext: true,
            sasl_external: false,
            relay: RelayPolicy {
                relay_for: if path.via_hub() {
                    vec![LOCAL.to_owned(), REMOTE.to_owned()]
                } else {
                    Vec::new()
                },
                ..RelayPolicy::default()
            },
            ..S2sConfig::default()
        };
        Peer {
            machine: S2sIncoming::new(config, vec![domain.to_owned()], "stream1".to_owned()),
            path,
            acks,
            silent: false,
        }
    }
}

/// A probe asked for: its token, its targets, and whether the first success ends it.
type Probe = (u64, Vec<(Path, String)>, bool);

/// The network, the queue and what the link did.
struct Sim {
    link: Link<u32>,
    now: Instant,
    outbox: BTreeMap<i64, String>,
    reachable: HashMap<Path, bool>,
    /// New peers acknowledge.
    peers_ack: bool,
    peer: Option<Peer>,
    probes: Vec<Probe>,
    /// Probes asked for, in all.
    probed: usize,
    connects: Vec<(Instant, Path)>,
    /// Message ids delivered, with the path they came by.
    delivered: Vec<(Path, i64)>,
    acks: Vec<i64>,
    bounces: Vec<StanzaError>,
    verified: Vec<(u32, bool)>,
    states: Vec<(LinkState, Option<String>)>,
    ups: usize,
    /// Cut the connection once the peer has received this many messages in all.
    cut_at: Option<usize>,
}

impl Sim {
    /// A link over `paths` with `queued` stanzas (ids 1..=queued) waiting.
    fn new(paths: &[Path], queued: i64) -> Sim {
        let mut sim = Sim {
            link: Link::new(settings(paths)),
            now: Instant::now(),
            outbox: (1..=queued).map(|n| (n, message(n))).collect(),
            reachable: paths.iter().map(|p| (*p, true)).collect(),
            peers_ack: true,
            peer: None,
            probes: Vec::new(),
            probed: 0,
            connects: Vec::new(),
            delivered: Vec::new(),
            acks: Vec::new(),
            bounces: Vec::new(),
            verified: Vec::new(),
            states: Vec::new(),
            ups: 0,
            cut_at: None,
        };
        sim.settle();
        sim
    }

    fn queue(&mut self, ids: std::ops::RangeInclusive<i64>) {
        for n in ids {
            self.outbox.insert(n, message(n));
        }
        self.link.queue_changed(self.now);
        self.settle();
    }

    /// Carries out actions, and answers probes, until the link waits for time to pass.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            if let Some(action) = self.link.poll_action() {
                self.execute(action);
            } else if !self.probes.is_empty() {
                for (token, targets, first) in std::mem::take(&mut self.probes) {
                    let mut results = Vec::new();
                    for (path, _) in targets {
                        let ok = self.reachable[&path];
                        results.push((path, ok));
                        if ok && first {
                            break;
                        }
                    }
                    self.link.probe_result(token, results, self.now);
                }
            } else {
                return;
            }
        }
        panic!("the link does not settle");
    }

    /// Lets `d` pass, acting on every timer due meanwhile.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..10_000 {
            match self.link.poll_timeout() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.link.handle_timeout(self.now);
                    self.settle();
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
        panic!("timers keep firing");
    }

    fn execute(&mut self, action: Action<u32>) {
        let now = self.now;
        match action {
            Action::CheckQueue => self.link.queue_checked(!self.outbox.is_empty(), now),
            Action::ReadQueue { after, max } => {
                let batch = self
                    .outbox
                    .range(after.map_or(i64::MIN, |a| a + 1)..)
                    .take(max as usize)
                    .map(|(id, stanza)| OutboxEntry {
                        id: *id,
                        local_domain: LOCAL.to_owned(),
                        remote_domain: REMOTE.to_owned(),
                        stanza: stanza.clone(),
                        queued_at_ms: 0,
                    })
                    .collect();
                self.link.queue_batch(batch, now);
            }
            Action::Ack { up_to } => {
                self.outbox.retain(|id, _| *id > up_to);
                self.acks.push(up_to);
            }
            Action::Connect { path, .. } => {
                self.connects.push((now, path));
                if self.reachable[&path] {
                    self.peer = Some(Peer::new(path, self.peers_ack));
                    self.link.connected(Transport::DirectTls, now);
                } else {
                    self.link
                        .connect_failed("connection refused".to_owned(), now);
                }
            }
            Action::Transmit(bytes) => self.transmit(&bytes),
            Action::StartTls { .. } => panic!("no STARTTLS on direct TLS"),
            Action::Disconnect => self.peer = None,
            Action::Probe {
                token,
                targets,
                first_success,
                ..
            } => {
                self.probed += 1;
                self.probes.push((token, targets, first_success));
            }
            Action::CancelProbes => self.probes.clear(),
            Action::State { state, error } => self.states.push((state, error)),
            Action::Path(_) => {}
            Action::Up => self.ups += 1,
            Action::Bounce { error, .. } => self.bounces.push(error),
            Action::Verified { reply, valid } => self.verified.push((reply, valid)),
        }
    }

    /// The bytes reach the peer, which answers at once, unless the connection is silent.
    fn transmit(&mut self, bytes: &[u8]) {
        let now = self.now;
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        self.link.transmitted(now);
        if peer.silent {
            return;
        }
        peer.machine.handle_input(bytes);
        let mut cut = false;
        while let Some(event) = peer.machine.poll_event() {
            match event {
                Event::DialbackRequest { from, to, .. } => {
                    peer.machine
                        .dialback_result(&from, &to, DialbackVerdict::Valid);
                }
                Event::VerifyRequest { from, to, id, .. } => {
                    peer.machine.verify_result(&from, &to, &id, true);
                }
                Event::Stanza(el) if el.name() == "message" => {
                    let id = el.attr("id").and_then(|i| i[1..].parse().ok());
                    self.delivered.push((peer.path, id.unwrap_or(-1)));
                    cut |= self.cut_at.is_some_and(|n| self.delivered.len() >= n);
                    if cut {
                        break;
                    }
                }
                _ => {}
            }
        }
        if cut {
            // The connection broke: what the peer would have answered is lost.
            self.cut_at = None;
            self.peer = None;
            self.link
                .connection_lost("connection reset".to_owned(), now);
            return;
        }
        let mut out = String::from_utf8(peer.machine.take_output()).expect("utf-8");
        if !peer.acks {
            while let Some(start) = out.find("<a xmlns='urn:xmpp:sm:3'") {
                let end = start + out[start..].find("/>").expect("ack ends") + 2;
                out.replace_range(start..end, "");
            }
        }
        if !out.is_empty() {
            self.link.handle_input(out.as_bytes(), now);
        }
    }

    fn ids_on(&self, path: Path) -> Vec<i64> {
        self.delivered
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, id)| *id)
            .collect()
    }

    fn paths_connected(&self) -> Vec<Path> {
        self.connects.iter().map(|(_, p)| *p).collect()
    }

    fn went_to(&self, state: LinkState) -> bool {
        self.states.iter().any(|(s, _)| *s == state)
    }
}

#[test]
fn a_burst_goes_out_in_order_within_the_window_and_leaves_the_queue_once_acknowledged() {
    let mut sim = Sim::new(&[Path::Direct], 600);
    assert_eq!(sim.ids_on(Path::Direct), (1..=600).collect::<Vec<_>>());
    assert!(sim.outbox.is_empty());
    assert!(sim.acks.windows(2).all(|w| w[0] < w[1]), "{:?}", sim.acks);
    assert!(sim.acks.len() >= 3, "600 stanzas take three windows of 256");
    assert_eq!(sim.ups, 1);
    // An idle stream is closed politely; the link goes idle and stays so.
    sim.advance(Duration::from_secs(601));
    assert!(sim.peer.is_none());
    assert_eq!(sim.states.last().map(|s| s.0), Some(LinkState::Idle));
    assert_eq!(sim.paths_connected(), [Path::Direct]);
}

#[test]
fn a_connection_lost_during_a_burst_resends_from_the_last_acknowledged_stanza() {
    let mut sim = Sim::new(&[Path::Direct], 0);
    // The connection breaks after the first window (acknowledged) and 20 of the next.
    sim.cut_at = Some(256 + 20);
    sim.queue(1..=300);
    assert_eq!(sim.acks.first(), Some(&256));
    assert!(sim.went_to(LinkState::Backoff), "the broken path backs off");
    sim.advance(RETRY);
    let mut ids = sim.ids_on(Path::Direct);
    assert_eq!(
        ids.len(),
        300 + 20,
        "the 20 that the broken stream carried come again"
    );
    assert_eq!(
        ids[276], 257,
        "the new stream starts after the last acknowledged one"
    );
    ids.dedup();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids, (1..=300).collect::<Vec<_>>(), "nothing is lost");
    assert!(sim.outbox.is_empty());
}

#[test]
fn a_silent_stream_is_replaced_at_once_when_the_peer_still_takes_connections() {
    let mut sim = Sim::new(&[Path::Direct], 5);
    assert!(sim.outbox.is_empty());
    // The established connection goes dead without a sound; the peer itself is up.
    sim.peer.as_mut().expect("stream").silent = true;
    let silent_since = sim.now;
    sim.queue(6..=10);
    assert_eq!(sim.outbox.len(), 5, "sent into the void, not acknowledged");
    sim.advance(ACK_SUSPECT + Duration::from_millis(1));
    assert_eq!(sim.paths_connected(), [Path::Direct, Path::Direct]);
    assert!(
        sim.outbox.is_empty(),
        "resent on the fresh stream and acknowledged"
    );
    assert!(sim.now.duration_since(silent_since) < ACK_SUSPECT * 2);
    assert!(
        !sim.went_to(LinkState::Backoff),
        "a silent stream is not a failed path"
    );
    assert_eq!(sim.ids_on(Path::Direct), (1..=10).collect::<Vec<_>>());
}

#[test]
fn a_silent_stream_on_a_cut_path_fails_over_to_the_hub() {
    let mut sim = Sim::new(&[Path::Direct, Path::Hub], 5);
    assert_eq!(sim.ids_on(Path::Direct), (1..=5).collect::<Vec<_>>());
    sim.peer.as_mut().expect("stream").silent = true;
    sim.reachable.insert(Path::Direct, false);
    sim.queue(6..=10);
    sim.advance(ACK_SUSPECT + Duration::from_millis(1));
    assert_eq!(sim.paths_connected(), [Path::Direct, Path::Hub]);
    assert_eq!(sim.ids_on(Path::Hub), (6..=10).collect::<Vec<_>>());
    assert!(sim.outbox.is_empty());
}

#[test]
fn a_peer_that_never_acknowledges_backs_off_and_the_queue_stays() {
    let mut sim = Sim::new(&[Path::Direct], 0);
    sim.peers_ack = false;
    sim.queue(1..=3);
    assert_eq!(sim.ids_on(Path::Direct), [1, 2, 3]);
    sim.advance(ACK_SUSPECT + Duration::from_millis(1));
    let (state, reason) = sim.states.last().cloned().expect("a state");
    assert_eq!(state, LinkState::Backoff);
    assert!(reason.is_some_and(|r| r.contains("acknowledges nothing")));
    // Tried again after each back-off (1 s, 2 s, 4 s), failing the same way each time.
    sim.advance(Duration::from_secs(20));
    let times: Vec<Instant> = sim.connects.iter().map(|(t, _)| *t).collect();
    assert_eq!(times.len(), 4, "{:?}", sim.paths_connected());
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "the back-off grows: {gaps:?}"
    );
    assert!(sim.acks.is_empty());
    assert_eq!(
        sim.outbox.len(),
        3,
        "nothing is removed without an acknowledgement"
    );
}

#[test]
fn a_fallback_stream_makes_way_for_the_direct_path_between_bursts() {
    let mut sim = Sim::new(&[Path::Direct, Path::Hub], 0);
    sim.reachable.insert(Path::Direct, false);
    sim.queue(1..=3);
    assert_eq!(sim.paths_connected(), [Path::Direct, Path::Hub]);
    assert_eq!(sim.ids_on(Path::Hub), [1, 2, 3]);
    sim.reachable.insert(Path::Direct, true);
    sim.advance(PROBE_EVERY + Duration::from_millis(1));
    assert_eq!(
        sim.paths_connected(),
        [Path::Direct, Path::Hub, Path::Direct]
    );
    sim.queue(4..=5);
    assert_eq!(sim.ids_on(Path::Direct), [4, 5]);
    assert!(sim.outbox.is_empty());
}

#[test]
fn best_effort_stanzas_are_answered_when_every_path_fails() {
    let mut sim = Sim::new(&[Path::Direct, Path::Hub], 0);
    sim.reachable.insert(Path::Direct, false);
    sim.reachable.insert(Path::Hub, false);
    let iq: Element = "<iq xmlns='jabber:client' type='get' id='q1' from='alice@a.test/r' \
                       to='bob@b.test/x'><ping xmlns='urn:xmpp:ping'/></iq>"
        .parse()
        .expect("iq");
    sim.link.command(Command::Stanza(iq), sim.now);
    sim.settle();
    assert_eq!(sim.paths_connected(), [Path::Direct, Path::Hub]);
    assert_eq!(
        sim.bounces,
        [StanzaError::new(Condition::RemoteServerNotFound)]
    );
    let (state, reason) = sim.states.last().cloned().expect("a state");
    assert_eq!(state, LinkState::Backoff);
    let reason = reason.expect("a reason");
    assert!(reason.contains("direct: connection refused") && reason.contains("hub:"));
}

#[test]
fn verifications_are_answered_and_a_peer_asking_for_one_ends_the_back_off() {
    let mut sim = Sim::new(&[Path::Direct], 0);
    sim.reachable.insert(Path::Direct, false);
    sim.queue(1..=1);
    assert!(sim.went_to(LinkState::Backoff));
    // The peer connected to us and wants our verdict on its dialback key: it is up.
    sim.reachable.insert(Path::Direct, true);
    sim.link.command(
        Command::Verify {
            id: "their-stream".to_owned(),
            key: "k".to_owned(),
            reply: 7,
        },
        sim.now,
    );
    sim.settle();
    assert_eq!(sim.verified, [(7, true)]);
    assert_eq!(
        sim.paths_connected().len(),
        2,
        "no waiting out the back-off"
    );
    assert!(sim.outbox.is_empty());
}

/// However long a path was down, what waits flows within a second of its return, and the
/// link looks for it no more often than every [`PROBE_TICK`] meanwhile.
#[test]
fn a_backlog_flows_within_a_second_of_its_paths_return() {
    let mut sim = Sim::new(&[Path::Direct], 0);
    sim.reachable.insert(Path::Direct, false);
    sim.queue(1..=5);
    let mut expected = 0;
    for (cut, more) in [(20, 6..=10), (200, 11..=15)] {
        let probed = sim.probed;
        sim.advance(Duration::from_secs(cut));
        let looks = sim.probed - probed;
        assert!(
            looks as u128 <= cut as u128 * 1000 / PROBE_TICK.as_millis() + 1,
            "{looks} probes in {cut} s"
        );
        assert_eq!(
            sim.ids_on(Path::Direct).len(),
            expected,
            "nothing while cut"
        );
        sim.reachable.insert(Path::Direct, true);
        sim.advance(Duration::from_secs(1));
        expected += 5;
        let ids = sim.ids_on(Path::Direct);
        assert_eq!(ids.len(), expected, "after a {cut} s cut: {ids:?}");
        assert!(sim.outbox.is_empty());
        // Down again, with more waiting.
        sim.peer = None;
        sim.link.connection_lost("cable pulled".to_owned(), sim.now);
        sim.reachable.insert(Path::Direct, false);
        sim.queue(more);
    }
}
