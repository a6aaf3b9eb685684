//! The ceiling: a relay with no XMPP that forwards whole stanzas between paired
//! connections, over the same TLS (or TCP) as the servers, so the throughput table can show
//! what this machine does at all with the same bytes, pairs and windows.
//!
//! The relay pairs its (2i)th accepted connection with the (2i+1)th; the generator's `--raw`
//! mode connects each pair's sender, then its receiver, one connection at a time. Each
//! direction is one task: it reads what it can, frames it with the generator's own framer
//! ([`Framer::in_stream`]: bare stanzas, no stream header) and writes every complete stanza
//! of that read to the other side in one write, as a server that batches its writes would.
//! `</stream:stream>` or end of file from one side shuts down writing to the other.

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::frame::{FrameKind, Framer};

/// A self-signed certificate for `domain` (ECDSA P-256, as Outpost generates its own) and a
/// TLS acceptor with rustls' safe defaults and the ring provider, as Outpost's.
pub fn tls_acceptor(domain: &str) -> anyhow::Result<TlsAcceptor> {
    let certified = rcgen::generate_simple_self_signed(vec![domain.to_owned()])?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts and relays until the listener fails; with `tls`, every connection starts with a
/// TLS handshake.
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>) -> io::Result<()> {
    match tls {
        Some(acceptor) => {
            accept_pairs(listener, move |tcp| {
                let acceptor = acceptor.clone();
                async move { acceptor.accept(tcp).await }
            })
            .await
        }
        None => accept_pairs(listener, |tcp| async move { Ok(tcp) }).await,
    }
}

async fn accept_pairs<S, F, Fut>(listener: TcpListener, open: F) -> io::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut waiting: Option<JoinHandle<io::Result<S>>> = None;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        // The handshake runs on its own, so that pairing follows the accept order.
        let opening = tokio::spawn(open(tcp));
        match waiting.take() {
            None => waiting = Some(opening),
            Some(first) => {
                tokio::spawn(async move {
                    if let Err(e) = pair(first, opening).await {
                        eprintln!("relay: pair ended: {e}");
                    }
                });
            }
        }
    }
}

async fn opened<S>(h: JoinHandle<io::Result<S>>) -> io::Result<S> {
    h.await.map_err(io::Error::other)?
}

async fn pair<S>(a: JoinHandle<io::Result<S>>, b: JoinHandle<io::Result<S>>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (a, b) = (opened(a).await?, opened(b).await?);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let back = tokio::spawn(forward(br, aw));
    let there = forward(ar, bw).await;
    let back = back.await.map_err(io::Error::other)?;
    there.and(back)
}

/// Forwards every complete stanza from `from` to `to`, one write per read.
pub async fn forward<R, W>(mut from: R, mut to: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut framer = Framer::in_stream();
    loop {
        framer.compact();
        let buf = framer.buffer_mut();
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16384);
        }
        if from.read_buf(buf).await? == 0 {
            break;
        }
        let (end, closed) = complete_stanzas(&mut framer);
        if end > 0 {
            to.write_all(&framer.buffer()[..end]).await?;
            to.flush().await?;
        }
        if closed {
            break;
        }
    }
    to.shutdown().await
}

/// Where the complete stanzas now in the framer end, and whether the stream was closed.
fn complete_stanzas(framer: &mut Framer) -> (usize, bool) {
    let mut end = 0;
    while let Some(f) = framer.next_frame() {
        match f.kind {
            FrameKind::Element => end = f.end,
            FrameKind::StreamClose => return (end, true),
            FrameKind::StreamOpen => {}
        }
    }
    (end, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_whole_stanzas_only() {
        let mut f = Framer::in_stream();
        f.buffer_mut()
            .extend_from_slice(b"<message to='a'><body>1 2</body></message><message to='a'><bo");
        let (end, closed) = complete_stanzas(&mut f);
        assert_eq!(
            &f.buffer()[..end],
            b"<message to='a'><body>1 2</body></message>"
        );
        assert!(!closed);
        f.compact();
        f.buffer_mut()
            .extend_from_slice(b"dy>3 4</body></message></stream:stream>");
        let (end, closed) = complete_stanzas(&mut f);
        assert_eq!(
            &f.buffer()[..end],
            b"<message to='a'><body>3 4</body></message>"
        );
        assert!(closed);
    }

    #[tokio::test]
    async fn pairs_connections_in_accept_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let relay = tokio::spawn(serve(listener, Some(tls_acceptor("r.test").expect("cert"))));
        let mut t = crate::Target::new(addr, "r.test", "x");
        t.tls = true;
        t.raw = true;
        let mut s = crate::Conn::connect_raw(&t).await.expect("sender");
        let mut r = crate::Conn::connect_raw(&t).await.expect("receiver");
        s.send(b"<message to='b'><body>7 8</body></message>")
            .await
            .expect("send");
        let got = r
            .next_stanza(std::time::Duration::from_secs(5))
            .await
            .expect("relayed");
        assert_eq!(got, b"<message to='b'><body>7 8</body></message>");
        relay.abort();
    }
}
