//! Group chat (XEP-0045) and a conversation's history (XEP-0313): entering and leaving
//! rooms, their messages, and pages of the archive asked for by the user.

use outpost_proto::minidom::Element;
use outpost_proto::xml::escape;

use crate::event::{Event, HistoryItem};
use crate::incoming::forwarded;
use crate::ns;
use crate::session::Session;
use crate::stream::{Stream, StreamError};

/// Messages of a room's past a join asks for.
const ROOM_HISTORY: usize = 20;
/// Messages per history page.
const HISTORY_PAGE: usize = 50;
/// How often entering a room that is not there (yet) is tried again.
const ROOM_RETRIES: u8 = 3;

impl Session {
    /// Enters `room` as `nick`, remembering it for later logins.
    pub(crate) async fn join(
        &mut self,
        stream: &mut Stream,
        room: &str,
        nick: Option<String>,
    ) -> Result<(), StreamError> {
        let room = crate::bare(room).to_lowercase();
        let nick = nick.unwrap_or_else(|| self.user.clone());
        self.rooms.insert(room.clone(), nick.clone());
        self.enter(stream, &room, &nick).await
    }

    async fn enter(
        &mut self,
        stream: &mut Stream,
        room: &str,
        nick: &str,
    ) -> Result<(), StreamError> {
        let xml = format!(
            "<presence to='{}/{}'><x xmlns='http://jabber.org/protocol/muc'>\
             <history maxstanzas='{ROOM_HISTORY}'/></x></presence>",
            escape(room),
            escape(nick)
        );
        self.send_stanza(stream, xml, None).await
    }

    /// The rooms that refused us as not there yet, once more (at the session's tick).
    pub(crate) async fn retry_rooms(&mut self, stream: &mut Stream) -> Result<(), StreamError> {
        let again: Vec<(String, String)> = self
            .room_retries
            .keys()
            .filter_map(|r| self.rooms.get(r).map(|n| (r.clone(), n.clone())))
            .collect();
        for (room, nick) in again {
            self.enter(stream, &room, &nick).await?;
        }
        Ok(())
    }

    /// After a new login, every room again (a resumed session is still in them).
    pub(crate) async fn rejoin(&mut self, stream: &mut Stream) -> Result<(), StreamError> {
        let rooms: Vec<(String, String)> = self
            .rooms
            .iter()
            .map(|(r, n)| (r.clone(), n.clone()))
            .collect();
        for (room, nick) in rooms {
            self.enter(stream, &room, &nick).await?;
        }
        Ok(())
    }

    pub(crate) async fn leave(
        &mut self,
        stream: &mut Stream,
        room: &str,
    ) -> Result<(), StreamError> {
        let room = crate::bare(room).to_lowercase();
        let Some(nick) = self.rooms.remove(&room) else {
            return Ok(());
        };
        let xml = format!(
            "<presence to='{}/{}' type='unavailable'/>",
            escape(&room),
            escape(&nick)
        );
        self.send_stanza(stream, xml, None).await
    }

    pub(crate) fn room_message(to: &str, body: &str, id: &str) -> String {
        format!(
            "<message to='{}' type='groupchat' id='{id}'><body>{}</body></message>",
            escape(crate::bare(to)),
            escape(body),
            id = escape(id)
        )
    }

    /// Presence from a room we are in: our own entry (a room we just created is made
    /// an instant room, XEP-0045 §10.1.2), or a refusal. `false` when the presence is
    /// not from one of our rooms.
    pub(crate) async fn room_presence(
        &mut self,
        stream: &mut Stream,
        el: &Element,
    ) -> Result<bool, StreamError> {
        let from = el.attr("from").unwrap_or_default();
        let room = crate::bare(from).to_owned();
        let Some(nick) = self.rooms.get(&room).cloned() else {
            return Ok(false);
        };
        if el.attr("type") == Some("error") {
            let condition = crate::incoming::error_condition(el);
            // A room someone has just created is locked until configured (XEP-0045
            // §7.2.2): try again a few times before giving up.
            let tries = self.room_retries.entry(room.clone()).or_insert(0);
            *tries += 1;
            if condition == "item-not-found" && *tries <= ROOM_RETRIES {
                return Ok(true);
            }
            self.room_retries.remove(&room);
            self.rooms.remove(&room);
            self.emit(Event::Error {
                text: format!("cannot enter {room}: {condition}"),
            })
            .await;
            return Ok(true);
        }
        let status = |code: &str| {
            el.get_child("x", ns::MUC_USER).is_some_and(|x| {
                x.children()
                    .any(|c| c.is("status", ns::MUC_USER) && c.attr("code") == Some(code))
            })
        };
        if status("110") && el.attr("type").is_none() {
            if status("201") {
                let xml = format!(
                    "<iq type='set' id='{}' to='{}'><query                      xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data'                      type='submit'/></query></iq>",
                    crate::random_id(10),
                    escape(&room)
                );
                self.send_stanza(stream, xml, None).await?;
            }
            let nick = from.get(room.len() + 1..).unwrap_or(&nick).to_owned();
            self.room_retries.remove(&room);
            self.rooms.insert(room.clone(), nick.clone());
            self.emit(Event::Joined { room, nick }).await;
        }
        Ok(true)
    }

    /// A groupchat message: shown once (the room's history repeats after a rejoin).
    pub(crate) async fn room_said(&mut self, el: &Element) {
        let from = el.attr("from").unwrap_or_default();
        let room = crate::bare(from).to_owned();
        let Some(my_nick) = self.rooms.get(&room).cloned() else {
            return;
        };
        let Some(body) = el.get_child("body", ns::CLIENT).map(Element::text) else {
            return;
        };
        let nick = from.get(room.len() + 1..).unwrap_or_default().to_owned();
        let id = el.attr("id").unwrap_or_default().to_owned();
        let mut keys: Vec<String> = el
            .children()
            .filter(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(room.as_str()))
            .filter_map(|c| c.attr("id"))
            .map(|sid| format!("r:{room}:{sid}"))
            .collect();
        if !id.is_empty() {
            keys.push(format!("rm:{room}:{nick}:{id}"));
        }
        if !keys.is_empty() && !self.shown.first_time(&keys) {
            return;
        }
        self.emit(Event::Groupchat {
            mine: nick == my_nick,
            room,
            from: nick,
            body,
            id,
        })
        .await;
    }

    /// Asks the archive for the newest page of the conversation with `with`.
    pub(crate) async fn ask_history(
        &mut self,
        stream: &mut Stream,
        with: &str,
    ) -> Result<(), StreamError> {
        let with = crate::bare(with).to_owned();
        let id = format!("hist-{}", crate::random_id(10));
        let xml = format!(
            "<iq type='set' id='{id}'><query xmlns='urn:xmpp:mam:2' queryid='{id}'>\
             <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
             <value>urn:xmpp:mam:2</value></field><field var='with'><value>{}</value>\
             </field></x><set xmlns='http://jabber.org/protocol/rsm'><max>{HISTORY_PAGE}</max>\
             <before/></set></query></iq>",
            escape(&with)
        );
        self.histories.insert(id, (with, Vec::new()));
        self.send_stanza(stream, xml, None).await
    }

    /// A result of a history query, kept until the query ends; `false` if it belongs to
    /// no history query.
    pub(crate) fn history_result(&mut self, result: &Element) -> bool {
        let me = self.config.jid.clone();
        let Some((_, items)) = result
            .attr("queryid")
            .and_then(|q| self.histories.get_mut(q))
        else {
            return false;
        };
        if let Some((message, stamp)) = forwarded(result)
            && let Some(body) = message.get_child("body", ns::CLIENT).map(Element::text)
        {
            let from = crate::bare(message.attr("from").unwrap_or_default()).to_owned();
            items.push(HistoryItem {
                mine: from == me,
                from,
                body,
                id: message.attr("id").unwrap_or_default().to_owned(),
                stamp,
            });
        }
        true
    }

    /// The end of a history query: its page goes to the user. `false` if `id` is no
    /// history query.
    pub(crate) async fn history_end(&mut self, id: &str, fin: Option<&Element>) -> bool {
        let Some((with, items)) = self.histories.remove(id) else {
            return false;
        };
        let complete = fin.is_some_and(|f| matches!(f.attr("complete"), Some("true" | "1")));
        self.emit(Event::History {
            with,
            items,
            complete,
        })
        .await;
        true
    }
}
