//! Private XML storage (XEP-0049), and the bookmarks kept there by older clients
//! (XEP-0048) seen through the personal eventing node newer ones use (XEP-0402 §5.3,
//! `urn:xmpp:bookmarks:1#compat`): one list of rooms, whichever way it is read or written.

use jid::BareJid;
use minidom::Element;
use outpost_proto::stanza::{self, Condition, StanzaError};
use outpost_store::AccessModel;
use tracing::warn;

use crate::delivery::Delivery;
use crate::pep;
use crate::services::IqAnswer;

pub(crate) const NS_PRIVATE: &str = "jabber:iq:private";
const NS_STORAGE: &str = "storage:bookmarks";
pub(crate) const NS_BOOKMARKS: &str = "urn:xmpp:bookmarks:1";

/// A private XML get or set by the account's owner (XEP-0049 §2).
pub(crate) async fn iq(d: &Delivery, owner: &BareJid, request: &Element) -> IqAnswer {
    let query = request
        .get_child("query", NS_PRIVATE)
        .ok_or(Condition::BadRequest)?;
    let mut children = query.children();
    let (Some(payload), None) = (children.next(), children.next()) else {
        // §3: exactly one child, which says the namespace.
        return Err(Condition::NotAcceptable.into());
    };
    let namespace = payload.ns();
    if matches!(
        namespace.as_str(),
        NS_PRIVATE | "jabber:client" | "jabber:server"
    ) {
        // §3: the protocol's own namespaces hold no private data.
        return Err(Condition::NotAcceptable.into());
    }
    let stored = if request.attr("type") == Some("set") {
        set(d, owner, payload).await?;
        None
    } else {
        Some(get(d, owner, payload).await?)
    };
    let mut reply = stanza::iq_result(request, None);
    if let Some(stored) = stored {
        reply.append_child(Element::builder("query", NS_PRIVATE).append(stored).build());
    }
    Ok(reply)
}

async fn get(d: &Delivery, owner: &BareJid, asked: &Element) -> Result<Element, StanzaError> {
    let namespace = asked.ns();
    if namespace == NS_STORAGE {
        return Ok(bookmarks_as_storage(d, owner).await);
    }
    let stored = d
        .store()
        .private_xml(owner.as_str(), &namespace)
        .await
        .map_err(|e| internal("cannot read private XML", e))?;
    Ok(stored
        .and_then(|text| text.parse::<Element>().ok())
        .unwrap_or_else(|| Element::builder(asked.name(), namespace.as_str()).build()))
}

async fn set(d: &Delivery, owner: &BareJid, payload: &Element) -> Result<(), StanzaError> {
    let namespace = payload.ns();
    if namespace == NS_STORAGE {
        return storage_to_bookmarks(d, owner, payload).await;
    }
    let mut text = Vec::new();
    outpost_proto::xml::write_stanza(payload, &mut text).map_err(|_| Condition::NotAcceptable)?;
    let text = String::from_utf8(text).map_err(|_| Condition::NotAcceptable)?;
    d.store()
        .set_private_xml(owner.as_str(), &namespace, &text)
        .await
        .map_err(|e| internal("cannot store private XML", e))
}

/// The XEP-0402 bookmarks as an XEP-0048 `<storage/>`.
async fn bookmarks_as_storage(d: &Delivery, owner: &BareJid) -> Element {
    let mut storage = Element::builder("storage", NS_STORAGE).build();
    for item in pep::own_items(d, owner, NS_BOOKMARKS).await {
        let Ok(conference) = item.payload.parse::<Element>() else {
            continue;
        };
        let mut c = Element::builder("conference", NS_STORAGE)
            .attr(stanza::name("jid"), item.id.as_str())
            .build();
        for attr in ["name", "autojoin"] {
            if let Some(v) = conference.attr(attr) {
                stanza::set_attr(&mut c, attr, v);
            }
        }
        for child in ["nick", "password"] {
            if let Some(v) = conference.get_child(child, NS_BOOKMARKS) {
                c.append_child(Element::builder(child, NS_STORAGE).append(v.text()).build());
            }
        }
        storage.append_child(c);
    }
    storage
}

/// An XEP-0048 `<storage/>` written as XEP-0402 bookmarks: each room published, the rooms
/// no longer listed retracted.
async fn storage_to_bookmarks(
    d: &Delivery,
    owner: &BareJid,
    storage: &Element,
) -> Result<(), StanzaError> {
    let mut listed = Vec::new();
    for c in storage
        .children()
        .filter(|c| c.is("conference", NS_STORAGE))
    {
        let Some(room) = c.attr("jid").filter(|j| jid::BareJid::new(j).is_ok()) else {
            continue;
        };
        let mut conference = Element::builder("conference", NS_BOOKMARKS).build();
        if let Some(name) = c.attr("name") {
            stanza::set_attr(&mut conference, "name", name);
        }
        let autojoin = matches!(c.attr("autojoin"), Some("true" | "1"));
        stanza::set_attr(
            &mut conference,
            "autojoin",
            if autojoin { "true" } else { "false" },
        );
        for child in ["nick", "password"] {
            if let Some(v) = c.get_child(child, NS_STORAGE) {
                conference.append_child(
                    Element::builder(child, NS_BOOKMARKS)
                        .append(v.text())
                        .build(),
                );
            }
        }
        let config = pep::config_for(AccessModel::Whitelist, pep::MAX_ITEMS);
        pep::publish_for(d, owner, NS_BOOKMARKS, room, &conference, config).await?;
        listed.push(room.to_owned());
    }
    for old in pep::own_items(d, owner, NS_BOOKMARKS).await {
        if !listed.contains(&old.id) {
            pep::retract_for(d, owner, NS_BOOKMARKS, &old.id).await;
        }
    }
    Ok(())
}

fn internal(what: &str, e: impl std::fmt::Display) -> StanzaError {
    warn!(error = %e, "{what}");
    StanzaError::new(Condition::InternalServerError)
}
