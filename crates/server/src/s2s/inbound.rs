//! A peer server's stream to us: the task that drives `S2sIncoming`, verifies the peer's
//! dialback keys, answers verifications of ours, and delivers what the peer sends.
//!
//! Durability (see `outpost_proto::s2s`, "Contract for durability"): every event polled
//! from the machine is handled, and what it wrote to the store (archive, offline queue,
//! a hub's outbox) is committed, before the output that follows it is written, so an
//! `<a h/>` never acknowledges a stanza that a crash could still lose.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jid::Jid;
use minidom::Element;
use outpost_proto::StreamMachine;
use outpost_proto::s2s::{DialbackVerdict, Event, S2sIncoming, Transport, dialback_key};
use outpost_proto::stanza::{Condition, ns};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use super::Federation;
use super::conn::Conn;
use crate::delivery::{Accepted, Delivery};
use crate::router::{ToSession, Undelivered};
use outpost_store::BatchWrite;

/// A peer has this long to authenticate at least one domain pair.
const AUTH_TIMEOUT: Duration = Duration::from_secs(60);
const READ_CHUNK: usize = 16 * 1024;

/// A peer's connection to the STARTTLS listener.
pub(crate) async fn serve(fed: Arc<Federation>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    serve_conn(fed, Conn::Plain(tcp), peer, Transport::StartTls).await;
}

/// A peer's connection to the direct TLS listener (XEP-0368): TLS first, then the stream.
pub(crate) async fn serve_tls(fed: Arc<Federation>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn::Plain(tcp);
    if !conn.accept_tls(&fed.listening().tls_direct).await {
        debug!(%peer, "direct TLS handshake failed");
        return;
    }
    serve_conn(fed, conn, peer, Transport::DirectTls).await;
}

/// One incoming stream and what it is waiting for.
struct Inbound {
    fed: Arc<Federation>,
    d: Arc<Delivery>,
    proto: S2sIncoming,
    /// Dialback verifications asked of the claimed domains' servers, with their verdicts.
    verifications: JoinSet<(String, String, DialbackVerdict)>,
    /// XEP-0359 ids: what the store knew, what was delivered, what is to be recorded.
    seen: SeenIds,
    /// The writes of what this read delivered, settled before the acknowledgement.
    accepted: Accepted,
}

/// Runs an incoming stream on `conn`, whatever carries it; `transport` says whether TLS is
/// still to be negotiated (STARTTLS) or already in place.
pub(crate) async fn serve_conn(
    fed: Arc<Federation>,
    mut conn: Conn,
    peer: SocketAddr,
    transport: Transport,
) {
    let span = tracing::info_span!("s2s_in", %peer);
    async move {
        let Some(d) = fed.env.delivery() else {
            return;
        };
        // Unpredictable, because dialback keys are bound to it (RFC 6120 §4.7.3).
        let listening = fed.listening();
        let proto = S2sIncoming::new(
            fed.incoming_config(transport),
            listening.domains.clone(),
            crate::ids::random_id(20),
        );
        let mut s = Inbound {
            fed,
            d,
            proto,
            verifications: JoinSet::new(),
            seen: SeenIds::default(),
            accepted: Accepted::default(),
        };
        s.run(&mut conn).await;
        s.verifications.abort_all();
        conn.shutdown().await;
    }
    .instrument(span)
    .await
}

impl Inbound {
    async fn run(&mut self, conn: &mut Conn) {
        let started = Instant::now();
        let mut last_read = started;
        let idle = self.fed.idle_timeout;
        let shutdown = self.fed.env.shutdown.clone();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            if !self.handle_events(conn).await {
                return;
            }
            if self.proto.has_output() {
                let out = self.proto.take_output();
                if conn.write_all(&out).await.is_err() {
                    return;
                }
            }
            let deadline = if self.proto.authenticated().is_empty() {
                (started + AUTH_TIMEOUT).min(last_read + idle)
            } else {
                last_read + idle
            };
            tokio::select! {
                () = shutdown.cancelled() => self.proto.close(Some("system-shutdown"), None),
                read = conn.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        last_read = Instant::now();
                        self.proto.handle_input(&buf[..n]);
                    }
                },
                Some(Ok((from, to, verdict))) = self.verifications.join_next() => {
                    if verdict != DialbackVerdict::Valid {
                        info!(%from, ?verdict, "dialback verification failed");
                    }
                    self.proto.dialback_result(&from, &to, verdict);
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.proto.close(Some("connection-timeout"), None);
                }
            }
        }
    }

    /// Handles every event the machine has, a read's worth at a time, recording the ids of
    /// what was delivered before the acknowledgement that may follow them goes out.
    /// `false` when the stream is over.
    async fn handle_events(&mut self, conn: &mut Conn) -> bool {
        loop {
            let events: Vec<Event> = std::iter::from_fn(|| self.proto.poll_event()).collect();
            if events.is_empty() {
                break;
            }
            self.seen.look_up(&self.d, &events).await;
            for event in events {
                if !Box::pin(self.on_event(event, conn)).await {
                    return false;
                }
            }
        }
        self.settle().await;
        true
    }

    /// Waits for what this read wrote (its messages and their ids), bounces what could
    /// not be stored, and forgets the read's ids.
    async fn settle(&mut self) {
        for u in std::mem::take(&mut self.accepted).settle().await {
            self.d.bounce(&u.stanza, u.error);
        }
        self.seen.clear();
    }

    async fn on_event(&mut self, event: Event, conn: &mut Conn) -> bool {
        match event {
            Event::StartTls => {
                let out = self.proto.take_output();
                if conn.write_all(&out).await.is_err()
                    || !conn.accept_tls(&self.fed.listening().tls_starttls).await
                {
                    debug!("TLS handshake failed");
                    return false;
                }
                self.proto.tls_established();
            }
            // XEP-0178: EXTERNAL only for a certificate our policy accepts for the domain
            // the peer claims (see `trust`); otherwise dialback.
            Event::CheckCertificate { domain } => {
                let ok = conn
                    .peer_certificate()
                    .is_some_and(|cert| self.fed.env.trust().accepts(&domain, &cert));
                debug!(%domain, ok, "peer certificate checked");
                self.proto.certificate_checked(ok);
            }
            Event::DialbackRequest {
                from,
                to,
                key,
                stream_id,
            } => self.dialback_request(from, to, key, stream_id),
            Event::VerifyRequest { from, to, id, key } => {
                // XEP-0220 §2.1.3: we are the authoritative server for `to`; the key is
                // ours if we compute the same one (XEP-0185 §2).
                let expected = dialback_key(&self.fed.env.secret, &from, &to, &id);
                let valid = constant_time_eq(expected.as_bytes(), key.as_bytes());
                self.proto.verify_result(&from, &to, &id, valid);
            }
            Event::Authenticated { peer, local, .. } => {
                info!(%peer, %local, "peer authenticated");
                // The peer reached us, so our way to it may work again too.
                self.fed.wake_existing(&local, &peer);
            }
            Event::Stanza(el) => self.on_stanza(el).await,
            Event::PeerStreamError { condition, .. } => {
                debug!(condition, "peer sent a stream error");
            }
            Event::Closed { error } => {
                if let Some(condition) = error {
                    info!(condition, "stream closed with error");
                }
                self.settle().await;
                let out = self.proto.take_output();
                let _ = conn.write_all(&out).await;
                return false;
            }
            _ => {}
        }
        true
    }

    /// XEP-0220 §2.1.2: the peer claims `from`; ask the authoritative server for it, over
    /// our own link to it. Nobody else speaks for our own domains.
    fn dialback_request(&mut self, from: String, to: String, key: String, stream_id: String) {
        if self.d.is_home(&from) {
            self.proto
                .dialback_result(&from, &to, DialbackVerdict::Invalid);
            return;
        }
        let fed = self.fed.clone();
        self.verifications.spawn(async move {
            let verdict = fed.verify(&to, &from, &stream_id, &key).await;
            (from, to, verdict)
        });
    }

    /// A stanza from an authenticated peer: for us, or (on a hub) for another relayed
    /// domain, which `S2sIncoming` let through.
    async fn on_stanza(&mut self, el: Element) {
        self.d.counters().stanza(el.name());
        let relay_to = el
            .attr("to")
            .and_then(|t| Jid::new(t).ok())
            .map(|t| t.domain().as_str().to_owned())
            .filter(|d| !self.d.is_ours(d));
        let Some(to_domain) = relay_to else {
            if crate::replication::is_from_hub(&el) {
                // What our hub wrote and stored for our users while it stood in for us.
                let hub = self.fed.hub();
                match crate::replication::from_hub(&self.d, &el, hub).await {
                    Ok(reply) => self.d.send(reply),
                    Err(error) => self.d.bounce(&el, error),
                }
                return;
            }
            if crate::replication::is_sync(&el) {
                // A site's directory, for this hub's replica.
                let sites = self.fed.replica_sites();
                match crate::replication::answer(&self.d, &el, sites).await {
                    Ok(reply) => self.d.send(reply),
                    Err(error) => self.d.bounce(&el, error),
                }
                return;
            }
            let accepted = deliver(&self.d, el, &mut self.seen).await;
            self.accepted.join(accepted);
            return;
        };
        let from_domain = el
            .attr("from")
            .and_then(|f| Jid::new(f).ok())
            .map(|f| f.domain().as_str().to_owned());
        let local = self
            .proto
            .authenticated()
            .iter()
            .find(|(p, _)| Some(p) == from_domain.as_ref())
            .map(|(_, l)| l.clone());
        if let Some(local) = local {
            let accepted = self.fed.relay(&self.d, el, &local, &to_domain).await;
            self.accepted.join(accepted);
        }
    }
}

/// Delivers a stanza from a peer that is not a server (an external component, XEP-0114)
/// as a server's would be, without deduplication across reads.
pub(crate) async fn deliver_one(d: &Delivery, el: Element) -> Accepted {
    deliver(d, el, &mut SeenIds::default()).await
}

/// The XEP-0359 origin-ids of one batch of incoming events (one read's worth).
#[derive(Default)]
struct SeenIds {
    /// Ids of messages in the batch that the store had already recorded: duplicates.
    known: HashSet<(String, String)>,
    /// Ids delivered in this batch, so that a repeat within it is dropped too.
    delivered: HashSet<(String, String)>,
}

impl SeenIds {
    /// Asks the store, in one query, which of the batch's messages it has seen.
    async fn look_up(&mut self, d: &Delivery, events: &[Event]) {
        let pairs: Vec<(String, String)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Stanza(el) if el.name() == "message" => {
                    let scope = el.attr("from").and_then(|f| Jid::new(f).ok())?.to_bare();
                    Some((scope.to_string(), origin_id(el)?.to_owned()))
                }
                _ => None,
            })
            .collect();
        if pairs.is_empty() {
            return;
        }
        match d.store().stanza_ids_seen(&pairs).await {
            Ok(found) => self.known.extend(
                pairs
                    .into_iter()
                    .zip(found)
                    .filter_map(|(pair, seen)| seen.then_some(pair)),
            ),
            Err(e) => warn!(error = %e, "cannot check stanza ids"),
        }
    }

    fn clear(&mut self) {
        self.delivered.clear();
        self.known.clear();
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The XEP-0359 origin-id of a message, if it has one.
fn origin_id(el: &Element) -> Option<&str> {
    el.get_child("origin-id", ns::SID)
        .and_then(|o| o.attr("id"))
}

/// Delivers a stanza from an authenticated peer (its `from` and `to` domains were checked
/// by `S2sIncoming`) to local users, as if a local session had sent it. The writes it
/// leaves (a message's archive row, offline copy and origin-id record) are settled by the
/// caller before it acknowledges the stanza.
async fn deliver(d: &Delivery, el: Element, seen: &mut SeenIds) -> Accepted {
    let (Some(from), Some(to)) = (
        el.attr("from").and_then(|f| Jid::new(f).ok()),
        el.attr("to").and_then(|t| Jid::new(t).ok()),
    ) else {
        return Accepted::default();
    };
    match el.name() {
        "message" => return deliver_message(d, el, from, to, seen).await,
        "presence" => Box::pin(crate::presence::inbound(d, el, from, to)).await,
        _ => Box::pin(inbound_iq(d, el, to)).await,
    }
    Accepted::default()
}

/// XEP-0359 §3: the sender's server keeps the origin-id on every retry. Check, deliver,
/// then record: a crash in between means a duplicate, never a loss.
async fn deliver_message(
    d: &Delivery,
    el: Element,
    from: Jid,
    to: Jid,
    seen: &mut SeenIds,
) -> Accepted {
    let scope = from.to_bare().to_string();
    let id = origin_id(&el).map(str::to_owned);
    if let Some(id) = &id {
        let pair = (scope.clone(), id.clone());
        if seen.known.contains(&pair) || !seen.delivered.insert(pair) {
            debug!("duplicate message dropped");
            return Accepted::default();
        }
    }
    let mut accepted = match d.message(el, to).await {
        Ok(accepted) => accepted,
        Err(u) => {
            d.bounce(&u.stanza, u.error);
            Accepted::default()
        }
    };
    // Recorded through the journal right after the message's own writes, so in the same
    // commit or the next: a crash in between repeats the message, never loses it.
    if let Some(id) = id {
        let seen = BatchWrite::Seen { origin: scope, id };
        accepted.join(Accepted::logged(d.journal().submit(seen).await));
    }
    accepted
}

/// An IQ from another server: results and errors go to the full JID they answer; requests
/// to a bound resource are forwarded; those for our domains and our users' bare JIDs are
/// answered as for a local client (`services::answer`).
async fn inbound_iq(d: &Delivery, el: Element, to: Jid) {
    if d.is_service(to.domain().as_str()) {
        // A room, an occupant, the proxy: the service answers, as for local users.
        d.send(el);
        return;
    }
    let ty = el.attr("type").unwrap_or("");
    if matches!(ty, "result" | "error") && to.node().is_none() {
        // An answer to the server's own question (replication, entity capabilities).
        if !d.request_answered(&el) {
            crate::pep::answer(d, &el).await;
        }
        return;
    }
    if matches!(ty, "result" | "error") && to.is_bare() {
        // To an account: an app server's answer to a notification.
        d.push_answer(&el).await;
        return;
    }
    if let Ok(full) = to.try_as_full() {
        match d.router().send_to_full(full, ToSession::Stanza(el)) {
            Ok(()) => {}
            Err(Undelivered::NotBound(ToSession::Stanza(el)))
            | Err(Undelivered::Full(ToSession::Stanza(el))) => {
                d.bounce(&el, Condition::ServiceUnavailable.into());
            }
            Err(_) => {}
        }
        return;
    }
    if !matches!(ty, "get" | "set") {
        return;
    }
    match crate::services::answer(d, &el, &to, false).await {
        Ok(reply) => d.send(reply),
        Err(error) => d.bounce(&el, error),
    }
}
