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
//!   every top-level element becomes one message that declares its own namespaces; and
//!   `</stream:stream>` becomes `<close/>`. An incomplete element is kept until the rest is
//!   written. Our machines' output is not parsed whole: elements are found by counting
//!   tags (the machines write no comments, CDATA or DTD), and one written by
//!   [`crate::xml::write_stanza`], unprefixed with its own `xmlns`, is already a message
//!   as it stands; only one that leans on the stream's prefixes (`<stream:features/>`,
//!   `<stream:error/>`, dialback) is read in the stream's context and written again. So a
//!   connection keeps no parser for its outbound side, and a stanza costs a scan, not a
//!   parse. A restart is recognised by the XML declaration every header of ours starts
//!   with ([`crate::xml::stream_header`]).
//! - [`WsFraming::inbound`] takes one received message and returns bytes for the machine's
//!   `handle_input`: `<open/>` becomes a stream header in the default namespace given to
//!   [`WsFraming::new`] (with `stream` and `db` prefixes declared, as our own headers do),
//!   `<close/>` becomes `</stream:stream>`, and any other message must be exactly one
//!   well-formed element within the size and depth limits; it is passed on as received.
//!   Text, several elements, part of an element, a DTD, an element before the first
//!   `<open/>` or anything after `<close/>` is refused with a [`FramingError`] whose
//!   [`FramingError::condition`] is the stream error to send.
//!
//! Every received message is checked with [`crate::xml::StreamReader`] inside the same
//! namespace context the machine will read it in, so what passes here parses the same way there, and
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
    /// What the machine wrote is not XML the framing can cut into elements (it writes no
    /// comments, CDATA or DTD); a bug on our side.
    #[error("cannot frame our own output: {0}")]
    Unframeable(&'static str),
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
            FramingError::Outbound(_)
            | FramingError::Unframeable(_)
            | FramingError::Unserialisable(_) => "internal-server-error",
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
    /// Machine bytes of a unit not yet complete, kept for the next call.
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
            out_held: Vec::new(),
            in_state: InState::Start,
        }
    }

    /// Turns bytes a machine wrote into complete WebSocket text messages, in order. Bytes
    /// of an element not yet complete are kept for the next call.
    pub fn outbound(&mut self, machine_bytes: &[u8]) -> Result<Vec<String>, FramingError> {
        let mut data = std::mem::take(&mut self.out_held);
        data.extend_from_slice(machine_bytes);
        let mut messages = Vec::new();
        let mut at = 0;
        while let Some(rest) = data.get(at..).filter(|r| !r.is_empty()) {
            let unit = scan_unit(rest).map_err(FramingError::Unframeable)?;
            let (len, message) = match unit {
                Unit::Incomplete => break,
                Unit::Space(len) => (len, None),
                Unit::Header(len) => (len, Some(self.open_for(&rest[..len])?)),
                Unit::Close(len) => (len, Some(close_element())),
                Unit::Element { len, verbatim } => {
                    let bytes = &rest[..len];
                    let message = if verbatim {
                        String::from_utf8_lossy(bytes).into_owned()
                    } else {
                        self.reframe(bytes)?
                    };
                    (len, Some(message))
                }
            };
            messages.extend(message);
            at += len;
        }
        data.drain(..at);
        self.out_held = data;
        Ok(messages)
    }

    /// `<open/>` for a stream header the machine wrote.
    fn open_for(&self, header: &[u8]) -> Result<String, FramingError> {
        let mut reader = StreamReader::new(self.limits);
        reader.feed(header);
        match reader.next().map_err(FramingError::Outbound)? {
            Some(XmlEvent::StreamOpen(header)) => Ok(open_element(&header)),
            _ => Err(FramingError::Unframeable("a stream header it cannot read")),
        }
    }

    /// An element that leans on the stream's prefixes (`<stream:features>`), read in the
    /// stream's namespace context and written again declaring its own namespaces.
    fn reframe(&self, element: &[u8]) -> Result<String, FramingError> {
        let mut reader = StreamReader::new(self.limits);
        reader.feed(self.synthetic_header(&[]).as_bytes());
        reader.feed(element);
        loop {
            match reader.next().map_err(FramingError::Outbound)? {
                Some(XmlEvent::StreamOpen(_)) => {}
                Some(XmlEvent::Stanza(el)) => {
                    let mut out = Vec::new();
                    write_stanza(&el, &mut out).map_err(FramingError::Unserialisable)?;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                Some(XmlEvent::StreamClose) | None => {
                    return Err(FramingError::Unframeable("an element it cannot read"));
                }
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

/// The next unit of a machine's output. The machines write XML as [`write_stanza`] and
/// [`crate::xml::stream_header`] do: no comments, CDATA, DTD or processing instructions,
/// every attribute quoted, `<` always escaped; so units can be found by counting tags,
/// which costs far less than parsing (and keeping a parser per connection).
#[derive(Debug, PartialEq, Eq)]
enum Unit {
    /// More bytes are needed.
    Incomplete,
    /// Whitespace between units, dropped.
    Space(usize),
    /// `<?xml …?><stream:stream …>`.
    Header(usize),
    /// `</stream:stream>`.
    Close(usize),
    /// A top-level element; `verbatim` when it is a message as it stands: unprefixed and
    /// declaring its namespace, as [`write_stanza`] writes every element.
    Element { len: usize, verbatim: bool },
}

fn scan_unit(data: &[u8]) -> Result<Unit, &'static str> {
    let space = data
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .count();
    if space > 0 {
        return Ok(Unit::Space(space));
    }
    if data.len() < XML_DECLARATION.len() && XML_DECLARATION.starts_with(data) {
        return Ok(Unit::Incomplete);
    }
    if data.starts_with(XML_DECLARATION) {
        let Some(end) = find(data, b"?>") else {
            return Ok(Unit::Incomplete);
        };
        let after = end + 2;
        let root = data.get(after..).unwrap_or_default();
        return Ok(match start_tag(root)? {
            None => Unit::Incomplete,
            Some(tag) => Unit::Header(after + tag.len),
        });
    }
    if data.starts_with(b"</") {
        return Ok(match data.iter().position(|&b| b == b'>') {
            None => Unit::Incomplete,
            Some(i) => Unit::Close(i + 1),
        });
    }
    let Some(first) = start_tag(data)? else {
        return Ok(Unit::Incomplete);
    };
    let verbatim = !first.prefixed && first.declares_default_ns;
    if first.empty {
        return Ok(Unit::Element {
            len: first.len,
            verbatim,
        });
    }
    Ok(match element_end(data, first.len)? {
        Some(len) => Unit::Element { len, verbatim },
        None => Unit::Incomplete,
    })
}

/// Where the element whose start tag ends at `at` ends; `None` if it is not all written.
fn element_end(data: &[u8], mut at: usize) -> Result<Option<usize>, &'static str> {
    let mut depth = 1usize;
    loop {
        let Some(lt) = data
            .get(at..)
            .and_then(|r| r.iter().position(|&b| b == b'<'))
        else {
            return Ok(None);
        };
        at += lt;
        let rest = data.get(at..).unwrap_or_default();
        if rest.starts_with(b"</") {
            let Some(gt) = rest.iter().position(|&b| b == b'>') else {
                return Ok(None);
            };
            at += gt + 1;
            depth -= 1;
            if depth == 0 {
                return Ok(Some(at));
            }
        } else {
            let Some(tag) = start_tag(rest)? else {
                return Ok(None);
            };
            at += tag.len;
            if !tag.empty {
                depth += 1;
            }
        }
    }
}

/// A start tag at the beginning of some bytes.
struct StartTag {
    len: usize,
    /// `<…/>`.
    empty: bool,
    /// The element's name has a prefix.
    prefixed: bool,
    /// It has an `xmlns` attribute.
    declares_default_ns: bool,
}

/// The start tag `data` begins with, `None` if it is not all there yet.
fn start_tag(data: &[u8]) -> Result<Option<StartTag>, &'static str> {
    if data.len() < 2 {
        return Ok(None);
    }
    if data.first() != Some(&b'<') || matches!(data.get(1), Some(b'!' | b'?' | b'/')) {
        return Err("something other than an element where one should start");
    }
    let name_end = |from: usize| {
        data.get(from..).and_then(|r| {
            r.iter()
                .position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'/' | b'>' | b'='))
                .map(|i| from + i)
        })
    };
    let Some(end) = name_end(1) else {
        return Ok(None);
    };
    let prefixed = data.get(1..end).is_some_and(|n| n.contains(&b':'));
    let mut declares_default_ns = false;
    let mut at = end;
    let mut quote: Option<u8> = None;
    let mut attr_start = None;
    while let Some(&b) = data.get(at) {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(b),
            (None, b'>') => {
                let empty = at > 0 && data.get(at - 1) == Some(&b'/');
                return Ok(Some(StartTag {
                    len: at + 1,
                    empty,
                    prefixed,
                    declares_default_ns,
                }));
            }
            (None, b'=') => {
                if let Some(start) = attr_start.take() {
                    let name = data.get(start..at).unwrap_or_default().trim_ascii();
                    declares_default_ns |= name == b"xmlns";
                }
            }
            (None, b' ' | b'\t' | b'\r' | b'\n') => attr_start = Some(at + 1),
            (None, _) => {}
        }
        at += 1;
    }
    Ok(None)
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
