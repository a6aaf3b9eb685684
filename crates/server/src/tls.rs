//! TLS identity, certificate fingerprints and the rustls configuration of our listeners.
//!
//! The server never reads key files itself: the binary loads them (or asks
//! [`TlsIdentity::self_signed`] for a new pair on first start and keeps it in the data
//! directory) and hands over PEM text.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{ValueError, string_value};

/// What is wrong with a TLS identity or its configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("bad certificate PEM")]
    CertificatePem(#[source] rustls::pki_types::pem::Error),
    #[error("no certificate in the PEM text")]
    NoCertificate,
    #[error("bad private key PEM")]
    KeyPem(#[source] rustls::pki_types::pem::Error),
    #[error("certificate and key do not match")]
    Mismatch(#[source] rustls::Error),
    #[error("cannot set up TLS")]
    Config(#[source] rustls::Error),
    #[error("cannot generate a certificate")]
    Generate(#[source] rcgen::Error),
    #[error("cannot read the certificate: {0}")]
    Unreadable(String),
}

/// How long a generated self-signed certificate is valid.
pub const SELF_SIGNED_VALIDITY: time::Duration = time::Duration::days(365);

/// A certificate as operators see it. Times are Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    /// The DNS names it is valid for.
    pub names: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub fingerprint: Fingerprint,
}

/// A certificate chain and its private key, PEM-encoded.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_chain_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// A new self-signed certificate for `domains` (ECDSA P-256), named after the first
    /// domain (what clients show when they ask the user to trust it), valid from an hour ago
    /// for [`SELF_SIGNED_VALIDITY`]. Meant for a first start and for tests; the binary
    /// renews it before it ends.
    pub fn self_signed(domains: &[String]) -> Result<TlsIdentity, TlsError> {
        let mut params =
            rcgen::CertificateParams::new(domains.to_vec()).map_err(TlsError::Generate)?;
        let mut name = rcgen::DistinguishedName::new();
        if let Some(first) = domains.first() {
            name.push(rcgen::DnType::CommonName, first.as_str());
        }
        name.push(rcgen::DnType::OrganizationName, "Outpost (self-signed)");
        params.distinguished_name = name;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + SELF_SIGNED_VALIDITY;
        let key = rcgen::KeyPair::generate().map_err(TlsError::Generate)?;
        let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
        Ok(TlsIdentity {
            cert_chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// What the leaf certificate says of itself, for operators (`outpost admin cert`) and
    /// for renewing a generated one.
    pub fn certificate_info(&self) -> Result<CertificateInfo, TlsError> {
        let (certs, _) = self.parts()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&certs[0])
            .map_err(|e| TlsError::Unreadable(e.to_string()))?;
        let names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let validity = cert.validity();
        Ok(CertificateInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            names,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            fingerprint: Fingerprint::of(&certs[0]),
        })
    }

    /// The certificate chain and key, parsed.
    pub(crate) fn parts(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let certs = CertificateDer::pem_slice_iter(self.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(TlsError::CertificatePem)?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let key =
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(TlsError::KeyPem)?;
        Ok((certs, key))
    }

    /// The SHA-256 fingerprint of the leaf certificate, what clients show when they ask a
    /// user to trust it.
    pub fn fingerprint(&self) -> Result<Fingerprint, TlsError> {
        let (certs, _) = self.parts()?;
        Ok(Fingerprint::of(&certs[0]))
    }

    /// Whether the chain and key parse and belong together: what starting a server with them
    /// checks (`outpost config check`).
    pub fn check(&self) -> Result<(), TlsError> {
        self.server_config(&[]).map(|_| ())
    }

    /// A rustls configuration for this identity. `alpn` lists the protocols offered
    /// (XEP-0368 asks direct-TLS clients to use `xmpp-client`).
    pub(crate) fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        self.build(alpn, None)
    }

    /// The same for server-to-server listeners: peers are asked for a client certificate,
    /// which is checked later against `federation.pinned` / `trust_self_signed` (see
    /// `s2s::trust`) for SASL EXTERNAL; peers without one still connect.
    pub(crate) fn s2s_server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        self.build(alpn, Some(Arc::new(crate::s2s::AnyClientCert(provider))))
    }

    fn build(
        &self,
        alpn: &[&[u8]],
        client_auth: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let (certs, key) = self.parts()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let builder = match client_auth {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(TlsError::Mismatch)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// The SHA-256 of a DER certificate. Written as 64 hex digits, in pairs separated by colons
/// or not (the form `openssl x509 -fingerprint -sha256` prints), and printed that way.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(cert_der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(cert_der).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for Fingerprint {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Fingerprint, ValueError> {
        let bad = || ValueError::new(text, "is not a SHA-256 fingerprint (64 hex digits)");
        let hex: String = text.chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

string_value!(Fingerprint);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons_and_print_like_openssl() {
        let plain = "ab".repeat(32);
        let f: Fingerprint = plain.parse().expect("hex");
        assert_eq!(f.as_bytes(), &[0xab; 32]);
        let printed = f.to_string();
        assert_eq!(printed.len(), 32 * 3 - 1);
        assert!(printed.starts_with("AB:AB:"));
        assert_eq!(printed.parse::<Fingerprint>().expect("round trip"), f);
        assert!("ab".repeat(31).parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
        // A multi-byte character must not split a hex pair.
        assert!(
            format!("é{}", "a".repeat(62))
                .parse::<Fingerprint>()
                .is_err()
        );
    }

    #[test]
    fn a_generated_certificate_names_its_domains_and_lasts_a_year() {
        let domains = ["a.test".to_owned(), "b.test".to_owned()];
        let id = TlsIdentity::self_signed(&domains).expect("cert");
        let (certs, _) = id.parts().expect("parts");
        let info = id.certificate_info().expect("info");
        assert_eq!(info.fingerprint, id.fingerprint().expect("fingerprint"));
        assert_eq!(info.fingerprint, Fingerprint::of(&certs[0]));
        assert!(info.subject.contains("CN=a.test"), "{}", info.subject);
        assert_eq!(info.names, domains);
        let lifetime = info.not_after - info.not_before;
        assert!(
            (365 * 86_400..=366 * 86_400).contains(&lifetime),
            "{lifetime}"
        );
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(info.not_before <= now && now < info.not_after);
    }
}
