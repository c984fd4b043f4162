"""Fixtures every test folder may use.

Owns: clean-up of the node-wide pin root (/sys/fs/bpf/natra) for the tests
that drive Natra exactly as a node would (the demo, the benchmarks) and so
cannot point it at a private bpffs. Every other kernel test uses a private root.
"""

from __future__ import annotations

import contextlib
import os

import pytest


@pytest.fixture(scope="module")
def default_pin_root():
    """Remove /sys/fs/bpf/natra afterwards if this module made it and left it empty."""
    from natra import pins

    existed = os.path.isdir(pins.DEFAULT_ROOT)
    yield pins.DEFAULT_ROOT
    if not existed:
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(pins.DEFAULT_ROOT)  # fails (and stays) if anything is still pinned in it
