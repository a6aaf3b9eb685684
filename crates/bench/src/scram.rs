//! The client side of SCRAM-SHA-1 without channel binding (RFC 5802 §3, §5), as every
//! server compared here offers it.
//!
//! The salted password is cached per (salt, iteration count), which RFC 5802 §5.1 allows a
//! client to do: the login-storm scenario then measures the server's work, not the
//! generator's PBKDF2.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha1::{Digest as _, Sha1};

type SaltedPassword = [u8; 20];
/// (salt, iteration count, password).
type SaltKey = (Vec<u8>, u32, String);

/// What the client remembers between its first and final message.
pub struct ScramClient {
    client_first_bare: String,
    nonce: String,
}

/// The client-final message and the server signature the server must answer with.
pub struct ScramFinal {
    pub client_final: String,
    pub expected_server_final: String,
    pub iterations: u32,
}

/// Salted passwords already computed, shared by all connections of one run.
#[derive(Default)]
pub struct SaltCache {
    map: Mutex<HashMap<SaltKey, SaltedPassword>>,
}

impl SaltCache {
    fn salted(&self, password: &str, salt: &[u8], iterations: u32) -> SaltedPassword {
        let key = (salt.to_vec(), iterations, password.to_owned());
        if let Some(s) = self.lock().get(&key) {
            return *s;
        }
        let mut out = [0u8; 20];
        pbkdf2::pbkdf2_hmac::<Sha1>(password.as_bytes(), salt, iterations, &mut out);
        self.lock().insert(key, out);
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SaltKey, SaltedPassword>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 20] {
    let mut m = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// `saslname` escaping of the user name (RFC 5802 §5.1).
fn escape_name(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

impl ScramClient {
    /// Starts an exchange; returns the state and the base64 client-first message.
    pub fn start(user: &str, client_nonce: &str) -> (ScramClient, String) {
        let client_first_bare = format!("n={},r={client_nonce}", escape_name(user));
        let msg = B64.encode(format!("n,,{client_first_bare}"));
        (
            ScramClient {
                client_first_bare,
                nonce: client_nonce.to_owned(),
            },
            msg,
        )
    }

    /// Answers the server-first message (base64 as received).
    pub fn respond(
        &self,
        server_first_b64: &[u8],
        password: &str,
        cache: &SaltCache,
    ) -> Result<ScramFinal, String> {
        let raw = B64
            .decode(server_first_b64.trim_ascii())
            .map_err(|e| format!("server-first is not base64: {e}"))?;
        let server_first =
            String::from_utf8(raw).map_err(|_| "server-first is not UTF-8".to_owned())?;
        let attr = |key: &str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(key))
                .ok_or_else(|| format!("no {key} in server-first"))
        };
        let nonce = attr("r=")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() {
            return Err("server nonce does not extend ours".to_owned());
        }
        let salt = B64
            .decode(attr("s=")?)
            .map_err(|e| format!("salt is not base64: {e}"))?;
        let iterations: u32 = attr("i=")?
            .parse()
            .map_err(|_| "bad iteration count".to_owned())?;
        let salted = cache.salted(password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 20] = Sha1::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        Ok(ScramFinal {
            client_final: B64.encode(format!("{without_proof},p={}", B64.encode(proof))),
            expected_server_final: format!("v={}", B64.encode(server_signature)),
            iterations,
        })
    }
}

/// Checks the server-final message carried in `<success/>` (base64; may be empty for
/// servers that send it as a challenge instead, RFC 6120 §6.4.6).
pub fn check_server_final(success_b64: &[u8], expected: &str) -> Result<(), String> {
    let text = success_b64.trim_ascii();
    if text.is_empty() || text == b"=" {
        return Ok(());
    }
    let raw = B64
        .decode(text)
        .map_err(|e| format!("server-final is not base64: {e}"))?;
    if raw == expected.as_bytes() {
        Ok(())
    } else {
        Err("server signature does not match: the server does not know the key".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SCRAM-SHA-1 example of RFC 5802 §5.
    #[test]
    fn rfc5802_example() {
        let (client, first) = ScramClient::start("user", "fyko+d2lbbFgONRv9qkxdawL");
        assert_eq!(
            B64.decode(first).unwrap(),
            b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
        );
        let server_first =
            B64.encode("r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096");
        let fin = client
            .respond(server_first.as_bytes(), "pencil", &SaltCache::default())
            .unwrap();
        assert_eq!(
            B64.decode(fin.client_final).unwrap(),
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        assert_eq!(fin.expected_server_final, "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
        assert_eq!(fin.iterations, 4096);
    }
}
