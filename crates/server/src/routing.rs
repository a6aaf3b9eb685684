//! What a session does with a stanza from its client, and with what other sessions send
//! it: message routing (RFC 6121 §8), presence (§4) and IQ dispatch.

use std::sync::Arc;

use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use outpost_proto::stanza::{self, ns};
use outpost_store::Subscription;

use crate::Shared;
use crate::router::{ToSession, Undelivered, deliver};
use crate::session::Session;

/// Sends a presence to every available resource of a bare JID: local resources through
/// the router, a remote contact's server best-effort over federation (RFC 6121 §4.2.2).
pub(crate) fn presence_to_bare(shared: &Arc<Shared>, el: &Element, to: &BareJid) {
    if !shared.config.serves_domain(to.domain().as_str()) {
        let mut copy = el.clone();
        stanza::set_attr(&mut copy, "to", to.as_str());
        send_remote(shared, copy);
        return;
    }
    for (full, tx) in shared.router.available(to) {
        let mut copy = el.clone();
        stanza::set_attr(&mut copy, "to", full.as_str());
        let _ = deliver(&tx, ToSession::Stanza(copy));
    }
}

/// Sends an addressed stanza to another server best-effort, when federation is on.
fn send_remote(shared: &Arc<Shared>, el: Element) {
    let (Some(fed), Some(from), Some(to)) = (
        shared.federation.as_ref(),
        el.attr("from").and_then(|f| Jid::new(f).ok()),
        el.attr("to").and_then(|t| Jid::new(t).ok()),
    ) else {
        return;
    };
    fed.send(shared, from.domain().as_str(), to.domain().as_str(), el);
}

impl Session {
    pub(crate) fn is_local_domain(&self, domain: &str) -> bool {
        self.shared.config.domains.iter().any(|d| d == domain)
    }

    /// Whether stanzas for `domain` can go anywhere: it is ours, or federation is on.
    pub(crate) fn may_reach(&self, domain: &str) -> bool {
        self.is_local_domain(domain) || self.shared.federation.is_some()
    }

    pub(crate) async fn on_client_stanza(&mut self, el: Element) {
        let to = match el.attr("to") {
            None => None,
            Some(to) => match Jid::new(to) {
                Ok(j) => Some(j),
                Err(_) => {
                    // RFC 6120 §8.3.3.8: an address that does not parse.
                    self.reply_error(&el, "modify", "jid-malformed");
                    return;
                }
            },
        };
        match el.name() {
            "message" => self.on_outbound_message(el, to).await,
            "presence" => self.on_outbound_presence(el, to).await,
            _ => self.on_outbound_iq(el, to).await,
        }
    }

    /// Answers a stanza from our own client with an error, unless it is itself an error or
    /// a result (RFC 6120 §8.3.1: never answer an error with an error).
    pub(crate) fn reply_error(&mut self, el: &Element, error_type: &str, condition: &str) {
        if matches!(el.attr("type"), Some("error") | Some("result")) {
            return;
        }
        let mut reply = stanza::error_reply(el, error_type, condition);
        if el.attr("to").is_none() {
            let domain = self.proto.domain().to_owned();
            stanza::set_attr(&mut reply, "from", &domain);
        }
        self.proto.send(&reply);
    }

    /// Sends an error to whoever sent `el`: our own client, or another session.
    pub(crate) fn error_to_sender(&mut self, el: &Element, error_type: &str, condition: &str) {
        let from = el.attr("from");
        if from.is_some() && from == self.jid.as_ref().map(|j| j.as_str()) {
            self.reply_error(el, error_type, condition);
            return;
        }
        if matches!(el.attr("type"), Some("error") | Some("result")) || el.name() == "presence" {
            return;
        }
        crate::delivery::bounce(&self.shared, el, error_type, condition);
    }

    /// Whether the user blocks `jid` (XEP-0191 §3.3: an item matches the full JID, the bare
    /// JID or the domain).
    pub(crate) fn blocks(&self, jid: &str) -> bool {
        blocked(&self.blocklist, jid)
    }

    fn reply_blocked(&mut self, el: &Element) {
        if matches!(el.attr("type"), Some("error") | Some("result")) || el.name() == "presence" {
            return;
        }
        let mut reply = stanza::error_reply(el, "cancel", "not-acceptable");
        if let Some(err) = reply.get_child_mut("error", ns::CLIENT) {
            err.append_child(Element::builder("blocked", ns::BLOCKING_ERRORS).build());
        }
        self.proto.send(&reply);
    }

    // ---- messages (RFC 6121 §8) ----

    async fn on_outbound_message(&mut self, el: Element, to: Option<Jid>) {
        let to = match to {
            Some(to) => to,
            // A message without `to` is for the user's own bare JID (RFC 6120 §10.3.1).
            None => match &self.user {
                Some(user) => Jid::from(user.clone()),
                None => return,
            },
        };
        if self.blocks(to.as_str()) {
            self.reply_blocked(&el);
            return;
        }
        if !self.is_local_domain(to.domain().as_str()) {
            self.queue_remote(el, &to).await;
            return;
        }
        if to.node().is_none() {
            self.reply_error(&el, "cancel", "service-unavailable");
            return;
        }
        self.route_message(el, to).await;
    }

    /// A message for another domain: committed to that link's durable queue before it
    /// counts as accepted, with an XEP-0359 origin-id so retries can be recognised.
    async fn queue_remote(&mut self, mut el: Element, to: &Jid) {
        let (Some(fed), Some(jid)) = (self.shared.federation.as_ref(), self.jid.as_ref()) else {
            // RFC 6120 §8.3.3.16: without federation no other server is reachable.
            self.reply_error(&el, "cancel", "remote-server-not-found");
            return;
        };
        crate::s2s::ensure_origin_id(&mut el);
        let shared = self.shared.clone();
        let local = jid.domain().as_str().to_owned();
        if let Err((error_type, condition)) =
            fed.queue(&shared, &local, to.domain().as_str(), &el).await
        {
            self.reply_error(&el, error_type, condition);
        }
    }

    /// Delivers a message to a local address (see [`crate::delivery::route_message`]); a
    /// failure is answered to the sender.
    pub(crate) async fn route_message(&mut self, el: Element, to: Jid) {
        let shared = self.shared.clone();
        if let Some(b) = crate::delivery::route_message(&shared, el, to).await {
            self.error_to_sender(&b.el, b.error_type, b.condition);
        }
    }

    // ---- presence (RFC 6121 §4) ----

    async fn on_outbound_presence(&mut self, el: Element, to: Option<Jid>) {
        let ty = el.attr("type").unwrap_or("").to_owned();
        match (to, ty.as_str()) {
            (None, "") => self.presence_available(el).await,
            (None, "unavailable") => {
                self.broadcast_unavailable(el).await;
            }
            (Some(to), "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed") => {
                self.outbound_subscription(el, &ty, to).await;
            }
            (Some(to), "" | "unavailable") => self.directed_presence(el, to, ty.is_empty()),
            (Some(to), "error") => {
                if let Ok(full) = to.try_as_full() {
                    let _ = self.shared.router.send_to_full(full, ToSession::Stanza(el));
                }
            }
            // Probes are the server's business (RFC 6121 §4.3); other types are bogus.
            _ => {}
        }
    }

    async fn presence_available(&mut self, el: Element) {
        let (Some(jid), Some(user)) = (self.jid.clone(), self.user.clone()) else {
            return;
        };
        let priority = el
            .get_child("priority", ns::CLIENT)
            .and_then(|p| p.text().trim().parse::<i8>().ok())
            .unwrap_or(0);
        let initial = !self.available;
        // Whether stored messages could already come here (see the end of this function).
        let was_receiving = self.available && self.priority >= 0;
        self.available = true;
        self.priority = priority;
        let mut text = Vec::new();
        self.presence = outpost_proto::xml::write_stanza(&el, &mut text)
            .ok()
            .and_then(|()| String::from_utf8(text).ok())
            .map(String::into_boxed_str);
        self.shared
            .router
            .set_presence(&jid, self.id, true, priority);

        // Broadcast to subscribers (RFC 6121 §4.2.2, §4.4.2) and to the user's own
        // available resources, this one included.
        for contact in self.subscribers() {
            self.send_presence_to_bare(&el, &contact);
        }
        self.send_presence_to_bare(&el, &user);

        if initial {
            // Probe the contacts we are subscribed to, and our other resources (§4.2.2).
            let probe = |from: &FullJid| ToSession::Probe {
                from: Jid::from(from.clone()),
            };
            let mut to_probe: Vec<BareJid> = self
                .roster
                .values()
                .filter(|i| matches!(i.subscription, Subscription::To | Subscription::Both))
                .filter_map(|i| BareJid::new(&i.jid).ok())
                .collect();
            to_probe.push(user.clone());
            for contact in to_probe {
                if !self.is_local_domain(contact.domain().as_str()) {
                    // The contact's server answers for it (RFC 6121 §4.3.1).
                    let mut probe = Element::builder("presence", ns::CLIENT)
                        .attr(stanza::name("type"), "probe")
                        .build();
                    stanza::set_attr(&mut probe, "from", user.as_str());
                    stanza::set_attr(&mut probe, "to", contact.as_str());
                    send_remote(&self.shared, probe);
                    continue;
                }
                let resources = self.shared.router.available(&contact);
                if resources.is_empty() && contact != user && !self.blocks(contact.as_str()) {
                    // §4.3.2: a contact with no available resource answers the probe with
                    // unavailable presence, so the client knows rather than guesses.
                    let mut offline = Element::builder("presence", ns::CLIENT)
                        .attr(stanza::name("type"), "unavailable")
                        .build();
                    stanza::set_attr(&mut offline, "from", contact.as_str());
                    stanza::set_attr(&mut offline, "to", jid.as_str());
                    self.proto.send(&offline);
                }
                for (full, tx) in resources {
                    if full != jid {
                        let _ = deliver(&tx, probe(&jid));
                    }
                }
            }
            self.deliver_subscription_requests().await;
        }
        // XEP-0160 §3: stored messages go to a resource when it sends available presence
        // with a non-negative priority. Not only at login: while this resource was
        // unavailable or negative, messages to the bare JID were stored (RFC 6121
        // §8.5.2.2.1), and they must not wait for the next session.
        if priority >= 0 && !was_receiving {
            self.start_offline_delivery().await;
        }
    }

    /// Contacts with a subscription to the user's presence, not blocked.
    fn subscribers(&self) -> Vec<BareJid> {
        self.roster
            .values()
            .filter(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
            .filter(|i| !self.blocks(&i.jid))
            .filter_map(|i| BareJid::new(&i.jid).ok())
            .collect()
    }

    /// Sends a presence to every available resource of a bare JID (see
    /// [`presence_to_bare`]).
    pub(crate) fn send_presence_to_bare(&self, el: &Element, to: &BareJid) {
        presence_to_bare(&self.shared, el, to);
    }

    /// Sends a presence to a JID: a full JID directly, a bare one to each available
    /// resource.
    pub(crate) fn send_presence_to(&self, el: &Element, to: &Jid) {
        match to.try_as_full() {
            Ok(full) => {
                let mut copy = el.clone();
                stanza::set_attr(&mut copy, "to", full.as_str());
                if self.is_local_domain(full.domain().as_str()) {
                    let _ = self
                        .shared
                        .router
                        .send_to_full(full, ToSession::Stanza(copy));
                } else {
                    send_remote(&self.shared, copy);
                }
            }
            Err(bare) => self.send_presence_to_bare(el, bare),
        }
    }

    fn directed_presence(&mut self, el: Element, to: Jid, available: bool) {
        if self.blocks(to.as_str()) || !self.may_reach(to.domain().as_str()) {
            return;
        }
        self.send_presence_to(&el, &to);
        // RFC 6121 §4.6.3: remember who must hear of our going offline.
        if available {
            self.directed.insert(to);
        } else {
            self.directed.remove(&to);
        }
    }

    /// Unavailable presence to subscribers, own resources and directed-presence
    /// recipients (RFC 6121 §4.5.2). `el` carries `from` already.
    pub(crate) async fn broadcast_unavailable(&mut self, mut el: Element) {
        let (Some(jid), Some(user)) = (self.jid.clone(), self.user.clone()) else {
            return;
        };
        stanza::set_attr(&mut el, "from", jid.as_str());
        let was_available = self.available;
        self.available = false;
        self.presence = None;
        self.shared.router.set_presence(&jid, self.id, false, 0);
        if was_available {
            for contact in self.subscribers() {
                self.send_presence_to_bare(&el, &contact);
            }
            self.send_presence_to_bare(&el, &user);
            // This resource is no longer listed as available, but its client should see
            // its own unavailable presence too.
            let mut own = el.clone();
            stanza::set_attr(&mut own, "to", jid.as_str());
            self.proto.send(&own);
        }
        for to in std::mem::take(&mut self.directed) {
            self.send_presence_to(&el, &to);
        }
    }

    // ---- IQ (RFC 6120 §8.2.3) ----

    async fn on_outbound_iq(&mut self, el: Element, to: Option<Jid>) {
        let ty = el.attr("type").unwrap_or("");
        match ty {
            "result" | "error" => {
                if let Some(Ok(full)) = to.as_ref().map(|t| t.try_as_full())
                    && !self.blocks(full.as_str())
                {
                    if self.is_local_domain(full.domain().as_str()) {
                        let _ = self.shared.router.send_to_full(full, ToSession::Stanza(el));
                    } else {
                        send_remote(&self.shared, el);
                    }
                }
                return;
            }
            "get" | "set" => {}
            _ => {
                self.reply_error(&el, "modify", "bad-request");
                return;
            }
        }
        if el.attr("id").is_none() || el.children().count() != 1 {
            // RFC 6120 §8.2.3: an id and exactly one payload.
            self.reply_error(&el, "modify", "bad-request");
            return;
        }
        let Some(to) = to else {
            self.own_iq(el).await;
            return;
        };
        if self.blocks(to.as_str()) {
            self.reply_blocked(&el);
            return;
        }
        if !self.is_local_domain(to.domain().as_str()) {
            if self.shared.federation.is_some() {
                // Best-effort: an IQ that cannot be sent soon is answered with an error.
                send_remote(&self.shared, el);
            } else {
                self.reply_error(&el, "cancel", "remote-server-not-found");
            }
            return;
        }
        match to.try_as_full() {
            Ok(full) => match self.shared.router.send_to_full(full, ToSession::Stanza(el)) {
                Ok(()) => {}
                // RFC 6121 §8.5.3.1: no such resource.
                Err(Undelivered::NotBound(ToSession::Stanza(el))) => {
                    self.reply_error(&el, "cancel", "service-unavailable");
                }
                Err(Undelivered::Full(ToSession::Stanza(el))) => {
                    self.reply_error(&el, "wait", "resource-constraint");
                }
                Err(_) => {}
            },
            Err(bare) => {
                if bare.node().is_none() {
                    self.server_iq(el).await;
                } else if Some(bare) == self.user.as_ref() {
                    self.own_iq(el).await;
                } else {
                    let bare = bare.clone();
                    self.other_account_iq(el, bare).await;
                }
            }
        }
    }

    // ---- from other sessions ----

    pub(crate) async fn on_message_from_router(&mut self, msg: ToSession) {
        match msg {
            ToSession::Stanza(el) => {
                if let Some(from) = el.attr("from")
                    && self.blocks(from)
                {
                    // XEP-0191 §3.4: nothing from a blocked entity reaches the user.
                    if el.name() != "presence" {
                        self.error_to_sender(&el, "cancel", "service-unavailable");
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
            ToSession::AccountRemoved => {
                self.proto
                    .close(Some("not-authorized"), Some("account removed"));
            }
            ToSession::LinkRestored { domain, probe } => self.link_restored(&domain, probe),
        }
    }

    /// A link to `domain` came (back) up: what either side believes of the other's
    /// presence may be stale, so tell subscribers there ours again and, once per user,
    /// probe the contacts there (RFC 6121 §4.2.2, §4.3).
    fn link_restored(&mut self, domain: &str, probe: bool) {
        let Some(user) = self.user.clone() else {
            return;
        };
        if !self.available {
            return;
        }
        let at_domain = |jid: &str| {
            BareJid::new(jid)
                .ok()
                .filter(|b| b.domain().as_str() == domain)
        };
        if let Some(presence) = self.current_presence() {
            let subscribers: Vec<BareJid> = self
                .subscribers()
                .into_iter()
                .filter(|b| b.domain().as_str() == domain)
                .collect();
            for contact in subscribers {
                self.send_presence_to_bare(&presence, &contact);
            }
        }
        if probe {
            let contacts: Vec<BareJid> = self
                .roster
                .values()
                .filter(|i| matches!(i.subscription, Subscription::To | Subscription::Both))
                .filter_map(|i| at_domain(&i.jid))
                .collect();
            for contact in contacts {
                let mut probe = Element::builder("presence", ns::CLIENT)
                    .attr(stanza::name("type"), "probe")
                    .build();
                stanza::set_attr(&mut probe, "from", user.as_str());
                stanza::set_attr(&mut probe, "to", contact.as_str());
                send_remote(&self.shared, probe);
            }
        }
    }

    /// Answers a probe with this resource's presence if the prober may see it.
    fn answer_probe(&mut self, from: &Jid) {
        let (Some(presence), Some(user)) = (self.current_presence(), self.user.as_ref()) else {
            return;
        };
        if !self.available || self.blocks(from.as_str()) {
            return;
        }
        let bare = from.to_bare();
        let allowed = bare == *user
            || self
                .roster
                .get(bare.as_str())
                .is_some_and(|i| matches!(i.subscription, Subscription::From | Subscription::Both));
        if allowed {
            self.send_presence_to(&presence, from);
        }
    }

    /// A stanza left in the channel of a session that ended: messages are kept for the
    /// user, requests are answered with an error, the rest is dropped.
    pub(crate) async fn rescue(&mut self, el: Element) {
        match (el.name(), stanza::stanza_type(&el)) {
            ("message", "chat" | "normal") => {
                if let Some(user) = self.user.clone() {
                    self.store_offline(el, &user).await;
                }
            }
            ("iq", "get" | "set") => self.error_to_sender(&el, "cancel", "service-unavailable"),
            _ => {}
        }
    }
}

/// Whether `jid` matches a block list (XEP-0191 §3.3).
pub(crate) fn blocked(list: &[String], jid: &str) -> bool {
    if list.is_empty() {
        return false;
    }
    let Ok(j) = Jid::new(jid) else {
        return false;
    };
    let bare = j.to_bare();
    list.iter()
        .any(|b| b == j.as_str() || b == bare.as_str() || b == j.domain().as_str())
}

#[cfg(test)]
mod tests {
    use super::blocked;

    #[test]
    fn block_list_matches_full_bare_and_domain() {
        let list = vec!["spam.example".to_owned(), "eve@x".to_owned()];
        assert!(blocked(&list, "anyone@spam.example/r"));
        assert!(blocked(&list, "eve@x/phone"));
        assert!(blocked(&list, "eve@x"));
        assert!(!blocked(&list, "bob@x/eve"));
        assert!(!blocked(&[], "eve@x"));
    }
}
