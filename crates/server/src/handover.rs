//! A client session moving to another node of the cluster: a client whose connection
//! died resumes its stream (XEP-0198 §5) at whichever node its new connection reached
//! (a TCP balancer or SRV records spread them), so the session's state leaves the node
//! that held it and is built again there.
//!
//! What moves is what the client would notice losing: its full JID, presence and
//! priority, who got directed presence, whether it asked for roster and block-list pushes,
//! carbons, client state (XEP-0352), the capabilities the old node verified, and the
//! managed stream itself: the counters and every stanza the client has not acknowledged,
//! as written. The roster and block list are read again from the store at the new node.
//!
//! The old node answers only once the session has left its router, and the session waits
//! there until the new node says it took it over; if it did not (it gave up waiting, or
//! its client went away), the session ends at the old node as it would have without the
//! attempt: unavailable presence to those who had presence, and the unacknowledged
//! messages to the offline store.

use jid::FullJid;
use outpost_proto::sm::{SmParts, Unacked};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// A session's state, as it crosses to another node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Handover {
    pub(crate) jid: FullJid,
    /// Its id at the node it leaves (the directory entry it had there).
    pub(crate) session_id: u64,
    pub(crate) available: bool,
    pub(crate) priority: i8,
    /// The last available presence broadcast, as sent.
    pub(crate) presence: Option<String>,
    /// Who got directed presence (RFC 6121 §4.6).
    pub(crate) directed: Vec<String>,
    pub(crate) roster_interested: bool,
    pub(crate) blocklist_interested: bool,
    pub(crate) carbons: bool,
    pub(crate) inactive: bool,
    pub(crate) avatar_hash: Option<String>,
    /// The features of its capabilities hash, as the old node verified them (XEP-0115),
    /// and the accounts whose last personal-eventing items it was sent already.
    pub(crate) caps_features: Option<Vec<String>>,
    pub(crate) caps_served: Vec<String>,
    pub(crate) stream: Stream,
}

/// A managed stream on the wire ([`SmParts`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stream {
    pub(crate) id: String,
    pub(crate) max: u32,
    pub(crate) inbound: u32,
    pub(crate) sent: u32,
    pub(crate) acked: u32,
    /// The unacknowledged stanzas, oldest first, with when each was queued (Unix ms).
    pub(crate) unacked: Vec<(String, i64)>,
}

impl Stream {
    pub(crate) fn of(p: SmParts) -> Option<Stream> {
        Some(Stream {
            id: p.id?,
            max: p.max,
            inbound: p.inbound,
            sent: p.sent,
            acked: p.acked,
            unacked: p
                .unacked
                .into_iter()
                .map(|u| (u.xml.into(), u.queued_ms))
                .collect(),
        })
    }

    pub(crate) fn into_parts(self) -> SmParts {
        SmParts {
            inbound: self.inbound,
            sent: self.sent,
            acked: self.acked,
            unacked: self
                .unacked
                .into_iter()
                .map(|(xml, queued_ms)| Unacked {
                    xml: xml.into(),
                    queued_ms,
                })
                .collect(),
            id: Some(self.id),
            max: self.max,
        }
    }
}

/// What a session is told when another node asks for it ([`crate::router::ToSession`]).
#[derive(Debug)]
pub(crate) struct Migration {
    /// Where its state goes, once it has left the router.
    pub(crate) handover: oneshot::Sender<Box<Handover>>,
    /// Whether the other node took it over (`false` or dropped: it did not).
    pub(crate) taken: oneshot::Receiver<bool>,
}
