//! What the client tells its user, and what the user asks of it. Both serialise to the
//! one-JSON-object-per-line contract of `outpost chat --headless`: events carry their
//! kind in `event`, commands in `cmd`.

use serde::{Deserialize, Serialize};

/// How a conversation's messages travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// Over a direct link between the two clients.
    Direct,
    /// Through the servers.
    Server,
}

/// How far a message we sent has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Our server has it (it acknowledged it, XEP-0198, after storing it).
    Queued,
    /// A hub took it on for the contact's server (their site is reached through it).
    Relayed,
    /// The contact's client has it (XEP-0184).
    Delivered,
    /// The contact has seen it (XEP-0333).
    Read,
}

/// Something that happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// Logged in at `server`; `why` says why this one (`home`, `failover`, `returned`,
    /// `redirected`) and `resumed` whether the previous session went on.
    Connected {
        server: String,
        jid: String,
        why: String,
        resumed: bool,
    },
    /// The connection to `server` ended; the client is reconnecting.
    Disconnected { server: String, reason: String },
    /// A chat message from a contact.
    Message {
        from: String,
        body: String,
        id: String,
        path: Path,
        /// When it was sent, if it was delayed (RFC 3339).
        #[serde(skip_serializing_if = "Option::is_none")]
        stamp: Option<String>,
    },
    /// A message one of our other clients sent (XEP-0280).
    Sent {
        to: String,
        body: String,
        id: String,
    },
    /// A contact came online or went away.
    Presence { from: String, available: bool },
    /// Someone asks to see our presence; `add` approves.
    Subscription { from: String },
    /// A message we sent got further.
    Delivery { id: String, state: DeliveryState },
    /// The path a conversation now takes.
    Path { with: String, path: Path },
    /// The roster, in answer to the `roster` command or after it changed.
    Roster { items: Vec<RosterItem> },
    /// A page of a conversation's archive, oldest first, in answer to `history`;
    /// `complete` when nothing older is left.
    History {
        with: String,
        items: Vec<HistoryItem>,
        complete: bool,
    },
    /// We are in a room (XEP-0045), under `nick`.
    Joined { room: String, nick: String },
    /// A message in a room; `mine` for our own, as the room reflects it.
    Groupchat {
        room: String,
        from: String,
        body: String,
        id: String,
        mine: bool,
    },
    /// A file on its way, to or from `with`: offered, moving (`done` of `size` bytes),
    /// complete (`file`: where a received one was kept) or failed (`text` says why).
    Transfer {
        id: String,
        with: String,
        name: String,
        size: u64,
        done: u64,
        state: TransferState,
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<TransferPath>,
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    /// Something failed; the text says what.
    Error { text: String },
}

/// Where a file transfer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    /// Offered to the contact's client, which has not started fetching it.
    Offered,
    Sending,
    Receiving,
    /// All of it arrived, and its SHA-256 matched.
    Complete,
    Failed,
}

/// How a file travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferPath {
    /// Straight between the two devices.
    Direct,
    /// Through the site's SOCKS5 bytestream proxy.
    Proxy,
    /// Through the server's HTTP upload service, for a contact not online.
    Upload,
}

/// A message from the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryItem {
    pub from: String,
    pub body: String,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stamp: Option<String>,
    /// Sent by us (from any of our clients).
    pub mine: bool,
}

/// One contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterItem {
    pub jid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `none`, `to`, `from` or `both` (RFC 6121 §2.1.2.5).
    pub subscription: String,
    /// A request of ours waits for their answer.
    pub pending: bool,
    pub available: bool,
}

/// What the user asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Command {
    /// Send a chat message; its `id` comes back in `delivery` events (one is chosen when
    /// none is given).
    Send {
        to: String,
        body: String,
        #[serde(default)]
        id: Option<String>,
    },
    /// Ask to see `jid`'s presence, or approve their request.
    Add { jid: String },
    /// Stop sharing presence with `jid` and remove them.
    Remove { jid: String },
    /// Emit the roster.
    Roster,
    /// Tell `to` that their message `id` was read (XEP-0333).
    Read { to: String, id: String },
    /// Emit the newest page of the conversation with `with` from the archive.
    History { with: String },
    /// Enter a room (created if the service lets us), as `nick` (default: the user
    /// name); rooms are entered again after each new login.
    Join {
        room: String,
        #[serde(default)]
        nick: Option<String>,
    },
    /// Say something in a room.
    Say {
        room: String,
        body: String,
        #[serde(default)]
        id: Option<String>,
    },
    /// Leave a room.
    Leave { room: String },
    /// Send a file: to the contact's client online (directly, else through the site's
    /// proxy), or, with none online, by HTTP upload.
    SendFile { to: String, path: String },
    /// Log out and stop.
    Quit,
}
