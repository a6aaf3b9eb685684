"""XMPP over WebSocket for clients (RFC 7395): xmpp.js (@xmpp/client from npm, a
third-party JavaScript client library, in Node) logs in over wss:// at /xmpp-websocket and
chats with a slixmpp user on TCP. Node trusts exactly the server's self-signed certificate
(NODE_EXTRA_CA_CERTS)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from xmpp_helpers import create_user, login, stop_all, uname

PASSWORD = "websocket-secret"
JS = Path(__file__).parent / "js"


async def run_xmppjs(server, user: str, peer: str, text: str) -> list[dict]:
    host, port = server.listeners["https"]
    env = dict(os.environ, NODE_EXTRA_CA_CERTS=str(server.cert_path))
    proc = await asyncio.create_subprocess_exec(
        "node", "--experimental-websocket", str(JS / "ws_chat.mjs"),
        f"wss://localhost:{port}/xmpp-websocket", server.domain, user, PASSWORD, peer, text,
        cwd=JS, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert proc.returncode == 0, f"xmpp.js exited {proc.returncode}: {events} {err.decode()[-2000:]}"
    return events


async def test_xmppjs_over_websocket_chats_with_a_slixmpp_user(server):
    an, bn = uname("wsjs"), uname("tcp")
    await create_user(server, an, PASSWORD)
    await create_user(server, bn, PASSWORD)
    bob = await login(server, bn, PASSWORD)
    got: list[tuple[str, str]] = []

    def answer(msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            got.append((str(msg["from"]), msg["body"]))
            bob.send_message(mto=msg["from"], mbody=f"re: {msg['body']}", mtype="chat")

    bob.add_event_handler("message", answer)
    try:
        events = await run_xmppjs(server, an, f"{bn}@{server.domain}", "hello over WebSocket")
    finally:
        await stop_all([bob])
    online = [e for e in events if e["event"] == "online"]
    assert online and online[0]["jid"].startswith(f"{an}@{server.domain}/"), events
    assert got == [(f"{an}@{server.domain}/xmppjs", "hello over WebSocket")], got
    answers = [e for e in events if e["event"] == "message"]
    assert answers[-1]["body"] == "re: hello over WebSocket", events
    assert answers[-1]["from"].startswith(f"{bn}@{server.domain}/"), events
