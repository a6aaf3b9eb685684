//! The types of directory replication from a site to its hub (see
//! `migrations/0009_replication.sql` and ARCHITECTURE.md, "Sites and hub").

/// What a replication record is about: each kind is a key in one or a few tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplKind {
    /// An account's SCRAM verifiers (never a password); key: none.
    Account,
    /// One roster item with its groups; key: the contact.
    Roster,
    /// A pending subscription request; key: who asked.
    SubscriptionRequest,
    /// The account's vCard; key: none.
    Vcard,
    /// One blocked JID; key: the JID.
    Block,
    /// One private XML storage fragment (XEP-0049); key: its namespace.
    Private,
    /// The archive preferences (XEP-0441); key: none.
    ArchivePrefs,
    /// A personal eventing node's configuration; key: the node.
    PepNode,
    /// One item of a node; key: the node, sub-key: the item id.
    PepItem,
    /// One explicit subscription to a node; key: the node, sub-key: the subscriber.
    PepSubscription,
    /// A multi-user chat room, configuration and affiliations; the owner is the room's JID.
    MucRoom,
    /// One archived message; key: its id (the stanza-id), the owner its local end.
    Archive,
    /// One message in the offline queue; key: its id at the site.
    Offline,
}

impl ReplKind {
    pub const ALL: [ReplKind; 13] = [
        ReplKind::Account,
        ReplKind::Roster,
        ReplKind::SubscriptionRequest,
        ReplKind::Vcard,
        ReplKind::Block,
        ReplKind::Private,
        ReplKind::ArchivePrefs,
        ReplKind::PepNode,
        ReplKind::PepItem,
        ReplKind::PepSubscription,
        ReplKind::MucRoom,
        ReplKind::Archive,
        ReplKind::Offline,
    ];

    /// The name in the log and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplKind::Account => "account",
            ReplKind::Roster => "roster",
            ReplKind::SubscriptionRequest => "subreq",
            ReplKind::Vcard => "vcard",
            ReplKind::Block => "block",
            ReplKind::Private => "private",
            ReplKind::ArchivePrefs => "mam_prefs",
            ReplKind::PepNode => "pep_node",
            ReplKind::PepItem => "pep_item",
            ReplKind::PepSubscription => "pep_sub",
            ReplKind::MucRoom => "muc_room",
            ReplKind::Archive => "archive",
            ReplKind::Offline => "offline",
        }
    }

    pub fn parse(s: &str) -> Option<ReplKind> {
        ReplKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One change of the directory: a key and its value when it was read, so that applying
/// it twice, or after a later record for the same key, changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplRecord {
    /// Its position in the site's log.
    pub seq: i64,
    /// Hybrid logical clock stamp of the key's last write (ms << 16 | counter).
    pub stamp: i64,
    pub kind: ReplKind,
    /// The account (or room) the key belongs to, as a bare JID.
    pub owner: String,
    pub key: String,
    pub sub: String,
    /// The value as a JSON object, `None` once the key no longer exists (a tombstone).
    pub value: Option<String>,
}

/// Which writes a store logs for replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplMode {
    /// None (a server with neither a hub nor sites).
    Off,
    /// A site's: every change of its directory, for its hub.
    Site,
    /// A hub's: what it writes for its sites' users while it stands in for a site, to be
    /// merged back into the site.
    Hub,
}

/// The site's side: its log and what the hub acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplLog {
    /// The site's log is kept ([`ReplMode::Site`]).
    pub active: bool,
    pub epoch: String,
    /// The log's first and last positions (0 when empty: `first` > `last`).
    pub first: i64,
    pub last: i64,
    /// The last position the hub acknowledged, and when (ms since the epoch; 0: never).
    pub acked: i64,
    pub synced_ms: i64,
    /// Records merged back from the hub that lost to a later write here.
    pub conflicts: i64,
}

/// A batch arriving at the hub from `domain`'s site.
#[derive(Clone, Debug)]
pub struct ReplBatch<'a> {
    pub domain: &'a str,
    pub epoch: &'a str,
    /// The position the batch follows: the hub's own, unless `snapshot`.
    pub after: i64,
    /// The position it reaches.
    pub upto: i64,
    /// The site's last log position when it sent the batch.
    pub head: i64,
    /// A snapshot starts here: what the hub held for the domain is dropped first.
    pub snapshot: bool,
    pub records: &'a [ReplRecord],
    pub now_ms: i64,
}

/// Where a hub's replica of one site stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplOrigin {
    pub domain: String,
    pub epoch: String,
    pub position: i64,
    pub head: i64,
    /// Records applied since the replica began.
    pub records: i64,
    /// Snapshots taken.
    pub snapshots: i64,
    pub synced_ms: i64,
    /// The newest stamp of the last batch applied (its milliseconds are `stamp >> 16`).
    pub stamp: i64,
    /// The site's records that lost to a later write the hub made while standing in.
    pub conflicts: i64,
    /// What the hub holds for the site's users that has not gone back to the site yet:
    /// log entries of its own writes, and messages it stored.
    pub pending: i64,
}

impl ReplOrigin {
    /// How long after its newest change the last batch was applied, in milliseconds.
    pub fn lag_ms(&self) -> Option<i64> {
        (self.stamp > 0).then(|| (self.synced_ms - (self.stamp >> 16)).max(0))
    }
}
