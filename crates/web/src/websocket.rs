//! XMPP over WebSocket for clients (RFC 7395) at `/xmpp-websocket`, and its discovery
//! (XEP-0156): `/.well-known/host-meta` (XRD) and `/.well-known/host-meta.json` (JRD) name
//! the endpoint, as the host the client asked for.
//!
//! The upgrade must ask for the `xmpp` subprotocol (RFC 7395 §3.1), or it is refused with
//! 400. The server's session ([`ServerView::client_websocket`]: SASL, stream management,
//! limits) then reads and writes the WebSocket's text messages itself, with no task
//! between; its framing checks each message. A binary message, or the client's close,
//! ends the stream.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use outpost_server::ServerView;

pub(crate) const PATH: &str = "/xmpp-websocket";
const SUBPROTOCOL: &str = "xmpp";
/// The alternative connection method of XEP-0156 for WebSocket.
const ALT_WEBSOCKET: &str = "urn:xmpp:alt-connections:websocket";
/// Room for the framing around the largest stanza.
const MESSAGE_SLACK: usize = 4096;
/// The WebSocket's read buffer: what one read takes from the connection.
const READ_BUFFER: usize = 1024;

/// The address a connection came from, set per connection (see `serve_connection`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub(crate) SocketAddr);

#[derive(Clone)]
struct Ws {
    server: ServerView,
    max_message: usize,
}

pub(crate) fn routes(server: ServerView, max_stanza_bytes: usize) -> Router {
    let state = Ws {
        server,
        max_message: max_stanza_bytes + MESSAGE_SLACK,
    };
    Router::new()
        .route(PATH, get(upgrade))
        .route("/.well-known/host-meta", get(host_meta))
        .route("/.well-known/host-meta.json", get(host_meta_json))
        .with_state(state)
}

fn offers_xmpp(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

async fn upgrade(
    State(ws): State<Ws>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !offers_xmpp(&headers) {
        return (
            StatusCode::BAD_REQUEST,
            "the WebSocket must ask for the xmpp subprotocol (RFC 7395 section 3.1)\n",
        )
            .into_response();
    }
    upgrade
        .protocols([SUBPROTOCOL])
        .max_message_size(ws.max_message)
        .max_frame_size(ws.max_message)
        // The library's defaults (128 KiB read buffer allocated up front, 128 KiB write
        // buffering) are made for bulk transfer: ten times what the rest of an idle
        // session holds. Reads come from TLS's decrypted buffer, so a small one costs a copy per
        // KiB, not a system call; a larger frame grows it while it is read.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            // At the connection cap, as the TCP listeners refuse: dropped, so closed at once.
            let _ = (ws.server)
                .client_websocket(peer, Box::new(Texts(socket)))
                .await;
        })
}

/// The client's WebSocket as the session reads and writes it: text messages both ways.
/// Pings are answered by the WebSocket layer; a binary message (not XMPP, RFC 7395 §3.4),
/// the client's close or an error ends what the session reads.
struct Texts(WebSocket);

impl Stream for Texts {
    type Item = std::io::Result<String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match ready!(self.0.poll_next_unpin(cx)) {
                Some(Ok(Message::Text(text))) => Poll::Ready(Some(Ok(text.as_str().to_owned()))),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Binary(_) | Message::Close(_))) | None => Poll::Ready(None),
                Some(Err(e)) => Poll::Ready(Some(Err(std::io::Error::other(e)))),
            };
        }
    }
}

impl Sink<String> for Texts {
    type Error = std::io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready_unpin(cx).map_err(std::io::Error::other)
    }

    fn start_send(mut self: Pin<&mut Self>, text: String) -> Result<(), Self::Error> {
        (self.0)
            .start_send_unpin(Message::Text(text.into()))
            .map_err(std::io::Error::other)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_flush_unpin(cx).map_err(std::io::Error::other)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_close_unpin(cx).map_err(std::io::Error::other)
    }
}

/// The endpoint's URL, on the host the client asked for.
fn endpoint(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    // A host header is a host and maybe a port; anything else is not echoed back.
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    valid.then(|| format!("wss://{host}{PATH}"))
}

/// Discovery documents are read by web clients of other origins.
const CORS: (header::HeaderName, &str) = (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*");

async fn host_meta(headers: HeaderMap) -> Response {
    let Some(url) = endpoint(&headers) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let xrd = format!(
        "<?xml version='1.0' encoding='utf-8'?>\n\
         <XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n\
         <Link rel='{ALT_WEBSOCKET}' href='{url}'/>\n</XRD>\n"
    );
    ([(header::CONTENT_TYPE, "application/xrd+xml"), CORS], xrd).into_response()
}

async fn host_meta_json(headers: HeaderMap) -> Response {
    let Some(url) = endpoint(&headers) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let jrd = serde_json::json!({ "links": [{ "rel": ALT_WEBSOCKET, "href": url }] });
    (
        [(header::CONTENT_TYPE, "application/json"), CORS],
        jrd.to_string(),
    )
        .into_response()
}
