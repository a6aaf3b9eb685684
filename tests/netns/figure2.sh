#!/usr/bin/env bash
# The paper's Figure 2 in network namespaces: site 1 (site1.test: alice and bob on its LAN),
# site 2 (site2.test: carol and dave) and the hub (hub.test) on the WAN between them, which
# relays between the sites and keeps a replica of each one's directory. Real slixmpp clients find
# their server the way XMPP clients do, through DNS: dnsmasq in site 1's namespace serves
# _xmpp-client._tcp.site1.test with the site first and the hub second, and slixmpp (with
# aiodns) follows the records.
#
# Scenario (a): site 1's server is killed with SIGKILL. alice and bob log in at the hub
# within 5 s with the same passwords, find their rosters, chat with each other and with
# carol and dave (site 2); what carol and dave sent alice right after the kill arrives.
# Site 1 restarts and catches up, the hub sends alice and bob home (<see-other-host/>), and
# nothing was lost or duplicated. erin and frank, on site 1's LAN with Outpost's own client
# (`outpost chat --headless`: erin's finds the site then the hub through SRV, frank's is
# given both), become friends and open a direct link; they keep chatting over it when the
# site dies, move to the hub by themselves, chat there once their link is broken (its TCP
# connections aborted with `ss -K`), and are back on the site once it returns, each
# message shown once.
# Scenario (b): site 1 is cut off from the WAN again; alice's second device, away, adds a
# contact and changes her vCard at the hub, while her first renames bob at the site. After
# the heal both servers hold the same roster and vCard, with every change. (And in (a),
# alice changes her vCard at the hub; at home she finds it.)
#
# Scenario (c): site 1 is cut off from the WAN (its cable at the hub pulled) while its LAN
# works. alice, away, logs in at the hub (which cannot reach the site) with her password;
# on the LAN she changes it at the site. After the heal the hub catches up; cut off again,
# the hub refuses the old password and takes the new one.
#
# Scenario (d): site 1 is stopped and DIRECTORY_ACCOUNTS accounts with DIRECTORY_CONTACTS
# contacts each are written into its database (its triggers log them); it starts again and
# ships them, and the hub is killed with SIGKILL half-way. Restarted, it must end with
# exactly the site's directory.
#
# Needs root, iproute2, dnsmasq and python3 with slixmpp and aiodns (tests/interop/run.sh
# installs them). The namespaces and /etc/netns entries it makes are removed at the end.
# Env: OUTPOST_BIN        the outpost binary (default $CARGO_TARGET_DIR/debug/outpost)
#      DIRECTORY_ACCOUNTS, DIRECTORY_CONTACTS   the directory of scenario (d) (1000 × 40)
#      FIGURE2_KEEP=1     keep the work directory (configs, logs) after the run
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${OUTPOST_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}/debug/outpost}"
KEEP="${FIGURE2_KEEP:-0}"
ACCOUNTS="${DIRECTORY_ACCOUNTS:-1000}"
CONTACTS="${DIRECTORY_CONTACTS:-40}"
# Outpost reads OUTPOST_* variables as configuration: start it with none of them.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^OUTPOST_' || true)

say() { printf '[figure2 %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || { say "needs root (network namespaces)"; exit 2; }
command -v ip >/dev/null || { say "needs iproute2 (ip)"; exit 2; }
command -v dnsmasq >/dev/null || { say "needs dnsmasq"; exit 2; }
[[ -x "$BIN" ]] || { say "no outpost binary at $BIN (set OUTPOST_BIN)"; exit 2; }
PY="$(python3 -c 'import sys; print(sys.executable)')"
"$PY" -c 'import slixmpp, aiodns' 2>/dev/null || { say "needs slixmpp and aiodns (python3)"; exit 2; }
CLIENTS="$here/figure2_clients.py"

S1="op-f1-$$"
S2="op-f2-$$"
HUB="op-fh-$$"
NAMESPACES=("$S1" "$S2" "$HUB")
SITE1=10.203.1.2
SITE2=10.203.2.2
HUB1=10.203.1.1 # the hub, as site 1 sees it
HUB2=10.203.2.1 # the hub, as site 2 sees it
PIDS=()
WORK="$(mktemp -d /tmp/op-figure2.XXXXXX)"

# shellcheck source=tests/netns/lib.sh
source "$here/lib.sh"

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ $rc -ne 0 ]]; then
        for f in "$WORK"/*/outpost.log "$WORK"/*.out; do
            [[ -f $f ]] && { say "---- last lines of $f ----"; tail -n 30 "$f"; }
        done
    fi
    stop_namespaces "${PIDS[@]}" -- "${NAMESPACES[@]}"
    if [[ $KEEP == 1 ]]; then say "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    [[ $rc -eq 0 ]] && say "PASS" || say "FAILED (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- topology
say "building namespaces $S1, $HUB, $S2"
build_topology "$S1" "$HUB" "$S2" 10.203

# DNS for site 1's clients: the site first, the hub second (`ip netns exec` gives the
# namespace /etc/netns/<ns>/resolv.conf as its /etc/resolv.conf).
mkdir -p "/etc/netns/$S1"
echo "nameserver 127.0.0.1" >"/etc/netns/$S1/resolv.conf"
cat >"$WORK/dnsmasq.conf" <<EOF
no-resolv
no-hosts
listen-address=127.0.0.1
bind-interfaces
srv-host=_xmpp-client._tcp.site1.test,site1.test,5222,10
srv-host=_xmpp-client._tcp.site1.test,hub.test,5222,20
host-record=site1.test,$SITE1
host-record=hub.test,$HUB1
host-record=site2.test,$SITE2
EOF
ip netns exec "$S1" dnsmasq --conf-file="$WORK/dnsmasq.conf" --pid-file="$WORK/dnsmasq.pid" \
    --keep-in-foreground --log-queries --log-facility="$WORK/dnsmasq.log" &
PIDS+=($!)

# ---------------------------------------------------------------- servers
write_config() { # write_config NAME ROLE DOMAIN C2S S2S EXTRA PEERS...
    local name=$1 role=$2 domain=$3 c2s=$4 s2s=$5 extra=$6
    shift 6
    mkdir -p "$WORK/$name"
    {
        cat <<EOF
role = "$role"
domains = ["$domain"]
data_dir = "$WORK/$name/data"

[listen]
c2s = ["$c2s:5222"]
c2s_tls = []
proxy65 = []
https = []
http = []
s2s = ["$s2s:5269"]

[log]
level = "info"

[federation]
enabled = true
require_tls = true
probe_interval_secs = 2
srv_lookup = false
$extra

[federation.peers]
EOF
        printf '%s\n' "$@"
    } >"$WORK/$name/outpost.toml"
}
write_config site1 site site1.test "$SITE1" "$SITE1" 'hub = "hub.test"' \
    "\"hub.test\" = \"$HUB1:5269\"" "\"site2.test\" = \"$SITE2:5269\""
write_config site2 site site2.test "$SITE2" "$SITE2" 'hub = "hub.test"' \
    "\"hub.test\" = \"$HUB2:5269\"" "\"site1.test\" = \"$SITE1:5269\""
write_config hub hub hub.test 0.0.0.0 0.0.0.0 'relay_for = ["site1.test", "site2.test"]' \
    "\"site1.test\" = \"$SITE1:5269\"" "\"site2.test\" = \"$SITE2:5269\""

declare -A NS_OF=([site1]="$S1" [site2]="$S2" [hub]="$HUB")
declare -A PID_OF=()
listening() { grep -c '^listening c2s' "$WORK/$1/outpost.stdout" 2>/dev/null || true; }
listening_more() { [[ $(listening "$1") -gt $2 ]]; }
start() { # start NAME: runs the server in its namespace and waits for its listeners
    local name=$1 before
    before=$(listening "$name")
    ip netns exec "${NS_OF[$name]}" "$BIN" serve --config "$WORK/$name/outpost.toml" \
        >>"$WORK/$name/outpost.stdout" 2>>"$WORK/$name/outpost.log" &
    PID_OF[$name]=$!
    PIDS+=($!)
    wait_until 20 "$name listening" listening_more "$name" "${before:-0}"
}

for name in hub site1 site2; do start "$name"; done
say "hub.test, site1.test and site2.test are up"

add_user() { # add_user NAME JID PASSWORD
    printf '%s\n' "$3" | "$BIN" user add "$2" --password-stdin \
        --config "$WORK/$1/outpost.toml" >/dev/null
}
add_user site1 alice@site1.test alice-password
add_user site1 bob@site1.test bob-password
add_user site2 carol@site2.test carol-password
add_user site2 dave@site2.test dave-password
# Two users of Outpost's own client (outpost chat --headless) on site 1's LAN too.
add_user site1 erin@site1.test erin-password
add_user site1 frank@site1.test frank-password

# The clients trust each server's generated certificate; the hub's names both sites too.
CAS=()
for name in site1 site2 hub; do CAS+=(--cafile "$WORK/$name/data/tls/cert.pem"); done

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

for name in carol dave; do
    in_ns "$S2" "$PY" "$CLIENTS" peer "${CAS[@]}" --jid "$name@site2.test" --host "$SITE2" \
        --log "$WORK/$name.log" --send-when "$WORK/site1-killed" >"$WORK/$name.out" 2>&1 &
    PIDS+=($!)
done

say "alice and bob, at site 1, befriend each other and carol"
in_ns "$S1" "$PY" "$CLIENTS" setup "${CAS[@]}" >"$WORK/setup.out" 2>&1 ||
    { cat "$WORK/setup.out"; die "setting up the rosters failed"; }

caught_up() {
    local head position
    head=$("$BIN" admin replication --json --config "$WORK/site1/outpost.toml" |
        "$PY" -c 'import json,sys; v=json.load(sys.stdin); print(v["head"] if v["lag"] == 0 else -1)')
    position=$("$BIN" admin replication --json --config "$WORK/hub/outpost.toml" |
        "$PY" -c 'import json,sys; print([s for s in json.load(sys.stdin)["sites"] if s["domain"] == "site1.test"][0]["position"])')
    [[ $head -gt 0 && $position -ge $head ]]
}
wait_until 20 "the hub to hold site 1's directory" caught_up
say "the hub holds site 1's directory"

# Outpost's own client: given the site first and the hub second, it must move to the hub
# by itself when the site dies, and come back. Commands go in through a FIFO held open.
declare -A CHAT_FD=()
start_chat() { # start_chat NAME PASSWORD [--server HOST:PORT]...
    local name=$1 password=$2 fd
    shift 2
    mkfifo "$WORK/$name.in"
    in_ns "$S1" "$BIN" chat --headless --jid "$name@site1.test" "$@" \
        --state-dir "$WORK/$name-state" --downloads "$WORK/$name-files" \
        <"$WORK/$name.in" >"$WORK/$name.events" 2>"$WORK/$name.out" &
    PIDS+=($!)
    exec {fd}>"$WORK/$name.in"
    CHAT_FD[$name]=$fd
    printf '%s\n' "$password" >&"$fd"
}
chat() { printf '%s\n' "$2" >&"${CHAT_FD[$1]}"; } # chat NAME JSON-COMMAND
has_event() { grep -qF -- "$2" "$WORK/$1.events"; } # has_event NAME TEXT
count_events() { grep -cF -- "$2" "$WORK/$1.events" || true; }
on_server() { # on_server NAME ADDRESS: its last connected event names ADDRESS
    grep -F '"event":"connected"' "$WORK/$1.events" | tail -n 1 | grep -qF "\"server\":\"$2\""
}
# erin's client is given no server and finds them through DNS (SRV: the site, then the
# hub); frank's is given both addresses.
on_site() { on_server erin site1.test:5222 && on_server frank site1.test:5222; }
on_hub() { on_server erin hub.test:5222 && on_server frank hub.test:5222; }
start_chat erin erin-password
start_chat frank frank-password --server site1.test:5222 --server hub.test:5222
wait_until 20 "erin and frank on site 1" on_site
say "erin and frank (outpost chat) are on site 1"
# They become friends; on one LAN, their clients open a direct link.
chat erin '{"cmd":"add","jid":"frank@site1.test"}'
wait_until 20 "frank to hear erin's request" has_event frank '"event":"subscription","from":"erin@site1.test"'
chat frank '{"cmd":"add","jid":"erin@site1.test"}'
wait_until 20 "erin to hear frank's request" has_event erin '"event":"subscription","from":"frank@site1.test"'
chat erin '{"cmd":"add","jid":"frank@site1.test"}'
direct() { has_event erin '"with":"frank@site1.test","path":"direct"' &&
    has_event frank '"with":"erin@site1.test","path":"direct"'; }
wait_until 20 "a direct link between erin and frank" direct
say "erin and frank (outpost chat) have a direct link"

# ---------------------------------------------------------------- (a) kill -9 site 1
kill -9 "${PID_OF[site1]}"
wait "${PID_OF[site1]}" 2>/dev/null || true
touch "$WORK/site1-killed"
say "site 1's server killed (SIGKILL); carol and dave write to alice"

in_ns "$S1" "$PY" "$CLIENTS" failover "${CAS[@]}" --hub "$HUB1" --site "$SITE1" \
    --ready "$WORK/at-hub" --log "$WORK/received.json" >"$WORK/failover.out" 2>&1 &
FAILOVER=$!
PIDS+=($FAILOVER)
at_hub() {
    kill -0 "$FAILOVER" 2>/dev/null || { cat "$WORK/failover.out"; die "the clients gave up"; }
    [[ -f $WORK/at-hub ]]
}
wait_until 60 "alice and bob at the hub" at_hub
cat "$WORK/failover.out" >&2
SHOWN=$(wc -l <"$WORK/failover.out")

# Their site is gone; their link is not.
chat erin '{"cmd":"send","to":"frank@site1.test","body":"site 1 is down","id":"e0"}'
wait_until 20 "frank to get erin's message over the link" \
    has_event frank '"from":"erin@site1.test","body":"site 1 is down","id":"e0","path":"direct"'
wait_until 20 "erin's direct message to be delivered" \
    has_event erin '"id":"e0","state":"delivered"'
say "erin and frank (outpost chat) kept chatting over their direct link with site 1 dead"
wait_until 20 "erin and frank at the hub" on_hub
has_event erin '"why":"failover"' || die "erin's client did not say it failed over"
# Their link breaks (its TCP connections are aborted): the conversation goes over the hub.
# erin's client offered the link (its full JID is the smaller), so it listens for it.
erin_pids=$(pgrep -f -- "--jid erin@site1.test" | paste -sd'|')
link_port=$(in_ns "$S1" ss -tlnpH | grep -E "pid=($erin_pids)," | awk '{print $4}' | sed 's/.*://' | head -n 1)
[[ -n $link_port ]] || die "erin's client listens for no direct link"
# A message is in flight when it breaks: frank's client is stopped, erin's message sits in
# his socket, unread, without a receipt; the link is aborted and frank's client goes on.
# erin's client sends it again over the hub (the hub acknowledges it: queued); frank, who
# may still read the first copy from his socket, is shown it once.
frank_pids=$(pgrep -f -- "--jid frank@site1.test" | paste -sd' ')
kill -STOP $frank_pids
chat erin '{"cmd":"send","to":"frank@site1.test","body":"in flight","id":"e2"}'
in_flight() { in_ns "$S1" ss -tnH "( dport = :$link_port )" | awk '$1 > 0 {found=1} END {exit !found}'; }
wait_until 20 "erin's message to wait in frank's socket" in_flight
in_ns "$S1" ss -K -tn "( sport = :$link_port or dport = :$link_port )" >/dev/null
kill -CONT $frank_pids
link_gone() { count_events erin '"path":"server"' | grep -qv '^0$' &&
    count_events frank '"path":"server"' | grep -qv '^0$'; }
wait_until 20 "erin and frank to see their link gone" link_gone
# Sent again over the hub, the hub acknowledges it (queued), unless frank's receipt
# overtakes that acknowledgement (the client then never shows queued: it is old news).
resent() { has_event erin '"id":"e2","state":"queued"' || has_event erin '"id":"e2","state":"delivered"'; }
wait_until 20 "the message in flight to be sent again over the hub" resent
wait_until 20 "the message in flight to reach frank" \
    has_event frank '"from":"erin@site1.test","body":"in flight","id":"e2"'
wait_until 20 "the message in flight to be delivered" has_event erin '"id":"e2","state":"delivered"'
[[ $(count_events frank '"body":"in flight","id":"e2"') == 1 ]] ||
    die "frank was shown the message in flight more than once"
chat erin '{"cmd":"send","to":"frank@site1.test","body":"over the hub","id":"e1"}'
wait_until 20 "frank to get erin's message at the hub" \
    has_event frank '"from":"erin@site1.test","body":"over the hub","id":"e1","path":"server"'
wait_until 20 "erin's message to be delivered" \
    has_event erin '"id":"e1","state":"delivered"'
say "erin and frank (outpost chat) moved to the hub by themselves and chatted there once their link broke"

say "site 1 restarts"
start site1
wait "$FAILOVER" || { cat "$WORK/failover.out"; die "alice and bob were not brought home"; }
tail -n +"$((SHOWN + 1))" "$WORK/failover.out" >&2
for name in carol dave; do
    for from in alice bob; do
        grep -q "\"from\": \"$from@site1.test\", \"body\": \"hello from the hub\"" "$WORK/$name.log" ||
            die "$name never got $from's message from the hub"
    done
done
grep -q 'query\[SRV\] _xmpp-client._tcp.site1.test' "$WORK/dnsmasq.log" ||
    die "the clients never asked DNS for site 1's SRV records"
wait_until 30 "erin and frank back on site 1" on_site
for name in erin frank; do
    grep -F '"event":"connected"' "$WORK/$name.events" | tail -n 1 | grep -qF '"why":"returned"' ||
        die "$name's client did not say it returned home"
done
chat frank '{"cmd":"send","to":"erin@site1.test","body":"back home","id":"f1"}'
wait_until 20 "erin to get frank's message at home" \
    has_event erin '"from":"frank@site1.test","body":"back home"'
for text in '"body":"site 1 is down"' '"body":"in flight"' '"body":"over the hub"' '"body":"back home"'; do
    for name in erin frank; do
        n=$(count_events "$name" "$text")
        [[ $n -le 1 ]] || die "$name was shown $text $n times"
    done
done
chat erin '{"cmd":"quit"}'
chat frank '{"cmd":"quit"}'
say "erin and frank (outpost chat) came back to site 1 by themselves; every message shown once"
say "RESULT: site 1 killed; alice and bob logged in at the hub through DNS, chatted with each other and with carol and dave; site 1 came back, they were sent home and alice got carol's and dave's messages from the outage, each message once; what alice wrote at the hub was at home"

# ---------------------------------------------------------------- (c) a new password during a partition
# The cable between site 1 and the WAN (the hub's end of it): nothing passes, the hub's own
# address included, while site 1's LAN (its namespace) works.
cut_site1() { ip -n "$HUB" link set s1 down; }
heal_site1() { ip -n "$HUB" link set s1 up; }
away() { in_ns "$HUB" "$PY" "$CLIENTS" "$@" "${CAS[@]}" --jid alice@site1.test --host "$HUB1"; }
cut_site1
say "site 1 cut off from the WAN"
away login --password alice-password --expect ok || die "alice could not log in at the hub"
in_ns "$S1" "$PY" "$CLIENTS" passwd "${CAS[@]}" --jid alice@site1.test --host "$SITE1" \
    --password alice-password --new alice-new-password || die "the password change at the site failed"
heal_site1
say "healed; waiting for the hub to catch up"
wait_until 60 "the hub to catch up after the heal" caught_up
cut_site1
say "site 1 cut off again"
away login --password alice-password --expect refused || die "the old password still works at the hub"
away login --password alice-new-password --expect ok || die "the new password does not work at the hub"
heal_site1
say "RESULT: the password changed at the site during the partition is the only one the hub takes after it"

# ---------------------------------------------------------------- (b) both sides write during a partition
# alice's second device, away, logs in at the hub while site 1 is cut off again; it adds
# a contact and changes her vCard there, while on the LAN her first device renames bob at
# the site. After the heal both servers must hold the union (point 4's rules).
PASSWORD=alice-new-password
cut_site1
say "site 1 cut off from the WAN again; alice writes on both sides"
away edit --password "$PASSWORD" --contact dave@site2.test=Dave --vcard "Alice, away" ||
    die "alice's changes at the hub failed"
in_ns "$S1" "$PY" "$CLIENTS" edit "${CAS[@]}" --jid alice@site1.test --host "$SITE1" \
    --password "$PASSWORD" --contact bob@site1.test=Bobby || die "alice's change at the site failed"
heal_site1
unmerged() {
    "$BIN" admin replication --json --config "$WORK/hub/outpost.toml" |
        "$PY" -c 'import json,sys; print([s for s in json.load(sys.stdin)["sites"] if s["domain"] == "site1.test"][0]["unmerged"])'
}
merged() { caught_up && [[ $(unmerged) == 0 ]]; }
wait_until 90 "both sides to have each other's writes" merged
directory_of() { # directory_of DB: alice's roster and vCard, one line each
    "$PY" - "$1" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
alice = "alice@site1.test"
print(db.execute("SELECT contact, name, subscription, ask FROM roster_items WHERE owner = ? "
                 "ORDER BY contact", (alice,)).fetchall())
print(db.execute("SELECT vcard FROM vcards WHERE owner = ?", (alice,)).fetchall())
PY
}
at_site=$(directory_of "$WORK/site1/data/outpost.db")
at_hub=$(directory_of "$WORK/hub/data/outpost.db")
[[ $at_site == "$at_hub" ]] || die "after the heal the site holds
$at_site
and the hub
$at_hub"
in_ns "$S1" "$PY" "$CLIENTS" check "${CAS[@]}" --jid alice@site1.test --host "$SITE1" \
    --password "$PASSWORD" --contact dave@site2.test=Dave --contact bob@site1.test=Bobby \
    --vcard "Alice, away" || die "alice does not find both sides' changes at home"
say "RESULT: written on both sides during a partition, alice's roster and vCard are the same at the site and the hub after the heal, with every change"

# ---------------------------------------------------------------- (d) kill -9 the hub mid-way
say "site 1 stops; $ACCOUNTS accounts × $CONTACTS contacts are written into its database"
kill "${PID_OF[site1]}"
wait "${PID_OF[site1]}" 2>/dev/null || true
"$PY" - "$WORK/site1/data/outpost.db" "$ACCOUNTS" "$CONTACTS" <<'PY'
import os, sqlite3, sys
path, accounts, contacts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
db = sqlite3.connect(path)
jid = lambda i: f"user{i}@site1.test"
with db:
    db.executemany("INSERT INTO accounts VALUES (?, ?, 4096, ?, ?, ?, 4096, ?, ?)",
                   ((jid(i), os.urandom(16), os.urandom(20), os.urandom(20), os.urandom(16),
                     os.urandom(32), os.urandom(32)) for i in range(accounts)))
    db.executemany("INSERT INTO roster_items (owner, contact, name, subscription, ask, approved) "
                   "VALUES (?, ?, ?, 'both', 0, 0)",
                   ((jid(i), jid((i + k) % accounts), f"c{k}") for i in range(accounts)
                    for k in range(1, contacts + 1)))
PY
hub_position() {
    "$BIN" admin replication --json --config "$WORK/hub/outpost.toml" |
        "$PY" -c 'import json,sys; print([s for s in json.load(sys.stdin)["sites"] if s["domain"] == "site1.test"][0]["position"])'
}
BEFORE=$(hub_position)
start site1
moved() { [[ $(hub_position) -gt $BEFORE ]]; }
wait_until 30 "the hub to take the first batch" moved
kill -9 "${PID_OF[hub]}"
wait "${PID_OF[hub]}" 2>/dev/null || true
say "the hub killed (SIGKILL) at position $(hub_position), with $BEFORE before the new entries"
caught_up && die "the hub had everything before it was killed: make the directory bigger"
start hub
wait_until 120 "the restarted hub to catch up" caught_up
count() { # count DB SQL
    "$PY" -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])' "$1" "$2"
}
for table in "accounts WHERE jid" "roster_items WHERE owner"; do
    sql="SELECT COUNT(*) FROM $table LIKE '%@site1.test'"
    at_site=$(count "$WORK/site1/data/outpost.db" "$sql")
    at_hub=$(count "$WORK/hub/data/outpost.db" "$sql")
    [[ $at_site == "$at_hub" ]] || die "$table: $at_site at the site, $at_hub at the hub"
    say "${table%% *}: $at_site at the site and at the hub"
done
snapshots=$("$BIN" admin replication --json --config "$WORK/hub/outpost.toml" |
    "$PY" -c 'import json,sys; print([s for s in json.load(sys.stdin)["sites"] if s["domain"] == "site1.test"][0]["snapshots"])')
[[ $snapshots == 1 ]] || die "the hub took $snapshots snapshots: it should have resumed from its position"
say "RESULT: the hub, killed half-way through $((ACCOUNTS * (CONTACTS + 1))) records, resumed and holds exactly the site's directory"

