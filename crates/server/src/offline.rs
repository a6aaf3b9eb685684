//! Offline messages (XEP-0160, with XEP-0203 delay stamps).
//!
//! A message for an account with no available resource is committed to the store before
//! the sender's stanza counts as handled. At the user's next available presence (priority
//! ≥ 0) the queue is written to that session in batches, in order; each batch is deleted
//! only after it was written and flushed to the client's socket. If the connection dies
//! in between, the batch is delivered again next time: duplicates are possible, loss is
//! not.

use jid::BareJid;
use minidom::Element;
use outpost_proto::stanza::{self, ns};
use outpost_store::StoreError;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::warn;

use crate::router::{ToSession, deliver};
use crate::session::Session;

/// Messages loaded and written per batch.
const BATCH: u32 = 500;

/// Whether a message is worth keeping: XEP-0160 §3 and XEP-0085 say not to store
/// messages that carry only chat states or other transient notices.
fn worth_storing(el: &Element) -> bool {
    el.children()
        .any(|c| c.is("body", ns::CLIENT) || c.is("subject", ns::CLIENT))
}

impl Session {
    /// Keeps a message for a local user who cannot take it now, or tells the sender why
    /// not.
    pub(crate) async fn store_offline(&mut self, mut el: Element, user: &BareJid) {
        let store = self.shared.store.clone();
        match store.account_exists(user.as_str()).await {
            Ok(true) => {}
            Ok(false) => {
                // RFC 6121 §8.5.2.2.1: no such account.
                self.error_to_sender(&el, "cancel", "service-unavailable");
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot check account");
                self.error_to_sender(&el, "wait", "internal-server-error");
                return;
            }
        }
        if let Some(from) = el.attr("from") {
            match store.blocklist(user.as_str()).await {
                Ok(list) if crate::routing::blocked(&list, from) => {
                    self.error_to_sender(&el, "cancel", "service-unavailable");
                    return;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "cannot read block list"),
            }
        }
        if !worth_storing(&el) {
            return;
        }
        // XEP-0082 allows any precision, but common clients parse at most microseconds;
        // milliseconds are plenty for ordering a human's messages.
        let now = OffsetDateTime::now_utc();
        let stamp = now
            .replace_millisecond(now.millisecond())
            .unwrap_or(now)
            .format(&Rfc3339)
            .unwrap_or_default();
        el.append_child(
            Element::builder("delay", ns::DELAY)
                .attr(stanza::name("from"), user.domain().as_str())
                .attr(stanza::name("stamp"), stamp)
                .append("Offline storage")
                .build(),
        );
        let mut text = Vec::new();
        if outpost_proto::xml::write_stanza(&el, &mut text).is_err() {
            self.error_to_sender(&el, "modify", "not-acceptable");
            return;
        }
        let text = String::from_utf8_lossy(&text);
        let quota = self.shared.config.limits.offline_quota;
        match store.push_offline(user.as_str(), &text, quota).await {
            Ok(_) => {
                // The user may have come online while we were storing: make sure the
                // message does not wait for the next login.
                if let Some((_, tx)) = self.shared.router.message_targets(user, false).first() {
                    let _ = deliver(tx, ToSession::FlushOffline);
                }
            }
            Err(StoreError::QuotaExceeded { .. }) => {
                self.error_to_sender(&el, "wait", "resource-constraint");
            }
            Err(e) => {
                warn!(error = %e, "cannot store offline message");
                self.error_to_sender(&el, "wait", "internal-server-error");
            }
        }
    }

    /// Begins writing the offline queue to this session, unless another session of the
    /// same user is already doing so.
    pub(crate) async fn start_offline_delivery(&mut self) {
        let Some(user) = self.user.clone() else {
            return;
        };
        if self.offline_pending.is_some() {
            return;
        }
        if !self.shared.claim_offline(&user) {
            return;
        }
        self.offline_claimed = true;
        self.next_offline_batch(&user).await;
    }

    /// Queues the next batch for writing; releases the claim when the queue is empty.
    pub(crate) async fn next_offline_batch(&mut self, user: &BareJid) {
        match self.shared.store.offline(user.as_str(), BATCH).await {
            Ok(batch) if !batch.is_empty() => {
                for m in &batch {
                    self.proto.send_raw(&m.stanza);
                }
                self.offline_pending = batch.last().map(|m| m.id);
            }
            Ok(_) => self.release_offline(),
            Err(e) => {
                warn!(error = %e, "cannot read offline messages");
                self.release_offline();
            }
        }
    }

    /// Called after output was written to the socket: the batch in it is delivered.
    pub(crate) async fn offline_written(&mut self) {
        let (Some(up_to), Some(user)) = (self.offline_pending.take(), self.user.clone()) else {
            return;
        };
        if let Err(e) = self.shared.store.delete_offline(user.as_str(), up_to).await {
            warn!(error = %e, "cannot delete delivered offline messages");
            self.release_offline();
            return;
        }
        self.next_offline_batch(&user).await;
    }

    pub(crate) fn release_offline(&mut self) {
        if self.offline_claimed {
            self.offline_claimed = false;
            if let Some(user) = &self.user {
                self.shared.release_offline(user);
            }
        }
    }
}
