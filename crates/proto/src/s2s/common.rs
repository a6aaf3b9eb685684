//! What both s2s roles share: the stream header, dialback elements, namespace conversion at
//! the boundary, the stream management counters and small parsing helpers.

use minidom::{Element, Node};

use crate::stanza::ns;
use crate::xml;

/// At most this many (peer, local) pairs may be authenticated or pending on one stream, so a
/// peer piggybacking domains (XEP-0220 §2.5) cannot make us hold unbounded state.
pub(super) const MAX_DOMAIN_PAIRS: usize = 64;

/// Our stream header (RFC 6120 §4.7) with the dialback prefix declared (XEP-0220 §2.1).
pub(super) fn stream_header(from: &str, to: Option<&str>, id: Option<&str>) -> String {
    let mut s = String::with_capacity(320);
    s.push_str("<?xml version='1.0'?><stream:stream xmlns='");
    s.push_str(ns::SERVER);
    s.push_str("' xmlns:db='");
    s.push_str(ns::DIALBACK);
    s.push_str("' xmlns:stream='");
    s.push_str(xml::NS_STREAMS);
    s.push_str("' version='1.0' from='");
    s.push_str(&xml::escape(from));
    s.push('\'');
    if let Some(to) = to {
        s.push_str(" to='");
        s.push_str(&xml::escape(to));
        s.push('\'');
    }
    if let Some(id) = id {
        s.push_str(" id='");
        s.push_str(&xml::escape(id));
        s.push('\'');
    }
    s.push_str(" xml:lang='en'>");
    s
}

/// A dialback element, written with the `db:` prefix our header declares, as every server
/// writes it (XEP-0220 §2.1).
pub(super) struct DbElement<'a> {
    pub(super) name: &'a str,
    pub(super) from: &'a str,
    pub(super) to: &'a str,
    pub(super) id: Option<&'a str>,
    pub(super) kind: Option<&'a str>,
    pub(super) key: Option<&'a str>,
    /// A stanza error condition, for `type='error'` (XEP-0220 §2.4).
    pub(super) error: Option<&'a str>,
}

impl DbElement<'_> {
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        let mut s = String::with_capacity(160);
        s.push_str("<db:");
        s.push_str(self.name);
        s.push_str(" from='");
        s.push_str(&xml::escape(self.from));
        s.push_str("' to='");
        s.push_str(&xml::escape(self.to));
        s.push('\'');
        if let Some(id) = self.id {
            s.push_str(" id='");
            s.push_str(&xml::escape(id));
            s.push('\'');
        }
        if let Some(kind) = self.kind {
            s.push_str(" type='");
            s.push_str(&xml::escape(kind));
            s.push('\'');
        }
        if let Some(condition) = self.error {
            // XEP-0220 §2.4: a timeout is worth retrying later; everything else is final.
            let error_type = if condition == "remote-server-timeout" {
                "wait"
            } else {
                "cancel"
            };
            s.push_str("><error type='");
            s.push_str(error_type);
            s.push_str("'><");
            s.push_str(valid_condition(condition));
            s.push_str(" xmlns='");
            s.push_str(ns::STANZAS);
            s.push_str("'/></error></db:");
            s.push_str(self.name);
            s.push('>');
        } else if let Some(key) = self.key {
            s.push('>');
            s.push_str(&xml::escape(key));
            s.push_str("</db:");
            s.push_str(self.name);
            s.push('>');
        } else {
            s.push_str("/>");
        }
        out.extend_from_slice(s.as_bytes());
    }
}

/// A condition name we can write as an element, else `undefined-condition`.
fn valid_condition(condition: &str) -> &str {
    if rxml::strings::validate_ncname(condition).is_ok() {
        condition
    } else {
        "undefined-condition"
    }
}

/// A stream error with an application-specific condition beside the defined one
/// (RFC 6120 §4.9.4), as XEP-0198 §5 asks for `<handled-count-too-high/>`.
pub(super) fn stream_error_with(condition: &str, extra: &str) -> String {
    format!(
        "<stream:error><{} xmlns='{}'/>{extra}</stream:error>",
        valid_condition(condition),
        xml::NS_XMPP_STREAMS
    )
}

/// Copies `root` with every element in namespace `from` moved to `to`, keeping attributes,
/// text and order. Iterative, so a deep stanza cannot exhaust the stack; depth is already
/// bounded by the reader's limits.
pub(crate) fn renamespace(mut root: Element, from: &str, to: &str) -> Element {
    struct Frame {
        el: Element,
        rest: std::vec::IntoIter<Node>,
    }
    fn shell(el: &mut Element, from: &str, to: &str) -> Element {
        let el_ns = el.ns();
        let new_ns = if el_ns == from { to.to_owned() } else { el_ns };
        let mut new = Element::bare(el.name(), new_ns);
        *new.attrs_mut() = std::mem::take(el.attrs_mut());
        new
    }
    let nodes = root.take_nodes();
    let mut stack = vec![Frame {
        el: shell(&mut root, from, to),
        rest: nodes.into_iter(),
    }];
    loop {
        let Some(top) = stack.last_mut() else {
            // Unreachable: the loop returns when it pops the root.
            return root;
        };
        match top.rest.next() {
            Some(Node::Text(text)) => top.el.append_text_node(text),
            Some(Node::Element(mut child)) => {
                let nodes = child.take_nodes();
                let frame = Frame {
                    el: shell(&mut child, from, to),
                    rest: nodes.into_iter(),
                };
                stack.push(frame);
            }
            None => {
                let Some(done) = stack.pop() else {
                    return root;
                };
                match stack.last_mut() {
                    Some(parent) => {
                        parent.el.append_child(done.el);
                    }
                    None => return done.el,
                }
            }
        }
    }
}

/// Whether `el` is a stanza: `message`, `presence` or `iq` in namespace `in_ns`.
pub(super) fn is_stanza(el: &Element, in_ns: &str) -> bool {
    el.ns() == in_ns && matches!(el.name(), "message" | "presence" | "iq")
}

/// A domain, normalised (lower case, IDNA) the way `jid` normalises it, or `None` when `s` is
/// not a bare domain (a node or resource is not a server's identity).
pub(super) fn parse_domain(s: &str) -> Option<String> {
    let jid = jid::Jid::new(s.trim()).ok()?;
    if jid.node().is_some() || jid.resource().is_some() {
        return None;
    }
    Some(jid.domain().as_str().to_owned())
}

/// The normalised domain of any JID.
pub(super) fn jid_domain(s: &str) -> Option<String> {
    let jid = jid::Jid::new(s).ok()?;
    Some(jid.domain().as_str().to_owned())
}

/// Whether we can answer a stream of this `version` (RFC 6120 §4.7.5): major version 1, any
/// minor, compared as numbers. A stream without a version is pre-RFC.
pub(super) fn speaks_version(version: Option<&str>) -> bool {
    let Some((major, minor)) = version.and_then(|v| v.split_once('.')) else {
        return false;
    };
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    number(major) && number(minor) && major.trim_start_matches('0') == "1"
}

/// The condition and text of a `<stream:error/>` from the peer (RFC 6120 §4.9.2).
pub(super) fn peer_stream_error(el: &Element) -> (String, Option<String>) {
    let mut condition = None;
    let mut text = None;
    for child in el.children() {
        if child.ns() != xml::NS_XMPP_STREAMS {
            continue;
        }
        if child.name() == "text" {
            text = Some(child.text());
        } else if condition.is_none() {
            condition = Some(child.name().to_owned());
        }
    }
    (
        condition.unwrap_or_else(|| "undefined-condition".to_owned()),
        text,
    )
}

/// The outcome of reading an `<a h='…'/>`.
pub(super) enum AckOutcome {
    /// Nothing new was acknowledged.
    Nothing,
    /// Everything up to this sequence number is acknowledged.
    Acked(u32),
    /// `h` is not an unsigned 32-bit number.
    Malformed,
    /// `h` acknowledges more than was sent (XEP-0198 §5).
    TooHigh { h: u32, sent: u32 },
}

/// XEP-0198 counters for one stream. Both counts wrap at 2^32 (XEP-0198 §4).
#[derive(Debug, Default)]
pub(super) struct Sm {
    pub(super) enabled: bool,
    /// Stanzas received and handed to the server since `<enable/>`.
    pub(super) inbound: u32,
    /// Stanzas sent since `<enabled/>`.
    pub(super) outbound: u32,
    /// The peer's last acknowledged count.
    pub(super) acked: u32,
}

impl Sm {
    /// The `<a h='…'/>` answering `<r/>` (XEP-0198 §4).
    pub(super) fn answer(&self) -> String {
        format!("<a xmlns='{}' h='{}'/>", ns::SM, self.inbound)
    }

    pub(super) fn on_ack(&mut self, el: &Element) -> AckOutcome {
        let Some(h) = el.attr("h").and_then(|h| h.trim().parse::<u32>().ok()) else {
            return AckOutcome::Malformed;
        };
        let newly = h.wrapping_sub(self.acked);
        let outstanding = self.outbound.wrapping_sub(self.acked);
        if newly > outstanding {
            return AckOutcome::TooHigh {
                h,
                sent: self.outbound,
            };
        }
        if newly == 0 {
            return AckOutcome::Nothing;
        }
        self.acked = h;
        AckOutcome::Acked(h)
    }
}

/// `<handled-count-too-high/>` for the stream error XEP-0198 §5 prescribes.
pub(super) fn handled_count_too_high(h: u32, sent: u32) -> String {
    format!(
        "<handled-count-too-high xmlns='{}' h='{h}' send-count='{sent}'/>",
        ns::SM
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renamespace_moves_only_the_given_namespace() {
        let mut msg = Element::builder("message", ns::SERVER)
            .append(Element::builder("body", ns::SERVER).append("hi").build())
            .append(Element::builder("x", "urn:example").build())
            .build();
        crate::stanza::set_attr(&mut msg, "to", "a@b");
        let out = renamespace(msg, ns::SERVER, ns::CLIENT);
        assert_eq!(out.ns(), ns::CLIENT);
        assert_eq!(out.attr("to"), Some("a@b"));
        assert_eq!(
            out.get_child("body", ns::CLIENT).map(|b| b.text()),
            Some("hi".to_owned())
        );
        assert!(out.has_child("x", "urn:example"));
    }

    #[test]
    fn renamespace_handles_deep_elements_without_recursion() {
        let mut el = Element::bare("leaf", ns::SERVER);
        for _ in 0..10_000 {
            let mut parent = Element::bare("n", ns::SERVER);
            parent.append_child(el);
            el = parent;
        }
        let out = renamespace(el, ns::SERVER, ns::CLIENT);
        assert_eq!(out.ns(), ns::CLIENT);
        // Dropping a 10 000-deep minidom tree recurses in minidom's Drop; keep it off the
        // test thread's stack by leaking it.
        std::mem::forget(out);
    }

    #[test]
    fn ack_counting_wraps_and_rejects_too_high() {
        let mut sm = Sm {
            enabled: true,
            outbound: 2,
            acked: u32::MAX - 1,
            ..Sm::default()
        };
        let a = |h: &str| {
            Element::builder("a", ns::SM)
                .attr(crate::stanza::name("h"), h)
                .build()
        };
        assert!(matches!(sm.on_ack(&a("0")), AckOutcome::Acked(0)));
        assert!(matches!(sm.on_ack(&a("0")), AckOutcome::Nothing));
        assert!(matches!(
            sm.on_ack(&a("3")),
            AckOutcome::TooHigh { h: 3, sent: 2 }
        ));
        assert!(matches!(sm.on_ack(&a("x")), AckOutcome::Malformed));
        assert!(matches!(sm.on_ack(&a("2")), AckOutcome::Acked(2)));
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert!(speaks_version(Some("1.0")));
        assert!(speaks_version(Some("1.1")));
        assert!(!speaks_version(Some("2.0")));
        assert!(!speaks_version(None));
        assert!(!speaks_version(Some("1")));
    }
}
