//! A multi-user chat room (XEP-0045), sans IO: occupants with nicknames, roles and
//! affiliations, the configuration, the subject and the recent history. The server feeds
//! it what was addressed to the room (with the sender's real JID, the time and an id for a
//! message it may archive) and carries out the [`Effect`]s it returns, in order: stanzas to
//! send (each already addressed), messages to archive, what to store.
//!
//! Nothing here knows whether an occupant is on this server or another, or how history is
//! stored: the room keeps the last messages it reflected (reloaded by the server from the
//! archive when a room comes back after a restart) and sends from them on join.

mod config;
mod occupants;

pub use config::{Affiliation, AllowPm, Role, RoomConfig};

use std::collections::{BTreeMap, VecDeque};

use jid::{BareJid, FullJid, Jid};
use minidom::Element;

use crate::forms::{Form, Submitted};
use crate::stanza::{self, Condition, ErrorType, StanzaError, ns};
use occupants::Occupant;

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// Occupants are told the message ids they sent come back unchanged (XEP-0045 §7.2.4).
pub const NS_STABLE_ID: &str = "http://jabber.org/protocol/muc#stable_id";
/// Self-ping answered by the room (XEP-0410).
pub const NS_SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";

/// What the server is to do for the room, in order.
#[derive(Debug, PartialEq)]
pub enum Effect {
    /// Send a stanza (its `from` and `to` are set).
    Send(Element),
    /// Keep a message in the room's archive under the id the server gave with it; `from`
    /// is the occupant JID it was said under.
    Archive {
        id: i64,
        from: String,
        message: Element,
    },
    /// The configuration or the subject changed: store the room again.
    SaveRoom,
    /// Store (or, with `Affiliation::None`, forget) a user's affiliation.
    SaveAffiliation {
        jid: BareJid,
        affiliation: Affiliation,
    },
    /// The room is gone: forget it, and its stored state.
    Destroyed,
}

/// What the server gives the room with each stanza.
#[derive(Clone, Debug)]
pub struct Context {
    /// Unix milliseconds.
    pub now_ms: i64,
    /// The archive id a message handled now would have.
    pub id: i64,
    /// The id as a stanza-id (the server's encoding).
    pub stanza_id: String,
    /// The time as XEP-0082 writes it.
    pub stamp: String,
}

/// A message in the room's recent history.
#[derive(Clone, Debug, PartialEq)]
pub struct Said {
    pub at_ms: i64,
    pub stamp: String,
    /// The message as reflected (from the occupant JID, with the room's stanza-id), no `to`.
    pub message: Element,
}

/// How much history a joining client wants (XEP-0045 §7.2.15).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct HistoryLimits {
    max_stanzas: Option<usize>,
    max_chars: Option<usize>,
    since_ms: Option<i64>,
}

/// A room.
pub struct Room {
    jid: BareJid,
    config: RoomConfig,
    affiliations: BTreeMap<BareJid, Affiliation>,
    occupants: Vec<Occupant>,
    subject: Option<(String, String)>,
    /// Just created, waiting for its owner's configuration (XEP-0045 §10.1).
    locked: bool,
    history: VecDeque<Said>,
    history_max: usize,
}

impl Room {
    /// A room that exists: stored, or being created by its first occupant.
    pub fn new(
        jid: BareJid,
        config: RoomConfig,
        affiliations: BTreeMap<BareJid, Affiliation>,
        history_max: usize,
    ) -> Room {
        Room {
            jid,
            config,
            affiliations,
            occupants: Vec::new(),
            subject: None,
            locked: false,
            history: VecDeque::new(),
            history_max,
        }
    }

    pub fn jid(&self) -> &BareJid {
        &self.jid
    }

    pub fn config(&self) -> &RoomConfig {
        &self.config
    }

    pub fn affiliations(&self) -> &BTreeMap<BareJid, Affiliation> {
        &self.affiliations
    }

    /// The subject and who set it, for storage.
    pub fn subject(&self) -> Option<(&str, &str)> {
        self.subject
            .as_ref()
            .map(|(s, by)| (s.as_str(), by.as_str()))
    }

    pub fn set_subject(&mut self, subject: String, by: String) {
        self.subject = Some((subject, by));
    }

    /// Puts back what was said before a restart, oldest first.
    pub fn restore_history(&mut self, said: Vec<Said>) {
        self.history = said.into();
        self.trim_history();
    }

    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }

    pub fn occupant_count(&self) -> usize {
        self.occupants.len()
    }

    /// Whether `who` may read the room's archive (XEP-0313 §5.1.2 for rooms): occupants,
    /// and members of a members-only room; never outcasts.
    pub fn may_read_archive(&self, who: &FullJid) -> bool {
        let affiliation = self.affiliation(&who.to_bare());
        if affiliation == Affiliation::Outcast || !self.config.archive {
            return false;
        }
        self.occupant_by_real(who).is_some()
            || !self.config.members_only
            || affiliation >= Affiliation::Member
    }

    fn affiliation(&self, bare: &BareJid) -> Affiliation {
        self.affiliations
            .get(bare)
            .copied()
            .unwrap_or(Affiliation::None)
    }

    fn occupant_by_real(&self, real: &FullJid) -> Option<usize> {
        self.occupants.iter().position(|o| o.jids.contains(real))
    }

    fn occupant_by_nick(&self, nick: &str) -> Option<usize> {
        self.occupants.iter().position(|o| o.nick == nick)
    }

    fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{nick}", self.jid)
    }

    /// Handles a stanza addressed to the room or one of its occupants, from `from` (a real
    /// full JID).
    pub fn handle(&mut self, from: &FullJid, el: &Element, cx: &Context) -> Vec<Effect> {
        let to = el.attr("to").and_then(|t| Jid::new(t).ok());
        let nick = to
            .as_ref()
            .and_then(|t| t.resource())
            .map(|r| r.as_str().to_owned());
        let mut out = Vec::new();
        match el.name() {
            "presence" => self.on_presence(from, el, nick, cx, &mut out),
            "message" => self.on_message(from, el, nick, cx, &mut out),
            _ => self.on_iq(from, el, nick, &mut out),
        }
        out
    }

    /// An occupant's client is gone without saying so (delivery to it failed, XEP-0045
    /// §7.2.17 status 333): it leaves.
    pub fn drop_client(&mut self, real: &FullJid) -> Vec<Effect> {
        let mut out = Vec::new();
        if let Some(i) = self.occupant_by_real(real) {
            self.leave(i, real, &[333], None, &mut out);
        }
        out
    }

    fn error_to(&self, el: &Element, from: &FullJid, error: StanzaError, out: &mut Vec<Effect>) {
        if !stanza::may_answer_with_error(el) {
            return;
        }
        let mut reply = stanza::error_reply(el, &error);
        stanza::set_attr(&mut reply, "to", from.as_str());
        if el.name() == "presence" && el.has_child("x", NS_MUC) {
            reply.append_child(Element::builder("x", NS_MUC).build());
        }
        out.push(Effect::Send(reply));
    }

    // ---- presence: joining, updating, changing nick, leaving ----

    fn on_presence(
        &mut self,
        from: &FullJid,
        el: &Element,
        nick: Option<String>,
        cx: &Context,
        out: &mut Vec<Effect>,
    ) {
        let me = self.occupant_by_real(from);
        match (el.attr("type"), me, nick) {
            (Some("unavailable"), Some(i), _) => self.leave(i, from, &[], None, out),
            (Some("error"), Some(i), _) if !presence_error_is_transient(el) => {
                self.leave(i, from, &[333], None, out);
            }
            (None, None, Some(nick)) => self.join(from, el, nick, cx, out),
            (None, Some(i), Some(nick)) if self.occupants[i].nick != nick => {
                self.change_nick(i, from, el, nick, out);
            }
            (None, Some(i), Some(_)) => {
                self.occupants[i].presence = presence_payload(el);
                self.broadcast_presence(i, &[], out);
            }
            (None, _, None) => {
                // RFC 6120: presence to the bare room JID names no nickname.
                self.error_to(el, from, StanzaError::new(Condition::JidMalformed), out);
            }
            _ => {}
        }
    }

    fn join(
        &mut self,
        from: &FullJid,
        el: &Element,
        nick: String,
        cx: &Context,
        out: &mut Vec<Effect>,
    ) {
        let bare = from.to_bare();
        let created = self.occupants.is_empty() && self.affiliations.is_empty();
        if created {
            self.affiliations.insert(bare.clone(), Affiliation::Owner);
            self.locked = true;
            out.push(Effect::SaveAffiliation {
                jid: bare.clone(),
                affiliation: Affiliation::Owner,
            });
        }
        if let Err(error) = self.may_join(&bare, el, &nick) {
            self.error_to(el, from, error, out);
            return;
        }
        // The same user's other client under the same nickname shares the occupant.
        let i = match self.occupant_by_nick(&nick) {
            Some(i) => {
                self.occupants[i].jids.push(from.clone());
                i
            }
            None => {
                let affiliation = self.affiliation(&bare);
                self.occupants.push(Occupant {
                    nick: nick.clone(),
                    bare,
                    jids: vec![from.clone()],
                    affiliation,
                    role: self.default_role(affiliation),
                    presence: presence_payload(el),
                });
                self.occupants.len() - 1
            }
        };
        // XEP-0045 §7.2.3: the others first, then everyone learns of the newcomer (the
        // newcomer last, with 110), then history, then the subject.
        for (j, other) in self.occupants.iter().enumerate() {
            if j != i {
                out.push(Effect::Send(self.presence_of(other, from, &[])));
            }
        }
        let mut codes = vec![];
        if self.config.non_anonymous {
            codes.push(100);
        }
        if self.config.archive {
            codes.push(170);
        }
        if created {
            codes.push(201);
        }
        self.broadcast_presence(i, &codes, out);
        if !created {
            self.send_history(from, el, cx, out);
        }
        out.push(Effect::Send(self.subject_message(from)));
    }

    /// Whether `bare` may enter under `nick` (XEP-0045 §7.2.6–§7.2.11).
    fn may_join(&self, bare: &BareJid, el: &Element, nick: &str) -> Result<(), StanzaError> {
        let affiliation = self.affiliation(bare);
        if nick.trim().is_empty() {
            return Err(StanzaError::new(Condition::JidMalformed));
        }
        if self.locked && affiliation != Affiliation::Owner {
            // §10.1.1: nobody but the owner enters a room being configured.
            return Err(StanzaError::new(Condition::ItemNotFound));
        }
        if affiliation == Affiliation::Outcast {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        if self.config.members_only && affiliation < Affiliation::Member {
            return Err(StanzaError::new(Condition::RegistrationRequired));
        }
        if let Some(other) = self.occupants.iter().find(|o| o.nick == nick)
            && other.bare != *bare
        {
            return Err(StanzaError::new(Condition::Conflict));
        }
        let password = el
            .get_child("x", NS_MUC)
            .and_then(|x| x.get_child("password", NS_MUC))
            .map(Element::text);
        if !self.config.password.is_empty()
            && affiliation < Affiliation::Admin
            && password.as_deref() != Some(self.config.password.as_str())
        {
            return Err(StanzaError::new(Condition::NotAuthorized));
        }
        let max = self.config.max_users as usize;
        if max > 0 && self.occupants.len() >= max && affiliation < Affiliation::Admin {
            return Err(StanzaError::new(Condition::ServiceUnavailable));
        }
        Ok(())
    }

    fn default_role(&self, affiliation: Affiliation) -> Role {
        match affiliation {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            _ if self.config.moderated => Role::Visitor,
            _ => Role::Participant,
        }
    }

    fn change_nick(
        &mut self,
        i: usize,
        from: &FullJid,
        el: &Element,
        nick: String,
        out: &mut Vec<Effect>,
    ) {
        if let Some(other) = self.occupants.iter().find(|o| o.nick == nick)
            && other.bare != self.occupants[i].bare
        {
            self.error_to(el, from, StanzaError::new(Condition::Conflict), out);
            return;
        }
        // §7.6: unavailable under the old nickname, with 303 and the new one, then
        // available under the new.
        let old = self.occupants[i].clone();
        for (to, codes) in self.recipients(i) {
            let mut p = self.presence_of(&old, &to, &codes_with(&codes, 303));
            stanza::set_attr(&mut p, "type", "unavailable");
            if let Some(item) = p
                .get_child_mut("x", NS_USER)
                .and_then(|x| x.get_child_mut("item", NS_USER))
            {
                stanza::set_attr(item, "nick", &nick);
            }
            out.push(Effect::Send(p));
        }
        self.occupants[i].nick = nick;
        self.occupants[i].presence = presence_payload(el);
        self.broadcast_presence(i, &[], out);
    }

    /// Every client in the room with the status codes it gets about occupant `i`: 110 for
    /// the occupant's own clients.
    fn recipients(&self, i: usize) -> Vec<(FullJid, Vec<u16>)> {
        self.occupants
            .iter()
            .enumerate()
            .flat_map(|(j, o)| {
                o.jids
                    .iter()
                    .map(move |jid| (jid.clone(), if i == j { vec![110] } else { vec![] }))
            })
            .collect()
    }

    fn broadcast_presence(&self, i: usize, codes: &[u16], out: &mut Vec<Effect>) {
        let subject = &self.occupants[i];
        for (to, own) in self.recipients(i) {
            let mut all = own.clone();
            if !own.is_empty() {
                all.extend_from_slice(codes);
            }
            out.push(Effect::Send(self.presence_of(subject, &to, &all)));
        }
    }

    /// Occupant `o`'s presence as `to` sees it: the real JID only for moderators, or for
    /// everyone in a non-anonymous room (§7.2.4).
    fn presence_of(&self, o: &Occupant, to: &FullJid, codes: &[u16]) -> Element {
        let mut p = Element::builder("presence", ns::CLIENT)
            .attr(stanza::name("from"), self.occupant_jid(&o.nick))
            .attr(stanza::name("to"), to.as_str())
            .build();
        for child in &o.presence {
            p.append_child(child.clone());
        }
        let mut item = Element::builder("item", NS_USER)
            .attr(stanza::name("affiliation"), o.affiliation.as_str())
            .attr(stanza::name("role"), o.role.as_str())
            .build();
        if (self.sees_real_jids(to) || o.jids.contains(to))
            && let Some(real) = o.jids.first()
        {
            stanza::set_attr(&mut item, "jid", real.as_str());
        }
        let mut x = Element::builder("x", NS_USER).append(item).build();
        for code in codes {
            x.append_child(status(*code));
        }
        p.append_child(x);
        p
    }

    fn sees_real_jids(&self, who: &FullJid) -> bool {
        self.config.non_anonymous
            || self
                .occupant_by_real(who)
                .is_some_and(|i| self.occupants[i].role == Role::Moderator)
    }

    /// Client `real` of occupant `i` leaves; with a kick or a ban (status 301, 307, 321,
    /// 322) every client of the occupant does. `codes` say why, `reason` is the actor's.
    fn leave(
        &mut self,
        i: usize,
        real: &FullJid,
        codes: &[u16],
        reason: Option<&str>,
        out: &mut Vec<Effect>,
    ) {
        let leaving: Vec<FullJid> = if codes.iter().any(|c| matches!(c, 301 | 307 | 321 | 322)) {
            self.occupants[i].jids.clone()
        } else {
            vec![real.clone()]
        };
        let mut occupant = self.occupants[i].clone();
        let last_client = occupant.jids.len() == leaving.len();
        // An occupant that is gone has no role (§7.14, §8.2).
        occupant.role = Role::None;
        for (to, _) in self.recipients(i) {
            let gone = leaving.contains(&to);
            if !last_client && !gone {
                continue;
            }
            let all = if gone {
                codes_with(codes, 110)
            } else {
                codes.to_vec()
            };
            let mut p = self.presence_of(&occupant, &to, &all);
            stanza::set_attr(&mut p, "type", "unavailable");
            if let (Some(reason), Some(item)) = (
                reason,
                p.get_child_mut("x", NS_USER)
                    .and_then(|x| x.get_child_mut("item", NS_USER)),
            ) {
                item.append_child(Element::builder("reason", NS_USER).append(reason).build());
            }
            out.push(Effect::Send(p));
        }
        if last_client {
            self.occupants.remove(i);
        } else {
            self.occupants[i].jids.retain(|j| !leaving.contains(j));
        }
        if self.occupants.is_empty() && (!self.config.persistent || self.locked) {
            out.push(Effect::Destroyed);
        }
    }

    // ---- history and subject ----

    fn send_history(&self, to: &FullJid, el: &Element, cx: &Context, out: &mut Vec<Effect>) {
        let limits = history_limits(el, cx.now_ms);
        let mut chosen: Vec<&Said> = Vec::new();
        let mut chars = 0;
        for said in self.history.iter().rev() {
            if limits.max_stanzas.is_some_and(|m| chosen.len() >= m)
                || limits.since_ms.is_some_and(|s| said.at_ms < s)
            {
                break;
            }
            let mut xml = Vec::new();
            let _ = crate::xml::write_stanza(&said.message, &mut xml);
            let size = xml.len();
            if limits.max_chars.is_some_and(|m| chars + size > m) {
                break;
            }
            chars += size;
            chosen.push(said);
        }
        for said in chosen.into_iter().rev() {
            let mut m = said.message.clone();
            stanza::set_attr(&mut m, "to", to.as_str());
            m.append_child(
                Element::builder("delay", ns::DELAY)
                    .attr(stanza::name("from"), self.jid.as_str())
                    .attr(stanza::name("stamp"), said.stamp.as_str())
                    .build(),
            );
            out.push(Effect::Send(m));
        }
    }

    fn subject_message(&self, to: &FullJid) -> Element {
        let (text, by) = match &self.subject {
            Some((text, by)) => (text.as_str(), Some(by.as_str())),
            None => ("", None),
        };
        let from = by.map_or_else(|| self.jid.to_string(), |nick| self.occupant_jid(nick));
        Element::builder("message", ns::CLIENT)
            .attr(stanza::name("from"), from)
            .attr(stanza::name("to"), to.as_str())
            .attr(stanza::name("type"), "groupchat")
            .append(Element::builder("subject", ns::CLIENT).append(text).build())
            .build()
    }

    fn remember(&mut self, said: Said) {
        self.history.push_back(said);
        self.trim_history();
    }

    fn trim_history(&mut self) {
        while self.history.len() > self.history_max {
            self.history.pop_front();
        }
    }

    // ---- messages ----

    fn on_message(
        &mut self,
        from: &FullJid,
        el: &Element,
        nick: Option<String>,
        cx: &Context,
        out: &mut Vec<Effect>,
    ) {
        let me = self.occupant_by_real(from);
        let ty = el.attr("type").unwrap_or("normal");
        match (ty, nick, me) {
            ("error", _, Some(i)) if !presence_error_is_transient(el) => {
                self.leave(i, from, &[333], None, out);
            }
            ("error", _, _) => {}
            ("groupchat", None, Some(i)) => self.groupchat(i, from, el, cx, out),
            ("groupchat", Some(_), Some(_)) => {
                // §7.5: a private message must not be of type groupchat.
                self.error_to(el, from, StanzaError::new(Condition::BadRequest), out);
            }
            ("groupchat", _, _) => {
                self.error_to(el, from, StanzaError::new(Condition::NotAcceptable), out);
            }
            (_, Some(target), Some(i)) => self.private_message(i, from, el, &target, out),
            (_, None, _) if el.has_child("x", NS_USER) => self.invitations(from, el, me, out),
            (_, _, None) => {
                self.error_to(el, from, StanzaError::new(Condition::NotAcceptable), out);
            }
            _ => {}
        }
    }

    fn groupchat(
        &mut self,
        i: usize,
        from: &FullJid,
        el: &Element,
        cx: &Context,
        out: &mut Vec<Effect>,
    ) {
        let o = &self.occupants[i];
        if o.role < Role::Participant {
            // §7.4: visitors in a moderated room have no voice.
            self.error_to(el, from, StanzaError::new(Condition::Forbidden), out);
            return;
        }
        let nick = o.nick.clone();
        if let Some(subject) = el.get_child("subject", ns::CLIENT)
            && !el.has_child("body", ns::CLIENT)
        {
            if !(self.config.change_subject || o.role == Role::Moderator) {
                self.error_to(el, from, StanzaError::new(Condition::Forbidden), out);
                return;
            }
            self.subject = Some((subject.text(), nick.clone()));
            out.push(Effect::SaveRoom);
        }
        let mut reflected = Element::builder("message", ns::CLIENT)
            .attr(stanza::name("from"), self.occupant_jid(&nick))
            .attr(stanza::name("type"), "groupchat")
            .build();
        if let Some(id) = el.attr("id") {
            stanza::set_attr(&mut reflected, "id", id);
        }
        let room = self.jid.to_string();
        for child in el.children().filter(|c| {
            // A stanza-id claiming to be the room's was not given by it.
            !(c.is("stanza-id", ns::SID) && c.attr("by") == Some(room.as_str()))
        }) {
            reflected.append_child(child.clone());
        }
        // Only what was said is history and archive (§7.2.15): the subject is sent apart.
        if el.has_child("body", ns::CLIENT) {
            reflected.append_child(
                Element::builder("stanza-id", ns::SID)
                    .attr(stanza::name("by"), room.as_str())
                    .attr(stanza::name("id"), cx.stanza_id.as_str())
                    .build(),
            );
            if self.config.archive {
                out.push(Effect::Archive {
                    id: cx.id,
                    from: self.occupant_jid(&nick),
                    message: reflected.clone(),
                });
            }
            self.remember(Said {
                at_ms: cx.now_ms,
                stamp: cx.stamp.clone(),
                message: reflected.clone(),
            });
        }
        for o in &self.occupants {
            for jid in &o.jids {
                let mut m = reflected.clone();
                stanza::set_attr(&mut m, "to", jid.as_str());
                out.push(Effect::Send(m));
            }
        }
    }

    fn private_message(
        &mut self,
        i: usize,
        from: &FullJid,
        el: &Element,
        target: &str,
        out: &mut Vec<Effect>,
    ) {
        if !self.config.allow_pm.allows(self.occupants[i].role) {
            self.error_to(el, from, StanzaError::new(Condition::NotAllowed), out);
            return;
        }
        let Some(t) = self.occupant_by_nick(target) else {
            self.error_to(el, from, StanzaError::new(Condition::ItemNotFound), out);
            return;
        };
        let sender = self.occupant_jid(&self.occupants[i].nick);
        for jid in &self.occupants[t].jids {
            let mut m = el.clone();
            stanza::set_attr(&mut m, "from", &sender);
            stanza::set_attr(&mut m, "to", jid.as_str());
            // §7.5: the room marks what it relays, so the recipient's server sends no
            // carbon copies of it (XEP-0280 §6.1).
            if !m.has_child("x", NS_USER) {
                m.append_child(Element::builder("x", NS_USER).build());
            }
            out.push(Effect::Send(m));
        }
    }

    /// Mediated invitations (§7.8.2): the room passes each on, and in a members-only room
    /// an admin's invitation makes the invitee a member.
    fn invitations(
        &mut self,
        from: &FullJid,
        el: &Element,
        me: Option<usize>,
        out: &mut Vec<Effect>,
    ) {
        let Some(x) = el.get_child("x", NS_USER) else {
            return;
        };
        let affiliation = self.affiliation(&from.to_bare());
        let may_invite = me.is_some()
            && (self.config.allow_invites
                || affiliation >= Affiliation::Admin
                || !self.config.members_only);
        if !may_invite {
            self.error_to(el, from, StanzaError::new(Condition::Forbidden), out);
            return;
        }
        for invite in x.children().filter(|c| c.is("invite", NS_USER)) {
            let Some(to) = invite.attr("to").and_then(|t| Jid::new(t).ok()) else {
                continue;
            };
            if self.config.members_only && self.affiliation(&to.to_bare()) < Affiliation::Member {
                self.affiliations.insert(to.to_bare(), Affiliation::Member);
                out.push(Effect::SaveAffiliation {
                    jid: to.to_bare(),
                    affiliation: Affiliation::Member,
                });
            }
            let mut passed = Element::builder("invite", NS_USER)
                .attr(stanza::name("from"), from.to_bare().as_str())
                .build();
            if let Some(reason) = invite.get_child("reason", NS_USER) {
                passed.append_child(reason.clone());
            }
            let mut x = Element::builder("x", NS_USER).append(passed).build();
            if !self.config.password.is_empty() {
                x.append_child(
                    Element::builder("password", NS_USER)
                        .append(self.config.password.as_str())
                        .build(),
                );
            }
            out.push(Effect::Send(
                Element::builder("message", ns::CLIENT)
                    .attr(stanza::name("from"), self.jid.as_str())
                    .attr(stanza::name("to"), to.as_str())
                    .append(x)
                    .append(
                        Element::builder("body", ns::CLIENT)
                            .append(format!("{} invites you to {}", from.to_bare(), self.jid))
                            .build(),
                    )
                    .build(),
            ));
        }
    }

    // ---- IQs ----

    fn on_iq(&mut self, from: &FullJid, el: &Element, nick: Option<String>, out: &mut Vec<Effect>) {
        let ty = el.attr("type").unwrap_or("");
        if let Some(nick) = nick {
            self.iq_to_occupant(from, el, &nick, out);
            return;
        }
        if !matches!(ty, "get" | "set") {
            return;
        }
        let payload = stanza::iq_payload(el);
        let (name, namespace) = payload.map_or((String::new(), String::new()), |p| {
            (p.name().to_owned(), p.ns())
        });
        // What a request makes happen follows its answer (XEP-0045 §9, §10.2.1).
        let mut then = Vec::new();
        let answer = match (name.as_str(), namespace.as_str(), ty) {
            ("query", ns::DISCO_INFO, "get") => Ok(Some(self.disco_info())),
            ("query", ns::DISCO_ITEMS, "get") => {
                Ok(Some(Element::builder("query", ns::DISCO_ITEMS).build()))
            }
            ("ping", ns::PING, "get") => Ok(None),
            ("vCard", ns::VCARD, "get") => Ok(Some(Element::builder("vCard", ns::VCARD).build())),
            ("query", NS_ADMIN, "get") => self.admin_list(from, payload),
            ("query", NS_ADMIN, "set") => self.admin_set(from, payload, &mut then),
            ("query", NS_OWNER, "get") => self.owner_get(from),
            ("query", NS_OWNER, "set") => self.owner_set(from, payload, &mut then),
            _ => Err(StanzaError::new(Condition::ServiceUnavailable)),
        };
        // What it stores comes first: the answer says the change is durable.
        let (stored, told): (Vec<Effect>, Vec<Effect>) = then
            .into_iter()
            .partition(|e| !matches!(e, Effect::Send(_)));
        out.extend(stored);
        match answer {
            Ok(payload) => {
                let mut reply = stanza::iq_result(el, Some(self.jid.as_str()));
                stanza::set_attr(&mut reply, "to", from.as_str());
                if let Some(p) = payload {
                    reply.append_child(p);
                }
                out.push(Effect::Send(reply));
            }
            Err(e) => self.error_to(el, from, e, out),
        }
        out.extend(told);
    }

    /// An IQ to `room/nick`: a self-ping is answered by the room (XEP-0410); other requests
    /// between occupants are passed on under their nicknames.
    fn iq_to_occupant(&mut self, from: &FullJid, el: &Element, nick: &str, out: &mut Vec<Effect>) {
        let me = self.occupant_by_real(from);
        let target = self.occupant_by_nick(nick);
        let is_ping = el.attr("type") == Some("get") && el.has_child("ping", ns::PING);
        match (me, target) {
            (Some(i), Some(t)) if is_ping && i == t => {
                let mut reply = stanza::iq_result(el, Some(&self.occupant_jid(nick)));
                stanza::set_attr(&mut reply, "to", from.as_str());
                out.push(Effect::Send(reply));
            }
            (None, _) => {
                // §7.2.1 (and XEP-0410 §3): not an occupant.
                let error = StanzaError::with_type(ErrorType::Modify, Condition::NotAcceptable);
                self.error_to(el, from, error, out);
            }
            (Some(i), Some(t)) => {
                let Some(real) = self.occupants[t].jids.first().cloned() else {
                    return;
                };
                let mut passed = el.clone();
                stanza::set_attr(
                    &mut passed,
                    "from",
                    &self.occupant_jid(&self.occupants[i].nick),
                );
                stanza::set_attr(&mut passed, "to", real.as_str());
                out.push(Effect::Send(passed));
            }
            (Some(_), None) => {
                self.error_to(el, from, StanzaError::new(Condition::ItemNotFound), out);
            }
        }
    }

    fn disco_info(&self) -> Element {
        let mut q = Element::builder("query", ns::DISCO_INFO)
            .append(
                Element::builder("identity", ns::DISCO_INFO)
                    .attr(stanza::name("category"), "conference")
                    .attr(stanza::name("type"), "text")
                    .attr(stanza::name("name"), self.display_name())
                    .build(),
            )
            .build();
        let mut features = vec![NS_MUC, NS_STABLE_ID, NS_SELF_PING, ns::SID];
        if self.config.archive {
            features.push(ns::MAM);
        }
        features.extend(self.config.features());
        for f in features {
            q.append_child(
                Element::builder("feature", ns::DISCO_INFO)
                    .attr(stanza::name("var"), f)
                    .build(),
            );
        }
        let count = self.occupants.len().to_string();
        let subject = self.subject.as_ref().map_or("", |(s, _)| s.as_str());
        q.append_child(
            Form::new("result", config::ROOMINFO)
                .field(
                    "muc#roominfo_description",
                    "text-single",
                    None,
                    &[&self.config.description],
                )
                .field("muc#roominfo_occupants", "text-single", None, &[&count])
                .field("muc#roominfo_subject", "text-single", None, &[subject])
                .field(
                    "muc#roomconfig_enablearchiving",
                    "boolean",
                    None,
                    &[if self.config.archive { "1" } else { "0" }],
                )
                .build(),
        );
        q
    }

    /// The room's name, or its local part.
    pub fn display_name(&self) -> String {
        if self.config.name.is_empty() {
            self.jid.node().map(|n| n.to_string()).unwrap_or_default()
        } else {
            self.config.name.clone()
        }
    }

    // ---- administration (§8, §9) and ownership (§10) ----

    fn actor(&self, from: &FullJid) -> (Affiliation, Role) {
        let role = self
            .occupant_by_real(from)
            .map_or(Role::None, |i| self.occupants[i].role);
        (self.affiliation(&from.to_bare()), role)
    }

    fn admin_list(
        &self,
        from: &FullJid,
        q: Option<&Element>,
    ) -> Result<Option<Element>, StanzaError> {
        let (affiliation, role) = self.actor(from);
        let item = q
            .and_then(|q| q.get_child("item", NS_ADMIN))
            .ok_or(Condition::BadRequest)?;
        let mut list = Element::builder("query", NS_ADMIN).build();
        if let Some(wanted) = item.attr("affiliation").and_then(Affiliation::parse) {
            if affiliation < Affiliation::Admin {
                return Err(StanzaError::new(Condition::Forbidden));
            }
            for (jid, a) in self.affiliations.iter().filter(|(_, a)| **a == wanted) {
                list.append_child(
                    Element::builder("item", NS_ADMIN)
                        .attr(stanza::name("affiliation"), a.as_str())
                        .attr(stanza::name("jid"), jid.as_str())
                        .build(),
                );
            }
        } else if let Some(wanted) = item.attr("role").and_then(Role::parse) {
            if role < Role::Moderator {
                return Err(StanzaError::new(Condition::Forbidden));
            }
            for o in self.occupants.iter().filter(|o| o.role == wanted) {
                list.append_child(
                    Element::builder("item", NS_ADMIN)
                        .attr(stanza::name("role"), o.role.as_str())
                        .attr(stanza::name("nick"), o.nick.as_str())
                        .attr(stanza::name("affiliation"), o.affiliation.as_str())
                        .attr(stanza::name("jid"), o.bare.as_str())
                        .build(),
                );
            }
        } else {
            return Err(StanzaError::new(Condition::BadRequest));
        }
        Ok(Some(list))
    }

    fn admin_set(
        &mut self,
        from: &FullJid,
        q: Option<&Element>,
        out: &mut Vec<Effect>,
    ) -> Result<Option<Element>, StanzaError> {
        let items: Vec<&Element> = q
            .map(|q| q.children().filter(|c| c.is("item", NS_ADMIN)).collect())
            .unwrap_or_default();
        if items.is_empty() {
            return Err(StanzaError::new(Condition::BadRequest));
        }
        // Check every change before making any (§9.1.1: all or nothing).
        let mut changes = Vec::new();
        for item in &items {
            changes.push(self.admin_change(from, item)?);
        }
        for change in changes {
            self.apply_admin(change, out);
        }
        Ok(None)
    }

    /// One `<item/>` of an admin request, checked against the actor's rights.
    fn admin_change(&self, from: &FullJid, item: &Element) -> Result<AdminChange, StanzaError> {
        let (my_affiliation, my_role) = self.actor(from);
        let reason = item.get_child("reason", NS_ADMIN).map(Element::text);
        let forbidden = || StanzaError::new(Condition::NotAllowed);
        if let Some(role) = item.attr("role").and_then(Role::parse) {
            let nick = item.attr("nick").ok_or(Condition::BadRequest)?;
            let t = self.occupant_by_nick(nick).ok_or(Condition::ItemNotFound)?;
            let target = &self.occupants[t];
            // §8.2, §8.4: moderators change the roles of those below admins (admins and
            // owners are never kicked); granting or taking moderator is for admins.
            let moderator_changes = role == Role::Moderator || target.role == Role::Moderator;
            let allowed = my_role == Role::Moderator
                && target.affiliation < Affiliation::Admin
                && (!moderator_changes || my_affiliation >= Affiliation::Admin);
            if !allowed {
                return Err(forbidden());
            }
            return Ok(AdminChange::Role {
                nick: nick.to_owned(),
                role,
                reason,
            });
        }
        let affiliation = item
            .attr("affiliation")
            .and_then(Affiliation::parse)
            .ok_or(Condition::BadRequest)?;
        let jid = item
            .attr("jid")
            .and_then(|j| Jid::new(j).ok())
            .map(|j| j.to_bare())
            .ok_or(Condition::BadRequest)?;
        let current = self.affiliation(&jid);
        // §9: admins manage members and outcasts below them; owners everything, but the
        // last owner stays.
        let allowed = match my_affiliation {
            Affiliation::Owner => true,
            Affiliation::Admin => current < Affiliation::Admin && affiliation < Affiliation::Admin,
            _ => false,
        };
        if !allowed {
            return Err(forbidden());
        }
        let owners = self
            .affiliations
            .values()
            .filter(|a| **a == Affiliation::Owner)
            .count();
        if current == Affiliation::Owner && affiliation != Affiliation::Owner && owners == 1 {
            return Err(StanzaError::new(Condition::Conflict));
        }
        Ok(AdminChange::Affiliation {
            jid,
            affiliation,
            reason,
        })
    }

    fn apply_admin(&mut self, change: AdminChange, out: &mut Vec<Effect>) {
        match change {
            AdminChange::Role { nick, role, reason } => {
                let Some(t) = self.occupant_by_nick(&nick) else {
                    return;
                };
                if role == Role::None {
                    let real = self.occupants[t].jids[0].clone();
                    self.leave(t, &real, &[307], reason.as_deref(), out);
                } else {
                    self.occupants[t].role = role;
                    self.broadcast_presence(t, &[], out);
                }
            }
            AdminChange::Affiliation {
                jid,
                affiliation,
                reason,
            } => {
                if affiliation == Affiliation::None {
                    self.affiliations.remove(&jid);
                } else {
                    self.affiliations.insert(jid.clone(), affiliation);
                }
                out.push(Effect::SaveAffiliation {
                    jid: jid.clone(),
                    affiliation,
                });
                let targets: Vec<usize> = (0..self.occupants.len())
                    .filter(|&i| self.occupants[i].bare == jid)
                    .collect();
                for t in targets.into_iter().rev() {
                    let kicked = match affiliation {
                        Affiliation::Outcast => Some(301),
                        _ if self.config.members_only && affiliation < Affiliation::Member => {
                            Some(321)
                        }
                        _ => None,
                    };
                    match kicked {
                        Some(code) => {
                            // §9.1: the banned occupant leaves as an outcast.
                            self.occupants[t].affiliation = affiliation;
                            let real = self.occupants[t].jids[0].clone();
                            self.leave(t, &real, &[code], reason.as_deref(), out);
                        }
                        None => {
                            self.occupants[t].affiliation = affiliation;
                            self.occupants[t].role = self.default_role(affiliation);
                            self.broadcast_presence(t, &[], out);
                        }
                    }
                }
            }
        }
    }

    fn owner_get(&self, from: &FullJid) -> Result<Option<Element>, StanzaError> {
        if self.actor(from).0 != Affiliation::Owner {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        Ok(Some(
            Element::builder("query", NS_OWNER)
                .append(self.config.form())
                .build(),
        ))
    }

    fn owner_set(
        &mut self,
        from: &FullJid,
        q: Option<&Element>,
        out: &mut Vec<Effect>,
    ) -> Result<Option<Element>, StanzaError> {
        if self.actor(from).0 != Affiliation::Owner {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        let q = q.ok_or(Condition::BadRequest)?;
        if let Some(destroy) = q.get_child("destroy", NS_OWNER) {
            self.destroy(destroy, out);
            return Ok(None);
        }
        let x = q
            .get_child("x", ns::DATA_FORMS)
            .ok_or(Condition::BadRequest)?;
        if x.attr("type") == Some("cancel") {
            if self.locked {
                // §10.1.3: cancelling the initial configuration destroys the room.
                self.destroy(&Element::builder("destroy", NS_OWNER).build(), out);
            }
            return Ok(None);
        }
        let form = Submitted::parse(x).ok_or(Condition::BadRequest)?;
        if form.form_type().is_some_and(|t| t != config::ROOMCONFIG) {
            return Err(StanzaError::new(Condition::BadRequest).text("not a room configuration"));
        }
        let was = self.config.clone();
        self.config
            .apply(&form)
            .map_err(|e| StanzaError::new(Condition::NotAcceptable).text(e))?;
        self.locked = false;
        out.push(Effect::SaveRoom);
        if was != self.config {
            // §10.2.1: occupants hear that the configuration changed (status 104).
            for o in &self.occupants {
                for jid in &o.jids {
                    out.push(Effect::Send(
                        Element::builder("message", ns::CLIENT)
                            .attr(stanza::name("from"), self.jid.as_str())
                            .attr(stanza::name("to"), jid.as_str())
                            .attr(stanza::name("type"), "groupchat")
                            .append(Element::builder("x", NS_USER).append(status(104)).build())
                            .build(),
                    ));
                }
            }
        }
        Ok(None)
    }

    fn destroy(&mut self, destroy: &Element, out: &mut Vec<Effect>) {
        for o in std::mem::take(&mut self.occupants) {
            for jid in &o.jids {
                let mut p = self.presence_of(&o, jid, &[110]);
                stanza::set_attr(&mut p, "type", "unavailable");
                if let Some(x) = p.get_child_mut("x", NS_USER) {
                    let mut d = Element::builder("destroy", NS_USER).build();
                    if let Some(alt) = destroy.attr("jid") {
                        stanza::set_attr(&mut d, "jid", alt);
                    }
                    if let Some(reason) = destroy.get_child("reason", NS_OWNER) {
                        d.append_child(
                            Element::builder("reason", NS_USER)
                                .append(reason.text())
                                .build(),
                        );
                    }
                    x.append_child(d);
                }
                out.push(Effect::Send(p));
            }
        }
        out.push(Effect::Destroyed);
    }
}

enum AdminChange {
    Role {
        nick: String,
        role: Role,
        reason: Option<String>,
    },
    Affiliation {
        jid: BareJid,
        affiliation: Affiliation,
        reason: Option<String>,
    },
}

fn status(code: u16) -> Element {
    Element::builder("status", NS_USER)
        .attr(stanza::name("code"), code.to_string())
        .build()
}

fn codes_with(codes: &[u16], code: u16) -> Vec<u16> {
    let mut all = vec![code];
    all.extend_from_slice(codes);
    all
}

/// What of an occupant's presence is repeated to others: show, status, priority and
/// extensions such as caps and avatars, but not the MUC join element.
fn presence_payload(el: &Element) -> Vec<Element> {
    el.children()
        .filter(|c| !c.is("x", NS_MUC) && !c.is("x", NS_USER))
        .cloned()
        .collect()
}

/// Whether an error bounced from an occupant's address says only that its server is out
/// of reach for now: a WAN outage must not empty a room of its remote occupants.
fn presence_error_is_transient(el: &Element) -> bool {
    StanzaError::from_stanza(el).is_some_and(|e| {
        matches!(
            e.condition,
            Condition::RemoteServerNotFound | Condition::RemoteServerTimeout
        )
    })
}

fn history_limits(el: &Element, now_ms: i64) -> HistoryLimits {
    let Some(h) = el
        .get_child("x", NS_MUC)
        .and_then(|x| x.get_child("history", NS_MUC))
    else {
        return HistoryLimits::default();
    };
    let num = |name: &str| h.attr(name).and_then(|v| v.parse::<usize>().ok());
    HistoryLimits {
        max_stanzas: num("maxstanzas"),
        max_chars: num("maxchars"),
        since_ms: num("seconds")
            .map(|s| now_ms - i64::try_from(s).unwrap_or(i64::MAX / 2000) * 1000)
            .or_else(|| h.attr("since").and_then(parse_since)),
    }
}

/// An XEP-0082 date-time, to Unix milliseconds, without a date library: the `since`
/// attribute of history requests.
fn parse_since(text: &str) -> Option<i64> {
    let t = text.trim();
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.trim_end_matches('Z');
    let time = time.split(['+']).next()?;
    let mut parts = time.split(':');
    let (hh, mm) = (
        parts.next()?.parse::<i64>().ok()?,
        parts.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = parts.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60) as f64 * 1000.0 + ss * 1000.0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_dates_parse_like_the_clock() {
        assert_eq!(parse_since("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_since("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_since("yesterday"), None);
    }
}
