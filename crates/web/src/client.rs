//! The web client (`web/`, built into `crates/web/assets` and committed), embedded in the
//! binary and served at `/` and `/assets/…`: it needs no network beyond this server. The
//! asset URLs carry content hashes (`?v=`), so they may be cached for long; the page itself
//! is revalidated each time.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

pub(crate) fn routes() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8", "no-cache") }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8", IMMUTABLE) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8", IMMUTABLE) }),
        )
}

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn asset(body: &'static str, kind: &'static str, cache: &'static str) -> Response {
    let mut r = body.into_response();
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}
