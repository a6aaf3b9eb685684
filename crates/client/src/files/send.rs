//! The sender's side of a transfer: over a direct connection the receiver opened to our
//! link listener (checked against its device key), or through the proxy it waits at
//! (connect, activate, write).

use std::path::PathBuf;

use outpost_proto::minidom::Element;
use outpost_proto::xml::escape;
use tokio::sync::mpsc;

use super::{Ask, BYTESTREAMS, FileEvent, wire};
use crate::event::TransferPath;
use crate::p2p::NS;
use crate::p2p::link::LinkEvent;
use crate::session::Session;
use crate::stream::{Io, Stream, StreamError};

impl Session {
    /// The receiver connected to fetch `sid` directly: if it is the device the file was
    /// offered to, with the key we pinned for it, confirm and send.
    pub(crate) async fn file_channel(
        &mut self,
        sid: &str,
        (jid, device): (&str, &str),
        offset: u64,
        fingerprint: &str,
        mut link: Box<Stream>,
    ) {
        let pinned = self
            .peers
            .as_deref()
            .and_then(|p| p.key_of(&(jid.to_owned(), device.to_owned())));
        let Some(o) = self.files.outgoing.get_mut(sid) else {
            return;
        };
        let offered_to = o.full.as_deref().map(crate::bare);
        if offered_to != Some(jid) || pinned.as_deref() != Some(fingerprint) || offset > o.size {
            tracing::warn!(%jid, %device, "a direct connection for a file was refused");
            return;
        }
        o.path = Some(TransferPath::Direct);
        let file = o.file.clone();
        let events = self.link_tx.clone();
        let id = sid.to_owned();
        tokio::spawn(async move {
            let confirmed = async {
                link.write(&format!("<file xmlns='{NS}' sid='{}'/>", escape(&id)))
                    .await
                    .ok()?;
                let go = link.next().await.ok()?;
                go.is("go", NS).then_some(())
            };
            match tokio::time::timeout(super::DIRECT_TIMEOUT, confirmed).await {
                Ok(Some(())) => send(id, file, offset, link.into_io(), events).await,
                _ => tracing::debug!("a direct file connection did not start"),
            }
        });
    }

    /// The receiver waits at a proxy: connect there too.
    pub(super) fn proxy_send(&mut self, sid: &str, host: &Element) {
        let Some(o) = self.files.outgoing.get_mut(sid) else {
            return;
        };
        let (Some(jid), Some(addr), Some(port), Some(full)) = (
            host.attr("jid"),
            host.attr("host"),
            host.attr("port").and_then(|p| p.parse::<u16>().ok()),
            o.full.clone(),
        ) else {
            let failed = FileEvent::Failed {
                id: sid.to_owned(),
                reason: "the receiver named no usable proxy".to_owned(),
            };
            let _ = self.link_tx.try_send(LinkEvent::File(failed));
            return;
        };
        let offset = host
            .attr("offset")
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        o.proxy_at = Some((jid.to_owned(), offset.min(o.size)));
        o.path = Some(TransferPath::Proxy);
        let hash = outpost_proto::socks5::stream_hash(sid, &self.jid, &full);
        let (id, addr, events) = (sid.to_owned(), addr.to_owned(), self.link_tx.clone());
        tokio::spawn(async move {
            let event = match wire::socks5_connect(&addr, port, &hash).await {
                Ok(tcp) => FileEvent::ProxyConnected {
                    id,
                    io: Box::new(tcp),
                },
                Err(e) => FileEvent::Failed {
                    id,
                    reason: format!("the proxy at {addr}:{port}: {e}"),
                },
            };
            let _ = events.send(LinkEvent::File(event)).await;
        });
    }

    /// Both ends are at the proxy: ask it to join them (XEP-0065 §6.3).
    pub(super) async fn activate(
        &mut self,
        stream: Option<&mut Stream>,
        id: &str,
        io: Box<dyn Io>,
    ) -> Result<(), StreamError> {
        let Some(o) = self.files.outgoing.get_mut(id) else {
            return Ok(());
        };
        let (Some((proxy, _)), Some(full)) = (o.proxy_at.clone(), o.full.clone()) else {
            return Ok(());
        };
        let Some(stream) = stream else {
            let reason = "no server to ask the proxy to join the two ends".to_owned();
            return self.transfer_failed(None, id, reason).await;
        };
        o.proxy = Some(io);
        let ask = format!("act-{}", crate::random_id(10));
        let xml = format!(
            "<iq type='set' to='{}' id='{ask}'><query xmlns='{BYTESTREAMS}' sid='{}'>\
             <activate>{}</activate></query></iq>",
            escape(&proxy),
            escape(id),
            escape(&full)
        );
        self.files.asked.insert(ask, (id.to_owned(), Ask::Activate));
        self.send_stanza(stream, xml, None).await
    }

    /// The proxy joined the two ends: write the file.
    pub(super) fn activated(&mut self, id: &str) {
        let Some(o) = self.files.outgoing.get_mut(id) else {
            return;
        };
        let (Some(io), Some((_, offset))) = (o.proxy.take(), o.proxy_at.clone()) else {
            return;
        };
        let file = o.file.clone();
        tokio::spawn(send(id.to_owned(), file, offset, io, self.link_tx.clone()));
    }
}

/// Writes the file from `offset`; the receiver says when it has it all.
async fn send(
    id: String,
    file: PathBuf,
    offset: u64,
    mut io: Box<dyn Io>,
    events: mpsc::Sender<LinkEvent>,
) {
    let progress = super::reporter(&id, &events);
    if let Err(e) = wire::send_from(&file, offset, &mut io, progress).await {
        let failed = FileEvent::Failed {
            id,
            reason: e.to_string(),
        };
        let _ = events.send(LinkEvent::File(failed)).await;
    }
}
