//! External components (XEP-0114), the server's side of `jabber:component:accept`, sans
//! IO: a service such as a push app server connects, proves it knows the secret shared
//! for its domain (`<handshake/>`, the SHA-1 of the stream id and the secret), and then
//! exchanges stanzas in the component namespace, which this machine turns into
//! `jabber:client` and back, as the s2s machines do with `jabber:server`.

use minidom::Element;
use sha1::Digest as _;
use subtle::ConstantTimeEq as _;

use crate::machine::{Wire, stream_machine};
use crate::stanza::ns;
use crate::xml::{self, Limits, XmlEvent};

/// The component stream's content namespace (XEP-0114 §2).
pub const NS_ACCEPT: &str = "jabber:component:accept";

/// What the server must know or do.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// The component wants to be `domain`: answer with [`ComponentStream::provide_secret`].
    NeedSecret { domain: String },
    /// The handshake succeeded: the component is `domain`.
    Authenticated { domain: String },
    /// A stanza from the component, in `jabber:client`, with a `from` at its domain.
    Stanza(Element),
    /// The stream ended (the stream error, if any, is already in the output).
    Closed { error: Option<&'static str> },
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    AwaitHeader,
    AwaitHandshake,
    /// Waiting for the server to look up the secret.
    Blocked,
    Session,
    Closed,
}

pub struct ComponentStream {
    wire: Wire<Event>,
    phase: Phase,
    stream_id: String,
    domain: String,
    /// The handshake the component sent, kept while the secret is looked up.
    offered: String,
}

impl ComponentStream {
    /// `stream_id` must be unpredictable: the handshake is bound to it.
    pub fn new(limits: Limits, stream_id: String) -> ComponentStream {
        ComponentStream {
            wire: Wire::new(limits),
            phase: Phase::AwaitHeader,
            stream_id,
            domain: String::new(),
            offered: String::new(),
        }
    }

    /// The component's domain, once authenticated.
    pub fn domain(&self) -> Option<&str> {
        (self.phase == Phase::Session).then_some(self.domain.as_str())
    }

    /// Answers [`Event::NeedSecret`]: the secret configured for the domain, `None` when no
    /// component may be that domain.
    pub fn provide_secret(&mut self, secret: Option<&str>) {
        if self.phase != Phase::Blocked {
            return;
        }
        let expected = secret.map(|s| handshake(&self.stream_id, s));
        let ok = expected.is_some_and(|e| {
            e.as_bytes()
                .ct_eq(self.offered.trim().to_ascii_lowercase().as_bytes())
                .into()
        });
        if !ok {
            self.close(Some("not-authorized"));
            return;
        }
        self.wire
            .out
            .extend_from_slice(format!("<handshake xmlns='{NS_ACCEPT}'/>").as_bytes());
        self.phase = Phase::Session;
        self.wire.events.push_back(Event::Authenticated {
            domain: self.domain.clone(),
        });
        self.process();
    }

    /// Queues a stanza (in `jabber:client`) for the component.
    pub fn send(&mut self, el: &Element) {
        let out = crate::s2s::common::renamespace(el.clone(), ns::CLIENT, NS_ACCEPT);
        let start = self.wire.out.len();
        if xml::write_stanza(&out, &mut self.wire.out).is_err() {
            self.wire.out.truncate(start);
        }
    }

    /// Closes the stream, with a stream error or cleanly.
    pub fn close(&mut self, error: Option<&'static str>) {
        if self.phase == Phase::Closed {
            return;
        }
        if let Some(condition) = error {
            self.wire
                .out
                .extend_from_slice(xml::stream_error(condition, None).as_bytes());
        }
        self.wire
            .out
            .extend_from_slice(xml::STREAM_CLOSE.as_bytes());
        self.phase = Phase::Closed;
        self.wire.events.push_back(Event::Closed { error });
    }

    fn process(&mut self) {
        while !matches!(self.phase, Phase::Blocked | Phase::Closed) {
            match self.wire.reader.next() {
                Ok(None) => break,
                Ok(Some(event)) => self.on_xml(event),
                Err(e) => self.close(Some(e.condition())),
            }
        }
    }

    fn on_xml(&mut self, event: XmlEvent) {
        match (event, &self.phase) {
            (XmlEvent::StreamOpen(header), Phase::AwaitHeader) => {
                let to = header.to.unwrap_or_default().to_ascii_lowercase();
                let header_out = xml::stream_header(NS_ACCEPT, &to, None, &self.stream_id, None);
                self.wire.out.extend_from_slice(header_out.as_bytes());
                if header.ns != NS_ACCEPT {
                    self.close(Some("invalid-namespace"));
                } else if jid::DomainPart::new(&to).is_err() {
                    self.close(Some("host-unknown"));
                } else {
                    self.domain = to;
                    self.phase = Phase::AwaitHandshake;
                }
            }
            (XmlEvent::Stanza(el), Phase::AwaitHandshake) if el.is("handshake", NS_ACCEPT) => {
                self.offered = el.text();
                self.phase = Phase::Blocked;
                self.wire.events.push_back(Event::NeedSecret {
                    domain: self.domain.clone(),
                });
            }
            (XmlEvent::Stanza(el), Phase::Session) => self.on_stanza(el),
            (XmlEvent::StreamClose, _) => {
                self.wire
                    .out
                    .extend_from_slice(xml::STREAM_CLOSE.as_bytes());
                self.phase = Phase::Closed;
                self.wire.events.push_back(Event::Closed { error: None });
            }
            (_, Phase::AwaitHandshake) => self.close(Some("not-authorized")),
            _ => self.close(Some("not-well-formed")),
        }
    }

    fn on_stanza(&mut self, el: Element) {
        if el.ns() != NS_ACCEPT || !matches!(el.name(), "message" | "presence" | "iq") {
            self.close(Some("unsupported-stanza-type"));
            return;
        }
        // The component speaks for its domain and the addresses at it, nobody else.
        let ours = el
            .attr("from")
            .and_then(|f| jid::Jid::new(f).ok())
            .is_some_and(|f| f.domain().as_str() == self.domain);
        if !ours || el.attr("to").is_none() {
            self.close(Some("invalid-from"));
            return;
        }
        let el = crate::s2s::common::renamespace(el, NS_ACCEPT, ns::CLIENT);
        self.wire.events.push_back(Event::Stanza(el));
    }
}

/// The handshake a component with `secret` sends on stream `id` (XEP-0114 §2): lower-case
/// hex SHA-1 of the two concatenated.
pub fn handshake(id: &str, secret: &str) -> String {
    let digest = sha1::Sha1::digest(format!("{id}{secret}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

stream_machine!(ComponentStream, Event);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamMachine;

    fn open(c: &mut ComponentStream) {
        c.handle_input(
            b"<stream:stream xmlns='jabber:component:accept' \
              xmlns:stream='http://etherx.jabber.org/streams' to='push.example.org'>",
        );
        c.take_output();
    }

    #[test]
    fn a_component_with_the_secret_gets_in_and_speaks_for_its_domain() {
        let mut c = ComponentStream::new(Limits::default(), "s1".into());
        open(&mut c);
        let proof = handshake("s1", "sesame");
        c.handle_input(format!("<handshake>{proof}</handshake>").as_bytes());
        assert_eq!(
            c.poll_event(),
            Some(Event::NeedSecret {
                domain: "push.example.org".into()
            })
        );
        c.provide_secret(Some("sesame"));
        assert_eq!(
            String::from_utf8(c.take_output()).unwrap(),
            "<handshake xmlns='jabber:component:accept'/>"
        );
        assert!(matches!(c.poll_event(), Some(Event::Authenticated { .. })));
        c.handle_input(
            b"<iq type='result' id='1' from='push.example.org' to='alice@example.org'/>",
        );
        match c.poll_event() {
            Some(Event::Stanza(el)) => assert_eq!(el.ns(), ns::CLIENT),
            other => panic!("{other:?}"),
        }
        // Speaking for someone else ends the stream.
        c.handle_input(b"<message from='alice@example.org' to='bob@example.org'/>");
        assert_eq!(
            c.poll_event(),
            Some(Event::Closed {
                error: Some("invalid-from")
            })
        );
    }

    #[test]
    fn a_wrong_secret_is_refused() {
        let mut c = ComponentStream::new(Limits::default(), "s2".into());
        open(&mut c);
        c.handle_input(b"<handshake>0000</handshake>");
        c.poll_event();
        c.provide_secret(Some("sesame"));
        assert_eq!(
            c.poll_event(),
            Some(Event::Closed {
                error: Some("not-authorized")
            })
        );
        // Stanzas before the handshake are refused too.
        let mut c = ComponentStream::new(Limits::default(), "s3".into());
        open(&mut c);
        c.handle_input(b"<message from='push.example.org' to='a@b'/>");
        assert_eq!(
            c.poll_event(),
            Some(Event::Closed {
                error: Some("not-authorized")
            })
        );
    }
}
