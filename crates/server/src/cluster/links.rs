//! Federation on a cluster: each link to another server (a pair of our domain and theirs)
//! runs on one node at a time, the holder of the lease `s2s:<local>/<remote>` in
//! PostgreSQL, so the pair's durable outbox is drained by one task. A link nobody runs is
//! taken by the node where its next stanza starts, so links spread over the nodes with
//! the traffic that makes them (as rooms do). The other nodes commit what they queue for
//! the pair into the shared outbox as usual and tell the owner to drain it; they pass it
//! what goes best-effort (presence, IQs) and the dialback keys to verify for peers that
//! connected to them. Peers may connect to any node: what they send is delivered there.
//!
//! What is asked of a link while this node takes its lease waits, in order, for the
//! answer. Each node extends its link leases every [`LEASE_RENEW`](super::LEASE_RENEW) in
//! one statement and stops a link whose lease it lost. When an owner dies its leases end
//! with its lease time; meanwhile every node keeps the best-effort stanzas for its links
//! (its users' unavailable presence among them) and looks, at each renewal, for links
//! nobody runs with stanzas queued or kept, takes their leases and resumes them from where
//! the outbox stands.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use jid::Jid;
use minidom::Element;
use outpost_proto::s2s::DialbackVerdict;
use outpost_proto::stanza::Condition;
use outpost_store::ClusterLease;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::wire::{Body, xml};
use super::{Cluster, LEASE};

/// The names of link leases start with this.
pub(super) const LINK_LEASE: &str = "s2s:";
/// How long a dialback verification passed to the owner may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long best-effort stanzas for a link that a gone node holds wait for a node to take
/// it (its lease ends within [`LEASE`]), and how many per link.
const PARK_FOR: Duration = Duration::from_secs(40);
const PARK_MAX: usize = 1000;

/// A link: our domain and the other server's.
pub(crate) type Pair = (String, String);

/// The links with stanzas queued, as federation reads them.
pub(crate) type Queued<'a> = Pin<Box<dyn Future<Output = Vec<Pair>> + Send + 'a>>;

/// The lease of a link.
fn lease_name(local: &str, remote: &str) -> String {
    format!("{LINK_LEASE}{local}/{remote}")
}

/// Where a link runs, as a node sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum LinkAt {
    Here,
    Node(String),
    /// A node that is gone still holds its lease (or the store did not answer).
    Nowhere,
}

/// What a node asks of a link, wherever it runs.
pub(crate) enum Ask {
    /// Send this best-effort.
    Send(Element),
    /// The pair's outbox has new entries.
    Wake,
    /// The peer connected to us: it is reachable again. Not worth taking a lease for.
    Reachable,
    /// Where the link runs (taking its lease if nobody holds it).
    Where(oneshot::Sender<LinkAt>),
}

/// What federation does for the cluster on the node that runs a link.
pub(crate) trait LinkHost: Send + Sync {
    /// Sends a stanza best-effort on the link for the pair.
    fn send(&self, local: &str, remote: &str, el: Element) -> Result<(), Element>;
    /// The pair's outbox has new entries.
    fn wake(&self, local: &str, remote: &str);
    /// The peer is reachable again: a link in back-off tries at once.
    fn reachable(&self, local: &str, remote: &str);
    /// Verifies a peer's dialback key over our link to it.
    fn verify<'a>(
        &'a self,
        local: &'a str,
        remote: &'a str,
        id: &'a str,
        key: &'a str,
    ) -> Pin<Box<dyn Future<Output = DialbackVerdict> + Send + 'a>>;
    /// This node lost the pair's lease: its link stops here.
    fn stop(&self, local: &str, remote: &str);
    /// The pairs of our domains with stanzas queued.
    fn queued(&self) -> Queued<'_>;
    /// A link came up at its owner: re-probe this node's sessions' contacts there.
    fn restored(&self, local: &str, remote: &str);
}

type VerdictTx = oneshot::Sender<DialbackVerdict>;

/// Each link's owner as this node learned it.
#[derive(Default)]
struct Owners {
    /// The owner (this node's id for its own) and when this node learned it.
    known: HashMap<Pair, (String, Instant)>,
    /// Links whose lease this node is taking, with what was asked of them meanwhile.
    taking: HashMap<Pair, Vec<Ask>>,
    /// Best-effort stanzas for links that a node that is gone still holds (such as the
    /// unavailable presence of its users), since when, until a node takes the link.
    parked: HashMap<Pair, (Instant, Vec<Element>)>,
}

/// The links' owners as this node knows them, and verifications awaiting an owner.
#[derive(Default)]
pub(super) struct Links {
    host: OnceLock<Arc<dyn LinkHost>>,
    owners: Mutex<Owners>,
    /// Whether to look for queued links nobody runs at the next renewal.
    sweep: AtomicBool,
    /// When this node last extended its link leases.
    renewed: Mutex<Option<Instant>>,
    waiting: Mutex<HashMap<String, (VerdictTx, Instant)>>,
}

impl Links {
    pub(super) fn host(&self) -> Option<&Arc<dyn LinkHost>> {
        self.host.get()
    }

    fn owners(&self) -> MutexGuard<'_, Owners> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<String, (VerdictTx, Instant)>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `node` is gone: the links it ran have no known owner until one takes them, and the
    /// next renewal looks for queued links nobody runs.
    pub(super) fn node_gone(&self, node: &str) {
        self.owners().known.retain(|_, (o, _)| o != node);
        self.sweep.store(true, Ordering::Relaxed);
    }

    fn expire_waiting(&self) {
        let mut waiting = self.waiting();
        let late: Vec<String> = waiting
            .iter()
            .filter(|(_, (_, at))| at.elapsed() > VERIFY_TIMEOUT)
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            if let Some((tx, _)) = waiting.remove(&id) {
                let _ = tx.send(DialbackVerdict::Error("remote-server-timeout"));
            }
        }
    }
}

impl Cluster {
    /// Federation on this node: it runs the links whose leases it holds. The next
    /// renewal resumes queued links nobody runs (all of them, when the whole cluster
    /// starts).
    pub(crate) fn host_links(&self, host: Arc<dyn LinkHost>) {
        let _ = self.links.host.set(host);
        self.sweep_links();
    }

    /// Looks for queued links nobody runs at the next renewal, which comes at once.
    pub(crate) fn sweep_links(&self) {
        self.links.sweep.store(true, Ordering::Relaxed);
        self.claim_soon.notify_one();
    }

    /// Asks the pair's link: at once where it is known to run, otherwise once this node
    /// has taken its lease or learned who holds it (what is asked meanwhile waits, in
    /// order). Gives a best-effort stanza back only when it cannot be taken on now; one
    /// that fails later is bounced.
    pub(crate) fn ask_link(
        self: &Arc<Self>,
        local: &str,
        remote: &str,
        ask: Ask,
    ) -> Result<(), Element> {
        let pair = (local.to_owned(), remote.to_owned());
        let mut owners = self.links.owners();
        if let Some((owner, _)) = owners.known.get(&pair) {
            let at = self.at(owner);
            drop(owners);
            return self.dispatch(&pair, &at, ask);
        }
        if matches!(ask, Ask::Reachable) {
            return Ok(());
        }
        if let Some(asked) = owners.taking.get_mut(&pair) {
            asked.push(ask);
            return Ok(());
        }
        owners.taking.insert(pair.clone(), vec![ask]);
        drop(owners);
        let c = self.clone();
        self.tasks.spawn(async move { c.take_link(pair).await });
        Ok(())
    }

    /// Where the pair's link runs, taking its lease if nobody holds it.
    pub(crate) async fn link_at(self: &Arc<Self>, local: &str, remote: &str) -> LinkAt {
        let (tx, rx) = oneshot::channel();
        let _ = self.ask_link(local, remote, Ask::Where(tx));
        rx.await.unwrap_or(LinkAt::Nowhere)
    }

    fn at(&self, owner: &str) -> LinkAt {
        match owner == &*self.bus.node_id {
            true => LinkAt::Here,
            false => LinkAt::Node(owner.to_owned()),
        }
    }

    /// Takes the pair's lease or learns its holder, then carries out what was asked of
    /// the link meanwhile, in order (under the lock, so nothing asked later overtakes it).
    async fn take_link(self: Arc<Self>, pair: Pair) {
        let at = self.claim_link(&pair).await;
        let mut failed = Vec::new();
        {
            let mut owners = self.links.owners();
            let mut asked = owners.taking.remove(&pair).unwrap_or_default();
            let owner = match &at {
                LinkAt::Here => Some(self.bus.node_id.to_string()),
                LinkAt::Node(n) => Some(n.clone()),
                LinkAt::Nowhere => None,
            };
            if let Some(o) = owner {
                owners.known.insert(pair.clone(), (o, Instant::now()));
                if let Some((_, parked)) = owners.parked.remove(&pair) {
                    asked.splice(0..0, parked.into_iter().map(Ask::Send));
                }
            }
            for ask in asked {
                let result = match (&at, ask) {
                    (LinkAt::Nowhere, Ask::Send(el)) => park(&mut owners, &pair, el),
                    (at, ask) => self.dispatch(&pair, at, ask),
                };
                if let Err(el) = result {
                    failed.push(el);
                }
            }
        }
        match (&at, self.links.host()) {
            // Whatever is queued for the pair is this node's to drain now.
            (LinkAt::Here, Some(host)) => host.wake(&pair.0, &pair.1),
            // The next renewals try again, until the gone node's lease has ended.
            (LinkAt::Nowhere, _) => self.links.sweep.store(true, Ordering::Relaxed),
            _ => {}
        }
        let busy = Condition::RemoteServerTimeout;
        for el in failed {
            self.delivery.bounce(&el, busy.into());
        }
    }

    /// Takes the pair's lease if nobody (live) holds it.
    async fn claim_link(&self, (local, remote): &Pair) -> LinkAt {
        let now = crate::clock::now_ms();
        let want = ClusterLease {
            name: lease_name(local, remote),
            node_id: self.bus.node_id.to_string(),
            epoch: self.bus.epoch.clone(),
            until_ms: now + LEASE.as_millis() as i64,
        };
        let lease = match self.delivery.store().lease_take(&want, now).await {
            Ok(lease) => lease,
            Err(e) => {
                warn!(%local, %remote, error = %e, "cannot take a link's lease");
                return LinkAt::Nowhere;
            }
        };
        if lease.node_id == want.node_id && lease.epoch == want.epoch {
            info!(%local, %remote, "this node runs the link now");
            return LinkAt::Here;
        }
        match self.is_live(&lease.node_id, &lease.epoch) {
            true => LinkAt::Node(lease.node_id),
            false => LinkAt::Nowhere,
        }
    }

    /// Carries out what was asked of a link that runs `at`.
    fn dispatch(&self, (local, remote): &Pair, at: &LinkAt, ask: Ask) -> Result<(), Element> {
        let host = self.links.host();
        match (at, ask) {
            (at, Ask::Where(tx)) => {
                let _ = tx.send(at.clone());
            }
            (LinkAt::Here, Ask::Send(el)) => match host {
                Some(h) => return h.send(local, remote, el),
                None => return Err(el),
            },
            (LinkAt::Here, Ask::Wake) => host.iter().for_each(|h| h.wake(local, remote)),
            (LinkAt::Here, Ask::Reachable) => host.iter().for_each(|h| h.reachable(local, remote)),
            (LinkAt::Node(n), Ask::Send(el)) => return self.send_remote(n, local, remote, el),
            (LinkAt::Node(n), Ask::Wake | Ask::Reachable) => self.wake_remote(n, local, remote),
            (LinkAt::Nowhere, Ask::Send(el)) => return Err(el),
            // The next renewals try again, until the gone node's lease has ended.
            (LinkAt::Nowhere, _) => self.links.sweep.store(true, Ordering::Relaxed),
        }
        Ok(())
    }

    /// Extends this node's link leases and stops the links it lost; looks for queued
    /// links nobody runs when there may be some (see [`Links::sweep`]).
    pub(super) async fn renew_links(self: &Arc<Self>) {
        let Some(host) = self.links.host() else {
            return;
        };
        let (me, started) = (&*self.bus.node_id, Instant::now());
        let until = crate::clock::now_ms() + LEASE.as_millis() as i64;
        let store = self.delivery.store();
        let lost: Vec<Pair> = match store
            .leases_extend(me, &self.bus.epoch, LINK_LEASE, until)
            .await
        {
            Ok(held) => {
                *self.links.renewed.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
                let mut owners = self.links.owners();
                owners
                    .known
                    .extract_if(|(l, r), (o, learned)| {
                        o == me && *learned < started && !held.contains(&lease_name(l, r))
                    })
                    .map(|(pair, _)| pair)
                    .collect()
            }
            Err(e) => {
                warn!(error = %e, "cannot renew this node's link leases");
                self.lapsed_links(me)
            }
        };
        for (local, remote) in lost {
            warn!(%local, %remote, "this node lost the link's lease: it stops here");
            host.stop(&local, &remote);
        }
        self.links.expire_waiting();
        self.expire_parked();
        if self.links.sweep.swap(false, Ordering::Relaxed) {
            let parked: Vec<Pair> = self.links.owners().parked.keys().cloned().collect();
            for (local, remote) in host.queued().await.into_iter().chain(parked) {
                let _ = self.ask_link(&local, &remote, Ask::Wake);
            }
        }
    }

    /// Bounces the parked stanzas whose link nobody took in time.
    fn expire_parked(&self) {
        let late: Vec<Element> = {
            let mut owners = self.links.owners();
            let late = owners
                .parked
                .extract_if(|_, (since, _)| since.elapsed() > PARK_FOR);
            late.flat_map(|(_, (_, parked))| parked).collect()
        };
        for el in late {
            let busy = Condition::RemoteServerTimeout;
            self.delivery.bounce(&el, busy.into());
        }
    }

    /// The links this node runs, once its leases may have ended without it renewing them
    /// (the store did not answer for a whole lease): another node may run them now.
    fn lapsed_links(&self, me: &str) -> Vec<Pair> {
        let renewed = *self.links.renewed.lock().unwrap_or_else(|p| p.into_inner());
        let mut owners = self.links.owners();
        owners
            .known
            .extract_if(|_, (o, learned)| {
                let since = renewed.map_or(*learned, |r| r.max(*learned));
                o == me && since.elapsed() >= LEASE
            })
            .map(|(pair, _)| pair)
            .collect()
    }

    /// Passes a best-effort stanza for another domain to the node running its link.
    fn send_remote(
        &self,
        node: &str,
        local: &str,
        remote: &str,
        el: Element,
    ) -> Result<(), Element> {
        let Some(xml) = xml(&el) else {
            return Err(el);
        };
        let body = Body::S2sSend {
            local: local.to_owned(),
            remote: remote.to_owned(),
            xml,
        };
        match self.bus.publish(self.bus.node_subject(node), body) {
            true => Ok(()),
            false => Err(el),
        }
    }

    /// Tells the node running the pair's link that its outbox has new entries.
    fn wake_remote(&self, node: &str, local: &str, remote: &str) {
        let body = Body::S2sWake {
            local: local.to_owned(),
            remote: remote.to_owned(),
        };
        self.bus.publish(self.bus.node_subject(node), body);
    }

    /// Asks the node running the pair's link to verify a dialback key.
    pub(crate) async fn verify_remote(
        &self,
        node: &str,
        local: &str,
        remote: &str,
        id: &str,
        key: &str,
    ) -> DialbackVerdict {
        let request = crate::ids::random_id(16);
        let (tx, rx) = oneshot::channel();
        self.links
            .waiting()
            .insert(request.clone(), (tx, Instant::now()));
        let body = Body::S2sVerify {
            local: local.to_owned(),
            remote: remote.to_owned(),
            id: id.to_owned(),
            key: key.to_owned(),
            request: request.clone(),
        };
        if !self.bus.publish(self.bus.node_subject(node), body) {
            self.links.waiting().remove(&request);
            return DialbackVerdict::Error("resource-constraint");
        }
        match tokio::time::timeout(VERIFY_TIMEOUT, rx).await {
            Ok(Ok(verdict)) => verdict,
            _ => DialbackVerdict::Error("remote-server-timeout"),
        }
    }

    /// Tells every node that a link came up, so each re-probes for its own sessions.
    pub(crate) fn link_restored(&self, local: &str, remote: &str) {
        let body = Body::LinkUp {
            local: local.to_owned(),
            remote: remote.to_owned(),
        };
        self.bus.publish(self.bus.dir_subject(), body);
    }

    /// Whether this node runs the pair's link, as far as it knows.
    fn runs_here(&self, local: &str, remote: &str) -> bool {
        let pair = (local.to_owned(), remote.to_owned());
        let owners = self.links.owners();
        owners
            .known
            .get(&pair)
            .is_some_and(|(o, _)| *o == *self.bus.node_id)
    }

    /// What another node asks of a link this node runs (or answers about one).
    pub(super) fn on_links(&self, node: &str, syncing: bool, body: Body) {
        let Some(host) = self.links.host() else {
            warn!(%node, "federation request, but federation is off here");
            return;
        };
        match body {
            Body::S2sSend { local, remote, xml } => {
                let limits = self.limits;
                let Some(el) = outpost_proto::xml::read_stanza(xml.as_bytes(), limits) else {
                    warn!(%node, "dropped a stanza for another domain that does not parse");
                    return;
                };
                let from = el.attr("from").and_then(|f| Jid::new(f).ok());
                if let Some(f) = from
                    .and_then(|f| self.forged(node, &f))
                    .filter(|_| !syncing)
                {
                    warn!(%node, from = %f, "dropped a stanza from a session that node does not hold");
                    return;
                }
                if let Err(el) = self.forwarded(node, (local, remote), Ask::Send(el)) {
                    let busy = Condition::RemoteServerTimeout;
                    self.delivery.bounce(&el, busy.into());
                }
            }
            Body::S2sWake { local, remote } => {
                let _ = self.forwarded(node, (local, remote), Ask::Wake);
            }
            body @ Body::S2sVerify { .. } => self.verify_for(node, host, body),
            Body::S2sVerdict { request, verdict } => {
                let waiting = self.links.waiting().remove(&request);
                if let Some((tx, _)) = waiting {
                    let _ = tx.send(parse_verdict(&verdict));
                }
            }
            Body::S2sMoved { local, remote } => {
                let pair = (local, remote);
                let mut owners = self.links.owners();
                if owners.known.get(&pair).is_some_and(|(o, _)| o == node) {
                    owners.known.remove(&pair);
                }
                // What was queued meanwhile is resumed by whoever runs the link now.
                self.links.sweep.store(true, Ordering::Relaxed);
            }
            Body::LinkUp { local, remote } => host.restored(&local, &remote),
            _ => {}
        }
    }

    /// Verifies a dialback key for another node over a link this node runs; one it does
    /// not run gets an error (the peer tries again).
    fn verify_for(&self, node: &str, host: &Arc<dyn LinkHost>, body: Body) {
        let Body::S2sVerify {
            local,
            remote,
            id,
            key,
            request,
        } = body
        else {
            return;
        };
        let (host, bus, to) = (host.clone(), self.bus.clone(), node.to_owned());
        let here = self.runs_here(&local, &remote);
        if !here {
            self.moved(node, &local, &remote);
        }
        self.tasks.spawn(async move {
            let verdict = match here {
                true => host.verify(&local, &remote, &id, &key).await,
                false => DialbackVerdict::Error("remote-connection-failed"),
            };
            let verdict = match verdict {
                DialbackVerdict::Valid => "valid".to_owned(),
                DialbackVerdict::Invalid => "invalid".to_owned(),
                DialbackVerdict::Error(c) => c.to_owned(),
            };
            let body = Body::S2sVerdict { request, verdict };
            bus.publish(bus.node_subject(&to), body);
        });
    }

    /// What another node asks of a link it takes to run here: done if it does, or once
    /// this node's claim of its lease is answered; otherwise `node` hears that it does not
    /// (a best-effort stanza comes back, to be bounced).
    fn forwarded(&self, node: &str, pair: Pair, ask: Ask) -> Result<(), Element> {
        let mut owners = self.links.owners();
        if owners
            .known
            .get(&pair)
            .is_some_and(|(o, _)| *o == *self.bus.node_id)
        {
            drop(owners);
            return self.dispatch(&pair, &LinkAt::Here, ask);
        }
        if let Some(asked) = owners.taking.get_mut(&pair) {
            asked.push(ask);
            return Ok(());
        }
        drop(owners);
        self.moved(node, &pair.0, &pair.1);
        match ask {
            Ask::Send(el) => Err(el),
            _ => Ok(()),
        }
    }

    /// Tells `node`, which asked this node for a link it does not run, to forget that
    /// owner.
    fn moved(&self, node: &str, local: &str, remote: &str) {
        warn!(%node, %local, %remote, "asked for a link this node does not run");
        let body = Body::S2sMoved {
            local: local.to_owned(),
            remote: remote.to_owned(),
        };
        self.bus.publish(self.bus.node_subject(node), body);
    }
}

/// Keeps a best-effort stanza for a link that a gone node holds until a node takes it;
/// gives it back when too many wait.
fn park(owners: &mut Owners, pair: &Pair, el: Element) -> Result<(), Element> {
    let (_, parked) = owners
        .parked
        .entry(pair.clone())
        .or_insert_with(|| (Instant::now(), Vec::new()));
    match parked.len() < PARK_MAX {
        true => {
            parked.push(el);
            Ok(())
        }
        false => Err(el),
    }
}

/// A verdict from the wire; an unknown condition is `remote-connection-failed`.
fn parse_verdict(s: &str) -> DialbackVerdict {
    const CONDITIONS: &[&str] = &[
        "remote-connection-failed",
        "remote-server-timeout",
        "resource-constraint",
        "internal-server-error",
    ];
    match s {
        "valid" => DialbackVerdict::Valid,
        "invalid" => DialbackVerdict::Invalid,
        other => DialbackVerdict::Error(
            CONDITIONS
                .iter()
                .find(|c| **c == other)
                .unwrap_or(&"remote-connection-failed"),
        ),
    }
}
