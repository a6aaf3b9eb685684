#!/usr/bin/env bash
# Runs every Outpost test: formatting, lints and docs, the dependency policy (cargo-deny,
# deny.toml) and the check that outpost-proto depends on no runtime, unit tests, the store
# battery, integration tests on real sockets, and the interop suites against a real
# `outpost serve`. Installs what it needs when missing (cargo-deny from crates.io, slixmpp
# from PyPI, Debian packages). Ends with the partition test in network namespaces
# (tests/netns/partition.sh), which needs root and iproute2 (installed with apt-get when `ip`
# is missing).
set -euo pipefail
cd "$(dirname "$0")"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items --locked

step "cargo deny (licences, duplicates, sources; deny.toml)"
if ! cargo deny --version >/dev/null 2>&1; then
    cargo install cargo-deny --locked --version 0.20.2
fi
# The advisory database is on GitHub, which CI's network does not reach (see deny.toml).
checks="licenses bans sources"
[[ "${OUTPOST_DENY_ADVISORIES:-0}" == 1 ]] && checks="$checks advisories"
# shellcheck disable=SC2086
cargo deny --locked check $checks

step "outpost-proto depends on no runtime"
# proto is sans IO (ARCHITECTURE.md): no async runtime, executor, network, TLS or clock
# crate may enter its normal dependencies. (futures-core, trait definitions only, comes
# with rxml's `std` feature and runs nothing.)
runtime=$(cargo tree -p outpost-proto -e normal --prefix none --locked \
    | grep -E '^(tokio[a-z-]*|async-std|async-io|smol|mio|futures|futures-util|futures-executor|hyper|socket2|rustls|chrono|time) ' \
    || true)
if [[ -n "$runtime" ]]; then
    echo "outpost-proto must not depend on: $runtime" >&2
    exit 1
fi

step "cargo test"
# The terminal interface of `outpost chat` is driven in tmux (crates/outpost/tests/it/chat.rs).
if ! command -v tmux >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q tmux >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q tmux >/dev/null; }
fi
# The store battery runs against a real PostgreSQL server it starts itself
# (crates/store/tests/it/postgres.rs): Debian's binaries are all it needs.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }
fi
# The cluster tests start their own NATS servers on loopback (outpost_testkit::nats); the
# package's own service is not wanted.
if ! command -v nats-server >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server >/dev/null; }
    systemctl disable --now nats-server >/dev/null 2>&1 || true
fi
cargo test --workspace --locked

step "systemd unit (contrib/outpost.service)"
if command -v systemd-analyze >/dev/null 2>&1; then
    unit_dir=$(mktemp -d)
    sed "s#/usr/local/bin/outpost#$CARGO_TARGET_DIR/debug/outpost#" contrib/outpost.service \
        > "$unit_dir/outpost.service"
    systemd-analyze verify "$unit_dir/outpost.service"
    rm -rf "$unit_dir"
else
    echo "systemd-analyze not installed: unit not verified"
fi

step "interop suite (slixmpp)"
cargo build -p outpost --locked
OUTPOST_BIN="$CARGO_TARGET_DIR/debug/outpost" tests/interop/run.sh

step "interop suite against a two-node cluster (PostgreSQL, NATS; clients on both nodes)"
OUTPOST_INTEROP_CLUSTER=1 OUTPOST_BIN="$CARGO_TARGET_DIR/debug/outpost" tests/interop/run.sh

step "web client (rebuilt and compared with the committed bundle; unit tests; Chromium)"
if ! command -v npm >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null; }
fi
web/build.sh
if ! git diff --quiet -- crates/web/assets; then
    git diff --stat -- crates/web/assets >&2
    echo "crates/web/assets differs from what web/build.sh makes: run it and commit the result" >&2
    exit 1
fi
web/test.sh
OUTPOST_BIN="$CARGO_TARGET_DIR/debug/outpost" web/e2e/run.sh

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
    for cut in link blackhole reset direct https; do
        PARTITION_CUT=$cut OUTPOST_BIN="$CARGO_TARGET_DIR/debug/outpost" tests/netns/partition.sh
    done
    # Sites and hub (the paper's Figure 2), with clients that find servers through DNS.
    if ! command -v dnsmasq >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q dnsmasq-base >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dnsmasq-base >/dev/null; }
    fi
    OUTPOST_BIN="$CARGO_TARGET_DIR/debug/outpost" tests/netns/figure2.sh
    # A LAN with no DNS for the domain: clients find the site server by multicast DNS.
    OUTPOST_BIN="$CARGO_TARGET_DIR/debug/outpost" tests/netns/lan.sh
    # A client behind a firewall that passes only HTTPS chats through the HTTP API (REST and
    # Server-Sent Events) and through XMPP over WebSocket (xmpp.js), both on port 443.
    OUTPOST_BIN="$CARGO_TARGET_DIR/debug/outpost" tests/netns/https_only.sh
fi

step "all tests passed"
