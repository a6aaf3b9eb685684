"""Client state indication (XEP-0352) with slixmpp's xep_0352: an inactive client still
gets a chat message at once, nothing is reordered, and what was held arrives on <active/>."""

from __future__ import annotations

from test_roster_presence import subscribe_both_ways
from xmpp_helpers import Recorder, create_user, is_available_from, login, stop_all, uname

PASSWORD = "csi-secret"
# "At once": far below the default waits, far above a loopback round trip.
PROMPT = 5.0


async def test_inactive_client_gets_chat_at_once_in_order(server):
    an, bn = uname("csia"), uname("csib")
    await create_user(server, an, PASSWORD)
    await create_user(server, bn, PASSWORD)
    a = await login(server, an, PASSWORD)
    b = await login(server, bn, PASSWORD, plugins=["xep_0352"])
    try:
        assert b["xep_0352"].enabled, "server did not offer <csi/> as a stream feature"
        await subscribe_both_ways(a, b)
        await b.presences.wait_for(is_available_from(a.full), what=f"{a.full} available")

        # Everything b receives, in arrival order.
        seen = Recorder("b stanzas")
        b.add_event_handler("presence", lambda p: seen.add(("presence", p)))
        b.add_event_handler("message", lambda m: seen.add(("message", m)))

        b["xep_0352"].send_inactive()
        await b.ping_server()  # <inactive/> is processed (nonzas are handled in order)

        # A presence change (unimportant: may be held) then a chat message (important).
        a.send_presence(pshow="away", pstatus="held maybe")
        a.send_message(mto=b.bare, mbody="wake up", mtype="chat")
        await seen.wait_for(lambda x: x[0] == "message" and x[1]["body"] == "wake up",
                            timeout=PROMPT, what="the chat message while inactive")
        kinds = [(k, s["status"] if k == "presence" else s["body"]) for k, s in seen.items]
        assert ("presence", "held maybe") in kinds, (
            f"the presence sent before the message must be flushed with it: {kinds}")
        assert kinds.index(("presence", "held maybe")) < kinds.index(("message", "wake up")), (
            f"reordered while inactive: {kinds}")

        # A presence change alone while inactive: delivered at the latest on <active/>.
        mark = len(seen.items)
        a.send_presence(pshow="xa", pstatus="while you sleep")
        await a.ping_server()
        b["xep_0352"].send_active()
        p = await seen.wait_for(lambda x: x[0] == "presence" and x[1]["status"] == "while you sleep",
                                since=mark, timeout=PROMPT, what="held presence after <active/>")
        assert p[1]["show"] == "xa", p[1]

        # Active again: messages flow as usual.
        a.send_message(mto=b.bare, mbody="awake", mtype="chat")
        await b.messages.wait_for(lambda m: m["body"] == "awake", timeout=PROMPT, what="message")
    finally:
        await stop_all([a, b])
