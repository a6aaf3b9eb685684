#!/usr/bin/env bash
# How long a hub takes to get a site's whole directory from scratch: a site a.bench with
# ACCOUNTS accounts of CONTACTS roster items each (written straight into its SQLite file),
# and a hub h.bench with an empty store. Both start; the site logs every key again (the
# snapshot) and ships it over the server-to-server link (TLS, dialback); the hub applies it.
# Timed from the site's start to the hub's replica reaching the site's head, as
# `outpost admin replication --json` on both sides reports it. Then the steady state: one
# account made at the site, timed until the hub has it (RUNS times).
#
#   bench/replication.sh                          # 100,000 accounts × 100 contacts
#   ACCOUNTS=10000 CONTACTS=20 bench/replication.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

: "${ACCOUNTS:=100000}"
: "${CONTACTS:=100}"
: "${RUNS:=5}"
: "${PROFILE:=release}"
: "${SKIP_BUILD:=0}"
: "${OUT:=$ROOT/bench/results/replication-$(date +%Y%m%d-%H%M%S)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"

# log, die, wait_gone, wait_port
# shellcheck source=bench/servers.sh
source "$ROOT/bench/servers.sh"

declare -A DOM=([site]=a.bench [hub]=h.bench)
declare -A C2S=([site]=17222 [hub]=17322)
declare -A S2S=([site]=17269 [hub]=17369)

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [[ $SKIP_BUILD != 1 ]]; then
    log "building outpost ($PROFILE)"
    cargo build --profile "$PROFILE" -p outpost 2>&1 | tail -n 2 >&2
fi
PROFILE_DIR=$PROFILE
[[ $PROFILE == dev ]] && PROFILE_DIR=debug
OUTPOST=$CARGO_TARGET_DIR/$PROFILE_DIR/outpost

write_config() {
    local s=$1 dir=$OUT/$1 role extra peer
    if [[ $s == hub ]]; then
        role=hub peer=site extra='relay_for = ["a.bench"]'
    else
        role=site peer=hub extra='hub = "h.bench"'
    fi
    mkdir -p "$dir/data"
    cat >"$dir/outpost.toml" <<CONF
role = "$role"
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
scram_iterations = 4096
allow_plaintext_without_tls = true

[federation]
enabled = true
require_tls = true
srv_lookup = false
dns_server = "127.0.0.1:9"
retry_initial_secs = 1
retry_max_secs = 2
$extra

[federation.peers]
"${DOM[$peer]}" = "127.0.0.1:${S2S[$peer]}"

[log]
level = "warn"
CONF
}

start() {
    local s=$1 dir=$OUT/$1
    "$OUTPOST" serve --config "$dir/outpost.toml" >>"$dir/outpost.log" 2>&1 &
    echo $! >"$dir/pid"
    wait_port "${C2S[$s]}"
}

stop() {
    local pid
    pid=$(cat "$OUT/$1/pid")
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid"
}

repl() {
    "$OUTPOST" admin replication --json --config "$OUT/$1/outpost.toml"
}

now() { date +%s.%N; }

# The hub's position and the site's head, as "position head".
positions() {
    local hub site
    hub=$(repl hub | python3 -c 'import json,sys; s=json.load(sys.stdin)["sites"]; print(s[0]["position"] if s else 0)')
    site=$(repl site | python3 -c 'import json,sys; print(json.load(sys.stdin)["head"])')
    echo "$hub $site"
}

# Waits (at most $2 seconds) until the hub holds everything the site logged.
wait_caught_up() {
    local what=$1 limit=$2 start
    start=$(now)
    while true; do
        read -r hub head < <(positions)
        if [[ $head -gt 0 && $hub -ge $head ]]; then
            return 0
        fi
        if python3 -c "import sys; sys.exit(0 if $(now) - $start > $limit else 1)"; then
            die "$what: the hub is at $hub of $head after $limit s"
        fi
        sleep 0.05 # polling interval, not synchronisation
    done
}

for s in site hub; do write_config "$s"; done

log "creating the site's database (replication off, as on a site that had no hub yet)"
sed 's/^hub = .*//' "$OUT/site/outpost.toml" >"$OUT/site/nohub.toml"
"$OUTPOST" serve --config "$OUT/site/nohub.toml" >>"$OUT/site/outpost.log" 2>&1 &
echo $! >"$OUT/site/pid"
wait_port "${C2S[site]}"
stop site

log "writing $ACCOUNTS accounts × $CONTACTS contacts into it"
T0=$(now)
python3 - "$OUT/site/data/outpost.db" "$ACCOUNTS" "$CONTACTS" <<'PY'
import os, sqlite3, sys
path, accounts, contacts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
db = sqlite3.connect(path)
db.execute("PRAGMA synchronous = OFF")
jid = lambda i: f"user{i}@a.bench"
def account_rows():
    for i in range(accounts):
        yield (jid(i), os.urandom(16), 4096, os.urandom(20), os.urandom(20),
               os.urandom(16), 4096, os.urandom(32), os.urandom(32))
def roster_rows():
    for i in range(accounts):
        for k in range(1, contacts + 1):
            yield (jid(i), jid((i + k) % accounts), f"Contact {k}", "both", 0, 0)
with db:
    db.executemany("INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", account_rows())
    db.executemany("INSERT INTO roster_items (owner, contact, name, subscription, ask, approved) "
                   "VALUES (?, ?, ?, ?, ?, ?)", roster_rows())
db.close()
PY
log "written in $(python3 -c "print(round($(now) - $T0, 1))") s; $(du -h "$OUT/site/data/outpost.db" | cut -f1)"

log "starting the hub (empty) and the site"
start hub
T_START=$(now)
start site
wait_caught_up "snapshot" 3600
T_DONE=$(now)
read -r HUB_POS HEAD < <(positions)
FULL=$(python3 -c "print(round($T_DONE - $T_START, 1))")
RECORDS=$(repl hub | python3 -c 'import json,sys; print(json.load(sys.stdin)["sites"][0]["records"])')
log "snapshot: $RECORDS records (log head $HEAD) in $FULL s"
RSS_SITE=$(ps -o rss= -p "$(cat "$OUT/site/pid")" | tr -d ' ')
RSS_HUB=$(ps -o rss= -p "$(cat "$OUT/hub/pid")" | tr -d ' ')

log "steady state: one account at a time, $RUNS times"
# Lag: from the site's commit of the account (its log stamp) to the hub's commit of the
# batch that holds it, as the hub records them (`last_lag_ms`).
LAGS=()
for i in $(seq 1 "$RUNS"); do
    printf 'password-%s\n' "$i" |
        "$OUTPOST" user add "newuser$i@a.bench" --password-stdin --config "$OUT/site/outpost.toml" >/dev/null
    wait_caught_up "account $i" 30
    LAGS+=("$(repl hub | python3 -c 'import json,sys; print(json.load(sys.stdin)["sites"][0]["last_lag_ms"])')")
done
LAG_MEDIAN=$(printf '%s\n' "${LAGS[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')

stop site
stop hub

cat >"$OUT/summary.txt" <<SUM
accounts                  $ACCOUNTS
contacts per account      $CONTACTS
records applied           $RECORDS
snapshot, start to hub    $FULL s
records per second        $(python3 -c "print(round($RECORDS / $FULL))")
site RSS after            $((RSS_SITE / 1024)) MiB
hub RSS after             $((RSS_HUB / 1024)) MiB
steady-state lag, ms      ${LAGS[*]} (median $LAG_MEDIAN; from the site's commit to the hub's)
SUM
cat "$OUT/summary.txt"
