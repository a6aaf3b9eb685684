#!/usr/bin/env bash
# Profiles one server with perf (software cpu-clock sampling: this machine has no hardware
# counters) while outpost-bench runs one scenario against it, reusing the configuration and
# the provisioned users of an earlier compare.sh run.
#
#   OUT=bench/results/<run> bench/profile.sh outpost throughput --pairs 50 --window 20 --duration 8
#   OUT=bench/results/<run> bench/profile.sh ejabberd offline --count 10000
#
# Writes $OUT/profile-<server>-<scenario>.txt (perf report, flat by symbol, and by caller for
# Outpost) next to the scenario's JSON result. Outpost is sampled with DWARF call graphs
# (its release build keeps debug info, not frame pointers); ejabberd runs with the BEAM
# JIT's perf map (+JPperf true) so Erlang functions get names; Prosody shows the Lua VM's
# and its C libraries' functions.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
: "${OUT:?set OUT to the results directory of a compare.sh run}"
: "${FREQ:=499}"
server=$1
scenario=$2
shift 2
OUT=$(cd "$OUT" && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"
: "${ITERATIONS:=4096}" "${TLS:=1}" "${THREADS:=1}" "${SRC_IPS:=}"   # as compare.sh
CERT_DIR=$OUT/cert
OUTPOST=$CARGO_TARGET_DIR/release/outpost
BENCH=$CARGO_TARGET_DIR/release/outpost-bench
# shellcheck source=bench/servers.sh
source "$ROOT/bench/servers.sh"

ulimit -n "$(ulimit -Hn)"
EJ_EXTRA_ERL_OPTIONS="+JPperf true"
log "$server: starting"
start_server "$server"
pid=$(cat "$OUT/$server/pid")
data=$OUT/perf-$server-$scenario.data
callgraph=(-g)
[[ $server == outpost ]] && callgraph=(--call-graph dwarf,32768)
perf record -e cpu-clock -F "$FREQ" "${callgraph[@]}" -p "$pid" -o "$data" >/dev/null 2>&1 &
perf_pid=$!
sleep 1
log "$server: $scenario $*"
OUT_FILE=$OUT/profile-$server.jsonl bench "$server" "$scenario" "$@"
kill -INT "$perf_pid"
wait "$perf_pid" || true
log "$server: stopping"
"stop_$server"

report=$OUT/profile-$server-$scenario.txt
{
    echo "# perf record -e cpu-clock -F $FREQ ${callgraph[*]} -p <$server> during: outpost-bench $scenario $*"
    echo "# result: $(tail -n 1 "$OUT/profile-$server.jsonl")"
    echo
    echo "## Self time by shared object"
    perf report -i "$data" --no-children --sort dso -F overhead,dso --percent-limit 0.5 --stdio -g none \
        2>/dev/null | grep -v -e '^$' -e '^#' || true
    echo
    echo "## Flat profile (self time by symbol)"
    perf report -i "$data" --no-children -F overhead,dso,sym --percent-limit 0.7 --stdio -g none 2>/dev/null |
        grep -v "^$" || true
    if [[ $server == outpost ]]; then
        echo
        echo "## Inclusive time by symbol (children included), top entries"
        perf report -i "$data" --children --sort symbol --percent-limit 3 --stdio -g none 2>/dev/null |
            grep -v "^$" | head -n 80 || true
    fi
} >"$report"
rm -f "$data"
log "profile in $report"
head -n 60 "$report"
