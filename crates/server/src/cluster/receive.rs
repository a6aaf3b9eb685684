//! The receiving side of a node: the directory of the others' sessions (changes,
//! heartbeats, snapshots, expiry) and what they deliver to this node's sessions.

use std::sync::Arc;
use std::time::Instant;

use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use outpost_proto::stanza;
use outpost_proto::xml::read_stanza;
use outpost_store::Subscription;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::wire::{Body, Change, Envelope, Msg};
use super::{
    Cluster, ENDED_GRACE, EXPIRY, HEARTBEAT, LEASE, LEASE_RENEW, Peer, PeerState, RELEASE_WAIT,
    SNAPSHOT_PART, SNAPSHOT_TIMEOUT, Subscriptions, Syncing, next,
};
use crate::delivery::Delivery;
use crate::router::{Mailbox, NodeSink, SessionEntry, ToSession, Undelivered};
use crate::tasks::Tasks;

impl Cluster {
    /// The node's receiving loop, and its heartbeat, until shutdown; then it says goodbye.
    /// Nothing here waits for PostgreSQL (see [`Cluster::upkeep`]): a node whose database
    /// is slow or gone still answers on the bus.
    pub(super) async fn run(
        self: Arc<Self>,
        mut subs: Subscriptions,
        tasks: Tasks,
        shutdown: CancellationToken,
    ) {
        let mut beat = tokio::time::interval(HEARTBEAT);
        loop {
            // Biased: a node's directory change is handled before what it delivered
            // after it, so a new session's first stanza meets its entry.
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                m = next(&mut subs.dir) => self.on_directory(&m.payload),
                m = next(&mut subs.inbox) => self.on_snapshot(&m.payload),
                m = next(&mut subs.mine) => self.on_mine(&m.payload, &tasks),
                _ = beat.tick() => {
                    self.heartbeat();
                    self.expire();
                }
            }
        }
        // Sessions first: each tells its contacts it is gone, through this bus; what is
        // said after the goodbye is not heard. Then the leases: a node that hears the
        // goodbye takes them over at once.
        let sessions_ended = async {
            while self.delivery.router().session_count() > 0 {
                // Sessions end on their own; nothing here announces the last one.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        let _ = tokio::time::timeout(RELEASE_WAIT, sessions_ended).await;
        let _ = tokio::time::timeout(RELEASE_WAIT, self.released.cancelled()).await;
        self.bus.publish(self.bus.dir_subject(), Body::Bye);
        self.stop.cancel();
    }

    /// What the node keeps in PostgreSQL, until shutdown: its registration, renewed every
    /// [`LEASE_RENEW`], and the leases on what one node runs (tried again at once when
    /// their holder leaves); then it leaves the registry.
    pub(super) async fn upkeep(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(LEASE_RENEW);
        every.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.claim_soon.notified() => {}
                _ = every.tick() => self.renew().await,
            }
            let (d, bus) = (&self.delivery, &self.bus);
            self.services.renew(d, bus).await;
            self.renew_links().await;
            self.claim_tag().await;
        }
        let store = self.delivery.store();
        let release = store.node_release(&self.bus.node_id, &self.bus.epoch);
        match tokio::time::timeout(RELEASE_WAIT, release).await {
            Ok(Ok(())) => info!("left the cluster"),
            Ok(Err(e)) => warn!(error = %e, "cannot leave the cluster registry"),
            Err(_) => warn!("the cluster registry did not answer; its leases will run out"),
        }
        self.released.cancel();
    }

    fn heartbeat(&self) {
        let body = Body::Heartbeat {
            seq: self.bus.seq(),
            sessions: self.delivery.router().session_count() as u64,
            standby: self.delivery.standby().marks(),
        };
        self.bus.publish(self.bus.dir_subject(), body);
    }

    /// Renews this node's registration; if it was lost (the node looked dead for a whole
    /// lease), claims it again, which fails only if another process took the id.
    async fn renew(&self) {
        let store = self.delivery.store();
        let now = crate::clock::now_ms();
        let until = now + LEASE.as_millis() as i64;
        let sessions = self.delivery.router().session_count() as u64;
        match store
            .node_renew(&self.bus.node_id, &self.bus.epoch, until, sessions)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                warn!("this node's registration lapsed; claiming it again");
                let claimed = super::claim(
                    &self.delivery,
                    &self.bus.node_id,
                    &self.bus.epoch,
                    &self.address,
                )
                .await;
                if let Err(e) = claimed {
                    warn!(error = %e, "cannot register this node again");
                }
            }
            Err(e) => warn!(error = %e, "cannot renew this node's registration"),
        }
    }

    fn parse(&self, payload: &[u8]) -> Option<Envelope> {
        match serde_json::from_slice::<Envelope>(payload) {
            Ok(env) if env.node == *self.bus.node_id => None,
            Ok(env) => {
                let received = &self.bus.received;
                received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(env)
            }
            Err(e) => {
                warn!(error = %e, "dropped a cluster message that does not parse");
                None
            }
        }
    }

    /// A node not known yet, or started again: forget what it held, ask for its sessions.
    pub(super) fn meet(&self, node: &str, epoch: &str) {
        let departed = self.departed.lock().unwrap_or_else(|p| p.into_inner());
        if departed.get(node).is_some_and(|e| e == epoch) {
            return;
        }
        drop(departed);
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.get(node).is_some_and(|p| p.epoch == epoch) {
            return;
        }
        if peers.remove(node).is_some() {
            info!(%node, "node started again");
            self.gone(node);
        } else {
            info!(%node, "met node");
        }
        let sink: Arc<dyn NodeSink> = Arc::new(Peer {
            id: node.to_owned(),
            bus: self.bus.clone(),
        });
        let mut expired = self.expired.lock().unwrap_or_else(|p| p.into_inner());
        let rejoined = expired.remove(node).is_some_and(|e| e == epoch);
        drop(expired);
        let mut state = PeerState {
            epoch: epoch.to_owned(),
            seq: 0,
            heard: Instant::now(),
            sink,
            sync: None,
            rejoined,
        };
        self.ask_snapshot(node, &mut state);
        peers.insert(node.to_owned(), state);
    }

    fn ask_snapshot(&self, node: &str, state: &mut PeerState) {
        let request = crate::ids::random_id(12);
        let inbox = self.inbox();
        let body = Body::SnapshotRequest {
            inbox,
            request: request.clone(),
        };
        self.bus.publish(self.bus.node_subject(node), body);
        let waiting = state.sync.take().map(|s| s.waiting).unwrap_or_default();
        state.sync = Some(Syncing {
            asked: Instant::now(),
            request,
            parts: Vec::new(),
            waiting,
        });
    }

    pub(super) fn inbox(&self) -> String {
        format!(
            "{}.inbox.{}.{}",
            self.bus.prefix, self.bus.node_id, self.bus.epoch
        )
    }

    /// A message on the directory subject.
    fn on_directory(&self, payload: &[u8]) {
        let Some(env) = self.parse(payload) else {
            return;
        };
        if matches!(env.body, Body::Bye) {
            return self.left(&env.node, &env.epoch);
        }
        self.meet(&env.node, &env.epoch);
        match env.body {
            body @ Body::LinkUp { .. } => return self.on_links(&env.node, false, body),
            Body::Prefs { user, request } => return self.reload_prefs(&env.node, user, request),
            Body::Resume {
                user,
                previd,
                request,
            } => return self.on_resume(&env.node, &user, &previd, request),
            Body::Standby { mark } => return self.delivery.standby_marked(&mark),
            Body::Heartbeat { ref standby, .. } => {
                for mark in standby {
                    self.delivery.standby_marked(mark);
                }
            }
            _ => {}
        }
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(peer) = peers.get_mut(&env.node) else {
            return;
        };
        peer.heard = Instant::now();
        match env.body {
            Body::Heartbeat { seq, .. } if peer.sync.is_none() && seq != peer.seq => {
                debug!(node = %env.node, "missed directory changes; asking for a snapshot");
                self.ask_snapshot(&env.node, peer);
            }
            Body::Change { seq, change } => {
                if let Some(sync) = &mut peer.sync {
                    sync.waiting.push((seq, change));
                } else if seq == peer.seq + 1 {
                    peer.seq = seq;
                    self.apply(&peer.sink, change);
                } else if seq > peer.seq {
                    debug!(node = %env.node, "missed directory changes; asking for a snapshot");
                    self.ask_snapshot(&env.node, peer);
                    if let Some(sync) = &mut peer.sync {
                        sync.waiting.push((seq, change));
                    }
                }
            }
            _ => {}
        }
    }

    /// A node said goodbye: its sessions are gone at once.
    fn left(&self, node: &str, epoch: &str) {
        let mut departed = self.departed.lock().unwrap_or_else(|p| p.into_inner());
        departed.insert(node.to_owned(), epoch.to_owned());
        drop(departed);
        let known = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            let known = peers.get(node).is_some_and(|p| p.epoch == epoch);
            if known {
                peers.remove(node);
                self.synced.notify_waiters();
            }
            known
        };
        if known {
            info!(%node, "node left");
            self.gone(node);
        }
    }

    /// A user changed their archiving preferences at another node: read them again, and
    /// tell that node.
    fn reload_prefs(&self, node: &str, user: String, request: String) {
        let (d, bus, node) = (self.delivery.clone(), self.bus.clone(), node.to_owned());
        self.tasks.spawn(async move {
            match d.store().archive_prefs(&user).await {
                Ok(prefs) => d.archive().remember(&user, prefs),
                Err(e) => warn!(error = %e, %user, "cannot read archive preferences"),
            }
            bus.publish(bus.node_subject(&node), Body::PrefsRead { request });
        });
    }

    /// Applies one change of another node's sessions to the router.
    fn apply(&self, sink: &Arc<dyn NodeSink>, change: Change) {
        let router = self.delivery.router();
        match change {
            Change::Bound(e) | Change::Updated(e) => {
                if !self.delivery.is_local(e.jid.domain().as_str()) {
                    warn!(node = sink.node_id(), jid = %e.jid, "dropped a session not of our domains");
                    return;
                }
                router.bind_remote(sink, e);
            }
            Change::Unbound { jid, session_id } => {
                if router.unbind_remote(sink.node_id(), &jid, session_id) {
                    let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
                    ended.insert(jid, (sink.node_id().to_owned(), Instant::now()));
                }
            }
        }
    }

    /// A part of a snapshot this node asked for.
    fn on_snapshot(&self, payload: &[u8]) {
        let Some(env) = self.parse(payload) else {
            return;
        };
        let Body::Snapshot {
            request,
            seq,
            entries,
            last,
        } = env.body
        else {
            return;
        };
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(peer) = peers.get_mut(&env.node).filter(|p| p.epoch == env.epoch) else {
            return;
        };
        let Some(sync) = peer.sync.as_mut().filter(|s| s.request == request) else {
            return;
        };
        sync.parts.extend(entries);
        if !last {
            return;
        }
        let Some(sync) = peer.sync.take() else {
            return;
        };
        self.synced.notify_waiters();
        let (kept, entries): (Vec<_>, Vec<_>) = sync
            .parts
            .into_iter()
            .partition(|e| self.delivery.is_local(e.jid.domain().as_str()));
        if !entries.is_empty() {
            warn!(node = %env.node, "dropped sessions not of our domains from a snapshot");
        }
        let dropped = self.delivery.router().replace_node(&peer.sink, kept);
        peer.seq = seq;
        if std::mem::take(&mut peer.rejoined) {
            info!(node = %env.node, "node is back: sessions here re-announce their presence");
            self.delivery
                .router()
                .tell_local(|| ToSession::ClusterRejoined);
        }
        let mut waiting = sync.waiting;
        waiting.sort_by_key(|(s, _)| *s);
        for (s, change) in waiting {
            if s <= peer.seq {
                continue;
            }
            if s != peer.seq + 1 {
                self.ask_snapshot(&env.node, peer);
                break;
            }
            peer.seq = s;
            self.apply(&peer.sink, change);
        }
        drop(peers);
        self.announce_gone(dropped);
    }

    /// Drops the sessions of nodes not heard from for [`EXPIRY`], and asks again for
    /// snapshots that did not come.
    fn expire(&self) {
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (_, at)| at.elapsed() < ENDED_GRACE);
        let dead: Vec<String> = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            let dead: Vec<String> = peers
                .iter()
                .filter(|(_, p)| p.heard.elapsed() > EXPIRY)
                .map(|(n, _)| n.clone())
                .collect();
            let mut expired = self.expired.lock().unwrap_or_else(|p| p.into_inner());
            for n in &dead {
                if let Some(p) = peers.remove(n) {
                    expired.insert(n.clone(), p.epoch);
                }
            }
            self.synced.notify_waiters();
            drop(expired);
            let late: Vec<String> = peers
                .iter()
                .filter(|(_, p)| {
                    p.sync
                        .as_ref()
                        .is_some_and(|s| s.asked.elapsed() > SNAPSHOT_TIMEOUT)
                })
                .map(|(n, _)| n.clone())
                .collect();
            for n in late {
                if let Some(p) = peers.get_mut(&n) {
                    self.ask_snapshot(&n, p);
                }
            }
            dead
        };
        for node in dead {
            warn!(%node, silent_for = ?EXPIRY, "node is silent: taking its sessions for gone");
            self.gone(&node);
        }
    }

    /// A node is gone: its sessions leave the directory, and the contacts here of those
    /// that were available are told.
    fn gone(&self, node: &str) {
        let dropped = self.delivery.router().drop_node(node);
        self.announce_gone(dropped);
        self.services.node_gone(&self.delivery, node);
        self.links.node_gone(node);
        self.claim_soon.notify_one();
    }

    fn announce_gone(&self, sessions: Vec<SessionEntry>) {
        let gone: Vec<SessionEntry> = sessions.into_iter().filter(|e| e.available).collect();
        if gone.is_empty() {
            return;
        }
        let d = self.delivery.clone();
        // One node tells the contacts on other servers: the first of those left.
        let remote = self.first_left();
        self.tasks.spawn(async move {
            for e in gone {
                unavailable_here(&d, &e.jid, remote).await;
            }
        });
    }

    /// Whether this node's id comes first among the live nodes it hears.
    fn first_left(&self) -> bool {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.keys().all(|n| **n > *self.bus.node_id)
    }

    /// A message on this node's own subject.
    fn on_mine(&self, payload: &[u8], tasks: &Tasks) {
        let Some(env) = self.parse(payload) else {
            return;
        };
        if let Body::SnapshotRequest { inbox, request } = env.body {
            // A node that starts asks before its first heartbeat: meet it on the way.
            self.meet(&env.node, &env.epoch);
            self.send_snapshot(inbox, request);
            return;
        }
        let syncing = {
            let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            let peer = peers.get(&env.node).filter(|p| p.epoch == env.epoch);
            peer.map(|p| p.sync.is_some())
        };
        let Some(syncing) = syncing else {
            warn!(node = %env.node, "dropped a message from a node not in the cluster");
            return;
        };
        match env.body {
            Body::Deliver { to, msg } => self.deliver_here(&env.node, syncing, to, msg, tasks),
            Body::Copies { to, xml } => self.copies_here(&env.node, syncing, to, &xml, tasks),
            Body::Service {
                service,
                xml,
                request,
            } => self.serve_forwarded(&env.node, syncing, &service, &xml, request),
            Body::ServiceDone { request, result } => {
                self.services.answered(&env.node, &request, result)
            }
            Body::PrefsRead { request } => self.prefs_read(&request),
            Body::Answer { xml } => self.answered_elsewhere(&env.node, &xml),
            Body::Resumed { request, result } => self.on_resumed(&env.node, request, result),
            Body::ResumeTaken { request, taken } => self.on_resume_taken(&request, taken),
            body @ (Body::S2sSend { .. }
            | Body::S2sWake { .. }
            | Body::S2sVerify { .. }
            | Body::S2sVerdict { .. }
            | Body::S2sMoved { .. }) => self.on_links(&env.node, syncing, body),
            _ => debug!(node = %env.node, "unexpected message on this node's subject"),
        }
    }

    /// The answer to a request of this node that came in at `node`.
    fn answered_elsewhere(&self, node: &str, xml: &str) {
        let answered = read_stanza(xml.as_bytes(), self.limits)
            .filter(|el| el.name() == "iq")
            .is_some_and(|el| self.delivery.request_answered(&el));
        if !answered {
            debug!(%node, "an answer passed on by another node matched no request");
        }
    }

    /// Sends this node's sessions as of now, in parts, to `inbox`. The number is taken
    /// before the sessions are read: a change made meanwhile is in the snapshot and also
    /// applied after it, which leaves the same state (changes are idempotent).
    fn send_snapshot(&self, inbox: String, request: String) {
        let seq = self.bus.seq();
        let entries = self.delivery.router().local_entries();
        let mut parts: Vec<Vec<SessionEntry>> =
            entries.chunks(SNAPSHOT_PART).map(<[_]>::to_vec).collect();
        if parts.is_empty() {
            parts.push(Vec::new());
        }
        let n = parts.len();
        for (i, entries) in parts.into_iter().enumerate() {
            let body = Body::Snapshot {
                request: request.clone(),
                seq,
                entries,
                last: i + 1 == n,
            };
            if !self.bus.publish(inbox.clone(), body) {
                warn!("snapshot not sent: the queue is full (the node will ask again)");
                return;
            }
        }
    }

    /// Something another node's router sent to a session here.
    fn deliver_here(&self, node: &str, syncing: bool, to: FullJid, msg: Msg, tasks: &Tasks) {
        let Some(msg) = msg.into_session(self.limits) else {
            warn!(%node, "dropped a cluster delivery that does not parse");
            return;
        };
        // While its snapshot is on the way, the directory cannot say what the node holds.
        if let Some(claimed) = self.forged_sender(node, &msg).filter(|_| !syncing) {
            warn!(%node, from = %claimed, "dropped a stanza from a session that node does not hold");
            return;
        }
        self.deliver_one(msg, to, tasks);
    }

    /// A stanza for several sessions here: read once, and each gets a copy addressed to it.
    fn copies_here(&self, node: &str, syncing: bool, to: Vec<FullJid>, xml: &str, tasks: &Tasks) {
        let Some(el) = read_stanza(xml.as_bytes(), self.limits) else {
            warn!(%node, "dropped a cluster delivery that does not parse");
            return;
        };
        let msg = ToSession::Stanza(el);
        if let Some(claimed) = self.forged_sender(node, &msg).filter(|_| !syncing) {
            warn!(%node, from = %claimed, "dropped a stanza from a session that node does not hold");
            return;
        }
        let ToSession::Stanza(el) = msg else {
            return;
        };
        for jid in to {
            let mut copy = el.clone();
            stanza::set_attr(&mut copy, "to", jid.as_str());
            self.deliver_one(ToSession::Stanza(copy), jid, tasks);
        }
    }

    /// What another node sent for the session `to`: to it if it is still here, otherwise
    /// what the router would do with it locally.
    fn deliver_one(&self, msg: ToSession, to: FullJid, tasks: &Tasks) {
        let router = self.delivery.router();
        if router.holder(&to) != Some(None) {
            // Not ours (any more): what the router would do with it locally.
            self.undelivered(msg, &to, tasks);
            return;
        }
        match router.send_to_full(&to, msg) {
            Ok(()) => {}
            Err(Undelivered::NotBound(msg) | Undelivered::Full(msg)) => {
                self.undelivered(msg, &to, tasks)
            }
        }
    }

    /// A stanza another node forwarded to a service this node runs; for a message, the
    /// sender's node is told once what it wrote is committed.
    fn serve_forwarded(
        &self,
        node: &str,
        syncing: bool,
        service: &str,
        xml: &str,
        request: Option<String>,
    ) {
        let bus = self.bus.clone();
        let to = node.to_owned();
        let reply = move |result: Result<i64, String>| {
            if let Some(request) = request {
                let body = Body::ServiceDone { request, result };
                bus.publish(bus.node_subject(&to), body);
            }
        };
        let Some(el) = read_stanza(xml.as_bytes(), self.limits) else {
            warn!(%node, "dropped a forwarded stanza that does not parse");
            return;
        };
        let claimed = el.attr("from").and_then(|f| Jid::new(f).ok());
        if let Some(from) = claimed
            .and_then(|f| self.forged(node, &f))
            .filter(|_| !syncing)
        {
            warn!(%node, %from, "dropped a stanza from a session that node does not hold");
            return;
        }
        let d = &self.delivery;
        match self.services.serve_forwarded(d, service, el) {
            Ok(pending) => {
                let answer = async move { reply(pending.await.map_err(|e| e.to_string())) };
                self.tasks.spawn(answer);
            }
            // The room moved on, or the service is busy: the sender heard, and tries again.
            Err(why) => reply(Err(why.to_owned())),
        }
    }

    /// The full JID of ours a stanza or probe claims to come from, if the sending node
    /// does not hold that session and did not a moment ago (a session's last stanzas, its
    /// unavailable presence among them, may be read after its end: changes are read
    /// first). Errors are exempt: a node answers for a session that just ended there.
    fn forged_sender(&self, node: &str, msg: &ToSession) -> Option<String> {
        let from = match msg {
            ToSession::Stanza(el) if el.attr("type") != Some("error") => {
                el.attr("from").and_then(|f| Jid::new(f).ok())?
            }
            ToSession::Probe { from } => from.clone(),
            _ => return None,
        };
        self.forged(node, &from)
    }

    /// `from`, if it is a session of ours that `node` does not hold (see
    /// [`Cluster::forged_sender`]).
    pub(super) fn forged(&self, node: &str, from: &Jid) -> Option<String> {
        let full = from.try_as_full().ok()?;
        if !self.delivery.is_local(full.domain().as_str()) {
            return None;
        }
        match self.delivery.router().holder(full) {
            Some(Some(holder)) if holder == node => None,
            Some(_) => Some(full.to_string()),
            None => {
                let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
                match ended.get(full) {
                    Some((by, _)) if by == node => None,
                    _ => Some(full.to_string()),
                }
            }
        }
    }

    /// A message for a session that is no longer here, or cannot take it: kept for the
    /// user as on one node (chat and normal messages in the offline store).
    fn undelivered(&self, msg: ToSession, to: &FullJid, tasks: &Tasks) {
        let ToSession::Stanza(el) = msg else {
            return;
        };
        if el.name() != "message" || !matches!(stanza::stanza_type(&el), "chat" | "normal") {
            return;
        }
        let d = self.delivery.clone();
        let user = to.to_bare();
        tasks.spawn(async move {
            if let Ok(accepted) = d.store_offline(el, &user).await {
                let _ = accepted.settle().await;
            }
        });
    }
}

/// Tells this node's sessions that `jid`, a session of a node that is gone, is
/// unavailable: those of the user's contacts who see its presence, and the user's own;
/// with `remote`, the contacts on other servers too.
async fn unavailable_here(d: &Delivery, jid: &FullJid, remote: bool) {
    let user = jid.to_bare();
    d.caps().unavailable(jid);
    let presence = stanza::presence(Some("unavailable"), jid.as_str(), None);
    let roster = match d.store().roster(user.as_str()).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, %user, "cannot read the roster of a gone session's user");
            return;
        }
    };
    let sees = roster
        .items
        .iter()
        .filter(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
        .filter_map(|i| BareJid::new(&i.jid).ok())
        .chain([user]);
    for contact in sees {
        if d.is_local(contact.domain().as_str()) {
            local_presence(d, &presence, &contact);
        } else if remote {
            d.presence_to_bare(&presence, &contact);
        }
    }
}

/// Sends a presence to the available sessions of `to` on this node only.
fn local_presence(d: &Delivery, el: &Element, to: &BareJid) {
    let mut addressed = el.clone();
    stanza::set_attr(&mut addressed, "to", to.as_str());
    for (_, mailbox) in d.router().available(to) {
        if let Mailbox::Local(_) = mailbox {
            let _ = crate::router::deliver(&mailbox, ToSession::Stanza(addressed.clone()));
        }
    }
}
