//! SCRAM-SHA-1 without channel binding (RFC 5802 §3, §5), as every server compared here
//! offers it, on [`outpost_testkit::scram`]; this module adds the base64 of XMPP's SASL
//! elements and the salted-password cache.
//!
//! The salted password is cached per (salt, iteration count), which RFC 5802 §5.1 allows a
//! client to do: the login-storm scenario then measures the server's work, not the
//! generator's PBKDF2.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use outpost_testkit::scram::{self, Scram};

/// (salt, iteration count, password).
type SaltKey = (Vec<u8>, u32, String);

/// What the client remembers between its first and final message.
pub struct ScramClient(scram::ScramClient);

/// The client-final message and the server signature the server must answer with.
pub struct ScramFinal {
    /// Base64, as it goes into `<response/>`.
    pub client_final: String,
    pub expected_server_final: String,
    pub iterations: u32,
}

/// Salted passwords already computed, shared by all connections of one run.
#[derive(Default)]
pub struct SaltCache {
    map: Mutex<HashMap<SaltKey, Vec<u8>>>,
}

impl SaltCache {
    fn salted(&self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        let key = (salt.to_vec(), iterations, password.to_owned());
        if let Some(s) = self.lock().get(&key) {
            return s.clone();
        }
        let salted = Scram::Sha1.salted_password(password, salt, iterations);
        self.lock().insert(key, salted.clone());
        salted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SaltKey, Vec<u8>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ScramClient {
    /// Starts an exchange; returns the state and the base64 client-first message.
    pub fn start(user: &str, client_nonce: &str) -> (ScramClient, String) {
        let client = scram::ScramClient::new(Scram::Sha1, user, client_nonce);
        let msg = B64.encode(client.client_first());
        (ScramClient(client), msg)
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
        let parsed = self
            .0
            .parse_server_first(&server_first)
            .map_err(|e| e.to_string())?;
        let salted = cache.salted(password, &parsed.salt, parsed.iterations);
        let fin = self.0.finish(&parsed, &salted);
        Ok(ScramFinal {
            client_final: B64.encode(fin.message),
            expected_server_final: fin.expected_server_final,
            iterations: fin.iterations,
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
