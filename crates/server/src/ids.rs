//! Random identifiers: stream ids, nonces, generated resources, XEP-0359 origin-ids and
//! secrets, all from the thread-local CSPRNG (`rand::rng`), in one place.

use rand::Rng;
use rand::distr::Alphanumeric;

/// `len` random ASCII letters and digits (about 5.95 bits each): 16 make a stream id
/// that cannot be guessed (RFC 6120 §4.7.3), 32 a secret.
pub fn random_id(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Random bytes, for the fake salts of unknown users (see `outpost_proto::c2s`).
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    rand::rng().random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_length_asked_for_and_differ() {
        let a = random_id(20);
        assert_eq!(a.len(), 20);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, random_id(20));
    }
}
