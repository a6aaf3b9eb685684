//! A small raw XMPP client for driving a server over real sockets.
//!
//! It speaks just enough XMPP (STARTTLS or direct TLS, SASL PLAIN and SCRAM, bind) to log
//! in; everything after that is raw XML strings in and parsed elements out, so tests see
//! exactly what a client would.
//!
//! Tests never sleep to wait for the server. They wait for the stanza they expect, and to
//! show that something did *not* arrive they ping the server and check that the answer
//! comes before anything else ([`Client::assert_quiet`], [`Client::assert_none_before_ping`]):
//! the server handles one connection's input in order, so anything routed to the client
//! before the ping would be written before the ping's answer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use outpost_proto::minidom::Element;
use outpost_proto::xml::{Limits, StreamHeader, StreamReader, XmlEvent};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::scram::{Scram, ScramClient};
use crate::wait::WAIT;

pub const NS_CLIENT: &str = "jabber:client";
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_ROSTER: &str = "jabber:iq:roster";
pub const NS_REGISTER: &str = "jabber:iq:register";
pub const NS_REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const NS_VERSION: &str = "jabber:iq:version";
pub const NS_PING: &str = "urn:xmpp:ping";
pub const NS_VCARD: &str = "vcard-temp";
pub const NS_BLOCKING: &str = "urn:xmpp:blocking";
pub const NS_BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
pub const NS_DELAY: &str = "urn:xmpp:delay";
pub const NS_MAM: &str = "urn:xmpp:mam:2";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
pub const NS_SID: &str = "urn:xmpp:sid:0";
pub const NS_SM: &str = "urn:xmpp:sm:3";
pub const NS_CSI: &str = "urn:xmpp:csi:0";

/// A process-wide counter for stanza ids and nonces.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A byte stream the client can run over: TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub enum Transport {
    Raw(Box<dyn Io>),
    /// Taken for a TLS upgrade.
    Gone,
}

pub struct Client {
    pub io: Transport,
    pub reader: StreamReader,
    /// The header of the server's current stream.
    pub header: Option<StreamHeader>,
    pub features: Option<Element>,
    pub jid: String,
    /// The domain streams are opened to.
    pub domain: String,
    /// The socket reached EOF (or failed).
    pub closed: bool,
    /// The server sent `</stream:stream>`.
    pub saw_stream_close: bool,
    /// Stanzas read while waiting for something else (see [`Client::recv_stashing`]),
    /// handed out first by [`Client::recv`].
    pub stash: VecDeque<Element>,
    /// How long one read, or one search for a stanza, may take before the test fails:
    /// [`WAIT`] unless the test needs longer (servers in other processes that restart).
    pub wait: Duration,
    /// Stream management (XEP-0198), once enabled or resumed.
    pub sm: Option<Sm>,
}

/// The client's side of stream management: stanzas received, and whether the server's
/// `<r/>` is answered at once (the test may want to hold acknowledgements back).
#[derive(Clone, Copy, Debug)]
pub struct Sm {
    pub h: u32,
    pub auto_ack: bool,
}

impl Client {
    pub fn new(io: Box<dyn Io>) -> Client {
        Client {
            io: Transport::Raw(io),
            reader: StreamReader::new(Limits {
                max_stanza_bytes: 16 << 20,
                max_depth: 256,
            }),
            header: None,
            features: None,
            jid: String::new(),
            domain: "localhost".to_owned(),
            closed: false,
            saw_stream_close: false,
            stash: VecDeque::new(),
            wait: WAIT,
            sm: None,
        }
    }

    /// A plain TCP connection to `addr` for streams to `domain`, with nothing sent yet.
    pub async fn connect(addr: SocketAddr, domain: &str) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut c = Client::new(Box::new(tcp));
        c.domain = domain.to_owned();
        c
    }

    /// A plain TCP connection with the stream opened and the (pre-TLS) features read.
    pub async fn connect_open(addr: SocketAddr, domain: &str) -> Client {
        let mut c = Client::connect(addr, domain).await;
        c.open().await;
        c.features = Some(c.recv().await);
        c
    }

    fn io(&mut self) -> &mut Box<dyn Io> {
        match &mut self.io {
            Transport::Raw(io) => io,
            Transport::Gone => panic!("no transport"),
        }
    }

    pub async fn send(&mut self, xml: &str) {
        let io = self.io();
        io.write_all(xml.as_bytes()).await.expect("write");
        io.flush().await.expect("flush");
    }

    /// Writes, tolerating a server that already closed the connection.
    pub async fn try_send(&mut self, xml: &[u8]) -> std::io::Result<()> {
        let io = self.io();
        io.write_all(xml).await?;
        io.flush().await
    }

    pub async fn open(&mut self) {
        let domain = self.domain.clone();
        self.open_to(&domain).await;
    }

    /// Opens a stream to `host` and waits for the server's header.
    pub async fn open_to(&mut self, host: &str) {
        self.send(&stream_open(host)).await;
        match self.next_event().await {
            Some(XmlEvent::StreamOpen(h)) => self.header = Some(h),
            other => panic!("expected a stream header, got {other:?}"),
        }
    }

    /// STARTTLS (RFC 6120 §5.4) on a stream whose features were read, then the new stream
    /// and its features.
    pub async fn starttls(&mut self, connector: &TlsConnector) {
        let features = self.features.take().expect("features");
        assert!(features.has_child("starttls", NS_TLS));
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let proceed = self.recv().await;
        assert_eq!(proceed.name(), "proceed");
        let Transport::Raw(tcp) = std::mem::replace(&mut self.io, Transport::Gone) else {
            panic!("not raw")
        };
        let tls = connector
            .connect(
                ServerName::try_from(self.domain.clone()).expect("name"),
                tcp,
            )
            .await
            .expect("TLS handshake");
        self.io = Transport::Raw(Box::new(tls));
        self.reader.reset();
        self.open().await;
        self.features = Some(self.recv().await);
    }

    /// The next event from the server, or `None` at EOF.
    pub async fn next_event(&mut self) -> Option<XmlEvent> {
        let mut buf = vec![0u8; 8192];
        loop {
            match self.reader.next() {
                Ok(Some(XmlEvent::Stanza(el))) if self.sm.is_some() => {
                    if el.is("r", NS_SM) {
                        self.answer_ack_request().await;
                        continue;
                    }
                    if el.ns() == NS_CLIENT
                        && matches!(el.name(), "message" | "presence" | "iq")
                        && let Some(sm) = self.sm.as_mut()
                    {
                        sm.h = sm.h.wrapping_add(1);
                    }
                    return Some(XmlEvent::Stanza(el));
                }
                Ok(Some(ev)) => {
                    if ev == XmlEvent::StreamClose {
                        self.saw_stream_close = true;
                    }
                    return Some(ev);
                }
                Ok(None) => {}
                Err(e) => panic!("server sent bad XML: {e}"),
            }
            if self.closed {
                return None;
            }
            let wait = self.wait;
            let n = tokio::time::timeout(wait, self.io().read(&mut buf))
                .await
                .expect("timed out waiting for the server")
                // A reset after the server closed counts as the end of the stream.
                .unwrap_or(0);
            if n == 0 {
                self.closed = true;
                return None;
            }
            self.reader.feed(&buf[..n]);
        }
    }

    /// Answers the server's `<r/>` with the count so far, unless acknowledgements are held.
    async fn answer_ack_request(&mut self) {
        if let Some(sm) = self.sm.filter(|sm| sm.auto_ack) {
            let _ = self
                .try_send(format!("<a xmlns='{NS_SM}' h='{}'/>", sm.h).as_bytes())
                .await;
        }
    }

    /// Enables stream management with resumption (XEP-0198 §3) and returns the server's
    /// answer (`<enabled/>` or `<failed/>`). From then on the client counts stanzas and
    /// answers `<r/>`.
    pub async fn enable_sm(&mut self) -> Element {
        self.send(&format!("<enable xmlns='{NS_SM}' resume='true'/>"))
            .await;
        let answer = self.recv_stashing(|el| el.ns() == NS_SM).await;
        if answer.name() == "enabled" {
            self.sm = Some(Sm {
                h: 0,
                auto_ack: true,
            });
        }
        answer
    }

    /// On an authenticated stream, asks to resume `previd` having received `h` stanzas on
    /// it (XEP-0198 §5); returns `<resumed/>` or `<failed/>`. Resumed, the stream counts
    /// on from `h` as `jid`.
    pub async fn resume(&mut self, previd: &str, h: u32, jid: &str) -> Element {
        self.send(&format!(
            "<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>"
        ))
        .await;
        let answer = self.recv_stashing(|el| el.ns() == NS_SM).await;
        if answer.name() == "resumed" {
            self.sm = Some(Sm { h, auto_ack: true });
            self.jid = jid.to_owned();
        }
        answer
    }

    /// The next stanza; panics on close or timeout.
    pub async fn recv(&mut self) -> Element {
        if let Some(el) = self.stash.pop_front() {
            return el;
        }
        match self.next_event().await {
            Some(XmlEvent::Stanza(el)) => el,
            other => panic!("{}: expected a stanza, got {other:?}", self.jid),
        }
    }

    /// The next stanza for which `pred` holds, skipping others.
    pub async fn recv_where(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "no matching stanza");
            let el = self.recv().await;
            if pred(&el) {
                return el;
            }
        }
    }

    /// Every stanza up to and including the first for which `pred` holds.
    pub async fn recv_until(&mut self, pred: impl Fn(&Element) -> bool) -> Vec<Element> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut seen = Vec::new();
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no matching stanza in {seen:?}",
                self.jid
            );
            let el = self.recv().await;
            let done = pred(&el);
            seen.push(el);
            if done {
                return seen;
            }
        }
    }

    /// The next stanza for which `pred` holds; stanzas read before it are kept for later
    /// [`Client::recv`] calls, in order. For waiting on answers without losing what the
    /// server sent meanwhile (offline messages may come before a presence reflection).
    pub async fn recv_stashing(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        if let Some(i) = self.stash.iter().position(&pred) {
            return self.stash.remove(i).expect("index");
        }
        loop {
            let el = match self.next_event().await {
                Some(XmlEvent::Stanza(el)) => el,
                other => panic!("{}: expected a stanza, got {other:?}", self.jid),
            };
            if pred(&el) {
                return el;
            }
            self.stash.push_back(el);
        }
    }

    /// The next message stanza, skipping presence and IQs.
    pub async fn recv_message(&mut self) -> Element {
        self.recv_where(|el| el.name() == "message").await
    }

    /// The next presence from `from` (full or bare JID, compared exactly).
    pub async fn recv_presence_from(&mut self, from: &str) -> Element {
        self.recv_where(|el| el.name() == "presence" && el.attr("from") == Some(from))
            .await
    }

    /// The next roster push (RFC 6121 §2.1.6) about `contact`; answers it as a client must.
    /// Other stanzas read meanwhile are kept for [`Client::recv`].
    pub async fn recv_roster_push(&mut self, contact: &str) -> Element {
        let push = self
            .recv_stashing(|el| {
                el.name() == "iq"
                    && el.attr("type") == Some("set")
                    && roster_items(el)
                        .iter()
                        .any(|i| i.attr("jid") == Some(contact))
            })
            .await;
        let item = roster_items(&push)
            .into_iter()
            .find(|i| i.attr("jid") == Some(contact))
            .cloned()
            .expect("item");
        let id = push.attr("id").unwrap_or_default().to_owned();
        self.send(&format!("<iq type='result' id='{id}'/>")).await;
        item
    }

    /// Reads until the server closes the stream; returns the stream error condition.
    pub async fn expect_close(&mut self) -> Option<String> {
        let mut condition = None;
        loop {
            match self.next_event().await {
                Some(XmlEvent::Stanza(el)) if el.name() == "error" => {
                    condition = el.children().next().map(|c| c.name().to_owned());
                }
                Some(XmlEvent::Stanza(_)) => {}
                Some(XmlEvent::StreamOpen(_)) => {}
                Some(XmlEvent::StreamClose) | None => return condition,
            }
        }
    }

    /// Reads until the stream ends; whether it ended with `<see-other-host/>` naming
    /// `host` (RFC 6120 §4.9.3.19).
    pub async fn saw_see_other_host(&mut self, host: &str) -> bool {
        let mut seen = false;
        loop {
            match self.next_event().await {
                Some(XmlEvent::Stanza(el)) if el.name() == "error" => {
                    seen |= is_see_other_host(&el, host);
                }
                Some(XmlEvent::StreamClose) | None => return seen,
                Some(_) => {}
            }
        }
    }

    /// Like [`Client::expect_close`], and also requires the closing `</stream:stream>`
    /// (RFC 6120 §4.4) rather than a bare TCP close.
    pub async fn expect_stream_error(&mut self) -> String {
        let condition = self.expect_close().await;
        assert!(
            self.saw_stream_close,
            "the stream ended without </stream:stream> (condition {condition:?})"
        );
        condition.expect("a stream error before the close")
    }

    /// Closes our stream and waits for the server to close its own (RFC 6120 §4.4).
    pub async fn close(&mut self) {
        self.send("</stream:stream>").await;
        assert_eq!(self.expect_close().await, None, "clean close");
        assert!(self.saw_stream_close);
    }

    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Result<(), String> {
        let payload = B64.encode(format!("\0{user}\0{password}"));
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
        ))
        .await;
        let answer = self.recv().await;
        if answer.name() != "success" {
            return Err(sasl_condition(&answer));
        }
        self.after_auth(user).await;
        Ok(())
    }

    /// The client side of SCRAM without channel binding (RFC 5802 §3, §7), checking the
    /// server's signature on success.
    pub async fn auth_scram(
        &mut self,
        mech: Scram,
        user: &str,
        password: &str,
    ) -> Result<(), String> {
        let scram = ScramClient::new(mech, user, &unique("fyko+d2lbbFgONRv9qkxdawL"));
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{}</auth>",
            mech.mechanism(),
            B64.encode(scram.client_first())
        ))
        .await;
        let challenge = self.recv().await;
        if challenge.name() != "challenge" {
            return Err(sasl_condition(&challenge));
        }
        let server_first =
            String::from_utf8(B64.decode(challenge.text().trim()).expect("base64")).expect("utf8");
        let fin = scram
            .respond(&server_first, password)
            .unwrap_or_else(|e| panic!("{e}: {server_first}"));
        self.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            B64.encode(&fin.message)
        ))
        .await;
        let answer = self.recv().await;
        if answer.name() != "success" {
            return Err(sasl_condition(&answer));
        }
        let server_final =
            String::from_utf8(B64.decode(answer.text().trim()).expect("base64")).expect("utf8");
        assert_eq!(
            server_final, fin.expected_server_final,
            "the server proves it knows the key"
        );
        self.after_auth(user).await;
        Ok(())
    }

    /// RFC 6120 §6.4.6: a new stream after SASL success.
    async fn after_auth(&mut self, user: &str) {
        self.reader.reset();
        self.open().await;
        self.features = Some(self.recv().await);
        self.jid = format!("{user}@{}", self.domain);
    }

    /// Binds a resource (`None`: the server picks one); the bound JID or the error reply.
    pub async fn try_bind(&mut self, resource: Option<&str>) -> Result<String, Element> {
        let id = unique("bind");
        let inner = match resource {
            Some(r) => format!("<resource>{r}</resource>"),
            None => String::new(),
        };
        self.send(&format!(
            "<iq type='set' id='{id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             {inner}</bind></iq>"
        ))
        .await;
        let reply = self.recv().await;
        assert_eq!(reply.attr("id"), Some(id.as_str()));
        if reply.attr("type") != Some("result") {
            return Err(reply);
        }
        let jid = reply
            .get_child("bind", NS_BIND)
            .and_then(|b| b.get_child("jid", NS_BIND))
            .map(|j| j.text())
            .expect("bound jid");
        self.jid = jid.clone();
        Ok(jid)
    }

    pub async fn bind(&mut self, resource: &str) {
        if let Err(e) = self.try_bind(Some(resource)).await {
            panic!("bind failed: {e:?}");
        }
    }

    /// SASL PLAIN and resource binding on a stream whose features were read (over TLS, or
    /// where the server allows plaintext authentication).
    pub async fn login_plain(&mut self, user: &str, password: &str, resource: &str) {
        self.auth_plain(user, password)
            .await
            .unwrap_or_else(|e| panic!("login {user}: {e}"));
        self.bind(resource).await;
    }

    /// In-band registration (XEP-0077 §3.1) on this stream; the server's answer.
    pub async fn register(&mut self, user: &str, password: &str) -> Element {
        self.query(
            "set",
            None,
            &format!(
                "<query xmlns='jabber:iq:register'><username>{user}</username>\
                 <password>{password}</password></query>"
            ),
        )
        .await
    }

    /// Sends initial presence and waits for its reflection.
    pub async fn available(&mut self) {
        self.presence("<presence/>").await;
    }

    /// Sends available presence with a priority and waits for its reflection.
    pub async fn available_with_priority(&mut self, priority: i8) {
        self.presence(&format!(
            "<presence><priority>{priority}</priority></presence>"
        ))
        .await;
    }

    /// Sends a broadcast presence and waits for the server to reflect it to us.
    pub async fn presence(&mut self, xml: &str) {
        self.send(xml).await;
        let me = self.jid.clone();
        self.recv_stashing(|el| el.name() == "presence" && el.attr("from") == Some(me.as_str()))
            .await;
    }

    /// Sends an IQ and returns its answer; other stanzas are kept for [`Client::recv`].
    pub async fn iq(&mut self, id: &str, xml: &str) -> Element {
        self.send(xml).await;
        self.recv_stashing(|el| el.name() == "iq" && el.attr("id") == Some(id))
            .await
    }

    /// Sends an IQ get or set with `payload`, optionally `to` someone, and returns the
    /// answer.
    pub async fn query(&mut self, ty: &str, to: Option<&str>, payload: &str) -> Element {
        let id = unique("q");
        let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
        self.iq(
            &id,
            &format!("<iq type='{ty}' id='{id}'{to}>{payload}</iq>"),
        )
        .await
    }

    /// Queries an archive (XEP-0313): the user's own with `to` = `None`, a room's
    /// otherwise; `inner` goes inside `<query/>` (a form, an RSM `<set/>`). Returns the
    /// results in the order they came, as (archive id, forwarded message), and the final
    /// IQ (a result with `<fin/>`, or an error).
    pub async fn mam(
        &mut self,
        to: Option<&str>,
        inner: &str,
    ) -> (Vec<(String, Element)>, Element) {
        let id = unique("mam");
        let qid = unique("qid");
        let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
        self.send(&format!(
            "<iq type='set' id='{id}'{to}><query xmlns='{NS_MAM}' queryid='{qid}'>{inner}</query></iq>"
        ))
        .await;
        let mut results = Vec::new();
        loop {
            let el = self
                .recv_stashing(|el| {
                    (el.name() == "iq" && el.attr("id") == Some(id.as_str()))
                        || el
                            .get_child("result", NS_MAM)
                            .is_some_and(|r| r.attr("queryid") == Some(qid.as_str()))
                })
                .await;
            let Some(result) = el.get_child("result", NS_MAM) else {
                return (results, el);
            };
            let message = result
                .get_child("forwarded", NS_FORWARD)
                .and_then(|f| f.get_child("message", NS_CLIENT))
                .expect("a forwarded message in the result")
                .clone();
            results.push((result.attr("id").unwrap_or_default().to_owned(), message));
        }
    }

    /// Sends available presence announcing entity capabilities (XEP-0115) for `features`,
    /// and answers the server's question about them if it asks (it does the first time it
    /// sees the hash). Returns what the server sent meanwhile, the question excepted.
    pub async fn announce_caps(&mut self, features: &[&str]) -> Vec<Element> {
        let ver = caps_ver(features);
        self.send(&format!(
            "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
             node='https://outpost.test/client' ver='{ver}'/></presence>"
        ))
        .await;
        let mut seen = Vec::new();
        for el in self.barrier().await {
            let question = el.name() == "iq"
                && el.attr("type") == Some("get")
                && el
                    .get_child("query", NS_DISCO_INFO)
                    .is_some_and(|q| q.attr("node").is_some_and(|n| n.ends_with(&ver)));
            if !question {
                seen.push(el);
                continue;
            }
            let items: String = features
                .iter()
                .map(|f| format!("<feature var='{f}'/>"))
                .collect();
            self.send(&format!(
                "<iq type='result' id='{}' to='{}'><query xmlns='{NS_DISCO_INFO}' \
                 node='https://outpost.test/client#{ver}'>\
                 <identity category='client' type='pc' name='testkit'/>{items}</query></iq>",
                el.attr("id").unwrap_or(""),
                el.attr("from").unwrap_or(""),
            ))
            .await;
        }
        seen
    }

    /// The roster result (RFC 6121 §2.1.3), which also makes this resource an
    /// "interested resource" that gets roster pushes.
    pub async fn roster_get(&mut self) -> Element {
        let reply = self
            .query("get", None, "<query xmlns='jabber:iq:roster'/>")
            .await;
        assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
        reply
    }

    /// Pings the server (XEP-0199) and returns every stanza that came before its answer.
    /// The server handles one stream's input in order, so once the answer is here,
    /// everything this client sent before has been handled.
    pub async fn barrier(&mut self) -> Vec<Element> {
        let id = unique("barrier");
        self.send(&format!(
            "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        let mut before = Vec::new();
        loop {
            let el = self.recv().await;
            if el.name() == "iq" && el.attr("id") == Some(id.as_str()) {
                assert_eq!(el.attr("type"), Some("result"));
                return before;
            }
            before.push(el);
        }
    }

    /// Sends a ping to the server and checks that its answer is the very next stanza:
    /// nothing else was on its way to this client.
    pub async fn assert_quiet(&mut self) {
        self.assert_none_before_ping(|_| true, "any stanza").await;
    }

    /// Sends a ping to the server and reads up to its answer, failing if a stanza matching
    /// `unwanted` comes first.
    pub async fn assert_none_before_ping(
        &mut self,
        unwanted: impl Fn(&Element) -> bool,
        what: &str,
    ) {
        for el in self.barrier().await {
            assert!(!unwanted(&el), "{}: unexpected {what}: {el:?}", self.jid);
        }
    }
}

/// The XEP-0115 verification hash of a client with identity `client/pc/testkit` and
/// `features` (§5.1).
pub fn caps_ver(features: &[&str]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sorted = features.to_vec();
    sorted.sort_unstable();
    let mut s = String::from("client/pc//testkit<");
    for f in sorted {
        s.push_str(f);
        s.push('<');
    }
    base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()))
}

/// A client's stream header to `host` (RFC 6120 §4.7).
pub fn stream_open(host: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{host}' version='1.0' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
}

/// The condition of a SASL `<failure/>`, or `stream error <condition>` when the server
/// ended the stream instead (a hub sending the client home with `<see-other-host/>`).
fn sasl_condition(failure: &Element) -> String {
    if failure.name() == "error" {
        let condition = failure.children().next().map_or("", |c| c.name());
        return format!("stream error {condition}");
    }
    assert_eq!(
        failure.name(),
        "failure",
        "unexpected SASL answer {failure:?}"
    );
    failure
        .children()
        .find(|c| c.name() != "text")
        .map(|c| c.name().to_owned())
        .unwrap_or_default()
}

/// The defined condition of a stanza error (RFC 6120 §8.3.3) and the error's type.
pub fn stanza_error(el: &Element) -> (String, String) {
    assert_eq!(el.attr("type"), Some("error"), "not an error: {el:?}");
    let error = el.get_child("error", NS_CLIENT).expect("an <error/> child");
    let condition = error
        .children()
        .find(|c| c.ns() == NS_STANZAS && c.name() != "text")
        .map(|c| c.name().to_owned())
        .expect("a defined condition");
    (condition, error.attr("type").unwrap_or_default().to_owned())
}

/// A chat message to `to` with body `text` (not escaped).
pub fn chat(to: &str, text: &str) -> String {
    format!("<message to='{to}' type='chat'><body>{text}</body></message>")
}

/// The text of a message's `<body/>`.
pub fn body(el: &Element) -> Option<String> {
    el.get_child("body", NS_CLIENT).map(|b| b.text())
}

/// The `<item/>`s of a roster result or push.
pub fn roster_items(iq: &Element) -> Vec<&Element> {
    iq.get_child("query", NS_ROSTER)
        .map(|q| q.children().filter(|c| c.is("item", NS_ROSTER)).collect())
        .unwrap_or_default()
}

/// Whether `el` is a message from `from` with body `text`.
pub fn is_message(el: &Element, from: &str, text: &str) -> bool {
    el.name() == "message" && el.attr("from") == Some(from) && body(el).as_deref() == Some(text)
}

/// Whether `el` is a message from `from` with any body.
pub fn is_chat_from(el: &Element, from: &str) -> bool {
    el.name() == "message" && el.attr("from") == Some(from) && body(el).is_some()
}

/// A loopback address where nothing listens, so connections are refused: bound by the OS,
/// then released.
/// Whether `el` is a stream error `<see-other-host/>` naming `host`.
pub fn is_see_other_host(el: &Element, host: &str) -> bool {
    el.get_child("see-other-host", "urn:ietf:params:xml:ns:xmpp-streams")
        .is_some_and(|s| s.text() == host)
}

pub async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}
