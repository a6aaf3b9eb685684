//! TLS identity and rustls configuration for client listeners.
//!
//! The server never reads key files itself: the binary loads them (or asks
//! [`TlsIdentity::self_signed`] for a new pair on first start and keeps it in the data
//! directory) and hands over PEM text.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::ServerError;

/// A certificate chain and its private key, PEM-encoded.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// A new self-signed certificate for `domains` (ECDSA P-256). Clients must be told to
    /// trust it; it is meant for a first start and for tests.
    pub fn self_signed(domains: &[String]) -> Result<TlsIdentity, ServerError> {
        let certified = rcgen::generate_simple_self_signed(domains.to_vec())
            .map_err(|e| ServerError::Tls(format!("cannot generate a certificate: {e}")))?;
        Ok(TlsIdentity {
            cert_chain_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        })
    }

    /// The certificate chain and key, parsed.
    pub(crate) fn parts(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ServerError> {
        let certs = CertificateDer::pem_slice_iter(self.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ServerError::Tls(format!("bad certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(ServerError::Tls("no certificate in PEM".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| ServerError::Tls(format!("bad private key PEM: {e}")))?;
        Ok((certs, key))
    }

    /// A rustls configuration for this identity. `alpn` lists the protocols offered
    /// (XEP-0368 asks direct-TLS clients to use `xmpp-client`).
    pub(crate) fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, ServerError> {
        self.build(alpn, None)
    }

    /// The same for server-to-server listeners: peers are asked for a client certificate,
    /// which is checked later against `federation.pinned` / `trust_self_signed` (see
    /// `s2s::trust`) for SASL EXTERNAL; peers without one still connect.
    pub(crate) fn s2s_server_config(
        &self,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, ServerError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        self.build(alpn, Some(Arc::new(crate::s2s::AnyClientCert(provider))))
    }

    fn build(
        &self,
        alpn: &[&[u8]],
        client_auth: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Result<Arc<ServerConfig>, ServerError> {
        let (certs, key) = self.parts()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        let builder = match client_auth {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| ServerError::Tls(format!("certificate and key do not match: {e}")))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}
