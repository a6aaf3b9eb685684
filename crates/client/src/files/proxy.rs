//! The receiver's side of the proxy path: with no direct candidate reachable, it asks the
//! sender's domain for its SOCKS5 bytestream proxy (XEP-0065 §4), connects there for the
//! stream's address, tells the sender where it waits, and reads the file once the sender
//! has connected and activated the stream.

use outpost_proto::minidom::Element;
use outpost_proto::xml::escape;
use tokio::sync::mpsc;

use super::{Ask, BYTESTREAMS, FileEvent, Receive, wire};
use crate::p2p::link::LinkEvent;
use crate::session::Session;
use crate::stream::{Stream, StreamError};

impl Session {
    pub(super) async fn ask_streamhost(
        &mut self,
        stream: Option<&mut Stream>,
        id: &str,
    ) -> Result<(), StreamError> {
        let Some(i) = self.files.incoming.get(id) else {
            return Ok(());
        };
        let Some(stream) = stream else {
            let reason = "no direct connection, and no server to reach the proxy".to_owned();
            return self.transfer_failed(None, id, reason).await;
        };
        let domain = crate::bare(&i.from)
            .split_once('@')
            .map_or("", |(_, d)| d)
            .to_owned();
        let ask = format!("sh-{}", crate::random_id(10));
        let xml = format!(
            "<iq type='get' to='proxy.{}' id='{ask}'><query xmlns='{BYTESTREAMS}'/></iq>",
            escape(&domain)
        );
        self.files
            .asked
            .insert(ask, (id.to_owned(), Ask::Streamhost));
        self.send_stanza(stream, xml, None).await
    }

    /// The proxy said where it is: connect there and wait for the sender.
    pub(super) fn streamhost_known(&mut self, id: &str, el: &Element) {
        let host = el
            .get_child("query", BYTESTREAMS)
            .and_then(|q| q.get_child("streamhost", BYTESTREAMS));
        let at = host.and_then(|h| {
            let port = h.attr("port")?.parse().ok()?;
            Some((h.attr("jid")?.to_owned(), h.attr("host")?.to_owned(), port))
        });
        let (Some(i), Some((jid, host, port))) = (self.files.incoming.get(id), at) else {
            let reason = "the server's proxy gave no address".to_owned();
            let _ = self.link_tx.try_send(LinkEvent::File(FileEvent::Failed {
                id: id.to_owned(),
                reason,
            }));
            return;
        };
        let hash = outpost_proto::socks5::stream_hash(id, &i.from, &self.jid);
        let job = Receive {
            id: id.to_owned(),
            part: i.part.clone(),
            offset: 0,
            size: i.size,
        };
        let at = (jid, host, port);
        let task = tokio::spawn(receive_by_proxy(job, at, hash, self.link_tx.clone()));
        self.files.fetching(id, task);
    }
}

async fn receive_by_proxy(
    mut job: Receive,
    (jid, host, port): (String, String, u16),
    hash: String,
    events: mpsc::Sender<LinkEvent>,
) {
    job.offset = super::part_length(&job.part, job.size).await;
    let mut tcp = match wire::socks5_connect(&host, port, &hash).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let reason = format!("the proxy at {host}:{port}: {e}");
            let failed = FileEvent::Failed { id: job.id, reason };
            let _ = events.send(LinkEvent::File(failed)).await;
            return;
        }
    };
    let waiting = FileEvent::ProxyWaiting {
        id: job.id.clone(),
        jid,
        host,
        port,
        offset: job.offset,
    };
    let _ = events.send(LinkEvent::File(waiting)).await;
    super::receive(job, &mut tcp, events).await;
}
