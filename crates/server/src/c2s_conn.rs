//! A client's socket, before or after TLS, and what a resuming connection hands to the
//! session it resumes ([`Resumption`]).
//!
//! An idle session holds no read buffer: the task waits for readability
//! ([`Conn::readable`]) and then reads without waiting ([`Conn::try_read`]) into a buffer
//! that lives only while it reads.

use std::future::Future as _;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use outpost_proto::c2s::C2sStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::info;

use crate::c2s_ws::WsConn;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest lingering close, the most it discards, and the silence that ends it early.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;
const LINGER_QUIET: Duration = Duration::from_millis(250);

/// A new connection that asked to resume a managed stream (XEP-0198 §5), handed to the
/// session that owns that stream: its socket, its stream (authenticated, not bound), and
/// the client's count of stanzas received.
pub(crate) struct Resumption {
    pub(crate) conn: Conn,
    pub(crate) proto: Box<C2sStream>,
    pub(crate) h: u32,
    pub(crate) peer: std::net::SocketAddr,
}

impl std::fmt::Debug for Resumption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumption")
            .field("peer", &self.peer)
            .field("h", &self.h)
            .finish_non_exhaustive()
    }
}

pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// A WebSocket the HTTP service accepted (TLS and the upgrade done there).
    Ws(Box<WsConn>),
    /// Only while the TCP stream is handed to the TLS handshake.
    Detached,
}

fn detached() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "socket detached")
}

impl Conn {
    /// Waits until the socket has something to read.
    pub(crate) async fn readable(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.readable().await,
            Conn::Tls(s) => s.get_ref().0.readable().await,
            Conn::Ws(w) => w.readable().await,
            Conn::Detached => Err(detached()),
        }
    }

    /// Reads without waiting: `Ok(None)` when nothing is available now, `Ok(Some(0))` at
    /// the end of the stream.
    pub(crate) fn try_read(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        let result = match self {
            Conn::Ws(w) => return w.try_read(buf),
            Conn::Plain(s) => s.try_read(buf),
            // One poll with a no-op waker: rustls hands out buffered plaintext first, and
            // reports `Pending` only once the socket has nothing more, which is exactly
            // when waiting on `readable` is right.
            Conn::Tls(s) => {
                let mut read = std::pin::pin!(s.read(buf));
                let mut cx = Context::from_waker(Waker::noop());
                match read.as_mut().poll(&mut cx) {
                    Poll::Ready(r) => r,
                    Poll::Pending => return Ok(None),
                }
            }
            Conn::Detached => Err(detached()),
        };
        match result {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        async fn write<S: AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> std::io::Result<()> {
            s.write_all(data).await?;
            s.flush().await
        }
        match self {
            Conn::Plain(s) => write(s, data).await,
            Conn::Tls(s) => write(s.as_mut(), data).await,
            Conn::Ws(w) => w.write_all(data).await,
            Conn::Detached => Err(detached()),
        }
    }

    /// Tells a client whose stream was taken over why it ends (a stream error, then the
    /// stream's end), as far as the socket still takes it, and shuts it.
    pub(crate) async fn abandon(&mut self, why: &str) {
        let mut bytes = outpost_proto::xml::stream_error("conflict", Some(why)).into_bytes();
        bytes.extend_from_slice(outpost_proto::xml::STREAM_CLOSE.as_bytes());
        let _ = tokio::time::timeout(Duration::from_secs(1), self.write_all(&bytes)).await;
        self.shutdown().await;
    }

    pub(crate) async fn shutdown(&mut self) {
        async fn shut<S: AsyncWrite + AsyncRead + Unpin>(s: &mut S) {
            let _ = tokio::time::timeout(Duration::from_secs(2), s.shutdown()).await;
        }
        match self {
            Conn::Plain(s) => shut(s).await,
            Conn::Tls(s) => shut(s.as_mut()).await,
            Conn::Ws(w) => w.close().await,
            Conn::Detached => {}
        }
    }

    /// A lingering close, after our side of the stream is shut down: reads and discards
    /// what the client still sends, until it stops, closes or [`LINGER`] passes. Closing a
    /// socket with unread bytes makes the kernel answer with a reset, and a reset discards
    /// what the client has not read yet: the stream error that explains the close.
    pub(crate) async fn linger(&mut self) {
        let tcp = match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &mut s.get_mut().0,
            Conn::Ws(_) | Conn::Detached => return,
        };
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut buf = vec![0u8; 16 * 1024];
        let mut discarded = 0usize;
        while discarded < LINGER_BYTES {
            let quiet = tokio::time::Instant::now() + LINGER_QUIET;
            let read = tokio::time::timeout_at(quiet.min(deadline), tcp.read(&mut buf));
            match read.await {
                Ok(Ok(n)) if n > 0 => discarded += n,
                // End of stream, an error, quiet for a while, or out of time.
                _ => break,
            }
        }
    }

    /// Runs the server side of a TLS handshake on the plain socket, with a deadline: as
    /// the first thing on a direct TLS listener, or after `<proceed/>` (STARTTLS).
    pub(crate) async fn accept_tls(self, config: &Arc<rustls::ServerConfig>) -> Option<Conn> {
        let Conn::Plain(tcp) = self else {
            return None;
        };
        let acceptor = TlsAcceptor::from(config.clone());
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => Some(Conn::Tls(Box::new(s))),
            Ok(Err(e)) => {
                info!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                info!("TLS handshake timed out");
                None
            }
        }
    }
}
