"""Bad input: malformed XML and oversized stanzas end only the offending
stream (with the right stream error); everyone else keeps working."""

from __future__ import annotations

import re

import pytest

from xmpp_helpers import (
    STREAM_HEADER, RawConn, create_user, login, stop_all, uname,
)

PASSWORD = "robust-secret"
STREAMS_NS = "urn:ietf:params:xml:ns:xmpp-streams"


@pytest.fixture(scope="module")
def users(server):
    import asyncio
    names = [uname("rob") for _ in range(2)]

    async def mk():
        for n in names:
            await create_user(server, n, PASSWORD)

    asyncio.run(mk())
    return names


def assert_stream_error(data: bytes, condition: str) -> None:
    text = data.decode("utf-8", "replace")
    m = re.search(r"<(?:stream:)?error\b.*?</(?:stream:)?error>", text, re.S)
    assert m, f"no <stream:error/> in what the server sent: {text[-1500:]!r}"
    err = m.group(0)
    assert re.search(rf"<{condition}\b[^>]*xmlns=['\"]{re.escape(STREAMS_NS)}['\"]", err), (
        f"expected stream error <{condition}/>, got: {err!r}")
    assert "</stream:stream>" in text[m.end():] or text.rstrip().endswith("</stream:stream>"), (
        f"stream not closed with </stream:stream> after the error: {text[-500:]!r}")


async def check_still_working(server, users) -> None:
    a = await login(server, users[0], PASSWORD, resource="check-a")
    b = await login(server, users[1], PASSWORD, resource="check-b")
    try:
        a.send_message(mto=b.full, mbody="still alive?", mtype="chat")
        m = await b.messages.wait_for(lambda m: m["body"] == "still alive?", what="message")
        assert m["from"].bare == a.bare
    finally:
        await stop_all([a, b])


@pytest.mark.parametrize("garbage", [
    "<message><body></message>",
    "<message><body>fish & chips</body></message>",
    "<message to='x@localhost' to='y@localhost'><body>dup</body></message>",
], ids=["mismatched-tags", "bare-ampersand", "duplicate-attribute"])
async def test_malformed_xml_gets_not_well_formed(server, users, garbage):
    # A logged-in client on the same server, before and after.
    a = await login(server, users[0], PASSWORD, resource="bystander-a")
    b = await login(server, users[1], PASSWORD, resource="bystander-b")
    try:
        raw = await RawConn.open(server.starttls_addr)
        try:
            await raw.send(STREAM_HEADER)
            await raw.read_until(b"features>")
            await raw.send(garbage)
            data = await raw.read_to_eof(timeout=15)
        finally:
            raw.close()
        assert_stream_error(data, "not-well-formed")

        # Bystanders are unaffected: they can still message each other.
        a.send_message(mto=b.full, mbody="after garbage", mtype="chat")
        m = await b.messages.wait_for(lambda m: m["body"] == "after garbage", what="message")
        assert m["from"].full == a.full
        await a.ping_server()
    finally:
        await stop_all([a, b])
    await check_still_working(server, users)


async def test_garbage_instead_of_stream_header(server, users):
    raw = await RawConn.open(server.starttls_addr)
    try:
        await raw.send(b"\x16\x03\x01 this is not xml <<<>>>\n")
        data = await raw.read_to_eof(timeout=15)
    finally:
        raw.close()
    # Either a stream error or a plain close is acceptable here (the peer
    # never opened a stream); the server must not hang on to it.
    if b"error" in data:
        assert b"not-well-formed" in data or b"bad-format" in data, data
    await check_still_working(server, users)


@pytest.mark.timeout_s(120)
async def test_oversized_stanza_policy_violation(server, users):
    a = await login(server, users[0], PASSWORD, resource="big")
    b = await login(server, users[1], PASSWORD, resource="rcpt")
    c = None
    try:
        # Control: a large but acceptable stanza (100 KiB) goes through.
        medium = "m" * (100 * 1024)
        a.send_message(mto=b.full, mbody=medium, mtype="chat")
        m = await b.messages.wait_for(lambda m: m["from"].full == a.full, what="100 KiB message")
        assert m["body"] == medium

        # > 256 KiB in one stanza: policy-violation, stream closed.
        huge = "x" * (300 * 1024)
        mark = len(b.messages.items)
        a.send_raw(f"<message to='{b.full}' type='chat'><body>{huge}</body></message>")
        err = await a.stream_errors.wait_for(lambda e: True, timeout=30,
                                             what="stream error after oversized stanza")
        assert err["condition"] == "policy-violation", f"stream error: {err}"
        await a.disconnects.wait_for(lambda r: True, timeout=15, what="server closing the stream")

        # The recipient did not get it, and keeps working.
        await b.ping_server()
        assert all(len(x["body"]) < 200 * 1024 for x in b.messages.items[mark:]), \
            "the oversized message was delivered"

        c = await login(server, users[0], PASSWORD, resource="after")
        c.send_message(mto=b.full, mbody="small one", mtype="chat")
        m = await b.messages.wait_for(lambda m: m["body"] == "small one", since=mark,
                                      what="message after the oversized one")
        assert m["from"].full == c.full
    finally:
        await stop_all([x for x in (a, b, c) if x is not None])
    await check_still_working(server, users)


@pytest.mark.timeout_s(120)
async def test_oversized_stanza_raw_tls_unauthenticated(server, users):
    """The limit applies before authentication as well (direct TLS, raw)."""
    from xmpp_helpers import ssl_context_for
    raw = await RawConn.open(server.tls_addr, ssl_ctx=ssl_context_for(server))
    try:
        await raw.send(STREAM_HEADER)
        await raw.read_until(b"features>")
        try:
            await raw.send("<iq type='get' id='x'><query xmlns='urn:x'>"
                           + "y" * (300 * 1024) + "</query></iq>")
        except (ConnectionResetError, BrokenPipeError):
            pass
        data = await raw.read_to_eof(timeout=20)
    finally:
        raw.close()
    assert_stream_error(data, "policy-violation")
    await check_still_working(server, users)
