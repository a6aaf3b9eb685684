//! Personal eventing (XEP-0163): the part of publish-subscribe (XEP-0060) that clients use
//! on their own bare JID, for OMEMO keys, avatars (XEP-0084), bookmarks (XEP-0402),
//! nicknames (XEP-0172) and the like.
//!
//! Every account is a pubsub service whose nodes its owner creates by publishing. A node's
//! access model decides who may read it and who hears of new items; only clients that
//! announced interest (`node+notify` in their entity capabilities, XEP-0115) get events,
//! and a client that becomes available gets the last item of each node it is interested
//! in. Publish options are preconditions (XEP-0060 §7.1.5): they configure a node the
//! publish creates, and must match the configuration of one that exists.
//!
//! Anyone a node's access model lets read it may also subscribe to it explicitly
//! (XEP-0163 §8, [`subscriptions`]): how an OMEMO correspondent without a presence
//! subscription follows a device list. Subscribers hear of events whatever they announced.
//!
//! Not here: subscription options, collections, and item expiry.

use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use outpost_proto::forms::{Form, Submitted};
use outpost_proto::stanza::{self, Condition, ErrorType, StanzaError, ns};
use outpost_store::{AccessModel, NodeConfig, PepItem, SendLast, Subscription};
use tracing::warn;

use crate::caps::{Announced, Learnt};
use crate::delivery::Delivery;
use crate::router::ToSession;
use crate::services::IqAnswer;

mod subscriptions;

pub(crate) const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub(crate) const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub(crate) const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
/// Bookmarks (XEP-0402 and XEP-0048 in PEP) are private whatever a client asks.
const PRIVATE_NODES: &[&str] = &["urn:xmpp:bookmarks:1", "storage:bookmarks"];

/// The most items a node keeps (`max` in a configuration means this).
pub(crate) const MAX_ITEMS: u32 = 256;
/// The most nodes one account may have.
const MAX_NODES: usize = 1000;

/// What the service says it does, on the account's bare JID (XEP-0060 §5.1).
pub(crate) const FEATURES: &[&str] = &[
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#multi-items",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#presence-notifications",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#retrieve-subscriptions",
    "http://jabber.org/protocol/pubsub#subscribe",
];

/// A node's configuration before anyone set one (what Prosody and ejabberd default to).
fn default_config() -> NodeConfig {
    NodeConfig {
        access: AccessModel::Presence,
        max_items: 1,
        send_last: SendLast::OnSubAndPresence,
        notify_retract: true,
        title: None,
    }
}

/// A pubsub error: a defined condition with XEP-0060's application condition.
fn error(condition: Condition, app: Option<&str>) -> StanzaError {
    let e = StanzaError::new(condition);
    match app {
        Some(name) => e.application(Element::builder(name, NS_ERRORS).build()),
        None => e,
    }
}

/// A request for what the service does not do: `<unsupported feature='…'/>` names the
/// XEP-0060 feature (an operation's name is mostly its feature's).
fn unsupported(operation: &str) -> StanzaError {
    let feature = match operation {
        "options" => "subscription-options",
        "affiliations" => "retrieve-affiliations",
        "default" => "retrieve-default",
        other => other,
    };
    StanzaError::with_type(ErrorType::Cancel, Condition::FeatureNotImplemented).application(
        Element::builder("unsupported", NS_ERRORS)
            .attr(stanza::name("feature"), feature)
            .build(),
    )
}

fn internal(what: &str, e: impl std::fmt::Display) -> StanzaError {
    warn!(error = %e, "{what}");
    StanzaError::new(Condition::InternalServerError)
}

/// An IQ whose payload is `<pubsub/>` or `<pubsub xmlns='…#owner'/>`, to `owner`'s bare JID,
/// from `requester` (the owner's own client, or anyone, here or elsewhere).
pub(crate) async fn iq(d: &Delivery, owner: &BareJid, requester: &Jid, el: &Element) -> IqAnswer {
    let is_owner = requester.to_bare() == *owner;
    let set = el.attr("type") == Some("set");
    if let Some(pubsub) = el.get_child("pubsub", NS_PUBSUB) {
        let Some(op) = pubsub.children().next() else {
            return Err(Condition::BadRequest.into());
        };
        let options = pubsub
            .get_child("publish-options", NS_PUBSUB)
            .and_then(|o| o.children().find_map(Submitted::parse));
        let payload = match (op.name(), set) {
            ("publish", true) if is_owner => publish(d, owner, op, options.as_ref()).await?,
            ("items", false) => items(d, owner, requester, op).await?,
            ("retract", true) if is_owner => retract(d, owner, op).await?,
            ("create", true) if is_owner => {
                let configure = pubsub
                    .get_child("configure", NS_PUBSUB)
                    .and_then(|c| c.children().find_map(Submitted::parse));
                create(d, owner, op, configure.as_ref()).await?
            }
            ("publish" | "retract" | "create", true) => {
                return Err(error(Condition::Forbidden, None));
            }
            ("subscribe", true) => subscriptions::subscribe(d, owner, requester, op).await?,
            ("unsubscribe", true) => subscriptions::unsubscribe(d, owner, requester, op).await?,
            ("subscriptions", false) => subscriptions::list(d, owner, requester, op).await?,
            (name, _) => return Err(unsupported(name)),
        };
        return Ok(reply(el, payload));
    }
    let pubsub = el
        .get_child("pubsub", NS_OWNER)
        .ok_or(Condition::BadRequest)?;
    if !is_owner {
        return Err(error(Condition::Forbidden, None));
    }
    let op = pubsub.children().next().ok_or(Condition::BadRequest)?;
    let payload = match (op.name(), set) {
        ("configure", false) => Some(configure_form(d, owner, node_of(op)?).await?),
        ("configure", true) => configure(d, owner, op).await?,
        ("delete", true) => delete(d, owner, node_of(op)?).await?,
        ("purge", true) => purge(d, owner, node_of(op)?).await?,
        ("default", false) => Some(default_form()),
        ("affiliations", _) => return Err(unsupported("modify-affiliations")),
        ("subscriptions", _) => return Err(unsupported("manage-subscriptions")),
        (name, _) => return Err(unsupported(name)),
    };
    Ok(reply(el, payload))
}

fn reply(request: &Element, payload: Option<Element>) -> Element {
    let mut r = stanza::iq_result(request, request.attr("to"));
    if let Some(p) = payload {
        r.append_child(p);
    }
    r
}

fn node_of(op: &Element) -> Result<&str, StanzaError> {
    op.attr("node")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| error(Condition::BadRequest, Some("nodeid-required")))
}

/// Publishes an item (XEP-0060 §7.1), creating the node if needed, and tells subscribers.
async fn publish(
    d: &Delivery,
    owner: &BareJid,
    op: &Element,
    options: Option<&Submitted>,
) -> Result<Option<Element>, StanzaError> {
    let node = node_of(op)?;
    let item = op
        .get_child("item", NS_PUBSUB)
        .ok_or_else(|| error(Condition::BadRequest, Some("item-required")))?;
    let payload = item
        .children()
        .next()
        .ok_or_else(|| error(Condition::BadRequest, Some("payload-required")))?;
    let id = item
        .attr("id")
        .filter(|i| !i.is_empty())
        .map_or_else(|| crate::ids::random_id(16), str::to_owned);
    let config = node_for_publish(d, owner, node, options).await?;
    let text = serialise(payload)?;
    let stored = PepItem {
        id: id.clone(),
        payload: text,
    };
    d.store()
        .pep_publish(owner.as_str(), node, &stored)
        .await
        .map_err(|e| internal("cannot publish", e))?;
    let event = Element::builder("items", NS_EVENT)
        .attr(stanza::name("node"), node)
        .append(
            Element::builder("item", NS_EVENT)
                .attr(stanza::name("id"), id.as_str())
                .attr(stanza::name("publisher"), owner.as_str())
                .append(payload.clone())
                .build(),
        )
        .build();
    notify(d, owner, node, &config, event).await;
    let published = Element::builder("publish", NS_PUBSUB)
        .attr(stanza::name("node"), node)
        .append(
            Element::builder("item", NS_PUBSUB)
                .attr(stanza::name("id"), id)
                .build(),
        )
        .build();
    Ok(Some(
        Element::builder("pubsub", NS_PUBSUB)
            .append(published)
            .build(),
    ))
}

/// The configuration of the node a publish goes to: created with the publish options if
/// it does not exist, checked against them if it does (XEP-0060 §7.1.5).
async fn node_for_publish(
    d: &Delivery,
    owner: &BareJid,
    node: &str,
    options: Option<&Submitted>,
) -> Result<NodeConfig, StanzaError> {
    let store = d.store();
    let existing = store
        .pep_node(owner.as_str(), node)
        .await
        .map_err(|e| internal("cannot read a node", e))?;
    let wanted = match options {
        Some(form) => Some(
            read_config(form, node, existing.clone().unwrap_or_else(default_config))
                .map_err(|e| error(Condition::BadRequest, Some("invalid-options")).text(e))?,
        ),
        None => None,
    };
    match (existing, wanted) {
        (Some(current), Some(wanted)) if current != wanted => Err(StanzaError::with_type(
            ErrorType::Cancel,
            Condition::Conflict,
        )
        .application(Element::builder("precondition-not-met", NS_ERRORS).build())),
        (Some(current), _) => Ok(current),
        (None, wanted) => {
            let config = wanted.unwrap_or_else(|| fixed(node, default_config()));
            create_node(d, owner, node, &config).await?;
            Ok(config)
        }
    }
}

async fn create_node(
    d: &Delivery,
    owner: &BareJid,
    node: &str,
    config: &NodeConfig,
) -> Result<(), StanzaError> {
    let store = d.store();
    let count = store
        .pep_nodes(owner.as_str())
        .await
        .map_err(|e| internal("cannot read nodes", e))?
        .len();
    if count >= MAX_NODES {
        return Err(StanzaError::with_type(
            ErrorType::Wait,
            Condition::ResourceConstraint,
        ));
    }
    store
        .pep_configure(owner.as_str(), node, config)
        .await
        .map_err(|e| internal("cannot create a node", e))
}

/// What a configuration form (node_config or publish-options) asks for, over `base`.
/// Fields the server does not keep are accepted and change nothing.
fn read_config(form: &Submitted, node: &str, base: NodeConfig) -> Result<NodeConfig, String> {
    if let Some(t) = form
        .form_type()
        .filter(|t| *t != NODE_CONFIG && *t != PUBLISH_OPTIONS)
    {
        return Err(format!("a form of type {t}"));
    }
    let mut c = base;
    if let Some(a) = form.first("pubsub#access_model") {
        c.access = AccessModel::parse(a.trim()).ok_or_else(|| format!("access model `{a}`"))?;
    }
    if let Some(m) = form.first("pubsub#max_items") {
        c.max_items = match m.trim() {
            "max" => MAX_ITEMS,
            n => n
                .parse::<u32>()
                .map_err(|_| format!("max_items `{m}`"))?
                .clamp(1, MAX_ITEMS),
        };
    }
    if let Some(s) = form.first("pubsub#send_last_published_item") {
        c.send_last = SendLast::parse(s.trim()).ok_or_else(|| format!("send_last `{s}`"))?;
    }
    if let Some(b) = form.boolean("pubsub#notify_retract") {
        c.notify_retract = b.map_err(|v| format!("notify_retract `{v}`"))?;
    }
    if let Some(t) = form.first("pubsub#title") {
        c.title = Some(t.to_owned()).filter(|t| !t.is_empty());
    }
    Ok(fixed(node, c))
}

/// What the server decides whatever a client asks: bookmarks stay private.
fn fixed(node: &str, mut c: NodeConfig) -> NodeConfig {
    if PRIVATE_NODES.contains(&node) {
        c.access = AccessModel::Whitelist;
    }
    c
}

fn serialise(el: &Element) -> Result<String, StanzaError> {
    let mut text = Vec::new();
    outpost_proto::xml::write_stanza(el, &mut text).map_err(|_| Condition::NotAcceptable)?;
    String::from_utf8(text).map_err(|_| Condition::NotAcceptable.into())
}

/// Whether `who` may read `owner`'s node with this access model (XEP-0060 §6.1.3).
async fn may_read(
    d: &Delivery,
    owner: &BareJid,
    who: &BareJid,
    access: AccessModel,
) -> Result<(), StanzaError> {
    if who == owner || access == AccessModel::Open {
        return Ok(());
    }
    if access == AccessModel::Whitelist {
        return Err(
            StanzaError::with_type(ErrorType::Cancel, Condition::NotAllowed)
                .application(Element::builder("closed-node", NS_ERRORS).build()),
        );
    }
    let item = d
        .store()
        .roster_item(owner.as_str(), who.as_str())
        .await
        .map_err(|e| internal("cannot read roster", e))?;
    match (access, item.map(|i| i.subscription)) {
        (AccessModel::Roster, Some(_)) => Ok(()),
        (AccessModel::Presence, Some(Subscription::From | Subscription::Both)) => Ok(()),
        (AccessModel::Roster, None) => {
            Err(error(Condition::NotAuthorized, Some("not-in-roster-group")))
        }
        _ => Err(error(
            Condition::NotAuthorized,
            Some("presence-subscription-required"),
        )),
    }
}

/// Retrieves items (XEP-0060 §6.5): those asked for by id, or the newest `max_items`
/// (all), oldest first.
async fn items(
    d: &Delivery,
    owner: &BareJid,
    requester: &Jid,
    op: &Element,
) -> Result<Option<Element>, StanzaError> {
    let node = node_of(op)?;
    let store = d.store();
    let config = existing_node(d, owner, node).await?;
    may_read(d, owner, &requester.to_bare(), config.access).await?;
    let asked: Vec<&str> = op
        .children()
        .filter(|c| c.is("item", NS_PUBSUB))
        .filter_map(|c| c.attr("id"))
        .collect();
    let mut found = Vec::new();
    if asked.is_empty() {
        let limit = op.attr("max_items").and_then(|m| m.parse::<u32>().ok());
        found = store
            .pep_items(owner.as_str(), node, limit)
            .await
            .map_err(|e| internal("cannot read items", e))?;
        found.reverse();
    } else {
        for id in asked {
            if let Some(item) = store
                .pep_item(owner.as_str(), node, id)
                .await
                .map_err(|e| internal("cannot read an item", e))?
            {
                found.push(item);
            }
        }
    }
    let mut items = Element::builder("items", NS_PUBSUB)
        .attr(stanza::name("node"), node)
        .build();
    for item in found {
        items.append_child(item_element(NS_PUBSUB, &item));
    }
    Ok(Some(
        Element::builder("pubsub", NS_PUBSUB).append(items).build(),
    ))
}

/// An `<item/>` carrying a stored payload.
fn item_element(namespace: &str, item: &PepItem) -> Element {
    let mut el = Element::builder("item", namespace)
        .attr(stanza::name("id"), item.id.as_str())
        .build();
    if let Ok(payload) = item.payload.parse::<Element>() {
        el.append_child(payload);
    }
    el
}

/// Retracts an item (XEP-0060 §7.2); subscribers hear of it when the node or the request
/// says so.
async fn retract(
    d: &Delivery,
    owner: &BareJid,
    op: &Element,
) -> Result<Option<Element>, StanzaError> {
    let node = node_of(op)?;
    let id = op
        .get_child("item", NS_PUBSUB)
        .and_then(|i| i.attr("id"))
        .ok_or_else(|| error(Condition::BadRequest, Some("item-required")))?;
    let store = d.store();
    let config = existing_node(d, owner, node).await?;
    let removed = store
        .pep_retract(owner.as_str(), node, id)
        .await
        .map_err(|e| internal("cannot retract", e))?;
    if !removed {
        return Err(Condition::ItemNotFound.into());
    }
    let asked = matches!(op.attr("notify"), Some("true" | "1"));
    if asked || config.notify_retract {
        let event = Element::builder("items", NS_EVENT)
            .attr(stanza::name("node"), node)
            .append(
                Element::builder("retract", NS_EVENT)
                    .attr(stanza::name("id"), id)
                    .build(),
            )
            .build();
        notify(d, owner, node, &config, event).await;
    }
    Ok(None)
}

/// Creates a node (XEP-0060 §8.1), with a configuration form if given.
async fn create(
    d: &Delivery,
    owner: &BareJid,
    op: &Element,
    form: Option<&Submitted>,
) -> Result<Option<Element>, StanzaError> {
    let node = node_of(op)?;
    let exists = d
        .store()
        .pep_node(owner.as_str(), node)
        .await
        .map_err(|e| internal("cannot read a node", e))?
        .is_some();
    if exists {
        return Err(Condition::Conflict.into());
    }
    let config = match form {
        Some(f) => read_config(f, node, default_config())
            .map_err(|e| StanzaError::new(Condition::NotAcceptable).text(e))?,
        None => fixed(node, default_config()),
    };
    create_node(d, owner, node, &config).await?;
    Ok(None)
}

/// The node configuration form (XEP-0060 §8.2), with the node's values.
async fn configure_form(d: &Delivery, owner: &BareJid, node: &str) -> Result<Element, StanzaError> {
    let config = existing_node(d, owner, node).await?;
    let configure = Element::builder("configure", NS_OWNER)
        .attr(stanza::name("node"), node)
        .append(config_form("form", &config))
        .build();
    Ok(Element::builder("pubsub", NS_OWNER)
        .append(configure)
        .build())
}

fn default_form() -> Element {
    let default = Element::builder("default", NS_OWNER)
        .append(config_form("form", &default_config()))
        .build();
    Element::builder("pubsub", NS_OWNER).append(default).build()
}

fn config_form(kind: &str, c: &NodeConfig) -> Element {
    let max = c.max_items.to_string();
    let notify = if c.notify_retract { "1" } else { "0" };
    Form::new(kind, NODE_CONFIG)
        .list(
            "pubsub#access_model",
            "list-single",
            "Who may subscribe and retrieve items",
            &[c.access.as_str()],
            &[
                ("open", "Anyone"),
                ("presence", "Contacts subscribed to my presence"),
                ("roster", "Contacts in my roster"),
                ("whitelist", "Only me"),
            ],
        )
        .field(
            "pubsub#max_items",
            "text-single",
            Some("Items kept"),
            &[max.as_str()],
        )
        .list(
            "pubsub#send_last_published_item",
            "list-single",
            "When to send the last item",
            &[c.send_last.as_str()],
            &[
                ("on_sub_and_presence", "On subscription and presence"),
                ("on_sub", "On subscription"),
                ("never", "Never"),
            ],
        )
        .field(
            "pubsub#notify_retract",
            "boolean",
            Some("Notify of retractions"),
            &[notify],
        )
        .field(
            "pubsub#persist_items",
            "boolean",
            Some("Keep items"),
            &["1"],
        )
        .field(
            "pubsub#title",
            "text-single",
            Some("Title"),
            &[c.title.as_deref().unwrap_or("")],
        )
        .build()
}

/// Reconfigures a node (XEP-0060 §8.2.4).
async fn configure(
    d: &Delivery,
    owner: &BareJid,
    op: &Element,
) -> Result<Option<Element>, StanzaError> {
    let node = node_of(op)?;
    let form = op
        .children()
        .find_map(Submitted::parse)
        .ok_or(Condition::BadRequest)?;
    let store = d.store();
    let current = existing_node(d, owner, node).await?;
    let config = read_config(&form, node, current)
        .map_err(|e| StanzaError::new(Condition::NotAcceptable).text(e))?;
    store
        .pep_configure(owner.as_str(), node, &config)
        .await
        .map_err(|e| internal("cannot configure a node", e))?;
    Ok(None)
}

/// The configuration of `owner`'s node, which must exist.
async fn existing_node(
    d: &Delivery,
    owner: &BareJid,
    node: &str,
) -> Result<NodeConfig, StanzaError> {
    d.store()
        .pep_node(owner.as_str(), node)
        .await
        .map_err(|e| internal("cannot read a node", e))?
        .ok_or_else(|| Condition::ItemNotFound.into())
}

/// Deletes a node (XEP-0060 §8.4), telling subscribers.
async fn delete(d: &Delivery, owner: &BareJid, node: &str) -> Result<Option<Element>, StanzaError> {
    let store = d.store();
    let config = existing_node(d, owner, node).await?;
    // Its subscriptions go with it: who hears of the deletion is known before.
    let hearers = listeners(d, owner, node, &config).await;
    store
        .pep_delete_node(owner.as_str(), node)
        .await
        .map_err(|e| internal("cannot delete a node", e))?;
    let event = Element::builder("delete", NS_EVENT)
        .attr(stanza::name("node"), node)
        .build();
    send_event(d, owner, node, hearers, &event);
    Ok(None)
}

/// Purges a node's items (XEP-0060 §8.5), telling subscribers.
async fn purge(d: &Delivery, owner: &BareJid, node: &str) -> Result<Option<Element>, StanzaError> {
    let store = d.store();
    let config = existing_node(d, owner, node).await?;
    store
        .pep_purge(owner.as_str(), node)
        .await
        .map_err(|e| internal("cannot purge a node", e))?;
    let event = Element::builder("purge", NS_EVENT)
        .attr(stanza::name("node"), node)
        .build();
    notify(d, owner, node, &config, event).await;
    Ok(None)
}

/// The accounts whose clients may hear of events on `owner`'s node by their capabilities:
/// the owner and, unless the node is the owner's alone, the contacts its access model
/// lets in.
async fn accounts(d: &Delivery, owner: &BareJid, config: &NodeConfig) -> Vec<BareJid> {
    let mut accounts = vec![owner.clone()];
    if config.access != AccessModel::Whitelist {
        match d.store().roster(owner.as_str()).await {
            Ok(roster) => accounts.extend(
                roster
                    .items
                    .iter()
                    .filter(|i| {
                        config.access == AccessModel::Roster
                            || matches!(i.subscription, Subscription::From | Subscription::Both)
                    })
                    .filter_map(|i| BareJid::new(&i.jid).ok()),
            ),
            Err(e) => warn!(error = %e, "cannot read roster for notifications"),
        }
    }
    accounts
}

/// Who hears of events on `owner`'s node: its explicit subscribers that may still read it,
/// and the clients that announced `node+notify`: the owner's own and, unless the node is
/// the owner's alone, the contacts its access model lets in. A client reached through a
/// subscription of its bare JID is not sent the event a second time. Also the accounts
/// whose clients hear of it by their capabilities (see [`elsewhere`]).
async fn listeners(
    d: &Delivery,
    owner: &BareJid,
    node: &str,
    config: &NodeConfig,
) -> (Vec<Jid>, Vec<BareJid>) {
    let mut to = subscriptions::subscribers(d, owner, node, config).await;
    let accounts = accounts(d, owner, config).await;
    let interest = format!("{node}+notify");
    let interested: Vec<Jid> = accounts
        .iter()
        .flat_map(|a| d.caps().clients(a))
        .filter(|(_, features)| features.as_ref().is_some_and(|f| f.contains(&interest)))
        .map(|(jid, _)| Jid::from(jid))
        .filter(|jid| !to.contains(jid) && !to.contains(&Jid::from(jid.to_bare())))
        .collect();
    to.extend(interested);
    (to, accounts)
}

/// Sends an event (`<items/>`, `<delete/>`, `<purge/>`) to everyone who hears of the node.
async fn notify(d: &Delivery, owner: &BareJid, node: &str, config: &NodeConfig, event: Element) {
    let hearers = listeners(d, owner, node, config).await;
    send_event(d, owner, node, hearers, &event);
}

/// Sends an event to those [`listeners`] found: here, and on a cluster's other nodes.
fn send_event(
    d: &Delivery,
    owner: &BareJid,
    node: &str,
    (to, accounts): (Vec<Jid>, Vec<BareJid>),
    event: &Element,
) {
    elsewhere(d, owner, node, &accounts, &to, event);
    for to in to {
        d.headline(event_message(owner, &to, event.clone()));
    }
}

/// On a cluster: the clients of the owner and of its contacts that are on other nodes,
/// whose verified capabilities only their own node knows, get the event through their
/// session there, which sends it if its client announced `node+notify`
/// ([`ToSession::Event`]). Those `to` names already are not sent it twice.
fn elsewhere(
    d: &Delivery,
    owner: &BareJid,
    node: &str,
    accounts: &[BareJid],
    to: &[Jid],
    event: &Element,
) {
    let interest = format!("{node}+notify");
    for account in accounts.iter().filter(|a| d.is_local(a.domain().as_str())) {
        for (jid, mailbox) in d.router().elsewhere(account) {
            let full = Jid::from(jid.clone());
            if to.contains(&full) || to.contains(&Jid::from(jid.to_bare())) {
                continue;
            }
            let el = event_message(owner, &full, event.clone());
            let msg = ToSession::Event {
                interest: interest.as_str().into(),
                el: Box::new(el),
            };
            let _ = crate::router::deliver(&mailbox, msg);
        }
    }
}

fn event_message(owner: &BareJid, to: &Jid, event: Element) -> Element {
    Element::builder("message", ns::CLIENT)
        .attr(stanza::name("from"), owner.as_str())
        .attr(stanza::name("to"), to.as_str())
        .attr(stanza::name("type"), "headline")
        .attr(stanza::name("id"), crate::ids::random_id(12))
        .append(Element::builder("event", NS_EVENT).append(event).build())
        .build()
}

/// The last item of `owner`'s node as an event, if it has one.
async fn last_item_event(d: &Delivery, owner: &BareJid, node: &str) -> Option<Element> {
    let mut items = d
        .store()
        .pep_items(owner.as_str(), node, Some(1))
        .await
        .ok()?;
    let item = items.pop()?;
    Some(
        Element::builder("items", NS_EVENT)
            .attr(stanza::name("node"), node)
            .append(item_element(NS_EVENT, &item))
            .build(),
    )
}

/// Sends `to`, a client that announced `features`, the last item of each of `owner`'s nodes
/// it is interested in and may read (XEP-0163 §4.3: on presence).
async fn send_last_items(d: &Delivery, owner: &BareJid, to: &FullJid, features: &[String]) {
    let store = d.store();
    let nodes = match store.pep_nodes(owner.as_str()).await {
        Ok(nodes) => nodes,
        Err(e) => {
            warn!(error = %e, "cannot read nodes");
            return;
        }
    };
    let reader = to.to_bare();
    for (node, config) in nodes {
        let wanted = format!("{node}+notify");
        if config.send_last != SendLast::OnSubAndPresence || !features.contains(&wanted) {
            continue;
        }
        if may_read(d, owner, &reader, config.access).await.is_err() {
            continue;
        }
        if let Some(event) = last_item_event(d, owner, &node).await {
            d.headline(event_message(owner, &Jid::from(to.clone()), event));
        }
    }
}

/// A client's available presence passed through the server: a local user's own (`owners`:
/// the user and the local contacts it follows), or a contact's reaching a local user
/// (`owners`: that user). Its caps say what it wants; it gets the last items it has not
/// had yet, now or once its caps are known. `server` is our address for the question.
pub(crate) async fn available(
    d: &Delivery,
    who: &FullJid,
    presence: &Element,
    owners: Vec<BareJid>,
    server: &str,
) {
    match d
        .caps()
        .available(who, Announced::of(presence), server, owners)
    {
        Learnt::Features(features, owners) => {
            for owner in owners {
                send_last_items(d, &owner, who, &features).await;
            }
        }
        Learnt::Ask(iq) => d.send(iq),
        Learnt::Nothing => {}
    }
}

/// An IQ answer addressed to the server: the answer to a caps question, if it is one
/// (then the client gets what it was waiting for). Returns whether it was.
pub(crate) async fn answer(d: &Delivery, iq: &Element) -> bool {
    match d.caps().answer(iq) {
        None => false,
        Some(None) => true,
        Some(Some((who, features, owners))) => {
            for owner in owners {
                send_last_items(d, &owner, &who, &features).await;
            }
            true
        }
    }
}

/// The disco#items of an account (XEP-0030 §4, XEP-0060 §5.2): the nodes `requester` may
/// read.
pub(crate) async fn node_items(d: &Delivery, owner: &BareJid, requester: &BareJid) -> Vec<Element> {
    let Ok(nodes) = d.store().pep_nodes(owner.as_str()).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (node, config) in nodes {
        if may_read(d, owner, requester, config.access).await.is_ok() {
            out.push(
                Element::builder("item", ns::DISCO_ITEMS)
                    .attr(stanza::name("jid"), owner.as_str())
                    .attr(stanza::name("node"), node)
                    .build(),
            );
        }
    }
    out
}

/// Publishes `payload` to the user's own node, as a client would, for what the server
/// does on the user's behalf (the vCard avatar's PEP copy, bookmarks written as private
/// XML). `config` applies when the node is created.
pub(crate) async fn publish_for(
    d: &Delivery,
    owner: &BareJid,
    node: &str,
    id: &str,
    payload: &Element,
    config: NodeConfig,
) -> Result<(), StanzaError> {
    let store = d.store();
    let current = store
        .pep_node(owner.as_str(), node)
        .await
        .map_err(|e| internal("cannot read a node", e))?;
    let config = match current {
        Some(c) => c,
        None => {
            create_node(d, owner, node, &config).await?;
            config
        }
    };
    let item = PepItem {
        id: id.to_owned(),
        payload: serialise(payload)?,
    };
    store
        .pep_publish(owner.as_str(), node, &item)
        .await
        .map_err(|e| internal("cannot publish", e))?;
    let event = Element::builder("items", NS_EVENT)
        .attr(stanza::name("node"), node)
        .append(item_element(NS_EVENT, &item))
        .build();
    notify(d, owner, node, &config, event).await;
    Ok(())
}

/// Items of one of the user's nodes, oldest first, for the server's own use.
pub(crate) async fn own_items(d: &Delivery, owner: &BareJid, node: &str) -> Vec<PepItem> {
    let mut items = d
        .store()
        .pep_items(owner.as_str(), node, None)
        .await
        .unwrap_or_default();
    items.reverse();
    items
}

/// Retracts an item of one of the user's nodes on its behalf, telling subscribers.
pub(crate) async fn retract_for(d: &Delivery, owner: &BareJid, node: &str, id: &str) {
    let Ok(Some(config)) = d.store().pep_node(owner.as_str(), node).await else {
        return;
    };
    if d.store()
        .pep_retract(owner.as_str(), node, id)
        .await
        .unwrap_or(false)
        && config.notify_retract
    {
        let event = Element::builder("items", NS_EVENT)
            .attr(stanza::name("node"), node)
            .append(
                Element::builder("retract", NS_EVENT)
                    .attr(stanza::name("id"), id)
                    .build(),
            )
            .build();
        notify(d, owner, node, &config, event).await;
    }
}

/// A node configuration for what the server publishes on a user's behalf.
pub(crate) fn config_for(access: AccessModel, max_items: u32) -> NodeConfig {
    NodeConfig {
        access,
        max_items,
        ..default_config()
    }
}

/// Whether the payload of an IQ is this service's.
pub(crate) fn is_pubsub(el: &Element) -> bool {
    el.has_child("pubsub", NS_PUBSUB) || el.has_child("pubsub", NS_OWNER)
}
