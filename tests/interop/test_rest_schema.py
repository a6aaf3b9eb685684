"""The HTTP API against its own description: Schemathesis (PyPI `schemathesis`, a
third-party OpenAPI fuzzer, pinned in run.sh) reads /api/v1/openapi.json from a running
Outpost and sends each operation the schema's examples, its boundary and negative cases
(the coverage phase) and generated requests (the fuzzing phase). Every answer must be no
5xx, have a status, content type, headers and body the document declares for that
operation (errors are application/problem+json with their codes' statuses).

A user registered and logged in over the API gives the bearer token of the user routes;
the admin routes get the admin token this module's server is configured with. Left out:
`GET /api/v1/events`, a stream that never ends, and `POST /api/v1/logout`, which would
revoke the token the rest of the run uses. The stateful phase is off, and so is reusing
values from responses: either could feed a listed token id to `DELETE /api/v1/tokens/{id}`
or the user's JID to `DELETE /api/v1/admin/users/{jid}`, and end the run's credentials.

TLS verification is off (the certificate is self-signed for the domain; the URLs name
127.0.0.1). The CLI runs as a subprocess, bounded by the number of examples per operation,
a timeout per request and one for the whole run; its output is attached on failure."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from outpost_harness import OutpostServer
from xmpp_helpers import uname

# Pinned in run.sh; the CLI options and configuration keys below are those of 4.x.
SCHEMATHESIS_VERSION = "4.32.5"
PASSWORD = "rest-schema-secret"
ADMIN_TOKEN = "interop-admin-token-0123456789abcdef0123456789"
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
]
# Operations the run leaves out (see the module's docstring).
EXCLUDED_OPERATIONS = ["Events", "Logout"]
MAX_EXAMPLES = int(os.environ.get("OUTPOST_INTEROP_SCHEMATHESIS_EXAMPLES", "30"))
# A fixed seed: the same requests every run, so a failure reproduces (override to explore).
SEED = int(os.environ.get("OUTPOST_INTEROP_SCHEMATHESIS_SEED", "7395"))
REQUEST_TIMEOUT = 10.0
RUN_TIMEOUT = float(os.environ.get("OUTPOST_INTEROP_SCHEMATHESIS_TIMEOUT", "900"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """conftest's module server, with the admin routes on (named `server` so a failing
    test gets its stderr attached)."""
    srv = OutpostServer(tmp_path_factory.mktemp("test_rest_schema"), config_overrides=f"""
[api]
admin_token = "{ADMIN_TOKEN}"
""")
    srv.start()
    try:
        yield srv
    finally:
        alive = srv.alive()
        code = srv.stop()
    assert alive, f"outpost died during the tests\n--- stderr tail ---\n{srv.log_tail()}"
    assert code == 0, (f"outpost exited with code {code} after SIGTERM (expected 0)\n"
                       f"--- stderr tail ---\n{srv.log_tail()}")


def base_url(server: OutpostServer) -> str:
    host, port = server.listeners["https"]
    return f"https://{host}:{port}"


def call(server: OutpostServer, method: str, path: str, body: dict | None = None,
         token: str | None = None) -> tuple[int, str, object]:
    """One API request: (status, content type, decoded JSON body or None)."""
    ctx = ssl.create_default_context(cafile=str(server.cert_path))
    ctx.check_hostname = False  # the certificate names the domain, the URL 127.0.0.1
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base_url(server) + path, data=data, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=REQUEST_TIMEOUT) as resp:
            status, ctype, raw = resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as e:
        status, ctype, raw = e.code, e.headers.get("Content-Type", ""), e.read()
    return status, ctype, (json.loads(raw) if raw else None)


def user_token(server: OutpostServer) -> str:
    """Registers a user over the API and logs in: the user's bearer token."""
    name = uname("rest")
    status, _, answer = call(server, "POST", "/api/v1/register",
                             {"username": name, "password": PASSWORD})
    assert status == 201, (status, answer)
    jid = f"{name}@{server.domain}"
    assert answer == {"jid": jid}, answer
    status, _, answer = call(server, "POST", "/api/v1/login",
                             {"jid": jid, "password": PASSWORD, "label": "schemathesis"})
    assert status == 200, (status, answer)
    assert answer["jid"] == jid and answer["token"].startswith("opt_"), answer
    return answer["token"]


def toml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a TOML basic string for these values


def write_config(path: Path, base: str, token: str, admin_token: str, reports: Path) -> None:
    no_response_data = "[phases.{}.extra-data-sources]\nresponses = false\n"
    path.write_text(f"""\
# Written by tests/interop/test_rest_schema.py
base-url = {toml_str(base)}
tls-verify = false
workers = 1
request-timeout = {REQUEST_TIMEOUT}
seed = {SEED}
color = false

[cache]
enabled = false

[reports]
directory = {toml_str(str(reports))}

[generation]
max-examples = {MAX_EXAMPLES}
database = "none"

[phases.stateful]
enabled = false

{no_response_data.format("examples")}
{no_response_data.format("coverage")}
{no_response_data.format("fuzzing")}
[auth.openapi.bearerAuth]
bearer = {toml_str(token)}

[auth.openapi.adminAuth]
bearer = {toml_str(admin_token)}
""")


def run_schemathesis(base: str, token: str, admin_token: str, workdir: Path,
                     timeout: float = RUN_TIMEOUT) -> tuple[int, str, dict | None]:
    """`st run` against `base`/api/v1/openapi.json: (exit code, output, JSON report)."""
    workdir.mkdir(parents=True, exist_ok=True)
    reports = workdir / "reports"
    config = workdir / "schemathesis.toml"
    write_config(config, base, token, admin_token, reports)
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
           f"{base}/api/v1/openapi.json", "--checks", ",".join(CHECKS),
           "--phases", "examples,coverage,fuzzing",
           "--report", "json", "--report-json-path", str(reports / "report.json")]
    for op_id in EXCLUDED_OPERATIONS:
        cmd += ["--exclude-operation-id", op_id]
    env = dict(os.environ, NO_COLOR="1", PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        raise AssertionError(f"schemathesis did not finish within {timeout}s\n{out[-8000:]}")
    output = proc.stdout + proc.stderr
    (workdir / "schemathesis.out").write_text(output)
    report_path = reports / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return proc.returncode, output, report


def test_schemathesis_version_is_the_pinned_one():
    import importlib.metadata
    assert importlib.metadata.version("schemathesis") == SCHEMATHESIS_VERSION


def test_the_document_is_served_and_names_every_operation(server):
    status, ctype, doc = call(server, "GET", "/api/v1/openapi.json")
    assert status == 200 and ctype.startswith("application/json"), (status, ctype)
    assert doc["openapi"].startswith("3.1"), doc.get("openapi")
    ids = {op["operationId"] for item in doc["paths"].values() for op in item.values()
           if isinstance(op, dict) and "operationId" in op}
    # The paper's operations, under these names.
    assert {"Register", "Login", "Logout", "FriendList", "AddFriend", "DelFriend",
            "SendMessage"} <= ids, sorted(ids)
    assert set(EXCLUDED_OPERATIONS) <= ids, sorted(ids)


def test_every_answer_conforms_to_the_openapi_document(server, tmp_path):
    token = user_token(server)
    status, _, me = call(server, "GET", "/api/v1/me", token=token)
    assert status == 200, (status, me)

    code, output, report = run_schemathesis(base_url(server), token, ADMIN_TOKEN,
                                            tmp_path / "schemathesis")
    assert code == 0, (f"schemathesis found problems (exit {code}); output, reports and "
                       f"config in {tmp_path / 'schemathesis'}:\n{output[-12000:]}")
    # It ran, and got through to the server with the token: the user's own routes are
    # still answered (nothing in the run revoked the token or removed the user).
    assert report is not None, f"no JSON report\n{output[-4000:]}"
    status, _, me = call(server, "GET", "/api/v1/me", token=token)
    assert status == 200, (status, me, server.log_tail())
