//! The SOCKS5 bytestream proxy (XEP-0065): two clients that cannot connect to each other
//! send a file through the server, byte for byte.

use outpost_proto::minidom::Element;
use outpost_proto::socks5::stream_hash;
use outpost_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NS_BYTESTREAMS: &str = "http://jabber.org/protocol/bytestreams";
const PROXY: &str = "proxy.localhost";

/// Connects to the proxy the way a client does (RFC 1928, XEP-0065 §5.3.2) for `hash`.
async fn connect(host: &str, port: u16, hash: &str) -> TcpStream {
    let mut s = TcpStream::connect((host, port))
        .await
        .expect("connect to the proxy");
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice, [5, 0], "no authentication");
    let mut request = vec![5, 1, 0, 3, hash.len() as u8];
    request.extend_from_slice(hash.as_bytes());
    request.extend_from_slice(&[0, 0]);
    s.write_all(&request).await.unwrap();
    let mut reply = vec![0u8; 5 + hash.len() + 2];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply[..2], &[5, 0], "connected");
    s
}

fn streamhost(reply: &Element) -> (String, u16) {
    let host = reply
        .get_child("query", NS_BYTESTREAMS)
        .and_then(|q| q.get_child("streamhost", NS_BYTESTREAMS))
        .expect("a streamhost");
    assert_eq!(host.attr("jid"), Some(PROXY));
    (
        host.attr("host").expect("host").to_owned(),
        host.attr("port")
            .and_then(|p| p.parse().ok())
            .expect("port"),
    )
}

#[tokio::test]
async fn a_file_goes_through_the_proxy_byte_for_byte() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let bob = server.login("bob", "builder", "pc").await;
    // The server lists the proxy; the proxy says what it is and where it listens.
    let items = alice
        .query(
            "get",
            Some("localhost"),
            &format!("<query xmlns='{NS_DISCO_ITEMS}'/>"),
        )
        .await;
    assert!(format!("{items:?}").contains(PROXY), "{items:?}");
    let info = alice
        .query(
            "get",
            Some(PROXY),
            &format!("<query xmlns='{NS_DISCO_INFO}'/>"),
        )
        .await;
    let identity = info
        .get_child("query", NS_DISCO_INFO)
        .and_then(|q| q.get_child("identity", NS_DISCO_INFO))
        .expect("identity");
    assert_eq!(
        (identity.attr("category"), identity.attr("type")),
        (Some("proxy"), Some("bytestreams"))
    );
    let reply = alice
        .query(
            "get",
            Some(PROXY),
            &format!("<query xmlns='{NS_BYTESTREAMS}'/>"),
        )
        .await;
    let (host, port) = streamhost(&reply);

    let hash = stream_hash("s1", &alice.jid, &bob.jid);
    // The target connects first, then the initiator, who activates the stream.
    let mut target = connect(&host, port, &hash).await;
    let mut initiator = connect(&host, port, &hash).await;
    let activate = format!(
        "<query xmlns='{NS_BYTESTREAMS}' sid='s1'><activate>{}</activate></query>",
        bob.jid
    );
    let done = alice.query("set", Some(PROXY), &activate).await;
    assert_eq!(done.attr("type"), Some("result"), "{done:?}");
    let file: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sending = file.clone();
    let writer = tokio::spawn(async move {
        initiator.write_all(&sending).await.unwrap();
        initiator.shutdown().await.unwrap();
        initiator
    });
    let mut got = Vec::new();
    target.read_to_end(&mut got).await.unwrap();
    drop(writer.await.unwrap());
    assert_eq!(got.len(), file.len());
    assert!(got == file, "byte-identical");

    // A stream nobody connected for is not found.
    let unknown = alice
        .query(
            "set",
            Some(PROXY),
            &format!(
                "<query xmlns='{NS_BYTESTREAMS}' sid='nope'><activate>{}</activate></query>",
                bob.jid
            ),
        )
        .await;
    assert_eq!(stanza_error(&unknown).0, "item-not-found");
}
