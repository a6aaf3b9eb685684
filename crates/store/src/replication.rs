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

/// The kinds merged as a union (each record is a message that is there or not, never
/// changed): they keep no versions, and a hub's record of them is never superseded.
pub(crate) fn is_union(kind: &str) -> bool {
    matches!(kind, "archive" | "offline")
}

/// A log entry as the SQL backends read it: position, stamp, kind, owner, key, sub-key,
/// the key's current value (JSON) and its version.
pub(crate) type LogRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
);

/// The records of log entries, each key once, at its first position (the value is the
/// current one anyway: every account's record then comes before the records of what it
/// owns). An entry older than its key's version is left out: a later write (this side's,
/// with an entry of its own, or the other side's, which the other side has) superseded it.
/// On a hub a key without a version is one the site wrote since: it has it (the union
/// kinds have none).
pub(crate) fn records(rows: Vec<LogRow>, hub: bool) -> Vec<ReplRecord> {
    use std::collections::hash_map::{Entry, HashMap};
    let mut records: Vec<ReplRecord> = Vec::with_capacity(rows.len());
    let mut seen: HashMap<(String, String, String, String), usize> = HashMap::new();
    for (seq, stamp, kind, owner, key, sub, value, version) in rows {
        let Some(kind_) = ReplKind::parse(&kind) else {
            continue;
        };
        let superseded = match version {
            Some(v) => v > stamp,
            None => hub && !is_union(&kind),
        };
        if superseded {
            continue;
        }
        // A hub logs only the deletion of a site's offline message (its key is the site's
        // id, not one of the hub's rows).
        let value = value.filter(|_| !(hub && kind_ == ReplKind::Offline));
        match seen.entry((kind, owner.clone(), key.clone(), sub.clone())) {
            Entry::Occupied(at) => {
                let r = &mut records[*at.get()];
                r.stamp = r.stamp.max(stamp);
            }
            Entry::Vacant(slot) => {
                slot.insert(records.len());
                records.push(ReplRecord {
                    seq,
                    stamp,
                    kind: kind_,
                    owner,
                    key,
                    sub,
                    value,
                });
            }
        }
    }
    records
}

/// A hub's row of `repl_origins` with what it holds not gone back yet, as the SQL
/// backends read it (`ORIGIN_COLUMNS`, then the pending count).
pub(crate) type OriginRow = (String, String, i64, i64, i64, i64, i64, i64, i64, i64);

pub(crate) fn origin_from(r: OriginRow) -> ReplOrigin {
    ReplOrigin {
        domain: r.0,
        epoch: r.1,
        position: r.2,
        head: r.3,
        records: r.4,
        snapshots: r.5,
        synced_ms: r.6,
        stamp: r.7,
        conflicts: r.8,
        pending: r.9,
    }
}

/// Records of a bulk kind as the one JSON array the SQL backends' set-based statements
/// read: `{"o": owner, "k": key, "v": value}`, the value as a JSON string that the
/// statement parses (so a malformed one fails it and cannot reach into the array).
pub(crate) fn bulk_array(records: &[&ReplRecord]) -> String {
    let mut array = String::from("[");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            array.push(',');
        }
        array.push_str("{\"o\":");
        json_string(&mut array, &r.owner);
        array.push_str(",\"k\":");
        json_string(&mut array, &r.key);
        array.push_str(",\"v\":");
        json_string(&mut array, r.value.as_deref().unwrap_or("null"));
        array.push('}');
    }
    array.push(']');
    array
}

/// `s` as a JSON string literal (RFC 8259 §7).
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A table the replication log follows: the kind of its records and how a row names its
/// key, as SQL over the row `r` (each SQL backend has its own list, in its own SQL).
/// `main` when its rows are the kind's keys (what a snapshot logs again), `order` how a
/// snapshot lists them, `hub` what a hub logs of it when that differs.
pub(crate) struct Tracked {
    pub(crate) table: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) owner: &'static str,
    pub(crate) key: &'static str,
    pub(crate) sub: &'static str,
    pub(crate) main: bool,
    pub(crate) order: &'static str,
    pub(crate) hub: Option<HubForm>,
}

/// What a hub logs of a table: on which operations, rows matching `when`, owner and key.
pub(crate) struct HubForm {
    pub(crate) ops: &'static [&'static str],
    pub(crate) owner: &'static str,
    pub(crate) key: &'static str,
    pub(crate) when: &'static str,
}

/// A table followed the same way on a site and a hub, in no particular order.
pub(crate) const fn tracked(
    table: &'static str,
    kind: &'static str,
    owner: &'static str,
    key: &'static str,
    sub: &'static str,
    main: bool,
) -> Tracked {
    Tracked {
        table,
        kind,
        owner,
        key,
        sub,
        main,
        order: "",
        hub: None,
    }
}

/// A key of the directory: kind, owner, key, sub-key.
pub(crate) type Key = (String, String, String, String);

pub(crate) fn key_of(r: &ReplRecord) -> Key {
    (
        r.kind.as_str().to_owned(),
        r.owner.clone(),
        r.key.clone(),
        r.sub.clone(),
    )
}

/// What a hub does with a site's batch (the same on every backend).
pub(crate) struct HubVerdict<'b> {
    /// The records it applies.
    pub(crate) winners: Vec<&'b ReplRecord>,
    /// Conflicts met: keys both sides wrote.
    pub(crate) lost: i64,
    /// Keys whose version the hub drops: its own write of them lost, and will not be
    /// merged back.
    pub(crate) forget: Vec<&'b ReplRecord>,
    /// Accounts removed at the site: what the hub wrote for them goes along.
    pub(crate) removed: Vec<&'b str>,
}

/// The records of a site's batch the hub applies, given the versions of what the hub wrote
/// itself for the site's users while standing in (few keys): a site's record loses to a
/// later one of those, and wins a tie (the site is the users' home). Accounts change at
/// the site only; the archive is a union.
pub(crate) fn hub_verdict<'b>(
    records: &'b [ReplRecord],
    versions: &std::collections::HashMap<Key, i64>,
) -> HubVerdict<'b> {
    let mut verdict = HubVerdict {
        winners: Vec::with_capacity(records.len()),
        lost: 0,
        forget: Vec::new(),
        removed: Vec::new(),
    };
    for r in records {
        if r.kind == ReplKind::Account && r.value.is_none() {
            verdict.removed.push(&r.owner);
        }
        let Some(&version) = versions.get(&key_of(r)) else {
            verdict.winners.push(r);
            continue;
        };
        // Either way one write lost: the site's record, or the hub's own.
        verdict.lost += 1;
        if version > r.stamp {
            continue;
        }
        verdict.forget.push(r);
        verdict.winners.push(r);
    }
    verdict
}
