#!/usr/bin/env bash
# Builds the web client into crates/web/assets (index.html, app.js, app.css), which
# are committed so that building Outpost needs no Node. The output depends only on
# the sources and the pinned packages: no timestamps, no source maps, no paths.
# Rerunning it on a clean tree must leave `git diff` empty.
set -euo pipefail
cd "$(dirname "$0")"
out=../crates/web/assets

if [ ! -x node_modules/.bin/esbuild ] || [ ! -x node_modules/.bin/tsc ]; then
  npm ci --no-audit --no-fund
fi

node_modules/.bin/tsc --noEmit -p tsconfig.json

# Chromium 116, Firefox 124 and Safari 17.4 are the first with AbortSignal.any().
target=chrome116,firefox124,safari17.4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

node_modules/.bin/esbuild src/main.tsx --bundle --minify --format=iife \
  --target="$target" --jsx=automatic --jsx-import-source=preact \
  --legal-comments=none --charset=ascii --log-level=warning \
  --banner:js='/*! Outpost web client. Includes Preact (MIT licence, Copyright (c) 2015-present Jason Miller). */' \
  --outfile="$tmp/app.js"
node_modules/.bin/esbuild style.css --minify --target="$target" --charset=ascii \
  --log-level=warning --outfile="$tmp/app.css"

# Content hashes in the asset URLs, so a browser never mixes an old script with a new page.
js=$(sha256sum "$tmp/app.js" | cut -c1-12)
css=$(sha256sum "$tmp/app.css" | cut -c1-12)
sed -e "s/JS_HASH/$js/" -e "s/CSS_HASH/$css/" index.html >"$tmp/index.html"

mkdir -p "$out"
for f in index.html app.js app.css; do
  cp "$tmp/$f" "$out/$f"
done
wc -c "$out/app.js" "$out/app.css" "$out/index.html" | sed 's/^/  /'
