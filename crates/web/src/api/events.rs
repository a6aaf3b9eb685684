//! `GET /api/v1/events`: the session's events as Server-Sent Events. Each has the id the
//! session gave it; a client that reconnects with `Last-Event-ID` gets those after it that
//! the session still keeps. While a stream is open its session stays online; every
//! [`KEEP_ALIVE`] a comment line keeps proxies from closing it, and the token is checked
//! again, so a revoked token's stream ends.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, Sse};
use futures_util::Stream;
use futures_util::stream;

use super::problem::Problem;
use super::session::{ApiSession, Event};
use super::{Api, Caller, stanzas};

const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Counts the stream as its session's listener while it lives.
struct Listening {
    session: Arc<ApiSession>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.session.listeners.fetch_sub(1, Ordering::Relaxed);
        self.session.touch();
    }
}

struct Cursor {
    api: Api,
    secret_owner: (String, String),
    listening: Listening,
    last: Option<u64>,
    queue: std::collections::VecDeque<Event>,
}

pub(crate) async fn stream(
    State(api): State<Api>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let session = api.session(&caller).await?;
    session.listeners.fetch_add(1, Ordering::Relaxed);
    let cursor = Cursor {
        secret_owner: (caller.token.id.clone(), caller.token.owner.clone()),
        api,
        listening: Listening { session },
        last,
        queue: Default::default(),
    };
    Ok(Sse::new(stream::unfold(cursor, next)))
}

/// The next thing to write: an event, a keep-alive comment, or the end.
async fn next(mut c: Cursor) -> Option<(Result<SseEvent, Infallible>, Cursor)> {
    loop {
        if let Some(event) = c.queue.pop_front() {
            c.last = Some(event.id);
            let sse = deliver(&c.listening.session, event).await;
            return Some((Ok(sse), c));
        }
        let session = c.listening.session.clone();
        if session.is_ended() {
            return None;
        }
        let news = session.news.notified();
        c.queue.extend(session.events_after(c.last));
        if !c.queue.is_empty() {
            continue;
        }
        if tokio::time::timeout(KEEP_ALIVE, news).await.is_err() {
            if !still_valid(&c).await {
                return None;
            }
            return Some((Ok(SseEvent::default().comment("keep-alive")), c));
        }
    }
}

/// Whether the stream's token is still good (not revoked, not expired).
async fn still_valid(c: &Cursor) -> bool {
    let (id, owner) = &c.secret_owner;
    match c.api.server.api_tokens(owner).await {
        Ok(tokens) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            tokens.iter().any(|t| &t.id == id && t.expires_ms > now)
        }
        // The store cannot say now: keep the stream; the next check decides.
        Err(_) => true,
    }
}

/// The event as written, once the client has it the sender gets its receipt.
async fn deliver(session: &ApiSession, event: Event) -> SseEvent {
    if let Some((to, id)) = &event.receipt {
        let _ = session.send(&stanzas::receipt(to, id)).await;
    }
    SseEvent::default()
        .id(event.id.to_string())
        .event(event.kind)
        .data(event.data.to_string())
}
