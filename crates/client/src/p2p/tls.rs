//! TLS for direct links: 1.3 only, each side showing its device certificate. The side
//! that dials checks the other's against the pin before anything is sent; the side that
//! accepts lets any certificate through the handshake (proof that the peer holds its key
//! is still checked) and compares it with the pin of the session the peer names, which
//! only the first element over the link tells.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::Identity;
use crate::trust::{PinVerifier, Seen};

/// The TLS side of this device's links.
#[derive(Clone)]
pub(crate) struct Tls {
    provider: Arc<CryptoProvider>,
    identity: Identity,
    acceptor: TlsAcceptor,
}

impl Tls {
    pub(crate) fn new(identity: &Identity) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(Arc::new(AnyDevice {
                provider: provider.clone(),
            }))
            .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
            .map_err(|e| e.to_string())?;
        Ok(Tls {
            provider,
            identity: identity.clone(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// A connector that accepts only the certificate whose SHA-256 is `pinned`; what the
    /// peer showed is in the [`Seen`].
    pub(crate) fn connector(
        &self,
        peer: &str,
        pinned: &str,
    ) -> Result<(TlsConnector, Arc<Seen>), String> {
        let seen = Arc::new(Seen::default());
        let verifier = PinVerifier {
            provider: self.provider.clone(),
            server: peer.to_owned(),
            pinned: Some(pinned.to_owned()),
            seen: seen.clone(),
        };
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(
                vec![self.identity.cert.clone()],
                self.identity.key.clone_key(),
            )
            .map_err(|e| e.to_string())?;
        Ok((TlsConnector::from(Arc::new(config)), seen))
    }
}

/// Requires a client certificate and its proof of the key; which one it is, is checked
/// once the peer has said which session it comes for.
#[derive(Debug)]
struct AnyDevice {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyDevice {
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
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Links are TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
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
