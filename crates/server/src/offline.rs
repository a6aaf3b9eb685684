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
use tracing::warn;

use crate::session::Session;

/// Messages loaded and written per batch.
const BATCH: u32 = 500;

impl Session {
    /// Keeps a message for a local user who cannot take it now (see
    /// [`crate::delivery::store_offline`]), or tells the sender why not.
    pub(crate) async fn store_offline(&mut self, el: Element, user: &BareJid) {
        let shared = self.shared.clone();
        if let Some(b) = crate::delivery::store_offline(&shared, el, user).await {
            self.error_to_sender(&b.el, b.error_type, b.condition);
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
