//! Stream management for a session (XEP-0198): enabling it, handing a resuming connection
//! to the session it resumes, the wait for that connection after the old one died
//! (hibernation), and what becomes of the stanzas the client never acknowledged.
//!
//! A resumption moves the new connection to the old session, not the other way round: the
//! old session keeps its router entry, presence, roster cache and queue, takes the new
//! socket and stream, and writes the unacknowledged stanzas again after `<resumed/>`. The
//! connection that asked ends its own task without a trace.
//!
//! On a cluster node, a stream that another node holds is asked for there, and the session
//! moves here (see `migrate`).
//!
//! A session that ends without being resumed hands its unacknowledged stanzas on as if they
//! had never been delivered: messages worth keeping go to the offline store with the time
//! they were first queued, requests are answered with an error, the rest (presence, carbon
//! copies, archive results) is dropped, since it was either transient or is in the archive.

use std::time::Duration;

use minidom::Element;
use outpost_proto::StreamMachine;
use outpost_proto::c2s::{C2sConfig, C2sStream, Transport};
use outpost_proto::sm::Unacked;
use outpost_proto::stanza::{Condition, ns};
use tokio::time::Instant;
use tracing::{debug, info};

use super::{End, Session};
use crate::c2s_conn::{Conn, Resumption};
use crate::router::{SessionRx, ToSession, deliver_local};

impl Session {
    /// The client enables stream management: with resumption when it asks and the server
    /// allows it, for the shorter of the two windows.
    pub(super) fn enable_sm(&mut self, resume: bool, max: Option<u32>) {
        let config = self.env.config();
        let window = config.stream_management.resume_timeout_secs;
        let (Some(user), true) = (self.user.clone(), resume && window > 0) else {
            self.proto.sm_enabled(None);
            return;
        };
        let id = crate::ids::random_id(24);
        let max = max.map_or(window, |m| m.clamp(1, window));
        let resumable = self.delivery().router().resumable();
        resumable.register(&id, &user, self.tx.clone());
        self.proto.sm_enabled(Some((id, max)));
    }

    /// A new connection asks to resume `previd`: it goes to the session that owns that
    /// stream, here or (in a cluster) at another node, or is told it cannot (with the old
    /// stream's count when it ended recently).
    pub(super) async fn hand_off(
        &mut self,
        previd: String,
        h: u32,
        conn: &mut Conn,
    ) -> Option<End> {
        let user = self.user.clone()?;
        let resumable = self.delivery().router().resumable();
        let Some(tx) = resumable.find(&previd, &user) else {
            let ended_h = resumable.ended_h(&previd, &user);
            if let (None, Some(cluster)) = (ended_h, self.env.cluster.clone()) {
                return self
                    .resume_from_elsewhere(&cluster, &user, &previd, h)
                    .await;
            }
            debug!(
                ended = ended_h.is_some(),
                "resumption refused: no such stream"
            );
            self.proto.sm_resume_failed(ended_h);
            return None;
        };
        // Whatever this stream wrote goes out before the socket changes hands.
        if let Some(end) = self.flush(conn).await {
            return Some(end);
        }
        let resumption = Box::new(Resumption {
            conn: std::mem::replace(conn, Conn::Detached),
            proto: Box::new(std::mem::replace(&mut self.proto, placeholder())),
            h,
            peer: self.peer,
        });
        match deliver_local(&tx, ToSession::Resume(resumption)) {
            Ok(()) => Some(End::HandedOff),
            Err(ToSession::Resume(back)) => {
                *conn = back.conn;
                self.proto = *back.proto;
                self.proto.sm_resume_failed(None);
                None
            }
            Err(_) => None,
        }
    }

    /// Takes over a resuming connection: its stream continues this session's, and what the
    /// client had not acknowledged is written again. Returns the new socket.
    pub(super) fn adopt(&mut self, r: Resumption) -> Conn {
        let mut proto = r.proto;
        proto.set_time(crate::clock::now_ms());
        match (self.proto.take_sm(), self.jid.clone()) {
            (Some(state), Some(jid)) => {
                let unacked = state.unacked_len();
                proto.sm_resumed(jid, state, r.h);
                info!(peer = %r.peer, unacked, "session resumed");
            }
            // Only sessions with a managed stream are registered; this cannot happen.
            _ => proto.sm_resume_failed(None),
        }
        self.proto = *proto;
        self.peer = r.peer;
        self.detached = false;
        r.conn
    }

    /// Whether a session whose connection died should wait to be resumed.
    pub(super) fn resumable(&self) -> bool {
        !self.proto.is_closed()
            && !self.env.shutdown.is_cancelled()
            && self.proto.sm().is_some_and(|sm| sm.id().is_some())
    }

    /// Waits for a connection that resumes this session, until the resumption window
    /// ends: `End::Resume` or (from another node) `End::Migrate`, `None` when nobody came.
    /// Stanzas for the session keep arriving meanwhile and wait, unacknowledged, in its
    /// queue; presence stays as it was.
    pub(super) async fn hibernate(&mut self, rx: &mut SessionRx) -> Option<End> {
        let mut window = self.proto.sm().map_or(0, |sm| sm.max_resume_secs());
        let pushes = self.delivery().pushes();
        let user = self.user.clone();
        let pushed = user.as_ref().is_some_and(|u| pushes.has(u.as_str()));
        if pushed {
            // A phone asleep with push: it is woken when something comes, and resumes
            // (XEP-0357 §2; Prosody and ejabberd keep such sessions for days too).
            window = window.max(pushes.config().hibernate_secs);
        }
        let deadline = Instant::now() + Duration::from_secs(window.into());
        let max_unacked = self.env.config().stream_management.max_unacked;
        let shutdown = self.env.shutdown.clone();
        self.detached = true;
        info!(
            window_secs = window,
            "connection lost; session kept for resumption"
        );
        loop {
            let full = self
                .proto
                .sm()
                .is_none_or(|sm| sm.unacked_len() >= max_unacked);
            if self.proto.is_closed() || full {
                return None;
            }
            let msg = tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep_until(deadline) => {
                    info!("resumption window over");
                    return None;
                }
                msg = rx.recv() => msg?,
            };
            match *msg {
                ToSession::Resume(r) => return Some(End::Resume(r)),
                ToSession::Migrate(m) => return Some(End::Migrate(m)),
                other => {
                    self.proto.set_time(crate::clock::now_ms());
                    if let (ToSession::Stanza(el), Some(user)) = (&other, &user)
                        && pushed
                        && crate::archive::worth_keeping(el, false)
                    {
                        self.delivery().wake(user, el);
                    }
                    Box::pin(self.on_message_from_router(other)).await;
                    self.settle().await;
                    // Written again from the queue if the client comes back.
                    self.proto.discard_output();
                }
            }
        }
    }

    /// The stream is over for good: what the client never acknowledged is handed on.
    pub(super) async fn hand_on_unacked(&mut self) {
        let Some(mut sm) = self.proto.take_sm() else {
            return;
        };
        if let (Some(id), Some(user)) = (sm.id(), self.user.as_ref()) {
            let resumable = self.delivery().router().resumable();
            resumable.ended(id, user, sm.inbound());
        }
        self.hand_on_all(sm.take_unacked()).await;
    }

    /// Stanzas the client never acknowledged, as if they had never been delivered.
    pub(super) async fn hand_on_all(&mut self, unacked: Vec<Unacked>) {
        if !unacked.is_empty() {
            debug!(count = unacked.len(), "handing on unacknowledged stanzas");
        }
        for u in unacked {
            if let Ok(el) = u.xml.parse::<Element>() {
                Box::pin(self.hand_on(el, &u)).await;
            }
        }
        self.settle().await;
    }

    /// One unacknowledged stanza, as if it had never been delivered.
    async fn hand_on(&mut self, mut el: Element, u: &Unacked) {
        match (el.name(), el.attr("type").unwrap_or("normal")) {
            ("message", "chat" | "normal") if !copy_or_result(&el) => {
                let Some(user) = self.user.clone() else {
                    return;
                };
                // XEP-0198 §5: the delay says when the server first had it.
                let domain = user.domain().as_str().to_owned();
                el.append_child(crate::delivery::delay_at(
                    &domain,
                    u.queued_ms,
                    "Offline storage",
                ));
                let env = self.env.clone();
                let result = env.delivery.store_offline(el, &user).await;
                self.undeliverable(result);
            }
            ("iq", "get" | "set") => {
                self.error_to_sender(&el, Condition::ServiceUnavailable.into());
            }
            _ => {}
        }
    }
}

/// Carbon copies (XEP-0280) and archive results (XEP-0313): the first reached the
/// recipient's own resource first, the second are in the archive.
fn copy_or_result(el: &Element) -> bool {
    el.has_child("sent", ns::CARBONS)
        || el.has_child("received", ns::CARBONS)
        || el.has_child("result", ns::MAM)
}

/// What stands in a session for the stream it handed to another session.
fn placeholder() -> C2sStream {
    C2sStream::new(
        C2sConfig {
            domains: Vec::new(),
            transport: Transport::DirectTls,
            allow_plaintext_auth: false,
            registration: false,
            limits: outpost_proto::xml::Limits {
                max_stanza_bytes: 0,
                max_depth: 0,
            },
            max_auth_attempts: 0,
            stream_management: false,
        },
        String::new(),
    )
}
