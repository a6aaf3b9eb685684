//! Group commit for the durable writes of the message path: archive rows, offline
//! messages and outbox entries from every session and link go through one task that
//! commits whatever has gathered in one transaction ([`Store::write_batch`]). A hundred
//! senders cost one fsync, not a hundred.
//!
//! A write is [submitted](Journal::submit) without waiting for the disk: the caller gets a
//! [`Pending`] and goes on (routing the message to an online recipient, handling the next
//! stanza of the same read) and waits for the outcome only before it tells anyone the
//! stanza was accepted (an XEP-0198 `<a/>`, any later reply on the same stream). That is
//! what makes "durable before acknowledged" cheap: a wait only before a session writes to
//! its client, not per message, and none while a sender only streams messages.
//!
//! The task outlives the sessions: [`Journal::close`] is called after they have ended, so
//! what they write while ending (unacknowledged messages going to the offline store) is
//! committed before the store closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use crate::metrics::Counters;
use outpost_store::{BatchWrite, Quotas, Store, StoreError};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::warn;

/// Writes waiting to be committed; a full queue makes submitters wait (back-pressure on the
/// sessions that write faster than the disk).
const QUEUE: usize = 8192;
/// The most writes committed in one transaction.
const BATCH: usize = 2048;

/// Called with a write's outcome once it is known, by the commit task itself (so it runs
/// even if nobody waits for the outcome): federation wakes the link a new outbox entry is
/// for.
pub(crate) type Hook = Box<dyn FnOnce(&Result<i64, StoreError>) + Send>;

struct Request {
    write: BatchWrite,
    reply: oneshot::Sender<Result<i64, StoreError>>,
    hook: Option<Hook>,
}

enum Msg {
    Write(Request),
    /// Answered once everything queued before it is committed.
    Barrier(oneshot::Sender<()>),
    /// Commit what came before and stop.
    Stop,
}

/// The handle sessions, delivery and federation write through. Clones share the task.
#[derive(Clone)]
pub(crate) struct Journal {
    tx: mpsc::Sender<Msg>,
    offline_quota: Arc<AtomicU32>,
    /// What the server counts; the journal counts its committed writes.
    counters: Arc<Counters>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// The outcome of a submitted write: its id (archive, offline or outbox row), or why it
/// failed.
pub(crate) struct Pending(oneshot::Receiver<Result<i64, StoreError>>);

impl Future for Pending {
    type Output = Result<i64, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok(outcome) => outcome,
            // The task is gone: the server stops, and the write was not committed.
            Err(_) => Err(StoreError::Backend("the server is stopping".into())),
        })
    }
}

impl Pending {
    /// The outcome, if it is known already (without waiting).
    pub(crate) fn ready(&mut self) -> Option<Result<i64, StoreError>> {
        match self.0.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => {
                Some(Err(StoreError::Backend("the server is stopping".into())))
            }
        }
    }

    /// A pending outcome that someone other than the journal settles: the multi-user chat
    /// service answers with it once a room message's archive row is committed.
    pub(crate) fn channel() -> (oneshot::Sender<Result<i64, StoreError>>, Pending) {
        let (tx, rx) = oneshot::channel();
        (tx, Pending(rx))
    }
}

impl Journal {
    /// Starts the commit task. `outbox_quota` is fixed for the life of the server (the
    /// federation settings take a restart); the offline quota follows reloads.
    pub(crate) fn start(store: Arc<dyn Store>, offline_quota: u32, outbox_quota: u32) -> Journal {
        let (tx, rx) = mpsc::channel(QUEUE);
        let offline = Arc::new(AtomicU32::new(offline_quota));
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(commit(
            store,
            rx,
            offline.clone(),
            outbox_quota,
            counters.clone(),
        ));
        Journal {
            tx,
            offline_quota: offline,
            counters,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn set_offline_quota(&self, quota: u32) {
        self.offline_quota.store(quota, Ordering::Relaxed);
    }

    /// Queues a write for the next commit. Waits only while the queue is full.
    pub(crate) async fn submit(&self, write: BatchWrite) -> Pending {
        self.submit_with(write, None).await
    }

    /// [`Journal::submit`], with a hook the commit task calls with the outcome.
    pub(crate) async fn submit_with(&self, write: BatchWrite, hook: Option<Hook>) -> Pending {
        let (reply, outcome) = oneshot::channel();
        // A closed channel drops the request, and `Pending` reports the failure.
        let _ = self
            .tx
            .send(Msg::Write(Request { write, reply, hook }))
            .await;
        Pending(outcome)
    }

    /// Waits until every write submitted before this call has been committed (or has
    /// failed): an archive query sees what was routed before it.
    pub(crate) async fn barrier(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Barrier(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Commits what is queued and stops the task; later writes fail. Called once the
    /// sessions have ended, before the store closes.
    pub(crate) async fn close(&self) {
        let task = self.task.lock().await.take();
        if let Some(task) = task {
            // Handles are spread over the server, so the channel would not close by
            // itself: a marker stops the task after what was queued before it.
            let _ = self.tx.send(Msg::Stop).await;
            let _ = task.await;
        }
    }
}

/// Commits queued writes in batches: waits for one, takes whatever else is waiting (up to
/// [`BATCH`]), writes them in one transaction and answers each, then the barriers that
/// came with them.
async fn commit(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Msg>,
    offline_quota: Arc<AtomicU32>,
    outbox_quota: u32,
    counters: Arc<Counters>,
) {
    let mut stop = false;
    while !stop {
        let (mut batch, mut barriers) = (Vec::new(), Vec::new());
        match rx.recv().await {
            Some(Msg::Write(r)) => batch.push(r),
            Some(Msg::Barrier(b)) => barriers.push(b),
            Some(Msg::Stop) | None => return,
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(Msg::Write(r)) => batch.push(r),
                Ok(Msg::Barrier(b)) => barriers.push(b),
                Ok(Msg::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let quotas = Quotas {
            offline: offline_quota.load(Ordering::Relaxed),
            outbox: outbox_quota,
        };
        write(store.as_ref(), batch, quotas, &counters).await;
        for b in barriers {
            let _ = b.send(());
        }
    }
}

/// Writes one batch in one transaction and answers each request.
async fn write(store: &dyn Store, batch: Vec<Request>, quotas: Quotas, counters: &Counters) {
    if batch.is_empty() {
        return;
    }
    let (writes, answers): (Vec<BatchWrite>, Vec<_>) = batch
        .into_iter()
        .map(|r| (r.write, (r.reply, r.hook)))
        .unzip();
    let outcomes = match store
        .write_batch(&writes, crate::clock::now_ms(), quotas)
        .await
    {
        Ok(outcomes) => outcomes,
        Err(e) => {
            warn!(error = %e, writes = writes.len(), "cannot commit writes");
            let why = e.to_string();
            writes
                .iter()
                .map(|_| Err(StoreError::Backend(why.clone().into())))
                .collect()
        }
    };
    for (((reply, hook), outcome), write) in answers.into_iter().zip(outcomes).zip(&writes) {
        if outcome.is_ok() {
            counters.committed(write);
        }
        if let Some(hook) = hook {
            hook(&outcome);
        }
        let _ = reply.send(outcome);
    }
}
