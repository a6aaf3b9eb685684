//! What operators see of the links: each link task records its state here when it
//! changes, and [`crate::ServerHandle::link_statuses`] joins that with the queue figures
//! the store keeps.

use std::collections::HashMap;
use std::sync::Mutex;

use outpost_store::OutboxStats;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::now_ms;

/// The state of one outgoing link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// A stream to the peer is negotiated and carries the queue.
    Up,
    /// Connecting or negotiating (TCP, TLS, dialback).
    Connecting,
    /// The last attempt failed; waiting before the next one (or for the peer to appear).
    Backoff,
    /// No stream and nothing to send.
    Idle,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Up => "up",
            LinkState::Connecting => "connecting",
            LinkState::Backoff => "backoff",
            LinkState::Idle => "idle",
        }
    }

    /// Connecting and backing off alternate while a peer is unreachable: one failing
    /// period, whose start `since` keeps.
    fn failing(self) -> bool {
        matches!(self, LinkState::Connecting | LinkState::Backoff)
    }
}

/// A snapshot of one link (local domain → remote domain). Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub local: String,
    pub remote: String,
    pub state: LinkState,
    /// How the peer is reached, or was last tried: `direct` (TCP to its server),
    /// `websocket` (HTTPS to its server), `hub` or `hub-websocket` (relayed by our hub).
    pub path: String,
    /// When the link entered this state; retries (connecting ↔ backoff) keep the start
    /// of the failing period. `None` for a pair with no link task in this process.
    pub since_ms: Option<i64>,
    /// Why the last attempt failed, while the link is not up.
    pub last_error: Option<String>,
    /// Stanzas in the durable queue, not yet acknowledged by the peer.
    pub queued: u64,
    pub oldest_queued_at_ms: Option<i64>,
    /// When the peer last acknowledged a queued stanza.
    pub last_delivery_ms: Option<i64>,
}

/// The path of a link with no task in this process.
pub(crate) const PATH_DIRECT: &str = "direct";

#[derive(Clone, Debug)]
struct Live {
    path: &'static str,
    state: LinkState,
    since_ms: i64,
    last_error: Option<String>,
}

/// The link tasks' states, and a signal for whoever publishes them.
pub(crate) struct LinkBoard {
    links: Mutex<HashMap<(String, String), Live>>,
    changed: watch::Sender<()>,
}

impl LinkBoard {
    pub(crate) fn new() -> LinkBoard {
        LinkBoard {
            links: Mutex::new(HashMap::new()),
            changed: watch::Sender::new(()),
        }
    }

    /// Records a link's state; `error` is the failure that led to it (kept only while the
    /// link is not up). Returns whether anything changed.
    pub(crate) fn set(
        &self,
        local: &str,
        remote: &str,
        state: LinkState,
        error: Option<String>,
    ) -> bool {
        let now = now_ms();
        let changed = {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            let key = (local.to_owned(), remote.to_owned());
            match links.get_mut(&key) {
                Some(live) => {
                    let last_error = match state {
                        LinkState::Up | LinkState::Idle => None,
                        // Connecting again keeps the reason of the last failure.
                        LinkState::Connecting => error.or_else(|| live.last_error.clone()),
                        LinkState::Backoff => error,
                    };
                    if live.state == state && live.last_error == last_error {
                        false
                    } else {
                        if live.state != state && !(live.state.failing() && state.failing()) {
                            live.since_ms = now;
                        }
                        live.state = state;
                        live.last_error = last_error;
                        true
                    }
                }
                None => {
                    links.insert(
                        key,
                        Live {
                            path: PATH_DIRECT,
                            state,
                            since_ms: now,
                            last_error: error,
                        },
                    );
                    true
                }
            }
        };
        if changed {
            self.changed.send_replace(());
        }
        changed
    }

    /// Forgets a link that stopped.
    pub(crate) fn remove(&self, local: &str, remote: &str) {
        let key = (local.to_owned(), remote.to_owned());
        let removed = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        if removed.is_some() {
            self.changed.send_replace(());
        }
    }

    /// Records the path a link uses or is trying.
    pub(crate) fn set_path(&self, local: &str, remote: &str, path: &'static str) {
        let changed = {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            match links.get_mut(&(local.to_owned(), remote.to_owned())) {
                Some(live) if live.path != path => {
                    live.path = path;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.changed.send_replace(());
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Every link known to this process or to the store, sorted by (remote, local).
    pub(crate) fn snapshot(&self, stats: Vec<OutboxStats>) -> Vec<LinkStatus> {
        let mut live = self.links.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out: Vec<LinkStatus> = stats
            .into_iter()
            .map(|s| {
                let l = live.remove(&(s.local_domain.clone(), s.remote_domain.clone()));
                LinkStatus {
                    state: l.as_ref().map_or(LinkState::Idle, |l| l.state),
                    path: l.as_ref().map_or(PATH_DIRECT, |l| l.path).to_owned(),
                    since_ms: l.as_ref().map(|l| l.since_ms),
                    last_error: l.and_then(|l| l.last_error),
                    local: s.local_domain,
                    remote: s.remote_domain,
                    queued: s.queued,
                    oldest_queued_at_ms: s.oldest_queued_at_ms,
                    last_delivery_ms: s.last_delivery_ms,
                }
            })
            .collect();
        out.extend(live.into_iter().map(|((local, remote), l)| LinkStatus {
            local,
            remote,
            state: l.state,
            path: l.path.to_owned(),
            since_ms: Some(l.since_ms),
            last_error: l.last_error,
            queued: 0,
            oldest_queued_at_ms: None,
            last_delivery_ms: None,
        }));
        out.sort_by(|a, b| (&a.remote, &a.local).cmp(&(&b.remote, &b.local)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(local: &str, remote: &str, queued: u64) -> OutboxStats {
        OutboxStats {
            local_domain: local.to_owned(),
            remote_domain: remote.to_owned(),
            queued,
            oldest_queued_at_ms: (queued > 0).then_some(1000),
            last_delivery_ms: Some(500),
        }
    }

    #[test]
    fn retries_keep_the_failure_start_and_report_once_per_change() {
        let board = LinkBoard::new();
        let mut rx = board.subscribe();
        assert!(board.set("a", "b", LinkState::Connecting, None));
        assert!(rx.has_changed().unwrap_or(false));
        rx.mark_unchanged();
        assert!(board.set("a", "b", LinkState::Backoff, Some("refused".into())));
        let since = board.snapshot(vec![])[0].since_ms;
        assert!(board.set("a", "b", LinkState::Connecting, None));
        // The same failure again changes nothing.
        assert!(!board.set("a", "b", LinkState::Connecting, None));
        let snap = board.snapshot(vec![]);
        assert_eq!(snap[0].state, LinkState::Connecting);
        assert_eq!(snap[0].last_error.as_deref(), Some("refused"));
        assert_eq!(snap[0].since_ms, since);
        assert!(board.set("a", "b", LinkState::Up, None));
        let snap = board.snapshot(vec![]);
        assert_eq!(snap[0].state, LinkState::Up);
        assert_eq!(snap[0].last_error, None);
    }

    #[test]
    fn snapshot_joins_store_figures_and_live_states() {
        let board = LinkBoard::new();
        board.set("a", "b", LinkState::Backoff, Some("refused".into()));
        board.set("a", "c", LinkState::Up, None);
        let snap = board.snapshot(vec![stats("a", "b", 3), stats("a", "d", 0)]);
        let pairs: Vec<_> = snap
            .iter()
            .map(|s| (s.remote.as_str(), s.state, s.queued))
            .collect();
        assert_eq!(
            pairs,
            [
                ("b", LinkState::Backoff, 3),
                ("c", LinkState::Up, 0),
                ("d", LinkState::Idle, 0)
            ]
        );
        assert_eq!(snap[0].oldest_queued_at_ms, Some(1000));
        assert_eq!(snap[2].since_ms, None);
        assert!(snap.iter().all(|s| s.path == "direct"));
    }
}
