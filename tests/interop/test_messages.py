"""Message routing: online chat with a hostile body, offline storage."""

from __future__ import annotations

import datetime
import re

import pytest
import slixmpp

from xmpp_helpers import create_user, login, stop_all, uname

PASSWORD = "msg-secret"


def hostile_body(target_bytes: int = 10 * 1024) -> str:
    """~10 KiB of text that is hard to get exactly right on the wire."""
    parts = [
        "<message><body>not a stanza</body></message>",
        "& &amp; &lt; &#x26; &#38; ]]> <![CDATA[x]]> <!-- -->",
        "'single' \"double\" `back` \\ / ? %",
        "emoji: \U0001F600\U0001F680\U0001F9D1\u200D\U0001F4BB \U0001F1EB\U0001F1F7",
        "CJK: \u4e2d\u6587\u6f22\u5b57 \u65e5\u672c\u8a9e\u306e\u6587\u7ae0 \ud55c\uad6d\uc5b4",
        "RTL: \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 \u202e reversed \u202c",
        "combining: e\u0301 a\u0308 \u0928\u093f",
        "tabs\tand\nnewlines\n  indented",
        "astral: \U00010348 \U0001D11E",
    ]
    out = []
    i = 0
    while len("\n".join(out).encode("utf-8")) < target_bytes:
        out.append(f"{i:04d} " + parts[i % len(parts)])
        i += 1
    return "\n".join(out)


XEP0082_DATETIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def parse_xep0082(stamp: str | None, what: str) -> datetime.datetime:
    """Strict XEP-0082 DateTime check (any fraction length), then parse."""
    assert stamp, f"{what}: <delay/> without stamp"
    assert XEP0082_DATETIME.match(stamp), f"{what}: stamp {stamp!r} is not XEP-0082 DateTime"
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def pair(server):
    import asyncio
    a, b = uname("sender"), uname("rcpt")

    async def mk():
        await create_user(server, a, PASSWORD)
        await create_user(server, b, PASSWORD)

    asyncio.run(mk())
    return a, b


async def test_chat_unicode_body_exact(server, pair):
    an, bn = pair
    a = await login(server, an, PASSWORD)
    b = await login(server, bn, PASSWORD, tls="direct")
    try:
        # Barrier: b's initial presence has been processed (b is available,
        # so a message to the bare JID is routed to it).
        await b.ping_server()
        body = hostile_body()
        assert len(body.encode("utf-8")) >= 10 * 1024
        subject = "<subj> & \u263a \"q\" 'a'"
        for to in (b.full, b.bare):
            mark = len(b.messages.items)
            a.send_message(mto=to, mbody=body, msubject=subject, mtype="chat")
            m = await b.messages.wait_for(lambda m: m["from"].bare == a.bare, since=mark,
                                          what=f"chat to {to}")
            assert str(m["from"]) == a.full, m["from"]
            assert m["type"] == "chat"
            assert m["subject"] == subject
            got = m["body"]
            assert len(got) == len(body), f"length {len(got)} != {len(body)}"
            assert got == body, "body differs (first difference at char %d)" % next(
                i for i, (x, y) in enumerate(zip(got, body)) if x != y)

        # And back, over the other listener.
        mark = len(a.messages.items)
        b.send_message(mto=a.full, mbody=body[::-1], mtype="chat")
        m = await a.messages.wait_for(lambda m: m["from"].bare == b.bare, since=mark, what="reply")
        assert m["body"] == body[::-1]
    finally:
        await stop_all([a, b])


@pytest.mark.timeout_s(150)
async def test_offline_delivery_500_in_order(server):
    sn, rn = uname("offs"), uname("offr")
    await create_user(server, sn, PASSWORD)
    await create_user(server, rn, PASSWORD)
    rcpt = f"{rn}@localhost"
    n = 500

    s = await login(server, sn, PASSWORD)
    try:
        for i in range(n):
            s.send_message(mto=rcpt, mbody=f"offline #{i:03d} <&> \u00e9", mtype="chat")
        # Barrier: the server answers this ping only after reading all 500.
        await s.ping_server(timeout=60)
    finally:
        await s.stop()

    r = await login(server, rn, PASSWORD, initial_presence=False)
    try:
        await r.ping_server()
        assert r.messages.items == [], (
            "offline messages delivered before initial presence (XEP-0160)")
        r.send_presence()
        msgs = await r.messages.wait_count(lambda m: True, n, timeout=90,
                                           what="offline messages")
        bodies = [m["body"] for m in msgs]
        expected = [f"offline #{i:03d} <&> \u00e9" for i in range(n)]
        if bodies != expected:
            missing = sorted(set(expected) - set(bodies))
            pytest.fail(f"offline messages wrong: {len(bodies)} received, "
                        f"missing {missing[:5]}..., first out of order at "
                        f"{next((i for i, (x, y) in enumerate(zip(bodies, expected)) if x != y), None)}")
        stamps = []
        for i, m in enumerate(msgs):
            assert m["from"].bare == f"{sn}@localhost", m["from"]
            delay = m.xml.find("{urn:xmpp:delay}delay")
            assert delay is not None, f"message {i} has no XEP-0203 <delay/>: {m}"
            stamps.append(parse_xep0082(delay.get("stamp"), f"message {i}"))
        assert stamps == sorted(stamps), "delay stamps not in order"

        # Delivered once: the store is now empty. A new session gets nothing.
        await r.ping_server()
        assert len(r.messages.items) == n, f"{len(r.messages.items)} messages, expected {n}"
    finally:
        await r.stop()

    r2 = await login(server, rn, PASSWORD, resource="later")
    try:
        # Barrier: presence is processed before this ping's reply.
        await r2.ping_server()
        # Any re-delivery would be sent right after the initial presence,
        # before the ping reply; give the wire one more round trip.
        await r2.ping_server()
        assert r2.messages.items == [], (
            f"offline messages delivered twice: {len(r2.messages.items)} again")
    finally:
        await r2.stop()


async def test_delay_stamp_parsed_by_slixmpp(server, pair):
    """slixmpp's own XEP-0203/0082 parsing accepts the server's stamps.

    (XEP-0082 allows any number of fractional digits, but slixmpp 1.17,
    like many clients, only parses up to microseconds.)"""
    an, bn = pair
    a = await login(server, an, PASSWORD)
    try:
        body = "for later " + uname("d")
        a.send_message(mto=f"{bn}@localhost", mbody=body, mtype="chat")
        await a.ping_server()
    finally:
        await a.stop()
    b = await login(server, bn, PASSWORD)
    try:
        m = await b.messages.wait_for(lambda m: m["body"] == body, what="offline message")
        raw = m.xml.find("{urn:xmpp:delay}delay")
        assert raw is not None, m
        error = None
        try:
            stamp = m["delay"]["stamp"]
        except ValueError as e:
            error = str(e)
        if error is not None:
            pytest.fail(f"slixmpp {slixmpp.__version__} cannot parse the server's delay "
                        f"stamp {raw.get('stamp')!r}: {error}")
        assert stamp is not None and stamp.tzinfo is not None
        age = datetime.datetime.now(datetime.timezone.utc) - stamp
        assert datetime.timedelta(seconds=-5) < age < datetime.timedelta(minutes=5), stamp
    finally:
        await b.stop()
