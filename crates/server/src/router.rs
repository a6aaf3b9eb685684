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

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

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
    /// A new connection at another node resumes this session's managed stream: the
    /// session moves there (see `handover`).
    Migrate(Box<crate::handover::Migration>),
    /// A personal eventing event from another node, for this session only if its client
    /// announced `interest` (`<node>+notify`) in capabilities this node verified.
    Event {
        interest: Box<str>,
        el: Box<Element>,
    },
    /// This node is back on the cluster's bus after losing it: the other nodes took its
    /// sessions for gone, so tell contacts on our domains the current presence again and
    /// ask for theirs.
    ClusterRejoined,
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

/// Where what is told to a session goes: its own channel, or (in a cluster) the node that
/// holds it, which hands it to the session's channel there.
#[derive(Clone, Debug)]
pub(crate) enum Mailbox {
    Local(SessionTx),
    Node {
        node: Arc<dyn NodeSink>,
        jid: FullJid,
    },
}

impl Mailbox {
    /// The node that holds the session, `None` for this one.
    pub(crate) fn node(&self) -> Option<&str> {
        match self {
            Mailbox::Local(_) => None,
            Mailbox::Node { node, .. } => Some(node.node_id()),
        }
    }
}

/// Another node of the cluster, as the router reaches it: a send that never waits.
pub(crate) trait NodeSink: Send + Sync + std::fmt::Debug {
    fn node_id(&self) -> &str;
    /// Hands `msg` for the session `to` to its node, or gives it back if that cannot be
    /// done now.
    fn send(&self, to: &FullJid, msg: ToSession) -> Result<(), ToSession>;
    /// Hands a stanza to its node once for several of its sessions, each to get a copy
    /// addressed to it (`el` has no `to`). Whether it could be done now.
    fn send_copies(&self, to: &[FullJid], el: &Element) -> bool;
}

/// A change to this node's own sessions, told to the cluster (in the order the table
/// made them: the observer is called under the shard's lock, so it must not wait).
#[derive(Clone, Debug)]
pub(crate) enum LocalChange {
    Bound(SessionEntry),
    Unbound { jid: FullJid, session_id: u64 },
    Updated(SessionEntry),
}

/// What the cluster knows of one session: who, which, since when, and what the router
/// routes by.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SessionEntry {
    pub(crate) jid: FullJid,
    pub(crate) session_id: u64,
    pub(crate) since_ms: i64,
    pub(crate) available: bool,
    pub(crate) priority: i8,
    pub(crate) carbons: bool,
}

/// Who hears of changes to this node's sessions (the cluster's directory).
pub(crate) trait Observer: Send + Sync {
    /// This node's id in the cluster.
    fn node_id(&self) -> &str;
    fn changed(&self, change: LocalChange);
}

#[derive(Debug)]
struct Resource {
    jid: FullJid,
    session_id: u64,
    tx: Mailbox,
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
    observer: std::sync::OnceLock<Arc<dyn Observer>>,
    resumable: Resumable,
}

/// Resumption ids of streams that ended, kept so that a late `<resume/>` learns which of
/// its stanzas the old stream handled (XEP-0198 §5, `<failed h/>`).
const ENDED_KEPT: usize = 1000;

/// The managed streams of this node's sessions that may be resumed now (XEP-0198), by
/// resumption id, and the last ones that ended.
#[derive(Default)]
pub(crate) struct Resumable {
    live: Mutex<HashMap<String, (BareJid, SessionTx)>>,
    ended: Mutex<VecDeque<(String, BareJid, u32)>>,
}

impl Resumable {
    pub(crate) fn register(&self, id: &str, user: &BareJid, tx: SessionTx) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(id.to_owned(), (user.clone(), tx));
    }

    /// The channel of the session that owns `id`, if it is `user`'s.
    pub(crate) fn find(&self, id: &str, user: &BareJid) -> Option<SessionTx> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(id)
            .filter(|(owner, _)| owner == user)
            .map(|(_, tx)| tx.clone())
    }

    /// The stream `id` moved to another node: it is no longer resumed here.
    pub(crate) fn moved(&self, id: &str) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(id);
    }

    /// The stream `id` ended, having handled `h` stanzas from its client.
    pub(crate) fn ended(&self, id: &str, user: &BareJid, h: u32) {
        self.moved(id);
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.len() == ENDED_KEPT {
            ended.pop_front();
        }
        ended.push_back((id.to_owned(), user.clone(), h));
    }

    /// How many stanzas the stream `id` of `user` had handled when it ended here.
    pub(crate) fn ended_h(&self, id: &str, user: &BareJid) -> Option<u32> {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended
            .iter()
            .rev()
            .find(|(i, u, _)| i == id && u == user)
            .map(|(_, _, h)| *h)
    }
}

impl Resource {
    fn entry(&self) -> SessionEntry {
        SessionEntry {
            jid: self.jid.clone(),
            session_id: self.session_id,
            since_ms: self.since_ms,
            available: self.available,
            priority: self.priority,
            carbons: self.carbons,
        }
    }

    fn is_local(&self) -> bool {
        matches!(self.tx, Mailbox::Local(_))
    }
}

/// Where a session bound on another node sorts against ours of the same full JID: the
/// later binding wins (RFC 6120 §7.7.2.2), and on a tie the greater node id, so every
/// node decides alike.
fn newer(a: (i64, &str), b: (i64, &str)) -> bool {
    a > b
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
            observer: std::sync::OnceLock::new(),
            resumable: Resumable::default(),
        }
    }

    /// This node's managed streams that may be resumed.
    pub(crate) fn resumable(&self) -> &Resumable {
        &self.resumable
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

    /// Sets who hears of changes to this node's sessions (once, when the cluster starts).
    /// Whether this router is a cluster node's (other nodes hold sessions too).
    pub(crate) fn clustered(&self) -> bool {
        self.observer.get().is_some()
    }

    pub(crate) fn observe(&self, observer: Arc<dyn Observer>) {
        let _ = self.observer.set(observer);
    }

    fn tell_observer(&self, change: impl FnOnce() -> LocalChange) {
        if let Some(o) = self.observer.get() {
            o.changed(change());
        }
    }

    /// Registers a bound resource. A session already bound to the same full JID, here or
    /// on another node, is told to leave ([`ToSession::Replaced`]) and loses its place.
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
        let r = Resource {
            jid: b.jid,
            session_id: b.session_id,
            tx: Mailbox::Local(b.tx),
            peer: b.peer,
            since_ms: b.since_ms,
            available: false,
            priority: 0,
            carbons: false,
        };
        self.tell_observer(|| LocalChange::Bound(r.entry()));
        list.push(r);
        BindOutcome::Bound
    }

    /// Removes a session; a no-op if it was already replaced.
    pub(crate) fn unbind(&self, jid: &FullJid, session_id: u64) {
        let bare = jid.to_bare();
        let mut shard = self.write(&bare);
        if let Some(list) = shard.users.get_mut(&bare) {
            let before = list.len();
            list.retain(|r| !(r.session_id == session_id && r.is_local()));
            if list.len() < before {
                self.tell_observer(|| LocalChange::Unbound {
                    jid: jid.clone(),
                    session_id,
                });
            }
            if list.is_empty() {
                shard.users.remove(&bare);
            }
        }
    }

    /// Changes one of this node's sessions and tells the cluster.
    fn update(&self, jid: &FullJid, session_id: u64, change: impl FnOnce(&mut Resource)) {
        let bare = jid.to_bare();
        let mut shard = self.write(&bare);
        if let Some(r) = shard.users.get_mut(&bare).and_then(|l| {
            l.iter_mut()
                .find(|r| r.session_id == session_id && r.is_local())
        }) {
            change(r);
            self.tell_observer(|| LocalChange::Updated(r.entry()));
        }
    }

    pub(crate) fn set_presence(
        &self,
        jid: &FullJid,
        session_id: u64,
        available: bool,
        priority: i8,
    ) {
        self.update(jid, session_id, |r| {
            r.available = available;
            r.priority = priority;
        });
    }

    /// Turns message carbons (XEP-0280) on or off for a session.
    pub(crate) fn set_carbons(&self, jid: &FullJid, session_id: u64, on: bool) {
        self.update(jid, session_id, |r| r.carbons = on);
    }

    /// Records (or updates) a session another node holds. A session of ours bound to the
    /// same full JID earlier is told to leave; if ours is the later one, the other node
    /// will hear of it and end its own, so the entry is not recorded.
    pub(crate) fn bind_remote(&self, node: &Arc<dyn NodeSink>, e: SessionEntry) {
        let ours = self.observer.get().map_or("", |o| o.node_id());
        let bare = e.jid.to_bare();
        let mut shard = self.write(&bare);
        let list = shard.users.entry(bare).or_default();
        if let Some(pos) = list.iter().position(|r| r.jid == e.jid) {
            let old = &list[pos];
            let old_key = (old.since_ms, old.tx.node().unwrap_or(ours));
            if old.tx.node() != Some(node.node_id()) || old.session_id != e.session_id {
                if !newer((e.since_ms, node.node_id()), old_key) {
                    return;
                }
                if old.is_local() {
                    let _ = deliver(&old.tx, ToSession::Replaced);
                }
            }
            list.swap_remove(pos);
        }
        list.push(Resource {
            tx: Mailbox::Node {
                node: node.clone(),
                jid: e.jid.clone(),
            },
            jid: e.jid,
            session_id: e.session_id,
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            since_ms: e.since_ms,
            available: e.available,
            priority: e.priority,
            carbons: e.carbons,
        });
    }

    /// Forgets a session another node held; whether it was known.
    pub(crate) fn unbind_remote(&self, node: &str, jid: &FullJid, session_id: u64) -> bool {
        let bare = jid.to_bare();
        let mut shard = self.write(&bare);
        let Some(list) = shard.users.get_mut(&bare) else {
            return false;
        };
        let before = list.len();
        list.retain(|r| !(r.session_id == session_id && r.tx.node() == Some(node)));
        let gone = list.len() < before;
        if list.is_empty() {
            shard.users.remove(&bare);
        }
        gone
    }

    /// Makes `node`'s sessions exactly `entries` (a snapshot of them); returns those
    /// that are gone.
    pub(crate) fn replace_node(
        &self,
        node: &Arc<dyn NodeSink>,
        entries: Vec<SessionEntry>,
    ) -> Vec<SessionEntry> {
        let keep: std::collections::HashSet<(&FullJid, u64)> =
            entries.iter().map(|e| (&e.jid, e.session_id)).collect();
        let mut gone = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(|p| p.into_inner());
            shard.users.retain(|_, list| {
                list.retain(|r| {
                    let stale = r.tx.node() == Some(node.node_id())
                        && !keep.contains(&(&r.jid, r.session_id));
                    if stale {
                        gone.push(r.entry());
                    }
                    !stale
                });
                !list.is_empty()
            });
        }
        drop(keep);
        for e in entries {
            self.bind_remote(node, e);
        }
        gone
    }

    /// The available sessions of a user that other nodes hold.
    pub(crate) fn elsewhere(&self, bare: &BareJid) -> Vec<(FullJid, Mailbox)> {
        self.senders(bare, |r| r.available && !r.is_local())
    }

    /// How many sessions each other node holds, as this node's directory says.
    pub(crate) fn remote_counts(&self) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|p| p.into_inner());
            for r in shard.users.values().flatten() {
                if let Some(node) = r.tx.node() {
                    *counts.entry(node.to_owned()).or_default() += 1;
                }
            }
        }
        counts
    }

    /// Tells every session of this node what `msg` makes.
    pub(crate) fn tell_local(&self, msg: impl Fn() -> ToSession) -> usize {
        let mut told = 0;
        for shard in &self.shards {
            let targets: Vec<Mailbox> = {
                let shard = shard.read().unwrap_or_else(|p| p.into_inner());
                let local = shard.users.values().flatten().filter(|r| r.is_local());
                local.map(|r| r.tx.clone()).collect()
            };
            told += targets
                .iter()
                .filter(|tx| deliver(tx, msg()).is_ok())
                .count();
        }
        told
    }

    /// Forgets every session `node` held (it died or left); returns them.
    pub(crate) fn drop_node(&self, node: &str) -> Vec<SessionEntry> {
        let mut gone = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(|p| p.into_inner());
            shard.users.retain(|_, list| {
                list.retain(|r| {
                    let theirs = r.tx.node() == Some(node);
                    if theirs {
                        gone.push(r.entry());
                    }
                    !theirs
                });
                !list.is_empty()
            });
        }
        gone
    }

    /// This node's own sessions, for a node that asks for the whole directory.
    pub(crate) fn local_entries(&self) -> Vec<SessionEntry> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|p| p.into_inner());
            let local = shard.users.values().flatten().filter(|r| r.is_local());
            out.extend(local.map(Resource::entry));
        }
        out
    }

    /// What the directory says of one of this node's sessions.
    pub(crate) fn local_entry(&self, jid: &FullJid, session_id: u64) -> Option<SessionEntry> {
        let bare = jid.to_bare();
        let shard = self.read(&bare);
        let list = shard.users.get(&bare)?;
        let r = list
            .iter()
            .find(|r| r.session_id == session_id && r.is_local())?;
        Some(r.entry())
    }

    /// The node that holds the session bound as `jid`: `Some(None)` for this one.
    /// The other node that holds the session `jid`, if another node does.
    pub(crate) fn node_of(&self, jid: &FullJid) -> Option<Arc<dyn NodeSink>> {
        let bare = jid.to_bare();
        let shard = self.read(&bare);
        let r = shard.users.get(&bare)?.iter().find(|r| r.jid == *jid)?;
        match &r.tx {
            Mailbox::Node { node, .. } => Some(node.clone()),
            Mailbox::Local(_) => None,
        }
    }

    pub(crate) fn holder(&self, jid: &FullJid) -> Option<Option<String>> {
        let bare = jid.to_bare();
        let shard = self.read(&bare);
        let r = shard.users.get(&bare)?.iter().find(|r| r.jid == *jid)?;
        Some(r.tx.node().map(str::to_owned))
    }

    /// The user's sessions that want carbons, but for those in `except` (which have the
    /// message itself).
    pub(crate) fn carbon_targets(
        &self,
        bare: &BareJid,
        except: &[FullJid],
    ) -> Vec<(FullJid, Mailbox)> {
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
    ) -> Vec<(FullJid, Mailbox)> {
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

    pub(crate) fn available(&self, bare: &BareJid) -> Vec<(FullJid, Mailbox)> {
        self.senders(bare, |r| r.available)
    }

    /// Where a message to the bare JID goes (RFC 6121 §8.5.2.1): the available resources
    /// with the highest non-negative priority (`all_nonnegative` for headlines: every one
    /// with non-negative priority).
    pub(crate) fn message_targets(
        &self,
        bare: &BareJid,
        all_nonnegative: bool,
    ) -> Vec<(FullJid, Mailbox)> {
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
            let targets: Vec<(bool, Mailbox)> = {
                let shard = shard.read().unwrap_or_else(|p| p.into_inner());
                shard
                    .users
                    .iter()
                    .filter(|(bare, _)| bare.domain().as_str() == domain)
                    .flat_map(|(_, list)| {
                        // Each node tells its own sessions.
                        list.iter()
                            .filter(|r| r.available && r.is_local())
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
            let targets: Vec<Mailbox> = {
                let shard = shard.read().unwrap_or_else(|p| p.into_inner());
                shard
                    .users
                    .iter()
                    .filter(|(bare, _)| bare.domain().as_str() == domain)
                    .flat_map(|(_, list)| list.iter().filter(|r| r.is_local()))
                    .map(|r| r.tx.clone())
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
                    .filter(|r| r.is_local())
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
                    .flatten()
                    .filter(|r| r.is_local())
                    .count()
            })
            .sum()
    }
}

/// Sends without waiting; see the module documentation. A full (or closed) channel, or a
/// node that cannot be reached now, gives the message back so the caller can keep it.
pub(crate) fn deliver(to: &Mailbox, msg: ToSession) -> Result<(), ToSession> {
    match to {
        Mailbox::Local(tx) => deliver_local(tx, msg),
        Mailbox::Node { node, jid } => node.send(jid, msg),
    }
}

/// [`deliver`] to a session's own channel.
pub(crate) fn deliver_local(tx: &SessionTx, msg: ToSession) -> Result<(), ToSession> {
    tx.try_send(Box::new(msg)).map_err(|e| match e {
        mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => *m,
    })
}
