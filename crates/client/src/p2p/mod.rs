//! Direct links between two users' clients: the peer-to-peer half of the paper's hybrid.
//!
//! Each device has a key of its own for direct links, a self-signed certificate made on
//! first use and kept in the state directory ([`Identity`]). The client publishes its
//! SHA-256 in the account's PEP node `urn:outpost:p2p:0` (one item per device, readable
//! by the contacts who see the account's presence), and its available presence says
//! which device it is (`<device xmlns='urn:outpost:p2p:0' id='…'/>`). A contact's client
//! fetches that item through the servers and pins it per account and device the first
//! time, as it pins servers; a different key later is refused, naming both.
//!
//! The two clients then exchange connection candidates through the servers in the shape
//! of Jingle (XEP-0166): the one with the smaller full JID sends a `session-initiate`
//! whose transport (this namespace) lists `host:port` candidates, and the other dials
//! them in turn. The link is TLS 1.3 where each side shows its device certificate and
//! checks the other's against the pin; over it runs an XMPP stream (`jabber:client`)
//! whose first element names the Jingle session. The session side (who links with whom,
//! what goes over a link, the fallback to the servers) is in `crate::peers`; the tasks
//! that listen, dial and carry a link are in `link`. With no server reachable, devices
//! find each other on the LAN (`lan`, XEP-0174) and link with the keys pinned before.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub(crate) mod lan;
pub(crate) mod link;
mod tls;

pub(crate) use tls::Tls;

/// The namespace of Outpost's direct links: the PEP node, the presence element, the
/// Jingle description and transport, and the link's first element.
pub(crate) const NS: &str = "urn:outpost:p2p:0";
pub(crate) const JINGLE: &str = "urn:xmpp:jingle:1";
pub(crate) const PUBSUB: &str = "http://jabber.org/protocol/pubsub";

/// This device's key for direct links.
#[derive(Debug)]
pub struct Identity {
    device: String,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            device: self.device.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Why the device key cannot be read or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write the device key in {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the device key in {0} is not usable; remove the p2p-* files there to make a new one")]
    Unreadable(String),
    #[error("cannot make a device key: {0}")]
    Generate(String),
}

impl Identity {
    /// The key kept in `dir` (files `p2p-device`, `p2p-cert.pem`, `p2p-key.pem`), made
    /// there the first time.
    pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
        let files = [
            dir.join("p2p-device"),
            dir.join("p2p-cert.pem"),
            dir.join("p2p-key.pem"),
        ];
        if files.iter().all(|f| f.exists()) {
            return Identity::load(dir, &files);
        }
        let identity = Identity::generate()?;
        identity.save(dir, &files)?;
        Ok(identity)
    }

    /// A new key, for a device whose id is made at random.
    pub fn generate() -> Result<Identity, IdentityError> {
        let made = rcgen::generate_simple_self_signed(vec!["outpost-p2p".to_owned()])
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        Ok(Identity {
            device: crate::random_id(10),
            cert: made.cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into()),
        })
    }

    /// The same device with another key (what a reinstalled device looks like).
    pub fn with_new_key(&self) -> Result<Identity, IdentityError> {
        Ok(Identity {
            device: self.device.clone(),
            ..Identity::generate()?
        })
    }

    fn load(dir: &Path, [device, cert, key]: &[PathBuf; 3]) -> Result<Identity, IdentityError> {
        let unreadable = || IdentityError::Unreadable(dir.display().to_string());
        let device = read(device)?.trim().to_owned();
        let cert =
            CertificateDer::from_pem_slice(read(cert)?.as_bytes()).map_err(|_| unreadable())?;
        let key = PrivateKeyDer::from_pem_slice(read(key)?.as_bytes()).map_err(|_| unreadable())?;
        if device.is_empty() {
            return Err(unreadable());
        }
        Ok(Identity { device, cert, key })
    }

    fn save(&self, dir: &Path, [device, cert, key]: &[PathBuf; 3]) -> Result<(), IdentityError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| IdentityError::File { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cert_pem = pem("CERTIFICATE", self.cert.as_ref());
        let key_pem = pem("PRIVATE KEY", self.key.secret_der());
        write_private(key, &key_pem).map_err(io(key))?;
        std::fs::write(cert, cert_pem).map_err(io(cert))?;
        // The device id last: its presence says the other two are complete.
        std::fs::write(device, &self.device).map_err(io(device))
    }

    /// The device's id, the same for as long as its key files are kept.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The SHA-256 of the device's certificate, in hex: what contacts pin.
    pub fn fingerprint(&self) -> String {
        crate::trust::fingerprint(self.cert.as_ref())
    }
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::File {
        path: path.display().to_string(),
        source,
    })
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).write(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Direct links: this device's key, and where contacts' keys are pinned.
#[derive(Clone, Debug)]
pub struct P2pConfig {
    pub identity: Identity,
    /// One `account#device sha256-hex` per line.
    pub pins: PathBuf,
}

/// The addresses this machine offers for a direct link on `port`: the one it reaches its
/// server from first (on the LAN, that is the one the LAN sees), then its other
/// interfaces'. Loopback only when the server is reached over loopback.
pub(crate) fn candidates(server_side: Option<std::net::IpAddr>, port: u16) -> Vec<(String, u16)> {
    let mut ips: Vec<std::net::IpAddr> = server_side.into_iter().collect();
    let loopback = server_side.is_some_and(|ip| ip.is_loopback());
    for interface in if_addrs::get_if_addrs().unwrap_or_default() {
        let ip = interface.ip();
        let link_local = match ip {
            std::net::IpAddr::V4(v4) => v4.is_link_local(),
            std::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        if (ip.is_loopback() && !loopback) || link_local || ips.contains(&ip) {
            continue;
        }
        ips.push(ip);
    }
    ips.into_iter()
        // The listener is IPv4 (`link::listen`).
        .filter(|ip| ip.is_ipv4() && !ip.is_unspecified())
        .map(|ip| (ip.to_string(), port))
        .collect()
}

/// `<candidate host port priority/>` elements for a transport, the first preferred.
pub(crate) fn candidates_xml(candidates: &[(String, u16)]) -> String {
    candidates
        .iter()
        .enumerate()
        .map(|(i, (host, port))| {
            format!(
                "<candidate host='{}' port='{port}' priority='{}'/>",
                outpost_proto::xml::escape(host),
                1000 - i.min(999)
            )
        })
        .collect()
}
