"""slixmpp clients for tests/netns/figure2.sh: real XMPP clients that find their server
through DNS (SRV records served by dnsmasq in their namespace, resolved by slixmpp with
aiodns), fail over to the next record when it does not answer, and follow
<see-other-host/> home. Every wait has a deadline; nothing sleeps to let things settle.

    figure2_clients.py peer     --jid J --host IP --log FILE --send-when FILE
    figure2_clients.py setup    --cafile PEM...
    figure2_clients.py failover --cafile PEM... --ready FILE --log FILE
    figure2_clients.py login    --cafile PEM... --jid J --password P --host IP --expect ok|refused
    figure2_clients.py passwd   --cafile PEM... --jid J --password P --new P2 --host IP
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time

import slixmpp

ALICE, BOB = "alice@site1.test", "bob@site1.test"
CAROL, DAVE = "carol@site2.test", "dave@site2.test"
PASSWORDS = {ALICE: "alice-password", BOB: "bob-password", CAROL: "carol-password",
             DAVE: "dave-password"}
LOGIN_LIMIT = 5.0  # seconds from the site's death to a session at the hub
WAIT = 30.0


# What alice calls herself at the hub, in scenario (b).
AT_THE_HUB = "Alice, written at the hub"


def say(*args) -> None:
    print(f"[clients {time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


class Client(slixmpp.ClientXMPP):
    """One account; records messages and which server it is connected to."""

    def __init__(self, jid: str, cafiles: list[str], password: str | None = None):
        super().__init__(jid, password or PASSWORDS[jid])
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self.register_plugin("xep_0054")
        self.roster.auto_authorize = True
        self.roster.auto_subscribe = True
        ctx = ssl.create_default_context()
        for cafile in cafiles:
            ctx.load_verify_locations(cafile)
        self.ssl_context = ctx
        self.messages: list[tuple[str, str]] = []
        self.sessions: list[str] = []  # the server address of each session, in order
        self.redirects: list[str] = []
        self._changed = asyncio.Event()
        self.refused: list[str] = []
        self.add_event_handler("failed_auth", lambda _: self._refuse("failed_auth"))
        self.add_event_handler("session_start", self._on_session)
        self.add_event_handler("message", self._on_message)
        self.add_event_handler("stream_error", self._on_stream_error)
        self.add_event_handler("roster_update", lambda _: self._changed.set())
        self.add_event_handler("changed_subscription", lambda _: self._changed.set())

    async def _on_session(self, _event) -> None:
        peer = self.transport.get_extra_info("peername")[0]
        self.sessions.append(peer)
        self.send_presence()
        await self.get_roster()
        self._changed.set()

    def _refuse(self, why: str) -> None:
        self.refused.append(why)
        self._changed.set()

    def _on_message(self, msg) -> None:
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.messages.append((msg["from"].bare, msg["body"]))
            self._changed.set()

    def _on_stream_error(self, error) -> None:
        if error["condition"] == "see-other-host":
            self.redirects.append(error["see_other_host"])
            self._changed.set()

    async def until(self, what: str, cond, limit: float = WAIT) -> None:
        deadline = time.monotonic() + limit
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"{self.boundjid.bare}: timed out waiting for {what}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass  # look again: some changes (a subscription state) raise no event

    def subscribed(self, contact: str) -> bool:
        item = self.client_roster[contact] if contact in self.client_roster else None
        return item is not None and item["subscription"] == "both"

    def got(self, sender: str, body: str) -> int:
        return self.messages.count((sender, body))


async def start(client: Client, host: str | None = None) -> None:
    """Connects (through DNS unless `host` is given) and waits for the session."""
    if host:
        client.connect(host=host, port=5222)
    else:
        client.connect()
    await client.until("a session", lambda: client.sessions)


async def peer(args) -> None:
    """carol or dave at site2: approves subscriptions, answers alice and bob, and sends
    alice a message while her site is dead (when `--send-when` appears)."""
    c = Client(args.jid, args.cafile)
    name = args.jid.split("@")[0]
    answered: set[tuple[str, str]] = set()
    sent = False
    await start(c, args.host)
    with open(args.log, "a") as log:
        while True:
            for sender, body in c.messages:
                if sender in (ALICE, BOB) and (sender, body) not in answered:
                    answered.add((sender, body))
                    log.write(json.dumps({"from": sender, "body": body}) + "\n")
                    log.flush()
                    c.send_message(mto=sender, mbody=f"re: {body}", mtype="chat")
            if not sent and os.path.exists(args.send_when):
                c.send_message(mto=ALICE, mbody=f"meanwhile, from {name}", mtype="chat")
                sent = True
            c._changed.clear()
            try:
                await asyncio.wait_for(c._changed.wait(), 0.2)
            except asyncio.TimeoutError:
                pass


async def setup(args) -> None:
    """alice and bob log in at their site, befriend each other and carol."""
    alice, bob = Client(ALICE, args.cafile), Client(BOB, args.cafile)
    await asyncio.gather(start(alice), start(bob))
    alice.send_presence(pto=BOB, ptype="subscribe")
    alice.send_presence(pto=CAROL, ptype="subscribe")
    await alice.until("bob and carol both ways", lambda: alice.subscribed(BOB) and alice.subscribed(CAROL))
    await bob.until("alice both ways", lambda: bob.subscribed(ALICE))
    say("alice's roster:", sorted(alice.client_roster.keys()))
    for c in (alice, bob):
        c.disconnect()


async def failover(args) -> None:
    """With site1 dead: alice and bob reach the hub through the next SRV record within
    LOGIN_LIMIT, find their rosters, chat with each other and with carol and dave; then,
    when site1 is back, are sent home and find what carol and dave sent alice meanwhile,
    each message once."""
    t0 = time.monotonic()
    alice, bob = Client(ALICE, args.cafile), Client(BOB, args.cafile)
    await asyncio.gather(start(alice), start(bob))
    took = time.monotonic() - t0
    say(f"at the hub after {took:.2f} s: alice on {alice.sessions[0]}, bob on {bob.sessions[0]}")
    if took > LOGIN_LIMIT:
        raise SystemExit(f"logging in at the hub took {took:.2f} s, more than {LOGIN_LIMIT}")
    if alice.sessions[0] != args.hub or bob.sessions[0] != args.hub:
        raise SystemExit(f"not at the hub ({args.hub}): {alice.sessions} {bob.sessions}")
    for contact in (BOB, CAROL):
        if not alice.subscribed(contact):
            raise SystemExit(f"alice's roster at the hub lacks {contact}: {dict(alice.client_roster)}")

    alice.send_message(mto=BOB, mbody="from alice at the hub", mtype="chat")
    bob.send_message(mto=ALICE, mbody="from bob at the hub", mtype="chat")
    for c, peer_ in ((alice, CAROL), (alice, DAVE), (bob, CAROL), (bob, DAVE)):
        c.send_message(mto=peer_, mbody="hello from the hub", mtype="chat")
    await bob.until("alice's message", lambda: bob.got(ALICE, "from alice at the hub"))
    await alice.until("bob's message", lambda: alice.got(BOB, "from bob at the hub"))
    for c in (alice, bob):
        for peer_ in (CAROL, DAVE):
            await c.until(f"{peer_}'s answer",
                          lambda c=c, p=peer_: c.got(p, "re: hello from the hub"))
    say("chat at the hub works: alice ↔ bob, and each of them ↔ carol and dave")
    # Scenario (b): alice changes her vCard at the hub; it must go home with her.
    card = alice.plugin["xep_0054"].make_vcard()
    card["FN"] = AT_THE_HUB
    await alice.plugin["xep_0054"].publish_vcard(card, timeout=WAIT)
    open(args.ready, "w").close()

    # The script restarts site1; the hub sends both home.
    for c in (alice, bob):
        await c.until("a new session at home", lambda c=c: len(c.sessions) >= 2, limit=90)
    say(f"home again: alice on {alice.sessions[-1]} (sent to {alice.redirects}), bob on {bob.sessions[-1]}")
    for c in (alice, bob):
        if c.sessions[-1] != args.site or "site1.test" not in c.redirects:
            raise SystemExit(f"{c.boundjid.bare} not sent home: {c.sessions} {c.redirects}")
    await alice.until("carol's message from the outage", lambda: alice.got(CAROL, "meanwhile, from carol"))
    await alice.until("dave's message from the outage", lambda: alice.got(DAVE, "meanwhile, from dave"))
    got = await alice.plugin["xep_0054"].get_vcard(slixmpp.JID(ALICE), local=False, timeout=WAIT)
    name = got["vcard_temp"]["FN"]
    if name != AT_THE_HUB:
        raise SystemExit(f"alice's vCard at home says {name!r}, not what she wrote at the hub")
    say("what alice wrote at the hub (her vCard) is at home")
    with open(args.log, "w") as log:
        json.dump({"alice": alice.messages, "bob": bob.messages}, log)
    for c in (alice, bob):
        dupes = [m for m in set(c.messages) if c.messages.count(m) > 1]
        if dupes:
            raise SystemExit(f"{c.boundjid.bare} got messages twice: {dupes}")
    say("nothing lost, nothing twice")
    for c in (alice, bob):
        c.disconnect()


async def login(args) -> None:
    """Logs in at `--host` with `--password`: it must succeed (`ok`) or be refused. Sent
    home (the hub took the site for up a moment ago), it comes back, as a client whose home
    does not answer does."""
    deadline = time.monotonic() + WAIT
    redirected = 0
    while True:
        c = Client(args.jid, args.cafile, args.password)
        c.max_redirects = -1  # followed here, not by slixmpp
        c.connect(host=args.host, port=5222)
        await c.until("a session, a refusal or a redirect",
                      lambda: c.sessions or c.refused or c.redirects)
        if c.sessions or c.refused:
            break
        c.disconnect()
        if time.monotonic() > deadline:
            raise SystemExit(f"{args.jid}: sent home by {args.host} for {WAIT} s")
        redirected += 1
    if redirected:
        say(f"{args.jid} was sent home by {args.host} {redirected} times first (it saw the site up a moment before)")
    got = "ok" if c.sessions else "refused"
    say(f"{args.jid} logging in at {args.host}: {got}")
    if got != args.expect:
        raise SystemExit(f"{args.jid} at {args.host}: {got}, expected {args.expect}")
    c.disconnect()


async def passwd(args) -> None:
    """Changes the account's password (XEP-0077) at `--host`."""
    c = Client(args.jid, args.cafile, args.password)
    c.register_plugin("xep_0077")
    c.connect(host=args.host, port=5222)
    await c.until("a session", lambda: c.sessions)
    await c.plugin["xep_0077"].change_password(args.new)
    say(f"{args.jid} changed the password at {args.host}")
    c.disconnect()


async def edit(args) -> None:
    """Scenario (b): changes the account's directory at `--host`: roster items
    (`--contact JID=NAME`, added or renamed) and the vCard's name (`--vcard`)."""
    c = Client(args.jid, args.cafile, args.password)
    c.connect(host=args.host, port=5222)
    await c.until("a session", lambda: c.sessions)
    for item in args.contact:
        jid, name = item.split("=", 1)
        await c.update_roster(jid, name=name, timeout=WAIT)
    if args.vcard:
        card = c.plugin["xep_0054"].make_vcard()
        card["FN"] = args.vcard
        await c.plugin["xep_0054"].publish_vcard(card, timeout=WAIT)
    say(f"{args.jid} at {args.host}: contacts {args.contact}, vCard {args.vcard!r}")
    c.disconnect()


async def check(args) -> None:
    """Scenario (b): the account's roster (`--contact JID=NAME`) and vCard name
    (`--vcard`) at `--host` are what they must be."""
    c = Client(args.jid, args.cafile, args.password)
    c.connect(host=args.host, port=5222)
    await c.until("a session", lambda: c.sessions)
    for item in args.contact:
        jid, name = item.split("=", 1)
        got = c.client_roster[jid]["name"] if jid in c.client_roster else None
        if got != name:
            raise SystemExit(f"{args.jid}'s roster at {args.host}: {jid} is {got!r}, not {name!r}")
    card = await c.plugin["xep_0054"].get_vcard(slixmpp.JID(args.jid), local=False, timeout=WAIT)
    if card["vcard_temp"]["FN"] != args.vcard:
        raise SystemExit(f"{args.jid}'s vCard at {args.host}: {card['vcard_temp']['FN']!r}")
    say(f"{args.jid} at {args.host} finds contacts {args.contact} and vCard {args.vcard!r}")
    c.disconnect()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["peer", "setup", "failover", "login", "passwd", "edit",
                                    "check"])
    p.add_argument("--jid")
    p.add_argument("--password")
    p.add_argument("--new")
    p.add_argument("--expect", choices=["ok", "refused"], default="ok")
    p.add_argument("--cafile", action="append", default=[])
    p.add_argument("--host")
    p.add_argument("--hub", default="")
    p.add_argument("--site", default="")
    p.add_argument("--log", default="/dev/null")
    p.add_argument("--send-when", default="")
    p.add_argument("--ready", default="")
    p.add_argument("--contact", action="append", default=[])
    p.add_argument("--vcard", default="")
    args = p.parse_args()
    run = {"peer": peer, "setup": setup, "failover": failover, "login": login,
           "passwd": passwd, "edit": edit, "check": check}[args.mode]
    asyncio.run(asyncio.wait_for(run(args), None if args.mode == "peer" else 180))


if __name__ == "__main__":
    main()
