//! Two or more real `outpost serve` processes with federation, shared by the binary's
//! multi-server tests, and the client steps they take with
//! [`outpost_testkit::blocking::Client`].

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outpost_proto::minidom::Element;
use outpost_testkit::blocking::Client;
use outpost_testkit::body;

/// How long a step may take: servers here are processes that start, stop and reconnect.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// Every account in these tests has this password, and every session this resource.
const PASSWORD: &str = "pw";
const RESOURCE: &str = "r";

/// One `outpost serve` process serving one domain, with federation on.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) c2s: SocketAddr,
    pub(crate) s2s: SocketAddr,
    pub(crate) log: PathBuf,
}

impl Server {
    /// Starts `domain` in `dir` with its s2s listener on `s2s` (port 0: picked by the OS)
    /// and the given `federation.peers`. Restarting on a fixed port may briefly fail while
    /// the kernel still holds it, so a start that exits before listening is retried.
    pub(crate) fn start(
        dir: &Path,
        domain: &str,
        s2s: SocketAddr,
        peers: &[(&str, SocketAddr)],
    ) -> Server {
        Server::start_logging(dir, domain, s2s, peers, "info")
    }

    /// `start` with `log.level` set to `level` (the log goes to `<dir>/<domain>.log`).
    pub(crate) fn start_logging(
        dir: &Path,
        domain: &str,
        s2s: SocketAddr,
        peers: &[(&str, SocketAddr)],
        level: &str,
    ) -> Server {
        Server::start_configured(dir, domain, s2s, peers, level, "", "")
    }

    /// `start_logging` with more configuration: `top` lines at the top level (such as
    /// `role`), `federation` lines in `[federation]`.
    pub(crate) fn start_configured(
        dir: &Path,
        domain: &str,
        s2s: SocketAddr,
        peers: &[(&str, SocketAddr)],
        level: &str,
        top: &str,
        federation: &str,
    ) -> Server {
        let config = dir.join(format!("{domain}.toml"));
        let mut toml = format!(
            "{top}\ndomains = [{domain:?}]\ndata_dir = {:?}\n\
             [listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_tls = []\ns2s = [\"{s2s}\"]\nproxy65 = [\"127.0.0.1:0\"]\nhttps = [\"127.0.0.1:0\"]\nhttp = []\n\
             [registration]\nenabled = true\n\
             [auth]\nallow_plaintext_without_tls = true\nscram_iterations = 4096\n\
             [log]\nlevel = {level:?}\n\
             [federation]\nenabled = true\nrequire_tls = true\nretry_initial_secs = 1\n\
             retry_max_secs = 1\nprobe_interval_secs = 1\n\
             srv_lookup = false\ndns_server = \"{}\"\n{federation}\n\
             [federation.peers]\n",
            dir.join(format!("{domain}-data")),
            outpost_testkit::dns::nxdomain_server(),
        );
        for (peer, addr) in peers {
            toml.push_str(&format!("{peer:?} = \"{addr}\"\n"));
        }
        std::fs::write(&config, toml).expect("write config");
        let log = dir.join(format!("{domain}.log"));
        Self::spawn(&config, log, domain, true)
    }

    /// Writes `toml` as `<name>.toml` in `dir` and runs `outpost serve` on it (such as a
    /// cluster node); without `federation`, `s2s` is unspecified.
    pub(crate) fn start_toml(dir: &Path, name: &str, toml: &str, federation: bool) -> Server {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).expect("write config");
        Self::spawn(&config, dir.join(format!("{name}.log")), name, federation)
    }

    /// Starts `outpost serve --config config` (again, if a port it wants is still held)
    /// until it says where it listens.
    fn spawn(config: &Path, log: PathBuf, name: &str, federation: bool) -> Server {
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
                .arg(config)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(stderr)
                .spawn()
                .expect("start outpost");
            let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
            let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
            let (mut c2s, mut s2s) = (None, (!federation).then_some(unspecified));
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
                "{name} did not start ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            // Back-off before binding the same port again, not synchronisation.
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the process to exit.
    pub(crate) fn terminate(&mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let exit = self.child.wait().expect("reap");
        assert!(exit.success(), "outpost exited with {exit}");
    }

    pub(crate) fn kill(&mut self) {
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

/// Registers `user` on the server at `addr` (XEP-0077), over plaintext.
pub(crate) fn register(addr: SocketAddr, domain: &str, user: &str) {
    Client::register(addr, domain, user, PASSWORD, WAIT);
}

/// Logs `user` in at `addr` over plaintext and binds the resource `r`.
pub(crate) fn login(addr: SocketAddr, domain: &str, user: &str) -> Client {
    Client::login(addr, domain, user, PASSWORD, RESOURCE, WAIT)
}

/// The numbers of the `message N` bodies among `stanzas`, in order.
pub(crate) fn bodies(stanzas: &[Element]) -> Vec<usize> {
    stanzas
        .iter()
        .filter(|el| el.name() == "message")
        .filter_map(|el| body(el)?.strip_prefix("message ")?.parse().ok())
        .collect()
}

/// Whether `el` is a message whose body is `text`.
pub(crate) fn has_body(el: &Element, text: &str) -> bool {
    el.name() == "message" && body(el).as_deref() == Some(text)
}

/// Whether any of `stanzas` is an error reply.
pub(crate) fn any_error(stanzas: &[Element]) -> bool {
    stanzas.iter().any(|el| el.attr("type") == Some("error"))
}
