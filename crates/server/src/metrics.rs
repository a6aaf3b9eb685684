//! What the server counts since it started, for operators (`/metrics` of the web crate,
//! through [`crate::ServerView::counts`]). Plain atomics bumped where the work is done: a
//! stanza read from a client or a peer server, a failed login, a committed offline or
//! archive write. Gauges (sessions, links, queues) are read from their owners when asked.

use std::sync::atomic::{AtomicU64, Ordering};

use outpost_store::BatchWrite;

/// The server's counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    messages: AtomicU64,
    presences: AtomicU64,
    iqs: AtomicU64,
    login_failures: AtomicU64,
    offline_stored: AtomicU64,
    archived: AtomicU64,
}

/// The counters' values at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Stanzas read from clients and peer servers, by kind.
    pub messages: u64,
    pub presences: u64,
    pub iqs: u64,
    /// Failed authentications (SASL and the legacy forms).
    pub login_failures: u64,
    /// Messages committed to an offline queue, and archive rows committed.
    pub offline_stored: u64,
    pub archived: u64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// A stanza read from a client or a peer server; `name` is its element's name.
    pub(crate) fn stanza(&self, name: &str) {
        match name {
            "message" => bump(&self.messages),
            "presence" => bump(&self.presences),
            "iq" => bump(&self.iqs),
            _ => {}
        }
    }

    pub(crate) fn login_failed(&self) {
        bump(&self.login_failures);
    }

    /// A write the journal committed.
    pub(crate) fn committed(&self, write: &BatchWrite) {
        match write {
            BatchWrite::Offline { .. } => bump(&self.offline_stored),
            BatchWrite::Archive(_) => bump(&self.archived),
            _ => {}
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            messages: get(&self.messages),
            presences: get(&self.presences),
            iqs: get(&self.iqs),
            login_failures: get(&self.login_failures),
            offline_stored: get(&self.offline_stored),
            archived: get(&self.archived),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_counted_apart() {
        let c = Counters::default();
        for name in ["message", "message", "presence", "iq", "stream:features"] {
            c.stanza(name);
        }
        c.login_failed();
        let counts = c.counts();
        assert_eq!((counts.messages, counts.presences, counts.iqs), (2, 1, 1));
        assert_eq!(counts.login_failures, 1);
        assert_eq!((counts.offline_stored, counts.archived), (0, 0));
    }
}
