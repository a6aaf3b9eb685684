"""Converse.js (npm `converse.js` 14, a third-party browser client) in Chromium (Debian's
chromium-headless-shell, driven by Playwright) logs in over wss:// at /xmpp-websocket and
chats with a slixmpp user on TCP, through its user interface: the text typed in the chat
reaches the slixmpp user, whose answer shows in the chat. The two are friends first (a real
subscription both ways), as Converse shows messages from contacts only. The browser
accepts the server's self-signed certificate for this test."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from test_roster_presence import subscribe_both_ways
from xmpp_helpers import create_user, login, stop_all, uname

PASSWORD = "converse-secret"
JS = Path(__file__).parent / "js"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium-headless-shell")


async def run_converse(server, jid: str, peer: str, text: str, answer: str,
                       shot: Path) -> list[dict]:
    host, port = server.listeners["https"]
    proc = await asyncio.create_subprocess_exec(
        "node", str(JS / "converse_chat.mjs"), f"wss://localhost:{port}/xmpp-websocket",
        jid, PASSWORD, peer, text, answer, str(shot),
        cwd=JS, env=dict(os.environ, CHROMIUM_PATH=CHROMIUM),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert proc.returncode == 0, f"converse exited {proc.returncode}: {events} {err.decode()[-2000:]}"
    return events


async def test_converse_in_chromium_chats_with_a_slixmpp_user(server, tmp_path):
    if not shutil.which("node") or not Path(CHROMIUM).exists():
        pytest.fail(f"node and {CHROMIUM} are needed (run.sh installs them)")
    an, bn = uname("converse"), uname("slix")
    await create_user(server, an, PASSWORD)
    await create_user(server, bn, PASSWORD)
    alice_tcp = await login(server, an, PASSWORD)
    bob = await login(server, bn, PASSWORD)
    await subscribe_both_ways(alice_tcp, bob)
    await stop_all([alice_tcp])
    alice, peer = f"{an}@{server.domain}", f"{bn}@{server.domain}"
    text = f"hello from Converse {uname('t')}"
    answer = f"re: {text}"
    got: list[tuple[str, str]] = []

    def reply(msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            got.append((msg["from"].bare, msg["body"]))
            bob.send_message(mto=msg["from"], mbody=answer, mtype="chat")

    bob.add_event_handler("message", reply)
    try:
        events = await run_converse(server, alice, peer, text, answer, tmp_path / "converse.png")
    finally:
        await stop_all([bob])
    assert [e["event"] for e in events] == ["online", "sent", "message"], events
    assert got == [(alice, text)], got
