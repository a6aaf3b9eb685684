#!/usr/bin/env bash
# Unit tests of the web client's logic that needs no browser (node's test runner).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x node_modules/.bin/esbuild ]; then
  npm ci --no-audit --no-fund
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in test/*.test.mjs; do
  node_modules/.bin/esbuild "$t" --bundle --platform=node --format=esm --log-level=warning \
    --outfile="$tmp/$(basename "$t")"
done
node --test "$tmp"/*.test.mjs
