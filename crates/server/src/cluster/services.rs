//! Multi-user chat on a cluster: every node runs each room service
//! ([`crate::muc::start_shared`]), and each room has one owner node at a time, the holder
//! of the lease `room:<room JID>` in PostgreSQL. In front of its service each node
//! registers a router that sends each room's stanzas to the room's owner: its own service
//! if that is this node, otherwise the owner over NATS, waiting, for a message, for the
//! owner to say its archive row is committed before the sender is acknowledged. A room
//! nobody owns is taken by the node where its next stanza arrives, so rooms live where
//! their users are and the rooms of a service spread over the nodes.
//!
//! Each node extends its room leases every [`LEASE_RENEW`](super::LEASE_RENEW) in one
//! statement; a room whose lease it lost (it looked dead for a whole lease) is evicted from
//! its service. When a node stops it releases its leases; when it dies they end with its
//! lease time, and the next stanza for one of its rooms anywhere takes the room over, read
//! from the store (configuration, affiliations, history from the archive). Occupants are
//! not in the store: after a takeover, clients join again (XEP-0410 self-pings tell them
//! to). Stanzas of one service are routed in order by one task per node, those other
//! nodes forwarded among them, so a sender's stanzas reach a room in the order sent. The
//! router numbers what it gives its service; when the service forgets a room (destroyed,
//! or a temporary room emptied) it says at which number, and unless a later stanza went to
//! that room the lease goes back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use jid::Jid;
use minidom::Element;
use outpost_proto::stanza::{Condition, ErrorType, StanzaError};
use outpost_store::{ClusterLease, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::wire::Body;
use super::{Bus, Cluster, LEASE};
use crate::config::MucConfig;
use crate::delivery::{Component, Delivery};
use crate::journal::Pending;
use crate::muc::{Gone, MucService};
use crate::tasks::Tasks;

/// How long a forwarded message waits for its owner's answer.
const ANSWER: Duration = Duration::from_secs(10);
/// Stanzas waiting for a service's router; a full queue answers `resource-constraint`.
const QUEUE: usize = 4096;
/// The names of room leases start with this.
const ROOM_LEASE: &str = "room:";

type Done = oneshot::Sender<Result<i64, StoreError>>;

/// One service on this node.
struct Service {
    service: String,
    domain: String,
    /// This node's own service task, holding the rooms it owns.
    local: OnceLock<Arc<MucService>>,
    /// Each room's owner as last learned (this node's id for its own) and when, by room
    /// JID.
    owners: Mutex<HashMap<String, (String, Instant)>>,
    /// The router's queue.
    queue: OnceLock<mpsc::Sender<Routed>>,
    /// The number of the last stanza the router gave this node's service for each room
    /// it runs (see [`crate::muc::Gone`]).
    last: Mutex<HashMap<String, u64>>,
}

/// A stanza for a service, and (a message) where its outcome goes.
struct Routed {
    el: Element,
    done: Option<Done>,
    /// Another node sent it here as the room's owner: served here (taking the room if
    /// nobody holds it, as for a stanza of our own) or refused, never sent on.
    forwarded: bool,
}

/// A message forwarded to a room's owner, awaiting its answer.
struct Waiting {
    done: Option<Done>,
    at: Instant,
    service: Arc<Service>,
    room: String,
    /// The owner it went to, and the stanza (a message's sender hears of it through
    /// `done`; the sender of anything else gets it back with an error if no answer comes).
    node: String,
    el: Option<Element>,
}

impl Waiting {
    /// No answer will come: the sender hears so.
    fn fail(self, d: &Delivery, why: &str) {
        match (self.done, self.el) {
            (Some(done), _) => {
                let _ = done.send(Err(StoreError::Backend(why.into())));
            }
            (None, Some(el)) => refuse(d, el, None, why),
            (None, None) => {}
        }
    }
}

/// The cluster's room services as this node sees them, and the forwarded messages
/// awaiting their owner's answer.
pub(super) struct Services {
    services: Vec<Arc<Service>>,
    config: MucConfig,
    waiting: Mutex<HashMap<String, Waiting>>,
}

impl Service {
    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn last(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn runs_here(&self, room: &str, me: &str) -> bool {
        self.owners().get(room).is_some_and(|(o, _)| o == me)
    }
}

impl Services {
    pub(super) fn new(services: Vec<(String, String)>, config: MucConfig) -> Services {
        let services = services
            .into_iter()
            .map(|(service, domain)| {
                Arc::new(Service {
                    service,
                    domain,
                    local: OnceLock::new(),
                    owners: Mutex::new(HashMap::new()),
                    queue: OnceLock::new(),
                    last: Mutex::new(HashMap::new()),
                })
            })
            .collect();
        Services {
            services,
            config,
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// Starts this node's part of every service: its own service task and, registered in
    /// its place, the router in front of it.
    pub(super) fn start(
        self: &Arc<Self>,
        d: &Arc<Delivery>,
        cluster: Weak<Cluster>,
        tasks: &Tasks,
        shutdown: &CancellationToken,
    ) {
        for s in &self.services {
            let (gone_tx, gone) = mpsc::unbounded_channel();
            let (local, task) = crate::muc::start_shared(
                d.clone(),
                s.service.clone(),
                s.domain.clone(),
                self.config.clone(),
                shutdown.clone(),
                gone_tx,
            );
            tasks.spawn(task);
            let _ = s.local.set(local);
            let (tx, rx) = mpsc::channel(QUEUE);
            let _ = s.queue.set(tx);
            d.register(&s.service, &s.domain, Arc::new(Router(s.clone())));
            let route =
                self.clone()
                    .route(s.clone(), (rx, gone), cluster.clone(), shutdown.clone());
            tasks.spawn(route);
        }
    }

    /// Routes a service's stanzas, in order, until shutdown; and gives back the leases of
    /// the rooms its service forgot.
    async fn route(
        self: Arc<Self>,
        s: Arc<Service>,
        (mut rx, mut gone): (mpsc::Receiver<Routed>, mpsc::UnboundedReceiver<Gone>),
        cluster: Weak<Cluster>,
        shutdown: CancellationToken,
    ) {
        let mut seq = 0;
        loop {
            let routed = tokio::select! {
                () = shutdown.cancelled() => return,
                Some((room, at)) = gone.recv() => {
                    if let Some(cluster) = cluster.upgrade() {
                        forgotten(&cluster, &s, &room.to_string(), at).await;
                    }
                    continue;
                }
                r = rx.recv() => r,
            };
            let (Some(routed), Some(cluster)) = (routed, cluster.upgrade()) else {
                return;
            };
            let Routed {
                el,
                done,
                forwarded,
            } = routed;
            let me = cluster.bus.node_id.to_string();
            let room = room_of(&el);
            let owner = match &room {
                None => Some(me.clone()),
                Some(r) => self.owner(&cluster, &s, r, &el).await,
            };
            let d = &cluster.delivery;
            match (owner, room) {
                (Some(o), room) if o == me => {
                    seq += 1;
                    if let Some(r) = room.filter(|r| s.runs_here(r, &me)) {
                        s.last().insert(r, seq);
                    }
                    here_with(&s, d, el, done, seq);
                }
                (Some(o), Some(room)) if !forwarded => {
                    self.forward(&cluster, &s, &o, room, el, done);
                }
                _ if forwarded => refuse(d, el, done, "the room does not run on this node"),
                _ => refuse(d, el, done, "the room's node is gone; try again shortly"),
            }
        }
    }

    /// The room's owner: as known, or by taking its lease (this node becomes the owner
    /// if nobody holds it). `None` while a node that is gone still holds it. A room that
    /// is not stored and that `el` cannot create is not claimed: this node's service
    /// answers that it does not exist, and no lease is left behind for it.
    async fn owner(
        &self,
        cluster: &Cluster,
        s: &Service,
        room: &str,
        el: &Element,
    ) -> Option<String> {
        if let Some((o, _)) = s.owners().get(room) {
            return Some(o.clone());
        }
        let now = crate::clock::now_ms();
        let me = cluster.bus.node_id.to_string();
        let want = ClusterLease {
            name: format!("{ROOM_LEASE}{room}"),
            node_id: me.clone(),
            epoch: cluster.bus.epoch.clone(),
            until_ms: now + LEASE.as_millis() as i64,
        };
        let store = cluster.delivery.store();
        let lease = match store.lease_take(&want, now).await {
            Ok(lease) => lease,
            Err(e) => {
                warn!(%room, error = %e, "cannot take a room's lease");
                return None;
            }
        };
        if lease.node_id != want.node_id || lease.epoch != want.epoch {
            let live = cluster.is_live(&lease.node_id, &lease.epoch);
            if live {
                let learned = (lease.node_id.clone(), Instant::now());
                s.owners().insert(room.to_owned(), learned);
            }
            return live.then_some(lease.node_id);
        }
        if !may_create(el) && matches!(store.muc_room(room).await, Ok(None)) {
            // Nobody ran it and it is not stored: it does not exist. This node's service
            // says so, and the lease goes back rather than stay behind for nothing.
            if let Err(e) = store.lease_release(&want.name, &me, &want.epoch).await {
                warn!(%room, error = %e, "cannot give a room's lease back");
            }
            return Some(me);
        }
        info!(%room, "this node runs the room now");
        s.owners()
            .insert(room.to_owned(), (me.clone(), Instant::now()));
        Some(me)
    }

    /// Sends a room's stanza to its owner; a message's outcome comes with its answer.
    fn forward(
        &self,
        cluster: &Cluster,
        s: &Arc<Service>,
        owner: &str,
        room: String,
        el: Element,
        done: Option<Done>,
    ) {
        let (bus, d) = (&cluster.bus, &cluster.delivery);
        let Some(xml) = super::wire::xml(&el) else {
            return refuse(d, el, done, "the stanza cannot be written");
        };
        // Every stanza gets an answer, so that a refusal (the room moved on) makes this
        // node forget the owner; a message's also says it is committed.
        let request = crate::ids::random_id(16);
        let waiting = Waiting {
            el: done.is_none().then(|| el.clone()),
            done,
            at: Instant::now(),
            service: s.clone(),
            room,
            node: owner.to_owned(),
        };
        self.lock_waiting().insert(request.clone(), waiting);
        let body = Body::Service {
            service: s.service.clone(),
            xml,
            request: Some(request.clone()),
        };
        if bus.publish(bus.node_subject(owner), body) {
            return;
        }
        let done = self.lock_waiting().remove(&request).and_then(|w| w.done);
        refuse(d, el, done, "the cluster's bus is busy");
    }

    /// A stanza another node forwarded for one of our rooms: to the service's router, in
    /// order with this node's own stanzas, which serves it if the room is ours; otherwise
    /// its sender gets a temporary error, and the error that goes back makes the
    /// forwarding node forget the owner it thought it had.
    pub(super) fn serve_forwarded(
        &self,
        d: &Delivery,
        service: &str,
        el: Element,
    ) -> Result<Pending, &'static str> {
        let queue = self.services.iter().find(|s| s.service == service);
        let Some(queue) = queue.and_then(|s| s.queue.get()) else {
            refuse(d, el, None, "");
            return Err("no such service on this node");
        };
        let (done, pending) = Pending::channel();
        let routed = Routed {
            el,
            done: Some(done),
            forwarded: true,
        };
        match queue.try_send(routed) {
            Ok(()) => Ok(pending),
            Err(mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r)) => {
                refuse(d, r.el, None, "");
                Err("the service is busy")
            }
        }
    }

    /// Extends this node's room leases; rooms it lost leave its services (not those it
    /// took while the leases were extended).
    pub(super) async fn renew(&self, d: &Delivery, bus: &Bus) {
        let started = Instant::now();
        let until = crate::clock::now_ms() + LEASE.as_millis() as i64;
        let held = match d
            .store()
            .leases_extend(&bus.node_id, &bus.epoch, ROOM_LEASE, until)
            .await
        {
            Ok(names) => names.into_iter().collect::<HashSet<String>>(),
            Err(e) => {
                warn!(error = %e, "cannot renew this node's room leases");
                return;
            }
        };
        for s in &self.services {
            let mut lost = Vec::new();
            s.owners().retain(|room, (o, since)| {
                let keep = *o != *bus.node_id
                    || *since >= started
                    || held.contains(&format!("{ROOM_LEASE}{room}"));
                if !keep {
                    lost.push(room.clone());
                }
                keep
            });
            s.last().retain(|room, _| !lost.contains(room));
            for room in lost {
                warn!(%room, "this node lost the room's lease: another node may take it");
                if let (Some(local), Ok(jid)) = (s.local.get(), jid::BareJid::new(&room)) {
                    local.evict(jid).await;
                }
            }
        }
        self.expire_waiting(d);
    }

    /// Forwarded messages whose owner did not answer in time: their senders get an error.
    fn expire_waiting(&self, d: &Delivery) {
        let late = self.take_waiting(|w| w.at.elapsed() > ANSWER);
        for w in late {
            w.fail(d, "the node running the room did not answer");
        }
    }

    /// `node` is gone: the rooms it ran have no known owner until one takes them, and
    /// what was sent to it for them will not be answered.
    pub(super) fn node_gone(&self, d: &Delivery, node: &str) {
        for s in &self.services {
            s.owners().retain(|_, (o, _)| o != node);
        }
        for w in self.take_waiting(|w| w.node == node) {
            w.fail(d, "the node running the room is gone");
        }
    }

    /// Takes the forwarded stanzas `which` picks out of those awaiting an answer.
    fn take_waiting(&self, which: impl Fn(&Waiting) -> bool) -> Vec<Waiting> {
        let mut waiting = self.lock_waiting();
        waiting
            .extract_if(|_, w| which(w))
            .map(|(_, w)| w)
            .collect()
    }

    /// The owner's answer to a forwarded message. A refusal makes this node forget that
    /// owner, so the room's next stanza learns the owner again.
    pub(super) fn answered(&self, node: &str, request: &str, result: Result<i64, String>) {
        let Some(w) = self.lock_waiting().remove(request) else {
            return;
        };
        if result.is_err() {
            let mut owners = w.service.owners();
            if owners.get(&w.room).is_some_and(|(o, _)| o == node) {
                owners.remove(&w.room);
            }
        }
        if let Some(done) = w.done {
            let _ = done.send(result.map_err(|e| StoreError::Backend(e.into())));
        }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a stanza may create its room: a join (presence with the MUC payload to an
/// occupant JID), as `muc` decides.
fn may_create(el: &Element) -> bool {
    el.name() == "presence"
        && el.attr("type").is_none()
        && el.has_child("x", outpost_proto::muc::NS_MUC)
}

/// The room a stanza is for (`None`: the service itself).
fn room_of(el: &Element) -> Option<String> {
    let to = Jid::new(el.attr("to")?).ok()?;
    to.node()?;
    Some(to.to_bare().to_string())
}

/// A stanza for one of this node's rooms, to its own service, numbered `seq`.
fn here_with(s: &Service, d: &Delivery, el: Element, done: Option<Done>, seq: u64) {
    let Some(local) = s.local.get() else {
        return refuse(d, el, done, "the service is not running");
    };
    if let Err(el) = local.submit(el, done, seq) {
        let busy = StanzaError::with_type(ErrorType::Wait, Condition::ResourceConstraint);
        d.bounce(&el, busy);
    }
}

/// This node's service forgot `room` at its stanza `at`: unless a later stanza went to it
/// (which may have made the room again), the room's lease goes back, so that no row stays
/// for a room that is gone.
async fn forgotten(cluster: &Cluster, s: &Service, room: &str, at: u64) {
    let me = &*cluster.bus.node_id;
    {
        let mut last = s.last();
        if last.get(room) != Some(&at) {
            return;
        }
        last.remove(room);
    }
    {
        let mut owners = s.owners();
        if owners.get(room).is_none_or(|(o, _)| o != me) {
            return;
        }
        owners.remove(room);
    }
    let name = format!("{ROOM_LEASE}{room}");
    let store = cluster.delivery.store();
    match store.lease_release(&name, me, &cluster.bus.epoch).await {
        Ok(()) => info!(%room, "the room is gone; its lease is given back"),
        Err(e) => warn!(%room, error = %e, "cannot give a room's lease back"),
    }
}

/// Refuses a stanza for a room that has no owner now, with a temporary error.
fn refuse(d: &Delivery, el: Element, done: Option<Done>, why: &str) {
    let busy = StanzaError::with_type(ErrorType::Wait, Condition::ServiceUnavailable);
    d.bounce(&el, busy);
    if let Some(done) = done {
        let _ = done.send(Err(StoreError::Backend(why.into())));
    }
}

/// What the router puts in front of this node's service for each room service.
struct Router(Arc<Service>);

impl Component for Router {
    fn take(&self, el: Element) -> Result<Option<Pending>, Element> {
        let (done, pending) = match el.name() {
            "message" => {
                let (done, pending) = Pending::channel();
                (Some(done), Some(pending))
            }
            _ => (None, None),
        };
        let Some(queue) = self.0.queue.get() else {
            return Err(el);
        };
        let routed = Routed {
            el,
            done,
            forwarded: false,
        };
        match queue.try_send(routed) {
            Ok(()) => Ok(pending),
            Err(mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r)) => {
                Err(r.el)
            }
        }
    }
}
