//! Errors as RFC 9457 problem details (`application/problem+json`), each with a stable
//! `code` that clients may match on, and the JSON body extractor that turns every bad
//! request into one.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use outpost_server::ApiError;
use serde::de::DeserializeOwned;

/// Largest JSON body accepted.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// An error answer.
#[derive(Debug)]
pub(crate) struct Problem {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: Option<String>,
    retry_after: Option<u64>,
}

impl Problem {
    pub(crate) fn new(status: StatusCode, code: &'static str, title: &'static str) -> Problem {
        Problem {
            status,
            code,
            title,
            detail: None,
            retry_after: None,
        }
    }

    pub(crate) fn detail(mut self, detail: impl Into<String>) -> Problem {
        self.detail = Some(detail.into());
        self
    }

    pub(crate) fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request").detail(detail)
    }

    pub(crate) fn unauthorized() -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "A valid bearer token is required",
        )
    }

    pub(crate) fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found").detail(detail)
    }

    pub(crate) fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(detail)
    }

    pub(crate) fn unavailable(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "The server cannot answer now",
        )
        .detail(detail)
    }

    pub(crate) fn rate_limited(retry_after: u64, detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
        )
        .detail(detail);
        p.retry_after = Some(retry_after);
        p
    }
}

impl From<ApiError> for Problem {
    fn from(e: ApiError) -> Problem {
        let detail = e.to_string();
        match e {
            ApiError::BadCredentials => Problem::new(
                StatusCode::UNAUTHORIZED,
                "bad-credentials",
                "Wrong address or password",
            ),
            ApiError::Throttled { retry_secs } => Problem::rate_limited(retry_secs, detail),
            ApiError::WrongServer { .. } => Problem::new(
                StatusCode::MISDIRECTED_REQUEST,
                "wrong-server",
                "Log in at the account's home server",
            )
            .detail(detail),
            ApiError::RegistrationClosed => Problem::new(
                StatusCode::FORBIDDEN,
                "registration-closed",
                "Registration is closed",
            ),
            ApiError::RegistrationLimited => Problem::rate_limited(60, detail),
            ApiError::Exists => {
                Problem::new(StatusCode::CONFLICT, "conflict", "Already exists").detail(detail)
            }
            ApiError::Invalid(d) => Problem::bad_request(d),
            ApiError::Unauthorized => Problem::unauthorized().detail(detail),
            ApiError::NoSuchUser(_) => Problem::not_found(detail),
            ApiError::Unavailable => Problem::unavailable(detail),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "type": format!("/api/v1/problems/{}", self.code),
            "title": self.title,
            "status": self.status.as_u16(),
            "code": self.code,
        });
        if let Some(detail) = self.detail {
            body["detail"] = detail.into();
        }
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A JSON request body of type `T`: `application/json`, at most [`MAX_BODY`] bytes, and
/// well-formed; anything else is answered with a problem saying which.
pub(crate) struct Json<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "The body must be application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload-too-large",
                    "The body is too large",
                )
                .detail(format!("at most {MAX_BODY} bytes"))
            } else {
                Problem::bad_request("the body could not be read")
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| Problem::bad_request(format!("the body is not what was expected: {e}")))
    }
}

/// Answer with `status` and `value` as JSON.
pub(crate) fn json(status: StatusCode, value: serde_json::Value) -> Response {
    let mut response = (status, value.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The query string as `T`, or a problem saying what is wrong with it.
pub(crate) struct Query<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(q) => Ok(Query(q.0)),
            Err(e) => Err(Problem::bad_request(format!(
                "bad query string: {}",
                e.body_text()
            ))),
        }
    }
}

/// A path parameter as `T`, or a problem.
pub(crate) struct Path<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(p) => Ok(Path(p.0)),
            Err(e) => Err(Problem::bad_request(format!("bad path: {}", e.body_text()))),
        }
    }
}
