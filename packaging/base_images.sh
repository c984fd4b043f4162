#!/usr/bin/env bash
# Debian base images for deploy/Containerfile, made from Debian's archive with
# debootstrap, for builders that cannot pull from a container registry (CI
# here reaches Debian's archive and PyPI, no registry).
#
#   packaging/base_images.sh [SUITE ...]     default: bookworm bullseye
#
# Each suite becomes localhost/natra-base:SUITE in buildah's storage: a
# minbase Debian with apt pointed at the archive, no package caches. An image
# that is already there is kept. Needs root, debootstrap and buildah.
set -euo pipefail

MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITES=("$@")
((${#SUITES[@]})) || SUITES=(bookworm bullseye)

work=$(mktemp -d /var/tmp/natra-base.XXXXXX)
trap 'rm -rf "$work"' EXIT

make_base() {
  local suite=$1 tag=localhost/natra-base:$1 root=$work/$1
  if buildah inspect --type image "$tag" >/dev/null 2>&1; then
    echo "base_images: $tag present"; return 0
  fi
  debootstrap --variant=minbase "$suite" "$root/rootfs" "$MIRROR" >"$root.log" 2>&1 || {
    tail -20 "$root.log" >&2; echo "base_images: debootstrap $suite failed" >&2; return 1; }
  rm -rf "$root"/rootfs/var/cache/apt/archives/*.deb "$root"/rootfs/var/lib/apt/lists/* \
         "$root"/rootfs/var/log/* "$root"/rootfs/dev/*
  # Containers get their /dev, /proc and /sys from the runtime.
  tar -C "$root/rootfs" --numeric-owner -cf "$root/rootfs.tar" .
  rm -rf "$root/rootfs"
  local ctr
  ctr=$(buildah from scratch)
  buildah add --quiet "$ctr" "$root/rootfs.tar" / >/dev/null
  buildah config --cmd /bin/bash --env LANG=C.UTF-8 \
    --label "org.opencontainers.image.description=debootstrap --variant=minbase $suite $MIRROR" \
    "$ctr"
  buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
  echo "base_images: $tag built"
}

pids=()
for s in "${SUITES[@]}"; do
  mkdir -p "$work/$s"
  make_base "$s" & pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
exit $rc
