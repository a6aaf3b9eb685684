//! Runs the real `outpost` binary: configuration errors and overrides, account
//! administration on a temporary data directory, and `serve` start-up and shutdown.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

/// A command for the binary that sees none of the caller's `OUTPOST_…` or `RUST_LOG`
/// variables, and runs in `dir` so the default `./outpost-data` lands there too.
fn outpost(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|n| n.starts_with("OUTPOST_") || n == "RUST_LOG")
        {
            cmd.env_remove(name);
        }
    }
    cmd.current_dir(dir).stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("cannot run outpost")
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run outpost");
    // The command may rightly exit before reading (a bad JID is refused before the
    // password is asked for), which closes the pipe: that is not a test failure.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn write_config(dir: &TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("outpost.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn unknown_key_is_rejected_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, "[limits]\nmax_stanzas = 5\n");

    let out = run(outpost(dir.path())
        .args(["config", "check", "--config"])
        .arg(&config));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("limits.max_stanzas: unknown key"), "{err}");
    assert!(err.contains(&config.display().to_string()), "{err}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn bad_value_is_rejected_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, "[limits]\nmax_stanza_bytes = \"big\"\n");

    let out = run(outpost(dir.path())
        .arg("serve")
        .arg("--config")
        .arg(&config));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("limits.max_stanza_bytes: invalid type: found string \"big\", expected usize"),
        "{err}"
    );
    // Rejected before the store was opened, let alone a port bound.
    assert!(!dir.path().join("outpost-data").exists());

    let out = run(outpost(dir.path())
        .args(["config", "check"])
        .env("OUTPOST_LIMITS__MAX_DEPTH", "2"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("limits.max_depth must be between 8 and 1024"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        "domains = [\"file.example\"]\n[limits]\nmax_stanza_bytes = 30000\n",
    );

    let out = run(outpost(dir.path())
        .args(["config", "show", "--config"])
        .arg(&config)
        .env("OUTPOST_LIMITS__MAX_STANZA_BYTES", "65536")
        .env("OUTPOST_DOMAINS", r#"["a.example", "b.example"]"#));
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: toml::Value = toml::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        shown["limits"]["max_stanza_bytes"].as_integer(),
        Some(65536)
    );
    let domains: Vec<_> = shown["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(domains, ["a.example", "b.example"]);
    // A config file is given, so registration stays at its default (unset, meaning off).
    assert!(shown["registration"].get("enabled").is_none());

    // A bad value from the environment names the variable.
    let out = run(outpost(dir.path())
        .args(["config", "check"])
        .env("OUTPOST_LIMITS__MAX_CONNECTIONS", "lots"));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("limits.max_connections: invalid type"),
        "{err}"
    );
    assert!(
        err.contains("environment variable OUTPOST_LIMITS__MAX_CONNECTIONS"),
        "{err}"
    );
}

#[test]
fn zero_config_shows_registration_on() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(outpost(dir.path()).args(["config", "show"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: toml::Value = toml::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["registration"]["enabled"].as_bool(), Some(true));
}

#[test]
fn config_show_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let admin = "an-admin-token-of-at-least-32-characters";
    let config = write_config(
        &dir,
        &format!(
            "domains = [\"x.example\"]\n[api]\nadmin_token = \"{admin}\"\n\
             [federation]\ndialback_secret = \"a-dialback-secret-here\"\n\
             [components]\n\"bot.x.example\" = \"a-component-secret\"\n"
        ),
    );
    let out = run(outpost(dir.path())
        .args(["config", "show", "--config"])
        .arg(&config));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for secret in [admin, "a-dialback-secret-here", "a-component-secret"] {
        assert!(!text.contains(secret), "{text}");
    }
    let shown: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(shown["api"]["admin_token"].as_str(), Some("<redacted>"));
    assert_eq!(
        shown["components"]["bot.x.example"].as_str(),
        Some("<redacted>")
    );
}

#[test]
fn default_config_is_accepted_as_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(outpost(dir.path()).args(["config", "default"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let config = write_config(&dir, &stdout(&out));

    let out = run(outpost(dir.path())
        .args(["config", "check", "--config"])
        .arg(&config));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("configuration OK\nno certificate yet: a self-signed one"),
        "{}",
        stdout(&out)
    );

    let out = run(outpost(dir.path()).arg("--version"));
    assert!(stdout(&out).starts_with("outpost "), "{}", stdout(&out));
}

#[test]
fn user_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let user = |args: &[&str]| {
        let mut cmd = outpost(dir.path());
        cmd.arg("user").args(args).arg("--data-dir").arg(&data);
        cmd
    };

    // Before anything exists, listing points at the likely mistake instead of creating
    // an empty database.
    let out = run(&mut user(&["list"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no database at"), "{}", stderr(&out));

    let out = run_with_stdin(&mut user(&["add", "alice@localhost"]), "secret one\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_with_stdin(
        &mut user(&["add", "bob@localhost", "--password-stdin"]),
        "pw\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let out = run_with_stdin(&mut user(&["add", "alice@localhost"]), "again\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));

    let out = run_with_stdin(&mut user(&["add", "carol"]), "pw\n");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`carol` has no domain part"),
        "{}",
        stderr(&out)
    );

    let out = run_with_stdin(&mut user(&["add", "carol@elsewhere.example"]), "pw\n");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not one of the served domains"),
        "{}",
        stderr(&out)
    );

    let out = run(&mut user(&["add", "carol@localhost"]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no password on standard input"),
        "{}",
        stderr(&out)
    );

    let out = run(&mut user(&["list"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "alice@localhost\nbob@localhost\n");

    let out = run_with_stdin(&mut user(&["passwd", "alice@localhost"]), "secret two\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_with_stdin(&mut user(&["passwd", "nobody@localhost"]), "pw\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no such account"), "{}", stderr(&out));

    let out = run(&mut user(&["remove", "alice@localhost"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&mut user(&["remove", "alice@localhost"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no such account"), "{}", stderr(&out));

    let out = run(&mut user(&["list"]));
    assert_eq!(stdout(&out), "bob@localhost\n");
}

/// Kills the server if a test fails before it is stopped properly.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_reports_listeners_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = outpost(dir.path())
        .args(["serve", "--data-dir", "data"])
        .env("OUTPOST_LISTEN__C2S", r#"["127.0.0.1:0"]"#)
        .env("OUTPOST_LISTEN__C2S_TLS", r#"["127.0.0.1:0"]"#)
        .env("OUTPOST_LISTEN__PROXY65", r#"["127.0.0.1:0"]"#)
        .env("OUTPOST_LISTEN__HTTPS", r#"["127.0.0.1:0"]"#)
        .env("OUTPOST_LISTEN__HTTP", r#"["127.0.0.1:0"]"#)
        .env("OUTPOST_AUTH__SCRAM_ITERATIONS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut server = Server(child);

    // Read on a thread so that a server that never reports cannot hang the test.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut listeners = Vec::new();
    while listeners.len() < 5 {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no `listening` line in time");
        let mut words = line.split(' ');
        assert_eq!(words.next(), Some("listening"), "{line}");
        let kind = words.next().unwrap().to_owned();
        let addr: SocketAddr = words.next().unwrap().parse().unwrap();
        assert_ne!(addr.port(), 0);
        listeners.push((kind, addr));
    }
    let kinds: Vec<_> = listeners.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["c2s-starttls", "c2s-tls", "proxy65", "https", "http"]
    );
    for (_, addr) in &listeners {
        TcpStream::connect_timeout(addr, Duration::from_secs(5)).expect("listener not accepting");
    }
    assert!(dir.path().join("data").is_dir());

    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");

    // The generated certificate is kept for the next start, its key readable by us only.
    use std::os::unix::fs::PermissionsExt as _;
    let tls = dir.path().join("data/tls");
    assert!(
        std::fs::read_to_string(tls.join("cert.pem"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let mode = std::fs::metadata(tls.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn serve_fails_clearly_on_a_missing_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(outpost(dir.path())
        .args(["serve", "--data-dir", "data"])
        .env("OUTPOST_LISTEN__C2S", r#"["127.0.0.1:0"]"#)
        .env("OUTPOST_LISTEN__C2S_TLS", "[]")
        .env("OUTPOST_TLS__CERT", "missing-cert.pem")
        .env("OUTPOST_TLS__KEY", "missing-key.pem"));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot read the TLS certificate missing-cert.pem"),
        "{err}"
    );
    assert!(stdout(&out).is_empty());

    // Half a pair is a configuration error, found before anything else.
    let out = run(outpost(dir.path())
        .args(["serve"])
        .env("OUTPOST_TLS__CERT", "cert.pem"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("tls.key must be set when tls.cert is"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_check_checks_the_certificate_serve_would_use() {
    let dir = tempfile::tempdir().unwrap();
    let a = outpost_server::TlsIdentity::self_signed(&["localhost".to_owned()]).unwrap();
    let b = outpost_server::TlsIdentity::self_signed(&["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &a.cert_chain_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &a.key_pem).unwrap();
    std::fs::write(dir.path().join("other-key.pem"), &b.key_pem).unwrap();
    let check = |cert: &str, key: &str| {
        let config = write_config(
            &dir,
            &format!("[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n"),
        );
        run(outpost(dir.path())
            .args(["config", "check", "--config"])
            .arg(&config))
    };

    // Relative paths are relative to the configuration file.
    let out = check("cert.pem", "key.pem");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("SHA-256 "), "{}", stdout(&out));

    let out = check("missing.pem", "key.pem");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot read the TLS certificate"),
        "{}",
        stderr(&out)
    );

    let out = check("cert.pem", "other-key.pem");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("certificate and key do not match"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_check_refuses_a_misspelt_log_level_and_a_host_name_to_listen_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, "[log]\nlevel = \"inf\"\n");
    let out = run(outpost(dir.path())
        .args(["config", "check", "--config"])
        .arg(&config));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("`inf` is not a level"),
        "{}",
        stderr(&out)
    );

    let config = write_config(&dir, "[listen]\nc2s = [\"localhost:5222\"]\n");
    let out = run(outpost(dir.path())
        .args(["config", "check", "--config"])
        .arg(&config));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains("`localhost:5222` is not an IP address and port: write 127.0.0.1:5222"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_service_configuration_in_contrib_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../contrib/outpost.toml");
    let out = run(outpost(dir.path())
        .args(["config", "check", "--config"])
        .arg(config));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("/var/lib/outpost/tls"),
        "{}",
        stdout(&out)
    );
}
