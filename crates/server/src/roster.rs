//! Rosters (RFC 6121 §2) and the presence subscription state machine (§3, Appendix A).
//!
//! For a local contact, the session that sends a subscription stanza also runs the
//! receiving side's rules against the contact's stored roster, then tells the contact's
//! sessions through the router; for a contact at another server the stanza is queued for
//! that server, and stanzas from other servers run the same receiving-side rules
//! ([`apply_inbound`]). Every roster change is stored first, then pushed.

use std::sync::Arc;

use jid::{BareJid, Jid};
use minidom::Element;
use outpost_proto::stanza::{self, ns};
use outpost_store::{RosterItem, Subscription, SubscriptionRequest};
use tracing::warn;

use crate::Shared;
use crate::router::{ToSession, deliver};
use crate::routing::presence_to_bare;
use crate::session::Session;

/// Longest roster item name or group name we keep.
const MAX_NAME: usize = 1024;
/// Most groups one item may be in.
const MAX_GROUPS: usize = 64;

/// The `<item/>` of a roster result or push.
pub(crate) fn item_element(jid: &str, item: Option<&RosterItem>) -> Element {
    let mut el = Element::builder("item", ns::ROSTER)
        .attr(stanza::name("jid"), jid)
        .build();
    match item {
        None => stanza::set_attr(&mut el, "subscription", "remove"),
        Some(item) => {
            stanza::set_attr(&mut el, "subscription", item.subscription.as_str());
            if let Some(name) = &item.name {
                stanza::set_attr(&mut el, "name", name);
            }
            if item.ask {
                stanza::set_attr(&mut el, "ask", "subscribe");
            }
            for g in &item.groups {
                el.append_child(
                    Element::builder("group", ns::ROSTER)
                        .append(g.as_str())
                        .build(),
                );
            }
        }
    }
    el
}

fn adds_to(s: Subscription) -> Subscription {
    match s {
        Subscription::None => Subscription::To,
        Subscription::From => Subscription::Both,
        other => other,
    }
}

fn adds_from(s: Subscription) -> Subscription {
    match s {
        Subscription::None => Subscription::From,
        Subscription::To => Subscription::Both,
        other => other,
    }
}

fn drops_to(s: Subscription) -> Subscription {
    match s {
        Subscription::To => Subscription::None,
        Subscription::Both => Subscription::From,
        other => other,
    }
}

fn drops_from(s: Subscription) -> Subscription {
    match s {
        Subscription::From => Subscription::None,
        Subscription::Both => Subscription::To,
        other => other,
    }
}

impl Session {
    pub(crate) async fn roster_iq(&mut self, el: Element) {
        let Some(user) = self.user.clone() else {
            return;
        };
        let Some(query) = el.get_child("query", ns::ROSTER) else {
            self.reply_error(&el, "modify", "bad-request");
            return;
        };
        if el.attr("type") == Some("get") {
            let roster = match self.shared.store.roster(user.as_str()).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "cannot read roster");
                    self.reply_error(&el, "wait", "internal-server-error");
                    return;
                }
            };
            self.roster_interested = true;
            let version = roster.version.to_string();
            let mut reply = stanza::iq_result(&el, None);
            // XEP-0237 §2.3: an unchanged roster is answered with an empty result.
            if query.attr("ver") != Some(version.as_str()) {
                let mut q = Element::builder("query", ns::ROSTER)
                    .attr(stanza::name("ver"), version)
                    .build();
                for item in &roster.items {
                    q.append_child(item_element(&item.jid, Some(item)));
                }
                reply.append_child(q);
            }
            self.roster = roster
                .items
                .into_iter()
                .map(|i| (i.jid.clone(), i))
                .collect();
            self.proto.send(&reply);
            return;
        }

        // A set: exactly one item (RFC 6121 §2.3.3).
        let items: Vec<&Element> = query
            .children()
            .filter(|c| c.is("item", ns::ROSTER))
            .collect();
        let [item] = items.as_slice() else {
            self.reply_error(&el, "modify", "bad-request");
            return;
        };
        let Some(contact) = item.attr("jid").and_then(|j| BareJid::new(j).ok()) else {
            self.reply_error(&el, "modify", "bad-request");
            return;
        };
        if contact == user {
            self.reply_error(&el, "cancel", "not-allowed");
            return;
        }
        if item.attr("subscription") == Some("remove") {
            match self.remove_contact(&user, &contact).await {
                Ok(true) => self.proto.send(&stanza::iq_result(&el, None)),
                Ok(false) => self.reply_error(&el, "cancel", "item-not-found"),
                Err(()) => self.reply_error(&el, "wait", "internal-server-error"),
            }
            return;
        }
        let name = item
            .attr("name")
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let mut groups: Vec<String> = item
            .children()
            .filter(|c| c.is("group", ns::ROSTER))
            .map(|g| g.text())
            .collect();
        groups.sort();
        groups.dedup();
        // RFC 6121 §2.3.3: empty or over-long group names are not acceptable.
        if groups.iter().any(|g| g.is_empty() || g.len() > MAX_NAME)
            || groups.len() > MAX_GROUPS
            || name.as_ref().is_some_and(|n| n.len() > MAX_NAME)
        {
            self.reply_error(&el, "modify", "not-acceptable");
            return;
        }
        let existing = match self
            .shared
            .store
            .roster_item(user.as_str(), contact.as_str())
            .await
        {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "cannot read roster item");
                self.reply_error(&el, "wait", "internal-server-error");
                return;
            }
        };
        let mut new = existing.unwrap_or_else(|| RosterItem::new(contact.as_str()));
        new.name = name;
        new.groups = groups;
        if self.save_item(&user, new).await.is_ok() {
            self.proto.send(&stanza::iq_result(&el, None));
        } else {
            self.reply_error(&el, "wait", "internal-server-error");
        }
    }

    /// Stores an item and pushes it to all of the owner's sessions.
    async fn save_item(&mut self, owner: &BareJid, item: RosterItem) -> Result<(), ()> {
        match self
            .shared
            .store
            .put_roster_item(owner.as_str(), &item)
            .await
        {
            Ok(version) => {
                self.push_roster(owner, version, item.jid.clone(), Some(item));
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "cannot store roster item");
                Err(())
            }
        }
    }

    fn push_roster(
        &mut self,
        owner: &BareJid,
        version: u64,
        jid: String,
        item: Option<RosterItem>,
    ) {
        // Our own cache first, so the rest of this stanza's handling sees the change.
        if Some(owner) == self.user.as_ref() {
            match &item {
                Some(i) => {
                    self.roster.insert(jid.clone(), i.clone());
                }
                None => {
                    self.roster.remove(&jid);
                }
            }
        }
        for (_, tx) in self.shared.router.all_sessions(owner) {
            let _ = deliver(
                &tx,
                ToSession::RosterPush {
                    version,
                    jid: jid.clone(),
                    item: item.clone(),
                },
            );
        }
    }

    /// A roster push arrived: update the cache and tell an interested client.
    pub(crate) fn apply_roster_push(
        &mut self,
        version: u64,
        jid: String,
        item: Option<RosterItem>,
    ) {
        let el = item_element(&jid, item.as_ref());
        match item {
            Some(i) => {
                self.roster.insert(jid, i);
            }
            None => {
                self.roster.remove(&jid);
            }
        }
        if !self.roster_interested {
            return;
        }
        let mut push = Element::builder("iq", ns::CLIENT)
            .attr(stanza::name("type"), "set")
            .attr(stanza::name("id"), format!("push-{version}"))
            .append(
                Element::builder("query", ns::ROSTER)
                    .attr(stanza::name("ver"), version.to_string())
                    .append(el)
                    .build(),
            )
            .build();
        if let Some(jid) = &self.jid {
            stanza::set_attr(&mut push, "to", jid.as_str());
        }
        self.proto.send(&push);
    }

    /// Removes a contact (RFC 6121 §2.5.2): cancels both directions of the subscription,
    /// then deletes the item. `Ok(false)` if there was no such item.
    async fn remove_contact(&mut self, user: &BareJid, contact: &BareJid) -> Result<bool, ()> {
        let store = self.shared.store.clone();
        let item = store
            .roster_item(user.as_str(), contact.as_str())
            .await
            .map_err(|e| warn!(error = %e, "cannot read roster item"))?;
        let Some(item) = item else {
            return Ok(false);
        };
        let local = self.may_reach(contact.domain().as_str());
        if local && (item.ask || matches!(item.subscription, Subscription::To | Subscription::Both))
        {
            let stanza = self.subscription_stanza("unsubscribe", user, contact);
            self.apply_inbound(contact, user, "unsubscribe", stanza)
                .await;
        }
        if local && matches!(item.subscription, Subscription::From | Subscription::Both) {
            let stanza = self.subscription_stanza("unsubscribed", user, contact);
            self.apply_inbound(contact, user, "unsubscribed", stanza)
                .await;
            self.own_resources_unavailable_to(contact);
        }
        let _ = store
            .remove_subscription_request(user.as_str(), contact.as_str())
            .await;
        match store
            .remove_roster_item(user.as_str(), contact.as_str())
            .await
        {
            Ok(Some(version)) => {
                self.push_roster(user, version, contact.to_string(), None);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => {
                warn!(error = %e, "cannot remove roster item");
                Err(())
            }
        }
    }

    fn subscription_stanza(&self, ty: &str, from: &BareJid, to: &BareJid) -> Element {
        subscription_stanza(ty, from, to)
    }

    /// Unavailable presence from each of the user's available resources to a contact who
    /// just lost the subscription (RFC 6121 §3.2.2).
    fn own_resources_unavailable_to(&self, contact: &BareJid) {
        let Some(user) = &self.user else { return };
        for (full, _) in self.shared.router.available(user) {
            let mut el = Element::builder("presence", ns::CLIENT)
                .attr(stanza::name("type"), "unavailable")
                .build();
            stanza::set_attr(&mut el, "from", full.as_str());
            self.send_presence_to_bare(&el, contact);
        }
    }

    /// Every available resource of `owner` tells `to` its presence (after a subscription
    /// is approved, RFC 6121 §3.1.5).
    fn resources_announce_to(&self, owner: &BareJid, to: &BareJid) {
        resources_announce_to(&self.shared, owner, to);
    }

    /// The user sent subscribe, subscribed, unsubscribe or unsubscribed (RFC 6121 §3).
    pub(crate) async fn outbound_subscription(&mut self, el: Element, ty: &str, to: Jid) {
        let Some(user) = self.user.clone() else {
            return;
        };
        let contact = to.to_bare();
        if contact == user || contact.node().is_none() {
            return;
        }
        if self.blocks(contact.as_str()) || !self.may_reach(contact.domain().as_str()) {
            return;
        }
        // §3.1.2: the server stamps the bare JID on subscription stanzas.
        let mut out = el;
        stanza::set_attr(&mut out, "from", user.as_str());
        stanza::set_attr(&mut out, "to", contact.as_str());
        let store = self.shared.store.clone();
        let item = match store.roster_item(user.as_str(), contact.as_str()).await {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "cannot read roster item");
                return;
            }
        };
        match ty {
            "subscribe" => {
                let mut item = item.unwrap_or_else(|| RosterItem::new(contact.as_str()));
                if matches!(item.subscription, Subscription::None | Subscription::From) && !item.ask
                {
                    item.ask = true;
                    if self.save_item(&user, item).await.is_err() {
                        return;
                    }
                }
                self.apply_inbound(&contact, &user, "subscribe", out).await;
            }
            "subscribed" => {
                let pending = store
                    .subscription_requests(user.as_str())
                    .await
                    .map(|reqs| reqs.iter().any(|r| r.from == contact.as_str()))
                    .unwrap_or(false);
                let mut item = item.unwrap_or_else(|| RosterItem::new(contact.as_str()));
                if matches!(item.subscription, Subscription::From | Subscription::Both) {
                    // §3.1.5: already approved; nothing to route.
                    return;
                }
                if !pending {
                    // §3.4: approving in advance.
                    item.approved = true;
                    let _ = self.save_item(&user, item).await;
                    return;
                }
                item.subscription = adds_from(item.subscription);
                item.approved = false;
                let _ = store
                    .remove_subscription_request(user.as_str(), contact.as_str())
                    .await;
                if self.save_item(&user, item).await.is_err() {
                    return;
                }
                self.apply_inbound(&contact, &user, "subscribed", out).await;
                self.resources_announce_to(&user, &contact);
            }
            "unsubscribe" => {
                if let Some(mut item) = item {
                    let before = (item.subscription, item.ask);
                    item.subscription = drops_to(item.subscription);
                    item.ask = false;
                    if before != (item.subscription, item.ask) {
                        let _ = self.save_item(&user, item).await;
                    }
                }
                self.apply_inbound(&contact, &user, "unsubscribe", out)
                    .await;
            }
            "unsubscribed" => {
                let _ = store
                    .remove_subscription_request(user.as_str(), contact.as_str())
                    .await;
                if let Some(mut item) = item {
                    let before = (item.subscription, item.approved);
                    item.subscription = drops_from(item.subscription);
                    item.approved = false;
                    if before != (item.subscription, item.approved) {
                        let _ = self.save_item(&user, item).await;
                    }
                }
                self.apply_inbound(&contact, &user, "unsubscribed", out)
                    .await;
                self.own_resources_unavailable_to(&contact);
            }
            _ => {}
        }
    }

    /// The receiving side of a subscription stanza (see [`apply_inbound`]), keeping this
    /// session's roster cache current for the rest of the stanza's handling.
    pub(crate) async fn apply_inbound(
        &mut self,
        owner: &BareJid,
        from: &BareJid,
        ty: &str,
        stanza: Element,
    ) {
        apply_inbound(&self.shared, owner, from, ty, stanza).await;
        let Some(user) = self.user.clone() else {
            return;
        };
        let other = if *owner == user {
            from
        } else if *from == user {
            owner
        } else {
            return;
        };
        match self
            .shared
            .store
            .roster_item(user.as_str(), other.as_str())
            .await
        {
            Ok(Some(item)) => {
                self.roster.insert(other.to_string(), item);
            }
            Ok(None) => {
                self.roster.remove(other.as_str());
            }
            Err(e) => warn!(error = %e, "cannot read roster item"),
        }
    }

    /// Re-sends subscription requests still waiting for an answer (RFC 6121 §3.1.3).
    pub(crate) async fn deliver_subscription_requests(&mut self) {
        let Some(user) = self.user.clone() else {
            return;
        };
        match self.shared.store.subscription_requests(user.as_str()).await {
            Ok(reqs) => {
                for r in reqs {
                    if !self.blocks(&r.from) {
                        self.proto.send_raw(&r.stanza);
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read subscription requests"),
        }
    }
}

/// The receiving side of a subscription stanza from `from` to account `owner` (RFC 6121
/// §3.1.3, §3.1.6, §3.2.3, §3.3.3). For an owner at another server the stanza is queued
/// for it instead. Needs no session: server-to-server links call it too.
pub(crate) async fn apply_inbound(
    shared: &Arc<Shared>,
    owner: &BareJid,
    from: &BareJid,
    ty: &str,
    stanza: Element,
) {
    if !shared.config.serves_domain(owner.domain().as_str()) {
        // The owner is at another server: its rules run there. Subscription stanzas go
        // through the durable queue (RFC 6121 §3.1.3 asks for requests to survive).
        let local = from.domain().as_str();
        if let Some(fed) = shared.federation.as_ref()
            && shared.config.serves_domain(local)
            && let Err((_, condition)) = fed
                .queue(shared, local, owner.domain().as_str(), &stanza)
                .await
        {
            warn!(condition, "cannot queue subscription stanza");
        }
        return;
    }
    let store = shared.store.clone();
    match store.account_exists(owner.as_str()).await {
        Ok(true) => {}
        Ok(false) => {
            if ty == "subscribe" {
                // §3.1.3: no such contact; the request is refused.
                let refusal = subscription_stanza("unsubscribed", owner, from);
                Box::pin(apply_inbound(shared, from, owner, "unsubscribed", refusal)).await;
            }
            return;
        }
        Err(e) => {
            warn!(error = %e, "cannot check account");
            return;
        }
    }
    let item = match store.roster_item(owner.as_str(), from.as_str()).await {
        Ok(i) => i,
        Err(e) => {
            warn!(error = %e, "cannot read roster item");
            return;
        }
    };
    match ty {
        "subscribe" => {
            if let Some(mut item) = item {
                if matches!(item.subscription, Subscription::From | Subscription::Both) {
                    // Already subscribed: answer for the contact.
                    let reply = subscription_stanza("subscribed", owner, from);
                    Box::pin(apply_inbound(shared, from, owner, "subscribed", reply)).await;
                    return;
                }
                if item.approved {
                    item.subscription = adds_from(item.subscription);
                    item.approved = false;
                    if save_item(shared, owner, item).await.is_ok() {
                        let reply = subscription_stanza("subscribed", owner, from);
                        Box::pin(apply_inbound(shared, from, owner, "subscribed", reply)).await;
                        resources_announce_to(shared, owner, from);
                    }
                    return;
                }
            }
            let mut text = Vec::new();
            if outpost_proto::xml::write_stanza(&stanza, &mut text).is_err() {
                return;
            }
            let req = SubscriptionRequest {
                from: from.to_string(),
                stanza: String::from_utf8_lossy(&text).into_owned(),
            };
            if let Err(e) = store.put_subscription_request(owner.as_str(), &req).await {
                warn!(error = %e, "cannot store subscription request");
                return;
            }
            presence_to_bare(shared, &stanza, owner);
        }
        "subscribed" => {
            // §3.1.6: an approval nobody asked for is ignored.
            let Some(mut item) = item.filter(|i| i.ask) else {
                return;
            };
            item.subscription = adds_to(item.subscription);
            item.ask = false;
            if save_item(shared, owner, item).await.is_ok() {
                presence_to_bare(shared, &stanza, owner);
            }
        }
        "unsubscribe" => {
            let had_request = store
                .subscription_requests(owner.as_str())
                .await
                .map(|r| r.iter().any(|r| r.from == from.as_str()))
                .unwrap_or(false);
            if had_request {
                let _ = store
                    .remove_subscription_request(owner.as_str(), from.as_str())
                    .await;
            }
            let changed = match item {
                Some(mut item)
                    if matches!(item.subscription, Subscription::From | Subscription::Both) =>
                {
                    item.subscription = drops_from(item.subscription);
                    save_item(shared, owner, item).await.is_ok()
                }
                _ => false,
            };
            if changed || had_request {
                presence_to_bare(shared, &stanza, owner);
            }
            if changed {
                // §3.3.3: the contact's resources go unavailable for the user.
                for (full, _) in shared.router.available(owner) {
                    let mut el = Element::builder("presence", ns::CLIENT)
                        .attr(stanza::name("type"), "unavailable")
                        .build();
                    stanza::set_attr(&mut el, "from", full.as_str());
                    presence_to_bare(shared, &el, from);
                }
            }
        }
        "unsubscribed" => {
            let Some(mut item) = item else { return };
            if !item.ask && !matches!(item.subscription, Subscription::To | Subscription::Both) {
                return;
            }
            item.subscription = drops_to(item.subscription);
            item.ask = false;
            if save_item(shared, owner, item).await.is_ok() {
                presence_to_bare(shared, &stanza, owner);
            }
        }
        _ => {}
    }
}

fn subscription_stanza(ty: &str, from: &BareJid, to: &BareJid) -> Element {
    let mut el = Element::builder("presence", ns::CLIENT)
        .attr(stanza::name("type"), ty)
        .build();
    stanza::set_attr(&mut el, "from", from.as_str());
    stanza::set_attr(&mut el, "to", to.as_str());
    el
}

/// Stores an item and pushes it to all of the owner's sessions.
async fn save_item(shared: &Arc<Shared>, owner: &BareJid, item: RosterItem) -> Result<(), ()> {
    match shared.store.put_roster_item(owner.as_str(), &item).await {
        Ok(version) => {
            for (_, tx) in shared.router.all_sessions(owner) {
                let _ = deliver(
                    &tx,
                    ToSession::RosterPush {
                        version,
                        jid: item.jid.clone(),
                        item: Some(item.clone()),
                    },
                );
            }
            Ok(())
        }
        Err(e) => {
            warn!(error = %e, "cannot store roster item");
            Err(())
        }
    }
}

/// Every available resource of `owner` tells `to` its presence (after a subscription
/// is approved, RFC 6121 §3.1.5).
fn resources_announce_to(shared: &Arc<Shared>, owner: &BareJid, to: &BareJid) {
    for (_, tx) in shared.router.available(owner) {
        let _ = deliver(
            &tx,
            ToSession::Probe {
                from: Jid::from(to.clone()),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_transitions_follow_rfc6121_appendix_a() {
        use Subscription::*;
        assert_eq!(adds_to(None), To);
        assert_eq!(adds_to(From), Both);
        assert_eq!(adds_to(Both), Both);
        assert_eq!(adds_from(None), From);
        assert_eq!(adds_from(To), Both);
        assert_eq!(drops_to(Both), From);
        assert_eq!(drops_to(To), None);
        assert_eq!(drops_to(From), From);
        assert_eq!(drops_from(Both), To);
        assert_eq!(drops_from(From), None);
        assert_eq!(drops_from(To), To);
    }

    #[test]
    fn roster_item_element_carries_state() {
        let mut item = RosterItem::new("b@x");
        item.subscription = Subscription::To;
        item.ask = true;
        item.name = Some("Bob".into());
        item.groups = vec!["Friends".into()];
        let el = item_element("b@x", Some(&item));
        assert_eq!(el.attr("subscription"), Some("to"));
        assert_eq!(el.attr("ask"), Some("subscribe"));
        assert_eq!(el.attr("name"), Some("Bob"));
        assert_eq!(
            el.children().next().map(|g| g.text()),
            Some("Friends".into())
        );
        assert_eq!(
            item_element("b@x", None).attr("subscription"),
            Some("remove")
        );
    }
}
