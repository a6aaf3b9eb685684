//! The direct path to a peer: a TCP connection to its server, with STARTTLS or with TLS
//! from the first byte.
//!
//! Where the server is: the peer's entry in `federation.peers`, else the domain itself on
//! port 5269 (RFC 6120 §3.2.2).

use std::time::Duration;

use outpost_proto::s2s::Transport;
use tokio::net::TcpStream;

use super::Federation;
use super::conn::Conn;

/// A TCP connect that takes longer than this fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `domain`'s server. Returns the socket and how TLS is to be negotiated on it,
/// or why no connection could be made.
pub(super) async fn connect(fed: &Federation, domain: &str) -> Result<(Conn, Transport), String> {
    let (host, port) = fed
        .peer_override(domain)
        .unwrap_or_else(|| (domain.to_owned(), 5269));
    let tcp = tcp_connect(&host, port)
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    Ok((Conn::Plain(tcp), Transport::StartTls))
}

/// Whether `domain`'s server accepts TCP connections again: a cheap probe while its link
/// waits out a back-off.
pub(super) async fn probe(fed: &Federation, domain: &str) -> bool {
    let (host, port) = fed
        .peer_override(domain)
        .unwrap_or_else(|| (domain.to_owned(), 5269));
    tcp_connect(&host, port).await.is_ok()
}

pub(super) async fn tcp_connect(host: &str, port: u16) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port))).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}
