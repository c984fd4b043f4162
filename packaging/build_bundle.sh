#!/usr/bin/env bash
# Build Natra's node bundle (dist/natra/natra, PyInstaller onedir) from this
# checkout: the BPF objects first (`make bpf`), then the bundle, then a smoke
# run of the result. Run on the oldest glibc the bundle must serve (the
# Containerfile uses Debian bullseye, glibc 2.31); a bundle runs on that glibc
# and newer. Needs: python3 with this package installed, pyinstaller, clang,
# libbpf.so.1.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import PyInstaller' 2>/dev/null || {
  echo "build_bundle: PyInstaller missing: $PYTHON -m pip install pyinstaller" >&2; exit 1; }
make -s bpf
rm -rf build/node-bundle dist/natra
"$PYTHON" -m PyInstaller --noconfirm --clean --log-level WARN \
  --workpath build/node-bundle --distpath dist packaging/natra.spec

# The BPF objects must arrive byte for byte (a stripped object loses its BTF).
for obj in natra/bpf/*.o; do
  cmp -s "$obj" "dist/natra/_internal/$obj" || {
    echo "build_bundle: $obj differs in the bundle" >&2; exit 1; }
done
test -e dist/natra/_internal/libbpf.so.1 || { echo "build_bundle: libbpf.so.1 missing" >&2; exit 1; }

# Smoke: the bundle answers VERSION as a runtime would call it.
out=$(CNI_COMMAND=VERSION dist/natra/natra </dev/null)
echo "build_bundle: dist/natra/natra VERSION -> $out"
du -sh dist/natra | sed 's/^/build_bundle: size /'
