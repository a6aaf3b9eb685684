//! What other sessions and the server send this session through its channel.

use minidom::Element;
use outpost_proto::stanza::{self, Condition};
use outpost_store::RosterItem;
use tracing::info;

use super::Session;
use crate::roster;
use crate::router::ToSession;

impl Session {
    pub(super) async fn on_message_from_router(&mut self, msg: ToSession) {
        match msg {
            ToSession::Stanza(el) => {
                if let Some(from) = el.attr("from")
                    && self.blocks(from)
                {
                    // XEP-0191 §3.4: nothing from a blocked entity reaches the user.
                    if el.name() != "presence" {
                        self.error_to_sender(&el, Condition::ServiceUnavailable.into());
                    }
                    return;
                }
                self.proto.send(&el);
            }
            ToSession::Probe { from } => self.answer_probe(&from),
            ToSession::RosterPush { version, jid, item } => {
                self.apply_roster_push(version, jid, item)
            }
            ToSession::Blocklist { list, push } => self.apply_blocklist(list, push),
            ToSession::FlushOffline => {
                if self.available && self.priority >= 0 {
                    self.start_offline_delivery().await;
                }
            }
            ToSession::Replaced => {
                // The new session owns this full JID now: going silent here keeps its
                // presence from being overwritten by our unavailable.
                self.available = false;
                self.directed.clear();
                self.proto
                    .close(Some("conflict"), Some("replaced by a new connection"));
            }
            ToSession::End { condition, text } => {
                info!(condition, text, "session ended by the server");
                self.proto.close(Some(condition), Some(text));
            }
            ToSession::LinkRestored { domain, probe } => self.link_restored(&domain, probe),
        }
    }

    /// A roster push arrived: update the cache and tell an interested client.
    fn apply_roster_push(&mut self, version: u64, jid: String, item: Option<RosterItem>) {
        let update = roster::Update {
            owner: match &self.user {
                Some(u) => u.clone(),
                None => return,
            },
            version,
            jid,
            item,
        };
        let push = self
            .roster_interested
            .then(|| roster::push_element(&update, self.jid.as_ref().map(|j| j.as_str())));
        self.apply_updates(std::slice::from_ref(&update));
        if let Some(push) = push {
            self.proto.send(&push);
        }
    }

    /// A stanza left in the channel of a session that ended: messages are kept for the
    /// user, requests are answered with an error, the rest is dropped.
    pub(super) async fn rescue(&mut self, el: Element) {
        match (el.name(), stanza::stanza_type(&el)) {
            ("message", "chat" | "normal") => {
                if let Some(user) = self.user.clone() {
                    let env = self.env.clone();
                    let result = env.delivery.store_offline(el, &user).await;
                    self.undeliverable(result);
                    self.settle().await;
                }
            }
            ("iq", "get" | "set") => {
                self.error_to_sender(&el, Condition::ServiceUnavailable.into());
            }
            _ => {}
        }
    }
}
