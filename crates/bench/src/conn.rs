//! One client connection: TCP (optionally STARTTLS), stream headers, SASL PLAIN or
//! SCRAM-SHA-1, resource binding, and reading framed stanzas.
//!
//! Each connection keeps a socket, a read buffer that is freed when idle, and a few
//! counters; there is no per-connection task unless a scenario spawns one.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::frame::{self, FrameKind, Framer};
use crate::scram::{self, SaltCache, ScramClient};
use crate::ws::WsIo;

/// The SASL mechanism used to log in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Mech {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-1")]
    ScramSha1,
}

/// Where and how to connect: shared by every connection of a run.
pub struct Target {
    pub addr: SocketAddr,
    pub domain: String,
    pub password: String,
    /// Negotiate STARTTLS (RFC 6120 §5) on every connection.
    pub tls: bool,
    /// No XMPP at all (`--raw`, against the relay): connections are TCP, or TLS from the
    /// first byte with `tls`, and carry bare stanzas.
    pub raw: bool,
    /// XMPP over WebSocket (RFC 7395) at this path, over TLS from the first byte, instead
    /// of TCP with STARTTLS.
    pub ws_path: Option<String>,
    /// Loopback source addresses to spread connections over (more than ~28,000
    /// connections to one port need more than one).
    pub src_ips: Vec<IpAddr>,
    /// Server processes whose CPU and memory are sampled.
    pub server_pids: Vec<u32>,
    /// Longest wait for any one answer.
    pub step_timeout: Duration,
    pub resource: String,
    /// The mechanism for every login except the login storm's own: SCRAM-SHA-1 by
    /// default, as real clients prefer it, and because with PLAIN a server that stores
    /// SCRAM verifiers runs PBKDF2 per login, which inflates what an idle session holds
    /// (ejabberd's session processes keep the grown heap).
    pub login_mech: Mech,
    pub salts: SaltCache,
    /// SCRAM iteration counts the server asked for (for the report).
    pub iterations_seen: std::sync::Mutex<std::collections::BTreeSet<u32>>,
    tls_config: Arc<rustls::ClientConfig>,
    next_src: AtomicU64,
    next_id: AtomicU64,
}

impl Target {
    pub fn new(addr: SocketAddr, domain: &str, password: &str) -> Target {
        Target {
            addr,
            domain: domain.to_owned(),
            password: password.to_owned(),
            tls: false,
            raw: false,
            ws_path: None,
            src_ips: Vec::new(),
            server_pids: Vec::new(),
            step_timeout: Duration::from_secs(60),
            resource: "bench".to_owned(),
            login_mech: Mech::ScramSha1,
            salts: SaltCache::default(),
            iterations_seen: Default::default(),
            // Any certificate: the servers here are on loopback with self-signed
            // certificates, and only the cost of TLS is of interest.
            tls_config: Arc::new(outpost_testkit::tls::accept_any_certificate()),
            next_src: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// `user@domain`.
    pub fn jid(&self, user: &str) -> String {
        format!("{user}@{}", self.domain)
    }

    /// A TLS connector that takes any certificate, as every connection here does.
    pub fn tls_connector(&self) -> TlsConnector {
        TlsConnector::from(self.tls_config.clone())
    }

    pub fn unique(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn header(&self) -> String {
        format!(
            "<?xml version='1.0'?><stream:stream to='{}' version='1.0' xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams'>",
            self.domain
        )
    }
}

/// Errors of one connection, with enough text to see what the server said.
#[derive(Debug)]
pub struct XmppError(pub String);

impl std::fmt::Display for XmppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for XmppError {}

impl From<io::Error> for XmppError {
    fn from(e: io::Error) -> Self {
        XmppError(format!("I/O: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, XmppError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(XmppError(msg.into()))
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    s.chars().take(300).collect()
}

/// Plain TCP, TLS over it, or a WebSocket over TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Ws(Box<WsIo>),
    Gone,
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, b),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, b),
            Stream::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// A stanza copied out of the read buffer.
pub type Stanza = Vec<u8>;

/// One client connection.
pub struct Conn {
    pub io: Stream,
    pub framer: Framer,
    /// The bare JID once authenticated, the full JID once bound.
    pub jid: String,
    /// The features of the current stream.
    pub features: Vec<u8>,
    /// The server closed the stream or the socket.
    pub closed: bool,
    /// Stanzas received since stream management was enabled (XEP-0198 §4, the client's
    /// `h`); `None` while it is not.
    pub sm_h: Option<u32>,
}

/// What a frame means to stream management.
enum SmFrame {
    /// `<r/>`: the server asks for our count.
    Request,
    /// A stanza (message, presence, iq): counted.
    Stanza,
    Other,
}

fn sm_frame(el: &[u8]) -> SmFrame {
    match frame::name(el) {
        b"r" if frame::attr(el, "xmlns") == Some(SM_NS.as_bytes()) => SmFrame::Request,
        b"message" | b"presence" | b"iq" => SmFrame::Stanza,
        _ => SmFrame::Other,
    }
}

/// Stream management, version 3 (XEP-0198).
pub const SM_NS: &str = "urn:xmpp:sm:3";

impl Conn {
    /// Opens a TCP connection from the next source address, if any were given.
    pub async fn connect(t: &Target) -> Result<Conn> {
        tokio::time::timeout(t.step_timeout, Conn::connect_inner(t))
            .await
            .unwrap_or_else(|_| err("timed out connecting"))
    }

    async fn connect_inner(t: &Target) -> Result<Conn> {
        let tcp = if t.src_ips.is_empty() {
            TcpStream::connect(t.addr).await?
        } else {
            let i = t.next_src.fetch_add(1, Ordering::Relaxed) as usize % t.src_ips.len();
            let src = SocketAddr::new(t.src_ips[i], 0);
            let sock = if src.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.bind(src)
                .map_err(|e| XmppError(format!("bind {src}: {e}")))?;
            sock.connect(t.addr).await?
        };
        tcp.set_nodelay(true)?;
        Ok(Conn {
            io: Stream::Plain(tcp),
            framer: Framer::new(),
            jid: String::new(),
            features: Vec::new(),
            closed: false,
            sm_h: None,
        })
    }

    /// A connection for `--raw`: TCP, then TLS from the first byte if `t.tls`, no stream
    /// header; the framer takes every top-level element as a stanza.
    pub async fn connect_raw(t: &Target) -> Result<Conn> {
        let mut c = Conn::connect(t).await?;
        if t.tls {
            c.tls_handshake(t).await?;
        }
        c.framer = Framer::in_stream();
        Ok(c)
    }

    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        self.io.write_all(data).await?;
        if matches!(self.io, Stream::Tls(_) | Stream::Ws(_)) {
            self.io.flush().await?;
        }
        Ok(())
    }

    /// Reads more bytes into the framer; `false` at EOF.
    pub async fn fill(&mut self) -> Result<bool> {
        self.framer.compact();
        let buf = self.framer.buffer_mut();
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16384);
        }
        let n = self.io.read_buf(buf).await?;
        if n == 0 {
            self.closed = true;
        }
        Ok(n > 0)
    }

    /// The next top-level element, copied; stream errors and closes become errors.
    pub async fn next_stanza(&mut self, timeout: Duration) -> Result<Stanza> {
        tokio::time::timeout(timeout, self.next_stanza_inner())
            .await
            .unwrap_or_else(|_| err("timed out waiting for the server"))
    }

    async fn next_stanza_inner(&mut self) -> Result<Stanza> {
        loop {
            while let Some(f) = self.framer.next_frame() {
                let bytes = self.framer.slice(&f);
                match f.kind {
                    FrameKind::StreamOpen => {}
                    FrameKind::StreamClose => {
                        self.closed = true;
                        return err("the server closed the stream");
                    }
                    FrameKind::Element => {
                        if frame::qname(bytes) == b"stream:error" {
                            return err(format!("stream error: {}", show(bytes)));
                        }
                        if self.sm_h.is_none() {
                            return Ok(bytes.to_vec());
                        }
                        match sm_frame(bytes) {
                            SmFrame::Request => self.sm_ack().await?,
                            SmFrame::Stanza => {
                                self.sm_h = self.sm_h.map(|h| h.wrapping_add(1));
                                return Ok(bytes.to_vec());
                            }
                            SmFrame::Other => return Ok(bytes.to_vec()),
                        }
                    }
                }
            }
            if !self.fill().await? {
                return err("the server closed the connection");
            }
        }
    }

    /// Reads stanzas until one satisfies `pred`, dropping the others.
    pub async fn expect(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&[u8]) -> bool,
    ) -> Result<Stanza> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let s = self.next_stanza(left).await?;
            if pred(&s) {
                return Ok(s);
            }
        }
    }

    /// Sends our stream header and reads the server's header and features.
    pub async fn open(&mut self, t: &Target) -> Result<()> {
        self.framer.restart();
        self.send(t.header().as_bytes()).await?;
        let f = self
            .expect(t.step_timeout, |s| frame::name(s) == b"features")
            .await?;
        self.features = f;
        Ok(())
    }

    /// STARTTLS (RFC 6120 §5.4), then a new stream.
    async fn starttls(&mut self, t: &Target) -> Result<()> {
        if !frame::contains(&self.features, b"<starttls") {
            return err("--tls: the server offers no STARTTLS");
        }
        self.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await?;
        let answer = self.next_stanza(t.step_timeout).await?;
        if frame::name(&answer) != b"proceed" {
            return err(format!("STARTTLS refused: {}", show(&answer)));
        }
        self.tls_handshake(t).await?;
        self.framer = Framer::new();
        self.open(t).await
    }

    /// The TLS handshake on the TCP connection (any certificate is accepted).
    async fn tls_handshake(&mut self, t: &Target) -> Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.io, Stream::Gone) else {
            return err("TLS twice");
        };
        let name = ServerName::try_from(t.domain.clone())
            .map_err(|e| XmppError(format!("bad domain for TLS: {e}")))?;
        let tls = TlsConnector::from(t.tls_config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| XmppError(format!("TLS handshake: {e}")))?;
        self.io = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// Connects, opens the stream and negotiates TLS if asked: ready for SASL or
    /// registration.
    pub async fn connect_open(t: &Target) -> Result<Conn> {
        let mut c = Conn::connect(t).await?;
        if let Some(path) = &t.ws_path {
            c.websocket(t, path).await?;
            c.open(t).await?;
            return Ok(c);
        }
        c.open(t).await?;
        if t.tls {
            c.starttls(t).await?;
        }
        Ok(c)
    }

    /// TLS, then the WebSocket handshake for `path`.
    async fn websocket(&mut self, t: &Target, path: &str) -> Result<()> {
        self.tls_handshake(t).await?;
        let Stream::Tls(tls) = std::mem::replace(&mut self.io, Stream::Gone) else {
            return err("WebSocket without TLS");
        };
        let host = format!("{}:{}", t.domain, t.addr.port());
        let ws = WsIo::handshake(*tls, &host, path, &t.domain)
            .await
            .map_err(XmppError)?;
        self.io = Stream::Ws(Box::new(ws));
        Ok(())
    }

    /// SASL authentication as `user`, then the new stream (RFC 6120 §6.4.6).
    pub async fn authenticate(&mut self, t: &Target, user: &str, mech: Mech) -> Result<()> {
        match mech {
            Mech::Plain => {
                let payload = B64.encode(format!("\0{user}\0{}", t.password));
                self.send(
                    format!(
                        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
                    )
                    .as_bytes(),
                )
                .await?;
                let answer = self.next_stanza(t.step_timeout).await?;
                if frame::name(&answer) != b"success" {
                    return err(format!("PLAIN failed for {user}: {}", show(&answer)));
                }
            }
            Mech::ScramSha1 => {
                let nonce = format!("{:016x}{:08x}", rand::random::<u64>(), t.unique());
                let (client, first) = ScramClient::start(user, &nonce);
                self.send(
                    format!(
                        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{first}</auth>"
                    )
                    .as_bytes(),
                )
                .await?;
                let challenge = self.next_stanza(t.step_timeout).await?;
                if frame::name(&challenge) != b"challenge" {
                    return err(format!("SCRAM failed for {user}: {}", show(&challenge)));
                }
                let fin = client
                    .respond(frame::text(&challenge), &t.password, &t.salts)
                    .map_err(XmppError)?;
                t.iterations_seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fin.iterations);
                self.send(
                    format!(
                        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                        fin.client_final
                    )
                    .as_bytes(),
                )
                .await?;
                let mut answer = self.next_stanza(t.step_timeout).await?;
                if frame::name(&answer) == b"challenge" {
                    // Server-final as a challenge, answered with an empty response.
                    scram::check_server_final(frame::text(&answer), &fin.expected_server_final)
                        .map_err(XmppError)?;
                    self.send(b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
                        .await?;
                    answer = self.next_stanza(t.step_timeout).await?;
                }
                if frame::name(&answer) != b"success" {
                    return err(format!("SCRAM failed for {user}: {}", show(&answer)));
                }
                scram::check_server_final(frame::text(&answer), &fin.expected_server_final)
                    .map_err(XmppError)?;
            }
        }
        self.jid = t.jid(user);
        self.open(t).await
    }

    /// Binds the resource (RFC 6120 §7), and opens the legacy session where a server
    /// still requires it (RFC 3921 §3; optional everywhere here).
    pub async fn bind(&mut self, t: &Target) -> Result<()> {
        self.send(
            format!(
                "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                 <resource>{}</resource></bind></iq>",
                t.resource
            )
            .as_bytes(),
        )
        .await?;
        let reply = self
            .expect(t.step_timeout, |s| frame::attr(s, "id") == Some(b"bind1"))
            .await?;
        if frame::is_error(&reply) {
            return err(format!("bind failed: {}", show(&reply)));
        }
        if let Some(jid) = frame::child_text(&reply, "jid") {
            self.jid = String::from_utf8_lossy(jid).into_owned();
        }
        let f = &self.features;
        if frame::contains(f, b"urn:ietf:params:xml:ns:xmpp-session")
            && !frame::contains(f, b"<optional")
        {
            self.send(
                b"<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
            )
            .await?;
            self.expect(t.step_timeout, |s| frame::attr(s, "id") == Some(b"sess1"))
                .await?;
        }
        Ok(())
    }

    /// Connect, authenticate and bind; optionally send initial presence and wait for a ping
    /// answer, so that everything the server does for the presence is done.
    pub async fn login(t: &Target, user: &str, mech: Mech, presence: bool) -> Result<Conn> {
        Conn::login_sm(t, user, mech, presence, false).await
    }

    /// [`Conn::login`], with stream management enabled after binding (as clients do, before
    /// the initial presence) if `sm`; everything received is then acknowledged.
    pub async fn login_sm(
        t: &Target,
        user: &str,
        mech: Mech,
        presence: bool,
        sm: bool,
    ) -> Result<Conn> {
        let mut c = Conn::connect_open(t).await?;
        c.authenticate(t, user, mech).await?;
        c.bind(t).await?;
        if sm {
            c.enable_sm(t).await?;
        }
        if presence {
            c.send(b"<presence/>").await?;
            c.barrier(t).await?;
        }
        if sm {
            c.sm_ack().await?;
        }
        Ok(c)
    }

    /// Enables stream management with resumption (XEP-0198 §3, §5); from here on every
    /// `<r/>` read through [`Conn::next_stanza`] is answered.
    pub async fn enable_sm(&mut self, t: &Target) -> Result<()> {
        if !frame::contains(&self.features, SM_NS.as_bytes()) {
            return err("--sm: the server offers no stream management (urn:xmpp:sm:3)");
        }
        self.send(format!("<enable xmlns='{SM_NS}' resume='true'/>").as_bytes())
            .await?;
        let answer = self
            .expect(t.step_timeout, |s| {
                matches!(frame::name(s), b"enabled" | b"failed")
            })
            .await?;
        if frame::name(&answer) != b"enabled" {
            return err(format!("stream management refused: {}", show(&answer)));
        }
        self.sm_h = Some(0);
        Ok(())
    }

    /// Acknowledges every stanza received so far (XEP-0198 §4: an `<a/>` may be sent
    /// unasked), so the server's queue of unacknowledged stanzas is empty.
    pub async fn sm_ack(&mut self) -> Result<()> {
        if let Some(h) = self.sm_h {
            self.send(format!("<a xmlns='{SM_NS}' h='{h}'/>").as_bytes())
                .await?;
        }
        Ok(())
    }

    /// A ping to the server (XEP-0199) and its answer: the server has handled everything
    /// this connection sent before (it handles one stream's input in order).
    pub async fn barrier(&mut self, t: &Target) -> Result<()> {
        let id = format!("ping{}", t.unique());
        self.send(
            format!(
                "<iq type='get' id='{id}' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
                t.domain
            )
            .as_bytes(),
        )
        .await?;
        self.expect(t.step_timeout, |s| {
            frame::name(s) == b"iq" && frame::attr(s, "id") == Some(id.as_bytes())
        })
        .await?;
        Ok(())
    }

    /// In-band registration (XEP-0077 §3.1) of `user` on a fresh stream. `Ok(true)` if it
    /// was created, `Ok(false)` if it existed.
    pub async fn register(t: &Target, user: &str) -> Result<bool> {
        let mut c = Conn::connect_open(t).await?;
        c.send(
            format!(
                "<iq type='set' id='reg1'><query xmlns='jabber:iq:register'>\
                 <username>{user}</username><password>{}</password></query></iq>",
                t.password
            )
            .as_bytes(),
        )
        .await?;
        let reply = c
            .expect(t.step_timeout, |s| frame::attr(s, "id") == Some(b"reg1"))
            .await?;
        c.close().await;
        if frame::attr(&reply, "type") == Some(b"result") {
            Ok(true)
        } else if frame::contains(&reply, b"<conflict") {
            Ok(false)
        } else {
            err(format!("registering {user}: {}", show(&reply)))
        }
    }

    /// Closes our stream (RFC 6120 §4.4) without waiting for the server's.
    pub async fn close(&mut self) {
        if !self.closed {
            let _ = self.send(b"</stream:stream>").await;
            let _ = self.io.shutdown().await;
            self.closed = true;
        }
    }

    /// Frees the read buffer (for connections held idle).
    pub fn shrink(&mut self) {
        self.framer.shrink();
        self.features = Vec::new();
    }
}
