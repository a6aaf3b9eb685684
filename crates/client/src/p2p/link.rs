//! The tasks of direct links: a listener that accepts peers, a dialer that tries a peer's
//! candidates, and one task per link that carries stanzas both ways and notices when the
//! link stops answering. They report to the session as [`LinkEvent`]s; the session decides
//! whom to trust (`crate::peers`).

use std::time::{Duration, Instant};

use outpost_proto::minidom::Element;
use outpost_proto::xml::escape;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{NS, Tls};
use crate::stream::Stream;

/// Which link an event is about.
pub(crate) type LinkId = u64;

/// How long one candidate may take to connect, and the TLS handshake with the session's
/// first element.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A link that does not answer this long after something was written to it is broken:
/// what it carried goes through the servers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Silence after which a link is asked whether it is there.
const QUIET: Duration = Duration::from_secs(10);

pub(crate) const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                      xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

/// What the link tasks tell the session.
pub(crate) enum LinkEvent {
    /// A peer connected, proved it holds the key with this `fingerprint`, and named its
    /// session and device.
    Accepted {
        sid: String,
        /// The account it says it is (checked against our pins when no offer of ours
        /// names the session: a contact on the LAN with no server).
        jid: Option<String>,
        device: String,
        fingerprint: String,
        stream: Box<Stream>,
    },
    /// We reached the peer of `sid`, which showed the pinned key and took us.
    Dialed { sid: String, stream: Box<Stream> },
    /// No candidate of `sid` worked; `shown` is the key the peer showed if it was not the
    /// pinned one.
    DialFailed {
        sid: String,
        reason: String,
        shown: Option<String>,
    },
    /// A stanza came over a link.
    Element { id: LinkId, el: Element },
    /// A link ended.
    Closed { id: LinkId, reason: String },
    /// A device announced itself on the LAN (serverless presence).
    Neighbour(super::lan::Neighbour),
    /// A peer connected to fetch the file offered in `sid`, from `offset` on.
    FileChannel {
        sid: String,
        jid: String,
        device: String,
        offset: u64,
        fingerprint: String,
        stream: Box<Stream>,
    },
    /// What a file transfer's task reports.
    File(crate::files::FileEvent),
}

/// Listens for peers on every IPv4 address, on a port the system picks; returns it.
/// The listener stops when the session does.
pub(crate) async fn listen(tls: Tls, events: mpsc::Sender<LinkEvent>) -> std::io::Result<u16> {
    let listener = TcpListener::bind(("0.0.0.0", 0)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = events.closed() => return,
                accepted = listener.accept() => {
                    if let Ok((tcp, _)) = accepted {
                        tokio::spawn(accept(tls.clone(), tcp, events.clone()));
                    }
                }
            }
        }
    });
    Ok(port)
}

/// One peer dialing in: TLS, then the element that names its session.
async fn accept(tls: Tls, tcp: TcpStream, events: mpsc::Sender<LinkEvent>) {
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| "a peer".to_owned(), |a| a.to_string());
    let _ = tcp.set_nodelay(true);
    let greeted = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let tls = tls.acceptor().accept(tcp).await.ok()?;
        let fingerprint = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| crate::trust::fingerprint(cert.as_ref()))?;
        let mut stream = Box::new(Stream::over(Box::new(tls), &peer));
        stream.write(HEADER).await.ok()?;
        let first = stream.next().await.ok()?;
        if first.is("file", NS) {
            return Some(LinkEvent::FileChannel {
                sid: first.attr("sid")?.to_owned(),
                jid: first.attr("jid")?.to_owned(),
                device: first.attr("device")?.to_owned(),
                offset: first
                    .attr("offset")
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(0),
                fingerprint,
                stream,
            });
        }
        let sid = first
            .attr("sid")
            .filter(|_| first.is("link", NS))?
            .to_owned();
        let device = first.attr("device")?.to_owned();
        let jid = first.attr("jid").map(str::to_owned);
        Some(LinkEvent::Accepted {
            sid,
            jid,
            device,
            fingerprint,
            stream,
        })
    })
    .await;
    match greeted {
        Ok(Some(event)) => {
            let _ = events.send(event).await;
        }
        _ => tracing::debug!(%peer, "a direct connection did not complete its greeting"),
    }
}

/// What a dialer needs: whom, where, and which key to expect.
pub(crate) struct Dial {
    pub(crate) sid: String,
    pub(crate) peer: String,
    pub(crate) candidates: Vec<(String, u16)>,
    pub(crate) pinned: String,
    /// Our account and device, which the peer checks against what it pinned for us.
    pub(crate) jid: String,
    pub(crate) device: String,
}

/// Tries each candidate in turn; reports `Dialed` or `DialFailed`.
pub(crate) async fn dial(tls: Tls, dial: Dial, events: mpsc::Sender<LinkEvent>) {
    let mut reason = "no candidates".to_owned();
    for (host, port) in &dial.candidates {
        match dial_one(&tls, &dial, host, *port).await {
            Ok(stream) => {
                let sid = dial.sid.clone();
                let _ = events.send(LinkEvent::Dialed { sid, stream }).await;
                return;
            }
            Err(Failure::Key(shown)) => {
                let reason = format!("{} showed another key", dial.peer);
                let sid = dial.sid.clone();
                let shown = Some(shown);
                let _ = events
                    .send(LinkEvent::DialFailed { sid, reason, shown })
                    .await;
                return;
            }
            Err(Failure::Other(why)) => reason = format!("{host}:{port}: {why}"),
        }
    }
    let sid = dial.sid;
    let _ = events
        .send(LinkEvent::DialFailed {
            sid,
            reason,
            shown: None,
        })
        .await;
}

enum Failure {
    /// The peer's certificate is not the pinned one: this is its SHA-256.
    Key(String),
    Other(String),
}

async fn dial_one(tls: &Tls, dial: &Dial, host: &str, port: u16) -> Result<Box<Stream>, Failure> {
    let other = |e: &dyn std::fmt::Display| Failure::Other(e.to_string());
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| Failure::Other("no answer".into()))?
        .map_err(|e| other(&e))?;
    let _ = tcp.set_nodelay(true);
    let (connector, seen) = tls
        .connector(&dial.peer, &dial.pinned)
        .map_err(|e| other(&e))?;
    let name = ServerName::try_from("outpost-p2p").map_err(|e| other(&e))?;
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let tls = match connector.connect(name, tcp).await {
            Ok(tls) => tls,
            Err(e) => {
                return Err(match seen.mismatch().and(seen.hash()) {
                    Some(shown) => Failure::Key(shown),
                    None => other(&e),
                });
            }
        };
        let mut stream = Box::new(Stream::over(Box::new(tls), &dial.peer));
        let hello = format!(
            "{HEADER}<link xmlns='{NS}' sid='{}' jid='{}' device='{}'/>",
            escape(&dial.sid),
            escape(&dial.jid),
            escape(&dial.device)
        );
        stream.write(&hello).await.map_err(|e| other(&e))?;
        // The peer answers with the same element once it checked our key.
        let answer = stream.next().await.map_err(|e| other(&e))?;
        match answer.is("link", NS) && answer.attr("sid") == Some(dial.sid.as_str()) {
            true => Ok(stream),
            false => Err(Failure::Other("the peer did not take the link".into())),
        }
    });
    handshake
        .await
        .map_err(|_| Failure::Other("the handshake took too long".into()))?
}

/// The accepting side's answer that it took the link.
pub(crate) fn confirmation(sid: &str) -> String {
    format!("<link xmlns='{NS}' sid='{}'/>", escape(sid))
}

/// Carries one link until it breaks or the session drops `out`: stanzas from `out` are
/// written, each followed by a ping; what comes in goes to the session, pings are
/// answered here. A link that leaves a ping unanswered for [`ANSWER_TIMEOUT`] is closed.
pub(crate) async fn run(
    id: LinkId,
    mut stream: Box<Stream>,
    mut out: mpsc::Receiver<String>,
    events: mpsc::Sender<LinkEvent>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_heard = Instant::now();
    let mut waiting: Option<Instant> = None;
    let reason = loop {
        let step: Result<(), String> = tokio::select! {
            el = stream.next() => match el {
                Ok(el) => {
                    last_heard = Instant::now();
                    waiting = None;
                    incoming(id, &mut stream, el, &events).await
                }
                Err(e) => Err(e.to_string()),
            },
            xml = out.recv() => match xml {
                None => break "closed by this side".to_owned(),
                Some(xml) => {
                    let asked = waiting.is_none();
                    waiting.get_or_insert_with(Instant::now);
                    write_then_ping(&mut stream, &xml, asked).await
                }
            },
            _ = tick.tick() => {
                if waiting.is_some_and(|w| w.elapsed() > ANSWER_TIMEOUT) {
                    break format!("no answer for {} s", ANSWER_TIMEOUT.as_secs());
                }
                if waiting.is_none() && last_heard.elapsed() > QUIET {
                    waiting = Some(Instant::now());
                    write_then_ping(&mut stream, "", true).await
                } else {
                    Ok(())
                }
            },
        };
        if let Err(reason) = step {
            break reason;
        }
    };
    let _ = events.send(LinkEvent::Closed { id, reason }).await;
    stream.close().await;
}

async fn write_then_ping(stream: &mut Stream, xml: &str, ping: bool) -> Result<(), String> {
    let ping = match ping {
        true => "<iq type='get' id='link-ping'><ping xmlns='urn:xmpp:ping'/></iq>",
        false => "",
    };
    stream
        .write(&format!("{xml}{ping}"))
        .await
        .map_err(|e| e.to_string())
}

async fn incoming(
    id: LinkId,
    stream: &mut Stream,
    el: Element,
    events: &mpsc::Sender<LinkEvent>,
) -> Result<(), String> {
    match (el.name(), el.attr("type")) {
        ("iq", Some("get")) => {
            let id = escape(el.attr("id").unwrap_or_default());
            write_then_ping(stream, &format!("<iq type='result' id='{id}'/>"), false).await
        }
        ("iq", _) => Ok(()),
        _ => events
            .send(LinkEvent::Element { id, el })
            .await
            .map_err(|_| "the session ended".to_owned()),
    }
}
