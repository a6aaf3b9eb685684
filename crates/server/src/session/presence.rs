//! The user's presence as this session carries it (RFC 6121 §4): broadcasts to
//! subscribers and own resources, probes, directed presence, answers to probes, and what
//! changes when the block list or a link to another domain does.

use std::sync::Arc;

use jid::{BareJid, Jid};
use minidom::Element;
use outpost_proto::stanza::{self, Condition, ns};
use outpost_store::Subscription;

use super::Session;
use crate::roster;
use crate::router::{ToSession, deliver};

fn subscribed_to(s: Subscription) -> bool {
    matches!(s, Subscription::To | Subscription::Both)
}

fn subscribed_from(s: Subscription) -> bool {
    matches!(s, Subscription::From | Subscription::Both)
}

impl Session {
    pub(super) async fn on_outbound_presence(&mut self, el: Element, to: Option<Jid>) {
        let ty = el.attr("type").unwrap_or("").to_owned();
        match (to, ty.as_str()) {
            (None, "") => self.presence_available(el).await,
            (None, "unavailable") => self.broadcast_unavailable(el),
            (Some(to), "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed") => {
                self.outbound_subscription(el, &ty, to).await;
            }
            (Some(to), "" | "unavailable") => self.directed_presence(el, to, ty.is_empty()),
            (Some(to), "error") if to.try_as_full().is_ok() => self.delivery().send(el),
            // Probes are the server's business (RFC 6121 §4.3); other types are bogus.
            _ => {}
        }
    }

    /// The user sent a subscription stanza (RFC 6121 §3); the roster rules run for both
    /// sides, and this session's cache takes the changes at once.
    async fn outbound_subscription(&mut self, el: Element, ty: &str, to: Jid) {
        let Some(user) = self.user.clone() else {
            return;
        };
        let contact = to.to_bare();
        if contact == user || contact.node().is_none() {
            return;
        }
        if self.blocks(contact.as_str()) || !self.delivery().reaches(contact.domain().as_str()) {
            return;
        }
        let env = self.env.clone();
        let updates = roster::outbound_subscription(&env.delivery, &user, &contact, ty, el).await;
        self.apply_updates(&updates);
    }

    async fn presence_available(&mut self, mut el: Element) {
        let (Some(jid), Some(user)) = (self.jid.clone(), self.user.clone()) else {
            return;
        };
        // XEP-0398 §4: the avatar's hash, for clients that look for it in presence.
        if self.avatar_hash.is_none() {
            let env = self.env.clone();
            self.avatar_hash = Some(crate::avatar::current_hash(&env.delivery, &user).await);
        }
        crate::avatar::stamp_presence(&mut el, self.avatar_hash.as_deref().unwrap_or(""));
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
        self.delivery()
            .router()
            .set_presence(&jid, self.id, true, priority);

        // Broadcast to subscribers (RFC 6121 §4.2.2, §4.4.2) and to the user's own
        // available resources, this one included.
        for contact in self.subscribers() {
            self.delivery().presence_to_bare(&el, &contact);
        }
        self.delivery().presence_to_bare(&el, &user);

        if initial {
            self.probe_contacts(&user);
            self.deliver_subscription_requests().await;
        }
        self.pep_interest(&jid, &user, &el).await;
        // XEP-0160 §3: stored messages go to a resource when it sends available presence
        // with a non-negative priority. Not only at login: while this resource was
        // unavailable or negative, messages to the bare JID were stored (RFC 6121
        // §8.5.2.2.1), and they must not wait for the next session.
        if priority >= 0 && !was_receiving {
            self.start_offline_delivery().await;
        }
    }

    /// What this client's capabilities say it wants of personal eventing (XEP-0163 §4.3):
    /// the last items of its own account's nodes and of the local contacts it follows,
    /// once per set of capabilities.
    async fn pep_interest(&mut self, jid: &jid::FullJid, user: &BareJid, el: &Element) {
        let caps = crate::caps::Announced::of(el);
        if caps.is_none() {
            return;
        }
        let mut owners = vec![user.clone()];
        owners.extend(
            self.roster
                .values()
                .filter(|i| subscribed_to(i.subscription))
                .filter_map(|i| BareJid::new(&i.jid).ok())
                .filter(|c| self.delivery().is_local(c.domain().as_str())),
        );
        let env = self.env.clone();
        let server = user.domain().as_str().to_owned();
        crate::pep::available(&env.delivery, jid, el, owners, &server).await;
    }

    /// At initial presence: probes the contacts the user is subscribed to, and the user's
    /// other resources (RFC 6121 §4.2.2).
    fn probe_contacts(&mut self, user: &BareJid) {
        let Some(jid) = self.jid.clone() else {
            return;
        };
        let mut to_probe: Vec<BareJid> = self
            .roster
            .values()
            .filter(|i| subscribed_to(i.subscription))
            .filter_map(|i| BareJid::new(&i.jid).ok())
            .collect();
        to_probe.push(user.clone());
        for contact in to_probe {
            if !self.delivery().is_local(contact.domain().as_str()) {
                // The contact's server answers for it (RFC 6121 §4.3.1).
                let probe = stanza::presence(Some("probe"), user.as_str(), Some(contact.as_str()));
                self.delivery().send(probe);
                continue;
            }
            let resources = self.delivery().router().available(&contact);
            if resources.is_empty() && contact != *user && !self.blocks(contact.as_str()) {
                // §4.3.2: a contact with no available resource answers the probe with
                // unavailable presence, so the client knows rather than guesses.
                let offline =
                    stanza::presence(Some("unavailable"), contact.as_str(), Some(jid.as_str()));
                self.proto.send(&offline);
            }
            for (full, tx) in resources {
                if full != jid {
                    let from = Jid::from(jid.clone());
                    let _ = deliver(&tx, ToSession::Probe { from });
                }
            }
        }
    }

    /// Contacts with a subscription to the user's presence, not blocked.
    fn subscribers(&self) -> Vec<BareJid> {
        self.roster
            .values()
            .filter(|i| subscribed_from(i.subscription))
            .filter(|i| !self.blocks(&i.jid))
            .filter_map(|i| BareJid::new(&i.jid).ok())
            .collect()
    }

    fn directed_presence(&mut self, el: Element, to: Jid, available: bool) {
        if self.blocks(to.as_str()) {
            return;
        }
        if !self.delivery().reaches(to.domain().as_str()) {
            // A client joining a room there would wait for an answer for ever.
            if stanza::may_answer_with_error(&el) {
                self.reply_error(&el, &Condition::RemoteServerNotFound.into());
            }
            return;
        }
        self.delivery().presence_to(&el, &to);
        // RFC 6121 §4.6.3: remember who must hear of our going offline.
        if available {
            self.directed.insert(to);
        } else {
            self.directed.remove(&to);
        }
    }

    /// Unavailable presence to subscribers, own resources and directed-presence
    /// recipients (RFC 6121 §4.5.2).
    pub(super) fn broadcast_unavailable(&mut self, mut el: Element) {
        let (Some(jid), Some(user)) = (self.jid.clone(), self.user.clone()) else {
            return;
        };
        stanza::set_attr(&mut el, "from", jid.as_str());
        let was_available = self.available;
        self.available = false;
        self.presence = None;
        self.delivery().caps().unavailable(&jid);
        self.delivery()
            .router()
            .set_presence(&jid, self.id, false, 0);
        if was_available {
            for contact in self.subscribers() {
                self.delivery().presence_to_bare(&el, &contact);
            }
            self.delivery().presence_to_bare(&el, &user);
            // This resource is no longer listed as available, but its client should see
            // its own unavailable presence too.
            let mut own = el.clone();
            stanza::set_attr(&mut own, "to", jid.as_str());
            self.proto.send(&own);
        }
        for to in std::mem::take(&mut self.directed) {
            self.delivery().presence_to(&el, &to);
        }
    }

    /// Answers a probe with this resource's presence if the prober may see it.
    pub(super) fn answer_probe(&mut self, from: &Jid) {
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
                .is_some_and(|i| subscribed_from(i.subscription));
        if allowed {
            self.delivery().presence_to(&presence, from);
        }
    }

    /// A link to `domain` came (back) up: what either side believes of the other's
    /// presence may be stale, so tell subscribers there ours again and, once per user,
    /// probe the contacts there (RFC 6121 §4.2.2, §4.3).
    pub(super) fn link_restored(&mut self, domain: &str, probe: bool) {
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
            for contact in self.subscribers() {
                if contact.domain().as_str() == domain {
                    self.delivery().presence_to_bare(&presence, &contact);
                }
            }
        }
        if probe {
            let contacts: Vec<BareJid> = self
                .roster
                .values()
                .filter(|i| subscribed_to(i.subscription))
                .filter_map(|i| at_domain(&i.jid))
                .collect();
            for contact in contacts {
                let probe = stanza::presence(Some("probe"), user.as_str(), Some(contact.as_str()));
                self.delivery().send(probe);
            }
        }
    }

    /// This node is back on the cluster's bus: the other nodes took this session for gone,
    /// so its contacts on our domains get its presence again, and it asks for theirs.
    pub(super) fn cluster_rejoined(&mut self) {
        let Some(user) = self.user.clone() else {
            return;
        };
        if !self.available {
            return;
        }
        if let Some(presence) = self.current_presence() {
            for contact in self.subscribers() {
                if self.delivery().is_local(contact.domain().as_str()) {
                    self.delivery().presence_to_bare(&presence, &contact);
                }
            }
        }
        self.probe_contacts(&user);
    }

    /// The block list changed: newly blocked contacts stop seeing this resource, unblocked
    /// subscribers see it again (XEP-0191 §3.3, §3.4), and an interested client is told.
    pub(super) fn apply_blocklist(&mut self, list: Arc<Vec<String>>, mut push: Element) {
        let old = std::mem::replace(&mut self.blocklist, list);
        if let (Some(jid), true) = (self.jid.clone(), self.available) {
            let unavailable = stanza::presence(Some("unavailable"), jid.as_str(), None);
            let presence = self.current_presence();
            for item in self.roster.values() {
                let Ok(contact) = BareJid::new(&item.jid) else {
                    continue;
                };
                let was = crate::blocking::matches(&old, &item.jid);
                let is = self.blocks(&item.jid);
                if !was && is {
                    self.delivery().presence_to_bare(&unavailable, &contact);
                } else if was
                    && !is
                    && subscribed_from(item.subscription)
                    && let Some(p) = &presence
                {
                    self.delivery().presence_to_bare(p, &contact);
                }
            }
        }
        if self.blocklist_interested {
            if let Some(jid) = &self.jid {
                stanza::set_attr(&mut push, "to", jid.as_str());
            }
            self.proto.send(&push);
        }
    }

    /// Re-sends subscription requests still waiting for an answer (RFC 6121 §3.1.3).
    async fn deliver_subscription_requests(&mut self) {
        let Some(user) = self.user.clone() else {
            return;
        };
        match self
            .delivery()
            .store()
            .subscription_requests(user.as_str())
            .await
        {
            Ok(reqs) => {
                for r in reqs {
                    if !self.blocks(&r.from) {
                        self.proto.send_raw(&r.stanza);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read subscription requests"),
        }
    }
}
