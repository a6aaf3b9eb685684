//! One outgoing link: the task that carries out what its sans-IO [`machine::Link`] asks
//! for (connecting on a path, TLS, reading and writing the socket, the store's queue,
//! probes) and feeds it what happens, with the time. The protocol decisions are all the
//! machine's; see its documentation for rounds, paths, the ack window and the timers.

mod machine;
mod relayed;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use outpost_proto::s2s::Transport;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, warn};

use self::machine::{Action, Link, PathSpec, Settings};
pub(crate) use self::machine::{Command, Path};
use super::conn::Conn;
use super::{LinkEnv, Wakers, now_ms};

const READ_CHUNK: usize = 16 * 1024;

/// The paths configured for `remote`, best first: the peer itself before the hub, plain
/// TCP before WebSocket (cheaper, and what every XMPP server speaks).
fn paths(env: &LinkEnv, remote: &str) -> Vec<PathSpec> {
    let trust = env.trust();
    let spec = |path: Path, peer: &str| PathSpec {
        path,
        peer: peer.to_owned(),
        external: trust.external_with(peer),
    };
    let mut paths = vec![spec(Path::Direct, remote)];
    if env.websocket_peer(remote).is_some() {
        paths.push(spec(Path::WebSocket, remote));
    }
    if let Some(hub) = env.config.hub.as_deref()
        && hub != remote
    {
        paths.push(spec(Path::Hub, hub));
        if env.websocket_peer(hub).is_some() {
            paths.push(spec(Path::HubWebSocket, hub));
        }
    }
    paths
}

/// The machine's settings for the link from `local` to `remote`.
pub(super) fn settings(env: &LinkEnv, local: &str, remote: &str) -> Settings {
    let f = &env.config;
    Settings {
        local: local.to_owned(),
        remote: remote.to_owned(),
        paths: paths(env, remote),
        secret: env.secret.clone(),
        require_tls: f.require_tls,
        relays: !f.relay_for.is_empty(),
        ack_without_sm: f.ack_without_sm,
        retry_initial: Duration::from_secs(f.retry_initial_secs),
        retry_max: Duration::from_secs(f.retry_max_secs),
        probe_every: Duration::from_secs(f.probe_interval_secs),
    }
}

/// Opens a connection on `path` to `peer`'s server (or its WebSocket endpoint).
async fn open(env: &LinkEnv, path: Path, peer: &str) -> Result<(Conn, Transport), String> {
    match path {
        Path::Direct | Path::Hub => super::direct::connect(env, peer)
            .await
            .map_err(|e| chain(&e)),
        Path::WebSocket | Path::HubWebSocket => {
            super::ws::connect(env, peer).await.map_err(|e| chain(&e))
        }
    }
}

/// An error and its sources, as one line for operators.
fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

/// Whether `path` to `peer` accepts connections again (a TCP connect, no stream).
async fn probe(env: &LinkEnv, path: Path, peer: &str) -> bool {
    match path {
        Path::Direct | Path::Hub => super::direct::probe(env, peer).await,
        Path::WebSocket | Path::HubWebSocket => super::ws::probe(env, peer).await,
    }
}

/// The machine's clock: tokio's, so tests with a paused runtime clock see the same time.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// What the task holds besides the machine: the connection and the probes running.
struct Io {
    env: Arc<LinkEnv>,
    local: String,
    remote: String,
    conn: Option<Conn>,
    probes: JoinSet<(u64, Vec<(Path, bool)>)>,
    relayed: relayed::Relayed,
}

pub(super) async fn run(
    env: Arc<LinkEnv>,
    settings: Settings,
    mut rx: mpsc::Receiver<Command<oneshot::Sender<bool>>>,
    wake: Arc<Wakers>,
    stop: CancellationToken,
) {
    let span = tracing::info_span!("s2s_out", local = %settings.local, remote = %settings.remote);
    let mut io = Io {
        local: settings.local.clone(),
        remote: settings.remote.clone(),
        env: env.clone(),
        conn: None,
        probes: JoinSet::new(),
        relayed: relayed::Relayed::default(),
    };
    let mut link = Link::new(settings);
    let mut buf = vec![0u8; READ_CHUNK];
    async move {
        loop {
            while let Some(action) = link.poll_action() {
                io.execute(action, &mut link).await;
            }
            if link.is_finished() {
                break;
            }
            let timer = link.poll_timeout().map(Instant::from_std);
            let read = read_some(&mut io.conn, &mut buf);
            // Biased, commands before the queue: a best-effort stanza (a room's presence)
            // handed over before a queued one (the room's subject) was committed must
            // leave first, or the peer sees them out of order.
            tokio::select! {
                biased;
                () = stop.cancelled() => link.shutdown(),
                cmd = rx.recv() => match cmd {
                    Some(cmd) => link.command(cmd, now()),
                    None => link.shutdown(),
                },
                r = read => match r {
                    Ok(0) => link.connection_closed(now()),
                    Ok(n) => link.handle_input(&buf[..n], now()),
                    Err(e) => link.connection_lost(format!("read failed: {e}"), now()),
                },
                () = wake.work.notified() => link.queue_changed(now()),
                () = wake.reachable.notified() => link.peer_reachable(now()),
                Some(Ok((token, results))) = io.probes.join_next() => {
                    link.probe_result(token, results, now());
                }
                () = sleep_until(timer) => link.handle_timeout(now()),
            }
        }
        io.probes.abort_all();
        if let Some(mut conn) = io.conn.take() {
            conn.shutdown().await;
        }
        if !env.shutdown.is_cancelled() {
            // Stopped alone (its lease went to another node): it no longer runs here.
            env.board.remove(&io.local, &io.remote);
        }
    }
    .instrument(span)
    .await
}

/// Reads from the connection, if there is one.
async fn read_some(conn: &mut Option<Conn>, buf: &mut [u8]) -> std::io::Result<usize> {
    match conn.as_mut() {
        Some(conn) => conn.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Io {
    /// Carries out one action and reports its outcome to the machine.
    async fn execute(
        &mut self,
        action: Action<oneshot::Sender<bool>>,
        link: &mut Link<oneshot::Sender<bool>>,
    ) {
        let env = &self.env;
        let (local, remote) = (self.local.as_str(), self.remote.as_str());
        match action {
            Action::CheckQueue => {
                let nonempty = match env.store.outbox_peek(local, remote, None, 1).await {
                    Ok(v) => !v.is_empty(),
                    Err(e) => {
                        warn!(error = %e, "cannot read the outbox");
                        false
                    }
                };
                link.queue_checked(nonempty, now());
            }
            Action::ReadQueue { after, max } => {
                let batch = match env.store.outbox_peek(local, remote, after, max).await {
                    Ok(b) => b,
                    Err(e) => {
                        warn!(error = %e, "cannot read the outbox");
                        Vec::new()
                    }
                };
                self.relayed.sending(&batch);
                link.queue_batch(batch, now());
            }
            Action::Ack { up_to } => {
                if let Err(e) = env.store.outbox_ack(local, remote, up_to, now_ms()).await {
                    warn!(error = %e, "cannot remove acknowledged stanzas");
                }
                let told = self.relayed.acked(up_to, local);
                if let (false, Some(d)) = (told.is_empty(), env.delivery()) {
                    told.into_iter().for_each(|el| d.send(el));
                }
            }
            Action::Connect { path, peer } => match open(env, path, &peer).await {
                Ok((conn, transport)) => {
                    self.conn = Some(conn);
                    link.connected(transport, now());
                }
                Err(reason) => link.connect_failed(reason, now()),
            },
            Action::Transmit(bytes) => self.transmit(&bytes, link).await,
            Action::StartTls { peer } => {
                let config = env.tls_client_for(&peer);
                let ok = match self.conn.as_mut() {
                    Some(conn) => conn.connect_tls(&config, &peer).await,
                    None => false,
                };
                if ok {
                    link.tls_established(now());
                } else {
                    link.tls_failed(now());
                }
            }
            Action::Disconnect => {
                if let Some(mut conn) = self.conn.take() {
                    conn.shutdown().await;
                }
            }
            Action::Probe {
                token,
                targets,
                first_success,
                timeout,
            } => self.spawn_probe(token, targets, first_success, timeout),
            Action::CancelProbes => self.probes.abort_all(),
            Action::State { state, error } => {
                env.board.set(local, remote, state, error);
            }
            Action::Path(path) => {
                env.board.set_path(local, remote, path.as_str());
                self.relayed
                    .path(path, env.config.hub.as_deref().unwrap_or(remote));
            }
            Action::Up => {
                if let Some(d) = env.delivery() {
                    super::reprobe(&d, local, remote);
                }
                // The other nodes' sessions re-probe too.
                if let Some(c) = env.cluster.get() {
                    c.link_restored(local, remote);
                }
            }
            Action::Bounce { stanza, error } => {
                if let Some(d) = env.delivery() {
                    d.bounce(&stanza, error);
                }
            }
            Action::Verified { reply, valid } => {
                let _ = reply.send(valid);
            }
        }
    }

    async fn transmit(&mut self, bytes: &[u8], link: &mut Link<oneshot::Sender<bool>>) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        match conn.write_all(bytes).await {
            Ok(()) => link.transmitted(now()),
            Err(e) => link.connection_lost(format!("write failed: {e}"), now()),
        }
    }

    fn spawn_probe(
        &mut self,
        token: u64,
        targets: Vec<(Path, String)>,
        first_success: bool,
        timeout: Option<Duration>,
    ) {
        let env = self.env.clone();
        self.probes.spawn(async move {
            // A connection that takes longer than `timeout` counts as not getting through.
            let attempt = |path: Path, peer: String| {
                let env = env.clone();
                async move {
                    let attempt = probe(&env, path, &peer);
                    let ok = match timeout {
                        Some(t) => tokio::time::timeout(t, attempt).await.unwrap_or(false),
                        None => attempt.await,
                    };
                    (path, ok)
                }
            };
            let results = if first_success {
                // Best first, and the first that connects ends it.
                let mut results = Vec::with_capacity(targets.len());
                for (path, peer) in targets {
                    let (path, ok) = attempt(path, peer).await;
                    results.push((path, ok));
                    if ok {
                        break;
                    }
                }
                results
            } else {
                // Every path at once: a dead one does not delay the others' answers.
                let attempts = targets.into_iter().map(|(path, peer)| attempt(path, peer));
                futures_util::future::join_all(attempts).await
            };
            (token, results)
        });
    }
}
