//! XMPP over WebSocket for clients (RFC 7395) on the real HTTPS listener, driven by a real
//! WebSocket client (tokio-tungstenite over the test kit's TLS): a browser-style client
//! logs in with SASL, binds, and chats with a TCP client; a malformed message ends its
//! stream with an error and harms nobody else; the upgrade needs the `xmpp` subprotocol;
//! host-meta names the endpoint.

use std::sync::Arc;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use outpost_testkit::*;
use outpost_web::Web;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::http::{connect_tls, https_addr, request};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

const OPEN: &str =
    "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>";

/// Upgrades a TLS connection to the listener, asking for `protocol` when given; returns the
/// socket, or the HTTP status of a refusal.
async fn connect(server: &TestServer, protocol: Option<&str>) -> Result<Socket, u16> {
    let tls = connect_tls(server).await;
    let mut req = "wss://localhost/xmpp-websocket"
        .into_client_request()
        .expect("request");
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_str(p).unwrap());
    }
    match tokio_tungstenite::client_async(req, tls).await {
        Ok((socket, response)) => {
            let selected = response.headers().get("sec-websocket-protocol");
            assert_eq!(selected.and_then(|v| v.to_str().ok()), Some("xmpp"));
            Ok(socket)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("upgrade: {e}"),
    }
}

async fn send(ws: &mut Socket, text: &str) {
    ws.send(Message::Text(text.into())).await.expect("send");
}

/// The next text message, within the test kit's wait.
async fn next(ws: &mut Socket) -> String {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a message");
        match message {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Close(_) => return String::new(),
            _ => {}
        }
    }
}

/// Reads messages until one contains `what`.
async fn until(ws: &mut Socket, what: &str) -> String {
    loop {
        let m = next(ws).await;
        assert!(!m.is_empty(), "closed before {what}");
        if m.contains(what) {
            return m;
        }
    }
}

/// Opens the stream, authenticates with PLAIN, restarts and binds `resource`.
async fn log_in(ws: &mut Socket, user: &str, password: &str, resource: &str) {
    send(ws, OPEN).await;
    let open = next(ws).await;
    assert!(
        open.starts_with("<open") && open.contains("framing"),
        "{open}"
    );
    let features = until(ws, "features").await;
    assert!(features.contains("PLAIN"), "{features}");
    assert!(
        !features.contains("starttls"),
        "TLS is the HTTPS: {features}"
    );
    let payload = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    send(
        ws,
        &format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
        ),
    )
    .await;
    until(ws, "success").await;
    send(ws, OPEN).await;
    let features = until(ws, "features").await;
    assert!(
        features.contains("urn:xmpp:sm:3"),
        "stream management as on TCP: {features}"
    );
    send(
        ws,
        &format!(
            "<iq xmlns='jabber:client' type='set' id='b1'><bind \
             xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ),
    )
    .await;
    let bound = until(ws, "b1").await;
    assert!(
        bound.contains(&format!("{user}@localhost/{resource}")),
        "{bound}"
    );
}

#[tokio::test]
async fn a_websocket_client_chats_with_a_tcp_client() {
    let server = TestServer::start_with_http(|_| {}, Arc::new(Web::new())).await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let mut ws = connect(&server, Some("xmpp")).await.expect("upgrade");
    log_in(&mut ws, "alice", "wonderland", "browser").await;
    send(&mut ws, "<presence xmlns='jabber:client'/>").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;

    bob.send(&chat("alice@localhost/browser", "over TCP")).await;
    let got = until(&mut ws, "over TCP").await;
    assert!(
        got.contains("from='bob@localhost/pc'") || got.contains("from=\"bob@localhost/pc\""),
        "{got}"
    );
    send(
        &mut ws,
        "<message xmlns='jabber:client' to='bob@localhost' type='chat'><body>over WebSocket</body></message>",
    )
    .await;
    let got = bob
        .recv_where(|el| is_chat_from(el, "alice@localhost/browser"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("over WebSocket"));
    // A message many times the read buffer (1 KiB) arrives whole.
    let long = "0123456789abcdef".repeat(2000);
    send(
        &mut ws,
        &format!("<message xmlns='jabber:client' to='bob@localhost' type='chat'><body>{long}</body></message>"),
    )
    .await;
    let got = bob
        .recv_where(|el| is_chat_from(el, "alice@localhost/browser"))
        .await;
    assert_eq!(body(&got).as_deref(), Some(long.as_str()));

    // The client closes: the server answers with its own close and the session ends.
    send(
        &mut ws,
        "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
    )
    .await;
    let close = until(&mut ws, "close").await;
    assert!(close.starts_with("<close"), "{close}");
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        match server.handle.as_ref().expect("running").session_count() {
            1 => Ok(()),
            n => Err(format!("{n} sessions")),
        }
    })
    .await;
}

#[tokio::test]
async fn a_malformed_message_ends_only_its_own_stream() {
    let server = TestServer::start_with_http(|_| {}, Arc::new(Web::new())).await;
    server.add_user("bob", "builder").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    let mut ws = connect(&server, Some("xmpp")).await.expect("upgrade");
    send(&mut ws, OPEN).await;
    until(&mut ws, "features").await;
    // Two elements in one message (RFC 7395 §3.3.3 wants exactly one).
    send(
        &mut ws,
        "<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>",
    )
    .await;
    let error = until(&mut ws, "error").await;
    assert!(error.contains("stream"), "{error}");
    // bob goes on.
    let pong = bob
        .query("get", Some("localhost"), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
}

#[tokio::test]
async fn the_upgrade_needs_the_xmpp_subprotocol() {
    let server = TestServer::start_with_http(|_| {}, Arc::new(Web::new())).await;
    assert_eq!(connect(&server, None).await.err(), Some(400));
    assert_eq!(connect(&server, Some("mqtt")).await.err(), Some(400));
}

#[tokio::test]
async fn host_meta_names_the_websocket_endpoint() {
    let server = TestServer::start_with_http(|_| {}, Arc::new(Web::new())).await;
    let xrd = request(&server, "GET", "/.well-known/host-meta", &[], Vec::new()).await;
    assert_eq!(xrd.status.as_u16(), 200);
    assert_eq!(xrd.header("access-control-allow-origin"), Some("*"));
    let text = String::from_utf8(xrd.body).expect("text");
    assert!(
        text.contains("urn:xmpp:alt-connections:websocket")
            && text.contains("wss://localhost/xmpp-websocket"),
        "{text}"
    );
    let jrd = request(
        &server,
        "GET",
        "/.well-known/host-meta.json",
        &[],
        Vec::new(),
    )
    .await;
    let json: serde_json::Value = serde_json::from_slice(&jrd.body).expect("JSON");
    assert_eq!(json["links"][0]["href"], "wss://localhost/xmpp-websocket");
    // A Host header that is not a host is not echoed into the document.
    let bad = request(
        &server,
        "GET",
        "/.well-known/host-meta",
        &[("host", "evil'/><Link href='x")],
        Vec::new(),
    )
    .await;
    assert_eq!(bad.status.as_u16(), 400);
}

/// A WebSocket session counts against `limits.max_connections` like a TCP connection: with
/// a cap of two, a TCP client and a WebSocket client fill it, and the next connection is
/// refused.
#[tokio::test]
async fn websocket_sessions_count_against_the_connection_cap() {
    let server =
        TestServer::start_with_http(|c| c.limits.max_connections = 2, Arc::new(Web::new())).await;
    let _tcp = Client::connect_open(server.starttls, server.domain()).await;
    let mut ws = connect(&server, Some("xmpp")).await.expect("upgrade");
    send(&mut ws, OPEN).await;
    until(&mut ws, "features").await;
    // Both places are taken: the server closes a new connection before TLS.
    assert!(tls_to(&server).await.is_err());
    // The WebSocket goes: its place is free again.
    drop(ws);
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        match tls_to(&server).await {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("still refused: {e}")),
        }
    })
    .await;
}

async fn tls_to(
    server: &TestServer,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(https_addr(server)).await?;
    let name = ServerName::try_from("localhost").expect("name");
    server.tls_connector().connect(name, tcp).await
}
