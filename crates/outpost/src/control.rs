//! The control socket: how `outpost admin …` and `outpost user …` talk to a running
//! `outpost serve` on the same machine, never over the network.
//!
//! A Unix socket at `<data_dir>/control.sock`, created owner-only (mode 0600) in the data
//! directory, which is owner-only too; the server also checks the peer's user id and
//! answers only its own user and root. One JSON request per line, one JSON response per
//! line. A socket left by a server that died is replaced at start; a socket that answers
//! means another server runs on this data directory, and the second one refuses to start.

use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use outpost_server::config::Config;
use outpost_server::{AccountChange, ServerHandle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Longest request line accepted: requests are small.
const MAX_REQUEST: usize = 64 * 1024;
/// How long a client waits for the server's answer (a backup of a large store takes a while).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// What a client asks the running server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub(crate) enum Request {
    Status,
    Sessions,
    Cluster,
    Kick {
        jid: String,
    },
    /// Re-read the configuration file and the certificate (as SIGHUP does).
    Reload,
    Backup {
        path: PathBuf,
    },
    Unblock {
        account: Option<String>,
        address: Option<IpAddr>,
    },
    /// An `outpost user` command changed the account in the store: end its sessions.
    AccountChanged {
        jid: String,
        removed: bool,
    },
}

/// The server's answer: `result` on success, `error` (a sentence for the operator) if not.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Response {
    pub(crate) ok: bool,
    #[serde(default)]
    pub(crate) result: serde_json::Value,
    #[serde(default)]
    pub(crate) error: Option<String>,
}

/// The socket of the server using `config`'s data directory.
pub(crate) fn socket_path(config: &Config) -> PathBuf {
    config.data_dir.join("control.sock")
}

/// What the server does for a request that needs more than the handle: a reload.
pub(crate) trait Reloader: Send + Sync {
    fn reload(&self, handle: &ServerHandle) -> anyhow::Result<serde_json::Value>;
}

/// Binds the control socket, replacing one left by a server that is gone.
pub(crate) async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    match UnixStream::connect(path).await {
        Ok(_) => bail!(
            "another outpost serve is running on this data directory ({} answers)",
            path.display()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(_) => {
            // Refused: the socket of a server that died.
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale {}", path.display()))?;
        }
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot create {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(listener)
}

/// Answers control requests until `stop`.
pub(crate) async fn serve(
    listener: UnixListener,
    path: PathBuf,
    handle: Arc<ServerHandle>,
    reloader: Arc<dyn Reloader>,
    stop: CancellationToken,
) {
    // Our own user id: the owner of the socket we just created.
    let own_uid = std::fs::metadata(&path).map(|m| m.uid()).ok();
    // Requests in progress; they end with the server (a backup is the longest).
    let mut requests = JoinSet::new();
    loop {
        while requests.try_join_next().is_some() {}
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        let allowed = uid == Some(0) || uid == own_uid;
        let (handle, reloader) = (handle.clone(), reloader.clone());
        requests.spawn(async move {
            // The request is read even when it will be refused, so the refusal reaches
            // the client instead of a broken pipe.
            let response = match read_request(&mut stream).await {
                Ok(_) if !allowed => {
                    tracing::warn!(?uid, "control request from another user refused");
                    refusal("only the server's own user and root may control it")
                }
                Ok(request) => execute(request, &handle, reloader.as_ref()).await,
                Err(e) => refusal(&format!("{e:#}")),
            };
            let _ = answer(&mut stream, response).await;
        });
    }
    requests.abort_all();
    let _ = std::fs::remove_file(&path);
}

fn refusal(why: &str) -> Response {
    Response {
        ok: false,
        result: serde_json::Value::Null,
        error: Some(why.to_owned()),
    }
}

async fn read_request(stream: &mut UnixStream) -> anyhow::Result<Request> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream.take(MAX_REQUEST as u64));
    tokio::time::timeout(Duration::from_secs(10), reader.read_until(b'\n', &mut line))
        .await
        .context("no request")??;
    serde_json::from_slice(&line).context("not a control request")
}

async fn answer(stream: &mut UnixStream, response: Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&response).unwrap_or_default();
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.shutdown().await
}

async fn execute(request: Request, handle: &ServerHandle, reloader: &dyn Reloader) -> Response {
    tracing::info!(?request, "control request");
    let result = match request {
        Request::Status => handle
            .status()
            .await
            .map_err(anyhow::Error::from)
            .and_then(|s| Ok(serde_json::to_value(s)?)),
        Request::Sessions => Ok(serde_json::to_value(handle.sessions()).unwrap_or_default()),
        Request::Cluster => Ok(serde_json::to_value(handle.cluster().await).unwrap_or_default()),
        Request::Kick { jid } => handle.kick(&jid).map(Into::into).map_err(Into::into),
        Request::Reload => reloader.reload(handle),
        Request::Backup { path } => handle
            .backup(&path)
            .await
            .map(|()| serde_json::Value::Null)
            .map_err(|e| {
                anyhow::Error::from(e).context(format!("cannot back up to {}", path.display()))
            }),
        Request::Unblock { account, address } => {
            Ok(handle.unblock(account.as_deref(), address).into())
        }
        Request::AccountChanged { jid, removed } => {
            let change = match removed {
                true => AccountChange::Removed,
                false => AccountChange::PasswordChanged,
            };
            handle
                .account_changed(&jid, change)
                .map(Into::into)
                .map_err(Into::into)
        }
    };
    match result {
        Ok(result) => Response {
            ok: true,
            result,
            error: None,
        },
        Err(e) => refusal(&format!("{e:#}")),
    }
}

/// Sends `request` to the server running on `config`'s data directory. `Ok(None)` when no
/// server runs there.
pub(crate) async fn request(
    config: &Config,
    request: &Request,
) -> anyhow::Result<Option<Response>> {
    let path = socket_path(config);
    let mut stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => bail!(
            "permission denied on {}: run this as the user that runs outpost serve, or as root",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot reach {}", path.display())),
    };
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(
        ANSWER_TIMEOUT,
        BufReader::new(stream).read_until(b'\n', &mut answer),
    )
    .await
    .context("the server did not answer")??;
    let response: Response =
        serde_json::from_slice(&answer).context("the server's answer is not a control response")?;
    Ok(Some(response))
}

/// [`request`] for commands that need a running server: its result, or why not.
pub(crate) async fn require(config: &Config, req: &Request) -> anyhow::Result<serde_json::Value> {
    match request(config, req).await? {
        None => bail!(
            "no server is running on {} (nothing answers on {})",
            config.data_dir.display(),
            socket_path(config).display()
        ),
        Some(Response {
            ok: true, result, ..
        }) => Ok(result),
        Some(Response { error, .. }) => bail!("{}", error.unwrap_or_else(|| "refused".to_owned())),
    }
}
