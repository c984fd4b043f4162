"""setup.py's build hook: without clang a build stops at once and says what to install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_build_without_clang_fails_naming_the_packages(tmp_path):
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(tmp_path / "lib")],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CLANG": "nt-no-such-clang"})
    assert out.returncode != 0
    assert "'nt-no-such-clang' to compile the BPF program" in out.stderr
    assert "apt-get install clang libbpf-dev" in out.stderr
    assert not (tmp_path / "lib").exists()  # nothing half-built
