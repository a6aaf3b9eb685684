//! A small HTTPS client for the tests: one request per connection, hyper's HTTP/1.1 over
//! the test kit's TLS connector (which trusts the test server's certificate).

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use outpost_server::ListenerKind;
use outpost_testkit::TestServer;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub(crate) fn https_addr(server: &TestServer) -> SocketAddr {
    server
        .listener(ListenerKind::Https)
        .expect("an HTTPS listener")
}

/// A TLS connection to the server's HTTPS listener, trusting its certificate.
pub(crate) async fn connect_tls(server: &TestServer) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(https_addr(server))
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    server
        .tls_connector()
        .connect(name, tcp)
        .await
        .expect("TLS")
}

/// Sends one request to the server's HTTPS listener. `path` is the URL's path.
pub(crate) async fn request(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let tls = connect_tls(server).await;
    send_on(tls, method, path, headers, body).await
}

/// Sends one request to the server's plain HTTP listener (`listen.http`).
pub(crate) async fn plain_request(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let addr = server
        .listener(ListenerKind::Http)
        .expect("an HTTP listener");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    send_on(tcp, method, path, headers, body).await
}

async fn send_on(
    io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path);
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        req = req.header("host", "localhost");
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let response = sender.send_request(req).await.expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}
