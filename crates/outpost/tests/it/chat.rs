//! `outpost chat --headless`: the JSON-lines contract scripts rely on, driven as a
//! process against `outpost serve` processes: befriending, chatting with delivery states,
//! a line that is no command, and moving to the next server when the first is killed.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use serde_json::{Value, json};

use crate::common::{Server, WAIT, register};

const DOMAIN: &str = "chat.test";

/// One `outpost chat --headless` process.
struct Chat {
    child: Child,
    stdin: ChildStdin,
    events: Receiver<Value>,
    seen: Vec<Value>,
}

impl Chat {
    fn start(user: &str, servers: &[SocketAddr], state: &Path) -> Chat {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
        cmd.args(["chat", "--headless", "--jid", &format!("{user}@{DOMAIN}")]);
        for server in servers {
            cmd.arg("--server").arg(server.to_string());
        }
        let mut child = cmd
            .arg("--state-dir")
            .arg(state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start outpost chat");
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "pw").expect("password");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        Chat {
            child,
            stdin,
            events,
            seen: Vec::new(),
        }
    }

    fn command(&mut self, command: &Value) {
        writeln!(self.stdin, "{command}").expect("write command");
    }

    /// The first event `pred` accepts, among those passed over before or the next ones;
    /// the others are kept in `seen`.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(at) = self.seen.iter().position(&pred) {
            return self.seen.remove(at);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) if pred(&event) => return event,
                Ok(event) => self.seen.push(event),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!("no {what}; saw {:#?}", self.seen)
                }
            }
        }
    }

    fn event(&mut self, kind: &str, fields: &Value) -> Value {
        self.wait_for(&format!("{kind} {fields}"), |e| {
            e["event"] == kind
                && fields
                    .as_object()
                    .is_some_and(|f| f.iter().all(|(k, v)| &e[k] == v))
        })
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn jid(user: &str) -> String {
    format!("{user}@{DOMAIN}")
}

/// Alice asks, Bob approves and asks back, Alice approves: both see each other online.
fn befriend(alice: &mut Chat, bob: &mut Chat) {
    alice.command(&json!({"cmd": "add", "jid": jid("bob")}));
    bob.event("subscription", &json!({"from": jid("alice")}));
    bob.command(&json!({"cmd": "add", "jid": jid("alice")}));
    alice.event("subscription", &json!({"from": jid("bob")}));
    alice.command(&json!({"cmd": "add", "jid": jid("bob")}));
    alice.event("presence", &json!({"from": jid("bob"), "available": true}));
    bob.event(
        "presence",
        &json!({"from": jid("alice"), "available": true}),
    );
}

#[test]
fn headless_clients_befriend_and_chat_with_delivery_states() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path(),
        DOMAIN,
        "127.0.0.1:0".parse().expect("addr"),
        &[],
    );
    register(server.c2s, DOMAIN, "alice");
    register(server.c2s, DOMAIN, "bob");
    let mut alice = Chat::start("alice", &[server.c2s], dir.path());
    let mut bob = Chat::start("bob", &[server.c2s], dir.path());
    let connected = alice.event("connected", &json!({}));
    assert_eq!(connected["server"], server.c2s.to_string());
    bob.event("connected", &json!({}));

    befriend(&mut alice, &mut bob);

    alice.command(&json!({"cmd": "send", "to": jid("bob"), "body": "hi \"bob\" \u{1F600}"}));
    let path = alice.event("path", &json!({"with": jid("bob")}));
    assert_eq!(path["path"], "server");
    let message = bob.event("message", &json!({"from": jid("alice")}));
    assert_eq!(message["body"], "hi \"bob\" \u{1F600}");
    assert_eq!(message["path"], "server");
    let id = message["id"].as_str().expect("an id").to_owned();
    alice.event("delivery", &json!({"id": id, "state": "queued"}));
    alice.event("delivery", &json!({"id": id, "state": "delivered"}));

    bob.stdin.write_all(b"{not json\n").expect("write");
    let error = bob.event("error", &json!({}));
    assert!(
        error["text"]
            .as_str()
            .is_some_and(|t| t.contains("not a command")),
        "{error}"
    );
    // The roster as it is now, not as it was pushed during the exchange.
    bob.seen.retain(|e| e["event"] != "roster");
    bob.command(&json!({"cmd": "roster"}));
    let roster = bob.event("roster", &json!({}));
    assert_eq!(roster["items"][0]["jid"], jid("alice"));

    alice.command(&json!({"cmd": "quit"}));
    let status = alice.child.wait().expect("reap");
    assert!(status.success(), "outpost chat exited with {status}");
}

#[test]
fn a_headless_client_moves_to_the_next_server_when_its_own_is_killed() {
    let home_dir = tempfile::tempdir().expect("tempdir");
    let hub_dir = tempfile::tempdir().expect("tempdir");
    let any = "127.0.0.1:0".parse().expect("addr");
    let mut home = Server::start(home_dir.path(), DOMAIN, any, &[]);
    let hub = Server::start(hub_dir.path(), DOMAIN, any, &[]);
    for server in [&home, &hub] {
        register(server.c2s, DOMAIN, "alice");
        register(server.c2s, DOMAIN, "bob");
    }
    let mut alice = Chat::start("alice", &[home.c2s, hub.c2s], home_dir.path());
    alice.event(
        "connected",
        &json!({"server": home.c2s.to_string(), "why": "home"}),
    );

    home.kill();
    alice.event("disconnected", &json!({"server": home.c2s.to_string()}));
    alice.event(
        "connected",
        &json!({"server": hub.c2s.to_string(), "why": "failover"}),
    );
    let mut bob = Chat::start("bob", &[hub.c2s], hub_dir.path());
    bob.event("connected", &json!({}));
    bob.command(&json!({"cmd": "send", "to": jid("alice"), "body": "over the hub"}));
    alice.event(
        "message",
        &json!({"from": jid("bob"), "body": "over the hub"}),
    );
}
