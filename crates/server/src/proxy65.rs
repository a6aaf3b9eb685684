//! The SOCKS5 bytestream proxy (XEP-0065) of each domain, at `proxy.<domain>`: clients
//! that cannot connect to each other both connect here, with the same address (the hash
//! of the stream id and their JIDs, `proto::socks5`), and once the initiator asks the
//! service to activate the stream, the proxy relays the bytes between the two.
//!
//! Not an open relay: only streams with a user of this server at one end are activated,
//! connections that are not activated within a minute are dropped, and each hash pairs
//! exactly two connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jid::{FullJid, Jid};
use minidom::Element;
use outpost_proto::socks5::{Handshake, Progress, stream_hash};
use outpost_proto::stanza::{self, Condition, StanzaError, ns};
use tokio::io::{AsyncReadExt, AsyncWriteExt, copy_bidirectional};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::ListenerKind;
use crate::delivery::{Component, Delivery};
use crate::journal::Pending;
use crate::tasks::Tasks;

pub(crate) const NS_BYTESTREAMS: &str = "http://jabber.org/protocol/bytestreams";
/// A connection waits this long for its stream to be activated.
const ACTIVATION_WAIT: Duration = Duration::from_secs(60);
/// The handshake must be over by then.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections waiting at once, over all streams.
const MAX_WAITING: usize = 1000;
/// How long an activation waits for a connection whose handshake is answered but which is
/// not registered yet: the proxy replies to the handshake before it registers the
/// connection, so the initiator, told it is connected, may ask first.
const ACTIVATE_GRACE: Duration = Duration::from_secs(5);

/// The connections waiting for activation, by hash, oldest first.
#[derive(Default)]
pub(crate) struct Waiting {
    by_hash: Mutex<HashMap<String, Vec<(TcpStream, Instant)>>>,
    /// Told when a connection is registered.
    added: tokio::sync::Notify,
}

impl Waiting {
    fn add(&self, hash: String, tcp: TcpStream) -> bool {
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        expire(&mut map, now);
        let total: usize = map.values().map(Vec::len).sum();
        let conns = map.entry(hash).or_default();
        if total >= MAX_WAITING || conns.len() >= 2 {
            return false;
        }
        conns.push((tcp, now));
        drop(map);
        self.added.notify_waiters();
        true
    }

    /// Both connections of a stream, once both are here (within [`ACTIVATE_GRACE`]).
    async fn pair_soon(&self, hash: &str) -> Option<(TcpStream, TcpStream)> {
        let deadline = Instant::now() + ACTIVATE_GRACE;
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if let Some(both) = self.pair(hash) {
                return Some(both);
            }
            tokio::time::timeout_at(deadline, added).await.ok()?;
        }
    }

    /// Closes the connections that waited [`ACTIVATION_WAIT`] in vain.
    fn expire(&self) {
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        expire(&mut map, Instant::now());
    }

    /// Both connections of a stream, if both are here.
    fn pair(&self, hash: &str) -> Option<(TcpStream, TcpStream)> {
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        let conns = map.get_mut(hash)?;
        let fresh = conns.iter().all(|(_, at)| at.elapsed() < ACTIVATION_WAIT);
        if conns.len() != 2 || !fresh {
            return None;
        }
        let mut both = map.remove(hash)?.into_iter().map(|(t, _)| t);
        Some((both.next()?, both.next()?))
    }
}

/// Drops (and so closes) the connections waiting since [`ACTIVATION_WAIT`] before `now`.
fn expire(map: &mut HashMap<String, Vec<(TcpStream, Instant)>>, now: Instant) {
    map.retain(|_, conns| {
        conns.retain(|(_, at)| now.duration_since(*at) < ACTIVATION_WAIT);
        !conns.is_empty()
    });
}

/// The proxy: what it tells clients and the connections it holds.
pub(crate) struct Proxy {
    pub(crate) service: String,
    /// Where clients connect.
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) waiting: Arc<Waiting>,
    pub(crate) delivery: std::sync::Weak<Delivery>,
    pub(crate) tasks: Tasks,
}

impl Component for Proxy {
    fn take(&self, el: Element) -> Result<Option<Pending>, Element> {
        if el.name() == "iq"
            && matches!(el.attr("type"), Some("get" | "set"))
            && let Some(d) = self.delivery.upgrade()
        {
            if el.attr("type") == Some("set") && el.get_child("query", NS_BYTESTREAMS).is_some() {
                self.activate(d, el);
                return Ok(None);
            }
            let reply = match self.answer(&el) {
                Ok(payload) => {
                    let mut r = stanza::iq_result(&el, Some(&self.service));
                    if let Some(p) = payload {
                        r.append_child(p);
                    }
                    r
                }
                Err(e) => stanza::error_reply(&el, &e),
            };
            d.send(reply);
        }
        Ok(None)
    }
}

impl Proxy {
    fn answer(&self, el: &Element) -> Result<Option<Element>, StanzaError> {
        let get = el.attr("type") == Some("get");
        match crate::services::payload_key(el) {
            (name, n) if name == "query" && n == ns::DISCO_INFO && get => Ok(Some(self.disco())),
            (name, n) if name == "query" && n == ns::DISCO_ITEMS && get => {
                Ok(Some(Element::builder("query", ns::DISCO_ITEMS).build()))
            }
            (name, n) if name == "query" && n == NS_BYTESTREAMS && get => {
                Ok(Some(self.streamhost()))
            }
            _ => Err(StanzaError::new(Condition::ServiceUnavailable)),
        }
    }

    fn disco(&self) -> Element {
        Element::builder("query", ns::DISCO_INFO)
            .append(
                Element::builder("identity", ns::DISCO_INFO)
                    .attr(stanza::name("category"), "proxy")
                    .attr(stanza::name("type"), "bytestreams")
                    .attr(stanza::name("name"), "SOCKS5 bytestreams")
                    .build(),
            )
            .append(
                Element::builder("feature", ns::DISCO_INFO)
                    .attr(stanza::name("var"), NS_BYTESTREAMS)
                    .build(),
            )
            .build()
    }

    /// Where to connect (XEP-0065 §4).
    fn streamhost(&self) -> Element {
        Element::builder("query", NS_BYTESTREAMS)
            .append(
                Element::builder("streamhost", NS_BYTESTREAMS)
                    .attr(stanza::name("jid"), self.service.as_str())
                    .attr(stanza::name("host"), self.host.as_str())
                    .attr(stanza::name("port"), self.port.to_string())
                    .build(),
            )
            .build()
    }

    /// The initiator asks for its stream to `<activate/>` (XEP-0065 §6.3): both ends must
    /// be connected (the second within [`ACTIVATE_GRACE`]), and one of them must be a user
    /// of this server. Answered once the stream is joined, or found not to be.
    fn activate(&self, d: Arc<Delivery>, el: Element) {
        let hash = match activation(&d, &el) {
            Ok(hash) => hash,
            Err(e) => return d.send(stanza::error_reply(&el, &e)),
        };
        let (waiting, tasks, service) = (
            self.waiting.clone(),
            self.tasks.clone(),
            self.service.clone(),
        );
        self.tasks.spawn(async move {
            let reply = match waiting.pair_soon(&hash).await {
                Some((a, b)) => {
                    info!(from = el.attr("from"), "bytestream activated");
                    tasks.spawn(relay(a, b));
                    stanza::iq_result(&el, Some(&service))
                }
                None => stanza::error_reply(&el, &StanzaError::new(Condition::ItemNotFound)),
            };
            d.send(reply);
        });
    }
}

/// The hash of the stream an activation asks for, if it may be activated here.
fn activation(d: &Delivery, el: &Element) -> Result<String, StanzaError> {
    let q = el
        .get_child("query", NS_BYTESTREAMS)
        .ok_or(Condition::BadRequest)?;
    let sid = q.attr("sid").ok_or(Condition::BadRequest)?;
    let initiator = el
        .attr("from")
        .and_then(|f| FullJid::new(f).ok())
        .ok_or(Condition::BadRequest)?;
    let target = q
        .get_child("activate", NS_BYTESTREAMS)
        .map(|a| a.text())
        .and_then(|t| Jid::new(t.trim()).ok())
        .ok_or(Condition::BadRequest)?;
    let ours = d.is_local(initiator.domain().as_str()) || d.is_local(target.domain().as_str());
    if !ours {
        return Err(StanzaError::new(Condition::Forbidden));
    }
    Ok(stream_hash(sid, initiator.as_str(), target.as_str()))
}

/// Registers the bytestream proxy of each domain with delivery, telling clients to connect
/// to the first proxy listener.
pub(crate) fn register(
    config: &crate::config::Config,
    delivery: &Arc<Delivery>,
    waiting: &Arc<Waiting>,
    listeners: &[(ListenerKind, SocketAddr, tokio::net::TcpListener)],
    tasks: &Tasks,
) {
    let Some((_, addr, _)) = listeners.iter().find(|(k, ..)| *k == ListenerKind::Proxy65) else {
        return;
    };
    for (service, domain) in config.proxy65_domains() {
        let proxy = Proxy {
            service: service.clone(),
            host: advertised_host(config.proxy65.host.as_deref(), *addr, &domain),
            port: addr.port(),
            waiting: waiting.clone(),
            delivery: Arc::downgrade(delivery),
            tasks: tasks.clone(),
        };
        delivery.register(&service, &domain, Arc::new(proxy));
    }
}

/// The host clients are told to connect to: the configured one, else the listener's IP
/// address, or the domain when the listener takes every address.
pub(crate) fn advertised_host(
    configured: Option<&str>,
    listener: SocketAddr,
    domain: &str,
) -> String {
    match (configured, listener.ip()) {
        (Some(host), _) => host.to_owned(),
        (None, ip) if ip.is_unspecified() => domain.to_owned(),
        (None, ip) => ip.to_string(),
    }
}

async fn relay(mut a: TcpStream, mut b: TcpStream) {
    match copy_bidirectional(&mut a, &mut b).await {
        Ok((ab, ba)) => debug!(bytes = ab + ba, "bytestream done"),
        Err(e) => debug!(error = %e, "bytestream ended"),
    }
}

/// Serves one connection to the proxy: the SOCKS5 handshake, then it waits for its stream
/// to be activated; one still waiting after [`ACTIVATION_WAIT`] is closed, so that its
/// client learns the other end never came.
pub(crate) async fn serve(waiting: Arc<Waiting>, mut tcp: TcpStream, peer: SocketAddr) {
    let mut handshake = Handshake::default();
    let mut buf = [0u8; 512];
    let hash = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        loop {
            let n = tcp.read(&mut buf).await.ok().filter(|n| *n > 0)?;
            let progress = handshake.handle_input(&buf[..n]);
            tcp.write_all(&handshake.take_output()).await.ok()?;
            match progress {
                Progress::NeedMore => {}
                Progress::Connect(hash) => return Some(hash),
                Progress::Refused => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    let Some(hash) = hash else {
        debug!(%peer, "bytestream handshake refused");
        return;
    };
    if !waiting.add(hash, tcp) {
        debug!(%peer, "bytestream refused: too many waiting");
        return;
    }
    tokio::time::sleep(ACTIVATION_WAIT).await;
    waiting.expire();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connects to the proxy at `addr` for `hash` (RFC 1928, XEP-0065 §5.3.2).
    async fn connect(addr: SocketAddr, hash: &str) -> TcpStream {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(&[5, 1, 0]).await.expect("greet");
        let mut choice = [0u8; 2];
        tcp.read_exact(&mut choice).await.expect("choice");
        let mut request = vec![5, 1, 0, 3, hash.len() as u8];
        request.extend_from_slice(hash.as_bytes());
        request.extend_from_slice(&[0, 0]);
        tcp.write_all(&request).await.expect("request");
        let mut reply = vec![0u8; request.len()];
        tcp.read_exact(&mut reply).await.expect("reply");
        assert_eq!(&reply[..2], &[5, 0], "connected");
        tcp
    }

    #[tokio::test]
    async fn a_connection_never_activated_is_closed_after_the_wait() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let waiting = Arc::new(Waiting::default());
        let proxy = {
            let waiting = waiting.clone();
            tokio::spawn(async move {
                let (tcp, peer) = listener.accept().await.unwrap();
                serve(waiting, tcp, peer).await;
            })
        };
        let mut tcp = connect(addr, &"a".repeat(40)).await;
        // Handshake done in real time; the wait itself passes on a paused clock.
        tokio::time::pause();
        let started = Instant::now();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(ACTIVATION_WAIT * 2, tcp.read(&mut byte)).await;
        let n = read
            .expect("the proxy kept the connection open")
            .unwrap_or(0);
        assert_eq!(n, 0, "the proxy closed the connection");
        assert!(started.elapsed() >= ACTIVATION_WAIT - Duration::from_secs(1));
        proxy.await.unwrap();
        assert!(waiting.by_hash.lock().unwrap().is_empty());
    }

    /// A loopback connection, as the proxy holds it.
    async fn connection() -> TcpStream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        drop(client);
        server.unwrap().0
    }

    /// The initiator, told its connection is there, may ask for the activation before the
    /// proxy has registered that connection: the activation waits for it.
    #[tokio::test]
    async fn an_activation_waits_for_a_connection_about_to_be_registered() {
        let waiting = Arc::new(Waiting::default());
        assert!(waiting.add("h".to_owned(), connection().await));
        let asked = {
            let waiting = waiting.clone();
            tokio::spawn(async move { waiting.pair_soon("h").await.is_some() })
        };
        tokio::task::yield_now().await;
        assert!(waiting.add("h".to_owned(), connection().await));
        assert!(asked.await.unwrap(), "the two ends were joined");
        // One end alone is not joined, after the grace.
        tokio::time::pause();
        assert!(waiting.add("alone".to_owned(), connection().await));
        assert!(waiting.pair_soon("alone").await.is_none());
    }
}
