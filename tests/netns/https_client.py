#!/usr/bin/env python3
"""The client side of tests/netns/https_only.sh: python3 standard library only.

  probe  HOST PORT:open|closed ...   TCP connects to each port at once, each bounded by
                                     --timeout; exit 0 when every port is as expected.
  rest   --host NAME --peer JID ...  the HTTP API (crates/web/api/openapi.json) over HTTPS:
                                     POST /api/v1/login, GET /api/v1/events (Server-Sent
                                     Events), POST /api/v1/messages with the body "ping
                                     <--nonce>" to --peer, then wait for an `event: message`
                                     from --peer whose body is "pong <--nonce>" (the answer of
                                     tests/netns/xmpp_client.py's recv role); POST
                                     /api/v1/logout at the end, after which the server
                                     must end the event stream.

The password comes from the environment (HTTPS_ONLY_PASSWORD). Neither the token nor any
message body is printed. Every wait has a deadline; a missed one is an error (exit 1).
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import queue
import socket
import ssl
import sys
import threading
import time


class Failure(Exception):
    pass


# ---------------------------------------------------------------- probe

def probe_one(host, port, timeout):
    """Returns (open?, how)."""
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"connected in {(time.monotonic() - t0) * 1000:.0f} ms"
    except socket.timeout:
        return False, f"no answer within {timeout:g} s"
    except ConnectionRefusedError:
        return False, "refused"
    except OSError as e:
        return False, e.strerror or str(e)


def role_probe(args):
    wanted = []
    for spec in args.ports:
        port, _, want = spec.partition(":")
        if want not in ("open", "closed"):
            raise SystemExit(f"bad port spec {spec!r}: PORT:open or PORT:closed")
        wanted.append((int(port), want == "open"))
    with concurrent.futures.ThreadPoolExecutor(len(wanted)) as pool:
        results = list(pool.map(lambda pw: probe_one(args.host, pw[0], args.timeout), wanted))
    ok = True
    for (port, want_open), (is_open, how) in zip(wanted, results):
        state = "open" if is_open else "closed"
        verdict = "PASS" if is_open == want_open else "FAIL"
        ok &= is_open == want_open
        print(f"  {verdict}  {args.label}: TCP {args.host}:{port} is {state} ({how}), "
              f"expected {'open' if want_open else 'closed'}")
    return 0 if ok else 1


# ---------------------------------------------------------------- rest

def tls_context(cafile):
    # Trust exactly the server's self-signed certificate (provisioned out of band, as a
    # company would); the host name is checked against it.
    return ssl.create_default_context(cafile=cafile)


class Api:
    def __init__(self, host, port, ctx, timeout):
        self.host, self.port, self.ctx, self.timeout = host, port, ctx, timeout
        self.token = None

    def conn(self):
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                           timeout=self.timeout)

    def headers(self, extra=None):
        h = {"Accept": "application/json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        h.update(extra or {})
        return h

    def call(self, method, path, body=None):
        """Returns (status, parsed JSON or None)."""
        c = self.conn()
        try:
            payload = None if body is None else json.dumps(body).encode()
            extra = {} if body is None else {"Content-Type": "application/json"}
            c.request(method, path, body=payload, headers=self.headers(extra))
            r = c.getresponse()
            data = r.read()
            try:
                parsed = json.loads(data) if data else None
            except ValueError:
                parsed = None
            return r.status, parsed
        finally:
            c.close()


def problem(parsed):
    """What of an error answer may be printed: its type and title, no more."""
    if isinstance(parsed, dict):
        return " ".join(str(parsed.get(k)) for k in ("type", "title", "detail") if parsed.get(k))
    return ""


def read_events(resp, out):
    """Parses a text/event-stream into (id, event, data) tuples on `out`; puts the
    exception that ended it (or EOFError) last."""
    ev_id, ev_type, data = None, "message", []
    try:
        while True:
            raw = resp.readline()
            if not raw:
                raise EOFError("the event stream ended")
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data:
                    out.put((ev_id, ev_type, "\n".join(data)))
                ev_type, data = "message", []
                continue
            if line.startswith(":"):
                continue  # comment (keep-alive)
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                ev_id = value
            elif field == "event":
                ev_type = value
            elif field == "data":
                data.append(value)
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        out.put(e)


def role_rest(args):
    password = os.environ.get("HTTPS_ONLY_PASSWORD")
    if not password:
        raise Failure("HTTPS_ONLY_PASSWORD is not set")
    api = Api(args.host, args.port, tls_context(args.cafile), args.timeout)
    where = f"https://{args.host}:{args.port}"

    # 1. Log in.
    status, res = api.call("POST", "/api/v1/login",
                           {"jid": args.jid, "password": password, "label": "https-only test"})
    if status != 200 or not isinstance(res, dict) or not str(res.get("token", "")).startswith("opt_"):
        raise Failure(f"POST /api/v1/login: {status} {problem(res)}")
    api.token = res["token"]
    print(f"  PASS  POST {where}/api/v1/login: 200, a token for {res.get('jid')}")

    # 2. Open the event stream; the API session is online while it is open.
    sse = api.conn()
    sse.request("GET", "/api/v1/events", headers=api.headers({"Accept": "text/event-stream"}))
    resp = sse.getresponse()
    ctype = resp.getheader("Content-Type", "")
    if resp.status != 200 or not ctype.startswith("text/event-stream"):
        raise Failure(f"GET /api/v1/events: {resp.status} {ctype}")
    events = queue.Queue()
    threading.Thread(target=read_events, args=(resp, events), daemon=True).start()
    print(f"  PASS  GET {where}/api/v1/events: 200 {ctype}")

    # 3. Send; bob (online over XMPP) answers "pong <nonce>".
    t_send = time.monotonic()
    status, res = api.call("POST", "/api/v1/messages",
                           {"to": args.peer, "body": f"ping {args.nonce}", "type": "chat"})
    if status != 200 or not isinstance(res, dict) or not res.get("id") or not res.get("state"):
        raise Failure(f"POST /api/v1/messages: {status} {problem(res)}")
    if res["state"] != "delivered":
        raise Failure(f"POST /api/v1/messages: state {res['state']!r}, expected 'delivered' "
                      f"({args.peer} is online)")
    print(f"  PASS  POST {where}/api/v1/messages to {args.peer}: 200, state {res['state']}")

    # 4. The answer comes as an `event: message`.
    deadline = t_send + args.timeout
    seen = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failure(f"no `event: message` from {args.peer} with the expected body within "
                          f"{args.timeout:g} s ({seen} other event(s) seen)")
        try:
            item = events.get(timeout=left)
        except queue.Empty:
            continue
        if isinstance(item, BaseException):
            raise Failure(f"event stream: {type(item).__name__}: {item}")
        ev_id, ev_type, data = item
        try:
            msg = json.loads(data)
        except ValueError:
            raise Failure(f"event {ev_id} ({ev_type}): data is not JSON") from None
        frm = str(msg.get("from", "")) if isinstance(msg, dict) else ""
        if (ev_type == "message" and (frm == args.peer or frm.startswith(args.peer + "/"))
                and msg.get("body") == f"pong {args.nonce}"):
            print(f"  PASS  event stream: `event: message` id {ev_id} from {frm} with the "
                  f"answer, {(time.monotonic() - t_send) * 1000:.0f} ms after sending")
            break
        seen += 1
    # 5. Log out: revokes the token and ends its session, and with it the event stream.
    # (The stream is not closed from this side first: closing it would wait for the reader
    # thread's blocked read.)
    status, res = api.call("POST", "/api/v1/logout")
    if status // 100 != 2:
        raise Failure(f"POST /api/v1/logout: {status} {problem(res)}")
    deadline = time.monotonic() + args.timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failure(f"the event stream was still open {args.timeout:g} s after logout")
        try:
            item = events.get(timeout=left)
        except queue.Empty:
            continue
        if isinstance(item, EOFError):
            break
        if isinstance(item, BaseException):
            raise Failure(f"event stream after logout: {type(item).__name__}: {item}")
    sse.close()
    print(f"  PASS  POST {where}/api/v1/logout: {status}, and the server ended the event stream")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="role", required=True)
    pr = sub.add_parser("probe")
    pr.add_argument("host")
    pr.add_argument("ports", nargs="+", metavar="PORT:open|closed")
    pr.add_argument("--label", default="probe")
    pr.add_argument("--timeout", type=float, default=2.0)
    rs = sub.add_parser("rest")
    rs.add_argument("--host", required=True, help="the server's name (as in its certificate)")
    rs.add_argument("--port", type=int, default=443)
    rs.add_argument("--cafile", required=True, help="the server's certificate")
    rs.add_argument("--jid", required=True)
    rs.add_argument("--peer", required=True)
    rs.add_argument("--nonce", required=True)
    rs.add_argument("--timeout", type=float, default=15.0, help="deadline of each step")
    args = p.parse_args()
    try:
        sys.exit({"probe": role_probe, "rest": role_rest}[args.role](args))
    except (Failure, OSError, http.client.HTTPException) as e:
        print(f"  FAIL  https_client {args.role}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
