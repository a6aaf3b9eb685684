//! HTTP file upload (XEP-0363) and the download of a shared file: hyper's HTTP/1.1 client
//! over rustls, with the same certificate trust as the XMPP connections (the upload
//! service is the site's own HTTPS listener).

use std::path::Path;

use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::wire::REPORT_EVERY;
use crate::trust::Verifier;

type Sender = hyper::client::conn::http1::SendRequest<
    StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>>,
>;

/// Opens an HTTPS connection to the URL's host.
async fn connect(uri: &Uri, verifier: &Verifier) -> Result<Sender, String> {
    if uri.scheme_str() != Some("https") {
        return Err(format!("{uri} is not an https URL"));
    }
    let host = uri.host().ok_or_else(|| format!("{uri} names no host"))?;
    let port = uri.port_u16().unwrap_or(443);
    let address = format!("{host}:{port}");
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot reach {address}: {e}"))?;
    let (config, seen) = verifier.config_for(&address).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {address} failed: {e}"))?;
    if let Some(seen) = seen {
        verifier
            .remember(&address, &seen)
            .map_err(|e| e.to_string())?;
    }
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

fn body(
    stream: impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + 'static,
) -> StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>> {
    use futures_util::StreamExt as _;
    StreamBody::new(stream.boxed())
}

/// PUTs `path` to a slot's URL with its headers, reporting the bytes sent.
pub(crate) async fn put(
    url: &str,
    headers: &[(String, String)],
    path: &Path,
    size: u64,
    verifier: &Verifier,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<(), String> {
    use futures_util::StreamExt as _;
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let mut sender = connect(&uri, verifier).await?;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut sent = 0u64;
    let mut told = 0u64;
    let frames = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024).map(move |chunk| {
        let chunk = chunk?;
        sent += chunk.len() as u64;
        if sent - told >= REPORT_EVERY || sent == size {
            told = sent;
            progress(sent);
        }
        Ok(Frame::data(chunk))
    });
    let mut request = Request::put(&uri)
        .header(hyper::header::HOST, authority(&uri))
        .header(hyper::header::CONTENT_LENGTH, size)
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(body(frames)).map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("the upload failed: {e}"))?;
    match response.status().is_success() {
        true => Ok(()),
        false => Err(format!("the upload service answered {}", response.status())),
    }
}

/// GETs `url` into `part` (at most `max` bytes), reporting the bytes received; returns
/// how many.
pub(crate) async fn get(
    url: &str,
    part: &Path,
    max: u64,
    verifier: &Verifier,
    mut progress: impl FnMut(u64),
) -> Result<u64, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let mut sender = connect(&uri, verifier).await?;
    let request = Request::get(&uri)
        .header(hyper::header::HOST, authority(&uri))
        .body(body(futures_util::stream::empty()))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("the download failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let mut file = tokio::fs::File::create(part)
        .await
        .map_err(|e| format!("{}: {e}", part.display()))?;
    let mut body = response.into_body();
    let (mut done, mut told) = (0u64, 0u64);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the download broke: {e}"))?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data).await.map_err(|e| e.to_string())?;
            done += data.len() as u64;
            if done > max {
                return Err(format!("{url} is larger than {max} bytes; not kept"));
            }
            if done - told >= REPORT_EVERY {
                told = done;
                progress(done);
            }
        }
    }
    file.sync_all().await.map_err(|e| e.to_string())?;
    progress(done);
    Ok(done)
}

fn authority(uri: &Uri) -> String {
    uri.authority().map(ToString::to_string).unwrap_or_default()
}
