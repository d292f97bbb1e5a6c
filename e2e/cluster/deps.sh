#!/usr/bin/env bash
# Installs what a real single-node cluster needs besides the pinned upstream
# tools: the container runtime (containerd + runc), the CNI plugins, and the
# utilities kubelet shells out to. Debian packages; a no-op when present.
#
# Only the node cluster and the image builder need these: `scripts/deps.sh`
# calls this file so that `make test` (which runs the node cluster test) has
# them on a fresh machine.
set -euo pipefail

apt_packages=(
  containerd                  # ctr, containerd, containerd-shim-runc-v2
  runc
  containernetworking-plugins # /usr/lib/cni/{bridge,loopback,host-local}
  iptables
  iproute2                    # ip: the pod bridge and the leftover checks
  mount                       # mount/umount: kubelet's volume mounts
  util-linux                  # nsenter
  kmod                        # modprobe overlay / br_netfilter
  gzip
  tar
)

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "cluster deps: installing ${missing[*]}"
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  # The packaged containerd service is never started here (the harness runs
  # its own containerd with its own socket and state), so keep it disabled.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
