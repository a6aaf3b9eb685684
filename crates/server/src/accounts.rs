//! Account administration shared by in-band registration and the `outpost user` commands.

use jid::BareJid;
use outpost_proto::sasl::{self, ScramHash};
use outpost_store::{Credentials, ScramKeys, Store, StoreError};
use rand::Rng;

/// Bytes of salt per verifier (RFC 5802 leaves it open; 16 is what common servers use).
const SALT_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("invalid JID `{jid}`")]
    InvalidJid {
        jid: String,
        #[source]
        source: jid::Error,
    },
    #[error("`{0}` has no user part")]
    NoUserPart(String),
    #[error("password not allowed: {0}")]
    BadPassword(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Derives the SCRAM-SHA-1 and SCRAM-SHA-256 verifiers for a password, with fresh salts.
/// The password itself is never stored. Runs PBKDF2 twice; call it off the async runtime's
/// worker threads when `iterations` is large (the async helpers below do).
pub fn make_credentials(password: &str, iterations: u32) -> Result<Credentials, AccountError> {
    if password.is_empty() {
        return Err(AccountError::BadPassword("empty"));
    }
    let derive = |hash| {
        let salt: [u8; SALT_LEN] = rand::rng().random();
        let k = sasl::derive_keys(hash, password, &salt, iterations)
            .map_err(|_| AccountError::BadPassword("not valid after SASLprep"))?;
        Ok::<_, AccountError>(ScramKeys {
            salt: k.salt,
            iterations: k.iterations,
            stored_key: k.stored_key,
            server_key: k.server_key,
        })
    };
    Ok(Credentials {
        sha1: derive(ScramHash::Sha1)?,
        sha256: derive(ScramHash::Sha256)?,
    })
}

/// Normalises `jid` (nodeprep/nameprep) and checks it is a bare JID with a local part.
pub fn normalize_user_jid(jid: &str) -> Result<String, AccountError> {
    let parsed = BareJid::new(jid).map_err(|source| AccountError::InvalidJid {
        jid: jid.to_owned(),
        source,
    })?;
    if parsed.node().is_none() {
        return Err(AccountError::NoUserPart(jid.to_owned()));
    }
    Ok(parsed.to_string())
}

async fn credentials_off_thread(
    password: &str,
    iterations: u32,
) -> Result<Credentials, AccountError> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || make_credentials(&password, iterations))
        .await
        .unwrap_or(Err(AccountError::BadPassword(
            "key derivation was interrupted",
        )))
}

pub async fn add_user(
    store: &dyn Store,
    jid: &str,
    password: &str,
    iterations: u32,
) -> Result<(), AccountError> {
    let user = normalize_user_jid(jid)?;
    let creds = credentials_off_thread(password, iterations).await?;
    store.create_account(&user, &creds).await?;
    Ok(())
}

pub async fn set_password(
    store: &dyn Store,
    jid: &str,
    password: &str,
    iterations: u32,
) -> Result<(), AccountError> {
    let user = normalize_user_jid(jid)?;
    let creds = credentials_off_thread(password, iterations).await?;
    store.set_credentials(&user, &creds).await?;
    Ok(())
}

pub async fn remove_user(store: &dyn Store, jid: &str) -> Result<(), AccountError> {
    let user = normalize_user_jid(jid)?;
    store.remove_account(&user).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jids_are_normalised_and_need_a_user() {
        assert_eq!(
            normalize_user_jid("Alice@LocalHost").expect("valid"),
            "alice@localhost"
        );
        assert!(matches!(
            normalize_user_jid("localhost"),
            Err(AccountError::NoUserPart(_))
        ));
        assert!(matches!(
            normalize_user_jid("a@b/c"),
            Err(AccountError::InvalidJid { .. })
        ));
    }

    #[test]
    fn credentials_verify_the_password_and_use_distinct_salts() {
        let c = make_credentials("pencil", 4096).expect("derive");
        assert_ne!(c.sha1.salt, c.sha256.salt);
        assert_eq!(c.sha256.iterations, 4096);
        let keys = sasl::ScramKeys {
            salt: c.sha256.salt.clone(),
            iterations: c.sha256.iterations,
            stored_key: c.sha256.stored_key.clone(),
            server_key: c.sha256.server_key.clone(),
        };
        assert!(sasl::verify_password(&keys, ScramHash::Sha256, "pencil"));
        assert!(!sasl::verify_password(&keys, ScramHash::Sha256, "pen"));
        assert!(make_credentials("", 4096).is_err());
    }
}
