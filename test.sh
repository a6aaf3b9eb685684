#!/usr/bin/env bash
# Runs every Outpost test: formatting and lints, unit tests, the store battery, integration
# tests on real sockets, and the slixmpp interop suite against a real `outpost serve`.
# Installs what the interop suite needs (slixmpp from PyPI) when it is missing.
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

step "all tests passed"
