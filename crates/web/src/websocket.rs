//! XMPP over WebSocket for clients (RFC 7395) at `/xmpp-websocket`, and its discovery
//! (XEP-0156): `/.well-known/host-meta` (XRD) and `/.well-known/host-meta.json` (JRD) name
//! the endpoint, as the host the client asked for.
//!
//! The upgrade must ask for the `xmpp` subprotocol (RFC 7395 §3.1), or it is refused with
//! 400. Each text message goes to the server's session as it is (the session's framing
//! checks it); a binary message, or the client's close, ends the stream. The session is
//! the server's ([`ServerView::client_websocket`]): SASL, stream management, limits.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use outpost_server::{ClientWebSocket, ServerView};

pub(crate) const PATH: &str = "/xmpp-websocket";
const SUBPROTOCOL: &str = "xmpp";
/// The alternative connection method of XEP-0156 for WebSocket.
const ALT_WEBSOCKET: &str = "urn:xmpp:alt-connections:websocket";
/// Room for the framing around the largest stanza.
const MESSAGE_SLACK: usize = 4096;

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
            match ws.server.client_websocket(peer).await {
                Some(session) => pump(socket, session).await,
                // At the connection cap, as the TCP listeners refuse: closed at once.
                None => drop(socket),
            }
        })
}

/// The WebSocket's read buffer: what one read takes from the connection.
const READ_BUFFER: usize = 1024;

/// Carries messages between the client's WebSocket and its session until either ends.
async fn pump(socket: WebSocket, session: ClientWebSocket) {
    let ClientWebSocket {
        to_server,
        mut from_server,
    } = session;
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if to_server.send(text.as_str().to_owned()).await.is_err() {
                        break;
                    }
                }
                // Pings are answered by the WebSocket layer.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                // Binary messages are not XMPP (RFC 7395 §3.4); a close or an error ends it.
                Some(Ok(Message::Binary(_) | Message::Close(_)) | Err(_)) | None => break,
            },
            out = from_server.recv() => match out {
                Some(text) => {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                None => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
            },
        }
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
