//! Transcripts for XMPP over WebSocket framing ([`outpost_proto::framing`], RFC 7395).
//!
//! First, whole server-to-server conversations: an [`S2sOutgoing`] and an [`S2sIncoming`]
//! wired through two [`WsFraming`]s, so every byte one machine writes travels as WebSocket
//! messages and is turned back into a stream for the other, as it does between two servers
//! over HTTPS. Every message is checked to be exactly one element. Then the framer alone:
//! headers, restarts, partial writes, and what a peer may not send.

use outpost_proto::StreamMachine;
use outpost_proto::framing::{
    FramingError, NS_FRAMING, WsFraming, close_element, stream_error_message,
};
use outpost_proto::minidom::Element;
use outpost_proto::s2s::{
    AuthMethod, DialbackVerdict, Event, S2sConfig, S2sIncoming, S2sOutgoing, Transport,
    dialback_key,
};
use outpost_proto::stanza::name;
use outpost_proto::xml::{Limits, XmlError, stream_header, write_stanza};

const A: &str = "a.example";
const B: &str = "b.example";
const SECRET_A: &str = "a-dialback-secret";
const NS_SERVER: &str = "jabber:server";
const NS_CLIENT: &str = "jabber:client";

fn limits() -> Limits {
    Limits {
        max_stanza_bytes: 10_000,
        max_depth: 16,
    }
}

fn framer() -> WsFraming {
    WsFraming::new(NS_SERVER, limits())
}

/// Each message must parse on its own as one element.
fn parse_message(message: &str) -> Element {
    message
        .parse()
        .unwrap_or_else(|e| panic!("message is not one element ({e}): {message}"))
}

/// Two servers' machines wired through WebSocket framing, in memory.
struct Wire {
    out: S2sOutgoing,
    inc: S2sIncoming,
    /// Frames what `out` writes, and unframes what `inc` sent.
    out_framing: WsFraming,
    /// Frames what `inc` writes, and unframes what `out` sent.
    in_framing: WsFraming,
    /// Every message sent, with its direction: `true` from `out` to `inc`.
    transcript: Vec<(bool, String)>,
    out_events: Vec<Event>,
    in_events: Vec<Event>,
}

impl Wire {
    fn new(out_config: S2sConfig, in_config: S2sConfig) -> Wire {
        Wire {
            out: S2sOutgoing::new(out_config, A, B),
            inc: S2sIncoming::new(in_config, vec![B.to_owned()], "stream-b-1".to_owned()),
            out_framing: framer(),
            in_framing: framer(),
            transcript: Vec::new(),
            out_events: Vec::new(),
            in_events: Vec::new(),
        }
    }

    /// Moves bytes and answers events until both sides are quiet.
    fn pump(&mut self) {
        for _ in 0..100 {
            let mut moved = false;
            while let Some(ev) = self.out.poll_event() {
                moved = true;
                if let Event::NeedDialbackKey {
                    local,
                    remote,
                    stream_id,
                } = &ev
                {
                    let key = dialback_key(SECRET_A, remote, local, stream_id);
                    self.out.provide_dialback_key(&key);
                }
                self.out_events.push(ev);
            }
            while let Some(ev) = self.inc.poll_event() {
                moved = true;
                match &ev {
                    Event::CheckCertificate { .. } => self.inc.certificate_checked(true),
                    Event::DialbackRequest {
                        from,
                        to,
                        key,
                        stream_id,
                    } => {
                        // The authoritative server's check (XEP-0220 §2.1.3), done here.
                        let verdict = if *key == dialback_key(SECRET_A, to, from, stream_id) {
                            DialbackVerdict::Valid
                        } else {
                            DialbackVerdict::Invalid
                        };
                        self.inc
                            .dialback_result(&from.clone(), &to.clone(), verdict);
                    }
                    _ => {}
                }
                self.in_events.push(ev);
            }
            if self.out.has_output() {
                moved = true;
                let bytes = self.out.take_output();
                // Written in two pieces, to show partial writes are kept until complete.
                let (first, second) = bytes.split_at(bytes.len() / 2);
                let mut messages = self.out_framing.outbound(first).expect("frame");
                messages.extend(self.out_framing.outbound(second).expect("frame"));
                for m in messages {
                    parse_message(&m);
                    let input = self.in_framing.inbound(&m).expect("unframe");
                    self.transcript.push((true, m));
                    self.inc.handle_input(&input);
                }
            }
            if self.inc.has_output() {
                moved = true;
                let bytes = self.inc.take_output();
                for m in self.in_framing.outbound(&bytes).expect("frame") {
                    parse_message(&m);
                    let input = self.out_framing.inbound(&m).expect("unframe");
                    self.transcript.push((false, m));
                    self.out.handle_input(&input);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the machines never went quiet");
    }

    fn messages(&self, outgoing: bool) -> Vec<Element> {
        self.transcript
            .iter()
            .filter(|(dir, _)| *dir == outgoing)
            .map(|(_, m)| parse_message(m))
            .collect()
    }
}

fn direct_tls(sasl_external: bool) -> S2sConfig {
    S2sConfig {
        transport: Transport::DirectTls,
        sasl_external,
        ..S2sConfig::default()
    }
}

fn chat(n: u32) -> Element {
    format!(
        "<message xmlns='jabber:client' from='alice@{A}/phone' to='bob@{B}' type='chat'>\
         <body>hello {n}</body></message>"
    )
    .parse()
    .expect("stanza")
}

#[test]
fn dialback_stream_management_and_acks_over_websocket_framing() {
    let mut w = Wire::new(direct_tls(false), direct_tls(false));
    w.pump();
    assert!(w.out_events.contains(&Event::Ready {
        stream_management: true
    }));
    assert!(w.in_events.contains(&Event::Authenticated {
        peer: A.to_owned(),
        local: B.to_owned(),
        method: AuthMethod::Dialback,
    }));

    let seqs: Vec<u32> = (1..=3)
        .map(|n| w.out.send_stanza(&chat(n)).expect("send"))
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert!(w.out.request_ack());
    w.pump();

    let bodies: Vec<String> = w
        .in_events
        .iter()
        .filter_map(|e| match e {
            Event::Stanza(el) => el.get_child("body", "jabber:client").map(Element::text),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, ["hello 1", "hello 2", "hello 3"]);
    assert!(w.out_events.contains(&Event::Acked { h: 3 }));

    // What went over the wire, as RFC 7395 frames it.
    let sent = w.messages(true);
    let open = &sent[0];
    assert!(open.is("open", NS_FRAMING));
    assert_eq!(open.attr("to"), Some(B));
    assert_eq!(open.attr("from"), Some(A));
    assert_eq!(open.attr("version"), Some("1.0"));
    assert!(
        sent.iter()
            .any(|el| el.is("result", "jabber:server:dialback"))
    );
    assert!(sent.iter().any(|el| el.is("enable", "urn:xmpp:sm:3")));
    assert!(sent.iter().any(|el| el.is("r", "urn:xmpp:sm:3")));
    assert_eq!(
        sent.iter().filter(|el| el.is("message", NS_SERVER)).count(),
        3
    );
    let received = w.messages(false);
    let open = &received[0];
    assert!(open.is("open", NS_FRAMING));
    assert!(
        open.attr("id")
            .is_some_and(|id| id.starts_with("stream-b-1"))
    );
    assert_eq!(open.attr("from"), Some(B));
    assert!(
        received
            .iter()
            .any(|el| el.is("features", "http://etherx.jabber.org/streams"))
    );
    assert!(
        received
            .iter()
            .any(|el| el.is("result", "jabber:server:dialback") && el.attr("type") == Some("valid"))
    );
    assert!(
        received
            .iter()
            .any(|el| el.is("a", "urn:xmpp:sm:3") && el.attr("h") == Some("3"))
    );

    // Closing: `</stream:stream>` becomes `<close/>` both ways.
    w.out.close(None, None);
    w.pump();
    assert!(
        w.messages(true)
            .last()
            .expect("close")
            .is("close", NS_FRAMING)
    );
    assert!(
        w.messages(false)
            .last()
            .expect("close")
            .is("close", NS_FRAMING)
    );
    assert!(w.out.is_closed() && w.inc.is_closed());
}

#[test]
fn sasl_external_restart_yields_a_new_open() {
    let mut w = Wire::new(direct_tls(true), direct_tls(true));
    w.pump();
    assert!(w.in_events.contains(&Event::Authenticated {
        peer: A.to_owned(),
        local: B.to_owned(),
        method: AuthMethod::SaslExternal,
    }));
    assert!(w.out_events.contains(&Event::Ready {
        stream_management: true
    }));
    // Both sides opened twice: before SASL and after its restart (RFC 7395 §3.4).
    for dir in [true, false] {
        let opens = w
            .messages(dir)
            .iter()
            .filter(|el| el.is("open", NS_FRAMING))
            .count();
        assert_eq!(opens, 2, "direction {dir}");
    }
    w.out.send_stanza(&chat(1)).expect("send");
    w.out.request_ack();
    w.pump();
    assert!(w.out_events.contains(&Event::Acked { h: 1 }));
}

#[test]
fn a_stream_error_is_one_message_then_close() {
    let mut w = Wire::new(direct_tls(false), direct_tls(false));
    w.pump();
    w.inc.close(Some("policy-violation"), Some("enough"));
    w.pump();
    let received = w.messages(false);
    let n = received.len();
    let error = &received[n - 2];
    assert!(error.is("error", "http://etherx.jabber.org/streams"));
    assert!(error.has_child("policy-violation", "urn:ietf:params:xml:ns:xmpp-streams"));
    assert!(received[n - 1].is("close", NS_FRAMING));
    assert!(w.out_events.contains(&Event::PeerStreamError {
        condition: "policy-violation".to_owned(),
        text: Some("enough".to_owned()),
    }));
}

#[test]
fn outbound_keeps_attributes_and_restarts_on_a_new_header() {
    let mut f = framer();
    let header = stream_header(NS_SERVER, A, Some(B), "s&1", Some("en"));
    let mut bytes = header.clone().into_bytes();
    bytes.extend_from_slice(b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/>");
    let messages = f.outbound(&bytes).expect("frame");
    assert_eq!(messages.len(), 1, "the features are not complete yet");
    let open = parse_message(&messages[0]);
    assert!(open.is("open", NS_FRAMING));
    assert_eq!(open.attr("from"), Some(A));
    assert_eq!(open.attr("to"), Some(B));
    assert_eq!(open.attr("id"), Some("s&1"));
    assert_eq!(open.attr("version"), Some("1.0"));
    assert!(messages[0].contains("xml:lang='en'"));

    let messages = f.outbound(b"</stream:features><").expect("frame");
    assert_eq!(messages.len(), 1);
    let features = parse_message(&messages[0]);
    assert!(features.is("features", "http://etherx.jabber.org/streams"));
    assert!(features.has_child("dialback", "urn:xmpp:features:dialback"));

    // A restart split inside its XML declaration.
    let second = stream_header(NS_SERVER, A, Some(B), "s2", None);
    let (x, y) = second.as_bytes().split_at(3);
    assert_eq!(x, b"<?x");
    // The `<` was held from the last call.
    assert!(f.outbound(b"?x").expect("frame").is_empty());
    let messages = f.outbound(y).expect("frame");
    assert_eq!(messages.len(), 1);
    assert_eq!(parse_message(&messages[0]).attr("id"), Some("s2"));

    let messages = f
        .outbound(b"<db:result xmlns:db='jabber:server:dialback' from='a' to='b'>k</db:result></stream:stream>")
        .expect("frame");
    assert_eq!(messages.len(), 2);
    assert!(parse_message(&messages[0]).is("result", "jabber:server:dialback"));
    assert!(parse_message(&messages[1]).is("close", NS_FRAMING));
}

#[test]
fn inbound_open_becomes_a_header_the_machine_accepts() {
    let mut f = framer();
    let bytes = f
        .inbound(&format!(
            "<open xmlns='{NS_FRAMING}' to='{B}' from='{A}' version='1.0' xml:lang='en'/>"
        ))
        .expect("open");
    let header = String::from_utf8(bytes).expect("utf-8");
    assert!(header.starts_with("<stream:stream xmlns='jabber:server'"));
    assert!(header.contains("xmlns:db='jabber:server:dialback'"));
    assert!(header.contains(&format!("to='{B}'")));
    assert!(header.contains(&format!("from='{A}'")));
    assert!(header.contains("xml:lang='en'"));
    assert!(!header.contains("id="));

    let message = "<db:result from='a.example' to='b.example'>key</db:result>";
    assert_eq!(f.inbound(message).expect("element"), message.as_bytes());
    let close = f
        .inbound(&format!("<close xmlns='{NS_FRAMING}'/>"))
        .expect("close");
    assert_eq!(close, b"</stream:stream>");
    assert_eq!(f.inbound("<message/>"), Err(FramingError::AfterClose));
}

fn opened() -> WsFraming {
    let mut f = framer();
    f.inbound(&format!(
        "<open xmlns='{NS_FRAMING}' to='{B}' version='1.0'/>"
    ))
    .expect("open");
    f
}

#[test]
fn inbound_refuses_what_is_not_one_element() {
    let cases: &[(&str, &str)] = &[
        ("", "bad-format"),
        ("   ", "bad-format"),
        ("hello", "bad-format"),
        ("<message/>trailing text", "bad-format"),
        ("<message/><message/>", "bad-format"),
        ("<message/><mess", "bad-format"),
        ("<message>", "bad-format"),
        ("<message><body>open", "bad-format"),
        ("<message></body>", "not-well-formed"),
        ("<a:b/>", "not-well-formed"),
        ("</stream:stream>", "bad-format"),
        ("<!DOCTYPE x [<!ENTITY e 'x'>]><message/>", "restricted-xml"),
        ("<message>&e;</message>", "restricted-xml"),
        ("<?xml version='1.0'?><message/>", "restricted-xml"),
        ("<!-- hi --><message/>", "restricted-xml"),
    ];
    for (input, condition) in cases {
        let mut f = opened();
        match f.inbound(input) {
            Ok(bytes) => panic!(
                "{input:?} accepted as {:?}",
                String::from_utf8_lossy(&bytes)
            ),
            Err(e) => assert_eq!(e.condition(), *condition, "{input:?}: {e:?}"),
        }
    }
}

#[test]
fn inbound_refuses_an_element_before_open() {
    let mut f = framer();
    assert_eq!(f.inbound("<message/>"), Err(FramingError::NotOpened));
    let mut f = framer();
    assert_eq!(
        f.inbound(&format!("<close xmlns='{NS_FRAMING}'/>")),
        Err(FramingError::NotOpened)
    );
}

#[test]
fn inbound_enforces_size_and_depth() {
    let mut f = opened();
    let big = format!("<message><body>{}</body></message>", "x".repeat(10_000));
    assert_eq!(f.inbound(&big), Err(FramingError::TooBig { limit: 10_000 }));
    assert_eq!(
        f.inbound(&big).map_err(|e| e.condition()),
        Err("policy-violation")
    );

    // Depth: the stream is level 1, so 16 levels leave room for 15 nested elements.
    let nest = |n: usize| format!("{}{}", "<a>".repeat(n), "</a>".repeat(n));
    let mut f = opened();
    assert!(f.inbound(&nest(15)).is_ok());
    assert_eq!(
        f.inbound(&nest(16)),
        Err(FramingError::Xml(XmlError::TooDeep { limit: 16 }))
    );
    // Far deeper than any stack would allow if anything recursed: just an error.
    let mut f = opened();
    let deep = format!("{}{}", "<a>".repeat(1400), "</a>".repeat(1400));
    assert_eq!(
        f.inbound(&deep),
        Err(FramingError::Xml(XmlError::TooDeep { limit: 16 }))
    );
}

#[test]
fn a_restart_open_is_accepted_after_the_first() {
    let mut f = opened();
    assert!(
        f.inbound("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
            .is_ok()
    );
    let again = f
        .inbound(&format!(
            "<open xmlns='{NS_FRAMING}' to='{B}' version='1.0'/>"
        ))
        .expect("restart");
    assert!(again.starts_with(b"<stream:stream "));
}

#[test]
fn the_messages_a_connection_ends_with_are_one_element_each() {
    let error = parse_message(&stream_error_message("bad-format"));
    assert!(error.is("error", "http://etherx.jabber.org/streams"));
    assert!(error.has_child("bad-format", "urn:ietf:params:xml:ns:xmpp-streams"));
    assert!(parse_message(&close_element()).is("close", NS_FRAMING));
}

/// What a client's stream machine writes, as it writes it: a header, features with the
/// stream prefix, stanzas from `write_stanza` (attribute values holding `>`, `/>` and the
/// other quote), a raw `<a/>`, whitespace, a restart, and the close.
fn client_stream_output() -> Vec<u8> {
    let mut out = stream_header(NS_CLIENT, A, None, "s1", Some("en")).into_bytes();
    out.extend_from_slice(
        b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
          <mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>",
    );
    out.extend_from_slice(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    out.extend_from_slice(stream_header(NS_CLIENT, A, None, "s2", None).as_bytes());
    let message = Element::builder("message", NS_CLIENT)
        .attr(name("to"), "b@a.example/r")
        .attr(name("id"), "x>y/>'\"")
        .append(
            Element::builder("body", NS_CLIENT)
                .append("1 < 2 > 0 /> <b>")
                .build(),
        )
        .append(Element::builder("active", "http://jabber.org/protocol/chatstates").build())
        .build();
    write_stanza(&message, &mut out).expect("serialise");
    out.extend_from_slice(b"\n <a xmlns='urn:xmpp:sm:3' h='7'/>");
    out.extend_from_slice(
        b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
    );
    out.extend_from_slice(b"</stream:stream>");
    out
}

#[test]
fn outbound_finds_every_element_wherever_the_writes_are_cut() {
    let bytes = client_stream_output();
    let whole = WsFraming::new(NS_CLIENT, limits())
        .outbound(&bytes)
        .expect("frame");
    let shapes: Vec<(String, String)> = whole
        .iter()
        .map(|m| {
            let el = parse_message(m);
            (el.name().to_owned(), el.ns())
        })
        .collect();
    let expected = [
        ("open", NS_FRAMING),
        ("features", "http://etherx.jabber.org/streams"),
        ("success", "urn:ietf:params:xml:ns:xmpp-sasl"),
        ("open", NS_FRAMING),
        ("message", NS_CLIENT),
        ("a", "urn:xmpp:sm:3"),
        ("error", "http://etherx.jabber.org/streams"),
        ("close", NS_FRAMING),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(n, ns)| ((*n).to_owned(), (*ns).to_owned()))
        .collect();
    assert_eq!(shapes, expected);
    let message = parse_message(&whole[4]);
    assert_eq!(message.attr("id"), Some("x>y/>'\""));
    assert_eq!(
        message.get_child("body", NS_CLIENT).map(Element::text),
        Some("1 < 2 > 0 /> <b>".to_owned())
    );
    assert_eq!(parse_message(&whole[3]).attr("id"), Some("s2"));

    for cut in 0..=bytes.len() {
        let mut f = WsFraming::new(NS_CLIENT, limits());
        let (first, second) = bytes.split_at(cut);
        let mut messages = f.outbound(first).expect("frame");
        messages.extend(f.outbound(second).expect("frame"));
        assert_eq!(messages, whole, "cut at byte {cut}");
    }
}

#[test]
fn outbound_refuses_what_no_machine_writes() {
    for bad in ["<!-- note -->", "<?php ?>", "<![CDATA[x]]>"] {
        let mut f = framer();
        let header = stream_header(NS_SERVER, A, Some(B), "s", None);
        f.outbound(header.as_bytes()).expect("header");
        let e = f.outbound(bad.as_bytes()).expect_err(bad);
        assert_eq!(e.condition(), "internal-server-error", "{bad}");
    }
}
