//! Services one node runs for the whole cluster: each multi-user chat service (its rooms
//! live in one task, so one node at a time holds them). The node holding the lease
//! `muc:<service>` in PostgreSQL runs the service; the others register a forwarder in its
//! place that passes each stanza for it to that node over NATS, and, for a message, waits
//! for the owner to say its archive row is committed before the sender is acknowledged.
//! Every node tries to take each lease every [`LEASE_RENEW`](super::LEASE_RENEW): the owner renews it, and
//! when the owner dies its lease ends and the first node to try after that starts the
//! service from the store (rooms, affiliations, history from the archive). Occupants are
//! not in the store: after a takeover, clients join again (XEP-0410 self-pings tell them
//! to); an occupant on a node that died leaves its rooms at the next message there (the
//! room's message to a session no longer anywhere fails).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minidom::Element;
use outpost_store::{ClusterLease, StoreError};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::wire::Body;
use super::{Bus, LEASE};
use crate::config::MucConfig;
use crate::delivery::{Component, Delivery};
use crate::journal::Pending;
use crate::tasks::Tasks;

/// How long a forwarded message waits for its owner's answer.
const ANSWER: Duration = Duration::from_secs(10);

type Done = oneshot::Sender<Result<i64, StoreError>>;

/// One service and who runs it.
struct Service {
    service: String,
    domain: String,
    /// The node that held the lease at the last try (this node's id when it runs it).
    owner: Mutex<Option<String>>,
    /// Stops the service's task, while this node runs it.
    running: Mutex<Option<CancellationToken>>,
}

/// The cluster's services as this node sees them, and the forwarded messages awaiting
/// their owner's answer.
pub(super) struct Services {
    services: Vec<Arc<Service>>,
    config: MucConfig,
    waiting: Mutex<HashMap<String, (Done, Instant)>>,
}

impl Services {
    pub(super) fn new(services: Vec<(String, String)>, config: MucConfig) -> Services {
        let services = services
            .into_iter()
            .map(|(service, domain)| {
                Arc::new(Service {
                    service,
                    domain,
                    owner: Mutex::new(None),
                    running: Mutex::new(None),
                })
            })
            .collect();
        Services {
            services,
            config,
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a forwarder for every service (replaced by the service itself where this
    /// node takes its lease).
    pub(super) fn forward_all(self: &Arc<Self>, d: &Delivery, bus: &Arc<Bus>) {
        for s in &self.services {
            self.forward(s, d, bus);
        }
    }

    fn forward(self: &Arc<Self>, s: &Arc<Service>, d: &Delivery, bus: &Arc<Bus>) {
        let forwarder = Forwarder {
            service: s.clone(),
            services: self.clone(),
            bus: bus.clone(),
        };
        d.register(&s.service, &s.domain, Arc::new(forwarder));
    }

    /// Takes or renews each service's lease; starts the services this node now holds,
    /// stops those it lost.
    pub(super) async fn claim(
        self: &Arc<Self>,
        d: &Arc<Delivery>,
        bus: &Arc<Bus>,
        tasks: &Tasks,
        shutdown: &CancellationToken,
    ) {
        for s in &self.services {
            let now = crate::clock::now_ms();
            let want = ClusterLease {
                name: format!("muc:{}", s.service),
                node_id: bus.node_id.to_string(),
                epoch: bus.epoch.clone(),
                until_ms: now + LEASE.as_millis() as i64,
            };
            let lease = match d.store().lease_take(&want, now).await {
                Ok(lease) => lease,
                Err(e) => {
                    warn!(service = %s.service, error = %e, "cannot renew the service's lease");
                    continue;
                }
            };
            let mine = lease.node_id == want.node_id && lease.epoch == want.epoch;
            *s.owner.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease.node_id.clone());
            let start = {
                let mut running = s.running.lock().unwrap_or_else(|p| p.into_inner());
                match (mine, running.as_ref()) {
                    (true, None) => {
                        let stop = shutdown.child_token();
                        *running = Some(stop.clone());
                        Some(stop)
                    }
                    (false, Some(stop)) => {
                        warn!(service = %s.service, owner = %lease.node_id,
                              "another node took the service's lease: stopping it here");
                        stop.cancel();
                        *running = None;
                        self.forward(s, d, bus);
                        None
                    }
                    _ => None,
                }
            };
            if let Some(stop) = start {
                info!(service = %s.service, "this node runs the service now");
                let (service, domain) = (s.service.clone(), s.domain.clone());
                let task =
                    crate::muc::start(d.clone(), service, domain, self.config.clone(), stop).await;
                tasks.spawn(task);
            }
        }
        self.expire_waiting();
    }

    /// Forwarded messages whose owner did not answer in time: their senders get an error.
    fn expire_waiting(&self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let late: Vec<String> = waiting
            .iter()
            .filter(|(_, (_, at))| at.elapsed() > ANSWER)
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            if let Some((done, _)) = waiting.remove(&id) {
                let _ = done.send(Err(StoreError::Backend(
                    "the node running the service did not answer".into(),
                )));
            }
        }
    }

    /// `node` is gone: the services it ran have no owner until one takes them (a stanza
    /// for them meanwhile is refused with a temporary error rather than sent nowhere).
    /// Returns whether it ran any.
    pub(super) fn node_gone(&self, node: &str) -> bool {
        let mut ran = false;
        for s in &self.services {
            let mut owner = s.owner.lock().unwrap_or_else(|p| p.into_inner());
            if owner.as_deref() == Some(node) {
                *owner = None;
                ran = true;
            }
        }
        ran
    }

    /// Whether this node runs `service` now.
    pub(super) fn runs(&self, service: &str) -> bool {
        self.services.iter().any(|s| {
            s.service == service
                && s.running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some()
        })
    }

    /// The owner's answer to a forwarded message.
    pub(super) fn answered(&self, request: &str, result: Result<i64, String>) {
        let done = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(request);
        if let Some((done, _)) = done {
            let _ = done.send(result.map_err(|e| StoreError::Backend(e.into())));
        }
    }
}

/// What stands in for a service on the nodes that do not run it.
struct Forwarder {
    service: Arc<Service>,
    services: Arc<Services>,
    bus: Arc<Bus>,
}

impl Component for Forwarder {
    fn take(&self, el: Element) -> Result<Option<Pending>, Element> {
        let owner = self
            .service
            .owner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(owner) = owner.filter(|o| *o != *self.bus.node_id) else {
            // No owner known yet, or this node is taking it over.
            return Err(el);
        };
        let Some(xml) = super::wire::xml(&el) else {
            return Err(el);
        };
        let (request, pending) = match el.name() {
            "message" => {
                let (done, pending) = Pending::channel();
                let id = crate::ids::random_id(16);
                let mut waiting = self
                    .services
                    .waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                waiting.insert(id.clone(), (done, Instant::now()));
                (Some(id), Some(pending))
            }
            _ => (None, None),
        };
        let body = Body::Service {
            service: self.service.service.clone(),
            xml,
            request: request.clone(),
        };
        if self.bus.publish(self.bus.node_subject(&owner), body) {
            return Ok(pending);
        }
        if let Some(id) = request {
            self.services
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
        Err(el)
    }
}
