"""Registration (XEP-0077) and SASL authentication."""

from __future__ import annotations

import pytest

from xmpp_helpers import (
    Client, LoginFailed, RegistrationFailed, create_user, login, register,
    stop_all, uname,
)

PASSWORD = "correct horse battery staple"


async def test_inband_registration_then_login(server):
    name = uname("reg")
    # Register: slixmpp fetches the form, submits it, then authenticates
    # with the new credentials on the same stream.
    c = await register(server, name, PASSWORD)
    try:
        form = c.registration_form
        assert form is not None and form["type"] == "result", form
        fields = set(form["register"]["fields"])
        assert {"username", "password"} <= fields, f"registration form fields: {fields}"
        assert c.sessionstarted
        assert c.bare == f"{name}@localhost"
    finally:
        await c.stop()

    # A brand new connection logs in with the account.
    c2 = await login(server, name, PASSWORD)
    try:
        assert c2.authenticated and c2.sessionstarted
        assert c2.bare == f"{name}@localhost"
        assert c2.boundjid.resource, "server bound no resource"
    finally:
        await c2.stop()


async def test_register_existing_name_conflicts(server):
    name = uname("dup")
    await create_user(server, name, PASSWORD)

    c = Client(server, name, "another password", register=True)
    with pytest.raises(RegistrationFailed) as ei:
        await c.start()
    assert ei.value.condition == "conflict", ei.value.reason
    assert not c.sessionstarted

    # The original password still works (the account was not overwritten).
    c2 = await login(server, name, PASSWORD)
    await c2.stop()
    # ... and the second one does not.
    c3 = Client(server, name, "another password")
    with pytest.raises(LoginFailed):
        await c3.start()
    assert c3.failed_auth_stanzas, "no SASL <failure/> for the rejected password"


@pytest.mark.parametrize("tls", ["starttls", "direct"])
@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
async def test_scram_login(server, mech, tls):
    name = uname("scram")
    await create_user(server, name, PASSWORD)
    c = await login(server, name, PASSWORD, mech=mech, tls=tls)
    try:
        assert c.used_mech == mech, f"authenticated with {c.used_mech}, forced {mech}"
        ssl_obj = c.transport.get_extra_info("ssl_object")
        assert ssl_obj is not None, "stream is not encrypted"
        if tls == "starttls":
            assert "starttls" in c.features, "STARTTLS was not negotiated"
        else:
            assert "starttls" not in c.features, "STARTTLS negotiated on a direct-TLS port"
        # The session is usable: a round trip to the server.
        await c.ping_server()
    finally:
        await c.stop()


@pytest.mark.parametrize("tls", ["starttls", "direct"])
async def test_plain_login_over_tls(server, tls):
    name = uname("plain")
    await create_user(server, name, PASSWORD)
    c = await login(server, name, PASSWORD, mech="PLAIN", tls=tls)
    try:
        assert c.used_mech == "PLAIN"
    finally:
        await c.stop()


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"])
async def test_wrong_password_fails_and_server_keeps_serving(server, mech):
    name = uname("wrongpw")
    await create_user(server, name, PASSWORD)

    bad = Client(server, name, "not the password", mech=mech)
    with pytest.raises(LoginFailed):
        await bad.start()
    assert bad.failed_auth_stanzas, "no failed_auth event (SASL <failure/>)"
    cond = bad.failed_auth_stanzas[0]["condition"]
    assert cond == "not-authorized", f"SASL failure condition {cond!r}"
    assert not bad.authenticated

    # A wrong password for a user that does not exist fails the same way.
    ghost = Client(server, uname("ghost"), "whatever", mech=mech)
    with pytest.raises(LoginFailed):
        await ghost.start()
    assert ghost.failed_auth_stanzas
    assert ghost.failed_auth_stanzas[0]["condition"] == "not-authorized"

    # The server keeps serving: the right password works, twice in parallel.
    good = await login(server, name, PASSWORD, mech=mech)
    other = await login(server, name, PASSWORD, resource="second")
    try:
        await good.ping_server()
        await other.ping_server()
    finally:
        await stop_all([good, other])


async def test_cli_user_add_then_login(fresh_server):
    """`outpost user add --password-stdin` before the server starts."""
    fresh_server.add_user_cli("cliuser", PASSWORD)
    fresh_server.start()
    c = await login(fresh_server, "cliuser", PASSWORD, mech="SCRAM-SHA-256")
    try:
        assert c.bare == "cliuser@localhost"
    finally:
        await c.stop()
    bad = Client(fresh_server, "cliuser", PASSWORD + "x")
    with pytest.raises(LoginFailed):
        await bad.start()
