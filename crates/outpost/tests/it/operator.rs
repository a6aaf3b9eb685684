//! An operator's day with a real `outpost serve`: the `admin` commands over the control
//! socket, the `user` commands ending sessions from another process, reload by command and
//! by SIGHUP, backup and restore, the certificate, JSON logs, and refusals.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use outpost_testkit::blocking::Client;

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "correct horse";

/// One `outpost serve` on a config file in its own directory, without federation.
struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Child,
    c2s: SocketAddr,
    c2s_tls: SocketAddr,
}

/// The configuration of a test site: `domains`, then the usual sections, then `extra`
/// (further sections).
fn config_text(dir: &Path, domains: &[&str], extra: &str) -> String {
    format!(
        "domains = {domains:?}\ndata_dir = {:?}\n\
         [listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_tls = [\"127.0.0.1:0\"]\nproxy65 = [\"127.0.0.1:0\"]\nhttps = [\"127.0.0.1:0\"]\nhttp = []\n\
         [registration]\nenabled = true\n[auth]\nallow_plaintext_without_tls = true\n{extra}",
        dir.join("data")
    )
}

impl Site {
    fn start(extra: &str) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("outpost.toml");
        std::fs::write(&config, config_text(dir.path(), &["localhost"], extra)).expect("config");
        let (child, c2s, c2s_tls) = serve(&config, &dir.path().join("serve.log"));
        Site {
            dir,
            config,
            child,
            c2s,
            c2s_tls,
        }
    }

    fn outpost(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.outpost(args).output().expect("run outpost")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    fn register(&self, user: &str) {
        Client::register(self.c2s, "localhost", user, PASSWORD, WAIT);
    }

    fn login(&self, user: &str, resource: &str) -> Client {
        Client::login(self.c2s, "localhost", user, PASSWORD, resource, WAIT)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn stop(&mut self) {
        self.signal("TERM");
        assert!(self.child.wait().expect("reap").success());
    }

    /// Waits until the log contains `text` (the only way to see what the process did).
    fn wait_for_log(&self, text: &str) {
        self.wait_for_log_count(text, 1);
    }

    /// Waits until the log contains `text` at least `n` times. Polling: the log file is
    /// all another process shows of what it did.
    fn wait_for_log_count(&self, text: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.log().matches(text).count() < n {
            assert!(
                Instant::now() < deadline,
                "no `{text}` in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- serve log ----\n{}", self.log());
        }
    }
}

/// Starts `outpost serve --config` and waits for its `listening` lines.
fn serve(config: &Path, log: &Path) -> (Child, SocketAddr, SocketAddr) {
    use std::io::BufRead as _;
    let stderr = std::fs::File::create(log).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("serve");
    let lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut starttls = None;
    for line in lines {
        let line = line.expect("line");
        if let Some(addr) = line.strip_prefix("listening c2s-starttls ") {
            starttls = Some(addr.parse().expect("address"));
        }
        if let (Some(addr), Some(starttls)) = (line.strip_prefix("listening c2s-tls "), starttls) {
            return (child, starttls, addr.parse().expect("address"));
        }
    }
    let status = child.wait().expect("reap");
    panic!(
        "serve exited ({status}): {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn user_commands_end_the_sessions_of_a_changed_account() {
    let site = Site::start("");
    site.register("alice");
    site.register("bob");
    let mut alice = site.login("alice", "phone");
    let mut bob_pc = site.login("bob", "pc");
    let mut bob_phone = site.login("bob", "phone");

    let out = site.run(&["user", "remove", "alice@localhost"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("ended 1 session(s) of alice@localhost"));
    assert_eq!(
        alice.run(async |c| c.expect_stream_error().await),
        "not-authorized"
    );
    // Her messages bounce now, instead of reaching a session that should not exist.
    bob_pc.send("<message to='alice@localhost' type='chat' id='m1'><body>hi</body></message>");
    let error = bob_pc.run(async |c| c.recv_message().await);
    assert_eq!(error.attr("type"), Some("error"), "{error:?}");

    let mut passwd = site
        .outpost(&["user", "passwd", "bob@localhost", "--password-stdin"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("passwd");
    use std::io::Write as _;
    passwd
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"new password\n")
        .expect("write");
    let out = passwd.wait_with_output().expect("passwd");
    assert!(out.status.success(), "{}", text(&out.stderr));
    for bob in [&mut bob_pc, &mut bob_phone] {
        assert_eq!(
            bob.run(async |c| c.expect_stream_error().await),
            "not-authorized"
        );
    }
    Client::login(site.c2s, "localhost", "bob", "new password", "pc", WAIT);
}

#[test]
fn admin_commands_manage_the_running_server() {
    let mut site = Site::start("");
    site.register("alice");
    let mut alice = site.login("alice", "phone");
    alice.send("<presence/>");
    alice.barrier();

    let out = site.run(&["admin", "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = text(&out.stdout);
    assert!(status.contains("running"), "{status}");
    assert!(status.contains("sessions: 1 (1 users online)"), "{status}");
    assert!(status.contains("links: federation is off"), "{status}");

    let out = site.run(&["admin", "sessions"]);
    let sessions = text(&out.stdout);
    assert!(sessions.contains("alice@localhost/phone"), "{sessions}");
    assert!(sessions.contains("127.0.0.1:"), "{sessions}");
    assert!(sessions.contains("available (0)"), "{sessions}");

    let out = site.run(&["admin", "links"]);
    assert!(
        text(&out.stdout).starts_with("federation is off"),
        "{}",
        text(&out.stdout)
    );

    // A backup while the server runs; one to a path nobody can write fails clearly and
    // harms nothing.
    let backup = site.dir.path().join("backup.db");
    let out = site.run(&["admin", "backup", backup.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(backup.is_file());
    let out = site.run(&["admin", "backup", "/nonexistent/dir/backup.db"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot back up to /nonexistent/dir/backup.db"),
        "{}",
        text(&out.stderr)
    );
    alice.barrier();

    let out = site.run(&["admin", "kick", "alice@localhost/phone"]);
    assert!(
        text(&out.stdout).contains("disconnected 1 session"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        alice.run(async |c| c.expect_stream_error().await),
        "policy-violation"
    );

    // Restore refuses while the server runs; after a stop it brings the backup back.
    let out = site.run(&["admin", "restore", backup.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("the server is running"));
    site.register("bob");
    site.stop();
    let out = site.run(&["admin", "restore", backup.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("(1 accounts)"),
        "{}",
        text(&out.stdout)
    );
    let out = site.run(&["user", "list"]);
    assert_eq!(
        text(&out.stdout),
        "alice@localhost\n",
        "bob came after the backup"
    );
    let out = site.run(&["admin", "status"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no server is running"));
}

#[test]
fn reload_by_command_and_by_sighup_keeps_sessions() {
    let site = Site::start("");
    site.register("alice");
    let mut alice = site.login("alice", "phone");

    // A second domain, and a log level, by `admin reload`.
    let two = config_text(
        site.dir.path(),
        &["localhost", "second.test"],
        "[log]\nlevel = \"debug\"\n",
    );
    std::fs::write(&site.config, two).expect("config");
    let out = site.run(&["admin", "reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("configuration reloaded"));
    // The generated certificate did not name the new domain: it is made again.
    site.wait_for_log("does not name every served domain");
    Client::register(site.c2s, "second.test", "carol", PASSWORD, WAIT);
    alice.barrier();

    // Back to one domain by SIGHUP, the signal `systemctl reload` sends.
    std::fs::write(
        &site.config,
        config_text(site.dir.path(), &["localhost"], ""),
    )
    .expect("config");
    site.signal("HUP");
    site.wait_for_log_count("configuration reloaded", 2);
    alice.barrier();
    let mut c = Client::connect_raw(site.c2s, WAIT);
    c.send(&outpost_testkit::stream_open("second.test"));
    assert_eq!(
        c.run(async |c| c.expect_close().await).as_deref(),
        Some("host-unknown")
    );

    // A change that takes a restart is named, not half applied.
    let moved = config_text(site.dir.path(), &["localhost"], "")
        .replace("c2s = [\"127.0.0.1:0\"]", "c2s = [\"127.0.0.1:1\"]");
    std::fs::write(&site.config, moved).expect("config");
    let out = site.run(&["admin", "reload"]);
    assert!(
        text(&out.stdout).contains("not applied, take a restart: listen"),
        "{}",
        text(&out.stdout)
    );
    // A reload that cannot be applied leaves the server as it was.
    std::fs::write(&site.config, "[limits]\nmax_depth = 2\n").expect("config");
    let out = site.run(&["admin", "status"]);
    assert!(
        !out.status.success(),
        "the file no longer loads for commands either"
    );
    site.signal("HUP");
    site.wait_for_log("reload failed; the old configuration stays");
    alice.barrier();
}

#[test]
fn a_second_server_on_the_same_data_directory_refuses_to_start() {
    let site = Site::start("");
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["serve", "--config"])
        .arg(&site.config)
        .stdin(Stdio::null())
        .output()
        .expect("serve");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("another outpost serve is running on this data directory"),
        "{}",
        text(&out.stderr)
    );
    // The first one goes on serving.
    site.register("alice");
}

#[test]
fn the_control_socket_answers_only_the_servers_user() {
    // Switching users needs root, which the test suite runs as.
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
    {
        eprintln!("not root: cannot act as another user; skipping");
        return;
    }
    let site = Site::start("");
    std::fs::set_permissions(site.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&site.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A copy of the binary that another user may run (the build directory is root's).
    let binary = site.dir.path().join("outpost");
    std::fs::copy(env!("CARGO_BIN_EXE_outpost"), &binary).unwrap();
    let as_nobody = |site: &Site| {
        Command::new(&binary)
            .args(["admin", "status", "--config"])
            .arg(&site.config)
            .current_dir("/")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    // The data directory is the owner's alone: the socket cannot even be reached.
    let out = as_nobody(&site);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
    // Opened up by mistake, the server still checks who asks.
    let data = site.dir.path().join("data");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        data.join("control.sock"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let out = as_nobody(&site);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("only the server's own user and root may control it"),
        "{}",
        text(&out.stderr)
    );
    assert!(site.run(&["admin", "status"]).status.success());
}

#[test]
fn the_certificate_is_named_after_the_domain_and_its_fingerprint_is_logged() {
    let site = Site::start("");
    let out = site.run(&["admin", "cert"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cert = text(&out.stdout);
    assert!(cert.contains("CN=localhost"), "{cert}");
    let fingerprint = cert
        .lines()
        .find_map(|l| l.strip_prefix("SHA-256:"))
        .map(str::trim)
        .expect("fingerprint")
        .to_owned();
    assert_eq!(fingerprint.len(), 95, "{fingerprint}");
    site.wait_for_log(&format!("sha256={fingerprint}"));
}

#[test]
fn logs_say_why_a_stream_was_closed_and_can_be_json() {
    let site = Site::start("[log]\nformat = \"json\"\n");
    let mut c = Client::connect_raw(site.c2s, WAIT);
    c.send(&outpost_testkit::stream_open("localhost"));
    c.send(&format!(
        "<message><body>{}</body></message>",
        "a".repeat(300_000)
    ));
    assert_eq!(
        c.run(async |c| c.expect_stream_error().await),
        "policy-violation"
    );
    site.wait_for_log("top-level element larger than 262144 bytes");
    // A client that speaks no TLS to the direct TLS port: its failed handshake is logged.
    {
        use std::io::{Read as _, Write as _};
        let mut plain = std::net::TcpStream::connect(site.c2s_tls).expect("connect");
        plain
            .write_all(outpost_testkit::stream_open("localhost").as_bytes())
            .expect("write");
        plain.set_read_timeout(Some(WAIT)).expect("timeout");
        let _ = plain.read_to_end(&mut Vec::new());
    }
    site.wait_for_log("TLS handshake failed");
    let log = site.log();
    let closed = log
        .lines()
        .find(|l| l.contains("top-level element larger"))
        .expect("line");
    let event: serde_json::Value = serde_json::from_str(closed).expect("a JSON line");
    assert_eq!(event["fields"]["condition"], "policy-violation");
    assert!(
        event["spans"].to_string().contains("127.0.0.1"),
        "the peer address is logged: {closed}"
    );
}
