//! Outpost's XMPP server: listeners, client sessions, the router and presence.
//!
//! One tokio task per connection drives the sans-IO state machine of `outpost-proto`; the
//! router maps bare JIDs to the live sessions' bounded channels; the store is reached only
//! through `outpost-store`'s domain trait.
//!
//! Server-to-server links (`s2s`, when `federation.enabled`) reach other domains through a
//! durable queue per domain pair; `delivery` is the local delivery both kinds of
//! connection share.
//!
//! Not here: reading files, arguments or the environment (the `outpost` binary does that
//! and hands over a [`config::Config`]), and HTTP beyond the WebSocket upgrade of the
//! server-to-server WebSocket listener.

pub mod accounts;
pub mod config;
mod delivery;
mod offline;
mod roster;
mod router;
mod routing;
mod s2s;
mod services;
mod session;
mod throttle;
mod tls;

pub use s2s::{LinkState, LinkStatus};
pub use tls::TlsIdentity;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jid::BareJid;
use outpost_proto::c2s::Transport;
use outpost_store::Store;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

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
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("storage failed")]
    Store(#[from] outpost_store::StoreError),
}

/// State every session shares.
pub(crate) struct Shared {
    pub(crate) config: config::Config,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) router: router::Router,
    pub(crate) throttle: throttle::LoginThrottle,
    pub(crate) registrations: throttle::RegistrationThrottle,
    pub(crate) tls_starttls: Arc<rustls::ServerConfig>,
    pub(crate) tls_direct: Arc<rustls::ServerConfig>,
    /// TLS for server-to-server streams: STARTTLS, and direct TLS with ALPN `xmpp-server`.
    pub(crate) tls_s2s: Arc<rustls::ServerConfig>,
    pub(crate) tls_s2s_direct: Arc<rustls::ServerConfig>,
    pub(crate) shutdown: CancellationToken,
    /// Server-to-server links, when `federation.enabled`.
    pub(crate) federation: Option<s2s::Federation>,
    next_session: AtomicU64,
    /// Users whose offline queue a session is writing right now.
    offline_claims: Mutex<HashSet<BareJid>>,
}

impl Shared {
    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn claim_offline(&self, user: &BareJid) -> bool {
        self.offline_claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.clone())
    }

    pub(crate) fn release_offline(&self, user: &BareJid) {
        self.offline_claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
    }
}

/// A running server. Dropping it does not stop it; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    shared: Arc<Shared>,
    addrs: Vec<(ListenerKind, SocketAddr)>,
    tracker: TaskTracker,
}

impl ServerHandle {
    /// Binds every listener in the config, then starts serving. Returns once all sockets
    /// are bound, so callers can read [`ServerHandle::local_addrs`] (port 0 works).
    pub async fn start(
        config: config::Config,
        store: Arc<dyn Store>,
        identity: TlsIdentity,
    ) -> Result<ServerHandle, ServerError> {
        let tls_starttls = identity.server_config(&[])?;
        let tls_direct = identity.server_config(&[b"xmpp-client"])?;
        let tls_s2s = identity.s2s_server_config(&[])?;
        let tls_s2s_direct = identity.s2s_server_config(&[b"xmpp-server"])?;
        let mut listeners = Vec::new();
        let (s2s, s2s_tls, s2s_ws): (&[SocketAddr], &[SocketAddr], &[SocketAddr]) =
            if config.federation.enabled {
                (
                    &config.listen.s2s,
                    &config.listen.s2s_tls,
                    &config.listen.s2s_websocket,
                )
            } else {
                (&[], &[], &[])
            };
        let specs = config
            .listen
            .c2s
            .iter()
            .map(|a| (ListenerKind::C2sStartTls, *a))
            .chain(
                config
                    .listen
                    .c2s_tls
                    .iter()
                    .map(|a| (ListenerKind::C2sDirectTls, *a)),
            )
            .chain(s2s.iter().map(|a| (ListenerKind::S2s, *a)))
            .chain(s2s_tls.iter().map(|a| (ListenerKind::S2sDirectTls, *a)))
            .chain(s2s_ws.iter().map(|a| (ListenerKind::S2sWebSocket, *a)));
        for (kind, addr) in specs {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| ServerError::Bind { addr, source })?;
            listeners.push((kind, local, listener));
        }
        let limits = &config.limits;
        let throttle = throttle::LoginThrottle::new(
            limits.login_failures_per_ip,
            limits.login_failures_per_account,
            Duration::from_secs(limits.login_failure_window_secs),
        );
        let registrations = throttle::RegistrationThrottle::new(
            limits.registrations_per_ip,
            Duration::from_secs(limits.registration_window_secs),
        );
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        let tracker = TaskTracker::new();
        let federation = match config.federation.enabled {
            true => Some(s2s::Federation::new(
                &config,
                Some(&identity),
                tracker.clone(),
            )?),
            false => None,
        };
        let shared = Arc::new(Shared {
            config,
            store,
            router: router::Router::new(),
            throttle,
            registrations,
            tls_starttls,
            tls_direct,
            tls_s2s,
            tls_s2s_direct,
            shutdown: CancellationToken::new(),
            federation,
            next_session: AtomicU64::new(1),
            offline_claims: Mutex::new(HashSet::new()),
        });
        if shared.federation.is_some() {
            s2s::start(&shared, &tracker);
        }
        let mut addrs = Vec::new();
        for (kind, local, listener) in listeners {
            info!(kind = kind.as_str(), addr = %local, "listening");
            addrs.push((kind, local));
            tracker.spawn(accept_loop(
                shared.clone(),
                listener,
                kind,
                connections.clone(),
                tracker.clone(),
            ));
        }
        Ok(ServerHandle {
            shared,
            addrs,
            tracker,
        })
    }

    /// The bound address of each listener, in config order.
    pub fn local_addrs(&self) -> Vec<(ListenerKind, SocketAddr)> {
        self.addrs.clone()
    }

    /// Sets where the server for a remote `domain` is reached (`host:port`), as a
    /// `federation.peers` entry would, for links that connect from now on. Does nothing when
    /// federation is off.
    pub fn set_peer_address(&self, domain: &str, addr: &str) {
        if let Some(fed) = &self.shared.federation {
            fed.set_peer_address(domain, addr);
        }
    }

    /// Sets the `wss://` URL of a remote `domain`'s WebSocket endpoint, as a
    /// `federation.websocket_peers` entry would, for links that connect from now on. Does
    /// nothing when federation is off.
    pub fn set_websocket_peer(&self, domain: &str, url: &str) {
        if let Some(fed) = &self.shared.federation {
            fed.set_websocket_peer(domain, url);
        }
    }

    /// The state of every server-to-server link this process runs or the store has
    /// figures for, with its queue (from the store). Empty when federation is off and
    /// nothing was ever queued.
    pub async fn link_statuses(&self) -> Result<Vec<LinkStatus>, ServerError> {
        let stats = self.shared.store.outbox_stats().await?;
        Ok(match &self.shared.federation {
            Some(fed) => fed.board.snapshot(stats),
            None => s2s::LinkBoard::new().snapshot(stats),
        })
    }

    /// Marked changed whenever a link changes state (not when its queue does). `None`
    /// when federation is off.
    pub fn link_changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        self.shared.federation.as_ref().map(|f| f.board.subscribe())
    }

    /// Number of bound client sessions.
    pub fn session_count(&self) -> usize {
        self.shared.router.session_count()
    }

    /// Stops accepting, closes every stream with a `system-shutdown` stream error and
    /// `</stream:stream>`, waits for sessions to end (up to a deadline), then closes the
    /// store.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("sessions did not close in time");
        }
        self.shared.store.close().await;
        info!("stopped");
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    kind: ListenerKind,
    connections: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    let transport = match kind {
        ListenerKind::C2sStartTls | ListenerKind::S2s => Transport::StartTls,
        ListenerKind::C2sDirectTls | ListenerKind::S2sDirectTls | ListenerKind::S2sWebSocket => {
            Transport::DirectTls
        }
    };
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
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
        let shared = shared.clone();
        tracker.spawn(async move {
            match kind {
                ListenerKind::S2s => s2s::serve_inbound(shared, tcp, peer).await,
                ListenerKind::S2sDirectTls => s2s::serve_inbound_tls(shared, tcp, peer).await,
                ListenerKind::S2sWebSocket => s2s::serve_websocket(shared, tcp, peer).await,
                ListenerKind::C2sStartTls | ListenerKind::C2sDirectTls => {
                    session::serve(shared, tcp, peer, transport).await;
                }
            }
            drop(permit);
        });
    }
}
