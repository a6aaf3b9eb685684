//! The durable outbound queue's upkeep: links resumed after a restart, and the expiry of
//! stanzas whose lifetime ended. (New stanzas are committed through the server's journal.)

use std::sync::Arc;
use std::time::Duration;

use outpost_proto::stanza::Condition;
use tracing::{info, warn};

use super::{Federation, LinkEnv, now_ms, parse_stanza};

/// How often expired queue entries are bounced and old stanza ids forgotten, at most: a
/// short `queue_lifetime_secs` is checked four times per lifetime.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);
/// Entries expired per store call.
const EXPIRE_BATCH: u32 = 500;

/// Wakes the links with stanzas queued: those left from before a restart (a restart must
/// not wait for new traffic to resume old queues), or, on a cluster, by the node that ran
/// the links before this one.
pub(super) async fn resume(fed: Arc<Federation>) {
    if !fed.runs_links() {
        return;
    }
    match fed.env.store.outbox_stats().await {
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
}

/// Resumes the links with stanzas queued, then expires old queue entries and forgets old
/// stanza ids, periodically, until shutdown. On a cluster, also wakes the queued links
/// each round: an entry committed as the links changed hands may have told the old node.
pub(super) async fn maintenance(fed: Arc<Federation>) {
    let env = fed.env.clone();
    resume(fed.clone()).await;
    let lifetime_secs = env.config.queue_lifetime_secs;
    let lifetime_ms = i64::try_from(lifetime_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let every = (Duration::from_secs(lifetime_secs) / 4)
        .clamp(Duration::from_millis(250), MAINTENANCE_INTERVAL);
    loop {
        if fed.runs_links() {
            expire(&env, lifetime_ms).await;
        }
        // Ids are remembered a day longer than any peer retries (XEP-0359 dedup window).
        let keep_ms = lifetime_ms.saturating_add(24 * 3600 * 1000);
        if let Err(e) = env.store.prune_seen(now_ms().saturating_sub(keep_ms)).await {
            warn!(error = %e, "cannot prune received stanza ids");
        }
        tokio::select! {
            () = env.shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if env.cluster.get().is_some() {
            resume(fed.clone()).await;
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
