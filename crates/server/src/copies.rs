//! Copies of one stanza for many sessions, as a room sends its message to each occupant.
//! On a cluster, the copies for sessions that another node holds cross to that node once,
//! as one stanza and the list of its sessions, and that node makes the copies; sent one by
//! one, each would cross on its own (its envelope written, published, read and parsed
//! again there).
//!
//! [`Copies`] gathers a run of copies of one group chat message; whatever does not belong
//! to it is given back to be sent as usual: a copy for a session of this node at once (the
//! run holds only other nodes' sessions), anything else (another stanza, a copy that
//! differs in more than its `to`) once the run is sent, so the order of what each session
//! receives does not change.

use std::sync::Arc;

use jid::FullJid;
use minidom::Element;
use outpost_proto::stanza;

use crate::router::{NodeSink, Router};

/// What became of a stanza offered to a run.
pub(crate) enum Taken {
    /// It joined the run.
    Joined,
    /// It is for no session of another node: it may be sent now, before the run.
    Now(Element),
    /// It must be sent after the run.
    After(Element),
}

/// A run of copies of one group chat message for sessions held by other nodes.
#[derive(Default)]
pub(crate) struct Copies {
    /// The message without its `to`.
    stanza: Option<Element>,
    /// The sessions it is for, by the node that holds them.
    nodes: Vec<(Arc<dyn NodeSink>, Vec<FullJid>)>,
}

impl Copies {
    /// Takes `el` into the run if it is a copy of the run's message (or may start one)
    /// for a session another node holds; gives it back otherwise, saying when it may go.
    pub(crate) fn take(&mut self, router: &Router, mut el: Element) -> Taken {
        if !router.clustered() {
            return Taken::Now(el);
        }
        if el.name() != "message" || el.attr("type") != Some("groupchat") {
            return Taken::After(el);
        }
        let Some(to) = el.attr("to").and_then(|t| FullJid::new(t).ok()) else {
            return Taken::After(el);
        };
        let Some(node) = router.node_of(&to) else {
            return Taken::Now(el);
        };
        stanza::remove_attr(&mut el, "to");
        match &self.stanza {
            Some(run) if *run != el => {
                stanza::set_attr(&mut el, "to", to.as_str());
                return Taken::After(el);
            }
            Some(_) => {}
            None => self.stanza = Some(el),
        }
        match self
            .nodes
            .iter_mut()
            .find(|(n, _)| n.node_id() == node.node_id())
        {
            Some((_, sessions)) => sessions.push(to),
            None => self.nodes.push((node, vec![to])),
        }
        Taken::Joined
    }

    /// Sends the run: once to each node for its sessions. Gives back the copies to send
    /// one by one: those for the only session of their node in the run, and those a node
    /// could not be handed now.
    pub(crate) fn send(&mut self) -> Vec<Element> {
        let Some(el) = self.stanza.take() else {
            return Vec::new();
        };
        let mut one_by_one = Vec::new();
        for (node, sessions) in self.nodes.drain(..) {
            if sessions.len() > 1 && node.send_copies(&sessions, &el) {
                continue;
            }
            one_by_one.extend(sessions.into_iter().map(|to| {
                let mut copy = el.clone();
                stanza::set_attr(&mut copy, "to", to.as_str());
                copy
            }));
        }
        one_by_one
    }
}
