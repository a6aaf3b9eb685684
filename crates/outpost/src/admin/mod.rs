//! `outpost admin …`: inspecting and managing a server from the same machine.
//!
//! `links`, `cert`, `backup` and `restore` work whether or not the server runs (they read
//! the store or the files themselves, or refuse when they must not); `status`,
//! `sessions`, `kick`, `reload` and `unblock` ask the running server over its control
//! socket (see `control`).

mod cluster;
mod links;
mod ops;
mod replication;

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Subcommand;

pub(crate) use links::{publish_links, remove_links_file};

use crate::load::{self, ConfigArgs};

#[derive(Subcommand, Debug)]
pub(crate) enum AdminCommand {
    /// Show each server-to-server link: its state, the path in use, the queued messages,
    /// the age of the oldest one, the last successful delivery and the last error. Works
    /// while the server is stopped (the queue is read from the store).
    Links {
        /// Print a JSON array instead of a table (ages in seconds, times in RFC 3339).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Directory replication between a site and its hub. On a site: the position the hub
    /// acknowledged, the entries waiting, the last sync and, while the server runs, why it
    /// waits. On a hub: each site's replica (position, lag, records, snapshots, last sync)
    /// and whether the hub stands in for it now, with how many of its sessions. Works while
    /// the server is stopped (positions are read from the store).
    Replication {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// The running server: version, uptime, domains, sessions, links, store size.
    Status {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Who is connected: each session's JID (with its resource), address, since when and
    /// presence.
    Sessions {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// This node's cluster: each node with its address, start, registration lease and
    /// sessions, when this node last heard it over NATS and how many of its sessions are
    /// in this node's directory; whether NATS and PostgreSQL answer. With the server
    /// stopped, the registry alone (from PostgreSQL).
    Cluster {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Disconnect a session (a full JID) or all of an account's (a bare JID).
    Kick {
        jid: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Re-read the configuration file and the certificate without dropping sessions (as
    /// SIGHUP does): domains, limits, log level, registration and certificates.
    Reload {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Forget failed-login counts, so a throttled account or address may log in at once.
    /// Without options, every count.
    Unblock {
        /// The account (bare JID) to unblock.
        #[arg(long)]
        account: Option<String>,
        /// The IP address to unblock.
        #[arg(long)]
        address: Option<IpAddr>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Write a consistent copy of the database to FILE, also while the server runs.
    Backup {
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Replace the database with a backup. The server must be stopped.
    Restore {
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Copy the SQLite store into an empty PostgreSQL database (a site that outgrows one
    /// file), then point `[storage]` at it. The server must be stopped.
    MigrateStore {
        /// The PostgreSQL database, postgres://user:password@host:port/database.
        #[arg(long, value_name = "URL")]
        to: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// The certificate the server presents: subject, names, validity and SHA-256
    /// fingerprint, to compare with what a client shows.
    Cert {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

pub(crate) fn run(command: AdminCommand) -> anyhow::Result<()> {
    let config_args = match &command {
        AdminCommand::Links { config, .. }
        | AdminCommand::Replication { config, .. }
        | AdminCommand::Status { config }
        | AdminCommand::Sessions { config, .. }
        | AdminCommand::Cluster { config, .. }
        | AdminCommand::Kick { config, .. }
        | AdminCommand::Reload { config }
        | AdminCommand::Unblock { config, .. }
        | AdminCommand::Backup { config, .. }
        | AdminCommand::Restore { config, .. }
        | AdminCommand::MigrateStore { config, .. }
        | AdminCommand::Cert { config } => config,
    };
    let config = load::load(config_args)?;
    crate::logs::install_for_commands()?;
    let runtime = crate::command_runtime()?;
    let text = runtime.block_on(async {
        match command {
            AdminCommand::Links { json, .. } => links::show(&config, json).await,
            AdminCommand::Replication { json, .. } => replication::show(&config, json).await,
            AdminCommand::Status { .. } => ops::status(&config).await,
            AdminCommand::Sessions { json, .. } => ops::sessions(&config, json).await,
            AdminCommand::Cluster { json, .. } => cluster::show(&config, json).await,
            AdminCommand::Kick { jid, .. } => ops::kick(&config, &jid).await,
            AdminCommand::Reload { .. } => ops::reload(&config).await,
            AdminCommand::Unblock {
                account, address, ..
            } => ops::unblock(&config, account, address).await,
            AdminCommand::Backup { file, .. } => ops::backup(&config, &file).await,
            AdminCommand::Restore { file, .. } => ops::restore(&config, &file).await,
            AdminCommand::MigrateStore { to, .. } => ops::migrate_store(&config, &to).await,
            AdminCommand::Cert { .. } => ops::cert(&config),
        }
    })?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
