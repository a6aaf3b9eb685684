//! `outpost admin links` against two real `outpost serve` processes, `a.test` and
//! `b.test`: while `b.test` is down, messages alice@a.test sends to bob@b.test wait in
//! `a.test`'s outbox and the command shows them queued on a link that is not up, with the
//! age of the oldest and why the last attempt failed; the failure is logged once, not on
//! every retry. With `a.test` killed it still reports the queue, from the store. Once both
//! run again the queue drains and the command shows the link up with a last delivery.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// One `outpost serve` process serving one domain, with federation on.
struct Server {
    child: Child,
    c2s: SocketAddr,
    s2s: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts `domain` in `dir` with its s2s listener on `s2s` (port 0: picked by the OS)
    /// and the given `federation.peers`. Restarting on a fixed port may briefly fail while
    /// the kernel still holds it, so a start that exits before listening is retried.
    fn start(dir: &Path, domain: &str, s2s: SocketAddr, peers: &[(&str, SocketAddr)]) -> Server {
        Server::start_logging(dir, domain, s2s, peers, "info")
    }

    /// `start` with `log.level` set to `level` (the log goes to `<dir>/<domain>.log`).
    fn start_logging(
        dir: &Path,
        domain: &str,
        s2s: SocketAddr,
        peers: &[(&str, SocketAddr)],
        level: &str,
    ) -> Server {
        let config = dir.join(format!("{domain}.toml"));
        let mut toml = format!(
            "domains = [{domain:?}]\ndata_dir = {:?}\n\
             [listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_tls = []\ns2s = [\"{s2s}\"]\n\
             [registration]\nenabled = true\n\
             [auth]\nallow_plaintext_without_tls = true\nscram_iterations = 4096\n\
             [log]\nlevel = {level:?}\n\
             [federation]\nenabled = true\nrequire_tls = true\nretry_initial_secs = 1\n\
             retry_max_secs = 1\nprobe_interval_secs = 1\n[federation.peers]\n",
            dir.join(format!("{domain}-data")),
        );
        for (peer, addr) in peers {
            toml.push_str(&format!("{peer:?} = \"{addr}\"\n"));
        }
        std::fs::write(&config, toml).expect("write config");
        let log = dir.join(format!("{domain}.log"));
        let deadline = Instant::now() + WAIT;
        loop {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
            for (name, _) in std::env::vars_os() {
                if name.to_str().is_some_and(|n| n.starts_with("OUTPOST_")) {
                    cmd.env_remove(name);
                }
            }
            let stderr = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("log file");
            let mut child = cmd
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(stderr)
                .spawn()
                .expect("start outpost");
            let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
            let (mut c2s, mut s2s) = (None, None);
            while c2s.is_none() || s2s.is_none() {
                let Some(Ok(line)) = lines.next() else { break };
                let addr = |kind: &str| {
                    line.strip_prefix(kind)
                        .map(|a| a.trim().parse::<SocketAddr>().expect("address"))
                };
                c2s = c2s.or_else(|| addr("listening c2s-starttls "));
                s2s = s2s.or_else(|| addr("listening s2s "));
            }
            if let (Some(c2s), Some(s2s)) = (c2s, s2s) {
                return Server {
                    child,
                    c2s,
                    s2s,
                    log,
                };
            }
            let status = child.wait().expect("reap");
            assert!(
                Instant::now() < deadline,
                "{domain} did not start ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            // Back-off before binding the same port again, not synchronisation.
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the process to exit.
    fn terminate(&mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let exit = self.child.wait().expect("reap");
        assert!(exit.success(), "outpost exited with {exit}");
    }

    fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- {} ----\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

struct Client {
    stream: TcpStream,
    seen: String,
    domain: String,
}

impl Client {
    fn connect(addr: SocketAddr, domain: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        Client {
            stream,
            seen: String::new(),
            domain: domain.to_owned(),
        }
    }

    fn header(&mut self) {
        let header = format!(
            "<?xml version='1.0'?><stream:stream to='{}' version='1.0' \
             xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
            self.domain
        );
        self.send(&header);
        self.wait_for("</stream:features>");
    }

    fn send(&mut self, xml: &str) {
        self.stream.write_all(xml.as_bytes()).expect("write");
    }

    /// Reads until `needle` has been seen after everything consumed so far, and consumes
    /// through it.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 65536];
        loop {
            if let Some(pos) = self.seen.find(needle) {
                let rest = self.seen.split_off(pos + needle.len());
                return std::mem::replace(&mut self.seen, rest);
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in {:?}",
                self.seen
            );
            let n = self.stream.read(&mut buf).expect("read");
            assert!(n > 0, "server closed the connection; saw {:?}", self.seen);
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    fn register(addr: SocketAddr, domain: &str, user: &str) {
        let mut c = Client::connect(addr, domain);
        c.header();
        c.send(&format!(
            "<iq type='set' id='reg'><query xmlns='jabber:iq:register'>\
             <username>{user}</username><password>pw</password></query></iq>"
        ));
        let reply = c.wait_for("id='reg'");
        let reply = reply + &c.wait_for(">");
        assert!(reply.contains("type='result'"), "registration: {reply}");
    }

    fn login(addr: SocketAddr, domain: &str, user: &str) -> Client {
        use base64::Engine as _;
        let mut c = Client::connect(addr, domain);
        c.header();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0pw"));
        c.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{auth}</auth>"
        ));
        c.wait_for("<success");
        c.header();
        c.send(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>r</resource></bind></iq>",
        );
        c.wait_for("id='bind'");
        c
    }

    /// Answers once the server has handled everything this client sent before.
    fn barrier(&mut self, id: &str) -> String {
        self.send(&format!(
            "<iq type='get' id='{id}' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
            self.domain
        ));
        self.wait_for(&format!("id='{id}'"))
    }
}

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
    Client::register(b.c2s, "b.test", "bob");
    // Debug for the links, to see each retry and check that only the first is a warning.
    let level = "info,outpost_server::s2s=debug";
    let mut a = Server::start_logging(dir.path(), "a.test", any, &[("b.test", b_s2s)], level);
    let a_s2s = a.s2s;
    Client::register(a.c2s, "a.test", "alice");
    b.kill();

    let mut alice = Client::login(a.c2s, "a.test", "alice");
    for i in 0..COUNT {
        alice.send(&format!(
            "<message to='bob@b.test' type='chat' id='m{i}'><body>message {i}</body></message>"
        ));
    }
    let before = alice.barrier("barrier");
    assert!(!before.contains("type='error'"), "refused: {before}");
    drop(alice);

    // b.test is down: the link backs off with a reason, the messages wait.
    let link = wait_for_link(dir.path(), "backing off with the queue", |l| {
        l["state"] == "backoff" && l["queued"] == COUNT as u64 && l["last_error"].is_string()
    });
    assert_eq!(link["path"], "direct");
    assert!(
        link["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("cannot connect")),
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

    // Retries go on (each new message wakes the link, then the timer does), but the
    // failure is logged as a warning once.
    let deadline = Instant::now() + WAIT;
    while a.log_text().matches("link still down").count() < COUNT + 2 {
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
    let mut bob = Client::login(b.c2s, "b.test", "bob");
    bob.send("<presence/>");
    bob.wait_for(&format!("message {}</body>", COUNT - 1));

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
