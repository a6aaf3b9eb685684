"""Federation with Prosody (Debian's package): server-to-server in both directions.

Outpost serves ``o.test`` (s2s on 127.0.0.1, a port picked by the kernel) and reaches
``p.test`` through ``federation.peers``; Prosody serves ``p.test`` on 127.0.0.2 (c2s 5222,
s2s 5269), as its own process with its own configuration in a temporary directory.

Prosody has no per-domain address setting, and resolving ``o.test`` through DNS would
send queries off loopback, so a small test-only Prosody module written here
(``mod_outpost_test_routes``) makes Prosody's s2s resolver return a fixed address for
``o.test``. Everything else on Prosody's side is stock: STARTTLS on s2s, dialback
(``s2s_secure_auth = false``, since both sides use self-signed certificates).

A message from Outpost to Prosody travels on Outpost's outgoing stream; the reply travels
on a stream Prosody opens to Outpost (s2s streams are one-way), and each new stream makes
the receiving side dial back the sender to verify its key, so both servers act as
initiating, receiving and authoritative server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from outpost_harness import OutpostServer
from test_roster_presence import push_for
from xmpp_helpers import Client, is_available_from, login, message_and_reply, stop_all, uname

O_DOMAIN = "o.test"
P_DOMAIN = "p.test"
P_HOST = "127.0.0.2"
P_C2S = 5222
P_S2S = 5269
PASSWORD = "federation-secret"
START_TIMEOUT = 30.0

ROUTES_MODULE = """\
-- Test only: connect to the s2s peers listed in `s2s_test_routes` at fixed addresses
-- instead of resolving their domains through DNS.
local service = require "net.resolvers.service";
local basic = require "net.resolvers.basic";
local manual = require "net.resolvers.manual";
local routes = module:get_option("s2s_test_routes", {});
local original_new = service.new;
service.new = function (hostname, srv, conn_type, extra)
\tlocal route = routes[hostname];
\tif not route then
\t\treturn original_new(hostname, srv, conn_type, extra);
\tend
\tif srv == "xmpp-server" then
\t\tmodule:log("info", "s2s route for %s: %s:%d", hostname, route[1], route[2]);
\t\treturn basic.new(route[1], route[2], conn_type, extra);
\tend
\treturn manual.new({}, conn_type, extra);
end
function module.unload()
\tservice.new = original_new;
end
"""


@dataclass
class ProsodyServer:
    """One Prosody process for ``p.test`` (the duck type xmpp_helpers.Client needs:
    ``domain``, ``cert_path``, ``starttls_addr``)."""

    workdir: Path
    routes: dict[str, tuple[str, int]]
    domain: str = P_DOMAIN
    proc: subprocess.Popen | None = None
    as_user: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.config_path = self.workdir / "prosody.cfg.lua"
        self.cert_path = self.workdir / "cert.pem"
        self.key_path = self.workdir / "key.pem"
        self.log_path = self.workdir / "prosody.log"
        self.stdout_path = self.workdir / "prosody.stdout.log"
        if os.geteuid() == 0:
            # Prosody refuses to run as root; run it (and prosodyctl) as its own user.
            self.as_user = ["setpriv", "--reuid", "prosody", "--regid", "prosody",
                            "--init-groups"]

    @property
    def starttls_addr(self) -> tuple[str, int]:
        return (P_HOST, P_C2S)

    def write_config(self) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        (self.workdir / "plugins").mkdir(exist_ok=True)
        (self.workdir / "plugins" / "mod_outpost_test_routes.lua").write_text(ROUTES_MODULE)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={self.domain}", "-addext", f"subjectAltName=DNS:{self.domain}",
             "-keyout", str(self.key_path), "-out", str(self.cert_path)],
            check=True, capture_output=True, timeout=60)
        routes = "; ".join(f'["{d}"] = {{ "{h}", {p} }}' for d, (h, p) in self.routes.items())
        self.config_path.write_text(f"""\
-- Written by tests/interop/test_federation_prosody.py
pidfile = "{self.workdir}/prosody.pid"
data_path = "{self.workdir}/data"
plugin_paths = {{ "{self.workdir}/plugins" }}
daemonize = false
log = {{ debug = "{self.log_path}" }}
network_backend = "epoll"
interfaces = {{ "{P_HOST}" }}
c2s_ports = {{ {P_C2S} }}
c2s_interfaces = {{ "{P_HOST}" }}
c2s_direct_tls_ports = {{}}
s2s_ports = {{ {P_S2S} }}
s2s_interfaces = {{ "{P_HOST}" }}
http_ports = {{}}
https_ports = {{}}
modules_enabled = {{
    "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "presence"; "offline";
    "outpost_test_routes";
}}
modules_disabled = {{ "limits"; "c2s_limits"; "http"; "admin_telnet"; "admin_shell"; }}
authentication = "internal_hashed"
storage = "internal"
allow_registration = false
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = false
s2s_test_routes = {{ {routes} }}
ssl = {{ certificate = "{self.cert_path}"; key = "{self.key_path}"; }}

VirtualHost "{self.domain}"
""")
        if self.as_user:
            shutil.chown(self.workdir, "prosody", "prosody")
            for p in self.workdir.rglob("*"):
                shutil.chown(p, "prosody", "prosody")

    def register(self, localpart: str, password: str) -> None:
        res = subprocess.run(
            [*self.as_user, "prosodyctl", "--config", str(self.config_path),
             "register", localpart, self.domain, password],
            capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, (
            f"prosodyctl register {localpart} failed ({res.returncode}):\n"
            f"{res.stdout}\n{res.stderr}")

    def start(self) -> None:
        with open(self.stdout_path, "ab") as out:
            self.proc = subprocess.Popen(
                [*self.as_user, "prosody", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        # Ready when Prosody reports both listeners active. (It keeps running when a port
        # is taken, so a successful connect could reach someone else.)
        wanted = [f"Activated service '{kind}' on [{P_HOST}]:{port}"
                  for kind, port in (("c2s", P_C2S), ("s2s", P_S2S))]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                text = self.log_path.read_text("utf-8", "replace")
            except OSError:
                text = ""
            if "Failed to open server port" in text:
                raise AssertionError(f"prosody could not listen\n{self.log_tail()}")
            if all(w in text for w in wanted):
                return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"prosody exited with {self.proc.returncode} before listening\n"
                    f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"prosody not listening within {START_TIMEOUT}s\n"
                                     f"{self.log_tail()}")
            # Polling interval of the readiness check above.
            time.sleep(0.05)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, n: int = 80) -> str:
        parts = []
        for path in (self.stdout_path, self.log_path):
            try:
                lines = path.read_text("utf-8", "replace").splitlines()[-n:]
            except OSError:
                lines = ["(none)"]
            parts.append(f"--- {path} ---\n" + "\n".join(lines))
        return "\n".join(parts)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    """(Outpost for o.test, Prosody for p.test), each told where the other listens."""
    if shutil.which("prosody") is None or shutil.which("prosodyctl") is None:
        raise AssertionError("prosody is not installed (tests/interop/run.sh installs it)")
    outpost = OutpostServer(
        tmp_path_factory.mktemp("federation_outpost"),
        domain=O_DOMAIN,
        s2s_listen="127.0.0.1:0",
        config_overrides=f"""
[federation]
enabled = true
require_tls = true
retry_initial_secs = 1
retry_max_secs = 2
probe_interval_secs = 1
# Every peer is listed below; DNS is never asked (tests send traffic to loopback only).
srv_lookup = false

[federation.peers]
"{P_DOMAIN}" = "{P_HOST}:{P_S2S}"
""")
    # Not under pytest's private temp directory: Prosody runs as its own user.
    pdir = Path(tempfile.mkdtemp(prefix="outpost-interop-prosody-"))
    os.chmod(pdir, 0o755)
    prosody = ProsodyServer(pdir, routes={})
    try:
        outpost.start()
        prosody.routes = {O_DOMAIN: outpost.s2s_addr}
        prosody.write_config()
        prosody.start()
        yield outpost, prosody
    except BaseException:
        print(f"--- outpost stderr ---\n{outpost.log_tail(120)}\n{prosody.log_tail(120)}")
        raise
    finally:
        code = prosody.stop()
        outpost_alive = outpost.alive()
        outpost_code = outpost.stop()
        shutil.rmtree(pdir, ignore_errors=True)
    assert outpost_alive, f"outpost died during the tests\n{outpost.log_tail()}"
    assert outpost_code == 0, f"outpost exited with {outpost_code}\n{outpost.log_tail()}"
    assert code == 0, f"prosody exited with {code}"


def diagnostics(outpost: OutpostServer, prosody: ProsodyServer) -> str:
    return f"\n--- outpost stderr ---\n{outpost.log_tail(60)}\n{prosody.log_tail(60)}"


async def pair(outpost: OutpostServer, prosody: ProsodyServer) -> tuple[Client, Client]:
    """A fresh user on each side, logged in (roster fetched, initial presence sent)."""
    on, pn = uname("olga"), uname("paul")
    outpost.add_user_cli(on, PASSWORD)
    prosody.register(pn, PASSWORD)
    o = await login(outpost, on, PASSWORD)
    p = await login(prosody, pn, PASSWORD)
    return o, p


@pytest.mark.timeout_s(120)
async def test_outpost_to_prosody_message_and_reply(federation):
    outpost, prosody = federation
    o, p = await pair(outpost, prosody)
    try:
        await message_and_reply(o, p, "o.test", "p.test", "hello from outpost",
                                "hello from prosody")
    except AssertionError as e:
        raise AssertionError(f"{e}{diagnostics(outpost, prosody)}") from None
    finally:
        await stop_all([o, p])


@pytest.mark.timeout_s(120)
async def test_prosody_to_outpost_message_and_reply(federation):
    outpost, prosody = federation
    o, p = await pair(outpost, prosody)
    try:
        await message_and_reply(p, o, "p.test", "o.test", "first from prosody",
                                "answer from outpost")
    except AssertionError as e:
        raise AssertionError(f"{e}{diagnostics(outpost, prosody)}") from None
    finally:
        await stop_all([o, p])


@pytest.mark.timeout_s(120)
async def test_subscription_and_presence_across_servers(federation):
    outpost, prosody = federation
    o, p = await pair(outpost, prosody)
    try:
        # o.test's user asks; p.test's user approves and asks back; o.test's user approves.
        o.send_presence(pto=p.bare, ptype="subscribe")
        await p.presences.wait_for(
            lambda x: x["type"] == "subscribe" and x["from"].bare == o.bare, timeout=60,
            what=f"subscribe from {o.bare}")
        p.send_presence(pto=o.bare, ptype="subscribed")
        await o.presences.wait_for(
            lambda x: x["type"] == "subscribed" and x["from"].bare == p.bare, timeout=60,
            what=f"subscribed from {p.bare}")
        await o.roster_pushes.wait_for(push_for(p.bare, "to"), timeout=60,
                                       what=f"push {p.bare}=to")
        # Having approved, Prosody sends p's current presence to o.
        await o.presences.wait_for(is_available_from(p.full), timeout=60,
                                   what=f"available from {p.full}")

        p.send_presence(pto=o.bare, ptype="subscribe")
        await o.presences.wait_for(
            lambda x: x["type"] == "subscribe" and x["from"].bare == p.bare, timeout=60,
            what=f"subscribe from {p.bare}")
        o.send_presence(pto=p.bare, ptype="subscribed")
        await p.presences.wait_for(
            lambda x: x["type"] == "subscribed" and x["from"].bare == o.bare, timeout=60,
            what=f"subscribed from {o.bare}")
        await o.roster_pushes.wait_for(push_for(p.bare, "both"), timeout=60,
                                       what=f"push {p.bare}=both")
        await p.roster_pushes.wait_for(push_for(o.bare, "both"), timeout=60,
                                       what=f"push {o.bare}=both")
        await p.presences.wait_for(is_available_from(o.full), timeout=60,
                                   what=f"available from {o.full}")

        # Both rosters agree after the handshake, as each server stored them.
        assert (await o.fetch_roster())[p.bare]["subscription"] == "both"
        assert (await p.fetch_roster())[o.bare]["subscription"] == "both"

        # A status change reaches the contact on the other server.
        since = len(p.presences.items)
        o.send_presence(pstatus="busy over here", pshow="dnd")
        changed = await p.presences.wait_for(
            lambda x: x["from"] == o.boundjid and x["show"] == "dnd", timeout=60,
            what="o's dnd presence", since=since)
        assert changed["status"] == "busy over here", changed
    except AssertionError as e:
        raise AssertionError(f"{e}{diagnostics(outpost, prosody)}") from None
    finally:
        await stop_all([o, p])
