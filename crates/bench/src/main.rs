//! The `outpost-bench` command: one sub-command per scenario, one JSON object per run on
//! standard output (and appended to `--out`).

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use outpost_bench::scenarios::{self, QueueProbe, users};
use outpost_bench::{Mech, Target, mam, metrics, muc, rest};
use serde_json::{Value, json};

/// A lean XMPP c2s load generator. Every target must be on loopback.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 5222)]
    port: u16,
    /// The XMPP domain the users live on.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Every user's password.
    #[arg(long, default_value = "benchpass")]
    password: String,
    /// STARTTLS on every connection (certificates are not checked). With --raw and for the
    /// relay: TLS from the first byte.
    #[arg(long)]
    tls: bool,
    /// No XMPP: against the relay (the `relay` sub-command), the throughput scenario sends
    /// the same stanza bytes with no stream, login or binding.
    #[arg(long)]
    raw: bool,
    /// XMPP over WebSocket (RFC 7395) at this path (e.g. /xmpp-websocket) on --port, TLS
    /// from the first byte; the scenario is reported as `ws-<scenario>`.
    #[arg(long)]
    ws: Option<String>,
    /// Comma-separated loopback source addresses to spread connections over.
    #[arg(long, value_delimiter = ',')]
    src_ips: Vec<IpAddr>,
    /// A server process to sample CPU and memory of (repeatable).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// A file holding a server pid.
    #[arg(long)]
    pidfile: Option<PathBuf>,
    /// SASL mechanism of the logins that set a scenario up (the login storm has its own).
    #[arg(long, value_enum, default_value = "SCRAM-SHA-1")]
    login_mech: Mech,
    /// Runtime threads of the generator (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Longest wait for one answer from the server, in seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Hard limit on the whole scenario, in seconds.
    #[arg(long, default_value_t = 600.0)]
    max_seconds: f64,
    /// Server B of the federation scenarios (server A is --host/--port/--domain): its
    /// client port.
    #[arg(long, default_value_t = 0)]
    peer_port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    peer_host: String,
    /// Server B's XMPP domain.
    #[arg(long, default_value = "")]
    peer_domain: String,
    /// A file holding server B's pid (sampled with server A's).
    #[arg(long)]
    peer_pidfile: Option<PathBuf>,
    /// The HTTPS port of the HTTP API (rest-send, sse-fanout), on --host.
    #[arg(long, default_value_t = 5281)]
    http_port: u16,
    /// Free text copied into the result (server name and version).
    #[arg(long, default_value = "")]
    label: String,
    /// Append the JSON result to this file too.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Create users <prefix><start>.. by in-band registration (XEP-0077).
    Register {
        #[arg(long, default_value = "u")]
        prefix: String,
        #[arg(long, default_value_t = 1)]
        start: usize,
        #[arg(short, long, default_value_t = 1000)]
        n: usize,
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
    },
    /// Give <owner> mutual subscriptions with <contact-prefix>1..<contacts>.
    RosterSetup {
        #[arg(long, default_value = "ro1")]
        owner: String,
        #[arg(long, default_value = "rc")]
        contact_prefix: String,
        #[arg(long, default_value_t = 1000)]
        contacts: usize,
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
    },
    /// a. Hold N authenticated, available connections; server RSS per connection.
    Idle {
        #[arg(long, default_value = "u")]
        prefix: String,
        #[arg(long, default_value_t = 1)]
        start: usize,
        #[arg(short, long, default_value_t = 1000)]
        n: usize,
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Seconds to let the server settle before sampling memory.
        #[arg(long, default_value_t = 3.0)]
        settle: f64,
        /// Seconds of memory sampling with all connections held.
        #[arg(long, default_value_t = 3.0)]
        hold: f64,
        /// Enable stream management (XEP-0198, with resumption) on every connection, after
        /// binding, and acknowledge what the server sent.
        #[arg(long)]
        sm: bool,
    },
    /// b. K pairs, W messages in flight per pair; delivered messages per second.
    Throughput {
        #[arg(long, default_value = "u")]
        prefix: String,
        #[arg(long, default_value_t = 1)]
        start: usize,
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        #[arg(long, default_value_t = 20)]
        window: usize,
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Keep one latency sample per this many deliveries.
        #[arg(long, default_value_t = 50)]
        lat_sample: u64,
        /// Afterwards, check the first receiver's archive (XEP-0313) ends with the first
        /// sender's last message.
        #[arg(long)]
        mam_check: bool,
    },
    /// g. One room (XEP-0045), N occupants, K senders with W messages each not yet
    /// delivered to every occupant; room messages and deliveries per second. With
    /// --peer-port (another node of the same domain), every other occupant logs in there.
    Muc(MucArgs),
    /// The last page of one archive (XEP-0313): its last message and, where the server
    /// tells, its size.
    MamCheck {
        #[arg(long, default_value = "u1")]
        user: String,
        /// Another archive than the user's own (a room's JID).
        #[arg(long)]
        archive: Option<String>,
    },
    /// REST senders (HTTP API, --http-port) to XMPP receivers: requests per second.
    RestSend {
        #[arg(long, default_value = "u")]
        prefix: String,
        #[arg(long, default_value_t = 1)]
        start: usize,
        /// REST users sending, one request after the other each; as many XMPP users
        /// receive.
        #[arg(long, default_value_t = 50)]
        senders: usize,
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// One XMPP contact's presence changes fanned out to N event streams (HTTP API,
    /// --http-port) of users subscribed to it (as set up by roster-setup).
    SseFanout {
        #[arg(long, default_value = "ro1")]
        owner: String,
        #[arg(long, default_value = "rc")]
        contact_prefix: String,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 20)]
        updates: usize,
    },
    /// The ceiling: relay whole stanzas between connection 2i and 2i+1, with no XMPP, over
    /// TLS with --tls (run `throughput --raw` against it). Runs until killed.
    Relay {
        #[arg(long, default_value = "127.0.0.1:15522")]
        listen: SocketAddr,
        /// Runtime worker threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        workers: usize,
    },
    /// c. The same pairs at a fixed aggregate rate; p50/p99/p99.9 latency. With
    /// --peer-port, the receivers log in there (another node of the domain, or a
    /// federated server).
    Latency {
        #[arg(long, default_value = "u")]
        prefix: String,
        #[arg(long, default_value_t = 1)]
        start: usize,
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// Messages per second, all pairs together.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// d. Login storm: N logins (connect, SASL, bind, close), twice; logins per second.
    Login {
        #[arg(long, default_value = "u")]
        prefix: String,
        #[arg(long, default_value_t = 1)]
        start: usize,
        #[arg(short, long, default_value_t = 1000)]
        n: usize,
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        #[arg(long, value_enum, default_value = "SCRAM-SHA-1")]
        mech: Mech,
    },
    /// e. Queue messages for an offline user, then time the flush at login.
    Offline {
        #[arg(long, default_value = "off1")]
        recipient: String,
        #[arg(long, default_value = "off2")]
        sender: String,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
    },
    /// Federation: senders on server A, receivers on server B (--peer-*), W messages in
    /// flight per pair; delivered messages per second across the server-to-server link.
    FederationThroughput {
        #[arg(long, default_value = "u")]
        prefix: String,
        #[arg(long, default_value_t = 1)]
        start: usize,
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        #[arg(long, default_value_t = 20)]
        window: usize,
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 50)]
        lat_sample: u64,
    },
    /// Federation: with server B down, queue COUNT messages on A for a user on B; then
    /// (after touching --ready-file) wait for B's s2s listener, log the user in on B and
    /// time the backlog's delivery and A's queue draining.
    FederationBacklog {
        #[arg(long, default_value = "bs1")]
        sender: String,
        #[arg(long, default_value = "br1")]
        recipient: String,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Server B's server-to-server port (on --peer-host).
        #[arg(long)]
        peer_s2s_port: u16,
        /// Created once A accepted every message: the driver then starts B.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Longest wait for B's listener after the messages were queued, in seconds.
        #[arg(long, default_value_t = 120.0)]
        wait_peer: f64,
        /// The outpost binary and server A's configuration: `outpost admin links --json`
        /// is polled for A's queue to B.
        #[arg(long)]
        outpost: Option<PathBuf>,
        #[arg(long)]
        a_config: Option<PathBuf>,
    },
    /// f. A user with many contacts, some online, logs in; time until all presences.
    Roster {
        #[arg(long, default_value = "ro1")]
        owner: String,
        #[arg(long, default_value = "rc")]
        contact_prefix: String,
        #[arg(long, default_value_t = 1000)]
        contacts: usize,
        #[arg(long, default_value_t = 500)]
        online: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

/// The MUC scenario's options (see [`muc::MucOpts`]).
#[derive(clap::Args)]
struct MucArgs {
    #[arg(long, default_value = "u")]
    prefix: String,
    #[arg(long, default_value_t = 1)]
    start: usize,
    #[arg(long, default_value_t = 100)]
    occupants: usize,
    /// Occupants that send (the first ones); 0: every occupant.
    #[arg(long, default_value_t = 0)]
    senders: usize,
    #[arg(long, default_value_t = 2)]
    window: usize,
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Keep one latency sample per this many deliveries at each occupant.
    #[arg(long, default_value_t = 10)]
    lat_sample: u64,
    /// The room's local part (default: a new room, bench-<unix ms>).
    #[arg(long)]
    room: Option<String>,
    /// The MUC service (default: conference.<domain>).
    #[arg(long)]
    service: Option<String>,
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Afterwards, check the room's archive (XEP-0313) ends with the last message.
    #[arg(long)]
    mam_check: bool,
}

impl MucArgs {
    fn opts(&self, domain: &str) -> muc::MucOpts {
        muc::MucOpts {
            prefix: self.prefix.clone(),
            start: self.start,
            occupants: self.occupants,
            senders: self.senders,
            window: self.window,
            warmup: secs(self.warmup),
            duration: secs(self.duration),
            lat_sample: self.lat_sample,
            room: self.room.clone().unwrap_or_else(new_room_name),
            service: self
                .service
                .clone()
                .unwrap_or_else(|| format!("conference.{domain}")),
            concurrency: self.concurrency,
            mam_check: self.mam_check,
        }
    }
}

fn require_loopback(what: &str, ip: IpAddr) -> anyhow::Result<()> {
    if !ip.is_loopback() {
        bail!("refusing {what} {ip}: load may only go to 127.0.0.0/8 or ::1");
    }
    Ok(())
}

fn secs(x: f64) -> Duration {
    Duration::from_secs_f64(x.max(0.0))
}

fn read_pid(f: &std::path::Path) -> anyhow::Result<u32> {
    let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
    text.trim().parse().context("pidfile holds no pid")
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// The `relay` sub-command: prints one JSON line once it listens, then relays until killed.
fn serve_relay(cli: &Cli, listen: SocketAddr, workers: usize) -> anyhow::Result<()> {
    require_loopback("relay address", listen.ip())?;
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let tls = if cli.tls {
        Some(outpost_bench::relay::tls_acceptor(&cli.domain)?)
    } else {
        None
    };
    runtime(workers.max(2))?.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let line = json!({"relay": "listening", "addr": listen.to_string(), "tls": cli.tls, "workers": workers});
        println!("{line}");
        std::io::stdout().flush()?;
        outpost_bench::relay::serve(listener, tls).await?;
        Ok(())
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Scenario::Relay { listen, workers } = &cli.scenario {
        return serve_relay(&cli, *listen, *workers);
    }
    let (t, peer) = targets(&cli)?;
    let rt = runtime(cli.threads)?;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let result = rt.block_on(async {
        tokio::time::timeout(
            secs(cli.max_seconds),
            run(&t, peer.as_ref(), &cli, &cli.scenario),
        )
        .await
        .unwrap_or_else(|_| Ok(json!({"error": format!("hit --max-seconds={}", cli.max_seconds)})))
    });
    let mut v = match result {
        Ok(v) => v,
        Err(e) => json!({"error": e.to_string()}),
    };
    if let Value::Object(m) = &mut v {
        describe_run(m, &cli, t.addr, started);
    }
    let line = serde_json::to_string(&v)?;
    println!("{line}");
    if let Some(out) = &cli.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .with_context(|| format!("opening {}", out.display()))?;
        writeln!(f, "{line}")?;
    }
    if v.get("error").is_some() {
        std::process::exit(1);
    }
    Ok(())
}

/// The server under test, and with `--peer-port` the second one (a federated peer or
/// another node of the domain); both on loopback only.
fn targets(cli: &Cli) -> anyhow::Result<(Arc<Target>, Option<Arc<Target>>)> {
    let addr = resolve(&cli.host, cli.port)?;
    require_loopback("target", addr.ip())?;
    for ip in &cli.src_ips {
        require_loopback("source address", *ip)?;
    }
    let mut pids = cli.pids.clone();
    if let Some(f) = &cli.pidfile {
        pids.push(read_pid(f)?);
    }
    // Server B may be down when the run starts (the backlog scenario): read again later.
    let peer_pid = cli.peer_pidfile.as_deref().and_then(|f| read_pid(f).ok());
    pids.extend(peer_pid);
    let peer = if cli.peer_port != 0 {
        let peer_addr = resolve(&cli.peer_host, cli.peer_port)?;
        require_loopback("peer", peer_addr.ip())?;
        if cli.peer_domain.is_empty() {
            bail!("--peer-port needs --peer-domain");
        }
        let mut tb = Target::new(peer_addr, &cli.peer_domain, &cli.password);
        tb.tls = cli.tls;
        tb.src_ips = cli.src_ips.clone();
        tb.server_pids = peer_pid.into_iter().collect();
        tb.step_timeout = secs(cli.timeout);
        tb.login_mech = cli.login_mech;
        Some(Arc::new(tb))
    } else {
        None
    };
    let mut target = Target::new(addr, &cli.domain, &cli.password);
    target.tls = cli.tls;
    target.raw = cli.raw;
    target.ws_path.clone_from(&cli.ws);
    target.src_ips = cli.src_ips.clone();
    target.server_pids = pids;
    target.step_timeout = secs(cli.timeout);
    target.login_mech = cli.login_mech;
    Ok((Arc::new(target), peer))
}

fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .context("no address")
}

/// What a result line says of its run besides the scenario's figures.
fn describe_run(m: &mut serde_json::Map<String, Value>, cli: &Cli, addr: SocketAddr, started: u64) {
    m.insert("label".into(), json!(cli.label));
    m.insert("target".into(), json!(addr.to_string()));
    m.insert("domain".into(), json!(cli.domain));
    m.insert("tls".into(), json!(cli.tls));
    m.insert("raw".into(), json!(cli.raw));
    m.insert(
        "transport".into(),
        json!(if cli.ws.is_some() { "websocket" } else { "tcp" }),
    );
    if cli.ws.is_some() {
        let scenario = m
            .get("scenario")
            .and_then(Value::as_str)
            .map(|s| format!("ws-{s}"));
        if let Some(s) = scenario {
            m.insert("scenario".into(), json!(s));
        }
    }
    m.insert("generator_threads".into(), json!(cli.threads.max(1)));
    m.insert(
        "generator_peak_rss_kib".into(),
        json!(metrics::self_peak_rss_kib()),
    );
    m.insert("started_unix".into(), json!(started));
}

/// A room name no earlier run used.
fn new_room_name() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("bench-{ms}")
}

/// `queued` of A's link to `peer_domain` in `outpost admin links --json`.
fn admin_queue_probe(outpost: PathBuf, config: PathBuf, peer_domain: String) -> QueueProbe {
    Box::new(move || {
        let out = std::process::Command::new(&outpost)
            .args(["admin", "links", "--json", "--config"])
            .arg(&config)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        let rows: Value = serde_json::from_slice(&out.stdout).ok()?;
        let mut queued = 0;
        for row in rows.as_array()? {
            if row.get("remote").and_then(Value::as_str) == Some(peer_domain.as_str()) {
                queued += row.get("queued").and_then(Value::as_u64)?;
            }
        }
        Some(queued)
    })
}

async fn run(
    t: &Arc<Target>,
    peer: Option<&Arc<Target>>,
    cli: &Cli,
    s: &Scenario,
) -> anyhow::Result<Value> {
    let need_peer = || peer.context("this scenario needs --peer-port and --peer-domain");
    Ok(match s {
        Scenario::FederationThroughput {
            prefix,
            start,
            pairs,
            window,
            warmup,
            duration,
            lat_sample,
        } => serde_json::to_value(
            scenarios::federation_throughput(
                t,
                need_peer()?,
                prefix,
                *start,
                *pairs,
                *window,
                secs(*warmup),
                secs(*duration),
                (*lat_sample).max(1),
            )
            .await?,
        )?,
        Scenario::FederationBacklog { .. } => federation_backlog(t, need_peer()?, cli, s).await?,
        Scenario::Register {
            prefix,
            start,
            n,
            concurrency,
        } => serde_json::to_value(scenarios::register(t, prefix, *start, *n, *concurrency).await)?,
        Scenario::RosterSetup {
            owner,
            contact_prefix,
            contacts,
            concurrency,
        } => {
            let c = users(contact_prefix, 1, *contacts);
            serde_json::to_value(scenarios::roster_setup(t, owner, &c, *concurrency).await?)?
        }
        Scenario::Idle {
            prefix,
            start,
            n,
            concurrency,
            settle,
            hold,
            sm,
        } => {
            let opts = scenarios::IdleOpts {
                concurrency: *concurrency,
                settle: secs(*settle),
                hold: secs(*hold),
                sm: *sm,
            };
            serde_json::to_value(scenarios::idle_with(t, prefix, *start, *n, opts).await)?
        }
        Scenario::Throughput { .. } => throughput(t, s).await?,
        Scenario::Muc(a) => serde_json::to_value(muc::muc(t, peer, &a.opts(&t.domain)).await?)?,
        Scenario::MamCheck { user, archive } => {
            let mut r = serde_json::to_value(mam::check(t, user, archive.as_deref(), None).await)?;
            if let Value::Object(m) = &mut r {
                m.insert("scenario".into(), json!("mam-check"));
            }
            r
        }
        Scenario::Relay { .. } => bail!("the relay runs from main"),
        Scenario::RestSend {
            prefix,
            start,
            senders,
            warmup,
            duration,
        } => {
            let http = SocketAddr::new(t.addr.ip(), cli.http_port);
            let (warmup, duration) = (secs(*warmup), secs(*duration));
            let r = rest::rest_send(t, http, prefix, *start, *senders, warmup, duration).await?;
            serde_json::to_value(r)?
        }
        Scenario::SseFanout {
            owner,
            contact_prefix,
            subscribers,
            updates,
        } => {
            let http = SocketAddr::new(t.addr.ip(), cli.http_port);
            let r = rest::sse_fanout(t, http, owner, contact_prefix, *subscribers, *updates);
            serde_json::to_value(r.await?)?
        }
        Scenario::Latency {
            prefix,
            start,
            pairs,
            rate,
            warmup,
            duration,
        } => serde_json::to_value(
            scenarios::latency(
                t,
                peer.unwrap_or(t),
                prefix,
                *start,
                *pairs,
                *rate,
                secs(*warmup),
                secs(*duration),
            )
            .await?,
        )?,
        Scenario::Login {
            prefix,
            start,
            n,
            concurrency,
            mech,
        } => serde_json::to_value(
            scenarios::login_storm(t, prefix, *start, *n, *concurrency, *mech).await,
        )?,
        Scenario::Offline {
            recipient,
            sender,
            count,
        } => serde_json::to_value(
            scenarios::offline(t, recipient, sender, *count, Duration::from_secs(300)).await?,
        )?,
        Scenario::Roster {
            owner,
            contact_prefix,
            contacts,
            online,
            runs,
        } => {
            let c = users(contact_prefix, 1, *contacts);
            serde_json::to_value(scenarios::roster_login(t, owner, &c, *online, *runs).await?)?
        }
    })
}

/// Fills the peer's queue while it is down, then measures it draining (both servers' CPU).
async fn federation_backlog(
    t: &Arc<Target>,
    tb: &Arc<Target>,
    cli: &Cli,
    s: &Scenario,
) -> anyhow::Result<Value> {
    let Scenario::FederationBacklog {
        sender,
        recipient,
        count,
        peer_s2s_port,
        ready_file,
        wait_peer,
        outpost,
        a_config,
    } = s
    else {
        bail!("not the federation backlog scenario");
    };
    let max = Duration::from_secs(300);
    let fill =
        scenarios::federation_backlog_fill(t, sender, &tb.jid(recipient), *count, max).await?;
    if let Some(f) = ready_file {
        std::fs::write(f, "queued\n").with_context(|| format!("writing {}", f.display()))?;
    }
    let probe = match (outpost, a_config) {
        (Some(o), Some(c)) => Some(admin_queue_probe(o.clone(), c.clone(), tb.domain.clone())),
        _ => None,
    };
    let s2s = SocketAddr::new(tb.addr.ip(), *peer_s2s_port);
    // Both servers' CPU while the backlog crosses: B's pid is the new one.
    let pids = || {
        let mut p = t.server_pids.clone();
        p.retain(|x| !tb.server_pids.contains(x));
        p.extend(cli.peer_pidfile.as_deref().and_then(|f| read_pid(f).ok()));
        p
    };
    let mut report = scenarios::federation_backlog_drain(
        tb,
        s2s,
        recipient,
        *count,
        probe,
        &pids,
        secs(*wait_peer),
        max,
    )
    .await?;
    report.fill = Some(fill);
    Ok(serde_json::to_value(report)?)
}

/// Saturation throughput, and the first pair's archive checked after it if asked.
async fn throughput(t: &Arc<Target>, s: &Scenario) -> anyhow::Result<Value> {
    let Scenario::Throughput {
        prefix,
        start,
        pairs,
        window,
        warmup,
        duration,
        lat_sample,
        mam_check,
    } = s
    else {
        bail!("not the throughput scenario");
    };
    let mut r = scenarios::throughput(
        t,
        prefix,
        *start,
        *pairs,
        *window,
        secs(*warmup),
        secs(*duration),
        (*lat_sample).max(1),
    )
    .await?;
    if *mam_check && !t.raw && *pairs > 0 {
        let sent = r.sent_per_pair.first().copied().unwrap_or(0);
        let c = mam::check_first_pair(t, prefix, *start, *pairs, sent).await;
        r.mam_check = Some(c);
    }
    Ok(serde_json::to_value(r)?)
}
