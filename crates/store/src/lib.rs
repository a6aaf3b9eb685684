//! Outpost's storage, at the level of the messaging domain: accounts and their SCRAM
//! verifiers, rosters with versions, pending subscription requests, the offline queue,
//! vCards and block lists.
//!
//! The crate knows nothing of XML: stanzas and vCards are opaque strings the server hands
//! in and gets back. Addresses are bare JIDs as normalised strings (`user@domain`).
//!
//! Backends: [`MemoryStore`] (tests, ephemeral runs) and [`SqliteStore`] (the default,
//! durable). Every backend passes the same battery in `tests/battery.rs`.
//!
//! What is deliberately not here: PostgreSQL (a later backend behind the same trait), the
//! server-to-server outbox and the message archive (later capabilities).

mod memory;
mod sqlite;

pub use memory::MemoryStore;
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

/// One contact in a user's roster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact's bare JID.
    pub jid: String,
    pub name: Option<String>,
    pub subscription: Subscription,
    /// `ask='subscribe'`: the user asked for the contact's presence and awaits an answer.
    pub ask: bool,
    /// The contact asked for the user's presence and the user has not answered yet
    /// (RFC 6121 "Pending In"). Not shown in the roster, but kept with the item so that the
    /// state machine of RFC 6121 Appendix A has all it needs.
    pub pending_in: bool,
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
            pending_in: false,
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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("account already exists")]
    AccountExists,
    #[error("no such account")]
    NoSuchAccount,
    #[error("offline quota of {quota} messages reached")]
    QuotaExceeded { quota: u32 },
    #[error("storage backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything the server keeps across restarts. Each method is one transaction: when it
/// returns `Ok`, the change is durable (for the SQLite backend: committed to the WAL with
/// `synchronous=FULL`).
///
/// Methods taking a user's bare JID for an account that does not exist return
/// `NoSuchAccount` where they write, and empty results where they read.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- accounts ----

    /// Creates an account; `AccountExists` if the JID is taken.
    async fn create_account(&self, user: &BareJid, creds: &Credentials) -> Result<()>;
    async fn credentials(&self, user: &BareJid) -> Result<Option<Credentials>>;
    /// Replaces the verifiers (password change). `NoSuchAccount` if absent.
    async fn set_credentials(&self, user: &BareJid, creds: &Credentials) -> Result<()>;
    /// Removes the account and everything it owns: roster, requests it received, offline
    /// messages, vCard and block list. `NoSuchAccount` if absent.
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

    // ---- vCard (XEP-0054) ----

    async fn vcard(&self, user: &BareJid) -> Result<Option<String>>;
    async fn set_vcard(&self, user: &BareJid, vcard: &str) -> Result<()>;

    // ---- blocking (XEP-0191) ----

    /// Blocked JIDs (any JID form, as given by the user), sorted.
    async fn blocklist(&self, user: &BareJid) -> Result<Vec<String>>;
    async fn block(&self, user: &BareJid, jids: &[String]) -> Result<()>;
    /// Unblocks the given JIDs, or all when `jids` is empty.
    async fn unblock(&self, user: &BareJid, jids: &[String]) -> Result<()>;

    /// Flushes whatever the backend buffers and closes it; called at shutdown.
    async fn close(&self);
}
