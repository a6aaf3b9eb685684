"""Stream management (XEP-0198) with slixmpp's xep_0198 plugin: acknowledgements both
ways, and resumption after a link failure, driven through a TcpRelay so that the failure
happens exactly where the test wants it (in the middle of a burst of messages)."""

from __future__ import annotations

import asyncio
import base64
import collections
import re

import pytest
from slixmpp.plugins.xep_0198 import stanza as sm_stanza
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from xmpp_helpers import (
    STREAM_HEADER, Client, RawConn, Recorder, TcpRelay, create_user, login, ssl_context_for,
    stop_all, uname,
)

PASSWORD = "sm-secret"
SM_NS = "urn:xmpp:sm:3"
# Requests acks only when the test says so (the plugin's default asks every 5 stanzas).
QUIET_SM = {"xep_0198": {"window": 100000}}


class SmWatch:
    """Records the SM nonzas a client receives, and the acks it sends."""

    def __init__(self, c: Client):
        self.enabled = c.record("sm_enabled")
        self.resumed = c.record("session_resumed")
        self.sm_failed = c.record("sm_failed")
        self.session_starts = c.record("session_start")
        self.acks_in = c.record("outpost_sm_ack_in")      # <a/> from the server
        self.requests_in = c.record("outpost_sm_r_in")    # <r/> from the server
        self.acks_out = Recorder(f"{c.localpart} acks sent")  # h of every <a/> we sent
        c.register_handler(Callback("interop SM ack in", MatchXPath(sm_stanza.Ack.tag_name()),
                                    lambda s: c.event("outpost_sm_ack_in", s), instream=True))
        c.register_handler(Callback("interop SM r in",
                                    MatchXPath(sm_stanza.RequestAck.tag_name()),
                                    lambda s: c.event("outpost_sm_r_in", s), instream=True))
        plugin = c["xep_0198"]
        original = plugin.send_ack

        def send_ack():
            self.acks_out.add(plugin.handled)
            original()
        plugin.send_ack = send_ack


async def sm_client(server, name: str, relay: TcpRelay | None = None, **kw) -> tuple[Client, SmWatch]:
    c = Client(server, name, PASSWORD, plugins=["xep_0198"], plugin_config=QUIET_SM,
               address=relay.addr if relay else None, **kw)
    watch = SmWatch(c)
    await c.start()
    return c, watch


def bodies_of(c: Client, sender: str, prefix: str) -> list[str]:
    return [m["body"] for m in c.messages.items
            if m["from"].bare == sender and m["body"].startswith(prefix)]


async def test_sm_enabled_and_acks_both_ways(server):
    """(slixmpp sends its roster request right after <enable/>, before <enabled/> comes
    back; a server that does not count a stanza read together with <enable/> answers with
    an h one short here, intermittently: test_stanza_right_after_enable_is_counted makes
    that case deterministic.)"""
    an, bn = uname("smack"), uname("smpeer")
    await create_user(server, an, PASSWORD)
    await create_user(server, bn, PASSWORD)
    a, watch = await sm_client(server, an)
    b = await login(server, bn, PASSWORD)
    try:
        # <enabled/> with resumption (slixmpp asks for it by default): an id and, if
        # given, a positive max.
        assert "stream_management" in a.features, a.features
        enabled = watch.enabled.items[0]
        assert enabled.xml.tag == f"{{{SM_NS}}}enabled", enabled
        assert enabled.xml.get("resume") in ("true", "1"), enabled
        assert enabled.xml.get("id"), f"<enabled/> without an id: {enabled}"
        if enabled.xml.get("max") is not None:
            assert int(enabled.xml.get("max")) > 0, enabled

        # Client -> server: after k more stanzas, <r/> is answered with h = every
        # stanza the client sent since <enable/>.
        plugin = a["xep_0198"]
        await b.ping_server()
        for i in range(7):
            a.send_message(mto=b.bare, mbody=f"counted #{i}", mtype="chat")
        await a.ping_server()
        want = plugin.seq
        assert want >= 9, f"plugin counted only {want} stanzas"
        plugin.request_ack()
        ack = await watch.acks_in.wait_for(lambda x: int(x["h"]) == want, timeout=10,
                                           what=f"<a h='{want}'/> from the server")
        assert ack.xml.tag == f"{{{SM_NS}}}a"
        assert len(plugin.unacked_queue) == 0, "acked stanzas still queued by slixmpp"
        await b.messages.wait_count(lambda m: m["from"].bare == a.bare, 7, what="counted messages")

        # Server -> client: stanzas sent to a managed stream are followed by <r/>, which
        # the plugin answers with its handled count; the server accepts that <a/> (the
        # stream goes on: a ping round trip still works).
        base = plugin.handled
        mark = len(watch.requests_in.items)
        for i in range(5):
            b.send_message(mto=a.bare, mbody=f"to ack #{i}", mtype="chat")
        await a.messages.wait_count(lambda m: m["from"].bare == b.bare, 5, what="messages to ack")
        await watch.requests_in.wait_for(lambda _: True, since=mark,
                                         what="<r/> from the server after it sent messages")
        # The plugin answered with a count that includes at least the first message.
        await watch.acks_out.wait_for(lambda h: h > base, what="slixmpp's <a/> to the <r/>")
        await a.ping_server()
        assert not a.stream_errors.items, a.stream_errors.items
    finally:
        await stop_all([a, b])


@pytest.mark.timeout_s(60)
async def test_resume_after_cut_mid_burst_delivers_every_message_once(server):
    """The receiver's link goes dark in the middle of a burst (the relay drops what the
    server writes), then dies; more messages arrive while it is gone. It reconnects and
    resumes: every message 0..N-1 arrives exactly once, in order. Against a cluster, the
    relay balances: the receiver resumes at the other node, where its session moves."""
    sn, rn = uname("smsend"), uname("smrecv")
    await create_user(server, sn, PASSWORD)
    await create_user(server, rn, PASSWORD)
    relay = await TcpRelay(server.starttls_addr, server.starttls_addr).start()
    s = await login(server, sn, PASSWORD)
    r, watch = await sm_client(server, rn, relay)
    n, first, dark = 60, 20, 40
    prefix = "burst #"
    try:
        sm_id = watch.enabled.items[0]["id"]
        assert sm_id, watch.enabled.items[0]
        await r.ping_server()  # r's initial presence is in: the bare JID reaches it

        # 1. Messages 0..19 arrive normally.
        for i in range(first):
            s.send_message(mto=r.bare, mbody=f"{prefix}{i:02d}", mtype="chat")
        await r.messages.wait_count(lambda m: m["body"].startswith(prefix), first,
                                    what="the first messages")

        # 2. The link goes dark downstream: 20..39 are written by the server and lost.
        link = relay.links[-1]
        link.blackhole(down=True)
        for i in range(first, dark):
            s.send_message(mto=r.bare, mbody=f"{prefix}{i:02d}", mtype="chat")
        await s.ping_server()
        # The server wrote them: at least ~100 bytes each reached the relay and vanished.
        await relay.wait_until(lambda: link.dropped_down >= (dark - first) * 100,
                               what="the server's writes of the lost messages")
        assert len(bodies_of(r, s.bare, prefix)) == first

        # 3. The connection dies; 40..59 are sent while the receiver is away.
        lost = r.disconnects.items[:]
        link.cut()
        await r.disconnects.wait_for(lambda _: True, since=len(lost),
                                     what="the receiver noticing the cut")
        for i in range(dark, n):
            s.send_message(mto=r.bare, mbody=f"{prefix}{i:02d}", mtype="chat")
        await s.ping_server()

        # 4. Reconnect through the relay and resume.
        r.connect(*relay.addr)
        resumed = await watch.resumed.wait_for(lambda _: True, what="<resumed/>")
        assert resumed.xml.tag == f"{{{SM_NS}}}resumed", resumed
        assert resumed["previd"] == sm_id, resumed
        assert resumed.xml.get("h") is not None, f"<resumed/> without h: {resumed}"
        assert not watch.sm_failed.items, f"resumption failed: {watch.sm_failed.items}"

        await r.messages.wait_count(lambda m: m["body"].startswith(prefix), n,
                                    what="all burst messages after resumption")
        # Barrier: anything resent twice would come before this answer.
        await r.ping_server()
        got = bodies_of(r, s.bare, prefix)
        counts = collections.Counter(got)
        expected = [f"{prefix}{i:02d}" for i in range(n)]
        dupes = sorted(b for b, k in counts.items() if k > 1)
        missing = sorted(set(expected) - set(got))
        assert not dupes and not missing, f"duplicates {dupes}, missing {missing}"
        assert got == expected, f"out of order: {got}"
        assert len(watch.session_starts.items) == 1, "a new session was started, not resumed"

        # The resumed stream carries new traffic both ways.
        s.send_message(mto=r.bare, mbody="after resume", mtype="chat")
        await r.messages.wait_for(lambda m: m["body"] == "after resume", what="a new message")
        r.send_message(mto=s.bare, mbody="back after resume", mtype="chat")
        await s.messages.wait_for(lambda m: m["body"] == "back after resume", what="the reply")
    finally:
        await stop_all([s, r])
        await relay.close()


@pytest.mark.timeout_s(60)
async def test_resume_resends_what_the_server_did_not_handle(server):
    """The sender's link goes dark upstream: messages it wrote never reach the server.
    On resumption the server's <resumed h=.../> says what it handled; slixmpp resends the
    rest and the recipient gets every message exactly once. (An h one short, as with the
    <enable/> counting fault test_stanza_right_after_enable_is_counted pins down, would
    make slixmpp resend a stanza the server already handled.) Against a cluster, the
    sender resumes at the other node."""
    sn, rn = uname("smup"), uname("smuprcv")
    await create_user(server, sn, PASSWORD)
    await create_user(server, rn, PASSWORD)
    relay = await TcpRelay(server.starttls_addr, server.starttls_addr).start()
    r = await login(server, rn, PASSWORD)
    s, watch = await sm_client(server, sn, relay)
    prefix = "up #"
    try:
        await r.ping_server()
        # 0..9 reach the server (the ping proves it) but are not acknowledged yet.
        for i in range(10):
            s.send_message(mto=r.bare, mbody=f"{prefix}{i:02d}", mtype="chat")
        await s.ping_server()
        handled_by_server = s["xep_0198"].seq
        link = relay.links[-1]
        link.blackhole(down=False, up=True)
        # 10..24 are written by the client and dropped on the way.
        for i in range(10, 25):
            s.send_message(mto=r.bare, mbody=f"{prefix}{i:02d}", mtype="chat")
        await relay.wait_until(lambda: link.dropped_up >= 15 * 100,
                               what="the client's writes of the lost messages")
        lost = s.disconnects.items[:]
        link.cut()
        await s.disconnects.wait_for(lambda _: True, since=len(lost), what="the sender noticing")

        s.connect(*relay.addr)
        resumed = await watch.resumed.wait_for(lambda _: True, what="<resumed/>")
        assert int(resumed["h"]) == handled_by_server, (
            f"server says it handled {resumed['h']} stanzas; the client had sent "
            f"{handled_by_server} before the link went dark: {resumed}")

        await r.messages.wait_count(lambda m: m["body"].startswith(prefix), 25,
                                    what="all 25 messages")
        await s.ping_server()
        await r.ping_server()
        got = bodies_of(r, s.bare, prefix)
        assert got == [f"{prefix}{i:02d}" for i in range(25)], got
    finally:
        await stop_all([s, r])
        await relay.close()


async def raw_bound_session(server, name: str) -> RawConn:
    """A raw direct-TLS connection, authenticated (PLAIN) and bound; the buffer is cleared."""
    raw = await RawConn.open(server.tls_addr, ssl_ctx=ssl_context_for(server))
    await raw.send(STREAM_HEADER)
    await raw.read_until(b"</stream:features>")
    creds = base64.b64encode(f"\0{name}\0{PASSWORD}".encode()).decode()
    raw.buf = b""
    await raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>")
    await raw.read_until(b"<success")
    raw.buf = b""
    await raw.send(STREAM_HEADER)
    await raw.read_until(b"</stream:features>")
    assert b"urn:xmpp:sm:3" in raw.buf, f"no <sm/> stream feature after authentication: {raw.buf!r}"
    raw.buf = b""
    await raw.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    await raw.read_until(b"</iq>")
    raw.buf = b""
    return raw


async def read_match(raw: RawConn, pattern: re.Pattern, what: str, timeout: float = 20):
    """Read until pattern matches the buffer (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (m := pattern.search(raw.buf)) is None:
        remaining = deadline - loop.time()
        if remaining <= 0 or raw.eof:
            raise AssertionError(f"no {what} (eof={raw.eof}); received: {raw.buf[-2000:]!r}")
        await raw._read_some(remaining)
    return m


PING_RESULT_RE = re.compile(rb"<iq[^>]*id=['\"]ping1['\"][^>]*(/>|>.*?</iq>)", re.S)
A_RE = re.compile(rb"<a\s+xmlns=['\"]urn:xmpp:sm:3['\"]\s+h=['\"](\d+)['\"]\s*/>")


async def test_stanza_right_after_enable_is_counted(server):
    """XEP-0198 §4: the server's count of handled stanzas starts when it receives
    <enable/>, so a stanza the client sends right after <enable/> (as slixmpp does with
    its roster request, before <enabled/> comes back) is stanza 1. Written in one go here,
    which makes the case deterministic."""
    name = uname("smraw")
    await create_user(server, name, PASSWORD)
    raw = await raw_bound_session(server, name)
    try:
        await raw.send("<enable xmlns='urn:xmpp:sm:3'/>"
                       "<iq type='get' id='ping1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        await read_match(raw, PING_RESULT_RE, "the ping's result")
        assert b"<enabled" in raw.buf, raw.buf
        sent_before = raw.buf
        raw.buf = b""
        await raw.send("<r xmlns='urn:xmpp:sm:3'/>")
        m = await read_match(raw, A_RE, "<a/> in answer to <r/>")
        assert int(m.group(1)) == 1, (
            "the ping sent right after <enable/> was not counted: sent "
            "\"<enable xmlns='urn:xmpp:sm:3'/><iq type='get' id='ping1' to='localhost'>"
            "<ping xmlns='urn:xmpp:ping'/></iq>\" (one write), got "
            f"{sent_before!r}; then sent <r/>, got {raw.buf!r} (expected h='1')")
    finally:
        raw.close()
