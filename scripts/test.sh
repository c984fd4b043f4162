#!/usr/bin/env bash
# Natra's whole test suite (the README's test command). Kernel tests need root.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
python3 -m pytest -q "$@"
