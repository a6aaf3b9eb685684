//! Explicit subscriptions to personal nodes (XEP-0163 §8, XEP-0060 §6.1–6.3, §5.6): who
//! may read a node may subscribe to it, with its bare or one full JID, from here or
//! another server; a subscriber gets the node's last item at once and every event after,
//! for as long as the access model still lets it read.

use jid::{BareJid, Jid};
use minidom::Element;
use outpost_proto::stanza::{self, Condition, ErrorType, StanzaError};
use outpost_store::{NodeConfig, SendLast, StoreError};
use tracing::warn;

use super::{NS_PUBSUB, error, event_message, internal, last_item_event, may_read, node_of};
use crate::delivery::Delivery;

/// The most subscriptions over all of one account's nodes: each is a row and an event per
/// publish, and a stranger may subscribe to an open node.
const MAX_SUBSCRIPTIONS: usize = 4096;

/// The subscriber a request names: its `jid`, which must be the requester's own address
/// (XEP-0060 §6.1.3.1).
fn subscriber(requester: &Jid, op: &Element) -> Result<Jid, StanzaError> {
    let jid = op
        .attr("jid")
        .ok_or_else(|| error(Condition::BadRequest, Some("jid-required")))?;
    Jid::new(jid)
        .ok()
        .filter(|j| j.to_bare() == requester.to_bare())
        .ok_or_else(|| error(Condition::BadRequest, Some("invalid-jid")))
}

fn subscription_element(node: &str, jid: &str, state: &str) -> Element {
    Element::builder("subscription", NS_PUBSUB)
        .attr(stanza::name("node"), node)
        .attr(stanza::name("jid"), jid)
        .attr(stanza::name("subscription"), state)
        .build()
}

/// Subscribes the requester (XEP-0060 §6.1), then sends it the last item.
pub(super) async fn subscribe(
    d: &Delivery,
    owner: &BareJid,
    requester: &Jid,
    op: &Element,
) -> Result<Option<Element>, StanzaError> {
    let node = node_of(op)?;
    let jid = subscriber(requester, op)?;
    let store = d.store();
    let config = store
        .pep_node(owner.as_str(), node)
        .await
        .map_err(|e| internal("cannot read a node", e))?
        .ok_or(Condition::ItemNotFound)?;
    may_read(d, owner, &jid.to_bare(), config.access).await?;
    let existing = store
        .pep_subscriptions(owner.as_str())
        .await
        .map_err(|e| internal("cannot read subscriptions", e))?;
    let already = existing.iter().any(|(n, j)| n == node && j == jid.as_str());
    if !already && existing.len() >= MAX_SUBSCRIPTIONS {
        return Err(StanzaError::with_type(
            ErrorType::Wait,
            Condition::ResourceConstraint,
        ));
    }
    match store
        .pep_subscribe(owner.as_str(), node, jid.as_str())
        .await
    {
        Ok(()) => {}
        Err(StoreError::NoSuchNode) => return Err(Condition::ItemNotFound.into()),
        Err(e) => return Err(internal("cannot subscribe", e)),
    }
    if config.send_last != SendLast::Never
        && let Some(event) = last_item_event(d, owner, node).await
    {
        d.headline(event_message(owner, &jid, event));
    }
    Ok(Some(
        Element::builder("pubsub", NS_PUBSUB)
            .append(subscription_element(node, jid.as_str(), "subscribed"))
            .build(),
    ))
}

/// Ends the requester's subscription (XEP-0060 §6.2).
pub(super) async fn unsubscribe(
    d: &Delivery,
    owner: &BareJid,
    requester: &Jid,
    op: &Element,
) -> Result<Option<Element>, StanzaError> {
    let node = node_of(op)?;
    let jid = subscriber(requester, op)?;
    let removed = d
        .store()
        .pep_unsubscribe(owner.as_str(), node, jid.as_str())
        .await
        .map_err(|e| internal("cannot unsubscribe", e))?;
    if !removed {
        return Err(
            StanzaError::with_type(ErrorType::Cancel, Condition::UnexpectedRequest)
                .application(Element::builder("not-subscribed", super::NS_ERRORS).build()),
        );
    }
    Ok(None)
}

/// The requester's subscriptions to `owner`'s nodes, or to one of them (XEP-0060 §5.6).
pub(super) async fn list(
    d: &Delivery,
    owner: &BareJid,
    requester: &Jid,
    op: &Element,
) -> Result<Option<Element>, StanzaError> {
    let only = op.attr("node");
    let all = d
        .store()
        .pep_subscriptions(owner.as_str())
        .await
        .map_err(|e| internal("cannot read subscriptions", e))?;
    let mut list = Element::builder("subscriptions", NS_PUBSUB).build();
    if let Some(node) = only {
        stanza::set_attr(&mut list, "node", node);
    }
    let mine = all.iter().filter(|(node, jid)| {
        only.is_none_or(|n| n == node)
            && Jid::new(jid).is_ok_and(|j| j.to_bare() == requester.to_bare())
    });
    for (node, jid) in mine {
        list.append_child(subscription_element(node, jid, "subscribed"));
    }
    Ok(Some(
        Element::builder("pubsub", NS_PUBSUB).append(list).build(),
    ))
}

/// The subscribers of a node that may read it now: a contact that was let in by its
/// presence subscription stops hearing of the node when that ends.
pub(super) async fn subscribers(
    d: &Delivery,
    owner: &BareJid,
    node: &str,
    config: &NodeConfig,
) -> Vec<Jid> {
    let all = match d.store().pep_subscriptions(owner.as_str()).await {
        Ok(all) => all,
        Err(e) => {
            warn!(error = %e, "cannot read subscriptions");
            return Vec::new();
        }
    };
    let mut to = Vec::new();
    for (_, jid) in all.into_iter().filter(|(n, _)| n == node) {
        let Ok(jid) = Jid::new(&jid) else { continue };
        if may_read(d, owner, &jid.to_bare(), config.access)
            .await
            .is_ok()
        {
            to.push(jid);
        }
    }
    to
}
