//! The XMPP of group chat and files for an API session: joining and leaving rooms
//! (XEP-0045), the bookmarks that keep them (XEP-0402), a room's archive (XEP-0313), and
//! upload slots (XEP-0363); what it makes of the occupants' presence and the rooms'
//! messages. No I/O.

use minidom::Element;
use outpost_proto::stanza::{ns, set_attr};
use serde_json::{Value, json};

use super::session::Presence;
use super::stanzas::{el, iq, message_data};

const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const NS_BOOKMARKS: &str = "urn:xmpp:bookmarks:1";
const NS_UPLOAD: &str = "urn:xmpp:http:upload:0";
const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// A room the user keeps (a bookmark).
pub(crate) struct Bookmark {
    pub(crate) jid: String,
    pub(crate) name: Option<String>,
    pub(crate) nick: Option<String>,
    pub(crate) autojoin: bool,
}

/// What an occupant's presence says (XEP-0045 §7.2).
pub(crate) struct OccupantPresence {
    pub(crate) room: String,
    pub(crate) nick: String,
    /// `None` when the occupant left.
    pub(crate) presence: Option<Presence>,
    pub(crate) role: String,
    pub(crate) affiliation: String,
    /// The occupant's real JID, when the room shows it.
    pub(crate) jid: Option<String>,
    /// Status codes: 110 is the user's own presence, 201 a room just created.
    pub(crate) codes: Vec<u16>,
}

/// An upload slot (XEP-0363 §4).
pub(crate) struct Slot {
    pub(crate) put_url: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) get_url: String,
}

/// Enters `room` as `nick`, with no history: a client reads the room's archive instead.
pub(crate) fn join(room: &str, nick: &str) -> Element {
    let mut p = el("presence", ns::CLIENT);
    set_attr(&mut p, "to", &format!("{room}/{nick}"));
    let mut history = el("history", NS_MUC);
    set_attr(&mut history, "maxstanzas", "0");
    let mut x = el("x", NS_MUC);
    x.append_child(history);
    p.append_child(x);
    p
}

pub(crate) fn leave(room: &str, nick: &str) -> Element {
    let mut p = el("presence", ns::CLIENT);
    set_attr(&mut p, "to", &format!("{room}/{nick}"));
    set_attr(&mut p, "type", "unavailable");
    p
}

/// Accepts the default configuration of a room just created (XEP-0045 §10.1.2).
pub(crate) fn instant_room(room: &str) -> Element {
    let mut x = el("x", ns::DATA_FORMS);
    set_attr(&mut x, "type", "submit");
    let mut query = el("query", NS_MUC_OWNER);
    query.append_child(x);
    iq("set", Some(room), query)
}

/// A message to the room, with its id as origin-id, and the URL of a file if any.
pub(crate) fn groupchat(room: &str, id: &str, body: &str, url: Option<&str>) -> Element {
    super::stanzas::message(room, "groupchat", id, body, url)
}

pub(crate) fn bookmarks_get() -> Element {
    let mut items = el("items", ns::PUBSUB);
    set_attr(&mut items, "node", NS_BOOKMARKS);
    let mut pubsub = el("pubsub", ns::PUBSUB);
    pubsub.append_child(items);
    iq("get", None, pubsub)
}

fn field(var: &str, value: &str) -> Element {
    let mut f = el("field", ns::DATA_FORMS);
    set_attr(&mut f, "var", var);
    f.append_child(
        Element::builder("value", ns::DATA_FORMS)
            .append(value)
            .build(),
    );
    f
}

/// Keeps `room` as a bookmark that joins at login (XEP-0402 §3), in a private node.
pub(crate) fn bookmark_publish(room: &str, nick: &str, name: Option<&str>) -> Element {
    let mut conference = el("conference", NS_BOOKMARKS);
    set_attr(&mut conference, "autojoin", "true");
    if let Some(name) = name {
        set_attr(&mut conference, "name", name);
    }
    conference.append_child(Element::builder("nick", NS_BOOKMARKS).append(nick).build());
    let mut item = el("item", ns::PUBSUB);
    set_attr(&mut item, "id", room);
    item.append_child(conference);
    let mut publish = el("publish", ns::PUBSUB);
    set_attr(&mut publish, "node", NS_BOOKMARKS);
    publish.append_child(item);
    let mut form = el("x", ns::DATA_FORMS);
    set_attr(&mut form, "type", "submit");
    let mut form_type = field("FORM_TYPE", PUBLISH_OPTIONS);
    set_attr(&mut form_type, "type", "hidden");
    form.append_child(form_type);
    for (var, value) in [
        ("pubsub#persist_items", "true"),
        ("pubsub#max_items", "max"),
        ("pubsub#send_last_published_item", "never"),
        ("pubsub#access_model", "whitelist"),
    ] {
        form.append_child(field(var, value));
    }
    let mut options = el("publish-options", ns::PUBSUB);
    options.append_child(form);
    let mut pubsub = el("pubsub", ns::PUBSUB);
    pubsub.append_child(publish);
    pubsub.append_child(options);
    iq("set", None, pubsub)
}

pub(crate) fn bookmark_retract(room: &str) -> Element {
    let mut item = el("item", ns::PUBSUB);
    set_attr(&mut item, "id", room);
    let mut retract = el("retract", ns::PUBSUB);
    set_attr(&mut retract, "node", NS_BOOKMARKS);
    set_attr(&mut retract, "notify", "true");
    retract.append_child(item);
    let mut pubsub = el("pubsub", ns::PUBSUB);
    pubsub.append_child(retract);
    iq("set", None, pubsub)
}

/// The bookmarks of an items result.
pub(crate) fn bookmarks(result: &Element) -> Vec<Bookmark> {
    let items =
        (result.get_child("pubsub", ns::PUBSUB)).and_then(|p| p.get_child("items", ns::PUBSUB));
    (items.into_iter())
        .flat_map(Element::children)
        .filter_map(|item| {
            let conference = item.get_child("conference", NS_BOOKMARKS)?;
            let jid = jid::BareJid::new(item.attr("id")?).ok()?;
            Some(Bookmark {
                jid: jid.to_string(),
                name: conference.attr("name").map(str::to_owned),
                nick: (conference.get_child("nick", NS_BOOKMARKS)).map(Element::text),
                autojoin: matches!(conference.attr("autojoin"), Some("true" | "1")),
            })
        })
        .collect()
}

/// A page of `room`'s archive (XEP-0313 §4 with RSM): the newest `limit` before
/// `before` (or of all), or the oldest `limit` after `after`.
pub(crate) fn archive_query(
    room: &str,
    query_id: &str,
    before: Option<&str>,
    after: Option<&str>,
    limit: u32,
) -> Element {
    let mut set = el("set", ns::RSM);
    set.append_child(
        Element::builder("max", ns::RSM)
            .append(limit.to_string())
            .build(),
    );
    match (after, before) {
        (Some(after), _) => {
            set.append_child(Element::builder("after", ns::RSM).append(after).build())
        }
        (None, before) => set.append_child(
            Element::builder("before", ns::RSM)
                .append(before.unwrap_or_default())
                .build(),
        ),
    };
    let mut query = el("query", ns::MAM);
    set_attr(&mut query, "queryid", query_id);
    query.append_child(set);
    iq("set", Some(room), query)
}

/// Whether the archive's answer says the page reaches the end it pages towards.
pub(crate) fn archive_complete(result: &Element) -> bool {
    (result.get_child("fin", ns::MAM))
        .is_some_and(|fin| matches!(fin.attr("complete"), Some("true" | "1")))
}

/// A message of a room's archive, sent to the query: its query id and the entry, if it
/// holds a body.
pub(crate) fn archive_item(m: &Element) -> Option<(String, Option<Value>)> {
    let result = m.get_child("result", ns::MAM)?;
    let query_id = result.attr("queryid").unwrap_or_default().to_owned();
    let forwarded = result.get_child("forwarded", ns::FORWARD)?;
    let inner = forwarded.get_child("message", ns::CLIENT)?;
    let Some(body) = inner.get_child("body", ns::CLIENT) else {
        return Some((query_id, None));
    };
    let from = inner.attr("from").unwrap_or_default();
    let stamp = (forwarded.get_child("delay", ns::DELAY)).and_then(|d| d.attr("stamp"));
    let entry = json!({
        "id": result.attr("id").unwrap_or_default(),
        "message_id": inner.attr("id"),
        "from": from,
        "nick": from.split_once('/').map_or("", |(_, nick)| nick),
        "body": body.text(),
        "url": oob_url(inner),
        "timestamp": stamp,
    });
    Some((query_id, Some(entry)))
}

/// The URL an out-of-band element (XEP-0066) of `m` shares.
pub(crate) fn oob_url(m: &Element) -> Option<String> {
    (m.get_child("x", ns::OOB))
        .and_then(|x| x.get_child("url", ns::OOB))
        .map(Element::text)
}

/// A room's message for the event stream, and the room's subject when it sets one.
pub(crate) fn groupchat_data(m: &Element) -> (Option<Value>, Option<String>) {
    let from = m.attr("from").unwrap_or_default();
    let (room, nick) = from.split_once('/').unwrap_or((from, ""));
    let subject = (m.get_child("subject", ns::CLIENT)).map(Element::text);
    if !m.has_child("body", ns::CLIENT) {
        return (None, subject);
    }
    let mut data = message_data(m);
    data["room"] = room.into();
    data["nick"] = nick.into();
    data["stanza_id"] = (m.children())
        .find(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(room))
        .and_then(|c| c.attr("id"))
        .into();
    (Some(data), subject)
}

/// The occupant a presence from a room speaks of, if it comes from one.
pub(crate) fn occupant(p: &Element, presence: Option<Presence>) -> Option<OccupantPresence> {
    let x = p.get_child("x", NS_MUC_USER)?;
    let from = p.attr("from")?;
    let (room, nick) = from.split_once('/')?;
    let item = x.get_child("item", NS_MUC_USER);
    let attr = |name: &str| item.and_then(|i| i.attr(name)).map(str::to_owned);
    let codes = (x.children())
        .filter(|c| c.name() == "status")
        .filter_map(|c| c.attr("code")?.parse().ok())
        .collect();
    Some(OccupantPresence {
        room: room.to_owned(),
        nick: nick.to_owned(),
        presence,
        role: attr("role").unwrap_or_else(|| "none".to_owned()),
        affiliation: attr("affiliation").unwrap_or_else(|| "none".to_owned()),
        jid: attr("jid"),
        codes,
    })
}

/// Asks `service` for a slot for a file (XEP-0363 §4).
pub(crate) fn slot_request(
    service: &str,
    filename: &str,
    size: u64,
    content_type: Option<&str>,
) -> Element {
    let mut request = el("request", NS_UPLOAD);
    set_attr(&mut request, "filename", filename);
    set_attr(&mut request, "size", &size.to_string());
    if let Some(t) = content_type {
        set_attr(&mut request, "content-type", t);
    }
    iq("get", Some(service), request)
}

pub(crate) fn slot(result: &Element) -> Option<Slot> {
    let slot = result.get_child("slot", NS_UPLOAD)?;
    let put = slot.get_child("put", NS_UPLOAD)?;
    let headers = (put.children())
        .filter(|h| h.name() == "header")
        .filter_map(|h| Some((h.attr("name")?.to_owned(), h.text())))
        .collect();
    Some(Slot {
        put_url: put.attr("url")?.to_owned(),
        headers,
        get_url: slot.get_child("get", NS_UPLOAD)?.attr("url")?.to_owned(),
    })
}

/// The largest file the service takes, from its `file-too-large` error.
pub(crate) fn max_file_size(error: &Element) -> Option<u64> {
    (error.get_child("error", ns::CLIENT))
        .and_then(|e| e.get_child("file-too-large", NS_UPLOAD))
        .and_then(|f| f.get_child("max-file-size", NS_UPLOAD))
        .and_then(|m| m.text().trim().parse().ok())
}
