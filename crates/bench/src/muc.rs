//! g. Multi-user chat (XEP-0045): N occupants in one room, K of them sending groupchat
//! messages, each keeping a few in flight; a message counts as delivered once every occupant
//! (its sender included: rooms reflect messages, XEP-0045 §7.4) has it.
//!
//! The first occupant creates the room and accepts the default configuration (an instant
//! room, §10.1.2); the others join with no history. Every occupant's connection is read by
//! its own task, which checks, per sender, that messages arrive once each and in order. A
//! sender may have `window` messages that have not yet reached every occupant: the task of
//! the last occupant to receive one wakes the sender. Each room message therefore costs the
//! server N deliveries, and the report gives both rates.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::conn::{Conn, Result, Target, XmppError};
use crate::frame::{self, FrameKind};
use crate::mam::{self, Archived, MamCheck};
use crate::metrics::{self, Meter, Percentiles, Usage, round3};
use crate::scenarios::{
    collect, first_errors, login_many, now_ns, parse_body, per_sec, push_message, us_per_msg, users,
};

const MUC_NS: &str = "http://jabber.org/protocol/muc";
const MUC_OWNER_NS: &str = "http://jabber.org/protocol/muc#owner";

/// How the MUC scenario runs.
#[derive(Clone, Debug)]
pub struct MucOpts {
    pub prefix: String,
    pub start: usize,
    pub occupants: usize,
    /// Occupants that send (the first ones); 0: all of them.
    pub senders: usize,
    /// Messages per sender not yet delivered to every occupant.
    pub window: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Keep one latency sample per this many deliveries at each occupant.
    pub lat_sample: u64,
    /// The room's local part.
    pub room: String,
    /// The MUC service (`conference.<domain>`).
    pub service: String,
    /// Logins and joins in flight.
    pub concurrency: usize,
    /// After the run, check the room's archive (XEP-0313) ends with the last message sent.
    pub mam_check: bool,
}

#[derive(Debug, Serialize)]
pub struct MucReport {
    pub scenario: &'static str,
    pub room: String,
    pub occupants: usize,
    pub joined: usize,
    pub senders: usize,
    pub window: usize,
    pub duration_s: f64,
    /// From the first join to the last occupant's own presence.
    pub join_s: f64,
    /// Room messages that reached every occupant inside the window.
    pub msgs_in_window: u64,
    pub msgs_per_s: f64,
    /// Messages received by occupants inside the window (N per room message).
    pub deliveries_in_window: u64,
    pub deliveries_per_s: f64,
    pub total_sent: u64,
    pub total_fully_delivered: u64,
    /// (sender, occupant) messages missing after the drain.
    pub undelivered_after_drain: u64,
    pub out_of_order: u64,
    pub error_replies: u64,
    pub failures: Vec<String>,
    /// Sent → received by one occupant, sampled.
    pub delivery_latency: Percentiles,
    /// Sent → received by the last occupant, every message inside the window.
    pub full_delivery_latency: Percentiles,
    pub usage: Usage,
    pub generator_us_per_delivery: f64,
    pub server_us_per_delivery: Option<f64>,
    pub room_archive: Option<MamCheck>,
}

/// State shared by the occupants' tasks.
struct Room {
    jid: String,
    occupants: u32,
    senders: usize,
    window: usize,
    /// Per sender, `window` slots: occupants that have the message in that slot.
    slots: Vec<AtomicU32>,
    /// Per sender: messages sent, and messages every occupant has.
    sent: Vec<AtomicU64>,
    full: Vec<AtomicU64>,
    /// Per occupant: wakes a sender when one of its messages reached everyone.
    wake: Vec<Notify>,
    deliveries: AtomicU64,
    fully: AtomicU64,
    measuring: AtomicBool,
    /// Senders stop sending; each counts itself in `stopped`.
    stopping: AtomicBool,
    stopped: AtomicUsize,
    /// Every sender has stopped: occupants finish once they have everything sent.
    draining: AtomicBool,
}

impl Room {
    fn new(jid: String, occupants: usize, senders: usize, window: usize) -> Room {
        Room {
            jid,
            occupants: occupants as u32,
            senders,
            window,
            slots: (0..senders * window).map(|_| AtomicU32::new(0)).collect(),
            sent: (0..senders).map(|_| AtomicU64::new(0)).collect(),
            full: (0..senders).map(|_| AtomicU64::new(0)).collect(),
            wake: (0..occupants).map(|_| Notify::new()).collect(),
            deliveries: AtomicU64::new(0),
            fully: AtomicU64::new(0),
            measuring: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stopped: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// The sender index of a message from `room/n<index>`.
    fn sender_of(&self, m: &[u8]) -> Option<usize> {
        let from = frame::attr(m, "from")?;
        let nick = from
            .strip_prefix(self.jid.as_bytes())?
            .strip_prefix(b"/n")?;
        let k: usize = std::str::from_utf8(nick).ok()?.parse().ok()?;
        (k < self.senders).then_some(k)
    }

    /// One more occupant has message `seq` of sender `k`; true if it was the last one.
    fn arrived(&self, k: usize, seq: u64) -> bool {
        let slot = &self.slots[k * self.window + (seq % self.window as u64) as usize];
        if slot.fetch_add(1, Ordering::AcqRel) + 1 < self.occupants {
            return false;
        }
        // The slot is reused by message seq + window, sent only after this one counts.
        slot.store(0, Ordering::Release);
        self.full[k].fetch_add(1, Ordering::AcqRel);
        self.fully.fetch_add(1, Ordering::Relaxed);
        self.wake[k].notify_one();
        true
    }
}

/// What one occupant saw.
struct Seen {
    index: usize,
    /// Per sender: the next number expected.
    expect: Vec<u64>,
    out_of_order: u64,
    errors: u64,
    since_sample: u64,
    latencies: Vec<u64>,
    full_latencies: Vec<u64>,
    failure: Option<String>,
}

impl Seen {
    fn new(index: usize, senders: usize) -> Seen {
        Seen {
            index,
            expect: vec![0; senders],
            out_of_order: 0,
            errors: 0,
            since_sample: 0,
            latencies: Vec::new(),
            full_latencies: Vec::new(),
            failure: None,
        }
    }

    /// Whether this occupant has every message sent so far.
    fn caught_up(&self, room: &Room) -> bool {
        self.expect
            .iter()
            .zip(&room.sent)
            .all(|(e, s)| *e >= s.load(Ordering::Acquire))
    }

    fn missing(&self, room: &Room) -> u64 {
        self.expect
            .iter()
            .zip(&room.sent)
            .map(|(e, s)| s.load(Ordering::Acquire).saturating_sub(*e))
            .sum()
    }

    /// Handles the room messages framed so far.
    fn take(&mut self, c: &mut Conn, room: &Room, lat_sample: u64) -> Result<()> {
        let measuring = room.measuring.load(Ordering::Relaxed);
        let now = now_ns();
        let mut n = 0;
        while let Some(f) = c.framer.next_frame() {
            let s = c.framer.slice(&f);
            match f.kind {
                FrameKind::Element if frame::name(s) == b"message" => {
                    if frame::is_error(s) {
                        self.errors += 1;
                        continue;
                    }
                    let (Some(k), Some((seq, ts))) = (room.sender_of(s), parse_body(s)) else {
                        continue;
                    };
                    n += 1;
                    self.deliver(room, k, seq, now.saturating_sub(ts), measuring, lat_sample);
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
        room.deliveries.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    fn deliver(&mut self, room: &Room, k: usize, seq: u64, lat: u64, measuring: bool, every: u64) {
        if seq != self.expect[k] {
            self.out_of_order += 1;
        }
        self.expect[k] = seq + 1;
        let last = room.arrived(k, seq);
        if !measuring {
            return;
        }
        if last {
            self.full_latencies.push(lat);
        }
        self.since_sample += 1;
        if self.since_sample >= every {
            self.since_sample = 0;
            self.latencies.push(lat);
        }
    }
}

/// Sends sender `i` up to its window.
async fn send_window(
    c: &mut Conn,
    i: usize,
    room: &Room,
    prefix: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    let sent = room.sent[i].load(Ordering::Acquire);
    let allowed = room.full[i].load(Ordering::Acquire) + room.window as u64;
    if allowed <= sent {
        return Ok(());
    }
    out.clear();
    let ts = now_ns();
    for seq in sent..allowed {
        push_message(out, prefix, seq, ts);
    }
    room.sent[i].store(allowed, Ordering::Release);
    c.send(out).await
}

/// One occupant: reads, checks and counts; sends while it is a sender and the run lasts.
async fn drive(c: &mut Conn, seen: &mut Seen, room: &Room, lat_sample: u64) -> Result<()> {
    let i = seen.index;
    let sender = i < room.senders;
    let prefix = format!("<message to='{}' type='groupchat'><body>", room.jid).into_bytes();
    let mut out = Vec::with_capacity(room.window * 128);
    let mut stopped = false;
    if sender {
        send_window(c, i, room, &prefix, &mut out).await?;
    }
    loop {
        if !stopped && room.stopping.load(Ordering::Acquire) {
            stopped = true;
            if sender {
                room.stopped.fetch_add(1, Ordering::AcqRel);
            }
        }
        if room.draining.load(Ordering::Acquire) && seen.caught_up(room) {
            return Ok(());
        }
        tokio::select! {
            r = c.fill() => {
                if !r? {
                    return Err(XmppError("occupant connection closed".into()));
                }
            }
            () = room.wake[i].notified() => {
                if sender && !stopped {
                    send_window(c, i, room, &prefix, &mut out).await?;
                }
                continue;
            }
            () = tokio::time::sleep(Duration::from_millis(50)), if stopped => continue,
        }
        seen.take(c, room, lat_sample)?;
    }
}

/// Joins `room_jid` as `nick` with no history; `Ok(true)` if that created the room.
async fn join(c: &mut Conn, t: &Target, room_jid: &str, nick: &str) -> Result<bool> {
    let me = format!("{room_jid}/{nick}");
    c.send(
        format!("<presence to='{me}'><x xmlns='{MUC_NS}'><history maxstanzas='0'/></x></presence>")
            .as_bytes(),
    )
    .await?;
    let p = c
        .expect(t.step_timeout, |s| {
            frame::name(s) == b"presence" && frame::attr(s, "from") == Some(me.as_bytes())
        })
        .await?;
    if frame::is_error(&p) {
        return Err(XmppError(format!(
            "joining {me}: {}",
            String::from_utf8_lossy(&p)
        )));
    }
    Ok(frame::contains(&p, b"code='201'") || frame::contains(&p, b"code=\"201\""))
}

/// The first occupant creates the room and, if it is new, accepts the default
/// configuration (an instant room, XEP-0045 §10.1.2), which unlocks it.
async fn create_room(c: &mut Conn, t: &Target, room_jid: &str) -> Result<()> {
    if !join(c, t, room_jid, "n0").await? {
        return Ok(());
    }
    let id = format!("cfg{}", t.unique());
    c.send(
        format!(
            "<iq type='set' id='{id}' to='{room_jid}'><query xmlns='{MUC_OWNER_NS}'>\
             <x xmlns='jabber:x:data' type='submit'/></query></iq>"
        )
        .as_bytes(),
    )
    .await?;
    let answer = c
        .expect(t.step_timeout, |s| {
            frame::name(s) == b"iq" && frame::attr(s, "id") == Some(id.as_bytes())
        })
        .await?;
    if frame::is_error(&answer) {
        return Err(XmppError(format!(
            "configuring {room_jid}: {}",
            String::from_utf8_lossy(&answer)
        )));
    }
    Ok(())
}

/// Occupants 1.. (`rest`) join, `concurrency` at a time; the connections come back in
/// order.
async fn join_rest(
    t: &Arc<Target>,
    rest: Vec<Conn>,
    room_jid: &str,
    concurrency: usize,
) -> Result<Vec<Conn>> {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for (i, mut c) in (1..).zip(rest) {
        let (t, sem, room_jid) = (t.clone(), sem.clone(), room_jid.to_owned());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            join(&mut c, &t, &room_jid, &format!("n{i}")).await?;
            Ok::<_, XmppError>((i, c))
        });
    }
    let mut joined: Vec<(usize, Conn)> = Vec::new();
    let mut errors = Vec::new();
    while let Some(j) = set.join_next().await {
        match j {
            Ok(Ok(x)) => joined.push(x),
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(XmppError(format!(
            "{} joins failed, e.g. {:?}",
            errors.len(),
            first_errors(&errors)
        )));
    }
    joined.sort_by_key(|(i, _)| *i);
    Ok(joined.into_iter().map(|(_, c)| c).collect())
}

/// Logs the occupants in and puts them all in the room; returns them in order and the time
/// the joins took. With `peer` (another node of the same domain), every other occupant
/// logs in there.
async fn enter(
    t: &Arc<Target>,
    peer: Option<&Arc<Target>>,
    o: &MucOpts,
    room_jid: &str,
) -> Result<(Vec<Conn>, f64)> {
    let names = users(&o.prefix, o.start, o.occupants);
    let (mut conns, mut errors) = (Vec::new(), Vec::new());
    match peer {
        None => (conns, errors) = login_many(t, &names, o.concurrency, t.login_mech, true).await,
        Some(p) => {
            let (even, odd): (Vec<_>, Vec<_>) = names
                .iter()
                .cloned()
                .enumerate()
                .partition(|(i, _)| i % 2 == 0);
            let strip = |v: Vec<(usize, String)>| v.into_iter().map(|(_, n)| n).collect::<Vec<_>>();
            let (here, e1) = login_many(t, &strip(even), o.concurrency, t.login_mech, true).await;
            let (there, e2) = login_many(p, &strip(odd), o.concurrency, p.login_mech, true).await;
            let mut there = there.into_iter();
            for c in here {
                conns.push(c);
                conns.extend(there.next());
            }
            errors.extend(e1.into_iter().chain(e2));
        }
    }
    if !errors.is_empty() {
        return Err(XmppError(format!(
            "{} logins failed, e.g. {:?}",
            errors.len(),
            first_errors(&errors)
        )));
    }
    let mut conns: Vec<Conn> = conns.into_iter().flatten().collect();
    for c in &mut conns {
        c.shrink();
    }
    let t0 = Instant::now();
    let mut first = conns.remove(0);
    create_room(&mut first, t, room_jid).await?;
    let rest = join_rest(t, conns, room_jid, o.concurrency).await?;
    let all = std::iter::once(first).chain(rest).collect();
    Ok((all, round3(t0.elapsed().as_secs_f64())))
}

/// The MUC scenario: see the module's documentation. With `peer`, half the occupants
/// are on that node of the same domain.
pub async fn muc(t: &Arc<Target>, peer: Option<&Arc<Target>>, o: &MucOpts) -> Result<MucReport> {
    if o.occupants == 0 {
        return Err(XmppError("--occupants must be at least 1".into()));
    }
    let room_jid = format!("{}@{}", o.room, o.service);
    let (conns, join_s) = enter(t, peer, o, &room_jid).await?;
    let senders = if o.senders == 0 {
        o.occupants
    } else {
        o.senders.min(o.occupants)
    };
    let room = Arc::new(Room::new(room_jid, conns.len(), senders, o.window.max(1)));
    let mut tasks = JoinSet::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let (room, every) = (room.clone(), o.lat_sample.max(1));
        tasks.spawn(async move {
            let mut seen = Seen::new(i, room.senders);
            if let Err(e) = drive(&mut c, &mut seen, &room, every).await {
                seen.failure = Some(e.to_string());
            }
            (c, seen)
        });
    }
    let (usage, msgs, deliveries) = measure(t, &room, o.warmup, o.duration).await;
    stop(&room).await;
    let done = collect(tasks, Duration::from_secs(30)).await;
    let mut report = report(o, &room, &done, usage, msgs, deliveries, join_s);
    let mut conns: Vec<(usize, Conn)> = done.into_iter().map(|(c, s)| (s.index, c)).collect();
    conns.sort_by_key(|(i, _)| *i);
    if o.mam_check
        && let Some((0, c)) = conns.first_mut()
    {
        report.room_archive = Some(room_archive(c, t, &room).await);
    }
    for (_, mut c) in conns {
        c.close().await;
    }
    Ok(report)
}

/// Warm-up, then the measured window: (usage, fully delivered messages, deliveries).
async fn measure(
    t: &Target,
    room: &Room,
    warmup: Duration,
    duration: Duration,
) -> (Usage, u64, u64) {
    tokio::time::sleep(warmup).await;
    let (m0, d0) = (
        room.fully.load(Ordering::Relaxed),
        room.deliveries.load(Ordering::Relaxed),
    );
    room.measuring.store(true, Ordering::Relaxed);
    let meter = Meter::start(&t.server_pids);
    tokio::time::sleep(duration).await;
    let (m1, d1) = (
        room.fully.load(Ordering::Relaxed),
        room.deliveries.load(Ordering::Relaxed),
    );
    let usage = meter.finish();
    room.measuring.store(false, Ordering::Relaxed);
    (usage, m1 - m0, d1 - d0)
}

/// Stops the senders, waits (at most 10 s) until each has noticed, then lets occupants
/// finish once they have everything.
async fn stop(room: &Room) {
    room.stopping.store(true, Ordering::Release);
    room.wake.iter().for_each(Notify::notify_one);
    let end = Instant::now() + Duration::from_secs(10);
    while room.stopped.load(Ordering::Acquire) < room.senders && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    room.draining.store(true, Ordering::Release);
    room.wake.iter().for_each(Notify::notify_one);
}

/// The room's archive ends with the last message the room got: the last of its sender.
async fn room_archive(c: &mut Conn, t: &Target, room: &Room) -> MamCheck {
    let mut check = MamCheck {
        archive: room.jid.clone(),
        count: None,
        page: 0,
        last: None,
        expected_last: None,
        ok: false,
        attempts: 0,
        error: None,
    };
    mam::check_on(c, t, Some(&room.jid), &mut check).await;
    // Which sender's message came last is only known from the archive: it must be that
    // sender's last one.
    if let Some(last) = &check.last {
        let k = last
            .from
            .strip_prefix(&format!("{}/n", room.jid))
            .and_then(|n| n.parse::<usize>().ok());
        let expected = k.filter(|&k| k < room.senders).map(|k| Archived {
            from: format!("{}/n{k}", room.jid),
            seq: room.sent[k].load(Ordering::Acquire).checked_sub(1),
        });
        check.ok = expected.as_ref().is_some_and(|e| e.seq == last.seq);
        check.expected_last = expected;
    }
    check
}

fn report(
    o: &MucOpts,
    room: &Room,
    done: &[(Conn, Seen)],
    usage: Usage,
    msgs: u64,
    deliveries: u64,
    join_s: f64,
) -> MucReport {
    let seen = || done.iter().map(|(_, s)| s);
    let mut lat: Vec<u64> = seen().flat_map(|s| s.latencies.iter().copied()).collect();
    let mut full: Vec<u64> = seen()
        .flat_map(|s| s.full_latencies.iter().copied())
        .collect();
    let mut failures: Vec<String> = seen().filter_map(|s| s.failure.clone()).take(3).collect();
    let missing_tasks = room.occupants as usize - done.len();
    if missing_tasks > 0 {
        failures.push(format!(
            "{missing_tasks} occupants still waiting at the drain deadline"
        ));
    }
    MucReport {
        scenario: "muc",
        room: room.jid.clone(),
        occupants: o.occupants,
        joined: room.occupants as usize,
        senders: room.senders,
        window: room.window,
        duration_s: o.duration.as_secs_f64(),
        join_s,
        msgs_in_window: msgs,
        msgs_per_s: per_sec(msgs, usage.wall_s),
        deliveries_in_window: deliveries,
        deliveries_per_s: per_sec(deliveries, usage.wall_s),
        total_sent: room.sent.iter().map(|s| s.load(Ordering::Acquire)).sum(),
        total_fully_delivered: room.fully.load(Ordering::Acquire),
        undelivered_after_drain: seen().map(|s| s.missing(room)).sum::<u64>()
            + missing_tasks as u64
                * room
                    .sent
                    .iter()
                    .map(|s| s.load(Ordering::Acquire))
                    .sum::<u64>(),
        out_of_order: seen().map(|s| s.out_of_order).sum(),
        error_replies: seen().map(|s| s.errors).sum(),
        failures,
        delivery_latency: metrics::percentiles(&mut lat),
        full_delivery_latency: metrics::percentiles(&mut full),
        generator_us_per_delivery: us_per_msg(usage.generator_cpu_pct, usage.wall_s, deliveries),
        server_us_per_delivery: usage
            .server_cpu_pct
            .map(|p| us_per_msg(p, usage.wall_s, deliveries)),
        usage,
        room_archive: None,
    }
}
