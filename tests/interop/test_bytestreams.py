"""SOCKS5 bytestreams (XEP-0065) through Outpost's proxy at proxy.localhost, with
slixmpp's xep_0065 plugin: the initiator finds the proxy in the server's disco#items, asks
it for its streamhost, offers it to the target, both connect, the initiator activates and
the proxy relays. Also the proxy's refusals: no activation of a stream whose ends are not
both connected (item-not-found), none for strangers on another server (forbidden)."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError

from outpost_harness import federated_outposts
from xmpp_helpers import DEFAULT_TIMEOUT, Client, stop_all, uname

PASSWORD = "bytestream-secret"
NS_BYTESTREAMS = "http://jabber.org/protocol/bytestreams"
FILE_SIZE = 200 * 1024


async def bs_user(server, prefix: str, *, accept: bool = False) -> Client:
    """A client with xep_0065 (accepting offered streams if `accept`) that records the
    bytes and closes of its SOCKS5 connections."""
    c = Client(server, uname(prefix), PASSWORD, register=True, plugins=["xep_0065"],
               plugin_config={"xep_0065": {"auto_accept": accept}})
    c.socks_data = c.record("socks5_data")
    c.socks_closed = c.record("socks5_closed")
    await c.start()
    return c


def proxy_of(c: Client) -> JID:
    return JID(f"proxy.{c.boundjid.domain}")


def stream_hash(sid: str, initiator: str, target: str) -> str:
    """DST.ADDR of a bytestream (XEP-0065 §5.3.2)."""
    return hashlib.sha1(f"{sid}{initiator}{target}".encode()).hexdigest()


async def activate_condition(c: Client, proxy: JID, sid: str, target: str) -> str | None:
    """None if the proxy activates the stream, else its error condition."""
    try:
        await c["xep_0065"].activate(proxy, sid, target, timeout=DEFAULT_TIMEOUT)
    except IqError as e:
        return e.condition
    return None


async def socks5_connect(addr: tuple[str, int], dst: str):
    """A SOCKS5 CONNECT to the proxy for `dst`, by hand (RFC 1928): no authentication,
    a domain-name address of 40 hex digits, port 0. Returns the open stream."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), DEFAULT_TIMEOUT)
    writer.write(b"\x05\x01\x00")
    assert await asyncio.wait_for(reader.readexactly(2), DEFAULT_TIMEOUT) == b"\x05\x00"
    request = b"\x05\x01\x00\x03" + bytes([len(dst)]) + dst.encode() + b"\x00\x00"
    writer.write(request)
    reply = await asyncio.wait_for(reader.readexactly(len(request)), DEFAULT_TIMEOUT)
    assert reply[:2] == b"\x05\x00" and reply[3:] == request[3:], f"SOCKS5 reply {reply!r}"
    return reader, writer


# ------------------------------------------------------------------ one server
async def test_proxy_is_discovered_and_announces_its_listener(server):
    c = await bs_user(server, "bsdisco")
    try:
        info = await c["xep_0030"].get_info(jid=proxy_of(c), timeout=DEFAULT_TIMEOUT)
        identities = {(cat, typ) for cat, typ, _l, _n in info["disco_info"]["identities"]}
        assert ("proxy", "bytestreams") in identities, identities
        assert NS_BYTESTREAMS in set(info["disco_info"]["features"]), info
        # What slixmpp finds from the server's disco#items: this proxy, announcing the
        # address and port the server bound (on a cluster, the client's node's).
        proxies = await c["xep_0065"].discover_proxies(timeout=DEFAULT_TIMEOUT)
        found = {str(jid): (host, int(port)) for jid, (host, port) in proxies.items()}
        assert list(found) == [str(proxy_of(c))], found
        assert found[str(proxy_of(c))] in server.proxy65_addrs, found
    finally:
        await c.stop()


async def test_file_through_the_proxy_arrives_byte_identical(server):
    alice = await bs_user(server, "bsfrom")
    bob = await bs_user(server, "bsto", accept=True)
    try:
        data = os.urandom(FILE_SIZE)
        accepted = bob.record("socks5_stream")
        sock = await alice["xep_0065"].handshake(bob.full, timeout=DEFAULT_TIMEOUT)
        assert sock is not None, "handshake failed (streamhost not used or not reachable)"
        await accepted.wait_for(lambda _: True, what="bob's end of the stream")
        await sock.write(data)
        sock.transport.close()
        # The proxy passes the end of alice's stream on: bob's connection closes once he
        # has everything.
        await bob.socks_closed.wait_for(lambda _: True, what="the end of the stream at bob")
        got = b"".join(bob.socks_data.items)
        assert len(got) == len(data), f"{len(got)} of {len(data)} bytes"
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), "bytes differ"
    finally:
        await stop_all([alice, bob])


async def test_activation_needs_both_ends_connected(server):
    alice = await bs_user(server, "bsinit")
    bob = await bs_user(server, "bstarget")
    writers = []
    try:
        sid = uname("sid")
        dst = stream_hash(sid, alice.full, bob.full)
        proxy = proxy_of(alice)
        # Nobody connected.
        assert await activate_condition(alice, proxy, sid, bob.full) == "item-not-found"
        # Only the target connected.
        b_reader, b_writer = await socks5_connect(server.proxy65_addr, dst)
        writers.append(b_writer)
        assert await activate_condition(alice, proxy, sid, bob.full) == "item-not-found"
        # Both: the proxy activates and relays both ways.
        a_reader, a_writer = await socks5_connect(server.proxy65_addr, dst)
        writers.append(a_writer)
        assert await activate_condition(alice, proxy, sid, bob.full) is None
        a_writer.write(b"from the initiator")
        assert await asyncio.wait_for(b_reader.readexactly(18), DEFAULT_TIMEOUT) \
            == b"from the initiator"
        b_writer.write(b"from the target")
        assert await asyncio.wait_for(a_reader.readexactly(15), DEFAULT_TIMEOUT) \
            == b"from the target"
    finally:
        for w in writers:
            w.transport.abort()
        await stop_all([alice, bob])


# ------------------------------------------------------------- two servers
@pytest.fixture(scope="module")
def outpost_pair(tmp_path_factory: pytest.TempPathFactory):
    """a.test and b.test federating on loopback; each knows the other's proxy service."""
    servers = federated_outposts(tmp_path_factory.mktemp("bytestreams_federation"),
                                 services=("proxy",))
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        alive = [s.alive() for s in servers]
        codes = [s.stop() for s in servers]
    for s, was_alive, code in zip(servers, alive, codes):
        assert was_alive, f"{s.domain} died during the tests\n{s.log_tail()}"
        assert code == 0, f"{s.domain} exited with {code}\n{s.log_tail()}"


@pytest.mark.timeout_s(120)
async def test_strangers_on_another_server_cannot_use_the_proxy(outpost_pair):
    sa, sb = outpost_pair
    local = await bs_user(sa, "bslocal")
    b1 = await bs_user(sb, "bsremote")
    b2 = await bs_user(sb, "bsremote")
    try:
        proxy = proxy_of(local)
        # The proxy itself answers a user of another server (XEP-0065 §4).
        info = await b1["xep_0030"].get_info(jid=proxy, timeout=DEFAULT_TIMEOUT)
        identities = {(cat, typ) for cat, typ, _l, _n in info["disco_info"]["identities"]}
        assert ("proxy", "bytestreams") in identities, f"{proxy} from b.test: {info}"
        # Two users of b.test: neither end is a.test's, so its proxy is no relay for them.
        assert await activate_condition(b1, proxy, uname("sid"), b2.full) == "forbidden"
        # With a user of a.test at one end the proxy would relay; it has no such stream.
        assert await activate_condition(b1, proxy, uname("sid"), local.full) \
            == "item-not-found"
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- a.test ---\n{sa.log_tail(40)}\n"
                             f"--- b.test ---\n{sb.log_tail(40)}") from None
    finally:
        await stop_all([local, b1, b2])
