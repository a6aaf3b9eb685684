"""The HTTP API (`/api/v1`) and XMPP on one server: a user of the API, driven with aiohttp
(JSON calls with a bearer token, and the Server-Sent Events of `GET /api/v1/events` read
line by line: `id:`, `event:`, `data:` JSON), talks to slixmpp users (`xmpp_helpers.Client`).

Each API user registers and logs in over the API; the events stream opens the token's
session (the resource `api-<token id>`). Every event received is also checked against the
schema the served OpenAPI document gives its type (a component described as
"`event: <type>`"), and event ids must increase; those findings are asserted at the end of
each test, after what the test is about.

Nothing sleeps: the API's answers come once the server has taken the request in, events
and stanzas are waited for with timeouts, and an XEP-0199 ping round trip is the barrier
on the slixmpp side. aiohttp trusts exactly the server's certificate, without the host
name check (the URLs name 127.0.0.1)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import ssl
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable
from urllib.parse import quote

import aiohttp
import jsonschema
from slixmpp import JID

from xmpp_helpers import (
    DEFAULT_TIMEOUT, Client, Recorder, chat_from, is_available_from, is_unavailable_from,
    register, stop_all, uname,
)

PASSWORD = "rest-xmpp-secret"
NS_OOB = "jabber:x:oob"
MUC_PLUGINS = ["xep_0045", "xep_0004"]


# ------------------------------------------------------------------- the API
def http_ssl(server) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server.cert_path))
    ctx.check_hostname = False  # the certificate names the domain, the URLs 127.0.0.1
    return ctx


def parse_time(text: str) -> float:
    """An RFC 3339 time (as the API writes it) as Unix seconds; ValueError otherwise."""
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", text):
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: Any) -> bool:
    if isinstance(value, str):
        parse_time(value)
    return True


class EventSchemas:
    """The schemas of event types in the served OpenAPI document."""

    def __init__(self, doc: dict):
        self.components = doc["components"]
        self.by_type: dict[str, str] = {}
        for name, schema in self.components["schemas"].items():
            m = re.match(r"`event: (\w+)`", schema.get("description", ""))
            if m:
                self.by_type[m.group(1)] = name

    def problems(self, kind: str, data: Any) -> list[str]:
        name = self.by_type.get(kind)
        if name is None:
            return [f"event type {kind!r} has no schema in the document "
                    f"(documented: {sorted(self.by_type)}): {data}"]
        validator = jsonschema.Draft202012Validator(
            {"$ref": f"#/components/schemas/{name}", "components": self.components},
            format_checker=FORMATS)
        return [f"`{kind}` event {data} breaks {name}: {e.message} "
                f"(at {'/'.join(map(str, e.absolute_path)) or 'top'})"
                for e in validator.iter_errors(data)]


@dataclass
class SseEvent:
    id: str | None
    event: str
    data: Any

    def __str__(self) -> str:
        return f"{self.event}#{self.id} {json.dumps(self.data, ensure_ascii=False)}"


def event(kind: str, **want: Any) -> Callable[[SseEvent], bool]:
    """An event of this type whose data has these values."""
    def pred(e: SseEvent) -> bool:
        return (e.event == kind and isinstance(e.data, dict)
                and all(e.data.get(k) == v for k, v in want.items()))
    return pred


class EventStream:
    """One open `GET /api/v1/events`, read line by line into a Recorder of SseEvents."""

    def __init__(self, response: aiohttp.ClientResponse, name: str, schemas: EventSchemas):
        self.response = response
        self.schemas = schemas
        self.events = Recorder(f"{name} events")
        self.problems: list[str] = []
        self.comments = 0
        self.ended: str | None = None
        self._last_id: int | None = None
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        ident: str | None = None
        kind = ""
        data: list[str] = []
        try:
            async for raw in self.response.content:
                line = raw.decode("utf-8")
                line = line[:-1] if line.endswith("\n") else line
                line = line[:-1] if line.endswith("\r") else line
                if line == "":
                    if data:
                        self._dispatch(ident, kind or "message", "\n".join(data))
                    ident, kind, data = None, "", []
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "data":
                    data.append(value)
                elif field == "event":
                    kind = value
                elif field == "id":
                    ident = value
                else:
                    self.problems.append(f"unknown SSE field in line {line!r}")
            self.ended = "the server ended the stream"
        except asyncio.CancelledError:
            self.ended = "closed by the test"
            raise
        except Exception as e:  # noqa: BLE001 (reported with the waits that time out)
            self.ended = f"read failed: {e!r}"

    def _dispatch(self, ident: str | None, kind: str, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            self.problems.append(f"`{kind}` event #{ident} data is not JSON: {text!r}")
            data = text
        if ident is None or not ident.isdigit():
            self.problems.append(f"`{kind}` event without a numeric id: {ident!r}")
        else:
            if self._last_id is not None and int(ident) <= self._last_id:
                self.problems.append(f"event id {ident} after {self._last_id}")
            self._last_id = int(ident)
        self.problems.extend(self.schemas.problems(kind, data))
        self.events.add(SseEvent(ident, kind, data))

    async def wait_for(self, pred: Callable[[SseEvent], bool], what: str,
                       timeout: float = DEFAULT_TIMEOUT, since: int = 0) -> SseEvent:
        try:
            return await self.events.wait_for(pred, timeout=timeout, what=what, since=since)
        except AssertionError as e:
            raise AssertionError(f"{e} (stream: {self.ended or 'open'})") from None

    def count(self, pred: Callable[[SseEvent], bool]) -> int:
        return sum(1 for e in self.events.items if pred(e))

    def mark(self) -> int:
        return len(self.events.items)

    def assert_conforms(self) -> None:
        """Every event so far had an increasing id and the data its type's schema says."""
        assert not self.problems, "events that break the API's document:\n" + "\n".join(
            self.problems)

    def close(self) -> None:
        self._task.cancel()
        self.response.close()


class Api:
    """An aiohttp session on the server's HTTPS listener (`async with Api(server) as api`)."""

    def __init__(self, server):
        self.server = server
        host, port = server.listeners["https"]
        self.base = f"https://{host}:{port}"
        self.streams: list[EventStream] = []

    async def __aenter__(self) -> "Api":
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=http_ssl(self.server)))
        status, doc = await self.request("GET", "/api/v1/openapi.json")
        assert status == 200, (status, doc)
        self.schemas = EventSchemas(doc)
        return self

    async def __aexit__(self, *exc) -> None:
        for s in self.streams:
            s.close()
        await self.http.close()

    async def request(self, method: str, path: str, body: Any = None, *,
                      token: str | None = None, params: dict | None = None,
                      timeout: float = DEFAULT_TIMEOUT) -> tuple[int, Any]:
        """(status, decoded JSON body or None)."""
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.base + path, json=body, params=params,
                                     headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            raw = await r.read()
            return r.status, (json.loads(raw) if raw else None)

    async def new_user(self, prefix: str, label: str = "interop") -> "RestUser":
        """A user registered and logged in over the API (its session not started yet)."""
        user = RestUser(self, uname(prefix))
        await user.register()
        await user.login(label)
        return user


class RestUser:
    def __init__(self, api: Api, localpart: str, password: str = PASSWORD):
        self.api = api
        self.localpart = localpart
        self.password = password
        self.jid = f"{localpart}@{api.server.domain}"
        self.token: str | None = None
        self.resource: str | None = None

    @property
    def full(self) -> str:
        assert self.resource, "not logged in"
        return f"{self.jid}/{self.resource}"

    async def register(self) -> None:
        status, answer = await self.api.request(
            "POST", "/api/v1/register", {"username": self.localpart, "password": self.password})
        assert (status, answer) == (201, {"jid": self.jid}), (status, answer)

    async def login(self, label: str = "interop") -> None:
        status, answer = await self.api.request(
            "POST", "/api/v1/login", {"jid": self.jid, "password": self.password, "label": label})
        assert status == 200, (status, answer)
        assert answer["jid"] == self.jid and answer["token"].startswith("opt_"), answer
        assert answer["resource"].startswith("api-"), answer
        self.token, self.resource = answer["token"], answer["resource"]

    async def call(self, method: str, path: str, body: Any = None, *,
                   params: dict | None = None, expect: int = 200) -> Any:
        status, answer = await self.api.request(method, path, body, token=self.token,
                                                params=params)
        assert status == expect, f"{method} {path} {body or ''} -> {status} {answer} " \
                                 f"(expected {expect})"
        return answer

    async def send(self, to: str, body: str, **extra: Any) -> dict:
        answer = await self.call("POST", "/api/v1/messages", {"to": to, "body": body, **extra})
        assert set(answer) == {"id", "state"} and answer["id"], answer
        return answer

    async def events(self) -> EventStream:
        """Opens the event stream (which starts the token's session, if not running)."""
        r = await self.api.http.get(
            self.api.base + "/api/v1/events",
            headers={"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=DEFAULT_TIMEOUT))
        if r.status != 200:
            text = await r.text()
            r.close()
            raise AssertionError(f"GET /api/v1/events -> {r.status} {text}")
        assert r.headers["Content-Type"].startswith("text/event-stream"), r.headers
        stream = EventStream(r, self.localpart, self.api.schemas)
        self.api.streams.append(stream)
        return stream


# ------------------------------------------------------------------ slixmpp
async def xmpp_user(server, prefix: str, **kw) -> Client:
    """A slixmpp user registered in band and online: its initial presence taken in (a
    ping round trip after it), so messages to its bare JID are delivered, not stored."""
    c = await register(server, uname(prefix), PASSWORD, **kw)
    await c.ping_server()
    return c


def message_from(jid: str, body: str) -> Callable[[SseEvent], bool]:
    return event("message", **{"from": jid, "body": body})


def pres_type(kind: str, from_bare: str):
    return lambda p: p["type"] == kind and p["from"].bare == from_bare


# -------------------------------------------------------------------- tests
async def test_rest_user_and_xmpp_user_chat(server):
    bob = await xmpp_user(server, "xchat")
    try:
        async with Api(server) as api:
            alice = await api.new_user("rchat")
            me = await alice.call("GET", "/api/v1/me")
            assert (me["jid"], me["resource"]) == (alice.jid, alice.resource), me
            events = await alice.events()

            text = "hello from HTTP \u2014 <b>&amp;</b> \u2713 \u4f60\u597d"
            sent = await alice.send(bob.bare, text)
            assert sent["state"] == "delivered", sent
            got = await bob.messages.wait_for(chat_from(alice.jid, text),
                                              what="the API user's message")
            # From the token's own resource, with the id the API answered.
            assert str(got["from"]) == alice.full, got
            assert got["id"] == sent["id"], (got, sent)
            assert got["to"].bare == bob.bare, got

            answer = "hi, HTTP user \u263a"
            reply = bob.make_message(mto=got["from"], mbody=answer, mtype="chat")
            reply["id"] = "bob-reply-1"
            reply.send()
            ev = await events.wait_for(message_from(bob.full, answer), what="bob's answer")
            assert ev.data["to"] == alice.full, ev
            assert (ev.data["type"], ev.data["id"]) == ("chat", "bob-reply-1"), ev
            assert "carbon" not in ev.data, ev
            assert abs(parse_time(ev.data["timestamp"]) - time.time()) < 60, ev
            # The API user's own message is not an event of its own session.
            assert events.count(event("message", body=text)) == 0, events.events.items
            events.assert_conforms()
    finally:
        await stop_all([bob])


async def test_friends_both_ways_and_presence(server):
    bob = await xmpp_user(server, "xfriend")
    try:
        async with Api(server) as api:
            alice = await api.new_user("rfriend")
            events = await alice.events()

            # The API user asks; the XMPP user gets the request, approves and asks back.
            change = await alice.call("POST", "/api/v1/friends", {"jid": bob.bare}, expect=202)
            assert change == {"jid": bob.bare, "subscription": "none", "ask": "subscribe"}, \
                change
            req = await bob.presences.wait_for(pres_type("subscribe", alice.jid),
                                               what="the API user's subscribe")
            assert req["to"].bare == bob.bare, req
            bob.send_presence(pto=alice.jid, ptype="subscribed")
            bob.send_presence(pto=alice.jid, ptype="subscribe")
            await events.wait_for(event("subscription", **{"from": bob.bare,
                                                           "type": "subscribed"}),
                                  what="bob's approval")
            await events.wait_for(event("roster", jid=bob.bare, subscription="to", ask=None),
                                  what="roster push: to")
            await events.wait_for(event("subscription", **{"from": bob.bare,
                                                           "type": "subscribe"}),
                                  what="bob's request")
            requests = await alice.call("GET", "/api/v1/friends/requests")
            assert requests == [{"jid": bob.bare}], requests

            # The API user accepts the same way it asked.
            change = await alice.call("POST", "/api/v1/friends", {"jid": bob.bare}, expect=202)
            assert change == {"jid": bob.bare, "subscription": "both", "ask": None}, change
            await events.wait_for(event("roster", jid=bob.bare, subscription="both"),
                                  what="roster push: both")
            await bob.presences.wait_for(pres_type("subscribed", alice.jid),
                                         what="the API user's approval")
            # Presence flows both ways: bob's (sent on his approval) at the API, the API
            # session's available presence at bob.
            await events.wait_for(event("presence", **{"from": bob.full,
                                                       "presence": "available"}),
                                  what="bob's presence")
            await bob.presences.wait_for(is_available_from(alice.full),
                                         what="the API session's presence")
            assert await alice.call("GET", "/api/v1/friends/requests") == []
            friends = await alice.call("GET", "/api/v1/friends")
            assert friends == [{"jid": bob.bare, "name": None, "subscription": "both",
                                "ask": None, "presence": "available", "status": None}], friends
            roster = await bob.fetch_roster()
            assert roster[alice.jid]["subscription"] == "both", roster
            assert not roster[alice.jid].get("ask"), roster

            # bob goes away: an event, and the friend list says so.
            mark = events.mark()
            bob.send_presence(pshow="away", pstatus="on a break \u2615")
            ev = await events.wait_for(event("presence", **{"from": bob.full}), since=mark,
                                       what="bob's away presence")
            assert ev.data == {"from": bob.full, "presence": "away",
                               "status": "on a break \u2615"}, ev
            friends = await alice.call("GET", "/api/v1/friends")
            assert [(f["jid"], f["presence"], f["status"]) for f in friends] == \
                [(bob.bare, "away", "on a break \u2615")], friends

            # And the other way: the API user's presence reaches bob.
            mark_b = len(bob.presences.items)
            await alice.call("PUT", "/api/v1/presence", {"show": "dnd", "status": "in a call"},
                             expect=204)
            p = await bob.presences.wait_for(is_available_from(alice.full), since=mark_b,
                                             what="the API user's dnd")
            assert (p["show"], p["status"]) == ("dnd", "in a call"), p
            events.assert_conforms()
    finally:
        await stop_all([bob])


async def test_offline_message_reaches_rest_user_at_login(server):
    bob = await xmpp_user(server, "xoffline")
    try:
        async with Api(server) as api:
            # Registered over the API, never logged in: no session, no resource online.
            alice = RestUser(api, uname("roffline"))
            await alice.register()
            text = "written while you were away \u2709"
            before = time.time()
            m = bob.make_message(mto=alice.jid, mbody=text, mtype="chat")
            m["id"] = "offline-1"
            m.send()
            await bob.ping_server()  # the server has taken (and stored) it
            after = time.time()

            await alice.login()
            events = await alice.events()
            ev = await events.wait_for(message_from(bob.full, text),
                                       what="the offline message")
            assert ev.data["id"] == "offline-1" and ev.data["type"] == "chat", ev
            assert ev.data["to"].split("/")[0] == alice.jid, ev
            # Stamped when it was stored (XEP-0203 delay, to the second).
            stamp = parse_time(ev.data["timestamp"])
            assert int(before) <= stamp <= after + 1, (ev, before, after)

            answer = "back now"
            sent = await alice.send(bob.bare, answer)
            assert sent["state"] == "delivered", sent
            await bob.messages.wait_for(chat_from(alice.jid, answer), what="the answer")

            history = await alice.call("GET", "/api/v1/messages", params={"with": bob.bare})
            assert history["complete"] is True, history
            got = [(h["from"].split("/")[0], h["to"].split("/")[0], h["body"])
                   for h in history["messages"]]
            assert got == [(bob.bare, alice.jid, text), (alice.jid, bob.bare, answer)], history
            ids = [h["id"] for h in history["messages"]]
            assert len(set(ids)) == 2 and all(ids), history
            times = [parse_time(h["timestamp"]) for h in history["messages"]]
            assert int(before) <= times[0] <= times[1] <= time.time() + 1, history
            # Delivered once.
            assert events.count(message_from(bob.full, text)) == 1, events.events.items
            events.assert_conforms()
    finally:
        await stop_all([bob])


async def test_carbons_between_rest_and_xmpp_sessions_of_one_account(server):
    bob = await xmpp_user(server, "xcarbpeer")
    clients = [bob]
    try:
        async with Api(server) as api:
            carol = await api.new_user("rcarbon")
            desk = Client(server, carol.localpart, PASSWORD, resource="desk",
                          plugins=["xep_0280"])
            await desk.start()
            clients.append(desk)
            sent_carbons = desk.record("carbon_sent")
            res = await desk["xep_0280"].enable(timeout=DEFAULT_TIMEOUT)
            assert res["type"] == "result", res
            events = await carol.events()  # the API session enables carbons as it starts
            await desk.ping_server()

            # What the API session sends shows at the XMPP client as a 'sent' carbon.
            text = "sent over HTTP"
            sent = await carol.send(bob.bare, text)
            got = await bob.messages.wait_for(chat_from(carol.jid, text), what="at bob")
            assert str(got["from"]) == carol.full, got
            c = await sent_carbons.wait_for(lambda c: c["carbon_sent"]["body"] == text,
                                            what="a sent carbon at the XMPP client")
            assert c["from"] == JID(carol.jid) and c["to"] == desk.boundjid, c
            inner = c["carbon_sent"]
            assert str(inner["from"]) == carol.full and inner["to"] == JID(bob.bare), inner
            assert inner["id"] == sent["id"] and inner["type"] == "chat", inner
            assert not any(m["body"] == text for m in desk.messages.items), desk.messages.items

            # And what the XMPP client sends shows at the API session, marked `sent`.
            text2 = "sent over XMPP"
            m = desk.make_message(mto=bob.bare, mbody=text2, mtype="chat")
            m["id"] = "desk-1"
            m.send()
            await bob.messages.wait_for(chat_from(carol.jid, text2), what="at bob")
            ev = await events.wait_for(event("message", body=text2), what="the sent carbon")
            assert ev.data["carbon"] == "sent", ev
            assert (ev.data["from"], ev.data["to"]) == (desk.full, bob.bare), ev
            assert ev.data["id"] == "desk-1", ev

            # A message to the XMPP client alone reaches the API session as a copy.
            text3 = "to the desk only"
            bob.send_message(mto=desk.full, mbody=text3, mtype="chat")
            await desk.messages.wait_for(chat_from(bob.bare, text3), what="at the desk")
            ev = await events.wait_for(event("message", body=text3),
                                       what="the received carbon")
            assert (ev.data["from"], ev.data["to"]) == (bob.full, desk.full), ev
            events.assert_conforms()
    finally:
        await stop_all(clients)


async def test_receipts_between_rest_and_xmpp(server):
    bob = await xmpp_user(server, "xreceipt", plugins=["xep_0184"])
    receipts = bob.record("receipt_received")
    try:
        async with Api(server) as api:
            alice = await api.new_user("rreceipt")
            events = await alice.events()

            # bob asks for a receipt; the API session's client gets the message, and bob
            # the receipt once the event was written to that client.
            text = "tell me when you have this"
            m = bob.make_message(mto=alice.jid, mbody=text, mtype="chat")
            m["id"] = "ask-receipt-1"
            m["request_receipt"] = True
            m.send()
            ev = await events.wait_for(message_from(bob.full, text), what="bob's message")
            assert ev.data["id"] == "ask-receipt-1", ev
            r = await receipts.wait_for(lambda r: r["receipt"] == "ask-receipt-1",
                                        what="the API session's receipt")
            assert str(r["from"]) == alice.full, r

            # The API's message asks for one; bob's client (xep_0184) acknowledges it and
            # the API user gets a receipt event with the message's id.
            sent = await alice.send(bob.bare, "and this one?")
            got = await bob.messages.wait_for(chat_from(alice.jid, "and this one?"),
                                              what="the API's message")
            assert got["request_receipt"] and got["id"] == sent["id"], got
            rev = await events.wait_for(event("receipt", id=sent["id"]),
                                        what="the receipt event")
            assert rev.data == {"from": bob.full, "id": sent["id"]}, rev
            events.assert_conforms()
    finally:
        await stop_all([bob])


def room_path(room: str, rest: str = "") -> str:
    return f"/api/v1/rooms/{quote(room, safe='')}{rest}"


async def test_rest_user_and_xmpp_user_in_a_room(server):
    bob = await xmpp_user(server, "xroom", plugins=MUC_PLUGINS)
    # Every presence from a room (slixmpp's xep_0045 event; its plain `presence` event
    # leaves some out).
    room_presences = bob.record("groupchat_presence")
    try:
        async with Api(server) as api:
            alice = await api.new_user("rroom")
            me = await alice.call("GET", "/api/v1/me")
            assert me["rooms_service"] == f"conference.{server.domain}", me
            room = f"{uname('restroom')}@{me['rooms_service']}"
            events = await alice.events()

            # The API user makes the room by entering it (owner, moderator) ...
            joined = await alice.call("POST", "/api/v1/rooms", {"jid": room, "nick": "rest"})
            assert (joined["jid"], joined["nick"], joined["joined"]) == (room, "rest", True), \
                joined
            assert [(o["nick"], o["role"], o["affiliation"]) for o in joined["occupants"]] == \
                [("rest", "moderator", "owner")], joined
            ev = await events.wait_for(event("occupant", room=room, nick="rest", self=True),
                                       what="the API user's own occupant event")
            assert (ev.data["role"], ev.data["affiliation"], ev.data["presence"]) == \
                ("moderator", "owner", "available"), ev
            # ... and says something before anyone else is there.
            first = "first, before anyone came"
            said1 = await alice.call("POST", room_path(room, "/messages"), {"body": first})
            assert set(said1) == {"id", "state"} and said1["state"] == "delivered", said1
            own = await events.wait_for(event("groupchat", room=room, nick="rest", body=first),
                                        what="the API user's own message, back from the room")
            assert own.data["id"] == said1["id"] and own.data["from"] == f"{room}/rest", own

            # bob enters: rest is there, and what it said is the room's history.
            pres, _subject, occupants, history = await bob["xep_0045"].join_muc_wait(
                JID(room), "xbob", timeout=DEFAULT_TIMEOUT)
            assert str(pres["from"]) == f"{room}/xbob", pres
            # (slixmpp lists bob's own presence, last, among the occupants)
            assert [str(p["from"]) for p in occupants] == \
                [f"{room}/rest", f"{room}/xbob"], occupants
            assert [(str(h["from"]), h["body"]) for h in history] == \
                [(f"{room}/rest", first)], history
            ev = await events.wait_for(event("occupant", room=room, nick="xbob"),
                                       what="bob entering, at the API")
            # The owner (a moderator) is shown bob's real JID.
            assert ev.data == {"from": f"{room}/xbob", "room": room, "nick": "xbob",
                               "presence": "available", "role": "participant",
                               "affiliation": "none", "jid": bob.full, "self": False}, ev

            # Each sees what the other says.
            hello = "hello from XMPP \u263a"
            m = bob.make_message(mto=room, mbody=hello, mtype="groupchat")
            m["id"] = "room-hello-1"
            m.send()
            ev = await events.wait_for(event("groupchat", room=room, nick="xbob", body=hello),
                                       what="bob's groupchat at the API")
            assert (ev.data["from"], ev.data["id"], ev.data["type"]) == \
                (f"{room}/xbob", "room-hello-1", "groupchat"), ev
            assert abs(parse_time(ev.data["timestamp"]) - time.time()) < 60, ev
            answer = "hello from HTTP"
            said2 = await alice.call("POST", room_path(room, "/messages"), {"body": answer})
            got = await bob.messages.wait_for(
                lambda m: (m["type"] == "groupchat" and str(m["from"]) == f"{room}/rest"
                           and m["body"] == answer), what="rest's groupchat at bob")
            assert got["id"] == said2["id"], (got, said2)
            await events.wait_for(event("groupchat", room=room, nick="rest", body=answer),
                                  what="the API user's second message, back from the room")

            # The room's history, oldest first, with the senders' ids; paging forward.
            page = await alice.call("GET", room_path(room, "/messages"))
            assert page["complete"] is True, page
            assert [(h["from"], h["nick"], h["body"], h["message_id"])
                    for h in page["messages"]] == [
                (f"{room}/rest", "rest", first, said1["id"]),
                (f"{room}/xbob", "xbob", hello, "room-hello-1"),
                (f"{room}/rest", "rest", answer, said2["id"])], page
            assert len({h["id"] for h in page["messages"]}) == 3, page
            later = await alice.call("GET", room_path(room, "/messages"),
                                     params={"after": page["messages"][0]["id"]})
            assert [h["body"] for h in later["messages"]] == [hello, answer], later

            rooms = await alice.call("GET", "/api/v1/rooms")
            mine = [r for r in rooms if r["jid"] == room]
            assert len(mine) == 1 and mine[0]["joined"] is True, rooms
            who = {o["nick"]: o for o in mine[0]["occupants"]}
            assert set(who) == {"rest", "xbob"}, mine
            assert (who["xbob"]["role"], who["xbob"]["affiliation"], who["xbob"]["jid"],
                    who["xbob"]["presence"]) == ("participant", "none", bob.full,
                                                 "available"), mine

            # Leaving: bob sees rest go, and the API no longer lists the room.
            await alice.call("DELETE", room_path(room), expect=204)
            await room_presences.wait_for(is_unavailable_from(f"{room}/rest"),
                                          what="rest leaving, at bob")
            rooms = await alice.call("GET", "/api/v1/rooms")
            assert [r for r in rooms if r["jid"] == room] == [], rooms
            events.assert_conforms()
    finally:
        await stop_all([bob])


async def test_rest_upload_shared_with_an_xmpp_user(server):
    bob = await xmpp_user(server, "xfile")
    try:
        async with Api(server) as api:
            alice = await api.new_user("rfile")
            me = await alice.call("GET", "/api/v1/me")
            assert me["upload"] is True, me
            data = os.urandom(300 * 1024)
            ctype = "application/x-interop-test"
            slot = await alice.call("POST", "/api/v1/uploads", {
                "filename": "notes \u00e9t\u00e9.bin", "size": len(data),
                "content_type": ctype}, expect=201)
            assert set(slot) == {"put_url", "put_path", "put_headers", "get_url"}, slot
            assert slot["put_url"].startswith(api.base + "/"), slot
            assert slot["put_url"] == api.base + slot["put_path"], slot
            assert slot["get_url"].startswith("https://"), slot
            headers = dict(slot["put_headers"])
            headers["Content-Type"] = ctype
            async with api.http.put(slot["put_url"], data=data, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=60)) as r:
                assert r.status in (200, 201), (r.status, await r.text())

            url = slot["get_url"]
            sent = await alice.send(bob.bare, url, url=url)
            assert sent["state"] == "delivered", sent
            got = await bob.messages.wait_for(chat_from(alice.jid, url), what="the link")
            assert got["id"] == sent["id"], got
            oob = got.xml.findall(f"{{{NS_OOB}}}x/{{{NS_OOB}}}url")
            assert [u.text for u in oob] == [url], got

            # bob fetches what the link names, with an HTTP client of his own.
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=http_ssl(server))) as http:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=60)) as r:
                    assert r.status == 200, r.status
                    body = await r.read()
                    got_type = r.headers.get("Content-Type")
            assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
            assert len(body) == len(data) and got_type == ctype, (len(body), got_type)

            # The conversation's history keeps the link as the message's url.
            history = await alice.call("GET", "/api/v1/messages", params={"with": bob.bare})
            assert [(h["body"], h["url"]) for h in history["messages"]] == [(url, url)], \
                history
    finally:
        await stop_all([bob])
