//! `outpost serve`: load the configuration and the TLS identity, open the store, start the
//! server, report the bound addresses and run until SIGTERM or SIGINT.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use outpost_server::ServerHandle;
use outpost_server::config::{Config, StorageBackend, redact_url};
use outpost_store::{PgStore, SqliteStore, Store};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::load::{self, ConfigArgs};

pub(crate) fn run(args: &ConfigArgs) -> anyhow::Result<()> {
    // Everything that can be wrong with the configuration is found here, before the
    // runtime starts and before any port is bound.
    let config = load::load(args)?;
    let logs = crate::logs::install(&config.log)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(serve(config, args.clone(), logs))
}

/// What a start says in the log before anything is bound.
fn log_start(config: &Config, args: &ConfigArgs) {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        domains = ?config.domains,
        data_dir = %config.data_dir.display(),
        "starting outpost"
    );
    if args.config.is_none() {
        tracing::info!(
            registration = config.registration_enabled(),
            "no config file: running zero-config"
        );
    }
    warn_about(config);
}

async fn serve(config: Config, args: ConfigArgs, logs: crate::logs::Logs) -> anyhow::Result<()> {
    log_start(&config, &args);
    let config = prepare(config)?;
    let signals = Signals::watch()?;
    // The control socket first: it tells whether another server uses this data directory,
    // before this one touches the store.
    create_private_dir(&config.data_dir)?;
    let socket = crate::control::socket_path(&config);
    let control = crate::control::bind(&socket).await?;
    // The identity before the store: a bad certificate path should fail fast, before the
    // database is created.
    let identity = crate::tls::load_identity(&config)?;
    log_certificate(&identity);
    let store = open_store(&config).await?;
    let links_path = config.links_status_path();
    let federation = config.federation.enabled;
    let announce = config.listen.mdns.then(|| config.domains.clone());
    let web: Arc<dyn outpost_server::HttpService> = Arc::new(outpost_web::Web::new());
    let handle = Arc::new(
        ServerHandle::start_with_http(config, store, identity, Some(web))
            .await
            .context("cannot start the server")?,
    );
    print_listeners(&handle);
    let lan =
        announce.and_then(|domains| crate::lan::Announcer::start(&domains, &handle.local_addrs()));

    let reloader: Arc<dyn crate::control::Reloader> = Arc::new(ConfigReloader { args, logs });
    let stop = tokio_util::sync::CancellationToken::new();
    let control = tokio::spawn(crate::control::serve(
        control,
        socket,
        handle.clone(),
        reloader.clone(),
        stop.clone(),
    ));
    let links = async {
        // The links' state for `outpost admin links`. Without federation there are no
        // links, and nothing to keep writing.
        match federation {
            true => crate::admin::publish_links(&handle, &links_path).await,
            false => std::future::pending().await,
        }
    };
    tokio::select! {
        () = signals.run(&handle, reloader.as_ref()) => {}
        () = links => {}
    }
    if federation {
        crate::admin::remove_links_file(&links_path);
    }
    tracing::info!("shutting down");
    if let Some(lan) = lan {
        lan.stop();
    }
    stop.cancel();
    let _ = control.await;
    handle.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn warn_about(config: &Config) {
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
}

/// Fills in what the configuration leaves to the data directory: the dialback secret.
fn prepare(mut config: Config) -> anyhow::Result<Config> {
    if config.federation.enabled && config.federation.dialback_secret.is_none() {
        config.federation.dialback_secret = Some(dialback_secret(&config)?);
    }
    Ok(config)
}

/// The certificate's fingerprint at start, so a user can compare it with what a client
/// shows when it asks to trust it.
fn log_certificate(identity: &outpost_server::TlsIdentity) {
    match identity.certificate_info() {
        Ok(info) => tracing::info!(
            subject = %info.subject,
            names = ?info.names,
            not_after = %crate::tls::rfc3339(info.not_after),
            sha256 = %info.fingerprint,
            "certificate"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot read the certificate's details"),
    }
}

/// Test harnesses and scripts read these lines to find ports chosen by the kernel (port 0),
/// so they go to stdout in a fixed shape and are flushed at once. A reader that goes away
/// (`outpost serve | head -1`) must not stop the server, so a failed write is only logged.
fn print_listeners(handle: &ServerHandle) {
    let mut out = std::io::stdout().lock();
    let written = handle
        .local_addrs()
        .into_iter()
        .try_for_each(|(kind, addr)| writeln!(out, "listening {} {addr}", kind.as_str()))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot print the listening addresses on standard output");
    }
}

/// Reloads from the file (and environment) the server was started with: SIGHUP and
/// `outpost admin reload`.
struct ConfigReloader {
    args: ConfigArgs,
    logs: crate::logs::Logs,
}

impl crate::control::Reloader for ConfigReloader {
    fn reload(&self, handle: &ServerHandle) -> anyhow::Result<serde_json::Value> {
        let config = prepare(load::load(&self.args)?)?;
        let identity = crate::tls::load_identity(&config)?;
        log_certificate(&identity);
        let restart_log = self.logs.reload(&config.log)?;
        let mut report = handle.reload(config, &identity)?;
        report.needs_restart.extend(restart_log.map(str::to_owned));
        if !report.needs_restart.is_empty() {
            tracing::warn!(sections = ?report.needs_restart, "these changes take a restart");
        }
        Ok(serde_json::to_value(report)?)
    }
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

/// Opens (creating if needed) the store named by the configuration: the SQLite file, or
/// the PostgreSQL database (its schema brought up to date). Shared with the `user`
/// commands, which work on the same store.
pub(crate) async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    create_private_dir(&config.data_dir)?;
    if config.storage.backend == StorageBackend::Postgres {
        let url = config
            .storage
            .url
            .as_deref()
            .context("storage.url is not set")?;
        let store = PgStore::connect(url)
            .await
            .with_context(|| format!("cannot open the database {}", redact_url(url)))?;
        return Ok(Arc::new(store));
    }
    let path = config.storage_path();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    let store = SqliteStore::open(&path)
        .await
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    Ok(Arc::new(store))
}

/// For commands that read the store: a missing SQLite file almost always means a wrong
/// `--data-dir` or `--config`, and an empty new database would hide that. (A PostgreSQL
/// database is the operator's to create; opening it says if it is not there.)
pub(crate) fn require_store(config: &Config) -> anyhow::Result<()> {
    if config.storage.backend == StorageBackend::Sqlite && !config.storage_path().exists() {
        anyhow::bail!(
            "no database at {} (check --config and --data-dir; the server creates it on first start)",
            config.storage_path().display()
        );
    }
    Ok(())
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

/// SIGTERM (service managers, containers) and SIGINT (Ctrl-C) stop the server; SIGHUP
/// reloads it (`systemctl reload`). Watched from before the server reports itself ready: a
/// signal sent right after the `listening` lines must act, not kill it with the default
/// action.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn watch() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot watch for SIGHUP")?,
        })
    }

    /// Reloads on every SIGHUP until termination is asked for.
    async fn run(mut self, handle: &ServerHandle, reloader: &dyn crate::control::Reloader) {
        loop {
            let name = tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
                _ = self.hup.recv() => {
                    tracing::info!(signal = "SIGHUP", "reloading the configuration");
                    if let Err(e) = reloader.reload(handle) {
                        tracing::error!(error = %format!("{e:#}"), "reload failed; the old configuration stays");
                    }
                    continue;
                }
            };
            tracing::info!(signal = name, "termination requested");
            return;
        }
    }
}
