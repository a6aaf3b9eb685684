//! `outpost-client`: the client side of Outpost, the half of the paper's C/S + P2P hybrid
//! that runs on the user's machine.
//!
//! [`Client::start`] logs a user on and keeps them on: it tries the servers it was given in
//! order of preference (the site's own first, then the hub), or those DNS SRV lists, resumes the stream
//! (XEP-0198) where the connection broke when it can, and otherwise logs in afresh and
//! catches up from the archive (XEP-0313), so a message is never lost and never shown
//! twice; while on another server than its home it keeps checking whether home is back,
//! and moves back when it is, or when a server sends it elsewhere (`see-other-host`).
//! The user sees typed [`Event`]s and gives [`Command`]s; the same types are the JSON
//! lines of `outpost chat --headless`.
//!
//! - [`scram`]: SCRAM-SHA-1/256, client side (RFC 5802, RFC 7677).
//! - [`trust`]: which server certificates are accepted: an authority, or the first one a
//!   server showed, pinned (Outpost's sites start with self-signed certificates).
//! - `stream`: one connection (STARTTLS or direct TLS, SASL, bind, elements in and out).
//! - `session`: the client's task: failover, resumption, catch-up and the loop.
//! - [`p2p`]: direct links between two users' devices, authenticated by keys published
//!   through the servers and pinned; `peers`: the session's side of them.
//! - `files`: file transfer (Jingle file transfer, direct or through the site's
//!   bytestream proxy; HTTP upload for a contact offline), hash-checked and resumable.
//! - `state`: what outlives a connection (acknowledgements, roster, presence, what was
//!   shown); `incoming`: what each received stanza means; `rooms`: group chat (XEP-0045)
//!   and pages of a conversation's archive.

pub mod event;
mod files;
mod incoming;
mod lan;
mod ns;
pub mod p2p;
mod peers;
mod rooms;
pub mod scram;
mod server;
mod session;
mod srv;
mod state;
mod stream;
pub mod trust;

pub use event::{
    Command, DeliveryState, Event, HistoryItem, Path, RosterItem, TransferPath, TransferState,
};
pub use p2p::{Identity, P2pConfig};
pub use scram::{Scram, ScramClient};
pub use server::Server;
pub use stream::StreamError;
pub use trust::Trust;

use tokio::sync::mpsc;

/// Who logs on, where, and whom to trust.
#[derive(Clone, Debug)]
pub struct Config {
    /// The account, `user@domain`.
    pub jid: String,
    pub password: String,
    /// Servers in order of preference; empty means the domain's SRV records (looked up
    /// again at each reconnection), or, with none, the servers of the domain announced on
    /// the LAN (multicast DNS), or the domain itself on port 5222.
    pub servers: Vec<Server>,
    /// The DNS server to ask instead of the system's.
    pub dns: Option<std::net::SocketAddr>,
    /// The resource to bind.
    pub resource: String,
    pub trust: Trust,
    /// Direct links with contacts' devices (`None`: everything goes through the servers).
    pub p2p: Option<P2pConfig>,
    /// Where received files are kept (`None`: files offered are declined).
    pub downloads: Option<std::path::PathBuf>,
}

/// Why a client cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not an account address (user@domain)")]
    Jid(String),
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
    #[error("{0}")]
    Dns(String),
    #[error("direct links cannot be set up: {0}")]
    P2p(String),
}

/// A running client: give it commands; its events come on the receiver
/// [`Client::start`] returned, which ends when the client has stopped.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
}

impl Client {
    /// Starts the client's task on the current tokio runtime.
    pub fn start(config: Config) -> Result<(Client, mpsc::Receiver<Event>), ConfigError> {
        let (commands, command_rx) = mpsc::channel(256);
        let (event_tx, events) = mpsc::channel(1024);
        let session = session::Session::new(config, event_tx)?;
        tokio::spawn(session.run(command_rx));
        Ok((Client { commands }, events))
    }

    /// Hands the client a command; `false` once it has stopped.
    pub async fn command(&self, command: Command) -> bool {
        self.commands.send(command).await.is_ok()
    }
}

/// `len` random letters and digits, for stanza ids and nonces.
pub(crate) fn random_id(len: usize) -> String {
    use rand::Rng as _;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// The bare form of a JID: without its resource.
pub(crate) fn bare(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(bare, _)| bare)
}
