//! What other sessions and the server send this session through its channel.

use minidom::Element;
use outpost_proto::stanza::{self, Condition, ns};
use outpost_store::RosterItem;
use tracing::info;

use super::Session;
use crate::roster;
use crate::router::ToSession;

impl Session {
    pub(super) async fn on_message_from_router(&mut self, msg: ToSession) {
        // Pushes, offline messages and the end of the stream go out at once, even to an
        // inactive client; stanzas are weighed one by one.
        self.csi.urgent |= !matches!(
            msg,
            ToSession::Stanza(_) | ToSession::Probe { .. } | ToSession::Event { .. }
        );
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
                self.csi.urgent |= important(&el);
                self.csi.held += 1;
                self.proto.send(&el);
            }
            ToSession::Probe { from } => self.answer_probe(&from),
            ToSession::RosterPush { version, jid, item } => {
                self.apply_roster_push(version, jid, item)
            }
            ToSession::Blocklist { list, push } => self.apply_blocklist(list, push),
            ToSession::FlushOffline => {
                // A detached session would only queue them again; they wait for a client.
                if self.available && self.priority >= 0 && !self.detached {
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
            ToSession::Redirect { host } => {
                info!(%host, "session sent home");
                self.proto.redirect(&host);
            }
            ToSession::End { condition, text } => {
                info!(condition, text, "session ended by the server");
                self.proto.close(Some(condition), Some(text));
            }
            ToSession::LinkRestored { domain, probe } => self.link_restored(&domain, probe),
            ToSession::ClusterRejoined => self.cluster_rejoined(),
            ToSession::Event { interest, el } => self.event_from_elsewhere(&interest, *el),
            // Taken by the session loop before it gets here; a stray one (the session is
            // ending) drops the connection, whose client will try again.
            ToSession::Resume(_) | ToSession::Migrate(_) => {}
        }
    }

    /// The client says it is active or inactive (XEP-0352): an inactive client gets
    /// only what is important at once.
    pub(super) fn client_state(&mut self, active: bool) {
        self.csi.inactive = !active;
        self.csi.urgent |= active;
    }

    /// A personal eventing event sent from another node: for this client if the
    /// capabilities it announced, as this node verified them, ask for it.
    fn event_from_elsewhere(&mut self, interest: &str, el: Element) {
        let (Some(jid), Some(user)) = (self.jid.as_ref(), self.user.as_ref()) else {
            return;
        };
        let wants = self
            .delivery()
            .caps()
            .clients(user)
            .into_iter()
            .any(|(j, f)| j == *jid && f.is_some_and(|f| f.iter().any(|x| x == interest)));
        if wants {
            self.csi.held += 1;
            self.proto.send(&el);
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

/// Whether a stanza for an inactive client must go out at once (XEP-0352 §3): messages
/// with content, message errors, every IQ, subscription requests and answers. Presence
/// updates, chat states and headlines (PEP events) wait.
fn important(el: &Element) -> bool {
    match el.name() {
        "iq" => true,
        "presence" => !matches!(el.attr("type"), None | Some("unavailable")),
        "message" => {
            el.attr("type") == Some("error")
                || (el.attr("type") != Some("headline")
                    && (crate::archive::worth_keeping(el, false)
                        || el.has_child("sent", ns::CARBONS)
                        || el.has_child("x", ns::CONFERENCE)))
        }
        _ => true,
    }
}
