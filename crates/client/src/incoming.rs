//! What each element from the server means: acknowledgements, messages (live, carbon
//! copies, archive results), receipts and read markers, presence and subscription
//! requests, roster pushes, pings; and the archive catch-up that follows a new session.

use outpost_proto::minidom::Element;
use outpost_proto::xml::escape;

use crate::event::{DeliveryState, Event, Path};
use crate::ns;
use crate::session::Session;
use crate::state::Contact;
use crate::stream::{Stream, StreamError};

/// Messages asked for per archive page.
const PAGE: usize = 100;
/// How far before the newest message shown catching up starts: clocks differ, and the
/// overlap is recognised and not shown again.
const OVERLAP_SECS: i64 = 120;

impl Session {
    pub(crate) async fn on_element(
        &mut self,
        stream: &mut Stream,
        el: Element,
    ) -> Result<(), StreamError> {
        if el.ns() == ns::SM {
            return self.on_sm(stream, &el).await;
        }
        if el.ns() != ns::CLIENT {
            return Ok(());
        }
        if self.acks.enabled {
            self.acks.received = self.acks.received.wrapping_add(1);
        }
        match el.name() {
            "message" => self.on_message(stream, &el).await,
            "presence" => {
                if self.room_presence(stream, &el).await? {
                    return Ok(());
                }
                self.on_presence(stream, &el).await
            }
            "iq" => self.on_iq(stream, &el).await,
            _ => Ok(()),
        }
    }

    async fn on_sm(&mut self, stream: &mut Stream, el: &Element) -> Result<(), StreamError> {
        match el.name() {
            "r" => {
                stream
                    .write(&format!(
                        "<a xmlns='urn:xmpp:sm:3' h='{}'/>",
                        self.acks.received
                    ))
                    .await
            }
            "a" => {
                if let Some(h) = el.attr("h").and_then(|h| h.parse().ok()) {
                    for event in self.acks.ack(h) {
                        self.emit(event).await;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn on_message(&mut self, stream: &mut Stream, el: &Element) -> Result<(), StreamError> {
        if el.attr("type") == Some("error") {
            let text = format!(
                "message {} to {} failed: {}",
                el.attr("id").unwrap_or("?"),
                el.attr("from").unwrap_or("?"),
                error_condition(el)
            );
            self.emit(Event::Error { text }).await;
            return Ok(());
        }
        if let Some(relayed) = el.get_child("relayed", ns::DELIVERY)
            && el.attr("from") == Some(self.domain.as_str())
        {
            if let Some(id) = relayed.attr("id") {
                let id = id.to_owned();
                let state = DeliveryState::Relayed;
                self.emit(Event::Delivery { id, state }).await;
            }
            return Ok(());
        }
        if let Some(result) = el.get_child("result", ns::MAM) {
            if self.history_result(result) {
                return Ok(());
            }
            if let Some((message, stamp)) = forwarded(result) {
                let archive_id = result.attr("id").map(str::to_owned);
                self.show(stream, message, stamp, archive_id, Via::Archive)
                    .await?;
            }
            return Ok(());
        }
        if let Some(carbon) = el.get_child("received", ns::CARBONS) {
            if let Some((message, _)) = forwarded(carbon) {
                self.show(stream, message, None, None, Via::Carbon).await?;
            }
            return Ok(());
        }
        if let Some(carbon) = el.get_child("sent", ns::CARBONS) {
            if let Some((message, _)) = forwarded(carbon) {
                self.on_sent_elsewhere(message).await;
            }
            return Ok(());
        }
        if el.attr("type") == Some("groupchat") {
            self.room_said(el).await;
            return Ok(());
        }
        let archive_id = el
            .children()
            .find(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(self.config.jid.as_str()))
            .and_then(|c| c.attr("id"))
            .map(str::to_owned);
        let stamp = el
            .get_child("delay", ns::DELAY)
            .and_then(|d| d.attr("stamp"))
            .map(str::to_owned);
        self.show(stream, el, stamp, archive_id, Via::Live).await
    }

    /// A message for the user: receipts and markers become delivery events, a body is
    /// shown once, and a receipt goes back when asked for (again for a message shown
    /// before, which may have come over a direct link that broke before its receipt).
    async fn show(
        &mut self,
        stream: &mut Stream,
        el: &Element,
        stamp: Option<String>,
        archive_id: Option<String>,
        via: Via,
    ) -> Result<(), StreamError> {
        let from = el.attr("from").unwrap_or_default();
        let from_bare = crate::bare(from).to_owned();
        if from_bare == self.config.jid {
            // Our own message, from the archive: nothing to show.
            return Ok(());
        }
        if let Some(receipt) = el.get_child("received", ns::RECEIPTS) {
            self.delivered(receipt, DeliveryState::Delivered).await;
        }
        if let Some(marker) = el.get_child("displayed", ns::MARKERS) {
            self.delivered(marker, DeliveryState::Read).await;
        }
        let Some(body) = el.get_child("body", ns::CLIENT).map(Element::text) else {
            return Ok(());
        };
        let id = el.attr("id").map(str::to_owned);
        let first = self.first_sight(
            &from_bare,
            id.as_deref(),
            archive_id.as_deref(),
            stamp.clone(),
        );
        if !first && via != Via::Live {
            return Ok(());
        }
        if let Some(id) = id
            .as_ref()
            .filter(|_| el.has_child("request", ns::RECEIPTS) && via != Via::Carbon)
        {
            let receipt = crate::peers::receipt(from, id);
            self.send_stanza(stream, receipt, None).await?;
        }
        if !first {
            return Ok(());
        }
        self.tell_path(&from_bare).await;
        if via != Via::Carbon {
            self.shared_file(&from_bare, el).await;
        }
        self.emit(Event::Message {
            from: from_bare,
            body,
            id: id.unwrap_or_default(),
            path: Path::Server,
            stamp,
        })
        .await;
        Ok(())
    }

    /// Records a message's keys (the archive's id, the sender's id) and how recent it is;
    /// `false` when it was shown before.
    pub(crate) fn first_sight(
        &mut self,
        from_bare: &str,
        id: Option<&str>,
        archive_id: Option<&str>,
        stamp: Option<String>,
    ) -> bool {
        let mut keys: Vec<String> = archive_id.iter().map(|a| format!("a:{a}")).collect();
        if let Some(id) = id.filter(|id| !id.is_empty()) {
            keys.push(format!("m:{from_bare}:{id}"));
        }
        if let Some(stamp) = stamp.or_else(now)
            && self.newest.as_ref().is_none_or(|n| *n < stamp)
        {
            self.newest = Some(stamp);
        }
        keys.is_empty() || self.shown.first_time(&keys)
    }

    async fn delivered(&mut self, el: &Element, state: DeliveryState) {
        if let Some(id) = el.attr("id") {
            self.emit(Event::Delivery {
                id: id.to_owned(),
                state,
            })
            .await;
        }
    }

    async fn on_sent_elsewhere(&mut self, el: &Element) {
        let Some(body) = el.get_child("body", ns::CLIENT).map(Element::text) else {
            return;
        };
        self.emit(Event::Sent {
            to: crate::bare(el.attr("to").unwrap_or_default()).to_owned(),
            body,
            id: el.attr("id").unwrap_or_default().to_owned(),
        })
        .await;
    }

    async fn on_presence(&mut self, stream: &mut Stream, el: &Element) -> Result<(), StreamError> {
        let from = el.attr("from").unwrap_or_default().to_owned();
        let bare = crate::bare(&from).to_owned();
        match el.attr("type") {
            None | Some("unavailable") => {
                if bare == self.config.jid {
                    return Ok(());
                }
                let available = el.attr("type").is_none();
                let outpost = available && el.has_child("device", crate::p2p::NS);
                self.people.outpost_client(&from, outpost);
                if let Some(available) = self.people.presence(&from, available) {
                    self.emit(Event::Presence {
                        from: bare,
                        available,
                    })
                    .await;
                }
                return self.peer_presence(stream, el, &from, available).await;
            }
            Some("subscribe") if self.people.asking.insert(bare.clone()) => {
                self.emit(Event::Subscription { from: bare }).await;
            }
            Some("error") => {
                let text = format!("presence from {from} failed: {}", error_condition(el));
                self.emit(Event::Error { text }).await;
            }
            _ => {}
        }
        Ok(())
    }

    async fn on_iq(&mut self, stream: &mut Stream, el: &Element) -> Result<(), StreamError> {
        let id = el.attr("id").unwrap_or_default().to_owned();
        match el.attr("type") {
            Some("result") => self.on_result(stream, el, &id).await,
            Some("error") => {
                if self.catching_up.as_deref() == Some(id.as_str()) {
                    self.catching_up = None;
                }
                self.histories.remove(&id);
                if self.on_file_error(stream, &id, el).await? {
                    return Ok(());
                }
                if self.key_refused(&id) {
                    // The contact does not share a device key with us: no direct links.
                    return Ok(());
                }
                let text = format!("request {id} failed: {}", error_condition(el));
                self.emit(Event::Error { text }).await;
                Ok(())
            }
            Some("set") if el.has_child("query", ns::ROSTER) => {
                // A roster push is ours only if it comes from our own account.
                let from = el.attr("from").unwrap_or(self.config.jid.as_str());
                if from == self.config.jid || from == self.domain {
                    if let Some(query) = el.get_child("query", ns::ROSTER) {
                        self.roster_items(query);
                    }
                    self.emit(Event::Roster {
                        items: self.people.items(),
                    })
                    .await;
                }
                self.answer(stream, el, None).await
            }
            Some("get") if el.has_child("ping", ns::PING) => self.answer(stream, el, None).await,
            Some("get" | "set") => {
                if let Some(jingle) = el.get_child("jingle", crate::p2p::JINGLE)
                    && self.on_file_jingle(stream, el, jingle).await?
                {
                    return Ok(());
                }
                if self.on_jingle(stream, el).await? {
                    return Ok(());
                }
                let error = "<error type='cancel'><service-unavailable \
                             xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>";
                self.answer(stream, el, Some(error)).await
            }
            _ => Ok(()),
        }
    }

    pub(crate) async fn answer(
        &mut self,
        stream: &mut Stream,
        iq: &Element,
        error: Option<&str>,
    ) -> Result<(), StreamError> {
        let to = iq
            .attr("from")
            .map(|f| format!(" to='{}'", escape(f)))
            .unwrap_or_default();
        let id = escape(iq.attr("id").unwrap_or_default());
        let xml = match error {
            None => format!("<iq type='result' id='{id}'{to}/>"),
            Some(error) => format!("<iq type='error' id='{id}'{to}>{error}</iq>"),
        };
        self.send_stanza(stream, xml, None).await
    }

    async fn on_result(
        &mut self,
        stream: &mut Stream,
        el: &Element,
        id: &str,
    ) -> Result<(), StreamError> {
        if self.history_end(id, el.get_child("fin", ns::MAM)).await
            || self.key_answer(stream, id, el).await?
            || self.on_file_result(stream, id, el).await?
        {
            return Ok(());
        }
        if id == "roster" {
            self.people.roster.clear();
            if let Some(query) = el.get_child("query", ns::ROSTER) {
                self.roster_items(query);
            }
            self.emit(Event::Roster {
                items: self.people.items(),
            })
            .await;
        } else if let Some(at) = self.pings.iter().position(|(ping, _)| ping == id) {
            // Without stream management, a ping's answer follows what came before it.
            let (_, message) = self.pings.remove(at);
            self.emit(Event::Delivery {
                id: message,
                state: DeliveryState::Queued,
            })
            .await;
        } else if self.catching_up.as_deref() == Some(id) {
            self.catching_up = None;
            let fin = el.get_child("fin", ns::MAM);
            let complete = fin.is_none_or(|f| matches!(f.attr("complete"), Some("true" | "1")));
            let last = fin
                .and_then(|f| f.get_child("set", ns::RSM))
                .and_then(|s| s.get_child("last", ns::RSM))
                .map(Element::text);
            if let (false, Some(last)) = (complete, last) {
                self.catch_up(stream, Some(last)).await?;
            }
        }
        Ok(())
    }

    fn roster_items(&mut self, query: &Element) {
        for item in query.children().filter(|c| c.is("item", ns::ROSTER)) {
            let Some(jid) = item.attr("jid") else {
                continue;
            };
            let subscription = item.attr("subscription").unwrap_or("none");
            if subscription == "remove" {
                self.people.roster.remove(jid);
                continue;
            }
            if matches!(subscription, "from" | "both") {
                self.people.asking.remove(jid);
            }
            self.people.roster.insert(
                jid.to_owned(),
                Contact {
                    name: item.attr("name").map(str::to_owned),
                    subscription: subscription.to_owned(),
                    pending: item.attr("ask") == Some("subscribe"),
                },
            );
        }
    }

    /// Asks the archive for what came since shortly before the newest message shown
    /// (nothing on the first login: the offline store hands over what waited), a page
    /// after `after` when going on.
    pub(crate) async fn catch_up(
        &mut self,
        stream: &mut Stream,
        after: Option<String>,
    ) -> Result<(), StreamError> {
        let Some(start) = self.newest.as_deref().and_then(|n| before(n, OVERLAP_SECS)) else {
            return Ok(());
        };
        let id = format!("mam-{}", crate::random_id(10));
        let after = after
            .map(|a| format!("<after>{}</after>", escape(&a)))
            .unwrap_or_default();
        let xml = format!(
            "<iq type='set' id='{id}'><query xmlns='urn:xmpp:mam:2' queryid='{id}'>\
             <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
             <value>urn:xmpp:mam:2</value></field><field var='start'><value>{start}</value>\
             </field></x><set xmlns='http://jabber.org/protocol/rsm'><max>{PAGE}</max>{after}\
             </set></query></iq>"
        );
        self.catching_up = Some(id);
        self.send_stanza(stream, xml, None).await
    }
}

/// How a message came.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Live,
    /// A copy of a message to another of our clients (XEP-0280).
    Carbon,
    /// From the archive (catching up).
    Archive,
}

/// The message inside `<forwarded/>`, and when it was sent: its own delay stamp if it
/// has one (a message said before it reached a server), else the forwarding's.
pub(crate) fn forwarded(wrapper: &Element) -> Option<(&Element, Option<String>)> {
    let forwarded = wrapper.get_child("forwarded", ns::FORWARD)?;
    let message = forwarded.get_child("message", ns::CLIENT)?;
    let stamp = [message, forwarded]
        .iter()
        .find_map(|el| el.get_child("delay", ns::DELAY)?.attr("stamp"))
        .map(str::to_owned);
    Some((message, stamp))
}

pub(crate) fn error_condition(el: &Element) -> String {
    el.get_child("error", ns::CLIENT)
        .and_then(|e| {
            e.children()
                .find(|c| c.ns() == ns::STANZAS && c.name() != "text")
        })
        .map_or_else(|| "undefined-condition".to_owned(), |c| c.name().to_owned())
}

pub(crate) fn now() -> Option<String> {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// `stamp` minus `secs`, RFC 3339.
fn before(stamp: &str, secs: i64) -> Option<String> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(stamp, &Rfc3339).ok()?;
    (t - time::Duration::seconds(secs)).format(&Rfc3339).ok()
}
