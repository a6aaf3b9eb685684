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
//! server-to-server WebSocket listener: the HTTPS listener's connections go to an
//! [`HttpService`] the caller provides.

pub mod accounts;
mod api;
mod archive;
mod avatar;
mod blocking;
mod c2s_conn;
mod c2s_ws;
mod caps;
mod carbons;
mod clock;
mod cluster;
mod component;
pub mod config;
mod copies;
mod delivery;
mod handover;
mod http;
pub mod ids;
mod journal;
mod mam;
mod metrics;
mod muc;
mod pep;
mod presence;
mod private;
mod proxy65;
mod push;
mod replication;
mod requests;
mod roster;
mod router;
mod s2s;
mod services;
mod session;
mod standby;
mod tasks;
mod throttle;
mod tls;
mod upload;
mod view;

pub use api::{ApiError, HistoryItem, IssuedToken, MAX_HISTORY_PAGE, MessageState, rfc3339};
pub use c2s_ws::{ClientWebSocket, TextSocket};
pub use cluster::{ClusterError, ClusterStatus, NodeStatus};
pub use http::{HttpEnv, HttpIo, HttpService};
pub use metrics::Counts;
pub use outpost_store::ApiToken;
pub use replication::ReplicationStatus;
pub use router::SessionInfo;
pub use s2s::{LinkState, LinkStatus};
pub use tls::{CertificateInfo, Fingerprint, SELF_SIGNED_VALIDITY, TlsError, TlsIdentity};
pub use upload::{PATH as UPLOAD_PATH, PutRefused, StoredFile, Uploads};
pub use view::ServerView;

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
    /// External components (XEP-0114), usually port 5275.
    Component,
    /// The SOCKS5 bytestream proxy (XEP-0065).
    Proxy65,
    /// HTTPS, served by the [`HttpService`].
    Https,
    /// Plain HTTP, served by the [`HttpService`] too.
    Http,
}

impl ListenerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::C2sStartTls => "c2s-starttls",
            ListenerKind::C2sDirectTls => "c2s-tls",
            ListenerKind::S2s => "s2s",
            ListenerKind::S2sDirectTls => "s2s-tls",
            ListenerKind::S2sWebSocket => "s2s-websocket",
            ListenerKind::Component => "component",
            ListenerKind::Proxy65 => "proxy65",
            ListenerKind::Https => "https",
            ListenerKind::Http => "http",
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
    #[error("`{0}` is not a JID")]
    InvalidJid(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// What happened to an account whose sessions must end ([`ServerHandle::account_changed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountChange {
    /// The account is gone.
    Removed,
    /// Its password changed: sessions logged in with the old one must log in again.
    PasswordChanged,
}

/// A running server at a glance (`outpost admin status`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerStatus {
    pub version: String,
    pub started_at_ms: i64,
    pub domains: Vec<String>,
    /// Bound client sessions, and the accounts they belong to.
    pub sessions: usize,
    pub users_online: usize,
    pub federation: bool,
    pub links: Vec<LinkStatus>,
    /// On a hub: the sites it stands in for now, with their sessions here.
    #[serde(default)]
    pub standby: Vec<(String, usize)>,
    /// On a site with a hub: how replication goes.
    #[serde(default)]
    pub replication: Option<ReplicationStatus>,
}

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reloaded {
    /// Sections whose changes take a restart (they were not applied).
    pub needs_restart: Vec<String>,
    /// Domains no longer served, and the sessions on them that were ended (`host-gone`).
    pub domains_removed: Vec<String>,
    pub sessions_ended: usize,
}

/// A running server. Dropping it does not stop it; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    view: ServerView,
    addrs: Vec<(ListenerKind, SocketAddr)>,
    tasks: Tasks,
    shutdown: CancellationToken,
}

/// What an accepted connection is served by.
#[derive(Clone)]
struct Services {
    sessions: Arc<session::Env>,
    federation: Option<Arc<Federation>>,
    components: Arc<component::ComponentEnv>,
    proxied: Arc<proxy65::Waiting>,
    http: Option<Arc<dyn HttpService>>,
}

impl ServerHandle {
    /// Binds every listener in the config, then starts serving. Returns once all sockets
    /// are bound, so callers can read [`ServerHandle::local_addrs`] (port 0 works).
    /// Without HTTP: no HTTPS listener, and so no file upload.
    pub async fn start(
        config: Config,
        store: Arc<dyn Store>,
        identity: TlsIdentity,
    ) -> Result<ServerHandle, ServerError> {
        ServerHandle::start_with_http(config, store, identity, None).await
    }

    /// [`ServerHandle::start`], with `http` serving `listen.https`.
    pub async fn start_with_http(
        config: Config,
        store: Arc<dyn Store>,
        identity: TlsIdentity,
        http: Option<Arc<dyn HttpService>>,
    ) -> Result<ServerHandle, ServerError> {
        let tls = session::ClientTls::new(&identity)?;
        let prepared = (config.federation.enabled)
            .then(|| s2s::Prepared::new(&config, &identity))
            .transpose()?;
        let (archive, pushes, journal) = load_state(&config, &store).await?;
        let listeners = bind_all(&config, http.is_some()).await?;
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
                        journal.clone(),
                        weak.clone(),
                        tasks.clone(),
                        shutdown.clone(),
                    ));
                    federation = Some(fed.clone());
                    fed
                }
                None => Arc::new(NoRemote),
            };
            Delivery::new(&config, store, journal, archive, pushes, remote)
        });
        let cluster =
            start_services(&config, &delivery, federation.as_ref(), &tasks, &shutdown).await?;
        let replication = start_replication(&config, &delivery, &tasks, &shutdown).await;
        let connections = Arc::new(Semaphore::new(config.limits.max_connections));
        let sessions = session::Env::new(
            delivery.clone(),
            config,
            tls,
            shutdown.clone(),
            cluster.clone(),
        );
        let view = ServerView {
            delivery: delivery.clone(),
            sessions: Arc::new(sessions),
            federation: federation.clone(),
            started_at_ms: clock::now_ms(),
            replication,
            tasks: tasks.clone(),
            connections,
            cluster,
        };
        let services = Services::new(&view.sessions, federation, &delivery, http, &shutdown);
        services.register(&view, &listeners, &tasks, &shutdown);
        let addrs = accept_all(listeners, &services, &view.connections, &tasks, &shutdown);
        Ok(ServerHandle {
            view,
            addrs,
            tasks,
            shutdown,
        })
    }

    /// How the replication of this site's directory to its hub goes (`None` when it does
    /// not replicate).
    pub fn replication(&self) -> Option<ReplicationStatus> {
        self.view.replication()
    }

    /// On a hub: the sites it stands in for now (their users may log in here), sorted.
    pub fn standby(&self) -> Vec<String> {
        self.view.standby()
    }

    /// The bound address of each listener, in config order.
    pub fn local_addrs(&self) -> Vec<(ListenerKind, SocketAddr)> {
        self.addrs.clone()
    }

    /// Sets where the server for a remote `domain` is reached, as a `federation.peers`
    /// entry would, for links that connect from now on. Does nothing when federation is
    /// off.
    pub fn set_peer_address(&self, domain: &str, addr: HostPort) {
        if let Some(fed) = &self.view.federation {
            fed.set_peer_address(domain, addr);
        }
    }

    /// Sets the `wss://` URL of a remote `domain`'s WebSocket endpoint, as a
    /// `federation.websocket_peers` entry would, for links that connect from now on. Does
    /// nothing when federation is off.
    pub fn set_websocket_peer(&self, domain: &str, url: WssUrl) {
        if let Some(fed) = &self.view.federation {
            fed.set_websocket_peer(domain, url);
        }
    }

    /// The state of every server-to-server link this process runs or the store has
    /// figures for, with its queue (from the store). Empty when federation is off and
    /// nothing was ever queued.
    pub async fn link_statuses(&self) -> Result<Vec<LinkStatus>, ServerError> {
        self.view.link_statuses().await
    }

    /// Marked changed whenever a link changes state (not when its queue does). `None`
    /// when federation is off.
    pub fn link_changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        self.view.federation.as_ref().map(|f| f.board().subscribe())
    }

    /// The cluster as this node sees it (`None` when it is not a cluster node).
    pub async fn cluster(&self) -> Option<ClusterStatus> {
        self.view.cluster().await
    }

    /// Number of bound client sessions.
    pub fn session_count(&self) -> usize {
        self.view.session_count()
    }

    /// Every bound client session, sorted by JID.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.view.sessions()
    }

    /// Ends the session of a full JID, or every session of a bare JID, with a
    /// `policy-violation` stream error. Returns how many sessions were told.
    pub fn kick(&self, jid: &str) -> Result<usize, ServerError> {
        let jid = jid::Jid::new(jid).map_err(|_| ServerError::InvalidJid(jid.to_owned()))?;
        Ok(self
            .view
            .delivery
            .router()
            .tell(&jid, || router::ToSession::End {
                condition: "policy-violation",
                text: "disconnected by the operator",
            }))
    }

    /// Ends every session of `user` after a change made to its account elsewhere (the
    /// `outpost user` commands), with `not-authorized` (RFC 6120 §4.9.3.12).
    pub fn account_changed(&self, user: &str, change: AccountChange) -> Result<usize, ServerError> {
        let bare = jid::BareJid::new(user).map_err(|_| ServerError::InvalidJid(user.to_owned()))?;
        let text = match change {
            AccountChange::Removed => "account removed",
            AccountChange::PasswordChanged => "password changed",
        };
        Ok(self
            .view
            .delivery
            .router()
            .end_sessions(&bare, None, "not-authorized", text))
    }

    /// Forgets failed-login counts: of `account`, of `address`, of both together, or all of
    /// them. Returns how many counts were forgotten.
    pub fn unblock(&self, account: Option<&str>, address: Option<std::net::IpAddr>) -> usize {
        self.view.sessions.unblock(account, address)
    }

    /// Uptime, sessions and links.
    pub async fn status(&self) -> Result<ServerStatus, ServerError> {
        self.view.status().await
    }

    /// Writes a consistent copy of the store to `to` while the server runs.
    pub async fn backup(&self, to: &std::path::Path) -> Result<(), ServerError> {
        Ok(self.view.delivery.store().backup(to).await?)
    }

    /// Applies a new configuration and certificate without dropping sessions: domains,
    /// limits, registration, authentication, archive and push settings and certificates
    /// (for connections from now on; login limits at once). Sessions on domains no longer
    /// served end with `host-gone`. Listeners, storage, the data directory, federation, the
    /// services (rooms, proxy, upload, components; a new domain gets its services at the
    /// next start) take a restart: they are named in [`Reloaded::needs_restart`] and left
    /// as they were.
    pub fn reload(
        &self,
        mut config: Config,
        identity: &TlsIdentity,
    ) -> Result<Reloaded, ServerError> {
        let old = self.view.sessions.config();
        let mut report = Reloaded::default();
        let mut keep = |name: &str, same: bool| {
            if !same {
                report.needs_restart.push(name.to_owned());
            }
        };
        keep("listen", config.listen == old.listen);
        keep("storage", config.storage == old.storage);
        keep("data_dir", config.data_dir == old.data_dir);
        keep("federation", config.federation == old.federation);
        // Services run as tasks and components set up at start.
        keep("muc", config.muc == old.muc);
        keep("proxy65", config.proxy65 == old.proxy65);
        keep("upload", config.upload == old.upload);
        keep("components", config.components == old.components);
        config.listen = old.listen.clone();
        config.storage = old.storage.clone();
        config.data_dir = old.data_dir.clone();
        config.federation = old.federation.clone();
        config.muc = old.muc.clone();
        config.proxy65 = old.proxy65.clone();
        config.upload = old.upload.clone();
        config.components = old.components.clone();
        let tls = session::ClientTls::new(identity)?;
        if let Some(fed) = &self.view.federation {
            fed.reload(&config, identity)?;
        }
        report.domains_removed = old
            .domains
            .iter()
            .filter(|d| !config.serves_domain(d))
            .cloned()
            .collect();
        self.view.delivery.reload(&config);
        self.view.sessions.reload(config, tls);
        let router = self.view.delivery.router();
        for s in router.sessions() {
            let bare = jid::BareJid::new(s.jid.split('/').next().unwrap_or_default());
            if let Ok(bare) = bare
                && report
                    .domains_removed
                    .iter()
                    .any(|d| d == bare.domain().as_str())
            {
                report.sessions_ended +=
                    router.end_sessions(&bare, None, "host-gone", "domain no longer served");
            }
        }
        info!(?report, "configuration reloaded");
        Ok(report)
    }

    /// Stops accepting, closes every stream with a `system-shutdown` stream error and
    /// `</stream:stream>`, waits for sessions and links to end, aborts what has not ended
    /// by the deadline, commits what they left in the journal, then closes the store.
    pub async fn shutdown(&self) {
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
        self.view.delivery.journal().close().await;
        self.view.delivery.store().close().await;
        info!("stopped");
    }
}

/// With `[cluster]`: joins the cluster (before the listeners start, so they start with the
/// whole directory) and puts federation's links under its lease.
async fn join_cluster(
    config: &Config,
    delivery: &Arc<Delivery>,
    federation: Option<&Arc<Federation>>,
    tasks: &Tasks,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<cluster::Cluster>>, ServerError> {
    if !config.cluster.enabled() {
        return Ok(None);
    }
    let cluster = cluster::Cluster::join(config, delivery, tasks, shutdown).await?;
    if let Some(fed) = federation {
        fed.join_cluster(&cluster);
    }
    Ok(Some(cluster))
}

/// A site with a hub replicates its directory there; a hub logs what it writes for its
/// sites' users; otherwise the store keeps no replication log (and drops one it kept
/// before).
async fn start_replication(
    config: &Config,
    delivery: &Arc<Delivery>,
    tasks: &Tasks,
    shutdown: &CancellationToken,
) -> Option<replication::SharedStatus> {
    let f = &config.federation;
    let hub = f
        .hub
        .as_ref()
        .filter(|_| config.role == config::Role::Site && f.enabled && f.replicate);
    if config.role == config::Role::Hub {
        replication::hand_back_to_sites(delivery, tasks, shutdown).await;
        return None;
    }
    if let (Some(hub), Some(local)) = (hub, config.domains.first()) {
        let status = replication::SharedStatus::default();
        status.lock().unwrap_or_else(|p| p.into_inner()).hub = hub.clone();
        tasks.spawn(replication::ship(
            delivery.clone(),
            local.clone(),
            hub.clone(),
            config.limits.max_stanza_bytes,
            status.clone(),
            shutdown.clone(),
        ));
        return Some(status);
    }
    match delivery
        .store()
        .repl_activate(outpost_store::ReplMode::Off)
        .await
    {
        Ok(_) | Err(outpost_store::StoreError::Unsupported(_)) => {}
        Err(e) => tracing::warn!(error = %e, "cannot turn the replication log off"),
    }
    None
}

/// What delivery loads from the store (the archive's settings and ids, push registrations),
/// and the journal that writes to it.
async fn load_state(
    config: &Config,
    store: &Arc<dyn Store>,
) -> Result<(archive::Archive, push::Pushes, journal::Journal), ServerError> {
    let tag = archive::node_tag(
        config.role == config::Role::Hub,
        config.domains.first().map_or("", String::as_str),
    );
    let archive = archive::Archive::load(store.as_ref(), &config.archive, tag).await?;
    let pushes = push::Pushes::load(store.as_ref(), &config.push).await?;
    let quotas = (config.limits.offline_quota, config.federation.outbox_quota);
    let journal = journal::Journal::start(store.clone(), quotas.0, quotas.1);
    Ok((archive, pushes, journal))
}

/// Starts what runs beside the sessions: archive expiry, the rooms of each MUC domain,
/// federation's links; or, on a cluster node, joins the cluster, which runs the rooms and
/// links where it holds their leases.
async fn start_services(
    config: &Config,
    delivery: &Arc<Delivery>,
    federation: Option<&Arc<Federation>>,
    tasks: &Tasks,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<cluster::Cluster>>, ServerError> {
    tasks.spawn(mam::expire_old(delivery.clone(), shutdown.clone()));
    // In a cluster, every node runs each room service, each room on one node at a time
    // (`cluster::services`).
    let muc_here = !config.cluster.enabled();
    for (service, domain) in config.muc_domains().into_iter().filter(|_| muc_here) {
        let muc = config.muc.clone();
        let task = muc::start(delivery.clone(), service, domain, muc, shutdown.clone()).await;
        tasks.spawn(task);
    }
    let cluster = join_cluster(config, delivery, federation, tasks, shutdown).await?;
    // After joining: on a cluster, queued links resume where their leases are taken.
    if let Some(fed) = federation {
        fed.start();
    }
    Ok(cluster)
}

/// Starts accepting on every listener; their kinds and addresses.
fn accept_all(
    listeners: Vec<(ListenerKind, SocketAddr, TcpListener)>,
    services: &Services,
    connections: &Arc<Semaphore>,
    tasks: &Tasks,
    shutdown: &CancellationToken,
) -> Vec<(ListenerKind, SocketAddr)> {
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
    addrs
}

/// Binds every listener of the configuration (the server-to-server ones only with
/// federation), in config order.
async fn bind_all(
    config: &Config,
    http: bool,
) -> Result<Vec<(ListenerKind, SocketAddr, TcpListener)>, ServerError> {
    let listen = &config.listen;
    let federation = config.federation.enabled;
    // Each kind, its addresses, and whether it is bound.
    let kinds: [(ListenerKind, &[SocketAddr], bool); 9] = [
        (ListenerKind::C2sStartTls, &listen.c2s, true),
        (ListenerKind::C2sDirectTls, &listen.c2s_tls, true),
        (ListenerKind::S2s, &listen.s2s, federation),
        (ListenerKind::S2sDirectTls, &listen.s2s_tls, federation),
        (
            ListenerKind::S2sWebSocket,
            &listen.s2s_websocket,
            federation,
        ),
        (
            ListenerKind::Component,
            &listen.component,
            !config.components.is_empty(),
        ),
        (
            ListenerKind::Proxy65,
            &listen.proxy65,
            config.proxy65.enabled,
        ),
        (ListenerKind::Https, &listen.https, http),
        (ListenerKind::Http, &listen.http, http),
    ];
    let specs = (kinds.into_iter())
        .filter(|(_, _, on)| *on)
        .flat_map(|(kind, addrs, _)| addrs.iter().map(move |a| (kind, *a)));
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
    fn new(
        sessions: &Arc<session::Env>,
        federation: Option<Arc<Federation>>,
        delivery: &Arc<Delivery>,
        http: Option<Arc<dyn HttpService>>,
        shutdown: &CancellationToken,
    ) -> Services {
        let config = sessions.config();
        Services {
            sessions: sessions.clone(),
            federation,
            components: Arc::new(component::ComponentEnv {
                delivery: delivery.clone(),
                secrets: config.components.clone(),
                limits: outpost_proto::xml::Limits {
                    max_stanza_bytes: config.limits.max_stanza_bytes,
                    max_depth: config.limits.max_depth,
                },
                shutdown: shutdown.clone(),
            }),
            proxied: Arc::new(proxy65::Waiting::default()),
            http,
        }
    }

    /// Registers the services that answer on listeners of their own (the proxy, upload)
    /// and starts the HTTP service.
    fn register(
        &self,
        view: &ServerView,
        listeners: &[(ListenerKind, SocketAddr, TcpListener)],
        tasks: &Tasks,
        shutdown: &CancellationToken,
    ) {
        let delivery = &view.delivery;
        let config = self.sessions.config();
        proxy65::register(&config, delivery, &self.proxied, listeners, tasks);
        if let Some(http) = &self.http {
            let uploads = upload::register(&config, delivery, listeners, tasks);
            http.start(HttpEnv {
                uploads,
                server: view.clone(),
                shutdown: shutdown.clone(),
                tasks: tasks.clone(),
            });
        }
    }

    async fn serve(self, kind: ListenerKind, tcp: TcpStream, peer: SocketAddr) {
        match (kind, self.federation) {
            (ListenerKind::Component, _) => {
                Box::pin(component::serve(self.components, tcp, peer)).await;
            }
            (ListenerKind::Proxy65, _) => Box::pin(proxy65::serve(self.proxied, tcp, peer)).await,
            (ListenerKind::Https, _) => {
                if let Some(http) = self.http {
                    Box::pin(http::serve(http, self.sessions, tcp, peer)).await;
                }
            }
            (ListenerKind::Http, _) => {
                if let Some(http) = self.http {
                    let _ = tcp.set_nodelay(true);
                    http.serve(Box::new(tcp), peer).await;
                }
            }
            (ListenerKind::C2sStartTls, _) => {
                session::serve(self.sessions, tcp, peer, Transport::StartTls).await;
            }
            (ListenerKind::C2sDirectTls, _) => {
                session::serve(self.sessions, tcp, peer, Transport::DirectTls).await;
            }
            // Boxed: a connection task is as large as its largest kind, and the WebSocket
            // handshake alone is kilobytes that every client connection would carry.
            (ListenerKind::S2s, Some(fed)) => Box::pin(s2s::serve_inbound(fed, tcp, peer)).await,
            (ListenerKind::S2sDirectTls, Some(fed)) => {
                Box::pin(s2s::serve_inbound_tls(fed, tcp, peer)).await;
            }
            (ListenerKind::S2sWebSocket, Some(fed)) => {
                Box::pin(s2s::serve_websocket(fed, tcp, peer)).await;
            }
            // Server-to-server listeners are bound only with federation.
            (_, None) => {}
        }
    }
}
