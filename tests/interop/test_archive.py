"""Message archive (XEP-0313) with RSM paging (XEP-0059), stanza-ids (XEP-0359) and
archive preferences (XEP-0441), through slixmpp's xep_0313 / xep_0359 / xep_0441 stanzas."""

from __future__ import annotations

import datetime

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from test_messages import parse_xep0082
from xmpp_helpers import Client, create_user, login, stop_all, uname

PASSWORD = "mam-secret"
MAM_NS = "urn:xmpp:mam:2"
SID_NS = "urn:xmpp:sid:0"
ARCHIVE_PLUGINS = ["xep_0313", "xep_0359", "xep_0441", "xep_0297"]


async def archive_client(server, name: str, **kw) -> Client:
    return await login(server, name, PASSWORD, plugins=ARCHIVE_PLUGINS, **kw)


class Page:
    def __init__(self, iq, results):
        self.iq = iq
        self.results = results  # the <message><result/></message> stanzas, in order
        fin = iq.xml.find(f"{{{MAM_NS}}}fin")
        assert fin is not None, f"MAM answer without <fin/>: {iq}"
        self.fin = fin
        self.complete = fin.get("complete") in ("true", "1")
        rsm = iq["mam_fin"]["rsm"]
        self.first = rsm["first"]
        self.last = rsm["last"]
        self.count = rsm["count"]

    @property
    def ids(self) -> list[str]:
        return [m["mam_result"]["id"] for m in self.results]

    @property
    def bodies(self) -> list[str]:
        return [m["mam_result"]["forwarded"]["stanza"]["body"] for m in self.results]


async def mam_query(c: Client, *, with_jid: str | None = None, max_: int | None = None,
                    after: str | None = None, before: str | bool | None = None) -> Page:
    """One MAM query to the user's own archive; the results are the messages that carry
    this query's queryid, all of which arrive before the IQ result (XEP-0313 §4.1)."""
    iq = c.make_iq_set()
    qid = uname("q")
    iq["mam"]["queryid"] = qid
    if with_jid is not None:
        iq["mam"]["with"] = JID(with_jid)
    else:
        iq["mam"]._setup_form()
    if max_ is not None:
        iq["mam"]["rsm"]["max"] = str(max_)
    if after is not None:
        iq["mam"]["rsm"]["after"] = after
    if before is not None:
        iq["mam"]["rsm"]["before"] = before
    results: list = []

    def on_result(m) -> None:
        if m["mam_result"]["queryid"] == qid:
            results.append(m)
    name = f"interop MAM {qid}"
    c.register_handler(Callback(name, MatchXPath(f"{{{c.default_ns}}}message/{{{MAM_NS}}}result"),
                                on_result))
    try:
        res = await iq.send(timeout=20)
    finally:
        c.remove_handler(name)
    assert res["type"] == "result", res
    for m in results:
        # Results come from the archive's owner (the account itself).
        assert not m["from"] or m["from"] == JID(c.bare), f"MAM result from {m['from']}: {m}"
    return Page(res, results)


def stanza_ids(msg) -> list[tuple[str | None, str | None]]:
    return [(e.get("by"), e.get("id")) for e in msg.xml.findall(f"{{{SID_NS}}}stanza-id")]


async def test_archive_advertised_on_account(server):
    name = uname("mamdisco")
    await create_user(server, name, PASSWORD)
    c = await archive_client(server, name)
    try:
        info = await c["xep_0030"].get_info(jid=c.bare, timeout=20)
        features = set(info["disco_info"]["features"])
        for f in (MAM_NS, SID_NS):
            assert f in features, f"account disco#info lacks {f}: {sorted(features)}"
    finally:
        await c.stop()


async def test_both_ends_archive_and_stanza_id_matches(server):
    an, bn = uname("mama"), uname("mamb")
    await create_user(server, an, PASSWORD)
    await create_user(server, bn, PASSWORD)
    a = await archive_client(server, an)
    b = await archive_client(server, bn)
    try:
        await b.ping_server()
        body = "archived \u2603 <&> " + uname("x")
        a.send_message(mto=b.bare, mbody=body, mtype="chat")
        live = await b.messages.wait_for(lambda m: m["body"] == body, what="the live message")

        # Exactly one stanza-id by the recipient's archive (a forged or duplicated one
        # would break deduplication).
        ids = [(by, sid) for by, sid in stanza_ids(live) if by == b.bare]
        assert len(ids) == 1, f"live message should carry one <stanza-id by='{b.bare}'>: {live}"
        live_id = ids[0][1]
        assert live_id, live
        # Barrier: the server answers a's ping only once what a sent is stored.
        await a.ping_server()

        page = await mam_query(b, with_jid=a.bare)
        assert page.bodies == [body], f"recipient's archive: {page.bodies}"
        assert page.ids == [live_id], (
            f"archive result id {page.ids} differs from the live <stanza-id> {live_id}")
        assert page.complete, f"a one-message archive query is complete: {page.iq}"
        fwd = page.results[0]["mam_result"]["forwarded"]
        inner = fwd["stanza"]
        assert inner["from"] == a.boundjid, inner
        assert JID(inner["to"]).bare == b.bare, inner
        delay = fwd.xml.find("{urn:xmpp:delay}delay")
        assert delay is not None, f"forwarded result without <delay/>: {page.results[0]}"
        stamp = parse_xep0082(delay.get("stamp"), "archive delay")
        age = datetime.datetime.now(datetime.timezone.utc) - stamp
        assert datetime.timedelta(seconds=-5) < age < datetime.timedelta(minutes=5), stamp

        # The sender's own archive has it too.
        page_a = await mam_query(a, with_jid=b.bare)
        assert page_a.bodies == [body], f"sender's archive: {page_a.bodies}"
        assert page_a.results[0]["mam_result"]["forwarded"]["stanza"]["from"] == a.boundjid
        assert page_a.ids[0], page_a.results[0]
    finally:
        await stop_all([a, b])


@pytest.mark.timeout_s(60)
async def test_paging_25_messages_in_pages_of_10(server):
    an, bn = uname("pagea"), uname("pageb")
    await create_user(server, an, PASSWORD)
    await create_user(server, bn, PASSWORD)
    a = await archive_client(server, an)
    b = await archive_client(server, bn)
    n = 25
    try:
        await b.ping_server()
        expected = [f"page #{i:02d}" for i in range(n)]
        for body in expected:
            a.send_message(mto=b.bare, mbody=body, mtype="chat")
        await b.messages.wait_count(lambda m: m["body"].startswith("page #"), n,
                                    what="the live messages")
        await a.ping_server()  # barrier: stored

        pages: list[Page] = []
        after = None
        for _ in range(5):  # 3 pages expected; bounded
            page = await mam_query(b, with_jid=a.bare, max_=10, after=after)
            pages.append(page)
            if page.complete or not page.results:
                break
            after = page.last
        sizes = [len(p.results) for p in pages]
        assert sizes == [10, 10, 5], f"page sizes {sizes}"
        assert [p.complete for p in pages] == [False, False, True], (
            f"<fin complete> per page: {[p.fin.attrib for p in pages]}")
        got = [body for p in pages for body in p.bodies]
        assert got == expected, got
        all_ids = [i for p in pages for i in p.ids]
        assert len(set(all_ids)) == n, f"archive ids not unique: {all_ids}"
        for p in pages:
            assert p.first == p.ids[0] and p.last == p.ids[-1], (
                f"RSM first/last {p.first}/{p.last} vs result ids {p.ids}")
            if p.count:
                assert int(p.count) == n, f"RSM count {p.count}"

        # An empty <before/> asks for the last page, still oldest first (XEP-0059 §2.5).
        last = await mam_query(b, with_jid=a.bare, max_=10, before=True)
        assert last.bodies == expected[-10:], last.bodies
        # Paging back from there.
        prev = await mam_query(b, with_jid=a.bare, max_=10, before=last.first)
        assert prev.bodies == expected[5:15], prev.bodies

        # An id that is not in the archive: item-not-found (XEP-0313 §4.1.2 / XEP-0059).
        with pytest.raises(IqError) as ei:
            await mam_query(b, with_jid=a.bare, max_=10, after="no-such-archive-id")
        assert ei.value.iq["error"]["condition"] == "item-not-found", ei.value.iq
    finally:
        await stop_all([a, b])


async def test_preferences_default_never_stops_archiving(server):
    an, bn = uname("prefa"), uname("prefb")
    await create_user(server, an, PASSWORD)
    await create_user(server, bn, PASSWORD)
    a = await archive_client(server, an)
    b = await archive_client(server, bn)
    try:
        await b.ping_server()
        res = await b["xep_0441"].set_preferences(default="never", always=[], never=[],
                                                  timeout=20)
        assert res["type"] == "result", res
        default, _always, _never = await b["xep_0441"].get_preferences(timeout=20)
        assert default == "never", f"preferences read back: {default}"

        body = "not for the archive " + uname("x")
        a.send_message(mto=b.bare, mbody=body, mtype="chat")
        live = await b.messages.wait_for(lambda m: m["body"] == body, what="live message")
        assert live["body"] == body  # delivery itself is unaffected
        await a.ping_server()  # barrier: stored wherever it is stored

        page = await mam_query(b, with_jid=a.bare)
        assert page.bodies == [], f"archived although default='never': {page.bodies}"
        # The sender's preferences are its own: its archive keeps the message.
        page_a = await mam_query(a, with_jid=b.bare)
        assert page_a.bodies == [body], page_a.bodies

        # Back to 'always': archiving resumes.
        await b["xep_0441"].set_preferences(default="always", always=[], never=[], timeout=20)
        body2 = "for the archive again " + uname("x")
        a.send_message(mto=b.bare, mbody=body2, mtype="chat")
        await b.messages.wait_for(lambda m: m["body"] == body2, what="second live message")
        await a.ping_server()
        page = await mam_query(b, with_jid=a.bare)
        assert page.bodies == [body2], page.bodies
    finally:
        await stop_all([a, b])


async def test_live_stanza_id_is_in_the_archive_at_once(server):
    """A client that gets a live message with <stanza-id id='X'/> may query its archive
    right away (catching up from X, as Conversations does after a reconnect): X must
    already be an archive id then. No barrier on the sender's side here on purpose."""
    an, bn = uname("nowa"), uname("nowb")
    await create_user(server, an, PASSWORD)
    await create_user(server, bn, PASSWORD)
    a = await archive_client(server, an)
    b = await archive_client(server, bn)
    try:
        await b.ping_server()
        problems = []
        for k in range(3):
            body = f"query me at once #{k} " + uname("x")
            a.send_message(mto=b.bare, mbody=body, mtype="chat")
            live = await b.messages.wait_for(lambda m: m["body"] == body, what="live message")
            sid = next((i for by, i in stanza_ids(live) if by == b.bare), None)
            assert sid, f"no stanza-id by {b.bare}: {live}"
            try:
                after = await mam_query(b, with_jid=a.bare, after=sid)
                if after.results:
                    problems.append(f"#{k}: results after the newest id {sid}: {after.bodies}")
            except IqError as e:
                problems.append(f"#{k}: query after={sid} (the live stanza-id) answered "
                                f"{e.iq['error']['condition']}: {e.iq}")
            page = await mam_query(b, with_jid=a.bare)
            if sid not in page.ids:
                problems.append(f"#{k}: live stanza-id {sid} not in the archive at once; "
                                f"archive ids {page.ids}, fin {page.iq}")
        assert not problems, "\n".join(problems)
    finally:
        await stop_all([a, b])


async def test_hints_keep_messages_out_of_the_archive_and_carbons(server):
    """XEP-0334 with slixmpp's xep_0334: `<no-store/>` and `<no-permanent-store/>` keep a
    message out of both archives (it is still delivered), `<no-copy/>` out of carbons."""
    an, bn = uname("hinta"), uname("hintb")
    await create_user(server, an, PASSWORD)
    await create_user(server, bn, PASSWORD)
    plugins = [*ARCHIVE_PLUGINS, "xep_0334", "xep_0280"]
    a = await login(server, an, PASSWORD, plugins=plugins)
    b = await login(server, bn, PASSWORD, plugins=plugins, resource="desk")
    b2 = await login(server, bn, PASSWORD, plugins=plugins, resource="phone")
    try:
        assert (await b2["xep_0280"].enable(timeout=20))["type"] == "result"
        copies = b2.record("carbon_received")
        await b.ping_server()
        sent = []
        for hint in ("no-store", "no-permanent-store", "no-copy", None):
            body = f"hint {hint} " + uname("h")
            m = a.make_message(mto=b.full, mbody=body, mtype="chat")
            if hint:
                m.enable(hint)
            m.send()
            sent.append((hint, body))
            await b.messages.wait_for(lambda x, body=body: x["body"] == body, what=body)
        await a.ping_server()
        archived = (await mam_query(b, with_jid=a.bare)).bodies
        mine = (await mam_query(a, with_jid=b.bare)).bodies
        expected = [body for hint, body in sent if hint in ("no-copy", None)]
        assert archived == expected, archived
        assert mine == expected, mine
        # The carbon-enabled resource got copies of what it was not sent, except no-copy.
        await copies.wait_count(lambda c: True, 3, what="three carbons")
        await b2.ping_server()
        got = [c["carbon_received"]["body"] for c in copies.items]
        assert got == [body for hint, body in sent if hint != "no-copy"], got
    finally:
        await stop_all([a, b, b2])
