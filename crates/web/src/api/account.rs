//! Accounts and tokens: register, login, logout, who am I, the token list.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::problem::{Json, Path, Problem, Query, json};
use super::{Api, Caller, Peer};
use outpost_server::rfc3339;

#[derive(Deserialize)]
pub(crate) struct Register {
    username: String,
    password: String,
    domain: Option<String>,
}

pub(crate) async fn register(
    State(api): State<Api>,
    Peer(peer): Peer,
    Json(body): Json<Register>,
) -> Result<Response, Problem> {
    let jid = api
        .server
        .api_register(
            &body.username,
            body.domain.as_deref(),
            &body.password,
            peer.ip(),
        )
        .await?;
    Ok(json(StatusCode::CREATED, json!({ "jid": jid })))
}

#[derive(Deserialize)]
pub(crate) struct Login {
    jid: String,
    password: String,
    label: Option<String>,
}

pub(crate) async fn login(
    State(api): State<Api>,
    Peer(peer): Peer,
    Json(body): Json<Login>,
) -> Result<Response, Problem> {
    let issued = api
        .server
        .api_login(&body.jid, &body.password, body.label.as_deref(), peer.ip())
        .await?;
    let token = &issued.token;
    Ok(json(
        StatusCode::OK,
        json!({
            "token": issued.secret,
            "expires_at": rfc3339(token.expires_ms),
            "jid": token.owner,
            "resource": format!("api-{}", token.id),
        }),
    ))
}

#[derive(Deserialize)]
pub(crate) struct LogoutQuery {
    #[serde(default)]
    all: bool,
}

pub(crate) async fn logout(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<LogoutQuery>,
) -> Result<StatusCode, Problem> {
    let owner = &caller.token.owner;
    if q.all {
        api.server.api_revoke_all(owner).await?;
        api.sessions.end_all(owner);
    } else {
        api.server.api_revoke(owner, &caller.token.id).await?;
        api.sessions.end(&caller.token.id);
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn me(State(api): State<Api>, caller: Caller) -> Response {
    let t = &caller.token;
    let domain = t.owner.split_once('@').map_or("", |(_, d)| d);
    json(
        StatusCode::OK,
        json!({
            "jid": t.owner,
            "resource": format!("api-{}", t.id),
            "expires_at": rfc3339(t.expires_ms),
            "rooms_service": api.server.room_service(domain),
            "upload": api.server.upload_service(domain).is_some(),
        }),
    )
}

pub(crate) async fn tokens(State(api): State<Api>, caller: Caller) -> Result<Response, Problem> {
    let tokens = api.server.api_tokens(&caller.token.owner).await?;
    let list: Vec<_> = tokens
        .iter()
        .map(|t| {
            json!({
                "id": t.id,
                "label": t.label,
                "created_at": rfc3339(t.created_ms),
                "expires_at": rfc3339(t.expires_ms),
                "current": t.id == caller.token.id,
            })
        })
        .collect();
    Ok(json(StatusCode::OK, list.into()))
}

pub(crate) async fn revoke(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    if !api.server.api_revoke(&caller.token.owner, &id).await? {
        return Err(Problem::not_found("no such token"));
    }
    api.sessions.end(&id);
    Ok(StatusCode::NO_CONTENT)
}
