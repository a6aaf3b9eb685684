//! Protocol transcripts for the server-to-server state machines ([`outpost_proto::s2s`]).
//!
//! Two kinds of test. In the first, an [`S2sOutgoing`] and an [`S2sIncoming`] are wired to
//! each other in memory: what one writes is fed to the other, and the test plays both
//! servers, answering TLS (simulated: `tls_established` on both sides), certificate checks
//! and dialback events. In the second, the test writes a peer's bytes by hand, after the
//! examples of RFC 6120 §9 and XEP-0220 and after what Prosody and ejabberd send, so interop
//! problems show up here before they show up on a network. Every chunk a machine writes is
//! parsed back with the crate's own [`StreamReader`], which also checks that our output is
//! well-formed. There are no sockets and no clock.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use outpost_proto::StreamMachine;
use outpost_proto::minidom::Element;
use outpost_proto::s2s::{
    AuthMethod, DialbackVerdict, Event, RelayPolicy, S2sConfig, S2sIncoming, S2sOutgoing,
    SendError, Transport, dialback_key,
};
use outpost_proto::stanza::{self, ns};
use outpost_proto::xml::{Limits, NS_XMPP_STREAMS, StreamReader, XmlEvent};

/// The originating server's domain (our outgoing side in the wired tests).
const A: &str = "a.example";
/// The receiving server's domain.
const B: &str = "b.example";
const SECRET_A: &str = "a-dialback-secret";
const SECRET_B: &str = "b-dialback-secret";

fn config() -> S2sConfig {
    S2sConfig::default()
}

/// Parses one chunk of a machine's output. A chunk that does not open a stream is read
/// inside a synthetic header declaring the namespaces our header declares.
fn parse(bytes: &[u8]) -> Vec<XmlEvent> {
    let mut reader = StreamReader::new(Limits::default());
    let opens = bytes.starts_with(b"<?xml") || bytes.starts_with(b"<stream:stream");
    if !opens {
        reader.feed(
            b"<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' \
              xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
        );
    }
    reader.feed(bytes);
    let mut events = Vec::new();
    loop {
        match reader.next() {
            Ok(Some(XmlEvent::StreamOpen(_))) if !opens => {}
            Ok(Some(ev)) => events.push(ev),
            Ok(None) => break,
            Err(e) => panic!(
                "our output is not well-formed ({e}): {}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }
    events
}

fn elements(events: &[XmlEvent]) -> Vec<&Element> {
    events
        .iter()
        .filter_map(|e| match e {
            XmlEvent::Stanza(el) => Some(el),
            _ => None,
        })
        .collect()
}

/// The stream error condition in `events`, if any.
fn stream_error(events: &[XmlEvent]) -> Option<String> {
    elements(events)
        .into_iter()
        .find(|el| el.is("error", "http://etherx.jabber.org/streams"))
        .and_then(|el| {
            el.children()
                .find(|c| c.ns() == NS_XMPP_STREAMS && c.name() != "text")
                .map(|c| c.name().to_owned())
        })
}

fn message(from: &str, to: &str, body: &str) -> Element {
    let mut msg = Element::builder("message", ns::CLIENT)
        .attr(stanza::name("type"), "chat")
        .append(Element::builder("body", ns::CLIENT).append(body).build())
        .build();
    stanza::set_attr(&mut msg, "from", from);
    stanza::set_attr(&mut msg, "to", to);
    msg
}

/// How the receiving server's side of the test answers a `<db:result/>`.
#[derive(Clone, Copy)]
enum Verdicts {
    /// Check the key with the originating server's secret, standing in for the round trip
    /// to the authoritative server.
    Local,
    /// Leave the request for the test to answer.
    Defer,
}

/// An outgoing and an incoming stream wired to each other, and the two servers behind them.
struct Link {
    out: S2sOutgoing,
    inc: S2sIncoming,
    /// Every event each side emitted, in order (answered ones included).
    out_events: Vec<Event>,
    inc_events: Vec<Event>,
    /// Everything each side wrote, parsed.
    out_wire: Vec<XmlEvent>,
    inc_wire: Vec<XmlEvent>,
    /// The originating server's dialback secret.
    secret: &'static str,
    /// The receiving server's verdict on the originator's certificate.
    cert_ok: bool,
    verdicts: Verdicts,
}

impl Link {
    fn new(out: S2sOutgoing, inc: S2sIncoming, secret: &'static str) -> Link {
        Link {
            out,
            inc,
            out_events: Vec::new(),
            inc_events: Vec::new(),
            out_wire: Vec::new(),
            inc_wire: Vec::new(),
            secret,
            cert_ok: false,
            verdicts: Verdicts::Local,
        }
    }

    fn between(local: &str, remote: &str, secret: &'static str) -> Link {
        Link::new(
            S2sOutgoing::new(config(), local, remote),
            S2sIncoming::new(config(), vec![remote.to_owned()], format!("id-{remote}")),
            secret,
        )
    }

    /// Moves bytes and answers events until both sides are quiet.
    fn pump(&mut self) {
        for _ in 0..200 {
            let mut progress = false;
            while let Some(ev) = self.out.poll_event() {
                progress = true;
                match &ev {
                    Event::StartTls => self.out.tls_established(),
                    Event::NeedDialbackKey {
                        local,
                        remote,
                        stream_id,
                    } => {
                        let key = dialback_key(self.secret, remote, local, stream_id);
                        self.out.provide_dialback_key(&key);
                    }
                    _ => {}
                }
                self.out_events.push(ev);
            }
            while let Some(ev) = self.inc.poll_event() {
                progress = true;
                match &ev {
                    Event::StartTls => self.inc.tls_established(),
                    Event::CheckCertificate { .. } => self.inc.certificate_checked(self.cert_ok),
                    Event::DialbackRequest {
                        from,
                        to,
                        key,
                        stream_id,
                    } if matches!(self.verdicts, Verdicts::Local) => {
                        let good = dialback_key(self.secret, to, from, stream_id);
                        let verdict = if *key == good {
                            DialbackVerdict::Valid
                        } else {
                            DialbackVerdict::Invalid
                        };
                        self.inc.dialback_result(from, to, verdict);
                    }
                    _ => {}
                }
                self.inc_events.push(ev);
            }
            let bytes = self.out.take_output();
            if !bytes.is_empty() {
                progress = true;
                self.out_wire.extend(parse(&bytes));
                self.inc.handle_input(&bytes);
            }
            let bytes = self.inc.take_output();
            if !bytes.is_empty() {
                progress = true;
                self.inc_wire.extend(parse(&bytes));
                self.out.handle_input(&bytes);
            }
            if !progress {
                return;
            }
        }
        panic!("the link did not settle");
    }

    /// Sends raw bytes to the incoming side as if the outgoing peer wrote them, and returns
    /// what the incoming side answered.
    fn inject(&mut self, raw: &str) -> Vec<XmlEvent> {
        self.inc.handle_input(raw.as_bytes());
        let bytes = self.inc.take_output();
        while let Some(ev) = self.inc.poll_event() {
            self.inc_events.push(ev);
        }
        parse(&bytes)
    }
}

fn ready_events(events: &[Event]) -> Vec<bool> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Ready { stream_management } => Some(*stream_management),
            _ => None,
        })
        .collect()
}

fn stanzas(events: &[Event]) -> Vec<&Element> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Stanza(el) => Some(el),
            _ => None,
        })
        .collect()
}

fn closed(events: &[Event]) -> Option<Option<&'static str>> {
    events.iter().find_map(|e| match e {
        Event::Closed { error } => Some(*error),
        _ => None,
    })
}

/// A dialback-authenticated link from A to B.
fn dialback_link() -> Link {
    let mut link = Link::between(A, B, SECRET_A);
    link.pump();
    // Outpost offers <sm/> beside dialback, so the link has acknowledgements.
    assert_eq!(ready_events(&link.out_events), vec![true]);
    link
}

#[test]
fn dialback_after_starttls_authenticates_and_carries_stanzas() {
    let mut link = dialback_link();
    assert!(link.out.is_secure() && link.inc.is_secure());
    assert_eq!(link.out.auth_method(), Some(AuthMethod::Dialback));

    // The originating side: TLS first, then the key, then the verdict.
    let kinds: Vec<&str> = link
        .out_events
        .iter()
        .map(|e| match e {
            Event::StartTls => "starttls",
            Event::NeedDialbackKey { .. } => "key",
            Event::Authenticated { .. } => "authenticated",
            Event::Ready { .. } => "ready",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["starttls", "key", "authenticated", "ready"]);
    assert!(link.inc_events.contains(&Event::Authenticated {
        peer: A.to_owned(),
        local: B.to_owned(),
        method: AuthMethod::Dialback,
    }));
    // The incoming side asked about the certificate after TLS; the answer was no, so it
    // offered no SASL mechanism and dialback was used.
    assert!(link.inc_events.contains(&Event::CheckCertificate {
        domain: A.to_owned()
    }));
    assert_eq!(
        link.inc.authenticated(),
        &[(A.to_owned(), B.to_owned())][..]
    );

    // The key on the wire is XEP-0185's, bound to the id of the stream B opened after TLS.
    let result = elements(&link.out_wire)
        .into_iter()
        .find(|el| el.is("result", ns::DIALBACK))
        .cloned()
        .expect("db:result sent");
    assert_eq!(result.attr("from"), Some(A));
    assert_eq!(result.attr("to"), Some(B));
    assert_eq!(
        result.text(),
        dialback_key(SECRET_A, B, A, link.inc.stream_id())
    );

    // A stanza goes out in jabber:server and comes in as jabber:client.
    let seq = link
        .out
        .send_stanza(&message("alice@a.example/phone", "bob@b.example", "hi"))
        .expect("ready");
    assert_eq!(seq, 1);
    link.pump();
    let on_wire = elements(&link.out_wire)
        .into_iter()
        .find(|el| el.name() == "message")
        .cloned()
        .expect("message on the wire");
    assert_eq!(on_wire.ns(), ns::SERVER);
    assert!(on_wire.has_child("body", ns::SERVER));
    let got = stanzas(&link.inc_events);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].ns(), ns::CLIENT);
    assert_eq!(got[0].attr("from"), Some("alice@a.example/phone"));
    assert_eq!(got[0].attr("to"), Some("bob@b.example"));
    assert_eq!(
        got[0].get_child("body", ns::CLIENT).map(Element::text),
        Some("hi".to_owned())
    );

    // Closing is mutual (RFC 6120 §4.4).
    link.out.close(None, None);
    link.pump();
    assert_eq!(closed(&link.out_events), Some(None));
    assert_eq!(closed(&link.inc_events), Some(None));
}

#[test]
fn sasl_external_with_accepted_certificate_enables_stream_management_and_acks() {
    let mut link = Link::between(A, B, SECRET_A);
    link.cert_ok = true;
    link.pump();
    assert_eq!(link.out.auth_method(), Some(AuthMethod::SaslExternal));
    assert!(link.inc_events.contains(&Event::Authenticated {
        peer: A.to_owned(),
        local: B.to_owned(),
        method: AuthMethod::SaslExternal,
    }));
    assert!(
        !link
            .out_events
            .iter()
            .any(|e| matches!(e, Event::NeedDialbackKey { .. })),
        "no dialback when EXTERNAL succeeds"
    );
    assert_eq!(ready_events(&link.out_events), vec![true]);
    assert!(link.out.stream_management());
    // XEP-0178 §2: the authorization identity is our domain.
    let auth = elements(&link.out_wire)
        .into_iter()
        .find(|el| el.is("auth", ns::SASL))
        .cloned()
        .expect("auth sent");
    assert_eq!(auth.attr("mechanism"), Some("EXTERNAL"));
    assert_eq!(B64.decode(auth.text()).ok(), Some(A.as_bytes().to_vec()));

    for (i, body) in ["one", "two", "three"].into_iter().enumerate() {
        let seq = link
            .out
            .send_stanza(&message("alice@a.example", "bob@b.example", body))
            .expect("ready");
        assert_eq!(seq, u32::try_from(i + 1).expect("small"));
    }
    assert!(link.out.request_ack());
    link.pump();
    assert_eq!(stanzas(&link.inc_events).len(), 3);
    let acks: Vec<u32> = link
        .out_events
        .iter()
        .filter_map(|e| match e {
            Event::Acked { h } => Some(*h),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![3]);
    let a = elements(&link.inc_wire)
        .into_iter()
        .find(|el| el.is("a", ns::SM))
        .cloned()
        .expect("<a/> sent");
    assert_eq!(a.attr("h"), Some("3"));

    // A second request with nothing new acknowledges nothing new.
    link.out
        .send_stanza(&message("alice@a.example", "bob@b.example", "four"))
        .expect("ready");
    link.out.request_ack();
    link.pump();
    assert!(link.out_events.contains(&Event::Acked { h: 4 }));
}

#[test]
fn outgoing_without_external_configured_uses_dialback_even_when_offered() {
    let mut out_config = config();
    out_config.sasl_external = false;
    let mut link = Link::new(
        S2sOutgoing::new(out_config, A, B),
        S2sIncoming::new(config(), vec![B.to_owned()], "s1".to_owned()),
        SECRET_A,
    );
    link.cert_ok = true;
    link.pump();
    assert_eq!(link.out.auth_method(), Some(AuthMethod::Dialback));
    // EXTERNAL was offered but not used; <sm/> is offered beside dialback, so acks work.
    assert_eq!(ready_events(&link.out_events), vec![true]);
}

#[test]
fn wrong_dialback_key_fails_and_closes_both_sides() {
    let mut link = Link::between(A, B, SECRET_A);
    // The receiving server's side is played by hand here: its verdict is "invalid".
    link.verdicts = Verdicts::Defer;
    link.pump();
    let (from, to) = link
        .inc_events
        .iter()
        .find_map(|e| match e {
            Event::DialbackRequest { from, to, .. } => Some((from.clone(), to.clone())),
            _ => None,
        })
        .expect("dialback request");
    assert_eq!((from.as_str(), to.as_str()), (A, B));
    link.inc
        .dialback_result(&from, &to, DialbackVerdict::Invalid);
    link.pump();
    assert!(
        link.out_events
            .iter()
            .any(|e| matches!(e, Event::AuthFailed { .. }))
    );
    assert!(ready_events(&link.out_events).is_empty());
    assert!(link.out.is_closed() && link.inc.is_closed());
    assert_eq!(
        link.out
            .send_stanza(&message("alice@a.example", "bob@b.example", "x")),
        Err(SendError::Closed)
    );
}

/// XEP-0220 §2.1 with all three parties: A (originating and authoritative) connects to B;
/// B verifies A's key over its own stream back to A.
#[test]
fn dialback_verified_by_the_authoritative_server_over_a_second_stream() {
    // A → B: the stream to authenticate. B defers its verdict.
    let mut ab = Link::between(A, B, SECRET_A);
    ab.verdicts = Verdicts::Defer;
    ab.pump();
    let (from, to, key, stream_id) = ab
        .inc_events
        .iter()
        .find_map(|e| match e {
            Event::DialbackRequest {
                from,
                to,
                key,
                stream_id,
            } => Some((from.clone(), to.clone(), key.clone(), stream_id.clone())),
            _ => None,
        })
        .expect("dialback request at B");
    assert_eq!(stream_id, ab.inc.stream_id());

    // B → A: B's own stream, authenticated with B's secret, carrying the verification.
    let mut ba = Link::between(B, A, SECRET_B);
    ba.out.send_dialback_verify(&stream_id, &key);
    ba.pump();
    let request = ba
        .inc_events
        .iter()
        .find_map(|e| match e {
            Event::VerifyRequest { from, to, id, key } => {
                Some((from.clone(), to.clone(), id.clone(), key.clone()))
            }
            _ => None,
        })
        .expect("verify request at A");
    assert_eq!(request.0, B);
    assert_eq!(request.1, A);
    assert_eq!(request.2, stream_id);
    // A, authoritative, recomputes the key it would have sent on that stream.
    let valid = request.3 == dialback_key(SECRET_A, &request.0, &request.1, &request.2);
    assert!(valid);
    ba.inc
        .verify_result(&request.0, &request.1, &request.2, valid);
    ba.pump();
    assert!(ba.out_events.contains(&Event::VerifyResult {
        from: A.to_owned(),
        to: B.to_owned(),
        id: stream_id.clone(),
        valid: true,
    }));

    // B tells A's stream the verdict.
    ab.inc.dialback_result(&from, &to, DialbackVerdict::Valid);
    ab.pump();
    assert_eq!(ready_events(&ab.out_events), vec![true]);
    assert_eq!(ab.out.auth_method(), Some(AuthMethod::Dialback));
}

#[test]
fn verify_with_a_wrong_key_is_reported_invalid() {
    let mut ba = Link::between(B, A, SECRET_B);
    ba.out.send_dialback_verify("some-stream", "not-the-key");
    ba.pump();
    let (from, to, id, key) = ba
        .inc_events
        .iter()
        .find_map(|e| match e {
            Event::VerifyRequest { from, to, id, key } => {
                Some((from.clone(), to.clone(), id.clone(), key.clone()))
            }
            _ => None,
        })
        .expect("verify request");
    let valid = key == dialback_key(SECRET_A, &from, &to, &id);
    ba.inc.verify_result(&from, &to, &id, valid);
    ba.pump();
    assert!(ba.out_events.contains(&Event::VerifyResult {
        from: A.to_owned(),
        to: B.to_owned(),
        id: "some-stream".to_owned(),
        valid: false,
    }));
    // The verification does not disturb B's own stream.
    assert!(ba.out.is_ready());
}

#[test]
fn spoofed_from_is_rejected_with_invalid_from() {
    let mut link = dialback_link();
    let answer = link.inject(
        "<message from='mallory@evil.example' to='bob@b.example'><body>hi</body></message>",
    );
    assert_eq!(stream_error(&answer).as_deref(), Some("invalid-from"));
    assert!(stanzas(&link.inc_events).is_empty());
    assert_eq!(closed(&link.inc_events), Some(Some("invalid-from")));
}

#[test]
fn unknown_to_is_rejected_with_host_unknown() {
    let mut link = dialback_link();
    let answer = link.inject("<message from='alice@a.example' to='bob@c.example'/>");
    assert_eq!(stream_error(&answer).as_deref(), Some("host-unknown"));
    assert_eq!(closed(&link.inc_events), Some(Some("host-unknown")));
}

#[test]
fn stanza_without_to_is_improper_addressing() {
    let mut link = dialback_link();
    let answer = link.inject("<presence from='alice@a.example/phone'/>");
    assert_eq!(
        stream_error(&answer).as_deref(),
        Some("improper-addressing")
    );
}

#[test]
fn hosted_domain_not_authenticated_for_the_peer_is_invalid_from() {
    // B also hosts c.example, but A authenticated only for the pair (A, B).
    let mut link = Link::new(
        S2sOutgoing::new(config(), A, B),
        S2sIncoming::new(
            config(),
            vec![B.to_owned(), "c.example".to_owned()],
            "s1".to_owned(),
        ),
        SECRET_A,
    );
    link.pump();
    let answer = link.inject("<message from='alice@a.example' to='carol@c.example'/>");
    assert_eq!(stream_error(&answer).as_deref(), Some("invalid-from"));
}

/// The hub `h.example` relays between A and `c.example`.
const HUB: &str = "h.example";
const C: &str = "c.example";

/// A site A's stream to the hub, both sides configured for relaying.
fn link_to_hub(relay_for: &[&str]) -> Link {
    let mut out_config = config();
    out_config.relay.outgoing = true;
    let mut hub_config = config();
    hub_config.relay = RelayPolicy {
        relay_for: relay_for.iter().map(|d| (*d).to_owned()).collect(),
        ..RelayPolicy::default()
    };
    let mut link = Link::new(
        S2sOutgoing::new(out_config, A, HUB),
        S2sIncoming::new(hub_config, vec![HUB.to_owned()], "hub-1".to_owned()),
        SECRET_A,
    );
    link.pump();
    assert_eq!(ready_events(&link.out_events), vec![true]);
    link
}

#[test]
fn hub_accepts_a_stanza_for_another_relayed_domain() {
    let mut link = link_to_hub(&[A, C]);
    let seq = link
        .out
        .send_stanza(&message("alice@a.example/pc", "carol@c.example", "via hub"))
        .expect("a relaying stream may address another domain");
    link.out.request_ack();
    link.pump();
    let got = stanzas(&link.inc_events);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attr("to"), Some("carol@c.example"));
    assert_eq!(got[0].ns(), ns::CLIENT);
    assert!(
        link.out_events
            .iter()
            .any(|e| matches!(e, Event::Acked { h } if *h == seq))
    );
    assert_eq!(closed(&link.inc_events), None);
}

#[test]
fn hub_refuses_a_domain_it_does_not_relay_for() {
    let mut link = link_to_hub(&[A, C]);
    let answer = link.inject("<message from='alice@a.example' to='dave@d.example'/>");
    assert_eq!(stream_error(&answer).as_deref(), Some("host-unknown"));
}

#[test]
fn hub_refuses_a_sender_it_does_not_relay_for() {
    // A authenticated, but the hub relays only for C and another domain.
    let mut link = link_to_hub(&[C, "d.example"]);
    let answer = link.inject("<message from='alice@a.example' to='carol@c.example'/>");
    assert_eq!(stream_error(&answer).as_deref(), Some("host-unknown"));
}

#[test]
fn hub_relaying_does_not_let_a_peer_spoof_another_sender() {
    // A may relay, but only as A: a `from` at C is not authenticated on this stream.
    let mut link = link_to_hub(&[A, C, "d.example"]);
    let answer = link.inject("<message from='carol@c.example' to='dave@d.example'/>");
    assert_eq!(stream_error(&answer).as_deref(), Some("host-unknown"));
    assert!(stanzas(&link.inc_events).is_empty());
}

/// The hub's stream to site C, C trusting the hub.
fn hub_to_site(trusted: &[&str]) -> Link {
    let mut out_config = config();
    out_config.relay.outgoing = true;
    let mut site_config = config();
    site_config.relay.trusted_hubs = trusted.iter().map(|d| (*d).to_owned()).collect();
    let mut link = Link::new(
        S2sOutgoing::new(out_config, HUB, C),
        S2sIncoming::new(site_config, vec![C.to_owned()], "c-1".to_owned()),
        SECRET_B,
    );
    link.pump();
    assert_eq!(ready_events(&link.out_events), vec![true]);
    link
}

#[test]
fn site_accepts_relayed_stanzas_from_its_trusted_hub() {
    let mut link = hub_to_site(&[HUB]);
    link.out
        .send_stanza(&message("alice@a.example/pc", "carol@c.example", "relayed"))
        .expect("the hub's stream carries other senders");
    link.pump();
    let got = stanzas(&link.inc_events);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attr("from"), Some("alice@a.example/pc"));
    assert_eq!(closed(&link.inc_events), None);
}

#[test]
fn site_refuses_relayed_stanzas_from_an_untrusted_peer() {
    let mut link = hub_to_site(&[]);
    let answer = link.inject("<message from='alice@a.example' to='carol@c.example'/>");
    assert_eq!(stream_error(&answer).as_deref(), Some("invalid-from"));
}

#[test]
fn trusted_hub_cannot_speak_for_the_sites_own_domain() {
    let mut link = hub_to_site(&[HUB]);
    let answer = link.inject("<message from='eve@c.example' to='carol@c.example'/>");
    assert_eq!(stream_error(&answer).as_deref(), Some("invalid-from"));
}

#[test]
fn outgoing_without_relay_refuses_other_addresses() {
    let mut link = dialback_link();
    assert_eq!(
        link.out
            .send_stanza(&message("alice@a.example", "carol@c.example", "x")),
        Err(SendError::WrongAddress)
    );
}

#[test]
fn stanza_in_jabber_client_namespace_is_invalid_namespace() {
    let mut link = dialback_link();
    let answer =
        link.inject("<message xmlns='jabber:client' from='alice@a.example' to='bob@b.example'/>");
    assert_eq!(stream_error(&answer).as_deref(), Some("invalid-namespace"));
}

#[test]
fn garbage_after_authentication_is_not_well_formed() {
    let mut link = dialback_link();
    let answer = link.inject("<message from='alice@a.example' to='bob@b.example'><body></message>");
    assert_eq!(stream_error(&answer).as_deref(), Some("not-well-formed"));
    assert_eq!(closed(&link.inc_events), Some(Some("not-well-formed")));
}

#[test]
fn garbage_instead_of_a_stream_is_not_well_formed() {
    // A Direct TLS ClientHello sent to the STARTTLS port: its first byte is no XML
    // character.
    let mut inc = S2sIncoming::new(config(), vec![B.to_owned()], "s1".to_owned());
    inc.handle_input(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ]);
    let answer = parse(&inc.take_output());
    assert_eq!(stream_error(&answer).as_deref(), Some("not-well-formed"));
    assert_eq!(
        inc.poll_event(),
        Some(Event::Closed {
            error: Some("not-well-formed")
        })
    );

    // Text before the root is reported when markup follows it (the reader cannot tell
    // text from a stream until then; the stanza size limit bounds the wait).
    let mut inc = S2sIncoming::new(config(), vec![B.to_owned()], "s1".to_owned());
    inc.handle_input(b"GET / HTTP/1.1\r\nHost: b.example\r\n\r\n");
    assert!(!inc.is_closed());
    inc.handle_input(b"<html>");
    let answer = parse(&inc.take_output());
    assert_eq!(stream_error(&answer).as_deref(), Some("not-well-formed"));

    let mut out = S2sOutgoing::new(config(), A, B);
    let _ = out.take_output();
    out.handle_input(b"<<<>>>");
    let answer = parse(&out.take_output());
    assert_eq!(stream_error(&answer).as_deref(), Some("not-well-formed"));
    assert!(out.is_closed());
}

/// A hand-written peer speaking to an [`S2sIncoming`].
struct RawPeer {
    inc: S2sIncoming,
    events: Vec<Event>,
}

impl RawPeer {
    fn new(config: S2sConfig) -> RawPeer {
        RawPeer {
            inc: S2sIncoming::new(config, vec!["outpost.example".to_owned()], "sid".to_owned()),
            events: Vec::new(),
        }
    }

    /// Feeds `raw`, returns what the machine answered and keeps its events.
    fn send(&mut self, raw: &str) -> Vec<XmlEvent> {
        self.inc.handle_input(raw.as_bytes());
        let out = self.inc.take_output();
        while let Some(ev) = self.inc.poll_event() {
            self.events.push(ev);
        }
        parse(&out)
    }

    /// Answers the `StartTls` event the way a server would, after its handshake.
    fn answer_tls(&mut self) {
        assert_eq!(self.events.pop(), Some(Event::StartTls));
        self.inc.tls_established();
    }
}

fn features(events: &[XmlEvent]) -> Element {
    elements(events)
        .into_iter()
        .find(|el| el.is("features", "http://etherx.jabber.org/streams"))
        .cloned()
        .expect("stream features")
}

fn header_of(events: &[XmlEvent]) -> outpost_proto::xml::StreamHeader {
    events
        .iter()
        .find_map(|e| match e {
            XmlEvent::StreamOpen(h) => Some(h.clone()),
            _ => None,
        })
        .expect("stream header")
}

/// A stream header as Prosody writes it for s2s: `xmlns:db` before the default namespace,
/// `xml:lang`, and the default namespace last.
fn prosody_header() -> &'static str {
    "<?xml version='1.0'?><stream:stream xmlns:db='jabber:server:dialback' \
     xmlns:stream='http://etherx.jabber.org/streams' xml:lang='en' from='prosody.example' \
     to='outpost.example' version='1.0' xmlns='jabber:server'>"
}

/// Prosody, with no certificate we accept, authenticates by dialback without trying SASL.
#[test]
fn prosody_like_peer_authenticates_with_dialback_without_sasl() {
    let mut peer = RawPeer::new(config());
    let answer = peer.send(prosody_header());
    let header = header_of(&answer);
    assert_eq!(header.ns, ns::SERVER);
    assert_eq!(header.from.as_deref(), Some("outpost.example"));
    assert_eq!(header.to.as_deref(), Some("prosody.example"));
    assert_eq!(header.version.as_deref(), Some("1.0"));
    assert_eq!(header.id.as_deref(), Some("sid-1"));
    let f = features(&answer);
    assert!(
        f.get_child("starttls", ns::TLS)
            .is_some_and(|s| s.has_child("required", ns::TLS))
    );
    assert!(
        !f.has_child("dialback", ns::DIALBACK_FEATURE),
        "only TLS before TLS"
    );

    let answer = peer.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert!(elements(&answer)[0].is("proceed", ns::TLS));
    peer.answer_tls();

    let answer = peer.send(prosody_header());
    assert_eq!(header_of(&answer).id.as_deref(), Some("sid-2"));
    assert_eq!(
        peer.events.pop(),
        Some(Event::CheckCertificate {
            domain: "prosody.example".to_owned()
        })
    );
    peer.inc.certificate_checked(false);
    let f = parse(&peer.inc.take_output());
    let f = features(&f);
    assert!(!f.has_child("mechanisms", ns::SASL));
    assert!(
        f.get_child("dialback", ns::DIALBACK_FEATURE)
            .is_some_and(|d| d.has_child("errors", ns::DIALBACK_FEATURE))
    );

    // Prosody writes the key with the prefix its header declared.
    let answer = peer.send(
        "<db:result from='prosody.example' to='outpost.example'>\
         f1c2d3e4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2</db:result>",
    );
    assert!(answer.is_empty(), "nothing is said before the verdict");
    assert_eq!(
        peer.events.pop(),
        Some(Event::DialbackRequest {
            from: "prosody.example".to_owned(),
            to: "outpost.example".to_owned(),
            key: "f1c2d3e4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2".to_owned(),
            stream_id: "sid-2".to_owned(),
        })
    );
    peer.inc
        .dialback_result("prosody.example", "outpost.example", DialbackVerdict::Valid);
    let verdict = parse(&peer.inc.take_output());
    let verdict = elements(&verdict)[0].clone();
    assert!(verdict.is("result", ns::DIALBACK));
    assert_eq!(verdict.attr("type"), Some("valid"));
    assert_eq!(verdict.attr("from"), Some("outpost.example"));
    assert_eq!(verdict.attr("to"), Some("prosody.example"));

    // Prosody's stanzas: jabber:server inherited from the header, xml:lang, an id.
    let answer = peer.send(
        "<message xml:lang='en' type='chat' to='bob@outpost.example' \
         from='alice@prosody.example/laptop' id='a1b2'><body>Hello from Prosody</body>\
         <active xmlns='http://jabber.org/protocol/chatstates'/></message>\
         <presence to='bob@outpost.example' from='alice@prosody.example' type='subscribe'/>",
    );
    assert!(answer.is_empty());
    let got = stanzas(&peer.events);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].ns(), ns::CLIENT);
    assert_eq!(
        got[0].get_child("body", ns::CLIENT).map(Element::text),
        Some("Hello from Prosody".to_owned())
    );
    assert!(got[0].has_child("active", "http://jabber.org/protocol/chatstates"));
    assert_eq!(got[1].name(), "presence");
    assert_eq!(got[1].attr("type"), Some("subscribe"));

    // Prosody closes idle s2s streams with a plain close.
    let answer = peer.send("</stream:stream>");
    assert!(answer.contains(&XmlEvent::StreamClose));
    assert_eq!(peer.events.last(), Some(&Event::Closed { error: None }));
}

/// ejabberd's header order, and SASL EXTERNAL with its domain as authorization identity,
/// then with an empty response (`=`), the other form XEP-0178 allows.
#[test]
fn ejabberd_like_peer_authenticates_with_sasl_external() {
    let ejabberd_header = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
        xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
        from='ejabberd.example' to='outpost.example' version='1.0'>";
    for initial_response in [B64.encode("ejabberd.example"), "=".to_owned()] {
        let mut peer = RawPeer::new(config());
        peer.send(ejabberd_header);
        peer.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        peer.answer_tls();
        peer.send(ejabberd_header);
        assert!(matches!(
            peer.events.pop(),
            Some(Event::CheckCertificate { .. })
        ));
        peer.inc.certificate_checked(true);
        let f = parse(&peer.inc.take_output());
        let mechanisms: Vec<String> = features(&f)
            .get_child("mechanisms", ns::SASL)
            .map(|m| m.children().map(Element::text).collect())
            .unwrap_or_default();
        assert_eq!(mechanisms, ["EXTERNAL"]);

        let answer = peer.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>\
             {initial_response}</auth>"
        ));
        assert!(elements(&answer)[0].is("success", ns::SASL));
        assert_eq!(
            peer.events.pop(),
            Some(Event::Authenticated {
                peer: "ejabberd.example".to_owned(),
                local: "outpost.example".to_owned(),
                method: AuthMethod::SaslExternal,
            })
        );
        // RFC 6120 §6.4.6: a new stream; now stream management is offered, nothing else.
        let answer = peer.send(ejabberd_header);
        assert_eq!(header_of(&answer).id.as_deref(), Some("sid-3"));
        let f = features(&answer);
        assert!(f.has_child("sm", ns::SM));
        assert!(!f.has_child("mechanisms", ns::SASL));
        assert!(!f.has_child("starttls", ns::TLS));

        let answer = peer.send(
            "<iq type='get' id='ping1' from='ejabberd.example' to='outpost.example'>\
             <ping xmlns='urn:xmpp:ping'/></iq>",
        );
        assert!(answer.is_empty());
        let got = stanzas(&peer.events);
        assert_eq!(got.len(), 1);
        assert!(got[0].has_child("ping", "urn:xmpp:ping"));
    }
}

#[test]
fn sasl_external_for_another_domain_is_invalid_authzid() {
    let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
        xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
        from='peer.example' to='outpost.example' version='1.0'>";
    let mut peer = RawPeer::new(config());
    peer.send(header);
    peer.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    peer.answer_tls();
    peer.send(header);
    peer.events.clear();
    peer.inc.certificate_checked(true);
    let _ = peer.inc.take_output();
    let answer = peer.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{}</auth>",
        B64.encode("victim.example")
    ));
    let failure = elements(&answer)[0].clone();
    assert!(failure.is("failure", ns::SASL));
    assert!(failure.has_child("invalid-authzid", ns::SASL));
    assert!(peer.events.is_empty(), "nothing authenticated");
    // The stream stays open, and stanzas are still refused.
    let answer = peer.send("<message from='a@peer.example' to='b@outpost.example'/>");
    assert_eq!(stream_error(&answer).as_deref(), Some("not-authorized"));
}

#[test]
fn sasl_external_not_offered_is_invalid_mechanism() {
    let mut peer = RawPeer::new(config());
    peer.send(prosody_header());
    peer.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    peer.answer_tls();
    peer.send(prosody_header());
    peer.inc.certificate_checked(false);
    let _ = peer.inc.take_output();
    let answer =
        peer.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>");
    assert!(elements(&answer)[0].has_child("invalid-mechanism", ns::SASL));
}

#[test]
fn dialback_before_starttls_is_a_policy_violation() {
    let mut peer = RawPeer::new(config());
    peer.send(prosody_header());
    let answer =
        peer.send("<db:result from='prosody.example' to='outpost.example'>abcd</db:result>");
    assert_eq!(stream_error(&answer).as_deref(), Some("policy-violation"));
    assert!(
        !peer
            .events
            .iter()
            .any(|e| matches!(e, Event::DialbackRequest { .. }))
    );
}

#[test]
fn plaintext_after_starttls_is_refused() {
    let mut peer = RawPeer::new(config());
    peer.send(prosody_header());
    let answer = peer.send(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message to='x@outpost.example'/>",
    );
    assert_eq!(stream_error(&answer).as_deref(), Some("policy-violation"));
    assert!(!peer.events.contains(&Event::StartTls));
}

#[test]
fn wrong_stream_namespace_is_invalid_namespace() {
    let mut peer = RawPeer::new(config());
    let answer = peer.send(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' from='prosody.example' \
         to='outpost.example' version='1.0'>",
    );
    assert_eq!(header_of(&answer).ns, ns::SERVER);
    assert_eq!(stream_error(&answer).as_deref(), Some("invalid-namespace"));

    // The outgoing side holds the peer to the same rule.
    let mut out = S2sOutgoing::new(config(), "outpost.example", "prosody.example");
    let _ = out.take_output();
    out.handle_input(
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
          xmlns:stream='http://etherx.jabber.org/streams' id='x' version='1.0'>",
    );
    assert_eq!(
        stream_error(&parse(&out.take_output())).as_deref(),
        Some("invalid-namespace")
    );
}

#[test]
fn header_for_a_domain_we_do_not_host_is_host_unknown() {
    let mut peer = RawPeer::new(config());
    let answer = peer.send(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' from='prosody.example' \
         to='elsewhere.example' version='1.0'>",
    );
    assert_eq!(stream_error(&answer).as_deref(), Some("host-unknown"));
}

#[test]
fn stream_without_version_is_unsupported() {
    // XEP-0185's example header has no version: a pre-RFC 3920 stream.
    let mut peer = RawPeer::new(config());
    let answer = peer.send(
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns='jabber:server' xmlns:db='jabber:server:dialback' to='outpost.example' \
         from='example.org'>",
    );
    assert_eq!(
        stream_error(&answer).as_deref(),
        Some("unsupported-version")
    );
}

/// A peer on loopback with plaintext allowed, for the addressing tests below.
fn plaintext_peer_authenticated() -> RawPeer {
    let mut c = config();
    c.allow_plaintext = true;
    let mut peer = RawPeer::new(c);
    let answer = peer.send(prosody_header());
    let f = features(&answer);
    assert!(
        f.get_child("starttls", ns::TLS)
            .is_some_and(|s| !s.has_child("required", ns::TLS))
    );
    assert!(f.has_child("dialback", ns::DIALBACK_FEATURE));
    peer.send("<db:result from='prosody.example' to='outpost.example'>k1</db:result>");
    peer.inc
        .dialback_result("prosody.example", "outpost.example", DialbackVerdict::Valid);
    let _ = peer.inc.take_output();
    peer.events.clear();
    peer
}

#[test]
fn piggybacked_domain_is_authenticated_on_its_own() {
    let mut peer = plaintext_peer_authenticated();
    // XEP-0220 §2.5: a second originating domain on the same stream.
    peer.send("<db:result from='muc.prosody.example' to='outpost.example'>k2</db:result>");
    assert!(matches!(
        peer.events.pop(),
        Some(Event::DialbackRequest { ref from, .. }) if from == "muc.prosody.example"
    ));
    // The first domain still works while the second is pending.
    assert!(
        peer.send("<message from='alice@prosody.example' to='bob@outpost.example'/>")
            .is_empty()
    );
    peer.inc.dialback_result(
        "muc.prosody.example",
        "outpost.example",
        DialbackVerdict::Valid,
    );
    let _ = peer.inc.take_output();
    assert!(
        peer.send("<presence from='room@muc.prosody.example/nick' to='bob@outpost.example'/>")
            .is_empty()
    );
    assert_eq!(stanzas(&peer.events).len(), 2);
    assert_eq!(peer.inc.authenticated().len(), 2);
}

#[test]
fn piggybacked_domain_stanza_before_its_verdict_is_invalid_from() {
    let mut peer = plaintext_peer_authenticated();
    peer.send("<db:result from='muc.prosody.example' to='outpost.example'>k2</db:result>");
    let answer =
        peer.send("<presence from='room@muc.prosody.example/nick' to='bob@outpost.example'/>");
    assert_eq!(stream_error(&answer).as_deref(), Some("invalid-from"));
}

#[test]
fn dialback_for_a_domain_we_do_not_host_is_a_dialback_error() {
    let mut peer = plaintext_peer_authenticated();
    let answer =
        peer.send("<db:result from='prosody.example' to='elsewhere.example'>k</db:result>");
    let error = elements(&answer)[0].clone();
    assert!(error.is("result", ns::DIALBACK));
    assert_eq!(error.attr("type"), Some("error"));
    assert!(
        error
            .get_child("error", ns::SERVER)
            .is_some_and(|e| e.has_child("item-not-found", ns::STANZAS))
    );
    // XEP-0220 §2.4: the stream and its other domains carry on.
    assert!(!peer.inc.is_closed());
    assert!(
        peer.send("<message from='alice@prosody.example' to='bob@outpost.example'/>")
            .is_empty()
    );
}

#[test]
fn verification_request_as_authoritative_server() {
    // XEP-0220 §2.1.3, as written there: to, from, id, then the key with whitespace.
    let mut c = config();
    c.allow_plaintext = true;
    let mut peer = RawPeer::new(c);
    peer.send(prosody_header());
    let answer = peer.send(
        "<db:verify to='outpost.example' from='prosody.example' id='417GAF25'>\n  \
         abc123\n</db:verify>",
    );
    assert!(answer.is_empty());
    assert_eq!(
        peer.events.pop(),
        Some(Event::VerifyRequest {
            from: "prosody.example".to_owned(),
            to: "outpost.example".to_owned(),
            id: "417GAF25".to_owned(),
            key: "abc123".to_owned(),
        })
    );
    peer.inc
        .verify_result("prosody.example", "outpost.example", "417GAF25", true);
    let answer = parse(&peer.inc.take_output());
    let verdict = elements(&answer)[0].clone();
    assert!(verdict.is("verify", ns::DIALBACK));
    assert_eq!(verdict.attr("type"), Some("valid"));
    assert_eq!(verdict.attr("id"), Some("417GAF25"));
    assert_eq!(verdict.attr("from"), Some("outpost.example"));
    assert_eq!(verdict.attr("to"), Some("prosody.example"));
    // A verification does not authenticate the verifier.
    let answer = peer.send("<message from='alice@prosody.example' to='bob@outpost.example'/>");
    assert_eq!(stream_error(&answer).as_deref(), Some("not-authorized"));
}

#[test]
fn stream_management_counts_and_answers() {
    let mut peer = plaintext_peer_authenticated();
    let answer = peer.send("<enable xmlns='urn:xmpp:sm:3'/>");
    assert!(elements(&answer)[0].is("enabled", ns::SM));
    assert_eq!(elements(&answer)[0].attr("resume"), None);
    let answer = peer.send(
        "<message from='a@prosody.example' to='b@outpost.example'/>\
         <message from='a@prosody.example' to='b@outpost.example'/><r xmlns='urn:xmpp:sm:3'/>",
    );
    assert_eq!(elements(&answer)[0].attr("h"), Some("2"));
    // Enabling twice fails without ending the stream.
    let answer = peer.send("<enable xmlns='urn:xmpp:sm:3'/>");
    assert!(elements(&answer)[0].is("failed", ns::SM));
    assert!(!peer.inc.is_closed());
}

#[test]
fn stream_management_before_authentication_fails() {
    let mut c = config();
    c.allow_plaintext = true;
    let mut peer = RawPeer::new(c);
    peer.send(prosody_header());
    let answer = peer.send("<enable xmlns='urn:xmpp:sm:3'/>");
    assert!(elements(&answer)[0].is("failed", ns::SM));
    let answer = peer.send("<r xmlns='urn:xmpp:sm:3'/>");
    assert_eq!(
        stream_error(&answer).as_deref(),
        Some("unsupported-stanza-type")
    );
}

/// A hand-written receiving server answering an [`S2sOutgoing`].
struct RawServer {
    out: S2sOutgoing,
    events: Vec<Event>,
}

impl RawServer {
    fn new(config: S2sConfig) -> (RawServer, Vec<XmlEvent>) {
        let mut out = S2sOutgoing::new(config, "outpost.example", "remote.example");
        let first = parse(&out.take_output());
        (
            RawServer {
                out,
                events: Vec::new(),
            },
            first,
        )
    }

    fn send(&mut self, raw: &str) -> Vec<XmlEvent> {
        self.out.handle_input(raw.as_bytes());
        let bytes = self.out.take_output();
        while let Some(ev) = self.out.poll_event() {
            self.events.push(ev);
        }
        parse(&bytes)
    }
}

fn remote_header(id: &str, first_attr: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream {first_attr} \
         xmlns:stream='http://etherx.jabber.org/streams' xml:lang='en' id='{id}' \
         from='remote.example' to='outpost.example' version='1.0' xmlns='jabber:server'>"
    )
}

/// What Prosody answers when we connect: STARTTLS, then dialback only (no certificate it
/// accepts), and no stream management on a dialback stream.
#[test]
fn outgoing_to_prosody_like_server_uses_dialback() {
    let (mut server, first) = RawServer::new(config());
    let header = header_of(&first);
    assert_eq!(header.ns, ns::SERVER);
    assert_eq!(header.from.as_deref(), Some("outpost.example"));
    assert_eq!(header.to.as_deref(), Some("remote.example"));
    assert_eq!(header.version.as_deref(), Some("1.0"));
    let db = "xmlns:db='jabber:server:dialback'";

    let answer = server.send(&format!(
        "{}<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>\
         <required/></starttls></stream:features>",
        remote_header("p1", db)
    ));
    assert!(elements(&answer)[0].is("starttls", ns::TLS));
    let answer = server.send("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert!(answer.is_empty());
    assert_eq!(server.events.pop(), Some(Event::StartTls));
    server.out.tls_established();
    let restarted = parse(&server.out.take_output());
    assert_eq!(header_of(&restarted).to.as_deref(), Some("remote.example"));

    let answer = server.send(&format!(
        "{}<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/>\
         </dialback></stream:features>",
        remote_header("p2", db)
    ));
    assert!(answer.is_empty());
    assert_eq!(
        server.events.pop(),
        Some(Event::NeedDialbackKey {
            local: "outpost.example".to_owned(),
            remote: "remote.example".to_owned(),
            stream_id: "p2".to_owned(),
        })
    );
    let key = dialback_key(SECRET_A, "remote.example", "outpost.example", "p2");
    server.out.provide_dialback_key(&key);
    let sent = parse(&server.out.take_output());
    let result = elements(&sent)[0].clone();
    assert!(result.is("result", ns::DIALBACK));
    assert_eq!(result.text(), key);
    assert_eq!(
        server
            .out
            .send_stanza(&message("a@outpost.example", "b@remote.example", "x")),
        Err(SendError::NotReady)
    );

    server.send("<db:result from='remote.example' to='outpost.example' type='valid'/>");
    assert!(server.events.contains(&Event::Ready {
        stream_management: false
    }));
    server
        .out
        .send_stanza(&message("a@outpost.example/x", "b@remote.example", "hello"))
        .expect("ready");
    let wire = server.out.take_output();
    let text = String::from_utf8_lossy(&wire);
    assert!(text.starts_with("<message xmlns='jabber:server'"), "{text}");
    assert!(text.contains("<body>hello</body>"), "{text}");
    // Without stream management there is nothing to request.
    assert!(!server.out.request_ack());
}

#[test]
fn dialback_key_is_written_with_the_db_prefix() {
    let (mut server, _) = RawServer::new(config());
    let mut c = config();
    c.allow_plaintext = true;
    let (mut plain, _) = RawServer::new(c);
    plain.send(&format!(
        "{}<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
        remote_header("p1", "xmlns:db='jabber:server:dialback'")
    ));
    plain.out.provide_dialback_key("k");
    let raw = plain.out.take_output();
    assert_eq!(
        String::from_utf8_lossy(&raw),
        "<db:result from='outpost.example' to='remote.example'>k</db:result>"
    );
    // Without TLS offered and plaintext not allowed, the outgoing side refuses to go on.
    let answer = server.send(&format!(
        "{}<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
        remote_header("p1", "xmlns:db='jabber:server:dialback'")
    ));
    assert_eq!(stream_error(&answer).as_deref(), Some("policy-violation"));
    assert!(
        server
            .events
            .iter()
            .any(|e| matches!(e, Event::AuthFailed { .. }))
    );
}

/// What ejabberd answers when our certificate is good: SASL EXTERNAL, then an empty
/// feature list (ejabberd has no stream management on s2s); a verification request rides
/// on the same stream.
#[test]
fn outgoing_to_ejabberd_like_server_uses_sasl_external_and_carries_verify() {
    let mut c = config();
    c.transport = Transport::DirectTls;
    let (mut server, _) = RawServer::new(c);
    server.out.send_dialback_verify("in-stream-7", "keykey");
    assert!(
        !server.out.has_output(),
        "verify waits for authentication to start"
    );
    let answer = server.send(&format!(
        "{}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
         <mechanism>EXTERNAL</mechanism></mechanisms>\
         <dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
        remote_header("e1", "xmlns:db='jabber:server:dialback'")
    ));
    let auth = elements(&answer)[0].clone();
    assert!(auth.is("auth", ns::SASL));
    assert_eq!(auth.attr("mechanism"), Some("EXTERNAL"));
    assert_eq!(auth.text(), B64.encode("outpost.example"));

    let answer = server.send("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    assert_eq!(header_of(&answer).to.as_deref(), Some("remote.example"));
    let answer = server.send(&format!(
        "{}<stream:features/>",
        remote_header("e2", "xmlns:db='jabber:server:dialback'")
    ));
    let verify = elements(&answer)[0].clone();
    assert!(verify.is("verify", ns::DIALBACK));
    assert_eq!(verify.attr("id"), Some("in-stream-7"));
    assert_eq!(verify.text(), "keykey");
    assert!(server.events.contains(&Event::Ready {
        stream_management: false
    }));
    server.send(
        "<db:verify from='remote.example' to='outpost.example' id='in-stream-7' \
         type='invalid'/>",
    );
    assert!(server.events.contains(&Event::VerifyResult {
        from: "remote.example".to_owned(),
        to: "outpost.example".to_owned(),
        id: "in-stream-7".to_owned(),
        valid: false,
    }));
}

#[test]
fn sasl_failure_falls_back_to_dialback() {
    let mut c = config();
    c.transport = Transport::DirectTls;
    let (mut server, _) = RawServer::new(c);
    server.send(&format!(
        "{}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
         <mechanism>EXTERNAL</mechanism></mechanisms>\
         <dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
        remote_header("e1", "xmlns:db='jabber:server:dialback'")
    ));
    server.send("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>");
    assert!(matches!(
        server.events.pop(),
        Some(Event::NeedDialbackKey { ref stream_id, .. }) if stream_id == "e1"
    ));
}

#[test]
fn peer_stream_error_is_reported_before_close() {
    let (mut server, _) = RawServer::new(config());
    let answer = server.send(&format!(
        "{}<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>no such host</text>\
         </stream:error></stream:stream>",
        remote_header("x", "xmlns:db='jabber:server:dialback'")
    ));
    assert!(answer.contains(&XmlEvent::StreamClose));
    assert!(server.events.contains(&Event::PeerStreamError {
        condition: "host-unknown".to_owned(),
        text: Some("no such host".to_owned()),
    }));
    assert_eq!(server.events.last(), Some(&Event::Closed { error: None }));
}

#[test]
fn acknowledging_more_than_was_sent_is_handled_count_too_high() {
    let mut c = config();
    c.transport = Transport::DirectTls;
    let (mut server, _) = RawServer::new(c);
    server.send(&format!(
        "{}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
         <mechanism>EXTERNAL</mechanism></mechanisms></stream:features>",
        remote_header("e1", "xmlns:db='jabber:server:dialback'")
    ));
    server.send("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    // Prosody offers both versions; we enable version 3.
    let answer = server.send(&format!(
        "{}<stream:features><sm xmlns='urn:xmpp:sm:2'/><sm xmlns='urn:xmpp:sm:3'/>\
         </stream:features>",
        remote_header("e2", "xmlns:db='jabber:server:dialback'")
    ));
    assert!(elements(&answer)[0].is("enable", ns::SM));
    server.send("<enabled xmlns='urn:xmpp:sm:3'/>");
    assert!(server.events.contains(&Event::Ready {
        stream_management: true
    }));
    server
        .out
        .send_stanza(&message("a@outpost.example", "b@remote.example", "1"))
        .expect("ready");
    let _ = server.out.take_output();
    server.send("<a xmlns='urn:xmpp:sm:3' h='1'/>");
    assert!(server.events.contains(&Event::Acked { h: 1 }));
    let answer = server.send("<a xmlns='urn:xmpp:sm:3' h='5'/>");
    assert_eq!(
        stream_error(&answer).as_deref(),
        Some("undefined-condition")
    );
    let error = elements(&answer)[0].clone();
    let too_high = error
        .get_child("handled-count-too-high", ns::SM)
        .expect("XEP-0198 condition");
    assert_eq!(too_high.attr("h"), Some("5"));
    assert_eq!(too_high.attr("send-count"), Some("1"));
}

#[test]
fn send_stanza_refuses_what_the_peer_would_reject() {
    let mut link = dialback_link();
    assert_eq!(
        link.out
            .send_stanza(&message("alice@elsewhere.example", "bob@b.example", "x")),
        Err(SendError::WrongAddress)
    );
    assert_eq!(
        link.out
            .send_stanza(&message("alice@a.example", "bob@c.example", "x")),
        Err(SendError::WrongAddress)
    );
    let not_a_stanza = Element::builder("thing", ns::CLIENT).build();
    assert_eq!(
        link.out.send_stanza(&not_a_stanza),
        Err(SendError::NotAStanza)
    );
    assert!(!link.out.has_output());
}

#[test]
fn stanzas_from_the_receiving_side_are_refused_without_bidi() {
    let (mut server, _) = RawServer::new({
        let mut c = config();
        c.allow_plaintext = true;
        c
    });
    server.send(&format!(
        "{}<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
        remote_header("p1", "xmlns:db='jabber:server:dialback'")
    ));
    server.out.provide_dialback_key("k");
    server.send("<db:result from='remote.example' to='outpost.example' type='valid'/>");
    let answer = server.send("<message from='x@remote.example' to='y@outpost.example'/>");
    assert_eq!(
        stream_error(&answer).as_deref(),
        Some("unsupported-stanza-type")
    );
}

/// Hostile and truncated input, fed in every chunk size, never panics either machine and
/// always ends in well-formed output.
#[test]
fn hostile_input_never_panics() {
    let header = prosody_header();
    let inputs = [
        format!("{header}<db:result/>"),
        format!("{header}<db:result from='' to=''>k</db:result>"),
        format!("{header}<db:verify from='a' to='outpost.example'>k</db:verify>"),
        format!("{header}<a xmlns='urn:xmpp:sm:3' h='-1'/><r xmlns='urn:xmpp:sm:3'/>"),
        format!(
            "{header}<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>!!</auth>"
        ),
        format!("{header}<stream:features><starttls/></stream:features>"),
        format!("{header}<message from='@@' to='\u{0}'/>"),
        format!(
            "{header}<message from='a@b' to='c@outpost.example'>{}</message>",
            "<x>".repeat(100)
        ),
        format!("{header}<stream:error/>"),
        format!("{header}</stream:stream><message/>"),
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'".to_owned(),
        "\u{feff}<?xml version='1.0' encoding='latin1'?>".to_owned(),
    ];
    for input in &inputs {
        for chunk in [1, 3, 7, 64, input.len().max(1)] {
            let mut c = config();
            c.allow_plaintext = true;
            let mut inc =
                S2sIncoming::new(c.clone(), vec!["outpost.example".to_owned()], "s".into());
            let mut out = S2sOutgoing::new(c, "outpost.example", "prosody.example");
            let _ = out.take_output();
            for piece in input.as_bytes().chunks(chunk) {
                inc.handle_input(piece);
                out.handle_input(piece);
                // Answer whatever is asked, as a careless server would.
                while let Some(ev) = inc.poll_event() {
                    if let Event::DialbackRequest { from, to, .. } = ev {
                        inc.dialback_result(&from, &to, DialbackVerdict::Error("bad-request"));
                    }
                }
                while let Some(ev) = out.poll_event() {
                    if let Event::NeedDialbackKey { .. } = ev {
                        out.provide_dialback_key("k");
                    }
                }
            }
            // Output parses: `parse` panics on anything ill-formed.
            let _ = parse(&inc.take_output());
            let _ = parse(&out.take_output());
        }
    }
}
