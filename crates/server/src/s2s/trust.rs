//! Which peer certificates Outpost checks, and how (`federation.pinned`,
//! `federation.trust_self_signed`).
//!
//! By default a server-to-server stream is encrypted but the peer's certificate is not
//! checked: dialback (XEP-0220) proves the domain, as on most of the federated network.
//! For a domain with a policy, the certificate is checked on both kinds of stream:
//! - on our links to it, the TLS handshake fails unless the peer's certificate is the
//!   pinned one (SHA-256 of the DER certificate) or, for a domain listed in
//!   `trust_self_signed`, names the domain (self-signed or not);
//! - on its streams to us, it may present a client certificate; when that certificate
//!   passes the same check for the domain its stream header claims, SASL EXTERNAL is
//!   offered (XEP-0178) and the pair is authenticated without a dialback round trip,
//!   which matters where we cannot connect back to it (a hub behind a firewall, or the
//!   WebSocket path). Our links present our own certificate to every peer, and use
//!   EXTERNAL when a peer with a policy offers it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::config::FederationConfig;
use crate::tls::{Fingerprint, TlsError, TlsIdentity};

/// The certificate policy and the rustls client configurations that follow from it.
pub(crate) struct Trust {
    policy: Arc<Policy>,
    provider: Arc<CryptoProvider>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// For peers without a policy: any certificate.
    unchecked: Arc<ClientConfig>,
    /// For peers with one, built on first use.
    checked: Mutex<HashMap<String, Arc<ClientConfig>>>,
}

#[derive(Debug, Default)]
struct Policy {
    pinned: HashMap<String, Fingerprint>,
    self_signed: HashSet<String>,
}

impl Policy {
    fn covers(&self, domain: &str) -> bool {
        self.pinned.contains_key(domain) || self.self_signed.contains(domain)
    }

    /// Whether `cert` is good for `domain`. A domain without a policy accepts nothing.
    fn accepts(&self, domain: &str, cert: &CertificateDer<'_>) -> bool {
        if let Some(pin) = self.pinned.get(domain) {
            return Fingerprint::of(cert.as_ref()) == *pin;
        }
        if !self.self_signed.contains(domain) {
            return false;
        }
        let (Ok(ee), Ok(name)) = (
            webpki::EndEntityCert::try_from(cert),
            ServerName::try_from(domain),
        ) else {
            return false;
        };
        ee.verify_is_valid_for_subject_name(&name).is_ok()
    }
}

impl Trust {
    pub(crate) fn new(
        config: &FederationConfig,
        identity: Option<&TlsIdentity>,
    ) -> Result<Trust, TlsError> {
        let policy = Arc::new(Policy {
            pinned: config.pinned.clone().into_iter().collect(),
            self_signed: config.trust_self_signed.iter().cloned().collect(),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let identity = identity.map(TlsIdentity::parts).transpose()?;
        let mut trust = Trust {
            policy,
            provider: provider.clone(),
            identity,
            unchecked: Arc::new(
                ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
            checked: Mutex::new(HashMap::new()),
        };
        trust.unchecked = trust.client_config_with(Arc::new(PeerVerifier {
            domain: None,
            policy: trust.policy.clone(),
            provider,
        }))?;
        Ok(trust)
    }

    fn client_config_with(
        &self,
        verifier: Arc<PeerVerifier>,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.identity {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs.clone(), key.clone_key())
                .map_err(TlsError::Mismatch)?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// Whether `domain` has a certificate policy: then SASL EXTERNAL is used with it.
    pub(crate) fn external_with(&self, domain: &str) -> bool {
        self.policy.covers(domain)
    }

    /// Whether a peer's certificate is good for `domain`.
    pub(crate) fn accepts(&self, domain: &str, cert: &CertificateDer<'_>) -> bool {
        self.policy.accepts(domain, cert)
    }

    /// The TLS client configuration for a link to `domain`.
    pub(crate) fn client_config(&self, domain: &str) -> Arc<ClientConfig> {
        if !self.policy.covers(domain) {
            return self.unchecked.clone();
        }
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = checked.get(domain) {
            return c.clone();
        }
        let verifier = Arc::new(PeerVerifier {
            domain: Some(domain.to_owned()),
            policy: self.policy.clone(),
            provider: self.provider.clone(),
        });
        // Built from the same parts as `unchecked`, which succeeded; fall back to it (and
        // fail the handshake in the verifier's stead) only if that changes.
        match self.client_config_with(verifier) {
            Ok(c) => {
                checked.insert(domain.to_owned(), c.clone());
                c
            }
            Err(_) => Arc::new(
                ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        }
    }
}

/// Checks a peer server's certificate against the policy for `domain`, or accepts any when
/// `domain` is `None`. The handshake signature is always checked, so the session is bound
/// to the certificate either way.
#[derive(Debug)]
struct PeerVerifier {
    domain: Option<String>,
    policy: Arc<Policy>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.domain {
            Some(domain) if !self.policy.accepts(domain, end_entity) => {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms(&self.provider))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms(&self.provider))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms(&self.provider).supported_schemes()
    }
}

/// On our s2s listeners: asks peers for a certificate without requiring one, and accepts
/// any (checking only the handshake signature). Whether it is good for the domain the peer
/// claims is decided after the stream header, by [`Trust::accepts`].
#[derive(Debug)]
pub(crate) struct AnyClientCert(pub(crate) Arc<CryptoProvider>);

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms(&self.0))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms(&self.0))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms(&self.0).supported_schemes()
    }
}

/// The provider's signature algorithms: both verifiers check every handshake signature
/// with them, whatever they decide about the certificate itself.
fn algorithms(provider: &CryptoProvider) -> &rustls::crypto::WebPkiSupportedAlgorithms {
    &provider.signature_verification_algorithms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_for(domain: &str) -> CertificateDer<'static> {
        let certified = rcgen::generate_simple_self_signed(vec![domain.to_owned()])
            .expect("rcgen makes a certificate");
        certified.cert.der().clone()
    }

    fn policy(pinned: &[(&str, &CertificateDer<'_>)], self_signed: &[&str]) -> Policy {
        Policy {
            pinned: pinned
                .iter()
                .map(|(d, c)| ((*d).to_owned(), Fingerprint::of(c.as_ref())))
                .collect(),
            self_signed: self_signed.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    #[test]
    fn a_pin_accepts_exactly_its_certificate() {
        let good = cert_for("b.example");
        let other = cert_for("b.example");
        let p = policy(&[("b.example", &good)], &[]);
        assert!(p.accepts("b.example", &good));
        assert!(!p.accepts("b.example", &other));
        assert!(!p.accepts("c.example", &good), "no policy, no acceptance");
    }

    #[test]
    fn self_signed_must_name_the_domain() {
        let p = policy(&[], &["b.example"]);
        assert!(p.accepts("b.example", &cert_for("b.example")));
        assert!(!p.accepts("b.example", &cert_for("c.example")));
        assert!(!p.accepts("b.example", &CertificateDer::from(b"garbage".to_vec())));
    }
}
