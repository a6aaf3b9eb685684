"""Server lifecycle seen from clients: restart keeps state, SIGTERM with
clients connected closes their streams and exits 0."""

from __future__ import annotations

import asyncio

from xmpp_helpers import create_user, login

PASSWORD = "life-secret"


async def test_sigterm_with_connected_clients(fresh_server):
    fresh_server.start()
    await create_user(fresh_server, "ann", PASSWORD)
    await create_user(fresh_server, "ben", PASSWORD)
    a = await login(fresh_server, "ann", PASSWORD)
    b = await login(fresh_server, "ben", PASSWORD, tls="direct")

    # Stop the server (in a thread: stop() blocks until the process exits).
    code = await asyncio.to_thread(fresh_server.stop)
    assert code == 0, f"exit code {code} after SIGTERM\n{fresh_server.log_tail()}"

    for c in (a, b):
        await c.disconnects.wait_for(lambda r: True, timeout=10,
                                     what="the server closing the stream")
        # RFC 6120 §4.9.3.22; Outpost documents that it sends it.
        conditions = [e["condition"] for e in c.stream_errors.items]
        assert conditions == ["system-shutdown"], f"stream errors on shutdown: {conditions}"


async def test_state_survives_restart(fresh_server):
    fresh_server.start()
    await create_user(fresh_server, "cat", PASSWORD)
    await create_user(fresh_server, "dan", PASSWORD)
    a = await login(fresh_server, "cat", PASSWORD)
    try:
        await a.roster_set("dan@localhost", name="Dan", groups=["G"])
        await a.roster_pushes.wait_for(lambda iq: True, what="roster push")
        a.send_message(mto="dan@localhost", mbody="kept across restart", mtype="chat")
        await a.ping_server()
    finally:
        await a.stop()

    assert await asyncio.to_thread(fresh_server.stop) == 0
    fresh_server.start()

    a = await login(fresh_server, "cat", PASSWORD)
    d = await login(fresh_server, "dan", PASSWORD)
    try:
        roster = await a.fetch_roster()
        assert roster.get("dan@localhost", {}).get("name") == "Dan", roster
        m = await d.messages.wait_for(lambda m: m["body"] == "kept across restart",
                                      what="offline message stored before the restart")
        assert m.xml.find("{urn:xmpp:delay}delay") is not None
    finally:
        await a.stop()
        await d.stop()
