//! This server as one node of a cluster: several nodes serving the same domains on one
//! PostgreSQL store, each holding its own client sessions, telling the others over NATS
//! where those sessions are and passing them what is for them.
//!
//! - **Registry** (PostgreSQL, `cluster_nodes`): a node claims its id with a lease it
//!   renews every [`LEASE_RENEW`]; an id a live node holds cannot be claimed, so two
//!   processes never run as one node.
//! - **Directory** (NATS, `<prefix>.dir`): each node publishes every change to its
//!   sessions (bound, presence and priority, carbons, unbound) numbered in order, and a
//!   heartbeat each [`HEARTBEAT`] carrying the last number. Every node keeps the others'
//!   sessions in its router, so routing a stanza is the same map look-up as on one node. A
//!   node that misses a number, or meets a node it does not know, asks that node for a
//!   snapshot of its sessions (`SnapshotRequest` to `<prefix>.node.<id>`, parts to an
//!   inbox). A node not heard from for [`EXPIRY`] is dead: its sessions are dropped and
//!   the contacts of those that were available here are told they are unavailable.
//! - **Delivery** (NATS, `<prefix>.node.<id>`): what the router tells a session on another
//!   node ([`crate::router::Mailbox::Node`]) goes to that node as JSON, where the same
//!   rules as for a local session apply (a message its session can no longer take goes to
//!   the offline store there). Nothing of it needs to survive a crash: as on one node, a
//!   message is acknowledged to its sender once it is in the archive (PostgreSQL), where
//!   the recipient catches up.
//!
//! - **Resumption** (see `resume`): a client may resume its managed stream at any node;
//!   the session moves there from the node that held it.
//!
//! What is dropped and logged: a message that does not parse; one from a node this node
//! does not know; a directory change for a domain not ours; a stanza whose `from` is a
//! session of ours (full JID) that the sending node does not hold.

mod links;
mod receive;
mod resume;
mod services;
mod wire;

pub(crate) use links::{Ask, LinkAt, LinkHost, Queued};
pub(crate) use resume::Arrived;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use futures_util::StreamExt;
use jid::FullJid;
use outpost_proto::xml::Limits;
use outpost_store::{ClusterLease, ClusterNode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::delivery::Delivery;
use crate::router::{LocalChange, NodeSink, Observer, SessionEntry, ToSession};
use crate::tasks::Tasks;
use wire::{Body, Change, Envelope, Msg, xml};

/// How often a node says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a node may stay silent before the others take it for dead.
const EXPIRY: Duration = Duration::from_secs(5);
/// How long a node's registration lasts unrenewed, and how often it is renewed.
const LEASE: Duration = Duration::from_secs(15);
const LEASE_RENEW: Duration = Duration::from_secs(5);
/// How long a snapshot may take before it is asked for again.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a starting node waits for the others' snapshots before it serves.
const STARTUP_SYNC: Duration = Duration::from_secs(5);
/// How long a session that ended on another node may still be the sender of what that
/// node delivers.
const ENDED_GRACE: Duration = Duration::from_secs(10);
/// How long a stopping node waits for PostgreSQL to release its registration and leases
/// before it says goodbye anyway.
const RELEASE_WAIT: Duration = Duration::from_secs(2);
/// How long a change of archiving preferences waits for the other nodes to read it.
const PREFS_WAIT: Duration = Duration::from_secs(2);
/// Sessions per snapshot part (NATS limits a message to 1 MB by default).
const SNAPSHOT_PART: usize = 1000;
/// Messages waiting to be published; beyond this, deliveries fall back to the offline
/// store and directory changes are dropped (the others notice the gap and resync).
const OUTGOING: usize = 65_536;

/// Why a node cannot join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "node id {node:?} is held by a live node (started {started}, registered until \
         {until}); give this node another cluster.node_id, or stop the other one"
    )]
    NodeIdTaken {
        node: String,
        started: String,
        until: String,
        holder: Option<Box<ClusterNode>>,
    },
    #[error("cluster.nats_url: {0}")]
    Nats(String),
    #[error("cluster registry in the store: {0}")]
    Store(#[from] outpost_store::StoreError),
}

/// The cluster as a node sees it, for operators (`outpost admin cluster`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    pub node_id: String,
    pub nats_connected: bool,
    /// Why the registry could not be read, if it could not (PostgreSQL is unreachable).
    pub postgres_error: Option<String>,
    /// Every registered node (PostgreSQL), with what this node hears of it.
    pub nodes: Vec<NodeStatus>,
    /// Messages this node published on NATS since it started, and those it received
    /// from the other nodes.
    #[serde(default)]
    pub published: u64,
    #[serde(default)]
    pub received: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub address: String,
    pub started_ms: i64,
    /// Until when its registration holds (`None`: the registry could not be read).
    pub lease_until_ms: Option<i64>,
    /// Its sessions, as its registration (this node: now) says.
    pub sessions: u64,
    /// Milliseconds since this node last heard it over NATS (`None`: not heard, or itself).
    pub heard_ms_ago: Option<u64>,
    /// Its sessions in this node's directory.
    pub directory: u64,
    /// The rooms it runs (their leases, `room:<JID>`).
    #[serde(default)]
    pub rooms: u64,
    /// The links to other servers it runs (their leases, `s2s:<local>/<remote>`).
    #[serde(default)]
    pub links: u64,
}

impl NodeStatus {
    /// What the leases say this start of the node runs, as of `now_ms`.
    pub fn with_leases(mut self, epoch: &str, leases: &[ClusterLease], now_ms: i64) -> Self {
        let held = leases
            .iter()
            .filter(|l| l.node_id == self.node_id && l.epoch == epoch && l.until_ms >= now_ms);
        for l in held {
            match l.name.as_str() {
                name if name.starts_with(links::LINK_LEASE) => self.links += 1,
                name if name.starts_with("room:") => self.rooms += 1,
                _ => {}
            }
        }
        self
    }
}

/// What publishing needs: the client, the subjects, and the queue to the publisher task,
/// which keeps everything this node says in order.
struct Bus {
    node_id: Arc<str>,
    epoch: String,
    prefix: String,
    out: mpsc::Sender<(String, Vec<u8>)>,
    /// The number of the last directory change, taken with the queue's order.
    seq: Mutex<u64>,
    connected: AtomicBool,
    ever_connected: AtomicBool,
    /// Told each time NATS is connected.
    on_connect: tokio::sync::Notify,
    /// Messages queued for NATS, and those received from other nodes, since the start.
    published: AtomicU64,
    received: AtomicU64,
}

impl Bus {
    fn dir_subject(&self) -> String {
        format!("{}.dir", self.prefix)
    }

    fn node_subject(&self, node: &str) -> String {
        format!("{}.node.{node}", self.prefix)
    }

    fn envelope(&self, body: Body) -> Vec<u8> {
        let env = Envelope {
            node: self.node_id.to_string(),
            epoch: self.epoch.clone(),
            body,
        };
        serde_json::to_vec(&env).unwrap_or_default()
    }

    fn publish(&self, subject: String, body: Body) -> bool {
        let queued = self.out.try_send((subject, self.envelope(body))).is_ok();
        if queued {
            self.published.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// Publishes a directory change with the next number, in the order numbers are taken.
    fn change(&self, change: Change) {
        let mut seq = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        *seq += 1;
        let body = Body::Change { seq: *seq, change };
        if !self.publish(self.dir_subject(), body) {
            debug!("directory change not published: the queue is full");
        }
    }

    fn seq(&self) -> u64 {
        *self.seq.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Observer for Bus {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn changed(&self, change: LocalChange) {
        self.change(match change {
            LocalChange::Bound(e) => Change::Bound(e),
            LocalChange::Unbound { jid, session_id } => Change::Unbound { jid, session_id },
            LocalChange::Updated(e) => Change::Updated(e),
        });
    }
}

/// Another node, as the router reaches it.
struct Peer {
    id: String,
    bus: Arc<Bus>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {}", self.id)
    }
}

impl NodeSink for Peer {
    fn node_id(&self) -> &str {
        &self.id
    }

    fn send(&self, to: &FullJid, msg: ToSession) -> Result<(), ToSession> {
        let Some(wire) = Msg::from_session(&msg) else {
            return Err(msg);
        };
        let body = Body::Deliver {
            to: to.clone(),
            msg: wire,
        };
        match self.bus.publish(self.bus.node_subject(&self.id), body) {
            true => Ok(()),
            false => Err(msg),
        }
    }

    fn send_copies(&self, to: &[FullJid], el: &minidom::Element) -> bool {
        let Some(xml) = xml(el) else {
            return false;
        };
        let body = Body::Copies {
            to: to.to_vec(),
            xml,
        };
        self.bus.publish(self.bus.node_subject(&self.id), body)
    }
}

/// This node's part in the cluster.
pub(crate) struct Cluster {
    /// Where the cluster's own short tasks run (announcements, answers).
    tasks: Tasks,
    bus: Arc<Bus>,
    delivery: Arc<Delivery>,
    peers: Mutex<HashMap<String, PeerState>>,
    /// Nodes taken for dead, with the start that was: met again, they are a partition
    /// that healed.
    expired: Mutex<HashMap<String, String>>,
    /// Nodes that said goodbye, with the start that did: not met again.
    departed: Mutex<HashMap<String, String>>,
    /// The links to other servers: which node runs each.
    links: links::Links,
    /// The room services, whose rooms each run on one node (multi-user chat).
    services: Arc<services::Services>,
    /// Streams resumed here that other nodes held, and the reverse (see `resume`).
    resumes: Arc<resume::Resumes>,
    /// Preference changes awaiting other nodes: how many answers are still due.
    prefs_waiting: Mutex<HashMap<String, (usize, tokio::sync::oneshot::Sender<()>)>>,
    /// The tag of this node's archive ids, once taken.
    tag: Mutex<Option<i64>>,
    /// Told when a node's snapshot is in, or a node awaited for one is gone.
    synced: tokio::sync::Notify,
    /// On a hub: the tags of its sites' archive ids, which its nodes do not take.
    site_tags: Vec<i64>,
    /// Wakes the upkeep task to try for the leases at once (their holder left or died).
    claim_soon: tokio::sync::Notify,
    /// Cancelled once a stopping node's registration and leases are released.
    released: CancellationToken,
    /// Stops the publisher once the goodbye is queued.
    stop: CancellationToken,
    /// Sessions other nodes ended lately, by the node that held them.
    ended: Mutex<HashMap<FullJid, (String, Instant)>>,
    limits: Limits,
    address: String,
}

/// What this node knows of another.
struct PeerState {
    epoch: String,
    /// The number of its last change applied here.
    seq: u64,
    heard: Instant,
    sink: Arc<dyn NodeSink>,
    sync: Option<Syncing>,
    /// Met again after it was taken for dead (a partition healed): once its snapshot is
    /// in, this node's sessions send their presence to contacts on our domains and probe
    /// theirs, since each side told its users the other's were gone.
    rejoined: bool,
}

/// A snapshot asked for and not complete yet; the node's changes meanwhile wait.
struct Syncing {
    asked: Instant,
    request: String,
    parts: Vec<SessionEntry>,
    waiting: Vec<(u64, Change)>,
}

impl Cluster {
    /// Claims this node's id in the registry, connects to NATS (in the background if it
    /// is down: the node then serves its own sessions), and learns the other nodes'
    /// sessions before it returns, so the listeners start with the whole directory.
    pub(crate) async fn join(
        config: &Config,
        delivery: &Arc<Delivery>,
        tasks: &Tasks,
        shutdown: &CancellationToken,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let c = &config.cluster;
        let node_id: Arc<str> = c.node_id.clone().unwrap_or_default().into();
        let epoch = crate::ids::random_id(16);
        let address = config
            .listen
            .c2s
            .iter()
            .chain(&config.listen.c2s_tls)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let (out, rx) = mpsc::channel(OUTGOING);
        let bus = Arc::new(Bus {
            node_id: node_id.clone(),
            epoch,
            prefix: c.subject_prefix().to_owned(),
            out,
            seq: Mutex::new(0),
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            on_connect: tokio::sync::Notify::new(),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
        });
        let client = connect(c.nats_url.as_deref().unwrap_or(""), &bus).await?;
        register(&client, &bus, delivery, &address).await?;
        let cluster = Arc::new(Cluster::new(config, delivery, tasks, bus.clone(), address));
        delivery.router().observe(bus.clone());
        cluster.claim_tag().await;
        let weak = Arc::downgrade(&cluster);
        delivery.archive().on_change(Box::new(move |user| {
            let (weak, user) = (weak.clone(), user.to_owned());
            Box::pin(async move {
                if let Some(cluster) = weak.upgrade() {
                    cluster.prefs_changed(user).await;
                }
            })
        }));
        cluster.share_hub_state();
        let weak_cluster = Arc::downgrade(&cluster);
        cluster
            .services
            .start(delivery, weak_cluster, tasks, shutdown);
        tasks.spawn(publisher(client.clone(), rx, cluster.stop.clone()));
        let inbox = format!("{}.inbox.{}.{}", bus.prefix, bus.node_id, bus.epoch);
        let subs = Subscriptions::open(&client, &bus, &inbox).await;
        cluster.ask_known_nodes().await;
        let receiver = cluster.clone().run(subs, tasks.clone(), shutdown.clone());
        tasks.spawn(receiver);
        tasks.spawn(cluster.clone().upkeep(shutdown.clone()));
        cluster.wait_synced().await;
        info!(node = %node_id, "joined the cluster");
        Ok(cluster)
    }

    fn new(
        config: &Config,
        delivery: &Arc<Delivery>,
        tasks: &Tasks,
        bus: Arc<Bus>,
        address: String,
    ) -> Cluster {
        Cluster {
            tasks: tasks.clone(),
            bus,
            delivery: delivery.clone(),
            peers: Mutex::new(HashMap::new()),
            ended: Mutex::new(HashMap::new()),
            departed: Mutex::new(HashMap::new()),
            expired: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            released: CancellationToken::new(),
            claim_soon: tokio::sync::Notify::new(),
            tag: Mutex::new(None),
            synced: tokio::sync::Notify::new(),
            site_tags: match config.role {
                crate::config::Role::Hub => config
                    .federation
                    .relay_for
                    .iter()
                    .map(|site| crate::archive::node_tag(false, site))
                    .collect(),
                crate::config::Role::Site => Vec::new(),
            },
            prefs_waiting: Mutex::new(HashMap::new()),
            resumes: Arc::default(),
            links: links::Links::default(),
            services: Arc::new(services::Services::new(
                config.muc_domains(),
                config.muc.clone(),
            )),
            limits: Limits {
                max_stanza_bytes: config.limits.max_stanza_bytes,
                ..Limits::default()
            },
            address,
        }
    }

    /// Whether `node`, in that start, is a node this one hears.
    fn is_live(&self, node: &str, epoch: &str) -> bool {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(node).is_some_and(|p| p.epoch == epoch)
    }

    /// Takes a tag for this node's archive ids that no other live node holds (a lease
    /// `archive-tag:<n>`, 1 to 255, tried from a hash of the node id), so that two nodes
    /// archiving in the same millisecond never give out the same id. Renewed with the
    /// other leases; taken anew if it was lost.
    pub(super) async fn claim_tag(&self) {
        let held = *self.tag.lock().unwrap_or_else(|p| p.into_inner());
        let start = held.unwrap_or_else(|| {
            let hash = self
                .bus
                .node_id
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
            1 + i64::try_from(hash % 255).unwrap_or(0)
        });
        for i in 0..255 {
            let tag = (start - 1 + i) % 255 + 1;
            if self.site_tags.contains(&tag) {
                // A hub's ids must never meet its sites' (see `archive::node_tag`).
                continue;
            }
            let now = crate::clock::now_ms();
            let want = ClusterLease {
                name: format!("archive-tag:{tag}"),
                node_id: self.bus.node_id.to_string(),
                epoch: self.bus.epoch.clone(),
                until_ms: now + LEASE.as_millis() as i64,
            };
            match self.delivery.store().lease_take(&want, now).await {
                Ok(lease) if lease == want => {
                    if held != Some(tag) {
                        info!(tag, "archive ids of this node carry this tag");
                        self.delivery.archive().set_tag(tag);
                        *self.tag.lock().unwrap_or_else(|p| p.into_inner()) = Some(tag);
                    }
                    return;
                }
                Ok(_) => continue,
                Err(e) => {
                    warn!(error = %e, "cannot take an archive tag");
                    return;
                }
            }
        }
        warn!("every archive tag is held: more than 255 nodes?");
    }

    /// What a hub's nodes share beyond sessions: the standby of each site (each change
    /// told at once, and repeated in heartbeats), and the answers to each other's requests
    /// to other servers (a peer answers over whichever of its streams reaches us).
    fn share_hub_state(&self) {
        let d = &self.delivery;
        let bus = self.bus.clone();
        d.standby().in_cluster(
            &self.bus.node_id,
            Box::new(move |mark| {
                let body = Body::Standby { mark: mark.clone() };
                bus.publish(bus.dir_subject(), body);
            }),
        );
        let bus = self.bus.clone();
        d.requests_in_cluster(
            &self.bus.node_id,
            Box::new(move |node, iq| {
                if let Some(xml) = xml(iq) {
                    bus.publish(bus.node_subject(node), Body::Answer { xml });
                }
            }),
        );
    }

    /// A user changed their archiving preferences here: every node in step reads them
    /// again before the change is answered (for at most [`PREFS_WAIT`]), so that no node
    /// archives against the user's wish once they were told it is done.
    async fn prefs_changed(&self, user: String) {
        let expected = {
            let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers.values().filter(|p| p.sync.is_none()).count()
        };
        let request = crate::ids::random_id(16);
        let (tx, rx) = tokio::sync::oneshot::channel();
        if expected > 0 {
            let mut waiting = self.prefs_waiting.lock().unwrap_or_else(|p| p.into_inner());
            waiting.insert(request.clone(), (expected, tx));
        }
        let body = Body::Prefs {
            user,
            request: request.clone(),
        };
        self.bus.publish(self.bus.dir_subject(), body);
        if expected == 0 {
            return;
        }
        if tokio::time::timeout(PREFS_WAIT, rx).await.is_err() {
            warn!("not every node confirmed new archiving preferences in time");
        }
        let mut waiting = self.prefs_waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.remove(&request);
    }

    /// A node read the preferences this node changed.
    pub(super) fn prefs_read(&self, request: &str) {
        let mut waiting = self.prefs_waiting.lock().unwrap_or_else(|p| p.into_inner());
        let done = match waiting.get_mut(request) {
            Some((left, _)) => {
                *left = left.saturating_sub(1);
                *left == 0
            }
            None => false,
        };
        if done && let Some((_, tx)) = waiting.remove(request) {
            let _ = tx.send(());
        }
    }

    /// Asks every node the registry says is alive for its sessions.
    async fn ask_known_nodes(&self) {
        let now = crate::clock::now_ms();
        let nodes = match self.delivery.store().cluster_nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                warn!(error = %e, "cannot read the cluster registry");
                return;
            }
        };
        for n in nodes {
            if n.node_id != *self.bus.node_id && n.lease_until_ms > now {
                self.meet(&n.node_id, &n.epoch);
            }
        }
    }

    /// Waits (a while at most) until every node met so far has sent its snapshot.
    async fn wait_synced(&self) {
        let deadline = tokio::time::Instant::now() + STARTUP_SYNC;
        loop {
            // Listening before looking: a snapshot completed in between is not missed.
            let settled = self.synced.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let pending = {
                let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
                peers.values().any(|p| p.sync.is_some())
            };
            if !pending {
                return;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                warn!("some nodes did not send their sessions in time; serving anyway");
                return;
            }
        }
    }

    /// The cluster as this node sees it: the registry (if PostgreSQL answers) with what
    /// NATS says of each node.
    pub(crate) async fn status(&self) -> ClusterStatus {
        let store = self.delivery.store();
        let (registered, postgres_error) = match store.cluster_nodes().await {
            Ok(nodes) => (nodes, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let leases = store.cluster_leases().await.unwrap_or_default();
        let now = crate::clock::now_ms();
        let directory = self.delivery.router().remote_counts();
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut nodes: Vec<NodeStatus> = registered
            .into_iter()
            .map(|n| {
                let me = n.node_id == *self.bus.node_id;
                let heard = peers.get(&n.node_id).filter(|p| p.epoch == n.epoch);
                let epoch = n.epoch.clone();
                NodeStatus {
                    sessions: match me {
                        true => self.delivery.router().session_count() as u64,
                        false => n.sessions,
                    },
                    heard_ms_ago: heard.map(|p| p.heard.elapsed().as_millis() as u64),
                    directory: directory.get(&n.node_id).copied().unwrap_or(0),
                    node_id: n.node_id,
                    address: n.address,
                    started_ms: n.started_ms,
                    lease_until_ms: Some(n.lease_until_ms),
                    rooms: 0,
                    links: 0,
                }
                .with_leases(&epoch, &leases, now)
            })
            .collect();
        // Nodes heard over NATS that the registry did not list (it did not answer).
        for (id, p) in peers.iter() {
            if !nodes.iter().any(|n| n.node_id == *id) {
                nodes.push(NodeStatus {
                    node_id: id.clone(),
                    address: String::new(),
                    started_ms: 0,
                    lease_until_ms: None,
                    sessions: directory.get(id).copied().unwrap_or(0),
                    heard_ms_ago: Some(p.heard.elapsed().as_millis() as u64),
                    directory: directory.get(id).copied().unwrap_or(0),
                    rooms: 0,
                    links: 0,
                });
            }
        }
        ClusterStatus {
            node_id: self.bus.node_id.to_string(),
            nats_connected: self.bus.connected.load(Ordering::Relaxed),
            postgres_error,
            nodes,
            published: self.bus.published.load(Ordering::Relaxed),
            received: self.bus.received.load(Ordering::Relaxed),
        }
    }
}

/// Registers this node. An id whose registration still runs is refused if that start of
/// the node is heard on NATS (a live node); one nobody hears (a start that crashed, and
/// is restarted at once) is waited out until its registration ends.
async fn register(
    client: &Client,
    bus: &Bus,
    delivery: &Delivery,
    address: &str,
) -> Result<(), ClusterError> {
    let mut attempts = 0;
    loop {
        let Err(taken) = claim(delivery, &bus.node_id, &bus.epoch, address).await else {
            return Ok(());
        };
        let ClusterError::NodeIdTaken {
            holder: Some(holder),
            ..
        } = &taken
        else {
            return Err(taken);
        };
        attempts += 1;
        if attempts > 2 || heard(client, bus, holder).await {
            return Err(taken);
        }
        let left =
            (holder.lease_until_ms - crate::clock::now_ms()).clamp(0, LEASE.as_millis() as i64);
        warn!(
            node = %bus.node_id,
            wait_ms = left,
            "this node id is registered to a start that is silent (it crashed?): waiting for \
             its registration to end"
        );
        tokio::time::sleep(Duration::from_millis(left as u64 + 100)).await;
    }
}

/// Whether `holder` (this id's registered start) is heard on NATS within a few heartbeats.
async fn heard(client: &Client, bus: &Bus, holder: &ClusterNode) -> bool {
    let Ok(mut sub) = client.subscribe(bus.dir_subject()).await else {
        return false;
    };
    let listen = async {
        while let Some(m) = sub.next().await {
            if let Ok(env) = serde_json::from_slice::<Envelope>(&m.payload)
                && env.node == holder.node_id
                && env.epoch == holder.epoch
            {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(3 * HEARTBEAT, listen)
        .await
        .unwrap_or(false)
}

/// Registers this node, refusing an id a live node holds.
async fn claim(
    delivery: &Delivery,
    node_id: &str,
    epoch: &str,
    address: &str,
) -> Result<(), ClusterError> {
    let now = crate::clock::now_ms();
    let me = ClusterNode {
        node_id: node_id.to_owned(),
        epoch: epoch.to_owned(),
        address: address.to_owned(),
        started_ms: now,
        lease_until_ms: now + LEASE.as_millis() as i64,
        sessions: 0,
    };
    if delivery.store().node_claim(&me, now).await? {
        return Ok(());
    }
    let held = delivery.store().cluster_nodes().await?;
    let other = held.into_iter().find(|n| n.node_id == node_id);
    Err(ClusterError::NodeIdTaken {
        node: node_id.to_owned(),
        started: other
            .as_ref()
            .map_or_else(String::new, |n| crate::clock::format_ms(n.started_ms)),
        until: other
            .as_ref()
            .map_or_else(String::new, |n| crate::clock::format_ms(n.lease_until_ms)),
        holder: other.map(Box::new),
    })
}

/// Connects to NATS, trying for a few seconds; if it is not there, the client keeps
/// trying in the background while the node serves its own sessions.
async fn connect(urls: &str, bus: &Arc<Bus>) -> Result<Client, ClusterError> {
    let events = bus.clone();
    let options = async_nats::ConnectOptions::new()
        .name(format!("outpost {}", bus.node_id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let bus = events.clone();
            async move { on_nats_event(&bus, event) }
        });
    let servers: Vec<&str> = urls.split(',').map(str::trim).collect();
    let client = async_nats::connect_with_options(servers, options)
        .await
        .map_err(|e| ClusterError::Nats(e.to_string()))?;
    let connected = bus.on_connect.notified();
    tokio::pin!(connected);
    connected.as_mut().enable();
    if !bus.connected.load(Ordering::Relaxed) {
        let _ = tokio::time::timeout(Duration::from_secs(5), connected).await;
    }
    if !bus.connected.load(Ordering::Relaxed) {
        warn!("NATS is not reachable: this node serves its own sessions until it is");
    }
    Ok(client)
}

/// Follows the NATS connection for `admin cluster` and the log: the first connection, a
/// loss (the others will soon take this node's sessions for gone, as it takes theirs), a
/// return (the nodes meet again: see [`PeerState::rejoined`]).
fn on_nats_event(bus: &Bus, event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            bus.connected.store(true, Ordering::Relaxed);
            bus.on_connect.notify_waiters();
            match bus.ever_connected.swap(true, Ordering::Relaxed) {
                true => info!("NATS is back: the nodes learn each other's sessions again"),
                false => info!("connected to NATS"),
            }
        }
        async_nats::Event::Disconnected => {
            bus.connected.store(false, Ordering::Relaxed);
            warn!("lost NATS: serving this node's own sessions only until it is back");
        }
        other => debug!(event = %other, "NATS"),
    }
}

/// Publishes what the node says, in order, until the node has said goodbye.
async fn publisher(
    client: Client,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    shutdown: CancellationToken,
) {
    loop {
        let (subject, payload) = tokio::select! {
            got = rx.recv() => match got {
                Some(m) => m,
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        if let Err(e) = client.publish(subject, payload.into()).await {
            debug!(error = %e, "cannot publish to NATS");
        }
    }
    // What is queued (the goodbye among it) goes out before the connection closes.
    while let Ok((subject, payload)) = rx.try_recv() {
        let _ = client.publish(subject, payload.into()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
}

/// The node's three subscriptions: everyone's directory, its own subject and the inbox
/// its snapshots arrive in.
struct Subscriptions {
    dir: Option<async_nats::Subscriber>,
    mine: Option<async_nats::Subscriber>,
    inbox: Option<async_nats::Subscriber>,
}

impl Subscriptions {
    async fn open(client: &Client, bus: &Bus, inbox: &str) -> Subscriptions {
        let sub = |subject: String| async move {
            match client.subscribe(subject.clone()).await {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!(%subject, error = %e, "cannot subscribe");
                    None
                }
            }
        };
        Subscriptions {
            dir: sub(bus.dir_subject()).await,
            mine: sub(bus.node_subject(&bus.node_id)).await,
            inbox: sub(inbox.to_owned()).await,
        }
    }
}

/// The next message of an optional subscription (never, without one).
async fn next(sub: &mut Option<async_nats::Subscriber>) -> async_nats::Message {
    match sub {
        Some(s) => match s.next().await {
            Some(m) => m,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
