#!/usr/bin/env bash
# Builds pinned upstream tools from the Go module registry, once per pin.
#
#   e2e/tools/build.sh TOOL...   (TOOL = a directory beside this script)
#
# Each TOOL directory is a module of its own (go.mod + go.sum + tools.go) so
# that the dependency graphs of the tools never meet, plus `bins`: lines of
# "<binary> <package>", and optionally `ldflags` (version stamps). Binaries
# land in a cache outside the clone, keyed by the hash of the pins, and are
# linked into .tools/bin of the checkout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${VISPYR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vispyr}/tools"
bindir="$root/.tools/bin"
mkdir -p "$bindir" "$cache"

for tool in "$@"; do
  dir="$here/$tool"
  [[ -f "$dir/bins" ]] || { echo "build.sh: unknown tool '$tool' (no $dir/bins)" >&2; exit 2; }
  ldflags="-s -w $(cat "$dir/ldflags" 2>/dev/null || true)"
  key="$(cat "$dir/go.mod" "$dir/go.sum" "$dir/bins" <(echo "$ldflags") <(go env GOVERSION) | sha256sum | cut -c1-16)"
  out="$cache/$tool-$key"
  if [[ ! -f "$out/.stamp" ]]; then
    echo "==> building $tool (pins $key) into $out"
    start=$SECONDS
    rm -rf "$out.tmp" && mkdir -p "$out.tmp/bin"
    while read -r bin pkg; do
      [[ -n "$bin" ]] || continue
      (cd "$dir" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags="$ldflags" -o "$out.tmp/bin/$bin" "$pkg")
    done < "$dir/bins"
    cp "$dir/go.mod" "$out.tmp/.stamp"
    rm -rf "$out" && mv "$out.tmp" "$out"
    echo "==> $tool built in $((SECONDS - start)) s"
  fi
  while read -r bin _; do
    [[ -n "$bin" ]] && ln -sfn "$out/bin/$bin" "$bindir/$bin"
  done < "$dir/bins"
done
