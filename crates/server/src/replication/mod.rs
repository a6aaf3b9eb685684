//! Directory replication from a site to its hub (ARCHITECTURE.md, "Sites and hub").
//!
//! The site's store logs every change of its directory (accounts' SCRAM verifiers,
//! rosters, subscription requests, vCards, block lists, private XML, archive preferences,
//! PEP nodes, items and subscriptions, rooms) in the same transaction as the change. The
//! shipper here reads that log in order and sends it to the hub in batches, each record
//! carrying its key's current value, over the server-to-server link to the hub (whatever
//! path it takes). The hub applies a batch in one transaction together with its new
//! position, and only if it follows the position it holds: a batch is applied once, in
//! order, and after any outage the shipper asks the hub where it stands and goes on from
//! there. A hub with nothing (new, wiped, or behind what the log still holds) gets a
//! snapshot: every key the site holds, logged again, then the tail.
//!
//! The log is the durable queue of replication (the outbox would store each record a
//! second time); it keeps each entry until the hub has acknowledged it.

mod handback;
mod merge;
mod wire;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jid::{BareJid, Jid};
use minidom::Element;
use outpost_proto::stanza::{self, Condition, StanzaError};
use outpost_store::{ReplBatch, ReplKind, ReplMode, ReplRecord, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::delivery::Delivery;

/// Log entries read for one batch: at first, and at most. After a batch the shipper reads
/// a quarter more than it last sent, so that little is read only to be left for the next.
const BATCH_ENTRIES: u32 = 500;
const BATCH_ENTRIES_MAX: u32 = 4_000;
/// Bytes of records in one batch at most: the hub is an Outpost, whose stanza limit is the
/// site's own (`limits.max_stanza_bytes`, 256 KiB by default), less room for the rest.
const BATCH_BYTES: usize = 192 * 1024;
/// How often an idle shipper looks for new entries.
const POLL: Duration = Duration::from_millis(100);
/// How long the hub may take to answer a batch.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Waits after a failure: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_LAST: Duration = Duration::from_secs(10);

/// What a cluster node that does not ship says of replication.
const ELSEWHERE: &str = "replication runs on the node that runs the link to the hub";

/// How a site's replication to its hub goes, as the shipper last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicationStatus {
    pub hub: String,
    /// The position the hub acknowledged (0 before it did).
    pub acked: i64,
    /// Records sent and applied since the server started.
    pub records: u64,
    /// Snapshots the hub needed since the server started.
    pub snapshots: u64,
    /// Why replication waits, while it does.
    pub error: Option<String>,
}

/// The shipper's status, shared with the server's handle.
pub(crate) type SharedStatus = Arc<Mutex<ReplicationStatus>>;

/// On a hub: logs what it writes for its sites' users, and hands back to each site what it
/// wrote and stored for them while it stood in for the site (see `merge` and `handback`),
/// until shutdown.
pub(crate) async fn hand_back_to_sites(
    d: &Arc<Delivery>,
    tasks: &crate::tasks::Tasks,
    shutdown: &CancellationToken,
) {
    if let Err(e) = d.store().repl_activate(ReplMode::Hub).await {
        warn!(error = %e, "cannot log what the hub writes for its sites' users");
    }
    for site in d.standby().sites() {
        tasks.spawn(handback::run(d.clone(), site.clone(), shutdown.clone()));
    }
}

/// Whether an IQ comes from a site's hub with what it kept for the site's users.
pub(crate) fn is_from_hub(el: &Element) -> bool {
    handback::is_handback(el) || merge::is_merge(el)
}

/// On a site: takes what its hub kept for its users while standing in (`hub` is this
/// site's hub, `federation.hub`; the sender's domain was authenticated by its stream).
pub(crate) async fn from_hub(
    d: &Arc<Delivery>,
    el: &Element,
    hub: Option<&str>,
) -> Result<Element, StanzaError> {
    let from = el
        .attr("from")
        .and_then(|f| Jid::new(f).ok())
        .map(|f| f.domain().as_str().to_owned())
        .unwrap_or_default();
    if hub != Some(from.as_str()) {
        warn!(%from, "data handed back by a server that is not our hub: refused");
        return Err(StanzaError::new(Condition::Forbidden).text("not this site's hub"));
    }
    match merge::is_merge(el) {
        true => merge::merge_in(d, el).await,
        false => handback::take_back(d, el, &from).await,
    }
}

/// Whether an IQ carries replication (a get or set; answers go to their request).
pub(crate) fn is_sync(el: &Element) -> bool {
    el.name() == "iq"
        && matches!(el.attr("type"), Some("get" | "set"))
        && stanza::iq_payload(el).is_some_and(|p| p.is("sync", wire::NS))
}

/// Runs a site's shipper until shutdown: replicates the directory of `local` to `hub`.
pub(crate) async fn ship(
    d: Arc<Delivery>,
    local: String,
    hub: String,
    max_stanza_bytes: usize,
    status: SharedStatus,
    shutdown: CancellationToken,
) {
    let epoch = match d.store().repl_activate(ReplMode::Site).await {
        Ok(log) => log.epoch,
        Err(e) => {
            warn!(error = %e, %hub, "cannot replicate to the hub");
            lock(&status).error = Some(format!("cannot replicate: {e}"));
            return;
        }
    };
    info!(%hub, %epoch, "replicating the directory to the hub");
    let shipper = Shipper {
        d,
        local,
        hub,
        epoch,
        at: None,
        batch_bytes: BATCH_BYTES
            .min(max_stanza_bytes.saturating_sub(32 * 1024))
            .max(4096),
        read_limit: BATCH_ENTRIES,
        prefetched: None,
        max_record: max_stanza_bytes.saturating_sub(4096),
        failing: None,
        status,
    };
    shipper.run(shutdown).await;
}

impl Shipper {
    /// Ships until shutdown: a batch after another while there are entries, polling when
    /// there are none, waiting longer after each failure.
    async fn run(mut self, shutdown: CancellationToken) {
        let mut retry = RETRY_FIRST;
        loop {
            let step = match self.d.runs_link(&self.local, &self.hub).await {
                true => tokio::select! {
                    () = shutdown.cancelled() => return,
                    step = self.step() => step,
                },
                // On a cluster, the node that runs the link to the hub ships (the log is
                // shared); this one asks the hub where it stands when its turn comes.
                false => self.elsewhere(),
            };
            let wait = match step {
                Step::Sent => {
                    retry = RETRY_FIRST;
                    continue;
                }
                Step::Idle => POLL,
                Step::Failed(reason) => {
                    self.failed(reason);
                    retry = (retry * 2).min(RETRY_LAST);
                    retry / 2
                }
                Step::Wait(reason) => {
                    lock(&self.status).error = Some(reason);
                    retry = (retry * 2).min(RETRY_LAST);
                    retry / 2
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Where the shipper is in the log: the hub holds everything up to `after`.
#[derive(Clone, Copy, Debug)]
struct At {
    after: i64,
    /// The next batch starts a snapshot.
    snapshot: bool,
}

struct Shipper {
    d: Arc<Delivery>,
    local: String,
    hub: String,
    epoch: String,
    /// `None` until the hub has said where it stands (and after any failure).
    at: Option<At>,
    /// Bytes of records in one batch at most.
    batch_bytes: usize,
    /// Log entries to read for the next batch.
    read_limit: u32,
    /// The batch after the one in flight, read while the hub applied that one.
    prefetched: Option<Read>,
    /// A record bigger than this cannot travel: it is left out, and said so.
    max_record: usize,
    /// The failure last logged, so a repeat is not logged again.
    failing: Option<String>,
    status: SharedStatus,
}

fn lock(status: &SharedStatus) -> std::sync::MutexGuard<'_, ReplicationStatus> {
    status.lock().unwrap_or_else(|p| p.into_inner())
}

/// A batch read from the log, not sent yet.
struct Read {
    after: i64,
    records: Vec<ReplRecord>,
    upto: i64,
    /// The log's last position when it was read.
    head: i64,
    /// Entries to read for the batch after it.
    next_limit: u32,
}

enum Step {
    /// A batch went and was applied.
    Sent,
    /// Nothing to send.
    Idle,
    /// The hub asks to try the same batch again later.
    Wait(String),
    Failed(String),
}

impl Shipper {
    async fn step(&mut self) -> Step {
        let Some(at) = self.at else {
            return match self.locate().await {
                Ok(()) => Step::Sent,
                Err(reason) => Step::Failed(reason),
            };
        };
        let batch = match self.prefetched.take().filter(|b| b.after == at.after) {
            Some(batch) => batch,
            None => match self.read(at.after).await {
                Ok(batch) => batch,
                Err(reason) => return Step::Failed(reason),
            },
        };
        if batch.upto == at.after {
            return Step::Idle;
        }
        self.read_limit = batch.next_limit;
        let sync = wire::Sync {
            epoch: self.epoch.clone(),
            after: at.after,
            upto: batch.upto,
            head: batch.head,
            snapshot: at.snapshot,
            records: batch.records,
        };
        // While the hub applies this batch, the next is read.
        let (sent, next) = tokio::join!(self.send(wire::sync_request(&sync)), self.read(sync.upto));
        self.prefetched = next.ok();
        match sent {
            Ok(p) if p.applied => {
                self.applied(&sync, &p).await;
                Step::Sent
            }
            Ok(p) if p.wait => {
                // The snapshot stays logged; it goes again once the hub is ready for it.
                self.prefetched = None;
                Step::Wait("the hub merges what it wrote for our users back first".into())
            }
            Ok(p) => match self.resume_from(&p).await {
                Ok(()) => Step::Sent,
                Err(reason) => Step::Failed(reason),
            },
            Err(reason) => Step::Failed(reason),
        }
    }

    /// The next batch after `after`, cut to size.
    async fn read(&self, after: i64) -> Result<Read, String> {
        let store = self.d.store();
        let (records, upto) = store
            .repl_read(after, self.read_limit)
            .await
            .map_err(|e| format!("cannot read the replication log: {e}"))?;
        let read = records.len();
        let (records, upto) = self.fit(records, upto);
        let next_limit = match records.len() < read {
            // Cut by size: read about what fits.
            true => (u32::try_from(records.len()).unwrap_or(u32::MAX) * 5 / 4)
                .clamp(50, BATCH_ENTRIES_MAX),
            false => (self.read_limit * 2).min(BATCH_ENTRIES_MAX),
        };
        let head = store.repl_log().await.map_or(upto, |l| l.last);
        Ok(Read {
            after,
            records,
            upto,
            head,
            next_limit,
        })
    }

    /// The hub applied `sync`: the log drops it, and the status says so.
    async fn applied(&mut self, sync: &wire::Sync, p: &wire::Position) {
        if let Err(e) = self
            .d
            .store()
            .repl_acked(p.position, crate::clock::now_ms())
            .await
        {
            warn!(error = %e, "cannot record the hub's acknowledgement");
        }
        self.at = Some(At {
            after: p.position,
            snapshot: false,
        });
        let mut status = lock(&self.status);
        status.acked = p.position;
        status.records += sync.records.len() as u64;
        status.snapshots += u64::from(sync.snapshot);
        status.error = None;
        drop(status);
        if self.failing.take().is_some() {
            info!(hub = %self.hub, position = p.position, "replication to the hub goes on");
        }
    }

    /// Cuts a batch to `batch_bytes`, leaving out records of our other domains and (logging
    /// it) a record too big to travel at all; returns the records and the position they
    /// reach.
    fn fit(&self, records: Vec<ReplRecord>, upto: i64) -> (Vec<ReplRecord>, i64) {
        let travels = |r: &ReplRecord| {
            if !homes(&self.local, &r.owner) {
                // Another domain of this server: its links speak for the first one only,
                // and the hub takes records of the sender's domain only.
                return false;
            }
            let len = wire::record_size(r);
            if len > self.max_record {
                warn!(owner = %r.owner, kind = r.kind.as_str(), bytes = len,
                    "a directory record is too big to replicate; the hub keeps its older value");
                return false;
            }
            true
        };
        let records = records.into_iter().filter(travels).collect();
        wire::fit(records, upto, self.batch_bytes)
    }

    /// Asks the hub where it stands and picks up from there.
    async fn locate(&mut self) -> Result<(), String> {
        let head = self
            .d
            .store()
            .repl_log()
            .await
            .map_err(|e| format!("cannot read the replication log: {e}"))?
            .last;
        let p = self.send(wire::status_request(&self.epoch, head)).await?;
        self.resume_from(&p).await
    }

    /// Goes on from the hub's position when the log still holds what follows it;
    /// otherwise starts a snapshot.
    async fn resume_from(&mut self, p: &wire::Position) -> Result<(), String> {
        let store = self.d.store().clone();
        let log = store
            .repl_log()
            .await
            .map_err(|e| format!("cannot read the replication log: {e}"))?;
        if p.epoch == self.epoch && p.position >= log.first - 1 && p.position <= log.last {
            debug!(hub = %self.hub, position = p.position, "replication resumes");
            self.at = Some(At {
                after: p.position,
                snapshot: false,
            });
            return Ok(());
        }
        let before = store
            .repl_reseed()
            .await
            .map_err(|e| format!("cannot take a snapshot: {e}"))?;
        info!(hub = %self.hub, hub_position = p.position, "the hub needs a snapshot of the directory");
        self.at = Some(At {
            after: before,
            snapshot: true,
        });
        Ok(())
    }

    /// Sends a replication IQ to the hub and reads its answer.
    async fn send(&self, iq: Element) -> Result<wire::Position, String> {
        let answer = self
            .d
            .request(iq, &self.local, &self.hub, ANSWER_TIMEOUT)
            .await
            .ok_or("the hub did not answer")?;
        if answer.attr("type") == Some("error") {
            let error = StanzaError::from_stanza(&answer);
            return Err(match error {
                Some(e) => format!(
                    "the hub refused: {}",
                    e.text.as_deref().unwrap_or(e.condition.as_str())
                ),
                None => "the hub refused".to_owned(),
            });
        }
        wire::parse_position(&answer).ok_or_else(|| "the hub's answer has no position".to_owned())
    }

    /// Another node of the cluster runs the link to the hub, and ships.
    fn elsewhere(&mut self) -> Step {
        self.at = None;
        self.prefetched = None;
        self.failing = None;
        lock(&self.status).error = Some(ELSEWHERE.to_owned());
        Step::Idle
    }

    fn failed(&mut self, reason: String) {
        self.at = None;
        lock(&self.status).error = Some(reason.clone());
        if self.failing.as_deref() != Some(reason.as_str()) {
            warn!(hub = %self.hub, %reason, "replication to the hub waits");
            self.failing = Some(reason);
        }
    }
}

/// On a hub: answers a site's replication IQ (`sites` are those it replicates, `None` on
/// a server that is no hub). The sender's domain was authenticated by its stream.
pub(crate) async fn answer(
    d: &Arc<Delivery>,
    el: &Element,
    sites: Option<&[String]>,
) -> Result<Element, StanzaError> {
    let from = el
        .attr("from")
        .and_then(|f| Jid::new(f).ok())
        .map(|f| f.domain().as_str().to_owned())
        .unwrap_or_default();
    let Some(sites) = sites else {
        return Err(StanzaError::new(Condition::ServiceUnavailable).text("this server is no hub"));
    };
    if !sites.contains(&from) {
        warn!(%from, "replication refused: not a site of this hub (federation.relay_for)");
        return Err(StanzaError::new(Condition::Forbidden).text("not a site of this hub"));
    }
    let payload = stanza::iq_payload(el).ok_or(Condition::BadRequest)?;
    if el.attr("type") == Some("get") {
        let origin = d
            .store()
            .repl_origin(&from)
            .await
            .map_err(|e| internal(&from, e))?;
        if wire::parse_status(payload)
            .is_some_and(|(epoch, head)| origin.epoch == epoch && origin.position >= head)
        {
            site_caught_up(d, &from);
        }
        return Ok(result(el, wire::position(&origin, false)));
    }
    apply(d, el, payload, &from).await
}

fn internal(site: &str, e: StoreError) -> StanzaError {
    warn!(error = %e, %site, "cannot apply replication");
    StanzaError::new(Condition::InternalServerError)
}

/// On a hub: applies a batch from `from`'s site, and answers where the replica stands.
async fn apply(
    d: &Arc<Delivery>,
    el: &Element,
    payload: &Element,
    from: &str,
) -> Result<Element, StanzaError> {
    let sync = wire::parse_sync(payload)
        .map_err(|reason| StanzaError::new(Condition::BadRequest).text(reason))?;
    if let Some(r) = sync.records.iter().find(|r| !homes(from, &r.owner)) {
        warn!(site = %from, owner = %r.owner, "replication refused: a record for another domain");
        return Err(StanzaError::new(Condition::Forbidden)
            .text(format!("{from} does not home {}", r.owner)));
    }
    let batch = ReplBatch {
        domain: from,
        epoch: &sync.epoch,
        after: sync.after,
        upto: sync.upto,
        head: sync.head,
        snapshot: sync.snapshot,
        records: &sync.records,
        now_ms: crate::clock::now_ms(),
    };
    match d.store().repl_apply(&batch).await {
        Ok((false, origin)) if sync.snapshot && origin.pending > 0 => {
            let (d, site) = (d.clone(), from.to_owned());
            tokio::spawn(async move {
                if let Err(reason) = merge::merge_back(&d, &site).await {
                    debug!(%site, %reason, "what the hub wrote for the site's users waits");
                }
                if d.standby().is_active(&site) {
                    return;
                }
                if let Err(reason) = handback::hand_back(&d, &site).await {
                    debug!(%site, %reason, "messages for the site wait at the hub");
                }
            });
            Ok(result(el, wire::wait(&origin)))
        }
        Ok((applied, origin)) => {
            let archived = sync.records.iter().filter(|r| r.kind == ReplKind::Archive);
            if let Some(newest) = archived.filter_map(|r| r.key.parse::<i64>().ok()).max() {
                d.archive().observe(newest);
            }
            if applied && !sync.snapshot {
                end_changed_sessions(d, &sync.records);
            }
            debug!(site = %from, applied, position = origin.position, records = sync.records.len(), "replication batch");
            if applied && origin.position >= sync.head {
                site_caught_up(d, from);
            }
            Ok(result(el, wire::position(&origin, applied)))
        }
        Err(StoreError::Rejected(reason)) => {
            warn!(site = %from, %reason, "replication batch refused");
            Err(StanzaError::new(Condition::BadRequest).text(reason))
        }
        Err(e) => Err(internal(from, e)),
    }
}

/// An account removed, or its password changed, at the site: its sessions at the hub end
/// as they would at home (a password change ends them all here: the client that made it
/// is at the site).
fn end_changed_sessions(d: &Delivery, records: &[ReplRecord]) {
    for r in records.iter().filter(|r| r.kind == ReplKind::Account) {
        let Ok(user) = BareJid::new(&r.owner) else {
            continue;
        };
        let text = match r.value {
            None => "account removed",
            Some(_) => "password changed",
        };
        let ended = d.router().end_sessions(&user, None, "not-authorized", text);
        if ended > 0 {
            info!(%user, sessions = ended, reason = text, "sessions at the hub ended");
        }
    }
}

/// The site is back and the replica has all of its log: if the hub stands in for it and
/// can reach it too (a site behind a NAT reaches its hub, but not the other way round, and
/// its users away from it cannot reach it either), the standby ends. Tried on the side: a
/// connection attempt may take seconds, and the site's stream waits for this answer.
fn site_caught_up(d: &Arc<Delivery>, site: &str) {
    if !d.standby().is_active(site) {
        return;
    }
    let (d, site) = (d.clone(), site.to_owned());
    tokio::spawn(async move {
        if d.site_reachable(&site).await {
            // What the users wrote here goes home before they do (what they write until
            // their sessions move follows when the standby has ended, see `handback`).
            if let Err(reason) = merge::merge_back(&d, &site).await {
                warn!(%site, %reason, "what the hub wrote for the site's users waits");
            }
            d.end_standby(&site);
        } else {
            debug!(%site, "the site replicates but cannot be reached from here: standby goes on");
        }
    });
}

fn result(request: &Element, payload: Element) -> Element {
    let mut reply = stanza::iq_result(request, request.attr("to"));
    reply.append_child(payload);
    reply
}

/// Whether the site `domain` homes `owner`: an account of the domain, or a room of one of
/// its services (`room@conference.domain`).
fn homes(domain: &str, owner: &str) -> bool {
    let Ok(jid) = BareJid::new(owner) else {
        return false;
    };
    let of = jid.domain().as_str();
    jid.node().is_some()
        && (of == domain || of.strip_suffix(domain).is_some_and(|s| s.ends_with('.')))
}

#[cfg(test)]
mod tests {
    use super::homes;

    #[test]
    fn a_site_homes_its_accounts_and_its_services_rooms_only() {
        assert!(homes("site1.test", "alice@site1.test"));
        assert!(homes("site1.test", "lounge@conference.site1.test"));
        assert!(!homes("site1.test", "alice@site2.test"));
        assert!(!homes("site1.test", "alice@evilsite1.test"));
        assert!(!homes("site1.test", "site1.test"));
        assert!(!homes("site1.test", "not a jid@@"));
    }
}
