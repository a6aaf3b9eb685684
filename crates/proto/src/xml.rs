//! The XMPP XML stream: an incremental, bounded reader and the writer helpers (RFC 6120 §4, §11).
//!
//! [`StreamReader`] turns the bytes a peer sends into [`XmlEvent`]s: the stream header, one
//! [`minidom::Element`] per top-level element (a stanza, `<stream:features/>`, `<auth/>`, …) and
//! the stream close. It is sans-IO: the caller feeds bytes it read and drains events; "not enough
//! bytes yet" is `Ok(None)`, not an error.
//!
//! It is built on rxml's namespace-resolving push parser, which implements the restricted XML
//! profile RFC 6120 §11.1 asks for: no DTD, no entities beyond the five predefined ones, no
//! processing instructions and (as configured here) no comments. On top of that the reader
//! enforces what rxml does not: a byte limit per top-level element, checked while the element is
//! still arriving, and a nesting limit, so a peer cannot make us buffer without bound or recurse.
//! Elements are built with an explicit stack, never by recursion on peer input.
//!
//! Namespace handling: the resolving parser hands us every element and attribute with its
//! namespace already resolved but drops the `xmlns` declarations themselves, so it cannot tell us
//! the stream's default namespace (`jabber:client` or `jabber:server`, RFC 6120 §4.8.2). Until the
//! stream header is complete, the same bytes also go through a second, non-resolving rxml parser
//! that only looks for the root's `xmlns` attribute; it is dropped once the header is read, so it
//! costs nothing afterwards. [`StreamHeader::ns`] is therefore the namespace the peer really
//! declared (empty if it declared none), and it is the caller's job to reject an unsupported one
//! with `invalid-namespace`. Stanzas keep their resolved namespace, so the caller also sees a
//! stanza that redeclares its own namespace.
//!
//! The writer side is small: the stream header, stream errors, the closing tag and
//! [`write_stanza`], an iterative serialiser that declares every namespace it uses and refuses
//! (rather than panics on) names or characters that cannot be written as XML.
//!
//! Not here: TLS, sockets, timeouts and anything that knows what a stanza means.

use minidom::{Element, Node};
use rxml::error::EndOrError;
use rxml::{Event, Namespace, Parse, Parser, RawEvent, RawParser};

/// The namespace of `<stream:stream>`, `<stream:features>` and `<stream:error>` (RFC 6120 §4.8.1).
pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";

/// The namespace of stream error conditions (RFC 6120 §4.9.2).
pub const NS_XMPP_STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// The closing tag of a stream we opened with [`stream_header`] (RFC 6120 §4.4).
pub const STREAM_CLOSE: &str = "</stream:stream>";

/// Limits on what a peer may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest top-level element, counted in bytes as received, including its start and end
    /// tags. The stream header is held to the same limit.
    pub max_stanza_bytes: usize,
    /// The deepest nesting allowed; the stream root is depth 1 and a stanza depth 2.
    pub max_depth: usize,
}

impl Default for Limits {
    /// 256 KiB per stanza and 64 levels, which no legitimate client stanza comes near.
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 256 * 1024,
            max_depth: 64,
        }
    }
}

/// The attributes of the peer's `<stream:stream>` (RFC 6120 §4.7).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamHeader {
    /// The default namespace the peer declared on the root, e.g. `jabber:client`; empty when it
    /// declared none (RFC 6120 §4.8.2).
    pub ns: String,
    /// The `to` attribute.
    pub to: Option<String>,
    /// The `from` attribute.
    pub from: Option<String>,
    /// The `id` attribute.
    pub id: Option<String>,
    /// The `version` attribute.
    pub version: Option<String>,
    /// The `xml:lang` attribute.
    pub lang: Option<String>,
}

/// One complete thing read from the stream.
#[derive(Clone, Debug, PartialEq)]
pub enum XmlEvent {
    /// The stream header (depth 1 opened).
    StreamOpen(StreamHeader),
    /// A complete top-level element (depth 2).
    Stanza(Element),
    /// `</stream:stream>` (depth 1 closed).
    StreamClose,
}

/// Why the stream cannot be read any further. Every variant maps to a stream error condition.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum XmlError {
    /// The bytes are not well-formed (namespace-)XML.
    #[error("XML not well-formed")]
    NotWellFormed(#[source] rxml::Error),
    /// A construct RFC 6120 §11.1 forbids: a DTD, entity, processing instruction or comment.
    #[error("restricted XML construct")]
    Restricted(#[source] rxml::Error),
    /// The stream is not UTF-8, or declares another encoding (RFC 6120 §11.6).
    #[error("stream is not UTF-8")]
    UnsupportedEncoding(#[source] rxml::Error),
    /// A single name or attribute value is longer than the parser accepts.
    #[error("XML token too long")]
    TokenTooLong(#[source] rxml::Error),
    /// A top-level element (or the stream header) is larger than the configured limit.
    #[error("top-level element larger than {limit} bytes")]
    StanzaTooBig {
        /// The configured [`Limits::max_stanza_bytes`].
        limit: usize,
    },
    /// Elements are nested deeper than the configured limit.
    #[error("elements nested deeper than {limit} levels")]
    TooDeep {
        /// The configured [`Limits::max_depth`].
        limit: usize,
    },
    /// The root element is not `{http://etherx.jabber.org/streams}stream`.
    #[error("stream root is {{{ns}}}{name}")]
    InvalidNamespace {
        /// The root's namespace.
        ns: String,
        /// The root's local name.
        name: String,
    },
    /// Character data other than whitespace between top-level elements.
    #[error("text between top-level elements")]
    TextBetweenStanzas,
}

impl XmlError {
    /// The RFC 6120 §4.9.3 stream error condition to send before closing the stream.
    pub fn condition(&self) -> &'static str {
        match self {
            XmlError::NotWellFormed(_) => "not-well-formed",
            XmlError::Restricted(_) => "restricted-xml",
            XmlError::UnsupportedEncoding(_) => "unsupported-encoding",
            // RFC 6120 §4.9.3.14: policy-violation covers "stanza too large" and other local
            // limits; an over-long token is one of those, not a forbidden XML feature.
            XmlError::TokenTooLong(_)
            | XmlError::StanzaTooBig { .. }
            | XmlError::TooDeep { .. } => "policy-violation",
            XmlError::InvalidNamespace { .. } => "invalid-namespace",
            XmlError::TextBetweenStanzas => "bad-format",
        }
    }

    /// Sorts an rxml error into the stream error condition it deserves.
    fn from_rxml(e: rxml::Error) -> XmlError {
        match e {
            rxml::Error::InvalidUtf8Byte(_) => XmlError::UnsupportedEncoding(e),
            // rxml reports these only through their message; the strings are pinned by tests.
            rxml::Error::RestrictedXml("only utf-8 encoding is allowed") => {
                XmlError::UnsupportedEncoding(e)
            }
            rxml::Error::RestrictedXml("long name or reference" | "event too long") => {
                XmlError::TokenTooLong(e)
            }
            rxml::Error::RestrictedXml(_) | rxml::Error::UndeclaredEntity => {
                XmlError::Restricted(e)
            }
            // `<!` followed by anything but `--` or `[CDATA[` can only start a markup
            // declaration such as `<!DOCTYPE`, which is a DTD (RFC 6120 §11.1).
            rxml::Error::InvalidSyntax("malformed cdata or comment section start") => {
                XmlError::Restricted(e)
            }
            _ => XmlError::NotWellFormed(e),
        }
    }
}

/// Watches the bytes of the stream header with a non-resolving parser to learn the default
/// namespace the peer declared, which the resolving parser does not report.
#[derive(Debug)]
struct HeaderSniffer {
    parser: RawParser,
    in_root: bool,
    default_ns: Option<String>,
}

impl HeaderSniffer {
    fn new() -> Self {
        HeaderSniffer {
            parser: RawParser::new(),
            in_root: false,
            default_ns: None,
        }
    }

    /// Parses bytes the main parser has consumed. Errors are ignored: the main parser sees the
    /// same bytes and reports them.
    fn feed(&mut self, mut data: &[u8]) {
        loop {
            match self.parser.parse(&mut data, false) {
                Ok(Some(RawEvent::ElementHeadOpen(..))) => self.in_root = true,
                Ok(Some(RawEvent::Attribute(_, (None, name), value)))
                    if self.in_root && name.as_str() == "xmlns" =>
                {
                    self.default_ns = Some(value);
                }
                Ok(Some(RawEvent::ElementHeadClose(_))) => self.in_root = false,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    }
}

/// The incremental reader of one direction of an XML stream.
///
/// Feed it what was read from the peer, then call [`StreamReader::next`] until it returns
/// `Ok(None)`; only then is everything that was fed either consumed or held as an incomplete
/// element, so the input buffer stays bounded by one read plus one element. After an error the
/// reader keeps returning that error; the stream is over (RFC 6120 §4.9.1.1).
#[derive(Debug)]
pub struct StreamReader {
    limits: Limits,
    parser: Parser,
    /// Present until the root's start tag has been read.
    sniffer: Option<HeaderSniffer>,
    buf: Vec<u8>,
    /// How much of `buf` the parser has consumed.
    pos: usize,
    /// Bytes consumed by the parser since the stream (re)started.
    consumed: u64,
    /// `consumed` at the end of the last event the parser emitted.
    event_end: u64,
    /// `consumed` at the first byte of the current top-level element.
    stanza_start: u64,
    /// 0 outside the root, 1 inside `<stream:stream>`, 2 inside a stanza, …
    depth: usize,
    /// The open elements at depth 2 and below, innermost last.
    stack: Vec<Element>,
    failed: Option<XmlError>,
}

impl StreamReader {
    /// A reader for a new stream, enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        StreamReader {
            limits,
            parser: Parser::new(),
            sniffer: Some(HeaderSniffer::new()),
            buf: Vec::new(),
            pos: 0,
            consumed: 0,
            event_end: 0,
            stanza_start: 0,
            depth: 0,
            stack: Vec::new(),
            failed: None,
        }
    }

    /// Appends bytes read from the peer.
    pub fn feed(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            // Moving the unread tail to the front at most halves the work of later reads, and
            // keeps the buffer from growing while most of it has already been parsed.
            self.buf.drain(..self.pos.min(self.buf.len()));
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete event, or `Ok(None)` when more bytes are needed.
    #[expect(
        clippy::should_implement_trait,
        reason = "`Ok(None)` means \"feed me\", not the end, so this is no `Iterator`"
    )]
    pub fn next(&mut self) -> Result<Option<XmlEvent>, XmlError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.step() {
            Ok(ev) => Ok(ev),
            Err(e) => {
                self.failed = Some(e.clone());
                // Nothing more will be parsed, so nothing needs to stay in memory.
                self.buf = Vec::new();
                self.pos = 0;
                self.stack = Vec::new();
                self.sniffer = None;
                Err(e)
            }
        }
    }

    /// Starts a fresh stream, as after STARTTLS (RFC 6120 §5.4.3.3) or SASL success
    /// (RFC 6120 §6.4.6): a new parser, and any bytes not yet parsed are dropped.
    pub fn reset(&mut self) {
        *self = StreamReader::new(self.limits);
    }

    /// Bytes received but not yet consumed by the parser.
    ///
    /// After `<starttls/>` this must be zero before the TLS handshake starts; otherwise the peer
    /// sent plaintext that would be mistaken for data received over TLS (the CVE-2011-0411
    /// class). Note that whitespace after the element counts too.
    pub fn buffered_len(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Whether everything received but not yet parsed is XML whitespace (or nothing). Clients
    /// commonly end `<starttls/>` with a newline; only other bytes are smuggled plaintext.
    pub fn buffered_is_whitespace(&self) -> bool {
        self.buf
            .get(self.pos..)
            .unwrap_or_default()
            .iter()
            .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
    }

    /// The size of the top-level element (or, between elements, of the construct) being read.
    fn current_size(&self) -> u64 {
        if self.depth >= 2 {
            self.consumed.saturating_sub(self.stanza_start)
        } else {
            self.consumed.saturating_sub(self.event_end)
        }
    }

    fn limit(&self) -> u64 {
        u64::try_from(self.limits.max_stanza_bytes).unwrap_or(u64::MAX)
    }

    fn check_size(&self) -> Result<(), XmlError> {
        if self.current_size() > self.limit() {
            return Err(XmlError::StanzaTooBig {
                limit: self.limits.max_stanza_bytes,
            });
        }
        Ok(())
    }

    fn step(&mut self) -> Result<Option<XmlEvent>, XmlError> {
        loop {
            // Hand the parser no more than one byte beyond the limit, so an oversized element is
            // rejected as soon as it crosses the limit rather than after it has been read whole.
            let room = self
                .limit()
                .saturating_sub(self.current_size())
                .saturating_add(1);
            let avail = self.buf.get(self.pos..).unwrap_or_default();
            let take = usize::try_from(room).map_or(avail.len(), |room| room.min(avail.len()));
            let chunk = avail.get(..take).unwrap_or(avail);
            let mut rest = chunk;
            let result = self.parser.parse(&mut rest, false);
            let used = chunk.len().saturating_sub(rest.len());
            if let Some(sniffer) = &mut self.sniffer {
                sniffer.feed(chunk.get(..used).unwrap_or_default());
            }
            self.pos = self.pos.saturating_add(used);
            self.consumed = self
                .consumed
                .saturating_add(u64::try_from(used).unwrap_or(u64::MAX));

            match result {
                Ok(Some(ev)) => {
                    // The cut above is only as exact as the count between events, which can be
                    // a byte short (rxml consumes the `<` after text with the text), so check
                    // the exact count here too: before the event for what it ends, after it for
                    // a stanza it starts.
                    self.check_size()?;
                    let out = self.handle(ev)?;
                    self.check_size()?;
                    self.event_end = self.consumed;
                    if out.is_some() {
                        return Ok(out);
                    }
                }
                Err(EndOrError::NeedMoreData) => {
                    self.check_size()?;
                    if self.pos >= self.buf.len() {
                        self.release_idle_memory();
                        return Ok(None);
                    }
                    // The parser stopped at the cut we made above; give it the next piece. A
                    // parser that consumed nothing would loop forever, so stop instead.
                    debug_assert!(used > 0, "parser asked for more data without consuming any");
                    if used == 0 {
                        return Ok(None);
                    }
                }
                Err(EndOrError::Error(e)) => return Err(XmlError::from_rxml(e)),
                // End of document is only reported with `at_eof`, which we never pass; the TCP
                // connection's end is the caller's business.
                Ok(None) => return Ok(None),
            }
        }
    }

    fn handle(&mut self, ev: Event) -> Result<Option<XmlEvent>, XmlError> {
        match ev {
            Event::XmlDeclaration(..) => Ok(None),
            Event::StartElement(metrics, (ns, name), attrs) => {
                if self.depth >= self.limits.max_depth {
                    return Err(XmlError::TooDeep {
                        limit: self.limits.max_depth,
                    });
                }
                if self.depth == 0 {
                    return self.open_stream(ns, name.as_str(), attrs).map(Some);
                }
                if self.depth == 1 {
                    let len = u64::try_from(metrics.len()).unwrap_or(u64::MAX);
                    self.stanza_start = self.consumed.saturating_sub(len);
                }
                let mut el = Element::bare(name.as_str(), ns.as_str());
                *el.attrs_mut() = attrs;
                self.stack.push(el);
                self.depth += 1;
                Ok(None)
            }
            Event::EndElement(_) => match self.depth {
                0 => Ok(None),
                1 => {
                    self.depth = 0;
                    Ok(Some(XmlEvent::StreamClose))
                }
                _ => {
                    self.depth -= 1;
                    let Some(el) = self.stack.pop() else {
                        return Ok(None);
                    };
                    match self.stack.last_mut() {
                        Some(parent) => {
                            parent.append_child(el);
                            Ok(None)
                        }
                        None => Ok(Some(XmlEvent::Stanza(el))),
                    }
                }
            },
            Event::Text(_, text) => {
                if let Some(top) = self.stack.last_mut() {
                    top.append_text(text);
                } else if self.depth == 1 && !text.chars().all(is_xml_space) {
                    // RFC 6120 §4.6.1 allows whitespace between stanzas as keepalive; any other
                    // character data there fits no stanza (§4.9.3.1, bad-format).
                    return Err(XmlError::TextBetweenStanzas);
                }
                Ok(None)
            }
        }
    }

    fn open_stream(
        &mut self,
        ns: Namespace<'static>,
        name: &str,
        attrs: rxml::AttrMap,
    ) -> Result<XmlEvent, XmlError> {
        if ns.as_str() != NS_STREAMS || name != "stream" {
            return Err(XmlError::InvalidNamespace {
                ns: ns.as_str().to_owned(),
                name: name.to_owned(),
            });
        }
        let get = |ns: &Namespace<'static>, key: &str| attrs.get(ns, key).cloned();
        let none = Namespace::none();
        let header = StreamHeader {
            ns: self
                .sniffer
                .take()
                .and_then(|s| s.default_ns)
                .unwrap_or_default(),
            to: get(none, "to"),
            from: get(none, "from"),
            id: get(none, "id"),
            version: get(none, "version"),
            lang: get(Namespace::xml(), "lang"),
        };
        self.depth = 1;
        Ok(XmlEvent::StreamOpen(header))
    }

    /// Gives back memory that only a large element needed, once the input is drained.
    fn release_idle_memory(&mut self) {
        // Drained: the next read allocates afresh. Holding on to even a small buffer would
        // cost every idle connection that much.
        self.buf = Vec::new();
        self.pos = 0;
        if self.depth <= 1 {
            if self.stack.capacity() > 0 {
                self.stack = Vec::new();
            }
            // rxml keeps token scratch buffers (up to its 8 KiB token limit) and queues; between
            // stanzas they hold nothing worth keeping.
            self.parser.release_temporaries();
        }
    }

    #[cfg(test)]
    fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// XML's whitespace (the `S` production of XML 1.0 §2.3).
fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Why an element could not be serialised.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// An element name that is not an XML NCName.
    #[error("invalid element name {0:?}")]
    InvalidName(String),
    /// A character XML 1.0 cannot carry (§2.2), such as most C0 controls.
    #[error("character U+{:04X} cannot appear in XML", u32::from(*.0))]
    InvalidChar(char),
    /// An attribute in the `xmlns` namespace, which would change namespace declarations.
    #[error("attribute {0:?} is in the reserved xmlns namespace")]
    ReservedAttribute(String),
}

/// XML 1.0 §2.2 `Char`, minus surrogates, which a `str` cannot hold anyway.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Escapes `s` into `out`. In attribute values, tab, newline and carriage return are written as
/// character references so that attribute-value normalisation (XML 1.0 §3.3.3) gives them back
/// unchanged; carriage return is escaped in text too, so line-end handling (§2.11) keeps it.
fn escape_into(out: &mut String, s: &str, attribute: bool) -> Result<(), char> {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            '\'' if attribute => out.push_str("&apos;"),
            '"' if attribute => out.push_str("&quot;"),
            '\t' if attribute => out.push_str("&#x9;"),
            '\n' if attribute => out.push_str("&#xA;"),
            c if is_xml_char(c) => out.push(c),
            c => return Err(c),
        }
    }
    Ok(())
}

/// Escapes `s` for use in an attribute value (quoted with `'` or `"`) or in text.
///
/// Characters XML 1.0 cannot carry are replaced with U+FFFD rather than producing a document
/// the peer must reject.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if is_xml_char(c) { c } else { '\u{FFFD}' };
        let mut tmp = [0u8; 4];
        // Cannot fail: every remaining character is an XML character.
        let _ = escape_into(&mut out, c.encode_utf8(&mut tmp), true);
    }
    out
}

/// Our stream header (RFC 6120 §4.7), preceded by an XML declaration.
///
/// `ns` is the content namespace (`jabber:client` or `jabber:server`); `to` and `lang` are
/// written only when given. All values are escaped.
pub fn stream_header(
    ns: &str,
    from: &str,
    to: Option<&str>,
    id: &str,
    lang: Option<&str>,
) -> String {
    let mut s = String::with_capacity(256);
    s.push_str("<?xml version='1.0'?><stream:stream xmlns='");
    s.push_str(&escape(ns));
    s.push_str("' xmlns:stream='");
    s.push_str(NS_STREAMS);
    s.push_str("' version='1.0' from='");
    s.push_str(&escape(from));
    s.push_str("' id='");
    s.push_str(&escape(id));
    s.push('\'');
    if let Some(to) = to {
        s.push_str(" to='");
        s.push_str(&escape(to));
        s.push('\'');
    }
    if let Some(lang) = lang {
        s.push_str(" xml:lang='");
        s.push_str(&escape(lang));
        s.push('\'');
    }
    s.push('>');
    s
}

/// A `<stream:error/>` (RFC 6120 §4.9) with the given condition and optional text.
///
/// A condition that is not a valid element name becomes `undefined-condition`
/// (RFC 6120 §4.9.3.21) rather than broken XML.
pub fn stream_error(condition: &str, text: Option<&str>) -> String {
    let condition = if rxml::strings::validate_ncname(condition).is_ok() {
        condition
    } else {
        "undefined-condition"
    };
    let mut s = String::with_capacity(128);
    s.push_str("<stream:error><");
    s.push_str(condition);
    s.push_str(" xmlns='");
    s.push_str(NS_XMPP_STREAMS);
    s.push_str("'/>");
    if let Some(text) = text {
        s.push_str("<text xmlns='");
        s.push_str(NS_XMPP_STREAMS);
        s.push_str("'>");
        s.push_str(&escape(text));
        s.push_str("</text>");
    }
    s.push_str("</stream:error>");
    s
}

/// The `<see-other-host/>` stream error naming where the client should connect instead
/// (RFC 6120 §4.9.3.19): a host name or address, with an optional port.
pub fn see_other_host(host: &str) -> String {
    format!(
        "<stream:error><see-other-host xmlns='{NS_XMPP_STREAMS}'>{}</see-other-host></stream:error>",
        escape(host)
    )
}

/// Serialises `el` as one top-level element of a stream into `out`.
///
/// The element always declares its namespace as the default (`xmlns='…'`), so the output is
/// correct whatever the stream's default namespace; children redeclare only when theirs differs.
/// Namespaced attributes other than `xml:` get a prefix declared on their own element. Nothing
/// recurses, so element depth does not matter. On error nothing is appended.
pub fn write_stanza(el: &Element, out: &mut Vec<u8>) -> Result<(), WriteError> {
    let mut s = String::new();
    write_element(el, &mut s)?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Reads back one element that [`write_stanza`] wrote (as Outpost's nodes pass stanzas to
/// each other), with the same checks and `limits` as a stream: `None` unless `text` is
/// exactly one well-formed element and nothing else.
pub fn read_stanza(text: &[u8], limits: Limits) -> Option<Element> {
    let mut reader = StreamReader::new(limits);
    reader.feed(
        format!("<stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAMS}'>").as_bytes(),
    );
    if !matches!(reader.next(), Ok(Some(XmlEvent::StreamOpen(_)))) {
        return None;
    }
    reader.feed(text);
    let Ok(Some(XmlEvent::Stanza(el))) = reader.next() else {
        return None;
    };
    // Nothing after it: no second element, no end of the stream.
    if !matches!(reader.next(), Ok(None)) {
        return None;
    }
    reader.feed(STREAM_CLOSE.as_bytes());
    matches!(reader.next(), Ok(Some(XmlEvent::StreamClose))).then_some(el)
}

/// An element whose start tag has been written and whose children are being written.
struct Frame<'a> {
    el: &'a Element,
    ns: String,
    children: minidom::element::Nodes<'a>,
}

fn write_element(root: &Element, out: &mut String) -> Result<(), WriteError> {
    let mut stack: Vec<Frame<'_>> = Vec::new();
    if let Some(frame) = write_start(root, None, out)? {
        stack.push(frame);
    }
    while let Some(frame) = stack.last_mut() {
        match frame.children.next() {
            Some(Node::Text(text)) => {
                escape_into(out, text, false).map_err(WriteError::InvalidChar)?;
            }
            Some(Node::Element(child)) => {
                let parent_ns = frame.ns.clone();
                if let Some(child_frame) = write_start(child, Some(&parent_ns), out)? {
                    stack.push(child_frame);
                }
            }
            None => {
                out.push_str("</");
                out.push_str(frame.el.name());
                out.push('>');
                stack.pop();
            }
        }
    }
    Ok(())
}

/// Writes `<name …>` (returning the frame for its children) or `<name …/>` (returning `None`).
fn write_start<'a>(
    el: &'a Element,
    parent_ns: Option<&str>,
    out: &mut String,
) -> Result<Option<Frame<'a>>, WriteError> {
    let name = el.name();
    if rxml::strings::validate_ncname(name).is_err() {
        return Err(WriteError::InvalidName(name.to_owned()));
    }
    let ns = el.ns();
    out.push('<');
    out.push_str(name);
    if parent_ns != Some(ns.as_str()) {
        out.push_str(" xmlns='");
        escape_into(out, &ns, true).map_err(WriteError::InvalidChar)?;
        out.push('\'');
    }
    let mut prefixes: Vec<&str> = Vec::new();
    for ((attr_ns, attr_name), value) in el.attrs() {
        out.push(' ');
        if attr_ns.is_none() {
        } else if attr_ns.as_str() == rxml::XMLNS_XML {
            out.push_str("xml:");
        } else if attr_ns.as_str() == rxml::XMLNS_XMLNS {
            return Err(WriteError::ReservedAttribute(attr_name.as_str().to_owned()));
        } else {
            // Prefixes are local to this element, so `a0`, `a1`, … never clash with a prefix in
            // scope: this writer declares no others.
            let index = match prefixes.iter().position(|p| *p == attr_ns.as_str()) {
                Some(index) => index,
                None => {
                    prefixes.push(attr_ns.as_str());
                    let index = prefixes.len() - 1;
                    out.push_str(&format!("xmlns:a{index}='"));
                    escape_into(out, attr_ns, true).map_err(WriteError::InvalidChar)?;
                    out.push_str("' ");
                    index
                }
            };
            out.push_str(&format!("a{index}:"));
        }
        out.push_str(attr_name.as_str());
        out.push_str("='");
        escape_into(out, value, true).map_err(WriteError::InvalidChar)?;
        out.push('\'');
    }
    if el.nodes().next().is_none() {
        out.push_str("/>");
        return Ok(None);
    }
    out.push('>');
    Ok(Some(Frame {
        el,
        ns,
        children: el.nodes(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' \
        xml:lang='en'>";

    /// What `write_stanza` writes, `read_stanza` reads back; anything but one element
    /// within the limits is refused.
    #[test]
    fn read_stanza_takes_exactly_one_element() {
        let el: Element = "<message xmlns='jabber:client' to='a@b' type='chat'><body>hi &amp; \
            bye</body><x xmlns='urn:x' a='1'/></message>"
            .parse()
            .unwrap();
        let mut text = Vec::new();
        write_stanza(&el, &mut text).unwrap();
        assert_eq!(read_stanza(&text, Limits::default()), Some(el));
        let refused: [&[u8]; 6] = [
            b"",
            b"<message xmlns='jabber:client'>",
            b"<a xmlns='jabber:client'/><b xmlns='jabber:client'/>",
            b"<a xmlns='jabber:client'/></stream:stream>",
            b"<!DOCTYPE a><a/>",
            b"not xml",
        ];
        for bad in refused {
            assert_eq!(read_stanza(bad, Limits::default()), None, "{bad:?}");
        }
        let deep = format!(
            "{}{}",
            "<a xmlns='jabber:client'>".repeat(100),
            "</a>".repeat(100)
        );
        assert_eq!(read_stanza(deep.as_bytes(), Limits::default()), None);
    }

    /// Calls `next` until it needs more bytes.
    fn drain(r: &mut StreamReader) -> Result<Vec<XmlEvent>, XmlError> {
        let mut out = Vec::new();
        while let Some(ev) = r.next()? {
            out.push(ev);
        }
        Ok(out)
    }

    /// Feeds `input` in pieces of `chunk` bytes, collecting events until the first error.
    fn read_chunked(
        input: &[u8],
        chunk: usize,
        limits: Limits,
    ) -> (Vec<XmlEvent>, Option<XmlError>) {
        let mut r = StreamReader::new(limits);
        let mut events = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            r.feed(piece);
            loop {
                match r.next() {
                    Ok(Some(ev)) => events.push(ev),
                    Ok(None) => break,
                    Err(e) => return (events, Some(e)),
                }
            }
        }
        (events, None)
    }

    fn read_all(input: &str) -> (Vec<XmlEvent>, Option<XmlError>) {
        read_chunked(input.as_bytes(), input.len(), Limits::default())
    }

    fn error_condition(input: &str) -> &'static str {
        match read_all(input) {
            (_, Some(e)) => e.condition(),
            (events, None) => panic!("no error; events: {events:?}"),
        }
    }

    fn stanza(ev: &XmlEvent) -> &Element {
        match ev {
            XmlEvent::Stanza(el) => el,
            other => panic!("expected a stanza, got {other:?}"),
        }
    }

    const TRANSCRIPT: &str = "<?xml version='1.0'?>\n<stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' \
        xml:lang='en' id='x&amp;y'>\n  <message to='juliet@example.com' type='chat' \
        xml:lang='fr'><body>Bonjour &lt;toi&gt; &#x1F600; caf\u{e9}</body>\
        <x:foo xmlns:x='urn:x' x:a='1'><x:bar>deep</x:bar></x:foo></message> \n\t\r\n\
        <iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq><presence/>\
        </stream:stream>";

    #[test]
    fn c2s_opening_with_declaration() {
        let (events, err) = read_all(TRANSCRIPT);
        assert_eq!(err, None);
        assert_eq!(events.len(), 5, "{events:?}");
        assert_eq!(
            events[0],
            XmlEvent::StreamOpen(StreamHeader {
                ns: "jabber:client".into(),
                to: Some("example.com".into()),
                from: None,
                id: Some("x&y".into()),
                version: Some("1.0".into()),
                lang: Some("en".into()),
            })
        );
        let msg = stanza(&events[1]);
        assert!(msg.is("message", "jabber:client"));
        assert_eq!(msg.attr("to"), Some("juliet@example.com"));
        assert_eq!(msg.attr_ns(rxml::XMLNS_XML, "lang"), Some("fr"));
        let body = msg.get_child("body", "jabber:client").unwrap();
        assert_eq!(body.text(), "Bonjour <toi> \u{1F600} caf\u{e9}");
        let iq = stanza(&events[2]);
        assert!(iq.has_child("ping", "urn:xmpp:ping"));
        assert!(stanza(&events[3]).is("presence", "jabber:client"));
        assert_eq!(events[4], XmlEvent::StreamClose);
    }

    #[test]
    fn prefixed_payloads_resolve_their_namespaces() {
        let (events, _) = read_all(TRANSCRIPT);
        let foo = stanza(&events[1]).get_child("foo", "urn:x").unwrap();
        assert_eq!(foo.attr_ns("urn:x", "a"), Some("1"));
        assert_eq!(foo.get_child("bar", "urn:x").unwrap().text(), "deep");
    }

    #[test]
    fn every_split_gives_the_same_events() {
        let (whole, err) = read_all(TRANSCRIPT);
        assert_eq!(err, None);
        let (bytewise, err) = read_chunked(TRANSCRIPT.as_bytes(), 1, Limits::default());
        assert_eq!(err, None);
        assert_eq!(bytewise, whole);
        let bytes = TRANSCRIPT.as_bytes();
        for cut in 0..=bytes.len() {
            let mut r = StreamReader::new(Limits::default());
            r.feed(&bytes[..cut]);
            let mut events = drain(&mut r).unwrap();
            r.feed(&bytes[cut..]);
            events.extend(drain(&mut r).unwrap());
            assert_eq!(events, whole, "split at {cut}");
        }
    }

    #[test]
    fn whitespace_keepalives_are_ignored() {
        let mut r = StreamReader::new(Limits::default());
        r.feed(HEADER.as_bytes());
        assert!(matches!(
            drain(&mut r).unwrap()[..],
            [XmlEvent::StreamOpen(_)]
        ));
        for _ in 0..100 {
            r.feed(b" ");
            assert_eq!(drain(&mut r).unwrap(), vec![]);
        }
        r.feed(b"\n\r\n\t<presence/>\n");
        assert_eq!(drain(&mut r).unwrap().len(), 1);
        r.feed(b"  \n");
        assert_eq!(drain(&mut r).unwrap(), vec![]);
    }

    #[test]
    fn many_stanzas_in_one_feed() {
        let mut input = String::from(HEADER);
        for i in 0..50 {
            input.push_str(&format!("<message id='{i}'><body>{i}</body></message>"));
        }
        let (events, err) = read_all(&input);
        assert_eq!(err, None);
        assert_eq!(events.len(), 51);
        assert_eq!(stanza(&events[50]).attr("id"), Some("49"));
    }

    #[test]
    fn oversized_stanza_fails_before_it_is_complete() {
        let limits = Limits::default();
        let mut r = StreamReader::new(limits);
        r.feed(HEADER.as_bytes());
        drain(&mut r).unwrap();
        r.feed(b"<message><body>");
        drain(&mut r).unwrap();
        let kib = [b'a'; 1024];
        let mut fed = 0;
        let err = loop {
            assert!(fed < 300 * 1024, "300 KiB accepted");
            r.feed(&kib);
            fed += kib.len();
            if let Err(e) = drain(&mut r) {
                break e;
            }
        };
        assert_eq!(err, XmlError::StanzaTooBig { limit: 256 * 1024 });
        assert_eq!(err.condition(), "policy-violation");
        assert!(fed <= 256 * 1024, "failed only after {fed} bytes");
        // The error is sticky and the buffers are gone.
        assert_eq!(r.next(), Err(err));
        assert_eq!(r.buffered_len(), 0);
    }

    #[test]
    fn oversized_start_tag_fails_too() {
        let limits = Limits {
            max_stanza_bytes: 4096,
            max_depth: 64,
        };
        let mut input = String::from(HEADER);
        input.push_str("<message");
        for i in 0..1000 {
            input.push_str(&format!(" a{i}='x'"));
        }
        input.push_str("/>");
        let (_, err) = read_chunked(input.as_bytes(), input.len(), limits);
        assert_eq!(err, Some(XmlError::StanzaTooBig { limit: 4096 }));
        // An oversized stream header counts as well.
        let header = format!(
            "<stream:stream xmlns:stream='{NS_STREAMS}' {}>",
            "a='b' ".repeat(1000)
        );
        let (_, err) = read_chunked(header.as_bytes(), 100, limits);
        assert_eq!(err, Some(XmlError::StanzaTooBig { limit: 4096 }));
    }

    #[test]
    fn stanza_at_the_limit_is_accepted() {
        // Longer than the header, which is held to the same limit.
        let stanza = format!(
            "<message><body>{}</body></message>",
            "x".repeat(HEADER.len())
        );
        let limits = Limits {
            max_stanza_bytes: stanza.len(),
            max_depth: 64,
        };
        let input = format!("{HEADER} {stanza}\n{stanza}");
        let one_less = Limits {
            max_stanza_bytes: stanza.len() - 1,
            ..limits
        };
        for chunk in [1, 2, 7, 64, input.len()] {
            let (events, err) = read_chunked(input.as_bytes(), chunk, limits);
            assert_eq!(err, None);
            assert_eq!(events.len(), 3);
            let (events, err) = read_chunked(input.as_bytes(), chunk, one_less);
            assert_eq!(err.map(|e| e.condition()), Some("policy-violation"));
            assert_eq!(events.len(), 1);
        }
    }

    #[test]
    fn deep_nesting_fails_without_overflowing_the_stack() {
        let mut input = String::from(HEADER);
        input.push_str(&"<a>".repeat(10_000));
        let (_, err) = read_all(&input);
        assert_eq!(err, Some(XmlError::TooDeep { limit: 64 }));
        // Depth 64 (root + 63) is fine; 65 is not.
        let ok = format!("{HEADER}{}{}", "<a>".repeat(63), "</a>".repeat(63));
        let (events, err) = read_all(&ok);
        assert_eq!(err, None);
        assert_eq!(events.len(), 2);
        let too_deep = format!("{HEADER}{}", "<a>".repeat(64));
        assert_eq!(error_condition(&too_deep), "policy-violation");
    }

    #[test]
    fn restricted_constructs_are_rejected() {
        let doctype = "<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY x 'y'>]><stream:stream/>";
        assert_eq!(error_condition(doctype), "restricted-xml");
        let pi = format!("{HEADER}<?evil data?>");
        assert_eq!(error_condition(&pi), "restricted-xml");
        let entity = format!("{HEADER}<message><body>&lol;</body></message>");
        assert_eq!(error_condition(&entity), "restricted-xml");
        let comment = format!("{HEADER}<!-- hello -->");
        assert_eq!(error_condition(&comment), "restricted-xml");
        let comment_inside = format!("{HEADER}<message><!-- hello --></message>");
        assert_eq!(error_condition(&comment_inside), "restricted-xml");
    }

    #[test]
    fn encodings_other_than_utf8_are_unsupported() {
        let latin1 = "<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream/>";
        assert_eq!(error_condition(latin1), "unsupported-encoding");
        let mut bad = HEADER.as_bytes().to_vec();
        bad.extend_from_slice(b"<message><body>\xff</body></message>");
        let (_, err) = read_chunked(&bad, bad.len(), Limits::default());
        assert_eq!(err.map(|e| e.condition()), Some("unsupported-encoding"));
    }

    #[test]
    fn malformed_xml_is_not_well_formed() {
        assert_eq!(
            error_condition(&format!("{HEADER}<a></b>")),
            "not-well-formed"
        );
        assert_eq!(
            error_condition(&format!("{HEADER}<a x='1' x='2'/>")),
            "not-well-formed"
        );
        assert_eq!(
            error_condition(&format!("{HEADER}<p:a/>")),
            "not-well-formed"
        );
        assert_eq!(
            error_condition(&format!("{HEADER}<a>\u{1}</a>")),
            "not-well-formed"
        );
    }

    #[test]
    fn wrong_root_is_invalid_namespace() {
        let wrong_ns = "<stream:stream xmlns:stream='urn:wrong' xmlns='jabber:client'>";
        assert_eq!(error_condition(wrong_ns), "invalid-namespace");
        let wrong_name = format!("<stream:flux xmlns:stream='{NS_STREAMS}'>");
        assert_eq!(error_condition(&wrong_name), "invalid-namespace");
    }

    #[test]
    fn default_namespace_is_reported_as_declared() {
        let s2s = format!("<stream:stream xmlns:stream='{NS_STREAMS}' xmlns='jabber:server'>");
        let (events, _) = read_all(&s2s);
        assert!(matches!(&events[0], XmlEvent::StreamOpen(h) if h.ns == "jabber:server"));
        let none = format!("<stream:stream xmlns:stream='{NS_STREAMS}'><message/>");
        let (events, err) = read_all(&none);
        assert_eq!(err, None);
        assert!(matches!(&events[0], XmlEvent::StreamOpen(h) if h.ns.is_empty()));
        assert!(stanza(&events[1]).is("message", ""));
        // Unprefixed, the root's default namespace is the streams namespace, and so is the
        // stanza's, which the caller must reject.
        let unprefixed = format!("<stream xmlns='{NS_STREAMS}'><message/>");
        let (events, err) = read_all(&unprefixed);
        assert_eq!(err, None);
        assert!(matches!(&events[0], XmlEvent::StreamOpen(h) if h.ns == NS_STREAMS));
        assert!(stanza(&events[1]).is("message", NS_STREAMS));
        // A stanza redeclaring the default namespace keeps its own.
        let (events, _) = read_all(&format!("{s2s}<message xmlns='jabber:client'/>"));
        assert!(matches!(&events[0], XmlEvent::StreamOpen(h) if h.ns == "jabber:server"));
        assert!(stanza(&events[1]).is("message", "jabber:client"));
        let byte_at_a_time = read_chunked(s2s.as_bytes(), 1, Limits::default()).0;
        assert_eq!(byte_at_a_time, read_all(&s2s).0);
    }

    #[test]
    fn cdata_and_empty_text() {
        let input = format!("{HEADER}<message><body><![CDATA[<b>]]><![CDATA[]]>x</body></message>");
        let (events, err) = read_all(&input);
        assert_eq!(err, None);
        let body = stanza(&events[1])
            .get_child("body", "jabber:client")
            .unwrap();
        assert_eq!(body.nodes().count(), 1);
        assert_eq!(body.text(), "<b>x");
        let empty = format!("{HEADER}<message><![CDATA[]]></message>");
        let (events, _) = read_all(&empty);
        assert_eq!(stanza(&events[1]).nodes().count(), 0);
    }

    #[test]
    fn nothing_after_the_stream_close() {
        let input = format!("{HEADER}</stream:stream>\n<presence/>");
        let (events, err) = read_all(&input);
        assert_eq!(events.last(), Some(&XmlEvent::StreamClose));
        assert_eq!(err.map(|e| e.condition()), Some("not-well-formed"));
    }

    #[test]
    fn text_between_stanzas_is_bad_format() {
        assert_eq!(
            error_condition(&format!("{HEADER}hello<presence/>")),
            "bad-format"
        );
        assert_eq!(
            error_condition(&format!("{HEADER}<presence/> x<presence/>")),
            "bad-format"
        );
        // Text is buffered until it ends, so the error comes with the next tag.
        assert_eq!(read_all(&format!("{HEADER} x")).1, None);
    }

    #[test]
    fn reset_starts_a_new_stream() {
        let mut r = StreamReader::new(Limits::default());
        r.feed(HEADER.as_bytes());
        r.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><iq type='get'/>");
        let events = drain(&mut r).unwrap();
        assert_eq!(events.len(), 3);
        let mut r = StreamReader::new(Limits::default());
        r.feed(HEADER.as_bytes());
        r.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><iq type='get'/>");
        assert!(matches!(r.next(), Ok(Some(XmlEvent::StreamOpen(_)))));
        let starttls = r.next().unwrap().unwrap();
        assert!(stanza(&starttls).is("starttls", "urn:ietf:params:xml:ns:xmpp-tls"));
        // The piggy-backed plaintext is visible, so the caller can refuse it.
        assert_eq!(r.buffered_len(), "<iq type='get'/>".len());
        r.reset();
        assert_eq!(r.buffered_len(), 0);
        r.feed(HEADER.as_bytes());
        r.feed(b"<presence/>");
        let events = drain(&mut r).unwrap();
        assert!(matches!(
            &events[..],
            [XmlEvent::StreamOpen(_), XmlEvent::Stanza(_)]
        ));
        // A reset also clears an error.
        r.feed(b"junk<presence/>");
        assert!(drain(&mut r).is_err());
        r.reset();
        r.feed(HEADER.as_bytes());
        assert_eq!(drain(&mut r).unwrap().len(), 1);
    }

    #[test]
    fn buffered_len_after_partial_stanza_is_zero() {
        let mut r = StreamReader::new(Limits::default());
        r.feed(HEADER.as_bytes());
        r.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        assert_eq!(drain(&mut r).unwrap().len(), 2);
        assert_eq!(r.buffered_len(), 0);
    }

    #[test]
    fn whitespace_after_starttls_is_not_smuggled_data() {
        let mut r = StreamReader::new(Limits::default());
        r.feed(HEADER.as_bytes());
        r.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\n ");
        assert_eq!(drain(&mut r).unwrap().len(), 2);
        assert!(r.buffered_is_whitespace());
        r.feed(b"<message/>");
        assert!(!r.buffered_is_whitespace());
    }

    #[test]
    fn buffers_are_released_when_idle() {
        let mut r = StreamReader::new(Limits::default());
        r.feed(HEADER.as_bytes());
        let body = "b".repeat(200 * 1024);
        r.feed(format!("<message><body>{body}</body></message>").as_bytes());
        let events = drain(&mut r).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(r.buffered_len(), 0);
        assert_eq!(
            r.buffer_capacity(),
            0,
            "a drained reader holds no input buffer"
        );
    }

    #[test]
    fn parse_write_parse_roundtrips() {
        let (events, err) = read_all(TRANSCRIPT);
        assert_eq!(err, None);
        let special = "<message xmlns='jabber:client' to='a&amp;b@example.com/&quot;&apos;&lt;'>\
            <body>tab\tcr&#xD;nl\n &amp; &lt;&gt; \"' \u{1F600} \u{4E2D}\u{6587}</body>\
            <x xmlns='' attr='line1&#xA;line2&#x9;&#xD;'/>\
            <y xmlns='urn:y' xmlns:p='urn:p' xmlns:q='urn:q' p:one='1' q:two='2' p:three='3'>\
            <z xmlns='urn:y'/></y></message>";
        let (special_events, err) = read_all(&format!("{HEADER}{special}"));
        assert_eq!(err, None);
        for ev in events.iter().chain(special_events.iter()) {
            let XmlEvent::Stanza(el) = ev else { continue };
            let mut out = Vec::new();
            write_stanza(el, &mut out).unwrap();
            let mut input = HEADER.as_bytes().to_vec();
            input.extend_from_slice(&out);
            let (again, err) = read_chunked(&input, input.len(), Limits::default());
            assert_eq!(err, None, "{}", String::from_utf8_lossy(&out));
            assert_eq!(stanza(&again[1]), el, "{}", String::from_utf8_lossy(&out));
        }
        let body = stanza(&special_events[1])
            .get_child("body", "jabber:client")
            .unwrap();
        assert_eq!(
            body.text(),
            "tab\tcr\rnl\n & <> \"' \u{1F600} \u{4E2D}\u{6587}"
        );
    }

    #[test]
    fn writer_declares_namespaces() {
        let el: Element =
            "<message xmlns='jabber:client'><body>hi</body><x xmlns='urn:x'/></message>"
                .parse()
                .unwrap();
        let mut out = Vec::new();
        write_stanza(&el, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<message xmlns='jabber:client'><body>hi</body><x xmlns='urn:x'/></message>"
        );
    }

    #[test]
    fn writer_refuses_what_xml_cannot_carry() {
        let mut out = b"kept".to_vec();
        let mut el = Element::bare("message", "jabber:client");
        el.append_text("bell \u{7}");
        assert_eq!(
            write_stanza(&el, &mut out),
            Err(WriteError::InvalidChar('\u{7}'))
        );
        let el = Element::bare("bad name", "jabber:client");
        assert!(matches!(
            write_stanza(&el, &mut out),
            Err(WriteError::InvalidName(_))
        ));
        assert_eq!(out, b"kept");
    }

    #[test]
    fn writer_is_iterative() {
        let mut el = Element::bare("a", "urn:a");
        for _ in 0..1000 {
            let mut parent = Element::bare("a", "urn:a");
            parent.append_child(el);
            el = parent;
        }
        let mut out = Vec::new();
        write_stanza(&el, &mut out).unwrap();
        assert_eq!(
            out.len(),
            "<a xmlns='urn:a'>".len() + 999 * "<a>".len() + 4 + 1000 * 4
        );
        // minidom drops elements recursively; 1000 levels is fine on a test thread.
    }

    #[test]
    fn header_error_and_escape_helpers() {
        assert_eq!(
            stream_header(
                "jabber:client",
                "example.com",
                Some("u@example.com"),
                "i'd<",
                Some("en")
            ),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='example.com' \
             id='i&apos;d&lt;' to='u@example.com' xml:lang='en'>"
        );
        assert_eq!(
            stream_error("policy-violation", Some("too <big>")),
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>too &lt;big&gt;</text>\
             </stream:error>"
        );
        assert_eq!(
            stream_error("<bad>", None),
            "<stream:error><undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             </stream:error>"
        );
        assert_eq!(
            escape("a&b<c>d'e\"f\u{0}"),
            "a&amp;b&lt;c&gt;d&apos;e&quot;f\u{FFFD}"
        );
        // Our own header and error parse with our own reader.
        let ours = format!(
            "{}{}",
            stream_header("jabber:client", "example.com", None, "abc", None),
            stream_error("conflict", Some("replaced"))
        );
        let (events, err) = read_all(&ours);
        assert_eq!(err, None);
        assert!(
            matches!(&events[0], XmlEvent::StreamOpen(h) if h.ns == "jabber:client"
            && h.from.as_deref() == Some("example.com") && h.id.as_deref() == Some("abc"))
        );
        assert!(stanza(&events[1]).is("error", NS_STREAMS));
    }
}
