//! The table of live sessions, keyed by bare JID, and delivery into their channels.
//!
//! The table is split into shards, each behind its own short-lived `RwLock` that is never
//! held across an `.await`, so there is no global lock on the message path: delivering a
//! message takes one shard's read lock for the time it takes to clone a channel sender.
//!
//! Each session has a bounded channel. A send never waits: if a session's channel is full
//! its client is not reading, and the router reports [`Undelivered::Full`] so the caller can
//! keep the stanza (messages go to the offline store); the slow session itself ends when its
//! socket write times out.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use outpost_store::RosterItem;
use tokio::sync::mpsc;

const SHARDS: usize = 64;

/// What one session can be told by others.
#[derive(Debug)]
pub(crate) enum ToSession {
    /// A stanza for the client, already addressed.
    Stanza(Element),
    /// A presence probe from a contact's full JID (RFC 6121 §4.3): answer with current
    /// presence if they are subscribed and not blocked.
    Probe { from: Jid },
    /// The user's roster changed (another resource, or a contact's subscription action).
    /// `item` with `None` subscription data means removed.
    RosterPush {
        version: u64,
        jid: String,
        item: Option<RosterItem>,
    },
    /// The user's block list changed: the new list, and the XEP-0191 push to forward.
    Blocklist {
        list: Arc<Vec<String>>,
        push: Element,
    },
    /// Deliver stored offline messages and subscription requests now (a message was
    /// stored while this session was becoming available).
    FlushOffline,
    /// Another connection bound the same full JID (RFC 6120 §7.7.2.2): close with
    /// `conflict`.
    Replaced,
    /// Close the stream with `<see-other-host/>` naming `host`: the account's home is
    /// elsewhere now (a hub that stood in for a site that is back).
    Redirect { host: String },
    /// Close the stream with this stream error (the account was removed or its password
    /// changed: `not-authorized`, RFC 6120 §4.9.3.12; an operator kicked it: `policy-violation`;
    /// its domain is no longer served: `host-gone`).
    End {
        condition: &'static str,
        text: &'static str,
    },
    /// The link to another domain came (back) up: send current presence to subscribers
    /// there, and (`probe`, for one resource per user) probe the contacts there.
    LinkRestored { domain: Arc<str>, probe: bool },
    /// A new connection resumes this session's managed stream (XEP-0198 §5).
    Resume(Box<crate::c2s_conn::Resumption>),
}

/// Why [`Router::send_to_full`] could not deliver; the message comes back.
#[derive(Debug)]
pub(crate) enum Undelivered {
    NotBound(ToSession),
    /// The session's channel is full (it is not reading) or closing.
    Full(ToSession),
}

/// Messages travel boxed: a channel allocates its slots in blocks of 32 up front, and an
/// idle session should not hold 32 inline stanzas' worth of memory.
pub(crate) type SessionTx = mpsc::Sender<Box<ToSession>>;
pub(crate) type SessionRx = mpsc::Receiver<Box<ToSession>>;

#[derive(Debug)]
struct Resource {
    jid: FullJid,
    session_id: u64,
    tx: SessionTx,
    /// Where the client connects from, and since when (Unix milliseconds), for operators.
    peer: SocketAddr,
    since_ms: i64,
    /// Set by initial presence, cleared by unavailable presence (RFC 6121 §4.2).
    available: bool,
    priority: i8,
    /// The client asked for copies of its user's other conversations (XEP-0280).
    carbons: bool,
}

#[derive(Default)]
struct Shard {
    users: HashMap<BareJid, Vec<Resource>>,
}

pub(crate) struct Router {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
}

/// A bound session, as operators see it (`outpost admin sessions`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    pub jid: String,
    pub peer: SocketAddr,
    /// When the resource was bound, in Unix milliseconds.
    pub since_ms: i64,
    /// Whether it has sent available presence, and its priority.
    pub available: bool,
    pub priority: i8,
}

/// Who a session is: its resource, its id, its channel, and where it connects from.
pub(crate) struct Binding {
    pub(crate) jid: FullJid,
    pub(crate) session_id: u64,
    pub(crate) tx: SessionTx,
    pub(crate) peer: SocketAddr,
    pub(crate) since_ms: i64,
}

pub(crate) enum BindOutcome {
    Bound,
    /// The account already has its maximum number of resources.
    TooMany,
}

impl Router {
    pub(crate) fn new() -> Self {
        Router {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, bare: &BareJid) -> &RwLock<Shard> {
        let i = (self.hasher.hash_one(bare) as usize) % SHARDS;
        &self.shards[i]
    }

    fn read(&self, bare: &BareJid) -> std::sync::RwLockReadGuard<'_, Shard> {
        // A poisoned lock means a panic while holding it; the map itself is still
        // consistent because every critical section is a single insert or remove.
        self.shard(bare)
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, bare: &BareJid) -> std::sync::RwLockWriteGuard<'_, Shard> {
        self.shard(bare)
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a bound resource. A session already bound to the same full JID is told
    /// to leave ([`ToSession::Replaced`]) and loses its place.
    pub(crate) fn bind(&self, b: Binding, max_resources: usize) -> BindOutcome {
        let bare = b.jid.to_bare();
        let mut shard = self.write(&bare);
        let list = shard.users.entry(bare).or_default();
        if let Some(pos) = list.iter().position(|r| r.jid == b.jid) {
            let old = list.swap_remove(pos);
            // If the old session's channel is full it is stuck anyway; it will end when
            // its socket does.
            let _ = deliver(&old.tx, ToSession::Replaced);
        } else if list.len() >= max_resources {
            return BindOutcome::TooMany;
        }
        list.push(Resource {
            jid: b.jid,
            session_id: b.session_id,
            tx: b.tx,
            peer: b.peer,
            since_ms: b.since_ms,
            available: false,
            priority: 0,
            carbons: false,
        });
        BindOutcome::Bound
    }

    /// Removes a session; a no-op if it was already replaced.
    pub(crate) fn unbind(&self, jid: &FullJid, session_id: u64) {
        let bare = jid.to_bare();
        let mut shard = self.write(&bare);
        if let Some(list) = shard.users.get_mut(&bare) {
            list.retain(|r| r.session_id != session_id);
            if list.is_empty() {
                shard.users.remove(&bare);
            }
        }
    }

    pub(crate) fn set_presence(
        &self,
        jid: &FullJid,
        session_id: u64,
        available: bool,
        priority: i8,
    ) {
        let bare = jid.to_bare();
        let mut shard = self.write(&bare);
        if let Some(r) = shard
            .users
            .get_mut(&bare)
            .and_then(|l| l.iter_mut().find(|r| r.session_id == session_id))
        {
            r.available = available;
            r.priority = priority;
        }
    }

    /// Turns message carbons (XEP-0280) on or off for a session.
    pub(crate) fn set_carbons(&self, jid: &FullJid, session_id: u64, on: bool) {
        let bare = jid.to_bare();
        let mut shard = self.write(&bare);
        if let Some(r) = shard
            .users
            .get_mut(&bare)
            .and_then(|l| l.iter_mut().find(|r| r.session_id == session_id))
        {
            r.carbons = on;
        }
    }

    /// The user's sessions that want carbons, but for those in `except` (which have the
    /// message itself).
    pub(crate) fn carbon_targets(
        &self,
        bare: &BareJid,
        except: &[FullJid],
    ) -> Vec<(FullJid, SessionTx)> {
        self.senders(bare, |r| r.carbons && !except.contains(&r.jid))
    }

    /// Sends to one full JID, or gives the message back saying why not.
    pub(crate) fn send_to_full(&self, jid: &FullJid, msg: ToSession) -> Result<(), Undelivered> {
        let bare = jid.to_bare();
        let tx = {
            let shard = self.read(&bare);
            shard
                .users
                .get(&bare)
                .and_then(|l| l.iter().find(|r| r.jid == *jid))
                .map(|r| r.tx.clone())
        };
        match tx {
            Some(tx) => deliver(&tx, msg).map_err(Undelivered::Full),
            None => Err(Undelivered::NotBound(msg)),
        }
    }

    /// The channels of a user's sessions, chosen by `filter`.
    fn senders(
        &self,
        bare: &BareJid,
        filter: impl Fn(&Resource) -> bool,
    ) -> Vec<(FullJid, SessionTx)> {
        let shard = self.read(bare);
        match shard.users.get(bare) {
            Some(list) => list
                .iter()
                .filter(|r| filter(r))
                .map(|r| (r.jid.clone(), r.tx.clone()))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Tells every bound session of a user what `msg` makes (roster and block list pushes,
    /// account removal). A session whose channel is full misses it; it is not reading and
    /// will end when its socket write times out.
    pub(crate) fn tell_all(&self, bare: &BareJid, msg: impl Fn() -> ToSession) {
        for (_, tx) in self.senders(bare, |_| true) {
            let _ = deliver(&tx, msg());
        }
    }

    /// The user's available resources (presence broadcasts, RFC 6121 §4.4.2).
    /// Whether a session is bound as `jid`.
    pub(crate) fn is_bound(&self, jid: &FullJid) -> bool {
        let bare = jid.to_bare();
        let shard = self.read(&bare);
        (shard.users.get(&bare)).is_some_and(|list| list.iter().any(|r| &r.jid == jid))
    }

    pub(crate) fn available(&self, bare: &BareJid) -> Vec<(FullJid, SessionTx)> {
        self.senders(bare, |r| r.available)
    }

    /// Where a message to the bare JID goes (RFC 6121 §8.5.2.1): the available resources
    /// with the highest non-negative priority (`all_nonnegative` for headlines: every one
    /// with non-negative priority).
    pub(crate) fn message_targets(
        &self,
        bare: &BareJid,
        all_nonnegative: bool,
    ) -> Vec<(FullJid, SessionTx)> {
        let shard = self.read(bare);
        let Some(list) = shard.users.get(bare) else {
            return Vec::new();
        };
        let best = list
            .iter()
            .filter(|r| r.available && r.priority >= 0)
            .map(|r| r.priority)
            .max();
        let Some(best) = best else {
            return Vec::new();
        };
        list.iter()
            .filter(|r| r.available && r.priority >= 0 && (all_nonnegative || r.priority == best))
            .map(|r| (r.jid.clone(), r.tx.clone()))
            .collect()
    }

    /// Tells every available session of a user at `domain` what `msg` makes, which gets
    /// `true` for the first resource of each user. Returns how many were told. Each shard
    /// is locked only while its channels are collected.
    pub(crate) fn each_available(&self, domain: &str, msg: impl Fn(bool) -> ToSession) -> usize {
        let mut told = 0;
        for shard in &self.shards {
            let targets: Vec<(bool, SessionTx)> = {
                let shard = shard.read().unwrap_or_else(|p| p.into_inner());
                shard
                    .users
                    .iter()
                    .filter(|(bare, _)| bare.domain().as_str() == domain)
                    .flat_map(|(_, list)| {
                        list.iter()
                            .filter(|r| r.available)
                            .enumerate()
                            .map(|(i, r)| (i == 0, r.tx.clone()))
                    })
                    .collect()
            };
            for (first, tx) in targets {
                if deliver(&tx, msg(first)).is_ok() {
                    told += 1;
                }
            }
        }
        told
    }

    /// Tells every session of a user at `domain`, available or not, what `msg` makes.
    /// Returns how many were told.
    pub(crate) fn tell_domain(&self, domain: &str, msg: impl Fn() -> ToSession) -> usize {
        let mut told = 0;
        for shard in &self.shards {
            let targets: Vec<SessionTx> = {
                let shard = shard.read().unwrap_or_else(|p| p.into_inner());
                shard
                    .users
                    .iter()
                    .filter(|(bare, _)| bare.domain().as_str() == domain)
                    .flat_map(|(_, list)| list.iter().map(|r| r.tx.clone()))
                    .collect()
            };
            told += targets
                .iter()
                .filter(|tx| deliver(tx, msg()).is_ok())
                .count();
        }
        told
    }

    /// Tells the sessions of `jid` (a full JID: that one; a bare JID: all of the account's)
    /// what `msg` makes. Returns how many were told.
    pub(crate) fn tell(&self, jid: &Jid, msg: impl Fn() -> ToSession) -> usize {
        let full = jid.try_as_full().ok();
        let targets = self.senders(&jid.to_bare(), |r| full.is_none_or(|f| r.jid == *f));
        targets
            .iter()
            .filter(|(_, tx)| deliver(tx, msg()).is_ok())
            .count()
    }

    /// Ends every session of `user` but `except` with a stream error (see
    /// [`ToSession::End`]). Returns how many were told.
    pub(crate) fn end_sessions(
        &self,
        user: &BareJid,
        except: Option<&FullJid>,
        condition: &'static str,
        text: &'static str,
    ) -> usize {
        let targets = self.senders(user, |r| except.is_none_or(|e| r.jid != *e));
        targets
            .iter()
            .filter(|(_, tx)| deliver(tx, ToSession::End { condition, text }).is_ok())
            .count()
    }

    /// Every bound session, sorted by JID.
    pub(crate) fn sessions(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.read().unwrap_or_else(|p| p.into_inner());
                shard
                    .users
                    .values()
                    .flatten()
                    .map(|r| SessionInfo {
                        jid: r.jid.to_string(),
                        peer: r.peer,
                        since_ms: r.since_ms,
                        available: r.available,
                        priority: r.priority,
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| a.jid.cmp(&b.jid));
        out
    }

    /// Number of bound sessions (for metrics and tests).
    pub(crate) fn session_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.read()
                    .unwrap_or_else(|p| p.into_inner())
                    .users
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
            })
            .sum()
    }
}

/// Sends without waiting; see the module documentation. A full (or closed) channel gives
/// the message back so the caller can keep it.
pub(crate) fn deliver(tx: &SessionTx, msg: ToSession) -> Result<(), ToSession> {
    tx.try_send(Box::new(msg)).map_err(|e| match e {
        mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => *m,
    })
}
