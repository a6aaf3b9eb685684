//! The API session of a token: a real XMPP resource of its user, which the server runs
//! as any client stream ([`ServerView::api_session`]) and this module speaks to as a
//! client: it binds `api-<token id>`, fetches the roster, enables carbons, sends initial
//! presence (so offline messages and pending subscription requests come to it), and
//! turns what arrives into events for `/api/v1/events`.
//!
//! A session starts at the token's first call and lives while an event stream is open or
//! a call came within `api.session_idle_secs`; then it closes its stream, so what arrives
//! later waits offline for its next start (or goes to the user's other clients, and to
//! the archive), as for any client that went away. Events are kept (the last
//! [`EVENT_LOG`]) so a client that reconnects with `Last-Event-ID` gets what it missed
//! while the session lived. Event ids start from the session's start time in
//! microseconds, so a later session's ids are above an earlier one's.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jid::BareJid;
use minidom::Element;
use outpost_server::{ApiToken, ClientWebSocket, ServerView};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use super::muc;
use super::stanzas::{self, Incoming};
use outpost_proto::stanza::set_attr;

mod rooms;

pub(crate) use rooms::Room;

/// Events kept for clients that reconnect.
pub(crate) const EVENT_LOG: usize = 1000;
/// How long the server has to answer one of the session's IQs.
const IQ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the session's stream has to open and bind.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call through the session failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("the session ended")]
    Gone,
    #[error("the server did not answer in time")]
    Timeout,
    #[error("the text holds characters XML cannot carry (control characters)")]
    Unwritable,
    /// The server answered with an error: its defined condition.
    #[error("the server refused: {0}")]
    Refused(String),
}

/// A contact in the user's roster, as the server last said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Contact {
    pub(crate) name: Option<String>,
    pub(crate) subscription: String,
    pub(crate) ask: bool,
}

/// A contact's presence: the most available of its resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Presence {
    pub(crate) show: String,
    pub(crate) status: Option<String>,
}

/// One event for the event stream.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub(crate) id: u64,
    pub(crate) kind: &'static str,
    pub(crate) data: Value,
    /// A receipt the sender asked for (XEP-0184): `(to, id)`, sent once a client has it.
    pub(crate) receipt: Option<(String, String)>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) roster: BTreeMap<String, Contact>,
    /// Each contact's available resources and their presence.
    pub(crate) presence: HashMap<String, BTreeMap<String, Presence>>,
    /// Incoming subscription requests not answered yet.
    pub(crate) requests: BTreeSet<String>,
    /// The rooms the session is in or entering, by bare JID.
    pub(crate) rooms: BTreeMap<String, Room>,
    /// Entries that archive queries have received so far, by query id.
    archive_pages: HashMap<String, Vec<Value>>,
    events: VecDeque<Event>,
    next_event: u64,
    /// IQs waiting for the server's answer, by id.
    pending: HashMap<String, oneshot::Sender<Element>>,
    /// Joins waiting for the room's answer, by room: its status codes, or the error's
    /// condition.
    joins: HashMap<String, oneshot::Sender<Result<Vec<u16>, String>>>,
}

/// A running API session.
pub(crate) struct ApiSession {
    pub(crate) token_id: String,
    pub(crate) user: BareJid,
    to_server: mpsc::Sender<String>,
    state: Mutex<State>,
    /// Woken at each new event.
    pub(crate) news: Notify,
    /// Open event streams.
    pub(crate) listeners: AtomicUsize,
    /// When a call last used the session, in ms since the session began.
    used_at: AtomicU64,
    started: Instant,
    next_iq: AtomicU64,
    ended: tokio_util::sync::CancellationToken,
}

impl ApiSession {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.is_cancelled()
    }

    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.used_at.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let used = Duration::from_millis(self.used_at.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(used)
    }

    /// Sends a stanza the server is to take from this resource (it stamps the `from`).
    pub(crate) async fn send(&self, stanza: &Element) -> Result<(), SessionError> {
        // Text from a request may hold characters XML cannot carry: refused, not written.
        let mut bytes = Vec::new();
        outpost_proto::xml::write_stanza(stanza, &mut bytes)
            .map_err(|_| SessionError::Unwritable)?;
        let text = String::from_utf8(bytes).map_err(|_| SessionError::Unwritable)?;
        self.to_server
            .send(text)
            .await
            .map_err(|_| SessionError::Gone)
    }

    /// Sends an IQ and waits for the server's answer: its result, or the error's
    /// condition. What the session sent before it is durable by then: the server settles
    /// a stream's writes before it writes to it again.
    pub(crate) async fn iq(&self, iq: Element) -> Result<Element, SessionError> {
        let answer = self.iq_answer(iq).await?;
        match answer.attr("type") {
            Some("result") => Ok(answer),
            _ => Err(SessionError::Refused(stanzas::error_condition(&answer))),
        }
    }

    /// Sends an IQ and waits for the server's answer, a result or an error.
    pub(crate) async fn iq_answer(&self, mut iq: Element) -> Result<Element, SessionError> {
        let id = self.next_id("api");
        set_attr(&mut iq, "id", id.as_str());
        let (tx, rx) = oneshot::channel();
        self.lock().pending.insert(id.clone(), tx);
        let sent = self.send(&iq).await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(IQ_TIMEOUT, rx).await,
            Err(e) => {
                self.lock().pending.remove(&id);
                return Err(e);
            }
        };
        self.lock().pending.remove(&id);
        answer
            .map_err(|_| SessionError::Timeout)?
            .map_err(|_| SessionError::Gone)
    }

    /// A new id for something the session sends.
    fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.next_iq.fetch_add(1, Ordering::Relaxed))
    }

    /// Waits until what the session sent so far is durable (a ping's round trip).
    pub(crate) async fn settle(&self) -> Result<(), SessionError> {
        self.iq(stanzas::ping(self.user.domain().as_str()))
            .await
            .map(drop)
    }

    /// The events after `after` (all kept ones when `None`).
    pub(crate) fn events_after(&self, after: Option<u64>) -> Vec<Event> {
        let state = self.lock();
        (state.events.iter())
            .filter(|e| after.is_none_or(|a| e.id > a))
            .cloned()
            .collect()
    }

    fn push_event(&self, kind: &'static str, data: Value, receipt: Option<(String, String)>) {
        let mut state = self.lock();
        let id = state.next_event;
        state.next_event += 1;
        if state.events.len() == EVENT_LOG {
            state.events.pop_front();
        }
        state.events.push_back(Event {
            id,
            kind,
            data,
            receipt,
        });
        drop(state);
        self.news.notify_waiters();
    }

    /// Ends the session: its stream closes and the server takes the resource offline.
    pub(crate) fn end(&self) {
        self.ended.cancel();
        self.news.notify_waiters();
    }
}

/// The running sessions, by token id.
#[derive(Clone)]
pub(crate) struct Sessions {
    server: ServerView,
    running: Arc<Mutex<HashMap<String, Arc<ApiSession>>>>,
    /// A lock per token whose session is starting, so one token never gets two while
    /// different tokens start at once.
    starting: Arc<StartLocks>,
}

impl Sessions {
    pub(crate) fn new(server: ServerView) -> Sessions {
        Sessions {
            server,
            running: Arc::default(),
            starting: Arc::default(),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ApiSession>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self, token_id: &str) -> Option<Arc<ApiSession>> {
        let found = self.map().get(token_id).cloned();
        found.filter(|s| !s.is_ended())
    }

    /// The token's session, started if it is not running.
    pub(crate) async fn get(
        &self,
        token: &ApiToken,
        peer: SocketAddr,
    ) -> Result<Arc<ApiSession>, SessionError> {
        if let Some(s) = self.live(&token.id) {
            s.touch();
            return Ok(s);
        }
        let gate = StartGate::enter(&self.starting, &token.id);
        let _one = gate.lock.lock().await;
        if let Some(s) = self.live(&token.id) {
            s.touch();
            return Ok(s);
        }
        self.start(token, peer).await
    }

    async fn start(
        &self,
        token: &ApiToken,
        peer: SocketAddr,
    ) -> Result<Arc<ApiSession>, SessionError> {
        let user = BareJid::new(&token.owner).map_err(|_| SessionError::Gone)?;
        let socket = self.server.api_session(user.clone(), peer).await;
        let socket = socket.ok_or(SessionError::Refused("resource-constraint".into()))?;
        let session = open(token, user, socket).await?;
        self.map().insert(token.id.clone(), session.clone());
        Ok(session)
    }

    /// Ends the session of a token, if one runs.
    pub(crate) fn end(&self, token_id: &str) {
        if let Some(s) = self.map().remove(token_id) {
            s.end();
        }
    }

    /// Ends every session of an account.
    pub(crate) fn end_all(&self, owner: &str) {
        let mut map = self.map();
        map.retain(|_, s| {
            let theirs = s.user.as_str() == owner;
            if theirs {
                s.end();
            }
            !theirs
        });
    }

    /// Ends every session (the server stops).
    pub(crate) fn end_every(&self) {
        for (_, s) in self.map().drain() {
            s.end();
        }
    }

    /// Ends sessions idle for longer than `idle` with no event stream open, and forgets
    /// ended ones. Run now and then.
    pub(crate) fn reap(&self, idle: Duration) {
        self.map().retain(|_, s| {
            if s.listeners.load(Ordering::Relaxed) == 0 && s.idle_for() > idle {
                debug!(token = %s.token_id, "API session idle: ending it");
                s.end();
            }
            !s.is_ended()
        });
    }
}

type StartLocks = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// A caller's hold on its token's start lock; the last to leave (or to be cancelled)
/// forgets the lock.
struct StartGate<'a> {
    locks: &'a StartLocks,
    token: &'a str,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> StartGate<'a> {
    fn enter(locks: &'a StartLocks, token: &'a str) -> StartGate<'a> {
        let mut map = locks.lock().unwrap_or_else(|p| p.into_inner());
        let lock = map.entry(token.to_owned()).or_default().clone();
        StartGate { locks, token, lock }
    }
}

impl Drop for StartGate<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Held by the map and by this gate only: no other caller waits on it.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(self.token);
        }
    }
}

/// Opens the stream, binds, loads the roster, enables carbons and goes available.
async fn open(
    token: &ApiToken,
    user: BareJid,
    socket: ClientWebSocket,
) -> Result<Arc<ApiSession>, SessionError> {
    let ClientWebSocket {
        to_server,
        mut from_server,
    } = socket;
    let resource = format!("api-{}", token.id);
    let domain = user.domain().to_string();
    let bound = tokio::time::timeout(
        OPEN_TIMEOUT,
        stanzas::open_and_bind(&to_server, &mut from_server, &domain, &resource),
    )
    .await;
    match bound {
        Ok(Ok(())) => {}
        Ok(Err(condition)) => return Err(SessionError::Refused(condition)),
        Err(_) => return Err(SessionError::Timeout),
    }
    let started = Instant::now();
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let session = Arc::new(ApiSession {
        token_id: token.id.clone(),
        user,
        to_server,
        state: Mutex::new(State {
            next_event: u64::try_from(since_epoch.as_micros()).unwrap_or(1),
            ..State::default()
        }),
        news: Notify::new(),
        listeners: AtomicUsize::new(0),
        used_at: AtomicU64::new(0),
        started,
        next_iq: AtomicU64::new(1),
        ended: tokio_util::sync::CancellationToken::new(),
    });
    tokio::spawn(pump(session.clone(), from_server));
    let roster = session.iq(stanzas::roster_get()).await?;
    {
        let mut state = session.lock();
        for (jid, contact) in stanzas::roster_items(&roster) {
            state.roster.insert(jid, contact);
        }
    }
    // Carbons are best-effort: a server without them still serves the session.
    let _ = session.iq(stanzas::enable_carbons()).await;
    session.send(&stanzas::presence(None, None)).await?;
    session.rejoin_bookmarked().await?;
    Ok(session)
}

/// Reads what the server sends the session until the stream or the session ends; then
/// closes the stream.
async fn pump(session: Arc<ApiSession>, mut from_server: mpsc::Receiver<String>) {
    loop {
        let frame = tokio::select! {
            frame = from_server.recv() => frame,
            () = session.ended.cancelled() => break,
        };
        let Some(frame) = frame else { break };
        let Ok(el) = frame.parse::<Element>() else {
            continue;
        };
        if stanzas::is_stream_end(&el) {
            break;
        }
        on_stanza(&session, el).await;
    }
    session.end();
    let close = outpost_proto::framing::close_element();
    let _ = session.to_server.send(close).await;
}

async fn on_stanza(session: &ApiSession, el: Element) {
    match stanzas::classify(&el) {
        Incoming::IqAnswer(id) => {
            let waiter = session.lock().pending.remove(&id);
            if let Some(w) = waiter {
                let _ = w.send(el);
            }
        }
        Incoming::IqRequest => {
            let answer = stanzas::answer_iq(&el);
            if let Some(push) = stanzas::roster_push(&el, session.user.as_str()) {
                on_roster_push(session, push);
            }
            let _ = session.send(&answer).await;
        }
        Incoming::Message(m) => session.push_event("message", m.data, m.receipt),
        Incoming::Receipt(data) => session.push_event("receipt", data, None),
        Incoming::Presence { from, presence } => on_presence(session, &from, presence),
        Incoming::Subscription { from, kind } => {
            {
                let mut state = session.lock();
                if kind == "subscribe" {
                    state.requests.insert(from.clone());
                } else if kind == "unsubscribe" {
                    state.requests.remove(&from);
                }
            }
            session.push_event("subscription", json!({"from": from, "type": kind}), None);
        }
        Incoming::PresenceError { from, condition } => session.on_presence_error(&from, condition),
        Incoming::Occupant(occupant) => session.on_occupant(occupant).await,
        Incoming::GroupChat {
            room,
            data,
            subject,
        } => session.on_groupchat(&room, data, subject),
        Incoming::ArchiveItem { query_id, entry } => {
            let mut state = session.lock();
            if let (Some(page), Some(entry)) = (state.archive_pages.get_mut(&query_id), entry) {
                page.push(entry);
            }
        }
        Incoming::Other => {}
    }
}

fn on_roster_push(session: &ApiSession, (jid, contact): (String, Option<Contact>)) {
    let data = {
        let mut state = session.lock();
        let data = match &contact {
            Some(c) => {
                if c.subscription == "from" || c.subscription == "both" {
                    state.requests.remove(&jid);
                }
                json!({"from": session.user.as_str(), "jid": jid, "name": c.name,
                       "subscription": c.subscription,
                       "ask": c.ask.then_some("subscribe")})
            }
            None => {
                state.presence.remove(&jid);
                json!({"from": session.user.as_str(), "jid": jid, "name": null,
                       "subscription": "remove", "ask": null})
            }
        };
        match contact {
            Some(c) => state.roster.insert(jid, c),
            None => state.roster.remove(&jid),
        };
        data
    };
    session.push_event("roster", data, None);
}

fn on_presence(session: &ApiSession, from: &str, presence: Option<Presence>) {
    let (bare, resource) = from.split_once('/').unwrap_or((from, ""));
    let data = {
        let mut state = session.lock();
        let resources = state.presence.entry(bare.to_owned()).or_default();
        match &presence {
            Some(p) => {
                resources.insert(resource.to_owned(), p.clone());
            }
            None => {
                resources.remove(resource);
            }
        }
        if resources.is_empty() {
            state.presence.remove(bare);
        }
        let (show, status) = match presence {
            Some(p) => (p.show, p.status),
            None => ("unavailable".to_owned(), None),
        };
        json!({"from": from, "presence": show, "status": status})
    };
    session.push_event("presence", data, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_lock_is_forgotten_when_its_last_caller_leaves() {
        let locks = StartLocks::default();
        let first = StartGate::enter(&locks, "t1");
        let second = StartGate::enter(&locks, "t1");
        let other = StartGate::enter(&locks, "t2");
        assert!(Arc::ptr_eq(&first.lock, &second.lock));
        assert!(!Arc::ptr_eq(&first.lock, &other.lock));
        drop(first);
        assert!(locks.lock().unwrap().contains_key("t1"));
        drop(second);
        assert!(!locks.lock().unwrap().contains_key("t1"));
        drop(other);
        assert!(locks.lock().unwrap().is_empty());
    }
}
