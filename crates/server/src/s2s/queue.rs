//! The durable outbound queue's upkeep: group commit of new stanzas, links resumed after
//! a restart, and the expiry of stanzas whose lifetime ended.

use std::sync::Arc;
use std::time::Duration;

use minidom::Element;
use outpost_proto::stanza::{Condition, StanzaError};
use outpost_store::{OutboxPush, StoreError};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{Federation, LinkEnv, now_ms, parse_stanza};

/// Stanzas waiting to be committed to the outbox, and the most committed in one write.
pub(super) const PUSH_QUEUE: usize = 4096;
const PUSH_BATCH: usize = 512;
/// How often expired queue entries are bounced and old stanza ids forgotten, at most: a
/// short `queue_lifetime_secs` is checked four times per lifetime.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);
/// Entries expired per store call.
const EXPIRE_BATCH: u32 = 500;

/// A stanza on its way into the outbox, and who waits for the outcome.
pub(super) struct PushRequest {
    entry: OutboxPush,
    reply: oneshot::Sender<Result<i64, StoreError>>,
}

/// Commits a stanza to the queue from `local` to `remote` through the group commit, and
/// waits until it is durable. The error is the one its sender gets.
pub(super) async fn push(
    pushes: &mpsc::Sender<PushRequest>,
    local: &str,
    remote: &str,
    el: &Element,
) -> Result<(), StanzaError> {
    let mut text = Vec::new();
    if outpost_proto::xml::write_stanza(el, &mut text).is_err() {
        return Err(Condition::NotAcceptable.into());
    }
    let (reply, outcome) = oneshot::channel();
    let request = PushRequest {
        entry: OutboxPush {
            local: local.to_owned(),
            remote: remote.to_owned(),
            stanza: String::from_utf8_lossy(&text).into_owned(),
        },
        reply,
    };
    if pushes.send(request).await.is_err() {
        return Err(Condition::InternalServerError.into());
    }
    match outcome.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(StoreError::QuotaExceeded { .. })) => Err(Condition::ResourceConstraint.into()),
        Ok(Err(e)) => {
            warn!(error = %e, "cannot queue stanza for a remote domain");
            Err(Condition::InternalServerError.into())
        }
        // The server is stopping: not committed, so not accepted.
        Err(_) => Err(Condition::InternalServerError.into()),
    }
}

/// Commits queued stanzas in batches: waits for one, takes whatever else is waiting (up
/// to [`PUSH_BATCH`]), writes them in one transaction and answers each. At shutdown it
/// answers what is already waiting before it stops.
pub(super) async fn group_commit(env: Arc<LinkEnv>, mut rx: mpsc::Receiver<PushRequest>) {
    let quota = env.config.outbox_quota;
    loop {
        let first = tokio::select! {
            r = rx.recv() => r,
            () = env.shutdown.cancelled() => rx.try_recv().ok(),
        };
        let Some(first) = first else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < PUSH_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let (entries, replies): (Vec<OutboxPush>, Vec<_>) =
            batch.into_iter().map(|r| (r.entry, r.reply)).unzip();
        match env.store.outbox_push_batch(&entries, now_ms(), quota).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let why = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(why.clone().into())));
                }
            }
        }
    }
}

/// Resumes the links with stanzas left from before a restart, then expires old queue
/// entries and forgets old stanza ids, periodically, until shutdown.
pub(super) async fn maintenance(fed: Arc<Federation>) {
    let env = fed.env.clone();
    // A restart must not wait for new traffic to resume old queues.
    match env.store.outbox_stats().await {
        Ok(stats) => {
            for s in stats.iter().filter(|s| s.queued > 0) {
                if crate::config::is_one_of(&fed.listening().domains, &s.local_domain) {
                    info!(local = %s.local_domain, remote = %s.remote_domain, queued = s.queued, "resuming queued link");
                    fed.wake(&s.local_domain, &s.remote_domain);
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot read the outbox"),
    }
    let lifetime_secs = env.config.queue_lifetime_secs;
    let lifetime_ms = i64::try_from(lifetime_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let every = (Duration::from_secs(lifetime_secs) / 4)
        .clamp(Duration::from_millis(250), MAINTENANCE_INTERVAL);
    loop {
        expire(&env, lifetime_ms).await;
        // Ids are remembered a day longer than any peer retries (XEP-0359 dedup window).
        let keep_ms = lifetime_ms.saturating_add(24 * 3600 * 1000);
        if let Err(e) = env.store.prune_seen(now_ms().saturating_sub(keep_ms)).await {
            warn!(error = %e, "cannot prune received stanza ids");
        }
        tokio::select! {
            () = env.shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Removes queued stanzas whose lifetime ended and tells each sender
/// (`remote-server-timeout`, RFC 6120 §8.3.3.17).
async fn expire(env: &LinkEnv, lifetime_ms: i64) {
    loop {
        let expired = match env
            .store
            .outbox_expire(now_ms(), lifetime_ms, EXPIRE_BATCH)
            .await
        {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "cannot expire queued stanzas");
                return;
            }
        };
        let n = expired.len();
        if n > 0 {
            info!(count = n, "queued stanzas expired undelivered");
        }
        if let Some(d) = env.delivery() {
            for entry in expired {
                if let Some(el) = parse_stanza(&entry.stanza) {
                    d.bounce_durably(&el, Condition::RemoteServerTimeout.into())
                        .await;
                }
            }
        }
        if n < EXPIRE_BATCH as usize {
            return;
        }
    }
}
