//! Server-to-server streams over WebSocket inside HTTPS (RFC 7395 framing), for networks
//! where only HTTP(S) passes: between Outpost servers only, since no other server offers
//! s2s over WebSocket.
//!
//! - `serve_websocket` is the `listen.s2s_websocket` listener: TLS with the s2s identity,
//!   then a WebSocket upgrade on `/xmpp-websocket` that must ask for the `xmpp`
//!   subprotocol (RFC 7395 §3.3; other paths get 404, requests without it 400), then the
//!   ordinary incoming stream (`inbound::serve_conn`) with TLS already in place.
//! - `connect` is our side: the `federation.websocket_peers` URL of a domain, TCP, TLS
//!   (SNI naming the peer's domain, certificate not verified: dialback proves the domain,
//!   as on every s2s path), and the upgrade, which fails unless the server selects `xmpp`.
//!
//! The stream machines do not know: [`WsConn`] sits under `Conn` and turns their bytes into
//! messages and back with `outpost_proto::framing::WsFraming`. A message the framing
//! refuses, or a binary message, ends the connection after a stream error; the WebSocket
//! library answers pings itself.
//!
//! Not here: HTTP beyond the upgrade (no other routes, no proxies), and `ws://`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outpost_proto::framing::{WsFraming, close_element, stream_error_message};
use outpost_proto::s2s::{S2sConfig, Transport};
use outpost_proto::xml::Limits;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as TungsteniteError, Message};
use tracing::debug;

use super::conn::{Conn, TLS_HANDSHAKE_TIMEOUT};
use super::{Federation, LinkEnv};

/// The path of the endpoint, as RFC 7395 §4 suggests for discovery.
pub(crate) const PATH: &str = "/xmpp-websocket";
/// The WebSocket subprotocol of XMPP (RFC 7395 §3.1).
const SUBPROTOCOL: &str = "xmpp";
const HEADER_PROTOCOL: &str = "sec-websocket-protocol";
/// The HTTP upgrade must finish within this.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(20);
/// Room for the framing around the largest stanza: `<open/>` attributes, namespace
/// declarations a sender adds.
const MESSAGE_SLACK: usize = 4096;

type Stream = WebSocketStream<TlsStream<TcpStream>>;

/// The limits a WebSocket stream enforces: never below what the s2s machine itself
/// accepts on a TCP stream, and more when `limits.max_stanza_bytes` allows more.
fn limits(max_stanza_bytes: usize) -> Limits {
    let machine = S2sConfig::default().limits;
    Limits {
        max_stanza_bytes: machine.max_stanza_bytes.max(max_stanza_bytes),
        max_depth: machine.max_depth,
    }
}

fn ws_config(limits: Limits) -> WebSocketConfig {
    let cap = limits.max_stanza_bytes.saturating_add(MESSAGE_SLACK);
    WebSocketConfig::default()
        .max_message_size(Some(cap))
        .max_frame_size(Some(cap))
}

/// A peer's connection to the `s2s-websocket` listener.
pub(crate) async fn serve_websocket(fed: Arc<Federation>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let acceptor = TlsAcceptor::from(fed.listening().tls_starttls.clone());
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        _ => {
            debug!(%peer, "WebSocket TLS handshake failed");
            return;
        }
    };
    let limits = limits(fed.max_stanza_bytes);
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(
        TlsStream::Server(tls),
        check_upgrade,
        Some(ws_config(limits)),
    );
    let ws = match tokio::time::timeout(UPGRADE_TIMEOUT, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "WebSocket upgrade refused or failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "WebSocket upgrade timed out");
            return;
        }
    };
    let conn = Conn::Ws(Box::new(WsConn::new(ws, limits)));
    super::inbound::serve_conn(fed, conn, peer, Transport::DirectTls).await;
}

/// Accepts the upgrade only on [`PATH`] and only for the `xmpp` subprotocol, which it
/// selects (RFC 7395 §3.3: a server that does not select it must not go on).
#[expect(
    clippy::result_large_err,
    reason = "the signature tungstenite's handshake callback requires"
)]
fn check_upgrade(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: &str| {
        let mut r = ErrorResponse::new(Some(why.to_owned()));
        *r.status_mut() = status;
        r
    };
    if request.uri().path() != PATH {
        return Err(refuse(StatusCode::NOT_FOUND, "not found"));
    }
    let offers_xmpp = request
        .headers()
        .get_all(HEADER_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offers_xmpp {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the xmpp subprotocol is required",
        ));
    }
    response
        .headers_mut()
        .insert(HEADER_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
    Ok(response)
}

/// Why no stream could be opened on a WebSocket path.
#[derive(Debug, thiserror::Error)]
pub(super) enum WsError {
    #[error("no WebSocket endpoint for {0}")]
    NoEndpoint(String),
    #[error("cannot connect to {0} for WebSocket")]
    Connect(String, #[source] std::io::Error),
    #[error("`{0}` cannot be named in TLS")]
    BadName(String),
    #[error("WebSocket TLS handshake failed")]
    Tls(#[source] std::io::Error),
    #[error("WebSocket TLS handshake timed out")]
    TlsTimeout,
    #[error("bad WebSocket URL `{0}`")]
    BadUrl(String, #[source] Box<TungsteniteError>),
    #[error("WebSocket upgrade failed")]
    Upgrade(#[source] Box<TungsteniteError>),
    #[error("WebSocket upgrade timed out")]
    UpgradeTimeout,
    #[error("the WebSocket server did not select the xmpp subprotocol")]
    NoSubprotocol,
}

/// Connects to `domain`'s WebSocket endpoint (its `federation.websocket_peers` URL): the
/// connection, ready for a stream with TLS in place, or why it could not be made.
pub(super) async fn connect(env: &LinkEnv, domain: &str) -> Result<(Conn, Transport), WsError> {
    let url = env
        .websocket_peer(domain)
        .ok_or_else(|| WsError::NoEndpoint(domain.to_owned()))?;
    let authority = url.authority();
    let tcp = super::direct::tcp_connect_host(url.host(), url.port())
        .await
        .map_err(|e| WsError::Connect(authority.clone(), e))?;
    let _ = tcp.set_nodelay(true);
    let name =
        ServerName::try_from(domain.to_owned()).map_err(|_| WsError::BadName(domain.to_owned()))?;
    let connector = TlsConnector::from(env.tls_client_for(domain));
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(WsError::Tls(e)),
        Err(_) => return Err(WsError::TlsTimeout),
    };
    let mut request = format!("wss://{authority}{}", url.path())
        .into_client_request()
        .map_err(|e| WsError::BadUrl(url.to_string(), Box::new(e)))?;
    request
        .headers_mut()
        .insert(HEADER_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
    let limits = limits(0);
    let upgrade = tokio_tungstenite::client_async_with_config(
        request,
        TlsStream::Client(tls),
        Some(ws_config(limits)),
    );
    let (ws, response) = match tokio::time::timeout(UPGRADE_TIMEOUT, upgrade).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(WsError::Upgrade(Box::new(e))),
        Err(_) => return Err(WsError::UpgradeTimeout),
    };
    let selected = response
        .headers()
        .get(HEADER_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    if selected != Some(SUBPROTOCOL) {
        return Err(WsError::NoSubprotocol);
    }
    Ok((
        Conn::Ws(Box::new(WsConn::new(ws, limits))),
        Transport::DirectTls,
    ))
}

/// Whether `domain`'s WebSocket endpoint accepts TCP connections (a probe while its link
/// backs off). False without an endpoint.
pub(super) async fn probe(env: &LinkEnv, domain: &str) -> bool {
    let Some(url) = env.websocket_peer(domain) else {
        return false;
    };
    super::direct::tcp_connect_host(url.host(), url.port())
        .await
        .is_ok()
}

/// A WebSocket connection carrying one XMPP stream: what the stream machine reads and
/// writes goes through [`WsFraming`].
pub(super) struct WsConn {
    ws: Stream,
    framing: WsFraming,
    /// Stream bytes of a received message not yet handed to the reader.
    pending: Vec<u8>,
    pending_pos: usize,
    /// The stream error to send before closing, once the peer broke the framing.
    error: Option<&'static str>,
}

impl WsConn {
    /// The certificate the peer presented in the TLS handshake under the WebSocket.
    pub(super) fn peer_certificate(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        let certs = match self.ws.get_ref() {
            TlsStream::Server(s) => s.get_ref().1.peer_certificates(),
            TlsStream::Client(s) => s.get_ref().1.peer_certificates(),
        };
        certs
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
    }
}

fn invalid(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

impl WsConn {
    fn new(ws: Stream, limits: Limits) -> WsConn {
        WsConn {
            ws,
            framing: WsFraming::new(outpost_proto::stanza::ns::SERVER, limits),
            pending: Vec::new(),
            pending_pos: 0,
            error: None,
        }
    }

    /// Reads stream bytes, waiting for a message when none are left; `Ok(0)` when the
    /// peer closed. Cancel-safe: a message is taken from the socket and translated in one
    /// step, and what does not fit in `buf` is kept for the next call.
    pub(super) async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let left = self.pending.get(self.pending_pos..).unwrap_or_default();
            if !left.is_empty() {
                let n = left.len().min(buf.len());
                if let (Some(dst), Some(src)) = (buf.get_mut(..n), left.get(..n)) {
                    dst.copy_from_slice(src);
                }
                self.pending_pos += n;
                if self.pending_pos >= self.pending.len() {
                    self.pending = Vec::new();
                    self.pending_pos = 0;
                }
                return Ok(n);
            }
            if let Some(condition) = self.error {
                return Err(invalid(format!("stream ended with {condition}")));
            }
            let message = match self.ws.next().await {
                None
                | Some(Err(TungsteniteError::ConnectionClosed | TungsteniteError::AlreadyClosed)) =>
                {
                    return Ok(0);
                }
                Some(Err(TungsteniteError::Capacity(e))) => {
                    debug!(error = %e, "WebSocket message too large");
                    self.error = Some("policy-violation");
                    return Err(invalid(e.to_string()));
                }
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                Some(Ok(message)) => message,
            };
            match message {
                Message::Text(text) => match self.framing.inbound(text.as_str()) {
                    Ok(bytes) => {
                        self.pending = bytes;
                        self.pending_pos = 0;
                    }
                    Err(e) => {
                        debug!(error = %e, condition = e.condition(), "WebSocket message refused");
                        self.error = Some(e.condition());
                        return Err(invalid(e.to_string()));
                    }
                },
                Message::Binary(_) => {
                    // RFC 7395 §3.2: XMPP travels in text messages only.
                    debug!("binary WebSocket message refused");
                    self.error = Some("bad-format");
                    return Err(invalid("binary WebSocket message".to_owned()));
                }
                Message::Close(_) => return Ok(0),
                // Pongs to the peer's pings are queued and sent by the library itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Writes what the stream machine wrote, as complete messages, and flushes.
    pub(super) async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        let messages = self
            .framing
            .outbound(data)
            .map_err(|e| invalid(e.to_string()))?;
        for m in messages {
            self.ws
                .feed(Message::text(m))
                .await
                .map_err(std::io::Error::other)?;
        }
        self.ws.flush().await.map_err(std::io::Error::other)
    }

    /// Ends the connection: the stream error owed for broken framing, if any, then the
    /// WebSocket close handshake and the TLS close.
    pub(super) async fn shutdown(&mut self) {
        if let Some(condition) = self.error.take() {
            let _ = self
                .ws
                .feed(Message::text(stream_error_message(condition)))
                .await;
            let _ = self.ws.feed(Message::text(close_element())).await;
        }
        let _ = self.ws.close(None).await;
        let _ = self.ws.get_mut().shutdown().await;
    }
}
