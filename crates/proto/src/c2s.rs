//! The client-to-server stream state machine (RFC 6120 §4–§7), sans IO.
//!
//! [`C2sStream`] takes the bytes a client sends
//! ([`handle_input`](crate::StreamMachine::handle_input)) and produces the bytes to send back
//! ([`take_output`](crate::StreamMachine::take_output)) and [`Event`]s for the server: the
//! moments it must act (run the TLS handshake, fetch a user's SCRAM keys, approve a
//! resource) and, once a resource is bound, every stanza the client sends, with `from`
//! stamped.
//!
//! While an event that needs an answer is outstanding (`NeedCredentials`, `BindRequest`),
//! the machine stops consuming input: what arrives meanwhile stays buffered and is
//! processed after the answer, so the order of the client's requests is kept. `StartTls` is
//! the exception: plaintext that arrives before the handshake is dropped with the old
//! stream, never read as if it came over TLS (RFC 6120 §5.4.3.3).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jid::{BareJid, FullJid};
use minidom::Element;

use crate::machine::{Wire, stream_machine};
use crate::sasl::{self, ScramHash, ScramKeys, ScramServer};
use crate::sm::{AckError, StreamManagement};
use crate::stanza::{self, Condition, StanzaError, ns};
use crate::xml::{self, Limits, XmlEvent};

/// Failed resource binds allowed on one stream (RFC 6120 §7.7.3 suggests 5 to 10).
const MAX_BIND_ATTEMPTS: u32 = 5;

/// How the connection was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP that may be upgraded with STARTTLS.
    StartTls,
    /// TLS from the first byte (XEP-0368).
    DirectTls,
}

/// What the server tells the state machine about its policy.
#[derive(Clone, Debug)]
pub struct C2sConfig {
    /// The domains this server hosts; the first answers a stream without `to`.
    pub domains: Vec<String>,
    pub transport: Transport,
    /// Allow SASL on a connection that is not encrypted (testing on loopback only).
    pub allow_plaintext_auth: bool,
    /// Advertise and accept in-band registration (XEP-0077) before authentication.
    pub registration: bool,
    pub limits: Limits,
    /// Failed SASL attempts allowed on one stream before it is closed.
    pub max_auth_attempts: u32,
    /// Offer stream management (XEP-0198) and client state indication (XEP-0352).
    pub stream_management: bool,
}

/// Something the server must know or do.
#[derive(Debug)]
pub enum Event {
    /// The client asked for TLS and `<proceed/>` is in the output. Write the output, run the
    /// TLS handshake on the socket, then call [`C2sStream::tls_established`].
    StartTls,
    /// SASL needs the stored keys of `username` at `domain`; answer with
    /// [`C2sStream::provide_credentials`].
    NeedCredentials { username: String, domain: String },
    /// SASL succeeded.
    Authenticated { user: BareJid },
    /// SASL failed; the client may try again (for throttling and logs).
    AuthFailed {
        username: Option<String>,
        condition: &'static str,
    },
    /// An IQ before authentication (XEP-0077 registration); answer it with
    /// [`C2sStream::send`]. The stanza has no `from`.
    PreAuthIq(Element),
    /// The client wants a resource; answer with [`C2sStream::bind_result`].
    /// `resource` is `None` when the client leaves the choice to the server.
    BindRequest { resource: Option<String> },
    /// The client is bound as this full JID; stanzas follow.
    Bound { jid: FullJid },
    /// A stanza from the bound client, with `from` set to its full JID.
    Stanza(Element),
    /// The client asks for stream management (XEP-0198 §3), with resumption if `resume`;
    /// answer with [`C2sStream::sm_enabled`].
    SmEnable { resume: bool, max: Option<u32> },
    /// The client, authenticated but not bound, asks to resume the managed stream
    /// `previd`, having received `h` stanzas on it (XEP-0198 §5); answer with
    /// [`C2sStream::sm_resumed`] or [`C2sStream::sm_resume_failed`].
    SmResume { previd: String, h: u32 },
    /// The client says it is active (`true`) or inactive (XEP-0352 §3).
    ClientState { active: bool },
    /// The stream ended: the client closed it, or an error closed it (the stream error is
    /// already in the output). No more input will be processed.
    Closed {
        error: Option<&'static str>,
        /// Why, in words (the stream error's `<text/>`): what the limit was, what did not
        /// parse.
        text: Option<String>,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the client's stream header.
    AwaitHeader,
    /// Header exchanged; negotiating features.
    Negotiating,
    /// Waiting for the server: TLS handshake, credentials, or bind approval.
    Blocked,
    /// Resource bound: stanzas flow.
    Session,
    Closed,
}

enum Sasl {
    None,
    Scram(Box<ScramServer>),
    /// Waiting for keys to check a PLAIN password.
    Plain {
        password: String,
    },
    /// SCRAM server-first sent; waiting for the client's final message.
    ScramFinal(Box<ScramServer>),
}

pub struct C2sStream {
    config: C2sConfig,
    wire: Wire<Event>,
    phase: Phase,
    stream_id_seed: String,
    restarts: u32,
    /// The domain the client addressed.
    domain: String,
    secure: bool,
    header_sent: bool,
    sasl: Sasl,
    sasl_user: Option<String>,
    auth_failures: u32,
    user: Option<BareJid>,
    jid: Option<FullJid>,
    bind_id: Option<String>,
    bind_failures: u32,
    /// Stream management, once the client enabled it (or resumed).
    sm: Option<Box<StreamManagement>>,
    /// The server's clock as it last said, for the time unacknowledged stanzas were queued.
    now_ms: i64,
}

impl C2sStream {
    /// `stream_id` must be unpredictable (RFC 6120 §4.7.3); the server passes random text.
    pub fn new(config: C2sConfig, stream_id: String) -> Self {
        let secure = config.transport == Transport::DirectTls;
        let domain = config.domains.first().cloned().unwrap_or_default();
        C2sStream {
            wire: Wire::new(config.limits),
            config,
            phase: Phase::AwaitHeader,
            stream_id_seed: stream_id,
            restarts: 0,
            domain,
            secure,
            header_sent: false,
            sasl: Sasl::None,
            sasl_user: None,
            auth_failures: 0,
            user: None,
            jid: None,
            bind_id: None,
            bind_failures: 0,
            sm: None,
            now_ms: 0,
        }
    }

    /// The server's clock, in Unix milliseconds: stanzas queued for acknowledgement from now
    /// on are stamped with it.
    pub fn set_time(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
    }

    /// The stream management state, once enabled.
    pub fn sm(&self) -> Option<&StreamManagement> {
        self.sm.as_deref()
    }

    /// Takes the stream management state of a stream whose connection is gone, for a
    /// stream that resumes it or to hand its unacknowledged stanzas on.
    pub fn take_sm(&mut self) -> Option<Box<StreamManagement>> {
        self.sm.take()
    }

    /// Answers [`Event::SmEnable`]: `resumption` is the id and the seconds within which
    /// the stream may be resumed, `None` to manage it without resumption.
    pub fn sm_enabled(&mut self, resumption: Option<(String, u32)>) {
        if self.phase != Phase::Blocked {
            return;
        }
        let mut enabled = Element::builder("enabled", ns::SM).build();
        let (id, max) = match resumption {
            Some((id, max)) => {
                stanza::set_attr(&mut enabled, "id", &id);
                stanza::set_attr(&mut enabled, "resume", "true");
                stanza::set_attr(&mut enabled, "max", &max.to_string());
                (Some(id), max)
            }
            None => (None, 0),
        };
        self.write_nonza(&enabled);
        self.sm = Some(Box::new(StreamManagement::new(id, max)));
        self.phase = Phase::Session;
        self.process();
    }

    /// Answers [`Event::SmResume`] with the state of the stream being resumed: the client
    /// is bound as `jid` again, the stanzas its `h` covers leave the queue, and the rest
    /// are written again after `<resumed/>` (XEP-0198 §5).
    pub fn sm_resumed(&mut self, jid: FullJid, mut state: Box<StreamManagement>, h: u32) {
        if self.phase != Phase::Blocked {
            return;
        }
        if let Err(AckError::TooHigh { h, sent }) = state.ack(h) {
            self.close_too_high(h, sent);
            return;
        }
        let previd = state.id().unwrap_or_default().to_owned();
        let resumed = Element::builder("resumed", ns::SM)
            .attr(stanza::name("previd"), previd)
            .attr(stanza::name("h"), state.inbound().to_string())
            .build();
        self.write_nonza(&resumed);
        let queued: Vec<_> = state.take_unacked();
        for u in &queued {
            self.wire.out.extend_from_slice(u.xml.as_bytes());
        }
        state.requeue(queued);
        self.sm = Some(state);
        self.jid = Some(jid.clone());
        self.phase = Phase::Session;
        self.wire.events.push_back(Event::Bound { jid });
        self.request_ack();
        self.process();
    }

    /// Answers [`Event::SmResume`] with a refusal: no such stream, or it expired. `h`, when
    /// known, tells the client which of its stanzas the old stream handled (XEP-0198 §5).
    pub fn sm_resume_failed(&mut self, h: Option<u32>) {
        if self.phase != Phase::Blocked {
            return;
        }
        self.phase = Phase::Negotiating;
        self.sm_failed("item-not-found", h);
        self.process();
    }

    /// Asks the client to acknowledge what it got (`<r/>`), unless a request is already out
    /// or nothing is unacknowledged.
    pub fn request_ack(&mut self) {
        let Some(sm) = self.sm.as_mut() else {
            return;
        };
        if sm.unacked_len() == 0 || sm.ack_requested() || self.phase == Phase::Closed {
            return;
        }
        sm.set_requested();
        self.wire
            .out
            .extend_from_slice(format!("<r xmlns='{}'/>", ns::SM).as_bytes());
    }

    /// Drops whatever is waiting to be written: the connection is gone, and what matters of
    /// it is in the stream management queue.
    pub fn discard_output(&mut self) {
        self.wire.out = Vec::new();
    }

    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The bound full JID, once the session is established.
    pub fn jid(&self) -> Option<&FullJid> {
        self.jid.as_ref()
    }

    /// The domain the client addressed in its stream header.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The server authenticated `user` outside the stream (the HTTP API's bearer token,
    /// on a channel inside the server): the stream opens straight to resource binding,
    /// with no TLS or SASL, and only for `user`'s domain. Call before any input.
    pub fn authenticated_externally(&mut self, user: BareJid) {
        if self.phase != Phase::AwaitHeader || self.header_sent {
            return;
        }
        self.secure = true;
        self.domain = user.domain().to_string();
        self.user = Some(user);
    }

    /// The TLS handshake finished: the client starts a new stream over TLS.
    pub fn tls_established(&mut self) {
        self.secure = true;
        self.restart_stream();
        self.process();
    }

    /// Answers [`Event::NeedCredentials`]. `keys` is `None` for an unknown user.
    /// `nonce` (printable, random) and `fake_salt_seed` (random bytes) come from the server
    /// because this crate has no randomness of its own.
    pub fn provide_credentials(
        &mut self,
        sha1: Option<ScramKeys>,
        sha256: Option<ScramKeys>,
        nonce: &str,
        fake_salt_seed: &[u8],
    ) {
        if self.phase != Phase::Blocked {
            return;
        }
        self.phase = Phase::Negotiating;
        match std::mem::replace(&mut self.sasl, Sasl::None) {
            Sasl::Scram(mut scram) => {
                let keys = match scram.hash() {
                    ScramHash::Sha1 => sha1,
                    ScramHash::Sha256 => sha256,
                };
                let first = scram.server_first(keys, nonce, fake_salt_seed);
                self.send_sasl("challenge", &first);
                self.sasl = Sasl::ScramFinal(scram);
            }
            Sasl::Plain { password } => {
                // An unknown user costs the same key derivation as a known one, so the
                // answer's timing does not tell which accounts exist.
                let dummy = ScramKeys {
                    salt: fake_salt_seed.to_vec(),
                    iterations: sasl::DEFAULT_ITERATIONS,
                    stored_key: Vec::new(),
                    server_key: Vec::new(),
                };
                let ok = match &sha256 {
                    Some(k) => sasl::verify_password(k, ScramHash::Sha256, &password),
                    None => {
                        let _ = sasl::verify_password(&dummy, ScramHash::Sha256, &password);
                        false
                    }
                };
                if ok {
                    self.sasl_success(None);
                } else {
                    self.sasl_failure("not-authorized");
                }
            }
            other => self.sasl = other,
        }
        self.process();
    }

    /// Answers [`Event::NeedCredentials`] with a refusal that is not about the password:
    /// `temporary-auth-failure` while throttled or when the store fails.
    pub fn auth_rejected(&mut self, condition: &'static str) {
        if self.phase != Phase::Blocked {
            return;
        }
        self.phase = Phase::Negotiating;
        self.sasl_failure(condition);
        self.process();
    }

    /// Answers [`Event::BindRequest`]: the resource the server chose, or a stanza error
    /// (RFC 6120 §7.6.2.1: `resource-constraint` to wait; §7.7.2.1: `bad-request` to modify;
    /// `conflict` or `not-allowed` to cancel).
    pub fn bind_result(&mut self, result: Result<FullJid, StanzaError>) {
        if self.phase != Phase::Blocked {
            return;
        }
        let id = self.bind_id.take().unwrap_or_default();
        match result {
            Ok(jid) => {
                let reply = Element::builder("iq", ns::CLIENT)
                    .attr(stanza::name("type"), "result")
                    .attr(stanza::name("id"), id)
                    .append(
                        Element::builder("bind", ns::BIND).append(
                            Element::builder("jid", ns::BIND)
                                .append(jid.to_string())
                                .build(),
                        ),
                    )
                    .build();
                self.send(&reply);
                self.jid = Some(jid.clone());
                self.phase = Phase::Session;
                self.wire.events.push_back(Event::Bound { jid });
            }
            Err(error) => {
                let err = stanza::iq_error_reply(&id, None, &error);
                self.send(&err);
                self.phase = Phase::Negotiating;
                // RFC 6120 §7.7.3: a client may retry, but not forever.
                self.bind_failures += 1;
                if self.bind_failures >= MAX_BIND_ATTEMPTS {
                    self.close(Some("policy-violation"), Some("too many failed binds"));
                }
            }
        }
        self.process();
    }

    /// Queues a stanza (or any top-level element) for the client. On a managed stream, a
    /// stanza counts and waits in the queue until the client acknowledges it.
    pub fn send(&mut self, el: &Element) {
        let start = self.wire.out.len();
        // Elements parsed from a peer or built by the server serialise; a failure would be
        // a bug in the element, and dropping that one element (nothing is appended) is the
        // least harmful answer.
        if xml::write_stanza(el, &mut self.wire.out).is_err() {
            self.wire.out.truncate(start);
            return;
        }
        let is_stanza = el.ns() == ns::CLIENT && matches!(el.name(), "message" | "presence" | "iq");
        if is_stanza && let Some(sm) = self.sm.as_mut() {
            sm.sent(&self.wire.out[start..], self.now_ms);
        }
    }

    /// Queues a raw, already serialised stanza for the client, counted on a managed stream
    /// like [`C2sStream::send`].
    pub fn send_raw(&mut self, xml: &str) {
        self.wire.out.extend_from_slice(xml.as_bytes());
        if let Some(sm) = self.sm.as_mut() {
            sm.sent(xml.as_bytes(), self.now_ms);
        }
    }

    /// Writes a stream-level element that is not a stanza (never counted).
    fn write_nonza(&mut self, el: &Element) {
        let _ = xml::write_stanza(el, &mut self.wire.out);
    }

    /// Closes the stream, with a stream error condition (RFC 6120 §4.9.3) or cleanly.
    pub fn close(&mut self, error: Option<&'static str>, text: Option<&str>) {
        if self.phase == Phase::Closed {
            return;
        }
        if let Some(condition) = error {
            // §4.9.1.1: even an error needs an opened stream first.
            if !self.header_sent {
                self.send_header();
            }
            self.wire
                .out
                .extend_from_slice(xml::stream_error(condition, text).as_bytes());
        }
        self.wire
            .out
            .extend_from_slice(xml::STREAM_CLOSE.as_bytes());
        self.phase = Phase::Closed;
        self.wire.events.push_back(Event::Closed {
            error,
            text: text.map(str::to_owned),
        });
    }

    /// Closes the stream with `<see-other-host/>` naming `host` (RFC 6120 §4.9.3.19): this
    /// server is not the account's home now.
    pub fn redirect(&mut self, host: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        if !self.header_sent {
            self.send_header();
        }
        self.wire
            .out
            .extend_from_slice(xml::see_other_host(host).as_bytes());
        self.wire
            .out
            .extend_from_slice(xml::STREAM_CLOSE.as_bytes());
        self.phase = Phase::Closed;
        self.wire.events.push_back(Event::Closed {
            error: Some("see-other-host"),
            text: Some(host.to_owned()),
        });
    }

    fn process(&mut self) {
        while !matches!(self.phase, Phase::Blocked | Phase::Closed) {
            match self.wire.reader.next() {
                Ok(None) => break,
                Ok(Some(event)) => self.on_xml(event),
                Err(e) => {
                    // The text tells the client (and the log) which limit or rule it broke.
                    let text = e.to_string();
                    self.close(Some(e.condition()), Some(&text));
                }
            }
        }
    }

    fn on_xml(&mut self, event: XmlEvent) {
        match event {
            XmlEvent::StreamOpen(header) => self.on_header(header),
            XmlEvent::StreamClose => {
                // The client closed its stream (RFC 6120 §4.4): close ours too.
                self.wire
                    .out
                    .extend_from_slice(xml::STREAM_CLOSE.as_bytes());
                self.phase = Phase::Closed;
                self.wire.events.push_back(Event::Closed {
                    error: None,
                    text: None,
                });
            }
            XmlEvent::Stanza(el) => {
                if self.phase == Phase::AwaitHeader {
                    self.close(Some("not-well-formed"), None);
                } else if el.ns() == ns::SM && self.user.is_some() {
                    self.on_sm(el);
                } else if self.phase == Phase::Session {
                    self.on_session_stanza(el);
                } else {
                    self.on_negotiation(el);
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
            let to = to.to_ascii_lowercase();
            // A user authenticated outside the stream has its own domain only.
            let own = self.user.as_ref().map(|u| u.domain().as_str() == to);
            match self.config.domains.iter().find(|d| **d == to) {
                Some(d) if own != Some(false) => self.domain = d.clone(),
                _ => {
                    self.close(Some("host-unknown"), None);
                    return;
                }
            }
        }
        self.send_header();
        if header.ns != ns::CLIENT {
            self.close(Some("invalid-namespace"), None);
            return;
        }
        if !speaks_version(header.version.as_deref()) {
            self.close(Some("unsupported-version"), None);
            return;
        }
        self.phase = Phase::Negotiating;
        self.send_features();
    }

    fn send_header(&mut self) {
        self.restarts += 1;
        let id = format!("{}-{}", self.stream_id_seed, self.restarts);
        let header = xml::stream_header(ns::CLIENT, &self.domain, None, &id, Some("en"));
        self.wire.out.extend_from_slice(header.as_bytes());
        self.header_sent = true;
    }

    fn may_authenticate(&self) -> bool {
        self.secure || self.config.allow_plaintext_auth
    }

    fn send_features(&mut self) {
        let mut features = Element::builder("features", ns::STREAM).build();
        if self.user.is_none() {
            if !self.secure && self.config.transport == Transport::StartTls {
                let mut starttls = Element::builder("starttls", ns::TLS);
                if !self.config.allow_plaintext_auth {
                    starttls = starttls.append(Element::builder("required", ns::TLS).build());
                }
                features.append_child(starttls.build());
            }
            if self.may_authenticate() {
                let mut mechs = Element::builder("mechanisms", ns::SASL);
                for m in ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
                    mechs = mechs.append(Element::builder("mechanism", ns::SASL).append(m).build());
                }
                features.append_child(mechs.build());
                if self.config.registration {
                    features
                        .append_child(Element::builder("register", ns::REGISTER_FEATURE).build());
                }
            }
        } else {
            features.append_child(Element::builder("bind", ns::BIND).build());
            // RFC 3921 sessions are a no-op kept for old clients (RFC 6121 Appendix E).
            features.append_child(
                Element::builder("session", ns::SESSION)
                    .append(Element::builder("optional", ns::SESSION).build())
                    .build(),
            );
            features.append_child(Element::builder("ver", ns::ROSTERVER).build());
            if self.config.stream_management {
                features.append_child(Element::builder("sm", ns::SM).build());
                features.append_child(Element::builder("csi", ns::CSI).build());
            }
        }
        // Written with the `stream:` prefix declared on the header, as every server does:
        // namespace-aware clients accept either form, but some only match the prefix.
        self.wire.out.extend_from_slice(b"<stream:features>");
        for child in features.children() {
            self.send(child);
        }
        self.wire.out.extend_from_slice(b"</stream:features>");
    }

    fn restart_stream(&mut self) {
        self.wire.reader.reset();
        self.header_sent = false;
        self.phase = Phase::AwaitHeader;
    }

    fn on_negotiation(&mut self, el: Element) {
        let name = el.name();
        let el_ns = el.ns();
        if el_ns == ns::TLS && name == "starttls" {
            if self.secure || self.config.transport != Transport::StartTls {
                self.close(Some("policy-violation"), Some("TLS is already in use"));
                return;
            }
            // CVE-2011-0411: plaintext sent after <starttls/> must not leak into the TLS
            // stream.
            if !self.wire.reader.buffered_is_whitespace() {
                self.close(Some("policy-violation"), Some("data after starttls"));
                return;
            }
            self.send(&Element::builder("proceed", ns::TLS).build());
            self.phase = Phase::Blocked;
            self.wire.events.push_back(Event::StartTls);
            return;
        }
        if el_ns == ns::SASL && self.user.is_none() {
            self.on_sasl(el);
            return;
        }
        if el_ns == ns::CLIENT && name == "iq" {
            if self.user.is_none() {
                if !self.may_authenticate() {
                    self.close(Some("policy-violation"), Some("TLS is required"));
                    return;
                }
                self.wire.events.push_back(Event::PreAuthIq(el));
                return;
            }
            self.on_bind(el);
            return;
        }
        if self.user.is_none() {
            self.close(Some("not-authorized"), None);
        } else {
            // A stanza before binding: RFC 6120 §7.1 says the session does not exist yet.
            self.close(Some("not-authorized"), Some("bind a resource first"));
        }
    }

    fn on_sasl(&mut self, el: Element) {
        if !self.may_authenticate() {
            self.send(&sasl_failure_el("encryption-required"));
            return;
        }
        match el.name() {
            "auth" => {
                if !matches!(self.sasl, Sasl::None) {
                    self.sasl_failure("malformed-request");
                    return;
                }
                let payload = match decode_sasl(&el.text()) {
                    Some(p) => p,
                    None => {
                        self.sasl_failure("incorrect-encoding");
                        return;
                    }
                };
                let mechanism = el.attr("mechanism").unwrap_or_default();
                match mechanism {
                    "SCRAM-SHA-1" | "SCRAM-SHA-256" => {
                        let hash = if mechanism == "SCRAM-SHA-1" {
                            ScramHash::Sha1
                        } else {
                            ScramHash::Sha256
                        };
                        let mut scram = Box::new(ScramServer::new(hash));
                        match scram.client_first(&payload) {
                            Ok((username, authzid)) => {
                                if !self.authzid_ok(&username, authzid.as_deref()) {
                                    self.sasl_failure("invalid-authzid");
                                    return;
                                }
                                self.request_credentials(username);
                                self.sasl = Sasl::Scram(scram);
                            }
                            Err(e) => self.sasl_failure(e.condition()),
                        }
                    }
                    "PLAIN" => {
                        if payload.is_empty() {
                            // Initial response omitted: RFC 6120 §6.4.2 sends an empty
                            // challenge, but PLAIN clients always send it; keep it simple.
                            self.sasl_failure("malformed-request");
                            return;
                        }
                        match sasl::parse_plain(&payload) {
                            Ok(plain) => {
                                if !self.authzid_ok(&plain.authcid, plain.authzid.as_deref()) {
                                    self.sasl_failure("invalid-authzid");
                                    return;
                                }
                                self.request_credentials(plain.authcid);
                                self.sasl = Sasl::Plain {
                                    password: plain.password,
                                };
                            }
                            Err(e) => self.sasl_failure(e.condition()),
                        }
                    }
                    _ => self.sasl_failure("invalid-mechanism"),
                }
            }
            "response" => match std::mem::replace(&mut self.sasl, Sasl::None) {
                Sasl::ScramFinal(mut scram) => {
                    let payload = match decode_sasl(&el.text()) {
                        Some(p) => p,
                        None => {
                            self.sasl_failure("incorrect-encoding");
                            return;
                        }
                    };
                    match scram.client_final(&payload) {
                        Ok(final_msg) => self.sasl_success(Some(&final_msg)),
                        Err(e) => self.sasl_failure(e.condition()),
                    }
                }
                _ => self.sasl_failure("malformed-request"),
            },
            "abort" => {
                self.sasl = Sasl::None;
                self.sasl_user = None;
                self.send(&sasl_failure_el("aborted"));
            }
            _ => self.sasl_failure("malformed-request"),
        }
    }

    /// An authorization identity must be the account itself: Outpost has no proxy logins.
    fn authzid_ok(&self, username: &str, authzid: Option<&str>) -> bool {
        match authzid {
            None | Some("") => true,
            Some(z) => match BareJid::new(z) {
                Ok(j) => {
                    j.node().map(|n| n.as_str()) == Some(username)
                        && j.domain().as_str() == self.domain
                }
                Err(_) => false,
            },
        }
    }

    fn request_credentials(&mut self, username: String) {
        self.sasl_user = Some(username.clone());
        self.phase = Phase::Blocked;
        self.wire.events.push_back(Event::NeedCredentials {
            username,
            domain: self.domain.clone(),
        });
    }

    fn send_sasl(&mut self, name: &str, data: &[u8]) {
        let text = if data.is_empty() {
            "=".to_owned()
        } else {
            B64.encode(data)
        };
        self.send(&Element::builder(name, ns::SASL).append(text).build());
    }

    fn sasl_success(&mut self, data: Option<&[u8]>) {
        let username = self.sasl_user.take().unwrap_or_default();
        self.sasl = Sasl::None;
        let user = match BareJid::new(&format!("{username}@{}", self.domain)) {
            Ok(u) => u,
            Err(_) => {
                self.sasl_failure("not-authorized");
                return;
            }
        };
        match data {
            Some(d) => self.send_sasl("success", d),
            None => self.send(&Element::builder("success", ns::SASL).build()),
        }
        self.user = Some(user.clone());
        self.wire.events.push_back(Event::Authenticated { user });
        // RFC 6120 §6.4.6: the client opens a new stream after success.
        self.restart_stream();
    }

    fn sasl_failure(&mut self, condition: &'static str) {
        self.sasl = Sasl::None;
        let username = self.sasl_user.take();
        self.send(&sasl_failure_el(condition));
        self.wire.events.push_back(Event::AuthFailed {
            username,
            condition,
        });
        self.auth_failures += 1;
        if self.auth_failures >= self.config.max_auth_attempts {
            self.close(
                Some("policy-violation"),
                Some("too many failed authentications"),
            );
        }
    }

    fn on_bind(&mut self, el: Element) {
        let id = el.attr("id").unwrap_or_default().to_owned();
        let ty = el.attr("type").unwrap_or_default();
        if ty == "set"
            && let Some(bind) = el.get_child("bind", ns::BIND)
        {
            let resource = bind
                .get_child("resource", ns::BIND)
                .map(|r| r.text())
                .filter(|r| !r.trim().is_empty());
            self.bind_id = Some(id);
            self.phase = Phase::Blocked;
            self.wire.events.push_back(Event::BindRequest { resource });
            return;
        }
        if ty == "get" || ty == "set" {
            let err = stanza::iq_error_reply(&id, None, &Condition::NotAllowed.into());
            self.send(&err);
        }
    }

    /// Stream management elements (XEP-0198), once authenticated.
    fn on_sm(&mut self, el: Element) {
        if !self.config.stream_management {
            self.close(Some("unsupported-stanza-type"), None);
            return;
        }
        match el.name() {
            "enable" if self.phase == Phase::Session && self.sm.is_none() => {
                let resume = matches!(el.attr("resume"), Some("true" | "1"));
                let max = el.attr("max").and_then(|m| m.parse().ok());
                // Stanzas after `<enable/>` count from zero once it is answered, so the
                // stream waits for the answer before it reads them.
                self.phase = Phase::Blocked;
                self.wire.events.push_back(Event::SmEnable { resume, max });
            }
            "resume" if self.phase == Phase::Negotiating && self.jid.is_none() => {
                let (Some(previd), Some(h)) = (
                    el.attr("previd").map(str::to_owned),
                    el.attr("h").and_then(|h| h.parse::<u32>().ok()),
                ) else {
                    self.sm_failed("bad-request", None);
                    return;
                };
                self.phase = Phase::Blocked;
                self.wire.events.push_back(Event::SmResume { previd, h });
            }
            "enable" | "resume" => self.sm_failed("unexpected-request", None),
            "r" if self.sm.is_some() => {
                let h = self.sm.as_ref().map_or(0, |sm| sm.inbound());
                let a = format!("<a xmlns='{}' h='{h}'/>", ns::SM);
                self.wire.out.extend_from_slice(a.as_bytes());
            }
            "a" if self.sm.is_some() => {
                let Some(h) = el.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
                    self.close(Some("invalid-xml"), Some("<a/> without a valid h"));
                    return;
                };
                if let Some(Err(AckError::TooHigh { h, sent })) =
                    self.sm.as_mut().map(|sm| sm.ack(h))
                {
                    self.close_too_high(h, sent);
                    return;
                }
                // What went out after the request this answers is covered by none: ask
                // again, or it would stay unacknowledged until something else is sent
                // (and be sent twice if the stream ended meanwhile).
                self.request_ack();
            }
            // XEP-0198 §3: before <enable/>, there is nothing to acknowledge or ask.
            _ => self.close(Some("unsupported-stanza-type"), None),
        }
    }

    fn sm_failed(&mut self, condition: &str, h: Option<u32>) {
        let mut failed = Element::builder("failed", ns::SM)
            .append(Element::builder(condition, ns::STANZAS).build())
            .build();
        if let Some(h) = h {
            stanza::set_attr(&mut failed, "h", &h.to_string());
        }
        self.write_nonza(&failed);
    }

    /// XEP-0198 §4: the client acknowledged stanzas it was never sent.
    fn close_too_high(&mut self, h: u32, sent: u32) {
        let text = format!("the client acknowledged {h} stanzas; {sent} were sent");
        self.close(Some("undefined-condition"), Some(&text));
    }

    fn on_session_stanza(&mut self, mut el: Element) {
        if el.ns() == ns::CSI && self.config.stream_management {
            match el.name() {
                "active" | "inactive" => {
                    let active = el.name() == "active";
                    self.wire.events.push_back(Event::ClientState { active });
                }
                _ => self.close(Some("unsupported-stanza-type"), None),
            }
            return;
        }
        if el.ns() != ns::CLIENT || !matches!(el.name(), "message" | "presence" | "iq") {
            // RFC 6120 §4.9.3.22: an unknown first-level element is unsupported-stanza-type.
            self.close(Some("unsupported-stanza-type"), None);
            return;
        }
        if let Some(sm) = self.sm.as_mut() {
            sm.handled();
        }
        // RFC 6120 §8.1.2.1: the server stamps the sender's full JID; nobody speaks for
        // someone else.
        if let Some(jid) = &self.jid {
            stanza::set_attr(&mut el, "from", jid.as_str());
        }
        // RFC 6121 Appendix E: the session establishment IQ is answered and forgotten.
        if el.name() == "iq"
            && el.attr("type") == Some("set")
            && el.has_child("session", ns::SESSION)
        {
            let id = el.attr("id").unwrap_or_default().to_owned();
            let reply = Element::builder("iq", ns::CLIENT)
                .attr(stanza::name("type"), "result")
                .attr(stanza::name("id"), id)
                .build();
            self.send(&reply);
            return;
        }
        self.wire.events.push_back(Event::Stanza(el));
    }
}

/// Whether we can answer a stream of this `version` (RFC 6120 §4.7.5). Versions compare
/// numerically, major then minor, never as strings: a client offering a higher minor version
/// (`1.1`) gets our `1.0` in the response header and decides for itself whether that will do.
/// A stream without a version is pre-RFC (0.9), and another major version is one we do not
/// speak (§4.9.3.25).
fn speaks_version(version: Option<&str>) -> bool {
    let Some((major, minor)) = version.and_then(|v| v.split_once('.')) else {
        return false;
    };
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // Leading zeros are not significant, so `01.0` is 1.0; no integer parse, so no overflow.
    number(major) && number(minor) && major.trim_start_matches('0') == "1"
}

fn sasl_failure_el(condition: &str) -> Element {
    Element::builder("failure", ns::SASL)
        .append(Element::builder(condition, ns::SASL).build())
        .build()
}

/// SASL data is base64, with `=` for an empty response (RFC 6120 §6.4.2).
fn decode_sasl(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.is_empty() || text == "=" {
        return Some(Vec::new());
    }
    B64.decode(text).ok()
}

stream_machine!(C2sStream, Event);
