#!/usr/bin/env bash
# Builds Vispyr's container images with no Docker engine and no registry:
# each image is an OCI image layout (one uncompressed layer tar, a config, a
# manifest, index.json) packed into a tar that `ctr images import` reads.
#
#   e2e/images/build.sh [--import SOCKET] [IMAGE...]
#
# IMAGE is one of the names below (default: all). Each becomes
# `vispyr.local/<name>:dev` and is written to $CACHE/images/<name>.tar
# (CACHE defaults to ~/.cache/vispyr). With --import, every built image is
# imported into the containerd listening on SOCKET (namespace k8s.io, where
# the CRI plugin and so kubelet see it). Prints one line per image:
#   image <ref> <manifest digest> <bytes> <seconds to build>
#
# Layers are reproducible: files sorted, owned by 0:0, mtime 0, so the same
# inputs give the same digests. Binaries that are not static are copied with
# the shared libraries and dynamic loader `ldd` names, at the same paths.
#
# Inputs by image:
#   pause, hello   built here from src/*.c (gcc -static)
#   operator, gateway, node-agent
#                  $CARGO_TARGET_DIR/$PROFILE/vispyr-<name> (PROFILE=release
#                  by default; built with cargo when missing or BUILD=1)
#   nodejs-payload instrumentation/nodejs/dist/payload (make nodejs-payload)
#                  plus cp, which the injected init container runs
#   demo-app       e2e/demo-app and this machine's node
#   prometheus, tempo, pyroscope
#                  the pinned tools in .tools/bin (make tools)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/e2e/images"
CACHE="${CACHE:-$HOME/.cache/vispyr}"
OUT="$CACHE/images"
REPO="vispyr.local"
TAG="dev"
PROFILE="${PROFILE:-release}"
TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
TOOLS_BIN="${VISPYR_TOOLS_BIN:-$ROOT/.tools/bin}"
ALL=(pause hello operator gateway node-agent nodejs-payload demo-app prometheus tempo pyroscope)
# Every image but the node-agent (which loads eBPF programs) runs as this
# non-root user unless the pod says otherwise.
NONROOT=65532

die() { echo "images: $*" >&2; exit 1; }

import_socket=""
images=()
while (($#)); do
  case "$1" in
    --import) [[ $# -ge 2 ]] || die "--import needs a containerd socket path"; import_socket="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) images+=("$1"); shift ;;
  esac
done
((${#images[@]})) || images=("${ALL[@]}")
for name in "${images[@]}"; do
  [[ " ${ALL[*]} " == *" $name "* ]] || die "unknown image '$name' (known: ${ALL[*]})"
done

mkdir -p "$OUT"
work="$(mktemp -d "$OUT/.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# --- what goes into a root filesystem ---------------------------------------

# add_elf ROOTFS BINARY DEST: the binary at DEST, and for a dynamic one every
# library and the loader that ldd resolves, at their own paths.
add_elf() {
  local rootfs="$1" bin="$2" dest="$3"
  [[ -f "$bin" ]] || die "$bin does not exist"
  install -D -m 0755 "$bin" "$rootfs$dest"
  local lib
  # "not a dynamic executable" (static binaries) makes ldd exit non-zero.
  while read -r lib; do
    [[ -e "$rootfs$lib" ]] || install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done < <(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true)
}

# base_dirs ROOTFS: /tmp (V8 writes its perf map there) and /etc/passwd with
# the users images run as, for tools that look their user up.
base_dirs() {
  local rootfs="$1"
  install -d -m 1777 "$rootfs/tmp"
  install -d -m 0755 "$rootfs/etc"
  printf 'root:x:0:0:root:/:/nonexistent\nnonroot:x:%s:%s:nonroot:/tmp:/nonexistent\n' "$NONROOT" "$NONROOT" >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' "$NONROOT" >"$rootfs/etc/group"
}

static_c() {
  local src="$1" out="$2"
  gcc -Os -static -s -Wall -Wextra -Werror -o "$out" "$src"
}

cargo_bin() {
  local bin="vispyr-$1" path="$TARGET_DIR/$PROFILE/vispyr-$1"
  if [[ ! -x "$path" || "${BUILD:-0}" == 1 ]]; then
    local flag=(); [[ "$PROFILE" == release ]] && flag=(--release)
    (cd "$ROOT" && cargo build --locked "${flag[@]}" -p "$bin" --bin "$bin" >&2)
  fi
  echo "$path"
}

tool_bin() {
  local path="$TOOLS_BIN/$1"
  [[ -f "$path" ]] || die "$1 is not in $TOOLS_BIN: run 'make tools'"
  readlink -f "$path"
}

# --- the images -------------------------------------------------------------
# Each fills $rootfs and sets ENTRYPOINT (and optionally CMD, USER, WORKDIR,
# ENV) as JSON fragments.

image_pause() {
  static_c "$HERE/src/pause.c" "$work/pause.bin"
  install -D -m 0755 "$work/pause.bin" "$rootfs/pause"
  ENTRYPOINT='["/pause"]'; USER=65535
}

image_hello() {
  static_c "$HERE/src/hello.c" "$work/hello.bin"
  install -D -m 0755 "$work/hello.bin" "$rootfs/hello"
  ENTRYPOINT='["/hello"]'
}

rust_image() {
  base_dirs "$rootfs"
  # Debug info is most of a debug build's size (over 200 MB each) and nothing
  # in a pod reads it; the symbol table stays for backtraces.
  objcopy --strip-debug "$(cargo_bin "$1")" "$work/vispyr-$1"
  add_elf "$rootfs" "$work/vispyr-$1" "/usr/local/bin/vispyr-$1"
  ENTRYPOINT="[\"/usr/local/bin/vispyr-$1\"]"
}
image_operator() { rust_image operator; }
image_gateway() { rust_image gateway; }
image_node-agent() { rust_image node-agent; USER=0; }

image_nodejs-payload() {
  local payload="$ROOT/instrumentation/nodejs/dist/payload"
  [[ -f "$payload/register.cjs" ]] || die "$payload is not built: run 'make nodejs-payload'"
  base_dirs "$rootfs"
  add_elf "$rootfs" "$(command -v cp)" /bin/cp
  mkdir -p "$rootfs/instrumentation"
  cp -R "$payload/." "$rootfs/instrumentation/"
  ENTRYPOINT='["/bin/cp"]'; CMD='["-r", "/instrumentation/.", "/vispyr-instrumentation/"]'
}

image_demo-app() {
  base_dirs "$rootfs"
  add_elf "$rootfs" "$(readlink -f "$(command -v node)")" /usr/local/bin/node
  mkdir -p "$rootfs/app"
  cp -R "$ROOT/e2e/demo-app/." "$rootfs/app/"
  ENTRYPOINT='["/usr/local/bin/node"]'; CMD='["/app/server.js"]'; WORKDIR=/app
}

tool_image() {
  local tool="$1"
  base_dirs "$rootfs"
  add_elf "$rootfs" "$(tool_bin "$tool")" "/usr/local/bin/$tool"
  install -d -m 0777 "$rootfs/data"
  ENTRYPOINT="[\"/usr/local/bin/$tool\"]"; WORKDIR=/data
}
image_prometheus() { tool_image prometheus; }
image_tempo() { tool_image tempo; }
image_pyroscope() { tool_image pyroscope; }

# --- the OCI layout ---------------------------------------------------------

sha256() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# blob FILE: moves FILE into the layout's blobs, prints its digest.
blob() {
  local digest; digest="$(sha256 "$1")"
  mv "$1" "$layout/blobs/sha256/$digest"
  echo "$digest"
}

build_one() {
  local name="$1" ref="$REPO/$1:$TAG" start=$SECONDS
  rootfs="$work/$name/rootfs"; layout="$work/$name/layout"
  mkdir -p "$rootfs" "$layout/blobs/sha256"
  ENTRYPOINT='[]'; CMD='[]'; USER="$NONROOT"; WORKDIR=/
  ENV='["PATH=/usr/local/bin:/usr/bin:/bin"]'
  "image_$name"

  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
    -C "$rootfs" -cf "$work/$name/layer.tar" .
  local layer_size layer; layer_size="$(size "$work/$name/layer.tar")"
  layer="$(blob "$work/$name/layer.tar")"

  printf '{"architecture":"amd64","os":"linux","config":{"User":"%s","Env":%s,"Entrypoint":%s,"Cmd":%s,"WorkingDir":"%s"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$USER" "$ENV" "$ENTRYPOINT" "$CMD" "$WORKDIR" "$layer" >"$work/$name/config.json"
  local config_size config; config_size="$(size "$work/$name/config.json")"
  config="$(blob "$work/$name/config.json")"

  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$config" "$config_size" "$layer" "$layer_size" >"$work/$name/manifest.json"
  local manifest_size manifest; manifest_size="$(size "$work/$name/manifest.json")"
  manifest="$(blob "$work/$name/manifest.json")"

  # containerd names the image from io.containerd.image.name; the OCI ref name
  # (the tag) is for other readers of the layout.
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest" "$manifest_size" "$ref" "$TAG" >"$layout/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
    -C "$layout" -cf "$OUT/$name.tar.next" .
  mv "$OUT/$name.tar.next" "$OUT/$name.tar"
  rm -rf "$work/$name"
  echo "image $ref sha256:$manifest $((layer_size + config_size + manifest_size)) $((SECONDS - start))s"
}

for name in "${images[@]}"; do
  build_one "$name"
done

if [[ -n "$import_socket" ]]; then
  [[ -S "$import_socket" ]] || die "no containerd socket at $import_socket"
  for name in "${images[@]}"; do
    ctr --address "$import_socket" --namespace k8s.io images import \
      "$OUT/$name.tar" >/dev/null || die "ctr images import $OUT/$name.tar failed"
    echo "imported $REPO/$name:$TAG"
  done
fi
