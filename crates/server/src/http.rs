//! The HTTP listeners: on `listen.https` the server accepts connections and does TLS (with
//! its certificate, reloaded like the others), on `listen.http` it only accepts; an
//! [`HttpService`] serves HTTP over both. The service is the web crate's: this crate stays
//! free of an HTTP framework.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::session;
use crate::tasks::Tasks;
use crate::upload::Uploads;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// An HTTP connection's bytes: TLS over TCP (`listen.https`) or TCP (`listen.http`).
pub trait HttpIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> HttpIo for T {}

/// Serves HTTP on the connections of `listen.https` and `listen.http`.
pub trait HttpService: Send + Sync + 'static {
    /// Called once when the server starts, before any connection: what the server offers
    /// HTTP handlers.
    fn start(&self, env: HttpEnv);
    /// Serves one connection, TLS done if it was HTTPS. It should end soon after
    /// [`HttpEnv::shutdown`] fires (the server waits for it, then aborts it).
    fn serve(
        &self,
        io: Box<dyn HttpIo>,
        peer: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// What the server offers an [`HttpService`].
#[derive(Clone)]
pub struct HttpEnv {
    /// File upload (XEP-0363), when on.
    pub uploads: Option<Uploads>,
    /// What the server shows of itself (health, metrics).
    pub server: crate::ServerView,
    /// Fires when the server stops.
    pub shutdown: CancellationToken,
    pub(crate) tasks: Tasks,
}

impl HttpEnv {
    /// Runs a background task of the service (an expiry sweep) until the server stops; the
    /// server waits for it like for its own.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }
}

/// One connection to `listen.https`: TLS, then the service.
pub(crate) async fn serve(
    http: Arc<dyn HttpService>,
    sessions: Arc<session::Env>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let _ = tcp.set_nodelay(true);
    let acceptor = TlsAcceptor::from(sessions.https_tls());
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => http.serve(Box::new(tls), peer).await,
        _ => debug!(%peer, "HTTPS TLS handshake failed"),
    }
}
