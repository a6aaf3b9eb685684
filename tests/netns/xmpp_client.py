#!/usr/bin/env python3
"""A minimal XMPP client for tests/netns/partition.sh: python3 standard library only.

Plaintext c2s (the test servers set `auth.allow_plaintext_without_tls = true`), SASL PLAIN,
resource binding, then one of these roles:

  recv        log every message from --peer whose body starts with --prefix, one line
              "<unix time> <body>" each, flushed as it arrives; answer "ping X" with
              "pong X" (with --log-pings, after logging "<unix time> ping X" too); exit 0
              on the body "<prefix> end".
  ping        send "ping <nonce>" to --peer and wait for "pong <nonce>" from it.
  send        send --count messages "<prefix> <i>" (or one --body) to --peer, then a ping
              to the server as a barrier: once it is answered, the server has accepted
              every message before it. Fails on any error stanza.
  local-chat  two sessions of one site (--user and --peer-user) chat back and forth for
              --duration seconds; every message must arrive within --max-latency.

Every wait has a deadline; a missed deadline is an error (exit status 1).
"""

import argparse
import base64
import collections
import socket
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

NS_CLIENT = "{jabber:client}"
NS_STREAM = "{http://etherx.jabber.org/streams}"
NS_SASL = "{urn:ietf:params:xml:ns:xmpp-sasl}"
NS_BIND = "{urn:ietf:params:xml:ns:xmpp-bind}"


class Failure(Exception):
    pass


class Conn:
    """One c2s connection; stanzas are parsed incrementally with XMLPullParser."""

    def __init__(self, host, port, domain, user, password, resource, timeout):
        self.domain = domain
        self.timeout = timeout
        self.jid = f"{user}@{domain}/{resource}"
        self.queue = collections.deque()
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._open()
        auth = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{auth}</auth>")
        el = self.wait(lambda e: e.tag in (NS_SASL + "success", NS_SASL + "failure"), "SASL outcome")
        if el.tag != NS_SASL + "success":
            raise Failure(f"{user}: authentication failed")
        self._open()
        self.send(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            f"<resource>{escape(resource)}</resource></bind></iq>"
        )
        el = self.wait(lambda e: e.get("id") == "bind", "bind result")
        if el.get("type") != "result":
            raise Failure(f"{user}: bind failed: {ET.tostring(el)!r}")

    def _open(self):
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.send(
            f"<?xml version='1.0'?><stream:stream to={quoteattr(self.domain)} version='1.0' "
            "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        )
        self.wait(lambda e: e.tag == NS_STREAM + "features", "stream features")

    def send(self, xml):
        self.sock.sendall(xml.encode())

    def _pump(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError from None
        if not data:
            raise Failure(f"{self.jid}: server closed the connection")
        self.parser.feed(data)
        for event, el in self.parser.read_events():
            if event == "start":
                self.depth += 1
                continue
            self.depth -= 1
            if self.depth == 0:
                raise Failure(f"{self.jid}: stream closed by the server")
            if self.depth == 1:
                if el.tag == NS_STREAM + "error":
                    raise Failure(f"{self.jid}: stream error {ET.tostring(el)!r}")
                self.queue.append(el)

    def wait(self, pred, what, timeout=None):
        """Removes and returns the first received stanza matching pred, leaving the others
        queued in order."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for el in self.queue:
                if pred(el):
                    self.queue.remove(el)
                    return el
            try:
                self._pump(deadline)
            except TimeoutError:
                raise Failure(f"{self.jid}: timed out waiting for {what}") from None

    def message(self, to, body, mid=None):
        mid = mid or uuid.uuid4().hex
        self.send(
            f"<message to={quoteattr(to)} type='chat' id={quoteattr(mid)}>"
            f"<body>{escape(body)}</body></message>"
        )

    def presence(self, priority):
        self.send(f"<presence><priority>{priority}</priority></presence>")

    def barrier(self):
        """Pings the server; returns the stanzas received before the answer."""
        pid = "barrier-" + uuid.uuid4().hex
        self.send(f"<iq type='get' id='{pid}' to={quoteattr(self.domain)}><ping xmlns='urn:xmpp:ping'/></iq>")
        self.wait(lambda e: e.get("id") == pid, "ping barrier")
        before = list(self.queue)
        self.queue.clear()
        return before


def body(el):
    b = el.find(NS_CLIENT + "body")
    return None if b is None else (b.text or "")


def is_message(el):
    return el.tag == NS_CLIENT + "message"


def bare(jid):
    return (jid or "").split("/", 1)[0]


def connect(args, user=None, resource=None):
    return Conn(args.host, args.port, args.domain, user or args.user, args.password,
                resource or args.resource, args.timeout)


def role_recv(args):
    c = connect(args)
    c.presence(args.priority)
    c.barrier()
    with open(args.ready, "w") as f:
        f.write("ready\n")
    end = f"{args.prefix} end"
    with open(args.log, "a", buffering=1) as log:
        while True:
            el = c.wait(is_message, f"messages from {args.peer}", timeout=args.run_timeout)
            # Presence and other stanzas are of no interest here.
            c.queue = collections.deque(e for e in c.queue if is_message(e))
            b = body(el)
            if el.get("type") == "error":
                raise Failure(f"error message: {ET.tostring(el)!r}")
            if b is None or bare(el.get("from")) != args.peer:
                continue
            if b.startswith("ping "):
                if args.log_pings:
                    log.write(f"{time.time():.6f} {b}\n")
                c.message(el.get("from"), "pong " + b[5:])
            elif b.startswith(args.prefix + " "):
                log.write(f"{time.time():.6f} {b}\n")
                if b == end:
                    return


def role_ping(args):
    c = connect(args)
    c.presence(args.priority)
    nonce = uuid.uuid4().hex[:12]
    start = time.monotonic()
    c.message(args.peer, f"ping {nonce}")
    c.wait(lambda e: is_message(e) and body(e) == f"pong {nonce}"
           and bare(e.get("from")) == bare(args.peer), f"pong from {args.peer}")
    print(f"{c.jid} <-> {args.peer}: round trip {time.monotonic() - start:.3f} s")


def role_send(args):
    c = connect(args)
    bodies = [args.body] if args.body is not None else [f"{args.prefix} {i}" for i in range(args.count)]
    for i, b in enumerate(bodies):
        c.message(args.peer, b, mid=f"m{i}-{uuid.uuid4().hex[:8]}")
    errors = [e for e in c.barrier() if e.get("type") == "error"]
    if errors:
        raise Failure("refused: " + "; ".join(ET.tostring(e).decode() for e in errors))
    print(f"{c.jid}: {len(bodies)} message(s) to {args.peer} accepted")


def role_local_chat(args):
    a = connect(args, args.user, args.resource)
    b = connect(args, args.peer_user, args.resource)
    for c in (a, b):
        c.presence(args.priority)
    end = time.monotonic() + args.duration
    rounds, worst = 0, 0.0
    while True:
        for src, dst in ((a, b), (b, a)):
            text = f"local {rounds} {uuid.uuid4().hex[:8]}"
            t0 = time.monotonic()
            src.message(dst.jid, text)
            dst.wait(lambda e: is_message(e) and body(e) == text, f"local message {text!r}",
                     timeout=args.max_latency)
            worst = max(worst, time.monotonic() - t0)
            if any(e.get("type") == "error" for e in list(src.queue) + list(dst.queue)):
                raise Failure("error stanza during local chat")
        rounds += 1
        if time.monotonic() >= end:
            break
        time.sleep(args.pace)  # pacing between rounds, not synchronisation
    print(f"{args.domain}: {a.jid} <-> {b.jid}: {rounds} round trips in {args.duration:.0f} s, "
          f"slowest message {worst * 1000:.0f} ms")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=["recv", "ping", "send", "local-chat"])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=5222)
    p.add_argument("--domain", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", default="secret")
    p.add_argument("--resource", default="r")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--peer", help="the other party's JID")
    p.add_argument("--peer-user", help="local-chat: the other local user")
    p.add_argument("--prefix", default="msg")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--body")
    p.add_argument("--ready", help="recv: file written once the session is available")
    p.add_argument("--log", help="recv: file the received bodies are appended to")
    p.add_argument("--log-pings", action="store_true", help="recv: log the pings answered too")
    p.add_argument("--timeout", type=float, default=20.0, help="deadline of each protocol step")
    p.add_argument("--run-timeout", type=float, default=300.0, help="recv: longest wait for a message")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--max-latency", type=float, default=2.0)
    p.add_argument("--pace", type=float, default=0.05)
    args = p.parse_args()
    try:
        {"recv": role_recv, "ping": role_ping, "send": role_send,
         "local-chat": role_local_chat}[args.role](args)
    except (Failure, OSError) as e:
        print(f"xmpp_client {args.role} {args.user}@{args.domain}: FAILED: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
