#!/usr/bin/env bash
# HTTPS-only test: a client on a guest LAN behind a firewall that passes nothing but HTTPS
# (TCP to port 443) chats with a user on the server's side, once through the HTTP API (REST
# and Server-Sent Events) and once with XMPP over WebSocket (RFC 7395), both on port 443.
#
#   op-hs-srv-PID (corp.test)         op-hs-fw-PID (firewall)          op-hs-lan-PID (guest LAN)
#   eth0 10.204.1.2/24 ============ s1 10.204.1.1 | s2 10.204.2.1 ============ eth0 10.204.2.2/24
#   outpost serve: c2s 5222,          forwards only TCP to 10.204.1.2:443    alice: Python http.client
#   c2s_tls 5223, https 443;          (and its answers); drops the rest      (REST), xmpp.js (wss)
#   bob (xmpp_client.py, TCP 5222)
#
# The firewall is policy routing on the router (`ip rule`): forwarded packets from the guest
# LAN are looked up in the main table only when they are TCP to port 443 of the server, and
# blackholed otherwise; packets towards the LAN pass only from TCP port 443. Dropped packets
# vanish without an ICMP error, as at a firewall with a drop policy.
#
# Checks, each printed as a PASS or FAIL line:
#   1. the firewall is real: from the guest LAN, TCP to the server's 5222 and 5223 gets no
#      answer while 443 connects; from the server's side all three connect.
#   2. REST: alice logs in (POST /api/v1/login), opens GET /api/v1/events, sends bob a
#      message (POST /api/v1/messages, state `delivered`); bob, over XMPP on TCP 5222, gets
#      it and answers; alice gets the answer as an `event: message` from bob@corp.test.
#   3. WebSocket: xmpp.js (tests/interop/js/ws_chat.mjs) logs in as alice over
#      wss://corp.test:443/xmpp-websocket from the guest LAN, sends bob a message and gets
#      his answer.
# alice trusts exactly the server's self-signed certificate (<data_dir>/tls/cert.pem), and
# finds corp.test through the guest LAN's /etc/hosts (/etc/netns/<ns>/hosts).
#
# The namespaces, their veth pairs, /etc/netns entries and every process in them are
# created by this script and removed on any exit. No address is connected to the root
# namespace. No message body, password or token is printed.
#
# Needs root, iproute2, python3 (standard library only) and Node with xmpp.js: nodejs and
# npm are apt-installed when missing, and tests/interop/js's packages `npm ci`-installed
# (as tests/interop/run.sh does) when @xmpp/client is not there.
# Env: OUTPOST_BIN        the outpost binary (default $CARGO_TARGET_DIR/debug/outpost)
#      HTTPS_ONLY_KEEP=1  keep the work directory (config, logs) after the run
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${OUTPOST_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}/debug/outpost}"
KEEP="${HTTPS_ONLY_KEEP:-0}"
# Outpost reads OUTPOST_* variables as configuration: start it with none of them.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^OUTPOST_' || true)

say() { printf '[https-only %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { say "FAIL: $*"; exit 1; }
pass() { say "PASS: $*"; }

[[ $(id -u) -eq 0 ]] || { say "needs root (network namespaces)"; exit 2; }
command -v ip >/dev/null || { say "needs iproute2 (ip)"; exit 2; }
[[ -x "$BIN" ]] || { say "no outpost binary at $BIN (set OUTPOST_BIN)"; exit 2; }
PY="$(python3 -c 'import sys; print(sys.executable)')"
JS="$(cd "$here/../interop/js" && pwd)"

SRV="op-hs-srv-$$"
FW="op-hs-fw-$$"
LAN="op-hs-lan-$$"
NAMESPACES=("$SRV" "$FW" "$LAN")
SERVER_IP=10.204.1.2
DOMAIN=corp.test
PASSWORD="https-only-$$-$RANDOM" # never printed
PIDS=()
WORK="$(mktemp -d /tmp/op-https-only.XXXXXX)"
T0=$(date +%s.%N)

# shellcheck source=tests/netns/lib.sh
source "$here/lib.sh"

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ $rc -ne 0 ]]; then
        # Logs only: the server does not log bodies or tokens at this level; clients' stderr
        # carries errors, not bodies.
        for f in "$WORK/outpost.log" "$WORK/bob.err" "$WORK/ws.err"; do
            [[ -s $f ]] && { say "---- last lines of $f ----"; tail -n 40 "$f"; }
        done
    fi
    # Only what this script started: its own background processes and whatever runs in the
    # namespaces it created.
    stop_namespaces "${PIDS[@]}" -- "${NAMESPACES[@]}"
    if [[ $KEEP == 1 ]]; then say "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    [[ $rc -eq 0 ]] && say "PASS" || say "FAILED (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- xmpp.js
# Before the namespaces: installing needs the real network.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    say "installing nodejs and npm"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null; }
fi
if [[ ! -f $JS/node_modules/@xmpp/client/package.json ]]; then
    say "installing xmpp.js (npm ci in tests/interop/js)"
    (cd "$JS" && npm ci --silent --no-audit --no-fund)
fi

# ---------------------------------------------------------------- topology
say "building namespaces $SRV (server), $FW (firewall), $LAN (guest LAN)"
build_topology "$SRV" "$FW" "$LAN" 10.204 # s1: server side, s2: guest LAN side
# The guest LAN finds corp.test through its /etc/hosts (ip netns exec mounts this one).
mkdir -p "/etc/netns/$LAN"
printf '127.0.0.1 localhost\n%s %s\n' "$SERVER_IP" "$DOMAIN" >"/etc/netns/$LAN/hosts"

say "firewall on $FW: only TCP to $SERVER_IP:443 (and its answers) is forwarded"
ip -n "$FW" rule add priority 100 iif s2 to "$SERVER_IP" ipproto tcp dport 443 lookup main
ip -n "$FW" rule add priority 101 iif s2 blackhole
ip -n "$FW" rule add priority 102 iif s1 from "$SERVER_IP" to 10.204.2.0/24 ipproto tcp sport 443 lookup main
ip -n "$FW" rule add priority 103 iif s1 to 10.204.2.0/24 blackhole

# ---------------------------------------------------------------- server
cat >"$WORK/outpost.toml" <<EOF
domains = ["$DOMAIN"]
data_dir = "$WORK/data"

[listen]
c2s = ["$SERVER_IP:5222"]
c2s_tls = ["$SERVER_IP:5223"]
https = ["$SERVER_IP:443"]
http = []
s2s = []
s2s_tls = []
s2s_websocket = []
component = []
proxy65 = []

[registration]
enabled = false

[auth]
# bob, on the server's side, logs in without STARTTLS (xmpp_client.py is plaintext).
allow_plaintext_without_tls = true

[log]
level = "info"
EOF
"$BIN" config check --config "$WORK/outpost.toml" >/dev/null
for user in alice bob; do
    printf '%s\n' "$PASSWORD" | "$BIN" user add --config "$WORK/outpost.toml" --password-stdin \
        "$user@$DOMAIN" >/dev/null 2>&1 || die "cannot add $user@$DOMAIN"
done
ip netns exec "$SRV" "$BIN" serve --config "$WORK/outpost.toml" \
    >"$WORK/stdout" 2>"$WORK/outpost.log" </dev/null &
SERVER=$!
PIDS+=($SERVER)
listening() {
    kill -0 "$SERVER" 2>/dev/null || die "outpost serve exited"
    grep -q "^listening https " "$WORK/stdout" && grep -q "^listening c2s-starttls " "$WORK/stdout" &&
        grep -q "^listening c2s-tls " "$WORK/stdout"
}
wait_until 60 "$DOMAIN to listen" listening
CERT="$WORK/data/tls/cert.pem"
[[ -s $CERT ]] || die "no self-signed certificate at $CERT"
say "$DOMAIN is up: c2s $SERVER_IP:5222, c2s_tls :5223, https :443"

# ---------------------------------------------------------------- 1. the firewall
say "1. the firewall passes only HTTPS"
ip netns exec "$SRV" "$PY" "$here/https_client.py" probe "$SERVER_IP" 5222:open 5223:open 443:open \
    --label "server side" --timeout 5 || die "the server's listeners are not all reachable on its side"
ip netns exec "$LAN" "$PY" "$here/https_client.py" probe "$SERVER_IP" 5222:closed 5223:closed 443:open \
    --label "guest LAN" --timeout 2 || die "the firewall does not pass exactly HTTPS"
pass "from the guest LAN only port 443 of the server answers"

# ---------------------------------------------------------------- bob
# bob, on the server's side over XMPP on TCP 5222, answers "ping X" from alice with "pong X"
# and logs each ping he got (bodies stay in the work directory).
ip netns exec "$SRV" "$PY" "$here/xmpp_client.py" recv --host "$SERVER_IP" --domain "$DOMAIN" \
    --user bob --password "$PASSWORD" --resource tcp --priority 10 --peer "alice@$DOMAIN" \
    --prefix msg --log-pings --ready "$WORK/bob.ready" --log "$WORK/bob.log" \
    >"$WORK/bob.out" 2>"$WORK/bob.err" &
BOB=$!
PIDS+=($BOB)
bob_ready() { kill -0 "$BOB" 2>/dev/null || die "bob's session ended"; [[ -s $WORK/bob.ready ]]; }
wait_until 20 "bob's session" bob_ready
bob_got() { grep -qx "[0-9.]* ping $1" "$WORK/bob.log" 2>/dev/null; }

# ---------------------------------------------------------------- 2. REST
say "2. REST: alice in the guest LAN, HTTP API over https://$DOMAIN:443"
NONCE_REST="rest-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
ip netns exec "$LAN" env HTTPS_ONLY_PASSWORD="$PASSWORD" "$PY" "$here/https_client.py" rest \
    --host "$DOMAIN" --port 443 --cafile "$CERT" --jid "alice@$DOMAIN" --peer "bob@$DOMAIN" \
    --nonce "$NONCE_REST" --timeout 15 || die "the REST path"
bob_got "$NONCE_REST" || die "bob (XMPP over TCP) did not log alice's REST message"
pass "alice (REST + Server-Sent Events through the firewall) and bob (XMPP over TCP) chatted both ways"

# ---------------------------------------------------------------- 3. WebSocket
say "3. WebSocket: alice in the guest LAN, xmpp.js over wss://$DOMAIN:443/xmpp-websocket"
NONCE_WS="ws-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
# ws_chat.mjs gives up by itself after 30 s; `timeout` bounds node's start-up too. Node trusts
# exactly the server's certificate (NODE_EXTRA_CA_CERTS).
ws_rc=0
ip netns exec "$LAN" env NODE_EXTRA_CA_CERTS="$CERT" timeout 40 \
    node --experimental-websocket "$JS/ws_chat.mjs" "wss://$DOMAIN:443/xmpp-websocket" "$DOMAIN" \
    alice "$PASSWORD" "bob@$DOMAIN" "ping $NONCE_WS" >"$WORK/ws.out" 2>"$WORK/ws.err" || ws_rc=$?
# The events, checked without printing bodies.
"$PY" - "$WORK/ws.out" "alice@$DOMAIN/" "bob@$DOMAIN/" "pong $NONCE_WS" <<'EOF' || die "the WebSocket path (xmpp.js exit $ws_rc)"
import json, sys
path, me, peer, answer = sys.argv[1:]
events = []
for line in open(path):
    if line.startswith("{"):
        events.append(json.loads(line))
online = [e for e in events if e.get("event") == "online"]
errors = [e.get("text", "") for e in events if e.get("event") == "error"]
got = [e for e in events if e.get("event") == "message" and str(e.get("from", "")).startswith(peer)
       and e.get("body") == answer]
ok = True
if online and online[0].get("jid", "").startswith(me):
    print(f"  PASS  xmpp.js online over WebSocket as {online[0]['jid']}")
else:
    print(f"  FAIL  xmpp.js never online as {me}…; errors: {errors}")
    ok = False
if got:
    print(f"  PASS  xmpp.js got bob's answer from {got[0]['from']}")
else:
    print(f"  FAIL  xmpp.js got no answer from {peer}…; {len(events)} event(s), errors: {errors}")
    ok = False
sys.exit(0 if ok else 1)
EOF
[[ $ws_rc -eq 0 ]] || die "xmpp.js exited $ws_rc"
bob_got "$NONCE_WS" || die "bob (XMPP over TCP) did not log alice's WebSocket message"
pass "alice (XMPP over WebSocket through the firewall) and bob (XMPP over TCP) chatted both ways"

kill -0 "$BOB" 2>/dev/null || die "bob's session ended"
kill -0 "$SERVER" 2>/dev/null || die "the server exited"
say "RESULT: behind a firewall passing only TCP to port 443, alice chatted with bob over the" \
    "HTTP API (REST + Server-Sent Events) and over XMPP-over-WebSocket;" \
    "run time $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
