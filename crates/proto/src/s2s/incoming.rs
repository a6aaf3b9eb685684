//! The receiving entity of a server-to-server stream: a peer server connected to us.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use minidom::Element;

use super::common::{self, AckOutcome, DbElement, MAX_DOMAIN_PAIRS, Sm};
use super::{AuthMethod, DialbackVerdict, Event, S2sConfig, Transport};
use crate::machine::{Wire, stream_machine};
use crate::stanza::ns;
use crate::xml::{self, XmlEvent};

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the peer's stream header.
    AwaitHeader,
    /// `<proceed/>` sent; waiting for the server's TLS handshake.
    AwaitTls,
    /// Waiting for the server's verdict on the peer's certificate.
    AwaitCertificate,
    /// Header exchanged: negotiation, dialback and (once authenticated) stanzas.
    Open,
    Closed,
}

/// The receiving side of a server-to-server stream (RFC 6120 §4–§6, XEP-0220, XEP-0178,
/// XEP-0198). See the [module documentation](super) for the protocol it speaks.
pub struct S2sIncoming {
    config: S2sConfig,
    /// The domains we host, normalised.
    domains: Vec<String>,
    wire: Wire<Event>,
    phase: Phase,
    stream_id_seed: String,
    restarts: u32,
    /// The id of the stream we opened last: dialback keys are bound to it (XEP-0185).
    stream_id: String,
    /// The domain the peer's header addressed.
    local: String,
    /// The domain the peer's header claimed, if any.
    peer: Option<String>,
    secure: bool,
    header_sent: bool,
    /// The server said the peer's certificate is good for `peer`.
    cert_ok: bool,
    /// EXTERNAL was in the features we sent last.
    external_offered: bool,
    /// `<auth/>` came without an initial response; waiting for `<response/>`.
    sasl_awaiting_response: bool,
    sasl_done: bool,
    /// Authenticated (peer domain, local domain) pairs.
    authenticated: Vec<(String, String)>,
    /// `<db:result/>` pairs waiting for the server's verdict.
    pending_results: Vec<(String, String)>,
    /// `<db:verify/>` requests (from, to, id) waiting for the server's verdict.
    pending_verifies: Vec<(String, String, String)>,
    sm: Sm,
}

impl S2sIncoming {
    /// A stream accepted from a peer. `domains` are the domains we host (the first answers
    /// a header without `to`); `stream_id` must be unpredictable (RFC 6120 §4.7.3), because
    /// dialback keys are bound to it. Restarted streams use `{stream_id}-{n}`.
    pub fn new(config: S2sConfig, domains: Vec<String>, stream_id: String) -> Self {
        let domains: Vec<String> = domains
            .iter()
            .map(|d| common::parse_domain(d).unwrap_or_else(|| d.to_ascii_lowercase()))
            .collect();
        let secure = config.transport == Transport::DirectTls;
        S2sIncoming {
            wire: Wire::new(config.limits),
            config,
            local: domains.first().cloned().unwrap_or_default(),
            domains,
            phase: Phase::AwaitHeader,
            stream_id_seed: stream_id,
            restarts: 0,
            stream_id: String::new(),
            peer: None,
            secure,
            header_sent: false,
            cert_ok: false,
            external_offered: false,
            sasl_awaiting_response: false,
            sasl_done: false,
            authenticated: Vec::new(),
            pending_results: Vec::new(),
            pending_verifies: Vec::new(),
            sm: Sm::default(),
        }
    }

    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The id of the current stream (after the last restart).
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// The domain the peer claimed in its stream header, if any.
    pub fn peer_domain(&self) -> Option<&str> {
        self.peer.as_deref()
    }

    /// The authenticated (peer domain, local domain) pairs.
    pub fn authenticated(&self) -> &[(String, String)] {
        &self.authenticated
    }

    /// Answers [`Event::StartTls`]: the handshake finished, the peer starts a new stream.
    pub fn tls_established(&mut self) {
        if self.phase != Phase::AwaitTls {
            return;
        }
        self.secure = true;
        self.restart_stream();
        self.process();
    }

    /// Answers [`Event::CheckCertificate`]: whether the peer's certificate is good for the
    /// domain it claims, which decides whether SASL EXTERNAL is offered.
    pub fn certificate_checked(&mut self, valid: bool) {
        if self.phase != Phase::AwaitCertificate {
            return;
        }
        self.cert_ok = valid;
        self.phase = Phase::Open;
        self.send_features();
        self.process();
    }

    /// Answers [`Event::DialbackRequest`] for the pair (`from`, `to`) with the verdict of
    /// the authoritative server (XEP-0220 §2.1.4). An answer for a pair that is not
    /// pending is ignored.
    pub fn dialback_result(&mut self, from: &str, to: &str, verdict: DialbackVerdict) {
        if self.phase == Phase::Closed {
            return;
        }
        let Some(i) = self
            .pending_results
            .iter()
            .position(|(f, t)| f == from && t == to)
        else {
            return;
        };
        let (peer, local) = self.pending_results.swap_remove(i);
        let (kind, error) = match verdict {
            DialbackVerdict::Valid => ("valid", None),
            DialbackVerdict::Invalid => ("invalid", None),
            DialbackVerdict::Error(condition) => ("error", Some(condition)),
        };
        DbElement {
            name: "result",
            from: &local,
            to: &peer,
            id: None,
            kind: Some(kind),
            key: None,
            error,
        }
        .write(&mut self.wire.out);
        if verdict == DialbackVerdict::Valid {
            if !self.is_authenticated(&peer, &local) {
                self.authenticated.push((peer.clone(), local.clone()));
            }
            self.wire.events.push_back(Event::Authenticated {
                peer,
                local,
                method: AuthMethod::Dialback,
            });
        } else if self.authenticated.is_empty() && self.pending_results.is_empty() {
            // XEP-0220 §2.1.4 leaves the stream's fate to us after a failure: a stream that
            // has nothing authenticated and nothing pending is of no further use, and
            // closing it stops a peer from retrying keys on it.
            self.close(None, None);
        }
    }

    /// Answers [`Event::VerifyRequest`] (XEP-0220 §2.1.3): whether the key matches the one
    /// we generated for stream `id`. An answer for a request that is not pending is
    /// ignored.
    pub fn verify_result(&mut self, from: &str, to: &str, id: &str, valid: bool) {
        if self.phase == Phase::Closed {
            return;
        }
        let Some(i) = self
            .pending_verifies
            .iter()
            .position(|(f, t, i)| f == from && t == to && i == id)
        else {
            return;
        };
        let (peer, local, id) = self.pending_verifies.swap_remove(i);
        DbElement {
            name: "verify",
            from: &local,
            to: &peer,
            id: Some(&id),
            kind: Some(if valid { "valid" } else { "invalid" }),
            key: None,
            error: None,
        }
        .write(&mut self.wire.out);
    }

    /// Closes the stream, with a stream error condition (RFC 6120 §4.9.3) or cleanly.
    pub fn close(&mut self, error: Option<&'static str>, text: Option<&str>) {
        match error {
            Some(condition) => self.close_with(condition, &xml::stream_error(condition, text)),
            None => self.finish(None),
        }
    }

    fn close_with(&mut self, condition: &'static str, stream_error: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        // RFC 6120 §4.9.1.1: even an error needs an opened stream first.
        if !self.header_sent {
            self.send_header();
        }
        self.wire.out.extend_from_slice(stream_error.as_bytes());
        self.finish(Some(condition));
    }

    fn finish(&mut self, error: Option<&'static str>) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.header_sent {
            self.wire
                .out
                .extend_from_slice(xml::STREAM_CLOSE.as_bytes());
        }
        self.phase = Phase::Closed;
        self.wire.events.push_back(Event::Closed { error });
    }

    fn process(&mut self) {
        while self.phase == Phase::AwaitHeader || self.phase == Phase::Open {
            match self.wire.reader.next() {
                Ok(None) => break,
                Ok(Some(event)) => self.on_xml(event),
                Err(e) => self.close(Some(e.condition()), None),
            }
        }
    }

    fn on_xml(&mut self, event: XmlEvent) {
        match event {
            XmlEvent::StreamOpen(header) => self.on_header(header),
            XmlEvent::StreamClose => {
                // The peer closed its stream (RFC 6120 §4.4): close ours too.
                self.finish(None);
            }
            XmlEvent::Stanza(el) => {
                if self.phase == Phase::AwaitHeader {
                    self.close(Some("not-well-formed"), None);
                } else {
                    self.on_element(el);
                }
            }
        }
    }

    fn on_header(&mut self, header: xml::StreamHeader) {
        if self.phase != Phase::AwaitHeader {
            self.close(Some("not-well-formed"), None);
            return;
        }
        if let Some(to) = header.to.as_deref() {
            match common::parse_domain(to).filter(|d| self.domains.contains(d)) {
                Some(d) => self.local = d,
                None => {
                    self.close(Some("host-unknown"), None);
                    return;
                }
            }
        }
        match header.from.as_deref() {
            None => self.peer = None,
            Some(from) => match common::parse_domain(from) {
                Some(d) => self.peer = Some(d),
                None => {
                    self.close(Some("invalid-from"), None);
                    return;
                }
            },
        }
        self.send_header();
        if header.ns != ns::SERVER {
            self.close(Some("invalid-namespace"), None);
            return;
        }
        if !common::speaks_version(header.version.as_deref()) {
            self.close(Some("unsupported-version"), None);
            return;
        }
        if self.secure
            && self.config.sasl_external
            && !self.sasl_done
            && let Some(peer) = self.peer.clone()
        {
            self.phase = Phase::AwaitCertificate;
            self.wire
                .events
                .push_back(Event::CheckCertificate { domain: peer });
            return;
        }
        self.phase = Phase::Open;
        self.send_features();
    }

    fn send_header(&mut self) {
        self.restarts += 1;
        self.stream_id = format!("{}-{}", self.stream_id_seed, self.restarts);
        let header =
            common::stream_header(&self.local, self.peer.as_deref(), Some(&self.stream_id));
        self.wire.out.extend_from_slice(header.as_bytes());
        self.header_sent = true;
    }

    /// Whether anything but STARTTLS may happen yet (RFC 6120 §5.3.1: TLS is mandatory to
    /// negotiate unless the configuration allows plaintext).
    fn may_negotiate(&self) -> bool {
        self.secure || self.config.allow_plaintext
    }

    fn send_features(&mut self) {
        let mut children: Vec<Element> = Vec::new();
        self.external_offered = false;
        if !self.secure && self.config.transport == Transport::StartTls {
            let mut starttls = Element::builder("starttls", ns::TLS);
            if !self.config.allow_plaintext {
                starttls = starttls.append(Element::builder("required", ns::TLS).build());
            }
            children.push(starttls.build());
        }
        if self.may_negotiate() {
            if !self.sasl_done {
                if self.secure && self.cert_ok && self.config.sasl_external {
                    children.push(
                        Element::builder("mechanisms", ns::SASL)
                            .append(
                                Element::builder("mechanism", ns::SASL)
                                    .append("EXTERNAL")
                                    .build(),
                            )
                            .build(),
                    );
                    self.external_offered = true;
                }
                if self.config.dialback {
                    children.push(
                        Element::builder("dialback", ns::DIALBACK_FEATURE)
                            .append(Element::builder("errors", ns::DIALBACK_FEATURE).build())
                            .build(),
                    );
                    // A dialback stream is never restarted, so these are the only features
                    // its initiator sees: offer acknowledgements here, as Prosody does.
                    // `<enable/>` is still refused until a pair is authenticated (XEP-0198
                    // §3), which the initiator waits for.
                    if self.config.stream_management {
                        children.push(Element::builder("sm", ns::SM).build());
                    }
                }
            } else if self.config.stream_management {
                children.push(Element::builder("sm", ns::SM).build());
            }
        }
        // Written with the `stream:` prefix the header declares, as c2s does.
        self.wire.out.extend_from_slice(b"<stream:features>");
        for child in &children {
            let _ = xml::write_stanza(child, &mut self.wire.out);
        }
        self.wire.out.extend_from_slice(b"</stream:features>");
    }

    fn restart_stream(&mut self) {
        self.wire.reader.reset();
        self.header_sent = false;
        self.phase = Phase::AwaitHeader;
    }

    fn is_authenticated(&self, peer: &str, local: &str) -> bool {
        self.authenticated
            .iter()
            .any(|(p, l)| p == peer && l == local)
    }

    fn on_element(&mut self, el: Element) {
        let el_ns = el.ns();
        let name = el.name();
        if el_ns == xml::NS_STREAMS && name == "error" {
            let (condition, text) = common::peer_stream_error(&el);
            self.wire
                .events
                .push_back(Event::PeerStreamError { condition, text });
            self.finish(None);
            return;
        }
        if el_ns == ns::TLS && name == "starttls" {
            self.on_starttls();
            return;
        }
        if !self.may_negotiate() {
            self.close(Some("policy-violation"), Some("STARTTLS is required"));
            return;
        }
        match (el_ns.as_str(), name) {
            (ns::SASL, _) => self.on_sasl(&el),
            (ns::DIALBACK, "result") => self.on_db_result(&el),
            (ns::DIALBACK, "verify") => self.on_db_verify(&el),
            (ns::SM, _) => self.on_sm(&el),
            _ if common::is_stanza(&el, ns::SERVER) => self.on_stanza(el),
            // RFC 6120 §4.8.3: a server stream's content namespace is jabber:server.
            _ if common::is_stanza(&el, ns::CLIENT) => {
                self.close(Some("invalid-namespace"), None);
            }
            // RFC 6120 §4.9.3.22: a first-level element we do not support here.
            _ => self.close(Some("unsupported-stanza-type"), None),
        }
    }

    fn on_starttls(&mut self) {
        if self.secure || self.config.transport != Transport::StartTls {
            self.close(Some("policy-violation"), Some("TLS is already in use"));
            return;
        }
        // CVE-2011-0411: plaintext sent after <starttls/> must not leak into the TLS stream.
        if !self.wire.reader.buffered_is_whitespace() {
            self.close(Some("policy-violation"), Some("data after starttls"));
            return;
        }
        let _ = xml::write_stanza(
            &Element::builder("proceed", ns::TLS).build(),
            &mut self.wire.out,
        );
        self.phase = Phase::AwaitTls;
        self.wire.events.push_back(Event::StartTls);
    }

    fn on_sasl(&mut self, el: &Element) {
        match el.name() {
            "auth" => {
                if !self.external_offered || el.attr("mechanism") != Some("EXTERNAL") {
                    self.sasl_failure("invalid-mechanism");
                    return;
                }
                let text = el.text();
                if text.trim().is_empty() {
                    // RFC 6120 §6.4.2: no initial response; ask for it with an empty
                    // challenge.
                    self.sasl_awaiting_response = true;
                    self.send_sasl("challenge", "=");
                    return;
                }
                self.sasl_external(&text);
            }
            "response" if self.sasl_awaiting_response => {
                self.sasl_awaiting_response = false;
                self.sasl_external(&el.text());
            }
            "abort" => {
                self.sasl_awaiting_response = false;
                self.sasl_failure("aborted");
            }
            _ => self.sasl_failure("malformed-request"),
        }
    }

    /// Checks an EXTERNAL response: empty (`=`) or an authorization identity equal to the
    /// domain whose certificate the server accepted (XEP-0178 §2, RFC 6120 §6.4.6).
    fn sasl_external(&mut self, text: &str) {
        let text = text.trim();
        let authzid = if text == "=" {
            Vec::new()
        } else {
            match B64.decode(text) {
                Ok(bytes) => bytes,
                Err(_) => {
                    self.sasl_failure("incorrect-encoding");
                    return;
                }
            }
        };
        let Some(peer) = self.peer.clone() else {
            self.sasl_failure("not-authorized");
            return;
        };
        if !authzid.is_empty() {
            let claimed = std::str::from_utf8(&authzid)
                .ok()
                .and_then(common::parse_domain);
            if claimed.as_deref() != Some(peer.as_str()) {
                self.sasl_failure("invalid-authzid");
                return;
            }
        }
        let _ = xml::write_stanza(
            &Element::builder("success", ns::SASL).build(),
            &mut self.wire.out,
        );
        self.sasl_done = true;
        let local = self.local.clone();
        if !self.is_authenticated(&peer, &local) {
            self.authenticated.push((peer.clone(), local.clone()));
        }
        self.wire.events.push_back(Event::Authenticated {
            peer,
            local,
            method: AuthMethod::SaslExternal,
        });
        // RFC 6120 §6.4.6: the initiating entity opens a new stream after success.
        self.restart_stream();
    }

    fn send_sasl(&mut self, name: &str, text: &str) {
        let el = Element::builder(name, ns::SASL).append(text).build();
        let _ = xml::write_stanza(&el, &mut self.wire.out);
    }

    fn sasl_failure(&mut self, condition: &str) {
        let el = Element::builder("failure", ns::SASL)
            .append(Element::builder(condition, ns::SASL).build())
            .build();
        let _ = xml::write_stanza(&el, &mut self.wire.out);
    }

    /// Reads `from` and `to` of a dialback element: `from` a bare domain, `to` as given.
    fn db_addresses(&mut self, el: &Element) -> Option<(String, String)> {
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            // RFC 6120 §4.9.3.7: an element between servers without both addresses.
            self.close(Some("improper-addressing"), None);
            return None;
        };
        let Some(from) = common::parse_domain(from) else {
            self.close(Some("invalid-from"), None);
            return None;
        };
        let to = common::parse_domain(to).unwrap_or_else(|| to.to_owned());
        Some((from, to))
    }

    /// `<db:result from to>KEY</db:result>` (XEP-0220 §2.1.1).
    fn on_db_result(&mut self, el: &Element) {
        if !self.config.dialback || el.attr("type").is_some() {
            // Dialback is not offered, or this is a verdict, which only ever travels towards
            // the originating server, never to us.
            self.close(Some("unsupported-stanza-type"), None);
            return;
        }
        let Some((from, to)) = self.db_addresses(el) else {
            return;
        };
        if !self.domains.contains(&to) {
            // XEP-0220 §2.4: a domain we do not serve is a dialback error, which leaves
            // other domains on this stream alone.
            DbElement {
                name: "result",
                from: &to,
                to: &from,
                id: None,
                kind: Some("error"),
                key: None,
                error: Some("item-not-found"),
            }
            .write(&mut self.wire.out);
            return;
        }
        if self
            .pending_results
            .iter()
            .any(|(f, t)| *f == from && *t == to)
        {
            // Already being verified; the verdict will answer this one too.
            return;
        }
        if self.pending_results.len() + self.authenticated.len() >= MAX_DOMAIN_PAIRS {
            self.close(Some("policy-violation"), Some("too many domains"));
            return;
        }
        let key = el.text().trim().to_owned();
        self.pending_results.push((from.clone(), to.clone()));
        if key.is_empty() {
            self.dialback_result(&from, &to, DialbackVerdict::Invalid);
            return;
        }
        self.wire.events.push_back(Event::DialbackRequest {
            from,
            to,
            key,
            stream_id: self.stream_id.clone(),
        });
    }

    /// `<db:verify from to id>KEY</db:verify>` (XEP-0220 §2.1.3): we are the authoritative
    /// server for `to`.
    fn on_db_verify(&mut self, el: &Element) {
        if !self.config.dialback || el.attr("type").is_some() {
            self.close(Some("unsupported-stanza-type"), None);
            return;
        }
        let Some((from, to)) = self.db_addresses(el) else {
            return;
        };
        let Some(id) = el.attr("id").map(str::to_owned) else {
            self.close(Some("bad-format"), Some("db:verify without id"));
            return;
        };
        if !self.domains.contains(&to) {
            DbElement {
                name: "verify",
                from: &to,
                to: &from,
                id: Some(&id),
                kind: Some("error"),
                key: None,
                error: Some("item-not-found"),
            }
            .write(&mut self.wire.out);
            return;
        }
        if self.pending_verifies.len() >= MAX_DOMAIN_PAIRS {
            self.close(Some("policy-violation"), Some("too many verifications"));
            return;
        }
        let key = el.text().trim().to_owned();
        self.pending_verifies
            .push((from.clone(), to.clone(), id.clone()));
        self.wire
            .events
            .push_back(Event::VerifyRequest { from, to, id, key });
    }

    fn on_sm(&mut self, el: &Element) {
        match el.name() {
            "enable" => {
                if !self.config.stream_management
                    || self.authenticated.is_empty()
                    || self.sm.enabled
                {
                    // XEP-0198 §3: enabling before authentication, twice, or where it is
                    // not offered fails without ending the stream.
                    let failed = Element::builder("failed", ns::SM)
                        .append(Element::builder("unexpected-request", ns::STANZAS).build())
                        .build();
                    let _ = xml::write_stanza(&failed, &mut self.wire.out);
                    return;
                }
                // No `id` or `resume`: resumption is not offered (XEP-0198 §5).
                let _ = xml::write_stanza(
                    &Element::builder("enabled", ns::SM).build(),
                    &mut self.wire.out,
                );
                self.sm = Sm {
                    enabled: true,
                    ..Sm::default()
                };
            }
            "r" if self.sm.enabled => {
                let answer = self.sm.answer();
                self.wire.out.extend_from_slice(answer.as_bytes());
            }
            "a" if self.sm.enabled => match self.sm.on_ack(el) {
                AckOutcome::Nothing | AckOutcome::Acked(_) => {}
                AckOutcome::Malformed => self.close(Some("bad-format"), Some("bad h")),
                AckOutcome::TooHigh { h, sent } => self.close_with(
                    "undefined-condition",
                    &common::stream_error_with(
                        "undefined-condition",
                        &common::handled_count_too_high(h, sent),
                    ),
                ),
            },
            _ => self.close(Some("unsupported-stanza-type"), None),
        }
    }

    fn on_stanza(&mut self, el: Element) {
        if self.authenticated.is_empty() {
            self.close(Some("not-authorized"), None);
            return;
        }
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            self.close(Some("improper-addressing"), None);
            return;
        };
        let Some(from_domain) = common::jid_domain(from) else {
            self.close(Some("invalid-from"), None);
            return;
        };
        let Some(to_domain) = common::jid_domain(to) else {
            self.close(Some("improper-addressing"), Some("malformed to"));
            return;
        };
        if !self.domains.contains(&to_domain) {
            // A hub forwards between the domains it relays for (see "Relaying").
            let relay = &self.config.relay.relay_for;
            let relayed = relay.contains(&from_domain)
                && relay.contains(&to_domain)
                && from_domain != to_domain
                && self.authenticated.iter().any(|(p, _)| *p == from_domain);
            if !relayed {
                self.close(Some("host-unknown"), None);
                return;
            }
        } else if !self.is_authenticated(&from_domain, &to_domain) {
            // A trusted hub speaks for other domains, never for ours.
            let via_hub = !self.domains.contains(&from_domain)
                && (self.config.relay.trusted_hubs.iter())
                    .any(|hub| self.is_authenticated(hub, &to_domain));
            if !via_hub {
                self.close(Some("invalid-from"), None);
                return;
            }
        }
        if self.sm.enabled {
            self.sm.inbound = self.sm.inbound.wrapping_add(1);
        }
        let el = common::renamespace(el, ns::SERVER, ns::CLIENT);
        self.wire.events.push_back(Event::Stanza(el));
    }
}

stream_machine!(S2sIncoming, Event);
