//! Federation on a cluster: one node at a time runs the links to other servers (the holder
//! of the lease `s2s` in PostgreSQL), so each link's durable outbox is drained by one task.
//! The other nodes commit what they queue for other domains into the shared outbox as
//! usual and tell the owner to drain it; they pass it what is sent best-effort (presence,
//! IQs) and the dialback keys to verify for peers that connected to them. Peers may
//! connect to any node: what they send is delivered there. When the owner dies its lease
//! ends, the next node to try takes it and resumes every link with stanzas queued, from
//! where the outbox stands.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use jid::Jid;
use minidom::Element;
use outpost_proto::s2s::DialbackVerdict;
use outpost_store::ClusterLease;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::wire::{Body, xml};
use super::{Cluster, LEASE};

/// The lease on running the cluster's federation links.
const LEASE_NAME: &str = "s2s";
/// How long a dialback verification passed to the owner may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the cluster's links run, as a node sees it.
pub(crate) enum LinksAt {
    Here,
    Node(String),
    /// No node holds the lease now (its holder died and nobody took it yet).
    Nowhere,
}

/// What federation does for the cluster on the node that runs the links.
pub(crate) trait LinkHost: Send + Sync {
    /// Sends a stanza best-effort on the link for the pair.
    fn send(&self, local: &str, remote: &str, el: Element) -> Result<(), Element>;
    /// The pair's outbox has new entries (or its peer is reachable again).
    fn wake(&self, local: &str, remote: &str);
    /// Verifies a peer's dialback key over our link to it.
    fn verify<'a>(
        &'a self,
        local: &'a str,
        remote: &'a str,
        id: &'a str,
        key: &'a str,
    ) -> Pin<Box<dyn Future<Output = DialbackVerdict> + Send + 'a>>;
    /// This node now runs the links: resume those with stanzas queued.
    fn took_over(self: Arc<Self>);
    /// A link came up on the owner: re-probe this node's sessions' contacts there.
    fn restored(&self, local: &str, remote: &str);
}

type VerdictTx = oneshot::Sender<DialbackVerdict>;

/// The links' owner as this node knows it, and verifications awaiting the owner.
#[derive(Default)]
pub(super) struct Links {
    host: OnceLock<Arc<dyn LinkHost>>,
    owner: Mutex<Option<String>>,
    waiting: Mutex<HashMap<String, (VerdictTx, Instant)>>,
}

impl Links {
    pub(super) fn host(&self) -> Option<&Arc<dyn LinkHost>> {
        self.host.get()
    }

    /// Takes or renews the lease; says so to federation when this node takes it over.
    pub(super) async fn claim(&self, c: &Cluster) {
        let Some(host) = self.host.get() else {
            return;
        };
        let now = crate::clock::now_ms();
        let want = ClusterLease {
            name: LEASE_NAME.to_owned(),
            node_id: c.bus.node_id.to_string(),
            epoch: c.bus.epoch.clone(),
            until_ms: now + LEASE.as_millis() as i64,
        };
        let lease = match c.delivery.store().lease_take(&want, now).await {
            Ok(lease) => lease,
            Err(e) => {
                warn!(error = %e, "cannot renew the federation lease");
                return;
            }
        };
        let mine = lease.node_id == want.node_id && lease.epoch == want.epoch;
        let before = self
            .owner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(lease.node_id.clone());
        let was_mine = before.as_deref() == Some(&*c.bus.node_id);
        if mine && !was_mine {
            info!("this node runs the federation links now");
            host.clone().took_over();
        } else if !mine && was_mine {
            warn!(owner = %lease.node_id, "another node took the federation lease");
        }
        self.expire_waiting();
    }

    /// `node` is gone: if it ran the links, nobody does until the lease is taken.
    pub(super) fn node_gone(&self, node: &str) -> bool {
        let mut owner = self.owner.lock().unwrap_or_else(|p| p.into_inner());
        if owner.as_deref() == Some(node) {
            *owner = None;
            return true;
        }
        false
    }

    fn expire_waiting(&self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
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
    /// Federation on this node: it runs the links when it holds the lease. Takes the
    /// lease now if nobody holds it.
    pub(crate) async fn host_links(&self, host: Arc<dyn LinkHost>) {
        let _ = self.links.host.set(host);
        self.links.claim(self).await;
    }

    /// Where the links run now.
    pub(crate) fn links_at(&self) -> LinksAt {
        let owner = self.links.owner.lock().unwrap_or_else(|p| p.into_inner());
        match owner.as_deref() {
            Some(o) if o == &*self.bus.node_id => LinksAt::Here,
            Some(o) => LinksAt::Node(o.to_owned()),
            None => LinksAt::Nowhere,
        }
    }

    /// Passes a best-effort stanza for another domain to the node running the links.
    pub(crate) fn send_remote(
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

    /// Tells the node running the links that the pair's outbox has new entries.
    pub(crate) fn wake_remote(&self, node: &str, local: &str, remote: &str) {
        let body = Body::S2sWake {
            local: local.to_owned(),
            remote: remote.to_owned(),
        };
        self.bus.publish(self.bus.node_subject(node), body);
    }

    /// Asks the node running the links to verify a dialback key.
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
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request.clone(), (tx, Instant::now()));
        let body = Body::S2sVerify {
            local: local.to_owned(),
            remote: remote.to_owned(),
            id: id.to_owned(),
            key: key.to_owned(),
            request: request.clone(),
        };
        if !self.bus.publish(self.bus.node_subject(node), body) {
            self.links
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&request);
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

    /// What another node asks of the links this node runs (or answers about them).
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
                if let Err(el) = host.send(&local, &remote, el) {
                    let busy = outpost_proto::stanza::Condition::RemoteServerTimeout;
                    self.delivery.bounce(&el, busy.into());
                }
            }
            Body::S2sWake { local, remote } => host.wake(&local, &remote),
            Body::S2sVerify {
                local,
                remote,
                id,
                key,
                request,
            } => {
                let (host, bus, to) = (host.clone(), self.bus.clone(), node.to_owned());
                self.tasks.spawn(async move {
                    let verdict = host.verify(&local, &remote, &id, &key).await;
                    let verdict = match verdict {
                        DialbackVerdict::Valid => "valid".to_owned(),
                        DialbackVerdict::Invalid => "invalid".to_owned(),
                        DialbackVerdict::Error(c) => c.to_owned(),
                    };
                    let body = Body::S2sVerdict { request, verdict };
                    bus.publish(bus.node_subject(&to), body);
                });
            }
            Body::S2sVerdict { request, verdict } => {
                let waiting = self
                    .links
                    .waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&request);
                if let Some((tx, _)) = waiting {
                    let _ = tx.send(parse_verdict(&verdict));
                }
            }
            Body::LinkUp { local, remote } => host.restored(&local, &remote),
            _ => {}
        }
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
