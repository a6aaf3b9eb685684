//! Outpost's XMPP server: listeners, client sessions, the router and presence.
//!
//! One tokio task per connection drives the sans-IO state machine of `outpost-proto`; the
//! router maps bare JIDs to the live sessions' bounded channels; the store is reached only
//! through `outpost-store`'s domain trait.
//!
//! Not here: reading files, arguments or the environment (the `outpost` binary does that
//! and hands over a [`config::Config`]), HTTP, and server-to-server links (a later layer
//! that will plug into the router).

pub mod accounts;
pub mod config;

use std::net::SocketAddr;
use std::sync::Arc;

use outpost_store::Store;

/// Which protocol a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Client connections with STARTTLS (RFC 6120 §5), usually port 5222.
    C2sStartTls,
    /// Client connections with TLS from the first byte (XEP-0368), usually port 5223.
    C2sDirectTls,
}

impl ListenerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::C2sStartTls => "c2s-starttls",
            ListenerKind::C2sDirectTls => "c2s-tls",
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

/// A running server. Dropping it does not stop it; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    _private: (),
}

impl ServerHandle {
    /// Binds every listener in the config, then starts serving. Returns once all sockets
    /// are bound, so callers can read [`ServerHandle::local_addrs`] (port 0 works).
    pub async fn start(
        config: config::Config,
        store: Arc<dyn Store>,
    ) -> Result<ServerHandle, ServerError> {
        let _ = (config, store);
        todo!("listeners")
    }

    /// The bound address of each listener, in config order.
    pub fn local_addrs(&self) -> Vec<(ListenerKind, SocketAddr)> {
        todo!("listeners")
    }

    /// Stops accepting, closes every stream with `</stream:stream>`, waits for sessions to
    /// end (up to a deadline), then closes the store.
    pub async fn shutdown(self) {
        todo!("shutdown")
    }
}
