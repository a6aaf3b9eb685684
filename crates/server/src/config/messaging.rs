//! The sections for what everyday clients expect of a server: the message archive and
//! stream management.

use serde::{Deserialize, Serialize};

/// `[archive]`: the message archive (XEP-0313), from which clients fetch history and
/// catch up after being away.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Whether one-to-one messages are archived for their local ends (each user can still
    /// opt out with XEP-0441 preferences). With it off, a message accepted for an online
    /// recipient is durable only once the recipient's client acknowledges it. Default:
    /// `true`.
    pub enabled: bool,
    /// Days a message stays in the archive; `0` keeps messages until their owner removes
    /// them or the account. Default: `365`.
    pub retention_days: u32,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            enabled: true,
            retention_days: 365,
        }
    }
}

/// `[stream_management]`: acknowledgements and resumption for client streams (XEP-0198),
/// with client state indication (XEP-0352).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamManagementConfig {
    /// Whether clients may enable stream management. Default: `true`.
    pub enabled: bool,
    /// Seconds a session whose connection died waits to be resumed, with its presence and
    /// the stanzas its client had not acknowledged; `0` offers acknowledgements without
    /// resumption. After it, the unacknowledged messages go to the offline store.
    /// Default: `300`.
    pub resume_timeout_secs: u32,
    /// Stanzas a session sends without its client acknowledging them before it waits for an
    /// acknowledgement; meanwhile what arrives for it waits in its channel, then in the
    /// offline store. Default: `1000`.
    pub max_unacked: usize,
}

impl Default for StreamManagementConfig {
    fn default() -> Self {
        StreamManagementConfig {
            enabled: true,
            resume_timeout_secs: 300,
            max_unacked: 1000,
        }
    }
}

/// `[muc]`: multi-user chat (XEP-0045), one service per served domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MucConfig {
    /// Whether the service runs. Default: `true`.
    pub enabled: bool,
    /// The service of each domain `d` is at `<subdomain>.d`. Default: `"conference"`.
    pub subdomain: String,
    /// Who may create rooms: `"local"` (users of this server) or `"anyone"` (users of
    /// other servers too). Default: `"local"`.
    pub create_rooms: RoomCreation,
    /// Messages a room keeps at hand for those who join (they get up to 20 unless they ask
    /// for fewer or more); older ones are in the room's archive. Default: `50`.
    pub history_messages: usize,
}

/// Who may create rooms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomCreation {
    #[default]
    Local,
    Anyone,
}

impl Default for MucConfig {
    fn default() -> Self {
        MucConfig {
            enabled: true,
            subdomain: "conference".to_owned(),
            create_rooms: RoomCreation::Local,
            history_messages: 50,
        }
    }
}

/// `[push]`: push notifications (XEP-0357) to the app servers clients register, which
/// wake their devices when a message waits for them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Whether clients may register for push. Default: `true`.
    pub enabled: bool,
    /// Seconds a session with push registered waits to be resumed after its connection
    /// died (a phone asleep), instead of `stream_management.resume_timeout_secs`.
    /// Default: `259200` (72 hours).
    pub hibernate_secs: u32,
    /// Tell the app server who sent the last message. Default: `false`.
    pub include_sender: bool,
    /// Tell the app server the last message's text. Default: `false` (it may be read by
    /// whoever runs the app server).
    pub include_body: bool,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            enabled: true,
            hibernate_secs: 72 * 3600,
            include_sender: false,
            include_body: false,
        }
    }
}

/// `[proxy65]`: a SOCKS5 bytestream proxy (XEP-0065) at `<subdomain>.<domain>`, through
/// which two clients that cannot reach each other still send files (Jingle file transfer
/// falls back to it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Proxy65Config {
    /// Whether the proxy runs (on `listen.proxy65`). Default: `true`.
    pub enabled: bool,
    /// The proxy of each domain `d` is at `<subdomain>.d`. Default: `"proxy"`.
    pub subdomain: String,
    /// The host clients are told to connect to; by default the listener's IP address, or
    /// the domain when the listener takes every address. Set it to the address clients on
    /// the LAN (and at the hub) reach this server at.
    pub host: Option<String>,
}

impl Default for Proxy65Config {
    fn default() -> Self {
        Proxy65Config {
            enabled: true,
            subdomain: "proxy".to_owned(),
            host: None,
        }
    }
}

/// `[upload]`: HTTP file upload (XEP-0363) at `<subdomain>.<domain>`: clients ask it for a
/// slot, PUT the file to this server's HTTPS listener (`listen.https`) and share the GET
/// URL in a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Whether the service runs. It needs an HTTPS listener. Default: `true`.
    pub enabled: bool,
    /// The service of each domain `d` is at `<subdomain>.d`. Default: `"upload"`.
    pub subdomain: String,
    /// The largest file accepted, in bytes. Default: 104857600 (100 MiB).
    pub max_file_bytes: u64,
    /// What one user's files may take together, in bytes, until they expire. Default:
    /// 1073741824 (1 GiB).
    pub quota_bytes: u64,
    /// Files are deleted this many days after their upload; 0 keeps them. Default: 30.
    pub expire_days: u32,
    /// The start of the URLs handed to clients (scheme, host and port), for when they reach
    /// this server under another name or through a proxy, e.g.
    /// `"https://files.example.org"`. Default: the first `listen.https` address
    /// (`https://<its IP>:<port>`), or `https://<domain>:<port>` when it listens on every
    /// address (`0.0.0.0` or `[::]`).
    pub url: Option<String>,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            enabled: true,
            subdomain: "upload".to_owned(),
            max_file_bytes: 100 * 1024 * 1024,
            quota_bytes: 1024 * 1024 * 1024,
            expire_days: 30,
            url: None,
        }
    }
}

/// `[api]`: the HTTP API (`/api/v1` on the HTTP listeners): the paper's web services for
/// clients that can speak only HTTP, and the operators' routes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Whether `/api/v1` is served. Default: `true`.
    pub enabled: bool,
    /// Days a login token lasts. Default: `30`.
    pub token_lifetime_days: u32,
    /// Seconds an API session (the XMPP resource a token's client is) stays online with
    /// no request and no open event stream; what arrives later waits for it offline.
    /// Default: `300`.
    pub session_idle_secs: u64,
    /// The bearer token of the admin routes (`/api/v1/admin/…`); at least 32 characters.
    /// Default: none, and the admin routes answer 403.
    pub admin_token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            token_lifetime_days: 30,
            session_idle_secs: 300,
            admin_token: None,
        }
    }
}
