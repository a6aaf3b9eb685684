//! Moving a file's bytes: from a file at an offset to a connection, from a connection into
//! a part file, the SHA-256 that checks them (XEP-0300), and the client side of the SOCKS5
//! handshake a bytestream proxy speaks (XEP-0065).

use std::path::Path;

use base64::Engine as _;
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes moved between two progress reports.
pub(crate) const REPORT_EVERY: u64 = 1 << 20;
const CHUNK: usize = 64 * 1024;
/// How long a receiver waits for the next bytes before it gives up (keeping what it has,
/// for the next offer to resume): longer than a proxy keeps a stream waiting for its
/// sender (a minute).
const STALL: std::time::Duration = std::time::Duration::from_secs(90);

/// The SHA-256 of a file, base64 (as XEP-0300 writes it).
pub(crate) async fn hash_file(path: &Path) -> std::io::Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0; 1 << 16];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(buf.get(..n).unwrap_or_default());
        }
        Ok(base64::engine::general_purpose::STANDARD.encode(hasher.finalize()))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Writes `path` from `offset` to its end on `io`, calling `progress` with the bytes
/// done so far now and then.
pub(crate) async fn send_from(
    path: &Path,
    offset: u64,
    io: &mut (impl AsyncWrite + Unpin),
    mut progress: impl FnMut(u64),
) -> std::io::Result<u64> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = vec![0; CHUNK];
    let (mut done, mut told) = (offset, offset);
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        io.write_all(buf.get(..n).unwrap_or_default()).await?;
        done += n as u64;
        if done - told >= REPORT_EVERY {
            told = done;
            progress(done);
        }
    }
    io.flush().await?;
    io.shutdown().await?;
    progress(done);
    Ok(done)
}

/// Reads from `io` into `part` (kept from `offset` on) until it holds `size` bytes.
pub(crate) async fn receive_into(
    part: &Path,
    offset: u64,
    size: u64,
    io: &mut (impl AsyncRead + Unpin),
    mut progress: impl FnMut(u64),
) -> std::io::Result<()> {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(part)
        .await?;
    file.set_len(offset).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = vec![0; CHUNK];
    let (mut done, mut told) = (offset, offset);
    while done < size {
        let want = usize::try_from(size - done).unwrap_or(CHUNK).min(CHUNK);
        let read = io.read(buf.get_mut(..want).unwrap_or_default());
        let Ok(n) = tokio::time::timeout(STALL, read).await else {
            file.sync_all().await?;
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "nothing came for {} s at {done} of {size} bytes",
                    STALL.as_secs()
                ),
            ));
        };
        let n = n?;
        if n == 0 {
            file.sync_all().await?;
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the connection ended at {done} of {size} bytes"),
            ));
        }
        file.write_all(buf.get(..n).unwrap_or_default()).await?;
        done += n as u64;
        if done - told >= REPORT_EVERY {
            told = done;
            progress(done);
        }
    }
    file.sync_all().await?;
    progress(done);
    Ok(())
}

/// Connects to a SOCKS5 bytestream proxy for the stream whose address is `hash`.
pub(crate) async fn socks5_connect(
    host: &str,
    port: u16,
    hash: &str,
) -> std::io::Result<TcpStream> {
    let mut tcp = TcpStream::connect((host, port)).await?;
    let _ = tcp.set_nodelay(true);
    // No authentication (RFC 1928 §3).
    tcp.write_all(&[5, 1, 0]).await?;
    let mut choice = [0; 2];
    tcp.read_exact(&mut choice).await?;
    if choice != [5, 0] {
        return Err(std::io::Error::other(
            "the proxy refused the SOCKS5 greeting",
        ));
    }
    // CONNECT to the domain name `hash`, port 0 (XEP-0065 §5.3.2).
    let len = u8::try_from(hash.len()).map_err(std::io::Error::other)?;
    let mut request = vec![5, 1, 0, 3, len];
    request.extend_from_slice(hash.as_bytes());
    request.extend_from_slice(&[0, 0]);
    tcp.write_all(&request).await?;
    let mut reply = vec![0; request.len()];
    tcp.read_exact(&mut reply).await?;
    if reply.get(..2) != Some(&[5, 0]) {
        return Err(std::io::Error::other("the proxy refused the stream"));
    }
    Ok(tcp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_sender_that_stalls_is_given_up_and_what_came_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let part = dir.path().join("file.part");
        let (mut sender, mut receiver) = tokio::io::duplex(64);
        sender.write_all(b"0123456789").await.expect("write");
        let got = receive_into(&part, 0, 100, &mut receiver, |_| {}).await;
        let error = got.expect_err("nothing more came");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
        assert_eq!(std::fs::metadata(&part).expect("part").len(), 10);
        drop(sender);
    }
}
