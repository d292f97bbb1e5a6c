#!/usr/bin/env bash
# Builds pinned upstream tools from the Go module registry, once per pin.
#
#   e2e/tools/build.sh TOOL...   (TOOL = a directory beside this script)
#
# Each TOOL directory is a module of its own (go.mod + go.sum + tools.go) so
# that the dependency graphs of the tools never meet, plus `bins`: lines of
# "<binary> <package>", and optionally `ldflags` (version stamps) and
# `_extra/`: files of ours added to upstream packages, at their paths under
# vendor/ (the tool is then built from a vendor/ copy of its graph, verified
# against go.sum). Binaries land in a cache outside the clone, keyed by the
# hash of the pins, and are linked into .tools/bin of the checkout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${VISPYR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vispyr}/tools"
bindir="$root/.tools/bin"
mkdir -p "$bindir" "$cache"

# What a build depends on; a tool without `_extra/` keeps the key it had
# before `_extra/` existed.
pins() {
  cat "$1/go.mod" "$1/go.sum" "$1/bins"
  echo "$2"
  go env GOVERSION
  if [[ -d "$1/_extra" ]]; then
    (cd "$1" && find _extra -type f | LC_ALL=C sort | xargs tail -n +1)
  fi
}

for tool in "$@"; do
  dir="$here/$tool"
  [[ -f "$dir/bins" ]] || { echo "build.sh: unknown tool '$tool' (no $dir/bins)" >&2; exit 2; }
  ldflags="-s -w $(cat "$dir/ldflags" 2>/dev/null || true)"
  key="$(pins "$dir" "$ldflags" | sha256sum | cut -c1-16)"
  out="$cache/$tool-$key"
  if [[ ! -f "$out/.stamp" ]]; then
    echo "==> building $tool (pins $key) into $out"
    start=$SECONDS
    rm -rf "$out.tmp" && mkdir -p "$out.tmp/bin"
    src="$dir" mod=readonly
    if [[ -d "$dir/_extra" ]]; then
      src="$out.tmp/src" mod=vendor
      mkdir "$src" && cp "$dir"/go.mod "$dir"/go.sum "$dir"/*.go "$src/"
      (cd "$src" && go mod vendor) && cp -r "$dir/_extra/." "$src/vendor/"
    fi
    while read -r bin pkg; do
      [[ -n "$bin" ]] || continue
      (cd "$src" && CGO_ENABLED=0 go build -mod="$mod" -trimpath -ldflags="$ldflags" -o "$out.tmp/bin/$bin" "$pkg")
    done < "$dir/bins"
    rm -rf "$out.tmp/src"
    cp "$dir/go.mod" "$out.tmp/.stamp"
    rm -rf "$out" && mv "$out.tmp" "$out"
    echo "==> $tool built in $((SECONDS - start)) s"
  fi
  while read -r bin _; do
    [[ -n "$bin" ]] && ln -sfn "$out/bin/$bin" "$bindir/$bin"
  done < "$dir/bins"
done
