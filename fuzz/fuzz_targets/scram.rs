//! Feeds arbitrary client-first and client-final messages to the SCRAM server, and the same
//! bytes to the PLAIN parser. An unknown user must never succeed. The first byte picks the hash and whether the user is known; the
//! rest is split at the first 0xFF (never valid UTF-8) into the two client messages.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outpost_proto::sasl::{ScramHash, ScramKeys, ScramServer, derive_keys, parse_plain};

/// Keys for "pencil" with the RFC 5802 salt, derived once: PBKDF2 per input would be too slow.
fn keys(hash: ScramHash) -> ScramKeys {
    static SHA1: OnceLock<ScramKeys> = OnceLock::new();
    static SHA256: OnceLock<ScramKeys> = OnceLock::new();
    let cell = match hash {
        ScramHash::Sha1 => &SHA1,
        ScramHash::Sha256 => &SHA256,
    };
    cell.get_or_init(|| derive_keys(hash, "pencil", b"A%\xc2G\xe4:\xb1\xe9<m\xffv", 4096).unwrap())
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_plain(data);
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let hash = if first & 1 == 0 {
        ScramHash::Sha1
    } else {
        ScramHash::Sha256
    };
    let known = first & 2 == 0;
    let (client_first, client_final) = match rest.iter().position(|&b| b == 0xFF) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mut server = ScramServer::new(hash);
    let Ok((username, _authzid)) = server.client_first(client_first) else {
        return;
    };
    assert!(!username.is_empty());
    let keys = known.then(|| keys(hash));
    let server_first = server.server_first(keys, "3rfcNHYJY1ZVvWVs7j", b"seed");
    assert!(server_first.starts_with(b"r="));
    if let Ok(server_final) = server.client_final(client_final) {
        // A proof can only be right for a known user (the seed corpus holds the RFC 5802 one).
        assert!(known, "unknown user authenticated");
        assert!(server_final.starts_with(b"v="));
    }
});
