//! IQ requests the server itself sends to another server, waiting for their answers: the
//! result or error that comes back addressed to our domain, or the error our own side
//! makes when the stanza cannot leave (a link that failed).
//!
//! On a cluster the answer may come in at any node (the peer answers over whichever of
//! its streams reaches us): a request's id names the node that sent it, and an answer
//! for another node is handed to the cluster to carry there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use minidom::Element;
use tokio::sync::oneshot;

/// Requests waiting, by id, with the domain the answer must come from.
#[derive(Default)]
pub(crate) struct Requests {
    next: AtomicU64,
    waiting: Mutex<HashMap<String, (String, oneshot::Sender<Element>)>>,
    /// On a cluster node: its id, which the ids of its requests carry, and what carries
    /// an answer to the node named in its id.
    cluster: OnceLock<(String, Forward)>,
}

/// Carries an answer to the node that sent the request (its id, the answer).
pub(crate) type Forward = Box<dyn Fn(&str, &Element) + Send + Sync>;

/// The prefix of a cluster node's request ids: `srv.<node>.<n>` (node ids have no dots).
const NODE_PREFIX: &str = "srv.";

/// A request on its way: await [`Pending::answer`].
pub(crate) struct Pending {
    id: String,
    rx: oneshot::Receiver<Element>,
}

impl Requests {
    /// Gives `iq` (a get or set to `to`, a domain) a fresh id and registers it; the caller
    /// sends it.
    pub(crate) fn register(&self, iq: &mut Element, to: &str) -> Pending {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = match self.cluster.get() {
            Some((node, _)) => format!("{NODE_PREFIX}{node}.{n}"),
            None => format!("srv-{n}"),
        };
        outpost_proto::stanza::set_attr(iq, "id", &id);
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id.clone(), (to.to_owned(), tx));
        Pending { id, rx }
    }

    /// An IQ result or error addressed to one of our domains: if it answers a request of
    /// ours, from the domain it was sent to (or is our own error about it), it goes to the
    /// waiter. Returns whether it did.
    pub(crate) fn answer(&self, iq: &Element, ours: impl Fn(&str) -> bool) -> bool {
        let Some(id) = iq.attr("id") else {
            return false;
        };
        let mut waiting = self.lock();
        let Some((to, _)) = waiting.get(id) else {
            drop(waiting);
            return self.forward(id, iq);
        };
        let from = iq.attr("from").unwrap_or("");
        if from != to && !ours(from) {
            // Someone else's answer with our id: not for us.
            return false;
        }
        if let Some((_, tx)) = waiting.remove(id) {
            let _ = tx.send(iq.clone());
        }
        true
    }

    /// This server is the cluster node `node`: its requests' ids name it, and answers to
    /// other nodes' go to `forward`.
    pub(crate) fn in_cluster(&self, node: &str, forward: Forward) {
        let _ = self.cluster.set((node.to_owned(), forward));
    }

    /// An answer to a request of another node of the cluster goes there; returns whether
    /// it did.
    fn forward(&self, id: &str, iq: &Element) -> bool {
        let Some((me, forward)) = self.cluster.get() else {
            return false;
        };
        let node = id
            .strip_prefix(NODE_PREFIX)
            .and_then(|rest| rest.rsplit_once('.'))
            .map(|(node, _)| node);
        match node {
            Some(node) if node != me => {
                forward(node, iq);
                true
            }
            _ => false,
        }
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (String, oneshot::Sender<Element>)>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Pending {
    /// The answer, or `None` after `timeout`.
    pub(crate) async fn answer(self, requests: &Requests, timeout: Duration) -> Option<Element> {
        let answer = tokio::time::timeout(timeout, self.rx).await;
        requests.forget(&self.id);
        answer.ok().and_then(Result::ok)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use minidom::Element;

    use super::Requests;

    fn iq(id: &str, from: &str) -> Element {
        let xml = format!("<iq xmlns='jabber:client' type='result' id='{id}' from='{from}'/>");
        xml.parse().expect("iq")
    }

    /// On a cluster node, a request's id names the node; an answer to another node's
    /// request goes to it, and one that names no node, or this one, is not passed on.
    #[test]
    fn answers_to_other_nodes_requests_are_passed_on() {
        let requests = Requests::default();
        let passed = Arc::new(Mutex::new(Vec::new()));
        let p = passed.clone();
        requests.in_cluster(
            "n1",
            Box::new(move |node, iq| {
                let id = iq.attr("id").unwrap_or("").to_owned();
                p.lock().unwrap().push((node.to_owned(), id));
            }),
        );
        let mut mine: Element = "<iq xmlns='jabber:client' type='get'/>".parse().unwrap();
        let _pending = requests.register(&mut mine, "h.test");
        let id = mine.attr("id").unwrap().to_owned();
        assert!(id.starts_with("srv.n1."), "{id}");
        assert!(requests.answer(&iq(&id, "h.test"), |_| false));
        assert!(requests.answer(&iq("srv.n2.7", "h.test"), |_| false));
        assert!(!requests.answer(&iq("srv.n1.99", "h.test"), |_| false));
        assert!(!requests.answer(&iq("srv-3", "h.test"), |_| false));
        assert!(!requests.answer(&iq("chosen-by-a-peer", "h.test"), |_| false));
        let passed = passed.lock().unwrap().clone();
        assert_eq!(passed, [("n2".to_owned(), "srv.n2.7".to_owned())]);
    }
}
