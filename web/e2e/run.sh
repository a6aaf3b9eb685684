#!/usr/bin/env bash
# The web client's browser test against a real `outpost serve` ($OUTPOST_BIN): starts the
# server with registration on, HTTPS on a free loopback port and a 64 KiB upload limit,
# runs e2e/chat.mjs in Chromium (Debian's chromium-headless-shell, installed when
# missing; or CHROMIUM_PATH), keeps the screenshots in e2e/out/{chat,room}.png, and stops
# the server. The binary embeds the client it was built with, which must be the one in
# crates/web/assets: a bundle rebuilt since needs a new `cargo build`.
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
upload_max=65536
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
[upload]
max_file_bytes = $upload_max
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

served=$(node -e '
  process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";
  fetch(process.argv[1]).then((r) => r.text()).then((t) => process.stdout.write(t), () => {});
' "https://127.0.0.1:$port/" 2>/dev/null)
if [[ $served != "$(cat ../crates/web/assets/index.html)" ]]; then
    echo "e2e: $OUTPOST_BIN embeds another build of the client than crates/web/assets: rebuild it" >&2
    exit 1
fi

mkdir -p e2e/out
OUTPOST_URL="https://127.0.0.1:$port" OUTPOST_SCREENSHOT=e2e/out/chat.png \
    OUTPOST_ROOM_SCREENSHOT=e2e/out/room.png OUTPOST_UPLOAD_MAX=$upload_max \
    timeout 300 node e2e/chat.mjs || { echo "--- server log" >&2; tail -50 "$dir/log" >&2; exit 1; }
echo "e2e: screenshots in web/e2e/out/chat.png and web/e2e/out/room.png"
