//! `outpost chat`: Outpost's own client, on `outpost-client`: a terminal interface
//! ([`tui`]), or `--headless` for scripts.
//!
//! `--headless` is the mode for scripts (and tests): the password is the first line of
//! standard input, then one JSON command per line (`{"cmd":"send","to":…,"body":…}`,
//! `add`, `remove`, `roster`, `read`, `history`, `join`, `say`, `leave`,
//! `sendfile` (`to`, `path`), `quit`); every event is one JSON object per line on
//! standard output (`connected`, `disconnected`, `message`, `sent`, `presence`,
//! `subscription`, `delivery`, `path`, `roster`, `history`, `joined`, `groupchat`,
//! `transfer`, `error`). A line that is not a command
//! gets an `error` event and nothing else happens; the end of input quits.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use outpost_client::{Client, Command, Config, Event, Identity, P2pConfig, Server, Trust};
use tokio::io::AsyncBufReadExt as _;

mod tui;

#[derive(Args, Debug)]
pub(crate) struct ChatArgs {
    /// Read commands as JSON lines on standard input and write events as JSON lines,
    /// instead of the terminal interface.
    #[arg(long)]
    headless: bool,
    /// The account, user@domain.
    #[arg(long)]
    jid: String,
    /// A server to log on to, HOST:PORT (STARTTLS; on 5223 and 443 TLS from the first
    /// byte; `tls://HOST:PORT` for that on any port); repeat it for more, in order of
    /// preference. Without it: the servers the domain's DNS SRV records list (the first
    /// is home), or the domain itself on port 5222.
    #[arg(long = "server", value_name = "HOST:PORT")]
    servers: Vec<Server>,
    /// Ask this DNS server (IP:PORT) for SRV records instead of the system's.
    #[arg(long, value_name = "IP:PORT")]
    dns: Option<std::net::SocketAddr>,
    /// No direct links with contacts' devices: every message goes through the servers.
    /// With them (the default), this device's key for them is kept in the state
    /// directory and contacts' keys are pinned there (known_peers).
    #[arg(long)]
    no_p2p: bool,
    /// The resource name (a random suffix is added per login).
    #[arg(long, default_value = "outpost")]
    resource: String,
    /// Trust servers whose certificates this authority (PEM file) signed, instead of
    /// pinning the certificate each server shows first.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Where received files are kept. Default: ~/Downloads, or the state directory's
    /// `files` without a HOME.
    #[arg(long, value_name = "DIR")]
    downloads: Option<PathBuf>,
    /// Where pinned certificates and this device's key are kept. Default:
    /// $XDG_STATE_HOME/outpost (or ~/.local/state/outpost).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

pub(crate) fn run(args: ChatArgs) -> anyhow::Result<()> {
    let trust = match &args.ca {
        Some(file) => Trust::Authority(
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
        ),
        None => Trust::Pinned(state_dir(args.state_dir.clone())?.join("known_servers")),
    };
    let p2p = match args.no_p2p {
        true => None,
        false => {
            let dir = state_dir(args.state_dir.clone())?;
            Some(P2pConfig {
                identity: Identity::load_or_create(&dir)?,
                pins: dir.join("known_peers"),
            })
        }
    };
    let password = if args.headless {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        rpassword::prompt_password(format!("password for {}: ", args.jid))
            .context("reading the password")?
    };
    let me = args.jid.clone();
    let config = Config {
        jid: args.jid,
        password,
        servers: args.servers,
        dns: args.dns,
        resource: args.resource,
        trust,
        p2p,
        downloads: Some(downloads_dir(
            args.downloads.clone(),
            args.state_dir.clone(),
        )?),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(async {
        let (client, events) = Client::start(config)?;
        if args.headless {
            headless(client, events).await
        } else {
            tui::run(client, events, &me).await
        }
    });
    // Standard input is read on a blocking thread that a pending read keeps busy: do not
    // wait for it.
    runtime.shutdown_background();
    result
}

fn downloads_dir(given: Option<PathBuf>, state: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match (given, std::env::var_os("HOME").filter(|h| !h.is_empty())) {
        (Some(dir), _) => dir,
        (None, Some(home)) => PathBuf::from(home).join("Downloads"),
        (None, None) => state_dir(state)?.join("files"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn state_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(state).join("outpost"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/outpost")),
        None => bail!("no HOME to keep pinned certificates and keys under; give --state-dir"),
    }
}

async fn headless(
    client: Client,
    mut events: tokio::sync::mpsc::Receiver<Event>,
) -> anyhow::Result<()> {
    let input = tokio::spawn(read_commands(client));
    while let Some(event) = events.recv().await {
        print_event(&event)?;
    }
    input.abort();
    Ok(())
}

/// Hands each line of standard input to the client; the end of input quits.
async fn read_commands(client: Client) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Command>(&line) {
            Ok(command) => {
                if !client.command(command).await {
                    return;
                }
            }
            Err(e) => {
                let text = format!("not a command ({e}): {}", truncate(&line, 200));
                // Printed here: the client never saw it.
                let _ = print_event(&Event::Error { text });
            }
        }
    }
    client.command(Command::Quit).await;
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn print_event(event: &Event) -> anyhow::Result<()> {
    let line = serde_json::to_string(event)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
