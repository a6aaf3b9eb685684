"""Files between Outpost's own client (`outpost chat --headless`) and slixmpp users, by
HTTP upload: a file Outpost's client sends to someone offline is a message any client
can open (the URL per XEP-0066, name, size and SHA-256 per XEP-0446), and a file a
slixmpp user uploads (xep_0363) and shares by URL (xep_0066) is fetched by Outpost's
client by itself, byte for byte."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
from pathlib import Path

from outpost_harness import outpost_bin
from test_upload import download, trusting_http  # noqa: F401  (a fixture)
from slixmpp import JID
from xmpp_helpers import bare, create_user, login, stop_all, uname

PASSWORD = "files-secret"
OOB = "jabber:x:oob"
META = "urn:xmpp:file:metadata:0"
HASHES = "urn:xmpp:hashes:2"
WAIT = 30


class Chat:
    """One `outpost chat --headless` process: JSON commands in, JSON events out."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.seen: list[dict] = []

    @classmethod
    async def start(cls, server, localpart: str, state: Path) -> "Chat":
        host, port = server.starttls_addr
        proc = await asyncio.create_subprocess_exec(
            outpost_bin(), "chat", "--headless", "--jid", bare(localpart),
            "--server", f"{host}:{port}", "--state-dir", str(state),
            "--downloads", str(state / "downloads"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        chat = cls(proc)
        await chat.write(PASSWORD)
        return chat

    async def write(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def command(self, **command) -> None:
        await self.write(json.dumps(command))

    async def event(self, what: str, pred) -> dict:
        for e in self.seen:
            if pred(e):
                self.seen.remove(e)
                return e
        async def next_match() -> dict:
            while True:
                line = await self.proc.stdout.readline()
                assert line, f"outpost chat ended while waiting for {what}; saw {self.seen}"
                e = json.loads(line)
                if pred(e):
                    return e
                self.seen.append(e)
        try:
            return await asyncio.wait_for(next_match(), WAIT)
        except TimeoutError:
            raise AssertionError(f"no {what} within {WAIT}s; saw {self.seen}") from None

    async def stop(self) -> None:
        if self.proc.returncode is None:
            await self.command(cmd="quit")
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def test_a_file_from_outpost_chat_to_an_absent_slixmpp_user(server, tmp_path,
                                                                   trusting_http):  # noqa: F811
    sender, rcpt = uname("ocsend"), uname("slixrcpt")
    await create_user(server, sender, PASSWORD)
    await create_user(server, rcpt, PASSWORD)
    data = os.urandom(300 * 1024 + 7)
    source = tmp_path / "report 2026.pdf"
    source.write_bytes(data)
    chat = await Chat.start(server, sender, tmp_path / "oc")
    try:
        await chat.event("connected", lambda e: e["event"] == "connected")
        await chat.command(cmd="sendfile", to=bare(rcpt), path=str(source))
        done = await chat.event("the upload", lambda e: e["event"] == "transfer"
                                and e["state"] in ("complete", "failed"))
        assert (done["state"], done["path"], done["done"]) == ("complete", "upload", len(data)), done
    finally:
        await chat.stop()

    bob = await login(server, rcpt, PASSWORD)
    try:
        msg = await bob.messages.wait_for(
            lambda m: m.xml.find(f"{{{OOB}}}x") is not None, what="the shared file")
        url = msg.xml.find(f"{{{OOB}}}x/{{{OOB}}}url").text
        assert msg["body"] == url
        meta = msg.xml.find(f"{{{META}}}file")
        assert meta.find(f"{{{META}}}name").text == "report 2026.pdf"
        assert int(meta.find(f"{{{META}}}size").text) == len(data)
        digest = meta.find(f"{{{HASHES}}}hash")
        assert digest.get("algo") == "sha-256"
        status, _, body = await download(trusting_http, url)
        assert status == 200
        assert body == data
        assert base64.b64decode(digest.text) == hashlib.sha256(body).digest()
    finally:
        await stop_all([bob])


async def test_a_file_a_slixmpp_user_shares_is_fetched_by_outpost_chat(server, tmp_path,
                                                                       trusting_http):  # noqa: F811
    rcpt, sender = uname("ocrcpt"), uname("slixsend")
    await create_user(server, rcpt, PASSWORD)
    await create_user(server, sender, PASSWORD)
    chat = await Chat.start(server, rcpt, tmp_path / "oc")
    alice = await login(server, sender, PASSWORD, plugins=["xep_0363", "xep_0066"])
    try:
        await chat.event("connected", lambda e: e["event"] == "connected")
        # Outpost's client fetches files by itself only from its contacts.
        await chat.command(cmd="add", jid=bare(sender))
        await chat.event("the contact", lambda e: e["event"] == "roster"
                         and any(i["jid"] == bare(sender) for i in e["items"]))
        data = os.urandom(200 * 1024 + 3)
        url = await alice["xep_0363"].upload_file(
            "notes.txt", size=len(data), content_type="text/plain",
            input_file=io.BytesIO(data), domain=JID(server.domain), timeout=20)
        msg = alice.make_message(mto=bare(rcpt), mbody=url, mtype="chat")
        msg["oob"]["url"] = url
        msg.send()
        done = await chat.event("the download", lambda e: e["event"] == "transfer"
                                and e["state"] in ("complete", "failed"))
        assert (done["state"], done["path"], done["name"]) == ("complete", "upload", "notes.txt"), done
        assert Path(done["file"]).read_bytes() == data
    finally:
        await chat.stop()
        await stop_all([alice])


async def test_a_file_from_outpost_chat_to_a_slixmpp_user_online_goes_by_upload(
        server, tmp_path, trusting_http):  # noqa: F811
    """slixmpp does not take Outpost's transport (its presence does not say it is Outpost's
    client), so the file goes the way every client opens: a link to the upload."""
    sender, rcpt = uname("ocsend"), uname("slixon")
    await create_user(server, sender, PASSWORD)
    await create_user(server, rcpt, PASSWORD)
    bob = await login(server, rcpt, PASSWORD)
    chat = await Chat.start(server, sender, tmp_path / "oc")
    try:
        await chat.event("connected", lambda e: e["event"] == "connected")
        # Friends, so that Outpost's client sees bob online.
        await chat.command(cmd="add", jid=bare(rcpt))
        bob.send_presence(pto=bare(sender), ptype="subscribed")
        bob.send_presence(pto=bare(sender))
        await chat.event("bob online", lambda e: e["event"] == "presence"
                         and e["from"] == bare(rcpt) and e["available"])
        data = os.urandom(64 * 1024)
        source = tmp_path / "photo.jpg"
        source.write_bytes(data)
        await chat.command(cmd="sendfile", to=bare(rcpt), path=str(source))
        done = await chat.event("the upload", lambda e: e["event"] == "transfer"
                                and e["state"] in ("complete", "failed"))
        assert (done["state"], done["path"]) == ("complete", "upload"), done
        msg = await bob.messages.wait_for(
            lambda m: m.xml.find(f"{{{OOB}}}x") is not None, what="the shared file")
        status, _, body = await download(trusting_http, msg["body"])
        assert (status, body) == (200, data)
    finally:
        await chat.stop()
        await stop_all([bob])
