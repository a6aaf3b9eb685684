//! Namespaces and small helpers for building and answering stanzas.

use minidom::Element;
use minidom::rxml::{Namespace, NcName};

/// XML namespaces used on the wire.
pub mod ns {
    pub const CLIENT: &str = "jabber:client";
    pub const STREAM: &str = "http://etherx.jabber.org/streams";
    pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
    pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
    pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
    pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
    pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
    pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
    pub const ROSTER: &str = "jabber:iq:roster";
    pub const ROSTERVER: &str = "urn:xmpp:features:rosterver";
    pub const REGISTER: &str = "jabber:iq:register";
    pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
    pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
    pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
    pub const VERSION: &str = "jabber:iq:version";
    pub const PING: &str = "urn:xmpp:ping";
    pub const VCARD: &str = "vcard-temp";
    pub const BLOCKING: &str = "urn:xmpp:blocking";
    pub const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
    pub const DELAY: &str = "urn:xmpp:delay";
    pub const OFFLINE: &str = "msgoffline";
    /// The content namespace of server-to-server streams (RFC 6120 §4.8.2).
    pub const SERVER: &str = "jabber:server";
    /// Server dialback elements, `db:result` and `db:verify` (XEP-0220 §2).
    pub const DIALBACK: &str = "jabber:server:dialback";
    /// The dialback stream feature (XEP-0220 §2.1.1).
    pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
    /// Stream management, version 3 (XEP-0198).
    pub const SM: &str = "urn:xmpp:sm:3";
    /// Unique and stable stanza ids, `origin-id` and `stanza-id` (XEP-0359).
    pub const SID: &str = "urn:xmpp:sid:0";
}

/// An attribute name. Only for names written in our own code, which are valid NCNames.
pub fn name(s: &str) -> NcName {
    NcName::try_from(s).unwrap_or_else(|_| unreachable!("invalid attribute name in source: {s}"))
}

/// Sets (or replaces) an unqualified attribute.
pub fn set_attr(el: &mut Element, attr: &str, value: &str) {
    el.attrs_mut()
        .insert(Namespace::NONE, name(attr), value.to_owned());
}

/// Removes an unqualified attribute if present.
pub fn remove_attr(el: &mut Element, attr: &str) {
    el.attrs_mut().remove(Namespace::none(), attr);
}

/// The `<error/>` child for a stanza error (RFC 6120 §8.3).
pub fn error_element(error_type: &str, condition: &str) -> Element {
    Element::builder("error", ns::CLIENT)
        .attr(name("type"), error_type)
        .append(Element::builder(condition, ns::STANZAS).build())
        .build()
}

/// An IQ error reply (RFC 6120 §8.3.1) from `from` (the server or the addressee).
pub fn iq_error_reply(id: &str, from: Option<&str>, error_type: &str, condition: &str) -> Element {
    let mut iq = Element::builder("iq", ns::CLIENT)
        .attr(name("type"), "error")
        .attr(name("id"), id)
        .append(error_element(error_type, condition))
        .build();
    if let Some(from) = from {
        set_attr(&mut iq, "from", from);
    }
    iq
}

/// The error reply to any stanza: addresses swapped, `type='error'`, the original id and
/// the error child. The original payload is not echoed back (RFC 6120 §8.3.1 allows either).
pub fn error_reply(original: &Element, error_type: &str, condition: &str) -> Element {
    let mut reply = Element::builder(original.name(), ns::CLIENT)
        .attr(name("type"), "error")
        .append(error_element(error_type, condition))
        .build();
    if let Some(id) = original.attr("id") {
        set_attr(&mut reply, "id", id);
    }
    if let Some(to) = original.attr("to") {
        set_attr(&mut reply, "from", to);
    }
    if let Some(from) = original.attr("from") {
        set_attr(&mut reply, "to", from);
    }
    reply
}

/// An empty IQ result answering `request`, sent by `from`.
pub fn iq_result(request: &Element, from: Option<&str>) -> Element {
    let mut iq = Element::builder("iq", ns::CLIENT)
        .attr(name("type"), "result")
        .build();
    if let Some(id) = request.attr("id") {
        set_attr(&mut iq, "id", id);
    }
    if let Some(from) = from {
        set_attr(&mut iq, "from", from);
    }
    if let Some(to) = request.attr("from") {
        set_attr(&mut iq, "to", to);
    }
    iq
}

/// The `type` attribute, or the RFC default for the stanza kind (`normal` for messages,
/// `available` (absent) for presence).
pub fn stanza_type(el: &Element) -> &str {
    match el.attr("type") {
        Some(t) => t,
        None if el.name() == "message" => "normal",
        None => "",
    }
}

/// The first child element of an IQ: its payload (RFC 6120 §8.2.3 says exactly one for
/// get and set).
pub fn iq_payload(el: &Element) -> Option<&Element> {
    el.children().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_swaps_addresses_and_keeps_id() {
        let mut msg = Element::builder("message", ns::CLIENT).build();
        set_attr(&mut msg, "from", "a@x/r");
        set_attr(&mut msg, "to", "b@x");
        set_attr(&mut msg, "id", "m1");
        let reply = error_reply(&msg, "cancel", "service-unavailable");
        assert_eq!(reply.attr("to"), Some("a@x/r"));
        assert_eq!(reply.attr("from"), Some("b@x"));
        assert_eq!(reply.attr("id"), Some("m1"));
        assert_eq!(reply.attr("type"), Some("error"));
        let err = reply.get_child("error", ns::CLIENT).expect("error child");
        assert_eq!(err.attr("type"), Some("cancel"));
        assert!(err.has_child("service-unavailable", ns::STANZAS));
    }

    #[test]
    fn set_attr_replaces_spoofed_from() {
        let mut msg = Element::builder("message", ns::CLIENT).build();
        set_attr(&mut msg, "from", "mallory@x/evil");
        set_attr(&mut msg, "from", "alice@x/phone");
        assert_eq!(msg.attr("from"), Some("alice@x/phone"));
        remove_attr(&mut msg, "from");
        assert_eq!(msg.attr("from"), None);
    }
}
