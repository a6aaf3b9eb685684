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
    /// Received files go under the state directory, not the user's ~/Downloads.
    fn start(user: &str, servers: &[SocketAddr], state: &Path) -> Chat {
        let downloads = state.join(format!("{user}-downloads"));
        let downloads = downloads.to_str().expect("a UTF-8 path");
        Chat::start_with(user, servers, state, &["--downloads", downloads])
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

    /// Sends the process a signal (`STOP`, `CONT`).
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn command(&mut self, command: &Value) {
        writeln!(self.stdin, "{command}").expect("write command");
    }

    /// The first event `pred` accepts, among those passed over before or the next ones;
    /// the others are kept in `seen`.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_within(WAIT, what, pred)
    }

    fn wait_within(
        &mut self,
        wait: std::time::Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(at) = self.seen.iter().position(&pred) {
            return self.seen.remove(at);
        }
        let deadline = Instant::now() + wait;
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
    let downloads = dir.path().join("downloads");
    let no_p2p = ["--no-p2p", "--downloads", downloads.to_str().expect("path")];
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
    alice.event("delivery", &json!({"id": id, "state": "delivered"}));
    // The server's acknowledgement comes before, unless Bob's receipt overtook it while
    // the server was committing (then `queued` is old news and the client never shows it,
    // before or after).
    let states: Vec<&Value> = (alice.seen.iter())
        .filter(|e| e["event"] == "delivery" && e["id"] == id.as_str())
        .map(|e| &e["state"])
        .collect();
    assert!(states.iter().all(|s| *s == "queued"), "{states:?}");

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
        "{} chat --jid {} --server {} --state-dir {} --downloads {}",
        env!("CARGO_BIN_EXE_outpost"),
        jid("alice"),
        server.c2s,
        dir.path().display(),
        dir.path().join("alice-downloads").display()
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

    send_a_file(&tui, &mut bob, dir.path());
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

/// Alice sends Bob a file from the terminal; its bar reaches 100 %.
fn send_a_file(tui: &Tmux, bob: &mut Chat, dir: &Path) {
    let file = dir.join("notes.txt");
    std::fs::write(&file, "minutes of the meeting\n".repeat(50_000)).expect("write");
    tui.line(&format!("/send {}", file.display()));
    tui.wait_for("notes.txt  [████████████████████] 100 % done direct");
    let got = bob.event(
        "transfer",
        &json!({"name": "notes.txt", "state": "complete"}),
    );
    let kept = std::fs::read(got["file"].as_str().expect("kept")).expect("read");
    assert_eq!(kept, std::fs::read(&file).expect("read"));
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

/// A file of `size` bytes that are not all alike.
fn make_file(path: &Path, size: usize) {
    let mut block = vec![0u8; 1 << 20];
    let mut x: u32 = 0x9e37_79b9;
    for b in block.iter_mut() {
        // xorshift: cheap bytes that differ from block to block below.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x.to_le_bytes()[0];
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut left = size;
    let mut n = 0u8;
    while left > 0 {
        let chunk = left.min(block.len());
        block[0] = n;
        n = n.wrapping_add(1);
        out.write_all(&block[..chunk]).expect("write");
        left -= chunk;
    }
    out.flush().expect("flush");
}

const FILE_SIZE: usize = 100 << 20;

impl Chat {
    /// Waits for the transfer of `name` to complete, checking that its progress reached
    /// the whole size, and that it took `path`; returns the last event.
    fn transfer_complete(&mut self, name: &str, path: &str) -> Value {
        // 100 MB hashed twice and moved, in a debug build beside the other tests.
        let wait = WAIT * 4;
        let done = self.wait_within(wait, &format!("{name} complete"), |e| {
            e["event"] == "transfer" && e["name"] == name && e["state"] == "complete"
        });
        assert_eq!(done["path"], path, "{done}");
        assert_eq!(done["done"], done["size"], "{done}");
        assert_eq!(done["size"], FILE_SIZE, "{done}");
        done
    }
}

/// The same bytes, in both files.
fn same_file(a: &Path, b: &Path) {
    let (x, y) = (
        std::fs::read(a).expect("read"),
        std::fs::read(b).expect("read"),
    );
    assert!(
        x.len() == y.len() && x == y,
        "{} differs from {}",
        b.display(),
        a.display()
    );
}

/// Alice and Bob, friends with direct links on one machine, received files kept apart.
struct FilePeers {
    dir: tempfile::TempDir,
    server: Server,
    alice_dir: std::path::PathBuf,
    bob_dir: std::path::PathBuf,
    source: std::path::PathBuf,
}

impl FilePeers {
    fn flags(dir: &Path) -> [String; 2] {
        let files = dir.join("files");
        ["--downloads".to_owned(), files.display().to_string()]
    }

    fn start(&self, who: &str, extra: &[&str]) -> Chat {
        let dir = if who == "alice" {
            &self.alice_dir
        } else {
            &self.bob_dir
        };
        let flags = FilePeers::flags(dir);
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        Chat::start_with(who, &[self.server.c2s], dir, &args)
    }

    /// A copy of the 100 MB file under `name`, to send.
    fn copy(&self, name: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::copy(&self.source, &path).expect("copy");
        path
    }
}

#[test]
fn a_100_mb_file_goes_directly_through_the_proxy_and_by_upload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server_for_alice_and_bob(dir.path());
    let source = dir.path().join("big.bin");
    make_file(&source, FILE_SIZE);
    let peers = FilePeers {
        alice_dir: dir.path().join("alice"),
        bob_dir: dir.path().join("bob"),
        dir,
        server,
        source,
    };
    let mut alice = peers.start("alice", &[]);
    let mut bob = peers.start("bob", &[]);
    alice.event("connected", &json!({}));
    bob.event("connected", &json!({}));
    befriend(&mut alice, &mut bob);
    alice.event("path", &json!({"with": jid("bob"), "path": "direct"}));

    let alice = directly_with_a_resume(&peers, alice, &mut bob);
    let mut alice = through_the_proxy(&peers, alice, &mut bob);

    // To Bob while he is away: by HTTP upload, fetched when he is back.
    bob.command(&json!({"cmd": "quit"}));
    bob.child.wait().expect("reap");
    alice.event("presence", &json!({"from": jid("bob"), "available": false}));
    let uploaded = peers.copy("uploaded.bin");
    alice.command(&json!({"cmd": "sendfile", "to": jid("bob"), "path": uploaded}));
    alice.transfer_complete("uploaded.bin", "upload");
    let mut bob = peers.start("bob", &[]);
    let got = bob.transfer_complete("uploaded.bin", "upload");
    same_file(
        &peers.source,
        Path::new(got["file"].as_str().expect("where it was kept")),
    );
}

/// Directly between the two devices; Alice's client is killed on the way, and the file
/// offered again goes on from where it broke. Returns Alice's new client.
fn directly_with_a_resume(peers: &FilePeers, mut alice: Chat, bob: &mut Chat) -> Chat {
    let send = json!({"cmd": "sendfile", "to": jid("bob"), "path": peers.copy("direct.bin")});
    alice.command(&send);
    let moving = bob.wait_for("the file moving", |e| {
        e["event"] == "transfer" && e["state"] == "receiving" && e["done"].as_u64() > Some(0)
    });
    // Bob's client is stopped first, so the rest cannot arrive before Alice's dies.
    bob.signal("STOP");
    alice.child.kill().expect("kill alice");
    alice.child.wait().expect("reap");
    bob.signal("CONT");
    bob.event(
        "transfer",
        &json!({"name": "direct.bin", "state": "failed"}),
    );
    let mut alice = peers.start("alice", &[]);
    alice.event("path", &json!({"with": jid("bob"), "path": "direct"}));
    alice.command(&send);
    let resumed = bob.wait_for("the transfer again", |e| {
        e["event"] == "transfer" && e["state"] == "receiving" && e["id"] != moving["id"]
    });
    assert!(
        resumed["done"].as_u64() >= moving["done"].as_u64(),
        "{resumed} after {moving}"
    );
    let got = bob.transfer_complete("direct.bin", "direct");
    alice.transfer_complete("direct.bin", "direct");
    same_file(
        &peers.source,
        Path::new(got["file"].as_str().expect("where it was kept")),
    );
    alice
}

/// From a client without direct links: through the site's proxy. Returns that client.
fn through_the_proxy(peers: &FilePeers, mut alice: Chat, bob: &mut Chat) -> Chat {
    alice.command(&json!({"cmd": "quit"}));
    alice.child.wait().expect("reap");
    let mut alice = peers.start("alice", &["--no-p2p"]);
    alice.event("presence", &json!({"from": jid("bob"), "available": true}));
    let proxied = peers.copy("proxied.bin");
    alice.command(&json!({"cmd": "sendfile", "to": jid("bob"), "path": proxied}));
    let got = bob.transfer_complete("proxied.bin", "proxy");
    alice.transfer_complete("proxied.bin", "proxy");
    same_file(
        &peers.source,
        Path::new(got["file"].as_str().expect("where it was kept")),
    );
    alice
}
