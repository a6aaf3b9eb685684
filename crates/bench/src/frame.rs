//! A cheap splitter for the server's side of an XMPP stream: it finds where each top-level
//! element (stanza, `<stream:features/>`, SASL answer…) begins and ends, and nothing more.
//!
//! The load generator must cost far less CPU per stanza than the servers it measures, so it
//! does not build a tree or check well-formedness: it scans for `<`, then for the `>` that
//! ends the tag (skipping quoted attribute values), and counts depth. That is enough for the
//! well-formed output of real servers (RFC 6120 §11 forbids DTDs, and servers send no
//! comments, CDATA or processing instructions after the XML declaration). The helpers at the
//! end read a name, an attribute or a child's text out of one framed stanza.

use memchr::{memchr, memmem};

/// One complete piece of the server's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// `<stream:stream …>` (RFC 6120 §4.2).
    StreamOpen,
    /// A whole top-level element.
    Element,
    /// `</stream:stream>`.
    StreamClose,
}

/// A frame's kind and where it lies in [`Framer::buffer`] (valid until the next
/// [`Framer::compact`]).
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub kind: FrameKind,
    pub start: usize,
    pub end: usize,
}

/// Incremental splitter: append bytes to [`Framer::buffer_mut`], then call [`Framer::next_frame`]
/// until it returns `None` ("not enough bytes yet" is not an error).
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Everything before this has been handed out.
    consumed: usize,
    /// Where scanning resumes: the `<` of an incomplete tag, or the end of what was scanned.
    scan: usize,
    /// Element depth below the stream element.
    depth: u32,
    /// Start of the top-level element being read.
    elem_start: usize,
    in_stream: bool,
}

impl Framer {
    pub fn new() -> Framer {
        Framer::default()
    }

    /// A framer for bytes that carry bare stanzas with no stream header before them (the
    /// relay and the generator's `--raw` mode): every top-level element is a frame.
    pub fn in_stream() -> Framer {
        Framer {
            in_stream: true,
            ..Framer::default()
        }
    }

    /// Forgets the stream state for a stream restart (after SASL or STARTTLS, RFC 6120
    /// §4.3.3), keeping bytes not yet handed out.
    pub fn restart(&mut self) {
        self.depth = 0;
        self.in_stream = false;
        self.scan = self.consumed;
        self.elem_start = self.consumed;
    }

    /// Drops bytes already handed out, so the buffer does not grow; invalidates frames.
    pub fn compact(&mut self) {
        if self.consumed == 0 {
            return;
        }
        self.buf.drain(..self.consumed);
        self.scan -= self.consumed;
        self.elem_start = self.elem_start.saturating_sub(self.consumed);
        self.consumed = 0;
    }

    /// Frees the buffer's memory when nothing is pending (idle connections keep none).
    pub fn shrink(&mut self) {
        self.compact();
        self.buf.shrink_to_fit();
    }

    /// The buffer to append received bytes to (call [`Framer::compact`] first).
    pub fn buffer_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub fn buffer(&self) -> &[u8] {
        &self.buf
    }

    pub fn slice(&self, f: &Frame) -> &[u8] {
        &self.buf[f.start..f.end]
    }

    /// Bytes received but not yet handed out in a frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.consumed
    }

    /// The next complete frame, or `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let rest = &self.buf[self.scan..];
            let Some(lt) = memchr(b'<', rest) else {
                self.scan = self.buf.len();
                if self.depth == 0 {
                    // Whitespace between stanzas (RFC 6120 §4.6.1 keepalives) is consumed.
                    self.consumed = self.scan;
                }
                return None;
            };
            let tag_start = self.scan + lt;
            let Some(tag_end) = tag_end(&self.buf, tag_start) else {
                self.scan = tag_start;
                return None;
            };
            self.scan = tag_end;
            let second = self.buf.get(tag_start + 1).copied().unwrap_or(b' ');
            match second {
                b'?' | b'!' => {
                    if self.depth == 0 {
                        self.consumed = tag_end;
                    }
                }
                b'/' => {
                    if self.depth == 0 {
                        self.consumed = tag_end;
                        return Some(Frame {
                            kind: FrameKind::StreamClose,
                            start: tag_start,
                            end: tag_end,
                        });
                    }
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.consumed = tag_end;
                        return Some(Frame {
                            kind: FrameKind::Element,
                            start: self.elem_start,
                            end: tag_end,
                        });
                    }
                }
                _ => {
                    let empty = self.buf[tag_end - 2] == b'/';
                    if !self.in_stream {
                        self.in_stream = true;
                        self.consumed = tag_end;
                        return Some(Frame {
                            kind: FrameKind::StreamOpen,
                            start: tag_start,
                            end: tag_end,
                        });
                    }
                    if self.depth == 0 {
                        if empty {
                            self.consumed = tag_end;
                            return Some(Frame {
                                kind: FrameKind::Element,
                                start: tag_start,
                                end: tag_end,
                            });
                        }
                        self.elem_start = tag_start;
                    }
                    if !empty {
                        self.depth += 1;
                    }
                }
            }
        }
    }
}

/// The index just past the `>` closing the tag that starts at `start`, skipping `>` inside
/// quoted attribute values; `None` if the tag is not complete yet.
fn tag_end(buf: &[u8], start: usize) -> Option<usize> {
    let mut quote = 0u8;
    for (i, &b) in buf[start..].iter().enumerate() {
        if quote != 0 {
            if b == quote {
                quote = 0;
            }
        } else if b == b'>' {
            return Some(start + i + 1);
        } else if b == b'\'' || b == b'"' {
            quote = b;
        }
    }
    None
}

/// The qualified name of the element that `el` starts with (`stream:features`, `message`).
pub fn qname(el: &[u8]) -> &[u8] {
    let body = el.get(1..).unwrap_or_default();
    let n = body
        .iter()
        .position(|&b| {
            b == b' ' || b == b'/' || b == b'>' || b == b'\t' || b == b'\n' || b == b'\r'
        })
        .unwrap_or(body.len());
    &body[..n]
}

/// The local name (without prefix) of the element that `el` starts with.
pub fn name(el: &[u8]) -> &[u8] {
    let q = qname(el);
    match memchr(b':', q) {
        Some(i) => &q[i + 1..],
        None => q,
    }
}

/// The raw (unescaped) value of attribute `attr` on the element's start tag.
pub fn attr<'a>(el: &'a [u8], attr: &str) -> Option<&'a [u8]> {
    let head_len = tag_end(el, 0).unwrap_or(el.len());
    let head = &el[..head_len];
    let key = attr.as_bytes();
    let mut from = 0;
    while let Some(i) = memmem::find(&head[from..], key) {
        let at = from + i;
        from = at + 1;
        let before_ok = at > 0 && head[at - 1].is_ascii_whitespace();
        let mut j = at + key.len();
        while j < head.len() && head[j].is_ascii_whitespace() {
            j += 1;
        }
        if !before_ok || head.get(j) != Some(&b'=') {
            continue;
        }
        j += 1;
        while j < head.len() && head[j].is_ascii_whitespace() {
            j += 1;
        }
        let q = *head.get(j)?;
        if q != b'\'' && q != b'"' {
            return None;
        }
        let end = memchr(q, &head[j + 1..])?;
        return Some(&head[j + 1..j + 1 + end]);
    }
    None
}

/// The text of the first descendant element named `child` (qualified name as sent, e.g.
/// `body`), if it has only text.
pub fn child_text<'a>(el: &'a [u8], child: &str) -> Option<&'a [u8]> {
    let open = format!("<{child}");
    let close = format!("</{child}>");
    let mut from = 1;
    loop {
        let at = from + memmem::find(&el[from..], open.as_bytes())?;
        let after = *el.get(at + open.len())?;
        from = at + 1;
        if after == b'>' || after == b' ' || after == b'/' {
            let head_end = tag_end(el, at)?;
            if el[head_end - 2] == b'/' {
                return Some(&[]);
            }
            let end = memmem::find(&el[head_end..], close.as_bytes())?;
            return Some(&el[head_end..head_end + end]);
        }
    }
}

/// The text content of `el` itself (for `<challenge>…</challenge>` and the like).
pub fn text(el: &[u8]) -> &[u8] {
    let Some(head) = tag_end(el, 0) else {
        return &[];
    };
    if el[head - 2] == b'/' {
        return &[];
    }
    let end = memchr::memrchr(b'<', el).unwrap_or(el.len()).max(head);
    &el[head..end]
}

/// Whether `el` contains `needle` anywhere.
pub fn contains(el: &[u8], needle: &[u8]) -> bool {
    memmem::find(el, needle).is_some()
}

/// `type='error'` on the start tag.
pub fn is_error(el: &[u8]) -> bool {
    attr(el, "type") == Some(b"error")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&[u8]]) -> Vec<(FrameKind, String)> {
        let mut f = Framer::new();
        let mut out = Vec::new();
        for c in chunks {
            f.compact();
            f.buffer_mut().extend_from_slice(c);
            while let Some(fr) = f.next_frame() {
                out.push((fr.kind, String::from_utf8_lossy(f.slice(&fr)).into_owned()));
            }
        }
        out
    }

    #[test]
    fn splits_stanzas_across_arbitrary_chunks() {
        let stream: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' id='a>b'>\
            <stream:features><mechanisms><mechanism>PLAIN</mechanism></mechanisms></stream:features> \
            <message to='x' from='y'><body>1 2</body></message><presence/>\
            <iq type='result' id='q\"1'/></stream:stream>";
        let whole = frames(&[stream]);
        let kinds: Vec<_> = whole.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                FrameKind::StreamOpen,
                FrameKind::Element,
                FrameKind::Element,
                FrameKind::Element,
                FrameKind::Element,
                FrameKind::StreamClose
            ]
        );
        assert_eq!(
            whole[2].1,
            "<message to='x' from='y'><body>1 2</body></message>"
        );
        for cut in 1..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(frames(&[a, b]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frames(&bytes), whole);
    }

    #[test]
    fn frames_bare_stanzas_without_a_stream_header() {
        let mut f = Framer::in_stream();
        f.buffer_mut()
            .extend_from_slice(b"<message to='a'><body>1 2</body></message><r/></stream:stream>");
        let kinds: Vec<_> = std::iter::from_fn(|| f.next_frame().map(|fr| fr.kind)).collect();
        assert_eq!(
            kinds,
            [
                FrameKind::Element,
                FrameKind::Element,
                FrameKind::StreamClose
            ]
        );
    }

    #[test]
    fn reads_names_attributes_and_text() {
        let m = b"<message type=\"chat\" from='a@b/c' to='d'><x:body xmlns:x='u'/><body>12 34</body></message>";
        assert_eq!(name(m), b"message");
        assert_eq!(attr(m, "type"), Some(&b"chat"[..]));
        assert_eq!(attr(m, "from"), Some(&b"a@b/c"[..]));
        assert_eq!(attr(m, "id"), None);
        assert_eq!(child_text(m, "body"), Some(&b"12 34"[..]));
        assert_eq!(name(b"<stream:features>"), b"features");
        assert_eq!(text(b"<challenge xmlns='s'>abc=</challenge>"), b"abc=");
        assert_eq!(text(b"<success xmlns='s'/>"), b"");
        assert!(!is_error(b"<iq id='type=error' type='result'/>"));
    }
}
