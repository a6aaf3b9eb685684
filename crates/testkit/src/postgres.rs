//! A real PostgreSQL server for tests (the store battery, the binary on PostgreSQL): one
//! per test process, started on first use ([`shared`]), each test in a database of its own
//! ([`PgServer::create_database`]).
//!
//! The server runs from Debian's binaries (`/usr/lib/postgresql/<version>/bin`, the newest
//! found) in a temporary directory that holds both its data and its socket, and listens on
//! that unix socket only (`listen_addresses=''`), so nothing is opened on the network and
//! the port number only names the socket file. PostgreSQL refuses to run as root: as root,
//! the directory is handed to the `postgres` system user and the server runs as that user
//! (`runuser`).
//!
//! A static never drops, so the test process cannot stop the server when it exits. A small
//! shell wrapper does it instead: it starts the server, then blocks reading its standard
//! input, a pipe whose only write end the test process holds (in the static, and
//! close-on-exec, so no other child inherits it). However the test process ends, even by
//! SIGKILL, the kernel closes that end, the read returns, and the wrapper stops the server
//! (fast shutdown), waits for it and removes the directory. Nothing is written into the
//! repository: the directory is under /tmp.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The server's port: any will do, the socket lives in a directory of its own.
const PORT: u16 = 5432;

/// How long the server may take to accept connections after the wrapper starts.
const STARTUP: Duration = Duration::from_secs(30);

/// The wrapper. Arguments: the directory, the binaries' directory, the port. SIGINT and
/// SIGHUP are ignored so that a Ctrl-C in the terminal still lets it clean up (the
/// server, which sets its own handlers, gets the Ctrl-C and shuts down).
const WRAPPER: &str = r#"
set -u
dir=$1 bin=$2 port=$3
trap '' INT HUP
if "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-locale -E UTF8 --no-sync \
        >"$dir/initdb.log" 2>&1; then
    "$bin/postgres" -D "$dir/data" -k "$dir" -p "$port" -c listen_addresses= \
        >"$dir/postgres.log" 2>&1 &
    pid=$!
    read -r _ || true
    kill -INT "$pid" 2>/dev/null
    wait "$pid"
else
    read -r _ || true
fi
rm -rf "$dir"
"#;

/// The shared server.
pub struct PgServer {
    /// Holds both the data directory and the socket.
    dir: PathBuf,
    /// The binaries (`createdb`).
    bin: PathBuf,
    /// The wrapper, whose standard input is the pipe described above: never written,
    /// closed only when this process ends.
    _wrapper: Child,
}

impl PgServer {
    /// The URL of `database` on this server, for sqlx and for `storage.url`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost:{PORT}/{database}?host={}",
            self.dir.display()
        )
    }
}

/// The newest PostgreSQL's binaries installed.
fn binaries() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let entries = std::fs::read_dir(root).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; install PostgreSQL (test.sh does: apt-get install postgresql)",
            root.display()
        )
    });
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .expect("no /usr/lib/postgresql/*/bin/initdb: install PostgreSQL")
}

/// A directory the server's user owns, under /tmp (which that user can reach, unlike
/// root's own temporary directories); whether the server must run as `postgres`.
fn server_dir() -> (PathBuf, bool) {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::Builder::new()
        .prefix("outpost-pg-")
        .tempdir_in("/tmp")
        .expect("temporary directory")
        // The wrapper removes it; dropping it here would race the server.
        .keep();
    let as_root = std::fs::metadata(&dir).expect("stat").uid() == 0;
    if as_root {
        let status = Command::new("chown")
            .arg("postgres:")
            .arg(&dir)
            .status()
            .expect("run chown");
        assert!(status.success(), "chown postgres {}", dir.display());
    }
    (dir, as_root)
}

fn start() -> PgServer {
    let bin = binaries();
    let (dir, as_root) = server_dir();
    let mut command = if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh"]);
        c
    } else {
        Command::new("sh")
    };
    let wrapper = command
        .arg("-c")
        .arg(WRAPPER)
        .arg("sh")
        .arg(&dir)
        .arg(&bin)
        .arg(PORT.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the PostgreSQL wrapper");
    wait_ready(&bin, &dir);
    PgServer {
        dir,
        bin,
        _wrapper: wrapper,
    }
}

/// Polls `pg_isready` until the server accepts connections, for at most [`STARTUP`].
fn wait_ready(bin: &Path, dir: &Path) {
    let deadline = Instant::now() + STARTUP;
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .arg("-q")
            .arg("-h")
            .arg(dir)
            .args(["-p", &PORT.to_string(), "-U", "postgres"])
            .status()
            .expect("run pg_isready");
        if ready.success() {
            return;
        }
        if Instant::now() > deadline {
            let log = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            panic!(
                "PostgreSQL did not start within {STARTUP:?}\ninitdb:\n{}\npostgres:\n{}",
                log("initdb.log"),
                log("postgres.log")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The server of this test process, started the first time (this blocks: call it off
/// an async runtime's threads, with `spawn_blocking`).
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(start)
}

impl PgServer {
    /// Creates an empty database of a name not used before in this process; returns it.
    pub fn create_database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let status = Command::new(self.bin.join("createdb"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &PORT.to_string(), "-U", "postgres", &name])
            .status()
            .expect("run createdb");
        assert!(status.success(), "createdb {name} failed");
        name
    }
}
