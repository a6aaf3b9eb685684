#!/usr/bin/env bash
# The web client's browser test against a real `outpost serve` ($OUTPOST_BIN): starts the
# server with registration on and HTTPS on a free loopback port, runs e2e/chat.mjs in
# Chromium (Debian's chromium-headless-shell, installed when missing; or CHROMIUM_PATH),
# keeps the screenshot in e2e/out/chat.png, and stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUTPOST_BIN:?set OUTPOST_BIN to the outpost binary}"

if [[ -z "${CHROMIUM_PATH:-}" ]]; then
    CHROMIUM_PATH=/usr/bin/chromium-headless-shell
    if [[ ! -x $CHROMIUM_PATH ]]; then
        echo "e2e: installing chromium-headless-shell" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            chromium-headless-shell >/dev/null \
            || { apt-get update -q >/dev/null \
                && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                    chromium-headless-shell >/dev/null; }
    fi
fi
export CHROMIUM_PATH
[[ -x node_modules/.bin/tsc ]] || npm ci --no-audit --no-fund

dir=$(mktemp -d)
pid=
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
cat >"$dir/outpost.toml" <<TOML
data_dir = "$dir/data"
[listen]
c2s = ["127.0.0.1:0"]
c2s_tls = ["127.0.0.1:0"]
proxy65 = []
https = ["127.0.0.1:0"]
http = []
[registration]
enabled = true
TOML
# The server reads OUTPOST_* variables as configuration: not this one.
env -u OUTPOST_BIN "$OUTPOST_BIN" serve --config "$dir/outpost.toml" >"$dir/log" 2>&1 &
pid=$!
# The server prints each listener once bound.
port=
for _ in $(seq 1 100); do
    port=$(sed -n 's/.*listening https 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$dir/log" | head -n1)
    [[ -n $port ]] && break
    kill -0 "$pid" 2>/dev/null || { cat "$dir/log" >&2; exit 1; }
    sleep 0.1
done
[[ -n $port ]] || { echo "e2e: outpost did not start" >&2; cat "$dir/log" >&2; exit 1; }

mkdir -p e2e/out
OUTPOST_URL="https://127.0.0.1:$port" OUTPOST_SCREENSHOT=e2e/out/chat.png \
    timeout 300 node e2e/chat.mjs || { echo "--- server log" >&2; tail -50 "$dir/log" >&2; exit 1; }
echo "e2e: screenshot in web/e2e/out/chat.png"
