//! Outpost's HTTP API (`/api/v1`) under load, over HTTPS with keep-alive connections:
//!
//! * `rest-send`: K REST users each send messages one after the other with `POST
//!   /api/v1/messages` (answered only once the message is durable) to an XMPP receiver
//!   that counts them; requests per second and their latency, and a check that every
//!   acknowledged message arrived.
//! * `sse-fanout`: N REST users hold an event stream (`GET /api/v1/events`) each; one XMPP
//!   contact they all subscribe to changes presence, and each change must reach every
//!   stream: the time to the last stream, deliveries per second, and the server's memory
//!   per stream held.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::Target;
use crate::conn::{Conn, Result, XmppError};
use crate::frame;
use crate::metrics::{self, Meter, Percentiles, Usage, round1, round3};
use crate::scenarios::{now_ns, users};

/// Logins or stream opens in flight while setting up.
const SETUP_CONCURRENCY: usize = 50;
/// Longest wait for every accepted message (or presence change) to arrive.
const DRAIN: Duration = Duration::from_secs(30);

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(XmppError(msg.into()))
}

/// One keep-alive HTTPS connection to the API.
struct Http {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Http {
    async fn connect(t: &Target, addr: SocketAddr) -> Result<Http> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(t.domain.clone())
            .map_err(|e| XmppError(format!("bad domain for TLS: {e}")))?;
        let tls = t
            .tls_connector()
            .connect(name, tcp)
            .await
            .map_err(|e| XmppError(format!("TLS handshake: {e}")))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| XmppError(format!("HTTP handshake: {e}")))?;
        tokio::spawn(conn);
        Ok(Http {
            sender,
            host: t.domain.clone(),
        })
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> Result<Response<Incoming>> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| XmppError(format!("request: {e}")))?;
        self.sender
            .ready()
            .await
            .map_err(|e| XmppError(format!("HTTP connection: {e}")))?;
        self.sender
            .send_request(req)
            .await
            .map_err(|e| XmppError(format!("HTTP: {e}")))
    }

    /// A call and its whole answer: status and body.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> Result<(u16, Bytes)> {
        let answer = self.send(method, path, token, body).await?;
        let status = answer.status().as_u16();
        let bytes = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| XmppError(format!("HTTP body: {e}")))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// Logs `user` in: a bearer token.
    async fn login(&mut self, t: &Target, user: &str) -> Result<String> {
        let body = serde_json::json!({"jid": t.jid(user), "password": t.password});
        let (status, bytes) = self
            .call("POST", "/api/v1/login", None, Some(body.to_string()))
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        match (status, v["token"].as_str()) {
            (200, Some(token)) => Ok(token.to_owned()),
            _ => fail(format!(
                "login of {user}: {status} {}",
                String::from_utf8_lossy(&bytes)
            )),
        }
    }
}

/// Connects and logs in each of `names`, a few at a time.
async fn log_in_all(
    t: &Arc<Target>,
    http: SocketAddr,
    names: Vec<String>,
) -> Result<Vec<(Http, String)>> {
    let mut out = Vec::with_capacity(names.len());
    for chunk in names.chunks(SETUP_CONCURRENCY) {
        let mut set = JoinSet::new();
        for (i, name) in chunk.iter().cloned().enumerate() {
            let t = t.clone();
            set.spawn(async move {
                let mut c = Http::connect(&t, http).await?;
                let token = c.login(&t, &name).await?;
                Ok::<_, XmppError>((i, c, token))
            });
        }
        let mut done: Vec<_> = set.join_all().await.into_iter().collect::<Result<_>>()?;
        done.sort_by_key(|(i, _, _)| *i);
        out.extend(done.into_iter().map(|(_, c, token)| (c, token)));
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct RestSendReport {
    pub scenario: &'static str,
    pub senders: usize,
    pub duration_s: f64,
    pub requests_in_window: u64,
    pub requests_per_s: f64,
    /// Request to answer, in the window.
    pub latency: Percentiles,
    pub total_sent: u64,
    pub total_delivered: u64,
    pub undelivered_after_drain: u64,
    pub error_answers: u64,
    pub failures: Vec<String>,
    pub usage: Usage,
    pub server_us_per_request: Option<f64>,
}

/// Counts what one XMPP receiver gets until `stop`.
async fn receive(mut c: Conn, delivered: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match c.next_stanza(Duration::from_millis(200)).await {
            Ok(s) if frame::name(&s) == b"message" && frame::contains(&s, b"<body") => {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) if c.closed => return,
            Err(_) => {}
        }
    }
}

/// XMPP receivers counting what they get, until told to stop.
struct Receivers {
    delivered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

impl Receivers {
    async fn log_in(t: &Arc<Target>, names: &[String]) -> Result<Receivers> {
        let delivered = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for r in names {
            let c = Conn::login(t, r, t.login_mech, true).await?;
            tasks.spawn(receive(c, delivered.clone(), stop.clone()));
        }
        Ok(Receivers {
            delivered,
            stop,
            tasks,
        })
    }

    /// Waits (at most [`DRAIN`]) until `sent` have arrived; how many did.
    async fn drain(self, sent: u64) -> u64 {
        let drained = tokio::time::Instant::now() + DRAIN;
        while self.delivered.load(Ordering::Relaxed) < sent && tokio::time::Instant::now() < drained
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        self.tasks.join_all().await;
        self.delivered.load(Ordering::Relaxed)
    }
}

/// `rest-send`: users `prefix<start>`.. send over REST, the next `senders` users receive
/// over XMPP, one receiver per sender.
pub async fn rest_send(
    t: &Arc<Target>,
    http: SocketAddr,
    prefix: &str,
    start: usize,
    senders: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<RestSendReport> {
    let names = users(prefix, start + senders, senders);
    let receivers = Receivers::log_in(t, &names).await?;
    let clients = log_in_all(t, http, users(prefix, start, senders)).await?;
    let t0 = tokio::time::Instant::now();
    let (window_start, end) = (t0 + warmup, t0 + warmup + duration);
    let mut sending = JoinSet::new();
    for ((c, token), to) in clients.into_iter().zip(names) {
        sending.spawn(send_until(c, token, t.jid(&to), window_start, end));
    }
    tokio::time::sleep_until(window_start).await;
    let meter = Meter::start(&t.server_pids);
    let mut report = RestSendReport {
        scenario: "rest-send",
        senders,
        duration_s: duration.as_secs_f64(),
        requests_in_window: 0,
        requests_per_s: 0.0,
        latency: Percentiles::default(),
        total_sent: 0,
        total_delivered: 0,
        undelivered_after_drain: 0,
        error_answers: 0,
        failures: Vec::new(),
        usage: meter.finish(),
        server_us_per_request: None,
    };
    let mut samples = Vec::new();
    let mut usage = None;
    while let Some(done) = sending.join_next().await {
        // The window ends when the first sender stops.
        usage.get_or_insert_with(|| meter.finish());
        match done {
            Ok(s) => report.add(s, &mut samples),
            Err(e) => report.failures.push(format!("sender task: {e}")),
        }
    }
    report.usage = usage.unwrap_or_else(|| meter.finish());
    report.total_delivered = receivers.drain(report.total_sent).await;
    report.finish(duration, &mut samples);
    Ok(report)
}

impl RestSendReport {
    fn add(&mut self, s: Sent, samples: &mut Vec<u64>) {
        self.total_sent += s.sent;
        self.requests_in_window += s.in_window;
        self.error_answers += s.errors;
        samples.extend(s.latencies);
        self.failures.extend(s.failure);
    }

    fn finish(&mut self, duration: Duration, samples: &mut [u64]) {
        self.undelivered_after_drain = self.total_sent.saturating_sub(self.total_delivered);
        self.requests_per_s = round1(self.requests_in_window as f64 / duration.as_secs_f64());
        self.latency = metrics::percentiles(samples);
        let (usage, requests) = (&self.usage, self.requests_in_window.max(1) as f64);
        self.server_us_per_request =
            (usage.server_cpu_pct).map(|pct| round3(pct / 100.0 * usage.wall_s * 1e6 / requests));
    }
}

/// What one REST sender did.
struct Sent {
    sent: u64,
    in_window: u64,
    errors: u64,
    latencies: Vec<u64>,
    failure: Option<String>,
}

/// Sends one message after the other until `end`; latencies of those sent in the window.
async fn send_until(
    mut c: Http,
    token: String,
    to: String,
    window_start: tokio::time::Instant,
    end: tokio::time::Instant,
) -> Sent {
    let mut s = Sent {
        sent: 0,
        in_window: 0,
        errors: 0,
        latencies: Vec::new(),
        failure: None,
    };
    while tokio::time::Instant::now() < end {
        let body = serde_json::json!({"to": to, "body": format!("rest {}", s.sent)});
        let at = tokio::time::Instant::now();
        let t0 = now_ns();
        match c
            .call(
                "POST",
                "/api/v1/messages",
                Some(&token),
                Some(body.to_string()),
            )
            .await
        {
            Ok((200, _)) => s.sent += 1,
            Ok((status, bytes)) => {
                s.errors += 1;
                if s.failure.is_none() {
                    s.failure = Some(format!("{status} {}", String::from_utf8_lossy(&bytes)));
                }
                continue;
            }
            Err(e) => {
                s.failure = Some(e.to_string());
                break;
            }
        }
        if at >= window_start && tokio::time::Instant::now() <= end {
            s.in_window += 1;
            s.latencies.push(now_ns() - t0);
        }
    }
    s
}

#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub subscribers: usize,
    pub streams_open: usize,
    pub updates: usize,
    /// Per change: from the contact's send to the last stream's event.
    pub to_last_stream: Percentiles,
    /// Every event: from the send to its arrival.
    pub per_event: Percentiles,
    pub events_delivered: u64,
    pub events_missing: u64,
    pub deliveries_per_s: f64,
    /// Every subscriber has a token; no connection is open.
    pub server_rss_before_kib: u64,
    /// With every stream open: an HTTPS connection and an API session (an XMPP resource
    /// of its user) each.
    pub server_rss_loaded_kib: u64,
    pub server_bytes_per_stream: Option<f64>,
    pub usage: Usage,
}

/// Reads one event stream, reporting `(update, arrival)` for each presence of the
/// contact whose status is `u<n>`.
async fn read_events(body: Incoming, tx: mpsc::UnboundedSender<(usize, u64)>) {
    let mut body = body;
    let mut buffer = String::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(bytes) = frame.into_data() else {
            continue;
        };
        buffer.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if !block.contains("event: presence") {
                continue;
            }
            let data = block.lines().find_map(|l| l.strip_prefix("data:"));
            let v: serde_json::Value = data
                .and_then(|d| serde_json::from_str(d.trim()).ok())
                .unwrap_or_default();
            let update = v["status"]
                .as_str()
                .and_then(|s| s.strip_prefix('u')?.parse().ok());
            if let Some(n) = update
                && tx.send((n, now_ns())).is_err()
            {
                return;
            }
        }
    }
}

/// `sse-fanout`: `owner` (over XMPP) is a contact of `<contact_prefix>1..N`, who each
/// hold an event stream; `owner` changes presence `updates` times, one after the other.
pub async fn sse_fanout(
    t: &Arc<Target>,
    http: SocketAddr,
    owner: &str,
    contact_prefix: &str,
    subscribers: usize,
    updates: usize,
) -> Result<FanoutReport> {
    let mut publisher = Conn::login(t, owner, t.login_mech, true).await?;
    // Tokens first, on connections then closed: what a stream holds is measured from
    // there (the logins' PBKDF2 grows the allocator's arenas once, as in the idle
    // scenario's earlier phases).
    let tokens: Vec<String> = (log_in_all(t, http, users(contact_prefix, 1, subscribers)).await?)
        .into_iter()
        .map(|(_, token)| token)
        .collect();
    let rss_before = metrics::rss_kib(&t.server_pids);
    let (mut readers, mut rx) = open_streams(t, http, tokens).await?;
    let online = wait_online(t, &mut publisher, subscribers).await?;
    let rss_loaded = metrics::rss_kib(&t.server_pids);
    let meter = Meter::start(&t.server_pids);
    let (mut to_last, mut per_event, mut delivered) = (Vec::new(), Vec::new(), 0u64);
    for n in 0..updates {
        let sent = now_ns();
        let presence = format!("<presence><status>u{n}</status></presence>");
        publisher.send(presence.as_bytes()).await?;
        let arrivals = arrivals_of(&mut rx, n, subscribers).await;
        delivered += arrivals.len() as u64;
        if arrivals.len() == subscribers {
            to_last.extend(arrivals.last().map(|at| at.saturating_sub(sent)));
        }
        per_event.extend(arrivals.iter().map(|at| at.saturating_sub(sent)));
    }
    let usage = meter.finish();
    readers.abort_all();
    Ok(FanoutReport {
        scenario: "sse-fanout",
        subscribers,
        streams_open: online,
        updates,
        to_last_stream: metrics::percentiles(&mut to_last),
        per_event: metrics::percentiles(&mut per_event),
        events_delivered: delivered,
        events_missing: (subscribers * updates) as u64 - delivered,
        deliveries_per_s: round1(delivered as f64 / usage.wall_s.max(1e-9)),
        server_rss_before_kib: rss_before,
        server_rss_loaded_kib: rss_loaded,
        server_bytes_per_stream: (rss_before > 0).then(|| {
            round1((rss_loaded.saturating_sub(rss_before) * 1024) as f64 / subscribers as f64)
        }),
        usage,
    })
}

/// Opens an event stream per token; each reader reports the changes it sees on `rx`.
async fn open_streams(
    t: &Target,
    http: SocketAddr,
    tokens: Vec<String>,
) -> Result<(JoinSet<()>, mpsc::UnboundedReceiver<(usize, u64)>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut readers = JoinSet::new();
    for token in tokens {
        let mut c = Http::connect(t, http).await?;
        let answer = c.send("GET", "/api/v1/events", Some(&token), None).await?;
        if answer.status() != 200 {
            return fail(format!("events: {}", answer.status()));
        }
        readers.spawn(read_events(answer.into_body(), tx.clone()));
    }
    Ok((readers, rx))
}

/// Every stream's session is available once the owner has had its presence.
async fn wait_online(t: &Target, publisher: &mut Conn, subscribers: usize) -> Result<usize> {
    let mut online = 0;
    while online < subscribers {
        let p = publisher
            .expect(t.step_timeout, |s| frame::name(s) == b"presence")
            .await?;
        if frame::attr(&p, "type").is_none() {
            online += 1;
        }
    }
    Ok(online)
}

/// When change `n` reached each stream (at most `subscribers`, within [`DRAIN`]).
async fn arrivals_of(
    rx: &mut mpsc::UnboundedReceiver<(usize, u64)>,
    n: usize,
    subscribers: usize,
) -> Vec<u64> {
    let mut arrivals = Vec::with_capacity(subscribers);
    let deadline = tokio::time::Instant::now() + DRAIN;
    while arrivals.len() < subscribers {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((m, at))) if m == n => arrivals.push(at),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    arrivals
}
