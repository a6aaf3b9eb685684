//! A peer server's stream to us: the task that drives `S2sIncoming`, verifies the peer's
//! dialback keys, answers verifications of ours, and delivers what the peer sends.
//!
//! Durability (see `outpost_proto::s2s`, "Contract for durability"): every event polled
//! from the machine is handled, delivered to a session's channel or committed to the
//! store, before the output that follows it is written, so an `<a h/>` never acknowledges
//! a stanza that a crash could still lose. Handing a message to an online session's
//! channel counts as delivered, as it does for local messages (ARCHITECTURE.md).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jid::Jid;
use minidom::Element;
use outpost_proto::s2s::{DialbackVerdict, Event, S2sIncoming, Transport, dialback_key};
use outpost_proto::stanza::{self, ns};
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use super::conn::Conn;
use super::now_ms;
use crate::Shared;
use crate::delivery;

/// A peer has this long to authenticate at least one domain pair.
const AUTH_TIMEOUT: Duration = Duration::from_secs(60);
const READ_CHUNK: usize = 16 * 1024;

/// A peer's connection to the STARTTLS listener.
pub(crate) async fn serve(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    serve_conn(shared, Conn::Plain(tcp), peer, Transport::StartTls).await;
}

/// A peer's connection to the direct TLS listener (XEP-0368): TLS first, then the stream.
pub(crate) async fn serve_tls(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn::Plain(tcp);
    if !conn.accept_tls(&shared.tls_s2s_direct).await {
        debug!(%peer, "direct TLS handshake failed");
        return;
    }
    serve_conn(shared, conn, peer, Transport::DirectTls).await;
}

/// Runs an incoming stream on `conn`, whatever carries it; `transport` says whether TLS is
/// still to be negotiated (STARTTLS) or already in place.
pub(crate) async fn serve_conn(
    shared: Arc<Shared>,
    mut conn: Conn,
    peer: SocketAddr,
    transport: Transport,
) {
    let span = tracing::info_span!("s2s_in", %peer);
    async move {
        let Some(fed) = shared.federation.as_ref() else {
            return;
        };
        let config = fed.incoming_config(transport);
        // Unpredictable, because dialback keys are bound to it (RFC 6120 §4.7.3).
        let stream_id: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(20)
            .map(char::from)
            .collect();
        let mut proto = S2sIncoming::new(config, shared.config.domains.clone(), stream_id);
        let (verdict_tx, mut verdicts) = mpsc::channel::<(String, String, DialbackVerdict)>(64);
        let started = Instant::now();
        let mut last_read = started;
        let idle = Duration::from_secs(shared.config.limits.idle_timeout_secs);
        let mut buf = vec![0u8; READ_CHUNK];
        // XEP-0359 ids: what the store knew, what was delivered, what is to be recorded.
        let mut seen = SeenIds::default();
        loop {
            loop {
                let events: Vec<Event> = std::iter::from_fn(|| proto.poll_event()).collect();
                if events.is_empty() {
                    break;
                }
                seen.look_up(&shared, &events).await;
                for event in events {
                    match event {
                        Event::StartTls => {
                            let out = proto.take_output();
                            if conn.write_all(&out).await.is_err()
                                || !conn.accept_tls(&shared.tls_s2s).await
                            {
                                debug!("TLS handshake failed");
                                return;
                            }
                            proto.tls_established();
                        }
                        // XEP-0178: EXTERNAL only for a certificate our policy accepts for the
                        // domain the peer claims (see `trust`); otherwise dialback.
                        Event::CheckCertificate { domain } => {
                            let ok = conn
                                .peer_certificate()
                                .is_some_and(|cert| fed.trust.accepts(&domain, &cert));
                            debug!(%domain, ok, "peer certificate checked");
                            proto.certificate_checked(ok);
                        }
                        Event::DialbackRequest {
                            from,
                            to,
                            key,
                            stream_id,
                        } => {
                            if shared.config.serves_domain(&from) {
                                // Nobody else speaks for our own domains.
                                proto.dialback_result(&from, &to, DialbackVerdict::Invalid);
                                continue;
                            }
                            let shared = shared.clone();
                            let tx = verdict_tx.clone();
                            tokio::spawn(async move {
                                let Some(fed) = shared.federation.as_ref() else {
                                    return;
                                };
                                // XEP-0220 §2.1.2: ask the authoritative server for `from`,
                                // over our own link to it.
                                let verdict =
                                    fed.verify(&shared, &to, &from, &stream_id, &key).await;
                                let _ = tx.send((from, to, verdict)).await;
                            });
                        }
                        Event::VerifyRequest { from, to, id, key } => {
                            // XEP-0220 §2.1.3: we are the authoritative server for `to`; the
                            // key is ours if we compute the same one (XEP-0185 §2).
                            let expected = dialback_key(fed.secret(), &from, &to, &id);
                            let valid = constant_time_eq(expected.as_bytes(), key.as_bytes());
                            proto.verify_result(&from, &to, &id, valid);
                        }
                        Event::Authenticated { peer, local, .. } => {
                            info!(%peer, %local, "peer authenticated");
                            // The peer reached us, so our way to it may work again too.
                            fed.wake_existing(&local, &peer);
                        }
                        Event::Stanza(el) => {
                            let relay_to = el
                                .attr("to")
                                .and_then(|t| Jid::new(t).ok())
                                .map(|t| t.domain().as_str().to_owned())
                                .filter(|d| !shared.config.serves_domain(d));
                            match relay_to {
                                // S2sIncoming let it through: we are the hub between the two.
                                Some(to_domain) => {
                                    let from_domain = el
                                        .attr("from")
                                        .and_then(|f| Jid::new(f).ok())
                                        .map(|f| f.domain().as_str().to_owned());
                                    let local = proto
                                        .authenticated()
                                        .iter()
                                        .find(|(p, _)| Some(p) == from_domain.as_ref())
                                        .map(|(_, l)| l.clone());
                                    if let Some(local) = local {
                                        Box::pin(super::relay(&shared, el, &local, &to_domain))
                                            .await;
                                    }
                                }
                                None => {
                                    Box::pin(deliver_inbound(&shared, el, &mut seen)).await;
                                }
                            }
                        }
                        Event::PeerStreamError { condition, .. } => {
                            debug!(condition, "peer sent a stream error");
                        }
                        Event::Closed { error } => {
                            if let Some(condition) = error {
                                info!(condition, "stream closed with error");
                            }
                            record_seen(&shared, &mut seen).await;
                            let out = proto.take_output();
                            let _ = conn.write_all(&out).await;
                            conn.shutdown().await;
                            return;
                        }
                        _ => {}
                    }
                }
            }
            // The ids of what was just delivered, recorded in one write before the
            // acknowledgement that may follow them goes out.
            record_seen(&shared, &mut seen).await;
            if proto.has_output() {
                let out = proto.take_output();
                if conn.write_all(&out).await.is_err() {
                    return;
                }
            }
            let deadline = if proto.authenticated().is_empty() {
                (started + AUTH_TIMEOUT).min(last_read + idle)
            } else {
                last_read + idle
            };
            tokio::select! {
                () = shared.shutdown.cancelled() => proto.close(Some("system-shutdown"), None),
                read = conn.read(&mut buf) => match read {
                    Ok(0) | Err(_) => {
                        conn.shutdown().await;
                        return;
                    }
                    Ok(n) => {
                        last_read = Instant::now();
                        proto.handle_input(&buf[..n]);
                    }
                },
                Some((from, to, verdict)) = verdicts.recv() => {
                    if verdict != DialbackVerdict::Valid {
                        info!(%from, ?verdict, "dialback verification failed");
                    }
                    proto.dialback_result(&from, &to, verdict);
                }
                () = tokio::time::sleep_until(deadline) => {
                    proto.close(Some("connection-timeout"), None);
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Records the ids of delivered messages (see [`deliver_inbound`]) in one write.
async fn record_seen(shared: &Shared, seen: &mut SeenIds) {
    if !seen.to_record.is_empty()
        && let Err(e) = shared
            .store
            .seen_stanza_ids(&seen.to_record, now_ms())
            .await
    {
        warn!(error = %e, "cannot record stanza ids");
    }
    seen.to_record.clear();
    seen.delivered.clear();
    seen.known.clear();
}

/// The XEP-0359 origin-ids of one batch of incoming events (one read's worth).
#[derive(Default)]
struct SeenIds {
    /// Ids of messages in the batch that the store had already recorded: duplicates.
    known: HashSet<(String, String)>,
    /// Ids delivered in this batch, so that a repeat within it is dropped too.
    delivered: HashSet<(String, String)>,
    /// Ids delivered to online sessions, to record in one write before the acknowledgement.
    to_record: Vec<(String, String)>,
}

impl SeenIds {
    /// Asks the store, in one query, which of the batch's messages it has seen.
    async fn look_up(&mut self, shared: &Shared, events: &[Event]) {
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
        match shared.store.stanza_ids_seen(&pairs).await {
            Ok(found) => self.known.extend(
                pairs
                    .into_iter()
                    .zip(found)
                    .filter_map(|(pair, seen)| seen.then_some(pair)),
            ),
            Err(e) => warn!(error = %e, "cannot check stanza ids"),
        }
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
/// by `S2sIncoming`) to local users, as if a local session had sent it. The origin-id of a
/// delivered message joins `seen`, which the caller records in the store (in one write
/// for all the stanzas of a read) before it acknowledges them.
async fn deliver_inbound(shared: &Arc<Shared>, el: Element, seen: &mut SeenIds) {
    let (Some(from), Some(to)) = (
        el.attr("from").and_then(|f| Jid::new(f).ok()),
        el.attr("to").and_then(|t| Jid::new(t).ok()),
    ) else {
        return;
    };
    match el.name() {
        "message" => {
            // XEP-0359 §3: the sender's server keeps the origin-id on every retry. Check,
            // deliver, then record: a crash in between means a duplicate, never a loss.
            let scope = from.to_bare().to_string();
            let id = origin_id(&el).map(str::to_owned);
            if let Some(id) = &id {
                let pair = (scope.clone(), id.clone());
                if seen.known.contains(&pair) || !seen.delivered.insert(pair) {
                    debug!("duplicate message dropped");
                    return;
                }
            }
            let online = !shared
                .router
                .message_targets(&to.to_bare(), false)
                .is_empty();
            if to.node().is_none() {
                delivery::bounce(shared, &el, "cancel", "service-unavailable");
            } else if let Some(b) = delivery::route_message(shared, el, to).await {
                delivery::bounce(shared, &b.el, b.error_type, b.condition);
            }
            match id {
                // Handed to a session: recorded with the rest of this read, in one write
                // before the acknowledgement. A crash before that write repeats these
                // messages (clients that know XEP-0359 drop the repeat by origin-id).
                Some(id) if online => seen.to_record.push((scope, id)),
                // Stored offline: recorded at once, so a crash repeats at most this one.
                Some(id) => {
                    if let Err(e) = shared.store.seen_stanza_id(&scope, &id, now_ms()).await {
                        warn!(error = %e, "cannot record stanza id");
                    }
                }
                None => {}
            }
        }
        "presence" => Box::pin(delivery::inbound_presence(shared, el, from, to)).await,
        _ => inbound_iq(shared, el, to),
    }
}

/// An IQ from another server: results and errors go to the full JID they answer; requests
/// to a bound resource are forwarded; the server itself answers pings (XEP-0199) and refuses
/// the rest with `service-unavailable` (RFC 6120 §8.3.3.19).
fn inbound_iq(shared: &Arc<Shared>, el: Element, to: Jid) {
    use crate::router::{ToSession, Undelivered};
    let ty = el.attr("type").unwrap_or("");
    if let Ok(full) = to.try_as_full() {
        match shared.router.send_to_full(full, ToSession::Stanza(el)) {
            Ok(()) => {}
            Err(Undelivered::NotBound(ToSession::Stanza(el)))
            | Err(Undelivered::Full(ToSession::Stanza(el))) => {
                delivery::bounce(shared, &el, "cancel", "service-unavailable");
            }
            Err(_) => {}
        }
        return;
    }
    if !matches!(ty, "get" | "set") {
        return;
    }
    if to.node().is_none() && el.get_child("ping", ns::PING).is_some() && ty == "get" {
        let reply = stanza::iq_result(&el, Some(to.as_str()));
        delivery::bounce_reply(shared, reply);
        return;
    }
    delivery::bounce(shared, &el, "cancel", "service-unavailable");
}
