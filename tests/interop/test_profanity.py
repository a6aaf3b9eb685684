"""The README's Profanity recipe, run as written with Debian's Profanity in tmux.

The steps are read from README.md (between the ``profanity-recipe`` markers), so the recipe
cannot drift from what works: the accounts are made with ``outpost user add`` typed into a
terminal (which also shows the password is not echoed), Profanity connects with the
recipe's ``/connect`` line, and its ``/msg`` reaches bob, a slixmpp client.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from outpost_harness import server_env
from xmpp_helpers import login, stop_all

README = Path(__file__).resolve().parents[2] / "README.md"
PASSWORDS = {"alice": "alice-Profanity-pw", "bob": "bob-Profanity-pw"}
WAIT = 30.0


def recipe() -> tuple[list[str], list[str]]:
    """The shell lines and the Profanity lines of the README's recipe."""
    text = README.read_text()
    block = text.split("<!-- profanity-recipe", 1)[1].split("<!-- /profanity-recipe -->", 1)[0]
    shell = re.search(r"```sh\n(.*?)```", block, re.S).group(1)
    profanity = re.search(r"```text\n(.*?)```", block, re.S).group(1)
    strip = lambda line: line.split("#", 1)[0].strip()  # noqa: E731
    return ([strip(l) for l in shell.splitlines() if strip(l)],
            [l.strip() for l in profanity.splitlines() if l.strip()])


class Tmux:
    """One tmux session on its own socket, torn down at the end."""

    def __init__(self, workdir: Path, name: str, command: str, env: dict[str, str]):
        self.socket = str(workdir / f"tmux-{name}")
        self.name = name
        self._run("new-session", "-d", "-s", name, "-x", "200", "-y", "50", command, env=env)

    def _run(self, *args: str, env: dict[str, str] | None = None) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], check=True,
                              capture_output=True, text=True, env=env).stdout

    def type(self, text: str) -> None:
        self._run("send-keys", "-t", self.name, "-l", text)
        self._run("send-keys", "-t", self.name, "Enter")

    def screen(self) -> str:
        return self._run("capture-pane", "-t", self.name, "-p", "-S", "-200")

    def wait_for(self, pattern: str) -> str:
        """Polls the screen: a terminal program shows what it did only there."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"no /{pattern}/ on the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True)


@pytest.mark.timeout_s(120)
async def test_the_readmes_profanity_recipe_works_as_written(fresh_server, tmp_path):
    assert shutil.which("profanity") and shutil.which("tmux"), "run.sh installs them"
    shell, steps = recipe()
    fresh_server.start()
    host, port = fresh_server.starttls_addr
    env = server_env() | {"HOME": str(tmp_path / "home"), "TERM": "xterm"}
    (tmp_path / "home").mkdir()
    binary = fresh_server.binary

    # `outpost user add`, typed at a terminal: prompted twice, nothing echoed.
    for line in shell:
        words = line.split()
        assert words[:3] == ["outpost", "user", "add"], line
        user = words[3].split("@")[0]
        term = Tmux(tmp_path, f"add-{user}",
                    f"{binary} user add {words[3]} --config {fresh_server.config_path}; sleep 30",
                    env)
        try:
            term.wait_for(r"password for .*:")
            term.type(PASSWORDS[user])
            term.wait_for(r"repeat the password:")
            term.type(PASSWORDS[user])
            screen = term.wait_for(rf"added {words[3]}")
            assert PASSWORDS[user] not in screen, "the password was echoed"
        finally:
            term.close()

    bob = await login(fresh_server, "bob", PASSWORDS["bob"])
    prof = Tmux(tmp_path, "profanity", "profanity", env)
    try:
        prof.wait_for(r"Profanity")
        for step in steps:
            step = step.replace("port 5222", f"port {port}").replace("127.0.0.1", host)
            prof.type(step)
            if step.startswith("/connect"):
                prof.wait_for(r"Enter password:")
                prof.type(PASSWORDS["alice"])
                prof.wait_for(r"logged in successfully")
        message = await bob.messages.wait_for(
            lambda m: m["body"] == "Hello", what="Profanity's message")
        assert str(message["from"].bare) == "alice@localhost"
        prof.type("/quit")
    finally:
        prof.close()
        await stop_all([bob])
