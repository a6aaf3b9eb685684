//! An occupant: a nickname in the room, held by one or more clients of one user.

use jid::{BareJid, FullJid};
use minidom::Element;

use super::config::{Affiliation, Role};

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Occupant {
    pub(super) nick: String,
    pub(super) bare: BareJid,
    /// The user's clients in the room under this nickname, oldest first.
    pub(super) jids: Vec<FullJid>,
    pub(super) affiliation: Affiliation,
    pub(super) role: Role,
    /// What the occupant's presence says (show, status, caps), repeated to others.
    pub(super) presence: Vec<Element>,
}
