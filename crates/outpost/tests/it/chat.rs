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
        Chat::start_with(user, servers, state, &[])
    }

    fn start_with(user: &str, servers: &[SocketAddr], state: &Path, flags: &[&str]) -> Chat {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
        cmd.args(["chat", "--headless", "--jid", &format!("{user}@{DOMAIN}")]);
        cmd.args(flags);
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

/// An `outpost serve` in `dir` with the accounts alice and bob.
fn server_for_alice_and_bob(dir: &Path) -> Server {
    let server = Server::start(dir, DOMAIN, "127.0.0.1:0".parse().expect("addr"), &[]);
    register(server.c2s, DOMAIN, "alice");
    register(server.c2s, DOMAIN, "bob");
    server
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
    let server = server_for_alice_and_bob(dir.path());
    // Through the server: with no direct links (their own test is below).
    let no_p2p = ["--no-p2p"];
    let mut alice = Chat::start_with("alice", &[server.c2s], dir.path(), &no_p2p);
    let mut bob = Chat::start_with("bob", &[server.c2s], dir.path(), &no_p2p);
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

    bob.stdin.write_all(b"[not json\n").expect("write");
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
fn headless_friends_on_one_machine_talk_over_a_direct_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    let server = server_for_alice_and_bob(dir.path());
    let mut alice = Chat::start("alice", &[server.c2s], &a);
    let mut bob = Chat::start("bob", &[server.c2s], &b);
    alice.event("connected", &json!({}));
    bob.event("connected", &json!({}));
    befriend(&mut alice, &mut bob);
    alice.event("path", &json!({"with": jid("bob"), "path": "direct"}));
    bob.event("path", &json!({"with": jid("alice"), "path": "direct"}));

    alice.command(&json!({"cmd": "send", "to": jid("bob"), "body": "p2p", "id": "p1"}));
    let message = bob.event("message", &json!({"from": jid("alice"), "body": "p2p"}));
    assert_eq!(message["path"], "direct");
    alice.event("delivery", &json!({"id": "p1", "state": "delivered"}));
    // Each device made its key and pinned the other's.
    for (dir, other) in [(&a, "bob"), (&b, "alice")] {
        let pins = std::fs::read_to_string(dir.join("known_peers")).expect("pins");
        assert!(pins.starts_with(&format!("{}#", jid(other))), "{pins}");
        assert!(dir.join("p2p-key.pem").exists());
    }
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

/// `outpost chat` (the terminal interface) in a tmux session of its own server.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let socket = format!("outpost-test-{}-{}", std::process::id(), line!());
        let status = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "new-session",
                "-d",
                "-x",
                "120",
                "-y",
                "30",
                "-s",
                "chat",
            ])
            .arg(command)
            .status()
            .expect("run tmux");
        assert!(status.success(), "tmux new-session failed");
        Tmux { socket }
    }

    fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "chat"])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    /// Types `text` literally, then Enter.
    fn line(&self, text: &str) {
        self.keys(&["-l", text]);
        self.keys(&["Enter"]);
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "chat"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn running(&self) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket, "has-session", "-t", "chat"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits until the screen shows `text`. The screen announces nothing, so this looks
    /// again until a deadline: the one observation a terminal offers.
    fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {text:?}; it shows:\n{screen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn the_terminal_interface_befriends_and_chats_in_tmux() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server_for_alice_and_bob(dir.path());
    let tui = Tmux::start(&format!(
        "{} chat --jid {} --server {} --state-dir {}",
        env!("CARGO_BIN_EXE_outpost"),
        jid("alice"),
        server.c2s,
        dir.path().display()
    ));
    tui.wait_for("password for alice@chat.test");
    tui.line("pw");
    tui.wait_for(&format!("on {} (home server)", server.c2s));

    let mut bob = Chat::start("bob", &[server.c2s], dir.path());
    bob.event("connected", &json!({}));
    bob.command(&json!({"cmd": "add", "jid": jid("alice")}));
    tui.wait_for("? bob@chat.test asks to be friends");
    tui.line("/add bob@chat.test");
    bob.event("subscription", &json!({"from": jid("alice")}));
    bob.command(&json!({"cmd": "add", "jid": jid("alice")}));
    tui.wait_for("● bob@chat.test");

    bob.command(&json!({"cmd": "send", "to": jid("alice"), "body": "hello from bob", "id": "b1"}));
    tui.wait_for("them: hello from bob");
    // Alice's conversation with Bob is open, so the message counts as read.
    bob.event("delivery", &json!({"id": "b1", "state": "read"}));

    tui.line("hi bob");
    bob.event("message", &json!({"from": jid("alice"), "body": "hi bob"}));
    tui.wait_for("me: hi bob  [delivered]");
    // They are on one machine: the conversation moved to a direct link.
    tui.wait_for("bob@chat.test — direct");
    // The history fetched when the conversation opened repeats nothing shown.
    assert_eq!(
        tui.screen().matches("hello from bob").count(),
        1,
        "{}",
        tui.screen()
    );

    talk_in_a_room(&tui, &mut bob);
    tui.keys(&["Escape"]);
    let deadline = Instant::now() + WAIT;
    while tui.running() {
        assert!(
            Instant::now() < deadline,
            "outpost chat did not quit:\n{}",
            tui.screen()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Alice enters a room from the terminal, Bob from a script; they talk there. The
/// screen is kept as the test's artefact: what the user saw.
fn talk_in_a_room(tui: &Tmux, bob: &mut Chat) {
    let room = format!("lobby@conference.{DOMAIN}");
    tui.line(&format!("/join {room}"));
    tui.wait_for(&format!("# {room}"));
    bob.command(&json!({"cmd": "join", "room": room}));
    bob.event("joined", &json!({"room": room}));
    bob.command(&json!({"cmd": "say", "room": room, "body": "hi room"}));
    tui.keys(&["Down"]);
    tui.wait_for("bob: hi room");
    tui.line("hello all");
    bob.event(
        "groupchat",
        &json!({"room": room, "from": "alice", "body": "hello all"}),
    );
    tui.wait_for("me: hello all  [delivered]");
    // A line longer than the input box: its end stays in view while typing, and all of it
    // is sent.
    let long = format!("{}the end", "word ".repeat(30));
    tui.keys(&["-l", &long]);
    tui.wait_for("word the end");
    tui.keys(&["Enter"]);
    bob.event(
        "groupchat",
        &json!({"room": room, "from": "alice", "body": long}),
    );
    let screen = tui.screen();
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("outpost-chat-tui.txt"),
        &screen,
    )
    .expect("keep the screen");
    println!("{screen}");
}
