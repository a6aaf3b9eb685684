"""Many concurrent slixmpp clients on one asyncio loop."""

from __future__ import annotations

import asyncio
import os

import pytest

from xmpp_helpers import Client, stop_all, uname

PASSWORD = "many-secret"
PAIRS = int(os.environ.get("OUTPOST_INTEROP_PAIRS", "100"))
PER_CLIENT = int(os.environ.get("OUTPOST_INTEROP_MSGS", "10"))
CONNECT_PARALLELISM = 25


@pytest.mark.timeout_s(170)
async def test_many_clients_exchange_messages(server):
    names = [(uname("p"), uname("q")) for _ in range(PAIRS)]
    clients: list[Client] = []
    sem = asyncio.Semaphore(CONNECT_PARALLELISM)

    async def connect(localpart: str, tls: str) -> Client:
        async with sem:
            # In-band registration followed by login on the same stream.
            c = Client(server, localpart, PASSWORD, register=True, tls=tls,
                       resource="load")
            clients.append(c)
            await c.start(timeout=60)
            assert c.registered
            return c

    try:
        pairs = await asyncio.gather(*(
            asyncio.gather(connect(p, "starttls"), connect(q, "direct"))
            for p, q in names))
        assert len(clients) == 2 * PAIRS
        assert all(c.sessionstarted for c in clients)
        # Every initial presence has been processed before anyone sends.
        await asyncio.gather(*(c.ping_server(timeout=60) for c in clients))

        for a, b in pairs:
            for i in range(PER_CLIENT):
                a.send_message(mto=b.full, mbody=f"{a.localpart}->{i}", mtype="chat")
                b.send_message(mto=a.full, mbody=f"{b.localpart}->{i}", mtype="chat")

        async def expect(rcpt: Client, sender: Client) -> None:
            msgs = await rcpt.messages.wait_count(
                lambda m: m["from"].bare == sender.bare, PER_CLIENT, timeout=90,
                what=f"messages from {sender.bare}")
            assert [m["body"] for m in msgs] == [
                f"{sender.localpart}->{i}" for i in range(PER_CLIENT)], \
                f"{rcpt.bare}: wrong/out-of-order bodies {[m['body'] for m in msgs]}"

        await asyncio.gather(*(
            t for a, b in pairs for t in (expect(b, a), expect(a, b))))

        # Exactly PER_CLIENT each: nothing lost, nothing duplicated, nothing
        # misrouted. Ping barrier first so late duplicates would be visible.
        await asyncio.gather(*(c.ping_server(timeout=60) for c in clients))
        counts = [len(c.messages.items) for c in clients]
        assert counts == [PER_CLIENT] * len(clients), (
            f"per-client message counts: {sorted(set(counts))}")
        total = sum(counts)
        assert total == 2 * PAIRS * PER_CLIENT
    finally:
        await stop_all(clients)
