//! Durability of accepted messages across `kill -9`: messages sent to an offline user are
//! acknowledged (a ping answered after them proves the server has handled them), the server
//! is killed with SIGKILL, restarted on the same data directory, and the user receives every
//! message exactly once, in order.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HEADER: &str = "<?xml version='1.0'?><stream:stream to='localhost' version='1.0' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
const WAIT: Duration = Duration::from_secs(20);

/// Starts `outpost serve` on a loopback port picked by the OS and returns it with the
/// STARTTLS listener's address (plaintext authentication is allowed in this config, so the
/// test client needs no TLS).
fn serve(dir: &Path) -> (Child, SocketAddr) {
    let config = dir.join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_tls = []\n\
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

struct Client {
    stream: TcpStream,
    seen: String,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        Client {
            stream,
            seen: String::new(),
        }
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

    fn register_and_login(addr: SocketAddr, user: &str) -> Client {
        let mut c = Client::connect(addr);
        c.send(HEADER);
        c.wait_for("</stream:features>");
        c.send(&format!(
            "<iq type='set' id='reg'><query xmlns='jabber:iq:register'>\
             <username>{user}</username><password>pw</password></query></iq>"
        ));
        c.wait_for("id='reg'");
        drop(c);
        Client::login(addr, user)
    }

    fn login(addr: SocketAddr, user: &str) -> Client {
        use base64::Engine as _;
        let mut c = Client::connect(addr);
        c.send(HEADER);
        c.wait_for("</stream:features>");
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0pw"));
        c.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{auth}</auth>"
        ));
        c.wait_for("<success");
        c.send(HEADER);
        c.wait_for("</stream:features>");
        c.send(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>r</resource></bind></iq>",
        );
        c.wait_for("id='bind'");
        c
    }
}

#[test]
fn messages_accepted_before_kill_9_are_delivered_once_in_order_after_restart() {
    const COUNT: usize = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addr) = serve(dir.path());

    // Bob exists but is offline.
    drop(Client::register_and_login(addr, "bob"));
    let mut alice = Client::register_and_login(addr, "alice");
    for i in 0..COUNT {
        alice.send(&format!(
            "<message to='bob@localhost' type='chat' id='m{i}'><body>message {i}</body></message>"
        ));
    }
    // The session handles stanzas in order: once the ping is answered, every message before
    // it has been accepted, which for an offline user means committed.
    alice.send("<iq type='get' id='barrier' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    let before = alice.wait_for("id='barrier'");
    assert!(
        !before.contains("type='error'"),
        "a message was refused: {before}"
    );

    server.kill().expect("kill -9");
    server.wait().expect("reap");

    let (mut server, addr) = serve(dir.path());
    let mut bob = Client::login(addr, "bob");
    bob.send("<presence/>");
    let last = format!("message {}</body>", COUNT - 1);
    let got = bob.wait_for(&last);
    let bodies: Vec<usize> = got
        .match_indices("<body>message ")
        .filter_map(|(pos, _)| {
            let rest = &got[pos + "<body>message ".len()..];
            rest[..rest.find('<')?].parse().ok()
        })
        .collect();
    assert_eq!(
        bodies,
        (0..COUNT).collect::<Vec<_>>(),
        "all, once, in order"
    );
    assert!(
        got.contains("urn:xmpp:delay"),
        "offline messages carry a delay stamp"
    );

    // Delivered means gone: a second login gets nothing more.
    bob.send("<presence type='unavailable'/></stream:stream>");
    drop(bob);
    let mut again = Client::login(addr, "bob");
    again.send(
        "<presence/><iq type='get' id='after' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    let tail = again.wait_for("id='after'");
    assert!(
        !tail.contains("<body>"),
        "redelivered after a completed delivery: {tail}"
    );

    server.kill().expect("kill");
    server.wait().expect("reap");
}
