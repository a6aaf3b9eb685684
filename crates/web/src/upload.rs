//! File upload over HTTP (XEP-0363 §5): the `PUT` of a slot's file, written to a part file
//! and synced before it becomes the slot's file and the slot is marked stored; `GET` and
//! `HEAD` of stored files, with headers that keep a browser from running what it fetches;
//! CORS for web clients; and the sweep that deletes files which have had their time.
//!
//! Not here: range requests (a download starts from the beginning).

use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use futures_util::StreamExt;
use outpost_server::{PutRefused, StoredFile, UPLOAD_PATH, Uploads};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A PUT whose client sends nothing for this long is abandoned.
const BODY_IDLE: Duration = Duration::from_secs(60);
/// How often expired files are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(10 * 60);
/// Slots forgotten per store query while sweeping.
const SWEEP_BATCH: u32 = 500;

pub(crate) fn routes(uploads: Uploads) -> Router {
    Router::new()
        .route(
            &format!("{UPLOAD_PATH}/{{slot}}/{{filename}}"),
            put(put_file).get(get_file).options(preflight),
        )
        .with_state(uploads)
}

/// Why a PUT did not store its file.
#[derive(Debug)]
enum Failure {
    Refused(PutRefused),
    /// Another PUT for the slot is writing it.
    Busy,
    TooLong,
    TooShort,
    Idle,
    Body(String),
    Disk(std::io::Error),
}

impl Failure {
    fn response(&self) -> Response {
        let (status, text) = match self {
            Failure::Refused(r) => refusal(r),
            Failure::Busy => (
                StatusCode::CONFLICT,
                "another upload of this file is running",
            ),
            Failure::TooLong => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "more bytes than the slot's size",
            ),
            Failure::TooShort => (StatusCode::BAD_REQUEST, "fewer bytes than the slot's size"),
            Failure::Idle => (StatusCode::REQUEST_TIMEOUT, "the upload stalled"),
            Failure::Body(_) => (StatusCode::BAD_REQUEST, "the upload broke off"),
            Failure::Disk(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot store the file"),
        };
        with_cors((status, text).into_response())
    }
}

fn refusal(r: &PutRefused) -> (StatusCode, &'static str) {
    match r {
        PutRefused::NotFound => (StatusCode::NOT_FOUND, "no such upload slot"),
        PutRefused::NotAuthorized => (
            StatusCode::FORBIDDEN,
            "the slot's Authorization header is missing or wrong",
        ),
        PutRefused::AlreadyStored => (StatusCode::CONFLICT, "this file was uploaded already"),
        PutRefused::Expired => (StatusCode::GONE, "the slot was not used in time"),
        PutRefused::WrongSize { .. } => (
            StatusCode::BAD_REQUEST,
            "Content-Length must be the slot's size",
        ),
        PutRefused::WrongType => (StatusCode::BAD_REQUEST, "Content-Type must be the slot's"),
        PutRefused::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot read the slot"),
    }
}

async fn put_file(
    State(uploads): State<Uploads>,
    UrlPath((slot, filename)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let bearer = text(header::AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let length = text(header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    let checked = uploads
        .check_put(&slot, &filename, bearer, length, text(header::CONTENT_TYPE))
        .await;
    let file = match checked {
        Ok(file) => file,
        Err(PutRefused::WrongSize { .. }) if length.is_none() => {
            let required = (StatusCode::LENGTH_REQUIRED, "Content-Length is required");
            return with_cors(required.into_response());
        }
        Err(PutRefused::WrongSize { expected }) if length > Some(expected) => {
            return Failure::TooLong.response();
        }
        Err(r) => return Failure::Refused(r).response(),
    };
    if let Err(f) = write_file(uploads.dir(), &file, body).await {
        match &f {
            Failure::Disk(e) => warn!(error = %e, "cannot store an upload"),
            Failure::Body(e) => info!(error = %e, "an upload broke off"),
            _ => {}
        }
        return f.response();
    }
    match uploads.stored(&file.slot).await {
        Ok(true) => {
            info!(size = file.size, "file uploaded");
            with_cors(StatusCode::CREATED.into_response())
        }
        Ok(false) | Err(_) => {
            // The slot went while the file was written: it must not stay behind.
            remove(&uploads.dir().join(&file.slot)).await;
            Failure::Refused(PutRefused::Expired).response()
        }
    }
}

/// Writes the body to `<slot>.part`, syncs it, and renames it `<slot>` (then syncs the
/// directory), so that a stored file is whole even after a crash.
async fn write_file(dir: &Path, file: &StoredFile, body: Body) -> Result<(), Failure> {
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder.create(dir).await.map_err(Failure::Disk)?;
    let part = dir.join(format!("{}.part", file.slot));
    let mut out = match tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&part)
        .await
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(Failure::Busy),
        Err(e) => return Err(Failure::Disk(e)),
    };
    let copied = copy_body(&mut out, body, file.size).await;
    let synced = match copied {
        Ok(()) => out.sync_all().await.map_err(Failure::Disk),
        Err(f) => Err(f),
    };
    drop(out);
    if let Err(f) = synced {
        remove(&part).await;
        return Err(f);
    }
    tokio::fs::rename(&part, dir.join(&file.slot))
        .await
        .map_err(Failure::Disk)?;
    let dir = tokio::fs::File::open(dir).await.map_err(Failure::Disk)?;
    dir.sync_all().await.map_err(Failure::Disk)
}

async fn copy_body(out: &mut tokio::fs::File, body: Body, size: u64) -> Result<(), Failure> {
    let mut stream = body.into_data_stream();
    let mut written: u64 = 0;
    loop {
        let chunk = match tokio::time::timeout(BODY_IDLE, stream.next()).await {
            Err(_) => return Err(Failure::Idle),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(Failure::Body(e.to_string())),
            Ok(Some(Ok(chunk))) => chunk,
        };
        written = written.saturating_add(chunk.len() as u64);
        if written > size {
            return Err(Failure::TooLong);
        }
        out.write_all(&chunk).await.map_err(Failure::Disk)?;
    }
    match written == size {
        true => Ok(()),
        false => Err(Failure::TooShort),
    }
}

/// Removes a file; whether it is gone (or was never there).
async fn remove(path: &Path) -> bool {
    match tokio::fs::remove_file(path).await {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot remove an upload file");
            false
        }
    }
}

/// `GET` (and `HEAD`) of a stored file.
async fn get_file(
    State(uploads): State<Uploads>,
    UrlPath((slot, filename)): UrlPath<(String, String)>,
) -> Response {
    let Some(file) = uploads.file(&slot, &filename).await else {
        return with_cors((StatusCode::NOT_FOUND, "no such file").into_response());
    };
    let opened = tokio::fs::File::open(uploads.dir().join(&file.slot)).await;
    let Ok(data) = opened else {
        warn!(slot = %file.slot, "a stored upload's file is missing");
        return with_cors((StatusCode::NOT_FOUND, "no such file").into_response());
    };
    let content_type = file
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    let mut response = Body::from_stream(ReaderStream::new(data)).into_response();
    let h = response.headers_mut();
    let mut set = |name, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set(header::CONTENT_TYPE, content_type);
    set(header::CONTENT_LENGTH, &file.size.to_string());
    set(
        header::CONTENT_DISPOSITION,
        &disposition(&filename, content_type),
    );
    // A shared file is data, never a page of this origin.
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; sandbox",
    );
    set(header::CACHE_CONTROL, "private, max-age=86400");
    with_cors(response)
}

/// Pictures, sound and video are shown where they are opened; anything else (HTML, SVG,
/// scripts, archives) is downloaded.
fn disposition(filename: &str, content_type: &str) -> String {
    let ty = content_type.to_ascii_lowercase();
    let shown = ["image/", "audio/", "video/"]
        .iter()
        .any(|p| ty.starts_with(p))
        && !ty.starts_with("image/svg");
    let kind = if shown { "inline" } else { "attachment" };
    format!(
        "{kind}; filename*=UTF-8''{}",
        utf8_percent_encode(filename, NON_ALPHANUMERIC)
    )
}

/// The CORS preflight of a web client's PUT or GET: the URL is the secret, so any origin
/// may use it.
async fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, PUT, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    with_cors(response)
}

fn with_cors(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// Deletes expired files and forgets their slots, now and every [`SWEEP_EVERY`], until the
/// server stops.
pub(crate) async fn sweep(uploads: Uploads, shutdown: CancellationToken) {
    loop {
        sweep_once(&uploads).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

async fn sweep_once(uploads: &Uploads) {
    loop {
        let due = uploads.expired(SWEEP_BATCH).await;
        for slot in &due {
            // The file first: a slot forgotten with its file still there would leave it
            // behind for good.
            let part = remove(&uploads.dir().join(format!("{slot}.part"))).await;
            if part && remove(&uploads.dir().join(slot)).await {
                uploads.forget(slot).await;
            }
        }
        if due.len() < SWEEP_BATCH as usize {
            if !due.is_empty() {
                info!(files = due.len(), "expired uploads deleted");
            }
            return;
        }
    }
}
