//! Federation over WebSocket inside HTTPS (RFC 7395 framing) between two servers in one
//! process, `a.test` and `b.test`, on loopback. Each server's direct address for the other
//! (`federation.peers`) is a closed port, so every stream, dialback verifications included,
//! goes through the `s2s-websocket` listeners.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use outpost_proto::minidom::Element;
use outpost_server::ListenerKind;
use outpost_server::config::Config;
use outpost_testkit::*;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
const NS_XMPP_STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

fn over_websocket(domain: &'static str, dead: SocketAddr) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.domains = vec![domain.to_owned()];
        c.listen.s2s = vec!["127.0.0.1:0".parse().expect("addr")];
        c.listen.s2s_websocket = vec!["127.0.0.1:0".parse().expect("addr")];
        c.federation.enabled = true;
        c.federation.retry_initial_secs = 1;
        c.federation.retry_max_secs = 2;
        c.federation.probe_interval_secs = 1;
        let other = if domain == "a.test" {
            "b.test"
        } else {
            "a.test"
        };
        c.federation.peers.insert(other.to_owned(), dead.into());
    }
}

fn ws_addr(s: &TestServer) -> SocketAddr {
    s.handle
        .as_ref()
        .expect("running")
        .local_addrs()
        .into_iter()
        .find(|(k, _)| *k == ListenerKind::S2sWebSocket)
        .map(|(_, a)| a)
        .expect("s2s-websocket listener")
}

fn url(s: &TestServer) -> String {
    format!("wss://{}/xmpp-websocket", ws_addr(s))
}

async fn pair() -> (TestServer, TestServer) {
    let dead = closed_port().await;
    let a = TestServer::start_with(over_websocket("a.test", dead)).await;
    let b = TestServer::start_with(over_websocket("b.test", dead)).await;
    a.handle
        .as_ref()
        .expect("a")
        .set_websocket_peer("b.test", wss_url(&url(&b)));
    b.handle
        .as_ref()
        .expect("b")
        .set_websocket_peer("a.test", wss_url(&url(&a)));
    a.add_user("alice", "wonderland").await;
    b.add_user("bob", "builder").await;
    (a, b)
}

#[tokio::test]
async fn chat_both_ways_over_websocket_arrives_once_in_order() {
    let (a, b) = pair().await;
    let mut alice = a.login("alice", "wonderland", "phone").await;
    let mut bob = b.login("bob", "builder", "pc").await;
    alice.available().await;
    bob.available().await;

    for i in 0..5 {
        alice.send(&chat("bob@b.test", &format!("a{i}"))).await;
    }
    for i in 0..5 {
        let got = bob
            .recv_where(|el| is_chat_from(el, "alice@a.test/phone"))
            .await;
        assert_eq!(body(&got), Some(format!("a{i}")));
        assert_eq!(got.attr("to"), Some("bob@b.test"));
    }
    for i in 0..5 {
        bob.send(&chat("alice@a.test/phone", &format!("b{i}")))
            .await;
    }
    for i in 0..5 {
        let got = alice
            .recv_where(|el| is_chat_from(el, "bob@b.test/pc"))
            .await;
        assert_eq!(body(&got), Some(format!("b{i}")));
    }

    a.wait_for_empty_outbox("b.test").await;
    b.wait_for_empty_outbox("a.test").await;
    // Exactly once: nothing more after the last one.
    bob.assert_none_before_ping(|el| el.name() == "message", "a duplicate")
        .await;
    alice
        .assert_none_before_ping(|el| el.name() == "message", "a duplicate")
        .await;
    // Both links are up, over the only path there is.
    let up = |statuses: Vec<outpost_server::LinkStatus>, remote: &str| {
        statuses
            .iter()
            .any(|s| s.remote == remote && s.state == outpost_server::LinkState::Up)
    };
    assert!(up(
        a.handle
            .as_ref()
            .expect("a")
            .link_statuses()
            .await
            .expect("status"),
        "b.test"
    ));
    assert!(up(
        b.handle
            .as_ref()
            .expect("b")
            .link_statuses()
            .await
            .expect("status"),
        "a.test"
    ));
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A raw WebSocket handshake with `server`'s s2s-websocket listener.
async fn raw_upgrade(
    server: &TestServer,
    path: &str,
    protocol: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let addr = ws_addr(server);
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = server
        .tls_connector()
        .connect(ServerName::try_from("b.test").expect("name"), tcp)
        .await
        .expect("TLS");
    let mut request = format!("wss://{addr}{path}")
        .into_client_request()
        .expect("request");
    if let Some(p) = protocol {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(p).expect("h"),
        );
    }
    let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tls))
        .await
        .expect("in time")?;
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("xmpp")
    );
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Text(t))) => return Some(t.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

fn el(text: &str) -> Element {
    text.parse()
        .unwrap_or_else(|e| panic!("message is not one element ({e}): {text}"))
}

/// Opens a stream as a peer would, and reads the header and features.
async fn open_stream(ws: &mut Ws) {
    ws.send(Message::text(format!(
        "<open xmlns='{NS_FRAMING}' to='b.test' from='a.test' version='1.0'/>"
    )))
    .await
    .expect("send");
    let open = el(&next_text(ws).await.expect("open"));
    assert!(open.is("open", NS_FRAMING));
    assert_eq!(open.attr("from"), Some("b.test"));
    let features = el(&next_text(ws).await.expect("features"));
    assert!(features.is("features", NS_STREAMS));
    assert!(features.has_child("dialback", "urn:xmpp:features:dialback"));
}

/// Reads until the stream error; returns its condition, after checking `<close/>` and the
/// end of the connection follow.
async fn expect_stream_error(ws: &mut Ws) -> String {
    let error = el(&next_text(ws).await.expect("stream error"));
    assert!(error.is("error", NS_STREAMS), "{error:?}");
    let condition = error
        .children()
        .find(|c| c.ns() == NS_XMPP_STREAMS)
        .map(|c| c.name().to_owned())
        .expect("condition");
    let close = el(&next_text(ws).await.expect("close"));
    assert!(close.is("close", NS_FRAMING));
    assert_eq!(next_text(ws).await, None, "the connection ends");
    condition
}

#[tokio::test]
async fn upgrade_needs_the_xmpp_subprotocol_and_the_path() {
    let (_a, b) = pair().await;
    let refused = raw_upgrade(&b, "/xmpp-websocket", None).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400),
        other => panic!("upgrade without subprotocol: {other:?}"),
    }
    let refused = raw_upgrade(&b, "/xmpp-websocket", Some("chat, superchat")).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 400)
    );
    let refused = raw_upgrade(&b, "/elsewhere", Some("xmpp")).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 404)
    );
    let mut ws = raw_upgrade(&b, "/xmpp-websocket", Some("chat, xmpp"))
        .await
        .expect("accepted with xmpp");
    open_stream(&mut ws).await;
}

#[tokio::test]
async fn bad_messages_end_only_their_own_stream() {
    let (a, b) = pair().await;
    let mut alice = a.login("alice", "wonderland", "phone").await;
    let mut bob = b.login("bob", "builder", "pc").await;
    alice.available().await;
    bob.available().await;
    // The real link is up and carries a message.
    alice.send(&chat("bob@b.test", "before")).await;
    let got = bob
        .recv_where(|el| is_chat_from(el, "alice@a.test/phone"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("before"));

    let cases: &[(&str, &str)] = &[
        ("this is not XML", "bad-format"),
        (
            "<db:result to='b.test' from='a.test'>k</db:result><r xmlns='urn:xmpp:sm:3'/>",
            "bad-format",
        ),
        ("<message><body>half", "bad-format"),
        ("<message></body>", "not-well-formed"),
    ];
    for (input, condition) in cases {
        let mut ws = raw_upgrade(&b, "/xmpp-websocket", Some("xmpp"))
            .await
            .expect("upgrade");
        open_stream(&mut ws).await;
        ws.send(Message::text(*input)).await.expect("send");
        assert_eq!(expect_stream_error(&mut ws).await, *condition, "{input:?}");
    }
    // A binary message is refused the same way.
    let mut ws = raw_upgrade(&b, "/xmpp-websocket", Some("xmpp"))
        .await
        .expect("upgrade");
    open_stream(&mut ws).await;
    ws.send(Message::binary(b"<message/>".to_vec()))
        .await
        .expect("send");
    assert_eq!(expect_stream_error(&mut ws).await, "bad-format");

    // The other link did not notice.
    alice.send(&chat("bob@b.test", "after")).await;
    let got = bob
        .recv_where(|el| is_chat_from(el, "alice@a.test/phone"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("after"));
    a.wait_for_empty_outbox("b.test").await;
}

#[tokio::test]
async fn a_ping_is_answered() {
    let (_a, b) = pair().await;
    let mut ws = raw_upgrade(&b, "/xmpp-websocket", Some("xmpp"))
        .await
        .expect("upgrade");
    open_stream(&mut ws).await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    // The stream is quiet after its features, so the next frame must be the pong.
    match tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("in time")
    {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"are you there"),
        other => panic!("no pong: {other:?}"),
    }
}
