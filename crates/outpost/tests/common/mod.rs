//! Two or more real `outpost serve` processes with federation, and a minimal plaintext
//! XMPP client, shared by the binary's multi-server tests.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
pub const WAIT: Duration = Duration::from_secs(30);

/// A DNS server on loopback that answers every question with NXDOMAIN, shared by the
/// servers of this test process. Peers are named in `federation.peers` and SRV lookups are
/// off; should a server still look a name up, it asks this one, never a real DNS server.
fn loopback_dns() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind DNS");
        let addr = socket.local_addr().expect("DNS address");
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                if let Some(reply) = nxdomain(&buf[..n]) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        addr
    })
}

/// The NXDOMAIN answer to a query (RFC 1035 §4.1): its header with QR, RA and RCODE 3 and
/// only its first question.
fn nxdomain(query: &[u8]) -> Option<Vec<u8>> {
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + usize::from(query[end]);
    }
    end += 1 + 4; // the root label, QTYPE and QCLASS
    let mut reply = query.get(..end)?.to_vec();
    reply[2] = 0x80 | (reply[2] & 0x79); // QR; keep OPCODE and RD
    reply[3] = 0x83; // RA, NXDOMAIN
    reply[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    Some(reply)
}

/// One `outpost serve` process serving one domain, with federation on.
pub struct Server {
    pub child: Child,
    pub c2s: SocketAddr,
    pub s2s: SocketAddr,
    pub log: PathBuf,
}

impl Server {
    /// Starts `domain` in `dir` with its s2s listener on `s2s` (port 0: picked by the OS)
    /// and the given `federation.peers`. Restarting on a fixed port may briefly fail while
    /// the kernel still holds it, so a start that exits before listening is retried.
    pub fn start(
        dir: &Path,
        domain: &str,
        s2s: SocketAddr,
        peers: &[(&str, SocketAddr)],
    ) -> Server {
        Server::start_logging(dir, domain, s2s, peers, "info")
    }

    /// `start` with `log.level` set to `level` (the log goes to `<dir>/<domain>.log`).
    pub fn start_logging(
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
             retry_max_secs = 1\nprobe_interval_secs = 1\n\
             srv_lookup = false\ndns_server = \"{}\"\n\
             [federation.peers]\n",
            dir.join(format!("{domain}-data")),
            loopback_dns(),
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let exit = self.child.wait().expect("reap");
        assert!(exit.success(), "outpost exited with {exit}");
    }

    pub fn kill(&mut self) {
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

pub struct Client {
    pub stream: TcpStream,
    pub seen: String,
    pub domain: String,
}

impl Client {
    pub fn connect(addr: SocketAddr, domain: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        Client {
            stream,
            seen: String::new(),
            domain: domain.to_owned(),
        }
    }

    pub fn header(&mut self) {
        let header = format!(
            "<?xml version='1.0'?><stream:stream to='{}' version='1.0' \
             xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
            self.domain
        );
        self.send(&header);
        self.wait_for("</stream:features>");
    }

    pub fn send(&mut self, xml: &str) {
        self.stream.write_all(xml.as_bytes()).expect("write");
    }

    /// Reads until `needle` has been seen after everything consumed so far, and consumes
    /// through it.
    pub fn wait_for(&mut self, needle: &str) -> String {
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

    pub fn register(addr: SocketAddr, domain: &str, user: &str) {
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

    pub fn login(addr: SocketAddr, domain: &str, user: &str) -> Client {
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
    pub fn barrier(&mut self, id: &str) -> String {
        self.send(&format!(
            "<iq type='get' id='{id}' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
            self.domain
        ));
        self.wait_for(&format!("id='{id}'"))
    }
}
