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

/// A generated certificate is renewed this long before it ends.
const RENEW_BEFORE_SECS: i64 = 30 * 86_400;

pub(crate) fn load_identity(config: &Config) -> anyhow::Result<TlsIdentity> {
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        let identity = read_identity(cert, key)?;
        identity
            .check()
            .with_context(|| format!("cannot use {} with {}", cert.display(), key.display()))?;
        return Ok(identity);
    }
    let (cert, key) = config.self_signed_paths();
    if cert.exists() && key.exists() {
        let identity = read_identity(&cert, &key)?;
        match renewal_reason(&identity, config) {
            None => {
                tracing::info!(cert = %cert.display(), "using the self-signed certificate from an earlier start");
                return Ok(identity);
            }
            Some(why) => {
                tracing::warn!(cert = %cert.display(), why, "renewing the self-signed certificate")
            }
        }
    }

    // First start, a half-written pair from an interrupted one, or a renewal.
    let identity = TlsIdentity::self_signed(&config.certificate_names())
        .context("cannot generate a self-signed certificate")?;
    create_private_dir(&config.tls_dir())?;
    // The key first, created owner-only, so no reader ever sees a certificate without it.
    write_file(&key, &identity.key_pem, 0o600)?;
    write_file(&cert, &identity.cert_chain_pem, 0o644)?;
    tracing::warn!(
        cert = %cert.display(),
        names = ?config.certificate_names(),
        "generated a self-signed certificate: clients must be told to trust it; \
         set tls.cert and tls.key for a real one"
    );
    Ok(identity)
}

/// Why a generated certificate must be made again: it ends soon (or cannot be read), or it
/// does not name every domain served now.
fn renewal_reason(identity: &TlsIdentity, config: &Config) -> Option<&'static str> {
    let Ok(info) = identity.certificate_info() else {
        return Some("it cannot be read");
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if info.not_after - now < RENEW_BEFORE_SECS {
        return Some("it ends within 30 days");
    }
    if config
        .certificate_names()
        .iter()
        .any(|d| !info.names.contains(d))
    {
        return Some("it does not name every served domain");
    }
    None
}

/// What `outpost config check` says of the certificate `serve` would use: an error when it
/// would fail to start.
pub(crate) fn check_identity(config: &Config) -> anyhow::Result<String> {
    if config.tls.cert.is_some() {
        let identity = load_identity(config)?;
        return Ok(describe(&identity));
    }
    let (cert, key) = config.self_signed_paths();
    if cert.exists() && key.exists() {
        let identity = read_identity(&cert, &key)?;
        identity
            .check()
            .with_context(|| format!("cannot use {}", cert.display()))?;
        return Ok(match renewal_reason(&identity, config) {
            None => describe(&identity),
            Some(why) => format!("self-signed certificate to be renewed at start: {why}"),
        });
    }
    Ok(format!(
        "no certificate yet: a self-signed one is generated in {} at start",
        config.tls_dir().display()
    ))
}

/// One line about a certificate: its subject, names, end and fingerprint.
pub(crate) fn describe(identity: &TlsIdentity) -> String {
    match identity.certificate_info() {
        Ok(info) => format!(
            "certificate {} for {} until {}, SHA-256 {}",
            info.subject,
            info.names.join(", "),
            rfc3339(info.not_after),
            info.fingerprint
        ),
        Err(e) => format!("certificate unreadable: {e}"),
    }
}

pub(crate) fn rfc3339(unix_secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_secs.to_string())
}

pub(crate) fn read_identity(cert: &Path, key: &Path) -> anyhow::Result<TlsIdentity> {
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
