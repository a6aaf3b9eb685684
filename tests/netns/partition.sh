#!/usr/bin/env bash
# Partition test (issue 4): two Outpost sites federate across a router host; the link of
# site 1 is cut while its users go on chatting; messages sent across the cut arrive exactly
# once, in order, within seconds of the link's return.
#
#   op-s1-PID (site1.test)          op-hub-PID (router)            op-s2-PID (site2.test)
#   eth0 10.201.1.2/24 ========== s1 10.201.1.1 | s2 10.201.2.1 ========== eth0 10.201.2.2/24
#   outpost serve, clients                ip_forward=1                    outpost serve, clients
#
# The hub host routes between the sites, which federate directly. PARTITION_CUT picks how
# site 1's link is cut:
#   link       `ip link set s1 down` on the hub's end of site 1's link: a cable pull. Site 1
#              loses carrier (its routes survive; the hub's connected route comes back by
#              itself on `up`), so its kernel sees its own sends fail.
#   blackhole  `ip rule … blackhole` on the hub for everything between site 1 and the rest:
#              the WAN fails beyond the first hop. Carrier stays up, packets vanish without
#              an error or ICMP, so TCP backs off exponentially: the harder case for recovery.
#   reset      the blackhole, and the sites' server-to-server connections are torn down as it
#              starts (`ss -K`, as a firewall or NAT that forgets them would): new connection
#              attempts then sit in SYN back-off while the path is dead.
#   direct     the hub host also runs an Outpost hub (hub.test, relaying between the two
#              sites), and only traffic *between* the sites is blackholed: each site still
#              reaches the hub. Messages must then arrive during the cut, through the hub,
#              once and in order, and the link must go back to the direct path after it.
#   https      only HTTPS passes between the sites: the hub drops forwarded TCP to port 5269
#              (`ip rule … ipproto tcp dport 5269 blackhole`), so the sites' links must move
#              to their WebSocket path (port 5281) during the cut, deliver there, and come back
#              to the direct path after it.
#
# The namespaces, their veth pairs and every process in them are created by this script and
# removed on any exit, success or failure. The addresses exist only inside them: none is
# connected to the root namespace.
#
# Needs root, iproute2 and python3 (standard library only).
# Env: OUTPOST_BIN             the outpost binary (default $CARGO_TARGET_DIR/debug/outpost)
#      PARTITION_CUT           link (default), blackhole, reset, direct or https, see above
#      PARTITION_MESSAGES      messages sent during the cut (50)
#      PARTITION_CUT_SECS      how long the link stays down (20)
#      PARTITION_RECOVERY_SECS longest accepted time from restore to full delivery (30)
#      PARTITION_FIRST_SECS    longest accepted time from restore to the first message, where
#                              nothing passes during the cut (1)
#      PARTITION_KEEP=1        keep the work directory (configs, logs) after the run
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${OUTPOST_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}/debug/outpost}"
COUNT="${PARTITION_MESSAGES:-50}"
CUT_SECS="${PARTITION_CUT_SECS:-20}"
RECOVERY_LIMIT="${PARTITION_RECOVERY_SECS:-30}"
FIRST_LIMIT="${PARTITION_FIRST_SECS:-1}"
KEEP="${PARTITION_KEEP:-0}"
CUT="${PARTITION_CUT:-link}"
# Outpost reads OUTPOST_* variables as configuration: start it with none of them.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^OUTPOST_' || true)

say() { printf '[partition %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { say "FAIL: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || { say "needs root (network namespaces)"; exit 2; }
command -v ip >/dev/null || { say "needs iproute2 (ip)"; exit 2; }
[[ $CUT == link || $CUT == blackhole || $CUT == reset || $CUT == direct || $CUT == https ]] ||
    { say "PARTITION_CUT must be link, blackhole, reset, direct or https"; exit 2; }
# The path the link must take during a cut that leaves one open.
declare -A FALLBACK=([direct]=hub [https]=websocket)
[[ -x "$BIN" ]] || { say "no outpost binary at $BIN (set OUTPOST_BIN)"; exit 2; }
PY="$(python3 -c 'import sys; print(sys.executable)')"
CLIENT="$here/xmpp_client.py"

S1="op-s1-$$"
S2="op-s2-$$"
HUB="op-hub-$$"
NAMESPACES=("$S1" "$S2" "$HUB")
declare -A ADDR=([1]=10.201.1.2 [2]=10.201.2.2)
PIDS=()
WORK="$(mktemp -d /tmp/op-partition.XXXXXX)"

# shellcheck source=tests/netns/lib.sh
source "$here/lib.sh"

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ $rc -ne 0 ]]; then
        for f in "$WORK"/site*/outpost.log "$WORK"/hub/outpost.log; do
            [[ -f $f ]] && { say "---- last lines of $f ----"; tail -n 40 "$f"; }
        done
        [[ -f $WORK/jerry.log ]] && { say "---- jerry received ----"; cat "$WORK/jerry.log"; }
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

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# ---------------------------------------------------------------- topology
say "building namespaces $S1, $HUB, $S2"
build_topology "$S1" "$HUB" "$S2" 10.201

# ---------------------------------------------------------------- servers
start_site() { # start_site N: site<N>.test in op-s<N>-PID, peer site<3-N>.test
    local n=$1 other=$((3 - $1)) dir="$WORK/site$1" hub_line="" hub_peer=""
    if [[ $CUT == direct ]]; then
        hub_line='hub = "hub.test"'
        hub_peer="\"hub.test\" = \"10.201.$n.1:5269\""
    fi
    local ws_listen="" ws_peer=""
    if [[ $CUT == https ]]; then
        ws_listen="s2s_websocket = [\"${ADDR[$n]}:5281\"]"
        ws_peer="[federation.websocket_peers]
\"site$other.test\" = \"wss://${ADDR[$other]}:5281/xmpp-websocket\""
    fi
    mkdir -p "$dir"
    cat >"$dir/outpost.toml" <<EOF
domains = ["site$n.test"]
data_dir = "$dir/data"

[listen]
c2s = ["${ADDR[$n]}:5222"]
c2s_tls = []
proxy65 = ["${ADDR[$n]}:7777"]
https = ["${ADDR[$n]}:5443"]
http = []
s2s = ["${ADDR[$n]}:5269"]
$ws_listen

[registration]
enabled = false

[auth]
allow_plaintext_without_tls = true

[log]
level = "info,outpost_server::s2s=debug"

[federation]
enabled = true
require_tls = true
# The default back-off (1 s doubling to 300 s): a path that comes back is found by the
# probes of a link with messages waiting (every 0.5 s), not by a short back-off. A short
# probe interval only makes a link on a fallback path go back to the direct one soon.
probe_interval_secs = 2
# The other site is listed below; DNS is never asked.
srv_lookup = false

$hub_line

[federation.peers]
"site$other.test" = "${ADDR[$other]}:5269"
$hub_peer

$ws_peer
EOF
    "$BIN" config check --config "$dir/outpost.toml" >/dev/null
    local user
    for user in "${@:2}"; do
        echo secret | "$BIN" user add --config "$dir/outpost.toml" --password-stdin "$user@site$n.test" \
            >/dev/null 2>&1 || die "cannot add $user@site$n.test"
    done
    ip netns exec "op-s$n-$$" "$BIN" serve --config "$dir/outpost.toml" \
        >"$dir/stdout" 2>"$dir/outpost.log" </dev/null &
    PIDS+=($!)
    eval "SERVER$n=$!"
}
listening() { grep -q "^listening s2s" "$1" && grep -q "^listening c2s-starttls" "$1"; }

start_hub() { # hub.test on the router host, relaying between the sites
    local dir="$WORK/hub"
    mkdir -p "$dir"
    cat >"$dir/outpost.toml" <<EOF
domains = ["hub.test"]
data_dir = "$dir/data"

[listen]
c2s = ["127.0.0.1:5222"]
c2s_tls = []
s2s = ["10.201.1.1:5269", "10.201.2.1:5269"]

[registration]
enabled = false

[log]
level = "info,outpost_server::s2s=debug"

[federation]
enabled = true
require_tls = true
probe_interval_secs = 2
srv_lookup = false
relay_for = ["site1.test", "site2.test"]

[federation.peers]
"site1.test" = "${ADDR[1]}:5269"
"site2.test" = "${ADDR[2]}:5269"
EOF
    "$BIN" config check --config "$dir/outpost.toml" >/dev/null
    ip netns exec "$HUB" "$BIN" serve --config "$dir/outpost.toml" \
        >"$dir/stdout" 2>"$dir/outpost.log" </dev/null &
    PIDS+=($!)
}

# The path and state of a site's link to the other site, from `outpost admin links --json`.
link_path() { # link_path N: prints "<path> <state>"
    local other=$((3 - $1))
    "$BIN" admin links --json --config "$WORK/site$1/outpost.toml" 2>/dev/null |
        "$PY" -c 'import json, sys
for l in json.load(sys.stdin):
    if l["remote"] == sys.argv[1]:
        print(l["path"], l["state"])' "site$other.test"
}
path_is() { [[ $(link_path "$1") == "$2 up" ]]; }

if [[ $CUT == direct ]]; then
    start_hub
    wait_until 60 "hub.test to listen" listening "$WORK/hub/stdout"
    say "hub.test is up on the router host"
fi

start_site 1 tom alice
start_site 2 jerry bob
wait_until 60 "site1.test to listen" listening "$WORK/site1/stdout"
wait_until 60 "site2.test to listen" listening "$WORK/site2/stdout"
say "site1.test and site2.test are up"

client() { # client SITE ROLE ARGS...: the test client, run on that site's host
    local n=$1
    shift
    ip netns exec "op-s$n-$$" "$PY" "$CLIENT" "$@" --host "${ADDR[$n]}" --domain "site$n.test"
}

# ---------------------------------------------------------------- across sites, link up
# jerry's inbox: the session that receives tom's messages (highest priority, so messages
# to jerry's bare JID come here) and answers pings.
client 2 recv --user jerry --resource inbox --priority 10 --peer tom@site1.test \
    --prefix msg --ready "$WORK/jerry.ready" --log "$WORK/jerry.log" &
JERRY=$!
PIDS+=($JERRY)
wait_until 30 "jerry's session" test -s "$WORK/jerry.ready"
client 1 ping --user tom --resource ping --peer jerry@site2.test ||
    die "tom <-> jerry before the cut"

# ---------------------------------------------------------------- the cut
if [[ $CUT == link ]]; then
    say "cutting site 1's link (ip link set s1 down on the hub)"
    ip -n "$HUB" link set s1 down
elif [[ $CUT == blackhole || $CUT == reset ]]; then
    say "cutting site 1 off (blackhole rules on the hub)"
    ip -n "$HUB" rule add priority 100 iif s1 blackhole
    ip -n "$HUB" rule add priority 101 iif s2 to 10.201.1.0/24 blackhole
    if [[ $CUT == reset ]]; then
        say "tearing down the sites' server-to-server connections"
        for n in 1 2; do
            ip netns exec "op-s$n-$$" ss -K '( sport = :5269 or dport = :5269 )' >/dev/null 2>&1 || true
        done
    fi
elif [[ $CUT == direct ]]; then
    say "cutting the sites off from each other, not from the hub (blackhole rules)"
    ip -n "$HUB" rule add priority 100 iif s1 to 10.201.2.0/24 blackhole
    ip -n "$HUB" rule add priority 101 iif s2 to 10.201.1.0/24 blackhole
else
    say "letting only HTTPS pass between the sites (TCP to port 5269 blackholed)"
    ip -n "$HUB" rule add priority 100 iif s1 ipproto tcp dport 5269 blackhole
    ip -n "$HUB" rule add priority 101 iif s2 ipproto tcp dport 5269 blackhole
fi
T_CUT=$(now)

# Chat inside each site, for the whole cut.
client 1 local-chat --user tom --resource local --peer-user alice --duration "$CUT_SECS" \
    >"$WORK/local1.out" 2>&1 &
LOCAL1=$!
client 2 local-chat --user jerry --resource local --peer-user bob --duration "$CUT_SECS" \
    >"$WORK/local2.out" 2>&1 &
LOCAL2=$!
PIDS+=($LOCAL1 $LOCAL2)

client 1 send --user tom --resource send --peer jerry@site2.test --prefix msg --count "$COUNT" ||
    die "tom's messages during the cut were not all accepted"

wait "$LOCAL1" || { cat "$WORK/local1.out"; die "chat inside site 1 stopped during the cut"; }
wait "$LOCAL2" || { cat "$WORK/local2.out"; die "chat inside site 2 stopped during the cut"; }
cat "$WORK/local1.out" "$WORK/local2.out"
kill -0 "$JERRY" 2>/dev/null || die "jerry's session ended during the cut"
has_all() {
    kill -0 "$JERRY" 2>/dev/null || die "jerry's session ended"
    [[ -f $WORK/jerry.log && $(wc -l <"$WORK/jerry.log") -ge $COUNT ]]
}
if [[ -n ${FALLBACK[$CUT]:-} ]]; then
    # Another path still passes: the messages take it, during the cut.
    wait_until "$RECOVERY_LIMIT" "all $COUNT messages at jerry over ${FALLBACK[$CUT]}" has_all
    T_HUB=$(awk -v n="$COUNT" 'NR == n { print $1 }' "$WORK/jerry.log")
    say "all $COUNT messages at jerry $(elapsed "$T_CUT" "$T_HUB") s after the cut, link still cut"
    path_is 1 "${FALLBACK[$CUT]}" ||
        die "site1's link to site2 is '$(link_path 1)', not up over ${FALLBACK[$CUT]}"
elif [[ -s $WORK/jerry.log ]]; then
    die "jerry received messages while the link was down: the cut did not cut"
fi

# ---------------------------------------------------------------- restore
if [[ $CUT == link ]]; then
    ip -n "$HUB" link set s1 up
else
    ip -n "$HUB" rule del priority 100
    ip -n "$HUB" rule del priority 101
fi
T_UP=$(now)
say "link restored after $(elapsed "$T_CUT" "$T_UP") s; waiting for jerry to have all $COUNT"
wait_until "$RECOVERY_LIMIT" "all $COUNT messages at jerry" has_all
T_LAST=$(awk -v n="$COUNT" 'NR == n { print $1 }' "$WORK/jerry.log")
T_FIRST=$(awk 'NR == 1 { print $1 }' "$WORK/jerry.log")
RECOVERY=$(elapsed "$T_UP" "$T_LAST")
if [[ -z ${FALLBACK[$CUT]:-} ]]; then
    FIRST=$(elapsed "$T_UP" "$T_FIRST")
    say "recovery: first message $FIRST s, all $COUNT messages $RECOVERY s after the link came back"
    awk -v f="$FIRST" -v l="$FIRST_LIMIT" 'BEGIN { exit !(f <= l) }' ||
        die "the first message came $FIRST s after the link's return, more than $FIRST_LIMIT s"
fi

# Chat across the sites works again (jerry's inbox answers the ping).
client 1 ping --user tom --resource ping --peer jerry@site2.test || die "tom <-> jerry after the cut"

# A last message rides the same outbox behind the others: any repeat of an earlier one
# would reach jerry before it.
client 1 send --user tom --resource send --peer jerry@site2.test --body "msg end" ||
    die "the last message was not accepted"
wait "$JERRY" || die "jerry's session failed"
expected="$(seq 0 $((COUNT - 1)) | sed 's/^/msg /'; echo "msg end")"
got="$(cut -d' ' -f2- "$WORK/jerry.log")"
if [[ $got != "$expected" ]]; then
    diff <(echo "$expected") <(echo "$got") | head -n 20 || true
    die "jerry's messages are not exactly once and in order"
fi
say "jerry received all $COUNT messages exactly once, in order"
kill -0 "$SERVER1" && kill -0 "$SERVER2" || die "a server exited"
if [[ -n ${FALLBACK[$CUT]:-} ]]; then
    # Once the direct path takes connections again, the link leaves the fallback.
    wait_until 30 "site1's link up on the direct path again" path_is 1 direct
    say "site1's link to site2 is up on the direct path again"
    say "RESULT ($CUT cut): $COUNT messages sent while the direct path was cut, all delivered" \
        "once and in order over ${FALLBACK[$CUT]} $(elapsed "$T_CUT" "$T_HUB") s after the cut" \
        "began; back on the direct path after it; chat inside both sites went on"
    exit 0
fi
awk -v r="$RECOVERY" -v lim="$RECOVERY_LIMIT" 'BEGIN { exit !(r <= lim) }' ||
    die "recovery took $RECOVERY s, more than $RECOVERY_LIMIT s"
say "RESULT ($CUT cut): $COUNT messages sent during a ${CUT_SECS}s cut, all delivered once and in order" \
    "$RECOVERY s after the link came back (limit ${RECOVERY_LIMIT}s); chat inside both sites went on"
