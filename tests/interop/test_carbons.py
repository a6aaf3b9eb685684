"""Message carbons (XEP-0280) with slixmpp's xep_0280: two clients of one account, one of
which enables carbons."""

from __future__ import annotations

from slixmpp import JID

from xmpp_helpers import create_user, login, stop_all, uname

PASSWORD = "carbons-secret"
CARBONS_NS = "urn:xmpp:carbons:2"


def forwarded(carbon, kind: str):
    """The message inside a <received/> or <sent/> carbon (slixmpp's extension
    interface returns the forwarded stanza itself)."""
    return carbon[f"carbon_{kind}"]


async def test_carbons_sent_and_received(server):
    an, bn = uname("carbon"), uname("carbpeer")
    await create_user(server, an, PASSWORD)
    await create_user(server, bn, PASSWORD)
    a1 = await login(server, an, PASSWORD, resource="phone", plugins=["xep_0280"])
    a2 = await login(server, an, PASSWORD, resource="desk", plugins=["xep_0280"])
    b = await login(server, bn, PASSWORD)
    try:
        info = await a1["xep_0030"].get_info(jid=a1.boundjid.domain, timeout=20)
        assert CARBONS_NS in info["disco_info"]["features"], info

        received = a1.record("carbon_received")
        sent = a1.record("carbon_sent")
        other_sent = a2.record("carbon_sent")
        other_received = a2.record("carbon_received")
        res = await a1["xep_0280"].enable(timeout=20)
        assert res["type"] == "result", res
        await b.ping_server()
        await a2.ping_server()

        # 'received': b writes to the other resource; the enabled one gets a copy.
        b.send_message(mto=a2.full, mbody="to the desk", mtype="chat")
        orig = await a2.messages.wait_for(lambda m: m["body"] == "to the desk", what="original")
        c = await received.wait_for(lambda c: forwarded(c, "received")["body"] == "to the desk",
                                    what="a received carbon")
        assert c["from"] == JID(a1.bare), f"carbon must come from the account's bare JID: {c}"
        assert c["to"] == a1.boundjid, c
        inner = forwarded(c, "received")
        assert inner["from"] == b.boundjid and inner["to"] == a2.boundjid, inner
        assert inner["type"] == "chat" and inner["id"] == orig["id"], inner
        # The carbon is not also delivered as a plain message to the enabled resource.
        # (Carbons have no top-level <body/>: slixmpp records only plain messages here.)
        assert not any(m["body"] == "to the desk" for m in a1.messages.items), a1.messages.items

        # 'sent': the other resource writes to b; the enabled one gets a copy.
        a2.send_message(mto=b.bare, mbody="from the desk", mtype="chat")
        await b.messages.wait_for(lambda m: m["body"] == "from the desk", what="at b")
        c = await sent.wait_for(lambda c: forwarded(c, "sent")["body"] == "from the desk",
                                what="a sent carbon")
        assert c["from"] == JID(a1.bare), c
        inner = forwarded(c, "sent")
        assert inner["from"] == a2.boundjid and inner["to"] == JID(b.bare), inner

        # <private/> (XEP-0280 §7): no copy; the next ordinary message is copied.
        private = a2.make_message(mto=b.bare, mbody="private one", mtype="chat")
        private.enable("carbon_private")
        private.send()
        a2.send_message(mto=b.bare, mbody="ordinary one", mtype="chat")
        await b.messages.wait_count(lambda m: m["body"] in ("private one", "ordinary one"), 2,
                                    what="both messages at b")
        await sent.wait_for(lambda c: forwarded(c, "sent")["body"] == "ordinary one",
                            what="the carbon of the ordinary message")
        bodies = [forwarded(c, "sent")["body"] for c in sent.items]
        assert "private one" not in bodies, f"<private/> message was copied: {bodies}"
        b_msgs = [m for m in b.messages.items if m["body"] == "private one"]
        assert b_msgs and b_msgs[0].xml.find(f"{{{CARBONS_NS}}}private") is None, (
            f"<private/> should be removed before delivery (XEP-0280 §7): {b_msgs}")

        # The resource that did not enable carbons gets none for what a1 sends/receives.
        a1.send_message(mto=b.bare, mbody="from the phone", mtype="chat")
        await b.messages.wait_for(lambda m: m["body"] == "from the phone", what="at b")
        b.send_message(mto=a1.full, mbody="to the phone", mtype="chat")
        await a1.messages.wait_for(lambda m: m["body"] == "to the phone", what="at the phone")
        # Barrier: a carbon for either would be routed to a2 before b's next message.
        b.send_message(mto=a2.full, mbody="barrier", mtype="chat")
        await a2.messages.wait_for(lambda m: m["body"] == "barrier", what="barrier at the desk")
        assert not other_sent.items and not other_received.items, (
            f"carbons to a resource that did not enable them: "
            f"{other_sent.items + other_received.items}")
    finally:
        await stop_all([a1, a2, b])
