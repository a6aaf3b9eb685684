//! One connection to one server: TCP, then STARTTLS or direct TLS (XEP-0368), SASL
//! SCRAM, resource binding or stream resumption (XEP-0198), then elements in and out.
//! Reading is cancel-safe, so the session can wait on it beside its other work.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use outpost_proto::minidom::Element;
use outpost_proto::xml::{Limits, StreamReader, XmlEvent, escape};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::ns;
use crate::scram::{Scram, ScramClient};
use crate::server::Server;
use crate::trust::{Seen, TrustError, Verifier};

/// How long a TCP connection, the TLS handshake or one step of the login may take.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection could not be made or ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot reach {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("{0} did not answer in time")]
    Timeout(String),
    #[error("TLS with {server} failed: {reason}")]
    Tls { server: String, reason: String },
    #[error(
        "the certificate of {server} is not the one seen before (pinned {pinned}, now {now}); \
         refusing it"
    )]
    CertificateChanged {
        server: String,
        pinned: String,
        now: String,
    },
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("the server refused the login: {0}")]
    Auth(String),
    #[error("the server ended the stream: {condition}")]
    Stream {
        condition: String,
        /// `see-other-host`: where the server sends us.
        other_host: Option<String>,
    },
    #[error("the connection closed")]
    Closed,
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server sent what this client cannot read: {0}")]
    Protocol(String),
}

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A logged-in stream.
pub(crate) struct Stream {
    io: Box<dyn Io>,
    reader: StreamReader,
    buf: Vec<u8>,
    domain: String,
    /// The features of the current stream.
    pub(crate) features: Element,
    /// What the TLS handshake saw, when certificates are pinned.
    pub(crate) seen: Option<std::sync::Arc<Seen>>,
    /// Our address on the connection to the server: the one a peer on our LAN reaches.
    pub(crate) local: Option<std::net::IpAddr>,
}

fn limits() -> Limits {
    Limits {
        max_stanza_bytes: 1 << 20,
        max_depth: 64,
    }
}

async fn timed<T, E>(
    server: &Server,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, StreamError>
where
    StreamError: From<E>,
{
    match tokio::time::timeout(STEP_TIMEOUT, f).await {
        Ok(r) => r.map_err(StreamError::from),
        Err(_) => Err(StreamError::Timeout(server.to_string())),
    }
}

impl Stream {
    /// Connects and secures a stream to `domain` at `server`, up to its features.
    pub(crate) async fn connect(
        server: &Server,
        domain: &str,
        verifier: &Verifier,
    ) -> Result<Stream, StreamError> {
        let addr = server.to_string();
        let tcp = match tokio::time::timeout(
            STEP_TIMEOUT,
            TcpStream::connect((server.host.as_str(), server.port)),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(StreamError::Connect(addr, e)),
            Err(_) => return Err(StreamError::Timeout(addr)),
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok().map(|a| a.ip());
        let (config, seen) = verifier.config_for(&addr)?;
        let mut stream = Stream {
            io: Box::new(tcp),
            reader: StreamReader::new(limits()),
            buf: vec![0; 8192],
            domain: domain.to_owned(),
            features: Element::bare("features", ns::STREAMS),
            seen,
            local,
        };
        if !server.direct_tls {
            stream.open(server).await?;
            if stream.features.get_child("starttls", ns::TLS).is_none() {
                return Err(StreamError::Protocol(
                    "the server offers no STARTTLS".into(),
                ));
            }
            stream
                .write("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await?;
            let proceed = timed(server, stream.next()).await?;
            if proceed.name() != "proceed" {
                return Err(StreamError::Protocol("STARTTLS was refused".into()));
            }
        }
        let plain = std::mem::replace(
            &mut stream.io,
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
        );
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|_| StreamError::Protocol(format!("{domain} is not a server name")))?;
        let tls = TlsConnector::from(config).connect(name, plain);
        match tokio::time::timeout(STEP_TIMEOUT, tls).await {
            Ok(Ok(tls)) => stream.io = Box::new(tls),
            Ok(Err(e)) => return Err(stream.tls_failure(&addr, &e)),
            Err(_) => return Err(StreamError::Timeout(addr)),
        }
        stream.reader = StreamReader::new(limits());
        stream.open(server).await?;
        Ok(stream)
    }

    /// A stream over a connection already secured: a direct link to `peer`.
    pub(crate) fn over(io: Box<dyn Io>, peer: &str) -> Stream {
        Stream {
            io,
            reader: StreamReader::new(limits()),
            buf: vec![0; 8192],
            domain: peer.to_owned(),
            features: Element::bare("features", ns::STREAMS),
            seen: None,
            local: None,
        }
    }

    /// The connection itself, for bytes that are not XML (a file after its greeting).
    /// Only when nothing was read past the last element.
    pub(crate) fn into_io(self) -> Box<dyn Io> {
        self.io
    }

    fn tls_failure(&self, server: &str, e: &std::io::Error) -> StreamError {
        if let Some(seen) = &self.seen
            && let (Some(pinned), Some(now)) = (seen.mismatch(), seen.hash())
        {
            return StreamError::CertificateChanged {
                server: server.to_owned(),
                pinned,
                now,
            };
        }
        StreamError::Tls {
            server: server.to_owned(),
            reason: e.to_string(),
        }
    }

    /// Opens a stream and reads the server's features.
    async fn open(&mut self, server: &Server) -> Result<(), StreamError> {
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0' \
             xml:lang='en'>",
            escape(&self.domain)
        );
        self.write(&header).await?;
        let features = timed(server, self.next()).await?;
        if !features.is("features", ns::STREAMS) {
            return Err(StreamError::Protocol(format!(
                "expected the stream's features, got <{}/>",
                features.name()
            )));
        }
        self.features = features;
        Ok(())
    }

    /// Authenticates with the strongest SCRAM the server offers, and restarts the stream.
    pub(crate) async fn login(
        &mut self,
        server: &Server,
        user: &str,
        password: &str,
    ) -> Result<(), StreamError> {
        let offered: Vec<String> = self
            .features
            .get_child("mechanisms", ns::SASL)
            .map(|m| m.children().map(Element::text).collect())
            .unwrap_or_default();
        let mech = [Scram::Sha256, Scram::Sha1]
            .into_iter()
            .find(|m| offered.iter().any(|o| o == m.mechanism()))
            .ok_or_else(|| StreamError::Auth("the server offers no SCRAM mechanism".into()))?;
        let nonce = crate::random_id(24);
        let scram = ScramClient::new(mech, user, &nonce);
        self.write(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{}</auth>",
            mech.mechanism(),
            B64.encode(scram.client_first())
        ))
        .await?;
        let challenge = self.sasl_step(server).await?;
        let server_first = decode(&challenge)?;
        let final_msg = scram
            .respond(&server_first, password)
            .map_err(|e| StreamError::Auth(e.to_string()))?;
        self.write(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            B64.encode(&final_msg.message)
        ))
        .await?;
        let success = self.sasl_step(server).await?;
        if success.name() != "success" {
            return Err(StreamError::Protocol("expected SASL success".into()));
        }
        if decode(&success)? != final_msg.expected_server_final {
            return Err(StreamError::Auth(
                "the server did not prove it knows the password".into(),
            ));
        }
        self.reader = StreamReader::new(limits());
        self.open(server).await
    }

    async fn sasl_step(&mut self, server: &Server) -> Result<Element, StreamError> {
        let el = timed(server, self.next()).await?;
        if el.name() == "failure" {
            let reason = el
                .children()
                .find(|c| c.name() != "text")
                .map_or("not-authorized", |c| c.name())
                .to_owned();
            let text = el.get_child("text", ns::SASL).map(Element::text);
            return Err(StreamError::Auth(match text {
                Some(text) => format!("{reason}: {text}"),
                None => reason,
            }));
        }
        Ok(el)
    }

    /// Binds a resource; returns the full JID.
    pub(crate) async fn bind(
        &mut self,
        server: &Server,
        resource: &str,
    ) -> Result<String, StreamError> {
        self.write(&format!(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{}</resource></bind></iq>",
            escape(resource)
        ))
        .await?;
        let iq = timed(server, self.next()).await?;
        iq.get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("jid", ns::BIND))
            .map(Element::text)
            .ok_or_else(|| StreamError::Protocol("resource binding failed".into()))
    }

    /// Whether the server offers stream management.
    pub(crate) fn offers_sm(&self) -> bool {
        self.features.get_child("sm", ns::SM).is_some()
    }

    /// Writes raw XML.
    pub(crate) async fn write(&mut self, xml: &str) -> Result<(), StreamError> {
        self.io.write_all(xml.as_bytes()).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// The next top-level element. Cancel-safe: a cancelled call loses nothing.
    pub(crate) async fn next(&mut self) -> Result<Element, StreamError> {
        loop {
            match self.reader.next() {
                Ok(Some(XmlEvent::Stanza(el))) => {
                    if el.is("error", ns::STREAMS) {
                        return Err(stream_error(&el));
                    }
                    return Ok(el);
                }
                Ok(Some(XmlEvent::StreamOpen(_))) => continue,
                Ok(Some(XmlEvent::StreamClose)) => return Err(StreamError::Closed),
                Ok(None) => {}
                Err(e) => return Err(StreamError::Protocol(e.to_string())),
            }
            let n = self.io.read(&mut self.buf).await?;
            if n == 0 {
                return Err(StreamError::Closed);
            }
            self.reader.feed(self.buf.get(..n).unwrap_or_default());
        }
    }

    /// Ends the stream politely.
    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.write("</stream:stream>").await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}

fn decode(el: &Element) -> Result<String, StreamError> {
    let bytes = B64
        .decode(el.text().trim())
        .map_err(|_| StreamError::Protocol("SASL data is not base64".into()))?;
    String::from_utf8(bytes).map_err(|_| StreamError::Protocol("SASL data is not UTF-8".into()))
}

fn stream_error(el: &Element) -> StreamError {
    let condition = el
        .children()
        .find(|c| c.ns() == ns::STREAM_ERRORS && c.name() != "text")
        .map_or("undefined-condition", |c| c.name())
        .to_owned();
    let other_host = (condition == "see-other-host")
        .then(|| el.get_child("see-other-host", ns::STREAM_ERRORS))
        .flatten()
        .map(Element::text);
    StreamError::Stream {
        condition,
        other_host,
    }
}
