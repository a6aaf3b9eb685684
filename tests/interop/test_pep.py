"""Personal eventing (XEP-0163 over XEP-0060) with slixmpp's plugins: publish-options,
access models, +notify filtered by verified entity capabilities (XEP-0115), user nick
(XEP-0172), avatars both ways between User Avatar (XEP-0084) and the vCard (XEP-0054,
XEP-0153, XEP-0398), and bookmarks seen both as PEP (XEP-0402) and private XML storage
(XEP-0049 / XEP-0048), which the server keeps as one list (urn:xmpp:bookmarks:1#compat)."""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from xml.etree import ElementTree as ET

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0004 import Form
from slixmpp.plugins.xep_0402.stanza import Conference

from test_roster_presence import subscribe_both_ways
from xmpp_helpers import Client, Recorder, create_user, login, stop_all, uname

PASSWORD = "pep-secret"
PUBSUB_ERRORS = "http://jabber.org/protocol/pubsub#errors"
NICK_NS = "http://jabber.org/protocol/nick"
AVATAR_DATA = "urn:xmpp:avatar:data"
AVATAR_META = "urn:xmpp:avatar:metadata"
BOOKMARKS = "urn:xmpp:bookmarks:1"
VCARD_NS = "vcard-temp"
PEP_PLUGINS = ["xep_0060", "xep_0163", "xep_0115", "xep_0004"]


def options_form(form_type: str, fields: dict[str, str]) -> Form:
    form = Form()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden", value=form_type)
    for k, v in fields.items():
        form.add_field(var=k, value=v)
    return form


def publish_options(**fields: str) -> Form:
    return options_form("http://jabber.org/protocol/pubsub#publish-options",
                        {f"pubsub#{k}": v for k, v in fields.items()})


def payload(ns: str, tag: str = "probe", text: str = "", **attrs: str) -> ET.Element:
    el = ET.Element(f"{{{ns}}}{tag}", attrs)
    el.text = text
    return el


def tiny_png(seed: int) -> bytes:
    """A valid 1x1 PNG whose pixel depends on seed (so each avatar hashes differently)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    raw = b"\x00" + bytes([seed % 256, (seed * 7) % 256, (seed * 13) % 256])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def event_node(msg) -> str:
    return msg["pubsub_event"]["items"]["node"]


def event_payload(msg) -> ET.Element | None:
    item = msg.xml.find("{http://jabber.org/protocol/pubsub#event}event/"
                        "{http://jabber.org/protocol/pubsub#event}items/"
                        "{http://jabber.org/protocol/pubsub#event}item")
    return None if item is None or len(item) == 0 else item[0]


async def pep_client(server, name: str, *, interests: list[str] = (), extra: list[str] = (),
                     presence: bool = True, **kw) -> tuple[Client, Recorder]:
    """A client with caps whose disco#info says +notify for `interests` (and whatever the
    extra plugins register); initial presence only once its caps are final."""
    c = Client(server, name, PASSWORD, plugins=[*PEP_PLUGINS, *extra], initial_presence=False,
               **kw)
    events = c.record("pubsub_publish")
    c.add_event_handler(
        "session_bind", lambda _jid: [c["xep_0163"].add_interest(ns) for ns in interests])
    await c.start()
    await c["xep_0115"].update_caps(broadcast=False)
    if presence:
        c.send_presence()
    return c, events


async def new_users(server, *prefixes: str) -> list[str]:
    names = [uname(p) for p in prefixes]
    for n in names:
        await create_user(server, n, PASSWORD)
    return names


async def befriend(server, owner: Client, *names: str) -> None:
    """Mutual presence subscription between owner and each name (via short sessions)."""
    for n in names:
        other = await login(server, n, PASSWORD, resource="setup")
        try:
            await subscribe_both_ways(owner, other)
        finally:
            await other.stop()


def pubsub_condition(e: IqError) -> tuple[str, str | None]:
    err = e.iq["error"]
    specific = next((child.tag.split("}", 1)[1] for child in err.xml
                     if child.tag.startswith(f"{{{PUBSUB_ERRORS}}}")), None)
    return err["condition"], specific


# ---------------------------------------------------------------------------------------
async def test_account_advertises_pep(server):
    (an,) = await new_users(server, "pepdisco")
    a = await login(server, an, PASSWORD)
    try:
        res = await a["xep_0030"].get_info(jid=a.bare, timeout=20)
        info = res["disco_info"]
        identities = {(cat, typ) for cat, typ, _l, _n in info["identities"]}
        features = set(info["features"])
        assert ("pubsub", "pep") in identities, f"identities: {identities}"
        for f in ("http://jabber.org/protocol/pubsub#publish-options",
                  f"{BOOKMARKS}#compat", "urn:xmpp:pep-vcard-conversion:0"):
            assert f in features, f"account disco#info lacks {f}: {sorted(features)}"
    finally:
        await a.stop()


async def test_notify_follows_verified_caps(server):
    """A contact gets an owner's items exactly for the nodes its caps say +notify for:
    the last item when it comes online, then every new one (XEP-0163 §4, XEP-0115)."""
    an, bn, cn = await new_users(server, "pepowner", "pepfan", "pepother")
    probe = f"urn:example:outpost:probe:{uname('n')}"
    a, a_events = await pep_client(server, an, extra=["xep_0172"])
    clients = [a]
    try:
        await befriend(server, a, bn, cn)
        await a["xep_0172"].publish_nick("Alice One", timeout=20)
        await a["xep_0060"].publish(None, probe, id="current", payload=payload(probe, text="p1"),
                                    timeout=20)

        # bob: +notify for nick and probe; carol: +notify for probe only.
        b, b_events = await pep_client(server, bn, interests=[probe], extra=["xep_0172"])
        clients.append(b)
        c, c_events = await pep_client(server, cn, interests=[probe])
        clients.append(c)
        # Their presences carry entity capabilities (what the server verifies).
        for x in (b, c):
            p = await a.presences.wait_for(lambda p, x=x: p["from"] == x.boundjid,
                                           what=f"{x.full}'s presence at alice")
            assert p.xml.find("{http://jabber.org/protocol/caps}c") is not None, p

        def nick_from_a(m):
            p = event_payload(m)
            return (event_node(m) == NICK_NS and m["from"] == JID(a.bare)
                    and p is not None and p.text)

        def probe_from_a(text):
            return lambda m: (event_node(m) == probe and m["from"] == JID(a.bare)
                              and (event_payload(m) is not None and event_payload(m).text == text))

        # Last items on coming online.
        m = await b_events.wait_for(nick_from_a, what="alice's last nick at bob")
        assert event_payload(m).text == "Alice One", m
        await b_events.wait_for(probe_from_a("p1"), what="alice's last probe item at bob")
        await c_events.wait_for(probe_from_a("p1"), what="alice's last probe item at carol")

        # New items: nick then probe.
        await a["xep_0172"].publish_nick("Alice Two", timeout=20)
        await a["xep_0060"].publish(None, probe, id="current", payload=payload(probe, text="p2"),
                                    timeout=20)
        await b_events.wait_for(lambda m: nick_from_a(m) and event_payload(m).text == "Alice Two",
                                what="alice's new nick at bob")
        await b_events.wait_for(probe_from_a("p2"), what="alice's new probe item at bob")
        await c_events.wait_for(probe_from_a("p2"), what="alice's new probe item at carol")
        # Everything for carol up to p2 has arrived by now: no nick among it.
        nicks_at_c = [m for m in c_events.items if event_node(m) == NICK_NS]
        assert not nicks_at_c, f"carol has no +notify for {NICK_NS} but got: {nicks_at_c}"
    finally:
        await stop_all(clients)


async def test_publish_options_and_access_models(server):
    an, bn = await new_users(server, "pepopts", "pepstranger")
    a, _ = await pep_client(server, an)
    b, _ = await pep_client(server, bn)
    node = f"urn:example:outpost:multi:{uname('n')}"
    try:
        # A new node made with publish-options: open access, many items.
        for i in range(3):
            res = await a["xep_0060"].publish(
                None, node, id=f"item{i}", payload=payload(node, text=f"v{i}"),
                options=publish_options(access_model="open", persist_items="true",
                                        max_items="max"),
                timeout=20)
            assert res["type"] == "result", res
        cfg = await a["xep_0060"].get_node_config(JID(a.bare), node, timeout=20)
        form = cfg["pubsub_owner"]["configure"]["form"]
        values = form.get_values()
        assert values.get("pubsub#access_model") == "open", values

        # A stranger (no subscription) reads all three items of the open node.
        items = await b["xep_0060"].get_items(JID(a.bare), node, timeout=20)
        got = sorted(i["id"] for i in items["pubsub"]["items"])
        assert got == ["item0", "item1", "item2"], f"items of a max_items=max node: {got}"

        # Publish-options that contradict the node's configuration are a precondition
        # failure (XEP-0060 §7.1.5).
        with pytest.raises(IqError) as ei:
            await a["xep_0060"].publish(
                None, node, id="item9", payload=payload(node, text="v9"),
                options=publish_options(access_model="whitelist"), timeout=20)
        assert pubsub_condition(ei.value) == ("conflict", "precondition-not-met"), ei.value.iq

        # The owner reconfigures the node instead (what slixmpp-omemo does on that error).
        await a["xep_0060"].set_node_config(
            JID(a.bare), node,
            options_form("http://jabber.org/protocol/pubsub#node_config",
                         {"pubsub#access_model": "presence"}), timeout=20)
        values = (await a["xep_0060"].get_node_config(JID(a.bare), node, timeout=20)
                  )["pubsub_owner"]["configure"]["form"].get_values()
        assert values.get("pubsub#access_model") == "presence", values

        # Presence access now: the stranger is refused (XEP-0060 §6.5.9, presence
        # subscription required).
        with pytest.raises(IqError) as ei:
            await b["xep_0060"].get_items(JID(a.bare), node, timeout=20)
        assert pubsub_condition(ei.value) == ("not-authorized", "presence-subscription-required"), (
            ei.value.iq)
    finally:
        await stop_all([a, b])


async def test_avatar_pep_and_vcard_both_ways(server):
    """XEP-0398: a vCard photo appears in the avatar nodes (and subscribers hear of it),
    an avatar published with XEP-0084 appears in the vCard, and presence carries its hash."""
    an, bn = await new_users(server, "avowner", "avfan")
    a, _ = await pep_client(server, an, extra=["xep_0084", "xep_0054"])
    clients = [a]
    try:
        await befriend(server, a, bn)
        b, b_events = await pep_client(server, bn, extra=["xep_0084", "xep_0054"])
        clients.append(b)

        # 1. vCard -> PEP: a second, vCard-only client of alice's sets the photo with
        # slixmpp's XEP-0153 plugin (vCard get, PHOTO set, vCard publish).
        first = tiny_png(1)
        first_id = hashlib.sha1(first).hexdigest()
        legacy = await login(server, an, PASSWORD, resource="legacy",
                             plugins=["xep_0054", "xep_0153"])
        clients.append(legacy)
        await legacy["xep_0153"].set_avatar(avatar=first, mtype="image/png", timeout=20)

        data = await a["xep_0060"].get_item(JID(a.bare), AVATAR_DATA, first_id, timeout=20)
        items = list(data["pubsub"]["items"])
        assert [i["id"] for i in items] == [first_id], items
        assert items[0]["avatar_data"]["value"] == first, "avatar data differs from the vCard photo"
        meta = await a["xep_0060"].get_items(JID(a.bare), AVATAR_META, timeout=20)
        infos = meta.xml.findall(f".//{{{AVATAR_META}}}info")
        assert len(infos) == 1, meta
        assert infos[0].get("id") == first_id and infos[0].get("type") == "image/png", meta
        assert int(infos[0].get("bytes")) == len(first), meta
        # bob has +notify for the metadata node (xep_0084): he hears of the new avatar.
        await b_events.wait_for(
            lambda m: event_node(m) == AVATAR_META and m["from"] == JID(a.bare)
            and event_payload(m) is not None
            and any(i.get("id") == first_id for i in event_payload(m)),
            what="the metadata notification after the vCard change")

        # 2. PEP -> vCard (with the client library's own publish calls).
        second = tiny_png(2)
        second_id = hashlib.sha1(second).hexdigest()
        await a["xep_0084"].publish_avatar(second, timeout=20)
        await a["xep_0084"].publish_avatar_metadata(
            {"id": second_id, "type": "image/png", "bytes": len(second)}, timeout=20)
        vc = await b["xep_0054"].get_vcard(JID(a.bare), timeout=20)
        binval = vc.xml.find(f"{{{VCARD_NS}}}vCard/{{{VCARD_NS}}}PHOTO/{{{VCARD_NS}}}BINVAL")
        ptype = vc.xml.find(f"{{{VCARD_NS}}}vCard/{{{VCARD_NS}}}PHOTO/{{{VCARD_NS}}}TYPE")
        assert binval is not None, f"no PHOTO in the vCard after a PEP avatar: {vc}"
        assert base64.b64decode("".join(binval.text.split())) == second, "vCard photo differs"
        assert ptype is not None and ptype.text == "image/png", vc

        # 3. Presence carries the hash (XEP-0398 §4), injected by the server.
        mark = len(b.presences.items)
        a.send_presence(pstatus="new face")
        p = await b.presences.wait_for(lambda p: p["from"] == a.boundjid
                                       and p["status"] == "new face", since=mark,
                                       what="alice's presence with the avatar hash")
        photo_el = p.xml.find("{vcard-temp:x:update}x/{vcard-temp:x:update}photo")
        assert photo_el is not None and photo_el.text == second_id, (
            f"presence should carry <photo>{second_id}</photo>: {p}")
    finally:
        await stop_all(clients)


def storage_conferences(iq) -> dict[str, dict]:
    out = {}
    for conf in iq.xml.findall("{jabber:iq:private}query/{storage:bookmarks}storage/"
                               "{storage:bookmarks}conference"):
        nick = conf.find("{storage:bookmarks}nick")
        out[conf.get("jid")] = {"name": conf.get("name"),
                                "autojoin": conf.get("autojoin") in ("true", "1"),
                                "nick": nick.text if nick is not None else None}
    return out


def pep_conferences(iq) -> dict[str, dict]:
    out = {}
    for item in iq.xml.findall("{http://jabber.org/protocol/pubsub}pubsub/"
                               "{http://jabber.org/protocol/pubsub}items/"
                               "{http://jabber.org/protocol/pubsub}item"):
        conf = item.find(f"{{{BOOKMARKS}}}conference")
        assert conf is not None, f"bookmark item without <conference/>: {iq}"
        nick = conf.find(f"{{{BOOKMARKS}}}nick")
        out[item.get("id")] = {"name": conf.get("name"),
                               "autojoin": conf.get("autojoin") in ("true", "1"),
                               "nick": nick.text if nick is not None else None}
    return out


async def private_get(c: Client):
    iq = c.make_iq_get()
    q = ET.SubElement(iq.xml, "{jabber:iq:private}query")
    ET.SubElement(q, "{storage:bookmarks}storage")
    return await iq.send(timeout=20)


async def private_set(c: Client, conferences: dict[str, dict]):
    iq = c.make_iq_set()
    q = ET.SubElement(iq.xml, "{jabber:iq:private}query")
    st = ET.SubElement(q, "{storage:bookmarks}storage")
    for jid, v in conferences.items():
        conf = ET.SubElement(st, "{storage:bookmarks}conference",
                             {"jid": jid, "name": v["name"],
                              "autojoin": "true" if v["autojoin"] else "false"})
        if v["nick"]:
            ET.SubElement(conf, "{storage:bookmarks}nick").text = v["nick"]
    return await iq.send(timeout=20)


async def test_bookmarks_pep_and_private_storage_are_one_list(server):
    an, bn = await new_users(server, "bmowner", "bmstranger")
    a, _ = await pep_client(server, an, extra=["xep_0402", "xep_0049", "xep_0048"])
    b, _ = await pep_client(server, bn)
    room1, room2 = f"{uname('r')}@conference.example", f"{uname('r')}@conference.example"
    try:
        # A XEP-0402 client adds room1, with the publish-options §3 asks for.
        conf = Conference()
        conf["name"] = "Room One"
        conf["autojoin"] = True
        conf["nick"] = "ali"
        await a["xep_0060"].publish(
            None, BOOKMARKS, id=room1, payload=conf.xml,
            options=publish_options(persist_items="true", max_items="max",
                                    send_last_published_item="never", access_model="whitelist"),
            timeout=20)

        # A XEP-0048 client reads private storage: room1 is there.
        got = storage_conferences(await private_get(a))
        assert got == {room1: {"name": "Room One", "autojoin": True, "nick": "ali"}}, got
        # slixmpp's own XEP-0048 reader sees the same.
        legacy = await a["xep_0048"].get_bookmarks(method="xep_0049", timeout=20)
        jids = [str(c["jid"]) for c in legacy["private"]["bookmarks"]["conferences"]]
        assert jids == [room1], jids

        # It writes the whole list back with room2 added: both are PEP items.
        want = {room1: {"name": "Room One", "autojoin": True, "nick": "ali"},
                room2: {"name": "Room Two", "autojoin": False, "nick": None}}
        await private_set(a, want)
        pep = pep_conferences(await a["xep_0060"].get_items(JID(a.bare), BOOKMARKS, timeout=20))
        assert pep == want, pep

        # ... and removes room1: the PEP item goes too.
        await private_set(a, {room2: want[room2]})
        pep = pep_conferences(await a["xep_0060"].get_items(JID(a.bare), BOOKMARKS, timeout=20))
        assert pep == {room2: want[room2]}, pep
        assert storage_conferences(await private_get(a)) == {room2: want[room2]}

        # Bookmarks stay private: a stranger cannot read them (XEP-0060 §6.5.9: a
        # whitelist node refuses with not-allowed/closed-node; hiding the node is
        # also acceptable).
        with pytest.raises(IqError) as ei:
            await b["xep_0060"].get_items(JID(a.bare), BOOKMARKS, timeout=20)
        assert pubsub_condition(ei.value) in (("not-allowed", "closed-node"),
                                              ("item-not-found", None)), ei.value.iq
    finally:
        await stop_all([a, b])


async def test_explicit_subscription_to_an_open_node(server):
    """XEP-0163 §8: a PEP service MUST support the subscribe and unsubscribe use cases of
    XEP-0060, which is how an entity without a presence subscription (an OMEMO
    correspondent, say) follows an open node."""
    an, bn = await new_users(server, "subowner", "subscriber")
    a, _ = await pep_client(server, an)
    b, b_events = await pep_client(server, bn)
    node = f"urn:example:outpost:open:{uname('n')}"
    try:
        await a["xep_0060"].publish(None, node, id="current", payload=payload(node, text="v1"),
                                    options=publish_options(access_model="open"), timeout=20)
        try:
            res = await b["xep_0060"].subscribe(JID(a.bare), node, timeout=20)
        except IqError as e:
            pytest.fail(f"subscribe to an open PEP node refused: sent <subscribe node='{node}' "
                        f"jid='{b.bare}'/> to {a.bare}, got {e.iq}")
        sub = res.xml.find("{http://jabber.org/protocol/pubsub}pubsub/"
                           "{http://jabber.org/protocol/pubsub}subscription")
        assert sub is not None and sub.get("subscription") == "subscribed", res

        await a["xep_0060"].publish(None, node, id="current", payload=payload(node, text="v2"),
                                    timeout=20)
        await b_events.wait_for(lambda m: event_node(m) == node and event_payload(m) is not None
                                and event_payload(m).text == "v2",
                                what="the notification to the explicit subscriber")
        res = await b["xep_0060"].unsubscribe(JID(a.bare), node, timeout=20)
        assert res["type"] == "result", res
    finally:
        await stop_all([a, b])
