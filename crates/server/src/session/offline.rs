//! Writing the user's offline messages (XEP-0160, with XEP-0203 delay stamps) to this
//! session.
//!
//! A message for an account with no available resource is committed to the store before
//! the sender's stanza counts as handled (`Delivery::store_offline`). At the user's next
//! available presence (priority ≥ 0) the queue is written to one session in batches, in
//! order; each batch is deleted only after it was written and flushed to the client's
//! socket. If the connection dies in between, the batch is delivered again next time:
//! duplicates are possible, loss is not.

use jid::BareJid;
use tracing::warn;

use super::Session;

/// Messages loaded and written per batch.
const BATCH: u32 = 500;

impl Session {
    /// Begins writing the offline queue to this session, unless another session of the
    /// same user is already doing so.
    pub(super) async fn start_offline_delivery(&mut self) {
        let Some(user) = self.user.clone() else {
            return;
        };
        if self.offline_pending.is_some() {
            return;
        }
        if !self.env.claim_offline(&user) {
            return;
        }
        self.offline_claimed = true;
        self.next_offline_batch(&user).await;
    }

    /// Queues the next batch for writing; releases the claim when the queue is empty.
    async fn next_offline_batch(&mut self, user: &BareJid) {
        match self.delivery().store().offline(user.as_str(), BATCH).await {
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
    pub(super) async fn offline_written(&mut self) {
        let (Some(up_to), Some(user)) = (self.offline_pending.take(), self.user.clone()) else {
            return;
        };
        let store = self.delivery().store().clone();
        if let Err(e) = store.delete_offline(user.as_str(), up_to).await {
            warn!(error = %e, "cannot delete delivered offline messages");
            self.release_offline();
            return;
        }
        self.next_offline_batch(&user).await;
    }

    pub(super) fn release_offline(&mut self) {
        if self.offline_claimed {
            self.offline_claimed = false;
            if let Some(user) = &self.user {
                self.env.release_offline(user);
            }
        }
    }
}
