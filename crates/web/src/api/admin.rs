//! The operators' routes, `/api/v1/admin/…`, behind the admin token of the configuration
//! (`api.admin_token`); without one they answer 403, whatever the request carries.

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::{delete, get};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::problem::{Json, Path, Problem, Query, json};
use super::{Api, bearer};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/admin/status", get(status))
        .route("/admin/users", get(users).post(add_user))
        .route("/admin/users/{jid}", delete(remove_user))
        .route("/admin/links", get(links))
        .route("/admin/replication", get(replication))
}

/// A request that carries the admin token.
pub(crate) struct Admin;

impl FromRequestParts<Api> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Admin, Problem> {
        let Some(expected) = api.server.api_admin_token() else {
            return Err(Problem::forbidden(
                "the admin routes are off: set api.admin_token in the configuration",
            ));
        };
        let given = bearer(parts).ok_or_else(Problem::unauthorized)?;
        if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(Admin)
        } else {
            Err(Problem::unauthorized().detail("not the admin token"))
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Problem {
    Problem::unavailable(e.to_string())
}

/// As JSON, what the server's own types say of themselves (`outpost admin … --json`).
fn as_json(value: impl serde::Serialize) -> Result<Response, Problem> {
    let value = serde_json::to_value(value).map_err(internal)?;
    Ok(json(StatusCode::OK, value))
}

async fn status(State(api): State<Api>, _: Admin) -> Result<Response, Problem> {
    as_json(api.server.status().await.map_err(internal)?)
}

#[derive(Deserialize)]
pub(crate) struct UsersQuery {
    domain: Option<String>,
}

async fn users(
    State(api): State<Api>,
    _: Admin,
    Query(q): Query<UsersQuery>,
) -> Result<Response, Problem> {
    let users = api.server.api_users(q.domain.as_deref()).await?;
    let list: Vec<_> = users.iter().map(|u| json!({ "jid": u })).collect();
    Ok(json(StatusCode::OK, list.into()))
}

#[derive(Deserialize)]
pub(crate) struct NewUser {
    jid: String,
    password: String,
}

async fn add_user(
    State(api): State<Api>,
    _: Admin,
    Json(body): Json<NewUser>,
) -> Result<Response, Problem> {
    let jid = api.server.api_add_user(&body.jid, &body.password).await?;
    Ok(json(StatusCode::CREATED, json!({ "jid": jid })))
}

async fn remove_user(
    State(api): State<Api>,
    _: Admin,
    Path(jid): Path<String>,
) -> Result<StatusCode, Problem> {
    if !api.server.api_remove_user(&jid).await? {
        return Err(Problem::not_found("no such account"));
    }
    api.sessions.end_all(&jid);
    Ok(StatusCode::NO_CONTENT)
}

async fn links(State(api): State<Api>, _: Admin) -> Result<Response, Problem> {
    as_json(api.server.link_statuses().await.map_err(internal)?)
}

async fn replication(State(api): State<Api>, _: Admin) -> Result<Response, Problem> {
    as_json(api.server.replication())
}
