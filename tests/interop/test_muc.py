"""Multi-user chat (XEP-0045) at conference.localhost with slixmpp's xep_0045 (and
xep_0004 forms, xep_0030 disco, xep_0313 for the room archive, xep_0359 stanza-ids,
xep_0410 self-ping): creating and configuring rooms, joining, the subject and history,
talking in the room and privately, password, members-only and moderated rooms, kicks,
bans, destruction, persistence across a restart and temporary rooms going away.

Every join goes through ``join_muc_wait``, which returns once a subject, the last stanza
of a join (XEP-0045 "Room Subject"), has arrived; what an occupant must (not) have
received is checked after a later stanza from the same room, which the room sends in
order."""

from __future__ import annotations

from typing import Any, Iterable

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError, PresenceError
from slixmpp.plugins.xep_0410 import PingStatus

from xmpp_helpers import DEFAULT_TIMEOUT, Client, stop_all, uname

PASSWORD = "muc-secret"
NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = "http://jabber.org/protocol/muc#user"
NS_DELAY = "urn:xmpp:delay"
NS_SID = "urn:xmpp:sid:0"
MAM_NS = "urn:xmpp:mam:2"
MUC_PLUGINS = ["xep_0045", "xep_0004", "xep_0313", "xep_0359", "xep_0410", "xep_0297"]


# ------------------------------------------------------------------ helpers
async def muc_user(server: Any, prefix: str, *, name: str | None = None,
                   register: bool = True) -> Client:
    """A logged-in client with the MUC plugins and recorders of room traffic:
    ``muc_presences`` (every presence with muc#user), ``subjects``, ``room_messages``
    (groupchat messages with a body and subject messages, in the order they came),
    ``muc_errors`` (message errors from rooms). Registers in band unless told otherwise."""
    c = Client(server, name or uname(prefix), PASSWORD, register=register,
               plugins=MUC_PLUGINS)
    c.muc_presences = c.record("groupchat_presence")
    c.subjects = c.record("groupchat_subject")
    c.room_messages = c.record("groupchat_message")
    c.add_event_handler("groupchat_subject", c.room_messages.add)
    c.muc_errors = c.record("groupchat_message_error")
    await c.start()
    return c


def service_of(c: Client) -> str:
    return f"conference.{c.boundjid.domain}"


def new_room(c: Client, prefix: str) -> JID:
    return JID(f"{uname(prefix)}@{service_of(c)}")


def occupant(room: JID, nick: str) -> JID:
    return JID(f"{room}/{nick}")


async def join(c: Client, room: JID, nick: str, timeout: float = DEFAULT_TIMEOUT,
               **kw) -> tuple:
    """(own presence, subject message, occupant presences, history) of a join that
    succeeded; a refusal raises PresenceError."""
    return await c["xep_0045"].join_muc_wait(room, nick, timeout=timeout, **kw)


async def join_refused(c: Client, room: JID, nick: str, **kw) -> str:
    """The error condition of a join the room must refuse."""
    try:
        pres, *_ = await join(c, room, nick, **kw)
    except PresenceError as e:
        assert str(e.presence["from"]) == str(occupant(room, nick)), e.presence
        return e.condition
    raise AssertionError(f"{c.bare} entered {room} as {nick}: {pres}")


def codes(p) -> set[int]:
    return p["muc"]["status_codes"]


async def configure(owner: Client, room: JID, values: dict[str, Any]) -> None:
    """Submits the room configuration form with `values` changed (fields named without
    the muc#roomconfig_ prefix); with no values an empty form: an instant room
    (XEP-0045 "Creating an Instant Room")."""
    muc = owner["xep_0045"]
    if values:
        form = await muc.get_room_config(room, timeout=DEFAULT_TIMEOUT)
        form.set_values({f"muc#roomconfig_{k}": v for k, v in values.items()})
    else:
        form = owner["xep_0004"].make_form(ftype="submit")
    await muc.set_room_config(room, form, timeout=DEFAULT_TIMEOUT)


async def create_room(owner: Client, prefix: str, nick: str = "owner",
                      config: dict[str, Any] | None = None) -> JID:
    """The owner creates a room (status 110 and 201, owner and moderator) and submits its
    configuration, which unlocks it."""
    room = new_room(owner, prefix)
    pres, _subject, _others, history = await join(owner, room, nick)
    assert {110, 201} <= codes(pres), f"creator's own presence: {pres}"
    assert (pres["muc"]["affiliation"], pres["muc"]["role"]) == ("owner", "moderator"), pres
    assert history == [], history
    await configure(owner, room, config or {})
    return room


def groupchat_from(room: JID, nick: str, body: str):
    def pred(m) -> bool:
        return (m["type"] == "groupchat" and m["from"] == occupant(room, nick)
                and m["body"] == body)
    return pred


def room_stanza_ids(m, room: JID) -> list[str]:
    return [e.get("id") for e in m.xml.findall(f"{{{NS_SID}}}stanza-id")
            if e.get("by") == str(room)]


def say(c: Client, room: JID, body: str, mid: str | None = None) -> None:
    msg = c.make_message(mto=room, mbody=body, mtype="groupchat")
    if mid:
        msg["id"] = mid
    msg.send()


async def said_everywhere(room: JID, nick: str, body: str,
                          clients: Iterable[Client]) -> list:
    """Waits until every client has the groupchat message; returns each one's copy."""
    got = []
    for c in clients:
        got.append(await c.messages.wait_for(groupchat_from(room, nick, body),
                                             what=f"'{body}' from {nick} at {c.bare}"))
    return got


def count(c: Client, pred) -> int:
    return sum(1 for m in c.messages.items if pred(m))


async def presence_of(c: Client, room: JID, nick: str, pred=lambda p: True,
                      what: str = "a presence", since: int = 0):
    return await c.muc_presences.wait_for(
        lambda p: p["from"] == occupant(room, nick) and pred(p), since=since,
        what=f"{what} of {room}/{nick} at {c.bare}")


async def disco_condition(c: Client, jid: str) -> str | None:
    """None if disco#info on `jid` is answered, else the error condition."""
    try:
        await c["xep_0030"].get_info(jid=jid, timeout=DEFAULT_TIMEOUT)
    except IqError as e:
        return e.condition
    return None


async def room_features(c: Client, room: JID) -> set[str]:
    info = await c["xep_0030"].get_info(jid=room, timeout=DEFAULT_TIMEOUT)
    return set(info["disco_info"]["features"])


async def listed_rooms(c: Client) -> dict[str, str]:
    items = await c["xep_0030"].get_items(jid=service_of(c), timeout=DEFAULT_TIMEOUT)
    return {str(j): name for j, _node, name in items["disco_items"]["items"]}


async def users(server: Any, *prefixes: str) -> list[Client]:
    clients: list[Client] = []
    try:
        for p in prefixes:
            clients.append(await muc_user(server, p))
    except BaseException:
        await stop_all(clients)
        raise
    return clients


# ---------------------------------------------------------------- discovery
async def test_service_discovered_with_conference_identity(server):
    [c] = await users(server, "mucdisco")
    try:
        items = await c["xep_0030"].get_items(jid=server.domain, timeout=DEFAULT_TIMEOUT)
        services = {str(j) for j, _node, _name in items["disco_items"]["items"]}
        assert service_of(c) in services, f"server disco#items: {sorted(services)}"
        info = await c["xep_0030"].get_info(jid=service_of(c), timeout=DEFAULT_TIMEOUT)
        identities = {(cat, typ) for cat, typ, _lang, _name in info["disco_info"]["identities"]}
        assert ("conference", "text") in identities, identities
        assert NS_MUC in set(info["disco_info"]["features"]), info
        # A room nobody created does not exist (XEP-0045 "Querying for Room Information").
        assert await disco_condition(c, str(new_room(c, "nothing"))) == "item-not-found"
    finally:
        await c.stop()


# ------------------------------------------------------- creating and joining
async def test_new_room_is_locked_until_configured(server):
    alice, bob = await users(server, "mucowner", "mucguest")
    try:
        room = new_room(alice, "locked")
        pres, *_ = await join(alice, room, "alice")
        assert {110, 201} <= codes(pres), pres
        # "Locked Room": nobody else enters before the owner configured the room.
        assert await join_refused(bob, room, "bob") == "item-not-found"
        await configure(alice, room, {})
        pres, *_ = await join(bob, room, "bob")
        assert 110 in codes(pres) and 201 not in codes(pres), pres
        features = await room_features(bob, room)
        for f in (NS_MUC, "muc_temporary", "muc_open", "muc_unsecured", MAM_NS,
                  "http://jabber.org/protocol/muc#self-ping-optimization"):
            assert f in features, f"room disco#info lacks {f}: {sorted(features)}"
    finally:
        await stop_all([alice, bob])


async def test_joining_shows_occupants_then_self(server):
    alice, bob = await users(server, "mucalice", "mucbob")
    try:
        room = await create_room(alice, "join", nick="alice")
        before = len(bob.muc_presences.items)
        pres, *_ = await join(bob, room, "bob")
        seen = [p for p in bob.muc_presences.items[before:]]
        order = [p["from"].resource for p in seen]
        assert order.index("alice") < order.index("bob"), f"presences in order: {order}"
        assert (pres["muc"]["affiliation"], pres["muc"]["role"]) == ("none", "participant")
        # A semi-anonymous room (the default) shows real JIDs to moderators only
        # ("Semi-Anonymous Rooms").
        alice_seen = seen[order.index("alice")]
        assert not alice_seen["muc"]["jid"], f"bob saw alice's real JID: {alice_seen}"
        bob_at_alice = await presence_of(alice, room, "bob", what="bob's presence")
        assert bob_at_alice["muc"]["jid"] == bob.boundjid, bob_at_alice
        assert 110 not in codes(bob_at_alice), bob_at_alice
    finally:
        await stop_all([alice, bob])


async def test_nickname_conflict_is_refused(server):
    alice, bob = await users(server, "mucnick", "mucnick")
    try:
        room = await create_room(alice, "nick", nick="taken")
        assert await join_refused(bob, room, "taken") == "conflict"
        await join(bob, room, "free")
    finally:
        await stop_all([alice, bob])


# ------------------------------------------------------------ subject, history
def room_sequence(c: Client, room: JID, since: int) -> list[tuple[str, str]]:
    """What `c` got from `room` since index `since` of its room_messages: ("body", text) for
    a message, ("subject", text) for a subject (a subject and no body, "Room Subject")."""
    return [("body", m["body"]) if m["body"] else ("subject", m["subject"])
            for m in c.room_messages.items[since:] if m["from"].bare == room.bare]


async def join_and_fence(newcomer: Client, room: JID, nick: str, speaker: Client,
                         speaker_nick: str, **kw) -> list[tuple[str, str]]:
    """The newcomer joins; then the speaker says something live, after which the room has
    sent the newcomer everything of the join. Returns the room's messages in order."""
    since = len(newcomer.room_messages.items)
    await join(newcomer, room, nick, **kw)
    say(speaker, room, "live after " + nick)
    await said_everywhere(room, speaker_nick, "live after " + nick, [newcomer])
    return room_sequence(newcomer, room, since)


async def test_subject_and_history_on_join(server):
    alice, bob, carol = await users(server, "mucsubj", "muchist", "muclimit")
    try:
        room = await create_room(alice, "subject", nick="alice")
        alice["xep_0045"].set_subject(room, "Today: interop")
        await alice.subjects.wait_for(lambda m: m["subject"] == "Today: interop",
                                      what="the new subject")
        bodies = [f"history {i} <&> \u2603" for i in range(3)]
        for b in bodies:
            say(alice, room, b)
        await said_everywhere(room, "alice", bodies[-1], [alice])

        # History first, then the subject (once: "changes to the room subject prior to the
        # current subject are not part of the discussion history", XEP-0045 "Discussion
        # History"), then live traffic.
        got = await join_and_fence(bob, room, "bob", alice, "alice")
        assert got == [*(("body", b) for b in bodies), ("subject", "Today: interop"),
                       ("body", "live after bob")], got
        history = [m for m in bob.room_messages.items if m["body"] in bodies]
        for m in history:
            assert m["from"] == occupant(room, "alice"), m
            delay = m.xml.find(f"{{{NS_DELAY}}}delay")
            assert delay is not None and delay.get("from") == str(room), m
            assert m["delay"]["stamp"] is not None, m
        subject = next(m for m in bob.subjects.items if m["subject"] == "Today: interop")
        assert subject["from"] == occupant(room, "alice"), subject
        # maxstanzas ("Managing Discussion History") limits what a newcomer gets: the
        # last thing said, which is now the live message after bob joined.
        limited = await join_and_fence(carol, room, "carol", alice, "alice", maxstanzas=1)
        assert limited == [("body", "live after bob"), ("subject", "Today: interop"),
                           ("body", "live after carol")], limited
    finally:
        await stop_all([alice, bob, carol])


# ------------------------------------------------------------------- talking
async def three_in_a_room(server, prefix: str) -> tuple[JID, list[Client]]:
    clients = await users(server, f"{prefix}a", f"{prefix}b", f"{prefix}c")
    try:
        room = await create_room(clients[0], prefix, nick="n0")
        for i, c in enumerate(clients[1:], start=1):
            await join(c, room, f"n{i}")
    except BaseException:
        await stop_all(clients)
        raise
    return room, clients


async def test_groupchat_reaches_everyone_once_with_the_rooms_stanza_id(server):
    room, clients = await three_in_a_room(server, "mucmsg")
    try:
        body = "to everyone " + uname("m")
        say(clients[1], room, body, mid="stable-1")
        copies = await said_everywhere(room, "n1", body, clients)
        ids = {tuple(room_stanza_ids(m, room)) for m in copies}
        assert len(ids) == 1 and len(next(iter(ids))) == 1, f"one room stanza-id: {copies}"
        # The sender's id comes back unchanged (muc#stable_id, XEP-0045 1.31).
        assert copies[1]["id"] == "stable-1", copies[1]
        # A second message is a fence: the room sends in order, so no copy of the first
        # can follow it.
        fence = "fence " + uname("f")
        say(clients[2], room, fence)
        await said_everywhere(room, "n2", fence, clients)
        for c in clients:
            assert count(c, groupchat_from(room, "n1", body)) == 1, c.messages.items
    finally:
        await stop_all(clients)


async def test_private_message_between_occupants(server):
    room, clients = await three_in_a_room(server, "mucpm")
    alice, bob, carol = clients
    try:
        bob.send_message(mto=occupant(room, "n0"), mbody="psst", mtype="chat")
        got = await alice.messages.wait_for(
            lambda m: m["body"] == "psst" and m["type"] == "chat", what="the private message")
        assert got["from"] == occupant(room, "n1"), got
        assert got.xml.find(f"{{{NS_USER}}}x") is not None, f"PM not marked by the room: {got}"
        alice.send_message(mto=got["from"], mbody="hush", mtype="chat")
        back = await bob.messages.wait_for(lambda m: m["body"] == "hush", what="the answer")
        assert back["from"] == occupant(room, "n0"), back
        # A private message must not be of type groupchat: bad-request (XEP-0045
        # "Sending a Private Message").
        wrong = bob.make_message(mto=occupant(room, "n0"), mbody="wrong type",
                                 mtype="groupchat")
        wrong["id"] = "pm-groupchat"
        wrong.send()
        refused = await bob.muc_errors.wait_for(lambda m: m["id"] == "pm-groupchat",
                                                what="the refusal of a groupchat PM")
        assert refused["error"]["condition"] == "bad-request", refused
        # Carol saw neither (checked after a later room message).
        say(alice, room, "after the whispers")
        await said_everywhere(room, "n0", "after the whispers", [carol])
        assert not [m for m in carol.messages.items
                    if m["body"] in ("psst", "hush", "wrong type")], carol.messages.items
        assert count(alice, lambda m: m["body"] == "wrong type") == 0
    finally:
        await stop_all(clients)


# ------------------------------------------------------- restricted rooms
async def test_password_protected_room(server):
    alice, bob = await users(server, "mucpwo", "mucpwg")
    try:
        room = await create_room(alice, "secret", config={
            "passwordprotectedroom": True, "roomsecret": "open sesame"})
        assert "muc_passwordprotected" in await room_features(bob, room)
        assert await join_refused(bob, room, "bob") == "not-authorized"
        assert await join_refused(bob, room, "bob", password="wrong") == "not-authorized"
        pres, *_ = await join(bob, room, "bob", password="open sesame")
        assert 110 in codes(pres), pres
    finally:
        await stop_all([alice, bob])


async def test_members_only_room(server):
    alice, bob = await users(server, "mucmoo", "mucmog")
    try:
        room = await create_room(alice, "members", config={"membersonly": True})
        assert "muc_membersonly" in await room_features(alice, room)
        assert await join_refused(bob, room, "bob") == "registration-required"
        await alice["xep_0045"].set_affiliation(room, "member", jid=bob.bare,
                                                timeout=DEFAULT_TIMEOUT)
        members = await alice["xep_0045"].get_affiliation_list(room, "member",
                                                               timeout=DEFAULT_TIMEOUT)
        assert [str(j) for j in members] == [bob.bare], members
        pres, *_ = await join(bob, room, "bob")
        assert pres["muc"]["affiliation"] == "member", pres
    finally:
        await stop_all([alice, bob])


async def test_moderated_room_gives_voice(server):
    alice, bob = await users(server, "mucmodo", "mucmodv")
    try:
        room = await create_room(alice, "moderated", nick="alice",
                                 config={"moderatedroom": True})
        pres, *_ = await join(bob, room, "bob")
        assert pres["muc"]["role"] == "visitor", pres
        say(bob, room, "unheard")
        refused = await bob.muc_errors.wait_for(lambda m: m["from"].bare == room.bare,
                                                what="the refusal of a visitor's message")
        assert refused["error"]["condition"] == "forbidden", refused
        since = len(bob.muc_presences.items)
        await alice["xep_0045"].set_role(room, "bob", "participant", timeout=DEFAULT_TIMEOUT)
        await presence_of(bob, room, "bob", lambda p: p["muc"]["role"] == "participant"
                          and 110 in codes(p), what="voice", since=since)
        say(bob, room, "heard")
        await said_everywhere(room, "bob", "heard", [alice])
        assert count(alice, groupchat_from(room, "bob", "unheard")) == 0
    finally:
        await stop_all([alice, bob])


# ------------------------------------------------------------ kick and ban
async def test_kick_removes_for_now(server):
    alice, bob = await users(server, "mucko", "muckv")
    try:
        room = await create_room(alice, "kick", nick="alice")
        await join(bob, room, "bob")
        await alice["xep_0045"].set_role(room, "bob", "none", reason="calm down",
                                         timeout=DEFAULT_TIMEOUT)
        own = await presence_of(bob, room, "bob", lambda p: p["type"] == "unavailable",
                                what="the kick")
        assert {307, 110} <= codes(own), own
        # "A kicked user has a role of 'none'" (XEP-0045 Terminology;
        # the examples of "Kicking an Occupant").
        assert own["muc"]["role"] == "none", own
        assert own.xml.findtext(f"{{{NS_USER}}}x/{{{NS_USER}}}item/{{{NS_USER}}}reason") \
            == "calm down", own
        other = await presence_of(alice, room, "bob", lambda p: p["type"] == "unavailable",
                                  what="the kick")
        assert 307 in codes(other) and 110 not in codes(other), other
        # A kick is not a ban.
        await join(bob, room, "bob")
    finally:
        await stop_all([alice, bob])


async def test_ban_removes_and_keeps_out(server):
    alice, carol = await users(server, "mucbo", "mucbv")
    try:
        room = await create_room(alice, "ban", nick="alice")
        await join(carol, room, "carol")
        await alice["xep_0045"].set_affiliation(room, "outcast", jid=carol.bare,
                                                reason="spam", timeout=DEFAULT_TIMEOUT)
        own = await presence_of(carol, room, "carol", lambda p: p["type"] == "unavailable",
                                what="the ban")
        assert {301, 110} <= codes(own), own
        # "A banned user has an affiliation of 'outcast'" (Terminology; the
        # examples of "Banning a User"),
        # and, no longer in the room, no role.
        assert (own["muc"]["affiliation"], own["muc"]["role"]) == ("outcast", "none"), own
        other = await presence_of(alice, room, "carol", lambda p: p["type"] == "unavailable",
                                  what="the ban")
        assert 301 in codes(other), other
        assert await join_refused(carol, room, "carol") == "forbidden"
        outcasts = await alice["xep_0045"].get_affiliation_list(room, "outcast",
                                                                timeout=DEFAULT_TIMEOUT)
        assert [str(j) for j in outcasts] == [carol.bare], outcasts
    finally:
        await stop_all([alice, carol])


# -------------------------------------------------------------- archive, ping
async def room_archive(c: Client, room: JID) -> list:
    res = await c["xep_0313"].retrieve(jid=room, rsm={"max": 50}, timeout=DEFAULT_TIMEOUT)
    assert res["type"] == "result", res
    return list(res["mam"]["results"])


async def test_room_archive_holds_the_groupchat(server):
    room, clients = await three_in_a_room(server, "mucmam")
    try:
        bodies = [f"archived {i} " + uname("a") for i in range(4)]
        live = []
        for i, b in enumerate(bodies):
            say(clients[i % 3], room, b)
            [copy] = await said_everywhere(room, f"n{i % 3}", b, clients[:1])
            live.append(room_stanza_ids(copy, room)[0])
        results = await room_archive(clients[2], room)
        got = [(r["mam_result"]["id"], r["mam_result"]["forwarded"]["stanza"]["body"],
                r["mam_result"]["forwarded"]["stanza"]["from"].resource) for r in results]
        assert got == [(sid, b, f"n{i % 3}") for i, (sid, b) in enumerate(zip(live, bodies))]
        for r in results:
            assert r["from"] == room.bare or not r["from"], f"result from {r['from']}"
            assert r["mam_result"]["forwarded"]["delay"]["stamp"] is not None, r
    finally:
        await stop_all(clients)


async def ping_condition(c: Client, target: JID) -> str | None:
    try:
        await c["xep_0199"].send_ping(target, timeout=DEFAULT_TIMEOUT)
    except IqError as e:
        return e.condition
    return None


async def test_self_ping_while_joined_and_after_leaving(server):
    alice, bob, stranger = await users(server, "mucpo", "mucpj", "mucps")
    try:
        room = await create_room(alice, "ping", nick="alice")
        await join(bob, room, "bob")
        me = occupant(room, "bob")
        assert await bob["xep_0410"].send_self_ping(me, timeout=DEFAULT_TIMEOUT) \
            == PingStatus.JOINED
        # Someone who never joined cannot ping an occupant (XEP-0410 §3).
        assert await ping_condition(stranger, occupant(room, "alice")) == "not-acceptable"
        bob["xep_0045"].leave_muc(room, "bob")
        await presence_of(bob, room, "bob", lambda p: p["type"] == "unavailable"
                          and 110 in codes(p), what="leaving")
        assert await ping_condition(bob, me) == "not-acceptable"
        assert await bob["xep_0410"].send_self_ping(me, timeout=DEFAULT_TIMEOUT) \
            == PingStatus.DISCONNECTED
    finally:
        await stop_all([alice, bob, stranger])


# --------------------------------------------------------- lifetime of rooms
async def test_temporary_room_goes_with_its_last_occupant(server):
    alice, bob = await users(server, "muctmpa", "muctmpb")
    try:
        room = await create_room(alice, "temporary", nick="alice")
        await join(bob, room, "bob")
        assert str(room) in await listed_rooms(bob)
        alice["xep_0045"].leave_muc(room, "alice")
        await presence_of(bob, room, "alice", lambda p: p["type"] == "unavailable",
                          what="alice leaving")
        # Still there while bob is.
        assert await disco_condition(bob, str(room)) is None
        bob["xep_0045"].leave_muc(room, "bob")
        await presence_of(bob, room, "bob", lambda p: p["type"] == "unavailable",
                          what="bob leaving")
        assert await disco_condition(bob, str(room)) == "item-not-found"
        assert str(room) not in await listed_rooms(bob)
    finally:
        await stop_all([alice, bob])


async def test_destroyed_room_tells_its_occupants(server):
    alice, bob = await users(server, "mucdo", "mucdv")
    try:
        room = await create_room(alice, "doomed", nick="alice")
        await join(bob, room, "bob")
        elsewhere = f"elsewhere@{service_of(alice)}"
        await alice["xep_0045"].destroy(room, reason="moving", altroom=elsewhere,
                                        timeout=DEFAULT_TIMEOUT)
        for c, nick in ((bob, "bob"), (alice, "alice")):
            gone = await presence_of(c, room, nick, lambda p: p["type"] == "unavailable",
                                     what="the room's destruction")
            destroy = gone.xml.find(f"{{{NS_USER}}}x/{{{NS_USER}}}destroy")
            assert destroy is not None, f"no <destroy/> (XEP-0045 'Destroying a Room'): {gone}"
            assert destroy.get("jid") == elsewhere, gone
            assert destroy.findtext(f"{{{NS_USER}}}reason") == "moving", gone
        assert await disco_condition(bob, str(room)) == "item-not-found"
    finally:
        await stop_all([alice, bob])


async def persistent_room_before_restart(server) -> tuple[JID, JID, str]:
    """An owner makes a persistent, named, members-only room with a member, a subject and
    a message, and a temporary room it leaves; returns both rooms and the owner's name."""
    alice = await muc_user(server, "mucrsa")
    try:
        room = await create_room(alice, "kept", nick="alice", config={
            "persistentroom": True, "roomname": "Kept Room", "membersonly": True})
        await alice["xep_0045"].set_affiliation(room, "member", jid=f"keeper@{server.domain}",
                                                timeout=DEFAULT_TIMEOUT)
        alice["xep_0045"].set_subject(room, "kept subject")
        say(alice, room, "said before the restart")
        await said_everywhere(room, "alice", "said before the restart", [alice])
        temporary = await create_room(alice, "gone", nick="alice")
        alice["xep_0045"].leave_muc(temporary, "alice")
        await presence_of(alice, temporary, "alice", lambda p: p["type"] == "unavailable",
                          what="leaving")
        await alice.ping_server()
        return room, temporary, alice.localpart
    finally:
        await alice.stop()


@pytest.mark.timeout_s(120)
async def test_persistent_room_survives_a_restart(fresh_server):
    fresh_server.start()
    room, temporary, owner = await persistent_room_before_restart(fresh_server)
    assert fresh_server.stop() == 0
    fresh_server.start()
    alice = await muc_user(fresh_server, "", name=owner, register=False)
    try:
        assert await listed_rooms(alice) == {str(room): "Kept Room"}
        assert await disco_condition(alice, str(temporary)) == "item-not-found"
        features = await room_features(alice, room)
        assert {"muc_persistent", "muc_membersonly"} <= features, sorted(features)
        form = await alice["xep_0045"].get_room_config(room, timeout=DEFAULT_TIMEOUT)
        values = form.get_values()
        assert values["muc#roomconfig_roomname"] == "Kept Room", values
        assert values["muc#roomconfig_persistentroom"] in (True, "1", "true"), values
        members = await alice["xep_0045"].get_affiliation_list(room, "member",
                                                               timeout=DEFAULT_TIMEOUT)
        assert [str(j) for j in members] == [f"keeper@{fresh_server.domain}"], members
        pres, subject, _others, history = await join(alice, room, "alice")
        assert pres["muc"]["affiliation"] == "owner", pres
        assert subject["subject"] == "kept subject", subject
        assert [m["body"] for m in history] == ["said before the restart"], history
    finally:
        await alice.stop()
