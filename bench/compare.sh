#!/usr/bin/env bash
# Runs every outpost-bench scenario against Outpost, Prosody and ejabberd, one server after
# the other on loopback, with the same domain, users, limits and parameters, and writes a
# Markdown table (absolute figures, Outpost ÷ each peer, the machine) to $OUT/table.md.
#
#   bench/compare.sh                       # defaults below
#   IDLE_N=19000 RUNS=5 bench/compare.sh   # any parameter by environment
#   TLS=0 bench/compare.sh                 # plaintext (STARTTLS on every connection is the default)
#
# Installs Prosody and ejabberd from Debian's packages when missing. Each server runs as its
# own process with its own configuration and data under $OUT/<server>/ (never the system
# service), and is stopped by its own pid (Outpost, Prosody) or `ejabberdctl stop`.
#
# Every server archives every message (XEP-0313) and every room, has stream management
# (XEP-0198) and multi-user chat (XEP-0045) on; see bench/servers.sh.
#
# h. (WS=1) the throughput and idle scenarios again over XMPP over WebSocket (RFC 7395,
# wss://…/xmpp-websocket: Outpost's HTTPS listener, Prosody's mod_websocket, ejabberd's
# ejabberd_http_ws). i/j. (REST=1, Outpost only: the peers have no such API) REST sends
# per second to XMPP receivers, and one contact's presence fanned out to FANOUT_N event
# streams.
#
# Phases: for each server, provision users (in-band registration, XEP-0077) and a roster
# (RFC 6121 subscriptions), then throughput (with a check of the first receiver's archive),
# login storm, offline flush and roster login (RUNS times), then the MUC room (RUNS times),
# then idle (with stream management enabled on every connection when SM=1), from a fresh
# start on the provisioned data. Then the ceiling: outpost-bench's relay (no XMPP, the same
# stanza bytes over the same TLS) under the throughput scenario, RUNS times. Once every
# server's saturation is known, the latency scenario runs against each at LAT_FRACTION of
# the slowest server's throughput.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

: "${IDLE_N:=10000}"          # a. idle connections (the hard fd limit here is 20,000)
: "${PAIRS:=50}"              # b/c. sender→receiver pairs
: "${WINDOW:=20}"             # b. messages in flight per pair
: "${WARMUP:=3}"              # b/c. seconds before measuring
: "${DURATION:=10}"           # b/c. seconds measured
: "${LAT_FRACTION:=0.25}"     # c. rate = this × the slowest server's msgs/s
: "${LAT_RATE:=}"             # c. or a fixed aggregate rate (msgs/s)
: "${LOGIN_N:=1000}"          # d. logins per pass
: "${LOGIN_CONC:=50}"         # d. logins in flight
: "${OFFLINE_COUNT:=10000}"   # e. offline messages
: "${CONTACTS:=1000}"         # f. roster size
: "${ONLINE:=500}"            # f. contacts online
: "${MUC_N:=100}"             # g. occupants of the room
: "${MUC_SENDERS:=0}"         # g. occupants that send (0: all)
: "${MUC_WINDOW:=2}"          # g. messages per sender not yet at every occupant
: "${RUNS:=3}"                # repetitions of b–g (the table shows medians)
: "${WS:=1}"                  # h. XMPP over WebSocket (idle and throughput), every server
: "${WS_IDLE_N:=$IDLE_N}"     # h. idle WebSocket connections
: "${REST:=1}"                # i/j. Outpost's HTTP API: REST sends, event-stream fan-out
: "${REST_SENDERS:=$PAIRS}"   # i. REST users sending (one request at a time each)
: "${FANOUT_N:=$CONTACTS}"    # j. event streams (users subscribed to ro1; at most CONTACTS)
: "${FANOUT_UPDATES:=20}"     # j. presence changes fanned out
: "${ITERATIONS:=4096}"       # SCRAM iteration count, every server
: "${TLS:=1}"                 # 1: STARTTLS on every connection (0: plaintext)
: "${SM:=1}"                  # a. 1: stream management enabled on every idle connection
: "${CEILING:=1}"             # 1: run the relay (the ceiling) under the throughput scenario
# The archives' backends (bench/servers.sh): EJ_MAM_DB=sql|mnesia (sql: SQLite, the
# default), PROSODY_MAM_STORAGE=internal|sql (internal: files, the default).
: "${THREADS:=1}"             # generator runtime threads
: "${SERVERS:=outpost prosody ejabberd}"
: "${PROFILE:=release}"       # cargo profile of the binaries
: "${SKIP_BUILD:=0}"          # 1: use the binaries already built
: "${OUT:=$ROOT/bench/results/$(date +%Y%m%d-%H%M%S)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"

# shellcheck source=bench/servers.sh
source "$ROOT/bench/servers.sh"
USERS_N=$(( IDLE_N > 2 * PAIRS ? IDLE_N : 2 * PAIRS ))
USERS_N=$(( USERS_N > LOGIN_N ? USERS_N : LOGIN_N ))
USERS_N=$(( USERS_N > MUC_N ? USERS_N : MUC_N ))
IDLE_SM=()
[[ $SM == 1 ]] && IDLE_SM=(--sm)


mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# ------------------------------------------------------------------ prerequisites

# ejabberd's archive in SQLite needs its SQLite driver; Prosody's, if asked for, LuaDBI's.
PACKAGES=(prosody ejabberd erlang-p1-sqlite3)
[[ $PROSODY_MAM_STORAGE == sql ]] && PACKAGES+=(lua-dbi-sqlite3)
MISSING=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || MISSING+=("$p")
done
if (( ${#MISSING[@]} )); then
    log "installing ${MISSING[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${MISSING[@]}" >/dev/null
fi

if [[ $SKIP_BUILD != 1 ]]; then
    log "building outpost and outpost-bench ($PROFILE)"
    cargo build --profile "$PROFILE" -p outpost -p outpost-bench 2>&1 | tail -n 2 >&2
fi
PROFILE_DIR=$PROFILE
[[ $PROFILE == dev ]] && PROFILE_DIR=debug
OUTPOST=$CARGO_TARGET_DIR/$PROFILE_DIR/outpost
BENCH=$CARGO_TARGET_DIR/$PROFILE_DIR/outpost-bench

# One file descriptor per connection on each side, plus slack.
ulimit -n "$(ulimit -Hn)"
FDS=$(ulimit -n)
if (( IDLE_N + 200 > FDS )); then
    die "IDLE_N=$IDLE_N needs more than the $FDS file descriptors allowed here (ulimit -Hn)"
fi
# Past ~28,000 connections one source address runs out of ports.
SRC_IPS=""
if (( IDLE_N > 25000 )); then
    SRC_IPS="127.0.0.2,127.0.0.3,127.0.0.4"
fi

# A certificate for Prosody and ejabberd (Outpost and the relay make their own); used only
# with TLS=1.
CERT_DIR=$OUT/cert
make_cert

# ------------------------------------------------------------------ the run

for s in $SERVERS; do
    log "$s: starting"
    start_server "$s"
    log "$s: provisioning u1..u$USERS_N, rc1..rc$CONTACTS, ro1, off1, off2"
    bench "$s" register --prefix u -n "$USERS_N" --concurrency 50
    bench "$s" register --prefix rc -n "$CONTACTS" --concurrency 50
    bench "$s" register --prefix ro -n 1
    bench "$s" register --prefix off -n 2
    bench "$s" roster-setup --owner ro1 --contact-prefix rc --contacts "$CONTACTS"
    # Measure from a fresh start with the provisioned data, as after a restart.
    "stop_$s"
    start_server "$s"
    for r in $(seq 1 "$RUNS"); do
        log "$s: run $r/$RUNS: b. throughput, d. login, e. offline, f. roster"
        bench "$s" throughput --pairs "$PAIRS" --window "$WINDOW" --warmup "$WARMUP" --duration "$DURATION" --mam-check
        bench "$s" login -n "$LOGIN_N" --concurrency "$LOGIN_CONC" --mech SCRAM-SHA-1
        bench "$s" offline --count "$OFFLINE_COUNT"
        bench "$s" roster --owner ro1 --contact-prefix rc --contacts "$CONTACTS" --online "$ONLINE" --runs 1
    done
    for r in $(seq 1 "$RUNS"); do
        log "$s: run $r/$RUNS: g. MUC, one new room, $MUC_N occupants"
        bench "$s" muc --occupants "$MUC_N" --senders "$MUC_SENDERS" --window "$MUC_WINDOW" \
            --warmup "$WARMUP" --duration "$DURATION" --service "$MUC_SERVICE" --mam-check
    done
    if [[ $WS == 1 ]]; then
        for r in $(seq 1 "$RUNS"); do
            log "$s: run $r/$RUNS: h. throughput over WebSocket"
            bench_ws "$s" throughput --pairs "$PAIRS" --window "$WINDOW" --warmup "$WARMUP" --duration "$DURATION" --mam-check
        done
    fi
    if [[ $REST == 1 && $s == outpost ]]; then
        for r in $(seq 1 "$RUNS"); do
            log "$s: run $r/$RUNS: i. REST sends, j. event-stream fan-out to $FANOUT_N"
            bench_http "$s" rest-send --senders "$REST_SENDERS" --warmup "$WARMUP" --duration "$DURATION"
            bench_http "$s" sse-fanout --owner ro1 --contact-prefix rc --subscribers "$FANOUT_N" --updates "$FANOUT_UPDATES"
        done
    fi
    # Last: holding many sessions leaves some servers with a larger heap afterwards
    # (Prosody's Lua GC then costs more per message), which would skew what follows.
    log "$s: a. idle, $IDLE_N connections${IDLE_SM:+, stream management on}"
    bench "$s" idle -n "$IDLE_N" --concurrency 200 "${IDLE_SM[@]}"
    if [[ $WS == 1 ]]; then
        # From a fresh start: a server that held the idle TCP connections keeps their heap
        # (Lua's GC, the BEAM, glibc's malloc), which WebSocket sessions would reuse unseen.
        "stop_$s"
        start_server "$s"
        log "$s: h. idle over WebSocket, $WS_IDLE_N connections${IDLE_SM:+, stream management on}"
        bench_ws "$s" idle -n "$WS_IDLE_N" --concurrency 200 "${IDLE_SM[@]}"
    fi
    log "$s: stopping"
    "stop_$s"
done

if [[ $CEILING == 1 ]]; then
    # A new relay for each run: it pairs connections by accept order.
    for r in $(seq 1 "$RUNS"); do
        log "ceiling: run $r/$RUNS: b. throughput against the relay"
        start_server relay
        bench relay throughput --pairs "$PAIRS" --window "$WINDOW" --warmup "$WARMUP" --duration "$DURATION"
        stop_relay
    done
fi

if [[ -z $LAT_RATE ]]; then
    LAT_RATE=$(python3 "$ROOT/bench/report.py" --slowest-rate "$LAT_FRACTION" "$OUT" $SERVERS)
fi
log "c. latency at $LAT_RATE msgs/s for every server"
for s in $SERVERS; do
    start_server "$s"
    for r in $(seq 1 "$RUNS"); do
        bench "$s" latency --pairs "$PAIRS" --rate "$LAT_RATE" --warmup "$WARMUP" --duration "$DURATION"
    done
    "stop_$s"
done

# ------------------------------------------------------------------ the machine and the table

{
    echo "cores=$(nproc)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "memory=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel=$(uname -r)"
    echo "outpost=$("$OUTPOST" --version | awk '{print $2}') ($(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates || echo '+uncommitted'))"
    echo "prosody=$(dpkg-query -W -f '${Version}' prosody) (Lua $(dpkg-query -W -f '${Version}' lua5.4 2>/dev/null || echo '?'))"
    echo "ejabberd=$(dpkg-query -W -f '${Version}' ejabberd) (Erlang/OTP $(dpkg-query -W -f '${Version}' erlang-base))"
    echo "rustc=$(rustc --version | awk '{print $2}')"
    echo "tls=$TLS"
    echo "sm=$SM"
    echo "archive=1 (outpost sqlite, prosody $PROSODY_MAM_STORAGE, ejabberd $EJ_MAM_DB)"
    echo "iterations=$ITERATIONS"
    echo "params=WS=$WS WS_IDLE_N=$WS_IDLE_N REST=$REST REST_SENDERS=$REST_SENDERS FANOUT_N=$FANOUT_N FANOUT_UPDATES=$FANOUT_UPDATES IDLE_N=$IDLE_N PAIRS=$PAIRS WINDOW=$WINDOW WARMUP=$WARMUP DURATION=$DURATION LAT_RATE=$LAT_RATE LOGIN_N=$LOGIN_N LOGIN_CONC=$LOGIN_CONC OFFLINE_COUNT=$OFFLINE_COUNT CONTACTS=$CONTACTS ONLINE=$ONLINE MUC_N=$MUC_N MUC_SENDERS=$MUC_SENDERS MUC_WINDOW=$MUC_WINDOW RUNS=$RUNS THREADS=$THREADS TLS=$TLS SM=$SM CEILING=$CEILING"
} >"$OUT/machine.txt"

python3 "$ROOT/bench/report.py" "$OUT" $SERVERS >"$OUT/table.md"
log "results in $OUT (table.md, <server>.jsonl)"
cat "$OUT/table.md"
