//! Rosters (RFC 6121 §2) and the presence subscription state machine (§3, Appendix A).
//!
//! For a local contact, the side that sends a subscription stanza also runs the receiving
//! side's rules against the contact's stored roster ([`apply_inbound`]), then tells the
//! contact's sessions through the router; for a contact at another server the stanza is
//! queued for that server, and stanzas from other servers run the same receiving-side
//! rules. Every roster change is stored first, then pushed to every session of its owner,
//! and returned as an [`Update`] so the session that caused it sees it at once.
//!
//! Nothing here needs a session: sessions and server-to-server links call the same
//! functions.

use jid::{BareJid, Jid};
use minidom::Element;
use outpost_proto::stanza::{self, Condition, StanzaError, ns};
use outpost_store::{RosterItem, Subscription, SubscriptionRequest};
use tracing::warn;

use crate::delivery::Delivery;
use crate::router::{ToSession, deliver};

/// Longest roster item name or group name we keep.
const MAX_NAME: usize = 1024;
/// Most groups one item may be in.
const MAX_GROUPS: usize = 64;

/// A change to one roster item, as pushed to its owner's sessions. `item: None` means the
/// contact was removed.
#[derive(Clone, Debug)]
pub(crate) struct Update {
    pub(crate) owner: BareJid,
    pub(crate) version: u64,
    pub(crate) jid: String,
    pub(crate) item: Option<RosterItem>,
}

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

/// The roster push of an update (RFC 6121 §2.1.6), addressed to `to`.
pub(crate) fn push_element(update: &Update, to: Option<&str>) -> Element {
    let mut push = Element::builder("iq", ns::CLIENT)
        .attr(stanza::name("type"), "set")
        .attr(stanza::name("id"), format!("push-{}", update.version))
        .append(
            Element::builder("query", ns::ROSTER)
                .attr(stanza::name("ver"), update.version.to_string())
                .append(item_element(&update.jid, update.item.as_ref()))
                .build(),
        )
        .build();
    if let Some(to) = to {
        stanza::set_attr(&mut push, "to", to);
    }
    push
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

fn internal(what: &str, e: impl std::fmt::Display) -> StanzaError {
    warn!(error = %e, "{what}");
    StanzaError::new(Condition::InternalServerError)
}

/// Stores an item, pushes it to all of the owner's sessions and records the update.
async fn save(
    d: &Delivery,
    owner: &BareJid,
    item: RosterItem,
    updates: &mut Vec<Update>,
) -> Result<(), StanzaError> {
    let version = d
        .store()
        .put_roster_item(owner.as_str(), &item)
        .await
        .map_err(|e| internal("cannot store roster item", e))?;
    let update = Update {
        owner: owner.clone(),
        version,
        jid: item.jid.clone(),
        item: Some(item),
    };
    push(d, &update);
    updates.push(update);
    Ok(())
}

fn push(d: &Delivery, update: &Update) {
    d.router()
        .tell_all(&update.owner, || ToSession::RosterPush {
            version: update.version,
            jid: update.jid.clone(),
            item: update.item.clone(),
        });
}

/// A roster get (RFC 6121 §2.1.3): the reply (empty when the client's version is current,
/// XEP-0237 §2.3) and the whole roster for the session's cache.
pub(crate) async fn get(
    d: &Delivery,
    user: &BareJid,
    el: &Element,
) -> Result<(Element, Vec<RosterItem>), StanzaError> {
    let query = el
        .get_child("query", ns::ROSTER)
        .ok_or(Condition::BadRequest)?;
    let roster = d
        .store()
        .roster(user.as_str())
        .await
        .map_err(|e| internal("cannot read roster", e))?;
    let version = roster.version.to_string();
    let mut reply = stanza::iq_result(el, None);
    if query.attr("ver") != Some(version.as_str()) {
        let mut q = Element::builder("query", ns::ROSTER)
            .attr(stanza::name("ver"), version)
            .build();
        for item in &roster.items {
            q.append_child(item_element(&item.jid, Some(item)));
        }
        reply.append_child(q);
    }
    Ok((reply, roster.items))
}

/// A roster set (RFC 6121 §2.3, §2.5): adds, changes or removes exactly one item.
pub(crate) async fn set(
    d: &Delivery,
    user: &BareJid,
    el: &Element,
) -> Result<Vec<Update>, StanzaError> {
    let query = el
        .get_child("query", ns::ROSTER)
        .ok_or(Condition::BadRequest)?;
    let items: Vec<&Element> = query
        .children()
        .filter(|c| c.is("item", ns::ROSTER))
        .collect();
    let [item] = items.as_slice() else {
        return Err(Condition::BadRequest.into());
    };
    let contact = item
        .attr("jid")
        .and_then(|j| BareJid::new(j).ok())
        .ok_or(Condition::BadRequest)?;
    if contact == *user {
        return Err(Condition::NotAllowed.into());
    }
    let mut updates = Vec::new();
    if item.attr("subscription") == Some("remove") {
        remove_contact(d, user, &contact, &mut updates).await?;
        return Ok(updates);
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
        return Err(Condition::NotAcceptable.into());
    }
    let existing = d
        .store()
        .roster_item(user.as_str(), contact.as_str())
        .await
        .map_err(|e| internal("cannot read roster item", e))?;
    let mut new = existing.unwrap_or_else(|| RosterItem::new(contact.as_str()));
    new.name = name;
    new.groups = groups;
    save(d, user, new, &mut updates).await?;
    Ok(updates)
}

/// Removes a contact (RFC 6121 §2.5.2): cancels both directions of the subscription, then
/// deletes the item; `item-not-found` if there was none.
async fn remove_contact(
    d: &Delivery,
    user: &BareJid,
    contact: &BareJid,
    updates: &mut Vec<Update>,
) -> Result<(), StanzaError> {
    let store = d.store();
    let item = store
        .roster_item(user.as_str(), contact.as_str())
        .await
        .map_err(|e| internal("cannot read roster item", e))?
        .ok_or(Condition::ItemNotFound)?;
    let reachable = d.reaches(contact.domain().as_str());
    if reachable && (item.ask || matches!(item.subscription, Subscription::To | Subscription::Both))
    {
        let stanza = subscription_stanza("unsubscribe", user, contact);
        updates.extend(apply_inbound(d, contact, user, "unsubscribe", stanza).await);
    }
    if reachable && matches!(item.subscription, Subscription::From | Subscription::Both) {
        let stanza = subscription_stanza("unsubscribed", user, contact);
        updates.extend(apply_inbound(d, contact, user, "unsubscribed", stanza).await);
        resources_unavailable_to(d, user, contact);
    }
    let _ = store
        .remove_subscription_request(user.as_str(), contact.as_str())
        .await;
    match store
        .remove_roster_item(user.as_str(), contact.as_str())
        .await
    {
        Ok(Some(version)) => {
            let update = Update {
                owner: user.clone(),
                version,
                jid: contact.to_string(),
                item: None,
            };
            push(d, &update);
            updates.push(update);
            Ok(())
        }
        Ok(None) => Err(Condition::ItemNotFound.into()),
        Err(e) => Err(internal("cannot remove roster item", e)),
    }
}

/// The subscription stanza `ty` between two bare JIDs (RFC 6121 §3.1.3).
fn subscription_stanza(ty: &str, from: &BareJid, to: &BareJid) -> Element {
    stanza::presence(Some(ty), from.as_str(), Some(to.as_str()))
}

/// Unavailable presence from each of `owner`'s available resources to a contact who just
/// lost the subscription (RFC 6121 §3.2.2, §3.3.3).
fn resources_unavailable_to(d: &Delivery, owner: &BareJid, contact: &BareJid) {
    for (full, _) in d.router().available(owner) {
        let el = stanza::presence(Some("unavailable"), full.as_str(), None);
        d.presence_to_bare(&el, contact);
    }
}

/// Every available resource of `owner` tells `to` its presence (after a subscription is
/// approved, RFC 6121 §3.1.5): each is asked as if `to` had probed it.
fn resources_announce_to(d: &Delivery, owner: &BareJid, to: &BareJid) {
    for (_, tx) in d.router().available(owner) {
        let _ = deliver(
            &tx,
            ToSession::Probe {
                from: Jid::from(to.clone()),
            },
        );
    }
}

/// The user sent subscribe, subscribed, unsubscribe or unsubscribed to `contact` (RFC 6121
/// §3). `el` is the client's stanza; the server stamps the bare JIDs (§3.1.2).
pub(crate) async fn outbound_subscription(
    d: &Delivery,
    user: &BareJid,
    contact: &BareJid,
    ty: &str,
    mut el: Element,
) -> Vec<Update> {
    stanza::set_attr(&mut el, "from", user.as_str());
    stanza::set_attr(&mut el, "to", contact.as_str());
    let store = d.store();
    let item = match store.roster_item(user.as_str(), contact.as_str()).await {
        Ok(i) => i,
        Err(e) => {
            warn!(error = %e, "cannot read roster item");
            return Vec::new();
        }
    };
    let mut updates = Vec::new();
    match ty {
        "subscribe" => {
            let mut item = item.unwrap_or_else(|| RosterItem::new(contact.as_str()));
            if matches!(item.subscription, Subscription::None | Subscription::From) && !item.ask {
                item.ask = true;
                if save(d, user, item, &mut updates).await.is_err() {
                    return updates;
                }
            }
            updates.extend(apply_inbound(d, contact, user, "subscribe", el).await);
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
                return updates;
            }
            if !pending {
                // §3.4: approving in advance.
                item.approved = true;
                let _ = save(d, user, item, &mut updates).await;
                return updates;
            }
            item.subscription = adds_from(item.subscription);
            item.approved = false;
            let _ = store
                .remove_subscription_request(user.as_str(), contact.as_str())
                .await;
            if save(d, user, item, &mut updates).await.is_err() {
                return updates;
            }
            updates.extend(apply_inbound(d, contact, user, "subscribed", el).await);
            resources_announce_to(d, user, contact);
        }
        "unsubscribe" => {
            if let Some(mut item) = item {
                let before = (item.subscription, item.ask);
                item.subscription = drops_to(item.subscription);
                item.ask = false;
                if before != (item.subscription, item.ask) {
                    let _ = save(d, user, item, &mut updates).await;
                }
            }
            updates.extend(apply_inbound(d, contact, user, "unsubscribe", el).await);
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
                    let _ = save(d, user, item, &mut updates).await;
                }
            }
            updates.extend(apply_inbound(d, contact, user, "unsubscribed", el).await);
            resources_unavailable_to(d, user, contact);
        }
        _ => {}
    }
    updates
}

/// The receiving side of a subscription stanza from `from` to account `owner` (RFC 6121
/// §3.1.3, §3.1.6, §3.2.3, §3.3.3). For an owner at another server the stanza is queued
/// for it instead. Returns the roster changes made, for both parties.
pub(crate) async fn apply_inbound(
    d: &Delivery,
    owner: &BareJid,
    from: &BareJid,
    ty: &str,
    stanza: Element,
) -> Vec<Update> {
    let mut updates = Vec::new();
    Box::pin(receive(d, owner, from, ty, stanza, &mut updates)).await;
    updates
}

async fn receive(
    d: &Delivery,
    owner: &BareJid,
    from: &BareJid,
    ty: &str,
    stanza: Element,
    updates: &mut Vec<Update>,
) {
    let owner_domain = owner.domain().as_str();
    if !d.is_local(owner_domain) {
        // The owner is at another server: its rules run there. Subscription stanzas go
        // through the durable queue (RFC 6121 §3.1.3 asks for requests to survive).
        let local = from.domain().as_str();
        if !d.is_local(local) {
            return;
        }
        // Subscriptions are rare: their commit is waited for here.
        let failed = match d.queue_remote(local, owner_domain, &stanza).await {
            Ok(accepted) => accepted
                .settle()
                .await
                .into_iter()
                .map(|u| u.error)
                .collect(),
            Err(e) if d.reaches(owner_domain) => vec![e],
            Err(_) => Vec::new(),
        };
        for e in failed {
            warn!(condition = %e.condition, "cannot queue subscription stanza");
        }
        return;
    }
    let store = d.store();
    match store.account_exists(owner.as_str()).await {
        Ok(true) => {}
        Ok(false) => {
            if ty == "subscribe" {
                // §3.1.3: no such contact; the request is refused.
                let refusal = subscription_stanza("unsubscribed", owner, from);
                Box::pin(receive(d, from, owner, "unsubscribed", refusal, updates)).await;
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
        "subscribe" => receive_subscribe(d, owner, from, item, stanza, updates).await,
        "subscribed" => {
            // §3.1.6: an approval nobody asked for is ignored.
            let Some(mut item) = item.filter(|i| i.ask) else {
                return;
            };
            item.subscription = adds_to(item.subscription);
            item.ask = false;
            if save(d, owner, item, updates).await.is_ok() {
                d.presence_to_bare(&stanza, owner);
            }
        }
        "unsubscribe" => receive_unsubscribe(d, owner, from, item, stanza, updates).await,
        "unsubscribed" => {
            let Some(mut item) = item else { return };
            if !item.ask && !matches!(item.subscription, Subscription::To | Subscription::Both) {
                return;
            }
            item.subscription = drops_to(item.subscription);
            item.ask = false;
            if save(d, owner, item, updates).await.is_ok() {
                d.presence_to_bare(&stanza, owner);
            }
        }
        _ => {}
    }
}

/// §3.1.3: a subscription request for `owner`, answered at once if already approved
/// (§3.4 pre-approval), else stored and shown to the owner's resources.
async fn receive_subscribe(
    d: &Delivery,
    owner: &BareJid,
    from: &BareJid,
    item: Option<RosterItem>,
    stanza: Element,
    updates: &mut Vec<Update>,
) {
    if let Some(mut item) = item {
        if matches!(item.subscription, Subscription::From | Subscription::Both) {
            // Already subscribed: answer for the contact.
            let reply = subscription_stanza("subscribed", owner, from);
            Box::pin(receive(d, from, owner, "subscribed", reply, updates)).await;
            return;
        }
        if item.approved {
            item.subscription = adds_from(item.subscription);
            item.approved = false;
            if save(d, owner, item, updates).await.is_ok() {
                let reply = subscription_stanza("subscribed", owner, from);
                Box::pin(receive(d, from, owner, "subscribed", reply, updates)).await;
                resources_announce_to(d, owner, from);
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
    if let Err(e) = d
        .store()
        .put_subscription_request(owner.as_str(), &req)
        .await
    {
        warn!(error = %e, "cannot store subscription request");
        return;
    }
    d.presence_to_bare(&stanza, owner);
}

/// §3.3.3: `from` cancels its subscription to `owner`'s presence (or withdraws its request).
async fn receive_unsubscribe(
    d: &Delivery,
    owner: &BareJid,
    from: &BareJid,
    item: Option<RosterItem>,
    stanza: Element,
    updates: &mut Vec<Update>,
) {
    let store = d.store();
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
        Some(mut item) if matches!(item.subscription, Subscription::From | Subscription::Both) => {
            item.subscription = drops_from(item.subscription);
            save(d, owner, item, updates).await.is_ok()
        }
        _ => false,
    };
    if changed || had_request {
        d.presence_to_bare(&stanza, owner);
    }
    if changed {
        // The contact's resources go unavailable for the user.
        resources_unavailable_to(d, owner, from);
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
