//! `outpost admin replication` against two real `outpost serve` processes: the site
//! a.test replicating to the hub h.test. Both sides show the same position once alice's
//! account has gone over; after a.test is killed with SIGKILL alice logs in at the hub
//! with the same password, and the hub shows that it stands in for a.test with her session.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::common::{Server, WAIT, login, register};
use serde_json::Value;

/// Runs `outpost admin <what>` for `domain`'s configuration in `dir`.
pub(crate) fn admin(dir: &Path, domain: &str, what: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("OUTPOST_")) {
            cmd.env_remove(name);
        }
    }
    cmd.arg("admin")
        .args(what)
        .arg("--config")
        .arg(dir.join(format!("{domain}.toml")));
    let out = cmd.output().expect("run outpost admin");
    assert!(
        out.status.success(),
        "admin {what:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

pub(crate) fn replication_json(dir: &Path, domain: &str) -> Value {
    serde_json::from_str(&admin(dir, domain, &["replication", "--json"])).expect("JSON")
}

/// Polls `admin replication --json` on `domain` until `done`; returns that answer.
pub(crate) fn wait_for(
    dir: &Path,
    domain: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = replication_json(dir, domain);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "never {what}; last: {v}");
        // Polling interval, not synchronisation.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A loopback port nothing listens on now, for a server that must be named before it runs.
pub(crate) fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

#[test]
fn both_ends_show_replication_and_the_hub_its_standby_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let hub_s2s = free_port();
    let mut a = Server::start_configured(
        dir.path(),
        "a.test",
        any,
        &[("h.test", hub_s2s)],
        "info",
        "",
        "hub = \"h.test\"",
    );
    let hub = Server::start_configured(
        dir.path(),
        "h.test",
        hub_s2s,
        &[("a.test", a.s2s)],
        "info",
        "role = \"hub\"",
        "relay_for = [\"a.test\"]",
    );
    register(a.c2s, "a.test", "alice");

    let site = wait_for(dir.path(), "a.test", "caught up", |v| {
        v["position"].as_i64() > Some(0) && v["lag"] == 0 && v["error"].is_null()
    });
    assert_eq!(site["role"], "site");
    assert_eq!(site["hub"], "h.test");
    assert!(site["running"].as_bool().unwrap(), "{site}");
    assert!(site["last_sync"].is_string(), "{site}");
    let text = admin(dir.path(), "a.test", &["replication"]);
    assert!(
        text.contains("replicating to h.test") && text.contains("in step"),
        "{text}"
    );

    let at_hub = wait_for(dir.path(), "h.test", "holding a.test", |v| {
        v["sites"][0]["position"] == site["position"]
    });
    let replica = &at_hub["sites"][0];
    assert_eq!(replica["domain"], "a.test");
    assert!(replica["records"].as_i64() >= Some(1), "{replica}");
    assert_eq!(replica["snapshots"], 1);
    assert_eq!(
        (&replica["conflicts"], &replica["unmerged"]),
        (&0.into(), &0.into())
    );
    assert_eq!(replica["standby"], false);

    // The site dies: alice logs in at the hub with her password.
    a.kill();
    let mut alice = login(hub.c2s, "a.test", "alice");
    let answers = alice.barrier();
    assert!(
        answers.iter().all(|el| el.attr("type") != Some("error")),
        "{answers:?}"
    );
    let at_hub = replication_json(dir.path(), "h.test");
    assert_eq!(at_hub["sites"][0]["standby"], true, "{at_hub}");
    assert_eq!(at_hub["sites"][0]["standby_sessions"], 1, "{at_hub}");
    let text = admin(dir.path(), "h.test", &["replication"]);
    assert!(text.contains("yes, 1 sessions here"), "{text}");
    let status = admin(dir.path(), "h.test", &["status"]);
    assert!(
        status.contains("standing in for a.test: 1 sessions here"),
        "{status}"
    );
    drop(hub);
}
