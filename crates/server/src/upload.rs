//! HTTP file upload (XEP-0363): the upload service of each domain, at `upload.<domain>`,
//! hands a local user's client a slot (a PUT URL with a secret header, and the GET URL
//! to share); the HTTP service (`HttpService`, the web crate) takes the PUT and serves
//! the GETs through [`Uploads`], which keeps the rules: who may PUT what, once, and when
//! a file has had its time.
//!
//! A slot's id is 32 random letters and digits (190 bits), so GET URLs cannot be guessed.
//! The PUT secret is a second such id, kept only as its SHA-256: a GET URL that leaks
//! before the upload ends does not let anyone else write the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use jid::Jid;
use minidom::Element;
use outpost_proto::forms::Form;
use outpost_proto::stanza::{self, Condition, ErrorType, StanzaError, ns};
use outpost_store::{Store, StoreError, UploadSlot};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::ListenerKind;
use crate::config::UploadConfig;
use crate::delivery::{Component, Delivery};
use crate::journal::Pending;
use crate::tasks::Tasks;

pub(crate) const NS_UPLOAD: &str = "urn:xmpp:http:upload:0";
/// Where files are served: `<base>/upload/<slot>/<filename>`.
pub const PATH: &str = "/upload";
/// A slot's PUT must start within this.
const PUT_WINDOW: Duration = Duration::from_secs(10 * 60);
/// A slot whose file was never stored is forgotten after this (long after any PUT that
/// started in its window has ended).
const PENDING_KEPT: Duration = Duration::from_secs(24 * 3600);
/// Filenames longer than this are refused (they end up in URLs and headers).
const MAX_FILENAME_BYTES: usize = 255;
const MAX_CONTENT_TYPE_BYTES: usize = 127;
/// Characters kept as they are in a URL path segment: RFC 3986 unreserved.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a PUT is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PutRefused {
    /// No such slot, or not under this filename.
    NotFound,
    /// No secret, or the wrong one.
    NotAuthorized,
    /// The file was stored already.
    AlreadyStored,
    /// The slot was not used in time.
    Expired,
    /// The request does not announce the size the slot was made for.
    WrongSize {
        expected: u64,
    },
    /// The request's content type is not the slot's.
    WrongType,
    Store(String),
}

/// A file to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFile {
    pub slot: String,
    pub size: u64,
    pub content_type: Option<String>,
}

/// The upload rules and slots, for the HTTP service; clones share them.
#[derive(Clone)]
pub struct Uploads {
    store: Arc<dyn Store>,
    dir: PathBuf,
    expire_days: u32,
}

impl Uploads {
    pub(crate) fn new(store: Arc<dyn Store>, dir: PathBuf, config: &UploadConfig) -> Uploads {
        Uploads {
            store,
            dir,
            expire_days: config.expire_days,
        }
    }

    /// The directory the files are kept in, one per slot, named by it.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Whether a PUT may write `slot`'s file: `bearer` is the secret from its
    /// `Authorization` header, `length` its `Content-Length`.
    pub async fn check_put(
        &self,
        slot: &str,
        filename: &str,
        bearer: Option<&str>,
        length: Option<u64>,
        content_type: Option<&str>,
    ) -> Result<StoredFile, PutRefused> {
        let s = self.slot(slot, filename).await?;
        let given = Sha256::digest(bearer.unwrap_or_default().as_bytes());
        if bearer.is_none() || !bool::from(given.as_slice().ct_eq(&s.put_token)) {
            return Err(PutRefused::NotAuthorized);
        }
        if s.completed_ms.is_some() {
            return Err(PutRefused::AlreadyStored);
        }
        if s.created_ms < crate::clock::now_ms() - window_ms(PUT_WINDOW) {
            return Err(PutRefused::Expired);
        }
        if length != Some(s.size) {
            return Err(PutRefused::WrongSize { expected: s.size });
        }
        if let (Some(wanted), Some(given)) = (&s.content_type, content_type)
            && !wanted.eq_ignore_ascii_case(given.trim())
        {
            return Err(PutRefused::WrongType);
        }
        Ok(StoredFile {
            slot: s.slot,
            size: s.size,
            content_type: s.content_type,
        })
    }

    /// The file is on disk: GETs may have it from now on. False if the slot was taken by
    /// another PUT meanwhile (its file is then the other's).
    pub async fn stored(&self, slot: &str) -> Result<bool, PutRefused> {
        (self
            .store
            .upload_complete(slot, crate::clock::now_ms())
            .await)
            .map_err(|e| PutRefused::Store(e.to_string()))
    }

    /// A stored file, by the slot and filename of its URL.
    pub async fn file(&self, slot: &str, filename: &str) -> Option<StoredFile> {
        let s = self.slot(slot, filename).await.ok()?;
        s.completed_ms?;
        Some(StoredFile {
            slot: s.slot,
            size: s.size,
            content_type: s.content_type,
        })
    }

    /// Slots that have had their time (never stored after a day, or stored longer than
    /// `upload.expire_days`), oldest first, at most `limit`: delete the file, then
    /// [`Uploads::forget`] the slot.
    pub async fn expired(&self, limit: u32) -> Vec<String> {
        let now = crate::clock::now_ms();
        let days = Duration::from_secs(u64::from(self.expire_days) * 86_400);
        let completed_before = match self.expire_days {
            0 => i64::MIN,
            _ => now - window_ms(days),
        };
        match (self.store)
            .uploads_expired(now - window_ms(PENDING_KEPT), completed_before, limit)
            .await
        {
            Ok(slots) => slots.into_iter().map(|s| s.slot).collect(),
            Err(e) => {
                warn!(error = %e, "cannot list expired uploads");
                Vec::new()
            }
        }
    }

    pub async fn forget(&self, slot: &str) {
        if let Err(e) = self.store.upload_remove(slot).await {
            warn!(error = %e, "cannot forget an upload");
        }
    }

    async fn slot(&self, slot: &str, filename: &str) -> Result<UploadSlot, PutRefused> {
        match self.store.upload_slot(slot).await {
            Ok(Some(s)) if s.filename == filename => Ok(s),
            Ok(_) => Err(PutRefused::NotFound),
            Err(e) => Err(PutRefused::Store(e.to_string())),
        }
    }
}

fn window_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The upload service of one domain: answers disco and slot requests.
pub(crate) struct UploadService {
    pub(crate) service: String,
    /// `https://host:port`, without a trailing slash.
    pub(crate) base_url: String,
    pub(crate) config: UploadConfig,
    pub(crate) uploads: Uploads,
    pub(crate) delivery: Weak<Delivery>,
    pub(crate) tasks: Tasks,
}

impl Component for UploadService {
    fn take(&self, el: Element) -> Result<Option<Pending>, Element> {
        if el.name() != "iq" || !matches!(el.attr("type"), Some("get" | "set")) {
            return Ok(None);
        }
        let Some(d) = self.delivery.upgrade() else {
            return Ok(None);
        };
        let (name, namespace) = crate::services::payload_key(&el);
        let answer = match (name.as_str(), namespace.as_str()) {
            ("query", ns::DISCO_INFO) => Ok(Some(self.disco())),
            ("query", ns::DISCO_ITEMS) => {
                Ok(Some(Element::builder("query", ns::DISCO_ITEMS).build()))
            }
            ("request", NS_UPLOAD) if el.attr("type") == Some("get") => {
                let (service, d2) = (self.slot_maker(), d.clone());
                self.tasks.spawn(async move {
                    let reply = match service.request(&d2, &el).await {
                        Ok(slot) => with_payload(&el, &service.service, slot),
                        Err(e) => stanza::error_reply(&el, &e),
                    };
                    d2.send(reply);
                });
                return Ok(None);
            }
            _ => Err(StanzaError::new(Condition::ServiceUnavailable)),
        };
        let reply = match answer {
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
        Ok(None)
    }
}

/// Registers the upload service of each domain with delivery, giving out URLs on the first
/// HTTPS listener (or `upload.url`). `None` when there is none.
pub(crate) fn register(
    config: &crate::config::Config,
    delivery: &Arc<Delivery>,
    listeners: &[(ListenerKind, SocketAddr, tokio::net::TcpListener)],
    tasks: &Tasks,
) -> Option<Uploads> {
    let (_, addr, _) = listeners.iter().find(|(k, ..)| *k == ListenerKind::Https)?;
    let uploads = Uploads::new(
        delivery.store().clone(),
        config.data_dir.join("uploads"),
        &config.upload,
    );
    for (service, domain) in config.upload_domains() {
        let base_url = match &config.upload.url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let host = crate::proxy65::advertised_host(None, *addr, &domain);
                match host.contains(':') {
                    true => format!("https://[{host}]:{}", addr.port()),
                    false => format!("https://{host}:{}", addr.port()),
                }
            }
        };
        let upload = UploadService {
            service: service.clone(),
            base_url,
            config: config.upload.clone(),
            uploads: uploads.clone(),
            delivery: Arc::downgrade(delivery),
            tasks: tasks.clone(),
        };
        delivery.register(&service, &domain, Arc::new(upload));
    }
    Some(uploads)
}

fn with_payload(request: &Element, from: &str, payload: Element) -> Element {
    let mut r = stanza::iq_result(request, Some(from));
    r.append_child(payload);
    r
}

impl UploadService {
    /// What the slot-making task needs, without the task handle.
    fn slot_maker(&self) -> SlotMaker {
        SlotMaker {
            service: self.service.clone(),
            base_url: self.base_url.clone(),
            max_file_bytes: self.config.max_file_bytes,
            quota_bytes: self.config.quota_bytes,
            store: self.uploads.store.clone(),
        }
    }

    /// XEP-0363 §2: the identity, the feature and the largest file.
    fn disco(&self) -> Element {
        let mut q = Element::builder("query", ns::DISCO_INFO)
            .append(
                Element::builder("identity", ns::DISCO_INFO)
                    .attr(stanza::name("category"), "store")
                    .attr(stanza::name("type"), "file")
                    .attr(stanza::name("name"), "HTTP file upload")
                    .build(),
            )
            .append(
                Element::builder("feature", ns::DISCO_INFO)
                    .attr(stanza::name("var"), NS_UPLOAD)
                    .build(),
            )
            .build();
        let max = self.config.max_file_bytes.to_string();
        q.append_child(
            Form::new("result", NS_UPLOAD)
                .field("max-file-size", "text-single", None, &[&max])
                .build(),
        );
        q
    }
}

/// Makes slots (XEP-0363 §4), on a task of its own: the store is written first.
struct SlotMaker {
    service: String,
    base_url: String,
    max_file_bytes: u64,
    quota_bytes: u64,
    store: Arc<dyn Store>,
}

impl SlotMaker {
    async fn request(&self, d: &Delivery, el: &Element) -> Result<Element, StanzaError> {
        let from = el
            .attr("from")
            .and_then(|f| Jid::new(f).ok())
            .ok_or(Condition::BadRequest)?;
        // The quota is a local user's: others upload to their own server.
        if from.node().is_none() || !d.is_local(from.domain().as_str()) {
            return Err(
                StanzaError::with_type(ErrorType::Cancel, Condition::NotAllowed)
                    .text("only users of this server may upload here"),
            );
        }
        let request = el
            .get_child("request", NS_UPLOAD)
            .ok_or(Condition::BadRequest)?;
        let (filename, size, content_type) = parse_request(request)?;
        if size > self.max_file_bytes {
            return Err(self.too_large());
        }
        let slot = crate::ids::random_id(32);
        let token = crate::ids::random_id(32);
        let row = UploadSlot {
            slot: slot.clone(),
            owner: from.to_bare().to_string(),
            filename: filename.clone(),
            size,
            content_type,
            put_token: Sha256::digest(token.as_bytes()).to_vec(),
            created_ms: crate::clock::now_ms(),
            completed_ms: None,
        };
        match self.store.upload_reserve(&row, self.quota_bytes).await {
            Ok(()) => {}
            Err(StoreError::UploadQuotaExceeded { .. }) => {
                return Err(
                    StanzaError::with_type(ErrorType::Wait, Condition::ResourceConstraint)
                        .text("upload quota reached: older files must expire first"),
                );
            }
            Err(e) => {
                warn!(error = %e, "cannot store an upload slot");
                return Err(Condition::InternalServerError.into());
            }
        }
        info!(owner = %row.owner, size, "upload slot");
        Ok(self.slot_element(&slot, &filename, &token))
    }

    fn too_large(&self) -> StanzaError {
        let max = Element::builder("max-file-size", NS_UPLOAD)
            .append(self.max_file_bytes.to_string())
            .build();
        StanzaError::with_type(ErrorType::Modify, Condition::NotAcceptable)
            .text(format!(
                "files are limited to {} bytes",
                self.max_file_bytes
            ))
            .application(
                Element::builder("file-too-large", NS_UPLOAD)
                    .append(max)
                    .build(),
            )
    }

    fn slot_element(&self, slot: &str, filename: &str, token: &str) -> Element {
        let url = format!(
            "{}{PATH}/{slot}/{}",
            self.base_url,
            utf8_percent_encode(filename, SEGMENT)
        );
        let header = Element::builder("header", NS_UPLOAD)
            .attr(stanza::name("name"), "Authorization")
            .append(format!("Bearer {token}"))
            .build();
        Element::builder("slot", NS_UPLOAD)
            .append(
                Element::builder("put", NS_UPLOAD)
                    .attr(stanza::name("url"), url.as_str())
                    .append(header)
                    .build(),
            )
            .append(
                Element::builder("get", NS_UPLOAD)
                    .attr(stanza::name("url"), url.as_str())
                    .build(),
            )
            .build()
    }
}

/// The filename, size and content type of a request, checked.
fn parse_request(request: &Element) -> Result<(String, u64, Option<String>), StanzaError> {
    let bad = |what: &str| StanzaError::new(Condition::BadRequest).text(what.to_owned());
    let filename = request.attr("filename").ok_or_else(|| bad("no filename"))?;
    let fine_name = !filename.is_empty()
        && filename.len() <= MAX_FILENAME_BYTES
        && filename != "."
        && filename != ".."
        && !filename
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if !fine_name {
        return Err(bad("the filename must be a plain file name"));
    }
    let size = request
        .attr("size")
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| bad("the size must be a number of bytes"))?;
    let content_type = match request.attr("content-type").map(str::trim) {
        None | Some("") => None,
        Some(t) if is_media_type(t) => Some(t.to_owned()),
        Some(_) => return Err(bad("the content-type must be a media type")),
    };
    Ok((filename.to_owned(), size, content_type))
}

/// `type/subtype` (RFC 6838 §4.2 characters), no parameters.
fn is_media_type(t: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    t.len() <= MAX_CONTENT_TYPE_BYTES
        && t.split_once('/')
            .is_some_and(|(ty, sub)| token(ty) && token(sub))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(attrs: &str) -> Element {
        format!("<request xmlns='{NS_UPLOAD}' {attrs}/>")
            .parse()
            .unwrap()
    }

    #[test]
    fn requests_are_checked() {
        let ok = parse_request(&request(
            "filename='holiday photo.jpg' size='23456' content-type='image/jpeg'",
        ));
        assert_eq!(
            ok.unwrap(),
            (
                "holiday photo.jpg".to_owned(),
                23456,
                Some("image/jpeg".to_owned())
            )
        );
        assert_eq!(
            parse_request(&request("filename='a' size='0'")).unwrap().2,
            None
        );
        for bad in [
            "size='1'",
            "filename='' size='1'",
            "filename='../etc/passwd' size='1'",
            "filename='..' size='1'",
            "filename='a\\b' size='1'",
            "filename='a' size='-1'",
            "filename='a' size='many'",
            "filename='a' size='1' content-type='text/html; charset=utf-8'",
            "filename='a' size='1' content-type='image'",
        ] {
            assert!(parse_request(&request(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_encode_the_filename() {
        let maker = SlotMaker {
            service: "upload.example.org".to_owned(),
            base_url: "https://example.org:5281".to_owned(),
            max_file_bytes: 10,
            quota_bytes: 10,
            store: Arc::new(outpost_store::MemoryStore::new()),
        };
        let slot = maker.slot_element("S1", "a b/ü?.png", "T");
        let get = slot.get_child("get", NS_UPLOAD).unwrap();
        assert_eq!(
            get.attr("url"),
            Some("https://example.org:5281/upload/S1/a%20b%2F%C3%BC%3F.png")
        );
        let put = slot.get_child("put", NS_UPLOAD).unwrap();
        assert_eq!(
            put.get_child("header", NS_UPLOAD).unwrap().text(),
            "Bearer T"
        );
    }
}
