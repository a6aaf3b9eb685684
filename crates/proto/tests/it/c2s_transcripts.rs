//! Protocol transcripts for the client-to-server state machine ([`outpost_proto::c2s`]).
//!
//! Each test plays a client: it feeds bytes to a [`C2sStream`], answers the events the way a
//! server would, and checks the exact events and what the server wrote back. There are no
//! sockets and no clock. The server's bytes are parsed back with the crate's own
//! [`StreamReader`], so the assertions are about elements, not about how they are formatted.
//! The client side of SCRAM comes from [`outpost_testkit::scram`], written from RFC 5802
//! with the RustCrypto primitives independently of the server's code.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use outpost_proto::StreamMachine;
use outpost_proto::c2s::{C2sConfig, C2sStream, Event, Transport};
use outpost_proto::jid::FullJid;
use outpost_proto::minidom::Element;
use outpost_proto::sasl::{self, ScramHash, ScramKeys};
use outpost_proto::stanza::ns;
use outpost_proto::xml::{Limits, NS_XMPP_STREAMS, StreamHeader, StreamReader, XmlEvent};
use outpost_testkit::scram::{self, Scram};

const DOMAIN: &str = "example.com";
const PASSWORD: &str = "r0m30myr0m30";
/// What the store would hold; a low count keeps the key derivations quick.
const ITERATIONS: u32 = 64;
const SERVER_NONCE: &str = "3rfcNHYJY1ZVvWVs7j";

pub(crate) fn config(transport: Transport) -> C2sConfig {
    C2sConfig {
        domains: vec![DOMAIN.to_owned(), "other.example".to_owned()],
        transport,
        allow_plaintext_auth: false,
        registration: false,
        limits: Limits::default(),
        max_auth_attempts: 3,
        stream_management: false,
    }
}

fn header_with(attrs: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
         {attrs}>"
    )
}

fn header_to(to: &str) -> String {
    header_with(&format!("xmlns='jabber:client' to='{to}' version='1.0'"))
}

fn header() -> String {
    header_to(DOMAIN)
}

const STARTTLS: &str = "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";

fn auth(mechanism: &str, payload: &str) -> String {
    format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{payload}</auth>"
    )
}

fn plain(authzid: &str, user: &str, password: &str) -> String {
    auth(
        "PLAIN",
        &B64.encode(format!("{authzid}\0{user}\0{password}")),
    )
}

fn bind_iq(id: &str, resource: Option<&str>) -> String {
    let resource = resource.map_or(String::new(), |r| format!("<resource>{r}</resource>"));
    format!(
        "<iq type='set' id='{id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{resource}</bind></iq>"
    )
}

fn keys(hash: ScramHash, password: &str) -> ScramKeys {
    sasl::derive_keys(hash, password, b"sixteen byte slt", ITERATIONS).expect("valid password")
}

/// Answers `NeedCredentials` for an account with `password`, or for an unknown account.
fn provide(c2s: &mut C2sStream, password: Option<&str>) {
    let keys = |hash| password.map(|p| keys(hash, p));
    c2s.provide_credentials(
        keys(ScramHash::Sha1),
        keys(ScramHash::Sha256),
        SERVER_NONCE,
        b"fake salt seed",
    );
}

fn jid(s: &str) -> FullJid {
    FullJid::new(s).expect("valid full JID")
}

/// [`Event`] with the JIDs as text, so whole event lists compare with `assert_eq!`.
#[derive(Debug, PartialEq)]
pub(crate) enum Ev {
    StartTls,
    NeedCredentials(String, String),
    Authenticated(String),
    AuthFailed(Option<String>, &'static str),
    PreAuthIq(Element),
    BindRequest(Option<String>),
    Bound(String),
    Stanza(Element),
    SmEnable(bool, Option<u32>),
    SmResume(String, u32),
    ClientState(bool),
    Closed(Option<&'static str>),
}

impl From<Event> for Ev {
    fn from(event: Event) -> Self {
        match event {
            Event::StartTls => Ev::StartTls,
            Event::NeedCredentials { username, domain } => Ev::NeedCredentials(username, domain),
            Event::Authenticated { user } => Ev::Authenticated(user.to_string()),
            Event::AuthFailed {
                username,
                condition,
            } => Ev::AuthFailed(username, condition),
            Event::PreAuthIq(el) => Ev::PreAuthIq(el),
            Event::BindRequest { resource } => Ev::BindRequest(resource),
            Event::Bound { jid } => Ev::Bound(jid.to_string()),
            Event::Stanza(el) => Ev::Stanza(el),
            Event::SmEnable { resume, max } => Ev::SmEnable(resume, max),
            Event::SmResume { previd, h } => Ev::SmResume(previd, h),
            Event::ClientState { active } => Ev::ClientState(active),
            Event::Closed { error, .. } => Ev::Closed(error),
        }
    }
}

fn need(user: &str) -> Ev {
    Ev::NeedCredentials(user.to_owned(), DOMAIN.to_owned())
}

fn failed(user: Option<&str>, condition: &'static str) -> Ev {
    Ev::AuthFailed(user.map(str::to_owned), condition)
}

/// One client connection: the state machine and a reader for what it writes.
pub(crate) struct Session {
    pub(crate) c2s: C2sStream,
    wire: StreamReader,
}

impl Session {
    pub(crate) fn new(config: C2sConfig) -> Self {
        Session {
            c2s: C2sStream::new(config, "sid".to_owned()),
            wire: StreamReader::new(Limits::default()),
        }
    }

    /// Feeds client bytes and returns what the server wrote in answer.
    pub(crate) fn send(&mut self, xml: &str) -> Vec<XmlEvent> {
        self.c2s.handle_input(xml.as_bytes());
        self.output()
    }

    pub(crate) fn output(&mut self) -> Vec<XmlEvent> {
        parse_wire(&mut self.wire, &self.c2s.take_output())
    }

    pub(crate) fn events(&mut self) -> Vec<Ev> {
        std::iter::from_fn(|| self.c2s.poll_event())
            .map(Ev::from)
            .collect()
    }

    pub(crate) fn provide(&mut self, password: Option<&str>) -> Vec<XmlEvent> {
        provide(&mut self.c2s, password);
        self.output()
    }

    /// Sends the stream header and returns the features, checking the header on the way.
    pub(crate) fn open(&mut self) -> Element {
        let out = self.send(&header());
        assert_eq!(out.len(), 2, "{out:?}");
        let ours = opened(&out[0]);
        assert_eq!(ours.from.as_deref(), Some(DOMAIN));
        features_of(&out[1]).clone()
    }
}

const XML_DECL: &str = "<?xml";

/// Parses the server's bytes as a stream. After STARTTLS and SASL success the server opens a
/// new stream, which is a new XML document starting with its own declaration, so the reader
/// starts afresh there.
fn parse_wire(reader: &mut StreamReader, bytes: &[u8]) -> Vec<XmlEvent> {
    let mut rest = std::str::from_utf8(bytes).expect("output is UTF-8");
    let mut events = Vec::new();
    while !rest.is_empty() {
        let cut = rest
            .get(1..)
            .and_then(|tail| tail.find(XML_DECL))
            .map_or(rest.len(), |i| i + 1);
        let (piece, tail) = rest.split_at(cut);
        if piece.starts_with(XML_DECL) {
            *reader = StreamReader::new(Limits::default());
        }
        reader.feed(piece.as_bytes());
        while let Some(event) = reader
            .next()
            .expect("the server writes a well-formed stream")
        {
            events.push(event);
        }
        rest = tail;
    }
    events
}

fn opened(event: &XmlEvent) -> &StreamHeader {
    match event {
        XmlEvent::StreamOpen(header) => {
            assert_eq!(header.ns, ns::CLIENT);
            assert_eq!(header.version.as_deref(), Some("1.0"));
            assert!(header.id.is_some(), "a stream id (RFC 6120 §4.7.3)");
            header
        }
        other => panic!("expected our stream header, got {other:?}"),
    }
}

pub(crate) fn stanza(event: &XmlEvent) -> &Element {
    match event {
        XmlEvent::Stanza(el) => el,
        other => panic!("expected an element, got {other:?}"),
    }
}

fn features_of(event: &XmlEvent) -> &Element {
    let el = stanza(event);
    assert!(el.is("features", ns::STREAM), "{el:?}");
    el
}

/// Each feature as `{namespace}name`, in order.
pub(crate) fn feature_names(features: &Element) -> Vec<String> {
    features
        .children()
        .map(|f| clark(&f.ns(), f.name()))
        .collect()
}

pub(crate) fn clark(ns: &str, name: &str) -> String {
    format!("{{{ns}}}{name}")
}

fn mechanisms(features: &Element) -> Vec<String> {
    features
        .get_child("mechanisms", ns::SASL)
        .map(|m| m.children().map(Element::text).collect())
        .unwrap_or_default()
}

/// The output ends with a `<stream:error/>` carrying `condition`, then the stream's end.
#[track_caller]
pub(crate) fn assert_stream_error(out: &[XmlEvent], condition: &str) {
    let [.., XmlEvent::Stanza(error), XmlEvent::StreamClose] = out else {
        panic!("expected a stream error and the close, got {out:?}");
    };
    assert!(error.is("error", ns::STREAM), "{error:?}");
    assert!(
        error.has_child(condition, NS_XMPP_STREAMS),
        "expected {condition}, got {error:?}"
    );
}

/// The single element written is a SASL `<failure/>`; returns its condition.
#[track_caller]
fn sasl_failure(out: &[XmlEvent]) -> String {
    assert_eq!(out.len(), 1, "{out:?}");
    let failure = stanza(&out[0]);
    assert!(failure.is("failure", ns::SASL), "{failure:?}");
    let condition = failure.children().next().expect("a condition");
    assert_eq!(condition.ns(), ns::SASL);
    condition.name().to_owned()
}

/// The single element written is `<success/>`; returns its decoded data.
#[track_caller]
fn sasl_success(out: &[XmlEvent]) -> Vec<u8> {
    assert_eq!(out.len(), 1, "{out:?}");
    let success = stanza(&out[0]);
    assert!(success.is("success", ns::SASL), "{success:?}");
    B64.decode(success.text().trim()).expect("base64")
}

pub(crate) fn is_iq(el: &Element, ty: &str, id: &str) -> bool {
    el.is("iq", ns::CLIENT) && el.attr("type") == Some(ty) && el.attr("id") == Some(id)
}

/// A stream over direct TLS, authenticated as juliet with PLAIN, with the new stream open.
fn authenticated() -> Session {
    authenticated_with(config(Transport::DirectTls))
}

/// [`authenticated`] with another configuration (still direct TLS).
pub(crate) fn authenticated_with(config: C2sConfig) -> Session {
    authenticated_with_features(config).0
}

/// [`authenticated_with`], and the stream features offered after authentication.
pub(crate) fn authenticated_with_features(config: C2sConfig) -> (Session, Element) {
    let mut s = Session::new(config);
    s.open();
    assert!(s.send(&plain("", "juliet", PASSWORD)).is_empty());
    assert_eq!(s.events(), [need("juliet")]);
    sasl_success(&s.provide(Some(PASSWORD)));
    assert_eq!(
        s.events(),
        [Ev::Authenticated("juliet@example.com".to_owned())]
    );
    let features = s.open();
    (s, features)
}

/// An authenticated stream bound as juliet@example.com/balcony.
fn bound() -> Session {
    bind(authenticated())
}

/// Binds an authenticated stream as juliet@example.com/balcony.
pub(crate) fn bind(mut s: Session) -> Session {
    assert!(s.send(&bind_iq("b1", Some("balcony"))).is_empty());
    assert_eq!(s.events(), [Ev::BindRequest(Some("balcony".to_owned()))]);
    s.c2s.bind_result(Ok(jid("juliet@example.com/balcony")));
    let out = s.output();
    assert!(is_iq(stanza(&out[0]), "result", "b1"));
    assert_eq!(
        s.events(),
        [Ev::Bound("juliet@example.com/balcony".to_owned())]
    );
    s
}

// --- STARTTLS (RFC 6120 §5) ---

#[test]
fn starttls_is_required_and_offered_alone() {
    let mut s = Session::new(config(Transport::StartTls));
    let features = s.open();
    // §5.3.1: with TLS mandatory, nothing but STARTTLS is offered.
    assert_eq!(feature_names(&features), [clark(ns::TLS, "starttls")]);
    let starttls = features.get_child("starttls", ns::TLS).unwrap();
    assert!(starttls.has_child("required", ns::TLS));
    assert!(!s.c2s.is_secure());

    let out = s.send(STARTTLS);
    assert_eq!(out.len(), 1);
    assert!(stanza(&out[0]).is("proceed", ns::TLS));
    assert_eq!(s.events(), [Ev::StartTls]);

    // Until the handshake is done nothing is processed; whatever arrived in plaintext meanwhile
    // is not part of the new stream (§5.4.3.3) and is dropped with the old one.
    assert!(s.send(&plain("", "juliet", PASSWORD)).is_empty());
    assert!(s.events().is_empty());
    assert!(!s.c2s.is_closed());
    s.c2s.tls_established();
    assert!(s.c2s.is_secure());
    assert!(
        s.output().is_empty(),
        "the client speaks first on the new stream"
    );
    assert!(s.events().is_empty());

    let out = s.send(&header());
    assert_eq!(out.len(), 2);
    assert_eq!(
        opened(&out[0]).id.as_deref(),
        Some("sid-2"),
        "a new stream id"
    );
    let features = features_of(&out[1]);
    assert_eq!(
        feature_names(features),
        [clark(ns::SASL, "mechanisms")],
        "no STARTTLS twice, no registration unless configured"
    );
    assert_eq!(
        mechanisms(features),
        ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    );
}

#[test]
fn registration_is_advertised_once_encrypted() {
    let mut s = Session::new(C2sConfig {
        registration: true,
        ..config(Transport::StartTls)
    });
    assert_eq!(
        feature_names(&s.open()),
        [clark(ns::TLS, "starttls")],
        "no registration in plaintext"
    );
    s.send(STARTTLS);
    assert_eq!(s.events(), [Ev::StartTls]);
    s.c2s.tls_established();
    assert_eq!(
        feature_names(&s.open()),
        [
            clark(ns::SASL, "mechanisms"),
            clark(ns::REGISTER_FEATURE, "register")
        ]
    );
}

#[test]
fn plaintext_piggybacked_on_starttls_is_refused() {
    // CVE-2011-0411: bytes sent in plaintext after <starttls/> must not be taken as if they
    // had arrived over TLS.
    let mut s = Session::new(config(Transport::StartTls));
    s.open();
    let out = s.send(&format!("{STARTTLS}{}", plain("", "juliet", PASSWORD)));
    assert_eq!(out.len(), 2, "no <proceed/>: {out:?}");
    assert_stream_error(&out, "policy-violation");
    assert_eq!(s.events(), [Ev::Closed(Some("policy-violation"))]);
    assert!(s.c2s.is_closed());
    assert!(!s.c2s.is_secure());
}

#[test]
fn whitespace_after_starttls_is_not_plaintext() {
    // Some clients (go-sendxmpp) end <starttls/> with a newline: whitespace is no smuggled
    // data, and it is dropped with the plaintext stream.
    let mut s = Session::new(config(Transport::StartTls));
    s.open();
    let out = s.send(&format!("{STARTTLS}\r\n \t"));
    assert_eq!(out.len(), 1);
    assert!(stanza(&out[0]).is("proceed", ns::TLS));
    assert_eq!(s.events(), [Ev::StartTls]);
    s.c2s.tls_established();
    assert!(s.open().has_child("mechanisms", ns::SASL));

    // Whitespace followed by anything else is still plaintext after <starttls/>.
    let mut s = Session::new(config(Transport::StartTls));
    s.open();
    assert_stream_error(
        &s.send(&format!("{STARTTLS}\n<presence/>")),
        "policy-violation",
    );
    assert_eq!(s.events(), [Ev::Closed(Some("policy-violation"))]);
}

#[test]
fn auth_before_tls_is_encryption_required() {
    let mut s = Session::new(config(Transport::StartTls));
    s.open();
    let out = s.send(&plain("", "juliet", PASSWORD));
    assert_eq!(sasl_failure(&out), "encryption-required");
    assert!(s.events().is_empty(), "no credentials are looked up");
    // The stream stays usable: the client can still upgrade.
    let out = s.send(STARTTLS);
    assert!(stanza(&out[0]).is("proceed", ns::TLS));
    assert_eq!(s.events(), [Ev::StartTls]);
}

#[test]
fn plaintext_auth_when_configured() {
    let mut s = Session::new(C2sConfig {
        allow_plaintext_auth: true,
        ..config(Transport::StartTls)
    });
    let features = s.open();
    assert_eq!(
        feature_names(&features),
        [clark(ns::TLS, "starttls"), clark(ns::SASL, "mechanisms")]
    );
    let starttls = features.get_child("starttls", ns::TLS).unwrap();
    assert!(!starttls.has_child("required", ns::TLS), "TLS is optional");
    assert!(s.send(&plain("", "juliet", PASSWORD)).is_empty());
    assert_eq!(s.events(), [need("juliet")]);
    sasl_success(&s.provide(Some(PASSWORD)));
    assert_eq!(
        s.events(),
        [Ev::Authenticated("juliet@example.com".to_owned())]
    );
    assert!(!s.c2s.is_secure());
}

#[test]
fn direct_tls_offers_no_starttls() {
    let mut s = Session::new(config(Transport::DirectTls));
    assert!(s.c2s.is_secure());
    let features = s.open();
    assert_eq!(feature_names(&features), [clark(ns::SASL, "mechanisms")]);
    assert_eq!(
        mechanisms(&features),
        ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    );
    assert_stream_error(&s.send(STARTTLS), "policy-violation");
    assert_eq!(s.events(), [Ev::Closed(Some("policy-violation"))]);
}

#[test]
fn pre_auth_iq_goes_to_the_server_only_once_encrypted() {
    let register = "<iq type='get' id='reg1'><query xmlns='jabber:iq:register'/></iq>";
    let mut s = Session::new(C2sConfig {
        registration: true,
        ..config(Transport::DirectTls)
    });
    s.open();
    assert!(s.send(register).is_empty());
    let events = s.events();
    let [Ev::PreAuthIq(iq)] = &events[..] else {
        panic!("{events:?}");
    };
    assert!(is_iq(iq, "get", "reg1"));
    assert!(iq.has_child("query", ns::REGISTER));
    assert_eq!(iq.attr("from"), None, "nobody to stamp yet");

    let mut s = Session::new(C2sConfig {
        registration: true,
        ..config(Transport::StartTls)
    });
    s.open();
    assert_stream_error(&s.send(register), "policy-violation");
    assert_eq!(s.events(), [Ev::Closed(Some("policy-violation"))]);
}

// --- SASL PLAIN (RFC 4616, RFC 6120 §6) ---

#[test]
fn plain_login_restarts_the_stream_with_bind_features() {
    let mut s = Session::new(config(Transport::DirectTls));
    s.open();
    assert!(s.send(&plain("", "juliet", PASSWORD)).is_empty());
    assert_eq!(s.events(), [need("juliet")]);
    assert!(
        sasl_success(&s.provide(Some(PASSWORD))).is_empty(),
        "PLAIN has no additional data"
    );
    assert_eq!(
        s.events(),
        [Ev::Authenticated("juliet@example.com".to_owned())]
    );
    // §6.4.6: the client must open a new stream; until then there is nothing to say.
    assert!(s.output().is_empty());
    let out = s.send(&header());
    assert_eq!(out.len(), 2);
    assert_eq!(opened(&out[0]).id.as_deref(), Some("sid-2"));
    let features = features_of(&out[1]);
    assert_eq!(
        feature_names(features),
        [
            clark(ns::BIND, "bind"),
            clark(ns::SESSION, "session"),
            clark(ns::ROSTERVER, "ver")
        ]
    );
    let session = features.get_child("session", ns::SESSION).unwrap();
    assert!(session.has_child("optional", ns::SESSION));
}

#[test]
fn plain_failures_and_the_attempt_limit() {
    let mut s = Session::new(config(Transport::DirectTls));
    s.open();

    assert!(s.send(&plain("", "juliet", "wrong")).is_empty());
    assert_eq!(s.events(), [need("juliet")]);
    assert_eq!(sasl_failure(&s.provide(Some(PASSWORD))), "not-authorized");
    assert_eq!(s.events(), [failed(Some("juliet"), "not-authorized")]);

    // An unknown user gets the same answer as a wrong password.
    assert!(s.send(&plain("", "nobody", "guess")).is_empty());
    assert_eq!(s.events(), [need("nobody")]);
    assert_eq!(sasl_failure(&s.provide(None)), "not-authorized");
    assert_eq!(s.events(), [failed(Some("nobody"), "not-authorized")]);
    assert!(!s.c2s.is_closed());

    // The third failure (max_auth_attempts = 3) also ends the stream.
    s.send(&plain("", "juliet", "still wrong"));
    assert_eq!(s.events(), [need("juliet")]);
    let out = s.provide(Some(PASSWORD));
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(sasl_failure(&out[..1]), "not-authorized");
    assert_stream_error(&out, "policy-violation");
    assert_eq!(
        s.events(),
        [
            failed(Some("juliet"), "not-authorized"),
            Ev::Closed(Some("policy-violation"))
        ]
    );
    assert!(s.c2s.is_closed());
    assert!(s.send(&plain("", "juliet", PASSWORD)).is_empty());
    assert!(
        s.events().is_empty(),
        "nothing is processed after the close"
    );
}

#[test]
fn credentials_lookup_refused_is_temporary_auth_failure() {
    let mut s = Session::new(config(Transport::DirectTls));
    s.open();
    s.send(&plain("", "juliet", PASSWORD));
    assert_eq!(s.events(), [need("juliet")]);
    s.c2s.auth_rejected("temporary-auth-failure");
    assert_eq!(sasl_failure(&s.output()), "temporary-auth-failure");
    assert_eq!(
        s.events(),
        [failed(Some("juliet"), "temporary-auth-failure")]
    );
    // The client may try again.
    s.send(&plain("", "juliet", PASSWORD));
    assert_eq!(s.events(), [need("juliet")]);
    sasl_success(&s.provide(Some(PASSWORD)));
}

// --- SASL SCRAM (RFC 5802, RFC 7677) ---

/// The client side of SCRAM without channel binding (RFC 5802 §3, §7), from
/// [`outpost_testkit::scram`], in the `<auth/>` and `<response/>` elements that carry it.
struct ScramClient {
    scram: scram::ScramClient,
    password: String,
}

impl ScramClient {
    fn new(hash: ScramHash, authzid: Option<&str>, user: &str, password: &str) -> Self {
        let mech = match hash {
            ScramHash::Sha1 => Scram::Sha1,
            ScramHash::Sha256 => Scram::Sha256,
        };
        let scram = scram::ScramClient::new(mech, user, "fyko+d2lbbFgONRv9qkxdawL");
        ScramClient {
            scram: match authzid {
                Some(a) => scram.with_authzid(a),
                None => scram,
            },
            password: password.to_owned(),
        }
    }

    fn auth(&self) -> String {
        auth(
            self.scram.mech().mechanism(),
            &B64.encode(self.scram.client_first()),
        )
    }

    /// The `<response/>` to the server-first-message, and the `v=` the server must answer.
    fn response(&self, server_first: &str) -> (String, Vec<u8>) {
        let fin = self
            .scram
            .respond(server_first, &self.password)
            .unwrap_or_else(|e| panic!("{e}: {server_first}"));
        let response = format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            B64.encode(fin.message)
        );
        (response, fin.expected_server_final.into_bytes())
    }
}

/// Reads the server-first-message out of a `<challenge/>`.
fn challenge(out: &[XmlEvent]) -> String {
    assert_eq!(out.len(), 1, "{out:?}");
    let challenge = stanza(&out[0]);
    assert!(challenge.is("challenge", ns::SASL), "{challenge:?}");
    String::from_utf8(B64.decode(challenge.text().trim()).expect("base64")).expect("UTF-8")
}

/// Runs SCRAM as a client knowing `password` against a server holding `stored` (or no
/// account). Returns the session, the `v=` a correct server sends, and what the server
/// answered to the client's proof.
fn scram_attempt(
    hash: ScramHash,
    password: &str,
    stored: Option<&str>,
) -> (Session, Vec<u8>, Vec<XmlEvent>) {
    let mut s = Session::new(config(Transport::DirectTls));
    s.open();
    let client = ScramClient::new(hash, None, "juliet", password);
    assert!(s.send(&client.auth()).is_empty());
    assert_eq!(s.events(), [need("juliet")]);
    let server_first = challenge(&s.provide(stored));
    assert!(s.events().is_empty());
    let (response, verifier) = client.response(&server_first);
    let out = s.send(&response);
    (s, verifier, out)
}

fn scram_login(hash: ScramHash) {
    let (mut s, verifier, out) = scram_attempt(hash, PASSWORD, Some(PASSWORD));
    // RFC 5802 §3: the server proves it holds ServerKey; the client checks v= itself.
    assert_eq!(
        String::from_utf8(sasl_success(&out)).unwrap(),
        String::from_utf8(verifier).unwrap()
    );
    assert_eq!(
        s.events(),
        [Ev::Authenticated("juliet@example.com".to_owned())]
    );
    assert!(s.open().has_child("bind", ns::BIND));
}

#[test]
fn scram_sha_256_login() {
    scram_login(ScramHash::Sha256);
}

#[test]
fn scram_sha_1_login() {
    scram_login(ScramHash::Sha1);
}

#[test]
fn scram_challenge_carries_the_stored_salt_and_count() {
    let mut s = Session::new(config(Transport::DirectTls));
    s.open();
    s.send(&ScramClient::new(ScramHash::Sha256, None, "juliet", PASSWORD).auth());
    s.events();
    let server_first = challenge(&s.provide(Some(PASSWORD)));
    assert_eq!(
        server_first,
        format!(
            "r=fyko+d2lbbFgONRv9qkxdawL{SERVER_NONCE},s={},i={ITERATIONS}",
            B64.encode(b"sixteen byte slt")
        )
    );
}

#[test]
fn scram_wrong_proof_is_not_authorized() {
    for hash in [ScramHash::Sha256, ScramHash::Sha1] {
        let (mut s, _, out) = scram_attempt(hash, "wrong", Some(PASSWORD));
        assert_eq!(sasl_failure(&out), "not-authorized");
        assert_eq!(s.events(), [failed(Some("juliet"), "not-authorized")]);
        assert!(!s.c2s.is_closed());
    }
}

#[test]
fn scram_unknown_user_fails_only_at_the_end() {
    // RFC 5802 §9: the challenge looks like a real one, so it does not tell that the account
    // does not exist; only the proof fails, as with a wrong password.
    let (mut s, _, out) = scram_attempt(ScramHash::Sha256, PASSWORD, None);
    assert_eq!(sasl_failure(&out), "not-authorized");
    assert_eq!(s.events(), [failed(Some("juliet"), "not-authorized")]);
}

// --- SASL protocol errors (RFC 6120 §6.5) ---

#[test]
fn sasl_protocol_errors() {
    let mut s = Session::new(C2sConfig {
        max_auth_attempts: 10,
        ..config(Transport::DirectTls)
    });
    s.open();
    let out = s.send(&auth("DIGEST-MD5", "="));
    assert_eq!(sasl_failure(&out), "invalid-mechanism");
    assert_eq!(s.events(), [failed(None, "invalid-mechanism")]);

    let out = s.send(&auth("PLAIN", "not base64!"));
    assert_eq!(sasl_failure(&out), "incorrect-encoding");
    assert_eq!(s.events(), [failed(None, "incorrect-encoding")]);

    let out = s.send("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>=</response>");
    assert_eq!(
        sasl_failure(&out),
        "malformed-request",
        "no exchange to respond to"
    );
    assert_eq!(s.events(), [failed(None, "malformed-request")]);

    // An abort in the middle of SCRAM ends that exchange (§6.4.4)...
    s.send(&ScramClient::new(ScramHash::Sha1, None, "juliet", PASSWORD).auth());
    assert_eq!(s.events(), [need("juliet")]);
    challenge(&s.provide(Some(PASSWORD)));
    let out = s.send("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    assert_eq!(sasl_failure(&out), "aborted");
    assert!(s.events().is_empty(), "an abort is not a failed attempt");

    // ...and a new one can start.
    s.send(&plain("", "juliet", PASSWORD));
    assert_eq!(s.events(), [need("juliet")]);
    sasl_success(&s.provide(Some(PASSWORD)));
    assert_eq!(
        s.events(),
        [Ev::Authenticated("juliet@example.com".to_owned())]
    );
}

#[test]
fn authzid_must_name_the_user() {
    // Outpost has no proxy logins (RFC 6120 §6.3.8): another identity is invalid-authzid.
    let mut s = Session::new(C2sConfig {
        max_auth_attempts: 10,
        ..config(Transport::DirectTls)
    });
    s.open();
    for authzid in ["romeo@example.com", "juliet@other.example", "not a jid@@"] {
        let out = s.send(&plain(authzid, "juliet", PASSWORD));
        assert_eq!(sasl_failure(&out), "invalid-authzid", "{authzid}");
        assert_eq!(s.events(), [failed(None, "invalid-authzid")]);
    }
    let scram = ScramClient::new(
        ScramHash::Sha256,
        Some("romeo@example.com"),
        "juliet",
        PASSWORD,
    );
    assert_eq!(sasl_failure(&s.send(&scram.auth())), "invalid-authzid");
    assert_eq!(s.events(), [failed(None, "invalid-authzid")]);

    // The user's own bare JID is fine, with SCRAM and with PLAIN.
    let scram = ScramClient::new(
        ScramHash::Sha256,
        Some("juliet@example.com"),
        "juliet",
        PASSWORD,
    );
    s.send(&scram.auth());
    assert_eq!(s.events(), [need("juliet")]);
    let (response, verifier) = scram.response(&challenge(&s.provide(Some(PASSWORD))));
    assert_eq!(sasl_success(&s.send(&response)), verifier);
    assert_eq!(
        s.events(),
        [Ev::Authenticated("juliet@example.com".to_owned())]
    );

    let mut s = Session::new(config(Transport::DirectTls));
    s.open();
    s.send(&plain("juliet@example.com", "juliet", PASSWORD));
    assert_eq!(s.events(), [need("juliet")]);
}

// --- Resource binding (RFC 6120 §7) ---

#[test]
fn bind_with_and_without_resource() {
    let mut s = authenticated();
    // Any other IQ before binding is refused, and the stream goes on.
    let out = s.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>");
    assert_eq!(out.len(), 1);
    let error = stanza(&out[0]);
    assert!(is_iq(error, "error", "r1"));
    let condition = error.get_child("error", ns::CLIENT).unwrap();
    assert_eq!(condition.attr("type"), Some("cancel"));
    assert!(condition.has_child("not-allowed", ns::STANZAS));
    assert!(s.events().is_empty());

    // Without a resource, or with an empty one, the server chooses (§7.6).
    assert!(s.send(&bind_iq("b1", None)).is_empty());
    assert_eq!(s.events(), [Ev::BindRequest(None)]);
    s.c2s
        .bind_result(Err(outpost_proto::stanza::StanzaError::new(
            outpost_proto::stanza::Condition::from_name("conflict").expect("condition"),
        )));
    s.output();
    assert!(s.send(&bind_iq("b2", Some("  "))).is_empty());
    assert_eq!(s.events(), [Ev::BindRequest(None)]);

    s.c2s.bind_result(Ok(jid("juliet@example.com/outpost-x1")));
    let out = s.output();
    assert_eq!(out.len(), 1);
    let result = stanza(&out[0]);
    assert!(is_iq(result, "result", "b2"));
    let bound = result
        .get_child("bind", ns::BIND)
        .and_then(|b| b.get_child("jid", ns::BIND))
        .expect("<bind><jid/></bind>");
    assert_eq!(bound.text(), "juliet@example.com/outpost-x1");
    assert_eq!(
        s.events(),
        [Ev::Bound("juliet@example.com/outpost-x1".to_owned())]
    );
    assert_eq!(
        s.c2s.jid().map(|j| j.as_str()),
        Some("juliet@example.com/outpost-x1")
    );
}

#[test]
fn bind_errors_carry_rfc_error_types() {
    let mut s = authenticated();
    // §7.6.2.1 resource-constraint is wait, §7.6.2.2 not-allowed is cancel, §7.7.2.1
    // bad-request is modify, §7.7.2.2 conflict is cancel (§8.3.3).
    let cases = [
        ("conflict", "cancel"),
        ("resource-constraint", "wait"),
        ("bad-request", "modify"),
        ("not-allowed", "cancel"),
    ];
    for (i, (condition, error_type)) in cases.into_iter().enumerate() {
        let id = format!("bind{i}");
        assert!(s.send(&bind_iq(&id, Some("balcony"))).is_empty());
        assert_eq!(s.events(), [Ev::BindRequest(Some("balcony".to_owned()))]);
        s.c2s
            .bind_result(Err(outpost_proto::stanza::StanzaError::new(
                outpost_proto::stanza::Condition::from_name(condition).expect("condition"),
            )));
        let out = s.output();
        assert_eq!(out.len(), 1);
        let reply = stanza(&out[0]);
        assert!(is_iq(reply, "error", &id), "{reply:?}");
        let error = reply.get_child("error", ns::CLIENT).expect("<error/>");
        assert_eq!(error.attr("type"), Some(error_type), "{condition}");
        assert!(error.has_child(condition, ns::STANZAS), "{error:?}");
        assert!(s.events().is_empty());
        assert!(s.c2s.jid().is_none());
        assert!(!s.c2s.is_closed());
    }
    // The client may try again.
    s.send(&bind_iq("last", Some("balcony2")));
    assert_eq!(s.events(), [Ev::BindRequest(Some("balcony2".to_owned()))]);
    s.c2s.bind_result(Ok(jid("juliet@example.com/balcony2")));
    assert!(is_iq(stanza(&s.output()[0]), "result", "last"));
    assert_eq!(
        s.events(),
        [Ev::Bound("juliet@example.com/balcony2".to_owned())]
    );
}

#[test]
fn endless_failed_binds_close_the_stream() {
    let mut s = authenticated();
    // RFC 6120 §7.7.3: retries are allowed, but the server may cap them (we allow 5).
    for i in 0..5 {
        s.send(&bind_iq(&format!("b{i}"), Some("balcony")));
        assert_eq!(s.events(), [Ev::BindRequest(Some("balcony".to_owned()))]);
        s.c2s
            .bind_result(Err(outpost_proto::stanza::StanzaError::new(
                outpost_proto::stanza::Condition::from_name("conflict").expect("condition"),
            )));
        s.output();
        if i < 4 {
            assert!(s.events().is_empty());
        } else {
            assert_eq!(s.events(), [Ev::Closed(Some("policy-violation"))]);
        }
    }
    assert!(s.c2s.is_closed());
}

#[test]
fn stanzas_sent_with_the_bind_request_wait_for_it() {
    let mut s = authenticated();
    let out = s.send(&format!(
        "{}<presence/><message to='romeo@example.net'><body>hi</body></message>",
        bind_iq("b1", Some("balcony"))
    ));
    assert!(out.is_empty());
    assert_eq!(s.events(), [Ev::BindRequest(Some("balcony".to_owned()))]);
    s.c2s.bind_result(Ok(jid("juliet@example.com/balcony")));
    let out = s.output();
    assert_eq!(out.len(), 1);
    let events = s.events();
    let [Ev::Bound(_), Ev::Stanza(presence), Ev::Stanza(message)] = &events[..] else {
        panic!("{events:?}");
    };
    assert!(presence.is("presence", ns::CLIENT));
    assert!(message.is("message", ns::CLIENT));
    for stanza in [presence, message] {
        assert_eq!(stanza.attr("from"), Some("juliet@example.com/balcony"));
    }
}

// --- The session (RFC 6120 §8) ---

#[test]
fn session_stamps_from_and_answers_the_session_iq() {
    let mut s = bound();
    let out = s.send(
        "<message to='romeo@example.net' from='romeo@example.net/orchard' id='m1' type='chat'>\
         <body>Art thou not Romeo?</body></message>",
    );
    assert!(out.is_empty());
    let events = s.events();
    let [Ev::Stanza(message)] = &events[..] else {
        panic!("{events:?}");
    };
    // §8.1.2.1: the server stamps the full JID; what the client claimed is overwritten.
    assert!(message.is("message", ns::CLIENT));
    assert_eq!(message.attr("from"), Some("juliet@example.com/balcony"));
    assert_eq!(message.attr("to"), Some("romeo@example.net"));
    assert_eq!(message.attr("id"), Some("m1"));
    assert_eq!(message.attr("type"), Some("chat"));
    assert_eq!(
        message.get_child("body", ns::CLIENT).map(Element::text),
        Some("Art thou not Romeo?".to_owned())
    );

    // RFC 6121 Appendix E: the legacy session IQ is answered here and goes no further.
    let out = s.send(
        "<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
    );
    assert_eq!(out.len(), 1);
    assert!(is_iq(stanza(&out[0]), "result", "sess1"));
    assert!(s.events().is_empty());

    // Other IQs are the server's to answer.
    assert!(
        s.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
            .is_empty()
    );
    let events = s.events();
    let [Ev::Stanza(iq)] = &events[..] else {
        panic!("{events:?}");
    };
    assert!(is_iq(iq, "get", "r1"));
    assert_eq!(iq.attr("from"), Some("juliet@example.com/balcony"));
}

#[test]
fn unknown_top_level_element_is_unsupported_stanza_type() {
    let mut s = bound();
    assert_stream_error(
        &s.send("<foo xmlns='urn:example:foo'/>"),
        "unsupported-stanza-type",
    );
    assert_eq!(s.events(), [Ev::Closed(Some("unsupported-stanza-type"))]);
}

#[test]
fn stanzas_before_bind_are_not_authorized() {
    // §7.1: no stanzas before a resource is bound.
    let mut s = authenticated();
    assert_stream_error(
        &s.send("<message to='romeo@example.net'><body>x</body></message>"),
        "not-authorized",
    );
    assert_eq!(s.events(), [Ev::Closed(Some("not-authorized"))]);

    // Nor before authentication (§4.9.3.12).
    let mut s = Session::new(config(Transport::DirectTls));
    s.open();
    assert_stream_error(&s.send("<presence/>"), "not-authorized");
    assert_eq!(s.events(), [Ev::Closed(Some("not-authorized"))]);
}

// --- Stream headers (RFC 6120 §4.7, §4.9.3) ---

#[test]
fn unknown_domain_is_host_unknown() {
    let mut s = Session::new(config(Transport::DirectTls));
    let out = s.send(&header_to("elsewhere.example"));
    assert_eq!(out.len(), 3, "our header, the error, the close: {out:?}");
    assert_eq!(opened(&out[0]).from.as_deref(), Some(DOMAIN));
    assert_stream_error(&out, "host-unknown");
    assert_eq!(s.events(), [Ev::Closed(Some("host-unknown"))]);
}

#[test]
fn the_addressed_domain_is_served() {
    let mut s = Session::new(config(Transport::DirectTls));
    let out = s.send(&header_to("Other.Example"));
    assert_eq!(opened(&out[0]).from.as_deref(), Some("other.example"));
    assert_eq!(s.c2s.domain(), "other.example");
    s.send(&plain("", "juliet", PASSWORD));
    assert_eq!(
        s.events(),
        [Ev::NeedCredentials(
            "juliet".to_owned(),
            "other.example".to_owned()
        )]
    );
    s.provide(Some(PASSWORD));
    assert_eq!(
        s.events(),
        [Ev::Authenticated("juliet@other.example".to_owned())]
    );

    // Without `to`, the first domain answers.
    let mut s = Session::new(config(Transport::DirectTls));
    let out = s.send(&header_with("xmlns='jabber:client' version='1.0'"));
    assert_eq!(opened(&out[0]).from.as_deref(), Some(DOMAIN));
    features_of(&out[1]);
}

#[test]
fn wrong_namespaces_are_invalid_namespace() {
    for bad in [
        // The content namespace of another kind of stream.
        header_with(&format!(
            "xmlns='jabber:server' to='{DOMAIN}' version='1.0'"
        )),
        // No content namespace at all.
        header_with(&format!("to='{DOMAIN}' version='1.0'")),
        // The stream element in the wrong namespace.
        format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='urn:example:not-streams' to='{DOMAIN}' version='1.0'>"
        ),
    ] {
        let mut s = Session::new(config(Transport::DirectTls));
        let out = s.send(&bad);
        // §4.9.1.1: the error goes on a stream we opened.
        assert_eq!(out.len(), 3, "{bad}: {out:?}");
        opened(&out[0]);
        assert_stream_error(&out, "invalid-namespace");
        assert_eq!(s.events(), [Ev::Closed(Some("invalid-namespace"))]);
    }
}

#[test]
fn version_is_compared_numerically() {
    // §4.7.5: a missing version means 0.9, which we do not speak; neither do we speak 2.0.
    for version in [None, Some("0.9"), Some("2.0"), Some("1"), Some("one.zero")] {
        let attrs = match version {
            Some(v) => format!("xmlns='jabber:client' to='{DOMAIN}' version='{v}'"),
            None => format!("xmlns='jabber:client' to='{DOMAIN}'"),
        };
        let mut s = Session::new(config(Transport::DirectTls));
        let out = s.send(&header_with(&attrs));
        assert_eq!(out.len(), 3, "{version:?}: {out:?}");
        opened(&out[0]);
        assert_stream_error(&out, "unsupported-version");
        assert_eq!(s.events(), [Ev::Closed(Some("unsupported-version"))]);
    }
    // A higher minor version is answered with ours (the lower), not refused; numbers, not
    // strings, so 01.0 is 1.0.
    for version in ["1.1", "1.10", "01.0"] {
        let mut s = Session::new(config(Transport::DirectTls));
        let out = s.send(&header_with(&format!(
            "xmlns='jabber:client' to='{DOMAIN}' version='{version}'"
        )));
        assert_eq!(out.len(), 2, "{version}: {out:?}");
        opened(&out[0]);
        features_of(&out[1]);
        assert!(s.events().is_empty());
    }
}

#[test]
fn anything_but_a_stream_header_is_refused() {
    // A stanza as the root: its namespace is not the streams namespace (§4.9.3.10).
    let mut s = Session::new(config(Transport::DirectTls));
    let out = s.send("<message xmlns='jabber:client' to='romeo@example.net'/>");
    assert_eq!(out.len(), 3, "{out:?}");
    opened(&out[0]);
    assert_stream_error(&out, "invalid-namespace");
    assert_eq!(s.events(), [Ev::Closed(Some("invalid-namespace"))]);

    // Bytes that are not XML at all (§4.9.3.13).
    let mut s = Session::new(config(Transport::DirectTls));
    let out = s.send("HELLO\r\n<");
    assert_eq!(out.len(), 3, "{out:?}");
    opened(&out[0]);
    assert_stream_error(&out, "not-well-formed");
    assert_eq!(s.events(), [Ev::Closed(Some("not-well-formed"))]);
}

// --- Closing (RFC 6120 §4.4) ---

#[test]
fn client_close_is_answered_with_ours() {
    let mut s = bound();
    let out = s.send("</stream:stream>");
    assert_eq!(out, [XmlEvent::StreamClose]);
    assert_eq!(s.events(), [Ev::Closed(None)]);
    assert!(s.c2s.is_closed());
    assert!(s.send("<presence/>").is_empty());
    assert!(s.events().is_empty());
}

#[test]
fn server_close() {
    let mut s = bound();
    s.c2s.close(Some("system-shutdown"), None);
    let out = s.output();
    assert_eq!(out.len(), 2);
    assert_stream_error(&out, "system-shutdown");
    assert_eq!(s.events(), [Ev::Closed(Some("system-shutdown"))]);
    s.c2s.close(Some("system-shutdown"), None);
    assert!(s.output().is_empty(), "closing twice writes nothing");
    assert!(s.events().is_empty());

    let mut s = bound();
    s.c2s.close(None, None);
    assert_eq!(s.output(), [XmlEvent::StreamClose]);
    assert_eq!(s.events(), [Ev::Closed(None)]);

    // Before the client's header, our header comes first (§4.9.1.1), with the text.
    let mut s = Session::new(config(Transport::DirectTls));
    s.c2s.close(Some("system-shutdown"), Some("restarting"));
    let out = s.output();
    assert_eq!(out.len(), 3);
    opened(&out[0]);
    assert_stream_error(&out, "system-shutdown");
    let text = stanza(&out[1]).get_child("text", NS_XMPP_STREAMS).unwrap();
    assert_eq!(text.text(), "restarting");
}

// --- Framing ---

/// Plays a whole login over STARTTLS with the client's bytes cut into `chunk`-byte pieces,
/// answering events as the server does. Returns the events and the server's raw bytes.
fn login_transcript(chunk: usize) -> (Vec<Ev>, Vec<u8>) {
    let steps = [
        header(),
        STARTTLS.to_owned(),
        format!("{}{}", header(), plain("", "juliet", PASSWORD)),
        format!("{}{}", header(), bind_iq("b1", Some("balcony"))),
        "<message to='romeo@example.net' from='mallory@evil.example' id='m1'><body>hi</body>\
         </message> <iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/>\
         </iq>\n<presence/></stream:stream>"
            .to_owned(),
    ];
    let mut c2s = C2sStream::new(config(Transport::StartTls), "sid".to_owned());
    let mut events = Vec::new();
    let mut out = Vec::new();
    for step in &steps {
        for piece in step.as_bytes().chunks(chunk) {
            c2s.handle_input(piece);
            while let Some(event) = c2s.poll_event() {
                match &event {
                    Event::StartTls => c2s.tls_established(),
                    Event::NeedCredentials { .. } => provide(&mut c2s, Some(PASSWORD)),
                    Event::BindRequest { resource } => c2s.bind_result(Ok(jid(&format!(
                        "juliet@example.com/{}",
                        resource.as_deref().unwrap_or("generated")
                    )))),
                    _ => {}
                }
                events.push(Ev::from(event));
            }
            out.extend(c2s.take_output());
        }
    }
    (events, out)
}

#[test]
fn byte_at_a_time_gives_the_same_transcript() {
    let (events, out) = login_transcript(usize::MAX);
    let [
        Ev::StartTls,
        Ev::NeedCredentials(user, _),
        Ev::Authenticated(_),
        Ev::BindRequest(Some(resource)),
        Ev::Bound(bound),
        Ev::Stanza(message),
        Ev::Stanza(presence),
        Ev::Closed(None),
    ] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert_eq!((user.as_str(), resource.as_str()), ("juliet", "balcony"));
    assert_eq!(bound, "juliet@example.com/balcony");
    assert_eq!(message.attr("from"), Some(bound.as_str()));
    assert!(presence.is("presence", ns::CLIENT));
    // Three streams (plaintext, TLS, authenticated), each opened by us and the last closed.
    let parsed = parse_wire(&mut StreamReader::new(Limits::default()), &out);
    let headers = parsed
        .iter()
        .filter(|e| matches!(e, XmlEvent::StreamOpen(_)))
        .count();
    assert_eq!(headers, 3);
    assert_eq!(parsed.last(), Some(&XmlEvent::StreamClose));

    for chunk in [1, 2, 7, 100] {
        let (chunked_events, chunked_out) = login_transcript(chunk);
        assert_eq!(chunked_events, events, "chunk {chunk}");
        assert_eq!(chunked_out, out, "chunk {chunk}");
    }
}

#[test]
fn oversized_and_deep_stanzas_are_policy_violations() {
    let small = C2sConfig {
        limits: Limits {
            max_stanza_bytes: 1024,
            max_depth: 8,
        },
        ..config(Transport::DirectTls)
    };
    // Refused while still arriving: the element never has to be complete.
    let mut s = Session::new(small.clone());
    s.open();
    let big = format!("<message><body>{}", "x".repeat(1100));
    let out = s.send(&big);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_stream_error(&out, "policy-violation");
    assert_eq!(s.events(), [Ev::Closed(Some("policy-violation"))]);
    assert!(s.c2s.is_closed());

    // The stream is depth 1 and the stanza depth 2, so eight levels is the last one allowed.
    let nested = |levels: usize| {
        format!(
            "<message>{}{}</message>",
            "<a>".repeat(levels - 2),
            "</a>".repeat(levels - 2)
        )
    };
    let mut s = Session::new(small.clone());
    s.open();
    assert_stream_error(&s.send(&nested(9)), "policy-violation");
    assert_eq!(s.events(), [Ev::Closed(Some("policy-violation"))]);

    let mut s = Session::new(small);
    s.open();
    assert_stream_error(&s.send(&nested(8)), "not-authorized");
    assert_eq!(
        s.events(),
        [Ev::Closed(Some("not-authorized"))],
        "within the limits, the message is judged as a message"
    );
}

#[test]
fn a_user_authenticated_outside_the_stream_goes_straight_to_binding() {
    let mut c2s = C2sStream::new(config(Transport::StartTls), "sid".to_owned());
    c2s.authenticated_externally(outpost_proto::jid::BareJid::new("juliet@example.com").unwrap());
    c2s.handle_input(header().as_bytes());
    let features = c2s.take_output();
    let text = String::from_utf8_lossy(&features);
    assert!(text.contains(ns::BIND), "{text}");
    assert!(
        !text.contains(ns::SASL) && !text.contains(ns::TLS),
        "{text}"
    );
    c2s.handle_input(bind_iq("b1", Some("api")).as_bytes());
    let Some(Event::BindRequest { resource }) = c2s.poll_event() else {
        panic!("no bind request");
    };
    assert_eq!(resource.as_deref(), Some("api"));
    c2s.bind_result(Ok(jid("juliet@example.com/api")));
    assert!(matches!(c2s.poll_event(), Some(Event::Bound { .. })));

    // The stream is for that user's domain only, though the server hosts others.
    let mut other = C2sStream::new(config(Transport::StartTls), "sid".to_owned());
    other.authenticated_externally(outpost_proto::jid::BareJid::new("juliet@example.com").unwrap());
    other.handle_input(header_to("other.example").as_bytes());
    let text = String::from_utf8_lossy(&other.take_output()).into_owned();
    assert!(text.contains("host-unknown"), "{text}");
}
