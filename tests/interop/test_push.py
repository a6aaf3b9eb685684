"""Push notifications (XEP-0357) to an app server that is slixmpp's own external
component (XEP-0114, ``ComponentXMPP``) on Outpost's component listener; the user's
client (slixmpp, which has no XEP-0357 plugin: the enable and disable requests are
written out) registers it, goes away, and a message for it wakes the app server."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import pytest
from slixmpp import ComponentXMPP, JID
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from outpost_harness import OutpostServer
from xmpp_helpers import Recorder, create_user, login, stop_all, uname

PASSWORD = "push-secret"
APP = "push.localhost"
APP_SECRET = "the app server's secret, long enough"
PUSH_NS = "urn:xmpp:push:0"
PUBSUB_NS = "http://jabber.org/protocol/pubsub"
DATA_NS = "jabber:x:data"


@pytest.fixture
def push_server(tmp_path):
    srv = OutpostServer(tmp_path / "outpost", config_overrides=f"""
[components]
"{APP}" = "{APP_SECRET}"
""")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


class AppServer(ComponentXMPP):
    """Answers every notification (a pubsub publish) with a result, and keeps it."""

    def __init__(self):
        super().__init__(APP, APP_SECRET)
        self.notifications = Recorder("app server notifications")
        self.connected = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self._started)
        self.register_handler(Callback(
            "push notification",
            MatchXPath(f"{{{self.default_ns}}}iq/{{{PUBSUB_NS}}}pubsub"),
            self._notified))

    def _started(self, _event):
        if not self.connected.done():
            self.connected.set_result(True)

    def _notified(self, iq):
        self.notifications.add(iq)
        iq.reply().send()


def enable_iq(client, node: str):
    iq = client.make_iq_set()
    enable = ET.SubElement(iq.xml, f"{{{PUSH_NS}}}enable", jid=APP, node=node)
    form = ET.SubElement(enable, f"{{{DATA_NS}}}x", type="submit")
    for var, value in (("FORM_TYPE", "http://jabber.org/protocol/pubsub#publish-options"),
                       ("secret", "device-token-1")):
        field = ET.SubElement(form, f"{{{DATA_NS}}}field", var=var)
        ET.SubElement(field, f"{{{DATA_NS}}}value").text = value
    return iq


def summary(iq) -> dict[str, str]:
    fields = iq.xml.iter(f"{{{DATA_NS}}}field")
    return {f.get("var"): f.findtext(f"{{{DATA_NS}}}value") for f in fields}


async def test_a_message_for_a_user_away_wakes_the_app_server(push_server):
    app = AppServer()
    app.connect(*push_server.component_addr)
    await asyncio.wait_for(app.connected, 20)
    an, bn = uname("pushed"), uname("pusher")
    await create_user(push_server, an, PASSWORD)
    await create_user(push_server, bn, PASSWORD)
    a = await login(push_server, an, PASSWORD)
    b = await login(push_server, bn, PASSWORD)
    try:
        info = await a["xep_0030"].get_info(jid=JID(a.bare), timeout=20)
        assert PUSH_NS in info["disco_info"]["features"], info
        assert (await enable_iq(a, f"{an}-phone").send(timeout=20))["type"] == "result"
        await a.stop()

        b.send_message(mto=a.bare, mbody="wake up", mtype="chat")
        iq = await app.notifications.wait_for(lambda _: True, what="a notification")
        assert iq["from"] == JID(a.bare), iq
        publish = iq.xml.find(f"{{{PUBSUB_NS}}}pubsub/{{{PUBSUB_NS}}}publish")
        assert publish is not None and publish.get("node") == f"{an}-phone", iq
        assert summary(iq).get("message-count") == "1", iq
        # The client's publish options go along, for the app server to find its device.
        assert summary(iq).get("secret") == "device-token-1", iq
    finally:
        await stop_all([a, b])
        app.disconnect()


async def test_the_component_needs_its_secret(push_server):
    app = ComponentXMPP(APP, "not the secret at all, no")
    failed = asyncio.get_event_loop().create_future()
    started = asyncio.get_event_loop().create_future()
    app.add_event_handler("session_start", lambda _: started.done() or started.set_result(1))
    app.add_event_handler("disconnected", lambda _: failed.done() or failed.set_result(1))
    app.connect(*push_server.component_addr)
    done, _ = await asyncio.wait({failed, started}, timeout=20,
                                 return_when=asyncio.FIRST_COMPLETED)
    assert failed in done and started not in done, "a wrong secret must not be accepted"
