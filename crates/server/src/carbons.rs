//! Message carbons (XEP-0280): which messages a user's other clients get a copy of, and the
//! copies themselves. Delivery decides where they go; the router knows which sessions want
//! them.
//!
//! A copy is best-effort: the message itself is in the archive, where a client that missed
//! its copy finds it.

use jid::{BareJid, FullJid};
use minidom::Element;
use outpost_proto::stanza::{self, ns};

/// Payloads of instant messaging that make a message worth copying without a body
/// (XEP-0280 §6.1).
const IM_PAYLOADS: &[&str] = &[ns::RECEIPTS, ns::MARKERS, ns::CHATSTATES];

/// Whether the user's other clients get a copy of this message (XEP-0280 §6.1): a chat,
/// a normal message with a body, an error, or an IM payload; never group chat (the room
/// reaches every client), nor one marked `<private/>` or `<no-copy/>` (XEP-0334).
pub(crate) fn eligible(el: &Element) -> bool {
    if el.has_child("private", ns::CARBONS) || el.has_child("no-copy", ns::HINTS) {
        return false;
    }
    match el.attr("type").unwrap_or("normal") {
        "chat" | "error" => true,
        "normal" => {
            el.has_child("body", ns::CLIENT)
                || el
                    .children()
                    .any(|c| IM_PAYLOADS.contains(&c.ns().as_str()))
        }
        _ => false,
    }
}

/// Takes out the `<private/>` marker: it is a request to this server, not for the
/// recipient (XEP-0280 §7).
pub(crate) fn strip_private(el: &mut Element) {
    while el.remove_child("private", ns::CARBONS).is_some() {}
}

/// The copy for `to`, one of `owner`'s clients: `sent` for what another of its clients
/// sent, `received` for what another received (XEP-0280 §5).
pub(crate) fn copy(kind: &str, owner: &BareJid, to: &FullJid, el: &Element) -> Element {
    let forwarded = Element::builder("forwarded", ns::FORWARD)
        .append(el.clone())
        .build();
    Element::builder("message", ns::CLIENT)
        .attr(stanza::name("from"), owner.as_str())
        .attr(stanza::name("to"), to.as_str())
        .attr(stanza::name("type"), el.attr("type").unwrap_or("normal"))
        .append(
            Element::builder(kind, ns::CARBONS)
                .append(forwarded)
                .build(),
        )
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_copied() {
        let yes = [
            "<message xmlns='jabber:client' type='chat'><body>hi</body></message>",
            "<message xmlns='jabber:client' type='chat'/>",
            "<message xmlns='jabber:client'><body>hi</body></message>",
            "<message xmlns='jabber:client'><received xmlns='urn:xmpp:receipts' id='x'/></message>",
            "<message xmlns='jabber:client' type='error'/>",
        ];
        let no = [
            "<message xmlns='jabber:client' type='groupchat'><body>hi</body></message>",
            "<message xmlns='jabber:client' type='headline'><body>hi</body></message>",
            "<message xmlns='jabber:client'/>",
            "<message xmlns='jabber:client' type='chat'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>",
            "<message xmlns='jabber:client' type='chat'><body>x</body><no-copy xmlns='urn:xmpp:hints'/></message>",
        ];
        for xml in yes {
            assert!(eligible(&xml.parse().unwrap()), "{xml}");
        }
        for xml in no {
            assert!(!eligible(&xml.parse().unwrap()), "{xml}");
        }
        let mut el: Element =
            "<message xmlns='jabber:client'><private xmlns='urn:xmpp:carbons:2'/><body>x</body></message>"
                .parse()
                .unwrap();
        strip_private(&mut el);
        assert!(!el.has_child("private", ns::CARBONS) && el.has_child("body", ns::CLIENT));
    }
}
