//! External components (XEP-0114): services that run as their own processes (a push app
//! server, a gateway) and connect with a shared secret to serve a domain of their own.
//! While connected, a component is registered with delivery for its domain, like the
//! server's own services; what it sends is delivered as a peer server's stanzas are.
//!
//! Each connection is one task around the sans-IO `ComponentStream`; a second connection
//! for a domain that is connected already is refused with `conflict`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use minidom::Element;
use outpost_proto::StreamMachine;
use outpost_proto::component::{ComponentStream, Event};
use outpost_proto::xml::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info};

use crate::delivery::{Component, Delivery};
use crate::journal::Pending;

/// Stanzas waiting to be written to a component.
const QUEUE: usize = 1024;
/// A component has this long to complete its handshake.
const AUTH_TIMEOUT: Duration = Duration::from_secs(30);

/// What delivery holds for a connected component: the queue to its connection.
struct Connected {
    tx: mpsc::Sender<Element>,
}

impl Component for Connected {
    fn take(&self, el: Element) -> Result<Option<Pending>, Element> {
        self.tx.try_send(el).map(|()| None).map_err(|e| match e {
            mpsc::error::TrySendError::Full(el) | mpsc::error::TrySendError::Closed(el) => el,
        })
    }
}

/// What the component listener needs.
pub(crate) struct ComponentEnv {
    pub(crate) delivery: Arc<Delivery>,
    pub(crate) secrets: BTreeMap<String, String>,
    pub(crate) limits: Limits,
    pub(crate) shutdown: CancellationToken,
}

/// Serves one component connection until it ends.
pub(crate) async fn serve(env: Arc<ComponentEnv>, mut tcp: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("component", %peer);
    async move {
        let mut proto = ComponentStream::new(env.limits, crate::ids::random_id(20));
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let mut domain: Option<String> = None;
        let mut buf = vec![0u8; 16 * 1024];
        let deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
        loop {
            while let Some(event) = proto.poll_event() {
                match event {
                    Event::NeedSecret { domain: wanted } => {
                        let taken = env.delivery.is_ours(&wanted);
                        let secret = env.secrets.get(&wanted).filter(|_| !taken);
                        proto.provide_secret(secret.map(String::as_str));
                    }
                    Event::Authenticated { domain: d } => {
                        info!(domain = %d, "component connected");
                        let component = Arc::new(Connected { tx: tx.clone() });
                        env.delivery.register(&d, &d, component);
                        domain = Some(d);
                    }
                    Event::Stanza(el) => {
                        let accepted = crate::s2s::deliver_one(&env.delivery, el).await;
                        for u in accepted.settle().await {
                            env.delivery.bounce(&u.stanza, u.error);
                        }
                    }
                    Event::Closed { .. } => {}
                }
            }
            if proto.has_output() && tcp.write_all(&proto.take_output()).await.is_err() {
                break;
            }
            if proto.is_closed() {
                break;
            }
            tokio::select! {
                () = env.shutdown.cancelled() => proto.close(Some("system-shutdown")),
                () = tokio::time::sleep_until(deadline), if domain.is_none() => {
                    proto.close(Some("connection-timeout"));
                }
                read = tcp.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => proto.handle_input(&buf[..n]),
                },
                Some(el) = rx.recv() => {
                    proto.send(&el);
                    while let Ok(el) = rx.try_recv() {
                        proto.send(&el);
                    }
                }
            }
        }
        if let Some(d) = domain {
            env.delivery.unregister(&d);
            info!(domain = %d, "component disconnected");
        }
        let _ = tcp.shutdown().await;
    }
    .instrument(span)
    .await
}
