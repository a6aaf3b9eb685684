//! How long tests wait, and the one way they may poll.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How long a test waits for something it expects before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// Between two looks at something nothing announces.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Calls `check` until it returns `Ok`, and returns that; panics at `deadline` with the
/// last `Err`, which says what was seen instead.
///
/// Only for what no event announces. The server signals stanzas (wait for them on the
/// stream) and link states (`ServerHandle::link_changes`), but not what its store holds:
/// that a peer's acknowledgement emptied the outbox, for one, is visible only by reading
/// the store again. A bounded poll is then the only observation there is; keep it here,
/// where the interval and the deadline are the same for every test.
pub async fn poll_until<T, F, Fut>(deadline: Instant, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    loop {
        match check().await {
            Ok(done) => return done,
            Err(seen) => assert!(Instant::now() < deadline, "gave up waiting: {seen}"),
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
