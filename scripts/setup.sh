#!/usr/bin/env bash
# Natra's set-up on a fresh Debian 12 machine, as root: system packages, the
# Python package (editable) with its test and simulation extras, the BPF
# objects, and bpffs. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  clang llvm libbpf-dev libbpf1 bpftool linux-libc-dev
  iproute2 iperf3 containernetworking-plugins tcpdump
  make gcc libc6-dev python3-dev
  containerd runc            # the CRI end-to-end tests run Pod sandboxes
  chromium chromium-driver   # the live page is tested in headless Chromium
  buildah debootstrap        # the node image, built from Debian bases made here
  prometheus                 # promtool tests the alerting rule in deploy/
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e ".[test,sim,bundle]"
make -s all
# The node bundle (PyInstaller onedir): the CNI tests run once against it too.
make -s node-bundle >/dev/null

# The node image (deploy/Containerfile) from Debian bases made with debootstrap:
# no registry is reachable here. A few minutes the first time, cached after.
mkdir -p build
if ! make -s image-local >build/image.log 2>&1; then
  tail -40 build/image.log >&2
  echo "natra: the node image did not build (build/image.log)" >&2
  exit 1
fi
tail -1 build/image.log

if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
fi
echo "natra: set-up done"
