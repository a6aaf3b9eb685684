//! The scenarios of issue 3, each returning a serialisable report.
//!
//! Every loop here is bounded in count and in time: waits have the target's step timeout,
//! load phases a fixed duration, drains a deadline. Users are named `<prefix><number>` and
//! share one password, so every server can be provisioned the same way.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::conn::{Conn, Mech, Result, Stream, Target, XmppError};
use crate::frame::{self, FrameKind};
use crate::metrics::{self, Meter, Percentiles, Usage, round1, round3};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Nanoseconds since the first call, the clock carried in message bodies.
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// `<prefix><start>`, …, `<prefix><start + n - 1>`.
pub fn users(prefix: &str, start: usize, n: usize) -> Vec<String> {
    (start..start + n).map(|i| format!("{prefix}{i}")).collect()
}

pub(crate) fn first_errors(errors: &[String]) -> Vec<String> {
    errors.iter().take(3).cloned().collect()
}

pub(crate) fn per_sec(n: u64, wall: f64) -> f64 {
    round1(n as f64 / wall.max(1e-9))
}

/// Logs in every user with at most `concurrency` logins in flight. Returns the connections
/// in user order (`None` where the login failed) and the errors.
pub async fn login_many(
    t: &Arc<Target>,
    users: &[String],
    concurrency: usize,
    mech: Mech,
    presence: bool,
) -> (Vec<Option<Conn>>, Vec<String>) {
    login_many_sm(t, users, concurrency, mech, presence, false).await
}

/// [`login_many`], with stream management enabled on every connection if `sm`.
pub async fn login_many_sm(
    t: &Arc<Target>,
    users: &[String],
    concurrency: usize,
    mech: Mech,
    presence: bool,
    sm: bool,
) -> (Vec<Option<Conn>>, Vec<String>) {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for (i, u) in users.iter().enumerate() {
        let (t, u, sem) = (t.clone(), u.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let r = Conn::login_sm(&t, &u, mech, presence, sm).await;
            (i, r.map_err(|e| format!("{u}: {e}")))
        });
    }
    let mut conns: Vec<Option<Conn>> = (0..users.len()).map(|_| None).collect();
    let mut errors = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, Ok(c))) => conns[i] = Some(c),
            Ok((_, Err(e))) => errors.push(e),
            Err(e) => errors.push(format!("task: {e}")),
        }
    }
    (conns, errors)
}

// ---------------------------------------------------------------- provisioning

#[derive(Debug, Serialize)]
pub struct RegisterReport {
    pub scenario: &'static str,
    pub n: usize,
    pub created: u64,
    pub existed: u64,
    pub errors: usize,
    pub errors_sample: Vec<String>,
    pub per_s: f64,
    pub usage: Usage,
}

/// Creates users by in-band registration (XEP-0077), one stream per user.
pub async fn register(
    t: &Arc<Target>,
    prefix: &str,
    start: usize,
    n: usize,
    concurrency: usize,
) -> RegisterReport {
    let meter = Meter::start(&t.server_pids);
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for u in users(prefix, start, n) {
        let (t, sem) = (t.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            Conn::register(&t, &u).await.map_err(|e| e.to_string())
        });
    }
    let (mut created, mut existed, mut errors) = (0, 0, Vec::new());
    while let Some(j) = set.join_next().await {
        match j {
            Ok(Ok(true)) => created += 1,
            Ok(Ok(false)) => existed += 1,
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let usage = meter.finish();
    RegisterReport {
        scenario: "register",
        n,
        created,
        existed,
        errors: errors.len(),
        errors_sample: first_errors(&errors),
        per_s: per_sec(n as u64, usage.wall_s),
        usage,
    }
}

#[derive(Debug, Serialize)]
pub struct RosterSetupReport {
    pub scenario: &'static str,
    pub owner: String,
    pub contacts: usize,
    pub already_mutual: usize,
    pub newly_subscribed: usize,
    pub mutual_at_end: usize,
    pub errors: usize,
    pub errors_sample: Vec<String>,
    pub usage: Usage,
}

/// Items of a roster result with `subscription='both'`, as bare JIDs.
fn mutual_items(roster: &[u8]) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut rest = roster;
    while let Some(i) = memchr::memmem::find(rest, b"<item") {
        rest = &rest[i..];
        let end = memchr::memchr(b'>', rest).map_or(rest.len(), |e| e + 1);
        let item = &rest[..end];
        if frame::attr(item, "subscription") == Some(b"both")
            && let Some(j) = frame::attr(item, "jid")
        {
            out.insert(String::from_utf8_lossy(j).into_owned());
        }
        rest = &rest[end..];
    }
    out
}

async fn roster_get(c: &mut Conn, t: &Target) -> Result<Vec<u8>> {
    let id = format!("roster{}", t.unique());
    c.send(format!("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>").as_bytes())
        .await?;
    c.expect(t.step_timeout, |s| {
        frame::name(s) == b"iq" && frame::attr(s, "id") == Some(id.as_bytes())
    })
    .await
}

fn bare(jid: &[u8]) -> &[u8] {
    match memchr::memchr(b'/', jid) {
        Some(i) => &jid[..i],
        None => jid,
    }
}

/// Gives `owner` a mutual subscription (RFC 6121 §3) with every contact, through the
/// protocol: owner subscribes, the contact approves and subscribes back, the owner
/// approves. Contacts already mutual are skipped, so it can be run again.
pub async fn roster_setup(
    t: &Arc<Target>,
    owner: &str,
    contacts: &[String],
    concurrency: usize,
) -> Result<RosterSetupReport> {
    let meter = Meter::start(&t.server_pids);
    let mut oc = Conn::login(t, owner, t.login_mech, true).await?;
    let before = mutual_items(&roster_get(&mut oc, t).await?);
    let todo: Vec<String> = contacts
        .iter()
        .filter(|c| !before.contains(&t.jid(c)))
        .cloned()
        .collect();
    let owner_jid = t.jid(owner);

    // The owner's side: a reader that approves every subscription request and acknowledges
    // roster pushes, and a writer that sends those answers and the owner's own requests.
    // Reading never waits for writing: a server that stops reading from a client whose
    // output is backed up (Prosody does) would otherwise deadlock with us.
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let stop = Arc::new(AtomicBool::new(false));
    let (mut rd, mut wr) = tokio::io::split(std::mem::replace(&mut oc.io, Stream::Gone));
    let mut framer = std::mem::take(&mut oc.framer);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            wr.write_all(&m).await?;
        }
        Ok::<_, std::io::Error>(wr)
    });
    let reader = {
        let (stop, tx) = (stop.clone(), tx.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                framer.compact();
                framer.buffer_mut().reserve(16384);
                match tokio::time::timeout(
                    Duration::from_millis(100),
                    rd.read_buf(framer.buffer_mut()),
                )
                .await
                {
                    Err(_) => continue,
                    Ok(Ok(0)) => return Err(XmppError("owner connection closed".into())),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.into()),
                }
                while let Some(f) = framer.next_frame() {
                    let s = framer.slice(&f);
                    if f.kind != FrameKind::Element {
                        continue;
                    }
                    match frame::name(s) {
                        b"presence" if frame::attr(s, "type") == Some(b"subscribe") => {
                            if let Some(from) = frame::attr(s, "from") {
                                out.extend_from_slice(b"<presence type='subscribed' to='");
                                out.extend_from_slice(bare(from));
                                out.extend_from_slice(b"'/>");
                            }
                        }
                        b"iq" if frame::attr(s, "type") == Some(b"set") => {
                            if let Some(id) = frame::attr(s, "id") {
                                out.extend_from_slice(b"<iq type='result' id='");
                                out.extend_from_slice(id);
                                out.extend_from_slice(b"'/>");
                            }
                        }
                        _ => {}
                    }
                }
                if !out.is_empty() {
                    let _ = tx.send(std::mem::take(&mut out));
                }
            }
            Ok((rd, framer))
        })
    };

    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for contact in todo.clone() {
        let (t, sem, tx, owner_jid) = (t.clone(), sem.clone(), tx.clone(), owner_jid.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let mut c = Conn::login(&t, &contact, t.login_mech, false).await?;
            // The roster first, as clients do: servers deliver subscription approvals only
            // to "interested" resources, those that have asked for the roster (RFC 6121
            // §2.1.6, §3.1.6), and Prosody holds to that.
            roster_get(&mut c, &t).await?;
            c.send(b"<presence/>").await?;
            c.barrier(&t).await?;
            let cj = t.jid(&contact);
            tx.send(format!("<presence type='subscribe' to='{cj}'/>").into_bytes())
                .map_err(|_| XmppError("owner writer ended".into()))?;
            let from_owner = |s: &[u8], ty: &[u8]| {
                frame::name(s) == b"presence"
                    && frame::attr(s, "type") == Some(ty)
                    && frame::attr(s, "from").map(bare) == Some(owner_jid.as_bytes())
            };
            c.expect(t.step_timeout, |s| from_owner(s, b"subscribe"))
                .await?;
            c.send(
                format!(
                    "<presence type='subscribed' to='{owner_jid}'/>\
                     <presence type='subscribe' to='{owner_jid}'/>"
                )
                .as_bytes(),
            )
            .await?;
            c.expect(t.step_timeout, |s| from_owner(s, b"subscribed"))
                .await?;
            c.close().await;
            Ok::<_, XmppError>(())
        });
    }
    drop(tx);
    let mut errors = Vec::new();
    while let Some(j) = set.join_next().await {
        match j {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (rd, framer) = reader
        .await
        .map_err(|e| XmppError(format!("owner reader: {e}")))??;
    let wr = writer
        .await
        .map_err(|e| XmppError(format!("owner writer: {e}")))??;
    oc.io = rd.unsplit(wr);
    oc.framer = framer;
    oc.barrier(t).await?;
    let after = mutual_items(&roster_get(&mut oc, t).await?);
    oc.close().await;
    let mutual_at_end = contacts
        .iter()
        .filter(|c| after.contains(&t.jid(c)))
        .count();
    Ok(RosterSetupReport {
        scenario: "roster-setup",
        owner: owner_jid,
        contacts: contacts.len(),
        already_mutual: contacts.len() - todo.len(),
        newly_subscribed: todo.len() - errors.len(),
        mutual_at_end,
        errors: errors.len(),
        errors_sample: first_errors(&errors),
        usage: meter.finish(),
    })
}

// ---------------------------------------------------------------- a. idle

#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub scenario: &'static str,
    pub n: usize,
    /// Stream management (XEP-0198, with resumption) enabled on every connection.
    pub sm: bool,
    pub connected: usize,
    pub alive_at_end: usize,
    pub errors: usize,
    pub errors_sample: Vec<String>,
    pub server_rss_before_kib: u64,
    pub server_rss_loaded_kib: u64,
    pub server_rss_after_close_kib: u64,
    /// (loaded − before) ÷ connected, in bytes.
    pub server_bytes_per_conn: Option<u64>,
    pub logins_per_s: f64,
    pub login_phase: Usage,
    pub hold_phase: Usage,
    pub generator_peak_rss_kib: u64,
}

/// How the idle scenario runs.
#[derive(Clone, Copy, Debug)]
pub struct IdleOpts {
    pub concurrency: usize,
    pub settle: Duration,
    pub hold: Duration,
    /// Enable stream management on every connection.
    pub sm: bool,
}

/// N authenticated, available connections held open; the server's RSS growth per
/// connection.
pub async fn idle(
    t: &Arc<Target>,
    prefix: &str,
    start: usize,
    n: usize,
    concurrency: usize,
    settle: Duration,
    hold: Duration,
) -> IdleReport {
    let opts = IdleOpts {
        concurrency,
        settle,
        hold,
        sm: false,
    };
    idle_with(t, prefix, start, n, opts).await
}

/// [`idle`] with every option.
pub async fn idle_with(
    t: &Arc<Target>,
    prefix: &str,
    start: usize,
    n: usize,
    opts: IdleOpts,
) -> IdleReport {
    let IdleOpts {
        concurrency,
        settle,
        hold,
        sm,
    } = opts;
    // A few logins first, so that lazily allocated server state is not counted per
    // connection.
    let warm = users(prefix, start, n.min(20));
    let (conns, _) = login_many_sm(t, &warm, 10, t.login_mech, true, sm).await;
    for mut c in conns.into_iter().flatten() {
        c.close().await;
    }
    tokio::time::sleep(settle).await;
    let rss0 = metrics::rss_kib(&t.server_pids);

    let meter = Meter::start(&t.server_pids);
    let names = users(prefix, start, n);
    let (conns, errors) = login_many_sm(t, &names, concurrency, t.login_mech, true, sm).await;
    let login_phase = meter.finish();
    let mut conns: Vec<Conn> = conns.into_iter().flatten().collect();
    for c in &mut conns {
        c.shrink();
    }
    let connected = conns.len();

    let meter = Meter::start(&t.server_pids);
    tokio::time::sleep(settle).await;
    let mut samples = Vec::new();
    let hold_end = Instant::now() + hold;
    loop {
        samples.push(metrics::rss_kib(&t.server_pids));
        if Instant::now() >= hold_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let hold_phase = meter.finish();
    let rss1 = *samples.last().unwrap_or(&0);

    // Every connection still answers a ping: none was dropped while idle.
    let alive = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for mut c in conns {
        let (t, alive, sem) = (t.clone(), alive.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            if c.barrier(&t).await.is_ok() {
                alive.fetch_add(1, Ordering::Relaxed);
            }
            c.close().await;
        });
    }
    while set.join_next().await.is_some() {}
    tokio::time::sleep(settle).await;
    let rss2 = metrics::rss_kib(&t.server_pids);
    IdleReport {
        scenario: "idle",
        n,
        sm,
        connected,
        alive_at_end: alive.load(Ordering::Relaxed) as usize,
        errors: errors.len(),
        errors_sample: first_errors(&errors),
        server_rss_before_kib: rss0,
        server_rss_loaded_kib: rss1,
        server_rss_after_close_kib: rss2,
        server_bytes_per_conn: (!t.server_pids.is_empty() && connected > 0)
            .then(|| rss1.saturating_sub(rss0) * 1024 / connected as u64),
        logins_per_s: per_sec(connected as u64, login_phase.wall_s),
        login_phase,
        hold_phase,
        generator_peak_rss_kib: metrics::self_peak_rss_kib(),
    }
}

// ---------------------------------------------------------------- b. and c. message pairs

/// A sender and a receiver, logged in and available.
struct Pair {
    sender: Conn,
    receiver: Conn,
    /// `<message to='receiver' type='chat'><body>`
    prefix: Vec<u8>,
}

async fn setup_pairs(
    t: &Arc<Target>,
    prefix: &str,
    start: usize,
    pairs: usize,
    concurrency: usize,
) -> Result<Vec<Pair>> {
    setup_pairs_between(t, t, prefix, start, pairs, concurrency).await
}

/// Senders `<prefix><start>..` on `ts`, receivers `<prefix><start + pairs>..` on `tr` (the
/// same server, or another one reached by federation).
async fn setup_pairs_between(
    ts: &Arc<Target>,
    tr: &Arc<Target>,
    prefix: &str,
    start: usize,
    pairs: usize,
    concurrency: usize,
) -> Result<Vec<Pair>> {
    let send_u = users(prefix, start, pairs);
    let recv_u = users(prefix, start + pairs, pairs);
    let (senders, e1) = login_many(ts, &send_u, concurrency, ts.login_mech, true).await;
    let (receivers, e2) = login_many(tr, &recv_u, concurrency, tr.login_mech, true).await;
    if !e1.is_empty() || !e2.is_empty() {
        let all: Vec<String> = e1.into_iter().chain(e2).collect();
        return Err(XmppError(format!(
            "{} logins failed, e.g. {:?}",
            all.len(),
            first_errors(&all)
        )));
    }
    Ok(senders
        .into_iter()
        .zip(receivers)
        .zip(recv_u)
        .map(|((s, r), ru)| {
            let (mut sender, mut receiver) = (s.expect("no error"), r.expect("no error"));
            sender.shrink();
            receiver.shrink();
            Pair {
                sender,
                receiver,
                prefix: format!("<message to='{}' type='chat'><body>", tr.jid(&ru)).into_bytes(),
            }
        })
        .collect())
}

/// Sends `count` numbered messages starting with `prefix`, in batches of 100, then waits
/// for the server to answer a ping: every message has been handled (`what`: stored,
/// queued).
async fn send_numbered(
    s: &mut Conn,
    t: &Target,
    prefix: &[u8],
    count: u64,
    max: Duration,
    what: &str,
) -> Result<()> {
    let ts = now_ns();
    let mut out = Vec::with_capacity(100 * 96);
    let mut seq = 0;
    while seq < count {
        out.clear();
        for _ in 0..100.min(count - seq) {
            push_message(&mut out, prefix, seq, ts);
            seq += 1;
        }
        tokio::time::timeout(max, s.send(&out))
            .await
            .map_err(|_| XmppError("timed out sending".into()))??;
    }
    tokio::time::timeout(max, s.barrier(t))
        .await
        .map_err(|_| XmppError(format!("timed out waiting for the server to {what}")))??;
    Ok(())
}

pub(crate) fn push_message(out: &mut Vec<u8>, prefix: &[u8], seq: u64, ts: u64) {
    use std::io::Write as _;
    out.extend_from_slice(prefix);
    let _ = write!(out, "{seq} {ts}</body></message>");
}

/// `seq ts` from a message body.
pub(crate) fn parse_body(stanza: &[u8]) -> Option<(u64, u64)> {
    let body = frame::child_text(stanza, "body")?;
    let sp = memchr::memchr(b' ', body)?;
    let num = |b: &[u8]| std::str::from_utf8(b).ok()?.parse().ok();
    Some((num(&body[..sp])?, num(&body[sp + 1..])?))
}

/// What one pair saw.
#[derive(Default)]
struct PairStats {
    /// The pair's place in the set-up order.
    index: usize,
    sent: u64,
    received: u64,
    out_of_order: u64,
    errors: u64,
    latencies: Vec<u64>,
    failure: Option<String>,
}

impl PairStats {
    /// Handles the messages framed so far on the receiver; returns how many arrived.
    fn take_messages(&mut self, r: &mut Conn, mut on: impl FnMut(&mut Self, u64)) -> Result<u64> {
        let mut n = 0;
        while let Some(f) = r.framer.next_frame() {
            let s = r.framer.slice(&f);
            match f.kind {
                FrameKind::Element if frame::name(s) == b"message" => {
                    if frame::is_error(s) {
                        self.errors += 1;
                        continue;
                    }
                    let Some((seq, ts)) = parse_body(s) else {
                        continue;
                    };
                    if seq != self.received {
                        self.out_of_order += 1;
                    }
                    self.received = seq + 1;
                    n += 1;
                    on(self, ts);
                }
                FrameKind::Element if frame::qname(s) == b"stream:error" => {
                    return Err(XmppError(format!(
                        "stream error: {}",
                        String::from_utf8_lossy(s)
                    )));
                }
                FrameKind::StreamClose => {
                    return Err(XmppError("receiver stream closed".into()));
                }
                _ => {}
            }
        }
        Ok(n)
    }
}

/// Reads and drops whatever the server sends a sender (it should send nothing but
/// errors); counts message errors.
fn drain_sender(s: &mut Conn, stats: &mut PairStats) -> Result<()> {
    while let Some(f) = s.framer.next_frame() {
        let st = s.framer.slice(&f);
        if f.kind == FrameKind::StreamClose || frame::qname(st) == b"stream:error" {
            return Err(XmppError(format!(
                "sender stream ended: {}",
                String::from_utf8_lossy(st)
            )));
        }
        if frame::is_error(st) {
            stats.errors += 1;
        }
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct ThroughputReport {
    pub scenario: &'static str,
    pub pairs: usize,
    pub window: usize,
    pub duration_s: f64,
    pub delivered_in_window: u64,
    pub msgs_per_s: f64,
    pub total_sent: u64,
    pub total_delivered: u64,
    pub undelivered_after_drain: u64,
    pub out_of_order: u64,
    pub error_replies: u64,
    pub failures: Vec<String>,
    /// One sample per `lat_sample` deliveries inside the window.
    pub latency_at_saturation: Percentiles,
    pub usage: Usage,
    /// The generator's CPU per delivered message, in microseconds.
    pub generator_us_per_msg: f64,
    pub server_us_per_msg: Option<f64>,
    /// Against the relay (`--raw`): no XMPP, the same stanza bytes forwarded over TLS.
    pub raw: bool,
    /// The last page of the first receiver's archive (`--mam-check`).
    pub mam_check: Option<crate::mam::MamCheck>,
    /// Messages each pair sent, in set-up order (for the archive check).
    #[serde(skip)]
    pub sent_per_pair: Vec<u64>,
}

/// K pairs; each sender keeps `window` messages in flight to its receiver and sends one
/// more for each one delivered. Delivered messages per second over `duration`, after
/// `warmup`.
#[allow(clippy::too_many_arguments)]
pub async fn throughput(
    t: &Arc<Target>,
    prefix: &str,
    start: usize,
    pairs: usize,
    window: usize,
    warmup: Duration,
    duration: Duration,
    lat_sample: u64,
) -> Result<ThroughputReport> {
    let set_up = if t.raw {
        setup_raw_pairs(t, prefix, start, pairs).await?
    } else {
        setup_pairs(t, prefix, start, pairs, 50).await?
    };
    let mut r = run_pairs(t, set_up, window, warmup, duration, lat_sample, 10).await;
    r.pairs = pairs;
    r.raw = t.raw;
    Ok(r)
}

/// The pairs for `--raw` (the relay): sender and receiver of each pair connect one after
/// the other, sequentially, so the relay, which pairs its (2i)th accepted connection with
/// the (2i+1)th, pairs them as here. The messages are addressed as in the XMPP runs.
async fn setup_raw_pairs(
    t: &Arc<Target>,
    prefix: &str,
    start: usize,
    pairs: usize,
) -> Result<Vec<Pair>> {
    let mut out = Vec::with_capacity(pairs);
    for ru in users(prefix, start + pairs, pairs) {
        let sender = Conn::connect_raw(t).await?;
        let receiver = Conn::connect_raw(t).await?;
        out.push(Pair {
            sender,
            receiver,
            prefix: format!("<message to='{}' type='chat'><body>", t.jid(&ru)).into_bytes(),
        });
    }
    Ok(out)
}

/// The throughput scenario across two federated servers: senders on `ts` (server A),
/// receivers on `tr` (server B), every message crossing the server-to-server link. The
/// server CPU is that of every pid in `ts.server_pids` (both servers, when given).
#[allow(clippy::too_many_arguments)]
pub async fn federation_throughput(
    ts: &Arc<Target>,
    tr: &Arc<Target>,
    prefix: &str,
    start: usize,
    pairs: usize,
    window: usize,
    warmup: Duration,
    duration: Duration,
    lat_sample: u64,
) -> Result<ThroughputReport> {
    let set_up = setup_pairs_between(ts, tr, prefix, start, pairs, 50).await?;
    // Queued stanzas are committed one by one on the sending server: the drain can take
    // longer than on one server.
    let mut r = run_pairs(ts, set_up, window, warmup, duration, lat_sample, 60).await;
    r.scenario = "federation-throughput";
    r.pairs = pairs;
    Ok(r)
}

/// Drives set-up pairs for `warmup` + `duration`, then lets every pair drain for at most
/// `drain_secs`.
async fn run_pairs(
    t: &Arc<Target>,
    set_up: Vec<Pair>,
    window: usize,
    warmup: Duration,
    duration: Duration,
    lat_sample: u64,
    drain_secs: u64,
) -> ThroughputReport {
    let pairs = set_up.len();
    let delivered = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stopping = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for (index, mut p) in set_up.into_iter().enumerate() {
        let (delivered, measuring, stopping) =
            (delivered.clone(), measuring.clone(), stopping.clone());
        tasks.spawn(async move {
            let mut st = PairStats {
                index,
                ..PairStats::default()
            };
            let mut out = Vec::with_capacity(window * 96);
            let ts = now_ns();
            for _ in 0..window {
                push_message(&mut out, &p.prefix, st.sent, ts);
                st.sent += 1;
            }
            let r: Result<()> = async {
                p.sender.send(&out).await?;
                // Staggered, so that pairs with few deliveries in the window (a slow
                // server) still give samples.
                let mut since_sample = index as u64 % lat_sample;
                loop {
                    let stop = stopping.load(Ordering::Relaxed);
                    if stop && st.received >= st.sent {
                        return Ok(());
                    }
                    tokio::select! {
                        r = p.receiver.fill() => {
                            if !r? {
                                return Err(XmppError("receiver closed".into()));
                            }
                        }
                        r = p.sender.fill() => {
                            if !r? {
                                return Err(XmppError("sender closed".into()));
                            }
                            drain_sender(&mut p.sender, &mut st)?;
                            continue;
                        }
                        () = tokio::time::sleep(Duration::from_millis(100)), if stop => continue,
                    }
                    let measure = measuring.load(Ordering::Relaxed);
                    let n = st.take_messages(&mut p.receiver, |st, ts| {
                        if measure {
                            since_sample += 1;
                            if since_sample >= lat_sample {
                                since_sample = 0;
                                st.latencies.push(now_ns().saturating_sub(ts));
                            }
                        }
                    })?;
                    delivered.fetch_add(n, Ordering::Relaxed);
                    if n > 0 && !stopping.load(Ordering::Relaxed) {
                        out.clear();
                        let ts = now_ns();
                        for _ in 0..n {
                            push_message(&mut out, &p.prefix, st.sent, ts);
                            st.sent += 1;
                        }
                        p.sender.send(&out).await?;
                    }
                }
            }
            .await;
            if let Err(e) = r {
                st.failure = Some(e.to_string());
            }
            p.sender.close().await;
            p.receiver.close().await;
            st
        });
    }
    tokio::time::sleep(warmup).await;
    let d0 = delivered.load(Ordering::Relaxed);
    measuring.store(true, Ordering::Relaxed);
    let meter = Meter::start(&t.server_pids);
    tokio::time::sleep(duration).await;
    let d1 = delivered.load(Ordering::Relaxed);
    let usage = meter.finish();
    measuring.store(false, Ordering::Relaxed);
    stopping.store(true, Ordering::Relaxed);
    let stats = collect(tasks, Duration::from_secs(drain_secs)).await;
    let measured = d1 - d0;
    let mut lat: Vec<u64> = stats
        .iter()
        .flat_map(|s| s.latencies.iter().copied())
        .collect();
    let sent: u64 = stats.iter().map(|s| s.sent).sum();
    let recv_total = delivered.load(Ordering::Relaxed);
    let mut sent_per_pair = vec![0; pairs];
    for s in &stats {
        sent_per_pair[s.index] = s.sent;
    }
    ThroughputReport {
        scenario: "throughput",
        pairs,
        window,
        duration_s: duration.as_secs_f64(),
        delivered_in_window: measured,
        msgs_per_s: per_sec(measured, usage.wall_s),
        total_sent: sent,
        total_delivered: recv_total,
        undelivered_after_drain: sent.saturating_sub(recv_total),
        out_of_order: stats.iter().map(|s| s.out_of_order).sum(),
        error_replies: stats.iter().map(|s| s.errors).sum(),
        failures: failures(&stats, pairs),
        latency_at_saturation: metrics::percentiles(&mut lat),
        generator_us_per_msg: us_per_msg(usage.generator_cpu_pct, usage.wall_s, measured),
        server_us_per_msg: usage
            .server_cpu_pct
            .map(|p| us_per_msg(p, usage.wall_s, measured)),
        usage,
        raw: false,
        mam_check: None,
        sent_per_pair,
    }
}

pub(crate) fn us_per_msg(cpu_pct: f64, wall: f64, msgs: u64) -> f64 {
    if msgs == 0 {
        return 0.0;
    }
    round3(cpu_pct / 100.0 * wall * 1e6 / msgs as f64)
}

/// Joins the tasks, aborting those still running at the deadline.
pub(crate) async fn collect<T: 'static>(mut tasks: JoinSet<T>, deadline: Duration) -> Vec<T> {
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(end, tasks.join_next()).await {
            Ok(Some(Ok(s))) => out.push(s),
            Ok(Some(Err(_))) => {}
            Ok(None) => break,
            Err(_) => {
                tasks.abort_all();
                break;
            }
        }
    }
    out
}

fn failures(stats: &[PairStats], pairs: usize) -> Vec<String> {
    let mut f: Vec<String> = stats
        .iter()
        .filter_map(|s| s.failure.clone())
        .take(3)
        .collect();
    if stats.len() < pairs {
        f.push(format!(
            "{} pairs still waiting for messages at the drain deadline",
            pairs - stats.len()
        ));
    }
    f
}

#[derive(Debug, Serialize)]
pub struct LatencyReport {
    pub scenario: &'static str,
    pub pairs: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub sent_in_window: u64,
    pub achieved_rate: f64,
    pub total_sent: u64,
    pub total_delivered: u64,
    pub undelivered_after_drain: u64,
    pub out_of_order: u64,
    pub error_replies: u64,
    pub failures: Vec<String>,
    /// Every message sent inside the window.
    pub latency: Percentiles,
    pub usage: Usage,
}

/// The same pairs at a fixed aggregate rate, spread evenly over the pairs and in time;
/// the latency of every message sent inside the measurement window. Senders on `t`,
/// receivers on `tr` (the same server, or another node or server).
#[allow(clippy::too_many_arguments)]
pub async fn latency(
    t: &Arc<Target>,
    tr: &Arc<Target>,
    prefix: &str,
    start: usize,
    pairs: usize,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> Result<LatencyReport> {
    let set_up = setup_pairs_between(t, tr, prefix, start, pairs, 50).await?;
    let period = Duration::from_secs_f64(pairs as f64 / rate.max(0.001));
    let t0 = tokio::time::Instant::now() + Duration::from_millis(100);
    let window_start = now_ns() + (Duration::from_millis(100) + warmup).as_nanos() as u64;
    let window_end = window_start + duration.as_nanos() as u64;
    let send_end = t0 + warmup + duration;
    let mut tasks = JoinSet::new();
    for (i, mut p) in set_up.into_iter().enumerate() {
        let offset = Duration::from_secs_f64(i as f64 / rate.max(0.001));
        tasks.spawn(async move {
            let mut st = PairStats::default();
            let mut tick = tokio::time::interval_at(t0 + offset, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut out = Vec::with_capacity(128);
            let drain_end = send_end + Duration::from_secs(10);
            let r: Result<()> = async {
                loop {
                    let now = tokio::time::Instant::now();
                    let sending = now < send_end;
                    if !sending && st.received >= st.sent {
                        return Ok(());
                    }
                    if now >= drain_end {
                        return Err(XmppError(
                            "messages still missing at the drain deadline".into(),
                        ));
                    }
                    tokio::select! {
                        _ = tick.tick(), if sending => {
                            out.clear();
                            push_message(&mut out, &p.prefix, st.sent, now_ns());
                            st.sent += 1;
                            p.sender.send(&out).await?;
                            continue;
                        }
                        r = p.receiver.fill() => {
                            if !r? {
                                return Err(XmppError("receiver closed".into()));
                            }
                        }
                        r = p.sender.fill() => {
                            if !r? {
                                return Err(XmppError("sender closed".into()));
                            }
                            drain_sender(&mut p.sender, &mut st)?;
                            continue;
                        }
                        () = tokio::time::sleep_until(drain_end), if !sending => continue,
                    }
                    let now = now_ns();
                    st.take_messages(&mut p.receiver, |st, ts| {
                        if ts >= window_start && ts < window_end {
                            st.latencies.push(now.saturating_sub(ts));
                        }
                    })?;
                }
            }
            .await;
            if let Err(e) = r {
                st.failure = Some(e.to_string());
            }
            p.sender.close().await;
            p.receiver.close().await;
            st
        });
    }
    tokio::time::sleep_until(t0 + warmup).await;
    let meter = Meter::start(&t.server_pids);
    tokio::time::sleep(duration).await;
    let usage = meter.finish();
    let stats = collect(tasks, Duration::from_secs(15)).await;
    let mut lat: Vec<u64> = stats
        .iter()
        .flat_map(|s| s.latencies.iter().copied())
        .collect();
    let sent: u64 = stats.iter().map(|s| s.sent).sum();
    let delivered: u64 = stats.iter().map(|s| s.received).sum();
    let in_window = lat.len() as u64;
    Ok(LatencyReport {
        scenario: "latency",
        pairs,
        rate,
        duration_s: duration.as_secs_f64(),
        sent_in_window: in_window,
        achieved_rate: round1(in_window as f64 / duration.as_secs_f64()),
        total_sent: sent,
        total_delivered: delivered,
        undelivered_after_drain: sent.saturating_sub(delivered),
        out_of_order: stats.iter().map(|s| s.out_of_order).sum(),
        error_replies: stats.iter().map(|s| s.errors).sum(),
        failures: failures(&stats, pairs),
        latency: metrics::percentiles(&mut lat),
        usage,
    })
}

// ---------------------------------------------------------------- d. login storm

#[derive(Debug, Serialize)]
pub struct LoginPass {
    pub logins: usize,
    pub errors: usize,
    pub errors_sample: Vec<String>,
    pub logins_per_s: f64,
    pub usage: Usage,
}

#[derive(Debug, Serialize)]
pub struct LoginReport {
    pub scenario: &'static str,
    pub n: usize,
    pub concurrency: usize,
    pub mech: Mech,
    /// Pass 1 also fills the generator's cache of salted passwords (RFC 5802 §5.1).
    pub pass1_cold_client_cache: LoginPass,
    pub pass2: LoginPass,
    /// Pass 2, the figure to compare.
    pub logins_per_s: f64,
    pub scram_iterations_seen: Vec<u32>,
}

/// N logins (connect, SASL, bind, close) with `concurrency` in flight, twice.
pub async fn login_storm(
    t: &Arc<Target>,
    prefix: &str,
    start: usize,
    n: usize,
    concurrency: usize,
    mech: Mech,
) -> LoginReport {
    let names = users(prefix, start, n);
    let pass = |names: Vec<String>| async move {
        let meter = Meter::start(&t.server_pids);
        let sem = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut set = JoinSet::new();
        for u in names {
            let (t, sem) = (t.clone(), sem.clone());
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let mut c = Conn::connect_open(&t).await?;
                c.authenticate(&t, &u, mech).await?;
                c.bind(&t).await?;
                c.close().await;
                Ok::<_, XmppError>(())
            });
        }
        let mut errors = Vec::new();
        while let Some(j) = set.join_next().await {
            match j {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e.to_string()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let usage = meter.finish();
        LoginPass {
            logins: n,
            errors: errors.len(),
            errors_sample: first_errors(&errors),
            logins_per_s: per_sec((n - errors.len()) as u64, usage.wall_s),
            usage,
        }
    };
    let pass1 = pass(names.clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pass2 = pass(names).await;
    LoginReport {
        scenario: "login",
        n,
        concurrency,
        mech,
        logins_per_s: pass2.logins_per_s,
        pass1_cold_client_cache: pass1,
        pass2,
        scram_iterations_seen: t
            .iterations_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect(),
    }
}

// ---------------------------------------------------------------- e. offline flush

#[derive(Debug, Serialize)]
pub struct OfflineReport {
    pub scenario: &'static str,
    pub count: u64,
    pub leftover_drained: u64,
    pub store_phase: Usage,
    pub store_msgs_per_s: f64,
    pub received: u64,
    pub unique: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub in_order: bool,
    pub error_replies: u64,
    /// From the recipient's TCP connect to the last message.
    pub flush_from_connect_s: Option<f64>,
    /// From its initial presence (which triggers the flush) to the last message.
    pub flush_from_presence_s: Option<f64>,
    pub flush_phase: Usage,
}

/// Messages from one framed buffer: `(seq)` of each, and error replies.
fn count_messages(c: &mut Conn, seqs: &mut Vec<u64>, errors: &mut u64) -> Result<()> {
    while let Some(f) = c.framer.next_frame() {
        let s = c.framer.slice(&f);
        match f.kind {
            FrameKind::Element if frame::name(s) == b"message" => {
                if frame::is_error(s) {
                    *errors += 1;
                } else if let Some((seq, _)) = parse_body(s) {
                    seqs.push(seq);
                }
            }
            FrameKind::Element if frame::qname(s) == b"stream:error" => {
                return Err(XmppError(format!(
                    "stream error: {}",
                    String::from_utf8_lossy(s)
                )));
            }
            FrameKind::StreamClose => return Err(XmppError("stream closed".into())),
            _ => {}
        }
    }
    Ok(())
}

/// Reads messages until `want` have come (or, with `want == u64::MAX`, until `quiet`
/// passes with nothing), or `deadline`.
async fn read_messages(
    c: &mut Conn,
    want: u64,
    quiet: Duration,
    deadline: Instant,
    seqs: &mut Vec<u64>,
    errors: &mut u64,
) -> Result<Option<Instant>> {
    count_messages(c, seqs, errors)?;
    loop {
        if seqs.len() as u64 >= want {
            return Ok(Some(Instant::now()));
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(quiet);
        if left.is_zero() {
            return Ok(None);
        }
        match tokio::time::timeout(left, c.fill()).await {
            Err(_) => return Ok(None),
            Ok(r) => {
                if !r? {
                    return Err(XmppError("connection closed".into()));
                }
            }
        }
        count_messages(c, seqs, errors)?;
    }
}

/// `count` messages from `sender` to `recipient` while the recipient is offline; then the
/// recipient logs in, and the time until the last one arrives, checking that none is
/// missing, duplicated or out of order.
pub async fn offline(
    t: &Arc<Target>,
    recipient: &str,
    sender: &str,
    count: u64,
    max: Duration,
) -> Result<OfflineReport> {
    // Leftovers of an earlier run.
    let mut c = Conn::login(t, recipient, t.login_mech, false).await?;
    c.send(b"<presence/>").await?;
    let mut drained = Vec::new();
    let mut errs = 0;
    read_messages(
        &mut c,
        u64::MAX,
        Duration::from_secs(2),
        Instant::now() + max,
        &mut drained,
        &mut errs,
    )
    .await?;
    c.close().await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut s = Conn::login(t, sender, t.login_mech, true).await?;
    let prefix = format!("<message to='{}' type='chat'><body>", t.jid(recipient)).into_bytes();
    let meter = Meter::start(&t.server_pids);
    send_numbered(&mut s, t, &prefix, count, max, "store").await?;
    let store_phase = meter.finish();
    s.close().await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let meter = Meter::start(&t.server_pids);
    let t_connect = Instant::now();
    let mut r = Conn::login(t, recipient, t.login_mech, false).await?;
    r.send(b"<presence/>").await?;
    let t_presence = Instant::now();
    let mut seqs = Vec::with_capacity(count as usize);
    let mut errors = 0;
    let t_last =
        read_messages(&mut r, count, max, t_presence + max, &mut seqs, &mut errors).await?;
    let flush_phase = meter.finish();
    // Anything more is a duplicate.
    read_messages(
        &mut r,
        u64::MAX,
        Duration::from_secs(1),
        Instant::now() + Duration::from_secs(2),
        &mut seqs,
        &mut errors,
    )
    .await?;
    r.close().await;
    let unique: HashSet<u64> = seqs.iter().copied().collect();
    let expected_found = unique.iter().filter(|&&s| s < count).count() as u64;
    Ok(OfflineReport {
        scenario: "offline",
        count,
        leftover_drained: drained.len() as u64,
        store_msgs_per_s: per_sec(count, store_phase.wall_s),
        store_phase,
        received: seqs.len() as u64,
        unique: unique.len() as u64,
        missing: count - expected_found,
        duplicates: (seqs.len() - unique.len()) as u64,
        in_order: seqs.windows(2).all(|w| w[0] < w[1]),
        error_replies: errors,
        flush_from_connect_s: t_last.map(|l| round3((l - t_connect).as_secs_f64())),
        flush_from_presence_s: t_last.map(|l| round3((l - t_presence).as_secs_f64())),
        flush_phase,
    })
}

// ---------------------------------------------------------------- f. roster login

#[derive(Debug, Serialize)]
pub struct RosterRun {
    pub roster_items: usize,
    pub presences: usize,
    /// From TCP connect to the roster result.
    pub roster_s: Option<f64>,
    /// From TCP connect to the last of the online contacts' presences.
    pub all_presences_s: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct RosterReport {
    pub scenario: &'static str,
    pub contacts: usize,
    pub online: usize,
    pub online_logged_in: usize,
    pub runs: Vec<RosterRun>,
    pub median_all_presences_s: Option<f64>,
    pub errors_sample: Vec<String>,
    pub usage: Usage,
}

/// `online` of the owner's contacts log in and stay; then the owner logs in `runs` times
/// (roster get and initial presence, as a client does) and is timed until every online
/// contact's presence has arrived.
pub async fn roster_login(
    t: &Arc<Target>,
    owner: &str,
    contacts: &[String],
    online: usize,
    runs: usize,
) -> Result<RosterReport> {
    let online_names = &contacts[..online.min(contacts.len())];
    let (conns, errors) = login_many(t, online_names, 50, t.login_mech, true).await;
    let mut conns: Vec<Conn> = conns.into_iter().flatten().collect();
    for c in &mut conns {
        c.shrink();
    }
    let online_jids: HashSet<String> = online_names.iter().map(|c| t.jid(c)).collect();
    let meter = Meter::start(&t.server_pids);
    let mut results = Vec::new();
    for run in 0..runs {
        let t0 = Instant::now();
        let mut c = Conn::login(t, owner, t.login_mech, false).await?;
        let id = format!("rl{run}");
        c.send(
            format!("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq><presence/>")
                .as_bytes(),
        )
        .await?;
        let deadline = Instant::now() + t.step_timeout;
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let (mut items, mut roster_s, mut all_s) = (0, None, None);
        while (roster_s.is_none() || seen.len() < online_jids.len()) && Instant::now() < deadline {
            match tokio::time::timeout_at(deadline.into(), c.fill()).await {
                Err(_) => break,
                Ok(r) => {
                    if !r? {
                        return Err(XmppError("owner connection closed".into()));
                    }
                }
            }
            while let Some(f) = c.framer.next_frame() {
                let s = c.framer.slice(&f);
                if f.kind != FrameKind::Element {
                    continue;
                }
                match frame::name(s) {
                    b"iq" if frame::attr(s, "id") == Some(id.as_bytes()) => {
                        items = memchr::memmem::find_iter(s, b"<item").count();
                        roster_s = Some(round3(t0.elapsed().as_secs_f64()));
                    }
                    b"presence" if frame::attr(s, "type").is_none() => {
                        if let Some(from) = frame::attr(s, "from") {
                            let b = bare(from);
                            if std::str::from_utf8(b).is_ok_and(|b| online_jids.contains(b)) {
                                seen.insert(b.to_vec());
                            }
                        }
                    }
                    _ => {}
                }
            }
            if seen.len() >= online_jids.len() && all_s.is_none() {
                all_s = Some(round3(t0.elapsed().as_secs_f64()));
            }
        }
        c.close().await;
        results.push(RosterRun {
            roster_items: items,
            presences: seen.len(),
            roster_s,
            all_presences_s: all_s,
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let usage = meter.finish();
    for mut c in conns.drain(..) {
        c.close().await;
    }
    let mut all: Vec<f64> = results.iter().filter_map(|r| r.all_presences_s).collect();
    Ok(RosterReport {
        scenario: "roster",
        contacts: contacts.len(),
        online,
        online_logged_in: online_names.len() - errors.len(),
        median_all_presences_s: metrics::median(&mut all),
        runs: results,
        errors_sample: first_errors(&errors),
        usage,
    })
}

// ---------------------------------------------------------------- federation backlog

#[derive(Debug, Serialize)]
pub struct BacklogFill {
    pub count: u64,
    /// Until the sending server answered a ping sent after the last message: every
    /// message was accepted (queued durably for the unreachable peer).
    pub accept_s: f64,
    pub accept_msgs_per_s: f64,
    pub error_replies: u64,
    pub usage: Usage,
}

/// Sends `count` messages from `sender` on `ta` to `recipient_jid` (on a server that is
/// down), in batches of 100, and waits for the sending server to have handled them all.
pub async fn federation_backlog_fill(
    ta: &Arc<Target>,
    sender: &str,
    recipient_jid: &str,
    count: u64,
    max: Duration,
) -> Result<BacklogFill> {
    let mut s = Conn::login(ta, sender, ta.login_mech, true).await?;
    let prefix = format!("<message to='{recipient_jid}' type='chat'><body>").into_bytes();
    let meter = Meter::start(&ta.server_pids);
    send_numbered(&mut s, ta, &prefix, count, max, "queue").await?;
    let usage = meter.finish();
    // A bounce (e.g. the queue's quota) would be an error reply before the ping's answer.
    let mut seqs = Vec::new();
    let mut errors = 0;
    count_messages(&mut s, &mut seqs, &mut errors)?;
    s.close().await;
    Ok(BacklogFill {
        count,
        accept_s: round3(usage.wall_s),
        accept_msgs_per_s: per_sec(count, usage.wall_s),
        error_replies: errors,
        usage,
    })
}

#[derive(Debug, Serialize)]
pub struct BacklogReport {
    pub scenario: &'static str,
    pub count: u64,
    pub recipient: String,
    pub fill: Option<BacklogFill>,
    /// Every time below is from the moment the peer's server-to-server listener first
    /// accepted a TCP connection.
    pub receiver_online_s: Option<f64>,
    pub first_message_s: Option<f64>,
    /// The `count`-th message at the receiver.
    pub delivery_s: Option<f64>,
    /// From the first message to the last: the backlog's transfer once the link is up.
    pub first_to_last_s: Option<f64>,
    /// `count` ÷ first_to_last_s.
    pub transfer_msgs_per_s: Option<f64>,
    /// The sending server's queue for the peer empty (`None` without a queue probe). The
    /// queue is polled every 250 ms until the last message arrived, then every 10 ms.
    pub queue_empty_s: Option<f64>,
    pub queue_polls: u64,
    pub received: u64,
    pub unique: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub in_order: bool,
    /// Positions where a message was not the one after its predecessor (first few).
    pub gaps_sample: Vec<String>,
    pub error_replies: u64,
    pub failures: Vec<String>,
    pub usage: Usage,
}

/// How many messages a server still has queued for the peer (e.g. from `outpost admin
/// links --json`); `None` when it cannot tell.
pub type QueueProbe = Box<dyn FnMut() -> Option<u64> + Send>;

/// The second half of the backlog scenario: waits (at most `max_wait`) for the peer's
/// server-to-server listener at `peer_s2s`, logs `recipient` in on `tb` as soon as it
/// accepts logins, and times the arrival of the `count` queued messages, checking that
/// they come once each and in order. With `queue`, polls the sending server's queue until
/// it is empty, concurrently. `server_pids` gives the processes to sample once the peer is
/// up (it may have a new pid).
#[allow(clippy::too_many_arguments)]
pub async fn federation_backlog_drain(
    tb: &Arc<Target>,
    peer_s2s: std::net::SocketAddr,
    recipient: &str,
    count: u64,
    queue: Option<QueueProbe>,
    server_pids: &dyn Fn() -> Vec<u32>,
    max_wait: Duration,
    max: Duration,
) -> Result<BacklogReport> {
    let waited = Instant::now();
    let t0 = loop {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(peer_s2s),
        )
        .await
        {
            drop(c);
            break Instant::now();
        }
        if waited.elapsed() > max_wait {
            return Err(XmppError(format!(
                "nothing listened on {peer_s2s} within {max_wait:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let meter = Meter::start(&server_pids());
    let stop_polling = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicBool::new(false));
    let poller = queue.map(|mut probe| {
        let (stop, delivered) = (stop_polling.clone(), delivered.clone());
        tokio::task::spawn_blocking(move || {
            let mut polls = 0u64;
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < max {
                polls += 1;
                if probe() == Some(0) {
                    return (Some(t0.elapsed()), polls);
                }
                // A probe may be a process of its own: seldom while the backlog crosses
                // (it would take CPU from the servers), often once it has arrived.
                let pause = if delivered.load(Ordering::Relaxed) {
                    10
                } else {
                    250
                };
                std::thread::sleep(Duration::from_millis(pause));
            }
            (None, polls)
        })
    });
    let mut failures = Vec::new();
    // The c2s listener comes up with the s2s one; retry until a login passes.
    let mut r = loop {
        match Conn::login(tb, recipient, tb.login_mech, false).await {
            Ok(c) => break Some(c),
            Err(e) if t0.elapsed() > Duration::from_secs(30) => {
                failures.push(format!("receiver login: {e}"));
                break None;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let mut seqs: Vec<u64> = Vec::with_capacity(count as usize);
    let mut errors = 0;
    let (mut online, mut first, mut last) = (None, None, None);
    if let Some(c) = r.as_mut() {
        c.send(b"<presence/>").await?;
        online = Some(t0.elapsed());
        let deadline = t0 + max;
        // The first message, then the rest.
        match read_messages(c, 1, max, deadline, &mut seqs, &mut errors).await {
            Ok(Some(_)) => {
                first = Some(t0.elapsed());
                match read_messages(c, count, max, deadline, &mut seqs, &mut errors).await {
                    Ok(Some(_)) => {
                        last = Some(t0.elapsed());
                        delivered.store(true, Ordering::Relaxed);
                    }
                    Ok(None) => failures.push(format!("only {} arrived in time", seqs.len())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            Ok(None) => failures.push("no message arrived in time".into()),
            Err(e) => failures.push(e.to_string()),
        }
        // Anything more is a duplicate.
        if let Err(e) = read_messages(
            c,
            u64::MAX,
            Duration::from_secs(1),
            Instant::now() + Duration::from_secs(2),
            &mut seqs,
            &mut errors,
        )
        .await
        {
            failures.push(e.to_string());
        }
    }
    let (queue_empty, queue_polls) = match poller {
        Some(h) => {
            // The queue empties once the peer acknowledged the last message; give it a
            // bounded while after delivery.
            let h = tokio::time::timeout(Duration::from_secs(30), h).await;
            stop_polling.store(true, Ordering::Relaxed);
            match h {
                Ok(Ok(x)) => x,
                _ => {
                    failures.push("the queue probe did not finish".into());
                    (None, 0)
                }
            }
        }
        None => (None, 0),
    };
    let usage = meter.finish();
    if let Some(c) = r.as_mut() {
        c.close().await;
    }
    let unique: HashSet<u64> = seqs.iter().copied().collect();
    let expected_found = unique.iter().filter(|&&s| s < count).count() as u64;
    let gaps_sample: Vec<String> = seqs
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[1] != w[0] + 1)
        .take(5)
        .map(|(i, w)| format!("at {}: {} after {}", i + 1, w[1], w[0]))
        .collect();
    let secs = |d: Option<Duration>| d.map(|d| round3(d.as_secs_f64()));
    let first_to_last = match (first, last) {
        (Some(f), Some(l)) => Some(l.saturating_sub(f)),
        _ => None,
    };
    Ok(BacklogReport {
        scenario: "federation-backlog",
        count,
        recipient: tb.jid(recipient),
        fill: None,
        receiver_online_s: secs(online),
        first_message_s: secs(first),
        delivery_s: secs(last),
        first_to_last_s: secs(first_to_last),
        transfer_msgs_per_s: first_to_last.map(|d| per_sec(count, d.as_secs_f64())),
        queue_empty_s: secs(queue_empty),
        queue_polls,
        received: seqs.len() as u64,
        unique: unique.len() as u64,
        missing: count - expected_found,
        duplicates: (seqs.len() - unique.len()) as u64,
        in_order: seqs.first() == Some(&0) && seqs.windows(2).all(|w| w[1] == w[0] + 1),
        gaps_sample,
        error_replies: errors,
        failures,
        usage,
    })
}
