//! Group chat (XEP-0045 rooms, here or on other servers) and file upload slots, each
//! through the caller's API session: the session is the occupant, so the room's own
//! rules (members-only, bans, nicknames, moderation) apply as to any client.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use jid::{BareJid, FullJid};
use serde::Deserialize;
use serde_json::{Value, json};

use super::chat::{check_content, page_limit, send_durably};
use super::idempotency::Start;
use super::problem::{Json, Path, Problem, Query, json};
use super::session::{ApiSession, SessionError};
use super::{Api, Caller, muc, session_problem};

/// A room's address: a bare JID with a local part, not one of this server's users.
fn room_jid(api: &Api, text: &str) -> Result<String, Problem> {
    let jid = BareJid::new(text.trim())
        .map_err(|_| Problem::bad_request(format!("`{text}` is not a room address")))?;
    if jid.node().is_none() {
        return Err(Problem::bad_request(format!("`{jid}` names no room")));
    }
    if api.server.serves_users(jid.domain().as_str()) {
        return Err(Problem::bad_request(format!(
            "`{jid}` is a user's address; rooms are at a room service such as {}",
            api.server
                .room_service(jid.domain().as_str())
                .unwrap_or_else(|| "conference.<domain>".to_owned())
        )));
    }
    Ok(jid.to_string())
}

/// The room as the caller's session sees it; 404 when the session is not in it.
fn room_json(session: &ApiSession, room: &str) -> Result<Value, Problem> {
    let state = session.lock();
    let r = state
        .rooms
        .get(room)
        .ok_or_else(|| Problem::not_found("you are not in this room"))?;
    Ok(r.to_json(room))
}

pub(crate) async fn list(State(api): State<Api>, caller: Caller) -> Result<Response, Problem> {
    let session = api.session(&caller).await?;
    let state = session.lock();
    let rooms: Vec<Value> = (state.rooms.iter())
        .map(|(jid, r)| r.to_json(jid))
        .collect();
    Ok(json(StatusCode::OK, rooms.into()))
}

pub(crate) async fn show(
    State(api): State<Api>,
    caller: Caller,
    Path(jid): Path<String>,
) -> Result<Response, Problem> {
    let room = room_jid(&api, &jid)?;
    let session = api.session(&caller).await?;
    Ok(json(StatusCode::OK, room_json(&session, &room)?))
}

#[derive(Deserialize)]
pub(crate) struct Join {
    jid: String,
    nick: Option<String>,
}

/// Enters a room (made if it does not exist and the service lets the user make it),
/// and keeps it among the user's bookmarks.
pub(crate) async fn join(
    State(api): State<Api>,
    caller: Caller,
    Json(body): Json<Join>,
) -> Result<Response, Problem> {
    let room = room_jid(&api, &body.jid)?;
    let session = api.session(&caller).await?;
    let nick = match body.nick.as_deref().map(str::trim) {
        Some(n) => n.to_owned(),
        None => session
            .user
            .node()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    };
    if FullJid::new(&format!("{room}/{nick}")).is_err() || nick.len() > 64 {
        return Err(Problem::bad_request(
            "nick must be 1 to 64 bytes a JID resource can carry",
        ));
    }
    session.join(&room, &nick).await.map_err(room_problem)?;
    session.settle().await.map_err(session_problem)?;
    Ok(json(StatusCode::OK, room_json(&session, &room)?))
}

pub(crate) async fn leave(
    State(api): State<Api>,
    caller: Caller,
    Path(jid): Path<String>,
) -> Result<StatusCode, Problem> {
    let room = room_jid(&api, &jid)?;
    let session = api.session(&caller).await?;
    if !session.leave(&room).await.map_err(session_problem)? {
        return Err(Problem::not_found("you are not in this room"));
    }
    session.settle().await.map_err(session_problem)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(crate) struct Say {
    body: String,
    url: Option<String>,
}

/// Says something in a room the caller is in; answered once this server holds it.
pub(crate) async fn send(
    State(api): State<Api>,
    caller: Caller,
    Path(jid): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Say>,
) -> Result<Response, Problem> {
    let room = room_jid(&api, &jid)?;
    check_content(&body.body, body.url.as_deref())?;
    let claim = match api.idempotency.start(&caller.token.owner, &headers)? {
        Start::Replay(answer) => return Ok(json(StatusCode::OK, answer)),
        Start::Go(claim) => claim,
    };
    let session = api.session(&caller).await?;
    if !session.lock().rooms.get(&room).is_some_and(|r| r.joined) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "not-joined",
            "You are not in this room",
        )
        .detail("join it first: POST /api/v1/rooms"));
    }
    let id = outpost_server::ids::random_id(20);
    let message = muc::groupchat(&room, &id, &body.body, body.url.as_deref());
    let domain = room.split_once('@').map_or("", |(_, d)| d);
    let state = if api.server.serves(domain) {
        "delivered"
    } else {
        "queued"
    };
    send_durably(&session, &message, &id, state, claim).await
}

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    before: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

/// A page of the room's archive, as the room lets the caller read it.
pub(crate) async fn history(
    State(api): State<Api>,
    caller: Caller,
    Path(jid): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, Problem> {
    let room = room_jid(&api, &jid)?;
    let limit = page_limit(q.limit)?;
    let cursor_ok = |c: &Option<String>| c.as_ref().is_none_or(|c| c.len() <= 64);
    if !cursor_ok(&q.before) || !cursor_ok(&q.after) {
        return Err(Problem::bad_request("before and after are message ids"));
    }
    let session = api.session(&caller).await?;
    let (messages, complete) = session
        .room_archive(&room, q.before.as_deref(), q.after.as_deref(), limit)
        .await
        .map_err(room_problem)?;
    Ok(json(
        StatusCode::OK,
        json!({"messages": messages, "complete": complete}),
    ))
}

#[derive(Deserialize)]
pub(crate) struct SlotRequest {
    filename: String,
    size: u64,
    content_type: Option<String>,
}

/// An upload slot from the user's upload service (XEP-0363): where to PUT the file
/// (`put_url`, or `put_path` on this HTTP service) with which headers, and the URL to
/// share.
pub(crate) async fn upload(
    State(api): State<Api>,
    caller: Caller,
    Json(body): Json<SlotRequest>,
) -> Result<Response, Problem> {
    let filename = body.filename.trim();
    if filename.is_empty() || filename.len() > 255 || filename.contains(['/', '\\']) {
        return Err(Problem::bad_request(
            "filename is 1 to 255 bytes with no slash",
        ));
    }
    if body.size == 0 {
        return Err(Problem::bad_request("size is the file's length in bytes"));
    }
    let session = api.session(&caller).await?;
    let service = (api.server.upload_service(session.user.domain().as_str()))
        .ok_or_else(|| Problem::unavailable("this server has no upload service"))?;
    let request = muc::slot_request(&service, filename, body.size, body.content_type.as_deref());
    let answer = session.iq_answer(request).await.map_err(session_problem)?;
    if answer.attr("type") != Some("result") {
        return Err(slot_problem(&answer));
    }
    let slot = muc::slot(&answer).ok_or_else(|| Problem::unavailable("no slot in the answer"))?;
    let put_path = (slot.put_url.parse::<Uri>().ok())
        .and_then(|u| u.path_and_query().map(ToString::to_string))
        .ok_or_else(|| Problem::unavailable("the slot's URL does not parse"))?;
    let headers: serde_json::Map<String, Value> = (slot.headers.into_iter())
        .map(|(name, value)| (name, value.into()))
        .collect();
    Ok(json(
        StatusCode::CREATED,
        json!({"put_url": slot.put_url, "put_path": put_path, "put_headers": headers,
               "get_url": slot.get_url}),
    ))
}

/// The upload service's refusal as an answer.
fn slot_problem(answer: &outpost_proto::minidom::Element) -> Problem {
    let condition = super::stanzas::error_condition(answer);
    if let Some(max) = muc::max_file_size(answer) {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "file-too-large",
            "The file is larger than the server takes",
        )
        .detail(format!("at most {max} bytes"));
    }
    match condition.as_str() {
        "resource-constraint" => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "quota-exceeded",
            "Your upload quota is used up",
        )
        .detail("older files must expire first"),
        _ => session_problem(SessionError::Refused(condition)),
    }
}

/// A room's refusal as an answer.
fn room_problem(e: SessionError) -> Problem {
    match &e {
        SessionError::Refused(c) if c == "conflict" => Problem::new(
            StatusCode::CONFLICT,
            "conflict",
            "That nickname is in use in this room",
        ),
        SessionError::Refused(c) if c == "registration-required" => {
            Problem::forbidden("the room is for its members only")
        }
        SessionError::Refused(c) if c == "remote-server-not-found" => {
            Problem::not_found("no such room service")
        }
        SessionError::Refused(c) if c == "service-unavailable" => {
            Problem::unavailable("the room cannot take the request (full, or no archive)")
        }
        _ => session_problem(e),
    }
}
