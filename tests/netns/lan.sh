#!/usr/bin/env bash
# A LAN with no DNS for the chat domain: a site server (lan.test, in one namespace) and two
# users of Outpost's own client on another host of the same segment (a second namespace,
# linked by a veth pair). The server announces itself over multicast DNS; the clients are
# given no server and a DNS server that does not answer, find the server on the LAN, log
# on and chat. Nothing leaves the two namespaces.
#
# Needs root and iproute2. Env: OUTPOST_BIN (default $CARGO_TARGET_DIR/debug/outpost),
# LAN_KEEP=1 keeps the work directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${OUTPOST_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}/debug/outpost}"
KEEP="${LAN_KEEP:-0}"
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^OUTPOST_' || true)

say() { printf '[lan %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || { say "needs root (network namespaces)"; exit 2; }
command -v ip >/dev/null || { say "needs iproute2 (ip)"; exit 2; }
[[ -x "$BIN" ]] || { say "no outpost binary at $BIN (set OUTPOST_BIN)"; exit 2; }

SERVER_NS="op-lan-s-$$"
CLIENT_NS="op-lan-c-$$"
SERVER_IP=10.205.0.1
PIDS=()
WORK="$(mktemp -d /tmp/op-lan.XXXXXX)"

# shellcheck source=tests/netns/lib.sh
source "$here/lib.sh"

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ $rc -ne 0 ]]; then
        for f in "$WORK"/*.log "$WORK"/*.events; do
            [[ -f $f ]] && { say "---- last lines of $f ----"; tail -n 20 "$f"; }
        done
    fi
    stop_namespaces "${PIDS[@]}" -- "$SERVER_NS" "$CLIENT_NS"
    if [[ $KEEP == 1 ]]; then say "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    [[ $rc -eq 0 ]] && say "PASS" || say "FAILED (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "building namespaces $SERVER_NS and $CLIENT_NS, one segment"
for ns in "$SERVER_NS" "$CLIENT_NS"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
ip link add eth0 netns "$SERVER_NS" type veth peer name eth0 netns "$CLIENT_NS"
ip -n "$SERVER_NS" addr add "$SERVER_IP/24" dev eth0
ip -n "$CLIENT_NS" addr add 10.205.0.2/24 dev eth0
for ns in "$SERVER_NS" "$CLIENT_NS"; do
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add 224.0.0.0/4 dev eth0
done

cat >"$WORK/outpost.toml" <<EOF
domains = ["lan.test"]
data_dir = "$WORK/data"

[listen]
c2s = ["$SERVER_IP:5222"]
c2s_tls = []
proxy65 = []
https = []
http = []
mdns = true

[log]
level = "info"
EOF
for user in alice bob; do
    printf '%s-password\n' "$user" | "$BIN" user add "$user@lan.test" --password-stdin \
        --config "$WORK/outpost.toml" >/dev/null
done
ip netns exec "$SERVER_NS" "$BIN" serve --config "$WORK/outpost.toml" \
    >"$WORK/outpost.stdout" 2>"$WORK/outpost.log" &
PIDS+=($!)
listening() { grep -q '^listening c2s' "$WORK/outpost.stdout"; }
wait_until 20 "the server listening" listening
announced() { grep -q 'announced on the LAN' "$WORK/outpost.log"; }
wait_until 10 "the server's announcement" announced
say "lan.test's server is up at $SERVER_IP and announced itself"

declare -A FD=()
start_chat() { # start_chat NAME: no --server; a DNS server that does not answer
    local name=$1 fd
    mkfifo "$WORK/$name.in"
    ip netns exec "$CLIENT_NS" "$BIN" chat --headless --jid "$name@lan.test" \
        --dns 127.0.0.1:9 --state-dir "$WORK/$name-state" \
        <"$WORK/$name.in" >"$WORK/$name.events" 2>"$WORK/$name.log" &
    PIDS+=($!)
    exec {fd}>"$WORK/$name.in"
    FD[$name]=$fd
    printf '%s-password\n' "$name" >&"$fd"
}
has_event() { grep -qF -- "$2" "$WORK/$1.events"; }
start_chat alice
start_chat bob
for name in alice bob; do
    wait_until 30 "$name to find the server on the LAN" \
        has_event "$name" "\"event\":\"connected\",\"server\":\"$SERVER_IP:5222\""
done
say "alice and bob found $SERVER_IP:5222 by multicast DNS and logged on"

printf '%s\n' '{"cmd":"send","to":"bob@lan.test","body":"found you on the LAN","id":"l1"}' >&"${FD[alice]}"
wait_until 20 "bob to get alice's message" \
    has_event bob '"from":"alice@lan.test","body":"found you on the LAN"'
wait_until 20 "alice's message to be delivered" has_event alice '"id":"l1","state":"delivered"'
for name in alice bob; do printf '%s\n' '{"cmd":"quit"}' >&"${FD[$name]}"; done
say "RESULT: with no server given and no DNS, two clients found their site server by multicast DNS and chatted"
