//! [`ServerView`]: what a running server shows of itself (sessions, links, replication,
//! counters), shared by its handle and by the HTTP service (health and metrics), which
//! must not hold the handle that stops the server.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::c2s_ws::{TextSocket, WsConn};
use crate::delivery::Delivery;
use crate::metrics::Counts;
use crate::s2s::{self, Federation};
use crate::tasks::Tasks;
use crate::{
    ClusterStatus, LinkStatus, ReplicationStatus, ServerError, ServerStatus, SessionInfo,
    replication, session,
};

/// How long a WebSocket session waits for its place under the connection cap.
const PERMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A read-only view of a running server. Cheap to clone.
#[derive(Clone)]
pub struct ServerView {
    pub(crate) delivery: Arc<Delivery>,
    pub(crate) sessions: Arc<session::Env>,
    pub(crate) federation: Option<Arc<Federation>>,
    pub(crate) started_at_ms: i64,
    /// A site's replication to its hub, when it replicates.
    pub(crate) replication: Option<replication::SharedStatus>,
    pub(crate) tasks: Tasks,
    /// The connection cap (`limits.max_connections`), which a WebSocket session counts
    /// against once its HTTP connection has become it.
    pub(crate) connections: Arc<tokio::sync::Semaphore>,
    /// This node's part in its cluster, when it is one.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl ServerView {
    /// How the replication of this site's directory to its hub goes (`None` when it does
    /// not replicate).
    pub fn replication(&self) -> Option<ReplicationStatus> {
        let status = self.replication.as_ref()?;
        Some(status.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// On a hub: the sites it stands in for now (their users may log in here), sorted.
    pub fn standby(&self) -> Vec<String> {
        self.delivery.standby().active()
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

    /// The cluster as this node sees it (`None` when it is not a cluster node).
    pub async fn cluster(&self) -> Option<ClusterStatus> {
        match &self.cluster {
            Some(c) => Some(c.status().await),
            None => None,
        }
    }

    /// Number of bound client sessions.
    pub fn session_count(&self) -> usize {
        self.delivery.router().session_count()
    }

    /// Every bound client session, sorted by JID.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.delivery.router().sessions()
    }

    /// Uptime, sessions and links.
    pub async fn status(&self) -> Result<ServerStatus, ServerError> {
        let sessions = self.sessions();
        let mut users: Vec<&str> = sessions
            .iter()
            .map(|s| s.jid.split('/').next().unwrap_or_default())
            .collect();
        users.dedup();
        Ok(ServerStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at_ms: self.started_at_ms,
            domains: self.sessions.domains(),
            sessions: sessions.len(),
            users_online: users.len(),
            federation: self.federation.is_some(),
            links: self.link_statuses().await?,
            standby: self
                .standby()
                .into_iter()
                .map(|site| {
                    let here = sessions
                        .iter()
                        .filter(|s| s.jid.contains(&format!("@{site}/")));
                    let count = here.count();
                    (site, count)
                })
                .collect(),
            replication: self.replication(),
        })
    }

    /// What the server counted since it started.
    pub fn counts(&self) -> Counts {
        self.delivery.counters().counts()
    }

    /// Starts a client's session over a WebSocket (RFC 7395) that the HTTP service accepted
    /// from `peer` over TLS, with the `xmpp` subprotocol: the session reads and writes the
    /// socket's text messages itself. False (and the socket dropped) when the server is at
    /// its connection cap (`limits.max_connections`): the session counts against it like a
    /// TCP connection, taking the place its HTTP connection leaves as it becomes the
    /// WebSocket (waited for a moment, for that).
    pub async fn client_websocket(&self, peer: SocketAddr, socket: Box<dyn TextSocket>) -> bool {
        let permit = self.connections.clone().acquire_owned();
        let Ok(Ok(permit)) = tokio::time::timeout(PERMIT_WAIT, permit).await else {
            return false;
        };
        let conn = WsConn::over(socket, self.stream_limits());
        let env = self.sessions.clone();
        self.tasks.spawn(async move {
            session::serve_websocket(env, conn, peer).await;
            drop(permit);
        });
        true
    }

    /// The XML limits of a client stream now.
    pub(crate) fn stream_limits(&self) -> outpost_proto::xml::Limits {
        let config = self.sessions.config();
        outpost_proto::xml::Limits {
            max_stanza_bytes: config.limits.max_stanza_bytes,
            max_depth: config.limits.max_depth,
        }
    }

    /// The largest stanza a client may send (`limits.max_stanza_bytes`).
    pub fn max_stanza_bytes(&self) -> usize {
        self.sessions.config().limits.max_stanza_bytes
    }

    /// Whether the server is stopping (a health check then says so).
    pub fn stopping(&self) -> bool {
        self.sessions.shutdown.is_cancelled()
    }
}
