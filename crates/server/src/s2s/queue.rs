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

/// The pairs of our domains with stanzas queued.
pub(super) async fn queued(fed: &Federation) -> Vec<(String, String)> {
    match fed.env.store.outbox_stats().await {
        Ok(stats) => {
            let domains = &fed.listening().domains;
            stats
                .into_iter()
                .filter(|s| s.queued > 0 && crate::config::is_one_of(domains, &s.local_domain))
                .map(|s| (s.local_domain, s.remote_domain))
                .collect()
        }
        Err(e) => {
            warn!(error = %e, "cannot read the outbox");
            Vec::new()
        }
    }
}

/// Wakes the links with stanzas queued: those left from before a restart (a restart must
/// not wait for new traffic to resume old queues). On a cluster, the next renewal of the
/// link leases does, for the links nobody runs (see `cluster::links`).
async fn resume(fed: &Federation) {
    if let Some(c) = fed.cluster() {
        return c.sweep_links();
    }
    for (local, remote) in queued(fed).await {
        info!(%local, %remote, "resuming queued link");
        fed.wake(&local, &remote);
    }
}

/// Resumes the links with stanzas queued, then expires old queue entries and forgets old
/// stanza ids, periodically, until shutdown. On a cluster, every node does (each entry
/// expires once), and each round looks for queued links nobody runs: an entry committed
/// as its link changed hands may have told the old node.
pub(super) async fn maintenance(fed: Arc<Federation>) {
    let env = fed.env.clone();
    resume(&fed).await;
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
        if fed.cluster().is_some() {
            resume(&fed).await;
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
