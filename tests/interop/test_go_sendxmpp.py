"""go-sendxmpp (Debian's package, a Go client on a different XMPP library) sends to a
slixmpp user through Outpost, over STARTTLS and over direct TLS."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from xmpp_helpers import bare, create_user, login, stop_all, uname

PASSWORD = "go-secret"


@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct-tls"])
async def test_go_sendxmpp_message_reaches_a_slixmpp_user(server, direct_tls):
    binary = shutil.which("go-sendxmpp")
    assert binary, "go-sendxmpp is not installed (run.sh installs it)"
    sender, rcpt = uname("gosend"), uname("gorcpt")
    await create_user(server, sender, PASSWORD)
    await create_user(server, rcpt, PASSWORD)
    bob = await login(server, rcpt, PASSWORD)
    try:
        host, port = server.tls_addr if direct_tls else server.starttls_addr
        text = f"hello from go-sendxmpp <&> \u00e9\u4e2d ({'tls' if direct_tls else 'starttls'})"
        args = [binary, "-u", bare(sender), "-p", PASSWORD, "-j", f"{host}:{port}",
                # The server's certificate is self-signed; slixmpp tests verify it, this
                # one is about the protocol.
                "-n"]
        if direct_tls:
            args.append("-t")
        args.append(bare(rcpt))
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(text.encode()), 30)
        assert proc.returncode == 0, f"go-sendxmpp failed: {err.decode()} {out.decode()}"
        msg = await bob.messages.wait_for(
            lambda m: m["body"] == text, what=f"the message from {sender}")
        assert str(msg["from"].bare) == bare(sender)
        assert msg["from"].resource, "the server stamps the sender's full JID"
    finally:
        await stop_all([bob])
