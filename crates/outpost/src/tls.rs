//! The server's TLS identity: read from `tls.cert` and `tls.key` when configured, otherwise
//! a self-signed certificate generated on first start and kept in `<data_dir>/tls/`.
//!
//! The server library takes PEM text and never touches these files, so reading, generating
//! and storing them lives here.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::Context as _;
use outpost_server::TlsIdentity;
use outpost_server::config::Config;

use crate::serve::create_private_dir;

pub(crate) fn load_identity(config: &Config) -> anyhow::Result<TlsIdentity> {
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        return read_identity(cert, key);
    }
    let (cert, key) = config.self_signed_paths();
    if cert.exists() && key.exists() {
        tracing::info!(cert = %cert.display(), "using the self-signed certificate from an earlier start");
        return read_identity(&cert, &key);
    }

    // First start (or a half-written pair from an interrupted one): make a new pair.
    let identity = TlsIdentity::self_signed(&config.domains)
        .context("cannot generate a self-signed certificate")?;
    create_private_dir(&config.tls_dir())?;
    // The key first, created owner-only, so no reader ever sees a certificate without it.
    write_file(&key, &identity.key_pem, 0o600)?;
    write_file(&cert, &identity.cert_chain_pem, 0o644)?;
    tracing::warn!(
        cert = %cert.display(),
        domains = ?config.domains,
        "generated a self-signed certificate: clients must be told to trust it; \
         set tls.cert and tls.key for a real one"
    );
    Ok(identity)
}

fn read_identity(cert: &Path, key: &Path) -> anyhow::Result<TlsIdentity> {
    let read = |path: &Path, what: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the TLS {what} {}", path.display()))
    };
    Ok(TlsIdentity {
        cert_chain_pem: read(cert, "certificate")?,
        key_pem: read(key, "key")?,
    })
}

fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
