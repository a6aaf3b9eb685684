//! Outpost's XMPP server: listeners, client sessions, the router, presence and
//! federation.
//!
//! One tokio task per connection drives a sans-IO state machine of `outpost-proto`; the
//! router maps bare JIDs to the live sessions' bounded channels; the store is reached only
//! through `outpost-store`'s domain trait. The modules are layered, each using only those
//! below it:
//!
//! - leaves: `config`, `tls`, `throttle`, `accounts`, `ids`, `tasks`, `router`;
//! - `delivery`: the one owner of "where does this stanza go" (a local user or another
//!   server), with the offline store and error replies;
//! - `blocking`, `roster`, `services` and `presence`: what the server does for users
//!   whatever connection they use;
//! - `session`: one client connection, its state private;
//! - `s2s`: federation, on top, which fills in `delivery`'s handle for other domains.
//!
//! Not here: reading files, arguments or the environment (the `outpost` binary does that
//! and hands over a [`config::Config`]), and HTTP beyond the WebSocket upgrade of the
//! server-to-server WebSocket listener.

pub mod accounts;
mod blocking;
pub mod config;
mod delivery;
pub mod ids;
mod presence;
mod roster;
mod router;
mod s2s;
mod services;
mod session;
mod tasks;
mod throttle;
mod tls;

pub use s2s::{LinkState, LinkStatus};
pub use tls::{Fingerprint, TlsError, TlsIdentity};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_proto::c2s::Transport;
use outpost_store::Store;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, HostPort, WssUrl};
use crate::delivery::{Delivery, NoRemote, Remote};
use crate::s2s::Federation;
use crate::tasks::Tasks;

/// How long shutdown waits for sessions to close their streams before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Which protocol a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Client connections with STARTTLS (RFC 6120 §5), usually port 5222.
    C2sStartTls,
    /// Client connections with TLS from the first byte (XEP-0368), usually port 5223.
    C2sDirectTls,
    /// Server-to-server connections with STARTTLS (RFC 6120 §5), usually port 5269.
    S2s,
    /// Server-to-server connections with TLS from the first byte (XEP-0368), usually 5270.
    S2sDirectTls,
    /// Server-to-server streams over WebSocket inside HTTPS (RFC 7395 framing), Outpost
    /// peers only.
    S2sWebSocket,
}

impl ListenerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::C2sStartTls => "c2s-starttls",
            ListenerKind::C2sDirectTls => "c2s-tls",
            ListenerKind::S2s => "s2s",
            ListenerKind::S2sDirectTls => "s2s-tls",
            ListenerKind::S2sWebSocket => "s2s-websocket",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed")]
    Tls(#[from] TlsError),
    #[error("storage failed")]
    Store(#[from] outpost_store::StoreError),
}

/// A running server. Dropping it does not stop it; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    delivery: Arc<Delivery>,
    federation: Option<Arc<Federation>>,
    addrs: Vec<(ListenerKind, SocketAddr)>,
    tasks: Tasks,
    shutdown: CancellationToken,
}

/// What an accepted connection is served by.
#[derive(Clone)]
struct Services {
    sessions: Arc<session::Env>,
    federation: Option<Arc<Federation>>,
}

impl ServerHandle {
    /// Binds every listener in the config, then starts serving. Returns once all sockets
    /// are bound, so callers can read [`ServerHandle::local_addrs`] (port 0 works).
    pub async fn start(
        config: Config,
        store: Arc<dyn Store>,
        identity: TlsIdentity,
    ) -> Result<ServerHandle, ServerError> {
        let tls = session::ClientTls {
            starttls: identity.server_config(&[])?,
            direct: identity.server_config(&[b"xmpp-client"])?,
        };
        let prepared = match config.federation.enabled {
            true => Some(s2s::Prepared::new(&config, &identity)?),
            false => None,
        };
        let listeners = bind_all(&config).await?;
        let tasks = Tasks::default();
        let shutdown = CancellationToken::new();
        // Delivery reaches other domains through federation, whose links bounce through
        // delivery: federation holds it weakly, so nothing is kept alive by a cycle.
        let mut federation = None;
        let delivery = Arc::new_cyclic(|weak| {
            let remote: Arc<dyn Remote> = match prepared {
                Some(p) => {
                    let fed = Arc::new(Federation::new(
                        p,
                        store.clone(),
                        weak.clone(),
                        tasks.clone(),
                        shutdown.clone(),
                    ));
                    federation = Some(fed.clone());
                    fed
                }
                None => Arc::new(NoRemote),
            };
            Delivery::new(&config, store, remote)
        });
        if let Some(fed) = &federation {
            fed.start();
        }
        let max_connections = config.limits.max_connections;
        let services = Services {
            sessions: Arc::new(session::Env::new(
                delivery.clone(),
                config,
                tls,
                shutdown.clone(),
            )),
            federation: federation.clone(),
        };
        let connections = Arc::new(Semaphore::new(max_connections));
        let mut addrs = Vec::new();
        for (kind, local, listener) in listeners {
            info!(kind = kind.as_str(), addr = %local, "listening");
            addrs.push((kind, local));
            tasks.spawn(accept_loop(
                services.clone(),
                listener,
                kind,
                connections.clone(),
                tasks.clone(),
                shutdown.clone(),
            ));
        }
        Ok(ServerHandle {
            delivery,
            federation,
            addrs,
            tasks,
            shutdown,
        })
    }

    /// The bound address of each listener, in config order.
    pub fn local_addrs(&self) -> Vec<(ListenerKind, SocketAddr)> {
        self.addrs.clone()
    }

    /// Sets where the server for a remote `domain` is reached, as a `federation.peers`
    /// entry would, for links that connect from now on. Does nothing when federation is
    /// off.
    pub fn set_peer_address(&self, domain: &str, addr: HostPort) {
        if let Some(fed) = &self.federation {
            fed.set_peer_address(domain, addr);
        }
    }

    /// Sets the `wss://` URL of a remote `domain`'s WebSocket endpoint, as a
    /// `federation.websocket_peers` entry would, for links that connect from now on. Does
    /// nothing when federation is off.
    pub fn set_websocket_peer(&self, domain: &str, url: WssUrl) {
        if let Some(fed) = &self.federation {
            fed.set_websocket_peer(domain, url);
        }
    }

    /// The state of every server-to-server link this process runs or the store has
    /// figures for, with its queue (from the store). Empty when federation is off and
    /// nothing was ever queued.
    pub async fn link_statuses(&self) -> Result<Vec<LinkStatus>, ServerError> {
        let stats = self.delivery.store().outbox_stats().await?;
        Ok(match &self.federation {
            Some(fed) => fed.board().snapshot(stats),
            None => s2s::LinkBoard::new().snapshot(stats),
        })
    }

    /// Marked changed whenever a link changes state (not when its queue does). `None`
    /// when federation is off.
    pub fn link_changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        self.federation.as_ref().map(|f| f.board().subscribe())
    }

    /// Number of bound client sessions.
    pub fn session_count(&self) -> usize {
        self.delivery.router().session_count()
    }

    /// Stops accepting, closes every stream with a `system-shutdown` stream error and
    /// `</stream:stream>`, waits for sessions and links to end, aborts what has not ended
    /// by the deadline, then closes the store.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                tasks = self.tasks.len(),
                "connections did not close in time; aborting them"
            );
            self.tasks.abort();
            self.tasks.wait().await;
        }
        self.delivery.store().close().await;
        info!("stopped");
    }
}

/// Binds every listener of the configuration (the server-to-server ones only with
/// federation), in config order.
async fn bind_all(
    config: &Config,
) -> Result<Vec<(ListenerKind, SocketAddr, TcpListener)>, ServerError> {
    let listen = &config.listen;
    let federation = config.federation.enabled;
    let s2s = |list: &[SocketAddr]| {
        if federation {
            list.to_vec()
        } else {
            Vec::new()
        }
    };
    let specs = (listen.c2s.iter().map(|a| (ListenerKind::C2sStartTls, *a)))
        .chain(
            listen
                .c2s_tls
                .iter()
                .map(|a| (ListenerKind::C2sDirectTls, *a)),
        )
        .chain(s2s(&listen.s2s).into_iter().map(|a| (ListenerKind::S2s, a)))
        .chain(
            s2s(&listen.s2s_tls)
                .into_iter()
                .map(|a| (ListenerKind::S2sDirectTls, a)),
        )
        .chain(
            s2s(&listen.s2s_websocket)
                .into_iter()
                .map(|a| (ListenerKind::S2sWebSocket, a)),
        );
    let mut listeners = Vec::new();
    for (kind, addr) in specs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        listeners.push((kind, local, listener));
    }
    Ok(listeners)
}

async fn accept_loop(
    services: Services,
    listener: TcpListener,
    kind: ListenerKind,
    connections: Arc<Semaphore>,
    tasks: Tasks,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer): (TcpStream, SocketAddr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over the connection cap: refuse at once rather than queue.
            info!(%peer, "connection limit reached; refusing");
            drop(tcp);
            continue;
        };
        let services = services.clone();
        tasks.spawn(async move {
            services.serve(kind, tcp, peer).await;
            drop(permit);
        });
    }
}

impl Services {
    async fn serve(self, kind: ListenerKind, tcp: TcpStream, peer: SocketAddr) {
        match (kind, self.federation) {
            (ListenerKind::C2sStartTls, _) => {
                session::serve(self.sessions, tcp, peer, Transport::StartTls).await;
            }
            (ListenerKind::C2sDirectTls, _) => {
                session::serve(self.sessions, tcp, peer, Transport::DirectTls).await;
            }
            (ListenerKind::S2s, Some(fed)) => s2s::serve_inbound(fed, tcp, peer).await,
            (ListenerKind::S2sDirectTls, Some(fed)) => s2s::serve_inbound_tls(fed, tcp, peer).await,
            (ListenerKind::S2sWebSocket, Some(fed)) => s2s::serve_websocket(fed, tcp, peer).await,
            // Server-to-server listeners are bound only with federation.
            (_, None) => {}
        }
    }
}
