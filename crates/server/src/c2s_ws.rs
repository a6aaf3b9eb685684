//! A client's stream over WebSocket (RFC 7395), under the session as its [`Conn`]: the HTTP
//! service accepted the connection, did TLS and the upgrade, and passes each text message
//! through a channel; [`WsConn`] turns them into the bytes the stream machine reads
//! (`outpost_proto::framing::WsFraming`: `<open/>` becomes a stream header, `<close/>` its
//! end) and what the machine writes back into messages. So a WebSocket client gets the
//! same session as a TCP one: SASL, resource binding, stream management and resumption,
//! the same limits.
//!
//! [`Conn`]: crate::c2s_conn::Conn

use std::time::Duration;

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use outpost_proto::framing::{WsFraming, close_element, stream_error_message};
use outpost_proto::stanza::ns;
use outpost_proto::xml::Limits;
use tokio::sync::mpsc;

/// Messages waiting in each direction between the HTTP side and an API session.
pub(crate) const CHANNEL: usize = 64;
/// How long the closing handshake of a WebSocket may take.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A client's WebSocket as the HTTP service hands it over: the text messages the client
/// sends (an error, or the end, when it goes; pings and pongs are the service's), and a
/// sink for the text messages to send it. Closing the sink closes the WebSocket.
pub trait TextSocket:
    Stream<Item = std::io::Result<String>> + Sink<String, Error = std::io::Error> + Send + Unpin
{
}

impl<T> TextSocket for T where
    T: Stream<Item = std::io::Result<String>> + Sink<String, Error = std::io::Error> + Send + Unpin
{
}

/// The ends the HTTP API holds for an API session: what it sends goes into `to_server`;
/// what the server sends comes out of `from_server`, which ends when the session does.
pub struct ClientWebSocket {
    pub to_server: mpsc::Sender<String>,
    pub from_server: mpsc::Receiver<String>,
}

/// Where the messages come from and go: the client's WebSocket itself, which the session
/// reads and writes with no task between, or the channels of an API session.
enum Link {
    Socket(Box<dyn TextSocket>),
    Channels {
        rx: mpsc::Receiver<String>,
        tx: mpsc::Sender<String>,
    },
}

pub(crate) struct WsConn {
    link: Link,
    /// Both directions: one framer translates what the client sends and what the stream
    /// machine writes back.
    framing: WsFraming,
    /// Bytes of the last message, translated, not read by the session yet.
    pending: Vec<u8>,
    read: usize,
    /// The client closed, or sent something the framing refused.
    eof: bool,
}

fn broken() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the WebSocket is closed")
}

impl WsConn {
    /// Boxed from the start, as the session's `Conn::Ws` holds it: no future on the way
    /// there (the session task's first state among them) carries it by value, which
    /// would cost its size for the connection's whole life.
    fn new(link: Link, limits: Limits) -> Box<WsConn> {
        Box::new(WsConn {
            link,
            framing: WsFraming::new(ns::CLIENT, limits),
            pending: Vec::new(),
            read: 0,
            eof: false,
        })
    }

    /// The session's side of a client's WebSocket.
    pub(crate) fn over(socket: Box<dyn TextSocket>, limits: Limits) -> Box<WsConn> {
        WsConn::new(Link::Socket(socket), limits)
    }

    /// The session's side of an API session, and the HTTP API's.
    pub(crate) fn pair(limits: Limits) -> (Box<WsConn>, ClientWebSocket) {
        let (to_server, rx) = mpsc::channel(CHANNEL);
        let (tx, from_server) = mpsc::channel(CHANNEL);
        let conn = WsConn::new(Link::Channels { rx, tx }, limits);
        let http = ClientWebSocket {
            to_server,
            from_server,
        };
        (conn, http)
    }

    fn has_input(&self) -> bool {
        self.read < self.pending.len() || self.eof
    }

    /// Waits for the next message from the client. Cancel-safe: nothing after the receive
    /// waits, so a message is never lost between the two.
    pub(crate) async fn readable(&mut self) -> std::io::Result<()> {
        while !self.has_input() {
            let message = match &mut self.link {
                Link::Socket(s) => s.next().await.and_then(Result::ok),
                Link::Channels { rx, .. } => rx.recv().await,
            };
            self.take(message);
        }
        Ok(())
    }

    /// The next message if one is there now: `Err(())` when nothing is.
    fn try_recv(&mut self) -> Result<Option<String>, ()> {
        match &mut self.link {
            Link::Socket(s) => match s.next().now_or_never() {
                None => Err(()),
                Some(message) => Ok(message.and_then(Result::ok)),
            },
            Link::Channels { rx, .. } => match rx.try_recv() {
                Ok(message) => Ok(Some(message)),
                Err(mpsc::error::TryRecvError::Empty) => Err(()),
                Err(mpsc::error::TryRecvError::Disconnected) => Ok(None),
            },
        }
    }

    /// Sends a message as far as the link takes it now (for the last words before an end).
    fn try_send(&mut self, message: String) {
        match &mut self.link {
            Link::Socket(s) => drop(s.send(message).now_or_never()),
            Link::Channels { tx, .. } => drop(tx.try_send(message)),
        }
    }

    /// Translates one message (or the end of the client's side) into input.
    fn take(&mut self, message: Option<String>) {
        let Some(message) = message else {
            self.eof = true;
            return;
        };
        match self.framing.inbound(&message) {
            Ok(bytes) => {
                self.pending = bytes;
                self.read = 0;
            }
            Err(e) => {
                // The stream error the framing names, then the close (RFC 7395 §3.6); if
                // the link does not take them now the client is not reading and only the
                // close matters.
                self.try_send(stream_error_message(e.condition()));
                self.try_send(close_element());
                self.eof = true;
            }
        }
    }

    pub(crate) fn try_read(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        if self.read >= self.pending.len() && !self.eof {
            match self.try_recv() {
                Ok(message) => self.take(message),
                Err(()) => return Ok(None),
            }
        }
        let rest = &self.pending[self.read.min(self.pending.len())..];
        if rest.is_empty() {
            return Ok(self.eof.then_some(0));
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.read += n;
        Ok(Some(n))
    }

    pub(crate) async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        let messages = self
            .framing
            .outbound(data)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        match &mut self.link {
            // One flush for what the machine wrote at once.
            Link::Socket(s) => {
                for message in messages {
                    s.feed(message).await?;
                }
                s.flush().await
            }
            Link::Channels { tx, .. } => {
                for message in messages {
                    tx.send(message).await.map_err(|_| broken())?;
                }
                Ok(())
            }
        }
    }

    /// Ends the WebSocket with its closing handshake (an API session's channel just ends
    /// when the session drops it).
    pub(crate) async fn close(&mut self) {
        if let Link::Socket(s) = &mut self.link {
            let _ = tokio::time::timeout(CLOSE_WAIT, s.close()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_stanza_bytes: 64 * 1024,
            max_depth: 32,
        }
    }

    async fn read_all(conn: &mut WsConn) -> Vec<u8> {
        conn.readable().await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        while let Some(n) = conn.try_read(&mut buf).unwrap() {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[tokio::test]
    async fn messages_become_stream_bytes_and_back() {
        let (mut conn, mut http) = WsConn::pair(limits());
        let open = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' \
                    version='1.0'/>";
        http.to_server.send(open.to_owned()).await.unwrap();
        let header = String::from_utf8(read_all(&mut conn).await).unwrap();
        assert!(header.contains("<stream:stream"), "{header}");
        assert!(header.contains("jabber:client"), "{header}");

        conn.write_all(
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
            xmlns:stream='http://etherx.jabber.org/streams' from='localhost' id='s1' \
            version='1.0'><stream:features/>",
        )
        .await
        .unwrap();
        let first = http.from_server.recv().await.unwrap();
        assert!(
            first.starts_with("<open") && first.contains("id='s1'"),
            "{first}"
        );
        let features = http.from_server.recv().await.unwrap();
        assert!(features.contains("features"), "{features}");

        // The client goes: the session reads the end.
        drop(http.to_server);
        assert!(read_all(&mut conn).await.is_empty());
    }

    #[tokio::test]
    async fn what_the_framing_refuses_ends_the_stream_with_an_error() {
        let (mut conn, mut http) = WsConn::pair(limits());
        http.to_server
            .send("<message/><message/>".to_owned())
            .await
            .unwrap();
        assert!(read_all(&mut conn).await.is_empty());
        let error = http.from_server.recv().await.unwrap();
        assert!(
            error.contains("stream:error") || error.contains("error"),
            "{error}"
        );
        assert!(http.from_server.recv().await.unwrap().starts_with("<close"));
    }
}
