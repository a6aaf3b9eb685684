#!/usr/bin/env bash
# A LAN with no DNS for the chat domain: a site server (lan.test, in one namespace) and two
# users of Outpost's own client on another host of the same segment (a second namespace,
# linked by a veth pair). The server announces itself over multicast DNS; the clients are
# given no server and a DNS server that does not answer, find the server on the LAN, log
# on and chat; as friends, their clients open a direct link and pin each other's device
# keys. Then serverless mode: the server is stopped and the clients start again with no
# server at all; they find each other by multicast DNS (XEP-0174, `_presence._tcp`), link
# with the keys they pinned, and chat. When the server is back, what they said is in its
# archive, and nothing was shown twice. Then a 100 MB file goes directly, through the
# site's SOCKS5 proxy and by HTTP upload, byte-identical. Nothing leaves the two namespaces.
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
proxy65 = ["$SERVER_IP:7777"]
https = ["$SERVER_IP:5281"]
http = []
mdns = true

[log]
level = "info"
EOF
for user in alice bob; do
    printf '%s-password\n' "$user" | "$BIN" user add "$user@lan.test" --password-stdin \
        --config "$WORK/outpost.toml" >/dev/null
done
start_server() { # start_server RUN: logs under that run's name
    ip netns exec "$SERVER_NS" "$BIN" serve --config "$WORK/outpost.toml" \
        >"$WORK/outpost-$1.stdout" 2>"$WORK/outpost-$1.log" &
    SERVER_PID=$!
    PIDS+=($SERVER_PID)
    SERVER_RUN=$1
    listening() { grep -q '^listening c2s' "$WORK/outpost-$SERVER_RUN.stdout"; }
    wait_until 20 "the server listening" listening
    announced() { grep -q 'announced on the LAN' "$WORK/outpost-$SERVER_RUN.log"; }
    wait_until 10 "the server's announcement" announced
}
start_server 1
say "lan.test's server is up at $SERVER_IP and announced itself"

declare -A FD=()
start_chat() { # start_chat NAME RUN [FLAG]...: no --server; a DNS server that does not answer
    local name=$1 run=$2 fd
    shift 2
    mkfifo "$WORK/$name-$run.in"
    ip netns exec "$CLIENT_NS" "$BIN" chat --headless --jid "$name@lan.test" "$@" \
        --dns 127.0.0.1:9 --state-dir "$WORK/$name-state" --downloads "$WORK/$name-files" \
        <"$WORK/$name-$run.in" >"$WORK/$name-$run.events" 2>"$WORK/$name-$run.log" &
    PIDS+=($!)
    CHAT_PID[$name]=$!
    exec {fd}>"$WORK/$name-$run.in"
    FD[$name]=$fd
    printf '%s-password\n' "$name" >&"$fd"
}
declare -A CHAT_PID=()
has_event() { grep -qF -- "$2" "$WORK/$1.events"; }
count_events() { grep -F -- "$2" "$WORK/$1.events" | grep -cF -- "$3" || true; }
chat() { printf '%s\n' "$2" >&"${FD[$1]}"; }
start_chat alice 1
start_chat bob 1
for name in alice bob; do
    wait_until 30 "$name to find the server on the LAN" \
        has_event "$name-1" "\"event\":\"connected\",\"server\":\"$SERVER_IP:5222\""
done
say "alice and bob found $SERVER_IP:5222 by multicast DNS and logged on"

chat alice '{"cmd":"send","to":"bob@lan.test","body":"found you on the LAN","id":"l1"}'
wait_until 20 "bob to get alice's message" \
    has_event bob-1 '"from":"alice@lan.test","body":"found you on the LAN"'
wait_until 20 "alice's message to be delivered" has_event alice-1 '"id":"l1","state":"delivered"'
say "RESULT: with no server given and no DNS, two clients found their site server by multicast DNS and chatted"

# Friends: their clients link directly and pin each other's device key.
chat alice '{"cmd":"add","jid":"bob@lan.test"}'
wait_until 20 "bob to hear alice's request" has_event bob-1 '"event":"subscription","from":"alice@lan.test"'
chat bob '{"cmd":"add","jid":"alice@lan.test"}'
wait_until 20 "alice to hear bob's request" has_event alice-1 '"event":"subscription","from":"bob@lan.test"'
chat alice '{"cmd":"add","jid":"bob@lan.test"}'
wait_until 20 "alice's link to bob" has_event alice-1 '"with":"bob@lan.test","path":"direct"'
wait_until 20 "bob's link to alice" has_event bob-1 '"with":"alice@lan.test","path":"direct"'
for name in alice bob; do
    chat "$name" '{"cmd":"quit"}'
    wait "${CHAT_PID[$name]}" || die "$name's client did not quit cleanly"
done
say "alice and bob linked directly and pinned each other's device keys"

# ---------------------------------------------------------------- serverless
kill "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
say "the server is stopped; alice and bob start again with no server at all"
start_chat alice 2
start_chat bob 2
wait_until 40 "alice's serverless link to bob" has_event alice-2 '"with":"bob@lan.test","path":"direct"'
wait_until 20 "bob's serverless link to alice" has_event bob-2 '"with":"alice@lan.test","path":"direct"'
has_event alice-2 '"event":"connected"' && die "alice's client found a server"
chat alice '{"cmd":"send","to":"bob@lan.test","body":"no server at all","id":"s1"}'
wait_until 20 "bob to get alice's message over the link" \
    has_event bob-2 '"from":"alice@lan.test","body":"no server at all","id":"s1","path":"direct"'
wait_until 20 "alice's serverless message to be delivered" has_event alice-2 '"id":"s1","state":"delivered"'
say "RESULT: with no server process at all, alice and bob found each other by multicast DNS (_presence._tcp) and chatted over a link checked against their pins"

start_server 2
for name in alice bob; do
    wait_until 40 "$name back on the server" has_event "$name-2" '"event":"connected"'
done
# alice's client handed the server what she said without it when it logged on; bob asks
# his archive for the conversation until a page holds it.
archived() { grep -F '"event":"history"' "$WORK/bob-2.events" | grep -qF '"body":"no server at all"'; }
pages() { grep -cF '"event":"history"' "$WORK/bob-2.events" || true; }
for _ in $(seq 10); do
    before=$(pages)
    chat bob '{"cmd":"history","with":"alice@lan.test"}'
    another_page() { [[ $(pages) -gt $before ]]; }
    wait_until 10 "a page of bob's history" another_page
    archived && break
done
archived || die "the serverless message is not in bob's archive"
n=$(count_events bob-2 '"event":"message"' '"body":"no server at all"')
[[ $n -eq 1 ]] || die "bob was shown the serverless message $n times"
say "RESULT: once the server was back, what was said without it was in the archive, shown once"

# ---------------------------------------------------------------- files
# A 100 MB file by each path: directly between the two (their link), through the site's
# SOCKS5 proxy (from a client without links), and by HTTP upload to bob while he is away.
# Each arrives whole (the complete event's done is the size) and byte-identical.
SIZE=104857600
head -c "$SIZE" /dev/urandom >"$WORK/big.bin"
arrived() { # arrived EVENTS NAME PATH: the transfer of NAME completed by PATH
    grep -F "\"name\":\"$2\",\"size\":$SIZE,\"done\":$SIZE,\"state\":\"complete\",\"path\":\"$3\"" \
        "$WORK/$1.events" >/dev/null
}
send_file() { # send_file NAME: alice sends a copy of the big file under NAME
    cp "$WORK/big.bin" "$WORK/$1"
    chat alice "{\"cmd\":\"sendfile\",\"to\":\"bob@lan.test\",\"path\":\"$WORK/$1\"}"
}
identical() { cmp -s "$WORK/big.bin" "$WORK/bob-files/$1" || die "bob's $1 differs from what alice sent"; }

send_file direct.bin
wait_until 120 "the file directly" arrived bob-2 direct.bin direct
identical direct.bin
say "100 MB directly between alice and bob, byte-identical"

chat alice '{"cmd":"quit"}'
wait "${CHAT_PID[alice]}" || die "alice's client did not quit cleanly"
start_chat alice 3 --no-p2p
wait_until 40 "alice without links on the server" has_event alice-3 '"event":"connected"'
wait_until 20 "alice to see bob" has_event alice-3 '"from":"bob@lan.test","available":true'
send_file proxied.bin
wait_until 120 "the file through the proxy" arrived bob-2 proxied.bin proxy
identical proxied.bin
say "100 MB through the site's SOCKS5 proxy, byte-identical"

chat bob '{"cmd":"quit"}'
wait "${CHAT_PID[bob]}" || die "bob's client did not quit cleanly"
wait_until 20 "alice to see bob gone" has_event alice-3 '"from":"bob@lan.test","available":false'
send_file uploaded.bin
wait_until 120 "the upload" arrived alice-3 uploaded.bin upload
start_chat bob 3
wait_until 120 "bob to fetch the uploaded file" arrived bob-3 uploaded.bin upload
identical uploaded.bin
for name in alice bob; do chat "$name" '{"cmd":"quit"}'; done
say "RESULT: a 100 MB file went directly, through the proxy and by upload, each byte-identical and complete"
