"""A federated Prosody and an Outpost cluster: ``o.test`` served by two Outpost nodes on one
PostgreSQL database with a NATS server between them (``[cluster]``), ``p.test`` by Prosody
(Debian's package, as in test_federation_prosody.py).

Prosody reaches ``o.test`` through a small TCP load balancer written here (each connection
goes to the first node that accepts it), as it would through SRV records listing both nodes.
One node at a time runs each of ``o.test``'s links to other servers (the node where the
link's first stanza started); the test kills the node running the link to ``p.test`` with
SIGKILL, and the messages an ``o.test`` user on the other node sends meanwhile must reach
Prosody's user once, in order, and his answers come back.

PostgreSQL (Debian's binaries, on a unix socket in a temporary directory) and nats-server
(on loopback) are the session's (``cluster_services.shared``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from cluster_services import Balancer, Nats, shared
from outpost_harness import OutpostServer, server_env
from test_federation_prosody import P_DOMAIN, P_HOST, P_S2S, ProsodyServer
from xmpp_helpers import chat_from, login, message_and_reply, stop_all, uname

O_DOMAIN = "o.test"
PASSWORD = "cluster-secret"


def node_config(url: str, nats: Nats, node_id: str) -> str:
    return f"""
[storage]
backend = "postgres"
url = "{url}"

[cluster]
nats_url = "{nats.url}"
node_id = "{node_id}"

[federation]
enabled = true
require_tls = true
retry_initial_secs = 1
retry_max_secs = 2
probe_interval_secs = 1
srv_lookup = false
dialback_secret = "the-same-secret-on-every-node"

[federation.peers]
"{P_DOMAIN}" = "{P_HOST}:{P_S2S}"
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """(node 1, node 2, Prosody), o.test's nodes behind the balancer Prosody reaches."""
    if shutil.which("prosody") is None or shutil.which("nats-server") is None:
        raise AssertionError("prosody and nats-server must be installed (run.sh installs them)")
    (pg, nats), balancer = shared(), Balancer()
    url = pg.createdb()
    nodes = [OutpostServer(tmp_path_factory.mktemp(f"cluster_node{i}"), domain=O_DOMAIN,
                           s2s_listen="127.0.0.1:0",
                           config_overrides=node_config(url, nats, f"n{i}"))
             for i in (1, 2)]
    pdir = Path(tempfile.mkdtemp(prefix="outpost-interop-prosody-"))
    os.chmod(pdir, 0o755)
    prosody = ProsodyServer(pdir, routes={O_DOMAIN: balancer.addr})
    try:
        for n in nodes:
            n.start()
        balancer.backends = [n.s2s_addr for n in nodes]
        prosody.write_config()
        prosody.start()
        yield nodes[0], nodes[1], prosody
    except BaseException:
        for n in nodes:
            print(f"--- {n.workdir} ---\n{n.log_tail(120)}")
        print(prosody.log_tail(120))
        raise
    finally:
        prosody.stop()
        for n in nodes:
            n.stop()
        balancer.close()
        shutil.rmtree(pdir, ignore_errors=True)


def links_of(node: OutpostServer, node_id: str) -> str:
    """What ``outpost admin cluster``, asked at ``node``, says ``node_id`` runs."""
    res = subprocess.run([node.binary, "admin", "cluster", "--config", str(node.config_path)],
                         capture_output=True, text=True, timeout=30, env=server_env())
    assert res.returncode == 0, res.stderr
    row = next(line for line in res.stdout.splitlines() if line.split()[:1] == [node_id])
    return row.rsplit("  ", 1)[-1].strip()


@pytest.mark.timeout_s(180)
async def test_prosody_keeps_talking_to_a_cluster_whose_link_node_is_killed(cluster):
    n1, n2, prosody = cluster
    on, qn, pn = uname("olga"), uname("quentin"), uname("paul")
    n2.add_user_cli(on, PASSWORD)
    n2.add_user_cli(qn, PASSWORD)
    prosody.register(pn, PASSWORD)
    o = await login(n2, on, PASSWORD)
    q = await login(n1, qn, PASSWORD)
    p = await login(prosody, pn, PASSWORD)
    try:
        # q, at n1, writes first: the link to p.test runs at n1. o's message leaves through
        # it; Prosody's answer comes in at whichever node the balancer picks, and reaches o.
        await message_and_reply(q, p, O_DOMAIN, P_DOMAIN, "first", "answer first")
        assert links_of(n2, "n1") == "1 link"
        await message_and_reply(o, p, O_DOMAIN, P_DOMAIN, "before", "answer before")
        assert n1.proc is not None
        n1.proc.kill()
        n1.proc.wait()
        for i in range(10):
            o.send_message(mto=p.bare, mbody=f"after {i}", mtype="chat")
        for i in range(10):
            await p.messages.wait_for(chat_from(o.bare, f"after {i}"), timeout=90,
                                      what=f"after {i} at Prosody")
        bodies = [str(m["body"]) for m in p.messages.items if str(m["body"]).startswith("after ")]
        assert bodies == [f"after {i}" for i in range(10)], bodies
        await message_and_reply(p, o, P_DOMAIN, O_DOMAIN, "from prosody", "from the cluster")
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- n2 ---\n{n2.log_tail(80)}\n{prosody.log_tail(60)}") from None
    finally:
        await stop_all([o, q, p])
