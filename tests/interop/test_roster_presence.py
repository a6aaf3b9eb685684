"""Roster management (RFC 6121 §2) and presence subscriptions (§3, §4)."""

from __future__ import annotations

from xmpp_helpers import (
    Client, create_user, is_available_from, is_unavailable_from, login,
    stop_all, uname,
)

PASSWORD = "roster-secret"


def push_for(jid: str, subscription: str | None = None, absent_ok: bool = False):
    """Predicate over roster pushes: an item for jid (with that subscription)."""
    def pred(iq) -> bool:
        items = {str(k): v for k, v in iq["roster"]["items"].items()}
        if jid not in items:
            return False
        return subscription is None or items[jid]["subscription"] == subscription
    return pred


async def subscribe_both_ways(a: Client, b: Client) -> None:
    """a subscribes to b, b approves and subscribes back, a approves.

    Each side acts only on what it actually received."""
    a.send_presence(pto=b.bare, ptype="subscribe")
    req = await b.presences.wait_for(
        lambda p: p["type"] == "subscribe" and p["from"].bare == a.bare,
        what=f"subscribe from {a.bare}")
    assert str(req["to"]) in (b.bare, b.full), req
    b.send_presence(pto=a.bare, ptype="subscribed")
    await a.presences.wait_for(
        lambda p: p["type"] == "subscribed" and p["from"].bare == b.bare,
        what=f"subscribed from {b.bare}")

    b.send_presence(pto=a.bare, ptype="subscribe")
    await a.presences.wait_for(
        lambda p: p["type"] == "subscribe" and p["from"].bare == b.bare,
        what=f"subscribe from {b.bare}")
    a.send_presence(pto=b.bare, ptype="subscribed")
    await b.presences.wait_for(
        lambda p: p["type"] == "subscribed" and p["from"].bare == a.bare,
        what=f"subscribed from {a.bare}")

    # Both roster pushes end at 'both'.
    await a.roster_pushes.wait_for(push_for(b.bare, "both"), what=f"push {b.bare}=both")
    await b.roster_pushes.wait_for(push_for(a.bare, "both"), what=f"push {a.bare}=both")


async def test_subscription_handshake_both(server):
    an, bn = uname("alice"), uname("bob")
    await create_user(server, an, PASSWORD)
    await create_user(server, bn, PASSWORD)
    a = await login(server, an, PASSWORD)
    b = await login(server, bn, PASSWORD)
    try:
        assert await a.fetch_roster() == {}
        assert await b.fetch_roster() == {}

        await subscribe_both_ways(a, b)

        # The first push a got for b is the pending-out state (ask=subscribe).
        first = await a.roster_pushes.wait_for(push_for(b.bare), what="first push for bob")
        item = first["roster"]["items"][b.bare]
        assert item["subscription"] == "none" and item["ask"] == "subscribe", item

        ra = await a.fetch_roster()
        rb = await b.fetch_roster()
        assert ra[b.bare]["subscription"] == "both", ra
        assert rb[a.bare]["subscription"] == "both", rb
        assert not ra[b.bare].get("ask"), ra
        assert not rb[a.bare].get("ask"), rb

        # Presence flows both ways once subscribed: each has seen the other
        # as available (delivered as part of the handshake) ...
        await a.presences.wait_for(is_available_from(b.full), what=f"available from {b.full}")
        await b.presences.wait_for(is_available_from(a.full), what=f"available from {a.full}")

        # ... and a presence change is broadcast to the contact.
        mark_a, mark_b = len(b.presences.items), len(a.presences.items)
        a.send_presence(pshow="away", pstatus="out for lunch \u2615")
        p = await b.presences.wait_for(is_available_from(a.full), since=mark_a,
                                       what="a's presence update")
        assert p["show"] == "away" and p["status"] == "out for lunch \u2615", p
        b.send_presence(pshow="dnd", pstatus="busy")
        p = await a.presences.wait_for(is_available_from(b.full), since=mark_b,
                                       what="b's presence update")
        assert p["show"] == "dnd" and p["status"] == "busy", p
    finally:
        await stop_all([a, b])


async def test_presence_available_and_unavailable(server):
    an, bn = uname("carol"), uname("dave")
    await create_user(server, an, PASSWORD)
    await create_user(server, bn, PASSWORD)
    a = await login(server, an, PASSWORD)
    b = await login(server, bn, PASSWORD)
    clients = [a, b]
    try:
        await subscribe_both_ways(a, b)

        # Clean logout of b: a sees b's unavailable presence.
        b_full = b.full
        await b.stop()
        p = await a.presences.wait_for(is_unavailable_from(b_full), what=f"unavailable from {b_full}")
        assert p["to"].bare == a.bare

        # b comes back: a sees it available; b gets a's presence (probe).
        mark = len(a.presences.items)
        b2 = await login(server, bn, PASSWORD, resource="again")
        clients.append(b2)
        await a.presences.wait_for(is_available_from(b2.full), since=mark,
                                   what=f"available from {b2.full}")
        await b2.presences.wait_for(is_available_from(a.full), what=f"{b2.full} sees {a.full}")

        # Abrupt disconnect (TCP dropped, no </stream:stream>): a still
        # gets an unavailable presence for that resource.
        mark = len(a.presences.items)
        b2_full = b2.full
        b2.kill()
        await a.presences.wait_for(is_unavailable_from(b2_full), since=mark, timeout=30,
                                   what=f"unavailable from {b2_full} after abrupt close")

        # And the other direction: a drops abruptly, b (back again) notices.
        b3 = await login(server, bn, PASSWORD, resource="third")
        clients.append(b3)
        await b3.presences.wait_for(is_available_from(a.full), what=f"{b3.full} sees {a.full}")
        a_full = a.full
        a.kill()
        await b3.presences.wait_for(is_unavailable_from(a_full), timeout=30,
                                    what=f"unavailable from {a_full} after abrupt close")
    finally:
        await stop_all(clients)


async def test_roster_get_set_remove_with_pushes(server):
    un, cn = uname("erin"), uname("frank")
    await create_user(server, un, PASSWORD)
    # Two resources of the same account: both must receive roster pushes.
    r1 = await login(server, un, PASSWORD, resource="one")
    r2 = await login(server, un, PASSWORD, resource="two")
    try:
        assert await r1.fetch_roster() == {}
        await r2.fetch_roster()  # r2 becomes an interested resource too
        contact = f"{cn}@localhost"

        # set (add)
        res = await r1.roster_set(contact, name="Frank \u00c6", groups=["Friends", "Work"])
        assert res["type"] == "result"
        for r in (r1, r2):
            push = await r.roster_pushes.wait_for(push_for(contact), what=f"add push on {r.full}")
            assert push["type"] == "set"
            assert str(push["from"]) in ("", r.bare), f"push from {push['from']}"
            item = push["roster"]["items"][contact]
            assert item["name"] == "Frank \u00c6", item
            assert set(item["groups"]) == {"Friends", "Work"}, item
            assert item["subscription"] == "none", item

        roster = await r2.fetch_roster()
        assert set(roster) == {contact}, roster
        assert roster[contact]["name"] == "Frank \u00c6"
        assert set(roster[contact]["groups"]) == {"Friends", "Work"}
        assert roster[contact]["subscription"] == "none"

        # set (update)
        n1, n2 = len(r1.roster_pushes.items), len(r2.roster_pushes.items)
        await r2.roster_set(contact, name="F.", groups=["Work"])
        for r, n in ((r1, n1), (r2, n2)):
            push = await r.roster_pushes.wait_for(push_for(contact), since=n,
                                                  what=f"update push on {r.full}")
            item = push["roster"]["items"][contact]
            assert item["name"] == "F." and list(item["groups"]) == ["Work"], item
        roster = await r1.fetch_roster()
        assert roster[contact]["name"] == "F." and list(roster[contact]["groups"]) == ["Work"]

        # remove
        n1, n2 = len(r1.roster_pushes.items), len(r2.roster_pushes.items)
        await r1.roster_set(contact, subscription="remove")
        for r, n in ((r1, n1), (r2, n2)):
            await r.roster_pushes.wait_for(push_for(contact, "remove"), since=n,
                                           what=f"remove push on {r.full}")
        assert await r1.fetch_roster() == {}
        assert await r2.fetch_roster() == {}

        # The roster is persistent across sessions.
        await r1.roster_set(contact, name="again")
        await r1.roster_pushes.wait_for(
            lambda iq: push_for(contact)(iq) and iq["roster"]["items"][contact]["name"] == "again",
            what="re-add push")
        await stop_all([r1, r2])
        r3 = await login(server, un, PASSWORD, resource="three")
        r1 = r2 = r3
        roster = await r3.fetch_roster()
        assert set(roster) == {contact} and roster[contact]["name"] == "again", roster
    finally:
        await stop_all({r1, r2})
