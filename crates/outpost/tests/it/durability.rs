//! Durability of accepted messages across `kill -9`: messages are acknowledged (a ping
//! answered after them proves the server has handled them), the server is killed with
//! SIGKILL, restarted on the same data directory, and the recipient gets every message: an
//! offline recipient from the offline store, exactly once and in order; an online recipient
//! whose client had stopped reading from the offline store (what overflowed its session)
//! and the archive (what was still in the server's memory for it).

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use std::collections::BTreeSet;

use outpost_testkit::{NS_DELAY, NS_RSM, body};

use super::common::{any_error, bodies, has_body, login, register};

/// Starts `outpost serve` on a loopback port picked by the OS and returns it with the
/// STARTTLS listener's address (plaintext authentication is allowed in this config, so the
/// test client needs no TLS).
fn serve(dir: &Path) -> (Child, SocketAddr) {
    let config = dir.join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_tls = []\nproxy65 = [\"127.0.0.1:0\"]\nhttps = [\"127.0.0.1:0\"]\n\
             [registration]\nenabled = true\n[auth]\nallow_plaintext_without_tls = true\n\
             scram_iterations = 4096\n",
            dir.join("data")
        ),
    )
    .expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("OUTPOST_")) {
            cmd.env_remove(name);
        }
    }
    let mut child = cmd
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start outpost");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("listening line");
    let addr = line
        .trim()
        .strip_prefix("listening c2s-starttls ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("address");
    (child, addr)
}

#[test]
fn messages_accepted_before_kill_9_are_delivered_once_in_order_after_restart() {
    const COUNT: usize = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addr) = serve(dir.path());

    // Bob exists but is offline.
    register(addr, "localhost", "bob");
    drop(login(addr, "localhost", "bob"));
    register(addr, "localhost", "alice");
    let mut alice = login(addr, "localhost", "alice");
    for i in 0..COUNT {
        alice.send(&format!(
            "<message to='bob@localhost' type='chat' id='m{i}'><body>message {i}</body></message>"
        ));
    }
    // The session handles stanzas in order: once the ping is answered, every message before
    // it has been accepted, which for an offline user means committed.
    let before = alice.barrier();
    assert!(!any_error(&before), "a message was refused: {before:?}");

    server.kill().expect("kill -9");
    server.wait().expect("reap");

    let (mut server, addr) = serve(dir.path());
    let mut bob = login(addr, "localhost", "bob");
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
            .all(|el| el.has_child("delay", NS_DELAY)),
        "offline messages carry a delay stamp: {got:?}"
    );

    // Delivered means gone: a second login gets nothing more.
    bob.send("<presence type='unavailable'/></stream:stream>");
    drop(bob);
    let mut again = login(addr, "localhost", "bob");
    again.send("<presence/>");
    let tail = again.barrier();
    assert!(
        tail.iter().all(|el| body(el).is_none()),
        "redelivered after a completed delivery: {tail:?}"
    );

    server.kill().expect("kill");
    server.wait().expect("reap");
}

/// What the issue measured from outside before the archive made acceptance durable: bob is
/// online but his client has stopped reading; alice sends 3,000 messages, a ping answered
/// after every 50; the server is killed and restarted; bob logs in again. Every message
/// must come back to him, from the offline store or from his archive.
#[test]
fn messages_for_a_client_that_stopped_reading_survive_kill_9() {
    const COUNT: usize = 3000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addr) = serve(dir.path());
    register(addr, "localhost", "bob");
    register(addr, "localhost", "alice");
    let mut bob = login(addr, "localhost", "bob");
    bob.send("<presence/>");
    bob.barrier();
    // From here on bob reads nothing: his socket's buffers fill and his session holds the
    // rest in memory.
    let mut alice = login(addr, "localhost", "alice");
    for chunk in 0..COUNT / 50 {
        for i in chunk * 50..(chunk + 1) * 50 {
            alice.send(&format!(
                "<message to='bob@localhost' type='chat' id='m{i}'><body>message {i}</body></message>"
            ));
        }
        let before = alice.barrier();
        assert!(!any_error(&before), "a message was refused: {before:?}");
    }
    server.kill().expect("kill -9");
    server.wait().expect("reap");
    drop(bob);

    let (mut server, addr) = serve(dir.path());
    let mut bob = login(addr, "localhost", "bob");
    bob.send("<presence/>");
    let offline = bodies(&bob.barrier());
    let mut archived = Vec::new();
    let mut after = String::new();
    loop {
        let (page, fin) = bob.run(async |c| {
            c.mam(
                None,
                &format!("<set xmlns='{NS_RSM}'><max>250</max>{after}</set>"),
            )
            .await
        });
        archived.extend(bodies(
            &page.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
        ));
        let fin = fin.get_child("fin", "urn:xmpp:mam:2").expect("fin").clone();
        if fin.attr("complete") == Some("true") {
            break;
        }
        let last = fin
            .get_child("set", NS_RSM)
            .and_then(|s| s.get_child("last", NS_RSM))
            .expect("last")
            .text();
        after = format!("<after>{last}</after>");
    }
    assert_eq!(
        archived,
        (0..COUNT).collect::<Vec<_>>(),
        "the archive has all, in order"
    );
    let got: BTreeSet<usize> = offline.iter().chain(&archived).copied().collect();
    assert_eq!(got.len(), COUNT, "every accepted message came back");
    eprintln!(
        "{} of {COUNT} came back from the offline store, all {} from the archive",
        offline.len(),
        archived.len()
    );
    server.kill().expect("kill");
    server.wait().expect("reap");
}
