//! The upload path: for a contact with no client online, a slot from the server's upload
//! service (XEP-0363), the file PUT there, and a message with its URL (XEP-0066) and
//! metadata (XEP-0446: name, size, SHA-256) that any client can open; an Outpost client
//! fetches it by itself and checks the hash.

use std::path::PathBuf;

use outpost_proto::minidom::Element;
use outpost_proto::xml::escape;
use tokio::sync::mpsc;

use super::{Ask, FileEvent, HASHES, METADATA, OOB, UPLOAD, http};
use crate::event::{TransferPath, TransferState};
use crate::p2p::link::LinkEvent;
use crate::session::Session;
use crate::stream::{Stream, StreamError};
use crate::trust::Verifier;

impl Session {
    pub(super) async fn ask_slot(
        &mut self,
        stream: &mut Stream,
        id: &str,
    ) -> Result<(), StreamError> {
        let Some(o) = self.files.outgoing.get_mut(id) else {
            return Ok(());
        };
        o.path = Some(TransferPath::Upload);
        let ask = format!("slot-{}", crate::random_id(10));
        let xml = format!(
            "<iq type='get' to='upload.{}' id='{ask}'><request xmlns='{UPLOAD}' filename='{}' \
             size='{}' content-type='application/octet-stream'/></iq>",
            escape(&self.domain),
            escape(&o.name),
            o.size
        );
        self.files.asked.insert(ask, (id.to_owned(), Ask::Slot));
        let event = self.file_event(id, TransferState::Sending, 0, None);
        self.emit(event).await;
        self.send_stanza(stream, xml, None).await
    }

    /// The upload service gave a slot: PUT the file there.
    pub(super) fn slot_given(&mut self, id: &str, el: &Element) {
        let slot = el.get_child("slot", UPLOAD);
        let put = slot.and_then(|s| s.get_child("put", UPLOAD));
        let get = slot
            .and_then(|s| s.get_child("get", UPLOAD))
            .and_then(|g| g.attr("url"));
        let (Some(o), Some(put), Some(get)) = (self.files.outgoing.get(id), put, get) else {
            let reason = "the upload service gave no slot".to_owned();
            let failed = FileEvent::Failed {
                id: id.to_owned(),
                reason,
            };
            let _ = self.link_tx.try_send(LinkEvent::File(failed));
            return;
        };
        let headers: Vec<(String, String)> = put
            .children()
            .filter(|h| h.is("header", UPLOAD))
            .filter_map(|h| Some((h.attr("name")?.to_owned(), h.text())))
            // XEP-0363 §4: only these may be passed on.
            .filter(|(n, _)| matches!(n.as_str(), "Authorization" | "Cookie" | "Expires"))
            .collect();
        let job = Upload {
            id: id.to_owned(),
            put: put.attr("url").unwrap_or_default().to_owned(),
            get: get.to_owned(),
            headers,
            file: o.file.clone(),
            size: o.size,
        };
        tokio::spawn(upload(job, self.verifier.clone(), self.link_tx.clone()));
    }

    /// The file is at the upload service: send the contact its URL and metadata.
    pub(super) async fn uploaded(
        &mut self,
        stream: Option<&mut Stream>,
        id: &str,
        url: &str,
    ) -> Result<(), StreamError> {
        let Some(o) = self.files.outgoing.get(id) else {
            return Ok(());
        };
        let xml = format!(
            "<message to='{to}' type='chat' id='{id}'><body>{url}</body>\
             <x xmlns='{OOB}'><url>{url}</url></x><file xmlns='{METADATA}'><name>{name}</name>\
             <size>{size}</size><hash xmlns='{HASHES}' algo='sha-256'>{hash}</hash></file>\
             <origin-id xmlns='urn:xmpp:sid:0' id='{id}'/></message>",
            to = escape(&o.to),
            url = escape(url),
            name = escape(&o.name),
            size = o.size,
            hash = escape(&o.hash),
        );
        let (size, message_id) = (o.size, id.to_owned());
        match stream {
            Some(stream) => self.send_message(stream, xml, message_id).await?,
            None => self.pending.push(crate::state::Unacked {
                xml,
                message: Some(message_id),
            }),
        }
        let event = self.file_event(id, TransferState::Complete, size, None);
        self.files.outgoing.remove(id);
        self.emit(event).await;
        Ok(())
    }
}

struct Upload {
    id: String,
    put: String,
    get: String,
    headers: Vec<(String, String)>,
    file: PathBuf,
    size: u64,
}

async fn upload(job: Upload, verifier: Verifier, events: mpsc::Sender<LinkEvent>) {
    let progress = super::reporter(&job.id, &events);
    let result = http::put(
        &job.put,
        &job.headers,
        &job.file,
        job.size,
        &verifier,
        progress,
    )
    .await;
    let event = match result {
        Ok(()) => FileEvent::Uploaded {
            id: job.id,
            url: job.get,
        },
        Err(reason) => FileEvent::Failed { id: job.id, reason },
    };
    let _ = events.send(LinkEvent::File(event)).await;
}

/// Fetches a shared file into its part file, then reports it received (the hash is
/// checked there).
pub(super) fn spawn_download(
    id: String,
    url: String,
    part: PathBuf,
    verifier: Verifier,
    events: mpsc::Sender<LinkEvent>,
) {
    tokio::spawn(async move {
        let progress = super::reporter(&id, &events);
        let fetched = match http::get(&url, &part, super::MAX_FILE, &verifier, progress).await {
            Ok(_) => super::wire::hash_file(&part)
                .await
                .map_err(|e| e.to_string()),
            Err(reason) => Err(reason),
        };
        let event = match fetched {
            Ok(hash) => FileEvent::Received { id, hash },
            Err(reason) => FileEvent::Failed { id, reason },
        };
        let _ = events.send(LinkEvent::File(event)).await;
    });
}
