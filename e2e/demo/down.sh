#!/usr/bin/env bash
# `make demo-down`: stops what `make demo` started; the cluster tears itself
# down and checks that it left nothing on the host (its log says so).
set -euo pipefail

STATE="${CACHE:-$HOME/.cache/vispyr}/demo"
pidfile="$STATE/pid"
if [[ ! -f "$pidfile" ]] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "demo: not running"
  rm -f "$pidfile"
  exit 0
fi
pid="$(cat "$pidfile")"
kill -TERM "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
rm -f "$pidfile"
# The last lines: "torn down in ..., nothing left behind", or what was left.
tail -n 5 "$STATE/node-cluster.log"
grep -q 'nothing left behind' "$STATE/node-cluster.log"
