//! The namespaces the client speaks.

pub(crate) const CLIENT: &str = "jabber:client";
pub(crate) const STREAMS: &str = "http://etherx.jabber.org/streams";
pub(crate) const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub(crate) const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub(crate) const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub(crate) const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub(crate) const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub(crate) const SM: &str = "urn:xmpp:sm:3";
pub(crate) const ROSTER: &str = "jabber:iq:roster";
pub(crate) const PING: &str = "urn:xmpp:ping";
pub(crate) const CARBONS: &str = "urn:xmpp:carbons:2";
pub(crate) const FORWARD: &str = "urn:xmpp:forward:0";
pub(crate) const DELAY: &str = "urn:xmpp:delay";
pub(crate) const MAM: &str = "urn:xmpp:mam:2";
pub(crate) const RSM: &str = "http://jabber.org/protocol/rsm";
pub(crate) const SID: &str = "urn:xmpp:sid:0";
pub(crate) const RECEIPTS: &str = "urn:xmpp:receipts";
pub(crate) const MARKERS: &str = "urn:xmpp:chat-markers:0";
/// Outpost's delivery notes from the server (`relayed`: a hub took a message).
pub(crate) const DELIVERY: &str = "urn:outpost:delivery:0";
pub(crate) const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
