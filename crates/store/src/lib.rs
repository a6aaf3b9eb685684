//! Outpost's storage, at the level of the messaging domain: accounts and their SCRAM
//! verifiers, rosters with versions, pending subscription requests, the offline queue,
//! vCards and block lists, the message archive and its preferences, the server-to-server
//! outbox, and the stanza ids already received from other servers.
//!
//! The crate knows nothing of XML: stanzas and vCards are opaque strings the server hands
//! in and gets back. Addresses are bare JIDs as normalised strings (`user@domain`), and
//! domains are normalised strings too. It reads no clock either: methods that need the
//! time take it as unix milliseconds.
//!
//! Backends: [`MemoryStore`] (tests, ephemeral runs), [`SqliteStore`] (the default,
//! durable) and [`PgStore`] (durable, on a PostgreSQL server). Every
//! backend passes the same battery in `tests/it/battery.rs`.
//!
//! The writes on the message path (archive rows, offline messages, outbox entries) can be
//! committed many at a time ([`Store::write_batch`]): the server gathers what all its
//! sessions have to store and makes it durable with one transaction (group commit).
//!
//! What is deliberately not here: the state of server-to-server links (up, retrying, the
//! path in use), which the server keeps in memory and rebuilds after a restart from what
//! the outbox holds.

mod copy;
mod memory;
mod postgres;
mod replication;
mod rows;
mod sqlite;

pub use copy::{CopyReport, copy_store};
pub use memory::MemoryStore;
pub use postgres::PgStore;
pub use replication::{ReplBatch, ReplKind, ReplLog, ReplMode, ReplOrigin, ReplRecord};
pub use sqlite::SqliteStore;

use async_trait::async_trait;

/// A bare JID in its normalised string form, `user@domain`.
pub type BareJid = str;

/// The SCRAM verifier for one hash function (RFC 5802 §3). Never the password, never the
/// salted password: only what a server needs to check a proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramKeys {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// The verifiers an account holds, one per supported hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub sha1: ScramKeys,
    pub sha256: ScramKeys,
}

/// Subscription state of a roster item (RFC 6121 §2.1.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subscription {
    None,
    To,
    From,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Subscription::None,
            "to" => Subscription::To,
            "from" => Subscription::From,
            "both" => Subscription::Both,
            _ => return None,
        })
    }
}

/// A node of a cluster, as the shared store registers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    pub node_id: String,
    /// Which start of the node this is (random at each start).
    pub epoch: String,
    /// Where the node is reached, for operators.
    pub address: String,
    pub started_ms: i64,
    /// Until when the registration holds unless renewed (Unix milliseconds).
    pub lease_until_ms: i64,
    /// The node's sessions at its last renewal.
    pub sessions: u64,
}

/// A lease on something one node of a cluster owns at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterLease {
    pub name: String,
    pub node_id: String,
    pub epoch: String,
    pub until_ms: i64,
}

/// One contact in a user's roster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact's bare JID.
    pub jid: String,
    pub name: Option<String>,
    pub subscription: Subscription,
    /// `ask='subscribe'`: the user asked for the contact's presence and awaits an answer.
    pub ask: bool,
    /// Pre-approved subscription (RFC 6121 §3.4).
    pub approved: bool,
    /// Group names, sorted and without duplicates.
    pub groups: Vec<String>,
}

impl RosterItem {
    pub fn new(jid: impl Into<String>) -> Self {
        RosterItem {
            jid: jid.into(),
            name: None,
            subscription: Subscription::None,
            ask: false,
            approved: false,
            groups: Vec::new(),
        }
    }
}

/// A user's roster as stored, with its version (XEP-0237). Versions only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster {
    pub version: u64,
    pub items: Vec<RosterItem>,
}

/// A subscription request waiting for its addressee (RFC 6121 §3.1.3): kept until the user
/// answers it, and re-sent at each login until then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionRequest {
    /// Bare JID of the requester.
    pub from: String,
    /// The request stanza as serialised by the server, so it can be re-sent as it came.
    pub stanza: String,
}

/// A stanza held for an offline user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineMessage {
    /// Increases with every message stored for any user; delivery order is id order.
    pub id: i64,
    /// The serialised stanza, including its XEP-0203 delay stamp.
    pub stanza: String,
}

/// A stanza to queue on a link (see [`BatchWrite::Outbox`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxPush {
    pub local: String,
    pub remote: String,
    pub stanza: String,
}

/// A stanza queued for a remote domain (see [`Store::outbox_push`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Increases with every stanza queued for any link; sending order is id order.
    pub id: i64,
    /// Our domain the stanza is sent from: one end of the server-to-server stream.
    pub local_domain: String,
    /// The peer's domain: the other end.
    pub remote_domain: String,
    /// The serialised stanza, exactly as it is to be sent.
    pub stanza: String,
    /// When it was queued, in unix milliseconds: its lifetime counts from here.
    pub queued_at_ms: i64,
}

/// What the outbox holds for one link (a local domain and a remote domain), for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxStats {
    pub local_domain: String,
    pub remote_domain: String,
    /// Stanzas queued and not yet acknowledged by the peer.
    pub queued: u64,
    /// When the oldest of them was queued; `None` when nothing is queued.
    pub oldest_queued_at_ms: Option<i64>,
    /// When the peer last acknowledged a queued stanza; `None` if it never did.
    pub last_delivery_ms: Option<i64>,
}

/// A message for the archive (XEP-0313). One entry serves the archives of both ends: a
/// message between two local users is stored once and appears in both. For a group chat
/// message, `recipient` is the room and `sender` the occupant JID (`room@service/nick`), and
/// only the room's archive holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// Chosen by the server, unique, and growing in the order messages were received; the
    /// store orders archives by it. It is the message's XEP-0359 stanza-id in both archives.
    pub id: i64,
    pub sender: String,
    pub recipient: String,
    /// Whether the sender's archive holds it (the sender is a local user who archives it).
    pub in_sender: bool,
    /// Whether the recipient's archive holds it.
    pub in_recipient: bool,
    /// The serialised stanza as it was routed.
    pub stanza: String,
}

/// A message read back from an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedMessage {
    pub id: i64,
    pub sender: String,
    pub recipient: String,
    pub stanza: String,
}

/// Which messages of one archive to read (see [`Store::archive_page`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveQuery<'a> {
    /// Whose archive: a user's bare JID or a room's.
    pub owner: &'a str,
    /// Only messages exchanged with this address (the other end's bare JID, or an occupant
    /// JID in a room's archive).
    pub with: Option<&'a str>,
    /// Only ids above this one.
    pub after: Option<i64>,
    /// Only ids below this one.
    pub before: Option<i64>,
    /// At most this many.
    pub limit: u32,
    /// Take the newest of the range first (paging backwards from `before`); otherwise the
    /// oldest first.
    pub newest_first: bool,
}

/// Whose messages a user archives by default (XEP-0441 §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveDefault {
    Always,
    Never,
    /// Only those exchanged with contacts in the user's roster.
    Roster,
}

impl ArchiveDefault {
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveDefault::Always => "always",
            ArchiveDefault::Never => "never",
            ArchiveDefault::Roster => "roster",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "always" => ArchiveDefault::Always,
            "never" => ArchiveDefault::Never,
            "roster" => ArchiveDefault::Roster,
            _ => return None,
        })
    }
}

/// A user's archiving preferences (XEP-0441): the default, and the bare JIDs always or
/// never archived whatever the default says. Lists are sorted and without duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivePrefs {
    pub default: ArchiveDefault,
    pub always: Vec<String>,
    pub never: Vec<String>,
}

/// Who may read a personal eventing node's items and hear of new ones (XEP-0060 §4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessModel {
    /// Contacts subscribed to the owner's presence (the PEP default, XEP-0163 §3).
    Presence,
    /// Anyone.
    Open,
    /// Contacts in the owner's roster.
    Roster,
    /// The owner only.
    Whitelist,
}

impl AccessModel {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessModel::Presence => "presence",
            AccessModel::Open => "open",
            AccessModel::Roster => "roster",
            AccessModel::Whitelist => "whitelist",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "presence" => AccessModel::Presence,
            "open" => AccessModel::Open,
            "roster" => AccessModel::Roster,
            "whitelist" => AccessModel::Whitelist,
            _ => return None,
        })
    }
}

/// When a node's last item is sent unasked (XEP-0060 `pubsub#send_last_published_item`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendLast {
    OnSubAndPresence,
    OnSub,
    Never,
}

impl SendLast {
    pub fn as_str(self) -> &'static str {
        match self {
            SendLast::OnSubAndPresence => "on_sub_and_presence",
            SendLast::OnSub => "on_sub",
            SendLast::Never => "never",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "on_sub_and_presence" => SendLast::OnSubAndPresence,
            "on_sub" => SendLast::OnSub,
            "never" => SendLast::Never,
            _ => return None,
        })
    }
}

/// The configuration of a personal eventing node (XEP-0163, XEP-0060 §16.4.3), as far as
/// it changes what the server does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub access: AccessModel,
    /// Items kept; publishing more removes the oldest. At least 1.
    pub max_items: u32,
    pub send_last: SendLast,
    /// Whether subscribers hear of retracted items.
    pub notify_retract: bool,
    pub title: Option<String>,
}

/// An item of a personal eventing node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PepItem {
    pub id: String,
    /// The payload element, serialised.
    pub payload: String,
}

/// A multi-user chat room as stored (XEP-0045): its configuration as key-value pairs and
/// its users' affiliations (`owner`, `admin`, `member`, `outcast`), both sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRoom {
    pub jid: String,
    pub config: Vec<(String, String)>,
    pub affiliations: Vec<(String, String)>,
}

/// Where a user's clients want to be woken (XEP-0357): an app server's JID and node, and
/// the publish options (serialised) to send along.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushRegistration {
    pub service: String,
    pub node: String,
    pub options: String,
}

/// An HTTP upload slot (XEP-0363): a file a user's client may PUT once, and anyone with
/// the URL may then GET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadSlot {
    /// Unguessable: the GET URL's secret.
    pub slot: String,
    /// The account that asked for it (bare JID).
    pub owner: String,
    pub filename: String,
    /// Announced size in bytes; the PUT must send exactly this many.
    pub size: u64,
    pub content_type: Option<String>,
    /// SHA-256 of the secret the PUT must carry.
    pub put_token: Vec<u8>,
    pub created_ms: i64,
    /// When the whole file was stored; `None` while the slot waits for its PUT.
    pub completed_ms: Option<i64>,
}

/// A bearer token of the HTTP API, as stored: its hash, never the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiToken {
    /// Names the token in listings and revocations (hex of the hash's first bytes).
    pub id: String,
    /// SHA-256 of the token.
    pub hash: Vec<u8>,
    /// The account (bare JID).
    pub owner: String,
    /// What the user called the device or script that holds it.
    pub label: Option<String>,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// One durable write on the message path, for [`Store::write_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchWrite {
    /// A message into the archive; its result is its id.
    Archive(ArchiveEntry),
    /// A message into a user's offline queue, as [`Store::push_offline`] would.
    Offline { user: String, stanza: String },
    /// A stanza into a link's outbox, as [`Store::outbox_push`] would.
    Outbox(OutboxPush),
    /// A received stanza id, as [`Store::seen_stanza_id`] records it; its result is 0.
    /// Written with the message it came on, so that the two become durable together (or
    /// the id in a later commit, which can only make a retry a duplicate).
    Seen { origin: String, id: String },
}

/// The queue limits [`Store::write_batch`] enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Messages in one user's offline queue.
    pub offline: u32,
    /// Stanzas queued on one link.
    pub outbox: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("account already exists")]
    AccountExists,
    #[error("no such account")]
    NoSuchAccount,
    /// The queue (a user's offline queue or an outbox link) already holds `quota` stanzas.
    #[error("queue quota of {quota} messages reached")]
    QuotaExceeded { quota: u32 },
    #[error("storage backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{0} is not supported by this storage backend")]
    Unsupported(&'static str),
    #[error("{path} exists already")]
    Exists { path: std::path::PathBuf },
    /// A personal eventing node that does not exist.
    #[error("no such node")]
    NoSuchNode,
    /// The user's uploads already take (or with this one would take) more than `quota`.
    #[error("upload quota of {quota} bytes reached")]
    UploadQuotaExceeded { quota: u64 },
    /// Data from elsewhere (a replication record) that cannot be stored as it is.
    #[error("refused: {0}")]
    Rejected(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything the server keeps across restarts. Each method is one transaction: when it
/// returns `Ok`, the change is durable (for the SQLite backend: committed to the WAL with
/// `synchronous=FULL`; for PostgreSQL: committed with `synchronous_commit=on`).
///
/// Methods taking a user's bare JID for an account that does not exist return
/// `NoSuchAccount` where they write, and empty results where they read.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- accounts ----

    /// Creates an account; `AccountExists` if the JID is taken.
    async fn create_account(&self, user: &BareJid, creds: &Credentials) -> Result<()>;
    async fn credentials(&self, user: &BareJid) -> Result<Option<Credentials>>;
    /// Replaces the verifiers (password change), revoking the account's API tokens.
    /// `NoSuchAccount` if absent.
    async fn set_credentials(&self, user: &BareJid, creds: &Credentials) -> Result<()>;
    /// Removes the account and everything it owns: roster, requests it received, offline
    /// messages, vCard, block list, personal eventing nodes and their subscriptions,
    /// private XML, push
    /// registrations, archive
    /// preferences and its side of the archive
    /// (messages it exchanged with a local user stay in that user's archive).
    /// `NoSuchAccount` if absent.
    async fn remove_account(&self, user: &BareJid) -> Result<()>;
    /// All account JIDs, sorted.
    async fn list_accounts(&self) -> Result<Vec<String>>;
    async fn account_exists(&self, user: &BareJid) -> Result<bool>;

    // ---- rosters (RFC 6121 §2, XEP-0237) ----

    async fn roster(&self, user: &BareJid) -> Result<Roster>;
    async fn roster_item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<RosterItem>>;
    /// Inserts or replaces the item for `item.jid`; returns the roster's new version.
    async fn put_roster_item(&self, user: &BareJid, item: &RosterItem) -> Result<u64>;
    /// Removes the item if present; returns the new version, or `None` if there was none.
    async fn remove_roster_item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<u64>>;

    // ---- subscription requests (RFC 6121 §3.1.3) ----

    /// Stores or replaces the request from `req.from` to `user`.
    async fn put_subscription_request(
        &self,
        user: &BareJid,
        req: &SubscriptionRequest,
    ) -> Result<()>;
    async fn remove_subscription_request(&self, user: &BareJid, from: &BareJid) -> Result<()>;
    /// Pending requests, oldest first.
    async fn subscription_requests(&self, user: &BareJid) -> Result<Vec<SubscriptionRequest>>;

    // ---- offline messages (XEP-0160) ----

    /// Appends a stanza to the user's queue if it holds fewer than `quota` messages; returns
    /// its id, or `QuotaExceeded`.
    async fn push_offline(&self, user: &BareJid, stanza: &str, quota: u32) -> Result<i64>;
    /// Up to `limit` messages, oldest first.
    async fn offline(&self, user: &BareJid, limit: u32) -> Result<Vec<OfflineMessage>>;
    /// Deletes the user's messages with ids `<= up_to`, after they were written to a session.
    async fn delete_offline(&self, user: &BareJid, up_to: i64) -> Result<()>;
    async fn count_offline(&self, user: &BareJid) -> Result<u64>;

    // ---- the message archive (XEP-0313, XEP-0441) ----

    /// Up to `q.limit` messages of `q.owner`'s archive within the range, oldest first, or
    /// newest first with `q.newest_first`.
    async fn archive_page(&self, q: &ArchiveQuery<'_>) -> Result<Vec<ArchivedMessage>>;
    /// Whether `owner`'s archive holds the message `id` (a paging cursor must name one).
    async fn archive_has(&self, owner: &str, id: i64) -> Result<bool>;
    /// The ids of the oldest and the newest message of `owner`'s archive.
    async fn archive_bounds(&self, owner: &str) -> Result<Option<(i64, i64)>>;
    /// The highest id ever archived, or 0: the server's ids go on from there.
    async fn archive_last_id(&self) -> Result<i64>;
    /// Empties `owner`'s archive (a room's, or a user's without removing the account);
    /// returns how many messages left it.
    async fn archive_clear(&self, owner: &str) -> Result<u64>;
    /// Removes up to `limit` messages, from every archive, with ids below `before_id` (the
    /// retention period ended); returns how many. Call it until it returns fewer.
    async fn archive_expire(&self, before_id: i64, limit: u32) -> Result<u64>;
    /// The user's archiving preferences; `None` when never set.
    async fn archive_prefs(&self, user: &BareJid) -> Result<Option<ArchivePrefs>>;
    async fn set_archive_prefs(&self, user: &BareJid, prefs: &ArchivePrefs) -> Result<()>;
    /// Every user's preferences that were ever set, so that the server can keep them at hand.
    async fn all_archive_prefs(&self) -> Result<Vec<(String, ArchivePrefs)>>;

    // ---- group commit ----

    /// Performs several writes of the message path, each as its own method would, but in
    /// one transaction: one durable write for the lot. Returns one result per write, in
    /// order; a write over its queue's quota (`QuotaExceeded`) or for an offline queue of an
    /// account that does not exist (`NoSuchAccount`) fails alone and the others are still
    /// made. An `Err` for the whole call means none was.
    async fn write_batch(
        &self,
        writes: &[BatchWrite],
        now_ms: i64,
        quotas: Quotas,
    ) -> Result<Vec<Result<i64>>>;

    // ---- personal eventing (XEP-0163) and private storage (XEP-0049) ----
    //
    // A node belongs to an account; items keep the order they were last published in.
    // Writes are single transactions outside the group commit: publishing is rare.

    async fn pep_node(&self, owner: &BareJid, node: &str) -> Result<Option<NodeConfig>>;
    /// Every node of the account, sorted by name.
    async fn pep_nodes(&self, owner: &BareJid) -> Result<Vec<(String, NodeConfig)>>;
    /// Creates the node, or replaces its configuration; items beyond the new `max_items`
    /// go, oldest first. `NoSuchAccount` if absent.
    async fn pep_configure(&self, owner: &BareJid, node: &str, config: &NodeConfig) -> Result<()>;
    /// Removes the node and its items; whether it existed.
    async fn pep_delete_node(&self, owner: &BareJid, node: &str) -> Result<bool>;
    /// Stores an item as the newest of the node, replacing one with the same id, and drops
    /// the oldest beyond `max_items`. `NoSuchNode` if the node does not exist.
    async fn pep_publish(&self, owner: &BareJid, node: &str, item: &PepItem) -> Result<()>;
    /// Up to `limit` items, newest first (all without a limit).
    async fn pep_items(
        &self,
        owner: &BareJid,
        node: &str,
        limit: Option<u32>,
    ) -> Result<Vec<PepItem>>;
    async fn pep_item(&self, owner: &BareJid, node: &str, id: &str) -> Result<Option<PepItem>>;
    /// Removes an item; whether it was there.
    async fn pep_retract(&self, owner: &BareJid, node: &str, id: &str) -> Result<bool>;
    /// Removes every item of the node, keeping the node.
    async fn pep_purge(&self, owner: &BareJid, node: &str) -> Result<()>;
    /// Subscribes `jid` to the node (again: no change). `NoSuchNode` if absent. Deleting
    /// the node ends its subscriptions.
    async fn pep_subscribe(&self, owner: &BareJid, node: &str, jid: &str) -> Result<()>;
    /// Ends a subscription; whether there was one.
    async fn pep_unsubscribe(&self, owner: &BareJid, node: &str, jid: &str) -> Result<bool>;
    /// Every (node, subscriber) of the account's nodes, sorted.
    async fn pep_subscriptions(&self, owner: &BareJid) -> Result<Vec<(String, String)>>;
    /// The account's private XML stored under a namespace (XEP-0049).
    async fn private_xml(&self, owner: &BareJid, ns: &str) -> Result<Option<String>>;
    async fn set_private_xml(&self, owner: &BareJid, ns: &str, xml: &str) -> Result<()>;
    /// All of the account's private XML, (namespace, document), sorted by namespace (for
    /// copying a store).
    async fn private_xml_all(&self, owner: &BareJid) -> Result<Vec<(String, String)>>;

    // ---- multi-user chat rooms (XEP-0045) ----

    /// Every stored room, sorted by JID.
    async fn muc_rooms(&self) -> Result<Vec<StoredRoom>>;
    /// One stored room.
    async fn muc_room(&self, room: &str) -> Result<Option<StoredRoom>> {
        Ok(self.muc_rooms().await?.into_iter().find(|r| r.jid == room))
    }
    /// Stores a room's configuration, creating the room if needed (`now_ms` is when).
    async fn muc_save_room(
        &self,
        room: &str,
        config: &[(String, String)],
        now_ms: i64,
    ) -> Result<()>;
    /// Forgets a room and its affiliations (its archive is the caller's to clear).
    async fn muc_delete_room(&self, room: &str) -> Result<()>;
    /// Sets (or with `None` removes) a user's affiliation with a room, creating the room's
    /// record if needed.
    async fn muc_set_affiliation(
        &self,
        room: &str,
        jid: &str,
        affiliation: Option<&str>,
        now_ms: i64,
    ) -> Result<()>;

    // ---- push notifications (XEP-0357) ----

    /// Every user's registrations, sorted by user, service and node.
    async fn push_registrations(&self) -> Result<Vec<(String, PushRegistration)>>;
    /// Adds or replaces (same service and node) a registration. `NoSuchAccount` if absent.
    async fn add_push(&self, user: &BareJid, reg: &PushRegistration) -> Result<()>;
    /// Removes the user's registrations with this service (one node, or all of them);
    /// returns how many went.
    async fn remove_push(&self, user: &BareJid, service: &str, node: Option<&str>) -> Result<u64>;

    // ---- HTTP upload slots (XEP-0363) ----

    /// Stores a new slot if the owner's slots (pending and completed) and this one stay
    /// within `quota` bytes; `UploadQuotaExceeded` otherwise.
    async fn upload_reserve(&self, slot: &UploadSlot, quota: u64) -> Result<()>;
    async fn upload_slot(&self, slot: &str) -> Result<Option<UploadSlot>>;
    /// Every slot, sorted by slot (for copying a store).
    async fn upload_slots_all(&self) -> Result<Vec<UploadSlot>>;
    /// Marks a pending slot's file stored; false if there is no such pending slot.
    async fn upload_complete(&self, slot: &str, now_ms: i64) -> Result<bool>;
    /// Up to `limit` slots that have had their time, oldest first: pending ones created
    /// before `pending_before_ms`, completed ones created before `completed_before_ms`.
    async fn uploads_expired(
        &self,
        pending_before_ms: i64,
        completed_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<UploadSlot>>;
    /// Forgets a slot; whether it existed.
    async fn upload_remove(&self, slot: &str) -> Result<bool>;

    // ---- bearer tokens of the HTTP API ----

    /// Stores a new token. Fails with `NoSuchAccount` when its owner does not exist.
    async fn token_add(&self, token: &ApiToken) -> Result<()>;
    /// The token with this hash, expired or not (the caller decides).
    async fn token_by_hash(&self, hash: &[u8]) -> Result<Option<ApiToken>>;
    /// The account's tokens, oldest first.
    async fn tokens_of(&self, owner: &str) -> Result<Vec<ApiToken>>;
    /// Revokes one of the account's tokens; whether it existed.
    async fn token_remove(&self, owner: &str, id: &str) -> Result<bool>;
    /// Revokes every token of the account; how many went.
    async fn tokens_remove_all(&self, owner: &str) -> Result<u64>;
    /// Forgets tokens that expired before `now_ms`; how many went.
    async fn tokens_expire(&self, now_ms: i64) -> Result<u64>;

    // ---- vCard (XEP-0054) ----

    async fn vcard(&self, user: &BareJid) -> Result<Option<String>>;
    async fn set_vcard(&self, user: &BareJid, vcard: &str) -> Result<()>;

    // ---- blocking (XEP-0191) ----

    /// Blocked JIDs (any JID form, as given by the user), sorted.
    async fn blocklist(&self, user: &BareJid) -> Result<Vec<String>>;
    async fn block(&self, user: &BareJid, jids: &[String]) -> Result<()>;
    /// Unblocks the given JIDs, or all when `jids` is empty.
    async fn unblock(&self, user: &BareJid, jids: &[String]) -> Result<()>;

    // ---- server-to-server outbox ----
    //
    // A stanza for a remote domain is queued here before it counts as accepted, sent in id
    // order on the stream from `local` to `remote`, and removed only when the peer has
    // acknowledged it (XEP-0198 §4) or its lifetime has ended. The queue is per link, the
    // pair of domains at the two ends of a server-to-server stream, because an
    // acknowledgement on one stream says nothing of stanzas another stream carried. Entries
    // belong to no account: removing the sender's account leaves them queued.

    /// Appends a stanza to the queue of the link from `local` to `remote` if it holds fewer
    /// than `quota` stanzas; returns its id, or `QuotaExceeded`. `now_ms` is recorded as the
    /// time it was queued. Ids grow across all links and are never reused, even after every
    /// queue was emptied, so "acknowledged up to id N" never covers a later stanza.
    async fn outbox_push(
        &self,
        local: &str,
        remote: &str,
        stanza: &str,
        now_ms: i64,
        quota: u32,
    ) -> Result<i64>;
    /// Up to `limit` stanzas queued on the link, oldest (lowest id) first, starting after
    /// `after_id` if given: a stream resumes with the stanzas after the last one it wrote.
    /// Reading does not consume.
    async fn outbox_peek(
        &self,
        local: &str,
        remote: &str,
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>>;
    /// Removes the link's stanzas with ids `<= up_to_id`, once the peer acknowledged them;
    /// returns how many went. If any did, `now_ms` becomes the link's last delivery (it
    /// never goes back, even if the clock does). Other links are untouched, whatever their
    /// ids.
    async fn outbox_ack(
        &self,
        local: &str,
        remote: &str,
        up_to_id: i64,
        now_ms: i64,
    ) -> Result<u64>;
    /// Removes and returns up to `limit` stanzas, on any link, whose lifetime has ended
    /// (queued at or before `now_ms - lifetime_ms`), lowest id first, so that the server
    /// can return an error to each sender. Call it until it returns fewer than `limit`.
    /// A stanza removed here may still be in flight on a stream; its acknowledgement then
    /// removes nothing.
    async fn outbox_expire(
        &self,
        now_ms: i64,
        lifetime_ms: i64,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>>;
    /// One entry per link that has stanzas queued or a recorded delivery, sorted by remote
    /// then local domain. A link whose queue was emptied keeps its entry, with `queued` 0,
    /// so that operators still see when it last delivered.
    async fn outbox_stats(&self) -> Result<Vec<OutboxStats>>;

    // ---- stanza ids already received (XEP-0359) ----
    //
    // A peer that lost its stream before our acknowledgement reached it sends the stanza
    // again; recognising its id keeps the user from seeing it twice.

    /// Records that a stanza with `id` came from `origin` (an opaque scope chosen by the
    /// server: the `by` of a stanza-id, or the sender's bare JID for an origin-id), and
    /// returns whether it had been recorded before, that is, whether this is a duplicate.
    /// Checking and recording are one atomic step: of two concurrent calls with the same
    /// pair, exactly one returns `false`. A duplicate refreshes the record's time to
    /// `now_ms` (it never goes back), so a peer that keeps retrying keeps being recognised.
    /// The record is durable before the stanza is delivered: should the process die in
    /// between, the peer's retry counts as a duplicate, so the caller must not let such a
    /// window open where a loss would be worse than a duplicate.
    async fn seen_stanza_id(&self, origin: &str, id: &str, now_ms: i64) -> Result<bool>;
    /// For each `(origin, id)` pair, whether it was recorded, without recording anything
    /// (one look-up for a batch of received stanzas).
    async fn stanza_ids_seen(&self, ids: &[(String, String)]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(ids.len());
        for (origin, id) in ids {
            out.push(self.stanza_id_seen(origin, id).await?);
        }
        Ok(out)
    }
    /// Whether `id` from `origin` was recorded, without recording it. A receiver that checks
    /// with this, delivers, and only then records with [`Store::seen_stanza_id`] never loses
    /// a stanza to a crash between the two steps; it may deliver a duplicate instead.
    async fn stanza_id_seen(&self, origin: &str, id: &str) -> Result<bool>;
    /// Forgets the ids last seen before `older_than_ms`; returns how many. Keep them longer
    /// than the peers' retry lifetime, or a late retry is delivered again.
    async fn prune_seen(&self, older_than_ms: i64) -> Result<u64>;

    // ---- cluster (several nodes on one shared store: PostgreSQL) ----

    /// Registers a node under `node.node_id` if no live node holds that id (its lease
    /// ended before `now_ms`, or it is this start's own). Returns `false` if a live node
    /// holds it.
    async fn node_claim(&self, _node: &ClusterNode, _now_ms: i64) -> Result<bool> {
        Err(StoreError::Unsupported("cluster"))
    }
    /// Extends a node's lease to `until_ms` and records its session count. Returns
    /// `false` if that start of the node is no longer registered (its lease ended and
    /// another start took the id).
    async fn node_renew(
        &self,
        _node_id: &str,
        _epoch: &str,
        _until_ms: i64,
        _sessions: u64,
    ) -> Result<bool> {
        Err(StoreError::Unsupported("cluster"))
    }
    /// A node leaves: its registration and its leases go.
    async fn node_release(&self, _node_id: &str, _epoch: &str) -> Result<()> {
        Err(StoreError::Unsupported("cluster"))
    }
    /// Every registered node, live or not, by id.
    async fn cluster_nodes(&self) -> Result<Vec<ClusterNode>> {
        Err(StoreError::Unsupported("cluster"))
    }
    /// Takes (or renews) the lease `want.name` for `want`'s node until `want.until_ms`, if
    /// it is free, ended before `now_ms`, or already that node's. Returns the lease as it
    /// stands afterwards: the caller holds it if it names the caller.
    async fn lease_take(&self, _want: &ClusterLease, _now_ms: i64) -> Result<ClusterLease> {
        Err(StoreError::Unsupported("cluster"))
    }
    /// Gives the lease `name` back, if this start of the node holds it.
    async fn lease_release(&self, _name: &str, _node_id: &str, _epoch: &str) -> Result<()> {
        Err(StoreError::Unsupported("cluster"))
    }
    /// Extends to `until_ms` every lease whose name starts with `prefix` that this start
    /// of the node holds; returns their names (those it lost are not among them).
    async fn leases_extend(
        &self,
        _node_id: &str,
        _epoch: &str,
        _prefix: &str,
        _until_ms: i64,
    ) -> Result<Vec<String>> {
        Err(StoreError::Unsupported("cluster"))
    }
    /// Every lease, by name.
    async fn cluster_leases(&self) -> Result<Vec<ClusterLease>> {
        Err(StoreError::Unsupported("cluster"))
    }

    // ---- replication (a site's directory to its hub) ----

    /// Sets which writes are logged. Turning the site's log on starts a new log (a new
    /// epoch: the hub then needs a snapshot); turning it off drops the log.
    async fn repl_activate(&self, _mode: ReplMode) -> Result<ReplLog> {
        Err(StoreError::Unsupported("replication"))
    }
    /// The site's log: its epoch, extent and what the hub acknowledged.
    async fn repl_log(&self) -> Result<ReplLog> {
        Err(StoreError::Unsupported("replication"))
    }
    /// Up to `limit` records after position `after`, each with its key's current value;
    /// a key logged several times in the range comes once, at its first position. Also
    /// returns the last position read, which the records may not reach.
    async fn repl_read(&self, _after: i64, _limit: u32) -> Result<(Vec<ReplRecord>, i64)> {
        Err(StoreError::Unsupported("replication"))
    }
    /// Logs every key the directory holds (a snapshot for a hub that has nothing, or a
    /// log it has fallen behind); returns the position before them.
    async fn repl_reseed(&self) -> Result<i64> {
        Err(StoreError::Unsupported("replication"))
    }
    /// The hub acknowledged everything up to `position`: the log drops it.
    async fn repl_acked(&self, _position: i64, _now_ms: i64) -> Result<()> {
        Err(StoreError::Unsupported("replication"))
    }
    /// On a hub: applies a batch in one transaction if it follows what the replica holds
    /// (its epoch and position match, or it starts a snapshot the hub can take: it has
    /// merged all its own writes for the site back first). A record older than the hub's
    /// own write of the same key loses to it. Returns where the replica stands afterwards,
    /// applied or not.
    async fn repl_apply(&self, _batch: &ReplBatch<'_>) -> Result<(bool, ReplOrigin)> {
        Err(StoreError::Unsupported("replication"))
    }
    /// On a hub: up to `limit` of the messages it stored itself for `user`, oldest first
    /// (not the site's queue it keeps a replica of).
    async fn offline_own(&self, user: &BareJid, limit: u32) -> Result<Vec<OfflineMessage>> {
        self.offline(user, limit).await
    }
    /// On a hub: deletes the messages it stored itself for `user` with ids `<= up_to`.
    async fn delete_offline_own(&self, user: &BareJid, up_to: i64) -> Result<()> {
        self.delete_offline(user, up_to).await
    }
    /// The accounts of `domain` with messages of this server's own in their offline queue
    /// (not a site's replicated ones), sorted (a hub hands what it stored for a site's users
    /// during standby back to the site).
    async fn offline_owners(&self, domain: &str) -> Result<Vec<String>> {
        let mut owners = Vec::new();
        for account in self.list_accounts().await? {
            let of_domain = account.rsplit_once('@').is_some_and(|(_, d)| d == domain);
            if of_domain && self.count_offline(&account).await? > 0 {
                owners.push(account);
            }
        }
        Ok(owners)
    }
    /// On a hub: where its replica of `domain` stands (a default, position 0, if none).
    async fn repl_origin(&self, _domain: &str) -> Result<ReplOrigin> {
        Err(StoreError::Unsupported("replication"))
    }
    /// On a hub: every site it holds a replica of.
    async fn repl_origins(&self) -> Result<Vec<ReplOrigin>> {
        Err(StoreError::Unsupported("replication"))
    }
    /// On a hub: up to `limit` of its own writes for `domain`'s users that the site has not
    /// merged yet, as records with their current values, and the last log position read.
    async fn repl_merge_read(&self, _domain: &str, _limit: u32) -> Result<(Vec<ReplRecord>, i64)> {
        Err(StoreError::Unsupported("replication"))
    }
    /// On a hub: the site merged its writes up to `upto`; the log drops them.
    async fn repl_merge_done(&self, _domain: &str, _upto: i64) -> Result<()> {
        Err(StoreError::Unsupported("replication"))
    }
    /// On a site: merges what the hub wrote for its users in one transaction, each record
    /// only if it is newer than this side's write of the key and its account still
    /// exists. Returns how many lost to a later write here.
    async fn repl_merge(&self, _records: &[ReplRecord]) -> Result<u64> {
        Err(StoreError::Unsupported("replication"))
    }

    // ---- operations ----

    /// Writes a consistent copy of everything to a new file at `to` while the store stays
    /// in use (`outpost admin backup`). Fails if `to` exists. Backends that keep nothing on
    /// disk return `Unsupported`.
    async fn backup(&self, to: &std::path::Path) -> Result<()>;

    /// Flushes whatever the backend buffers and closes it; called at shutdown.
    async fn close(&self);
}
