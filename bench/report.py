#!/usr/bin/env python3
"""Builds the Markdown comparison table from a compare.sh run.

    report.py OUT_DIR SERVER...                    # the table, on stdout (with OUT_DIR/relay.jsonl
                                                   # as the ceiling column, when present)
    report.py --slowest-rate FRACTION OUT_DIR SERVER...   # FRACTION x the slowest msgs/s
    report.py --federation OUT_DIR                 # the table of a bench/federation.sh run
    report.py --cluster OUT_DIR [PEER...]          # the tables of a bench/cluster.sh run

Reads OUT_DIR/<server>.jsonl (one JSON object per outpost-bench run) and OUT_DIR/machine.txt.
Where a scenario ran several times the table shows the median, and the number of runs.
"""
import json
import statistics
import sys
from pathlib import Path


def load(out, server):
    rows = {}
    path = Path(out) / f"{server}.jsonl"
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        rows.setdefault(r.get("scenario", "error"), []).append(r)
    return rows


def get(r, path):
    for k in path.split("."):
        if not isinstance(r, dict) or k not in r:
            return None
        r = r[k]
    return r


def med(rows, path):
    vals = [v for v in (get(r, path) for r in rows) if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def saturation_rows(rows):
    """The throughput runs of one results file (across two servers or nodes, or on one)."""
    return rows.get("throughput") or rows.get("federation-throughput", [])


def slowest_rate(fraction, out, servers):
    rates = [med(saturation_rows(load(out, s)), "msgs_per_s") for s in servers]
    rates = [r for r in rates if r]
    if not rates:
        return 1000
    return max(1, round(float(fraction) * min(rates)))


def fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) >= 100:
        return f"{v:,.0f}"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if digits else f"{v:.0f}"
    return f"{v:,}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def federation(out):
    """Local vs federated throughput and the backlog drain, from federation.sh's files."""
    local = load(out, "local").get("throughput", [])
    fed = load(out, "federation").get("federation-throughput", [])
    backlog = load(out, "backlog").get("federation-backlog", [])
    errors = [r for f in ("local", "federation", "backlog") for r in load(out, f).get("error", [])]
    machine = {}
    mpath = Path(out) / "machine.txt"
    if mpath.exists():
        for line in mpath.read_text().splitlines():
            k, _, v = line.partition("=")
            machine[k] = v
    lo, fe = med(local, "msgs_per_s"), med(fed, "msgs_per_s")
    pairs = first_of(fed or local, "pairs")
    window = first_of(fed or local, "window")
    count = first_of(backlog, "count")
    n = lambda rows: f"{len(rows)} run{'s' if len(rows) != 1 else ''}"  # noqa: E731
    print(f"| Measurement ({pairs} pairs × {window} in flight; {fmt(count)} queued) | median | runs |")
    print("|---|---|---|")
    print(f"| local throughput, one server: delivered msgs/s | {fmt(lo, 0)} | {n(local)} |")
    print(f"| federated throughput, A → B: delivered msgs/s | {fmt(fe, 0)} | {n(fed)} |")
    small = f"{fe / lo:.4f}× (1/{lo / fe:,.0f})" if fe and lo else "–"
    print(f"| federated ÷ local | {small} | |")
    print(f"| local latency at saturation, p99 (ms) | {fmt(med(local, 'latency_at_saturation.p99_ms'), 2)} | |")
    print(f"| federated latency at saturation, p99 (ms) | {fmt(med(fed, 'latency_at_saturation.p99_ms'), 2)} | |")
    print(f"| server CPU per delivered message, local (µs) | {fmt(med(local, 'server_us_per_msg'), 2)} | |")
    print(f"| server CPU per delivered message, A + B (µs) | {fmt(med(fed, 'server_us_per_msg'), 2)} | |")
    rows = [
        ("backlog: A accepts (queues) them while B is down: msgs/s", "fill.accept_msgs_per_s", 0),
        ("backlog: receiver online at B (s after B's s2s listener is up)", "receiver_online_s", 3),
        ("backlog: first message at the receiver (s)", "first_message_s", 3),
        ("backlog: last message at the receiver = delivery time (s)", "delivery_s", 3),
        ("backlog: first → last message (s)", "first_to_last_s", 3),
        ("backlog: transfer rate first → last (msgs/s)", "transfer_msgs_per_s", 0),
        ("backlog: A's queue empty = drain time (s)", "queue_empty_s", 3),
    ]
    for label, path, digits in rows:
        print(f"| {label} | {fmt(med(backlog, path), digits)} | {n(backlog)} |")
    print()
    print("Checks: throughput undelivered / out of order / error replies; backlog received / "
          "missing / duplicates / in order / failures.")
    print()
    for r in local:
        print(f"- local: {r.get('undelivered_after_drain')} / {r.get('out_of_order')} / {r.get('error_replies')} {r.get('failures') or ''}")
    for r in fed:
        print(f"- federated: {r.get('undelivered_after_drain')} / {r.get('out_of_order')} / {r.get('error_replies')} {r.get('failures') or ''}")
    for r in backlog:
        print(f"- backlog {r.get('recipient')}: {r.get('received')} / {r.get('missing')} / "
              f"{r.get('duplicates')} / {'yes' if r.get('in_order') else 'NO'} / "
              f"{r.get('failures') or 'none'}{' gaps ' + str(r.get('gaps_sample')) if r.get('gaps_sample') else ''}")
    for r in errors:
        print(f"- error: {r.get('error', '')[:200]}")
    print()
    print("CPU in % of one core during the measurement, generator / both servers / everything else: "
          + "; ".join(f"{name} {fmt(med(rows_, path + '.generator_cpu_pct'), 0)} / "
                      f"{fmt(med(rows_, path + '.server_cpu_pct'), 0)} / {fmt(med(rows_, path + '.other_cpu_pct'), 0)}"
                      for name, rows_, path in [("local", local, "usage"), ("federated", fed, "usage"),
                                                ("backlog delivery (A + B; the queue polls count as everything else)", backlog, "usage")]))
    print()
    print("Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if k != "params"))
    if "params" in machine:
        print()
        print(f"Parameters: `{machine['params']}`")


def cluster(out, peers):
    """One node (SQLite, PostgreSQL) against two nodes of a cluster and the peers, from
    cluster.sh's files."""
    names = [
        ("one node, SQLite", "sqlite"),
        ("one node, PostgreSQL", "postgres"),
        ("cluster, both ends on one node", "local"),
        ("cluster, every message crosses nodes", "crossing"),
        ("one node, PostgreSQL, replicating to a hub", "postgres-repl"),
    ] + [(p, p) for p in peers]
    data = {f: load(out, f) for _, f in names}
    runs = [(label, saturation_rows(data[f])) for label, f in names]
    machine = read_machine(out)
    first = next((rows for _, rows in runs if rows), [])
    print(f"| Throughput ({first_of(first, 'pairs')} pairs × {first_of(first, 'window')} in flight) "
          "| delivered msgs/s | p99 latency at saturation (ms) | server CPU per message (µs) | runs |")
    print("|---|---|---|---|---|")
    for label, rows in runs:
        print(f"| {label} | {fmt(med(rows, 'msgs_per_s'), 0)} | "
              f"{fmt(med(rows, 'latency_at_saturation.p99_ms'), 2)} | "
              f"{fmt(med(rows, 'server_us_per_msg'), 2)} | {len(rows)} |")
    local, crossing = runs[2][1], runs[3][1]
    lo, cr = med(local, "server_us_per_msg"), med(crossing, "server_us_per_msg")
    if lo is not None and cr is not None:
        print()
        print(f"Crossing nodes costs {cr - lo:.1f} µs of server CPU per message more than staying on one "
              f"node ({ratio(cr, lo)}), both nodes counted; PostgreSQL and NATS are in "
              "\"everything else\" below.")
    pg, repl = med(runs[1][1], "msgs_per_s"), med(runs[4][1], "msgs_per_s")
    if pg is not None and repl is not None:
        print()
        print(f"Replicating to a hub, a node on PostgreSQL delivers {ratio(repl, pg)} of what it "
              "does without (its write transactions take one lock, so the log follows commit order).")
    lat = [(label, data[f].get("latency", [])) for label, f in names]
    if any(rows for _, rows in lat):
        print()
        cluster_latency(lat)
    muc = [(label, data[f].get("muc", [])) for label, f in [
        ("one node, PostgreSQL", "postgres"),
        ("cluster, every occupant on the room's node", "local"),
        ("cluster, every other occupant on the other node", "crossing"),
    ]]
    if any(rows for _, rows in muc):
        print()
        cluster_muc(muc)
    directory = load(out, "directory").get("idle", [])
    if directory:
        print()
        per = med(directory, "server_bytes_per_conn")
        print(f"A node's directory: {fmt(per, 0)} bytes of node b's memory per session held on "
              f"node a ({first_of(directory, 'connected')} sessions connected, "
              f"{first_of(directory, 'alive_at_end')} alive at the end).")
    print()
    print("Checks (undelivered / out of order / error replies):")
    for label, rows in runs + [(f"{label}, latency", rows) for label, rows in lat]:
        for r in rows:
            print(f"- {label}: {r.get('undelivered_after_drain')} / {r.get('out_of_order')} / "
                  f"{r.get('error_replies')} {r.get('failures') or ''}")
    for f in data.values():
        for r in f.get("error", []):
            print(f"- error: {r.get('error', '')[:200]}")
    print()
    print("CPU in % of one core during the measurement, generator / server(s) / everything else: "
          + "; ".join(f"{label} {fmt(med(rows, 'usage.generator_cpu_pct'), 0)} / "
                      f"{fmt(med(rows, 'usage.server_cpu_pct'), 0)} / {fmt(med(rows, 'usage.other_cpu_pct'), 0)}"
                      for label, rows in runs))
    print()
    print("Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if k != "params"))
    if "params" in machine:
        print()
        print(f"Parameters: `{machine['params']}`")


def cluster_muc(muc):
    """The MUC scenario's table: one room, its occupants on one node or on both."""
    first = next(rows for _, rows in muc if rows)
    print(f"| MUC, 1 room × {first_of(first, 'joined')} occupants | messages/s to every occupant | "
          "deliveries/s | to the last occupant, p99 (ms) | server CPU per delivery (µs) | runs |")
    print("|---|---|---|---|---|---|")
    for label, rows in muc:
        print(f"| {label} | {fmt(med(rows, 'msgs_per_s'), 0)} | {fmt(med(rows, 'deliveries_per_s'), 0)} | "
              f"{fmt(med(rows, 'full_delivery_latency.p99_ms'), 1)} | "
              f"{fmt(med(rows, 'server_us_per_delivery'), 2)} | {len(rows)} |")
    for label, rows in muc:
        for r in rows:
            print(f"- {label}: {r.get('undelivered_after_drain')} undelivered, {r.get('out_of_order')} out of "
                  f"order, {r.get('error_replies')} errors, {r.get('joined')}/{r.get('occupants')} joined "
                  f"{r.get('failures') or ''}")


def cluster_latency(lat):
    """The latency scenario's table: every configuration at the same rate."""
    first = next(rows for _, rows in lat if rows)
    print(f"| Latency ({first_of(first, 'pairs')} pairs, {fmt(first_of(first, 'rate'), 0)} msgs/s) "
          "| p50 (ms) | p99 (ms) | p99.9 (ms) | server CPU (% of a core) | runs |")
    print("|---|---|---|---|---|---|")
    for label, rows in lat:
        print(f"| {label} | {fmt(med(rows, 'latency.p50_ms'), 2)} | {fmt(med(rows, 'latency.p99_ms'), 2)} | "
              f"{fmt(med(rows, 'latency.p999_ms'), 2)} | {fmt(med(rows, 'usage.server_cpu_pct'), 0)} | "
              f"{len(rows)} |")


def first_of(rows, path):
    return next((get(r, path) for r in rows if get(r, path) is not None), None)


def read_machine(out):
    machine = {}
    mpath = Path(out) / "machine.txt"
    if mpath.exists():
        for line in mpath.read_text().splitlines():
            k, _, v = line.partition("=")
            machine[k] = v
    return machine


def features(machine, data, servers):
    """What was on, from machine.txt and the results themselves."""
    tls = machine.get("tls", "?") == "1"
    sm = any(r.get("sm") for s in servers for r in data[s].get("idle", []))
    sm_text = "on every idle connection (a.)" if sm else "off on the idle connections"
    backends = machine.get("archive", "").partition(" ")[2].strip("()")
    backends = f"; {backends}" if backends else ""
    return (f"Features on every server: message archive (XEP-0313, every one-to-one message and every "
            f"room{backends}), stream management (XEP-0198; enabled by the client {sm_text}), multi-user chat "
            f"(XEP-0045), offline storage. Transport: "
            f"{'STARTTLS on every connection' if tls else 'plaintext (TLS=0)'}.")


# (label, scenario, json path, unit scale, digits, "lower"/"higher" is better)
ROWS = [
    ("a. idle: server memory per connection (KiB)", "idle", "server_bytes_per_conn", 1 / 1024, 1, "lower"),
    ("b. throughput: delivered msgs/s", "throughput", "msgs_per_s", 1, 0, "higher"),
    ("b. latency at saturation, p99 (ms)", "throughput", "latency_at_saturation.p99_ms", 1, 2, "lower"),
    ("c. latency p50 (ms)", "latency", "latency.p50_ms", 1, 3, "lower"),
    ("c. latency p99 (ms)", "latency", "latency.p99_ms", 1, 3, "lower"),
    ("c. latency p99.9 (ms)", "latency", "latency.p999_ms", 1, 3, "lower"),
    ("d. login storm, SCRAM-SHA-1: logins/s", "login", "logins_per_s", 1, 0, "higher"),
    ("e. offline flush of {count} messages (s)", "offline", "flush_from_connect_s", 1, 3, "lower"),
    ("e. storing them while offline: msgs/s", "offline", "store_msgs_per_s", 1, 0, "higher"),
    ("f. roster login: all {online} presences (s)", "roster", "median_all_presences_s", 1, 3, "lower"),
    ("g. MUC, 1 room × {occupants} occupants: msgs/s delivered to all", "muc", "msgs_per_s", 1, 0, "higher"),
    ("g. MUC: deliveries/s (one per occupant per message)", "muc", "deliveries_per_s", 1, 0, "higher"),
    ("g. MUC: to the last occupant, p99 (ms)", "muc", "full_delivery_latency.p99_ms", 1, 2, "lower"),
    ("h. WebSocket idle: server memory per connection (KiB)", "ws-idle", "server_bytes_per_conn", 1 / 1024, 1, "lower"),
    ("h. WebSocket throughput: delivered msgs/s", "ws-throughput", "msgs_per_s", 1, 0, "higher"),
    ("h. WebSocket latency at saturation, p99 (ms)", "ws-throughput", "latency_at_saturation.p99_ms", 1, 2, "lower"),
    ("i. REST SendMessage ({senders} users): requests/s", "rest-send", "requests_per_s", 1, 0, "higher"),
    ("i. REST SendMessage: request p99 (ms)", "rest-send", "latency.p99_ms", 1, 2, "lower"),
    ("j. events fan-out to {subscribers} streams: to the last, p99 (ms)", "sse-fanout", "to_last_stream.p99_ms", 1, 2, "lower"),
    ("j. events fan-out: events/s delivered", "sse-fanout", "deliveries_per_s", 1, 0, "higher"),
    ("j. events fan-out: server memory per stream (KiB)", "sse-fanout", "server_bytes_per_stream", 1 / 1024, 1, "lower"),
]

# The rows the relay (the ceiling) has a figure for.
CEILING_ROWS = {("throughput", "msgs_per_s"), ("throughput", "latency_at_saturation.p99_ms")}


def main_table(data, servers, relay, tls):
    first = lambda sc, path: next((get(r, path) for s in servers for r in data[s].get(sc, []) if get(r, path) is not None), None)  # noqa: E731
    count = first("offline", "count")
    online = first("roster", "online")
    occupants = first("muc", "joined")
    senders = first("rest-send", "senders")
    subscribers = first("sse-fanout", "subscribers")
    peers = [s for s in servers if s != "outpost"]
    ceiling = []
    if relay:
        ceiling = ["ceiling (TLS relay)" if tls else "ceiling (relay)"]
    head = ["Scenario"] + servers + ceiling + ["outpost ÷ " + p for p in peers]
    print(f"| {' | '.join(head)} |")
    print("|---" * len(head) + "|")
    for label, sc, path, scale, digits, better in ROWS:
        label = label.format(count=f"{count:,}" if count else "N", online=online or "N",
                             occupants=occupants or "N", senders=senders or "N",
                             subscribers=subscribers or "N")
        vals = {}
        for s in servers:
            v = med(data[s].get(sc, []), path)
            vals[s] = v * scale if v is not None else None
        cells = [fmt(vals[s], digits) for s in servers]
        if ceiling:
            v = med(relay.get(sc, []), path) if (sc, path) in CEILING_ROWS else None
            cells.append(fmt(v, digits))
        ratios = [ratio(vals.get("outpost"), vals[p]) for p in peers]
        print(f"| {' | '.join([f'{label} ({better} is better)'] + cells + ratios)} |")
    if relay and "outpost" in servers:
        o = med(data["outpost"].get("throughput", []), "msgs_per_s")
        c = med(relay.get("throughput", []), "msgs_per_s")
        if o and c:
            print()
            print(f"Outpost delivers {100 * o / c:.0f} % of the ceiling's msgs/s: the relay forwards the "
                  "same stanza bytes between the same pairs, with the same windows, over the same "
                  f"{'TLS' if tls else 'TCP'} connections, with no XMPP at all.")


def archive_check(r):
    m = r.get("mam_check") or r.get("room_archive")
    if not m:
        return "not checked"
    last = (m.get("last") or {}).get("seq")
    want = (m.get("expected_last") or {}).get("seq")
    count = m.get("count")
    return (f"{'ok' if m.get('ok') else 'NO'} (last {last}, sent {want}"
            f"{', ' + format(count, ',') + ' in archive' if count is not None else ''})")


CHECKS = [
    ("idle: connected / alive at end / N (stream management)", lambda d: "; ".join(
        f"{r.get('connected')}/{r.get('alive_at_end')}/{r.get('n')}{' (SM)' if r.get('sm') else ''}"
        for r in d.get("idle", []))),
    ("offline: missing, duplicates, in order", lambda d: "; ".join(
        f"{r.get('missing')}, {r.get('duplicates')}, {'yes' if r.get('in_order') else 'NO'}"
        for r in d.get("offline", []))),
    ("throughput: undelivered, out of order", lambda d: "; ".join(
        f"{r.get('undelivered_after_drain')}, {r.get('out_of_order')}" for r in d.get("throughput", []))),
    ("archive: first receiver's last archived message = last sent", lambda d: "; ".join(
        archive_check(r) for r in d.get("throughput", []) if not r.get("raw"))),
    ("latency: undelivered, out of order, rate", lambda d: "; ".join(
        f"{r.get('undelivered_after_drain')}, {r.get('out_of_order')}, {r.get('achieved_rate')}/s"
        for r in d.get("latency", []))),
    ("login: errors (pass 2), SCRAM iterations", lambda d: "; ".join(
        f"{get(r, 'pass2.errors')}, {r.get('scram_iterations_seen')}" for r in d.get("login", []))),
    ("roster: items, presences", lambda d: "; ".join(
        f"{x.get('roster_items')}, {x.get('presences')}" for r in d.get("roster", []) for x in r.get("runs", []))),
    ("MUC: joined, undelivered, out of order, errors", lambda d: "; ".join(
        f"{r.get('joined')}/{r.get('occupants')}, {r.get('undelivered_after_drain')}, "
        f"{r.get('out_of_order')}, {r.get('error_replies')}" for r in d.get("muc", []))),
    ("MUC: room archive's last message = last sent", lambda d: "; ".join(
        archive_check(r) for r in d.get("muc", []))),
    ("WebSocket idle: connected / alive at end / N", lambda d: "; ".join(
        f"{r.get('connected')}/{r.get('alive_at_end')}/{r.get('n')}" for r in d.get("ws-idle", []))),
    ("WebSocket throughput: undelivered, out of order, archive", lambda d: "; ".join(
        f"{r.get('undelivered_after_drain')}, {r.get('out_of_order')}, {archive_check(r)}"
        for r in d.get("ws-throughput", []))),
    ("REST sends: undelivered, error answers", lambda d: "; ".join(
        f"{r.get('undelivered_after_drain')}, {r.get('error_answers')}" for r in d.get("rest-send", []))),
    ("fan-out: streams open / N, events missing", lambda d: "; ".join(
        f"{r.get('streams_open')}/{r.get('subscribers')}, {r.get('events_missing')}"
        for r in d.get("sse-fanout", []))),
    ("errors reported", lambda d: "; ".join(
        (r.get("error", "")[:80] for r in d.get("error", []))) or "none"),
]


def checks_table(data, servers, relay):
    print("Checks (every run): offline messages missing / duplicated / out of order, "
          "throughput, latency and MUC messages undelivered or out of order, the archives' last "
          "messages, login and idle errors.")
    print()
    names = servers + (["ceiling"] if relay else [])
    cols = {**data, "ceiling": relay}
    print(f"| Check | {' | '.join(names)} |")
    print("|---" * (1 + len(names)) + "|")
    for label, f in CHECKS:
        print(f"| {label} | {' | '.join(f(cols[s]) or '–' for s in names)} |")


PHASES = [
    ("a. idle logins", "idle", "login_phase"),
    ("b. throughput", "throughput", "usage"),
    ("c. latency", "latency", "usage"),
    ("d. login storm (pass 2)", "login", "pass2.usage"),
    ("e. offline flush", "offline", "flush_phase"),
    ("f. roster login", "roster", "usage"),
    ("g. MUC", "muc", "usage"),
    ("h. WebSocket throughput", "ws-throughput", "usage"),
    ("i. REST sends", "rest-send", "usage"),
    ("j. events fan-out", "sse-fanout", "usage"),
]


def cpu_table(data, servers, relay, machine):
    print("CPU during each measurement, in % of one core (the machine has "
          f"{machine.get('cores', '?')}): generator / server / everything else. "
          "Generator µs of CPU per delivered message (MUC: per delivery) in brackets. The "
          "ceiling's \"server\" is the relay.")
    print()
    names = servers + (["ceiling"] if relay else [])
    cols = {**data, "ceiling": relay}
    print(f"| Phase | {' | '.join(names)} |")
    print("|---" * (1 + len(names)) + "|")
    for label, sc, path in PHASES:
        cells = []
        for s in names:
            rows_ = cols[s].get(sc, [])
            g = med(rows_, path + ".generator_cpu_pct")
            sv = med(rows_, path + ".server_cpu_pct")
            o = med(rows_, path + ".other_cpu_pct")
            cell = f"{fmt(g, 0)} / {fmt(sv, 0)} / {fmt(o, 0)}" if rows_ else "–"
            per = {"throughput": "generator_us_per_msg", "muc": "generator_us_per_delivery"}.get(sc)
            if per and rows_:
                cell += f" [{fmt(med(rows_, per), 2)} µs]"
            cells.append(cell)
        print(f"| {label} | {' | '.join(cells)} |")


def main(argv):
    if argv and argv[0] == "--federation":
        federation(argv[1])
        return
    if argv and argv[0] == "--cluster":
        cluster(argv[1], argv[2:])
        return
    if argv and argv[0] == "--slowest-rate":
        print(slowest_rate(argv[1], argv[2], argv[3:]))
        return
    out, servers = argv[0], argv[1:]
    data = {s: load(out, s) for s in servers}
    relay = load(out, "relay")
    machine = read_machine(out)
    print(features(machine, data, servers))
    print()
    main_table(data, servers, relay, machine.get("tls") == "1")
    print()
    checks_table(data, servers, relay)
    print()
    cpu_table(data, servers, relay, machine)
    print()
    runs = {s: {sc: len(v) for sc, v in data[s].items()} for s in servers}
    if relay:
        runs["ceiling"] = {sc: len(v) for sc, v in relay.items()}
    print("Runs per scenario: " + "; ".join(
        f"{s}: " + ", ".join(f"{sc} {n}" for sc, n in sorted(r.items())) for s, r in runs.items()))
    print()
    print("Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if k != "params"))
    if "params" in machine:
        print()
        print(f"Parameters: `{machine['params']}`")


if __name__ == "__main__":
    main(sys.argv[1:])
