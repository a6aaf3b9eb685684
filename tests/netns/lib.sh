# Shared by the network-namespace tests: polling with a deadline, the two-sites-and-a-hub
# topology, and stopping what a test started in its namespaces. The caller defines `die`.

ns_exists() { ip netns list 2>/dev/null | awk '{ print $1 }' | grep -qx -- "$1"; }

# wait_until SECS DESCRIPTION CMD...: polls CMD until it succeeds or the deadline passes.
wait_until() {
    local secs=$1 what=$2
    shift 2
    local deadline
    deadline=$(($(date +%s%N) + secs * 1000000000))
    until "$@"; do
        (($(date +%s%N) < deadline)) || die "timed out after ${secs}s waiting for $what"
        sleep 0.05 # polling interval
    done
}

# build_topology SITE1 HUB SITE2 NET: three namespaces, each site linked to the hub by a
# veth pair (the hub's ends are s1 and s2), site N at NET.N.2 with the hub at NET.N.1 as
# its default route, the hub forwarding between them. Both ends of each pair are created
# inside their namespaces: nothing touches the root namespace.
build_topology() {
    local s1=$1 hub=$2 s2=$3 net=$4 ns n site
    for ns in "$s1" "$hub" "$s2"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip netns exec "$hub" sysctl -qw net.ipv4.ip_forward=1
    for n in 1 2; do
        site=$s1
        [[ $n == 2 ]] && site=$s2
        ip link add eth0 netns "$site" type veth peer name "s$n" netns "$hub"
        ip -n "$hub" addr add "$net.$n.1/24" dev "s$n"
        ip -n "$hub" link set "s$n" up
        ip -n "$site" addr add "$net.$n.2/24" dev eth0
        ip -n "$site" link set eth0 up
        ip -n "$site" route add default via "$net.$n.1"
    done
}

# stop_namespaces PID... -- NS...: stops the given processes and whatever runs in the
# namespaces (SIGTERM, SIGKILL after 5 s), then deletes the namespaces (and with them their
# veths) and their /etc/netns entries.
stop_namespaces() {
    local victims=() namespaces=() pid ns deadline
    while [[ $# -gt 0 && $1 != -- ]]; do victims+=("$1"); shift; done
    [[ $# -gt 0 ]] && shift
    namespaces=("$@")
    for ns in "${namespaces[@]}"; do
        ns_exists "$ns" && victims+=($(ip netns pids "$ns" 2>/dev/null))
    done
    for pid in "${victims[@]}"; do kill "$pid" 2>/dev/null; done
    deadline=$((SECONDS + 5))
    for pid in "${victims[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    done
    wait 2>/dev/null
    for ns in "${namespaces[@]}"; do
        ns_exists "$ns" && ip netns del "$ns"
        rm -rf "/etc/netns/$ns"
    done
}
