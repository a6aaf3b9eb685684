//! The HTTP API, `/api/v1`: the paper's web services (register, login and logout, the
//! friend list, adding and removing friends, sending messages) for clients that can speak
//! only HTTP, with history, presence, Server-Sent Events and the operators' routes. The
//! contract is `openapi.json` (served at `/api/v1/openapi.json`, with a page at
//! `/api/v1/docs`).
//!
//! Every call but register and login carries a bearer token and acts as the token's user
//! only: nothing in a request names a sender. What a user does goes through their API
//! session (`session`), an XMPP resource the server runs like any client's, so limits,
//! rate limits, routing, carbons, archiving and durability are the server's own. Errors are
//! problem details (`problem`). Request bodies, passwords, tokens and message bodies are
//! never logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use outpost_server::{ApiToken, HttpEnv, ServerView};
use tokio_util::sync::CancellationToken;

mod account;
mod admin;
mod chat;
mod events;
mod idempotency;
mod muc;
mod problem;
mod rooms;
mod session;
mod stanzas;

use problem::Problem;
use session::{SessionError, Sessions};

/// The OpenAPI 3.1 document of this API.
const OPENAPI: &str = include_str!("../../api/openapi.json");
/// A page that shows the document, with no network beyond this server.
const DOCS: &str = include_str!("../../api/docs.html");
/// How often idle sessions and expired tokens are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub(crate) struct Api {
    server: ServerView,
    sessions: Sessions,
    idempotency: idempotency::Keys,
}

pub(crate) fn routes(env: &HttpEnv) -> Router {
    let server = env.server.clone();
    let api = Api {
        sessions: Sessions::new(server.clone()),
        server,
        idempotency: idempotency::Keys::default(),
    };
    env.spawn(sweep(api.clone(), env.shutdown.clone()));
    let v1 = Router::new()
        .route("/register", post(account::register))
        .route("/login", post(account::login))
        .route("/logout", post(account::logout))
        .route("/me", get(account::me))
        .route("/tokens", get(account::tokens))
        .route("/tokens/{id}", delete(account::revoke))
        .route("/friends", get(chat::friends).post(chat::add_friend))
        .route("/friends/requests", get(chat::requests))
        .route("/friends/{jid}", delete(chat::remove_friend))
        .route("/messages", post(chat::send).get(chat::history))
        .route("/presence", put(chat::presence))
        .route("/rooms", get(rooms::list).post(rooms::join))
        .route("/rooms/{jid}", get(rooms::show).delete(rooms::leave))
        .route(
            "/rooms/{jid}/messages",
            post(rooms::send).get(rooms::history),
        )
        .route("/uploads", post(rooms::upload))
        .route("/events", get(events::stream))
        .merge(admin::routes())
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(problem::MAX_BODY))
        .with_state(api);
    Router::new().nest("/api/v1", v1)
}

/// Ends idle sessions and forgets expired tokens and idempotency keys, until the server
/// stops.
async fn sweep(api: Api, shutdown: CancellationToken) {
    loop {
        let idle = Duration::from_secs(api.server.api_config().session_idle_secs);
        tokio::select! {
            () = tokio::time::sleep(SWEEP_EVERY.min(idle)) => {}
            () = shutdown.cancelled() => break,
        }
        api.sessions.reap(idle);
        api.idempotency.expire();
        if let Err(e) = api.server.api_expire_tokens().await {
            tracing::debug!(error = %e, "cannot expire API tokens");
        }
    }
    api.sessions.end_every();
}

async fn openapi() -> Response {
    let mut r = OPENAPI.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn docs() -> Response {
    let mut r = DOCS.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

async fn not_found() -> Problem {
    Problem::not_found("no such route")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
    )
}

/// The address a request came from.
fn peer(parts: &Parts) -> SocketAddr {
    parts
        .extensions
        .get::<crate::websocket::Peer>()
        .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |p| p.0)
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The user a request acts as: its bearer token's.
pub(crate) struct Caller {
    token: ApiToken,
    peer: SocketAddr,
}

impl FromRequestParts<Api> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Caller, Problem> {
        let secret = bearer(parts).ok_or_else(Problem::unauthorized)?;
        let token = api.server.api_token(secret).await?;
        Ok(Caller {
            token,
            peer: peer(parts),
        })
    }
}

/// The address a request came from, for the calls that need no token.
pub(crate) struct Peer(SocketAddr);

impl<S: Sync> FromRequestParts<S> for Peer {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Peer, Problem> {
        Ok(Peer(peer(parts)))
    }
}

impl Api {
    /// The caller's session, started if needed.
    async fn session(&self, caller: &Caller) -> Result<Arc<session::ApiSession>, Problem> {
        self.sessions
            .get(&caller.token, caller.peer)
            .await
            .map_err(session_problem)
    }
}

/// A session's failure as an answer.
fn session_problem(e: SessionError) -> Problem {
    match &e {
        SessionError::Refused(condition) if condition == "resource-constraint" => {
            Problem::unavailable("too many connections or resources for now; try again")
        }
        SessionError::Refused(condition) => match condition.as_str() {
            "item-not-found" => Problem::not_found(condition),
            "forbidden" | "not-allowed" | "not-authorized" => Problem::forbidden(condition),
            _ => Problem::bad_request(format!("the server refused: {condition}")),
        },
        SessionError::Unwritable => Problem::bad_request(e.to_string()),
        other => Problem::unavailable(other.to_string()),
    }
}
