//! XMPP over WebSocket (RFC 7395) under the same connection code as TCP: [`WsIo`] is a
//! byte stream whose writes are cut into one WebSocket message per top-level element and
//! whose reads are the messages' text one after the other. The stream header the scenarios
//! write becomes `<open/>` and the server's `<open/>` reads as a stream header, so the
//! framer, SASL, binding and stream management are the TCP code's, unchanged.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

use crate::frame::{self, FrameKind, Framer};

const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// A WebSocket connection carrying XMPP, as a byte stream.
pub struct WsIo {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    /// What the scenario wrote, cut into elements.
    out: Framer,
    /// Messages not yet handed to the socket.
    queue: VecDeque<Message>,
    /// Text read but not yet taken.
    read: Vec<u8>,
    read_at: usize,
    domain: String,
}

impl WsIo {
    /// The WebSocket handshake on `tls`, asking for the `xmpp` subprotocol.
    pub async fn handshake(
        tls: TlsStream<TcpStream>,
        host: &str,
        path: &str,
        domain: &str,
    ) -> Result<WsIo, String> {
        let mut request = format!("wss://{host}{path}")
            .into_client_request()
            .map_err(|e| format!("WebSocket request: {e}"))?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("xmpp"));
        // Lean as a real client: not the library's 128 KiB read buffer per connection.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, answer) = tokio_tungstenite::client_async_with_config(request, tls, Some(config))
            .await
            .map_err(|e| format!("WebSocket handshake: {e}"))?;
        if answer.headers().get("sec-websocket-protocol") != Some(&HeaderValue::from_static("xmpp"))
        {
            return Err("the server did not take the xmpp subprotocol".to_owned());
        }
        Ok(WsIo {
            ws,
            out: Framer::in_stream(),
            queue: VecDeque::new(),
            read: Vec::new(),
            read_at: 0,
            domain: domain.to_owned(),
        })
    }

    /// Queues what the scenario wrote, one message per complete element.
    fn cut(&mut self, bytes: &[u8]) {
        if bytes.starts_with(b"<?xml") || bytes.starts_with(b"<stream:stream") {
            let open = format!(
                "<open xmlns='{FRAMING}' to='{}' version='1.0'/>",
                self.domain
            );
            self.queue.push_back(Message::text(open));
            self.out = Framer::in_stream();
            return;
        }
        if bytes.starts_with(b"</stream:stream") {
            self.queue
                .push_back(Message::text(format!("<close xmlns='{FRAMING}'/>")));
            return;
        }
        self.out.buffer_mut().extend_from_slice(bytes);
        while let Some(f) = self.out.next_frame() {
            if f.kind == FrameKind::Element {
                let text = with_namespace(self.out.slice(&f));
                self.queue.push_back(Message::text(text));
            }
        }
        self.out.compact();
    }

    /// Hands queued messages to the socket while it takes them.
    fn poll_push(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(m) = self.queue.pop_front() {
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    Pin::new(&mut self.ws)
                        .start_send(m)
                        .map_err(io::Error::other)?;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Poll::Pending => {
                    self.queue.push_front(m);
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// A message's text as the framer expects it: `<open/>` as a stream header,
    /// `<close/>` as the stream's end.
    fn translate(&self, text: &str) -> Vec<u8> {
        let t = text.trim_start();
        if t.starts_with("<open") && t.contains(FRAMING) {
            return format!(
                "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='{}' version='1.0'>",
                self.domain
            )
            .into_bytes();
        }
        if t.starts_with("<close") && t.contains(FRAMING) {
            return b"</stream:stream>".to_vec();
        }
        text.as_bytes().to_vec()
    }
}

/// The element with its namespace declared, as RFC 7395 §3.3.3 requires of every
/// message: stanzas written for a TCP stream take `jabber:client` from its header.
fn with_namespace(el: &[u8]) -> String {
    let text = String::from_utf8_lossy(el);
    let name = frame::name(el);
    let stanza = matches!(name, b"message" | b"presence" | b"iq");
    if !stanza || frame::attr(el, "xmlns").is_some() {
        return text.into_owned();
    }
    let at = 1 + name.len();
    format!("{} xmlns='jabber:client'{}", &text[..at], &text[at..])
}

impl AsyncRead for WsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if me.read_at < me.read.len() {
                let n = buf.remaining().min(me.read.len() - me.read_at);
                buf.put_slice(&me.read[me.read_at..me.read_at + n]);
                me.read_at += n;
                return Poll::Ready(Ok(()));
            }
            // Replies to pings go out with the next write; push them now too.
            let _ = me.poll_push(cx);
            match ready!(Pin::new(&mut me.ws).poll_next(cx)) {
                Some(Ok(Message::Text(t))) => {
                    me.read = me.translate(t.as_str());
                    me.read_at = 0;
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl AsyncWrite for WsIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        me.cut(b);
        // What the socket does not take now is sent by the flush that follows.
        if let Poll::Ready(Err(e)) = me.poll_push(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_push(cx))?;
        Pin::new(&mut me.ws)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_push(cx))?;
        Pin::new(&mut me.ws)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}
