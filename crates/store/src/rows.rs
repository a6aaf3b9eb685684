//! What the SQL backends (SQLite, PostgreSQL) share: the rows they read, as tuples of
//! column values, turned into the crate's types, and the errors for values this code could
//! never have written. The SQL itself is each backend's (its dialect and placeholders).

use crate::{
    AccessModel, ApiToken, ArchiveDefault, ArchivePrefs, Credentials, NodeConfig, OutboxEntry,
    Result, RosterItem, ScramKeys, SendLast, StoreError, Subscription, UploadSlot,
};

/// Data read back from the database that this code could never have written.
#[derive(Debug, thiserror::Error)]
enum Corrupt {
    #[error("column {column} holds {value}, out of range")]
    OutOfRange { column: &'static str, value: i64 },
    #[error("unknown {what} {value:?}")]
    Unknown { what: &'static str, value: String },
}

pub(crate) fn unknown(what: &'static str, value: &str) -> StoreError {
    StoreError::Backend(Box::new(Corrupt::Unknown {
        what,
        value: value.to_owned(),
    }))
}

pub(crate) fn to_u32(column: &'static str, value: i64) -> Result<u32> {
    u32::try_from(value)
        .map_err(|_| StoreError::Backend(Box::new(Corrupt::OutOfRange { column, value })))
}

pub(crate) fn to_u64(column: &'static str, value: i64) -> Result<u64> {
    u64::try_from(value)
        .map_err(|_| StoreError::Backend(Box::new(Corrupt::OutOfRange { column, value })))
}

/// The eight verifier columns: SHA-1's salt, iterations, stored and server keys, then
/// SHA-256's.
pub(crate) type CredentialsRow = (
    Vec<u8>,
    i64,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    i64,
    Vec<u8>,
    Vec<u8>,
);

pub(crate) fn credentials_from_row(row: CredentialsRow) -> Result<Credentials> {
    let (s1_salt, s1_iter, s1_stored, s1_server, s256_salt, s256_iter, s256_stored, s256_server) =
        row;
    Ok(Credentials {
        sha1: ScramKeys {
            salt: s1_salt,
            iterations: to_u32("sha1_iterations", s1_iter)?,
            stored_key: s1_stored,
            server_key: s1_server,
        },
        sha256: ScramKeys {
            salt: s256_salt,
            iterations: to_u32("sha256_iterations", s256_iter)?,
            stored_key: s256_stored,
            server_key: s256_server,
        },
    })
}

/// One item joined with one of its groups (or none): `contact, name, subscription, ask,
/// approved, group`.
pub(crate) type RosterRow = (String, Option<String>, String, bool, bool, Option<String>);

pub(crate) const ROSTER_SELECT: &str = "SELECT i.contact, i.name, i.subscription, i.ask, \
     i.approved, g.name FROM roster_items i \
     LEFT JOIN roster_groups g ON g.owner = i.owner AND g.contact = i.contact";

/// Folds rows ordered by contact then group into items, one per contact.
pub(crate) fn roster_from_rows(rows: Vec<RosterRow>) -> Result<Vec<RosterItem>> {
    let mut items: Vec<RosterItem> = Vec::new();
    for (contact, name, subscription, ask, approved, group) in rows {
        if items.last().is_none_or(|last| last.jid != contact) {
            let subscription = Subscription::parse(&subscription)
                .ok_or_else(|| unknown("subscription state", &subscription))?;
            items.push(RosterItem {
                jid: contact,
                name,
                subscription,
                ask,
                approved,
                groups: Vec::new(),
            });
        }
        if let (Some(group), Some(item)) = (group, items.last_mut()) {
            item.groups.push(group);
        }
    }
    Ok(items)
}

/// An outbox row: `id, local_domain, remote_domain, stanza, queued_at_ms`.
pub(crate) type OutboxRow = (i64, String, String, String, i64);

pub(crate) const OUTBOX_COLUMNS: &str = "id, local_domain, remote_domain, stanza, queued_at_ms";

pub(crate) fn outbox_entry(
    (id, local_domain, remote_domain, stanza, queued_at_ms): OutboxRow,
) -> OutboxEntry {
    OutboxEntry {
        id,
        local_domain,
        remote_domain,
        stanza,
        queued_at_ms,
    }
}

/// A row of the outbox statistics: `local, remote, queued, oldest, last delivery`.
pub(crate) type OutboxStatsRow = (String, String, i64, Option<i64>, Option<i64>);

/// A PEP node: `node, access_model, max_items, send_last, notify_retract, title`.
pub(crate) type NodeRow = (String, String, i64, String, bool, Option<String>);

pub(crate) const NODE_COLUMNS: &str =
    "node, access_model, max_items, send_last, notify_retract, title";

pub(crate) fn node_config_from_row(
    (_, access, max_items, send_last, notify_retract, title): &NodeRow,
) -> Result<NodeConfig> {
    Ok(NodeConfig {
        access: AccessModel::parse(access).ok_or_else(|| unknown("access model", access))?,
        max_items: to_u32("max_items", *max_items)?,
        send_last: SendLast::parse(send_last).ok_or_else(|| unknown("send_last", send_last))?,
        notify_retract: *notify_retract,
        title: title.clone(),
    })
}

/// Archive preferences from the default mode and the (jid, always) rows.
pub(crate) fn prefs_from_rows(default: &str, jids: &[(String, bool)]) -> Result<ArchivePrefs> {
    let default =
        ArchiveDefault::parse(default).ok_or_else(|| unknown("archive default", default))?;
    let pick = |always: bool| {
        jids.iter()
            .filter(|(_, a)| *a == always)
            .map(|(j, _)| j.clone())
            .collect()
    };
    Ok(ArchivePrefs {
        default,
        always: pick(true),
        never: pick(false),
    })
}

pub(crate) type TokenRow = (String, Vec<u8>, String, Option<String>, i64, i64);

pub(crate) const TOKEN_COLUMNS: &str = "id, hash, owner, label, created_ms, expires_ms";

pub(crate) fn token_from_row(r: TokenRow) -> ApiToken {
    ApiToken {
        id: r.0,
        hash: r.1,
        owner: r.2,
        label: r.3,
        created_ms: r.4,
        expires_ms: r.5,
    }
}

pub(crate) type UploadRow = (
    String,
    String,
    String,
    i64,
    Option<String>,
    Vec<u8>,
    i64,
    Option<i64>,
);

pub(crate) const UPLOAD_COLUMNS: &str =
    "slot, owner, filename, size, content_type, put_token, created_ms, completed_ms";

pub(crate) fn upload_from_row(r: UploadRow) -> UploadSlot {
    UploadSlot {
        slot: r.0,
        owner: r.1,
        filename: r.2,
        size: u64::try_from(r.3).unwrap_or(0),
        content_type: r.4,
        put_token: r.5,
        created_ms: r.6,
        completed_ms: r.7,
    }
}

/// Counts and sizes are stored signed (neither SQLite nor PostgreSQL has unsigned
/// integers).
pub(crate) fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
