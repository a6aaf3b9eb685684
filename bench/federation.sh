#!/usr/bin/env bash
# What federation costs: two Outpost servers on loopback, a.bench and b.bench, federating
# over TLS with dialback (XEP-0220) and stream management acknowledgements (XEP-0198)
# between them, and outpost-bench driving clients on both.
#
#   bench/federation.sh                  # defaults below; results in bench/results/federation-<time>/
#   PAIRS=20 RUNS=5 bench/federation.sh  # any parameter by environment
#
# Per run (RUNS times): local throughput on A (the same pairs, both ends on A), then
# federation-throughput (senders on A, receivers on B). Then RUNS times the backlog: B is
# stopped, one client on A sends BACKLOG messages to a user on B (A queues them), B is
# started again and the receiver logs in as soon as B accepts logins; outpost-bench times
# the delivery of the last message and A's queue emptying (`outpost admin links --json`).
# Both servers are stopped by their pid.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

: "${PAIRS:=50}"              # sender→receiver pairs
: "${WINDOW:=20}"             # messages in flight per pair
: "${WARMUP:=3}"              # seconds before measuring (includes the link's set-up)
: "${DURATION:=10}"           # seconds measured
: "${BACKLOG:=10000}"         # messages queued while B is down
: "${RUNS:=3}"                # repetitions (the table shows medians)
: "${ITERATIONS:=4096}"       # SCRAM iteration count
: "${RETRY_MAX:=2}"           # A's reconnection back-off ceiling, seconds
: "${PROBE:=1}"               # A's probe interval while B is down, seconds
: "${PROFILE:=release}"
: "${SKIP_BUILD:=0}"
: "${OUT:=$ROOT/bench/results/federation-$(date +%Y%m%d-%H%M%S)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"

# log, die, wait_gone, wait_port, PASSWORD
# shellcheck source=bench/servers.sh
source "$ROOT/bench/servers.sh"
TLS=0
THREADS=1

declare -A DOM=([a]=a.bench [b]=b.bench)
declare -A C2S=([a]=16222 [b]=16322)
declare -A S2S=([a]=16269 [b]=16369)
PEER_OF_a=b
PEER_OF_b=a

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [[ $SKIP_BUILD != 1 ]]; then
    log "building outpost and outpost-bench ($PROFILE)"
    cargo build --profile "$PROFILE" -p outpost -p outpost-bench 2>&1 | tail -n 2 >&2
fi
PROFILE_DIR=$PROFILE
[[ $PROFILE == dev ]] && PROFILE_DIR=debug
OUTPOST=$CARGO_TARGET_DIR/$PROFILE_DIR/outpost
BENCH=$CARGO_TARGET_DIR/$PROFILE_DIR/outpost-bench

write_config() {
    local s=$1 dir=$OUT/$1
    local p
    p=PEER_OF_$s
    p=${!p}
    mkdir -p "$dir/data"
    cat >"$dir/outpost.toml" <<CONF
domains = ["${DOM[$s]}"]
data_dir = "$dir/data"

[listen]
c2s = ["127.0.0.1:${C2S[$s]}"]
c2s_tls = []
proxy65 = []
https = []
http = []
s2s = ["127.0.0.1:${S2S[$s]}"]

[registration]
enabled = true

[auth]
scram_iterations = $ITERATIONS
allow_plaintext_without_tls = true

[federation]
enabled = true
require_tls = true
srv_lookup = false
dns_server = "127.0.0.1:9"
retry_initial_secs = 1
retry_max_secs = $RETRY_MAX
probe_interval_secs = $PROBE

[federation.peers]
"${DOM[$p]}" = "127.0.0.1:${S2S[$p]}"

[limits]
read_rate_bytes_per_sec = 4000000000
read_burst_bytes = 4000000000
max_connections = 100000
offline_quota = 1000000
idle_timeout_secs = 7200
ping_interval_secs = 7000
login_failures_per_ip = 1000000
login_failures_per_account = 1000000

[log]
level = "warn"
CONF
}

start() {
    local s=$1 dir=$OUT/$1
    "$OUTPOST" serve --config "$dir/outpost.toml" >>"$dir/outpost.log" 2>&1 &
    echo $! >"$dir/pid"
    wait_port "${C2S[$s]}"
    wait_port "${S2S[$s]}"
}

stop() {
    local pid
    pid=$(cat "$OUT/$1/pid")
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid"
}

# outpost-bench against server $1 (the other one as --peer-*).
fbench() {
    local s=$1 file=$2; shift 2
    local p
    p=PEER_OF_$s
    p=${!p}
    "$BENCH" --port "${C2S[$s]}" --domain "${DOM[$s]}" --password "$PASSWORD" \
        --pidfile "$OUT/$s/pid" --label "outpost-${DOM[$s]}" \
        --peer-port "${C2S[$p]}" --peer-domain "${DOM[$p]}" \
        --out "$OUT/$file.jsonl" "$@" >/dev/null ||
        log "${DOM[$s]}: a scenario reported an error (see $OUT/$file.jsonl)"
}

provision() {
    local s=$1; shift
    "$BENCH" --port "${C2S[$s]}" --domain "${DOM[$s]}" --password "$PASSWORD" \
        --out "$OUT/provision.jsonl" register "$@" >/dev/null ||
        die "registering on ${DOM[$s]} failed (see $OUT/provision.jsonl)"
}

for s in a b; do write_config "$s"; start "$s"; done
log "provisioning u1..u$(( 2 * PAIRS )) on both, bs1 on a.bench, br1..br$RUNS on b.bench"
for s in a b; do provision "$s" --prefix u -n $(( 2 * PAIRS )) --concurrency 50; done
provision a --prefix bs -n 1
provision b --prefix br -n "$RUNS"

for r in $(seq 1 "$RUNS"); do
    log "run $r/$RUNS: local throughput on a.bench, then federated a.bench → b.bench"
    fbench a local throughput --pairs "$PAIRS" --window "$WINDOW" --warmup "$WARMUP" --duration "$DURATION"
    # The CPU of both servers is sampled (--peer-pidfile).
    fbench a federation --peer-pidfile "$OUT/b/pid" federation-throughput \
        --pairs "$PAIRS" --window "$WINDOW" --warmup "$WARMUP" --duration "$DURATION"
done

for r in $(seq 1 "$RUNS"); do
    log "backlog run $r/$RUNS: b.bench stopped, $BACKLOG messages queued on a.bench"
    stop b
    ready=$OUT/backlog-ready-$r
    rm -f "$ready"
    fbench a backlog --peer-pidfile "$OUT/b/pid" federation-backlog --count "$BACKLOG" \
        --recipient "br$r" --peer-s2s-port "${S2S[b]}" --ready-file "$ready" \
        --outpost "$OUTPOST" --a-config "$OUT/a/outpost.toml" &
    bpid=$!
    for _ in $(seq 1 3000); do
        [[ -e $ready ]] && break
        kill -0 "$bpid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -e $ready ]] || log "the backlog was not queued in 300 s"
    log "starting b.bench again"
    start b
    wait "$bpid" || true
done

for s in a b; do stop "$s"; done

{
    echo "cores=$(nproc)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "memory=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel=$(uname -r)"
    echo "outpost=$("$OUTPOST" --version | awk '{print $2}') ($(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates || echo '+uncommitted'))"
    echo "rustc=$(rustc --version | awk '{print $2}')"
    echo "params=PAIRS=$PAIRS WINDOW=$WINDOW WARMUP=$WARMUP DURATION=$DURATION BACKLOG=$BACKLOG RUNS=$RUNS ITERATIONS=$ITERATIONS RETRY_MAX=$RETRY_MAX PROBE=$PROBE"
} >"$OUT/machine.txt"
cp "$OUT/a/outpost.toml" "$OUT/a.toml"
cp "$OUT/b/outpost.toml" "$OUT/b.toml"

python3 "$ROOT/bench/report.py" --federation "$OUT" >"$OUT/table.md"
log "results in $OUT (table.md, local.jsonl, federation.jsonl, backlog.jsonl)"
cat "$OUT/table.md"
