//! `Idempotency-Key` for sending messages: the same key from the same account within
//! [`KEEP`] gets the first answer again and sends nothing. Kept in memory: a restart
//! forgets the keys, so a retry across a restart sends the message again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde_json::Value;

use super::problem::Problem;

/// How long an answer is kept for its key.
const KEEP: Duration = Duration::from_secs(24 * 3600);
/// Keys kept at most; past that the oldest answers go first.
const MAX_KEYS: usize = 100_000;
/// Longest key taken.
const MAX_KEY: usize = 64;

enum Entry {
    /// A request with the key is under way.
    Busy,
    Done(Instant, Value),
}

#[derive(Clone, Default)]
pub(crate) struct Keys {
    entries: Arc<Mutex<HashMap<(String, String), Entry>>>,
}

/// What a key says about a request.
enum Claim {
    /// Answered before: this answer.
    Done(Value),
    /// Another request with the key is under way.
    Busy,
    /// The request is the key's: answer it, then [`Owned::done`].
    Mine(Owned),
}

/// A key a request holds; forgotten if the request fails (dropped without `done`).
pub(crate) struct Owned {
    keys: Keys,
    key: Option<(String, String)>,
}

impl Owned {
    pub(crate) fn done(mut self, answer: Value) {
        if let Some(key) = self.key.take() {
            self.keys
                .lock()
                .insert(key, Entry::Done(Instant::now(), answer));
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.keys.lock().remove(&key);
        }
    }
}

/// The request's `Idempotency-Key`, if it has a usable one.
fn key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= MAX_KEY => Ok(Some(k.to_owned())),
        _ => Err(Problem::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters"
        ))),
    }
}

/// How a request with this key goes on.
pub(crate) enum Start {
    /// It was answered before: this answer again, with nothing done.
    Replay(Value),
    /// Do it, holding the key when there is one.
    Go(Option<Owned>),
}

impl Keys {
    /// Where a request of `owner`'s with these headers stands: a key seen before gets
    /// its answer, a key in use by another request is a conflict.
    pub(crate) fn start(&self, owner: &str, headers: &HeaderMap) -> Result<Start, Problem> {
        let Some(k) = key(headers)? else {
            return Ok(Start::Go(None));
        };
        match self.claim(owner, &k) {
            Claim::Done(answer) => Ok(Start::Replay(answer)),
            Claim::Busy => Err(Problem::new(
                axum::http::StatusCode::CONFLICT,
                "conflict",
                "A request with this Idempotency-Key is in progress",
            )),
            Claim::Mine(owned) => Ok(Start::Go(Some(owned))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claim(&self, owner: &str, key: &str) -> Claim {
        let id = (owner.to_owned(), key.to_owned());
        let mut entries = self.lock();
        match entries.get(&id) {
            Some(Entry::Done(at, answer)) if at.elapsed() < KEEP => Claim::Done(answer.clone()),
            Some(Entry::Busy) => Claim::Busy,
            _ => {
                if entries.len() >= MAX_KEYS {
                    evict_oldest_tenth(&mut entries);
                }
                entries.insert(id.clone(), Entry::Busy);
                Claim::Mine(Owned {
                    keys: self.clone(),
                    key: Some(id),
                })
            }
        }
    }

    /// Forgets answers older than [`KEEP`].
    pub(crate) fn expire(&self) {
        self.lock()
            .retain(|_, e| !matches!(e, Entry::Done(at, _) if at.elapsed() >= KEEP));
    }
}

/// Makes room: forgets the oldest tenth of the answers, in one pass.
fn evict_oldest_tenth(entries: &mut HashMap<(String, String), Entry>) {
    let mut done: Vec<(Instant, (String, String))> = (entries.iter())
        .filter_map(|(k, e)| match e {
            Entry::Done(at, _) => Some((*at, k.clone())),
            Entry::Busy => None,
        })
        .collect();
    done.sort_unstable_by_key(|(at, _)| *at);
    for (_, key) in done.into_iter().take(MAX_KEYS / 10) {
        entries.remove(&key);
    }
}
