//! XMPP over WebSocket framing (RFC 7395), as an adapter in front of the TCP-style streams
//! of [`crate::s2s`] (and, in principle, [`crate::c2s`]).
//!
//! The state machines read and write a TCP stream: `<stream:stream>`, top-level elements,
//! `</stream:stream>`. Over WebSocket every message is one complete XML element
//! (RFC 7395 §3.3.3), the stream is opened with `<open/>` and closed with `<close/>` in
//! `urn:ietf:params:xml:ns:xmpp-framing` (§3.3.2, §3.6), and a restart is a new `<open/>`
//! (§3.4). [`WsFraming`] translates both ways, so the machines run unchanged:
//!
//! - [`WsFraming::outbound`] takes what a machine wrote and returns complete messages: the
//!   stream header becomes `<open/>` with its `to`, `from`, `id`, `version` and `xml:lang`;
//!   every top-level element becomes one message that declares its own namespaces (written
//!   by [`crate::xml::write_stanza`], so `<stream:features/>`, `<stream:error/>` and
//!   dialback elements arrive namespace-correct without the stream's prefixes); and
//!   `</stream:stream>` becomes `<close/>`. An incomplete element is kept until the rest is
//!   written. A restart is recognised by the XML declaration every header of ours starts
//!   with ([`crate::xml::stream_header`]): a new header after one was read starts a new
//!   stream, as it does for the peer's reader.
//! - [`WsFraming::inbound`] takes one received message and returns bytes for the machine's
//!   `handle_input`: `<open/>` becomes a stream header in the default namespace given to
//!   [`WsFraming::new`] (with `stream` and `db` prefixes declared, as our own headers do),
//!   `<close/>` becomes `</stream:stream>`, and any other message must be exactly one
//!   well-formed element within the size and depth limits; it is passed on as received.
//!   Text, several elements, part of an element, a DTD, an element before the first
//!   `<open/>` or anything after `<close/>` is refused with a [`FramingError`] whose
//!   [`FramingError::condition`] is the stream error to send.
//!
//! Every message is checked with [`crate::xml::StreamReader`] inside the same namespace
//! context the machine will read it in, so what passes here parses the same way there, and
//! the same limits apply: nothing is built by recursion, nothing bigger than the limit is
//! buffered, and nothing here panics.
//!
//! Not here: the WebSocket protocol itself (frames, masking, pings, the HTTP upgrade), TLS
//! and sockets; the server's WebSocket connection does those.

use crate::xml::{
    Limits, NS_STREAMS, StreamHeader, StreamReader, WriteError, XmlError, XmlEvent, escape,
    write_stanza,
};

/// The namespace of `<open/>` and `<close/>` (RFC 7395 §3.3.1).
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// The dialback namespace, declared with the `db` prefix on the headers we synthesise, as
/// the s2s machines declare it on theirs (XEP-0220 §2.1).
const NS_DIALBACK: &str = "jabber:server:dialback";

/// The XML declaration that starts every stream header our machines write.
const XML_DECLARATION: &[u8] = b"<?xml";

/// Why a message could not be translated. The stream is over; send the
/// [`FramingError::condition`] as a stream error and close it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FramingError {
    /// The message is not one well-formed element, or breaks a limit.
    #[error("message is not acceptable XML")]
    Xml(#[source] XmlError),
    /// The message holds no element (empty or only whitespace).
    #[error("message holds no element")]
    Empty,
    /// The message ends inside an element.
    #[error("message ends inside an element")]
    Incomplete,
    /// The message holds more than one element (RFC 7395 §3.3.3).
    #[error("message holds more than one element")]
    SeveralElements,
    /// An element other than `<open/>` before the stream was opened (RFC 7395 §3.3.2).
    #[error("element before <open/>")]
    NotOpened,
    /// A message after `<close/>` (RFC 7395 §3.6).
    #[error("message after <close/>")]
    AfterClose,
    /// A message larger than the stanza limit.
    #[error("message larger than {limit} bytes")]
    TooBig {
        /// The configured [`Limits::max_stanza_bytes`].
        limit: usize,
    },
    /// What the machine wrote could not be read back or written as a message; a bug on our
    /// side, never the peer's.
    #[error("cannot frame our own output")]
    Outbound(#[source] XmlError),
    /// An element the machine wrote cannot be serialised.
    #[error("cannot serialise our own element")]
    Unserialisable(#[source] WriteError),
}

impl FramingError {
    /// The RFC 6120 §4.9.3 stream error condition to send before closing.
    pub fn condition(&self) -> &'static str {
        match self {
            FramingError::Xml(e) => e.condition(),
            FramingError::TooBig { .. } => "policy-violation",
            FramingError::Empty
            | FramingError::Incomplete
            | FramingError::SeveralElements
            | FramingError::NotOpened
            | FramingError::AfterClose => "bad-format",
            FramingError::Outbound(_) | FramingError::Unserialisable(_) => "internal-server-error",
        }
    }
}

/// Where the peer's side of the stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InState {
    /// No `<open/>` yet.
    Start,
    Open,
    /// `<close/>` received.
    Closed,
}

/// Translates one WebSocket connection's XMPP stream both ways. See the module docs.
#[derive(Debug)]
pub struct WsFraming {
    default_ns: String,
    limits: Limits,
    /// Reads what our machine writes; replaced at each new stream header.
    out_reader: StreamReader,
    /// Machine bytes held back because they might be the start of an XML declaration.
    out_held: Vec<u8>,
    in_state: InState,
}

impl WsFraming {
    /// A framer for a stream whose content namespace is `default_ns` (`jabber:server` for
    /// server-to-server streams), refusing messages beyond `limits`.
    pub fn new(default_ns: &str, limits: Limits) -> Self {
        WsFraming {
            default_ns: default_ns.to_owned(),
            limits,
            out_reader: StreamReader::new(limits),
            out_held: Vec::new(),
            in_state: InState::Start,
        }
    }

    /// Turns bytes a machine wrote into complete WebSocket text messages, in order. Bytes
    /// of an element not yet complete are kept for the next call.
    pub fn outbound(&mut self, machine_bytes: &[u8]) -> Result<Vec<String>, FramingError> {
        let mut data = std::mem::take(&mut self.out_held);
        data.extend_from_slice(machine_bytes);
        // Keep back a tail that could be the first bytes of an XML declaration, so a header
        // split across writes is still recognised.
        let keep = (1..XML_DECLARATION.len())
            .rev()
            .find(|&n| {
                data.len() >= n
                    && data.get(data.len() - n..).is_some_and(|tail| {
                        XML_DECLARATION
                            .get(..n)
                            .is_some_and(|prefix| prefix == tail)
                    })
            })
            .unwrap_or(0);
        self.out_held = data.split_off(data.len() - keep);

        let mut messages = Vec::new();
        let mut rest: &[u8] = &data;
        while !rest.is_empty() {
            // Everything before the next declaration belongs to the current stream.
            let cut = find(rest.get(1..).unwrap_or_default(), XML_DECLARATION).map(|i| i + 1);
            let (now, later) = match cut {
                Some(i) => rest.split_at(i),
                None => (rest, &[][..]),
            };
            if now.starts_with(XML_DECLARATION) {
                // A new stream header: RFC 6120 §4.3.3 restarts start a new document.
                self.out_reader = StreamReader::new(self.limits);
            }
            self.out_reader.feed(now);
            self.drain_outbound(&mut messages)?;
            rest = later;
        }
        Ok(messages)
    }

    fn drain_outbound(&mut self, messages: &mut Vec<String>) -> Result<(), FramingError> {
        loop {
            match self.out_reader.next().map_err(FramingError::Outbound)? {
                None => return Ok(()),
                Some(XmlEvent::StreamOpen(header)) => messages.push(open_element(&header)),
                Some(XmlEvent::Stanza(el)) => {
                    let mut out = Vec::new();
                    write_stanza(&el, &mut out).map_err(FramingError::Unserialisable)?;
                    messages.push(String::from_utf8_lossy(&out).into_owned());
                }
                Some(XmlEvent::StreamClose) => messages.push(close_element()),
            }
        }
    }

    /// Turns one received WebSocket text message into bytes for the machine.
    pub fn inbound(&mut self, message: &str) -> Result<Vec<u8>, FramingError> {
        if self.in_state == InState::Closed {
            return Err(FramingError::AfterClose);
        }
        if message.len() > self.limits.max_stanza_bytes {
            return Err(FramingError::TooBig {
                limit: self.limits.max_stanza_bytes,
            });
        }
        let el = self.check_one_element(message)?;
        if el.ns() == NS_FRAMING {
            match el.name() {
                "open" => {
                    self.in_state = InState::Open;
                    return Ok(self.header_for(&el).into_bytes());
                }
                "close" if self.in_state == InState::Open => {
                    self.in_state = InState::Closed;
                    return Ok(crate::xml::STREAM_CLOSE.as_bytes().to_vec());
                }
                _ => {}
            }
        }
        if self.in_state != InState::Open {
            return Err(FramingError::NotOpened);
        }
        Ok(message.as_bytes().to_vec())
    }

    /// Reads `message` in the namespace context of the machine's stream and returns its one
    /// element.
    fn check_one_element(&self, message: &str) -> Result<minidom::Element, FramingError> {
        let mut reader = StreamReader::new(self.limits);
        reader.feed(self.synthetic_header(&[]).as_bytes());
        match reader.next() {
            Ok(Some(XmlEvent::StreamOpen(_))) => {}
            Ok(_) => return Err(FramingError::Incomplete),
            Err(e) => return Err(FramingError::Xml(e)),
        }
        reader.feed(message.as_bytes());
        let mut found = None;
        loop {
            match reader.next() {
                Ok(None) => break,
                Ok(Some(XmlEvent::Stanza(el))) => {
                    if found.is_some() {
                        return Err(FramingError::SeveralElements);
                    }
                    found = Some(el);
                }
                // `</stream:stream>` or a header inside a message is not one element.
                Ok(Some(XmlEvent::StreamClose | XmlEvent::StreamOpen(_))) => {
                    return Err(FramingError::SeveralElements);
                }
                Err(e) => return Err(FramingError::Xml(e)),
            }
        }
        // Closing the stream now must work: it fails if an element was left open, which a
        // second, unfinished element would be.
        reader.feed(crate::xml::STREAM_CLOSE.as_bytes());
        let closed = matches!(reader.next(), Ok(Some(XmlEvent::StreamClose)));
        match (found, closed) {
            (Some(el), true) => Ok(el),
            (Some(_), false) => Err(FramingError::SeveralElements),
            (None, true)
                if message
                    .chars()
                    .all(|c| matches!(c, ' ' | '\t' | '\r' | '\n')) =>
            {
                Err(FramingError::Empty)
            }
            (None, _) => Err(FramingError::Incomplete),
        }
    }

    /// The stream header for an `<open/>`, carrying its attributes over.
    fn header_for(&self, open: &minidom::Element) -> String {
        let attr = |name: &'static str| open.attr(name);
        let lang = open
            .attrs()
            .get(rxml::Namespace::xml(), "lang")
            .map(String::as_str);
        let pairs = [
            ("to", attr("to")),
            ("from", attr("from")),
            ("id", attr("id")),
            ("version", attr("version")),
            ("xml:lang", lang),
        ];
        self.synthetic_header(&pairs)
    }

    /// `<stream:stream xmlns=… xmlns:stream=… xmlns:db=… attrs…>`.
    fn synthetic_header(&self, attrs: &[(&str, Option<&str>)]) -> String {
        let mut s = String::with_capacity(256);
        s.push_str("<stream:stream xmlns='");
        s.push_str(&escape(&self.default_ns));
        s.push_str("' xmlns:stream='");
        s.push_str(NS_STREAMS);
        s.push_str("' xmlns:db='");
        s.push_str(NS_DIALBACK);
        s.push('\'');
        for (name, value) in attrs {
            if let Some(value) = value {
                s.push(' ');
                s.push_str(name);
                s.push_str("='");
                s.push_str(&escape(value));
                s.push('\'');
            }
        }
        s.push('>');
        s
    }
}

/// The position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `<open/>` for a stream header we wrote (RFC 7395 §3.3.2).
fn open_element(header: &StreamHeader) -> String {
    let mut s = String::with_capacity(192);
    s.push_str("<open xmlns='");
    s.push_str(NS_FRAMING);
    s.push('\'');
    let pairs = [
        ("to", &header.to),
        ("from", &header.from),
        ("id", &header.id),
        ("version", &header.version),
        ("xml:lang", &header.lang),
    ];
    for (name, value) in pairs {
        if let Some(value) = value {
            s.push(' ');
            s.push_str(name);
            s.push_str("='");
            s.push_str(&escape(value));
            s.push('\'');
        }
    }
    s.push_str("/>");
    s
}

/// `<close/>` (RFC 7395 §3.6).
pub fn close_element() -> String {
    format!("<close xmlns='{NS_FRAMING}'/>")
}

/// A `<stream:error/>` as one self-contained message (RFC 7395 §3.6.1), for a connection
/// that ends the stream itself because the peer broke the framing.
pub fn stream_error_message(condition: &str) -> String {
    let error = crate::xml::stream_error(condition, None);
    let body = error.strip_prefix("<stream:error>").unwrap_or(&error);
    format!("<stream:error xmlns:stream='{NS_STREAMS}'>{body}")
}
