//! File transfer: to a contact online, offered in a Jingle file-transfer description
//! (XEP-0234: name, size, SHA-256 per XEP-0300) with Outpost's transport (the addresses
//! direct links are taken on); the receiver fetches the file over a direct TLS connection
//! checked against the sender's pinned device key, or, when none connects, through the
//! site's SOCKS5 bytestream proxy (XEP-0065). To a contact with no client online, the file
//! goes to the server's HTTP upload service (XEP-0363) and the message carries its URL
//! (XEP-0066) and hash (XEP-0446), which any client can open. The receiver writes into a
//! part file named after the hash, so an offer of the same file again resumes where the
//! last one broke (`offset`), and keeps the file only if its SHA-256 matches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use outpost_proto::minidom::Element;
use outpost_proto::xml::escape;
use tokio::sync::mpsc;

use crate::event::{Event, TransferPath, TransferState};
use crate::p2p::link::{HEADER, LinkEvent};
use crate::p2p::{JINGLE, NS};
use crate::session::Session;
use crate::stream::{Io, Stream, StreamError};

mod http;
mod wire;

const FT: &str = "urn:xmpp:jingle:apps:file-transfer:5";
const HASHES: &str = "urn:xmpp:hashes:2";
const OOB: &str = "jabber:x:oob";
const METADATA: &str = "urn:xmpp:file:metadata:0";
const BYTESTREAMS: &str = "http://jabber.org/protocol/bytestreams";
const UPLOAD: &str = "urn:xmpp:http:upload:0";
/// The largest file taken from a contact, and the most received at once: a contact
/// cannot fill the disk or the task list by offering.
const MAX_FILE: u64 = 16 << 30;
const MAX_INCOMING: usize = 16;
/// How long a direct candidate may take to connect and greet.
const DIRECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a transfer's task reports to the session.
pub(crate) enum FileEvent {
    Hashed {
        id: String,
        hash: Result<String, String>,
    },
    Progress {
        id: String,
        done: u64,
    },
    /// The receiver has the whole file; this is its SHA-256.
    Received {
        id: String,
        hash: String,
    },
    Failed {
        id: String,
        reason: String,
    },
    /// The receiver reached no direct candidate.
    NeedProxy {
        id: String,
    },
    /// The receiver is connected to the proxy and waits for the bytes.
    ProxyWaiting {
        id: String,
        jid: String,
        host: String,
        port: u16,
        offset: u64,
    },
    /// The sender is connected to the proxy: the stream can be activated.
    ProxyConnected {
        id: String,
        io: Box<dyn Io>,
    },
    Uploaded {
        id: String,
        url: String,
    },
}

#[derive(Default)]
pub(crate) struct Files {
    pub(crate) downloads: Option<PathBuf>,
    outgoing: HashMap<String, Outgoing>,
    incoming: HashMap<String, Incoming>,
    /// Requests to the servers under way: iq id → (transfer, what for).
    asked: HashMap<String, (String, Ask)>,
}

enum Ask {
    Streamhost,
    Activate,
    Slot,
}

struct Outgoing {
    to: String,
    /// The contact's client it was offered to (none: uploaded).
    full: Option<String>,
    file: PathBuf,
    name: String,
    size: u64,
    hash: String,
    path: Option<TransferPath>,
    /// The proxy the receiver waits at, and from where it wants the file.
    proxy_at: Option<(String, u64)>,
    /// Our connection to the proxy, waiting for the activation.
    proxy: Option<Box<dyn Io>>,
}

struct Incoming {
    /// Who sends it: a full JID (offered) or a bare one (a shared URL).
    from: String,
    name: String,
    size: u64,
    hash: Option<String>,
    part: PathBuf,
    dest: PathBuf,
    path: TransferPath,
    /// The task fetching it, stopped when the transfer ends early.
    task: Option<tokio::task::AbortHandle>,
}

impl Files {
    /// Notes the task fetching an incoming transfer.
    fn fetching(&mut self, id: &str, task: tokio::task::JoinHandle<()>) {
        if let Some(i) = self.incoming.get_mut(id) {
            i.task = Some(task.abort_handle());
        }
    }

    /// Forgets an incoming transfer, stopping the task fetching it.
    fn drop_incoming(&mut self, id: &str) -> Option<Incoming> {
        let i = self.incoming.remove(id)?;
        if let Some(task) = &i.task {
            task.abort();
        }
        Some(i)
    }

    pub(crate) fn new(downloads: Option<PathBuf>) -> Files {
        Files {
            downloads,
            ..Files::default()
        }
    }
}

impl Session {
    fn file_event(&self, id: &str, state: TransferState, done: u64, text: Option<String>) -> Event {
        let (with, name, size, path, file) =
            match (self.files.outgoing.get(id), self.files.incoming.get(id)) {
                (Some(o), _) => (o.to.clone(), o.name.clone(), o.size, o.path, None),
                (None, Some(i)) => (
                    crate::bare(&i.from).to_owned(),
                    i.name.clone(),
                    i.size,
                    Some(i.path),
                    (state == TransferState::Complete).then(|| i.dest.display().to_string()),
                ),
                (None, None) => (String::new(), String::new(), 0, None, None),
            };
        Event::Transfer {
            id: id.to_owned(),
            with,
            name,
            size,
            done,
            state,
            path,
            file,
            text,
        }
    }

    /// `sendfile`: hashes the file first (in the background), then offers or uploads it.
    pub(crate) async fn send_file(&mut self, to: &str, file: &str) {
        let file = PathBuf::from(file);
        let meta = match tokio::fs::metadata(&file).await {
            Ok(m) if m.is_file() => m,
            Ok(_) => {
                return self
                    .error(format!("{} is not a file", file.display()))
                    .await;
            }
            Err(e) => return self.error(format!("{}: {e}", file.display())).await,
        };
        let id = crate::random_id(16);
        let name = file
            .file_name()
            .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
        self.files.outgoing.insert(
            id.clone(),
            Outgoing {
                to: crate::bare(to).to_owned(),
                full: None,
                file: file.clone(),
                name,
                size: meta.len(),
                hash: String::new(),
                path: None,
                proxy_at: None,
                proxy: None,
            },
        );
        let events = self.link_tx.clone();
        tokio::spawn(async move {
            let hash = wire::hash_file(&file).await.map_err(|e| e.to_string());
            let _ = events
                .send(LinkEvent::File(FileEvent::Hashed { id, hash }))
                .await;
        });
    }

    async fn error(&mut self, text: String) {
        self.emit(Event::Error { text }).await;
    }

    /// What a transfer's task reported. `stream` is the server's, when one is there.
    pub(crate) async fn on_file_event(
        &mut self,
        stream: Option<&mut Stream>,
        event: FileEvent,
    ) -> Result<(), StreamError> {
        match event {
            FileEvent::Hashed { id, hash } => return self.hashed(stream, id, hash).await,
            FileEvent::Progress { id, done } => {
                let state = match self.files.outgoing.contains_key(&id) {
                    true => TransferState::Sending,
                    false => TransferState::Receiving,
                };
                let event = self.file_event(&id, state, done, None);
                self.emit(event).await;
            }
            FileEvent::Received { id, hash } => return self.received(stream, &id, hash).await,
            FileEvent::Failed { id, reason } => {
                return self.transfer_failed(stream, &id, reason).await;
            }
            FileEvent::NeedProxy { id } => return self.ask_streamhost(stream, &id).await,
            FileEvent::ProxyWaiting {
                id,
                jid,
                host,
                port,
                offset,
            } => {
                let Some(i) = self.files.incoming.get_mut(&id) else {
                    return Ok(());
                };
                i.path = TransferPath::Proxy;
                let xml = jingle(
                    &i.from,
                    "transport-info",
                    &id,
                    &format!(
                        "<transport xmlns='{NS}'><streamhost jid='{}' host='{}' port='{port}' \
                         offset='{offset}'/></transport>",
                        escape(&jid),
                        escape(&host)
                    ),
                );
                if let Some(stream) = stream {
                    self.send_stanza(stream, xml, None).await?;
                }
            }
            FileEvent::ProxyConnected { id, io } => return self.activate(stream, &id, io).await,
            FileEvent::Uploaded { id, url } => return self.uploaded(stream, &id, &url).await,
        }
        Ok(())
    }

    async fn hashed(
        &mut self,
        stream: Option<&mut Stream>,
        id: String,
        hash: Result<String, String>,
    ) -> Result<(), StreamError> {
        let Some(o) = self.files.outgoing.get_mut(&id) else {
            return Ok(());
        };
        match hash {
            Ok(hash) => o.hash = hash,
            Err(reason) => return self.transfer_failed(stream, &id, reason).await,
        }
        let Some(stream) = stream else {
            let reason = "no server is reachable now; try again when connected".to_owned();
            return self.transfer_failed(None, &id, reason).await;
        };
        let to = o.to.clone();
        // The linked device first, else any Outpost client of theirs online. Other
        // clients (which do not take Outpost's transport) and contacts offline get it
        // by upload, which every client opens.
        let full = self.linked_full(&to).or_else(|| {
            let resources = self.people.online.get(&to)?;
            let outpost = |full: &String| self.people.outpost.contains(full);
            resources
                .iter()
                .map(|r| format!("{to}{r}"))
                .filter(outpost)
                .min()
        });
        match full {
            Some(full) => self.offer_file(stream, &id, full).await,
            None => self.ask_slot(stream, &id).await,
        }
    }

    async fn offer_file(
        &mut self,
        stream: &mut Stream,
        id: &str,
        full: String,
    ) -> Result<(), StreamError> {
        let port = self.listening().await;
        let device = self.peers.as_ref().map(|p| p.identity.device().to_owned());
        let candidates = port
            .map(|port| crate::p2p::candidates(stream.local, port))
            .unwrap_or_default();
        let candidates = crate::p2p::candidates_xml(&candidates);
        let Some(o) = self.files.outgoing.get_mut(id) else {
            return Ok(());
        };
        o.full = Some(full.clone());
        o.path = Some(TransferPath::Direct);
        let device = device
            .map(|d| format!(" device='{}'", escape(&d)))
            .unwrap_or_default();
        let content = format!(
            "<content creator='initiator' name='file'><description xmlns='{FT}'><file>\
             <name>{}</name><size>{}</size><hash xmlns='{HASHES}' algo='sha-256'>{}</hash>\
             </file></description><transport xmlns='{NS}'{device}>{candidates}</transport>\
             </content>",
            escape(&o.name),
            o.size,
            escape(&o.hash)
        );
        let xml = format!(
            "<iq type='set' to='{}' id='{id}'><jingle xmlns='{JINGLE}' action='session-initiate' \
             initiator='{}' sid='{id}'>{content}</jingle></iq>",
            escape(&full),
            escape(&self.jid)
        );
        let event = self.file_event(id, TransferState::Offered, 0, None);
        self.emit(event).await;
        self.send_stanza(stream, xml, None).await
    }

    /// A Jingle request about a file: an offer, a proxy the receiver is waiting at, or the
    /// end. `false` when it is none of those.
    pub(crate) async fn on_file_jingle(
        &mut self,
        stream: &mut Stream,
        el: &Element,
        jingle: &Element,
    ) -> Result<bool, StreamError> {
        let sid = jingle.attr("sid").unwrap_or_default().to_owned();
        let from = el.attr("from").unwrap_or_default().to_owned();
        let content = jingle.get_child("content", JINGLE);
        match jingle.attr("action") {
            Some("session-initiate") if content.is_some_and(|c| c.has_child("description", FT)) => {
                self.answer(stream, el, None).await?;
                self.file_offered(stream, &from, sid, jingle).await?;
            }
            Some("transport-info") if self.files.outgoing.contains_key(&sid) => {
                self.answer(stream, el, None).await?;
                let host = content
                    .and_then(|c| c.get_child("transport", NS))
                    .and_then(|t| t.get_child("streamhost", NS));
                if let Some(h) = host {
                    self.proxy_send(&sid, h);
                }
            }
            Some("session-terminate") if self.files.incoming.contains_key(&sid) => {
                // The sender gave up (its proxy or its file failed): so does this end.
                self.answer(stream, el, None).await?;
                let text = format!("the sender ended the transfer: {}", end_reason(jingle));
                let event = self.file_event(&sid, TransferState::Failed, 0, Some(text));
                self.files.drop_incoming(&sid);
                self.emit(event).await;
            }
            Some("session-terminate") if self.files.outgoing.contains_key(&sid) => {
                self.answer(stream, el, None).await?;
                let reason = end_reason(jingle);
                match reason.as_str() {
                    "success" => {
                        let size = self.files.outgoing.get(&sid).map_or(0, |o| o.size);
                        let event = self.file_event(&sid, TransferState::Complete, size, None);
                        self.files.outgoing.remove(&sid);
                        self.emit(event).await;
                    }
                    _ => {
                        let text = Some(format!("the receiver ended the transfer: {reason}"));
                        let event = self.file_event(&sid, TransferState::Failed, 0, text);
                        self.files.outgoing.remove(&sid);
                        self.emit(event).await;
                    }
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// A contact offers a file: fetch it, directly if their device is known and reachable.
    async fn file_offered(
        &mut self,
        stream: &mut Stream,
        from: &str,
        sid: String,
        jingle: &Element,
    ) -> Result<(), StreamError> {
        let content = jingle.get_child("content", JINGLE);
        let file = content
            .and_then(|c| c.get_child("description", FT))
            .and_then(|d| d.get_child("file", FT));
        let text = |name: &str| file.and_then(|f| f.get_child(name, FT)).map(Element::text);
        let name = text("name").unwrap_or_default();
        let size = text("size")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let hash = file
            .and_then(|f| f.get_child("hash", HASHES))
            .filter(|h| h.attr("algo") == Some("sha-256"))
            .map(|h| h.text().trim().to_owned());
        let contact = self.people.roster.contains_key(crate::bare(from));
        let busy = self.files.incoming.len() >= MAX_INCOMING || size > MAX_FILE;
        let incoming = self.incoming(from, &name, size, hash, TransferPath::Direct);
        let (Some(incoming), true, false) = (incoming, contact, busy) else {
            let reason = if contact { "decline" } else { "security-error" };
            let xml = jingle_terminate(from, &sid, reason);
            return self.send_stanza(stream, xml, None).await;
        };
        let offset = part_length(&incoming.part, size).await;
        self.files.incoming.insert(sid.clone(), incoming);
        let event = self.file_event(&sid, TransferState::Receiving, offset, None);
        self.emit(event).await;
        let transport = content.and_then(|c| c.get_child("transport", NS));
        let direct = self.direct_plan(from, transport);
        let events = self.link_tx.clone();
        let Some(i) = self.files.incoming.get(&sid) else {
            return Ok(());
        };
        let job = Receive {
            id: sid.clone(),
            part: i.part.clone(),
            offset,
            size,
        };
        let task = tokio::spawn(receive_direct(job, direct, events));
        self.files.fetching(&sid, task);
        Ok(())
    }

    /// A file to receive: where it goes; `None` when files cannot be received here.
    fn incoming(
        &self,
        from: &str,
        name: &str,
        size: u64,
        hash: Option<String>,
        path: TransferPath,
    ) -> Option<Incoming> {
        let dir = self.files.downloads.as_ref()?;
        let name = safe_name(name);
        // The part file is named after what it will hold, so a new offer resumes it.
        let key = hash.as_deref().map_or_else(|| crate::random_id(12), hex_of);
        Some(Incoming {
            from: from.to_owned(),
            part: dir.join(format!(".{key}.part")),
            dest: unique(dir, &name),
            name,
            size,
            hash,
            path,
            task: None,
        })
    }
}

/// A receiver's job: which transfer, into which part file, from where to where.
struct Receive {
    id: String,
    part: PathBuf,
    offset: u64,
    size: u64,
}

/// How to reach the sender directly: its candidates and the key its device must show.
pub(crate) struct DirectPlan {
    tls: Option<crate::p2p::Tls>,
    candidates: Vec<(String, u16)>,
    pinned: String,
    jid: String,
    device: String,
}

async fn receive_direct(job: Receive, plan: DirectPlan, events: mpsc::Sender<LinkEvent>) {
    let report = |event| LinkEvent::File(event);
    let Some(mut io) = dial_file(&job, &plan).await else {
        let _ = events
            .send(report(FileEvent::NeedProxy { id: job.id }))
            .await;
        return;
    };
    receive(job, &mut io, events).await;
}

/// Reads the file from `io`, checks it, and reports.
async fn receive(
    job: Receive,
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    events: mpsc::Sender<LinkEvent>,
) {
    let progress = reporter(&job.id, &events);
    let result = match wire::receive_into(&job.part, job.offset, job.size, io, progress).await {
        Ok(()) => wire::hash_file(&job.part).await,
        Err(e) => Err(e),
    };
    let event = match result {
        Ok(hash) => FileEvent::Received { id: job.id, hash },
        Err(e) => FileEvent::Failed {
            id: job.id,
            reason: e.to_string(),
        },
    };
    let _ = events.send(LinkEvent::File(event)).await;
}

/// Reports a transfer's progress to the session (dropped when the session is behind: a
/// later report says more).
fn reporter(id: &str, events: &mpsc::Sender<LinkEvent>) -> impl Fn(u64) + Send + Sync + 'static {
    let (id, events) = (id.to_owned(), events.clone());
    move |done| {
        let id = id.clone();
        let _ = events.try_send(LinkEvent::File(FileEvent::Progress { id, done }));
    }
}

/// Tries the sender's candidates: TLS checked against its device key, the greeting, and
/// its confirmation; then the connection carries the file's bytes.
async fn dial_file(job: &Receive, plan: &DirectPlan) -> Option<Box<dyn Io>> {
    let tls = plan.tls.as_ref()?;
    for (host, port) in &plan.candidates {
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .ok()?;
            let _ = tcp.set_nodelay(true);
            let (connector, _) = tls.connector(&plan.jid, &plan.pinned).ok()?;
            let name = rustls::pki_types::ServerName::try_from("outpost-p2p").ok()?;
            let tls = connector.connect(name, tcp).await.ok()?;
            let mut stream = Stream::over(Box::new(tls), host);
            let hello = format!(
                "{HEADER}<file xmlns='{NS}' sid='{}' jid='{}' device='{}' offset='{}'/>",
                escape(&job.id),
                escape(&plan.jid),
                escape(&plan.device),
                job.offset
            );
            stream.write(&hello).await.ok()?;
            let answer = stream.next().await.ok()?;
            (answer.is("file", NS) && answer.attr("sid") == Some(job.id.as_str())).then_some(())?;
            stream.write(&format!("<go xmlns='{NS}'/>")).await.ok()?;
            Some(stream.into_io())
        };
        if let Ok(Some(io)) = tokio::time::timeout(DIRECT_TIMEOUT, attempt).await {
            return Some(io);
        }
    }
    None
}

/// The bytes of a part file that can be kept: all of it if shorter than the file.
async fn part_length(part: &Path, size: u64) -> u64 {
    match tokio::fs::metadata(part).await {
        Ok(m) if m.len() < size => m.len(),
        _ => 0,
    }
}

/// A file name from a peer, made safe to write: no directories, no control characters,
/// not hidden, not empty.
fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = base.chars().filter(|c| !c.is_control()).take(200).collect();
    let clean = clean.trim().trim_start_matches('.').to_owned();
    match clean.is_empty() {
        true => "file".to_owned(),
        false => clean,
    }
}

/// `dir/name`, or `dir/name (n)` when that exists.
fn unique(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
        _ => (name, String::new()),
    };
    (1..1000)
        .map(|n| dir.join(format!("{stem} ({n}){ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

fn hex_of(b64: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map(|bytes| bytes.iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_else(|_| crate::random_id(12))
}

fn jingle(to: &str, action: &str, sid: &str, content: &str) -> String {
    format!(
        "<iq type='set' to='{}' id='{}'><jingle xmlns='{JINGLE}' action='{action}' sid='{}'>\
         <content creator='initiator' name='file'>{content}</content></jingle></iq>",
        escape(to),
        crate::random_id(10),
        escape(sid)
    )
}

/// Why the other end ended a Jingle session (its `<reason/>`'s condition).
fn end_reason(jingle: &Element) -> String {
    jingle
        .get_child("reason", JINGLE)
        .and_then(|r| r.children().next())
        .map_or("unknown", |c| c.name())
        .to_owned()
}

fn jingle_terminate(to: &str, sid: &str, reason: &str) -> String {
    format!(
        "<iq type='set' to='{}' id='{}'><jingle xmlns='{JINGLE}' action='session-terminate' \
         sid='{}'><reason><{reason}/></reason></jingle></iq>",
        escape(to),
        crate::random_id(10),
        escape(sid)
    )
}

impl Session {
    /// The full JID of the contact's device we have a link with.
    fn linked_full(&self, bare: &str) -> Option<String> {
        self.peers.as_ref()?.linked_full(bare)
    }

    /// How to fetch directly from `from`: its candidates, if its device key is known.
    fn direct_plan(&self, from: &str, transport: Option<&Element>) -> DirectPlan {
        let device = transport.and_then(|t| t.attr("device")).unwrap_or_default();
        let key = (crate::bare(from).to_owned(), device.to_owned());
        let peers = self.peers.as_deref();
        let pinned = peers.and_then(|p| p.key_of(&key));
        let candidates = transport
            .map(|t| {
                t.children()
                    .filter(|c| c.is("candidate", NS))
                    .filter_map(|c| {
                        Some((c.attr("host")?.to_owned(), c.attr("port")?.parse().ok()?))
                    })
                    .take(16)
                    .collect()
            })
            .unwrap_or_default();
        DirectPlan {
            tls: pinned.as_ref().and(peers.map(|p| p.tls.clone())),
            candidates,
            pinned: pinned.unwrap_or_default(),
            jid: self.config.jid.clone(),
            device: peers
                .map(|p| p.identity.device().to_owned())
                .unwrap_or_default(),
        }
    }

    /// The receiver has all of a file: check its hash, keep it, tell the sender.
    async fn received(
        &mut self,
        stream: Option<&mut Stream>,
        id: &str,
        actual: String,
    ) -> Result<(), StreamError> {
        let Some(i) = self.files.incoming.get_mut(id) else {
            return Ok(());
        };
        // Named now, so two files of one name arriving together do not take the same.
        if let Some(dir) = i.part.parent() {
            i.dest = unique(dir, &i.name);
        }
        let (part, dest, expected) = (i.part.clone(), i.dest.clone(), i.hash.clone());
        let verdict = match (actual, expected) {
            (a, Some(e)) if a != e => {
                let _ = tokio::fs::remove_file(&part).await;
                Err(format!(
                    "the file's SHA-256 is {a}, not {e} as announced; not kept"
                ))
            }
            _ => tokio::fs::rename(&part, &dest)
                .await
                .map_err(|e| e.to_string()),
        };
        if let Err(reason) = verdict {
            return self.transfer_failed(stream, id, reason).await;
        }
        // A file shared by URL may not have said its size: what arrived is.
        let size = tokio::fs::metadata(&dest).await.map_or(0, |m| m.len());
        if let Some(i) = self.files.incoming.get_mut(id) {
            i.size = size;
        }
        let event = self.file_event(id, TransferState::Complete, size, None);
        let from = self.files.incoming.remove(id).map(|i| i.from);
        self.emit(event).await;
        match (stream, from) {
            // An offered file: the sender hears it arrived whole.
            (Some(stream), Some(from)) if from.contains('/') => {
                self.send_stanza(stream, jingle_terminate(&from, id, "success"), None)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// A transfer failed: say so, and tell the other side of an offered one.
    async fn transfer_failed(
        &mut self,
        stream: Option<&mut Stream>,
        id: &str,
        reason: String,
    ) -> Result<(), StreamError> {
        let event = self.file_event(id, TransferState::Failed, 0, Some(reason));
        let other = match (self.files.outgoing.remove(id), self.files.drop_incoming(id)) {
            (Some(o), _) => o.full,
            (None, Some(i)) => Some(i.from).filter(|f| f.contains('/')),
            (None, None) => return Ok(()),
        };
        self.emit(event).await;
        match (stream, other) {
            (Some(stream), Some(to)) => {
                let xml = jingle_terminate(&to, id, "failed-transport");
                self.send_stanza(stream, xml, None).await
            }
            _ => Ok(()),
        }
    }

    /// The answer to one of our file requests; `false` when `id` is not one.
    pub(crate) async fn on_file_result(
        &mut self,
        stream: &mut Stream,
        id: &str,
        el: &Element,
    ) -> Result<bool, StreamError> {
        let Some((transfer, ask)) = self.files.asked.remove(id) else {
            return Ok(false);
        };
        match ask {
            Ask::Streamhost => self.streamhost_known(&transfer, el),
            Ask::Activate => self.activated(&transfer),
            Ask::Slot => self.slot_given(&transfer, el),
        }
        let _ = stream;
        Ok(true)
    }

    /// One of our file requests failed; `false` when `id` is not one.
    pub(crate) async fn on_file_error(
        &mut self,
        stream: &mut Stream,
        id: &str,
        el: &Element,
    ) -> Result<bool, StreamError> {
        let Some((transfer, _)) = self.files.asked.remove(id) else {
            return Ok(false);
        };
        let reason = format!(
            "the server refused: {}",
            crate::incoming::error_condition(el)
        );
        self.transfer_failed(Some(stream), &transfer, reason)
            .await?;
        Ok(true)
    }

    /// A file shared by URL (XEP-0066) from a contact: fetch it.
    pub(crate) async fn shared_file(&mut self, from_bare: &str, el: &Element) {
        let Some(url) = el
            .get_child("x", OOB)
            .and_then(|x| x.get_child("url", OOB))
            .map(|u| u.text().trim().to_owned())
        else {
            return;
        };
        // Fetched by itself only from a contact, and only from their domain or our
        // server: a message must not make the client connect anywhere it is told.
        let host = url
            .parse::<hyper::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_owned));
        let domain = from_bare.split_once('@').map(|(_, d)| d);
        let ours = self.at_host();
        let trusted = host.is_some_and(|h| domain == Some(h.as_str()) || ours == Some(h.as_str()));
        if !self.people.roster.contains_key(from_bare) || !trusted {
            return;
        }
        let meta = el.get_child("file", METADATA);
        let text = |n: &str| {
            meta.and_then(|m| m.get_child(n, METADATA))
                .map(Element::text)
        };
        let name =
            text("name").unwrap_or_else(|| url.rsplit('/').next().unwrap_or("file").to_owned());
        let size = text("size")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let hash = meta
            .and_then(|m| m.get_child("hash", HASHES))
            .filter(|h| h.attr("algo") == Some("sha-256"))
            .map(|h| h.text().trim().to_owned());
        if self.files.incoming.len() >= MAX_INCOMING {
            return;
        }
        let Some(incoming) = self.incoming(from_bare, &name, size, hash, TransferPath::Upload)
        else {
            return;
        };
        let id = crate::random_id(16);
        let part = incoming.part.clone();
        self.files.incoming.insert(id.clone(), incoming);
        let event = self.file_event(&id, TransferState::Receiving, 0, None);
        self.emit(event).await;
        upload::spawn_download(id, url, part, self.verifier.clone(), self.link_tx.clone());
    }
}

mod proxy;
mod send;
mod upload;
