//! What outlives one connection: stream management's counts and the stanzas not yet
//! acknowledged, what was shown (so nothing is shown twice), the roster and presence.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::event::{DeliveryState, Event, RosterItem};

/// How many shown messages are remembered to recognise them again.
const SEEN_CAPACITY: usize = 4096;

/// A stanza we wrote that the server has not acknowledged.
#[derive(Clone, Debug)]
pub(crate) struct Unacked {
    pub(crate) xml: String,
    /// Set for a chat message: the id its delivery events carry.
    pub(crate) message: Option<String>,
}

/// The server-side session stream management keeps for us (XEP-0198).
#[derive(Clone, Debug)]
pub(crate) struct SmSession {
    pub(crate) id: String,
    /// Which of the configured servers holds it.
    pub(crate) server: usize,
    pub(crate) jid: String,
}

#[derive(Debug, Default)]
pub(crate) struct Acks {
    /// The session to resume, when resumption was granted.
    pub(crate) session: Option<SmSession>,
    /// Whether this connection has stream management on.
    pub(crate) enabled: bool,
    /// Stanzas received on the session (the `h` we report).
    pub(crate) received: u32,
    /// The server's count of our stanzas at its last `<a/>`.
    pub(crate) acked: u32,
    /// Sent and not yet acknowledged, oldest first.
    pub(crate) unacked: VecDeque<Unacked>,
}

impl Acks {
    /// The server acknowledged up to `h`: the messages among those stanzas are queued.
    pub(crate) fn ack(&mut self, h: u32) -> Vec<Event> {
        let newly = h.wrapping_sub(self.acked);
        if newly as usize > self.unacked.len() {
            // More than we sent: a server bug; take what we have.
            self.acked = h;
            return self.unacked.drain(..).filter_map(queued).collect();
        }
        self.acked = h;
        self.unacked
            .drain(..newly as usize)
            .filter_map(queued)
            .collect()
    }

    /// A new session on a new connection: nothing received, nothing acknowledged.
    pub(crate) fn restart(&mut self) {
        self.enabled = false;
        self.received = 0;
        self.acked = 0;
    }
}

fn queued(u: Unacked) -> Option<Event> {
    u.message.map(|id| Event::Delivery {
        id,
        state: DeliveryState::Queued,
    })
}

/// Keys of messages already shown: the archive's id and the sender's id.
#[derive(Debug, Default)]
pub(crate) struct Shown {
    keys: HashSet<String>,
    order: VecDeque<String>,
}

impl Shown {
    /// Whether `key` was recorded.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    /// Records the keys of a message; `false` if any was seen before.
    pub(crate) fn first_time(&mut self, keys: &[String]) -> bool {
        if keys.iter().any(|k| self.keys.contains(k)) {
            return false;
        }
        for key in keys {
            self.keys.insert(key.clone());
            self.order.push_back(key.clone());
        }
        while self.order.len() > SEEN_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        true
    }
}

/// A roster entry as the server pushed it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Contact {
    pub(crate) name: Option<String>,
    pub(crate) subscription: String,
    pub(crate) pending: bool,
}

#[derive(Debug, Default)]
pub(crate) struct People {
    pub(crate) roster: BTreeMap<String, Contact>,
    /// Available resources per contact.
    pub(crate) online: HashMap<String, HashSet<String>>,
    /// Who asked to see our presence and has no answer yet.
    pub(crate) asking: HashSet<String>,
    /// Contacts whose conversation path was told.
    pub(crate) path_told: HashSet<String>,
    /// The contacts' resources that are Outpost's client (their presence says so).
    pub(crate) outpost: HashSet<String>,
}

impl People {
    /// Records a resource's availability; returns the contact's new state if it changed.
    pub(crate) fn presence(&mut self, full: &str, available: bool) -> Option<bool> {
        let bare = crate::bare(full).to_owned();
        let resource = full.get(bare.len()..).unwrap_or_default().to_owned();
        let resources = self.online.entry(bare.clone()).or_default();
        let before = !resources.is_empty();
        if available {
            resources.insert(resource);
        } else {
            resources.remove(&resource);
        }
        let after = !resources.is_empty();
        if resources.is_empty() {
            self.online.remove(&bare);
        }
        (before != after).then_some(after)
    }

    /// Whether the resource `full` is Outpost's client, as its latest presence says.
    pub(crate) fn outpost_client(&mut self, full: &str, yes: bool) {
        match yes {
            true => self.outpost.insert(full.to_owned()),
            false => self.outpost.remove(full),
        };
    }

    /// Everyone went away (the connection is gone: presence will be sent again).
    pub(crate) fn all_offline(&mut self) -> Vec<String> {
        self.outpost.clear();
        let gone: Vec<String> = self.online.keys().cloned().collect();
        self.online.clear();
        gone
    }

    pub(crate) fn items(&self) -> Vec<RosterItem> {
        self.roster
            .iter()
            .map(|(jid, c)| RosterItem {
                jid: jid.clone(),
                name: c.name.clone(),
                subscription: c.subscription.clone(),
                pending: c.pending,
                available: self.online.contains_key(jid),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unacked(id: Option<&str>) -> Unacked {
        Unacked {
            xml: String::new(),
            message: id.map(str::to_owned),
        }
    }

    #[test]
    fn acks_release_messages_in_order_across_the_counter_wrap() {
        let mut acks = Acks {
            acked: u32::MAX - 1,
            ..Acks::default()
        };
        acks.unacked
            .extend([unacked(Some("a")), unacked(None), unacked(Some("b"))]);
        assert_eq!(
            acks.ack(0),
            vec![Event::Delivery {
                id: "a".into(),
                state: DeliveryState::Queued
            }]
        );
        assert_eq!(acks.unacked.len(), 1);
        assert_eq!(acks.ack(1).len(), 1);
        assert!(acks.unacked.is_empty());
    }

    #[test]
    fn a_message_is_shown_once_whichever_key_comes_back() {
        let mut shown = Shown::default();
        assert!(shown.first_time(&["sid:1".into(), "from:b@x:m1".into()]));
        assert!(!shown.first_time(&["sid:2".into(), "from:b@x:m1".into()]));
        assert!(!shown.first_time(&["sid:1".into()]));
        assert!(shown.first_time(&["sid:3".into()]));
    }

    #[test]
    fn a_contact_is_available_while_any_resource_is() {
        let mut people = People::default();
        assert_eq!(people.presence("b@x/phone", true), Some(true));
        assert_eq!(people.presence("b@x/laptop", true), None);
        assert_eq!(people.presence("b@x/phone", false), None);
        assert_eq!(people.presence("b@x/laptop", false), Some(false));
    }
}
