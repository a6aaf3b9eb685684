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
    /// Message archive management (XEP-0313).
    pub const MAM: &str = "urn:xmpp:mam:2";
    /// The archive's extended queries: ids, metadata (XEP-0313 §6.1.1).
    pub const MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
    /// Result set management, for paging (XEP-0059).
    pub const RSM: &str = "http://jabber.org/protocol/rsm";
    /// Stanza forwarding (XEP-0297).
    pub const FORWARD: &str = "urn:xmpp:forward:0";
    /// Data forms (XEP-0004).
    pub const DATA_FORMS: &str = "jabber:x:data";
    /// Message processing hints (XEP-0334).
    pub const HINTS: &str = "urn:xmpp:hints";
    /// Message carbons (XEP-0280).
    pub const CARBONS: &str = "urn:xmpp:carbons:2";
    /// Client state indication (XEP-0352).
    pub const CSI: &str = "urn:xmpp:csi:0";
    /// Delivery receipts (XEP-0184).
    pub const RECEIPTS: &str = "urn:xmpp:receipts";
    /// Chat markers (XEP-0333).
    pub const MARKERS: &str = "urn:xmpp:chat-markers:0";
    /// Chat state notifications (XEP-0085).
    pub const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
    /// OMEMO as deployed (XEP-0384 v0.3) and OMEMO 2.
    pub const OMEMO_LEGACY: &str = "eu.siacs.conversations.axolotl";
    pub const OMEMO: &str = "urn:xmpp:omemo:2";
    /// Explicit message encryption (XEP-0380).
    pub const EME: &str = "urn:xmpp:eme:0";
    /// Direct group chat invitations (XEP-0249).
    pub const CONFERENCE: &str = "jabber:x:conference";
    /// Jingle message initiation (XEP-0353).
    pub const JINGLE_MESSAGE: &str = "urn:xmpp:jingle-message:0";
    /// Publish-subscribe (XEP-0060).
    pub const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
    /// Out-of-band data (XEP-0066): a URL a message shares.
    pub const OOB: &str = "jabber:x:oob";
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

/// An IQ error reply (RFC 6120 §8.3.1) from `from` (the server or the addressee).
pub fn iq_error_reply(id: &str, from: Option<&str>, error: &StanzaError) -> Element {
    let mut iq = Element::builder("iq", ns::CLIENT)
        .attr(name("type"), "error")
        .attr(name("id"), id)
        .append(error.to_element())
        .build();
    if let Some(from) = from {
        set_attr(&mut iq, "from", from);
    }
    iq
}

/// The error reply to any stanza: addresses swapped, `type='error'`, the original id and
/// the error child. The original payload is not echoed back (RFC 6120 §8.3.1 allows either).
pub fn error_reply(original: &Element, error: &StanzaError) -> Element {
    let mut reply = Element::builder(original.name(), ns::CLIENT)
        .attr(name("type"), "error")
        .append(error.to_element())
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

/// Whether a stanza may be answered with an error: never an error or a result (RFC 6120
/// §8.3.1). Of presence, only available presence is: a client joining a room or sending
/// directed presence to a server that cannot be reached waits for an answer, while nobody
/// waits for one to unavailable presence, probes or subscription stanzas.
pub fn may_answer_with_error(el: &Element) -> bool {
    match el.name() {
        "presence" => el.attr("type").is_none(),
        _ => !matches!(el.attr("type"), Some("error" | "result")),
    }
}

/// A presence stanza of type `ty` (`None`: available) from `from` to `to`, with nothing
/// inside: probes (RFC 6121 §4.3), unavailable presence (§4.5) and subscription stanzas (§3).
pub fn presence(ty: Option<&str>, from: &str, to: Option<&str>) -> Element {
    let mut el = Element::builder("presence", ns::CLIENT).build();
    if let Some(ty) = ty {
        set_attr(&mut el, "type", ty);
    }
    set_attr(&mut el, "from", from);
    if let Some(to) = to {
        set_attr(&mut el, "to", to);
    }
    el
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

/// The type of a stanza error: what the sender may do about it (RFC 6120 §8.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// Retry after providing credentials.
    Auth,
    /// Do not retry: the error cannot be remedied.
    Cancel,
    /// Proceed: the condition was only a warning.
    Continue,
    /// Retry after changing the data sent.
    Modify,
    /// Retry after waiting: the error is temporary.
    Wait,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

/// The defined conditions of stanza errors (RFC 6120 §8.3.3), each with the type the RFC
/// gives it in its examples ([`Condition::default_type`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    Gone,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RecipientUnavailable,
    Redirect,
    RegistrationRequired,
    RemoteServerNotFound,
    RemoteServerTimeout,
    ResourceConstraint,
    ServiceUnavailable,
    SubscriptionRequired,
    UndefinedCondition,
    UnexpectedRequest,
}

impl Condition {
    /// Every condition, in the RFC's order.
    pub const ALL: [Condition; 22] = [
        Condition::BadRequest,
        Condition::Conflict,
        Condition::FeatureNotImplemented,
        Condition::Forbidden,
        Condition::Gone,
        Condition::InternalServerError,
        Condition::ItemNotFound,
        Condition::JidMalformed,
        Condition::NotAcceptable,
        Condition::NotAllowed,
        Condition::NotAuthorized,
        Condition::PolicyViolation,
        Condition::RecipientUnavailable,
        Condition::Redirect,
        Condition::RegistrationRequired,
        Condition::RemoteServerNotFound,
        Condition::RemoteServerTimeout,
        Condition::ResourceConstraint,
        Condition::ServiceUnavailable,
        Condition::SubscriptionRequired,
        Condition::UndefinedCondition,
        Condition::UnexpectedRequest,
    ];

    /// The element name of the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::BadRequest => "bad-request",
            Condition::Conflict => "conflict",
            Condition::FeatureNotImplemented => "feature-not-implemented",
            Condition::Forbidden => "forbidden",
            Condition::Gone => "gone",
            Condition::InternalServerError => "internal-server-error",
            Condition::ItemNotFound => "item-not-found",
            Condition::JidMalformed => "jid-malformed",
            Condition::NotAcceptable => "not-acceptable",
            Condition::NotAllowed => "not-allowed",
            Condition::NotAuthorized => "not-authorized",
            Condition::PolicyViolation => "policy-violation",
            Condition::RecipientUnavailable => "recipient-unavailable",
            Condition::Redirect => "redirect",
            Condition::RegistrationRequired => "registration-required",
            Condition::RemoteServerNotFound => "remote-server-not-found",
            Condition::RemoteServerTimeout => "remote-server-timeout",
            Condition::ResourceConstraint => "resource-constraint",
            Condition::ServiceUnavailable => "service-unavailable",
            Condition::SubscriptionRequired => "subscription-required",
            Condition::UndefinedCondition => "undefined-condition",
            Condition::UnexpectedRequest => "unexpected-request",
        }
    }

    /// The condition named `name`, if it is one of the defined ones.
    pub fn from_name(name: &str) -> Option<Condition> {
        Condition::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The error type RFC 6120 §8.3.3 shows with the condition: what a sender usually
    /// can do about it.
    pub fn default_type(self) -> ErrorType {
        match self {
            Condition::BadRequest
            | Condition::JidMalformed
            | Condition::NotAcceptable
            | Condition::PolicyViolation
            | Condition::Redirect => ErrorType::Modify,
            Condition::Forbidden
            | Condition::NotAuthorized
            | Condition::RegistrationRequired
            | Condition::SubscriptionRequired => ErrorType::Auth,
            Condition::InternalServerError
            | Condition::RecipientUnavailable
            | Condition::RemoteServerTimeout
            | Condition::ResourceConstraint
            | Condition::UnexpectedRequest => ErrorType::Wait,
            Condition::Conflict
            | Condition::FeatureNotImplemented
            | Condition::Gone
            | Condition::ItemNotFound
            | Condition::NotAllowed
            | Condition::RemoteServerNotFound
            | Condition::ServiceUnavailable
            | Condition::UndefinedCondition => ErrorType::Cancel,
        }
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stanza error (RFC 6120 §8.3): its type, its defined condition, optional human-readable
/// text and an optional application-specific condition element (such as XEP-0191's
/// `<blocked/>`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{condition} ({})", kind.as_str())]
pub struct StanzaError {
    pub kind: ErrorType,
    pub condition: Condition,
    pub text: Option<String>,
    pub application: Option<Box<Element>>,
}

impl StanzaError {
    /// The condition with the type RFC 6120 shows for it.
    pub fn new(condition: Condition) -> StanzaError {
        StanzaError::with_type(condition.default_type(), condition)
    }

    /// The condition with another type than its usual one (RFC 6120 §8.3.3 lets the
    /// server choose, e.g. `wait` for a resource constraint that will pass, `cancel` for one
    /// that will not).
    pub fn with_type(kind: ErrorType, condition: Condition) -> StanzaError {
        StanzaError {
            kind,
            condition,
            text: None,
            application: None,
        }
    }

    /// Adds a human-readable explanation (RFC 6120 §8.3.2: for the user, not for code).
    pub fn text(mut self, text: impl Into<String>) -> StanzaError {
        self.text = Some(text.into());
        self
    }

    /// Adds an application-specific condition element.
    pub fn application(mut self, el: Element) -> StanzaError {
        self.application = Some(Box::new(el));
        self
    }

    /// The `<error/>` child of an error stanza.
    pub fn to_element(&self) -> Element {
        let mut error = Element::builder("error", ns::CLIENT)
            .attr(name("type"), self.kind.as_str())
            .append(Element::builder(self.condition.as_str(), ns::STANZAS).build())
            .build();
        if let Some(text) = &self.text {
            error.append_child(
                Element::builder("text", ns::STANZAS)
                    .append(text.as_str())
                    .build(),
            );
        }
        if let Some(app) = &self.application {
            error.append_child(Element::clone(app));
        }
        error
    }

    /// The error an error stanza carries, if it carries a defined condition.
    pub fn from_stanza(el: &Element) -> Option<StanzaError> {
        let error = el.get_child("error", ns::CLIENT)?;
        let kind = match error.attr("type")? {
            "auth" => ErrorType::Auth,
            "cancel" => ErrorType::Cancel,
            "continue" => ErrorType::Continue,
            "modify" => ErrorType::Modify,
            "wait" => ErrorType::Wait,
            _ => return None,
        };
        let condition = error
            .children()
            .filter(|c| c.ns() == ns::STANZAS)
            .find_map(|c| Condition::from_name(c.name()))?;
        let text = error.get_child("text", ns::STANZAS).map(|t| t.text());
        let application = error
            .children()
            .find(|c| c.ns() != ns::STANZAS)
            .map(|c| Box::new(c.clone()));
        Some(StanzaError {
            kind,
            condition,
            text,
            application,
        })
    }
}

impl From<Condition> for StanzaError {
    fn from(condition: Condition) -> StanzaError {
        StanzaError::new(condition)
    }
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
        let reply = error_reply(&msg, &Condition::ServiceUnavailable.into());
        assert_eq!(reply.attr("to"), Some("a@x/r"));
        assert_eq!(reply.attr("from"), Some("b@x"));
        assert_eq!(reply.attr("id"), Some("m1"));
        assert_eq!(reply.attr("type"), Some("error"));
        let err = reply.get_child("error", ns::CLIENT).expect("error child");
        assert_eq!(err.attr("type"), Some("cancel"));
        assert!(err.has_child("service-unavailable", ns::STANZAS));
    }

    #[test]
    fn errors_carry_their_type_text_and_application_condition() {
        let err = StanzaError::with_type(ErrorType::Wait, Condition::ResourceConstraint)
            .text("queue full")
            .application(Element::builder("blocked", ns::BLOCKING_ERRORS).build());
        let mut iq = Element::builder("iq", ns::CLIENT).build();
        set_attr(&mut iq, "type", "error");
        iq.append_child(err.to_element());
        assert_eq!(StanzaError::from_stanza(&iq), Some(err));
        assert_eq!(
            StanzaError::new(Condition::ServiceUnavailable).kind,
            ErrorType::Cancel
        );
        for c in Condition::ALL {
            assert_eq!(Condition::from_name(c.as_str()), Some(c));
        }
        assert_eq!(Condition::from_name("text"), None);
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
