//! Outpost's HTTP side: what the HTTP listeners (`listen.https`, `listen.http`) serve. The server
//! accepts the connections and does TLS; [`Web`] is the [`HttpService`] it hands them to,
//! with HTTP/1.1 from hyper and routes from axum.
//!
//! Routes: `/upload/<slot>/<filename>` (file upload, XEP-0363: `PUT` once with the slot's
//! secret, then `GET`/`HEAD` by anyone with the URL, when upload is on); `/healthz` and
//! `/metrics` (see `ops`); `/xmpp-websocket` for clients (RFC 7395) and its discovery,
//! `/.well-known/host-meta[.json]` (see `websocket`); the HTTP API, `/api/v1` (see `api`),
//! and the web client that uses it, `/` (see `client`).
//! Everything else is 404.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::RwLock;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use outpost_server::{HttpEnv, HttpIo, HttpService};
use tokio_util::sync::CancellationToken;
use tracing::debug;

mod api;
mod client;
mod ops;
mod upload;
mod websocket;

/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP service of a running server. One value serves every start of a server (a
/// test restarts it): each start replaces the routes.
#[derive(Default)]
pub struct Web {
    running: RwLock<Option<Running>>,
}

#[derive(Clone)]
struct Running {
    router: Router,
    shutdown: CancellationToken,
}

impl Web {
    pub fn new() -> Web {
        Web::default()
    }
}

impl HttpService for Web {
    fn start(&self, env: HttpEnv) {
        let requests = ops::HttpRequests::default();
        let max_stanza = env.server.max_stanza_bytes();
        let mut router = ops::routes(env.server.clone(), requests.clone())
            .merge(websocket::routes(env.server.clone(), max_stanza));
        if env.server.api_config().enabled {
            router = router.merge(api::routes(&env)).merge(client::routes());
        }
        if let Some(uploads) = &env.uploads {
            router = router.merge(upload::routes(uploads.clone()));
            env.spawn(upload::sweep(uploads.clone(), env.shutdown.clone()));
        }
        let router = router.layer(axum::middleware::from_fn_with_state(requests, ops::count));
        let running = Running {
            router,
            shutdown: env.shutdown.clone(),
        };
        *self.running.write().unwrap_or_else(|p| p.into_inner()) = Some(running);
    }

    fn serve(
        &self,
        io: Box<dyn HttpIo>,
        peer: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let running = self
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Box::pin(async move {
            if let Some(running) = running {
                serve_connection(running, io, peer).await;
            }
        })
    }
}

/// HTTP/1.1 on one connection until the client goes, or the server stops (then the
/// request in progress is finished and the connection closed).
async fn serve_connection(running: Running, io: Box<dyn HttpIo>, peer: SocketAddr) {
    let router = running.router.layer(axum::Extension(websocket::Peer(peer)));
    let service = TowerToHyperService::new(router);
    let mut conn = pin!(
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
    );
    let mut stop = pin!(running.shutdown.cancelled_owned());
    let mut stopping = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    debug!(%peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            () = &mut stop, if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
