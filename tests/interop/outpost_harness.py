"""Start/stop an Outpost server process for the interop suite.

The contract with the server (see README.md):

* ``outpost serve --config FILE`` prints one line per bound listener on
  stdout, e.g. ``listening c2s-starttls 127.0.0.1:PORT`` and
  ``listening c2s-tls 127.0.0.1:PORT``; logs go to stderr.
* SIGTERM stops it with exit code 0 within a few seconds.
* A self-signed certificate for the domain is generated at
  ``<data_dir>/tls/cert.pem``.
* ``outpost user add JID --password-stdin --config FILE`` creates an account.
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BIN = os.path.join(
    os.path.expanduser("~"), ".cache", "outpost-target", "debug", "outpost"
)
DOMAIN = "localhost"

LISTEN_RE = re.compile(
    r"^listening\s+(c2s-starttls|c2s-tls|s2s|proxy65|https|http|component)\s+(\S+)\s*$")

START_TIMEOUT = float(os.environ.get("OUTPOST_START_TIMEOUT", "30"))
STOP_TIMEOUT = float(os.environ.get("OUTPOST_STOP_TIMEOUT", "10"))


def outpost_bin() -> str:
    return os.environ.get("OUTPOST_BIN") or DEFAULT_BIN


def server_env() -> dict[str, str]:
    """The environment for outpost processes.

    Outpost reads every OUTPOST_* variable as a configuration override and
    rejects unknown keys, so the suite's own OUTPOST_BIN & co. are removed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTPOST_")}
    env.setdefault("RUST_BACKTRACE", "1")
    return env


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    return host, int(port)


def render_config(workdir: Path, overrides: str = "", domain: str = DOMAIN,
                  s2s_listen: str | None = None) -> str:
    """The TOML configuration for one test server.

    Key names follow outpost.example.toml. ``overrides`` is appended
    verbatim (a test that needs a different limit adds its own table)."""
    data_dir = workdir / "data"
    return f"""\
# Written by tests/interop (outpost_harness.py)
domains = ["{domain}"]
data_dir = "{data_dir}"

[listen]
c2s = ["127.0.0.1:0"]
c2s_tls = ["127.0.0.1:0"]
proxy65 = ["127.0.0.1:0"]
https = ["127.0.0.1:0"]
http = []
# Bound only when [components] names one (test_push.py).
component = ["127.0.0.1:0"]
{f's2s = ["{s2s_listen}"]' if s2s_listen else ""}

[registration]
enabled = true

[auth]
scram_iterations = 4096

[limits]
offline_quota = 10000
# The suite deliberately fails logins and opens many sessions from 127.0.0.1.
login_failures_per_ip = 100000
login_failures_per_account = 100000
login_failures_per_address_account = 100000
max_resources_per_account = 100
{overrides}"""


@dataclass
class OutpostServer:
    workdir: Path
    binary: str = field(default_factory=outpost_bin)
    config_overrides: str = ""
    domain: str = DOMAIN
    # An s2s listener address (federation must be enabled in config_overrides).
    s2s_listen: str | None = None
    proc: subprocess.Popen | None = None
    listeners: dict[str, tuple[str, int]] = field(default_factory=dict)
    stdout_lines: list[str] = field(default_factory=list)
    exit_code: int | None = None
    started: bool = False

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "outpost.toml"
        self.log_path = self.workdir / "outpost.stderr.log"
        self.stdout_path = self.workdir / "outpost.stdout.log"
        self.data_dir = self.workdir / "data"
        self.config_path.write_text(render_config(
            self.workdir, self.config_overrides, self.domain, self.s2s_listen))

    # ---------------------------------------------------------------- paths
    @property
    def cert_path(self) -> Path:
        return self.data_dir / "tls" / "cert.pem"

    @property
    def starttls_addr(self) -> tuple[str, int]:
        return self.listeners["c2s-starttls"]

    @property
    def tls_addr(self) -> tuple[str, int]:
        return self.listeners["c2s-tls"]

    @property
    def s2s_addr(self) -> tuple[str, int]:
        return self.listeners["s2s"]

    @property
    def component_addr(self) -> tuple[str, int]:
        """The external components' listener (XEP-0114), when [components] names any."""
        return self.listeners["component"]

    @property
    def proxy65_addr(self) -> tuple[str, int]:
        """The SOCKS5 bytestream proxy's listener (XEP-0065), as the server printed it."""
        return self.listeners["proxy65"]

    @property
    def proxy65_addrs(self) -> list[tuple[str, int]]:
        """Every proxy listener a client may be told of (a cluster's nodes have one each)."""
        return [self.proxy65_addr]

    # ------------------------------------------------------------ lifecycle
    def add_user_cli(self, localpart: str, password: str, timeout: float = 30) -> None:
        """``outpost user add`` (password on stdin)."""
        res = subprocess.run(
            [self.binary, "user", "add", f"{localpart}@{self.domain}",
             "--password-stdin", "--config", str(self.config_path)],
            input=password + "\n", capture_output=True, text=True, timeout=timeout,
            env=server_env(),
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"outpost user add {localpart}@{self.domain} failed "
                f"(exit {res.returncode}):\nstdout: {res.stdout}\nstderr: {res.stderr}"
            )

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start (or restart, after stop()) the server; waits for its listeners."""
        self.exit_code = None
        self.started = False
        self.listeners.clear()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        env = server_env()
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=env,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            with open(self.stdout_path, "a", encoding="utf-8") as out:
                for raw in self.proc.stdout:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    out.write(line + "\n")
                    out.flush()
                    self.stdout_lines.append(line)
                    lines.put(line)
            lines.put(None)

        self._pump = threading.Thread(target=pump, name="outpost-stdout", daemon=True)
        self._pump.start()

        deadline = time.monotonic() + timeout
        # render_config always binds the bytestream proxy (enabled by default) and the
        # HTTPS listener (upload, health, metrics, WebSocket).
        wanted = {"c2s-starttls", "c2s-tls", "proxy65", "https"}
        if self.s2s_listen:
            wanted.add("s2s")
        while not wanted <= self.listeners.keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._abort_start(f"no listening lines within {timeout}s")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=5)
                self._abort_start(
                    f"server exited with code {self.proc.returncode} before listening"
                )
            m = LISTEN_RE.match(line.strip())
            if m:
                self.listeners[m.group(1)] = _split_addr(m.group(2))
        self.started = True

    def _abort_start(self, why: str) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        raise RuntimeError(
            f"outpost failed to start: {why}\n"
            f"command: {self.binary} serve --config {self.config_path}\n"
            f"stdout so far: {self.stdout_lines!r}\n"
            f"--- stderr tail ---\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait; returns the exit code. Kills on timeout and raises."""
        if self.proc is None:
            return 0
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    raise AssertionError(
                        f"outpost did not exit within {timeout}s of SIGTERM (killed)\n"
                        f"--- stderr tail ---\n{self.log_tail()}"
                    )
            self.exit_code = self.proc.returncode
            return self.exit_code
        finally:
            if getattr(self, "_pump", None) is not None:
                self._pump.join(timeout=5)
            if getattr(self, "_log_file", None) is not None:
                self._log_file.close()

    def log_tail(self, n: int = 60) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return "(no stderr log)"
        return "\n".join(text.splitlines()[-n:])


def federated_outposts(base: Path, domains: tuple[str, ...] = ("a.test", "b.test"),
                       hosts: tuple[str, ...] = ("127.0.0.4", "127.0.0.5"),
                       port: int = 5269, extra: str = "",
                       services: tuple[str, ...] = (),
                       peers: dict[str, str] | None = None) -> list[OutpostServer]:
    """Outpost servers (not started) that federate with each other on loopback only.

    Each serves one domain and listens for server-to-server streams on its own loopback
    address with the same fixed port, so every server's address is known before any of
    them starts; each lists all the others in ``[federation.peers]`` (no DNS, no SRV).
    TLS is required on every s2s stream; the generated certificates are self-signed, so
    the servers authenticate each other with dialback (a fixed secret per server).
    Client listeners stay on 127.0.0.1 with kernel-chosen ports, as for OutpostServer.
    ``services`` names subdomain services (e.g. ``"conference"``): each server also lists
    ``<service>.<domain>`` of every other server at that server's address. ``peers``
    (domain -> "host:port") are listed by every server they are not of, after those: a
    third party such as Prosody, or another address (a relay) for one of the servers.
    ``extra`` is appended to every configuration."""
    servers = []
    for domain, host in zip(domains, hosts):
        listed = {f"{svc}{d}": f"{h}:{port}" for d, h in zip(domains, hosts) if d != domain
                  for svc in ("", *(f"{s}." for s in services))}
        listed.update({d: addr for d, addr in (peers or {}).items()
                       if d != domain and not d.endswith("." + domain)})
        peers_toml = "\n".join(f'"{d}" = "{addr}"' for d, addr in listed.items())
        overrides = f"""
[federation]
enabled = true
require_tls = true
dialback_secret = "interop-dialback-{domain}-0123456789abcdef"
retry_initial_secs = 1
retry_max_secs = 2
probe_interval_secs = 1
# Every peer is listed below; DNS is never asked.
srv_lookup = false

[federation.peers]
{peers_toml}
{extra}"""
        servers.append(OutpostServer(Path(base) / domain, domain=domain,
                                     s2s_listen=f"{host}:{port}", config_overrides=overrides))
    return servers


# ---------------------------------------------------------------- cluster mode

def cluster_mode() -> bool:
    """OUTPOST_INTEROP_CLUSTER=1: the fixtures' servers are two-node clusters."""
    return os.environ.get("OUTPOST_INTEROP_CLUSTER") == "1"


_CLUSTERS = itertools.count(1)


def _cluster_toml(url: str, nats_url: str, prefix: str, node_id: str) -> str:
    return f"""
[storage]
backend = "postgres"
url = "{url}"

[cluster]
nats_url = "{nats_url}"
node_id = "{node_id}"
subject_prefix = "{prefix}"
"""


@dataclass
class ClusterServer(OutpostServer):
    """Node n1 of a two-node cluster of one domain, with node n2 started beside it: a
    database of its own on the session's PostgreSQL, a subject prefix of its own on the
    session's NATS (``cluster_services.shared``). n2 presents n1's certificate, and each
    client that asks for an address is given the nodes in turn, so a test's users are
    spread over both and what they say to each other crosses nodes."""

    partner: OutpostServer | None = None
    turn: int = 0

    def __post_init__(self) -> None:
        import cluster_services
        pg, nats = cluster_services.shared()
        url, prefix = pg.createdb(), f"interop{next(_CLUSTERS)}"
        own = self.config_overrides
        self.config_overrides = own + _cluster_toml(url, nats.url, prefix, "n1")
        super().__post_init__()
        self._partner_overrides = own + _cluster_toml(url, nats.url, prefix, "n2")

    def start(self, timeout: float = START_TIMEOUT) -> None:
        super().start(timeout)
        key = self.data_dir / "tls" / "key.pem"
        tls = f'\n[tls]\ncert = "{self.cert_path}"\nkey = "{key}"\n'
        if self.partner is None:
            self.partner = OutpostServer(self.workdir / "n2", domain=self.domain,
                                         config_overrides=self._partner_overrides + tls)
        self.partner.start(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        if self.partner is not None and self.partner.proc is not None:
            code = self.partner.stop(timeout)
            assert code == 0, f"node n2 exited with {code}\n{self.partner.log_tail()}"
        return super().stop(timeout)

    def _next(self, kind: str) -> tuple[str, int]:
        nodes = [self] + ([self.partner] if self.partner and self.partner.started else [])
        self.turn += 1
        return nodes[self.turn % len(nodes)].listeners[kind]

    @property
    def starttls_addr(self) -> tuple[str, int]:
        return self._next("c2s-starttls")

    @property
    def tls_addr(self) -> tuple[str, int]:
        return self._next("c2s-tls")

    @property
    def proxy65_addrs(self) -> list[tuple[str, int]]:
        partner = [self.partner.listeners["proxy65"]] if self.partner else []
        return [self.listeners["proxy65"], *partner]


def server_class() -> type[OutpostServer]:
    """What the fixtures start: one server, or a two-node cluster in cluster mode."""
    return ClusterServer if cluster_mode() else OutpostServer
