//! The initiating entity of a server-to-server stream: we connected to a peer.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use minidom::Element;

use super::common::{self, AckOutcome, DbElement, Sm};
use super::{AuthMethod, Event, S2sConfig, SendError, Transport};
use crate::machine::{Wire, stream_machine};
use crate::stanza::ns;
use crate::xml::{self, XmlEvent};

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Phase {
    /// Our header is out; waiting for the peer's.
    AwaitHeader,
    AwaitFeatures,
    /// `<starttls/>` sent.
    AwaitProceed,
    /// The peer said `<proceed/>`; waiting for the server's TLS handshake.
    AwaitTls,
    /// `<auth mechanism='EXTERNAL'/>` sent.
    AwaitSasl,
    /// Waiting for the server to compute the dialback key.
    AwaitKey,
    /// `<db:result/>` sent; waiting for the verdict.
    AwaitDialback,
    /// `<enable/>` sent.
    AwaitEnabled,
    /// Authenticated: stanzas flow.
    Ready,
    Closed,
}

/// What the peer's last `<stream:features/>` offered.
#[derive(Debug, Default, Clone, Copy)]
struct Offered {
    starttls: bool,
    external: bool,
    dialback: bool,
    sm: bool,
}

/// The initiating side of a server-to-server stream for one (local, remote) domain pair
/// (RFC 6120 §4–§6, XEP-0220, XEP-0178, XEP-0198). See the [module documentation](super).
pub struct S2sOutgoing {
    config: S2sConfig,
    local: String,
    remote: String,
    wire: Wire<Event>,
    phase: Phase,
    secure: bool,
    /// The id of the peer's current stream, which dialback keys are bound to.
    stream_id: Option<String>,
    offered: Offered,
    authenticated: Option<AuthMethod>,
    sasl_failed: bool,
    /// `db:verify` requests (id, key) not yet written.
    verify_queue: Vec<(String, String)>,
    /// Ids of `db:verify` requests written and not yet answered.
    verifies_sent: Vec<String>,
    sm: Sm,
}

impl S2sOutgoing {
    /// A stream from our domain `local` to the peer `remote`, on a connection that is open
    /// (and, for [`Transport::DirectTls`], already encrypted). Our stream header is in the
    /// output at once: the initiating entity speaks first (RFC 6120 §4.2).
    pub fn new(config: S2sConfig, local: &str, remote: &str) -> Self {
        let local = common::parse_domain(local).unwrap_or_else(|| local.to_ascii_lowercase());
        let remote = common::parse_domain(remote).unwrap_or_else(|| remote.to_ascii_lowercase());
        let secure = config.transport == Transport::DirectTls;
        let mut s = S2sOutgoing {
            wire: Wire::new(config.limits),
            config,
            local,
            remote,
            phase: Phase::AwaitHeader,
            secure,
            stream_id: None,
            offered: Offered::default(),
            authenticated: None,
            sasl_failed: false,
            verify_queue: Vec::new(),
            verifies_sent: Vec::new(),
            sm: Sm::default(),
        };
        s.send_header();
        s
    }

    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// Whether [`S2sOutgoing::send_stanza`] will accept stanzas.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// How the stream authenticated, once it has.
    pub fn auth_method(&self) -> Option<AuthMethod> {
        self.authenticated
    }

    /// Whether XEP-0198 acknowledgements are enabled.
    pub fn stream_management(&self) -> bool {
        self.sm.enabled
    }

    pub fn local(&self) -> &str {
        &self.local
    }

    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// The id the peer gave its current stream.
    pub fn stream_id(&self) -> Option<&str> {
        self.stream_id.as_deref()
    }

    /// Answers [`Event::StartTls`]: the handshake finished; we open a new stream over TLS
    /// (RFC 6120 §5.4.3.3).
    pub fn tls_established(&mut self) {
        if self.phase != Phase::AwaitTls {
            return;
        }
        self.secure = true;
        self.restart_stream();
        self.process();
    }

    /// Answers [`Event::NeedDialbackKey`] with the key from [`super::dialback_key`], which
    /// is sent as `<db:result/>` (XEP-0220 §2.1.1).
    pub fn provide_dialback_key(&mut self, key: &str) {
        if self.phase != Phase::AwaitKey {
            return;
        }
        DbElement {
            name: "result",
            from: &self.local,
            to: &self.remote,
            id: None,
            kind: None,
            key: Some(key),
            error: None,
        }
        .write(&mut self.wire.out);
        self.phase = Phase::AwaitDialback;
        self.flush_verifies();
        self.process();
    }

    /// Asks the peer, as the authoritative server for its domain, whether `key` is the one
    /// it sent us on the incoming stream `id` (XEP-0220 §2.1.2). The answer comes as
    /// [`Event::VerifyResult`]. Requests wait until the stream is secured and its own
    /// authentication is under way, then go out in order.
    pub fn send_dialback_verify(&mut self, id: &str, key: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        self.verify_queue.push((id.to_owned(), key.to_owned()));
        self.flush_verifies();
    }

    /// Writes a `jabber:client` stanza in `jabber:server`. Its `from` must be at our local
    /// domain and its `to` at the remote one. Returns its sequence number on this stream,
    /// which [`Event::Acked`] refers to when stream management is enabled.
    pub fn send_stanza(&mut self, el: &Element) -> Result<u32, SendError> {
        match self.phase {
            Phase::Ready => {}
            Phase::Closed => return Err(SendError::Closed),
            _ => return Err(SendError::NotReady),
        }
        if !common::is_stanza(el, ns::CLIENT) {
            return Err(SendError::NotAStanza);
        }
        let from = el.attr("from").and_then(common::jid_domain);
        let to = el.attr("to").and_then(common::jid_domain);
        let addressed = if self.config.relay.outgoing {
            // Through a hub: any sender and destination, as long as both are there.
            from.is_some() && to.is_some()
        } else {
            from.as_deref() == Some(self.local.as_str()) && to.as_deref() == Some(&self.remote)
        };
        if !addressed {
            return Err(SendError::WrongAddress);
        }
        let wire = common::renamespace(el.clone(), ns::CLIENT, ns::SERVER);
        xml::write_stanza(&wire, &mut self.wire.out).map_err(SendError::Unserialisable)?;
        self.sm.outbound = self.sm.outbound.wrapping_add(1);
        Ok(self.sm.outbound)
    }

    /// Asks the peer to acknowledge what it has handled (`<r/>`, XEP-0198 §4). Returns
    /// whether a request was written: only when stream management is enabled.
    pub fn request_ack(&mut self) -> bool {
        if !self.sm.enabled || self.phase == Phase::Closed {
            return false;
        }
        self.wire
            .out
            .extend_from_slice(format!("<r xmlns='{}'/>", ns::SM).as_bytes());
        true
    }

    /// Closes the stream, with a stream error condition (RFC 6120 §4.9.3) or cleanly.
    pub fn close(&mut self, error: Option<&'static str>, text: Option<&str>) {
        if self.phase == Phase::Closed {
            return;
        }
        if let Some(condition) = error {
            self.wire
                .out
                .extend_from_slice(xml::stream_error(condition, text).as_bytes());
        }
        self.finish(error);
    }

    fn finish(&mut self, error: Option<&'static str>) {
        if self.phase == Phase::Closed {
            return;
        }
        self.wire
            .out
            .extend_from_slice(xml::STREAM_CLOSE.as_bytes());
        self.phase = Phase::Closed;
        self.wire.events.push_back(Event::Closed { error });
    }

    /// Authentication failed: report why and close.
    fn fail(&mut self, reason: &str, error: Option<&'static str>) {
        self.wire.events.push_back(Event::AuthFailed {
            reason: reason.to_owned(),
        });
        self.close(error, Some(reason).filter(|_| error.is_some()));
    }

    fn send_header(&mut self) {
        let header = common::stream_header(&self.local, Some(&self.remote), None);
        self.wire.out.extend_from_slice(header.as_bytes());
    }

    fn restart_stream(&mut self) {
        self.wire.reader.reset();
        self.stream_id = None;
        self.offered = Offered::default();
        self.phase = Phase::AwaitHeader;
        self.send_header();
    }

    fn process(&mut self) {
        while !matches!(
            self.phase,
            Phase::AwaitTls | Phase::AwaitKey | Phase::Closed
        ) {
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
                if self.phase != Phase::Ready && self.authenticated.is_none() {
                    self.wire.events.push_back(Event::AuthFailed {
                        reason: "the peer closed the stream".to_owned(),
                    });
                }
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
        if header.ns != ns::SERVER {
            self.close(Some("invalid-namespace"), None);
            return;
        }
        if !common::speaks_version(header.version.as_deref()) {
            self.close(Some("unsupported-version"), None);
            return;
        }
        // The header's `from` is not checked: who the peer is gets proven by its
        // certificate or by dialback, which the server ties to the domain it dialled.
        self.stream_id = header.id.filter(|id| !id.is_empty());
        self.phase = Phase::AwaitFeatures;
    }

    fn on_element(&mut self, el: Element) {
        let el_ns = el.ns();
        let name = el.name();
        match (el_ns.as_str(), name, self.phase) {
            (xml::NS_STREAMS, "error", _) => {
                let (condition, text) = common::peer_stream_error(&el);
                if self.authenticated.is_none() {
                    self.wire.events.push_back(Event::AuthFailed {
                        reason: format!("stream error: {condition}"),
                    });
                }
                self.wire
                    .events
                    .push_back(Event::PeerStreamError { condition, text });
                self.finish(None);
            }
            (xml::NS_STREAMS, "features", Phase::AwaitFeatures) => self.on_features(&el),
            (ns::TLS, "proceed", Phase::AwaitProceed) => {
                // CVE-2011-0411, the other way round: plaintext the peer (or someone in
                // the path) sent after <proceed/> must not pass for data received over TLS.
                if !self.wire.reader.buffered_is_whitespace() {
                    self.close(Some("policy-violation"), Some("data after proceed"));
                    return;
                }
                self.phase = Phase::AwaitTls;
                self.wire.events.push_back(Event::StartTls);
            }
            (ns::TLS, "failure", Phase::AwaitProceed) => {
                // RFC 6120 §5.4.2.2: the receiving entity closes the stream after this.
                self.fail("the peer refused STARTTLS", None);
            }
            (ns::SASL, "success", Phase::AwaitSasl) => {
                self.authenticated = Some(AuthMethod::SaslExternal);
                self.wire.events.push_back(Event::Authenticated {
                    peer: self.remote.clone(),
                    local: self.local.clone(),
                    method: AuthMethod::SaslExternal,
                });
                // RFC 6120 §6.4.6: after success the initiating entity opens a new stream.
                self.restart_stream();
            }
            (ns::SASL, "challenge", Phase::AwaitSasl) => {
                // EXTERNAL has nothing more to say than the (empty) response.
                let el = Element::builder("response", ns::SASL).append("=").build();
                let _ = xml::write_stanza(&el, &mut self.wire.out);
            }
            (ns::SASL, "failure", Phase::AwaitSasl) => {
                // XEP-0178 §3: when EXTERNAL fails, fall back to dialback if offered.
                self.sasl_failed = true;
                if self.offered.dialback && self.config.dialback {
                    self.start_dialback();
                } else {
                    self.fail("SASL EXTERNAL failed", None);
                }
            }
            (ns::DIALBACK, "result", Phase::AwaitDialback) => self.on_db_result(&el),
            (ns::DIALBACK, "verify", _) => self.on_db_verify(&el),
            (ns::SM, "enabled", Phase::AwaitEnabled) => {
                self.sm = Sm {
                    enabled: true,
                    ..Sm::default()
                };
                self.ready();
            }
            (ns::SM, "failed", Phase::AwaitEnabled) => self.ready(),
            (ns::SM, "a", _) if self.sm.enabled => match self.sm.on_ack(&el) {
                AckOutcome::Nothing => {}
                AckOutcome::Acked(h) => self.wire.events.push_back(Event::Acked { h }),
                AckOutcome::Malformed => self.close(Some("bad-format"), Some("bad h")),
                AckOutcome::TooHigh { h, sent } => {
                    self.wire.out.extend_from_slice(
                        common::stream_error_with(
                            "undefined-condition",
                            &common::handled_count_too_high(h, sent),
                        )
                        .as_bytes(),
                    );
                    self.finish(Some("undefined-condition"));
                }
            },
            (ns::SM, "r", _) if self.sm.enabled => {
                let answer = self.sm.answer();
                self.wire.out.extend_from_slice(answer.as_bytes());
            }
            // RFC 6120 §4.9.3.22. This includes stanzas: without XEP-0288 a stream carries
            // stanzas only from the initiating entity.
            _ => self.close(Some("unsupported-stanza-type"), None),
        }
    }

    fn on_features(&mut self, features: &Element) {
        self.offered = Offered {
            starttls: features.has_child("starttls", ns::TLS),
            external: features.get_child("mechanisms", ns::SASL).is_some_and(|m| {
                m.children()
                    .any(|c| c.is("mechanism", ns::SASL) && c.text().trim() == "EXTERNAL")
            }),
            dialback: features.has_child("dialback", ns::DIALBACK_FEATURE),
            sm: features.has_child("sm", ns::SM),
        };
        if !self.secure {
            if self.offered.starttls && self.config.transport == Transport::StartTls {
                let el = Element::builder("starttls", ns::TLS).build();
                let _ = xml::write_stanza(&el, &mut self.wire.out);
                self.phase = Phase::AwaitProceed;
                return;
            }
            if !self.config.allow_plaintext {
                // RFC 6120 §5.3.1: our policy makes TLS mandatory to negotiate.
                self.fail("the peer does not offer STARTTLS", Some("policy-violation"));
                return;
            }
        }
        if self.authenticated.is_some() {
            self.after_auth();
            return;
        }
        if self.offered.external && self.config.sasl_external && self.secure && !self.sasl_failed {
            // XEP-0178 §2: the authorization identity is our domain, as Prosody and
            // ejabberd send it.
            let el = Element::builder("auth", ns::SASL)
                .attr(crate::stanza::name("mechanism"), "EXTERNAL")
                .append(B64.encode(self.local.as_bytes()))
                .build();
            let _ = xml::write_stanza(&el, &mut self.wire.out);
            self.phase = Phase::AwaitSasl;
            return;
        }
        if self.offered.dialback && self.config.dialback {
            self.start_dialback();
            return;
        }
        self.fail("no usable authentication method", None);
    }

    fn start_dialback(&mut self) {
        let Some(stream_id) = self.stream_id.clone() else {
            // XEP-0220 §2.1.1: the key is bound to the stream id, which the peer must send.
            self.fail("the peer sent no stream id", Some("undefined-condition"));
            return;
        };
        self.phase = Phase::AwaitKey;
        self.wire.events.push_back(Event::NeedDialbackKey {
            local: self.local.clone(),
            remote: self.remote.clone(),
            stream_id,
        });
    }

    /// `<db:result type='valid|invalid|error'/>` for our request (XEP-0220 §2.1.4).
    fn on_db_result(&mut self, el: &Element) {
        let from = el.attr("from").and_then(common::parse_domain);
        let to = el.attr("to").and_then(common::parse_domain);
        if from.as_deref() != Some(self.remote.as_str()) || to.as_deref() != Some(&self.local) {
            // A verdict for a pair we did not ask about decides nothing.
            self.close(
                Some("invalid-from"),
                Some("dialback verdict for another domain"),
            );
            return;
        }
        match el.attr("type") {
            Some("valid") => {
                self.authenticated = Some(AuthMethod::Dialback);
                self.wire.events.push_back(Event::Authenticated {
                    peer: self.remote.clone(),
                    local: self.local.clone(),
                    method: AuthMethod::Dialback,
                });
                self.after_auth();
            }
            Some("error") => {
                let condition = dialback_error(el);
                self.fail(&format!("dialback error: {condition}"), None);
            }
            _ => self.fail("dialback key rejected", None),
        }
    }

    /// `<db:verify type='valid|invalid|error'/>` answering one of ours (XEP-0220 §2.1.3).
    fn on_db_verify(&mut self, el: &Element) {
        let Some(id) = el.attr("id") else {
            self.close(Some("bad-format"), Some("db:verify without id"));
            return;
        };
        let Some(i) = self.verifies_sent.iter().position(|sent| sent == id) else {
            // An answer to nothing we asked (or a request, which belongs on a stream the
            // peer opened): nothing to act on.
            self.close(Some("unsupported-stanza-type"), None);
            return;
        };
        let id = self.verifies_sent.swap_remove(i);
        let from = el
            .attr("from")
            .and_then(common::parse_domain)
            .unwrap_or_default();
        let to = el
            .attr("to")
            .and_then(common::parse_domain)
            .unwrap_or_default();
        // Only the peer's own verdict about a key we showed it counts.
        let valid = el.attr("type") == Some("valid") && from == self.remote && to == self.local;
        self.wire.events.push_back(Event::VerifyResult {
            from,
            to,
            id,
            valid,
        });
    }

    fn after_auth(&mut self) {
        self.flush_verifies();
        if self.offered.sm && self.config.stream_management {
            let el = Element::builder("enable", ns::SM).build();
            let _ = xml::write_stanza(&el, &mut self.wire.out);
            self.phase = Phase::AwaitEnabled;
        } else {
            self.ready();
        }
    }

    fn ready(&mut self) {
        self.phase = Phase::Ready;
        self.wire.events.push_back(Event::Ready {
            stream_management: self.sm.enabled,
        });
        self.flush_verifies();
    }

    /// Writes queued `db:verify` requests once the stream is past TLS and its own
    /// authentication has begun, so no stream restart can swallow them.
    fn flush_verifies(&mut self) {
        if !matches!(
            self.phase,
            Phase::AwaitDialback | Phase::AwaitEnabled | Phase::Ready
        ) {
            return;
        }
        for (id, key) in std::mem::take(&mut self.verify_queue) {
            DbElement {
                name: "verify",
                from: &self.local,
                to: &self.remote,
                id: Some(&id),
                kind: None,
                key: Some(&key),
                error: None,
            }
            .write(&mut self.wire.out);
            self.verifies_sent.push(id);
        }
    }
}

/// The condition inside a dialback error (XEP-0220 §2.4).
fn dialback_error(el: &Element) -> String {
    el.children()
        .filter(|c| c.name() == "error")
        .flat_map(|e| e.children())
        .find(|c| c.ns() == ns::STANZAS && c.name() != "text")
        .map(|c| c.name().to_owned())
        .unwrap_or_else(|| "undefined-condition".to_owned())
}

stream_machine!(S2sOutgoing, Event);
