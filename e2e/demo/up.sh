#!/usr/bin/env bash
# `make demo`: a one-node Kubernetes cluster on this machine (as root) with
# Vispyr installed by Helm and the demo app under load, left running in the
# background. State (pid, log) in $CACHE/demo; `make demo-down` stops it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${CACHE:-$HOME/.cache/vispyr}"
STATE="$CACHE/demo"
TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
# Debug binaries in the images: a release build of the three Rust components
# takes tens of minutes on a small machine; debug ones are what `cargo test`
# builds anyway.
export PROFILE="${PROFILE:-debug}"
export CARGO_TARGET_DIR="$TARGET_DIR"

die() { echo "demo: $*" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || die "the demo runs containerd and a kubelet: run it as root"
if [[ -f "$STATE/pid" ]] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
  die "already running (pid $(cat "$STATE/pid")); 'make demo-down' stops it"
fi
mkdir -p "$STATE"
start=$SECONDS

flag=(); [[ "$PROFILE" == release ]] && flag=(--release)
echo "demo: building the Vispyr binaries ($PROFILE)"
(cd "$ROOT" && cargo build --locked "${flag[@]}" -p vispyr-operator -p vispyr-gateway \
  -p vispyr-node-agent -p vispyr-e2e --bins)

log="$STATE/node-cluster.log"
echo "demo: starting the cluster and installing Vispyr (log: $log)"
: >"$log"
setsid "$TARGET_DIR/$PROFILE/node-cluster" --demo >"$log" 2>&1 </dev/null &
echo $! >"$STATE/pid"
until grep -q '^node-cluster: demo ready' "$log"; do
  if ! kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
    rm -f "$STATE/pid"
    tail -n 40 "$log" >&2
    die "the cluster stopped before the demo was ready (log above, cluster torn down)"
  fi
  sleep 2
done
sed -n '/^node-cluster: demo ready/,/make demo-down$/p' "$log" | sed '1d'
echo "demo: up in $((SECONDS - start)) s"
