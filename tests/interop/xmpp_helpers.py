"""slixmpp-based clients and raw-socket helpers for the interop suite.

Everything here waits on events with timeouts; nothing sleeps to
"let things settle"."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import ssl
from typing import Any, Callable, Iterable

import slixmpp
from slixmpp import ClientXMPP, JID
from slixmpp.exceptions import IqError, IqTimeout

from outpost_harness import DOMAIN, OutpostServer

log = logging.getLogger("interop")

DEFAULT_TIMEOUT = float(os.environ.get("OUTPOST_INTEROP_TIMEOUT", "20"))

_counter = itertools.count(1)


def uname(prefix: str) -> str:
    """A fresh, valid localpart (unique within and across runs)."""
    return f"{prefix}{next(_counter)}x{secrets.token_hex(3)}"


def bare(localpart: str) -> str:
    return f"{localpart}@{DOMAIN}"


class LoginFailed(Exception):
    """The client did not reach session_start; ``reason`` says why."""

    def __init__(self, reason: str, condition: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.condition = condition


class RegistrationFailed(LoginFailed):
    pass


# ---------------------------------------------------------------- recording
class Recorder:
    """An append-only list of received things that can be awaited on."""

    def __init__(self, name: str):
        self.name = name
        self.items: list[Any] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future]] = []

    def add(self, item: Any) -> None:
        self.items.append(item)
        for check, fut in list(self._waiters):
            if not fut.done() and check():
                fut.set_result(None)

    async def wait(self, check: Callable[[list[Any]], bool], timeout: float, what: str) -> None:
        """Wait until ``check(items)`` is true."""
        if check(self.items):
            return
        fut = asyncio.get_running_loop().create_future()
        entry = (lambda: check(self.items), fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what} on {self.name}; "
                f"got {len(self.items)} item(s): {summarize(self.items)}"
            ) from None
        finally:
            self._waiters.remove(entry)

    async def wait_for(self, pred: Callable[[Any], bool], timeout: float = DEFAULT_TIMEOUT,
                       what: str = "a matching item", since: int = 0) -> Any:
        """First item at index >= since matching pred (waiting for it)."""
        def check(items: list[Any]) -> bool:
            return any(pred(x) for x in items[since:])
        await self.wait(check, timeout, what)
        return next(x for x in self.items[since:] if pred(x))

    async def wait_count(self, pred: Callable[[Any], bool], n: int,
                         timeout: float = DEFAULT_TIMEOUT, what: str = "items") -> list[Any]:
        def check(items: list[Any]) -> bool:
            return sum(1 for x in items if pred(x)) >= n
        await self.wait(check, timeout, f"{n} {what}")
        return [x for x in self.items if pred(x)]


def summarize(items: Iterable[Any], limit: int = 8) -> str:
    items = list(items)
    shown = []
    for x in items[-limit:]:
        s = str(x)
        shown.append(s if len(s) < 300 else s[:300] + "...")
    more = "" if len(items) <= limit else f" (last {limit} of {len(items)})"
    return "[" + ", ".join(shown) + "]" + more


# ------------------------------------------------------------------- TLS
_ssl_contexts: dict[str, ssl.SSLContext] = {}


def ssl_context_for(server: OutpostServer) -> ssl.SSLContext:
    """A client context that trusts exactly the server's self-signed cert.

    OUTPOST_INTEROP_TLS_INSECURE=1 turns verification off (diagnostics only)."""
    key = str(server.cert_path)
    ctx = _ssl_contexts.get(key)
    if ctx is not None:
        return ctx
    if os.environ.get("OUTPOST_INTEROP_TLS_INSECURE") == "1":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        if not server.cert_path.is_file():
            raise AssertionError(f"server certificate not found at {server.cert_path}")
        ctx = ssl.create_default_context(cafile=str(server.cert_path))
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        # Trust the self-signed leaf itself even if it is not marked as a CA.
        ctx.verify_flags |= getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)
    _ssl_contexts[key] = ctx
    return ctx


# ---------------------------------------------------------------- client
class Client(ClientXMPP):
    """A slixmpp client that records what it receives.

    tls: "starttls" (connect to the STARTTLS listener and upgrade) or
         "direct" (XEP-0368 direct TLS listener).
    mech: force one SASL mechanism (e.g. "SCRAM-SHA-256").
    register: perform XEP-0077 in-band registration before authenticating.
    """

    def __init__(self, server: OutpostServer, localpart: str, password: str, *,
                 resource: str | None = None, tls: str = "starttls",
                 mech: str | None = None, register: bool = False,
                 plugins: Iterable[str] = (), initial_presence: bool = True,
                 request_roster: bool = True,
                 address: tuple[str, int] | None = None,
                 plugin_config: dict[str, dict] | None = None):
        # Any server object with cert_path, starttls_addr (and domain) will do.
        domain = getattr(server, "domain", DOMAIN)
        jid = f"{localpart}@{domain}" + (f"/{resource}" if resource else "")
        plugin_config = dict(plugin_config or {})
        if mech:
            plugin_config["feature_mechanisms"] = {"use_mech": mech}
        super().__init__(jid, password, plugin_config=plugin_config,
                         ssl_context=ssl_context_for(server))
        self.outpost = server
        self.localpart = localpart
        self.tls_mode = tls
        # Where to connect instead of the server's listener (e.g. a TcpRelay).
        self.address = address
        self.initial_presence = initial_presence
        self.request_roster = request_roster
        if tls == "starttls":
            self.enable_direct_tls = False
            self.enable_starttls = True
        elif tls == "direct":
            self.enable_direct_tls = True
            self.enable_starttls = False
        else:
            raise ValueError(tls)
        self.enable_plaintext = False
        # Subscription handling is done explicitly by the tests (None: neither
        # accept nor refuse on our behalf; False would auto-refuse).
        self.roster.auto_authorize = None
        self.roster.auto_subscribe = False

        self.messages = Recorder(f"{localpart} messages")
        self.presences = Recorder(f"{localpart} presences")
        self.roster_pushes = Recorder(f"{localpart} roster pushes")
        self.stream_errors = Recorder(f"{localpart} stream errors")
        self.disconnects = Recorder(f"{localpart} disconnects")
        self.failed_auth_stanzas: list[Any] = []
        self.registration_form = None
        self.registered = False
        self.used_mech: str | None = None

        for p in {"xep_0030", "xep_0199", "xep_0092", "xep_0203", *plugins}:
            self.register_plugin(p)
        if register:
            self.register_plugin("xep_0077")
            self["xep_0077"].force_registration = True
            self.add_event_handler("register", self._on_register)

        self.add_event_handler("message", lambda m: self.messages.add(m))
        self.add_event_handler("presence", lambda p: self.presences.add(p))
        self.add_event_handler("roster_update", self._on_roster_update)
        self.add_event_handler("stream_error", lambda e: self.stream_errors.add(e))
        self.add_event_handler("disconnected", lambda r: self.disconnects.add(r))
        self.add_event_handler("auth_success", self._on_auth_success)
        self.add_event_handler("failed_auth", lambda s: self.failed_auth_stanzas.append(s))

        self._started: asyncio.Future | None = None

    # ---- event handlers
    def _on_roster_update(self, iq) -> None:
        if iq["type"] == "set":
            self.roster_pushes.add(iq)

    def _on_auth_success(self, _stanza) -> None:
        mech = self["feature_mechanisms"].mech
        self.used_mech = getattr(mech, "name", None)

    async def _on_register(self, form) -> None:
        self.registration_form = form
        iq = self.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = self.boundjid.user
        iq["register"]["password"] = self.password
        try:
            await iq.send(timeout=DEFAULT_TIMEOUT)
            self.registered = True
        except IqError as e:
            cond = e.iq["error"]["condition"]
            self._fail(RegistrationFailed(f"registration refused: {cond}: {e.iq}", cond))
            self.abort()
        except IqTimeout:
            self._fail(RegistrationFailed("registration timed out"))
            self.abort()

    def _fail(self, exc: Exception) -> None:
        if self._started is not None and not self._started.done():
            self._started.set_exception(exc)

    # ---- lifecycle
    async def start(self, timeout: float = DEFAULT_TIMEOUT) -> "Client":
        loop = asyncio.get_running_loop()
        self._started = loop.create_future()
        started = self._started

        def ok(_):
            if not started.done():
                started.set_result(None)

        def bad(reason):
            def handler(data=None):
                offered = sorted(self["feature_mechanisms"].mech_list)
                self._fail(LoginFailed(
                    f"{reason}: {data!s:.500} (SASL offered: {offered}, "
                    f"failures: {[str(s) for s in self.failed_auth_stanzas]})",
                    _condition(data)))
            return handler

        handlers = [
            ("session_start", ok),
            ("failed_all_auth", bad("SASL failed (all mechanisms)")),
            ("no_auth", bad("no acceptable SASL mechanism offered")),
            ("connection_failed", bad("TCP connection failed")),
            ("stream_error", bad("stream error during login")),
            ("ssl_invalid_chain", bad("TLS certificate not trusted")),
            ("disconnected", bad("disconnected during login")),
        ]
        for name, h in handlers:
            self.add_event_handler(name, h)
        try:
            host, port = self.address or (
                self.outpost.starttls_addr if self.tls_mode == "starttls"
                else self.outpost.tls_addr)
            self.connect(host, port)
            try:
                await asyncio.wait_for(asyncio.shield(started), timeout)
            except asyncio.TimeoutError:
                raise LoginFailed(f"no session_start within {timeout}s") from None
        except BaseException:
            self.cancel_connection_attempt()
            self.abort()
            raise
        finally:
            for name, h in handlers:
                self.del_event_handler(name, h)
        # Like a normal client: get the roster (which makes this an
        # "interested resource", RFC 6121 §2.1.6), then send initial presence.
        if self.request_roster:
            self.initial_roster = await self.fetch_roster(timeout=timeout)
        if self.initial_presence:
            self.send_presence()
        return self

    async def stop(self, timeout: float = 5) -> None:
        """Close the stream politely (</stream:stream>), abort if it hangs."""
        if self.transport is None:
            return
        try:
            await asyncio.wait_for(self.disconnect(wait=timeout), timeout + 2)
        except (asyncio.TimeoutError, Exception):
            self.abort()

    def kill(self) -> None:
        """Drop the TCP connection without closing the XML stream or TLS."""
        if self.transport is not None:
            self.cancel_connection_attempt()
            self.transport.abort()

    # ---- convenience
    @property
    def bare(self) -> str:
        return self.boundjid.bare

    @property
    def full(self) -> str:
        return self.boundjid.full

    async def fetch_roster(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, dict]:
        """A roster get (no versioning); returns {bare jid: item dict}."""
        iq = self.Iq()
        iq["type"] = "get"
        iq.enable("roster")
        res = await iq.send(timeout=timeout)
        assert res["type"] == "result", res
        return {str(j): dict(v) for j, v in res["roster"]["items"].items()}

    async def roster_set(self, jid: str, *, name: str | None = None,
                         groups: Iterable[str] = (), subscription: str | None = None,
                         timeout: float = DEFAULT_TIMEOUT):
        iq = self.Iq()
        iq["type"] = "set"
        item: dict[str, Any] = {"groups": list(groups)}
        if name is not None:
            item["name"] = name
        if subscription is not None:
            item["subscription"] = subscription
        iq["roster"]["items"] = {jid: item}
        return await iq.send(timeout=timeout)

    async def ping_server(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """An XEP-0199 round trip to the server; also a barrier: everything
        this client sent before has been read and processed by its session."""
        await self["xep_0199"].send_ping(self.boundjid.domain, timeout=timeout)

    def record(self, event: str) -> Recorder:
        """A Recorder of every later occurrence of a slixmpp event."""
        rec = Recorder(f"{self.localpart} {event}")
        self.add_event_handler(event, rec.add)
        return rec


def _condition(data: Any) -> str | None:
    try:
        return data["condition"]
    except Exception:
        return None


def is_available_from(jid: str):
    def pred(p) -> bool:
        return str(p["from"]) == jid and p["type"] in ("available", "", "chat", "away", "dnd", "xa")
    return pred


def is_unavailable_from(jid: str):
    return lambda p: str(p["from"]) == jid and p["type"] == "unavailable"


def chat_from(jid: str, body: str):
    """A chat message from the bare JID `jid` with exactly this body."""
    return lambda m: m["from"].bare == jid and m["type"] == "chat" and m["body"] == body


async def message_and_reply(first: Client, second: Client, first_domain: str,
                            second_domain: str, text: str, answer: str) -> None:
    """`first` writes to `second`'s bare JID; `second` answers the full JID it came from.
    Both messages must arrive from the sender's full JID, the answer at `first`'s."""
    first.send_message(mto=second.bare, mbody=text, mtype="chat")
    got = await second.messages.wait_for(chat_from(first.bare, text), timeout=60,
                                         what=f"{first_domain}'s message at {second_domain}")
    assert str(got["from"]) == first.full, got
    # The answer travels on the other server's own stream to the first one.
    second.send_message(mto=got["from"], mbody=answer, mtype="chat")
    back = await first.messages.wait_for(chat_from(second.bare, answer), timeout=60,
                                         what=f"{second_domain}'s answer at {first_domain}")
    assert str(back["from"]) == second.full, back
    assert str(back["to"]) == first.full, back


async def login(server: OutpostServer, localpart: str, password: str, **kw) -> Client:
    timeout = kw.pop("timeout", DEFAULT_TIMEOUT)
    c = Client(server, localpart, password, **kw)
    await c.start(timeout=timeout)
    return c


async def register(server: OutpostServer, localpart: str, password: str, **kw) -> Client:
    """Register in-band and log in on the same connection; returns the client."""
    c = await login(server, localpart, password, register=True, **kw)
    assert c.registered, f"{localpart}: session started but registration not performed"
    return c


async def create_user(server: OutpostServer, localpart: str, password: str) -> None:
    c = await register(server, localpart, password, initial_presence=False,
                       request_roster=False)
    await c.stop()


async def stop_all(clients: Iterable[Client]) -> None:
    await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)


# ------------------------------------------------------------- raw socket
STREAM_HEADER = (
    "<?xml version='1.0'?>"
    f"<stream:stream to='{DOMAIN}' version='1.0' xml:lang='en' "
    "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)


class RawConn:
    """A bare asyncio TCP (optionally TLS) connection speaking raw XML."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.buf = b""
        self.eof = False

    @classmethod
    async def open(cls, addr: tuple[str, int], ssl_ctx: ssl.SSLContext | None = None,
                   timeout: float = DEFAULT_TIMEOUT) -> "RawConn":
        r, w = await asyncio.wait_for(
            asyncio.open_connection(addr[0], addr[1], ssl=ssl_ctx,
                                    server_hostname=DOMAIN if ssl_ctx else None),
            timeout)
        return cls(r, w)

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.writer.write(data)
        await self.writer.drain()

    async def read_until(self, needle: bytes, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while needle not in self.buf:
            if self.eof:
                raise AssertionError(f"EOF before {needle!r}; received: {self.buf[-2000:]!r}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timeout waiting for {needle!r}; received: {self.buf[-2000:]!r}")
            await self._read_some(remaining)
        return self.buf

    async def read_to_eof(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Read until the peer closes; AssertionError if it does not in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.eof:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"connection not closed by the server within {timeout}s; "
                    f"received: {self.buf[-2000:]!r}")
            await self._read_some(remaining)
        return self.buf

    async def _read_some(self, timeout: float) -> None:
        try:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
        except asyncio.TimeoutError:
            return
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
        self.buf += chunk

    def close(self) -> None:
        try:
            self.writer.transport.abort()
        except Exception:
            pass


# ------------------------------------------------------------- TCP relay
class RelayLink:
    """One client connection through a TcpRelay and its server-side twin."""

    def __init__(self, relay: "TcpRelay", client_w: asyncio.StreamWriter,
                 server_w: asyncio.StreamWriter):
        self.relay = relay
        self.client_w = client_w
        self.server_w = server_w
        # Forwarding switches: when off, bytes are read and dropped (counted).
        self.forward_down = True  # server -> client
        self.forward_up = True    # client -> server
        self.bytes_down = 0
        self.bytes_up = 0
        self.dropped_down = 0
        self.dropped_up = 0
        self.tasks: list[asyncio.Task] = []
        self.closed = False

    def blackhole(self, down: bool = True, up: bool = False) -> None:
        """Stop forwarding (drop whatever arrives) in the given directions; the
        sockets stay open, so neither end notices anything yet."""
        if down:
            self.forward_down = False
        if up:
            self.forward_up = False

    def cut(self) -> None:
        """Abort both sockets (RST), as a network failure would."""
        self.closed = True
        for w in (self.client_w, self.server_w):
            try:
                w.transport.abort()
            except Exception:
                pass
        for t in self.tasks:
            t.cancel()


class TcpRelay:
    """A plain TCP relay on 127.0.0.1 in front of a server address, or of several taken
    in turn (a round-robin balancer: against a cluster, a client that reconnects lands
    on the next node).

    Clients connect to ``relay.addr``; every accepted connection gets its own
    connection to the next target and two pumps. A test can stop forwarding in
    one direction (``blackhole``) and cut the sockets (``cut``) at a point it
    chooses, which makes link failures deterministic. TLS passes through
    untouched (the relay sees only ciphertext)."""

    def __init__(self, *targets: tuple[str, int]):
        assert targets, "a relay needs a target"
        self.targets = list(targets)
        self.accepted = 0
        self.links: list[RelayLink] = []
        self.addr: tuple[str, int] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._changed = asyncio.Event()
        # While set, new connections are aborted on arrival (see refuse()).
        self.refusing = False

    async def start(self) -> "TcpRelay":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.addr = self._server.sockets[0].getsockname()[:2]
        return self

    def refuse(self, on: bool = True) -> None:
        """While on, every new connection is aborted as soon as it is accepted, so a peer
        that redials finds the path down; existing links are untouched (cut them)."""
        self.refusing = on

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        if self.refusing:
            cw.transport.abort()
            return
        target = self.targets[self.accepted % len(self.targets)]
        self.accepted += 1
        try:
            sr, sw = await asyncio.wait_for(asyncio.open_connection(*target), DEFAULT_TIMEOUT)
        except Exception:
            cw.transport.abort()
            return
        link = RelayLink(self, cw, sw)
        self.links.append(link)
        link.tasks = [asyncio.ensure_future(self._pump(link, cr, sw, downstream=False)),
                      asyncio.ensure_future(self._pump(link, sr, cw, downstream=True))]
        self._notify()

    async def _pump(self, link: RelayLink, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, downstream: bool) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if downstream:
                    if link.forward_down:
                        link.bytes_down += len(data)
                        writer.write(data)
                        await writer.drain()
                    else:
                        link.dropped_down += len(data)
                else:
                    if link.forward_up:
                        link.bytes_up += len(data)
                        writer.write(data)
                        await writer.drain()
                    else:
                        link.dropped_up += len(data)
                self._notify()
            # A clean end on one side: pass it on (unless forwarding is off).
            if (link.forward_down if downstream else link.forward_up) and writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, cond: Callable[[], bool], what: str,
                         timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait (bounded) until cond() holds; re-checked whenever a link moves data."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"relay: timed out after {timeout}s waiting for {what}; "
                                     f"links: {[vars_of(l) for l in self.links]}")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        for link in self.links:
            link.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def vars_of(link: RelayLink) -> dict[str, Any]:
    return {k: getattr(link, k) for k in (
        "forward_down", "forward_up", "bytes_down", "bytes_up", "dropped_down",
        "dropped_up", "closed")}
