"""Federation with ejabberd (Debian's 23.01 package): server-to-server in both directions.

Outpost serves ``o.test`` (s2s on 127.0.0.1, a port picked by the kernel) and reaches
``e.test`` through ``federation.peers``; ejabberd serves ``e.test`` on 127.0.0.3 (c2s 5222,
s2s 5269), as its own Erlang node with its own configuration, Mnesia spool and logs in a
temporary directory, never the system service.

How ejabberd finds ``o.test`` without DNS. ejabberd 23.01 looks up SRV records with
Erlang's DNS client (``inet_res``) and then the address with the C library's
``getaddrinfo``, which ignores Erlang's ``inetrc``. So the node runs in a private mount
namespace (``unshare --mount``) where ``/etc/hosts`` is a copy of the machine's plus
``127.0.0.1 o.test`` and ``/etc/resolv.conf`` names only 127.0.0.3 (nothing answers DNS
there, so a stray query fails at once and stays on loopback); its ``inetrc`` names no
nameserver at all, so the SRV lookups fail without a packet; and ``outgoing_s2s_port``
is Outpost's s2s port. Nothing outside that namespace changes.

Erlang distribution (for ``ejabberdctl``) uses a fixed port picked for the run
(``ERL_DIST_PORT``), so no ``epmd`` is started: everything the test starts is in one
process group, stopped with ``ejabberdctl stop`` and, should that fail, killed as a group.

Both sides use self-signed certificates: STARTTLS is required on every s2s stream
(``s2s_use_starttls: required``) and ``mod_s2s_dialback`` authenticates (with it enabled
for a peer, ejabberd does not insist on a verifiable certificate). ejabberd offers no
XEP-0198 on s2s, so Outpost's ``federation.ack_without_sm`` policy (``on-write``) removes
queued stanzas once written; the in-order test checks that they all still arrive.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from outpost_harness import OutpostServer, server_env
from test_roster_presence import push_for
from xmpp_helpers import (Client, is_available_from, is_unavailable_from, login,
                          message_and_reply, stop_all, uname)

O_DOMAIN = "o.test"
E_DOMAIN = "e.test"
E_HOST = "127.0.0.3"
E_C2S = 5222
E_S2S = 5269
PASSWORD = "federation-secret"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CTL_TIMEOUT = 60.0
EJABBERD_USER = "ejabberd"


def free_loopback_port() -> int:
    """A TCP port the kernel considers free on 127.0.0.1 (for Erlang distribution)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EjabberdServer:
    """One ejabberd node for ``e.test`` (the duck type xmpp_helpers.Client needs:
    ``domain``, ``cert_path``, ``starttls_addr``)."""

    domain = E_DOMAIN

    def __init__(self, workdir: Path, outpost_s2s: tuple[str, int]):
        self.workdir = workdir
        self.outpost_s2s = outpost_s2s
        self.proc: subprocess.Popen | None = None
        self.node = "outposttest@localhost"
        self.dist_port = free_loopback_port()
        self.cert_path = workdir / "cert.pem"
        self.key_path = workdir / "key.pem"
        self.config_path = workdir / "ejabberd.yml"
        self.ctl_config_path = workdir / "ejabberdctl.cfg"
        self.hosts_path = workdir / "hosts"
        self.resolv_path = workdir / "resolv.conf"
        self.logs = workdir / "logs"
        self.spool = workdir / "spool"
        self.log_path = self.logs / "ejabberd.log"
        self.stdout_path = workdir / "ejabberd.stdout.log"
        # ejabberdctl runs only as root (switching to its user) or as that user; setpriv
        # switches without su's PAM session (as bench/servers.sh does).
        self.as_user = ["setpriv", "--reuid", EJABBERD_USER, "--regid", EJABBERD_USER,
                        "--init-groups"]

    @property
    def starttls_addr(self) -> tuple[str, int]:
        return (E_HOST, E_C2S)

    def env(self) -> dict[str, str]:
        # The Erlang cookie lives in $HOME: the node and every ejabberdctl call share it.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ERL_", "EJABBERD"))}
        env["HOME"] = str(self.workdir)
        return env

    def ctl_args(self) -> list[str]:
        return [*self.as_user, "ejabberdctl",
                "--config-dir", str(self.workdir), "--config", str(self.config_path),
                "--ctl-config", str(self.ctl_config_path), "--logs", str(self.logs),
                "--spool", str(self.spool), "--node", self.node]

    def write_config(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.spool.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={self.domain}", "-addext", f"subjectAltName=DNS:{self.domain}",
             "-keyout", str(self.key_path), "-out", str(self.cert_path)],
            check=True, capture_output=True, timeout=60)
        o_host, o_port = self.outpost_s2s
        machine_hosts = Path("/etc/hosts").read_text("utf-8", "replace")
        self.hosts_path.write_text(
            f"{machine_hosts.rstrip()}\n# tests/interop: Outpost's s2s listener\n"
            f"{o_host} {O_DOMAIN}\n")
        self.resolv_path.write_text(
            f"# tests/interop: no resolver answers here; lookups stay on loopback\n"
            f"nameserver {E_HOST}\n")
        # ejabberdctl points ERL_INETRC at <config dir>/inetrc, for the node and for its
        # own control nodes (which reach the node at "localhost"). No resolv.conf and no
        # nameserver: inet_res (SRV lookups) fails without sending anything.
        (self.workdir / "inetrc").write_text(
            f'{{host, {{{o_host.replace(".", ",")}}}, ["{O_DOMAIN}"]}}.\n'
            '{host, {127,0,0,1}, ["localhost"]}.\n'
            '{lookup, [file]}.\n'
            '{resolv_conf, ""}.\n'
            '{hosts_file, ""}.\n')
        self.ctl_config_path.write_text(f"""\
# Written by tests/interop/test_federation_ejabberd.py
ERLANG_NODE={self.node}
ERL_DIST_PORT={self.dist_port}
EJABBERD_PID_PATH={self.workdir}/ejabberd.pid
EJABBERD_BYPASS_WARNINGS=true
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 -kernel inet_dist_use_interface {{127,0,0,1}}"
""")
        self.config_path.write_text(f"""\
# Written by tests/interop/test_federation_ejabberd.py
hosts:
  - {self.domain}
loglevel: info
log_rotate_count: 0
hide_sensitive_log_data: false
certfiles:
  - {self.cert_path}
  - {self.key_path}
listen:
  - port: {E_C2S}
    ip: "{E_HOST}"
    module: ejabberd_c2s
    starttls_required: true
  - port: {E_S2S}
    ip: "{E_HOST}"
    module: ejabberd_s2s_in
s2s_use_starttls: required
outgoing_s2s_port: {o_port}
outgoing_s2s_families:
  - ipv4
outgoing_s2s_ipv4_address: "{E_HOST}"
s2s_dns_timeout: 2
s2s_dns_retries: 1
s2s_max_retry_delay: 2
auth_method: internal
auth_password_format: scram
default_db: mnesia
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  s2s:
    allow: all
shaper_rules:
  c2s_shaper: none
  s2s_shaper: none
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
  mod_offline: {{}}
  mod_s2s_dialback: {{}}
""")
        shutil.chown(self.workdir, EJABBERD_USER, EJABBERD_USER)
        for p in self.workdir.rglob("*"):
            shutil.chown(p, EJABBERD_USER, EJABBERD_USER)

    def start(self) -> None:
        # Root mounts the private /etc/hosts and /etc/resolv.conf in a new mount namespace,
        # then becomes the ejabberd user and runs the node in the foreground.
        script = ('mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf '
                  '&& shift 2 && exec "$@" foreground')
        with open(self.stdout_path, "ab") as out:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--",
                 "sh", "-c", script, "sh", str(self.hosts_path), str(self.resolv_path),
                 *self.ctl_args()],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self.env(), cwd=self.workdir, start_new_session=True)
        wanted = [f"Start accepting TCP connections at {E_HOST}:{port} for {mod}"
                  for port, mod in ((E_C2S, "ejabberd_c2s"), (E_S2S, "ejabberd_s2s_in"))]
        wanted.append(f"is started in the node {self.node}")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            text = self.log_text()
            if "Failed to open socket" in text or "eaddrinuse" in text:
                raise AssertionError(f"ejabberd could not listen\n{self.log_tail()}")
            if all(w in text for w in wanted):
                return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"ejabberd exited with {self.proc.returncode} before listening\n"
                    f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"ejabberd not listening within {START_TIMEOUT}s\n"
                                     f"{self.log_tail()}")
            # Polling interval of the readiness check above.
            time.sleep(0.1)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.ctl_args(), *args], capture_output=True, text=True,
                              timeout=CTL_TIMEOUT, env=self.env(), cwd=self.workdir,
                              stdin=subprocess.DEVNULL)

    def register(self, localpart: str, password: str) -> None:
        res = self.ctl("register", localpart, self.domain, password)
        assert res.returncode == 0, (
            f"ejabberdctl register {localpart} failed ({res.returncode}):\n"
            f"{res.stdout}\n{res.stderr}")

    def stop(self) -> int | None:
        """``ejabberdctl stop``, then wait for the node; kills its process group (every
        process this test started for it) if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.ctl("stop")
            except subprocess.TimeoutExpired:
                pass
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            # Still ours (not reaped), so the group id is still this node's group.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            return None
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 80) -> str:
        parts = []
        for path in (self.stdout_path, self.log_path, self.logs / "error.log"):
            try:
                lines = path.read_text("utf-8", "replace").splitlines()[-n:]
            except OSError:
                lines = ["(none)"]
            parts.append(f"--- {path} ---\n" + "\n".join(lines))
        return "\n".join(parts)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    """(Outpost for o.test, ejabberd for e.test), each told where the other listens."""
    if shutil.which("ejabberdctl") is None:
        raise AssertionError("ejabberd is not installed (tests/interop/run.sh installs it)")
    if os.geteuid() != 0:
        raise AssertionError(
            "the ejabberd federation test needs root: ejabberdctl runs only as root or as "
            "the ejabberd user, and the node needs a private mount namespace")
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

[federation.peers]
"{E_DOMAIN}" = "{E_HOST}:{E_S2S}"
""")
    # Not under pytest's private temp directory: ejabberd runs as its own user.
    edir = Path(tempfile.mkdtemp(prefix="outpost-interop-ejabberd-"))
    os.chmod(edir, 0o755)
    ejabberd: EjabberdServer | None = None
    try:
        outpost.start()
        ejabberd = EjabberdServer(edir, outpost.s2s_addr)
        ejabberd.write_config()
        ejabberd.start()
        yield outpost, ejabberd
    except BaseException:
        print(f"--- outpost stderr ---\n{outpost.log_tail(120)}")
        if ejabberd is not None:
            print(ejabberd.log_tail(120))
        raise
    finally:
        code = ejabberd.stop() if ejabberd is not None else 0
        outpost_alive = outpost.alive()
        outpost_code = outpost.stop()
        shutil.rmtree(edir, ignore_errors=True)
    assert outpost_alive, f"outpost died during the tests\n{outpost.log_tail()}"
    assert outpost_code == 0, f"outpost exited with {outpost_code}\n{outpost.log_tail()}"
    assert code == 0, f"ejabberd exited with {code} (None: killed after {STOP_TIMEOUT}s)"


def diagnostics(outpost: OutpostServer, ejabberd: EjabberdServer) -> str:
    return f"\n--- outpost stderr ---\n{outpost.log_tail(60)}\n{ejabberd.log_tail(60)}"


async def pair(outpost: OutpostServer, ejabberd: EjabberdServer) -> tuple[Client, Client]:
    """A fresh user on each side, logged in (roster fetched, initial presence sent)."""
    on, en = uname("olga"), uname("emil")
    outpost.add_user_cli(on, PASSWORD)
    await asyncio.to_thread(ejabberd.register, en, PASSWORD)
    o = await login(outpost, on, PASSWORD)
    e = await login(ejabberd, en, PASSWORD)
    return o, e


@pytest.mark.timeout_s(120)
async def test_outpost_to_ejabberd_message_and_reply(federation):
    outpost, ejabberd = federation
    o, e = await pair(outpost, ejabberd)
    try:
        await message_and_reply(o, e, "o.test", "e.test", "hello from outpost",
                                "hello from ejabberd")
    except AssertionError as exc:
        raise AssertionError(f"{exc}{diagnostics(outpost, ejabberd)}") from None
    finally:
        await stop_all([o, e])


@pytest.mark.timeout_s(120)
async def test_ejabberd_to_outpost_message_and_reply(federation):
    outpost, ejabberd = federation
    o, e = await pair(outpost, ejabberd)
    try:
        await message_and_reply(e, o, "e.test", "o.test", "first from ejabberd",
                                "answer from outpost")
    except AssertionError as exc:
        raise AssertionError(f"{exc}{diagnostics(outpost, ejabberd)}") from None
    finally:
        await stop_all([o, e])


async def subscribe_both_ways(o: Client, e: Client) -> None:
    """o (on Outpost) subscribes to e (on ejabberd), e approves and subscribes back, o
    approves; each step waits for what the other side's server must deliver."""
    o.send_presence(pto=e.bare, ptype="subscribe")
    await e.presences.wait_for(
        lambda x: x["type"] == "subscribe" and x["from"].bare == o.bare, timeout=60,
        what=f"subscribe from {o.bare}")
    e.send_presence(pto=o.bare, ptype="subscribed")
    await o.presences.wait_for(
        lambda x: x["type"] == "subscribed" and x["from"].bare == e.bare, timeout=60,
        what=f"subscribed from {e.bare}")
    await o.roster_pushes.wait_for(push_for(e.bare, "to"), timeout=60,
                                   what=f"push {e.bare}=to")
    await e.roster_pushes.wait_for(push_for(o.bare, "from"), timeout=60,
                                   what=f"push {o.bare}=from")
    # Having approved, ejabberd sends e's current presence to o.
    await o.presences.wait_for(is_available_from(e.full), timeout=60,
                               what=f"available from {e.full}")

    e.send_presence(pto=o.bare, ptype="subscribe")
    await o.presences.wait_for(
        lambda x: x["type"] == "subscribe" and x["from"].bare == e.bare, timeout=60,
        what=f"subscribe from {e.bare}")
    o.send_presence(pto=e.bare, ptype="subscribed")
    await e.presences.wait_for(
        lambda x: x["type"] == "subscribed" and x["from"].bare == o.bare, timeout=60,
        what=f"subscribed from {o.bare}")
    await o.roster_pushes.wait_for(push_for(e.bare, "both"), timeout=60,
                                   what=f"push {e.bare}=both")
    await e.roster_pushes.wait_for(push_for(o.bare, "both"), timeout=60,
                                   what=f"push {o.bare}=both")
    # Having approved, Outpost sends o's current presence to e.
    await e.presences.wait_for(is_available_from(o.full), timeout=60,
                               what=f"available from {o.full}")


@pytest.mark.timeout_s(120)
async def test_subscription_handshake_both_ways(federation):
    outpost, ejabberd = federation
    o, e = await pair(outpost, ejabberd)
    try:
        await subscribe_both_ways(o, e)
        # Both rosters agree after the handshake, as each server stored them.
        o_item = (await o.fetch_roster())[e.bare]
        e_item = (await e.fetch_roster())[o.bare]
        assert o_item["subscription"] == "both" and not o_item["ask"], o_item
        assert e_item["subscription"] == "both" and not e_item["ask"], e_item
    except AssertionError as exc:
        raise AssertionError(f"{exc}{diagnostics(outpost, ejabberd)}") from None
    finally:
        await stop_all([o, e])


@pytest.mark.timeout_s(150)
async def test_presence_available_and_unavailable_both_ways(federation):
    outpost, ejabberd = federation
    o, e = await pair(outpost, ejabberd)
    clients = [o, e]
    try:
        await subscribe_both_ways(o, e)

        # A status change on each side reaches the contact on the other.
        since = len(e.presences.items)
        o.send_presence(pstatus="busy over here", pshow="dnd")
        changed = await e.presences.wait_for(
            lambda x: str(x["from"]) == o.full and x["show"] == "dnd", timeout=60,
            what="o's dnd presence", since=since)
        assert changed["status"] == "busy over here", changed
        since = len(o.presences.items)
        e.send_presence(pstatus="back soon", pshow="away")
        changed = await o.presences.wait_for(
            lambda x: str(x["from"]) == e.full and x["show"] == "away", timeout=60,
            what="e's away presence", since=since)
        assert changed["status"] == "back soon", changed

        # ejabberd's user logs out: Outpost's user sees it go, then come back.
        e_full, since = e.full, len(o.presences.items)
        await e.stop()
        await o.presences.wait_for(is_unavailable_from(e_full), timeout=60, since=since,
                                   what=f"unavailable from {e_full}")
        e2 = await login(ejabberd, e.localpart, PASSWORD, resource="second")
        clients.append(e2)
        await o.presences.wait_for(is_available_from(e2.full), timeout=60,
                                   what=f"available from {e2.full}")
        # And the new session learns o's presence from Outpost (RFC 6121 §4.2.2: the
        # contact's server answers the probe ejabberd sends at initial presence).
        await e2.presences.wait_for(is_available_from(o.full), timeout=60,
                                    what=f"available from {o.full} after probe")

        # Outpost's user logs out: ejabberd's user sees it go, then come back.
        o_full, since = o.full, len(e2.presences.items)
        await o.stop()
        await e2.presences.wait_for(is_unavailable_from(o_full), timeout=60, since=since,
                                    what=f"unavailable from {o_full}")
        o2 = await login(outpost, o.localpart, PASSWORD, resource="second")
        clients.append(o2)
        await e2.presences.wait_for(is_available_from(o2.full), timeout=60,
                                    what=f"available from {o2.full}")
        await o2.presences.wait_for(is_available_from(e2.full), timeout=60,
                                    what=f"available from {e2.full} after probe")
    except AssertionError as exc:
        raise AssertionError(f"{exc}{diagnostics(outpost, ejabberd)}") from None
    finally:
        await stop_all(clients)


def is_chat_from(jid: str):
    return lambda m: m["from"].bare == jid and m["type"] == "chat" and bool(m["body"])


@pytest.mark.timeout_s(150)
async def test_messages_in_order_both_ways_without_stream_management(federation):
    """ejabberd offers no XEP-0198 on s2s, so Outpost's link runs without acknowledgements
    and `federation.ack_without_sm = "on-write"` removes what it wrote from the queue.
    Messages still all arrive, once, in the order they were sent."""
    outpost, ejabberd = federation
    o, e = await pair(outpost, ejabberd)
    n = 30
    try:
        for i in range(n):
            o.send_message(mto=e.bare, mbody=f"o{i:03}", mtype="chat")
            e.send_message(mto=o.bare, mbody=f"e{i:03}", mtype="chat")
        at_e = await e.messages.wait_count(is_chat_from(o.bare), n, timeout=60,
                                           what=f"messages from {o.bare}")
        at_o = await o.messages.wait_count(is_chat_from(e.bare), n, timeout=60,
                                           what=f"messages from {e.bare}")
        assert [m["body"] for m in at_e] == [f"o{i:03}" for i in range(n)], at_e
        assert [m["body"] for m in at_o] == [f"e{i:03}" for i in range(n)], at_o

        # Outpost's link to e.test came up without stream management, and its queue is
        # empty: every stanza left the queue when it was written.
        log = outpost.log_path.read_text("utf-8", "replace")
        assert re.search(r"link up.*stream_management=false", log), (
            "no 'link up stream_management=false' in Outpost's log")
        await wait_queue_empty(outpost)

        # ejabberd reached Outpost where it was meant to: Outpost's s2s listener
        # authenticated e.test on a stream from ejabberd's address, and ejabberd's own
        # log has its stream to o.test authenticated (dialback over TLS) at the address
        # in its private /etc/hosts.
        assert re.search(r"s2s_in\{peer=127\.0\.0\.3:\d+\}.*peer authenticated peer=e\.test",
                         log), "Outpost logged no authenticated s2s stream from 127.0.0.3"
        text = ejabberd.log_text()
        assert re.search(
            r"Accepted outbound s2s dialback authentication e\.test -> o\.test \(127\.0\.0\.1\)",
            text), "ejabberd logged no dialback-authenticated stream to o.test at 127.0.0.1"
        assert re.search(
            r"\(tls\|[^)]*\) Accepted inbound s2s dialback authentication o\.test -> e\.test",
            text), "ejabberd logged no dialback-authenticated TLS stream from o.test"
    except AssertionError as exc:
        raise AssertionError(f"{exc}{diagnostics(outpost, ejabberd)}") from None
    finally:
        await stop_all([o, e])


async def wait_queue_empty(outpost: OutpostServer, timeout: float = 30) -> None:
    """`outpost admin links --json` until the o.test → e.test link is up with nothing
    queued (it reads the queue from the store, which lags the delivery by one write)."""
    deadline = time.monotonic() + timeout
    while True:
        res = await asyncio.to_thread(
            subprocess.run,
            [outpost.binary, "admin", "links", "--json", "--config", str(outpost.config_path)],
            capture_output=True, text=True, timeout=30, env=server_env())
        assert res.returncode == 0, f"outpost admin links failed: {res.stderr}"
        rows = [r for r in json.loads(res.stdout)
                if r.get("local") == O_DOMAIN and r.get("remote") == E_DOMAIN]
        if rows and rows[0].get("state") == "up" and rows[0].get("queued") == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"link o.test -> e.test not up with an empty queue: {rows}")
        # Polling interval of the queue check above.
        await asyncio.sleep(0.2)
