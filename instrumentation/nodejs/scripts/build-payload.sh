#!/usr/bin/env bash
# Builds the init-container payload of @vispyr/node:
#
#   instrumentation/nodejs/dist/payload/
#     register.cjs   the preload: NODE_OPTIONS="--require /vispyr-instrumentation/register.cjs"
#     register.mjs   the same for --import
#     src/           the preload's code
#     package.json
#     node_modules/  production dependencies only, pruned (no docs, tests,
#                    TypeScript, source maps, bundler-only builds; licences kept)
#
# The webhook's init container copies this directory to /vispyr-instrumentation.
#
# Cached: the pruned node_modules is keyed by the sha256 of package-lock.json
# (and of the pruning rules) and kept in $CACHE/nodejs-payload/<key> (CACHE
# defaults to ~/.cache/vispyr, like the other tools), so an unchanged lockfile
# skips `npm ci`; the package's own files are always copied afresh.
# Deterministic: the same lockfile gives the same files, and every mtime is
# set to SOURCE_DATE_EPOCH (default 0), so image layers built from it are
# reproducible.
#
# Prints the payload's size on the last line.
set -euo pipefail

PKG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$PKG_DIR/dist/payload"
CACHE_ROOT="${CACHE:-$HOME/.cache/vispyr}/nodejs-payload"
EPOCH="${SOURCE_DATE_EPOCH:-0}"

cd "$PKG_DIR"
key="$(cat package-lock.json scripts/prune-payload.mjs | sha256sum | cut -c1-16)"
cached="$CACHE_ROOT/$key"

if [[ -d "$cached/node_modules" ]]; then
  echo "payload: production dependencies cached ($cached)"
else
  echo "payload: installing production dependencies (lockfile key $key)"
  mkdir -p "$CACHE_ROOT"
  staging="$(mktemp -d "$CACHE_ROOT/.staging.XXXXXX")"
  trap 'rm -rf "$staging"' EXIT
  cp package.json package-lock.json "$staging/"
  # --ignore-scripts: nothing in the tree needs an install script to run
  # (no native modules); protobufjs' postinstall only checks its CLI's deps.
  (cd "$staging" && npm ci --omit=dev --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error)
  read -r pruned_files pruned_bytes < <(node scripts/prune-payload.mjs "$staging/node_modules")
  echo "payload: pruned $pruned_files files ($((pruned_bytes / 1024)) KiB)"
  rm -f "$staging/package.json" "$staging/package-lock.json"
  rm -rf "$cached"
  mv "$staging" "$cached"
  trap - EXIT
  # Keep the cache from growing without bound: the 3 newest keys stay.
  ls -1dt "$CACHE_ROOT"/*/ 2>/dev/null | tail -n +4 | xargs -r rm -rf
fi

# Assemble next to the old payload, then swap, so a failed run leaves the
# previous payload intact.
next="$PKG_DIR/dist/.payload.next"
rm -rf "$next"
mkdir -p "$next"
cp -R "$cached/node_modules" "$next/node_modules"
cp register.cjs register.mjs package.json "$next/"
cp -R src "$next/src"
# Readable by any user (the init container and the application may run as
# different users), same modes and times on every build.
chmod -R u=rwX,go=rX "$next"
find "$next" -exec touch -h -d "@$EPOCH" {} +
rm -rf "$OUT.old"
if [[ -d "$OUT" ]]; then mv "$OUT" "$OUT.old"; fi
mv "$next" "$OUT"
rm -rf "$OUT.old"

# Smoke check: the payload loads on its own (no dev dependencies, nothing
# from the package's node_modules) and starts the SDK.
state="$(cd / && env -i PATH="$PATH" OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:9 OTEL_METRICS_EXPORTER=none VISPYR_SHUTDOWN_TIMEOUT_MS=300 \
  node --require "$OUT/register.cjs" -e 'process.stdout.write(JSON.stringify(global[Symbol.for("vispyr.node.state")]))' 2>&1)"
if [[ "$state" != '{"status":"running","problems":[]}' ]]; then
  echo "payload: smoke check failed: $state" >&2
  exit 1
fi

bytes="$(du -sb "$OUT" | cut -f1)"
count="$(find "$OUT" -type f | wc -l)"
echo "payload: $OUT: $((bytes / 1024 / 1024)) MiB ($bytes bytes, $count files)"
