//! The XMPP an API session speaks: the stanzas it sends, and what it makes of those it
//! receives. No I/O but the stream's opening.

use minidom::Element;
use outpost_proto::framing::NS_FRAMING as FRAMING;
use outpost_proto::stanza::{ns, set_attr};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::session::{Contact, Presence};

pub(crate) const NS_FRAMING: &str = FRAMING;

/// What a received stanza is, for the session.
pub(crate) enum Incoming {
    /// The answer to one of the session's IQs.
    IqAnswer(String),
    /// An IQ the server (or someone) asks the session.
    IqRequest,
    Message(ChatMessage),
    /// A delivery receipt (XEP-0184): the event's data.
    Receipt(Value),
    /// Available (`Some`) or unavailable presence of a full JID.
    Presence {
        from: String,
        presence: Option<Presence>,
    },
    /// A subscription stanza (RFC 6121 §3): its type.
    Subscription {
        from: String,
        kind: &'static str,
    },
    /// A presence error: a room refused to let the user in, for one.
    PresenceError {
        from: String,
        condition: String,
    },
    /// The presence of a room's occupant.
    Occupant(super::muc::OccupantPresence),
    /// A room's message (`data` when it has a body), or its subject.
    GroupChat {
        room: String,
        data: Option<Value>,
        subject: Option<String>,
    },
    /// An entry of an archive query's answer (`None` when it holds no body).
    ArchiveItem {
        query_id: String,
        entry: Option<Value>,
    },
    Other,
}

/// A chat message for the event stream.
pub(crate) struct ChatMessage {
    pub(crate) data: Value,
    pub(crate) receipt: Option<(String, String)>,
}

pub(crate) fn el(name: &str, namespace: &str) -> Element {
    Element::builder(name, namespace).build()
}

pub(crate) fn iq(kind: &str, to: Option<&str>, payload: Element) -> Element {
    let mut iq = el("iq", ns::CLIENT);
    set_attr(&mut iq, "type", kind);
    if let Some(to) = to {
        set_attr(&mut iq, "to", to);
    }
    iq.append_child(payload);
    iq
}

pub(crate) fn ping(domain: &str) -> Element {
    iq("get", Some(domain), el("ping", ns::PING))
}

pub(crate) fn roster_get() -> Element {
    iq("get", None, el("query", ns::ROSTER))
}

pub(crate) fn enable_carbons() -> Element {
    iq("set", None, el("enable", ns::CARBONS))
}

/// Adds `jid` to the roster with `name` (RFC 6121 §2.3), before a subscription request.
pub(crate) fn roster_set(jid: &str, name: Option<&str>) -> Element {
    let mut item = el("item", ns::ROSTER);
    set_attr(&mut item, "jid", jid);
    if let Some(name) = name {
        set_attr(&mut item, "name", name);
    }
    let mut query = el("query", ns::ROSTER);
    query.append_child(item);
    iq("set", None, query)
}

/// Removes `jid` from the roster, which cancels both subscriptions (RFC 6121 §2.5).
pub(crate) fn roster_remove(jid: &str) -> Element {
    let mut item = el("item", ns::ROSTER);
    set_attr(&mut item, "jid", jid);
    set_attr(&mut item, "subscription", "remove");
    let mut query = el("query", ns::ROSTER);
    query.append_child(item);
    iq("set", None, query)
}

/// Broadcast presence: `show` one of chat|away|xa|dnd (available when `None`).
pub(crate) fn presence(show: Option<&str>, status: Option<&str>) -> Element {
    let mut p = el("presence", ns::CLIENT);
    if let Some(show) = show {
        p.append_child(Element::builder("show", ns::CLIENT).append(show).build());
    }
    if let Some(status) = status {
        p.append_child(
            Element::builder("status", ns::CLIENT)
                .append(status)
                .build(),
        );
    }
    p
}

pub(crate) fn unavailable(status: Option<&str>) -> Element {
    let mut p = presence(None, status);
    set_attr(&mut p, "type", "unavailable");
    p
}

/// A subscription stanza (`subscribe`, `subscribed`, `unsubscribed` …) to `to`.
pub(crate) fn subscription(to: &str, kind: &str) -> Element {
    let mut p = el("presence", ns::CLIENT);
    set_attr(&mut p, "to", to);
    set_attr(&mut p, "type", kind);
    p
}

/// A message with its id as origin-id (XEP-0359), asking for a receipt unless it goes to
/// a room, and sharing `url` out of band (XEP-0066) when given.
pub(crate) fn message(to: &str, kind: &str, id: &str, body: &str, url: Option<&str>) -> Element {
    let mut m = el("message", ns::CLIENT);
    set_attr(&mut m, "to", to);
    set_attr(&mut m, "type", kind);
    set_attr(&mut m, "id", id);
    m.append_child(Element::builder("body", ns::CLIENT).append(body).build());
    if let Some(url) = url {
        let mut x = el("x", ns::OOB);
        x.append_child(Element::builder("url", ns::OOB).append(url).build());
        m.append_child(x);
    }
    if kind != "groupchat" {
        m.append_child(el("request", ns::RECEIPTS));
    }
    let mut origin = el("origin-id", ns::SID);
    set_attr(&mut origin, "id", id);
    m.append_child(origin);
    m
}

/// The receipt for message `id` from `to` (XEP-0184 §5).
pub(crate) fn receipt(to: &str, id: &str) -> Element {
    let mut m = el("message", ns::CLIENT);
    set_attr(&mut m, "to", to);
    let mut received = el("received", ns::RECEIPTS);
    set_attr(&mut received, "id", id);
    m.append_child(received);
    m
}

/// The defined condition of an error stanza.
pub(crate) fn error_condition(stanza: &Element) -> String {
    (stanza.get_child("error", ns::CLIENT))
        .and_then(|e| e.children().find(|c| c.ns() == ns::STANZAS))
        .map_or_else(|| "undefined-condition".to_owned(), |c| c.name().to_owned())
}

/// Whether a frame ends the stream: `<close/>` or a stream error.
pub(crate) fn is_stream_end(frame: &Element) -> bool {
    (frame.name() == "close" && frame.ns() == NS_FRAMING)
        || (frame.name() == "error" && frame.ns() == ns::STREAM)
}

/// Opens the stream of an authenticated user and binds `resource`; the error condition
/// when it cannot.
pub(crate) async fn open_and_bind(
    to_server: &mpsc::Sender<String>,
    from_server: &mut mpsc::Receiver<String>,
    domain: &str,
    resource: &str,
) -> Result<(), String> {
    let mut open = el("open", NS_FRAMING);
    set_attr(&mut open, "to", domain);
    set_attr(&mut open, "version", "1.0");
    let closed = || "the stream closed".to_owned();
    to_server
        .send(String::from(&open))
        .await
        .map_err(|_| closed())?;
    let mut bind = el("bind", ns::BIND);
    bind.append_child(
        Element::builder("resource", ns::BIND)
            .append(resource)
            .build(),
    );
    let mut bind = iq("set", None, bind);
    set_attr(&mut bind, "id", "bind");
    while let Some(frame) = from_server.recv().await {
        let Ok(frame) = frame.parse::<Element>() else {
            continue;
        };
        if is_stream_end(&frame) {
            return Err(closed());
        }
        if frame.name() == "features" && frame.ns() == ns::STREAM {
            to_server
                .send(String::from(&bind))
                .await
                .map_err(|_| closed())?;
        } else if frame.name() == "iq" && frame.attr("id") == Some("bind") {
            return match frame.attr("type") {
                Some("result") => Ok(()),
                _ => Err(error_condition(&frame)),
            };
        }
    }
    Err(closed())
}

/// The answer to an IQ the session is asked: results for pings and roster pushes,
/// `service-unavailable` for the rest (RFC 6120 §8.4).
pub(crate) fn answer_iq(request: &Element) -> Element {
    let mut answer = el("iq", ns::CLIENT);
    if let Some(id) = request.attr("id") {
        set_attr(&mut answer, "id", id);
    }
    if let Some(from) = request.attr("from") {
        set_attr(&mut answer, "to", from);
    }
    let known = request.has_child("ping", ns::PING) || request.has_child("query", ns::ROSTER);
    if known {
        set_attr(&mut answer, "type", "result");
    } else {
        set_attr(&mut answer, "type", "error");
        let mut error = el("error", ns::CLIENT);
        set_attr(&mut error, "type", "cancel");
        error.append_child(el("service-unavailable", ns::STANZAS));
        answer.append_child(error);
    }
    answer
}

fn contact(item: &Element) -> Option<(String, Contact)> {
    let jid = item.attr("jid")?.to_owned();
    let contact = Contact {
        name: item.attr("name").map(str::to_owned),
        subscription: item.attr("subscription").unwrap_or("none").to_owned(),
        ask: item.attr("ask") == Some("subscribe"),
    };
    Some((jid, contact))
}

/// The items of a roster result.
pub(crate) fn roster_items(result: &Element) -> Vec<(String, Contact)> {
    (result.get_child("query", ns::ROSTER).into_iter())
        .flat_map(|q| q.children())
        .filter(|c| c.name() == "item")
        .filter_map(contact)
        .collect()
}

/// A roster push from the user's own server (RFC 6121 §2.1.6): the contact, `None` when
/// removed.
pub(crate) fn roster_push(iq: &Element, own: &str) -> Option<(String, Option<Contact>)> {
    if iq.attr("type") != Some("set") || iq.attr("from").is_some_and(|f| f != own) {
        return None;
    }
    let item = iq
        .get_child("query", ns::ROSTER)?
        .get_child("item", ns::ROSTER)?;
    let (jid, c) = contact(item)?;
    Some(if c.subscription == "remove" {
        (jid, None)
    } else {
        (jid, Some(c))
    })
}

/// What a received stanza is.
pub(crate) fn classify(stanza: &Element) -> Incoming {
    let kind = stanza.attr("type");
    match stanza.name() {
        "iq" => match (kind, stanza.attr("id")) {
            (Some("result" | "error"), Some(id)) => Incoming::IqAnswer(id.to_owned()),
            (Some("get" | "set"), _) => Incoming::IqRequest,
            _ => Incoming::Other,
        },
        "presence" => classify_presence(stanza),
        "message" => classify_message(stanza),
        _ => Incoming::Other,
    }
}

fn classify_presence(p: &Element) -> Incoming {
    let from = p.attr("from").unwrap_or_default().to_owned();
    let presence = match p.attr("type") {
        None => {
            let child = |name| p.get_child(name, ns::CLIENT).map(Element::text);
            let show =
                child("show").filter(|s| ["chat", "away", "xa", "dnd"].contains(&s.as_str()));
            Some(Presence {
                show: show.unwrap_or_else(|| "available".to_owned()),
                status: child("status"),
            })
        }
        Some("unavailable") => None,
        Some("error") => {
            return Incoming::PresenceError {
                from,
                condition: error_condition(p),
            };
        }
        Some(kind) => {
            let Some(kind) = ["subscribe", "subscribed", "unsubscribe", "unsubscribed"]
                .into_iter()
                .find(|k| *k == kind)
            else {
                return Incoming::Other;
            };
            return Incoming::Subscription { from, kind };
        }
    };
    match super::muc::occupant(p, presence.clone()) {
        Some(occupant) => Incoming::Occupant(occupant),
        None => Incoming::Presence { from, presence },
    }
}

fn classify_message(m: &Element) -> Incoming {
    if m.attr("type") == Some("error") {
        return Incoming::Other;
    }
    // A copy of what the user's other clients sent or received (XEP-0280).
    for (direction, label) in [("sent", "sent"), ("received", "received")] {
        let inner = (m.get_child(direction, ns::CARBONS))
            .and_then(|c| c.get_child("forwarded", ns::FORWARD))
            .and_then(|f| f.get_child("message", ns::CLIENT));
        if let Some(inner) = inner {
            return match classify_message(inner) {
                Incoming::Message(mut chat) => {
                    chat.data["carbon"] = label.into();
                    chat.receipt = None;
                    Incoming::Message(chat)
                }
                _ => Incoming::Other,
            };
        }
    }
    if let Some((query_id, entry)) = super::muc::archive_item(m) {
        return Incoming::ArchiveItem { query_id, entry };
    }
    if m.attr("type") == Some("groupchat") {
        let (data, subject) = super::muc::groupchat_data(m);
        let from = m.attr("from").unwrap_or_default();
        let room = from
            .split_once('/')
            .map_or(from, |(room, _)| room)
            .to_owned();
        return Incoming::GroupChat {
            room,
            data,
            subject,
        };
    }
    let from = m.attr("from").unwrap_or_default();
    if let Some(received) = m.get_child("received", ns::RECEIPTS) {
        let id = received.attr("id").unwrap_or_default();
        return Incoming::Receipt(json!({"from": from, "id": id}));
    }
    if !m.has_child("body", ns::CLIENT) {
        return Incoming::Other;
    }
    let id = m.attr("id").unwrap_or_default();
    let wants_receipt = m.has_child("request", ns::RECEIPTS) && !id.is_empty();
    Incoming::Message(ChatMessage {
        data: message_data(m),
        receipt: wants_receipt.then(|| (from.to_owned(), id.to_owned())),
    })
}

/// A message with a body as an event's data.
pub(crate) fn message_data(m: &Element) -> Value {
    let stamp = (m.get_child("delay", ns::DELAY)).and_then(|d| d.attr("stamp"));
    let timestamp = stamp.map_or_else(|| outpost_server::rfc3339(now_ms()), str::to_owned);
    let body = m.get_child("body", ns::CLIENT).map(Element::text);
    let mut data = json!({
        "from": m.attr("from").unwrap_or_default(),
        "to": m.attr("to").unwrap_or_default(),
        "body": body.unwrap_or_default(),
        "id": m.attr("id").unwrap_or_default(),
        "type": m.attr("type").unwrap_or("normal"),
        "timestamp": timestamp,
    });
    if let Some(url) = super::muc::oob_url(m) {
        data["url"] = url.into();
    }
    // The id the recipient's archive gave it (XEP-0359), as history shows it.
    let to = m.attr("to").unwrap_or_default();
    let own = to.split_once('/').map_or(to, |(bare, _)| bare);
    let archived = (m.children())
        .find(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(own))
        .and_then(|c| c.attr("id"));
    if let Some(id) = archived {
        data["stanza_id"] = id.into();
    }
    data
}

fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    i64::try_from(now.unwrap_or_default().as_millis()).unwrap_or(0)
}
