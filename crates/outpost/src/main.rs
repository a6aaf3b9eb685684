//! The `outpost` binary: runs the server (`outpost serve`), administers accounts
//! (`outpost user …`), inspects the configuration (`outpost config …`) and the links to
//! other servers (`outpost admin links`), and is a client (`outpost chat`).
//!
//! This is the only place that reads arguments, the environment and files, and the only
//! place that installs a tracing subscriber; the libraries take a typed
//! [`outpost_server::config::Config`]. Not here: protocol, storage or routing logic.
//!
//! Exit status: 0 on success, 2 for an unusable configuration or bad arguments (nothing has
//! been bound or written then), 1 for any other failure.

mod admin;
mod chat;
mod control;
mod lan;
mod load;
mod logs;
mod serve;
mod tls;
mod user;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost_server::config::Config;

use crate::load::{ConfigArgs, LoadError};

/// Outpost: a small XMPP server.
#[derive(Parser, Debug)]
#[command(name = "outpost", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server until SIGTERM or Ctrl-C. Prints `listening <kind> <addr>` on standard
    /// output for each listener once all are bound.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Manage accounts in the server's store (works while the server runs).
    #[command(subcommand)]
    User(user::UserCommand),
    /// Inspect and manage the server: status, sessions, kick, reload, unblock, backup,
    /// restore, cert, links.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Check or print the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Chat as a user: Outpost's own client (`--headless`: JSON lines for scripts).
    Chat(chat::ChatArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Load and validate the configuration and the certificate, then print
    /// "configuration OK" and what the certificate is.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print the effective configuration (file, environment and flags applied) as TOML,
    /// with its secrets redacted.
    Show {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print the built-in defaults as TOML, a starting point for a config file.
    Default,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve::run(&config),
        Command::User(command) => user::run(command),
        Command::Admin(command) => admin::run(command),
        Command::Config(command) => config_command(command),
        Command::Chat(args) => chat::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Config errors are already one line per problem; others read best as a chain.
            if let Some(load) = err.downcast_ref::<LoadError>() {
                eprintln!("error: {load}");
                ExitCode::from(2)
            } else {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        }
    }
}

fn config_command(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check { config } => {
            let config = load::load(&config)?;
            // What `serve` checks before it binds anything: the certificate too.
            let certificate = crate::tls::check_identity(&config)?;
            println!("configuration OK");
            println!("{certificate}");
        }
        ConfigCommand::Show { config } => print_toml(&load::load(&config)?.redacted())?,
        ConfigCommand::Default => print_toml(&Config::default())?,
    }
    Ok(())
}

/// The runtime of the administrative commands: one thread is plenty.
fn command_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn print_toml(config: &Config) -> anyhow::Result<()> {
    let text = toml::to_string_pretty(config)?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
