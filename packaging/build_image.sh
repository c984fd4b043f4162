#!/usr/bin/env bash
# Build Natra's node image from deploy/Containerfile (`make image`).
#
#   packaging/build_image.sh [--local-bases] [--tag NAME]
#
#   --tag NAME      image name (default natra:<version in pyproject.toml>)
#   --local-bases   build from Debian bases made here with debootstrap
#                   (packaging/base_images.sh) instead of pulling
#                   debian:bookworm-slim and debian:bullseye-slim; for builders
#                   without registry access. buildah or podman only.
#
# ENGINE picks the build tool (default: the first of podman, buildah, docker).
# A builder behind a TLS-intercepting proxy: when /etc/pip.conf names a `cert`,
# the build's RUN steps see that pip.conf and CA bundle as read-only mounts
# (never copied into a layer); NATRA_BUILD_PIP_CONF=none turns that off.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -1)
tag="natra:$version"
local_bases=0
while (($#)); do
  case $1 in
    --local-bases) local_bases=1 ;;
    --tag) tag=$2; shift ;;
    *) echo "build_image: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

engine=${ENGINE:-}
if [[ -z $engine ]]; then
  for e in podman buildah docker; do command -v "$e" >/dev/null && { engine=$e; break; }; done
fi
[[ -n $engine ]] || { echo "build_image: no podman, buildah or docker" >&2; exit 1; }

args=(-f deploy/Containerfile -t "$tag")
case $engine in
  buildah) build=(buildah bud --network host --layers) ;;
  podman) build=(podman build --network host --layers) ;;
  docker) build=(docker build --network host) ;;
  *) echo "build_image: unknown ENGINE $engine" >&2; exit 2 ;;
esac

if ((local_bases)); then
  [[ $engine != docker ]] || { echo "build_image: --local-bases needs buildah or podman" >&2; exit 2; }
  bash packaging/base_images.sh bookworm bullseye
  args+=(--pull-never
         --build-arg BUILD_BASE=localhost/natra-base:bookworm
         --build-arg OLD_GLIBC_BASE=localhost/natra-base:bullseye
         --build-arg RUN_BASE=localhost/natra-base:bookworm)
fi

pip_conf=${NATRA_BUILD_PIP_CONF:-/etc/pip.conf}
if [[ $pip_conf != none && -f $pip_conf && $engine != docker ]]; then
  # The CA goes to a path of its own: mounted over the image's
  # /etc/ssl/certs/ca-certificates.crt it would break the ca-certificates package.
  build_conf=$(mktemp -d /var/tmp/natra-build-conf.XXXXXX)
  trap 'rm -rf "$build_conf"' EXIT
  cert=$(sed -n 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*//p' "$pip_conf" | head -1)
  sed '/^[[:space:]]*cert[[:space:]]*=/d' "$pip_conf" >"$build_conf/pip.conf"
  if [[ -n $cert && -f $cert ]]; then
    sed -i '0,/^\[global\]/s||[global]\ncert = /run/natra-build/ca.crt|' "$build_conf/pip.conf"
    args+=(-v "$cert:/run/natra-build/ca.crt:ro")
  fi
  args+=(-v "$build_conf/pip.conf:/etc/pip.conf:ro")
fi

start=$(date +%s)
"${build[@]}" "${args[@]}" .
echo "build_image: $tag built with $engine in $(($(date +%s) - start)) s"
