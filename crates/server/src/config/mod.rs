//! Typed configuration of the server: one [`Config`] with a section per concern, each key
//! documented with its default.
//!
//! Every struct here is `#[serde(deny_unknown_fields, default)]`: a key left out takes its
//! default, and a misspelt key is an error instead of a silently ignored setting.
//! [`Config::validate`] checks what types cannot say (ranges, duplicates, pairs of keys).
//!
//! Not here: reading files or the environment. The `outpost` binary layers defaults, the
//! TOML file and `OUTPOST_…` variables, resolves the zero-config registration default and
//! calls [`Config::validate`] before anything is bound.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::tls::Fingerprint;

mod messaging;

pub use messaging::{
    ApiConfig, ArchiveConfig, MucConfig, Proxy65Config, PushConfig, RoomCreation,
    StreamManagementConfig, UploadConfig,
};

/// The whole configuration. `Config::default()` is a working single-host setup for
/// `localhost` on the loopback interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// What this server is in a network of sites: `"site"`, the home of its domains, or
    /// `"hub"`, which relays between the sites in `federation.relay_for` and keeps a
    /// replica of each one's directory (see ARCHITECTURE.md, "Sites and hub").
    /// Default: `"site"`.
    pub role: Role,
    /// The XMPP domains served, in canonical (lower-case, ASCII) form. Default: `["localhost"]`.
    pub domains: Vec<String>,
    /// Where the server keeps its state: the database and the generated TLS certificate.
    /// Relative paths are relative to the working directory. Default: `./outpost-data`.
    pub data_dir: PathBuf,
    /// Listening sockets.
    pub listen: ListenConfig,
    /// The server's certificate.
    pub tls: TlsConfig,
    /// Where accounts, rosters and offline messages live.
    pub storage: StorageConfig,
    /// In-band registration (XEP-0077).
    pub registration: RegistrationConfig,
    /// Client authentication (SASL).
    pub auth: AuthConfig,
    /// Resource limits that protect the server from one peer or from too many.
    pub limits: LimitsConfig,
    /// Diagnostics.
    pub log: LogConfig,
    /// Server-to-server links to other XMPP domains (RFC 6120), off by default.
    pub federation: FederationConfig,
    /// The message archive (XEP-0313).
    pub archive: ArchiveConfig,
    /// Stream management for clients (XEP-0198).
    pub stream_management: StreamManagementConfig,
    /// Multi-user chat (XEP-0045).
    pub muc: MucConfig,
    /// Push notifications (XEP-0357).
    pub push: PushConfig,
    /// The SOCKS5 bytestream proxy (XEP-0065).
    pub proxy65: Proxy65Config,
    /// HTTP file upload (XEP-0363).
    pub upload: UploadConfig,
    /// The HTTP API.
    pub api: ApiConfig,
    /// External components (XEP-0114): each domain a component may connect as, with the
    /// secret it proves it knows. Default: none.
    pub components: BTreeMap<String, String>,
    /// Several nodes serving the same domains on one PostgreSQL (see ARCHITECTURE.md,
    /// "Cluster"). Off by default.
    pub cluster: ClusterConfig,
}

/// `[cluster]`: this server as one node of several that serve the same domains, sharing
/// their store (PostgreSQL) and telling each other where sessions are over NATS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The NATS server(s) the nodes share, `nats://host:4222` (with `user:password@` or
    /// `token@` when the server asks; several URLs separated by commas). Setting it turns
    /// clustering on. Default: none.
    pub nats_url: Option<String>,
    /// This node's name in the cluster: letters, digits, `-` and `_`, at most 64. Each
    /// running node needs its own; a node started with one a live node holds refuses to
    /// start. Required with `nats_url`.
    pub node_id: Option<String>,
    /// The prefix of the NATS subjects, so that several clusters can share one NATS.
    /// Default: `"outpost"`.
    pub subject_prefix: Option<String>,
}

impl ClusterConfig {
    /// Whether clustering is on.
    pub fn enabled(&self) -> bool {
        self.nats_url.is_some()
    }

    pub fn subject_prefix(&self) -> &str {
        self.subject_prefix.as_deref().unwrap_or("outpost")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            role: Role::Site,
            domains: vec!["localhost".to_owned()],
            data_dir: PathBuf::from("./outpost-data"),
            listen: ListenConfig::default(),
            tls: TlsConfig::default(),
            storage: StorageConfig::default(),
            registration: RegistrationConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            federation: FederationConfig::default(),
            archive: ArchiveConfig::default(),
            stream_management: StreamManagementConfig::default(),
            muc: MucConfig::default(),
            push: PushConfig::default(),
            proxy65: Proxy65Config::default(),
            upload: UploadConfig::default(),
            api: ApiConfig::default(),
            components: BTreeMap::new(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// A server's part in a network of sites (`role`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The home of its domains; with a `federation.hub`, it replicates its directory there.
    #[default]
    Site,
    /// Relays between its sites and holds a replica of each one's directory.
    Hub,
}

/// `[listen]`: the sockets to accept client connections on. Port 0 picks a free port;
/// the bound addresses are reported by the server once it has started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Client-to-server listeners that offer STARTTLS (RFC 6120 §5).
    /// Default: `["127.0.0.1:5222"]`.
    #[serde(deserialize_with = "listen_addrs")]
    pub c2s: Vec<SocketAddr>,
    /// Client-to-server listeners with TLS from the first byte (XEP-0368).
    /// Default: `["127.0.0.1:5223"]`.
    #[serde(deserialize_with = "listen_addrs")]
    pub c2s_tls: Vec<SocketAddr>,
    /// Server-to-server listeners offering STARTTLS (RFC 6120 §5), bound only when
    /// `federation.enabled` is set. Default: `["127.0.0.1:5269"]`.
    #[serde(deserialize_with = "listen_addrs")]
    pub s2s: Vec<SocketAddr>,
    /// Server-to-server listeners with TLS from the first byte (XEP-0368, ALPN
    /// `xmpp-server`), bound only when `federation.enabled` is set. Default: none.
    #[serde(deserialize_with = "listen_addrs")]
    pub s2s_tls: Vec<SocketAddr>,
    /// Server-to-server streams over WebSocket (RFC 7395 framing) inside HTTPS, for networks
    /// where only HTTP(S) passes; Outpost peers only. Bound only when `federation.enabled`
    /// is set. Default: none.
    #[serde(deserialize_with = "listen_addrs")]
    pub s2s_websocket: Vec<SocketAddr>,
    /// External components (XEP-0114), such as a push app server, bound only when
    /// `[components]` names any. Default: `["127.0.0.1:5275"]`.
    #[serde(deserialize_with = "listen_addrs")]
    pub component: Vec<SocketAddr>,
    /// The SOCKS5 bytestream proxy (XEP-0065), bound when `proxy65.enabled`.
    /// Default: `["127.0.0.1:7777"]`.
    #[serde(deserialize_with = "listen_addrs")]
    pub proxy65: Vec<SocketAddr>,
    /// Plain HTTP, serving what `https` serves (the web client, the HTTP API, WebSocket,
    /// health and metrics): for the loopback interface and for a reverse proxy that does
    /// TLS, as passwords and tokens cross it in clear. Bound when the server has an HTTP
    /// service. Default: `["127.0.0.1:5280"]`.
    #[serde(deserialize_with = "listen_addrs")]
    pub http: Vec<SocketAddr>,
    /// HTTPS with the server's certificate: the web client, the HTTP API, XMPP over
    /// WebSocket, file upload (XEP-0363) when `upload.enabled`, `/healthz` and `/metrics`;
    /// bound when the server has an HTTP service (the `outpost` binary has).
    /// Default: `["127.0.0.1:5281"]`.
    #[serde(deserialize_with = "listen_addrs")]
    pub https: Vec<SocketAddr>,
    /// Announce the client listeners on the local network with DNS-SD over multicast DNS
    /// (`_xmpp-client._tcp.local`, `_xmpps-client._tcp.local`; TXT `domain`), so Outpost's
    /// clients on the LAN find this server with no configuration. Listeners on loopback
    /// are never announced. Default: true.
    pub mdns: bool,
}

/// Listen addresses are IP addresses: a name could resolve to several, or to different
/// ones over time, and which interfaces a server listens on must not depend on DNS.
fn listen_addrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|t| {
            t.parse::<SocketAddr>().map_err(|_| {
                let port = t.rsplit_once(':').map_or("5222", |(_, p)| p);
                serde::de::Error::custom(format!(
                    "`{t}` is not an IP address and port: write 127.0.0.1:{port} for the \
                     loopback interface, 0.0.0.0:{port} for every IPv4 interface, or \
                     [::]:{port} for IPv6"
                ))
            })
        })
        .collect()
}

impl Default for ListenConfig {
    fn default() -> Self {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        ListenConfig {
            c2s: vec![SocketAddr::new(loopback, 5222)],
            c2s_tls: vec![SocketAddr::new(loopback, 5223)],
            s2s: vec![SocketAddr::new(loopback, 5269)],
            s2s_tls: Vec::new(),
            s2s_websocket: Vec::new(),
            component: vec![SocketAddr::new(loopback, 5275)],
            proxy65: vec![SocketAddr::new(loopback, 7777)],
            http: vec![SocketAddr::new(loopback, 5280)],
            https: vec![SocketAddr::new(loopback, 5281)],
            mdns: true,
        }
    }
}

/// `[tls]`: the certificate presented to clients. Give both `cert` and `key`, or neither:
/// with neither, the `outpost` binary generates a self-signed certificate for the domains on
/// first start and keeps it in `<data_dir>/tls/` (see [`Config::self_signed_paths`]); delete
/// that directory to get a new one, e.g. after changing `domains`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first. Default: none (self-signed).
    pub cert: Option<PathBuf>,
    /// PEM file with the private key of the leaf certificate. Default: none (self-signed).
    pub key: Option<PathBuf>,
}

/// `[storage]`: the persistent store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The backend. Default: `"sqlite"`.
    pub backend: StorageBackend,
    /// The database file of the SQLite backend. Default: none, meaning
    /// `<data_dir>/outpost.db` (see [`Config::storage_path`]).
    pub path: Option<PathBuf>,
    /// The PostgreSQL backend's database, `postgres://user:password@host:port/database`
    /// (or with `?host=/run/postgresql` for a unix socket). Required with it.
    pub url: Option<String>,
}

/// The storage backends the server can use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// One SQLite file in WAL mode: no separate database server to run.
    #[default]
    Sqlite,
    /// A PostgreSQL database (`storage.url`), which several nodes can share.
    Postgres,
}

/// `[registration]`: in-band account registration (XEP-0077).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// Whether clients may create accounts themselves. Default: unset, which means on when
    /// Outpost runs without a config file (zero-config: try it out at once) and off when it
    /// has one (a configured server is a deliberate deployment, where open registration
    /// invites spam). The binary resolves "unset" at load time; [`Config::registration_enabled`]
    /// treats a still-unset value as off.
    pub enabled: Option<bool>,
}

/// `[auth]`: client authentication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// PBKDF2 iterations for the SCRAM verifiers of new or changed passwords. Existing
    /// verifiers keep the count they were made with. RFC 7677 §4 asks for at least 4096;
    /// values from 1 are accepted so that tests can run fast. Default: `4096`.
    pub scram_iterations: u32,
    /// Allows SASL authentication on a STARTTLS listener before TLS is negotiated. For local
    /// testing only: it sends credentials in the clear. Default: `false`.
    pub allow_plaintext_without_tls: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            scram_iterations: 4096,
            allow_plaintext_without_tls: false,
        }
    }
}

/// `[limits]`: bounds on what peers may cost the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest stanza accepted, in bytes of XML; a bigger one closes the stream with
    /// `<policy-violation/>`. At least 10000 (RFC 6120 §13.12). Default: `262144` (256 KiB).
    pub max_stanza_bytes: usize,
    /// Deepest XML element nesting accepted inside a stanza, from 8 to 1024. Default: `64`.
    pub max_depth: usize,
    /// Sustained read rate per connection, in bytes per second; a faster peer is read more
    /// slowly, not disconnected. Default: `262144` (256 KiB/s).
    pub read_rate_bytes_per_sec: u32,
    /// Bytes a connection may read at once above the sustained rate (token bucket size).
    /// Default: `524288` (512 KiB).
    pub read_burst_bytes: u32,
    /// Most client connections open at once, over all listeners; further ones are closed
    /// right after accept. Default: `10000`.
    pub max_connections: usize,
    /// Most messages kept for one offline user (XEP-0160); further ones bounce with
    /// `<resource-constraint/>`. Default: `10000`.
    pub offline_quota: u32,
    /// Seconds without any traffic from a connection after which it is closed. Must be
    /// greater than `ping_interval_secs`, so the ping has a chance. Default: `600`.
    pub idle_timeout_secs: u64,
    /// Seconds of silence from a client after which the server sends it an XEP-0199 ping,
    /// so live connections generate traffic and dead ones are found. Default: `300`.
    pub ping_interval_secs: u64,
    /// Failed logins allowed for one account from one IP address; after that, the account
    /// waits before it may try again from there: 15 s, doubling with each further failure,
    /// never longer than `login_failure_window_secs`. Other accounts behind the same
    /// address (an office NAT) are not affected. Default: `5`.
    pub login_failures_per_address_account: u32,
    /// Failed logins allowed for one account from all addresses together before it waits
    /// the same way wherever it logs in from. Default: `20`.
    pub login_failures_per_account: u32,
    /// Failed logins allowed from one IP address for all accounts together within
    /// `login_failure_window_secs`; further attempts from it are refused until the window
    /// passes. Default: `100`.
    pub login_failures_per_ip: u32,
    /// A failure count is forgotten after this many seconds without a new failure, and the
    /// longest wait. `outpost admin unblock` forgets counts at once. Default: `300`.
    pub login_failure_window_secs: u64,
    /// Most sessions (resources) bound at once for one account. Default: `10`.
    pub max_resources_per_account: usize,
    /// Accounts one IP address may create by in-band registration within
    /// `registration_window_secs`. Loopback addresses are exempt, so local tools and tests
    /// are never throttled. Default: `5`.
    pub registrations_per_ip: u32,
    /// Length of the window in which registrations are counted, in seconds. Default: `3600`.
    pub registration_window_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_stanza_bytes: 256 * 1024,
            max_depth: 64,
            read_rate_bytes_per_sec: 256 * 1024,
            read_burst_bytes: 512 * 1024,
            max_connections: 10_000,
            offline_quota: 10_000,
            idle_timeout_secs: 600,
            ping_interval_secs: 300,
            login_failures_per_address_account: 5,
            login_failures_per_account: 20,
            login_failures_per_ip: 100,
            login_failure_window_secs: 300,
            max_resources_per_account: 10,
            registrations_per_ip: 5,
            registration_window_secs: 3600,
        }
    }
}

/// `[log]`: diagnostics written to standard error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: a level (`trace`, `debug`, `info`, `warn`, `error`, `off`),
    /// optionally followed by `target=level` pairs, e.g. `"info,outpost_server=debug"`. The
    /// `RUST_LOG` environment variable, when set, takes precedence. Default: `"info"`.
    pub level: String,
    /// `"text"`, one line per event for people, or `"json"`, one JSON object per line for
    /// log collectors. Default: `"text"`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[federation]`: server-to-server links (RFC 6120 §4–§6) and the durable outbound queue.
///
/// Off by default, so a server without configuration serves its own domains only. When on,
/// a stanza for another domain goes to that domain's server: messages and subscription
/// requests through a durable queue per (local domain, remote domain) link, sent in order
/// and removed only once the peer acknowledged them; other presence and IQs best-effort.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Whether to accept and open server-to-server connections. Default: `false`.
    pub enabled: bool,
    /// Where to reach a peer domain's server, as `"host:port"` with STARTTLS, instead of
    /// what DNS says (SRV records, else the domain on port 5269). Default: none.
    pub peers: BTreeMap<String, HostPort>,
    /// The secret dialback keys are derived from (XEP-0185). Default: unset, meaning the
    /// `outpost` binary generates one on first start and keeps it in
    /// `<data_dir>/dialback-secret` (see [`Config::dialback_secret_path`]).
    pub dialback_secret: Option<String>,
    /// Negotiate TLS on every server-to-server stream, and refuse peers that do not offer it
    /// (RFC 6120 §5.3.1). Turn off only for tests on loopback. Default: `true`.
    pub require_tls: bool,
    /// Seconds a queued stanza keeps being retried before its sender gets a
    /// `remote-server-timeout` error. Default: `604800` (7 days).
    pub queue_lifetime_secs: u64,
    /// Most stanzas queued on one link; further ones bounce at once with
    /// `resource-constraint`. Default: `100000`.
    pub outbox_quota: u32,
    /// Seconds before the first reconnection attempt after a link failed; doubled after each
    /// failure up to `retry_max_secs`. Default: `1`.
    pub retry_initial_secs: u64,
    /// Longest wait between reconnection attempts, in seconds. Default: `300`.
    pub retry_max_secs: u64,
    /// While a link is down and its queue not empty, seconds between probes: a TCP connect
    /// to the peer that, once it succeeds, starts the next attempt at once instead of
    /// waiting for the back-off. Default: `30`.
    pub probe_interval_secs: u64,
    /// What removes a sent stanza from the queue when the peer does not offer stream
    /// management (XEP-0198). Default: `"on-write"`.
    pub ack_without_sm: AckWithoutSm,
    /// Look up `_xmpps-server._tcp` and `_xmpp-server._tcp` SRV records (XEP-0368, RFC 6120
    /// §3.2.1) for peers without an entry in `peers`. Default: `true`.
    pub srv_lookup: bool,
    /// The DNS server to ask, as `"host:port"`, instead of the system's resolver
    /// configuration. Default: none (the system's).
    pub dns_server: Option<SocketAddr>,
    /// Where to reach a peer's server-to-server WebSocket endpoint, as a `wss://` URL: the
    /// path used when direct TCP does not pass. Outpost peers only. Default: none.
    pub websocket_peers: BTreeMap<String, WssUrl>,
    /// This server's hub: another Outpost server (its domain, reached like any peer) that
    /// relays stanzas to domains this server cannot reach directly. Default: none.
    pub hub: Option<String>,
    /// On a hub: the domains it relays between. A stanza from one of them addressed to
    /// another is stored and forwarded; a stanza to any other domain is refused. Default:
    /// none (this server relays nothing).
    pub relay_for: Vec<String>,
    /// On a site with a `hub`: replicate the directory (accounts' SCRAM verifiers, rosters,
    /// vCards, block lists, PEP, private data, archive preferences, rooms) and the message
    /// archive to the hub, so that its users can log in there when this server is down or
    /// cut off. Default: `true`.
    pub replicate: bool,
    /// Peer certificates pinned by domain, as the SHA-256 of the certificate (hex, colons
    /// allowed). A pinned peer must present exactly that certificate on every stream, and
    /// may then authenticate with SASL EXTERNAL (XEP-0178). Default: none.
    pub pinned: BTreeMap<String, Fingerprint>,
    /// Domains whose self-signed certificates are accepted when they name the domain: such
    /// peers authenticate with SASL EXTERNAL, and our links to them check that the
    /// certificate names them. Default: none.
    pub trust_self_signed: Vec<String>,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            enabled: false,
            peers: BTreeMap::new(),
            dialback_secret: None,
            require_tls: true,
            queue_lifetime_secs: 7 * 24 * 3600,
            outbox_quota: 100_000,
            retry_initial_secs: 1,
            retry_max_secs: 300,
            probe_interval_secs: 30,
            ack_without_sm: AckWithoutSm::OnWrite,
            srv_lookup: true,
            dns_server: None,
            websocket_peers: BTreeMap::new(),
            hub: None,
            relay_for: Vec::new(),
            replicate: true,
            pinned: BTreeMap::new(),
            trust_self_signed: Vec::new(),
        }
    }
}

/// How to treat a peer that offers no XEP-0198 acknowledgements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AckWithoutSm {
    /// A stanza counts as delivered once it was written and flushed to the peer's socket:
    /// at most once should the peer crash before handling it. This is what every server
    /// without stream management does.
    #[default]
    OnWrite,
    /// Queued stanzas are never sent to such a peer: they wait for a stream that offers
    /// acknowledgements, or bounce when their lifetime ends.
    Hold,
}

/// The smallest `limits.max_stanza_bytes`: RFC 6120 §13.12 requires servers to accept
/// stanzas of at least 10000 bytes.
pub const MIN_STANZA_BYTES: usize = 10_000;

/// What is wrong with a configuration: every problem found, each naming its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<String>,
}

impl ConfigError {
    /// One message per problem, each starting with the key it is about.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks everything the types do not. Reports all problems at once, so an operator
    /// fixes them in one round.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |msg: String| problems.push(msg);
        self.check_domains(&mut problem);
        self.check_listeners(&mut problem);
        self.check_files(&mut problem);
        self.check_limits(&mut problem);
        self.check_federation(&mut problem);
        self.check_api(&mut problem);
        self.check_cluster(&mut problem);
        if self.log.level.trim().is_empty() {
            problem("log.level must not be empty".to_owned());
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// `domains` and `data_dir`.
    fn check_domains(&self, problem: &mut impl FnMut(String)) {
        if self.domains.is_empty() {
            problem("domains must list at least one domain".to_owned());
        }
        let mut seen_domains = HashSet::new();
        for domain in &self.domains {
            match jid::DomainPart::new(domain) {
                Err(e) => problem(format!("domains: `{domain}` is not a valid domain ({e})")),
                // Routing compares domains as strings, so they must already be in the form
                // that JIDs are normalised to (RFC 7622 §3.2).
                Ok(canonical) if canonical.as_str() != domain => problem(format!(
                    "domains: write `{domain}` in canonical form, as `{}`",
                    canonical.as_str()
                )),
                Ok(_) => {}
            }
            if !seen_domains.insert(domain.as_str()) {
                problem(format!("domains: `{domain}` is listed twice"));
            }
        }

        if self.data_dir.as_os_str().is_empty() {
            problem("data_dir must not be empty".to_owned());
        }
    }

    /// `listen`: at least one client listener, no two on one port.
    fn check_listeners(&self, problem: &mut impl FnMut(String)) {
        let s2s: Vec<(&str, SocketAddr)> = if self.federation.enabled {
            (self.listen.s2s.iter().map(|a| ("listen.s2s", *a)))
                .chain(self.listen.s2s_tls.iter().map(|a| ("listen.s2s_tls", *a)))
                .chain((self.listen.s2s_websocket.iter()).map(|a| ("listen.s2s_websocket", *a)))
                .collect()
        } else {
            Vec::new()
        };
        let components: Vec<(&str, SocketAddr)> = match self.components.is_empty() {
            true => Vec::new(),
            false => (self.listen.component.iter())
                .map(|a| ("listen.component", *a))
                .collect(),
        };
        let proxy: Vec<(&str, SocketAddr)> = match self.proxy65.enabled {
            true => (self.listen.proxy65.iter())
                .map(|a| ("listen.proxy65", *a))
                .collect(),
            false => Vec::new(),
        };
        let https: Vec<(&str, SocketAddr)> = (self.listen.https.iter())
            .map(|a| ("listen.https", *a))
            .chain(self.listen.http.iter().map(|a| ("listen.http", *a)))
            .collect();
        let clients = self.listen.c2s.len() + self.listen.c2s_tls.len();
        let listeners: Vec<(&str, SocketAddr)> = (self.listen.c2s.iter())
            .map(|a| ("listen.c2s", *a))
            .chain(self.listen.c2s_tls.iter().map(|a| ("listen.c2s_tls", *a)))
            .chain(s2s.iter().copied())
            .chain(components.iter().copied())
            .chain(proxy.iter().copied())
            .chain(https.iter().copied())
            .collect();
        if clients == 0 {
            problem("listen: at least one of listen.c2s and listen.c2s_tls must be set".to_owned());
        }
        for (i, (key_a, a)) in listeners.iter().enumerate() {
            for (key_b, b) in &listeners[..i] {
                if sockets_clash(*a, *b) {
                    problem(format!("{key_a}: {a} clashes with {b} in {key_b}"));
                }
            }
        }
    }

    /// `tls`, `storage` and `auth`.
    fn check_files(&self, problem: &mut impl FnMut(String)) {
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => problem("tls.key must be set when tls.cert is".to_owned()),
            (None, Some(_)) => problem("tls.cert must be set when tls.key is".to_owned()),
            (Some(c), Some(k)) if c.as_os_str().is_empty() || k.as_os_str().is_empty() => {
                problem("tls.cert and tls.key must not be empty".to_owned())
            }
            _ => {}
        }

        if self
            .storage
            .path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            problem("storage.path must not be empty (leave it out for the default)".to_owned());
        }
        let url = self.storage.url.as_deref();
        match self.storage.backend {
            StorageBackend::Postgres => match url {
                None => problem("storage.url must be set with backend = \"postgres\"".to_owned()),
                Some(u) if !u.starts_with("postgres://") && !u.starts_with("postgresql://") => {
                    problem(format!(
                        "storage.url must start with postgres:// (got {})",
                        redact_url(u)
                    ));
                }
                Some(_) => {}
            },
            StorageBackend::Sqlite if url.is_some() => problem(
                "storage.url is for backend = \"postgres\"; the SQLite backend takes storage.path"
                    .to_owned(),
            ),
            StorageBackend::Sqlite => {}
        }

        if self.auth.scram_iterations < 1 {
            problem("auth.scram_iterations must be at least 1".to_owned());
        }
    }

    /// `limits`.
    fn check_limits(&self, problem: &mut impl FnMut(String)) {
        let l = &self.limits;
        if l.max_stanza_bytes < MIN_STANZA_BYTES {
            problem(format!(
                "limits.max_stanza_bytes must be at least {MIN_STANZA_BYTES} (RFC 6120 §13.12)"
            ));
        }
        if !(8..=1024).contains(&l.max_depth) {
            problem("limits.max_depth must be between 8 and 1024".to_owned());
        }
        let positive: [(&str, u64); 13] = [
            ("read_rate_bytes_per_sec", l.read_rate_bytes_per_sec.into()),
            ("read_burst_bytes", l.read_burst_bytes.into()),
            ("max_connections", l.max_connections as u64),
            ("offline_quota", l.offline_quota.into()),
            ("idle_timeout_secs", l.idle_timeout_secs),
            ("ping_interval_secs", l.ping_interval_secs),
            (
                "login_failures_per_address_account",
                l.login_failures_per_address_account.into(),
            ),
            ("login_failures_per_ip", l.login_failures_per_ip.into()),
            (
                "login_failures_per_account",
                l.login_failures_per_account.into(),
            ),
            ("login_failure_window_secs", l.login_failure_window_secs),
            (
                "max_resources_per_account",
                l.max_resources_per_account as u64,
            ),
            ("registrations_per_ip", l.registrations_per_ip.into()),
            ("registration_window_secs", l.registration_window_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                problem(format!("limits.{key} must be at least 1"));
            }
        }
        if l.ping_interval_secs >= l.idle_timeout_secs {
            problem(format!(
                "limits.ping_interval_secs ({}) must be less than limits.idle_timeout_secs ({})",
                l.ping_interval_secs, l.idle_timeout_secs
            ));
        }
        let services: Vec<String> = (self.service_domains().into_iter())
            .map(|(s, _)| s)
            .collect();
        for (domain, secret) in &self.components {
            if jid::DomainPart::new(domain).map_or(true, |d| d.as_str() != domain)
                || self.serves_domain(domain)
                || services.contains(domain)
            {
                problem(format!(
                    "components: `{domain}` is not a domain of its own in canonical form"
                ));
            }
            if secret.len() < 16 {
                problem(format!(
                    "components: the secret of `{domain}` needs 16 characters or more"
                ));
            }
        }
        for (service, _) in self.service_domains() {
            if jid::DomainPart::new(&service).map_or(true, |d| d.as_str() != service)
                || self.serves_domain(&service)
            {
                problem(format!("`{service}` is not a service domain of its own"));
            }
        }
        let subdomains = [
            (self.muc.enabled, "muc", &self.muc.subdomain),
            (self.proxy65.enabled, "proxy65", &self.proxy65.subdomain),
            (self.upload.enabled, "upload", &self.upload.subdomain),
        ];
        let on: Vec<_> = subdomains.iter().filter(|(enabled, ..)| *enabled).collect();
        for (i, (_, a, sub)) in on.iter().enumerate() {
            if let Some((_, b, _)) = on[..i].iter().find(|(_, _, other)| other == sub) {
                problem(format!("{b}.subdomain and {a}.subdomain must differ"));
            }
        }
        self.check_upload(problem);
        if self.stream_management.max_unacked == 0 {
            problem("stream_management.max_unacked must be at least 1".to_owned());
        }
    }

    /// `upload`.
    fn check_upload(&self, problem: &mut impl FnMut(String)) {
        let u = &self.upload;
        if u.max_file_bytes == 0 || u.quota_bytes < u.max_file_bytes {
            problem(format!(
                "upload.max_file_bytes ({}) must be at least 1 and at most upload.quota_bytes ({})",
                u.max_file_bytes, u.quota_bytes
            ));
        }
        if let Some(url) = &u.url {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(['?', '#', ' '])) {
                problem(format!(
                    "upload.url: `{url}` is not an http:// or https:// URL without query"
                ));
            }
        }
    }

    /// `cluster`.
    fn check_cluster(&self, problem: &mut impl FnMut(String)) {
        let c = &self.cluster;
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !c.enabled() {
            if c.node_id.is_some() {
                problem("cluster.node_id is set but cluster.nats_url is not".to_owned());
            }
            return;
        }
        match c.node_id.as_deref() {
            None => problem("cluster.node_id must be set with cluster.nats_url".to_owned()),
            Some(id) if !name_ok(id) => problem(format!(
                "cluster.node_id {id:?}: use letters, digits, - and _ (at most 64)"
            )),
            Some(_) => {}
        }
        if !c.subject_prefix.as_deref().is_none_or(name_ok) {
            problem("cluster.subject_prefix: use letters, digits, - and _ (at most 64)".to_owned());
        }
        let urls = c.nats_url.as_deref().unwrap_or("");
        if urls.split(',').any(|u| !u.trim().starts_with("nats://")) {
            problem(format!(
                "cluster.nats_url must list nats:// URLs (got {})",
                redact_nats_urls(urls)
            ));
        }
        if self.storage.backend != StorageBackend::Postgres {
            problem(
                "a cluster's nodes share their store: cluster needs storage.backend = \"postgres\""
                    .to_owned(),
            );
        }
        if self.federation.enabled && self.federation.dialback_secret.is_none() {
            problem(
                "a cluster's nodes answer for each other's dialback keys: set the same \
                 federation.dialback_secret on every node"
                    .to_owned(),
            );
        }
    }

    /// `federation`.
    fn check_api(&self, problem: &mut impl FnMut(String)) {
        if self.api.admin_token.as_ref().is_some_and(|s| s.len() < 32) {
            problem("api.admin_token must be at least 32 characters".to_owned());
        }
        if self.api.token_lifetime_days == 0 || self.api.session_idle_secs == 0 {
            problem(
                "api.token_lifetime_days and api.session_idle_secs must be positive".to_owned(),
            );
        }
    }

    fn check_federation(&self, problem: &mut impl FnMut(String)) {
        let f = &self.federation;
        if f.enabled && self.listen.s2s.is_empty() {
            problem("listen.s2s must list at least one address when federation is enabled".into());
        }
        for domain in f.peers.keys() {
            if jid::DomainPart::new(domain).map_or(true, |d| d.as_str() != domain) {
                problem(format!(
                    "federation.peers: `{domain}` is not a domain in canonical form"
                ));
            }
            if self.serves_domain(domain) {
                problem(format!(
                    "federation.peers: `{domain}` is one of our own domains"
                ));
            }
        }
        let canonical_peer = |key: &str, domain: &str, problem: &mut dyn FnMut(String)| {
            if jid::DomainPart::new(domain).map_or(true, |d| d.as_str() != domain) {
                problem(format!(
                    "{key}: `{domain}` is not a domain in canonical form"
                ));
            } else if self.serves_domain(domain) {
                problem(format!("{key}: `{domain}` is one of our own domains"));
            }
        };
        for domain in f.websocket_peers.keys() {
            canonical_peer("federation.websocket_peers", domain, problem);
        }
        if let Some(hub) = &f.hub {
            canonical_peer("federation.hub", hub, problem);
        }
        if self.role == Role::Hub && (!f.enabled || f.relay_for.is_empty()) {
            problem(
                "role = \"hub\" needs federation.enabled and the sites in federation.relay_for"
                    .to_owned(),
            );
        }
        for domain in &f.relay_for {
            if jid::DomainPart::new(domain).map_or(true, |d| d.as_str() != domain) {
                problem(format!(
                    "federation.relay_for: `{domain}` is not a domain in canonical form"
                ));
            }
        }
        for domain in f.pinned.keys() {
            canonical_peer("federation.pinned", domain, problem);
        }
        for domain in &f.trust_self_signed {
            canonical_peer("federation.trust_self_signed", domain, problem);
        }
        if f.dialback_secret.as_ref().is_some_and(|s| s.len() < 16) {
            problem("federation.dialback_secret must be at least 16 characters".to_owned());
        }
        let positive: [(&str, u64); 5] = [
            ("queue_lifetime_secs", f.queue_lifetime_secs),
            ("outbox_quota", f.outbox_quota.into()),
            ("retry_initial_secs", f.retry_initial_secs),
            ("retry_max_secs", f.retry_max_secs),
            ("probe_interval_secs", f.probe_interval_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                problem(format!("federation.{key} must be at least 1"));
            }
        }
        if f.retry_initial_secs > f.retry_max_secs {
            problem(format!(
                "federation.retry_initial_secs ({}) must not exceed federation.retry_max_secs ({})",
                f.retry_initial_secs, f.retry_max_secs
            ));
        }
    }

    /// The database file: `storage.path`, or `<data_dir>/outpost.db`.
    pub fn storage_path(&self) -> PathBuf {
        match &self.storage.path {
            Some(path) => path.clone(),
            None => self.data_dir.join("outpost.db"),
        }
    }

    /// The directory for the generated self-signed certificate: `<data_dir>/tls`.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    /// The names the server's certificate must carry: its domains and, on a hub, the
    /// domains of the sites whose users may log in there while their site is unreachable.
    pub fn certificate_names(&self) -> Vec<String> {
        let mut names = self.domains.clone();
        if self.role == Role::Hub {
            names.extend(self.federation.relay_for.iter().cloned());
        }
        names
    }

    /// Where the self-signed certificate and its key live when `tls.cert` and `tls.key` are
    /// unset: `<data_dir>/tls/cert.pem` and `<data_dir>/tls/key.pem`.
    pub fn self_signed_paths(&self) -> (PathBuf, PathBuf) {
        let dir = self.tls_dir();
        (dir.join("cert.pem"), dir.join("key.pem"))
    }

    /// Whether in-band registration is on. `registration.enabled` when set; off when unset,
    /// because only the binary knows whether it runs without a config file and resolves the
    /// zero-config default before handing the config over.
    pub fn registration_enabled(&self) -> bool {
        self.registration.enabled.unwrap_or(false)
    }

    /// The configuration with its secrets (the API's admin token, the dialback secret,
    /// the components' secrets) replaced by `"<redacted>"`, for showing it.
    pub fn redacted(&self) -> Config {
        const HIDDEN: &str = "<redacted>";
        let mut c = self.clone();
        if c.api.admin_token.is_some() {
            c.api.admin_token = Some(HIDDEN.to_owned());
        }
        if c.federation.dialback_secret.is_some() {
            c.federation.dialback_secret = Some(HIDDEN.to_owned());
        }
        for secret in c.components.values_mut() {
            HIDDEN.clone_into(secret);
        }
        c.storage.url = c.storage.url.as_deref().map(redact_url);
        c.cluster.nats_url = c.cluster.nats_url.as_deref().map(redact_nats_urls);
        c
    }

    /// Where the binary keeps the generated dialback secret when
    /// `federation.dialback_secret` is unset: `<data_dir>/dialback-secret`.
    pub fn dialback_secret_path(&self) -> PathBuf {
        self.data_dir.join("dialback-secret")
    }

    /// Where `outpost serve` publishes the state of its server-to-server links for
    /// `outpost admin links`: `<data_dir>/links.json`.
    pub fn links_status_path(&self) -> PathBuf {
        self.data_dir.join("links.json")
    }

    /// Whether `domain` (already normalised) is one of ours.
    pub fn serves_domain(&self, domain: &str) -> bool {
        is_one_of(&self.domains, domain)
    }

    /// The multi-user chat service of each served domain, as (service, domain), when on.
    pub fn muc_domains(&self) -> Vec<(String, String)> {
        if !self.muc.enabled {
            return Vec::new();
        }
        self.domains
            .iter()
            .map(|d| (format!("{}.{d}", self.muc.subdomain), d.clone()))
            .collect()
    }

    /// The bytestream proxy of each served domain, as (service, domain), when on.
    pub fn proxy65_domains(&self) -> Vec<(String, String)> {
        if !self.proxy65.enabled {
            return Vec::new();
        }
        self.domains
            .iter()
            .map(|d| (format!("{}.{d}", self.proxy65.subdomain), d.clone()))
            .collect()
    }

    /// The file upload service of each served domain, as (service, domain), when on.
    pub fn upload_domains(&self) -> Vec<(String, String)> {
        if !self.upload.enabled {
            return Vec::new();
        }
        self.domains
            .iter()
            .map(|d| (format!("{}.{d}", self.upload.subdomain), d.clone()))
            .collect()
    }

    /// Every service of every served domain (rooms, proxy, upload), as (service, domain).
    pub fn service_domains(&self) -> Vec<(String, String)> {
        let mut all = self.muc_domains();
        all.extend(self.proxy65_domains());
        all.extend(self.upload_domains());
        all
    }

    /// Every domain this server answers for: its users' and its services'. Servers that
    /// federate with it may address any of them.
    pub fn all_domains(&self) -> Vec<String> {
        let mut all = self.domains.clone();
        all.extend(
            self.service_domains()
                .into_iter()
                .map(|(service, _)| service),
        );
        all.extend(self.components.keys().cloned());
        all
    }
}

/// Whether `domain` is in `domains`: the one answer to "is this domain ours?", used by the
/// configuration and, at run time, by `delivery`. Domains are compared as strings, so both
/// must be in canonical form (see [`Config::validate`]).
pub(crate) fn is_one_of(domains: &[String], domain: &str) -> bool {
    domains.iter().any(|d| d == domain)
}

/// Lets a value that parses from a string and prints back to one be a configuration value
/// (`#[serde(try_from = "String", into = "String")]`), its parse error naming the value.
macro_rules! string_value {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = ValueError;

            fn try_from(s: String) -> Result<$t, ValueError> {
                s.parse()
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    };
}
pub(crate) use string_value;

/// A host (a name or an IP address) and a port, written `host:port` (`[v6]:port` for IPv6
/// literals), as in `federation.peers`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Why a configuration value does not parse; figment names the key it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` {expected}")]
pub struct ValueError {
    value: String,
    expected: &'static str,
}

impl ValueError {
    pub(crate) fn new(value: &str, expected: &'static str) -> ValueError {
        ValueError {
            value: value.to_owned(),
            expected,
        }
    }
}

impl FromStr for HostPort {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<HostPort, ValueError> {
        let bad = || ValueError::new(s, "is not of the form host:port");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> HostPort {
        HostPort {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

string_value!(HostPort);

/// A `wss://host[:port][/path]` URL, as in `federation.websocket_peers`: port 443 and path
/// `/` when left out. No user information, no `ws://`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WssUrl {
    host: String,
    port: u16,
    path: String,
}

impl WssUrl {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// `host:port`, bracketing an IPv6 literal, for the HTTP request.
    pub fn authority(&self) -> String {
        HostPort {
            host: self.host.clone(),
            port: self.port,
        }
        .to_string()
    }
}

impl FromStr for WssUrl {
    type Err = ValueError;

    fn from_str(url: &str) -> Result<WssUrl, ValueError> {
        let bad = || ValueError::new(url, "is not a wss://host[:port]/path URL");
        let rest = url.strip_prefix("wss://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if authority.contains('@') || path.contains(char::is_whitespace) {
            return Err(bad());
        }
        let (host, port) = match authority.parse::<HostPort>() {
            Ok(hp) => (hp.host, hp.port),
            // No port: the last colon, if any, belongs to an IPv6 literal in brackets.
            Err(_) if authority.starts_with('[') || !authority.contains(':') => {
                let host = authority
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(authority);
                if host.is_empty() || host.contains(' ') {
                    return Err(bad());
                }
                (host.to_owned(), 443)
            }
            Err(_) => return Err(bad()),
        };
        Ok(WssUrl {
            host,
            port,
            path: path.to_owned(),
        })
    }
}

impl fmt::Display for WssUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wss://{}{}", self.authority(), self.path)
    }
}

string_value!(WssUrl);

/// Whether two listeners would fight over the same port. Port 0 never clashes: each bind
/// gets its own free port. An unspecified address (`0.0.0.0`, `::`) takes the port on every
/// address of its family.
fn sockets_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

/// A database URL without its password: `postgres://user:<redacted>@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:<redacted>@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// NATS URLs without their credentials (a user and password, or a token, before `@`).
pub fn redact_nats_urls(urls: &str) -> String {
    let one = |url: &str| match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://<redacted>@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    };
    urls.split(',').map(one).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(config: &Config) -> Vec<String> {
        config
            .validate()
            .err()
            .map(|e| e.problems().to_vec())
            .unwrap_or_default()
    }

    #[test]
    fn default_is_valid() {
        assert_eq!(problems(&Config::default()), Vec::<String>::new());
    }

    #[test]
    fn default_paths_live_in_data_dir() {
        let config = Config::default();
        assert_eq!(
            config.storage_path(),
            PathBuf::from("./outpost-data/outpost.db")
        );
        assert_eq!(
            config.self_signed_paths(),
            (
                PathBuf::from("./outpost-data/tls/cert.pem"),
                PathBuf::from("./outpost-data/tls/key.pem")
            )
        );
        assert!(!config.registration_enabled());
    }

    #[test]
    fn bad_domains_are_named() {
        let mut config = Config {
            domains: vec![
                "Example.COM".into(),
                "".into(),
                "a.example".into(),
                "a.example".into(),
            ],
            ..Config::default()
        };
        let found = problems(&config);
        assert!(
            found.iter().any(|p| p.contains("`example.com`")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.contains("`` is not a valid domain")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.contains("listed twice")),
            "{found:?}"
        );

        config.domains.clear();
        assert!(
            problems(&config)
                .iter()
                .any(|p| p.starts_with("domains must list"))
        );
    }

    #[test]
    fn listeners_must_exist_and_not_clash() {
        let mut config = Config::default();
        config.listen.c2s.clear();
        config.listen.c2s_tls.clear();
        assert!(problems(&config)[0].starts_with("listen:"));

        config.listen.c2s = vec!["0.0.0.0:5222".parse().unwrap()];
        config.listen.c2s_tls = vec!["127.0.0.1:5222".parse().unwrap()];
        assert!(problems(&config)[0].starts_with("listen.c2s_tls: 127.0.0.1:5222 clashes"));

        // Port 0 is how tests ask for free ports, possibly many at once.
        config.listen.c2s = vec!["127.0.0.1:0".parse().unwrap()];
        config.listen.c2s_tls = vec!["127.0.0.1:0".parse().unwrap()];
        assert_eq!(problems(&config), Vec::<String>::new());

        config.listen.c2s_tls = vec![
            "[::]:5222".parse().unwrap(),
            "127.0.0.1:5223".parse().unwrap(),
        ];
        assert_eq!(problems(&config), Vec::<String>::new());
    }

    #[test]
    fn cert_and_key_come_together() {
        let mut config = Config::default();
        config.tls.cert = Some("cert.pem".into());
        assert_eq!(problems(&config), ["tls.key must be set when tls.cert is"]);
        config.tls.key = Some("key.pem".into());
        assert_eq!(problems(&config), Vec::<String>::new());
        config.tls.cert = None;
        assert_eq!(problems(&config), ["tls.cert must be set when tls.key is"]);
    }

    #[test]
    fn limits_are_checked() {
        let mut config = Config::default();
        config.limits.max_stanza_bytes = 4096;
        config.limits.max_depth = 2;
        config.limits.offline_quota = 0;
        config.auth.scram_iterations = 0;
        let found = problems(&config);
        assert_eq!(
            found,
            [
                "auth.scram_iterations must be at least 1",
                "limits.max_stanza_bytes must be at least 10000 (RFC 6120 §13.12)",
                "limits.max_depth must be between 8 and 1024",
                "limits.offline_quota must be at least 1",
            ]
        );

        let mut config = Config::default();
        config.limits.ping_interval_secs = 600;
        assert_eq!(
            problems(&config),
            ["limits.ping_interval_secs (600) must be less than limits.idle_timeout_secs (600)"]
        );
    }

    #[test]
    fn federation_is_off_and_valid_by_default_and_checked_when_on() {
        let mut config = Config::default();
        assert!(!config.federation.enabled);
        // The s2s listener is not bound while federation is off, so it cannot clash.
        config.listen.s2s = vec!["127.0.0.1:5222".parse().unwrap()];
        assert_eq!(problems(&config), Vec::<String>::new());
        config.federation.enabled = true;
        assert_eq!(
            problems(&config),
            ["listen.s2s: 127.0.0.1:5222 clashes with 127.0.0.1:5222 in listen.c2s"]
        );
        config.listen.s2s.clear();
        let addr = |s: &str| s.parse::<HostPort>().expect("host:port");
        config
            .federation
            .peers
            .insert("B.example".into(), addr("b:5269"));
        config
            .federation
            .peers
            .insert("c.example".into(), addr("c:5269"));
        config
            .federation
            .peers
            .insert("localhost".into(), addr("[::1]:5269"));
        config.federation.retry_initial_secs = 600;
        config.federation.outbox_quota = 0;
        config.federation.dialback_secret = Some("short".into());
        assert_eq!(
            problems(&config),
            [
                "listen.s2s must list at least one address when federation is enabled",
                "federation.peers: `B.example` is not a domain in canonical form",
                "federation.peers: `localhost` is one of our own domains",
                "federation.dialback_secret must be at least 16 characters",
                "federation.outbox_quota must be at least 1",
                "federation.retry_initial_secs (600) must not exceed federation.retry_max_secs (300)",
            ]
        );
    }

    #[test]
    fn api_settings_are_checked() {
        let mut config = Config::default();
        config.api.admin_token = Some("too short".into());
        config.api.session_idle_secs = 0;
        assert_eq!(
            problems(&config),
            [
                "api.admin_token must be at least 32 characters",
                "api.token_lifetime_days and api.session_idle_secs must be positive",
            ]
        );
        config.api.admin_token = Some("a".repeat(32));
        config.api.session_idle_secs = 1;
        assert!(problems(&config).is_empty());
    }

    #[test]
    fn host_ports_parse_and_print() {
        let hp: HostPort = "[::1]:5269".parse().expect("v6");
        assert_eq!((hp.host(), hp.port()), ("::1", 5269));
        assert_eq!(hp.to_string(), "[::1]:5269");
        assert_eq!(
            "b.example:0".parse::<HostPort>().unwrap_err().to_string(),
            "`b.example:0` is not of the form host:port"
        );
        assert!("nope".parse::<HostPort>().is_err());
        assert!(" :5269".parse::<HostPort>().is_err());
    }

    #[test]
    fn wss_urls() {
        let parse = |u: &str| {
            u.parse::<WssUrl>()
                .ok()
                .map(|w| (w.host().to_owned(), w.port(), w.path().to_owned()))
        };
        assert_eq!(
            parse("wss://b.example:8443/xmpp-websocket"),
            Some(("b.example".into(), 8443, "/xmpp-websocket".into()))
        );
        assert_eq!(
            parse("wss://b.example"),
            Some(("b.example".into(), 443, "/".into()))
        );
        assert_eq!(
            parse("wss://[::1]:9000/x"),
            Some(("::1".into(), 9000, "/x".into()))
        );
        assert_eq!(
            parse("wss://[::1]/x"),
            Some(("::1".into(), 443, "/x".into()))
        );
        assert_eq!(parse("ws://b.example/"), None);
        assert_eq!(parse("wss:///x"), None);
        assert_eq!(parse("wss://user@b.example/"), None);
        assert_eq!(parse("wss://b.example:0/"), None);
        let url: WssUrl = "wss://[::1]:9000/x".parse().expect("url");
        assert_eq!(url.to_string(), "wss://[::1]:9000/x");
    }

    #[test]
    fn the_postgres_backend_needs_a_postgres_url_and_hides_its_password() {
        let mut config = Config::default();
        config.storage.backend = StorageBackend::Postgres;
        assert!(problems(&config)[0].contains("storage.url must be set"));
        config.storage.url = Some("mysql://u:hunter2@db/x".into());
        let found = problems(&config);
        assert!(
            found[0].contains("must start with postgres://"),
            "{found:?}"
        );
        assert!(!found[0].contains("hunter2"), "{found:?}");
        config.storage.url = Some("postgres://outpost:hunter2@db:5432/outpost".into());
        assert_eq!(problems(&config), Vec::<String>::new());
        assert_eq!(
            config.redacted().storage.url.as_deref(),
            Some("postgres://outpost:<redacted>@db:5432/outpost")
        );
        config.storage.backend = StorageBackend::Sqlite;
        assert!(problems(&config)[0].contains("storage.url is for backend"));
    }

    #[test]
    fn a_cluster_node_needs_an_id_postgres_and_hides_nats_credentials() {
        let mut config = Config::default();
        config.cluster.node_id = Some("a".into());
        assert!(problems(&config)[0].contains("nats_url is not"));
        config.cluster.nats_url = Some("nats://user:pw@n1:4222,nats://tok@n2:4222".into());
        config.cluster.node_id = Some("a b".into());
        let found = problems(&config);
        assert!(found[0].contains("cluster.node_id \"a b\""), "{found:?}");
        assert!(
            found[1].contains("storage.backend = \"postgres\""),
            "{found:?}"
        );
        config.cluster.node_id = Some("node-1".into());
        config.storage.backend = StorageBackend::Postgres;
        config.storage.url = Some("postgres://o@db/o".into());
        assert!(config.validate().is_ok(), "{:?}", problems(&config));
        assert_eq!(
            config.redacted().cluster.nats_url.as_deref(),
            Some("nats://<redacted>@n1:4222,nats://<redacted>@n2:4222")
        );
        config.federation.enabled = true;
        assert!(problems(&config)[0].contains("same federation.dialback_secret"));
        config.federation.dialback_secret = Some("a-secret-all-nodes-share".into());
        assert!(config.validate().is_ok(), "{:?}", problems(&config));
        config.cluster.nats_url = Some("http://n1".into());
        assert!(problems(&config)[0].contains("nats:// URLs"));
    }

    #[test]
    fn storage_path_overrides_data_dir() {
        let mut config = Config::default();
        config.storage.path = Some("/var/lib/outpost/db.sqlite".into());
        assert_eq!(
            config.storage_path(),
            PathBuf::from("/var/lib/outpost/db.sqlite")
        );
    }
}
