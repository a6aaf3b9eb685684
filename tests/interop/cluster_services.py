"""PostgreSQL and NATS for the tests of Outpost clusters, and what stands in front of a
cluster's nodes.

* ``Postgres``: Debian's PostgreSQL in a temporary directory, on a unix socket only (as
  the ``postgres`` user when root); ``createdb`` gives each server a database of its own.
* ``Nats``: nats-server on 127.0.0.1 and a port it picks.
* ``Balancer``: a TCP load balancer; each connection goes to the first backend that
  accepts it.
* ``shared()``: one PostgreSQL and one NATS for the whole test session (clusters keep
  apart by database and subject prefix), stopped when the session ends.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

START_TIMEOUT = 30.0


class Postgres:
    """Debian's PostgreSQL in a temporary directory, listening on a unix socket only."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not bins:
            raise AssertionError("PostgreSQL is not installed (test.sh installs it)")
        if shutil.which("nats-server") is None:
            raise AssertionError("nats-server is not installed (test.sh installs it)")
        self.bin = bins[-1].parent
        self.dir = Path(tempfile.mkdtemp(prefix="outpost-interop-pg-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", f"{self.dir}/data", "-U", "postgres", "-A", "trust",
                  "--no-locale", "-E", "UTF8", "--no-sync")
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/log", "-w",
                  "-o", f"-k {self.dir} -c listen_addresses= -c max_connections=300", "start")
        self._names = itertools.count(1)

    def createdb(self) -> str:
        """A new, empty database; its URL."""
        name = f"outpost{next(self._names)}"
        self._run("createdb", "-h", str(self.dir), "-U", "postgres", name)
        return f"postgres://postgres@localhost:5432/{name}?host={self.dir}"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / tool), *args], check=True,
                       capture_output=True, timeout=120)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-m", "fast", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


class Nats:
    """nats-server on 127.0.0.1 and a port it picks."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="outpost-interop-nats-"))
        self.proc = subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            ports = list(self.dir.glob("*.ports"))
            text = ports[0].read_text() if ports else ""
            if "nats://" in text:
                start = text.index("nats://")
                self.url = text[start:text.index('"', start)]
                return
            assert time.monotonic() < deadline, "nats-server did not start"
            # Polling interval of the readiness check above.
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Balancer:
    """A TCP load balancer in front of the nodes' s2s listeners: each connection goes to
    the first node that accepts it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = self.sock.getsockname()
        self.backends: list[tuple[str, int]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = None
            for backend in list(self.backends):
                try:
                    server = socket.create_connection(backend, timeout=5)
                    server.settimeout(None)
                    break
                except OSError:
                    continue
            if server is None:
                client.close()
                continue
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


_SHARED: tuple[Postgres, Nats] | None = None


def shared() -> tuple[Postgres, Nats]:
    """The session's PostgreSQL and NATS, started on first use."""
    global _SHARED
    if _SHARED is None:
        pg = Postgres()
        nats = Nats()
        _SHARED = (pg, nats)
        atexit.register(lambda: (nats.stop(), pg.stop()))
    return _SHARED
