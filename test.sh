#!/usr/bin/env bash
# Runs every Outpost test: formatting and lints, unit tests, the store battery, integration
# tests on real sockets, and the slixmpp interop suite against a real `outpost serve`.
# Installs what the interop suite needs (slixmpp from PyPI) when it is missing. Ends with the
# partition test in network namespaces (tests/netns/partition.sh), which needs root and
# iproute2 (installed with apt-get when `ip` is missing).
set -euo pipefail
cd "$(dirname "$0")"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "interop suite (slixmpp)"
cargo build -p outpost --locked
OUTPOST_BIN="$CARGO_TARGET_DIR/debug/outpost" tests/interop/run.sh

step "partition test (network namespaces)"
if [[ $(id -u) -ne 0 ]]; then
    echo "the partition test needs root (network namespaces): run ./test.sh as root" >&2
    exit 1
else
    if ! command -v ip >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 >/dev/null; }
    fi
    # A cable pull (site 1 loses carrier), a silent WAN failure beyond the first hop, a cut
    # between the sites that leaves the hub reachable (messages go through the hub), and a
    # firewall that passes only HTTPS (messages go over WebSocket).
    for cut in link blackhole direct https; do
        PARTITION_CUT=$cut OUTPOST_BIN="$CARGO_TARGET_DIR/debug/outpost" tests/netns/partition.sh
    done
fi

step "all tests passed"
