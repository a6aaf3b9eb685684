//! IQ requests the server itself sends to another server, waiting for their answers: the
//! result or error that comes back addressed to our domain, or the error our own side
//! makes when the stanza cannot leave (a link that failed).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use minidom::Element;
use tokio::sync::oneshot;

/// Requests waiting, by id, with the domain the answer must come from.
#[derive(Default)]
pub(crate) struct Requests {
    next: AtomicU64,
    waiting: Mutex<HashMap<String, (String, oneshot::Sender<Element>)>>,
}

/// A request on its way: await [`Pending::answer`].
pub(crate) struct Pending {
    id: String,
    rx: oneshot::Receiver<Element>,
}

impl Requests {
    /// Gives `iq` (a get or set to `to`, a domain) a fresh id and registers it; the caller
    /// sends it.
    pub(crate) fn register(&self, iq: &mut Element, to: &str) -> Pending {
        let id = format!("srv-{}", self.next.fetch_add(1, Ordering::Relaxed));
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
            return false;
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
