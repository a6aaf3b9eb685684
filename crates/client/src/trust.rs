//! Which server certificates the client accepts.
//!
//! A site's Outpost starts with a certificate it generated itself, which no public
//! authority signed, and a LAN often has no authority of its own. So, as SSH does, the
//! client pins what it saw the first time it reached a server (the SHA-256 of the
//! certificate, per `host:port`, in a file the caller names) and refuses a different one
//! later with a message that says so. A deployment with its own authority gives its
//! certificate instead ([`Trust::Authority`]), and then names are checked as usual.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use sha2::Digest as _;

/// How server certificates are checked.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Certificates signed by these authorities (PEM), for the server's domain.
    Authority(String),
    /// Trust on first use: the certificate each `host:port` showed first, kept in this
    /// file (one `host:port sha256-hex` per line).
    Pinned(PathBuf),
}

/// Why a certificate was refused, in words for the user.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("no usable certificate in the authority file")]
    NoAuthority,
    #[error("TLS cannot be set up: {0}")]
    Tls(String),
    #[error("cannot read or write the pinned certificates in {path}: {source}")]
    PinFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The pins, loaded once and appended to as new servers (or peers' devices) are met.
#[derive(Debug)]
pub(crate) struct Pins {
    path: PathBuf,
    known: HashMap<String, String>,
}

impl Pins {
    pub(crate) fn load(path: PathBuf) -> Result<Pins, TrustError> {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(pin_error(&path, source)),
        };
        let known = text
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(server, hash)| (server.to_owned(), hash.trim().to_owned()))
            .collect();
        Ok(Pins { path, known })
    }

    /// The hash pinned for `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.known.get(key).map(String::as_str)
    }

    pub(crate) fn remember(&mut self, server: &str, hash: &str) -> Result<(), TrustError> {
        use std::io::Write as _;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| pin_error(&self.path, e))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| pin_error(&self.path, e))?;
        writeln!(file, "{server} {hash}").map_err(|e| pin_error(&self.path, e))?;
        file.sync_all().map_err(|e| pin_error(&self.path, e))?;
        self.known.insert(server.to_owned(), hash.to_owned());
        Ok(())
    }
}

fn pin_error(path: &std::path::Path, source: std::io::Error) -> TrustError {
    TrustError::PinFile {
        path: path.display().to_string(),
        source,
    }
}

/// The TLS client configurations of one client: one per server address when pinning.
#[derive(Clone, Debug)]
pub(crate) struct Verifier {
    provider: Arc<CryptoProvider>,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Authority(Arc<ClientConfig>),
    Pinned(Arc<Mutex<Pins>>),
}

impl Verifier {
    pub(crate) fn new(trust: &Trust) -> Result<Verifier, TrustError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let kind = match trust {
            Trust::Authority(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
                    roots.add(cert).map_err(|_| TrustError::NoAuthority)?;
                }
                if roots.is_empty() {
                    return Err(TrustError::NoAuthority);
                }
                let config = ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| TrustError::Tls(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Kind::Authority(Arc::new(config))
            }
            Trust::Pinned(path) => Kind::Pinned(Arc::new(Mutex::new(Pins::load(path.clone())?))),
        };
        Ok(Verifier { provider, kind })
    }

    /// The configuration for a connection to `server` (`host:port`), and, when pinning,
    /// what the handshake saw there.
    pub(crate) fn config_for(
        &self,
        server: &str,
    ) -> Result<(Arc<ClientConfig>, Option<Arc<Seen>>), TrustError> {
        match &self.kind {
            Kind::Authority(config) => Ok((config.clone(), None)),
            Kind::Pinned(pins) => {
                let seen = Arc::new(Seen::default());
                let verifier = PinVerifier {
                    provider: self.provider.clone(),
                    server: server.to_owned(),
                    pinned: pins.lock().map_or(None, |p| p.known.get(server).cloned()),
                    seen: seen.clone(),
                };
                let config = ClientConfig::builder_with_provider(self.provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| TrustError::Tls(e.to_string()))?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth();
                Ok((Arc::new(config), Some(seen)))
            }
        }
    }

    /// Records the certificate a server showed the first time (after a login there
    /// succeeded, so a pin is never taken from a server that is not ours).
    pub(crate) fn remember(&self, server: &str, seen: &Seen) -> Result<(), TrustError> {
        let Kind::Pinned(pins) = &self.kind else {
            return Ok(());
        };
        let Some(hash) = seen.hash() else {
            return Ok(());
        };
        let mut pins = pins.lock().unwrap_or_else(|p| p.into_inner());
        if pins.known.contains_key(server) {
            return Ok(());
        }
        pins.remember(server, &hash)
    }
}

/// What the handshake of one connection saw: the certificate's hash, and whether it
/// differed from the pin.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    inner: Mutex<(Option<String>, Option<String>)>,
}

impl Seen {
    /// The SHA-256 of the certificate the server showed, in hex.
    pub(crate) fn hash(&self) -> Option<String> {
        self.inner.lock().map_or(None, |s| s.0.clone())
    }

    /// The pin the certificate did not match, if it did not.
    pub(crate) fn mismatch(&self) -> Option<String> {
        self.inner.lock().map_or(None, |s| s.1.clone())
    }
}

#[derive(Debug)]
pub(crate) struct PinVerifier {
    pub(crate) provider: Arc<CryptoProvider>,
    pub(crate) server: String,
    pub(crate) pinned: Option<String>,
    pub(crate) seen: Arc<Seen>,
}

/// The SHA-256 of a certificate, in lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let hash = fingerprint(end_entity.as_ref());
        let mismatch = self.pinned.as_ref().filter(|pin| **pin != hash).cloned();
        if let Ok(mut seen) = self.seen.inner.lock() {
            *seen = (Some(hash), mismatch.clone());
        }
        match mismatch {
            Some(_) => Err(rustls::Error::General(format!(
                "the certificate of {} is not the one pinned",
                self.server
            ))),
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
