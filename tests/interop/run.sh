#!/usr/bin/env bash
# Run the slixmpp interop suite against the Outpost binary.
#
#   tests/interop/run.sh                 # build debug binary, run everything
#   OUTPOST_BIN=/path/outpost tests/interop/run.sh -k roster
#
# Extra arguments are passed to pytest. Exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
PYTHON="${PYTHON:-python3}"

# 1. Python dependencies (pinned in requirements.txt): installed unless every pin is met.
pins_met() {
    "$PYTHON" - "$here/requirements.txt" <<'PY' 2>/dev/null
import importlib.metadata as m, re, sys
want = {}
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
        want[name] = version
sys.exit(0 if all(m.version(k) == v for k, v in want.items()) else 1)
PY
}
if ! pins_met; then
    echo "interop: installing Python dependencies" >&2
    "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        -r "$here/requirements.txt"
    if ! pins_met; then
        echo "interop: installed Python packages do not match requirements.txt" >&2
        exit 2
    fi
fi

# 1a. Schemathesis, the OpenAPI fuzzer of test_rest_schema.py (pinned: its CLI options and
# configuration keys are those of this version); pip resolves its dependencies
# (hypothesis, requests, …) against the pins above.
SCHEMATHESIS_VERSION=4.32.5
if ! "$PYTHON" -c 'import importlib.metadata as m, sys; sys.exit(m.version("schemathesis") != sys.argv[1])' \
        "$SCHEMATHESIS_VERSION" 2>/dev/null; then
    echo "interop: installing schemathesis $SCHEMATHESIS_VERSION" >&2
    "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION"
fi

# 2. go-sendxmpp, a second third-party client (Debian's package).
if ! command -v go-sendxmpp >/dev/null 2>&1; then
    echo "interop: installing go-sendxmpp" >&2
    if [[ $(id -u) -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q go-sendxmpp >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q go-sendxmpp >/dev/null; }
    else
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q go-sendxmpp >/dev/null
    fi
fi

# 2a. Profanity and tmux, for the README's Profanity recipe (test_profanity.py).
if ! command -v profanity >/dev/null 2>&1 || ! command -v tmux >/dev/null 2>&1; then
    echo "interop: installing profanity and tmux" >&2
    if [[ $(id -u) -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q profanity tmux >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q profanity tmux >/dev/null; }
    else
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q profanity tmux >/dev/null
    fi
fi

# 2b. Prosody, the peer of the federation tests (Debian's package). The tests run it as
# their own process with their own configuration, never the system service.
if ! command -v prosody >/dev/null 2>&1 || ! command -v prosodyctl >/dev/null 2>&1; then
    echo "interop: installing prosody" >&2
    if [[ $(id -u) -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q prosody >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prosody >/dev/null; }
    else
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q prosody >/dev/null
    fi
    # A package install may start the system service on the ports the tests use.
    if command -v service >/dev/null 2>&1; then
        service prosody stop >/dev/null 2>&1 || true
    fi
fi

# 2c. ejabberd, the peer of test_federation_ejabberd.py (Debian's package). The test runs
# its own node with its own configuration, never the system service, which the package
# starts on install and would hold the ports the test uses.
if ! command -v ejabberdctl >/dev/null 2>&1; then
    echo "interop: installing ejabberd" >&2
    if [[ $(id -u) -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q ejabberd >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ejabberd >/dev/null; }
    else
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q ejabberd >/dev/null
    fi
    if command -v service >/dev/null 2>&1; then
        service ejabberd stop >/dev/null 2>&1 || true
    fi
fi

# 2d. Node, and the JavaScript clients pinned in js/package-lock.json: xmpp.js
# (@xmpp/client) for test_websocket.py, Converse.js and playwright-core for
# test_converse.py, which runs Converse in Debian's chromium-headless-shell.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "interop: installing nodejs and npm" >&2
    if [[ $(id -u) -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null; }
    else
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null
    fi
fi
if ! (cd "$here/js" && npm ls --silent >/dev/null 2>&1); then
    echo "interop: installing xmpp.js, Converse.js and playwright-core" >&2
    (cd "$here/js" && npm ci --silent --no-audit --no-fund)
fi
if [[ -z "${CHROMIUM_PATH:-}" && ! -x /usr/bin/chromium-headless-shell ]]; then
    echo "interop: installing chromium-headless-shell" >&2
    if [[ $(id -u) -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium-headless-shell >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium-headless-shell >/dev/null; }
    else
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium-headless-shell >/dev/null
    fi
fi

# 3. The server binary.
if [[ -z "${OUTPOST_BIN:-}" ]]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"
    echo "interop: building outpost (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)" >&2
    (cd "$repo" && cargo build --quiet -p outpost)
    export OUTPOST_BIN="$CARGO_TARGET_DIR/debug/outpost"
fi
if [[ ! -x "$OUTPOST_BIN" ]]; then
    echo "interop: no executable at OUTPOST_BIN=$OUTPOST_BIN" >&2
    exit 2
fi
echo "interop: using $OUTPOST_BIN" >&2

# 4. The suite.
cd "$here"
exec "$PYTHON" -m pytest "$@"
