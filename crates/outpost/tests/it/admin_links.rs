//! `outpost admin links` against two real `outpost serve` processes, `a.test` and
//! `b.test`: while `b.test` is down, messages alice@a.test sends to bob@b.test wait in
//! `a.test`'s outbox and the command shows them queued on a link that is not up, with the
//! age of the oldest and why the last attempt failed; the failure is logged once, not on
//! every retry. With `a.test` killed it still reports the queue, from the store. Once both
//! run again the queue drains and the command shows the link up with a last delivery.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::common::{Server, WAIT, any_error, has_body, login, register};
use serde_json::Value;

/// Runs `outpost admin links` for `domain`'s configuration in `dir`.
fn admin_links(dir: &Path, domain: &str, json: bool) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("OUTPOST_")) {
            cmd.env_remove(name);
        }
    }
    cmd.args(["admin", "links", "--config"])
        .arg(dir.join(format!("{domain}.toml")));
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run outpost admin links");
    assert!(
        out.status.success(),
        "admin links failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The `a.test -> b.test` entry of `admin links --json`, if listed.
fn link_a_to_b(dir: &Path) -> Option<Value> {
    let text = admin_links(dir, "a.test", true);
    let all: Value = serde_json::from_str(&text).expect("JSON output");
    let list = all.as_array().expect("an array");
    list.iter()
        .find(|l| l["local"] == "a.test" && l["remote"] == "b.test")
        .cloned()
}

/// Polls `admin links --json` until the link satisfies `done`; returns that entry.
fn wait_for_link(dir: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let link = link_a_to_b(dir);
        if let Some(link) = link.as_ref().filter(|l| done(l)) {
            return link.clone();
        }
        assert!(Instant::now() < deadline, "never {what}; last: {link:?}");
        // Polling interval, not synchronisation.
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn admin_links_shows_queue_state_and_deliveries() {
    const COUNT: usize = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");

    let mut b = Server::start(dir.path(), "b.test", any, &[]);
    let b_s2s = b.s2s;
    register(b.c2s, "b.test", "bob");
    // Debug for the links, to see each retry and check that only the first is a warning.
    let level = "info,outpost_server::s2s=debug";
    let mut a = Server::start_logging(dir.path(), "a.test", any, &[("b.test", b_s2s)], level);
    let a_s2s = a.s2s;
    register(a.c2s, "a.test", "alice");
    b.kill();

    let mut alice = login(a.c2s, "a.test", "alice");
    for i in 0..COUNT {
        alice.send(&format!(
            "<message to='bob@b.test' type='chat' id='m{i}'><body>message {i}</body></message>"
        ));
    }
    let before = alice.barrier();
    assert!(!any_error(&before), "refused: {before:?}");
    drop(alice);

    // b.test is down: the link backs off with a reason, the messages wait.
    let link = wait_for_link(dir.path(), "backing off with the queue", |l| {
        l["state"] == "backoff" && l["queued"] == COUNT as u64 && l["last_error"].is_string()
    });
    assert_eq!(link["path"], "direct");
    assert!(
        link["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("direct: cannot connect")),
        "{link}"
    );
    assert!(link["oldest_queued_age_secs"].is_u64(), "{link}");
    assert!(link["oldest_queued_at"].is_string(), "{link}");
    assert!(link["since"].is_string(), "{link}");
    assert!(
        link["last_delivery_at"].is_null(),
        "nothing delivered yet: {link}"
    );

    let table = admin_links(dir.path(), "a.test", false);
    let row = table
        .lines()
        .find(|l| l.starts_with("a.test -> b.test"))
        .unwrap_or_else(|| panic!("no row for the link in:\n{table}"));
    assert!(
        row.contains("backoff") && row.contains("direct") && row.contains("never"),
        "{row}"
    );
    assert!(table.starts_with("LINK"), "{table}");

    // Retries go on, but the failure is logged as a warning once: once for the path, once
    // for the link.
    let deadline = Instant::now() + WAIT;
    while a.log_text().matches("path still failing").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no retries logged:\n{}",
            a.log_text()
        );
        // Polling interval for the log, not synchronisation.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        a.log_text().matches("link down; will retry").count(),
        1,
        "{}",
        a.log_text()
    );
    assert_eq!(
        a.log_text().matches("path failed").count(),
        1,
        "{}",
        a.log_text()
    );

    // With a.test stopped, the queue is still reported, from the store.
    a.kill();
    let link = link_a_to_b(dir.path()).expect("the link is listed while a.test is down");
    assert_eq!(link["state"], "server not running", "{link}");
    assert_eq!(link["queued"], COUNT as u64, "{link}");
    assert!(link["oldest_queued_age_secs"].is_u64(), "{link}");
    drop(a);

    let mut a = Server::start(dir.path(), "a.test", a_s2s, &[("b.test", b_s2s)]);
    drop(b);
    let b = Server::start(dir.path(), "b.test", b_s2s, &[("a.test", a_s2s)]);
    assert_eq!(b.s2s, b_s2s);

    let link = wait_for_link(dir.path(), "delivered", |l| {
        l["queued"] == 0 && l["last_delivery_at"].is_string()
    });
    assert_eq!(link["state"], "up", "{link}");
    assert!(link["oldest_queued_at"].is_null(), "{link}");
    assert!(link["last_delivery_age_secs"].is_u64(), "{link}");
    assert!(link["last_error"].is_null(), "{link}");
    let mut bob = login(b.c2s, "b.test", "bob");
    bob.send("<presence/>");
    bob.recv_until(|el| has_body(el, &format!("message {}", COUNT - 1)));

    // A clean stop removes the live state at once.
    let links_file = dir.path().join("a.test-data").join("links.json");
    assert!(links_file.exists());
    a.terminate();
    assert!(!links_file.exists(), "links.json left after a clean stop");
    let link = link_a_to_b(dir.path()).expect("listed");
    assert_eq!(link["state"], "server not running", "{link}");
    assert_eq!(link["queued"], 0, "{link}");
    assert!(link["last_delivery_at"].is_string(), "{link}");
}
