//! Account administration shared by in-band registration and the `outpost user` commands.

use outpost_store::{Credentials, Store, StoreError};

/// Derives the SCRAM-SHA-1 and SCRAM-SHA-256 verifiers for a password, with fresh salts.
/// The password itself is never stored.
pub fn make_credentials(password: &str, iterations: u32) -> Result<Credentials, AccountError> {
    let _ = (password, iterations);
    todo!()
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("invalid JID: {0}")]
    InvalidJid(String),
    #[error("password not allowed: {0}")]
    BadPassword(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Normalises `jid` (nodeprep/nameprep) and checks it is a bare JID with a local part.
pub fn normalize_user_jid(jid: &str) -> Result<String, AccountError> {
    let _ = jid;
    todo!()
}

pub async fn add_user(
    store: &dyn Store,
    jid: &str,
    password: &str,
    iterations: u32,
) -> Result<(), AccountError> {
    let user = normalize_user_jid(jid)?;
    store.create_account(&user, &make_credentials(password, iterations)?).await?;
    Ok(())
}

pub async fn set_password(
    store: &dyn Store,
    jid: &str,
    password: &str,
    iterations: u32,
) -> Result<(), AccountError> {
    let user = normalize_user_jid(jid)?;
    store.set_credentials(&user, &make_credentials(password, iterations)?).await?;
    Ok(())
}

pub async fn remove_user(store: &dyn Store, jid: &str) -> Result<(), AccountError> {
    let user = normalize_user_jid(jid)?;
    store.remove_account(&user).await?;
    Ok(())
}
