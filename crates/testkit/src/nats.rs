//! A real NATS server for cluster tests: Debian's `nats-server` on 127.0.0.1 and a port of
//! its choosing (or one given, to bring a stopped server back where its clients look for
//! it), in a temporary directory, one per [`NatsServer`].
//!
//! As with [`crate::postgres`], a small shell wrapper runs it and blocks reading its
//! standard input, a pipe only the test process writes to: when the handle is dropped or
//! stopped, or the test process ends however it ends, the read returns and the wrapper
//! stops the server and waits for it.

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to write its ports file.
const STARTUP: Duration = Duration::from_secs(20);

const WRAPPER: &str = r#"
set -u
dir=$1 port=$2
trap '' INT HUP
nats-server -a 127.0.0.1 -p "$port" --ports_file_dir "$dir" >"$dir/nats.log" 2>&1 &
pid=$!
read -r _ || true
kill -TERM "$pid" 2>/dev/null
wait "$pid"
"#;

pub struct NatsServer {
    url: String,
    port: u16,
    wrapper: Option<Child>,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on a free port (this blocks until it listens).
    pub fn start() -> NatsServer {
        Self::start_on(None)
    }

    /// Starts a server on `port`, or on a free one.
    pub fn start_on(port: Option<u16>) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("outpost-nats-")
            .tempdir()
            .expect("temporary directory");
        let wrapper = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("sh")
            .arg(dir.path())
            .arg(port.map_or("-1".to_owned(), |p| p.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nats-server (test.sh installs it: apt-get install nats-server)");
        let url = wait_ports(dir.path());
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in the URL");
        NatsServer {
            url,
            port,
            wrapper: Some(wrapper),
            dir,
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server and waits until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut wrapper) = self.wrapper.take() {
            // Closing the pipe (or a line on it) ends the wrapper's read.
            if let Some(mut stdin) = wrapper.stdin.take() {
                let _ = stdin.write_all(b"\n");
            }
            let _ = wrapper.wait();
        }
    }

    /// What the server logged, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The client URL from the ports file the server writes once it listens.
fn wait_ports(dir: &Path) -> String {
    let deadline = Instant::now() + STARTUP;
    loop {
        let found = std::fs::read_dir(dir).ok().and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))
        });
        if let Some(entry) = found
            && let Ok(text) = std::fs::read_to_string(entry.path())
            && let Some(url) = client_url(&text)
        {
            return url;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("nats.log")).unwrap_or_default();
            panic!("nats-server did not start within {STARTUP:?}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `nats://127.0.0.1:N` from `{"nats":["nats://127.0.0.1:N"], …}`.
fn client_url(ports: &str) -> Option<String> {
    let start = ports.find("nats://")?;
    let rest = &ports[start..];
    let end = rest.find('"')?;
    Some(rest[..end].to_owned())
}
