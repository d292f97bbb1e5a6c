#!/usr/bin/env bash
# Installs what builds and tests need on a fresh machine; a no-op when present.
set -euo pipefail

need_go="1.26"
apt_packages=(build-essential pkg-config ca-certificates)

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

command -v rustup >/dev/null || { echo "deps: rustup is required (https://rustup.rs)" >&2; exit 1; }
# rust-toolchain.toml names the toolchain and components; this installs them.
(cd "$(dirname "$0")/.." && rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install)

# eBPF: node-agent/build.rs compiles ebpf/vispyr-ebpf with the pinned
# toolchain (-Z build-std=core needs its rust-src, listed in
# rust-toolchain.toml) and links it with bpf-linker, which loads the LLVM of
# that toolchain at run time: the cache directory is keyed by both versions.
# A toolchain installed before rust-src was listed lacks it.
(cd "$(dirname "$0")/.." && { rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src; })
bpf_linker_version="0.10.1"
llvm_major="$(cd "$(dirname "$0")/.." && rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
bpf_linker_root="$HOME/.cache/vispyr/bpf-linker-$bpf_linker_version-llvm$llvm_major"
if [[ ! -x "$bpf_linker_root/bin/bpf-linker" ]]; then
  echo "deps: building bpf-linker $bpf_linker_version for LLVM $llvm_major into $bpf_linker_root"
  (cd "$(dirname "$0")/.." && CARGO_TARGET_DIR="$bpf_linker_root/build" cargo install bpf-linker \
    --version "$bpf_linker_version" --locked --root "$bpf_linker_root" \
    --no-default-features --features "rust-llvm-$llvm_major")
  rm -rf "$bpf_linker_root/build"
fi

command -v go >/dev/null || { echo "deps: Go >= $need_go is required to build the pinned upstream tools" >&2; exit 1; }
have_go="$(go env GOVERSION | sed 's/^go//')"
if [[ "$(printf '%s\n%s\n' "$need_go" "$have_go" | sort -V | head -n1)" != "$need_go" ]]; then
  echo "deps: Go $have_go is too old, need >= $need_go" >&2; exit 1
fi

for cmd in node npm; do
  command -v "$cmd" >/dev/null || { echo "deps: $cmd is required (Node.js >= 18.19) for the instrumentation package" >&2; exit 1; }
done
