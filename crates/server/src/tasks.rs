//! Every task the server spawns, tracked so that shutdown can wait for them and, past its
//! deadline, abort what did not finish.
//!
//! Tasks stop cooperatively on the server's shutdown token (streams close politely);
//! [`Tasks::abort`] then drops what is still running at its next poll, which is what a
//! `JoinHandle::abort` would do, without keeping a handle per connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    abort: CancellationToken,
}

impl Tasks {
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(UntilAborted {
            abort: self.abort.clone().cancelled_owned(),
            task,
        });
    }

    /// Waits for every task, after no more may be spawned.
    pub(crate) async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Drops every task still running.
    pub(crate) fn abort(&self) {
        self.abort.cancel();
    }

    /// Number of tasks running.
    pub(crate) fn len(&self) -> usize {
        self.tracker.len()
    }
}

pin_project_lite::pin_project! {
    /// A task that ends when it finishes or when the abort token is cancelled. A struct and
    /// not an `async` block: a block that took the task by value and then awaited it would
    /// hold it twice, and a connection task's size is what every idle connection costs.
    struct UntilAborted<F> {
        #[pin]
        abort: WaitForCancellationFutureOwned,
        #[pin]
        task: F,
    }
}

impl<F: Future<Output = ()>> Future for UntilAborted<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.abort.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        this.task.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn abort_drops_tasks_that_do_not_finish() {
        let tasks = Tasks::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(async move {
            // Holds the sender until the task is dropped.
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        tasks.spawn(async {});
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(5), tasks.wait())
                .await
                .is_err(),
            "a task that never ends keeps the tracker open"
        );
        tasks.abort();
        tasks.wait().await;
        assert_eq!(tasks.len(), 0);
        assert!(rx.await.is_err(), "the aborted task was dropped");
    }
}
