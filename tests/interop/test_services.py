"""Server-side services: XEP-0030 disco, XEP-0199 ping, XEP-0092 version."""

from __future__ import annotations

import pytest
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from xmpp_helpers import create_user, login, stop_all, uname

PASSWORD = "svc-secret"


async def _client(server, **kw):
    name = uname("svc")
    await create_user(server, name, PASSWORD)
    return await login(server, name, PASSWORD, **kw)


async def test_disco_info_server(server):
    c = await _client(server)
    try:
        res = await c["xep_0030"].get_info(jid="localhost", timeout=20)
        assert res["type"] == "result"
        assert str(res["from"]) == "localhost", res["from"]
        info = res["disco_info"]
        identities = {(cat, typ) for cat, typ, _lang, _name in info["identities"]}
        assert ("server", "im") in identities, f"identities: {identities}"
        features = set(info["features"])
        for f in ("http://jabber.org/protocol/disco#info",
                  "http://jabber.org/protocol/disco#items",
                  "urn:xmpp:ping",
                  "jabber:iq:version"):
            assert f in features, f"server disco#info lacks {f}: {sorted(features)}"
    finally:
        await c.stop()


async def test_disco_items_server(server):
    c = await _client(server)
    try:
        res = await c["xep_0030"].get_items(jid="localhost", timeout=20)
        assert res["type"] == "result"
        assert str(res["from"]) == "localhost"
        # Items may be empty on a bare server; every item that is there
        # must carry a JID.
        for jid, _node, _name in res["disco_items"]["items"]:
            assert str(jid), res
    finally:
        await c.stop()


async def test_disco_info_account(server):
    c = await _client(server)
    try:
        res = await c["xep_0030"].get_info(jid=c.bare, timeout=20)
        assert res["type"] == "result"
        assert str(res["from"]) == c.bare, res["from"]
        identities = {(cat, typ) for cat, typ, _lang, _name in res["disco_info"]["identities"]}
        assert ("account", "registered") in identities, f"identities: {identities}"
    finally:
        await c.stop()


async def test_disco_info_unknown_node_is_an_error(server):
    c = await _client(server)
    try:
        with pytest.raises(IqError) as ei:
            await c["xep_0030"].get_info(jid="localhost", node="no-such-node", timeout=20)
        assert ei.value.iq["error"]["condition"] == "item-not-found", ei.value.iq
    finally:
        await c.stop()


async def test_ping_server(server):
    c = await _client(server, tls="direct")
    try:
        rtt = await c["xep_0199"].ping(jid="localhost", timeout=20)
        assert rtt is not None and rtt >= 0
        # The raw reply is an empty result.
        iq = c.Iq()
        iq["type"] = "get"
        iq["to"] = "localhost"
        iq.enable("ping")
        res = await iq.send(timeout=20)
        assert res["type"] == "result" and str(res["from"]) == "localhost"
        assert res["id"] == iq["id"]
    finally:
        await c.stop()


async def test_version(server):
    c = await _client(server)
    try:
        res = await c["xep_0092"].get_version("localhost", timeout=20)
        assert res["type"] == "result"
        sv = res["software_version"]
        assert sv["name"], f"empty software name: {res}"
        assert sv["version"], f"empty version: {res}"
    finally:
        await c.stop()


async def test_unknown_iq_gets_service_unavailable(server):
    c = await _client(server)
    try:
        iq = c.Iq()
        iq["type"] = "get"
        iq["to"] = "localhost"
        iq.xml.append(ET.Element("{urn:example:outpost:nothing}query"))
        with pytest.raises(IqError) as ei:
            await iq.send(timeout=20)
        assert ei.value.iq["error"]["condition"] in (
            "service-unavailable", "feature-not-implemented"), ei.value.iq
    finally:
        await c.stop()
