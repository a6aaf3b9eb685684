"""HTTP file upload (XEP-0363) with slixmpp's xep_0363, whose upload_file finds the
service through disco, asks for a slot and PUTs the file with aiohttp; another user then
downloads it with aiohttp from the GET URL.

The server's certificate is self-signed for its domain, while the URLs name the HTTPS
listener's address (127.0.0.1): the HTTP client trusts exactly that certificate, without
the host name check."""

from __future__ import annotations

import hashlib
import io
import os
import ssl

import aiohttp
import pytest
import slixmpp.plugins.xep_0363.http_upload as http_upload
from slixmpp import JID
from slixmpp.exceptions import IqError

from xmpp_helpers import create_user, login, stop_all, uname

PASSWORD = "upload-secret"
UPLOAD_NS = "urn:xmpp:http:upload:0"


def http_ssl(server) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server.cert_path))
    ctx.check_hostname = False
    return ctx


@pytest.fixture
def trusting_http(server, monkeypatch):
    """slixmpp's upload PUT, and our GETs, over TLS that trusts the server's certificate."""
    ctx = http_ssl(server)

    def session(**kw):
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), **kw)

    monkeypatch.setattr(http_upload, "ClientSession", session)
    return session


async def download(session_factory, url: str) -> tuple[int, dict, bytes]:
    async with session_factory() as http:
        async with http.get(url) as response:
            return response.status, dict(response.headers), await response.read()


async def test_a_file_uploaded_by_one_user_is_downloaded_byte_for_byte(server, trusting_http):
    an, bn = uname("uploader"), uname("downloader")
    await create_user(server, an, PASSWORD)
    await create_user(server, bn, PASSWORD)
    a = await login(server, an, PASSWORD, plugins=["xep_0363"])
    try:
        data = os.urandom(700 * 1024)
        url = await a["xep_0363"].upload_file(
            "holiday photo.jpg", size=len(data), content_type="image/jpeg",
            input_file=io.BytesIO(data), domain=JID(server.domain), timeout=20)
        # Found through disco items of the domain, with its size limit.
        assert str(a["xep_0363"].upload_service) == f"upload.{server.domain}"
        assert a["xep_0363"].max_file_size == 100 * 1024 * 1024
        assert url.startswith("https://127.0.0.1:") and url.endswith("/holiday%20photo.jpg"), url

        status, headers, body = await download(trusting_http, url)
        assert status == 200, (status, body[:200])
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
        assert headers["Content-Type"] == "image/jpeg"
        assert headers["X-Content-Type-Options"] == "nosniff"
        # The slot is spent: nobody may write the file again, even with the URL.
        async with trusting_http() as http:
            async with http.put(url, data=b"x" * len(data)) as response:
                assert response.status in (403, 409), response.status
    finally:
        await stop_all([a])


async def test_a_file_over_the_limit_gets_no_slot(server):
    an = uname("toolarge")
    await create_user(server, an, PASSWORD)
    a = await login(server, an, PASSWORD, plugins=["xep_0363"])
    try:
        with pytest.raises(IqError) as refused:
            await a["xep_0363"].request_slot(JID(f"upload.{server.domain}"), "huge.bin",
                                            100 * 1024 * 1024 + 1, timeout=20)
        err = refused.value.iq["error"]
        assert err["condition"] == "not-acceptable", refused.value.iq
        too_large = err.xml.find(f"{{{UPLOAD_NS}}}file-too-large")
        assert too_large is not None, refused.value.iq
        assert too_large.findtext(f"{{{UPLOAD_NS}}}max-file-size") == str(100 * 1024 * 1024)
    finally:
        await stop_all([a])
