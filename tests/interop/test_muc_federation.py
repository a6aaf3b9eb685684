"""A room on one Outpost with occupants on three servers: a.test (the room's, at
conference.a.test), b.test (another Outpost) and p.test (Prosody 0.12, Debian's package),
all on loopback. Every occupant sees every other's presence and every message once, in the
room's order; a private message from the Prosody occupant reaches the one on b.test; the
remote occupants reach the room with IQs (self-ping, disco). And an occupant on another
Outpost whose way to the room is down keeps talking: what it said reaches the room once
the way is back, once and in order.

Outposts come from ``federated_outposts`` (a.test on 127.0.0.4, b.test on 127.0.0.5, each
also listing the other's conference service and p.test); Prosody is
``test_federation_prosody.ProsodyServer`` (127.0.0.2, its test-only route module sends
a.test, conference.a.test and b.test to the Outposts' addresses)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from slixmpp import JID

from outpost_harness import federated_outposts
from test_federation_prosody import P_HOST, P_S2S, ProsodyServer
from test_muc import (PASSWORD, create_room, join, muc_user, occupant,
                      ping_condition, presence_of, said_everywhere, say)
from xmpp_helpers import Client, TcpRelay, stop_all, uname

A_HOST, B_HOST = "127.0.0.4", "127.0.0.5"
S2S_PORT = 5269
WAIT = 60.0


@pytest.fixture(scope="module")
def three_servers(tmp_path_factory: pytest.TempPathFactory):
    """(a.test, b.test, p.test): two Outposts and a Prosody, each knowing where the others
    are (conference.a.test included)."""
    if shutil.which("prosody") is None or shutil.which("prosodyctl") is None:
        raise AssertionError("prosody is not installed (tests/interop/run.sh installs it)")
    sa, sb = federated_outposts(tmp_path_factory.mktemp("muc_federation"),
                                services=("conference",),
                                peers={"p.test": f"{P_HOST}:{P_S2S}"})
    # Not under pytest's private temp directory: Prosody runs as its own user.
    pdir = Path(tempfile.mkdtemp(prefix="outpost-interop-prosody-muc-"))
    os.chmod(pdir, 0o755)
    prosody = ProsodyServer(pdir, routes={d: (h, S2S_PORT) for d, h in (
        ("a.test", A_HOST), ("conference.a.test", A_HOST), ("b.test", B_HOST))})
    try:
        sa.start()
        sb.start()
        prosody.write_config()
        prosody.start()
        yield sa, sb, prosody
    except BaseException:
        print(diagnostics(sa, sb, prosody))
        raise
    finally:
        p_code = prosody.stop()
        alive = [s.alive() for s in (sa, sb)]
        codes = [s.stop() for s in (sa, sb)]
        shutil.rmtree(pdir, ignore_errors=True)
    for s, was_alive, code in zip((sa, sb), alive, codes):
        assert was_alive, f"{s.domain} died during the tests\n{s.log_tail()}"
        assert code == 0, f"{s.domain} exited with {code}\n{s.log_tail()}"
    assert p_code == 0, f"prosody exited with {p_code}"


def diagnostics(*servers) -> str:
    return "".join(f"\n--- {s.domain} ---\n{s.log_tail(60)}" for s in servers)


async def prosody_user(prosody: ProsodyServer, prefix: str) -> Client:
    name = uname(prefix)
    prosody.register(name, PASSWORD)
    return await muc_user(prosody, "", name=name, register=False)


async def room_on_three_servers(sa, sb, prosody, prefix: str) -> tuple[JID, list[Client]]:
    """alice@a.test creates a room; bob@b.test and paul@p.test join it, in that order."""
    clients = [await muc_user(sa, f"{prefix}a")]
    try:
        clients.append(await muc_user(sb, f"{prefix}b"))
        clients.append(await prosody_user(prosody, f"{prefix}p"))
        alice, bob, paul = clients
        room = await create_room(alice, prefix, nick="alice")
        assert room.domain == "conference.a.test", room
        await join(bob, room, "bob", timeout=WAIT)
        await join(paul, room, "paul", timeout=WAIT)
    except BaseException:
        await stop_all(clients)
        raise
    return room, clients


NICKS = ("alice", "bob", "paul")


def available_count(c: Client, room: JID, nick: str) -> int:
    return sum(1 for p in c.muc_presences.items
               if p["from"] == occupant(room, nick) and p["type"] != "unavailable")


def room_bodies(c: Client, room: JID) -> list[tuple[str, str]]:
    return [(m["from"].resource, m["body"]) for m in c.room_messages.items
            if m["from"].bare == room.bare and m["body"]]


@pytest.mark.timeout_s(150)
async def test_presence_and_messages_reach_every_server_once_in_order(three_servers):
    sa, sb, prosody = three_servers
    room, clients = await room_on_three_servers(sa, sb, prosody, "fedmuc")
    try:
        for c, me in zip(clients, NICKS):
            for nick in NICKS:
                if nick != me:
                    await presence_of(c, room, nick, what="the presence")
        sent = []
        for rnd in range(2):
            for c, nick in zip(clients, NICKS):
                body = f"{nick} says {rnd} \u2603 <&>"
                say(c, room, body)
                # The room has handled it once its reflection is back at the sender, so
                # the room's order is the order sent here.
                await said_everywhere(room, nick, body, [c])
                sent.append((nick, body))
        fence = "fence " + uname("f")
        say(clients[0], room, fence)
        for c in clients:
            await c.messages.wait_for(lambda m: m["body"] == fence, timeout=WAIT,
                                      what=f"the fence at {c.bare}")
        for c, me in zip(clients, NICKS):
            got = [x for x in room_bodies(c, room) if x[1] != fence]
            assert got == sent, f"{c.bare}: {got}"
            for nick in NICKS:
                if nick != me:
                    assert available_count(c, room, nick) == 1, (
                        f"{c.bare} got {available_count(c, room, nick)} presences of {nick}")
    except AssertionError as e:
        raise AssertionError(f"{e}{diagnostics(sa, sb, prosody)}") from None
    finally:
        await stop_all(clients)


@pytest.mark.timeout_s(150)
async def test_private_message_from_prosody_to_another_outpost(three_servers):
    sa, sb, prosody = three_servers
    room, clients = await room_on_three_servers(sa, sb, prosody, "fedpm")
    alice, bob, paul = clients
    try:
        paul.send_message(mto=occupant(room, "bob"), mbody="psst from p.test", mtype="chat")
        got = await bob.messages.wait_for(lambda m: m["body"] == "psst from p.test",
                                          timeout=WAIT, what="paul's private message")
        assert got["from"] == occupant(room, "paul") and got["type"] == "chat", got
        bob.send_message(mto=got["from"], mbody="hush from b.test", mtype="chat")
        back = await paul.messages.wait_for(lambda m: m["body"] == "hush from b.test",
                                            timeout=WAIT, what="bob's answer")
        assert back["from"] == occupant(room, "bob"), back
        # Nobody else saw them (checked after a later room message).
        say(alice, room, "after the whispers")
        await said_everywhere(room, "alice", "after the whispers", [alice])
        whispers = ("psst from p.test", "hush from b.test")
        assert not [m for m in alice.messages.items if m["body"] in whispers], \
            alice.messages.items
    except AssertionError as e:
        raise AssertionError(f"{e}{diagnostics(sa, sb, prosody)}") from None
    finally:
        await stop_all(clients)


@pytest.mark.timeout_s(150)
async def test_remote_occupants_reach_the_room_with_iqs(three_servers):
    sa, sb, prosody = three_servers
    room, clients = await room_on_three_servers(sa, sb, prosody, "fediq")
    try:
        # XEP-0410: the room answers a self-ping of a joined occupant (None: a result),
        # wherever the occupant's server is; and its disco#info (XEP-0045 "Querying for Room
        # Information") names a
        # conference room.
        pings = {c.bare: await ping_condition(c, occupant(room, nick))
                 for c, nick in zip(clients, NICKS)}
        assert pings == {c.bare: None for c in clients}, f"self-pings: {pings}"
        identities = {}
        for c in clients:
            info = await c["xep_0030"].get_info(jid=room, timeout=WAIT)
            identities[c.bare] = {(cat, t) for cat, t, _l, _n
                                  in info["disco_info"]["identities"]}
        assert all(("conference", "text") in i for i in identities.values()), identities
    except AssertionError as e:
        raise AssertionError(f"{e}{diagnostics(sa, sb, prosody)}") from None
    finally:
        await stop_all(clients)


# ----------------------------------------------------- a cut between two Outposts
async def cut_pair(tmp: Path, relay: TcpRelay):
    """c.test and d.test (127.0.0.7, 127.0.0.8); d.test reaches conference.c.test only
    through the relay."""
    servers = federated_outposts(tmp, domains=("c.test", "d.test"),
                                 hosts=("127.0.0.7", "127.0.0.8"), services=("conference",),
                                 peers={"conference.c.test": "%s:%d" % relay.addr})
    try:
        for s in servers:
            s.start()
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return servers


@pytest.mark.timeout_s(150)
async def test_what_a_remote_occupant_says_during_a_cut_arrives_after_it(tmp_path):
    relay = await TcpRelay(("127.0.0.7", S2S_PORT)).start()
    sc, sd = await cut_pair(tmp_path, relay)
    clients: list[Client] = []
    try:
        carol = await muc_user(sc, "cutc")
        clients.append(carol)
        dave = await muc_user(sd, "cutd")
        clients.append(dave)
        room = await create_room(carol, "cut", nick="carol")
        await join(dave, room, "dave", timeout=WAIT)
        say(dave, room, "before the cut")
        await said_everywhere(room, "dave", "before the cut", [carol, dave])

        # d.test loses its way to the room; the room's way to d.test stays.
        relay.refuse()
        for link in relay.links:
            link.cut()
        cut = [f"cut {i}" for i in range(3)]
        for body in cut:
            say(dave, room, body)
        await dave.ping_server()  # d.test has accepted them (its outbox is durable)
        say(carol, room, "still here")
        await said_everywhere(room, "carol", "still here", [carol, dave])
        assert not [x for x in room_bodies(carol, room) if x[1] in cut], \
            "reached the room through a refused relay"

        relay.refuse(False)
        for c in (carol, dave):
            await c.messages.wait_for(lambda m: m["body"] == cut[-1], timeout=WAIT,
                                      what=f"the last message of the cut at {c.bare}")
        say(carol, room, "after the heal")
        await said_everywhere(room, "carol", "after the heal", [carol, dave])
        for c in (carol, dave):
            got = [b for nick, b in room_bodies(c, room) if nick == "dave"]
            assert got == ["before the cut", *cut], f"{c.bare}: once, in order: {got}"
    except AssertionError as e:
        raise AssertionError(f"{e}{diagnostics(sc, sd)}") from None
    finally:
        await stop_all(clients)
        await relay.close()
        codes = [s.stop() for s in (sc, sd)]
    assert codes == [0, 0], f"exit codes {codes}{diagnostics(sc, sd)}"
