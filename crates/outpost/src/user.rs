//! `outpost user …`: account administration on the server's store.
//!
//! These commands open the same SQLite file as the server, which may be running: SQLite in
//! WAL mode lets both write, one transaction at a time. Passwords are read from standard
//! input, one line; they are never taken as arguments, which other local users could read
//! in the process list.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use outpost_server::accounts;
use outpost_server::config::Config;

use crate::control::{self, Request};
use crate::load::{self, ConfigArgs};
use crate::serve::open_store;

#[derive(Subcommand, Debug)]
pub(crate) enum UserCommand {
    /// Create an account. The password is read from standard input.
    Add {
        /// The account's bare JID, `user@domain`; the domain must be one the server serves.
        jid: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Set a new password for an account. The password is read from standard input.
    Passwd {
        /// The account's bare JID.
        jid: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Delete an account with its roster, offline messages, vCard and block list.
    Remove {
        /// The account's bare JID.
        jid: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print every account's JID, one per line, sorted.
    List {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(clap::Args, Debug)]
pub(crate) struct PasswordArgs {
    /// Read the password as one line from standard input without prompting, even on a
    /// terminal. Without it, a terminal gets a prompt that does not echo what is typed, and
    /// a confirmation; a pipe is read the same way as with it.
    #[arg(long)]
    password_stdin: bool,
}

pub(crate) fn run(command: UserCommand) -> anyhow::Result<()> {
    let config_args = match &command {
        UserCommand::Add { config, .. }
        | UserCommand::Passwd { config, .. }
        | UserCommand::Remove { config, .. }
        | UserCommand::List { config } => config,
    };
    let config = load::load(config_args)?;
    // Only warnings by default: an administrative command should print its result, not the
    // store's start-up chatter.
    crate::logs::install_for_commands()?;
    let runtime = crate::command_runtime()?;
    runtime.block_on(run_with(command, config))
}

async fn run_with(command: UserCommand, config: Config) -> anyhow::Result<()> {
    // Only `add` may create the database.
    if !matches!(command, UserCommand::Add { .. }) {
        crate::serve::require_store(&config)?;
    }
    let iterations = config.auth.scram_iterations;

    match command {
        UserCommand::Add { jid, password, .. } => {
            let user = checked_new_user(&config, &jid)?;
            let password = read_password(&user, password.password_stdin)?;
            let store = open_store(&config).await?;
            let result = accounts::add_user(&*store, &user, &password, iterations).await;
            store.close().await;
            result.with_context(|| format!("cannot add {user}"))?;
            eprintln!("added {user}");
        }
        UserCommand::Passwd { jid, password, .. } => {
            let user = normalize(&jid)?;
            let password = read_password(&user, password.password_stdin)?;
            let store = open_store(&config).await?;
            let result = accounts::set_password(&*store, &user, &password, iterations).await;
            store.close().await;
            result.with_context(|| format!("cannot change the password of {user}"))?;
            eprintln!("password of {user} changed");
            end_sessions(&config, &user, false).await?;
        }
        UserCommand::Remove { jid, .. } => {
            let user = normalize(&jid)?;
            let store = open_store(&config).await?;
            let result = accounts::remove_user(&*store, &user).await;
            store.close().await;
            result.with_context(|| format!("cannot remove {user}"))?;
            eprintln!("removed {user}");
            end_sessions(&config, &user, true).await?;
        }
        UserCommand::List { .. } => {
            let store = open_store(&config).await?;
            let result = store.list_accounts().await;
            store.close().await;
            let users = result.context("cannot list accounts")?;
            let mut out = std::io::stdout().lock();
            for user in users {
                writeln!(out, "{user}")?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

/// Tells a running server that `user`'s account changed in the store, so that it ends the
/// account's sessions (RFC 6120 §4.9.3.12: they authenticated with what no longer holds).
async fn end_sessions(config: &Config, user: &str, removed: bool) -> anyhow::Result<()> {
    let request = Request::AccountChanged {
        jid: user.to_owned(),
        removed,
    };
    match control::request(config, &request).await? {
        None => {}
        Some(r) if r.ok => {
            let n = r.result.as_u64().unwrap_or(0);
            if n > 0 {
                eprintln!("ended {n} session(s) of {user}");
            }
        }
        Some(r) => bail!(
            "the account changed, but the running server could not end its sessions: {}",
            r.error.unwrap_or_default()
        ),
    }
    Ok(())
}

/// The normalised bare JID, or an error that says what shape is expected.
fn normalize(jid: &str) -> anyhow::Result<String> {
    if !jid.contains('@') {
        bail!("`{jid}` has no domain part: give the account as user@domain, e.g. {jid}@localhost");
    }
    accounts::normalize_user_jid(jid).with_context(|| format!("`{jid}` is not a user's bare JID"))
}

/// Like [`normalize`], and the domain must be served: an account elsewhere could never
/// log in.
fn checked_new_user(config: &Config, jid: &str) -> anyhow::Result<String> {
    let user = normalize(jid)?;
    let domain = user.rsplit_once('@').map_or("", |(_, d)| d);
    if !config.serves_domain(domain) {
        bail!(
            "cannot add {user}: {domain} is not one of the served domains ({})",
            config.domains.join(", ")
        );
    }
    Ok(user)
}

/// Reads a password. On a terminal (and unless `no_prompt`), prompts on the terminal and
/// reads without echoing what is typed (rpassword), twice; otherwise one line from standard
/// input, without its line ending.
fn read_password(user: &str, no_prompt: bool) -> anyhow::Result<String> {
    let interactive = !no_prompt && std::io::stdin().is_terminal();
    let password = if interactive {
        let first = rpassword::prompt_password(format!("password for {user}: "))
            .context("cannot read the password from the terminal")?;
        let again = rpassword::prompt_password("repeat the password: ")
            .context("cannot read the password from the terminal")?;
        if first != again {
            bail!("the passwords do not match");
        }
        first
    } else {
        let mut line = String::new();
        if std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?
            == 0
        {
            bail!(
                "no password on standard input (pipe one line, e.g. `echo secret | outpost user add …`)"
            );
        }
        let trimmed = line.strip_suffix('\n').unwrap_or(&line);
        trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned()
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}
