//! The rooms of an API session (XEP-0045): entering and leaving them, what their
//! occupants' presence and messages change, and reading a room's archive. The rooms a
//! user enters are kept as bookmarks (XEP-0402) that join at login, so a session that
//! starts again, or any of the user's other clients, goes back into them.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::debug;

use outpost_proto::stanza::set_attr;

use super::{ApiSession, IQ_TIMEOUT, SessionError, muc};

/// A room the session is in, or entering.
#[derive(Clone, Debug)]
pub(crate) struct Room {
    pub(crate) nick: String,
    pub(crate) name: Option<String>,
    /// Whether the room has taken the session in (its own presence came back).
    pub(crate) joined: bool,
    pub(crate) subject: Option<String>,
    pub(crate) occupants: BTreeMap<String, Occupant>,
}

#[derive(Clone, Debug)]
pub(crate) struct Occupant {
    pub(crate) role: String,
    pub(crate) affiliation: String,
    pub(crate) jid: Option<String>,
    pub(crate) presence: String,
}

impl Room {
    fn new(nick: &str, name: Option<String>) -> Room {
        Room {
            nick: nick.to_owned(),
            name,
            joined: false,
            subject: None,
            occupants: BTreeMap::new(),
        }
    }

    /// What an occupant's presence changes.
    fn apply(&mut self, o: &muc::OccupantPresence) {
        match &o.presence {
            Some(p) => {
                let occupant = Occupant {
                    role: o.role.clone(),
                    affiliation: o.affiliation.clone(),
                    jid: o.jid.clone(),
                    presence: p.show.clone(),
                };
                self.occupants.insert(o.nick.clone(), occupant);
            }
            None => {
                self.occupants.remove(&o.nick);
            }
        }
        // Its own presence: in (and under which nickname), or out (kicked, banned, the
        // room destroyed; a nickname change's first half, status 303, is not).
        if !o.codes.contains(&110) {
            return;
        }
        if o.presence.is_some() {
            self.joined = true;
            self.nick.clone_from(&o.nick);
        } else if !o.codes.contains(&303) {
            self.joined = false;
            self.occupants.clear();
        }
    }

    pub(crate) fn to_json(&self, jid: &str) -> Value {
        let occupants: Vec<Value> = (self.occupants.iter())
            .map(|(nick, o)| {
                json!({"nick": nick, "role": o.role, "affiliation": o.affiliation,
                       "jid": o.jid, "presence": o.presence})
            })
            .collect();
        json!({"jid": jid, "name": self.name, "nick": self.nick, "joined": self.joined,
               "subject": self.subject, "occupants": occupants})
    }
}

impl ApiSession {
    /// Enters `room` as `nick` (or changes the nickname there), keeps it as a bookmark,
    /// and waits until the room has taken the session in.
    pub(crate) async fn join(&self, room: &str, nick: &str) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.lock();
            let entry =
                (state.rooms.entry(room.to_owned())).or_insert_with(|| Room::new(nick, None));
            if entry.joined && entry.nick == nick {
                return Ok(());
            }
            entry.nick = nick.to_owned();
            state.joins.insert(room.to_owned(), tx);
        }
        self.send(&muc::join(room, nick)).await?;
        let answer = tokio::time::timeout(IQ_TIMEOUT, rx).await;
        let refused = |state: &mut super::State| {
            state.joins.remove(room);
            if state.rooms.get(room).is_some_and(|r| !r.joined) {
                state.rooms.remove(room);
            }
        };
        match answer {
            Ok(Ok(Ok(_codes))) => {}
            Ok(Ok(Err(condition))) => {
                refused(&mut self.lock());
                return Err(SessionError::Refused(condition));
            }
            Ok(Err(_)) => return Err(SessionError::Gone),
            Err(_) => {
                refused(&mut self.lock());
                return Err(SessionError::Timeout);
            }
        }
        let name = self.lock().rooms.get(room).and_then(|r| r.name.clone());
        self.iq(muc::bookmark_publish(room, nick, name.as_deref()))
            .await
            .map(drop)
    }

    /// Leaves `room` and forgets its bookmark. False if the session was not in it.
    pub(crate) async fn leave(&self, room: &str) -> Result<bool, SessionError> {
        let left = self.lock().rooms.remove(room);
        if let Some(r) = &left {
            self.send(&muc::leave(room, &r.nick)).await?;
        }
        let forgotten = self.iq(muc::bookmark_retract(room)).await;
        // Retracting a bookmark that was never kept is no failure.
        match forgotten {
            Ok(_) | Err(SessionError::Refused(_)) => Ok(left.is_some()),
            Err(e) => Err(e),
        }
    }

    /// Enters the rooms the user's bookmarks say to join at login, without waiting for
    /// them: what each room answers arrives as events.
    pub(super) async fn rejoin_bookmarked(&self) -> Result<(), SessionError> {
        let kept = match self.iq(muc::bookmarks_get()).await {
            Ok(result) => muc::bookmarks(&result),
            // No bookmarks yet (or no PEP): nothing to enter.
            Err(SessionError::Refused(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let local = self.user.node().map(|n| n.to_string()).unwrap_or_default();
        for b in kept.into_iter().filter(|b| b.autojoin) {
            let nick = b.nick.unwrap_or_else(|| local.clone());
            (self.lock().rooms).insert(b.jid.clone(), Room::new(&nick, b.name));
            self.send(&muc::join(&b.jid, &nick)).await?;
        }
        Ok(())
    }

    /// A page of `room`'s archive, oldest first, as the room lets the user read it.
    pub(crate) async fn room_archive(
        &self,
        room: &str,
        before: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<Value>, bool), SessionError> {
        let query_id = self.next_id("q");
        self.lock()
            .archive_pages
            .insert(query_id.clone(), Vec::new());
        let query = muc::archive_query(room, &query_id, before, after, limit);
        let answer = self.iq(query).await;
        let entries = self.lock().archive_pages.remove(&query_id);
        let answer = answer?;
        Ok((entries.unwrap_or_default(), muc::archive_complete(&answer)))
    }

    /// A room refused to let the session in.
    pub(super) fn on_presence_error(&self, from: &str, condition: String) {
        let room = from.split_once('/').map_or(from, |(room, _)| room);
        let waiter = self.lock().joins.remove(room);
        match waiter {
            Some(w) => drop(w.send(Err(condition))),
            None => {
                let mut state = self.lock();
                if state.rooms.get(room).is_some_and(|r| !r.joined) {
                    debug!(%room, %condition, "a bookmarked room refused the session");
                    state.rooms.remove(room);
                }
            }
        }
    }

    pub(super) async fn on_occupant(&self, o: muc::OccupantPresence) {
        let own = o.codes.contains(&110);
        let waiter = {
            let mut state = self.lock();
            let Some(room) = state.rooms.get_mut(&o.room) else {
                return;
            };
            room.apply(&o);
            let entered = own && o.presence.is_some();
            if entered {
                state.joins.remove(&o.room)
            } else {
                None
            }
        };
        // A room made by this join waits for its configuration: the default one, sent
        // before the join is answered so that nothing said in the room overtakes it.
        if own && o.codes.contains(&201) {
            let mut configure = muc::instant_room(&o.room);
            set_attr(&mut configure, "id", &self.next_id("cfg"));
            let _ = self.send(&configure).await;
        }
        if let Some(w) = waiter {
            let _ = w.send(Ok(o.codes.clone()));
        }
        let data = json!({
            "from": format!("{}/{}", o.room, o.nick),
            "room": o.room,
            "nick": o.nick,
            "presence": o.presence.as_ref().map_or("unavailable", |p| p.show.as_str()),
            "role": o.role,
            "affiliation": o.affiliation,
            "jid": o.jid,
            "self": own,
        });
        self.push_event("occupant", data, None);
    }

    pub(super) fn on_groupchat(&self, room: &str, data: Option<Value>, subject: Option<String>) {
        {
            let mut state = self.lock();
            let Some(r) = state.rooms.get_mut(room) else {
                return;
            };
            if let Some(subject) = subject {
                r.subject = Some(subject).filter(|s| !s.is_empty());
            }
        }
        if let Some(data) = data {
            self.push_event("groupchat", data, None);
        }
    }
}
