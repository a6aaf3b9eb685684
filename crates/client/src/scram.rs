//! The client side of SCRAM-SHA-1 and SCRAM-SHA-256 without channel binding (RFC 5802 §3,
//! §7; RFC 7677), computed from RFC 5802 with the RustCrypto primitives, independently of
//! the server's own `outpost_proto::sasl`.
//!
//! This is the SCRAM message layer only: messages go in and out as the strings RFC 5802
//! defines, and whoever carries them in XMPP's `<auth/>`, `<challenge/>` and `<response/>`
//! does the base64 of RFC 6120 §6.4.2. Computing the salted password is a separate step
//! ([`Scram::salted_password`], or [`ScramClient::respond`] which does it), so that a
//! client may cache it per salt and iteration count as RFC 5802 §5.1 allows.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Digest as _;

/// The two SCRAM mechanisms, by hash function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scram {
    Sha1,
    Sha256,
}

impl Scram {
    /// The SASL mechanism name (RFC 5802 §4, RFC 7677 §2).
    pub fn mechanism(self) -> &'static str {
        match self {
            Scram::Sha1 => "SCRAM-SHA-1",
            Scram::Sha256 => "SCRAM-SHA-256",
        }
    }

    /// `Hi(password, salt, i)`, i.e. PBKDF2 with HMAC of this hash (RFC 5802 §2.2): the
    /// SaltedPassword.
    pub fn salted_password(self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Scram::Sha1 => {
                let mut out = [0u8; 20];
                pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password.as_bytes(), salt, iterations, &mut out);
                out.to_vec()
            }
            Scram::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
                    password.as_bytes(),
                    salt,
                    iterations,
                    &mut out,
                );
                out.to_vec()
            }
        }
    }

    /// `HMAC(key, data)` (RFC 5802 §2.2).
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Scram::Sha1 => {
                let mut m = Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC takes any key");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Scram::Sha256 => {
                let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    /// `H(data)` (RFC 5802 §2.2).
    pub fn h(self, data: &[u8]) -> Vec<u8> {
        match self {
            Scram::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Scram::Sha256 => sha2::Sha256::digest(data).to_vec(),
        }
    }
}

/// What is wrong with a server-first-message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("no {0} attribute in the server-first-message")]
    Missing(&'static str),
    #[error("the server nonce does not extend the client's")]
    Nonce,
    #[error("the salt is not base64")]
    Salt,
    #[error("the iteration count is not a number")]
    Iterations,
}

/// One exchange, from the client-first-message to the check of the server's signature.
#[derive(Clone, Debug)]
pub struct ScramClient {
    mech: Scram,
    gs2_header: String,
    client_first_bare: String,
    nonce: String,
}

/// A server-first-message and the parts of it a client needs (RFC 5802 §5.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFirst {
    /// The message itself, which the proof covers.
    pub message: String,
    /// The client nonce with the server's part appended.
    pub nonce: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

/// The client-final-message and what the server must answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFinal {
    /// `c=…,r=…,p=…` (RFC 5802 §7), not yet base64 for XMPP.
    pub message: String,
    /// The server-final-message a server that knows the key sends: `v=…`.
    pub expected_server_final: String,
    pub iterations: u32,
}

/// `saslname` escaping (RFC 5802 §5.1).
fn saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

impl ScramClient {
    /// Starts an exchange for `user` with the given client nonce (callers pass one in, so
    /// transcripts can be fixed and load generators cheap).
    pub fn new(mech: Scram, user: &str, client_nonce: &str) -> ScramClient {
        ScramClient {
            mech,
            gs2_header: "n,,".to_owned(),
            client_first_bare: format!("n={},r={client_nonce}", saslname(user)),
            nonce: client_nonce.to_owned(),
        }
    }

    /// The same exchange asking to act as `authzid` (the GS2 header's `a=`, RFC 5802 §7).
    pub fn with_authzid(mut self, authzid: &str) -> ScramClient {
        self.gs2_header = format!("n,a={},", saslname(authzid));
        self
    }

    pub fn mech(&self) -> Scram {
        self.mech
    }

    /// The client-first-message: the GS2 header and `n=…,r=…`.
    pub fn client_first(&self) -> String {
        format!("{}{}", self.gs2_header, self.client_first_bare)
    }

    /// Reads the nonce, salt and iteration count, checking that the server's nonce extends
    /// ours.
    pub fn parse_server_first(&self, server_first: &str) -> Result<ServerFirst, ScramError> {
        let attr = |key: &'static str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(key))
                .ok_or(ScramError::Missing(key))
        };
        let nonce = attr("r=")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() {
            return Err(ScramError::Nonce);
        }
        Ok(ServerFirst {
            message: server_first.to_owned(),
            nonce: nonce.to_owned(),
            salt: B64.decode(attr("s=")?).map_err(|_| ScramError::Salt)?,
            iterations: attr("i=")?.parse().map_err(|_| ScramError::Iterations)?,
        })
    }

    /// The client-final-message with its proof, from a salted password the caller
    /// computed (or cached) for `server_first.salt` and `server_first.iterations`.
    pub fn finish(&self, server_first: &ServerFirst, salted: &[u8]) -> ClientFinal {
        let m = self.mech;
        let client_key = m.hmac(salted, b"Client Key");
        let stored_key = m.h(&client_key);
        let without_proof = format!(
            "c={},r={}",
            B64.encode(&self.gs2_header),
            server_first.nonce
        );
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, server_first.message
        );
        let signature = m.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = m.hmac(salted, b"Server Key");
        let server_signature = m.hmac(&server_key, auth_message.as_bytes());
        ClientFinal {
            message: format!("{without_proof},p={}", B64.encode(proof)),
            expected_server_final: format!("v={}", B64.encode(server_signature)),
            iterations: server_first.iterations,
        }
    }

    /// [`ScramClient::parse_server_first`], the salted password, then
    /// [`ScramClient::finish`].
    pub fn respond(&self, server_first: &str, password: &str) -> Result<ClientFinal, ScramError> {
        let parsed = self.parse_server_first(server_first)?;
        let salted = self
            .mech
            .salted_password(password, &parsed.salt, parsed.iterations);
        Ok(self.finish(&parsed, &salted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exchanges of RFC 5802 §5 (SHA-1) and RFC 7677 §3 (SHA-256), user "user",
    /// password "pencil".
    #[test]
    fn rfc_examples() {
        let cases = [
            (
                Scram::Sha1,
                "fyko+d2lbbFgONRv9qkxdawL",
                "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
                "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
                "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
            ),
            (
                Scram::Sha256,
                "rOprNGfwEbeRWgbNEkqO",
                "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
                "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
            ),
        ];
        for (mech, nonce, server_first, client_final, server_final) in cases {
            let client = ScramClient::new(mech, "user", nonce);
            assert_eq!(client.client_first(), format!("n,,n=user,r={nonce}"));
            let answer = client.respond(server_first, "pencil").expect("valid");
            assert_eq!(answer.message, client_final, "{mech:?}");
            assert_eq!(answer.expected_server_final, server_final, "{mech:?}");
        }
    }

    #[test]
    fn a_server_nonce_must_extend_ours() {
        let client = ScramClient::new(Scram::Sha256, "user", "abc");
        assert!(matches!(
            client.parse_server_first("r=xyz123,s=QSXCR+Q6sek8bf92,i=4096"),
            Err(ScramError::Nonce)
        ));
        assert!(matches!(
            client.parse_server_first("r=abc123,i=4096"),
            Err(ScramError::Missing("s="))
        ));
    }
}
