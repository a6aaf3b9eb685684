#!/usr/bin/env bash
# What a cluster costs: Outpost on one node (SQLite, then PostgreSQL), then two nodes of one
# domain on the same PostgreSQL with NATS between them, and outpost-bench driving clients.
#
#   bench/cluster.sh                  # defaults below; results in bench/results/cluster-<time>/
#   PAIRS=20 RUNS=5 bench/cluster.sh  # any parameter by environment
#
# Per run (RUNS times), each with PAIRS sender→receiver pairs and WINDOW messages in flight:
#   sqlite    one node on SQLite (the default store), both ends on it
#   postgres  one node on PostgreSQL, both ends on it
#   postgres-repl  the same, replicating its directory and archive to a hub (SQLite), so
#             its writes take the replication lock (one transaction at a time)
#   local     node a of the cluster, both ends on node a (nothing crosses NATS)
#   crossing  senders on node a, receivers on node b: every message crosses NATS
#             (outpost-bench's federation-throughput with node b as the "peer" of the
#             same domain; both nodes' CPU is sampled)
#   prosody, ejabberd  the peers (PEERS), as bench/compare.sh starts them
# and the MUC scenario (one new room, MUC_N occupants, all sending): on one node
# (PostgreSQL), on the cluster with every occupant on node a, and with every other
# occupant on node b (each message crosses to b once per occupant there).
# Then the latency scenario at one fixed rate (LAT_RATE, or LAT_FRACTION of the slowest
# saturation measured above) for each of them, RUNS times; and IDLE_N sessions held on
# node a, with node b's memory sampled: what each session on another node costs in a
# node's directory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

: "${PAIRS:=50}"              # sender→receiver pairs
: "${WINDOW:=20}"             # messages in flight per pair
: "${WARMUP:=3}"              # seconds before measuring
: "${DURATION:=10}"           # seconds measured
: "${RUNS:=3}"                # repetitions (the table shows medians)
: "${IDLE_N:=5000}"           # sessions held on node a for the directory's memory on node b
: "${PEERS=prosody ejabberd}"  # the peers measured beside Outpost ("" for none)
: "${MUC_N:=100}"             # occupants of the MUC scenario's room
: "${MUC_WINDOW:=2}"          # messages per sender not yet at every occupant
: "${LAT_FRACTION:=0.25}"     # latency rate = this × the slowest saturation measured
: "${LAT_RATE:=}"             # or a fixed aggregate rate (msgs/s)
: "${ITERATIONS:=4096}"       # SCRAM iteration count
: "${PROFILE:=release}"
: "${SKIP_BUILD:=0}"
: "${OUT:=$ROOT/bench/results/cluster-$(date +%Y%m%d-%H%M%S)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"

# log, die, wait_gone, wait_port, PASSWORD
# shellcheck source=bench/servers.sh
source "$ROOT/bench/servers.sh"
DOMAIN=cluster.bench
MUC_SERVICE=conference.$DOMAIN
TLS=1
THREADS=1
SRC_IPS=""
declare -A C2S=([single]=16522 [a]=16622 [b]=16722 [hub]=16922)
NATS_PORT=16822
SITE_S2S=16569
HUB_S2S=16969
HUB_DOMAIN=hub.bench

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

PACKAGES=(postgresql nats-server)
for p in $PEERS; do
    PACKAGES+=("$p")
    [[ $p == ejabberd ]] && PACKAGES+=(erlang-p1-sqlite3)
done
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        log "installing $p from Debian's packages"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
        [[ $p == nats-server ]] && { systemctl disable --now nats-server >/dev/null 2>&1 || true; }
    fi
done
if [[ $SKIP_BUILD != 1 ]]; then
    log "building outpost and outpost-bench ($PROFILE)"
    cargo build --profile "$PROFILE" -p outpost -p outpost-bench 2>&1 | tail -n 2 >&2
fi
PROFILE_DIR=$PROFILE
[[ $PROFILE == dev ]] && PROFILE_DIR=debug
OUTPOST=$CARGO_TARGET_DIR/$PROFILE_DIR/outpost
BENCH=$CARGO_TARGET_DIR/$PROFILE_DIR/outpost-bench

# ------------------------------------------------------------------ PostgreSQL and NATS

PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
PG_DIR=$(mktemp -d /tmp/outpost-bench-pg-XXXX)
as_pg=()
if [[ $(id -u) == 0 ]]; then
    chown postgres: "$PG_DIR"
    as_pg=(runuser -u postgres --)
fi
cleanup() {
    [[ -n ${NATS_PID:-} ]] && kill "$NATS_PID" 2>/dev/null || true
    "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
}
trap cleanup EXIT
"${as_pg[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust --no-locale -E UTF8 >/dev/null
"${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w \
    -o "-k $PG_DIR -c listen_addresses= -c max_connections=200" start >/dev/null
pg_url() { echo "postgres://postgres@localhost:5432/$1?host=$PG_DIR"; }
createdb_() { "${as_pg[@]}" "$PG_BIN/createdb" -h "$PG_DIR" -U postgres "$1"; }
createdb_ single
createdb_ cluster
createdb_ repl
nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$OUT/nats.log" 2>&1 &
NATS_PID=$!
wait_port "$NATS_PORT"

# ------------------------------------------------------------------ the servers

# write_config NAME STORAGE-TOML CLUSTER-TOML [LISTEN-TOML] [TOP-TOML (the domain, role)]
write_config() {
    local name=$1 dir=$OUT/$1 port=${C2S[${1%%-*}]} top=${5:-"domains = [\"$DOMAIN\"]"}
    mkdir -p "$dir/data"
    cat >"$dir/outpost.toml" <<CONF
$top
data_dir = "$dir/data"

[listen]
c2s = ["127.0.0.1:$port"]
c2s_tls = []
proxy65 = []
https = []
http = []
${4:-}

[registration]
enabled = true

[auth]
scram_iterations = $ITERATIONS
allow_plaintext_without_tls = true

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

$2

$3
CONF
}

start() {
    local name=$1 dir=$OUT/$1
    "$OUTPOST" serve --config "$dir/outpost.toml" >>"$dir/outpost.log" 2>&1 &
    echo $! >"$dir/pid"
    wait_port "${C2S[${name%%-*}]}"
}

stop() {
    local pid
    pid=$(cat "$OUT/$1/pid")
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid"
}

# cbench SERVER FILE [--peer NODE] SCENARIO...: outpost-bench against SERVER's port.
cbench() {
    local s=$1 file=$2; shift 2
    local peer=()
    if [[ $1 == --peer ]]; then
        peer=(--peer-port "${C2S[$2]}" --peer-domain "$DOMAIN" --peer-pidfile "$OUT/$2/pid")
        shift 2
    fi
    "$BENCH" --port "${C2S[${s%%-*}]}" --domain "$DOMAIN" --password "$PASSWORD" \
        --pidfile "$OUT/$s/pid" --label "outpost-$s" --tls "${peer[@]}" \
        --out "$OUT/$file.jsonl" "$@" >/dev/null ||
        log "$s: a scenario reported an error (see $OUT/$file.jsonl)"
}

throughput() {
    cbench "$@" --pairs "$PAIRS" --window "$WINDOW" --warmup "$WARMUP" --duration "$DURATION"
}

provision() {
    local n=${2:-$(( 2 * PAIRS ))}
    "$BENCH" --port "${C2S[${1%%-*}]}" --domain "$DOMAIN" --password "$PASSWORD" \
        --out "$OUT/provision.jsonl" register --prefix u -n "$n" --concurrency 50 \
        >/dev/null || die "registering on $1 failed (see $OUT/provision.jsonl)"
}

PG_SINGLE="[storage]
backend = \"postgres\"
url = \"$(pg_url single)\""
PG_CLUSTER="[storage]
backend = \"postgres\"
url = \"$(pg_url cluster)\""
PG_REPL="[storage]
backend = \"postgres\"
url = \"$(pg_url repl)\""
# federation_toml PEER-DOMAIN PEER-S2S-PORT EXTRA: a site and its hub, each the other's
# only peer (dialback over TLS, no DNS).
federation_toml() {
    printf '[federation]\nenabled = true\nsrv_lookup = false\ndns_server = "127.0.0.1:9"\n'
    printf 'retry_initial_secs = 1\nretry_max_secs = 2\n%s\n' "$3"
    printf '[federation.peers]\n"%s" = "127.0.0.1:%s"\n' "$1" "$2"
}
node_toml() {
    printf '[cluster]\nnats_url = "nats://127.0.0.1:%s"\nnode_id = "%s"\n' "$NATS_PORT" "$1"
}

# A certificate for the peers (Outpost makes its own).
CERT_DIR=$OUT/cert
make_cert

write_config single-sqlite "" ""
write_config single-pg "$PG_SINGLE" ""
write_config a "$PG_CLUSTER" "$(node_toml a)"
write_config b "$PG_CLUSTER" "$(node_toml b)"
write_config single-pgrepl "$PG_REPL" "$(federation_toml "$HUB_DOMAIN" "$HUB_S2S" \
    "hub = \"$HUB_DOMAIN\"")" "s2s = [\"127.0.0.1:$SITE_S2S\"]"
write_config hub "" "$(federation_toml "$DOMAIN" "$SITE_S2S" "relay_for = [\"$DOMAIN\"]")" \
    "s2s = [\"127.0.0.1:$HUB_S2S\"]" "$(printf 'domains = ["%s"]\nrole = "hub"' "$HUB_DOMAIN")"

# file_of CONFIGURATION: the results file of a single node's run.
file_of() {
    case $1 in
        single-sqlite) echo sqlite ;;
        single-pg) echo postgres ;;
        single-pgrepl) echo postgres-repl ;;
    esac
}

# measure_single CONFIGURATION SCENARIO...: a single node started, measured, stopped.
measure_single() {
    local s=$1; shift
    start "$s"
    "$@" "$s"
    stop "$s"
}
single_throughput() {
    local n=$(( 2 * PAIRS > MUC_N ? 2 * PAIRS : MUC_N ))
    provision "$1" "$n"
    for r in $(seq 1 "$RUNS"); do
        log "$1: run $r/$RUNS: throughput, both ends on one node"
        throughput "$1" "$(file_of "$1")" throughput
        if [[ $1 == single-pg ]]; then
            log "$1: run $r/$RUNS: MUC, $MUC_N occupants"
            muc "$1" postgres
        fi
    done
}
single_latency() {
    for r in $(seq 1 "$RUNS"); do
        log "$1: run $r/$RUNS: latency at $LAT_RATE msgs/s"
        latency "$1" "$(file_of "$1")"
    done
}
latency() {
    cbench "$@" latency --pairs "$PAIRS" --rate "$LAT_RATE" --warmup "$WARMUP" --duration "$DURATION"
}
muc() {
    cbench "$@" muc --occupants "$MUC_N" --window "$MUC_WINDOW" --warmup "$WARMUP" \
        --duration "$DURATION" --service "$MUC_SERVICE"
}

# The peers, with bench/servers.sh's configurations; results in $OUT/<peer>.jsonl.
peer_throughput() {
    local s=$1
    log "$s: starting, provisioning u1..u$(( 2 * PAIRS ))"
    start_server "$s"
    bench "$s" register --prefix u -n "$(( 2 * PAIRS ))" --concurrency 50
    for r in $(seq 1 "$RUNS"); do
        log "$s: run $r/$RUNS: throughput"
        bench "$s" throughput --pairs "$PAIRS" --window "$WINDOW" --warmup "$WARMUP" --duration "$DURATION"
    done
    "stop_$s"
}
peer_latency() {
    local s=$1
    start_server "$s"
    for r in $(seq 1 "$RUNS"); do
        log "$s: run $r/$RUNS: latency at $LAT_RATE msgs/s"
        bench "$s" latency --pairs "$PAIRS" --rate "$LAT_RATE" --warmup "$WARMUP" --duration "$DURATION"
    done
    "stop_$s"
}

# ------------------------------------------------------------------ saturation

measure_single single-sqlite single_throughput
measure_single single-pg single_throughput
start hub
measure_single single-pgrepl single_throughput
# What the hub applied of the site's log, for the record.
"$OUTPOST" admin replication --json --config "$OUT/hub/outpost.toml" \
    >"$OUT/postgres-repl-hub.json" 2>&1 || true
stop hub
start a
start b
USERS_N=$(( IDLE_N > 2 * PAIRS ? IDLE_N : 2 * PAIRS ))
provision a $(( USERS_N > MUC_N ? USERS_N : MUC_N ))
for r in $(seq 1 "$RUNS"); do
    log "cluster: run $r/$RUNS: both ends on node a, then senders on a and receivers on b"
    throughput a local throughput
    throughput a crossing --peer b federation-throughput
    log "cluster: run $r/$RUNS: MUC on node a, then with every other occupant on b"
    muc a local
    muc a crossing --peer b
done
stop b
stop a
for p in $PEERS; do
    peer_throughput "$p"
done

# ------------------------------------------------------------------ latency at one rate

if [[ -z $LAT_RATE ]]; then
    # shellcheck disable=SC2086
    LAT_RATE=$(python3 "$ROOT/bench/report.py" --slowest-rate "$LAT_FRACTION" "$OUT" \
        sqlite postgres local crossing $PEERS)
fi
measure_single single-sqlite single_latency
measure_single single-pg single_latency
start a
start b
for r in $(seq 1 "$RUNS"); do
    log "cluster: run $r/$RUNS: latency at $LAT_RATE msgs/s, on node a, then crossing to b"
    latency a local
    latency a crossing --peer b
done
log "cluster: $IDLE_N sessions on node a, node b's memory sampled"
"$BENCH" --port "${C2S[a]}" --domain "$DOMAIN" --password "$PASSWORD" --tls \
    --pidfile "$OUT/b/pid" --label "outpost-b-directory" --out "$OUT/directory.jsonl" \
    idle -n "$IDLE_N" --concurrency 200 --sm >/dev/null ||
    log "the directory's memory: an error (see $OUT/directory.jsonl)"
stop b
stop a
for p in $PEERS; do
    peer_latency "$p"
done

{
    echo "cores=$(nproc)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "memory=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel=$(uname -r)"
    echo "outpost=$("$OUTPOST" --version | awk '{print $2}') ($(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates || echo '+uncommitted'))"
    echo "postgresql=$("$PG_BIN/postgres" --version | awk '{print $3}')"
    echo "nats=$(nats-server --version | awk '{print $NF}')"
    for p in $PEERS; do
        echo "$p=$(dpkg-query -W -f '${Version}' "$p")"
    done
    echo "params=PAIRS=$PAIRS WINDOW=$WINDOW WARMUP=$WARMUP DURATION=$DURATION RUNS=$RUNS ITERATIONS=$ITERATIONS IDLE_N=$IDLE_N LAT_RATE=$LAT_RATE MUC_N=$MUC_N MUC_WINDOW=$MUC_WINDOW"
} >"$OUT/machine.txt"

# shellcheck disable=SC2086
python3 "$ROOT/bench/report.py" --cluster "$OUT" $PEERS >"$OUT/table.md"
log "results in $OUT (table.md, sqlite/postgres/local/crossing.jsonl)"
cat "$OUT/table.md"
