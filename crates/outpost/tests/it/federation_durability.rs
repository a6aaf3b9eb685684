//! Durability of federated messages across `kill -9`, with two real `outpost serve`
//! processes, `a.test` and `b.test`: while `b.test` is down, messages alice@a.test sends to
//! bob@b.test are acknowledged (a ping answered after them proves `a.test` has queued them
//! in its durable outbox), `a.test` is killed with SIGKILL and restarted on the same data
//! directory, `b.test` comes back, and bob receives every message exactly once, in order.
//! And the receiving side: `b.test` is killed with SIGKILL in the middle of storing a batch
//! for offline bob, restarted, and bob receives every message in order, one repeated at
//! most (the one stored but not yet recorded as seen when the process died).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::common::{Server, WAIT, any_error, bodies, has_body, login, register};

#[test]
fn federated_messages_queued_before_kill_9_are_delivered_once_in_order() {
    const COUNT: usize = 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");

    // b.test first, so that a.test can be told where it listens; then b.test learns
    // a.test's port (it dials a.test back to verify dialback keys) on its next start.
    let mut b = Server::start(dir.path(), "b.test", any, &[]);
    let b_s2s = b.s2s;
    register(b.c2s, "b.test", "bob");
    let mut a = Server::start(dir.path(), "a.test", any, &[("b.test", b_s2s)]);
    let a_s2s = a.s2s;
    register(a.c2s, "a.test", "alice");
    b.kill();

    let mut alice = login(a.c2s, "a.test", "alice");
    for i in 0..COUNT {
        alice.send(&format!(
            "<message to='bob@b.test' type='chat' id='m{i}'><body>message {i}</body></message>"
        ));
    }
    // The session handles stanzas in order: once the ping is answered, every message before
    // it has been accepted, which for another domain means committed to the outbox.
    let before = alice.barrier();
    assert!(!any_error(&before), "a message was refused: {before:?}");
    drop(alice);

    a.kill();
    drop(a);
    let a = Server::start(dir.path(), "a.test", a_s2s, &[("b.test", b_s2s)]);
    assert_eq!(a.s2s, a_s2s);
    drop(b);
    let b = Server::start(dir.path(), "b.test", b_s2s, &[("a.test", a_s2s)]);
    assert_eq!(b.s2s, b_s2s);

    let mut bob = login(b.c2s, "b.test", "bob");
    bob.send("<presence/>");
    let got = bob.recv_until(|el| has_body(el, &format!("message {}", COUNT - 1)));
    assert_eq!(
        bodies(&got),
        (0..COUNT).collect::<Vec<_>>(),
        "all, once, in order"
    );
    assert!(
        got.iter()
            .filter(|el| el.name() == "message")
            .all(|el| el.attr("from") == Some("alice@a.test/r")),
        "sender kept: {got:?}"
    );

    // A later message travels the same link in outbox order, so any redelivery of the
    // earlier ones would reach bob before it.
    let mut alice = login(a.c2s, "a.test", "alice");
    alice.send("<message to='bob@b.test' type='chat' id='last'><body>the end</body></message>");
    let after = alice.barrier();
    assert!(!any_error(&after), "refused: {after:?}");
    let tail = bob.recv_until(|el| has_body(el, "the end"));
    assert!(
        bodies(&tail).is_empty(),
        "redelivered after a completed delivery: {tail:?}"
    );
}

/// Where a stored offline message shows in a log at `sqlx::query=debug`.
const OFFLINE_INSERT: &str = "summary=\"INSERT INTO offline";

#[test]
fn receiver_killed_mid_batch_loses_nothing_and_repeats_at_most_the_last() {
    const COUNT: usize = 1000;
    let dir = tempfile::tempdir().expect("tempdir");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let level = "info,sqlx::query=debug";

    let mut a = Server::start(dir.path(), "a.test", any, &[]);
    let a_s2s = a.s2s;
    let b = Server::start_logging(dir.path(), "b.test", any, &[("a.test", a_s2s)], level);
    let b_s2s = b.s2s;
    a.kill();
    drop(a);
    let a = Server::start(dir.path(), "a.test", a_s2s, &[("b.test", b_s2s)]);
    let mut b = b;
    register(b.c2s, "b.test", "bob");
    register(a.c2s, "a.test", "alice");

    // Bob is offline: b.test commits each message to its offline store before
    // acknowledging it to a.test.
    let mut alice = login(a.c2s, "a.test", "alice");
    for i in 0..COUNT {
        alice.send(&format!(
            "<message to='bob@b.test' type='chat' id='m{i}'><body>message {i}</body></message>"
        ));
    }
    let before = alice.barrier();
    assert!(!any_error(&before), "a message was refused: {before:?}");

    // Kill b.test once it has stored a tenth of the batch.
    let deadline = Instant::now() + WAIT;
    while b.log_text().matches(OFFLINE_INSERT).count() < COUNT / 10 {
        assert!(Instant::now() < deadline, "b.test stored too few messages");
        // Polling interval for the log, not synchronisation.
        std::thread::sleep(Duration::from_millis(5));
    }
    b.kill();
    let stored = b.log_text().matches(OFFLINE_INSERT).count();
    assert!(
        // The insert in flight at the kill may have committed without being logged.
        stored + 1 < COUNT,
        "b.test stored all {COUNT} messages before the kill, so the test proved nothing"
    );
    drop(b);

    let b = Server::start(dir.path(), "b.test", b_s2s, &[("a.test", a_s2s)]);
    let mut bob = login(b.c2s, "b.test", "bob");
    bob.send("<presence/>");
    let got = bob.recv_until(|el| has_body(el, &format!("message {}", COUNT - 1)));
    let got = bodies(&got);
    // A crash between delivering a stanza and recording its id repeats that one stanza
    // (ARCHITECTURE.md): first occurrences are all, in order; a repeat only right after
    // itself, at most once.
    let mut firsts = got.clone();
    firsts.dedup();
    assert_eq!(
        firsts,
        (0..COUNT).collect::<Vec<_>>(),
        "all, in order (stored {stored} before the kill)"
    );
    assert!(
        got.len() <= COUNT + 1,
        "{} repeats (stored {stored} before the kill)",
        got.len() - COUNT
    );

    eprintln!(
        "b.test stored {stored} of {COUNT} before the kill; {} repeated",
        got.len() - COUNT
    );

    let after = alice.barrier();
    assert!(!any_error(&after), "refused: {after:?}");
    alice.send("<message to='bob@b.test' type='chat' id='last'><body>the end</body></message>");
    let tail = bob.recv_until(|el| has_body(el, "the end"));
    assert!(
        bodies(&tail).is_empty(),
        "redelivered after a completed delivery: {tail:?}"
    );
}
