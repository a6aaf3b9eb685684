//! Resuming here a managed stream another node holds (XEP-0198 §5; see `handover`).
//!
//! The node the client reached asks every node at once (`Resume` on the directory
//! subject) for the stream; the one that holds it tells its session to leave
//! ([`ToSession::Migrate`]), sends what the session hands over (`Resumed`), and waits for
//! the word that it was taken (`ResumeTaken`) before the session ends silently there.
//! The others answer that they do not have it, with the count the stream reached if it
//! ended there. Every wait is bounded, and the one that holds the session waits longest:
//! a handover that arrives when the asking node has given up is refused, and the session
//! ends where it was as it would have without the attempt.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use jid::BareJid;
use outpost_proto::xml::read_stanza;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::Cluster;
use super::wire::Body;

use crate::handover::{Handover, Migration};
use crate::router::{ToSession, deliver_local};

/// How long the node a client resumes at waits for the others' answers (a node holding
/// the stream answers in milliseconds; one that died a moment ago never does, and the
/// client waits this long for its `<failed/>`).
const RESUME_WAIT: Duration = Duration::from_secs(2);
/// The nodes it asks are those heard within this (two heartbeats).
const ANSWERING: Duration = Duration::from_secs(2 * super::HEARTBEAT.as_secs());
/// How long the node that holds the stream waits for its session to hand itself over.
const HANDOVER_WAIT: Duration = Duration::from_millis(1500);
/// How long it then waits for the word that the other node took it.
const TAKEN_WAIT: Duration = Duration::from_secs(2 * RESUME_WAIT.as_secs());

/// Resumptions in flight, on either side.
#[derive(Default)]
pub(super) struct Resumes {
    /// Those this node asked for, by request.
    asked: Mutex<HashMap<String, Asked>>,
    /// Sessions this node handed over, waiting for the taker's word, by request.
    handed: Mutex<HashMap<String, oneshot::Sender<bool>>>,
}

struct Asked {
    /// Whose stream it is: a handover of anyone else's is refused.
    user: BareJid,
    /// The nodes whose answers are still due (an answer from any other counts only if
    /// it hands the stream over).
    left: HashSet<String>,
    /// The count of the stream where it ended, if a node said so.
    ended_h: Option<u32>,
    tx: oneshot::Sender<Result<Arrived, Option<u32>>>,
}

/// A session that moves here, and the node it comes from.
pub(crate) struct Arrived {
    pub(crate) node: String,
    pub(crate) handover: Box<Handover>,
}

impl Cluster {
    /// Asks the other nodes for `user`'s stream `previd`: its session, or (`Err`) the count
    /// it reached if it ended somewhere, `None` if nobody has it.
    pub(crate) async fn resume(
        &self,
        user: &BareJid,
        previd: &str,
    ) -> Result<Arrived, Option<u32>> {
        // The nodes heard lately: one silent for longer (dying, or cut off) is not waited
        // for; should it hold the stream and answer late, the answer is refused and the
        // session ends there as it would have.
        let expected: HashSet<String> = {
            let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            let lately = |p: &super::PeerState| p.sync.is_none() && p.heard.elapsed() < ANSWERING;
            (peers.iter())
                .filter(|(_, p)| lately(p))
                .map(|(id, _)| id.clone())
                .collect()
        };
        if expected.is_empty() {
            return Err(None);
        }
        let request = crate::ids::random_id(16);
        let (tx, rx) = oneshot::channel();
        let asked = Asked {
            user: user.clone(),
            left: expected,
            ended_h: None,
            tx,
        };
        self.resumes.lock_asked().insert(request.clone(), asked);
        let body = Body::Resume {
            user: user.to_string(),
            previd: previd.to_owned(),
            request: request.clone(),
        };
        let outcome = match self.bus.publish(self.bus.dir_subject(), body) {
            true => tokio::time::timeout(RESUME_WAIT, rx).await.ok(),
            false => None,
        };
        self.resumes.lock_asked().remove(&request);
        outcome.and_then(Result::ok).unwrap_or(Err(None))
    }

    /// Another node asks for a stream of one of its users: hand the session over if it
    /// is here, or say it is not.
    pub(super) fn on_resume(&self, node: &str, user: &str, previd: &str, request: String) {
        let Some(user) = BareJid::new(user)
            .ok()
            .filter(|u| self.delivery.is_local(u.domain().as_str()))
        else {
            warn!(%node, user, "dropped a resumption for an account not of our domains");
            return;
        };
        let resumable = self.delivery.router().resumable();
        let (bus, to) = (self.bus.clone(), self.bus.node_subject(node));
        let Some(tx) = resumable.find(previd, &user) else {
            let result = Err(resumable.ended_h(previd, &user));
            bus.publish(to, Body::Resumed { request, result });
            return;
        };
        let resumes = self.resumes.clone();
        self.tasks.spawn(async move {
            let (handover, from_session) = oneshot::channel();
            let (taken_tx, taken) = oneshot::channel();
            let migrate = ToSession::Migrate(Box::new(Migration { handover, taken }));
            let handed = match deliver_local(&tx, migrate) {
                Ok(()) => tokio::time::timeout(HANDOVER_WAIT, from_session).await.ok(),
                Err(_) => None,
            };
            let Some(Ok(handover)) = handed else {
                debug!("the session did not hand itself over");
                bus.publish(
                    to,
                    Body::Resumed {
                        request,
                        result: Err(None),
                    },
                );
                return;
            };
            let (word, heard) = oneshot::channel();
            resumes.lock_handed().insert(request.clone(), word);
            let result = Ok(handover);
            bus.publish(
                to,
                Body::Resumed {
                    request: request.clone(),
                    result,
                },
            );
            let took = matches!(tokio::time::timeout(TAKEN_WAIT, heard).await, Ok(Ok(true)));
            resumes.lock_handed().remove(&request);
            let _ = taken_tx.send(took);
        });
    }

    /// A node answers a resumption this node asked for.
    pub(super) fn on_resumed(
        &self,
        node: &str,
        request: String,
        result: Result<Box<Handover>, Option<u32>>,
    ) {
        let mut asked = self.resumes.lock_asked();
        match result {
            Ok(handover) => {
                let arrived = Arrived {
                    node: node.to_owned(),
                    handover,
                };
                let sound = self.sound(&arrived.handover);
                let taken = match asked.remove(&request) {
                    Some(a) if a.user == arrived.handover.jid.to_bare() && sound => {
                        a.tx.send(Ok(arrived)).is_ok()
                    }
                    Some(a) => {
                        warn!(%node, "refused a handover of another account's session, or with stanzas that do not parse");
                        let _ = a.tx.send(Err(None));
                        false
                    }
                    None => false,
                };
                drop(asked);
                let body = Body::ResumeTaken { request, taken };
                self.bus.publish(self.bus.node_subject(node), body);
            }
            Err(h) => {
                let Some(a) = asked.get_mut(&request) else {
                    return;
                };
                a.left.remove(node);
                a.ended_h = a.ended_h.or(h);
                if a.left.is_empty()
                    && let Some(a) = asked.remove(&request)
                {
                    let _ = a.tx.send(Err(a.ended_h));
                }
            }
        }
    }

    /// Whether what a handover would write to the client, or answer probes with, reads
    /// as stanzas within this node's limits (they are written as they came).
    fn sound(&self, h: &Handover) -> bool {
        let reads = |xml: &str| read_stanza(xml.as_bytes(), self.limits).is_some();
        h.stream.unacked.iter().all(|(xml, _)| reads(xml))
            && h.presence.as_deref().is_none_or(reads)
    }

    /// The node a session was handed to says whether it took it.
    pub(super) fn on_resume_taken(&self, request: &str, taken: bool) {
        if let Some(word) = self.resumes.lock_handed().remove(request) {
            let _ = word.send(taken);
        }
    }
}

impl Resumes {
    fn lock_asked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Asked>> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_handed(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<bool>>> {
        self.handed.lock().unwrap_or_else(|p| p.into_inner())
    }
}
