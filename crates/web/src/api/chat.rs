//! The friend list, subscriptions, messages, history and presence, each through the
//! caller's API session.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use jid::{BareJid, Jid};
use minidom::Element;
use serde::Deserialize;
use serde_json::{Value, json};

use super::idempotency::{Owned, Start};
use super::problem::{Json, Path, Problem, Query, json};
use super::session::{ApiSession, State as SessionState};
use super::{Api, Caller, session_problem, stanzas};
use outpost_server::{MAX_HISTORY_PAGE, MessageState, rfc3339};

/// Presence values from the most available down.
const SHOWS: [&str; 5] = ["chat", "available", "away", "xa", "dnd"];
/// Longest message body taken, in bytes.
pub(crate) const MAX_MESSAGE_BODY: usize = 10_000;
/// Longest URL a message may share, in bytes.
const MAX_URL: usize = 2048;

fn contact_json(state: &SessionState, jid: &str) -> Value {
    let contact = state.roster.get(jid);
    let best = (state.presence.get(jid).into_iter())
        .flat_map(|resources| resources.values())
        .min_by_key(|p| {
            SHOWS
                .iter()
                .position(|s| *s == p.show)
                .unwrap_or(SHOWS.len())
        });
    json!({
        "jid": jid,
        "name": contact.and_then(|c| c.name.clone()),
        "subscription": contact.map_or("none", |c| c.subscription.as_str()),
        "ask": contact.is_some_and(|c| c.ask).then_some("subscribe"),
        "presence": best.map_or("unavailable", |p| p.show.as_str()),
        "status": best.and_then(|p| p.status.clone()),
    })
}

pub(crate) async fn friends(State(api): State<Api>, caller: Caller) -> Result<Response, Problem> {
    let session = api.session(&caller).await?;
    let state = session.lock();
    let list: Vec<Value> = state
        .roster
        .keys()
        .map(|j| contact_json(&state, j))
        .collect();
    Ok(json(StatusCode::OK, list.into()))
}

pub(crate) async fn requests(State(api): State<Api>, caller: Caller) -> Result<Response, Problem> {
    let session = api.session(&caller).await?;
    let list: Vec<Value> = (session.lock().requests.iter())
        .map(|j| json!({ "jid": j }))
        .collect();
    Ok(json(StatusCode::OK, list.into()))
}

/// A contact's address: a bare JID other than the caller's.
fn contact_jid(text: &str, session: &ApiSession) -> Result<String, Problem> {
    let jid = BareJid::new(text.trim())
        .map_err(|_| Problem::bad_request(format!("`{text}` is not a bare JID")))?;
    if jid == session.user {
        return Err(Problem::bad_request("that is your own address"));
    }
    Ok(jid.to_string())
}

#[derive(Deserialize)]
pub(crate) struct AddFriend {
    jid: String,
    name: Option<String>,
}

/// Asks for the contact's presence (RFC 6121 §3.1), or approves the request the contact
/// sent (§3.1.4) and asks back.
pub(crate) async fn add_friend(
    State(api): State<Api>,
    caller: Caller,
    Json(body): Json<AddFriend>,
) -> Result<Response, Problem> {
    let session = api.session(&caller).await?;
    let jid = contact_jid(&body.jid, &session)?;
    let (requested, subscribed) = {
        let state = session.lock();
        let contact = state.roster.get(&jid);
        let subscribed =
            contact.is_some_and(|c| c.ask || c.subscription == "to" || c.subscription == "both");
        (state.requests.contains(&jid), subscribed)
    };
    if body.name.is_some() || !session.lock().roster.contains_key(&jid) {
        let set = stanzas::roster_set(&jid, body.name.as_deref());
        session.iq(set).await.map_err(session_problem)?;
    }
    if requested {
        let approve = stanzas::subscription(&jid, "subscribed");
        session.send(&approve).await.map_err(session_problem)?;
        session.lock().requests.remove(&jid);
    }
    if !subscribed {
        let ask = stanzas::subscription(&jid, "subscribe");
        session.send(&ask).await.map_err(session_problem)?;
    }
    // The roster as stored now (the pushes that tell the session may still be on their
    // way): the request, its approval and their roster changes come before it.
    let roster = session
        .iq(stanzas::roster_get())
        .await
        .map_err(session_problem)?;
    let contact = (stanzas::roster_items(&roster).into_iter()).find(|(j, _)| *j == jid);
    let (subscription, ask) =
        contact.map_or(("none".to_owned(), false), |(_, c)| (c.subscription, c.ask));
    let answer = json!({"jid": jid, "subscription": subscription,
                        "ask": ask.then_some("subscribe")});
    Ok(json(StatusCode::ACCEPTED, answer))
}

/// Removes the contact, which cancels both subscriptions (RFC 6121 §2.5.2), or refuses
/// its pending request (§3.2).
pub(crate) async fn remove_friend(
    State(api): State<Api>,
    caller: Caller,
    Path(jid): Path<String>,
) -> Result<StatusCode, Problem> {
    let session = api.session(&caller).await?;
    let jid = contact_jid(&jid, &session)?;
    let (in_roster, requested) = {
        let state = session.lock();
        (
            state.roster.contains_key(&jid),
            state.requests.contains(&jid),
        )
    };
    if !in_roster && !requested {
        return Err(Problem::not_found("neither a friend nor a request"));
    }
    if requested {
        let refuse = stanzas::subscription(&jid, "unsubscribed");
        session.send(&refuse).await.map_err(session_problem)?;
        session.lock().requests.remove(&jid);
    }
    if in_roster {
        let remove = stanzas::roster_remove(&jid);
        session.iq(remove).await.map_err(session_problem)?;
    }
    session.settle().await.map_err(session_problem)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(crate) struct SendMessage {
    to: String,
    body: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    /// A file's URL to share out of band (XEP-0066), such as an upload's `get_url`.
    url: Option<String>,
}

fn state_name(state: MessageState) -> &'static str {
    match state {
        MessageState::Delivered => "delivered",
        MessageState::Stored => "stored",
        MessageState::Queued => "queued",
    }
}

/// A message's body and shared URL, checked.
pub(crate) fn check_content(body: &str, url: Option<&str>) -> Result<(), Problem> {
    if body.trim().is_empty() || body.len() > MAX_MESSAGE_BODY {
        return Err(Problem::bad_request(format!(
            "the body must hold text, at most {MAX_MESSAGE_BODY} bytes"
        )));
    }
    let web = |u: &str| u.starts_with("https://") || u.starts_with("http://");
    if url.is_some_and(|u| u.len() > MAX_URL || !web(u) || u.chars().any(char::is_whitespace)) {
        return Err(Problem::bad_request(format!(
            "url must be an http or https URL of at most {MAX_URL} bytes"
        )));
    }
    Ok(())
}

/// Sends a message from the caller's resource; answered once it is durable.
pub(crate) async fn send(
    State(api): State<Api>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<SendMessage>,
) -> Result<Response, Problem> {
    let to = Jid::new(body.to.trim())
        .map_err(|_| Problem::bad_request(format!("`{}` is not a JID", body.to)))?;
    let kind = body.kind.as_deref().unwrap_or("chat");
    if !["chat", "normal"].contains(&kind) {
        return Err(Problem::bad_request("type is chat or normal"));
    }
    check_content(&body.body, body.url.as_deref())?;
    let claim = match api.idempotency.start(&caller.token.owner, &headers)? {
        Start::Replay(answer) => return Ok(json(StatusCode::OK, answer)),
        Start::Go(claim) => claim,
    };
    let session = api.session(&caller).await?;
    let id = outpost_server::ids::random_id(20);
    let state = api.server.message_state(&to).await?;
    let message = stanzas::message(&to.to_string(), kind, &id, &body.body, body.url.as_deref());
    send_durably(&session, &message, &id, state_name(state), claim).await
}

/// Sends `message` (whose id is `id`) from the session and answers `{id, state}` once it
/// is durable, keeping the answer for the request's `Idempotency-Key`.
pub(crate) async fn send_durably(
    session: &ApiSession,
    message: &Element,
    id: &str,
    state: &str,
    claim: Option<Owned>,
) -> Result<Response, Problem> {
    session.send(message).await.map_err(session_problem)?;
    session.settle().await.map_err(session_problem)?;
    let answer = json!({"id": id, "state": state});
    if let Some(claim) = claim {
        claim.done(answer.clone());
    }
    Ok(json(StatusCode::OK, answer))
}

/// A history page's size: `limit`, 50 when not given.
pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32, Problem> {
    let limit = limit.unwrap_or(50);
    if !(1..=MAX_HISTORY_PAGE).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "limit is 1 to {MAX_HISTORY_PAGE}"
        )));
    }
    Ok(limit)
}

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    with: String,
    before: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

pub(crate) async fn history(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, Problem> {
    let with = BareJid::new(q.with.trim())
        .map_err(|_| Problem::bad_request(format!("`{}` is not a bare JID", q.with)))?;
    let limit = page_limit(q.limit)?;
    let owner = BareJid::new(&caller.token.owner).map_err(|_| Problem::unauthorized())?;
    let (items, complete) = api
        .server
        .history(
            &owner,
            &with,
            q.before.as_deref(),
            q.after.as_deref(),
            limit,
        )
        .await?;
    let messages: Vec<Value> = items
        .into_iter()
        .map(|m| {
            json!({"id": m.id, "message_id": m.message_id, "from": m.from, "to": m.to,
                   "body": m.body, "url": m.url, "timestamp": rfc3339(m.at_ms)})
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        json!({"messages": messages, "complete": complete}),
    ))
}

#[derive(Deserialize)]
pub(crate) struct SetPresence {
    show: String,
    status: Option<String>,
}

pub(crate) async fn presence(
    State(api): State<Api>,
    caller: Caller,
    Json(body): Json<SetPresence>,
) -> Result<StatusCode, Problem> {
    let status = body.status.as_deref();
    if status.is_some_and(|s| s.len() > 1024) {
        return Err(Problem::bad_request("status is at most 1024 bytes"));
    }
    let stanza = match body.show.as_str() {
        "unavailable" => stanzas::unavailable(status),
        "available" => stanzas::presence(None, status),
        show @ ("chat" | "away" | "xa" | "dnd") => stanzas::presence(Some(show), status),
        other => {
            return Err(Problem::bad_request(format!(
                "show is one of available, chat, away, xa, dnd, unavailable; not `{other}`"
            )));
        }
    };
    let session = api.session(&caller).await?;
    session.send(&stanza).await.map_err(session_problem)?;
    session.settle().await.map_err(session_problem)?;
    Ok(StatusCode::NO_CONTENT)
}
