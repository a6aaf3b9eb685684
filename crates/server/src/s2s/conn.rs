//! The socket under a server-to-server stream: plain TCP until STARTTLS, then TLS as the
//! server (incoming streams) or as the client (our links); or a WebSocket inside TLS
//! (`ws`), which frames the same stream in messages.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::ws::WsConn;

/// A TLS handshake that takes longer than this fails.
pub(super) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// A write that makes no progress for this long means the peer is gone or stuck.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) enum Conn {
    Plain(TcpStream),
    Server(Box<server::TlsStream<TcpStream>>),
    Client(Box<client::TlsStream<TcpStream>>),
    /// A WebSocket over TLS, either side (RFC 7395).
    Ws(Box<WsConn>),
    /// Only while the TCP stream is handed to a TLS handshake.
    Detached,
}

fn detached() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "socket detached")
}

impl Conn {
    /// Reads what is available, waiting for at least one byte; `Ok(0)` at the end of the
    /// stream. Cancel-safe, so it can sit in a `select!`.
    pub(super) async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Server(s) => s.read(buf).await,
            Conn::Client(s) => s.read(buf).await,
            Conn::Ws(s) => s.read(buf).await,
            Conn::Detached => Err(detached()),
        }
    }

    /// Writes and flushes `data`, failing after [`WRITE_TIMEOUT`] without progress.
    pub(super) async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        let write = async {
            match self {
                Conn::Plain(s) => {
                    s.write_all(data).await?;
                    s.flush().await
                }
                Conn::Server(s) => {
                    s.write_all(data).await?;
                    s.flush().await
                }
                Conn::Client(s) => {
                    s.write_all(data).await?;
                    s.flush().await
                }
                Conn::Ws(s) => s.write_all(data).await,
                Conn::Detached => Err(detached()),
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timed out",
            )),
        }
    }

    /// Runs the server side of a TLS handshake on the plain socket (RFC 6120 §5.4.3.3).
    pub(super) async fn accept_tls(&mut self, config: &Arc<rustls::ServerConfig>) -> bool {
        let Conn::Plain(tcp) = std::mem::replace(self, Conn::Detached) else {
            return false;
        };
        let acceptor = TlsAcceptor::from(config.clone());
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => {
                *self = Conn::Server(Box::new(s));
                true
            }
            _ => false,
        }
    }

    /// Runs the client side of a TLS handshake on the plain socket, naming `domain` in SNI
    /// (RFC 6120 §13.7.1.2).
    pub(super) async fn connect_tls(
        &mut self,
        config: &Arc<rustls::ClientConfig>,
        domain: &str,
    ) -> bool {
        let Conn::Plain(tcp) = std::mem::replace(self, Conn::Detached) else {
            return false;
        };
        let Ok(name) = ServerName::try_from(domain.to_owned()) else {
            return false;
        };
        let connector = TlsConnector::from(config.clone());
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => {
                *self = Conn::Client(Box::new(s));
                true
            }
            _ => false,
        }
    }

    /// The certificate the peer presented in the TLS handshake (its leaf), if any.
    pub(super) fn peer_certificate(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        let certs = match self {
            Conn::Server(s) => s.get_ref().1.peer_certificates(),
            Conn::Client(s) => s.get_ref().1.peer_certificates(),
            Conn::Ws(ws) => return ws.peer_certificate(),
            Conn::Plain(_) | Conn::Detached => None,
        };
        certs
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
    }

    pub(super) async fn shutdown(&mut self) {
        let shut = async {
            let _ = match self {
                Conn::Plain(s) => s.shutdown().await,
                Conn::Server(s) => s.shutdown().await,
                Conn::Client(s) => s.shutdown().await,
                Conn::Ws(s) => {
                    s.shutdown().await;
                    Ok(())
                }
                Conn::Detached => Ok(()),
            };
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), shut).await;
    }
}
