//! `outpost serve`: load the configuration and the TLS identity, open the store, start the
//! server, report the bound addresses and run until SIGTERM or SIGINT.

use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use outpost_server::ServerHandle;
use outpost_server::config::Config;
use outpost_store::{SqliteStore, Store};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing_subscriber::EnvFilter;

use crate::load::{self, ConfigArgs, LoadError};

pub(crate) fn run(args: &ConfigArgs) -> anyhow::Result<()> {
    // Everything that can be wrong with the configuration is found here, before the
    // runtime starts and before any port is bound.
    let config = load::load(args)?;
    install_tracing(&config.log.level)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(serve(config, args.config.is_some()))
}

async fn serve(config: Config, has_file: bool) -> anyhow::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        domains = ?config.domains,
        data_dir = %config.data_dir.display(),
        "starting outpost"
    );
    if !has_file {
        tracing::info!(
            registration = config.registration_enabled(),
            "no config file: running zero-config"
        );
    }
    if config.auth.allow_plaintext_without_tls {
        tracing::warn!(
            "auth.allow_plaintext_without_tls is on: passwords may cross the network in the clear"
        );
    }
    if config.auth.scram_iterations < 4096 {
        // RFC 7677 §4: fewer iterations make stolen verifiers cheaper to crack.
        tracing::warn!(
            iterations = config.auth.scram_iterations,
            "auth.scram_iterations is below 4096, fine for tests only"
        );
    }

    let mut config = config;
    if config.federation.enabled && config.federation.dialback_secret.is_none() {
        config.federation.dialback_secret = Some(dialback_secret(&config)?);
    }

    let termination = Termination::watch()?;
    // The identity before the store: a bad certificate path should fail fast, before the
    // database is created.
    let identity = crate::tls::load_identity(&config)?;
    let store = open_store(&config).await?;
    let links_path = config.links_status_path();
    let federation = config.federation.enabled;
    let handle = ServerHandle::start(config, store, identity)
        .await
        .context("cannot start the server")?;

    // Test harnesses and scripts read these lines to find ports chosen by the kernel (port
    // 0), so they go to stdout in a fixed shape and are flushed at once.
    let mut out = std::io::stdout().lock();
    for (kind, addr) in handle.local_addrs() {
        writeln!(out, "listening {} {addr}", kind.as_str())?;
    }
    out.flush()?;
    drop(out);

    // The links' state for `outpost admin links`, until termination. Without federation
    // there are no links, and nothing to keep writing.
    if federation {
        tokio::select! {
            () = termination.wait() => {}
            () = crate::admin::publish_links(&handle, &links_path) => {}
        }
        crate::admin::remove_links_file(&links_path);
    } else {
        termination.wait().await;
    }
    tracing::info!("shutting down");
    handle.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The dialback secret kept in the data directory, generated on first start (XEP-0185 §3:
/// the secret must be stable, or keys sent before a restart stop verifying).
fn dialback_secret(config: &Config) -> anyhow::Result<String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = config.dialback_secret_path();
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 16 => return Ok(s.trim().to_owned()),
        Ok(_) => anyhow::bail!(
            "{} is too short; delete it to get a new one",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    create_private_dir(&config.data_dir)?;
    let secret = outpost_server::ids::random_id(40);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a dialback secret");
    Ok(secret)
}

/// Opens (creating if needed) the store named by the configuration. Shared with the
/// `user` commands, which work on the same file.
pub(crate) async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    create_private_dir(&config.data_dir)?;
    let path = config.storage_path();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    let store = SqliteStore::open(&path)
        .await
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    Ok(Arc::new(store))
}

/// Creates a directory readable by its owner only, since it holds the TLS private key and
/// password verifiers. Directories that exist already keep their permissions.
pub(crate) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))
}

/// Logs go to stderr, so stdout carries only what a command prints. `RUST_LOG`, when set,
/// wins over `default_filter` (normally `log.level`, which `load` has checked), the usual
/// way to debug one run without editing files.
pub(crate) fn install_tracing(default_filter: &str) -> Result<(), LoadError> {
    let (source, spec) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => ("RUST_LOG", spec),
        _ => ("log.level", default_filter.to_owned()),
    };
    let filter = EnvFilter::try_new(&spec).map_err(|e| {
        LoadError::Parse(vec![format!(
            "{source}: `{spec}` is not a valid filter ({e})"
        )])
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

/// SIGTERM (service managers, containers) and SIGINT (Ctrl-C), watched from before the
/// server reports itself ready: a signal sent right after the `listening` lines must stop
/// the server politely, not kill it with the default action.
struct Termination {
    term: Signal,
    int: Signal,
}

impl Termination {
    fn watch() -> anyhow::Result<Termination> {
        Ok(Termination {
            term: signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?,
        })
    }

    async fn wait(mut self) {
        let name = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "termination requested");
    }
}
