"""pytest wiring for the Outpost interop suite.

* ``server``: a fresh Outpost per test module (started in a temp dir,
  stopped with SIGTERM at the end; a non-zero exit or a hang fails the
  module's last test in teardown).
* ``fresh_server``: a fresh Outpost per test (not started: the test may
  prepare it first, e.g. ``outpost user add``, then call ``.start()``).
* With ``OUTPOST_INTEROP_CLUSTER=1`` both are two-node clusters of one domain on
  PostgreSQL and NATS (``outpost_harness.ClusterServer``), clients spread over the nodes.
* ``async def`` tests are run by a small hook below on a new event loop
  each, with an overall timeout (``@pytest.mark.timeout_s(N)``, default 90).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from outpost_harness import OutpostServer, outpost_bin, server_class  # noqa: E402

DEFAULT_TEST_TIMEOUT = float(os.environ.get("OUTPOST_INTEROP_TEST_TIMEOUT", "90"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "timeout_s(n): overall timeout of an async test in seconds")


def pytest_sessionstart(session: pytest.Session) -> None:
    binary = outpost_bin()
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise pytest.UsageError(
            f"outpost binary not found at {binary}; build it or set OUTPOST_BIN")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    marker = pyfuncitem.get_closest_marker("timeout_s")
    timeout = float(marker.args[0]) if marker else DEFAULT_TEST_TIMEOUT
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {n: pyfuncitem.funcargs[n] for n in names}

    async def runner():
        try:
            await asyncio.wait_for(fn(**kwargs), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"test exceeded its overall timeout of {timeout}s") from None

    asyncio.run(runner())
    return True


def _finish(srv: OutpostServer) -> None:
    if srv.proc is None:
        return
    if not srv.started:  # start() already reported why
        srv.stop()
        return
    if srv.exit_code is not None:  # the test stopped it (and checked the code)
        return
    was_alive = srv.alive()
    code = srv.stop()
    assert was_alive, (
        f"outpost died during the tests (exit code {code})\n--- stderr tail ---\n{srv.log_tail()}")
    assert code == 0, (
        f"outpost exited with code {code} after SIGTERM (expected 0)\n"
        f"--- stderr tail ---\n{srv.log_tail()}")


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    srv = server_class()(workdir)
    srv.start()
    try:
        yield srv
    finally:
        _finish(srv)


@pytest.fixture
def fresh_server(request: pytest.FixtureRequest, tmp_path: Path):
    srv = server_class()(tmp_path / "outpost")
    try:
        yield srv
    finally:
        _finish(srv)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the server's stderr tail (and its location) to failing tests."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    for name in ("server", "fresh_server"):
        srv = funcargs.get(name)
        if isinstance(srv, OutpostServer):
            state = "alive" if srv.alive() else (
                f"NOT RUNNING (exit {srv.proc.poll() if srv.proc else 'never started'})")
            rep.sections.append((
                f"outpost stderr ({srv.log_path}), server {state}", srv.log_tail(80)))
