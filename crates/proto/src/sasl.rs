//! The server side of SASL: SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677) and PLAIN
//! (RFC 4616), as used by XMPP (RFC 6120 §6).
//!
//! SCRAM is a state machine the caller drives one message at a time: [`ScramServer::client_first`]
//! names the user, the caller fetches that user's [`ScramKeys`] however long that takes, then
//! [`ScramServer::server_first`] and [`ScramServer::client_final`] finish the exchange. Pausing
//! for storage in the middle is why this is written here on the RustCrypto primitives rather than
//! with a callback-driven SASL library. Only the verifiers of RFC 5802 §3 (salt, iteration count,
//! StoredKey, ServerKey) are ever needed, so the store never holds a password or a
//! password-equivalent SaltedPassword.
//!
//! Usernames and passwords go through SASLprep (RFC 4013), proofs are compared in constant time,
//! and an unknown user gets a plausible answer so that the exchange fails only at the end, the
//! same way a wrong password does (RFC 5802 §9 on user enumeration).
//!
//! Not here: channel binding (no `-PLUS` mechanisms are offered, so a client asking for binding
//! with `p=` is refused), the base64 layer of the XMPP `<auth/>` element (the caller's), and
//! randomness: nonces and the fake-salt seed come from the caller.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The iteration count given to unknown users, and a sensible one for new verifiers: RFC 7677
/// §4 asks for at least 4096.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Length of the fake salt given to unknown users; stores should use the same for real ones.
pub const SALT_LEN: usize = 16;

/// The hash function of a SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScramHash {
    /// SCRAM-SHA-1 (RFC 5802).
    Sha1,
    /// SCRAM-SHA-256 (RFC 7677).
    Sha256,
}

impl ScramHash {
    /// The SASL mechanism name.
    pub fn mechanism(self) -> &'static str {
        match self {
            ScramHash::Sha1 => "SCRAM-SHA-1",
            ScramHash::Sha256 => "SCRAM-SHA-256",
        }
    }

    /// The size of the hash output, and so of StoredKey, ServerKey and the proof.
    pub fn output_len(self) -> usize {
        match self {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
        }
    }

    /// HMAC(key, data). HMAC accepts keys of any length, so the error branch cannot be taken; an
    /// empty result would simply fail every comparison.
    fn hmac(self, key: &[u8], data: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac>(mac: Result<M, hmac::digest::InvalidLength>, data: &[&[u8]]) -> Vec<u8> {
            let Ok(mut mac) = mac else {
                return Vec::new();
            };
            for part in data {
                mac.update(part);
            }
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            ScramHash::Sha1 => run(Hmac::<Sha1>::new_from_slice(key), data),
            ScramHash::Sha256 => run(Hmac::<Sha256>::new_from_slice(key), data),
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    /// Hi() of RFC 5802 §2.2, which is PBKDF2 with HMAC as the PRF.
    fn hi(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0; self.output_len()];
        match self {
            ScramHash::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
            ScramHash::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
            }
        }
        out
    }
}

/// The SCRAM verifiers stored for one user and one hash (RFC 5802 §3).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// The salt.
    pub salt: Vec<u8>,
    /// The PBKDF2 iteration count.
    pub iterations: u32,
    /// H(HMAC(SaltedPassword, "Client Key")).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

impl fmt::Debug for ScramKeys {
    /// The keys are left out: ServerKey lets its holder impersonate the server to the user.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramKeys")
            .field("salt_len", &self.salt.len())
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Why a SASL exchange failed. [`SaslError::condition`] gives the element to put in
/// `<failure/>`; the variants without a source in this module are there so the caller can use
/// one error type for the whole negotiation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The message does not follow the mechanism's syntax.
    #[error("malformed SASL message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding (`p=`), but no `-PLUS` mechanism is offered.
    #[error("channel binding requested but not offered")]
    ChannelBindingNotSupported,
    /// The client used a mandatory SCRAM extension (`m=`), which we do not know (RFC 5802 §5.1).
    #[error("unsupported mandatory SCRAM extension")]
    UnsupportedExtension,
    /// A message arrived when another one was expected.
    #[error("SASL message out of order")]
    OutOfOrder,
    /// The credentials are wrong, or the user does not exist.
    #[error("not authorized")]
    NotAuthorized,
    /// The authorization identity is not one this user may act as.
    #[error("invalid authorization identity")]
    InvalidAuthzid,
    /// The password contains characters SASLprep prohibits (RFC 4013 §2.3).
    #[error("password rejected by SASLprep")]
    InvalidPassword,
    /// An iteration count of zero.
    #[error("invalid iteration count")]
    InvalidIterations,
    /// The server could not complete the exchange (a bad nonce from the caller, storage down).
    #[error("temporary authentication failure")]
    TemporaryAuthFailure,
    /// The mechanism is not offered.
    #[error("invalid mechanism")]
    InvalidMechanism,
    /// The mechanism is only offered over TLS.
    #[error("encryption required")]
    EncryptionRequired,
    /// The base64 around the SASL message is invalid.
    #[error("incorrect base64 encoding")]
    IncorrectEncoding,
    /// The account is disabled.
    #[error("account disabled")]
    AccountDisabled,
    /// The credentials have expired.
    #[error("credentials expired")]
    CredentialsExpired,
    /// The client aborted the exchange.
    #[error("aborted")]
    Aborted,
    /// The mechanism is weaker than policy allows for this account.
    #[error("mechanism too weak")]
    MechanismTooWeak,
}

impl SaslError {
    /// The RFC 6120 §6.5 SASL failure condition.
    pub fn condition(&self) -> &'static str {
        match self {
            SaslError::Malformed(_)
            | SaslError::ChannelBindingNotSupported
            | SaslError::UnsupportedExtension
            | SaslError::OutOfOrder => "malformed-request",
            SaslError::NotAuthorized | SaslError::InvalidPassword => "not-authorized",
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::InvalidIterations | SaslError::TemporaryAuthFailure => {
                "temporary-auth-failure"
            }
            SaslError::InvalidMechanism => "invalid-mechanism",
            SaslError::EncryptionRequired => "encryption-required",
            SaslError::IncorrectEncoding => "incorrect-encoding",
            SaslError::AccountDisabled => "account-disabled",
            SaslError::CredentialsExpired => "credentials-expired",
            SaslError::Aborted => "aborted",
            SaslError::MechanismTooWeak => "mechanism-too-weak",
        }
    }
}

/// Computes the SCRAM verifiers for `password` (after SASLprep, RFC 5802 §2.2).
pub fn derive_keys(
    hash: ScramHash,
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> Result<ScramKeys, SaslError> {
    if iterations == 0 {
        return Err(SaslError::InvalidIterations);
    }
    let password = stringprep::saslprep(password).map_err(|_| SaslError::InvalidPassword)?;
    let salted = hash.hi(password.as_bytes(), salt, iterations);
    let client_key = hash.hmac(&salted, &[b"Client Key"]);
    Ok(ScramKeys {
        salt: salt.to_vec(),
        iterations,
        stored_key: hash.digest(&client_key),
        server_key: hash.hmac(&salted, &[b"Server Key"]),
    })
}

/// Checks a plaintext password (from PLAIN) against stored SCRAM verifiers, comparing StoredKey
/// in constant time.
pub fn verify_password(keys: &ScramKeys, hash: ScramHash, password: &str) -> bool {
    match derive_keys(hash, password, &keys.salt, keys.iterations) {
        Ok(derived) => derived.stored_key.ct_eq(&keys.stored_key).into(),
        Err(_) => false,
    }
}

/// Where a SCRAM exchange stands.
enum State {
    Start,
    ClientFirst {
        gs2_header: Vec<u8>,
        client_first_bare: String,
        client_nonce: String,
        username: String,
    },
    ServerFirst {
        gs2_header: Vec<u8>,
        client_first_bare: String,
        server_first: String,
        nonce: String,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
        /// Set when the exchange must fail whatever the proof: an unknown user, or a server-side
        /// problem. The proof is still checked so that both take the same time.
        doomed: Option<SaslError>,
    },
    Done,
}

/// The server side of one SCRAM exchange.
pub struct ScramServer {
    hash: ScramHash,
    fake_iterations: u32,
    state: State,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Start => "start",
            State::ClientFirst { .. } => "client-first",
            State::ServerFirst { .. } => "server-first",
            State::Done => "done",
        };
        f.debug_struct("ScramServer")
            .field("hash", &self.hash)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// A new exchange for the mechanism using `hash`.
    pub fn new(hash: ScramHash) -> Self {
        ScramServer {
            hash,
            fake_iterations: DEFAULT_ITERATIONS,
            state: State::Start,
        }
    }

    /// The hash of this exchange's mechanism.
    pub fn hash(&self) -> ScramHash {
        self.hash
    }

    /// The iteration count announced to unknown users; set it to what real verifiers use so the
    /// two look alike. Defaults to [`DEFAULT_ITERATIONS`].
    pub fn set_fake_iterations(&mut self, iterations: u32) {
        self.fake_iterations = iterations.max(1);
    }

    /// Parses the client-first-message (RFC 5802 §7) and returns the username after SASLprep
    /// and the authorization identity, if the client gave one. The caller decides whether the
    /// user may act as that identity (RFC 6120 §6.3.8).
    pub fn client_first(&mut self, msg: &[u8]) -> Result<(String, Option<String>), SaslError> {
        if !matches!(self.state, State::Start) {
            self.state = State::Done;
            return Err(SaslError::OutOfOrder);
        }
        self.state = State::Done;
        let msg = std::str::from_utf8(msg).map_err(|_| SaslError::Malformed("not UTF-8"))?;

        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(SaslError::Malformed("no GS2 header"))?;
        match flag {
            // "y" means the client could bind but believes we cannot, which is true: we offer
            // no -PLUS mechanism. If we ever do, "y" must be refused as a downgrade (RFC 5802 §6).
            "n" | "y" => {}
            _ if flag.starts_with("p=") => return Err(SaslError::ChannelBindingNotSupported),
            _ => return Err(SaslError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(SaslError::Malformed("no GS2 header"))?;
        let authzid = match authzid {
            "" => None,
            _ => match authzid.strip_prefix("a=").and_then(decode_saslname) {
                Some(a) if !a.is_empty() => Some(a),
                _ => return Err(SaslError::Malformed("bad authzid")),
            },
        };
        let gs2_header = msg
            .get(..msg.len().saturating_sub(bare.len()))
            .unwrap_or_default()
            .as_bytes()
            .to_vec();

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        let mut attrs = bare.split(',');
        let first = attrs.next().unwrap_or_default();
        if first.starts_with("m=") {
            return Err(SaslError::UnsupportedExtension);
        }
        let username = first
            .strip_prefix("n=")
            .ok_or(SaslError::Malformed("no username"))?;
        let username = decode_saslname(username).ok_or(SaslError::Malformed("bad username"))?;
        let username = match stringprep::saslprep(&username) {
            Ok(Cow::Borrowed(u)) => u.to_owned(),
            Ok(Cow::Owned(u)) => u,
            Err(_) => return Err(SaslError::Malformed("username rejected by SASLprep")),
        };
        if username.is_empty() {
            return Err(SaslError::Malformed("empty username"));
        }
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(SaslError::Malformed("no nonce"))?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(is_printable) {
            return Err(SaslError::Malformed("bad nonce"));
        }
        // Optional extensions are ignored, as RFC 5802 §5.1 allows, but must be well-formed.
        if !attrs.all(is_attr_val) {
            return Err(SaslError::Malformed("bad extension"));
        }

        self.state = State::ClientFirst {
            gs2_header,
            client_first_bare: bare.to_owned(),
            client_nonce: client_nonce.to_owned(),
            username: username.clone(),
        };
        Ok((username, authzid))
    }

    /// Builds the server-first-message (RFC 5802 §7).
    ///
    /// `keys` is `None` for an unknown user: the answer then carries a salt derived from
    /// `fake_salt_seed` and the username, and the exchange fails at [`Self::client_final`] like a
    /// wrong password. With a seed that stays the same for the server's lifetime, repeated
    /// attempts see the same salt, just as for a real user. `server_nonce` must be random
    /// printable ASCII other than `,`; other characters are dropped, and if none are left the
    /// exchange fails with `temporary-auth-failure`.
    ///
    /// Called out of order, it returns an empty message and the exchange fails.
    pub fn server_first(
        &mut self,
        keys: Option<ScramKeys>,
        server_nonce: &str,
        fake_salt_seed: &[u8],
    ) -> Vec<u8> {
        let State::ClientFirst {
            gs2_header,
            client_first_bare,
            client_nonce,
            username,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Vec::new();
        };
        let hash = self.hash;
        let mut doomed = None;
        let keys = match keys {
            Some(keys) => keys,
            None => {
                doomed = Some(SaslError::NotAuthorized);
                let derive = |label: &[u8], len: usize| {
                    let mut v =
                        ScramHash::Sha256.hmac(fake_salt_seed, &[label, username.as_bytes()]);
                    v.resize(len, 0);
                    v
                };
                ScramKeys {
                    salt: derive(b"outpost fake salt\0", SALT_LEN),
                    iterations: self.fake_iterations,
                    stored_key: derive(b"outpost fake stored key\0", hash.output_len()),
                    server_key: derive(b"outpost fake server key\0", hash.output_len()),
                }
            }
        };
        if keys.iterations == 0 {
            doomed = Some(SaslError::InvalidIterations);
        }
        let server_nonce: String = server_nonce
            .chars()
            .filter(|c| u8::try_from(*c).is_ok_and(is_printable))
            .collect();
        if server_nonce.is_empty() {
            doomed = Some(SaslError::TemporaryAuthFailure);
        }
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&keys.salt),
            keys.iterations
        );
        let out = server_first.as_bytes().to_vec();
        self.state = State::ServerFirst {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
            stored_key: keys.stored_key,
            server_key: keys.server_key,
            doomed,
        };
        out
    }

    /// Verifies the client-final-message (RFC 5802 §7) and returns the server-final-message
    /// (`v=…`) to send with `<success/>`.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let State::ServerFirst {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
            stored_key,
            server_key,
            doomed,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(SaslError::OutOfOrder);
        };
        let hash = self.hash;
        let msg = std::str::from_utf8(msg).map_err(|_| SaslError::Malformed("not UTF-8"))?;

        // client-final-message = channel-binding "," nonce ["," extensions] "," proof
        let (without_proof, proof) = msg
            .rsplit_once(',')
            .ok_or(SaslError::Malformed("no proof"))?;
        let proof = proof
            .strip_prefix("p=")
            .ok_or(SaslError::Malformed("no proof"))?;
        let proof = BASE64
            .decode(proof)
            .map_err(|_| SaslError::Malformed("proof is not base64"))?;
        if proof.len() != hash.output_len() {
            return Err(SaslError::Malformed("proof has the wrong length"));
        }
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(SaslError::Malformed("no channel binding"))?;
        let binding = BASE64
            .decode(binding)
            .map_err(|_| SaslError::Malformed("channel binding is not base64"))?;
        let their_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(SaslError::Malformed("no nonce"))?;
        if !attrs.all(is_attr_val) {
            return Err(SaslError::Malformed("bad extension"));
        }
        // Without channel binding, c= carries just the GS2 header of the first message
        // (RFC 5802 §7); anything else means the two messages do not belong together.
        if binding != gs2_header || their_nonce != nonce {
            return Err(SaslError::NotAuthorized);
        }

        // RFC 5802 §3: recover ClientKey from the proof and check that it hashes to StoredKey.
        let auth_message = [
            client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_signature = hash.hmac(&stored_key, &auth_message);
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature.iter())
            .map(|(p, s)| p ^ s)
            .collect();
        let matches: bool = hash.digest(&client_key).ct_eq(&stored_key).into();
        if let Some(e) = doomed {
            return Err(e);
        }
        if !matches {
            return Err(SaslError::NotAuthorized);
        }
        let server_signature = hash.hmac(&server_key, &auth_message);
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }
}

/// `printable` of RFC 5802 §7: %x21-2B / %x2D-7E, i.e. visible ASCII except `,`.
fn is_printable(b: u8) -> bool {
    matches!(b, 0x21..=0x2B | 0x2D..=0x7E)
}

/// `attr-val = ALPHA "=" value` (RFC 5802 §7), the shape of an extension.
fn is_attr_val(a: &str) -> bool {
    let mut bytes = a.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && bytes.next() == Some(b'=')
        && a.len() > 2
}

/// Decodes `saslname` (RFC 5802 §5.1): `=2C` is `,` and `=3D` is `=`; any other `=` and NUL are
/// invalid, and the server must then fail the exchange.
fn decode_saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(['=', '\0']) {
        out.push_str(rest.get(..i)?);
        let tail = rest.get(i..)?;
        if let Some(t) = tail.strip_prefix("=2C") {
            out.push(',');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("=3D") {
            out.push('=');
            rest = t;
        } else {
            return None;
        }
    }
    out.push_str(rest);
    Some(out)
}

/// A PLAIN message (RFC 4616 §2).
#[derive(Clone, PartialEq, Eq)]
pub struct Plain {
    /// The authorization identity, if the client gave one.
    pub authzid: Option<String>,
    /// The authentication identity, after SASLprep.
    pub authcid: String,
    /// The password as sent; [`verify_password`] applies SASLprep.
    pub password: String,
}

impl fmt::Debug for Plain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plain")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .finish_non_exhaustive()
    }
}

/// Parses `[authzid] NUL authcid NUL passwd` (RFC 4616 §2).
pub fn parse_plain(msg: &[u8]) -> Result<Plain, SaslError> {
    let msg = std::str::from_utf8(msg).map_err(|_| SaslError::Malformed("not UTF-8"))?;
    let mut parts = msg.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed(
            "PLAIN needs exactly two NUL separators",
        ));
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed("empty authcid or password"));
    }
    let authcid = stringprep::saslprep(authcid)
        .map_err(|_| SaslError::Malformed("authcid rejected by SASLprep"))?
        .into_owned();
    if authcid.is_empty() {
        return Err(SaslError::Malformed("empty authcid"));
    }
    Ok(Plain {
        authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
        authcid,
        password: password.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        BASE64.decode(s).unwrap()
    }

    /// Runs one exchange against a known user and returns the server's two messages.
    fn exchange(
        hash: ScramHash,
        keys: Option<ScramKeys>,
        client_first: &str,
        server_nonce: &str,
        client_final: &str,
    ) -> (String, Result<String, SaslError>) {
        let mut server = ScramServer::new(hash);
        server.client_first(client_first.as_bytes()).unwrap();
        let first = server.server_first(keys, server_nonce, b"seed");
        let last = server.client_final(client_final.as_bytes());
        (
            String::from_utf8(first).unwrap(),
            last.map(|v| String::from_utf8(v).unwrap()),
        )
    }

    /// The client side of RFC 5802 §3, to produce proofs in tests.
    fn client_final_for(
        hash: ScramHash,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        without_proof: &str,
    ) -> String {
        let mut salt = None;
        let mut iterations = 0;
        for attr in server_first.split(',') {
            if let Some(s) = attr.strip_prefix("s=") {
                salt = Some(b64(s));
            }
            if let Some(i) = attr.strip_prefix("i=") {
                iterations = i.parse().unwrap();
            }
        }
        let salted = hash.hi(password.as_bytes(), &salt.unwrap(), iterations);
        let client_key = hash.hmac(&salted, &[b"Client Key"]);
        let stored_key = hash.digest(&client_key);
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hash.hmac(&stored_key, &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        format!("{without_proof},p={}", BASE64.encode(proof))
    }

    #[test]
    fn rfc5802_scram_sha1_example() {
        let keys = derive_keys(ScramHash::Sha1, "pencil", &b64("QSXCR+Q6sek8bf92"), 4096).unwrap();
        let (first, last) = exchange(
            ScramHash::Sha1,
            Some(keys),
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            "3rfcNHYJY1ZVvWVs7j",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        );
        assert_eq!(
            first,
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        );
        assert_eq!(last.unwrap(), "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
    }

    #[test]
    fn rfc7677_scram_sha256_example() {
        let keys = derive_keys(
            ScramHash::Sha256,
            "pencil",
            &b64("W22ZaJ0SNY7soEsUEjb6gQ=="),
            4096,
        )
        .unwrap();
        let (first, last) = exchange(
            ScramHash::Sha256,
            Some(keys),
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        );
        assert_eq!(
            first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        assert_eq!(
            last.unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    fn keys(hash: ScramHash, password: &str) -> ScramKeys {
        derive_keys(hash, password, b"0123456789abcdef", 4096).unwrap()
    }

    /// A full exchange where the client knows `client_password` and the server holds `stored`.
    fn attempt(
        hash: ScramHash,
        stored: Option<ScramKeys>,
        client_first: &str,
        client_password: &str,
    ) -> Result<Vec<u8>, SaslError> {
        let mut server = ScramServer::new(hash);
        server.client_first(client_first.as_bytes())?;
        let first = String::from_utf8(server.server_first(stored, "SERVERNONCE", b"seed")).unwrap();
        let (gs2, bare) = client_first.split_at(client_first.find("n=").unwrap());
        let nonce = first.split(',').next().unwrap();
        let without_proof = format!("c={},{nonce}", BASE64.encode(gs2));
        let last = client_final_for(hash, client_password, bare, &first, &without_proof);
        server.client_final(last.as_bytes())
    }

    #[test]
    fn right_and_wrong_passwords() {
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            let stored = keys(hash, "secret");
            assert!(attempt(hash, Some(stored.clone()), "n,,n=juliet,r=abc", "secret").is_ok());
            assert_eq!(
                attempt(hash, Some(stored.clone()), "n,,n=juliet,r=abc", "Secret"),
                Err(SaslError::NotAuthorized)
            );
            assert_eq!(SaslError::NotAuthorized.condition(), "not-authorized");
            // The `y` flag works the same, with its own GS2 header in c=.
            assert!(attempt(hash, Some(stored), "y,,n=juliet,r=abc", "secret").is_ok());
        }
    }

    #[test]
    fn unknown_user_fails_only_at_the_end() {
        let mut server = ScramServer::new(ScramHash::Sha256);
        server.client_first(b"n,,n=nobody,r=abc").unwrap();
        let first = String::from_utf8(server.server_first(None, "xyz", b"seed")).unwrap();
        let salt = first
            .split(",s=")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        assert_eq!(b64(salt).len(), SALT_LEN);
        assert!(first.starts_with("r=abcxyz,") && first.ends_with(",i=4096"));
        // The same seed and user give the same salt, like a real account.
        let mut again = ScramServer::new(ScramHash::Sha256);
        again.client_first(b"n,,n=nobody,r=def").unwrap();
        let first_again = String::from_utf8(again.server_first(None, "uvw", b"seed")).unwrap();
        assert!(first_again.contains(&format!(",s={salt},")));
        for password in ["", "pencil"] {
            assert_eq!(
                attempt(ScramHash::Sha256, None, "n,,n=nobody,r=abc", password),
                Err(SaslError::NotAuthorized)
            );
        }
    }

    #[test]
    fn gs2_header_variants() {
        let mut s = ScramServer::new(ScramHash::Sha1);
        assert_eq!(
            s.client_first(b"p=tls-exporter,,n=user,r=abc"),
            Err(SaslError::ChannelBindingNotSupported)
        );
        assert_eq!(
            SaslError::ChannelBindingNotSupported.condition(),
            "malformed-request"
        );
        let mut s = ScramServer::new(ScramHash::Sha1);
        assert_eq!(
            s.client_first(b"n,a=admin=40example.com,n=user,r=abc"),
            Err(SaslError::Malformed("bad authzid"))
        );
        let mut s = ScramServer::new(ScramHash::Sha1);
        assert_eq!(
            s.client_first(b"n,a=juliet@example.com,n=us=2Cer=3D,r=abc"),
            Ok(("us,er=".to_owned(), Some("juliet@example.com".to_owned())))
        );
        let stored = keys(ScramHash::Sha1, "pw");
        assert!(attempt(ScramHash::Sha1, Some(stored), "n,a=x@y,n=u,r=abc", "pw").is_ok());
    }

    #[test]
    fn username_is_saslprepped() {
        let mut s = ScramServer::new(ScramHash::Sha256);
        // RFC 4013 §3: the soft hyphen maps to nothing, NBSP to a space.
        assert_eq!(
            s.client_first("n,,n=I\u{AD}X\u{A0}Y,r=abc".as_bytes())
                .unwrap()
                .0,
            "IX Y"
        );
        let mut s = ScramServer::new(ScramHash::Sha256);
        assert!(s.client_first("n,,n=a\u{7}b,r=abc".as_bytes()).is_err());
        let mut s = ScramServer::new(ScramHash::Sha256);
        assert!(s.client_first("n,,n=\u{AD},r=abc".as_bytes()).is_err());
    }

    #[test]
    fn malformed_client_first_messages() {
        let cases: &[&[u8]] = &[
            b"",
            b"n",
            b"n,",
            b"n,,",
            b"x,,n=user,r=abc",
            b"n,,m=ext,n=user,r=abc",
            b"n,,n=,r=abc",
            b"n,,n=us=er,r=abc",
            b"n,,n=us=2,r=abc",
            b"n,,n=user",
            b"n,,n=user,r=",
            b"n,,n=user,x=abc",
            b"n,,r=abc,n=user",
            b"n,,n=user,r=a\x7fc",
            b"n,,n=user,r=abc,",
            b"n,,n=user,r=abc,1=x",
            b"n,a=,n=user,r=abc",
            b"n,,n=us\0er,r=abc",
            b"n,,n=\xff,r=abc",
            b"\xff\xfe",
        ];
        for case in cases {
            let mut s = ScramServer::new(ScramHash::Sha1);
            let err = s.client_first(case).unwrap_err();
            assert_eq!(err.condition(), "malformed-request", "{case:?}");
        }
        let mut s = ScramServer::new(ScramHash::Sha1);
        assert_eq!(
            s.client_first(b"n,,m=x,n=u,r=a"),
            Err(SaslError::UnsupportedExtension)
        );
        // Extensions after the nonce are allowed and ignored.
        let mut s = ScramServer::new(ScramHash::Sha1);
        assert!(s.client_first(b"n,,n=user,r=abc,x=ext").is_ok());
    }

    #[test]
    fn malformed_client_final_messages() {
        let fresh = || {
            let mut s = ScramServer::new(ScramHash::Sha1);
            s.client_first(b"n,,n=user,r=abc").unwrap();
            s.server_first(Some(keys(ScramHash::Sha1, "pw")), "def", b"seed");
            s
        };
        let good_proof = BASE64.encode([0u8; 20]);
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "malformed-request"),
            ("c=biws,r=abcdef".into(), "malformed-request"),
            (format!("c=biws,p={good_proof}"), "malformed-request"),
            (
                format!("r=abcdef,c=biws,p={good_proof}"),
                "malformed-request",
            ),
            (
                format!("c=b!ws,r=abcdef,p={good_proof}"),
                "malformed-request",
            ),
            ("c=biws,r=abcdef,p=AAAA".into(), "malformed-request"),
            ("c=biws,r=abcdef,p=not base64".into(), "malformed-request"),
            (
                format!("c=biws,r=abcdef,p={good_proof},x=1"),
                "malformed-request",
            ),
            (
                format!("c=biws,r=abcdef,,p={good_proof}"),
                "malformed-request",
            ),
            (format!("c=eSws,r=abcdef,p={good_proof}"), "not-authorized"),
            (format!("c=biws,r=abcdeX,p={good_proof}"), "not-authorized"),
            (format!("c=biws,r=abc,p={good_proof}"), "not-authorized"),
            (format!("c=biws,r=abcdef,p={good_proof}"), "not-authorized"),
            (
                format!("c=biws,r=abcdef,x=ext,p={good_proof}"),
                "not-authorized",
            ),
        ];
        for (msg, condition) in cases {
            let err = fresh().client_final(msg.as_bytes()).unwrap_err();
            assert_eq!(err.condition(), condition, "{msg}");
        }
        let mut s = fresh();
        assert!(s.client_final(b"\xff").is_err());
        // The exchange is over after a failure.
        assert_eq!(s.client_final(b"c=biws"), Err(SaslError::OutOfOrder));
    }

    #[test]
    fn steps_out_of_order() {
        let mut s = ScramServer::new(ScramHash::Sha256);
        assert_eq!(
            s.client_final(b"c=biws,r=a,p=AAAA"),
            Err(SaslError::OutOfOrder)
        );
        let mut s = ScramServer::new(ScramHash::Sha256);
        assert!(s.server_first(None, "n", b"s").is_empty());
        let mut s = ScramServer::new(ScramHash::Sha256);
        s.client_first(b"n,,n=u,r=a").unwrap();
        assert_eq!(s.client_first(b"n,,n=u,r=a"), Err(SaslError::OutOfOrder));
        // A successful exchange cannot be replayed on the same object.
        let stored = keys(ScramHash::Sha256, "pw");
        let mut s = ScramServer::new(ScramHash::Sha256);
        s.client_first(b"n,,n=u,r=a").unwrap();
        let first = String::from_utf8(s.server_first(Some(stored), "b", b"s")).unwrap();
        let last = client_final_for(ScramHash::Sha256, "pw", "n=u,r=a", &first, "c=biws,r=ab");
        assert!(s.client_final(last.as_bytes()).is_ok());
        assert_eq!(s.client_final(last.as_bytes()), Err(SaslError::OutOfOrder));
    }

    #[test]
    fn bad_server_nonce_fails_the_exchange() {
        let stored = keys(ScramHash::Sha1, "pw");
        let mut s = ScramServer::new(ScramHash::Sha1);
        s.client_first(b"n,,n=u,r=a").unwrap();
        let first = String::from_utf8(s.server_first(Some(stored), ", \u{e9}", b"s")).unwrap();
        assert_eq!(first.split(',').next(), Some("r=a"));
        let last = client_final_for(ScramHash::Sha1, "pw", "n=u,r=a", &first, "c=biws,r=a");
        assert_eq!(
            s.client_final(last.as_bytes()),
            Err(SaslError::TemporaryAuthFailure)
        );
    }

    #[test]
    fn truncated_messages_never_panic() {
        let first = b"n,a=x@y,n=us=2Cer,r=fyko+d2lbbFgONRv9qkxdawL,e=1";
        for cut in 0..=first.len() {
            let _ = ScramServer::new(ScramHash::Sha1).client_first(&first[..cut]);
        }
        let last =
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=";
        for cut in 0..=last.len() {
            let mut s = ScramServer::new(ScramHash::Sha1);
            s.client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
                .unwrap();
            s.server_first(None, "3rfcNHYJY1ZVvWVs7j", b"seed");
            assert!(s.client_final(&last[..cut]).is_err());
        }
    }

    #[test]
    fn derive_and_verify_passwords() {
        let stored = keys(ScramHash::Sha256, "pencil");
        assert!(verify_password(&stored, ScramHash::Sha256, "pencil"));
        assert!(!verify_password(&stored, ScramHash::Sha256, "pencil "));
        assert!(!verify_password(&stored, ScramHash::Sha1, "pencil"));
        // SASLprep maps the soft hyphen to nothing (RFC 4013 §2.1).
        assert!(verify_password(&stored, ScramHash::Sha256, "pen\u{AD}cil"));
        assert!(!verify_password(&stored, ScramHash::Sha256, "pen\u{7}cil"));
        assert_eq!(
            derive_keys(ScramHash::Sha1, "x", b"salt", 0),
            Err(SaslError::InvalidIterations)
        );
        assert_eq!(
            derive_keys(ScramHash::Sha1, "\u{7}", b"salt", 1),
            Err(SaslError::InvalidPassword)
        );
        assert_eq!(stored.stored_key.len(), 32);
        assert!(!format!("{stored:?}").contains("stored_key"));
    }

    #[test]
    fn plain_messages() {
        assert_eq!(
            parse_plain(b"\0juliet\0r0m30"),
            Ok(Plain {
                authzid: None,
                authcid: "juliet".into(),
                password: "r0m30".into(),
            })
        );
        let p = parse_plain(b"juliet@example.com\0juliet\0pw").unwrap();
        assert_eq!(p.authzid.as_deref(), Some("juliet@example.com"));
        assert_eq!(
            parse_plain("\0I\u{AD}X\0pw".as_bytes()).unwrap().authcid,
            "IX"
        );
        // Passwords keep NUL-free bytes as sent, including spaces.
        assert_eq!(parse_plain(b"\0u\0 p w ").unwrap().password, " p w ");
        for bad in [
            &b""[..],
            b"juliet",
            b"\0juliet",
            b"\0juliet\0",
            b"\0\0pw",
            b"a\0b\0c\0d",
            b"\0jul\xffiet\0pw",
            b"\0u\0p\xc3",
            "\0\u{AD}\0pw".as_bytes(),
            "\0a\u{7}\0pw".as_bytes(),
        ] {
            let err = parse_plain(bad).unwrap_err();
            assert_eq!(err.condition(), "malformed-request", "{bad:?}");
        }
        assert!(!format!("{p:?}").contains("pw"));
    }

    #[test]
    fn saslname_decoding() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(decode_saslname("=3D=2C").as_deref(), Some("=,"));
        assert_eq!(decode_saslname("").as_deref(), Some(""));
        assert_eq!(decode_saslname("a=2c"), None);
        assert_eq!(decode_saslname("a="), None);
        assert_eq!(decode_saslname("a=3"), None);
        assert_eq!(decode_saslname("a\0"), None);
    }
}
