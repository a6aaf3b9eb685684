//! Telling a sender that the hub has taken its message: while a link goes through the hub,
//! the chat messages in flight are remembered by outbox id, and when the hub acknowledges
//! them (it keeps what it acknowledges, durably) each sender's client gets a headline from
//! the server, `<relayed xmlns='urn:outpost:delivery:0' id='…' by='hub'/>`, so Outpost's
//! client can show the message as relayed. Other clients ignore the unknown element;
//! headlines are neither stored offline nor archived.

use std::collections::BTreeMap;

use minidom::Element;
use outpost_store::OutboxEntry;

use super::Path;

pub(crate) const NS_DELIVERY: &str = "urn:outpost:delivery:0";
/// The most messages remembered at once (an old backlog is not worth a headline each).
const MAX_WAITING: usize = 10_000;

#[derive(Default)]
pub(super) struct Relayed {
    /// The hub the link now goes through, if it does.
    hub: Option<String>,
    /// Outbox id → (the sender's full JID, the message's id).
    waiting: BTreeMap<i64, (String, String)>,
}

impl Relayed {
    /// The link took `path` (through `peer`).
    pub(super) fn path(&mut self, path: Path, peer: &str) {
        self.hub = matches!(path, Path::Hub | Path::HubWebSocket).then(|| peer.to_owned());
        if self.hub.is_none() {
            self.waiting.clear();
        }
    }

    /// Stanzas read from the queue to be sent.
    pub(super) fn sending(&mut self, batch: &[OutboxEntry]) {
        if self.hub.is_none() {
            return;
        }
        for entry in batch {
            if self.waiting.len() >= MAX_WAITING {
                return;
            }
            let Some(el) = super::super::parse_stanza(&entry.stanza) else {
                continue;
            };
            let chat = el.name() == "message" && el.get_child("body", el.ns().as_str()).is_some();
            if let (true, Some(from), Some(id)) = (chat, el.attr("from"), el.attr("id")) {
                self.waiting
                    .insert(entry.id, (from.to_owned(), id.to_owned()));
            }
        }
    }

    /// The hub acknowledged everything up to `up_to`: the headlines for the senders.
    pub(super) fn acked(&mut self, up_to: i64, local: &str) -> Vec<Element> {
        let Some(hub) = self.hub.as_deref() else {
            return Vec::new();
        };
        let later = self.waiting.split_off(&(up_to + 1));
        let acked = std::mem::replace(&mut self.waiting, later);
        acked
            .into_values()
            .filter(|(from, _)| from.contains('/'))
            .map(|(from, id)| {
                Element::builder("message", outpost_proto::stanza::ns::CLIENT)
                    .attr(outpost_proto::stanza::name("from"), local)
                    .attr(outpost_proto::stanza::name("to"), from)
                    .attr(outpost_proto::stanza::name("type"), "headline")
                    .append(
                        Element::builder("relayed", NS_DELIVERY)
                            .attr(outpost_proto::stanza::name("id"), id)
                            .attr(outpost_proto::stanza::name("by"), hub)
                            .build(),
                    )
                    .build()
            })
            .collect()
    }
}
