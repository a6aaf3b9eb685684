//! What nodes say to each other over NATS: JSON, one message per NATS message. Stanzas
//! travel as the XML [`outpost_proto::xml::write_stanza`] writes and are read back with a
//! stream's checks and limits; anything that does not parse is dropped by the caller.

use std::sync::Arc;

use jid::{FullJid, Jid};
use minidom::Element;
use outpost_proto::xml::{Limits, read_stanza, write_stanza};
use outpost_store::{RosterItem, Subscription};
use serde::{Deserialize, Serialize};

use crate::handover::Handover;
use crate::router::{SessionEntry, ToSession};
use crate::standby::Mark;

/// Every message names the node that sent it and which start of it (`epoch`).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Envelope {
    pub(super) node: String,
    pub(super) epoch: String,
    #[serde(flatten)]
    pub(super) body: Body,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(super) enum Body {
    /// On the directory subject, every second: the node is alive, and `seq` is the number
    /// of its last change (a receiver that missed one asks for a snapshot).
    Heartbeat {
        seq: u64,
        sessions: u64,
        /// On a hub: each site's last standby change this node knows of.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        standby: Vec<Mark>,
    },
    /// On the directory subject: this node started or ended standing in for a site.
    Standby { mark: Mark },
    /// To a node: the answer to one of its requests to another server, which came in
    /// here.
    Answer { xml: String },
    /// On the directory subject: one change to the node's sessions.
    Change { seq: u64, change: Change },
    /// On the directory subject: the node is stopping; its sessions are gone.
    Bye,
    /// To a node: send me your sessions, in parts, to `inbox`, naming `request`.
    SnapshotRequest { inbox: String, request: String },
    /// One part of a snapshot: the sender's sessions as of change `seq`.
    Snapshot {
        request: String,
        seq: u64,
        entries: Vec<SessionEntry>,
        last: bool,
    },
    /// To a node: this for that session of yours.
    Deliver { to: FullJid, msg: Msg },
    /// To a node: a copy of this stanza for each of these sessions of yours, addressed to
    /// it (a room's message to its occupants there).
    Copies { to: Vec<FullJid>, xml: String },
    /// To the node running `service`: a stanza for it; with `request`, a message whose
    /// outcome the sending node awaits.
    Service {
        service: String,
        xml: String,
        request: Option<String>,
    },
    /// The outcome of a forwarded message: its archive id, or why it was not kept.
    ServiceDone {
        request: String,
        result: Result<i64, String>,
    },
    /// To the node running the pair's link: send this best-effort to `remote`.
    S2sSend {
        local: String,
        remote: String,
        xml: String,
    },
    /// To the node running the pair's link: its outbox has new entries.
    S2sWake { local: String, remote: String },
    /// To the node running the pair's link: verify a peer's dialback key (XEP-0220).
    S2sVerify {
        local: String,
        remote: String,
        id: String,
        key: String,
        request: String,
    },
    /// The verdict: `valid`, `invalid` or an error condition.
    S2sVerdict { request: String, verdict: String },
    /// To a node that asked for a link: this node does not run it (forget that owner).
    S2sMoved { local: String, remote: String },
    /// On the directory subject: a link came up; re-probe contacts there.
    LinkUp { local: String, remote: String },
    /// On the directory subject: a user changed their archiving preferences (XEP-0441)
    /// at the sending node; read them again from the store and say so (`PrefsRead`).
    Prefs { user: String, request: String },
    /// To the node that changed preferences: this node has read them.
    PrefsRead { request: String },
    /// On the directory subject: a client of `user` resumes the stream `previd` at the
    /// sending node; the node that holds it hands its session over (`Resumed`).
    Resume {
        user: String,
        previd: String,
        request: String,
    },
    /// The session, or that this node does not hold the stream (with the count it
    /// reached, if it ended here).
    Resumed {
        request: String,
        result: Result<Box<Handover>, Option<u32>>,
    },
    /// To the node that handed a session over: whether it was taken.
    ResumeTaken { request: String, taken: bool },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "c", rename_all = "snake_case")]
pub(super) enum Change {
    Bound(SessionEntry),
    Unbound { jid: FullJid, session_id: u64 },
    Updated(SessionEntry),
}

/// [`ToSession`] as it crosses nodes (a resumption does not: it hands over a socket, and
/// a migration has its own messages).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "m", rename_all = "snake_case")]
pub(super) enum Msg {
    Stanza {
        xml: String,
    },
    Probe {
        from: Jid,
    },
    RosterPush {
        version: u64,
        jid: String,
        item: Option<Item>,
    },
    Blocklist {
        list: Vec<String>,
        push: String,
    },
    FlushOffline,
    Replaced,
    Redirect {
        host: String,
    },
    End {
        condition: String,
        text: String,
    },
    Event {
        interest: String,
        xml: String,
    },
}

/// A roster item on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Item {
    jid: String,
    name: Option<String>,
    subscription: String,
    ask: bool,
    approved: bool,
    groups: Vec<String>,
}

/// The stream errors a session may be ended with from another node, and the texts that go
/// with them (a session's own are `&'static`).
const END_CONDITIONS: &[&str] = &[
    "not-authorized",
    "policy-violation",
    "host-gone",
    "conflict",
];
const END_TEXTS: &[&str] = &[
    "account removed",
    "password changed",
    "disconnected by the operator",
    "domain no longer served",
];

pub(super) fn xml(el: &Element) -> Option<String> {
    let mut out = Vec::new();
    write_stanza(el, &mut out).ok()?;
    String::from_utf8(out).ok()
}

impl Msg {
    /// The wire form of `msg`, or `None` for what cannot cross nodes.
    pub(super) fn from_session(msg: &ToSession) -> Option<Msg> {
        Some(match msg {
            ToSession::Stanza(el) => Msg::Stanza { xml: xml(el)? },
            ToSession::Probe { from } => Msg::Probe { from: from.clone() },
            ToSession::RosterPush { version, jid, item } => Msg::RosterPush {
                version: *version,
                jid: jid.clone(),
                item: item.as_ref().map(|i| Item {
                    jid: i.jid.clone(),
                    name: i.name.clone(),
                    subscription: i.subscription.as_str().to_owned(),
                    ask: i.ask,
                    approved: i.approved,
                    groups: i.groups.clone(),
                }),
            },
            ToSession::Blocklist { list, push } => Msg::Blocklist {
                list: list.as_ref().clone(),
                push: xml(push)?,
            },
            ToSession::FlushOffline => Msg::FlushOffline,
            ToSession::Replaced => Msg::Replaced,
            ToSession::Redirect { host } => Msg::Redirect { host: host.clone() },
            ToSession::End { condition, text } => Msg::End {
                condition: (*condition).to_owned(),
                text: (*text).to_owned(),
            },
            ToSession::Event { interest, el } => Msg::Event {
                interest: interest.to_string(),
                xml: xml(el)?,
            },
            ToSession::LinkRestored { .. }
            | ToSession::Resume(_)
            | ToSession::Migrate(_)
            | ToSession::ClusterRejoined => return None,
        })
    }

    /// Back to what the session takes, or `None` if it does not parse.
    pub(super) fn into_session(self, limits: Limits) -> Option<ToSession> {
        Some(match self {
            Msg::Stanza { xml } => ToSession::Stanza(read_stanza(xml.as_bytes(), limits)?),
            Msg::Probe { from } => ToSession::Probe { from },
            Msg::RosterPush { version, jid, item } => ToSession::RosterPush {
                version,
                jid,
                item: match item {
                    Some(i) => Some(RosterItem {
                        jid: i.jid,
                        name: i.name,
                        subscription: Subscription::parse(&i.subscription)?,
                        ask: i.ask,
                        approved: i.approved,
                        groups: i.groups,
                    }),
                    None => None,
                },
            },
            Msg::Blocklist { list, push } => ToSession::Blocklist {
                list: Arc::new(list),
                push: read_stanza(push.as_bytes(), limits)?,
            },
            Msg::FlushOffline => ToSession::FlushOffline,
            Msg::Replaced => ToSession::Replaced,
            Msg::Redirect { host } => ToSession::Redirect { host },
            Msg::Event { interest, xml } => ToSession::Event {
                interest: interest.into(),
                el: Box::new(read_stanza(xml.as_bytes(), limits)?),
            },
            Msg::End { condition, text } => ToSession::End {
                condition: END_CONDITIONS.iter().find(|c| **c == condition)?,
                text: (END_TEXTS.iter().find(|t| **t == text)).unwrap_or(&"ended by the server"),
            },
        })
    }
}
