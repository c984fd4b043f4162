"""Shared fixtures of the kernel tests: skip without the kernel, private loaded objects.

Owns: the decision whether kernel tests can run here (root, bpf(2), bpffs,
the built objects) and `load_natra`, a factory of freshly loaded private
objects that are always closed again, also when a test fails.
Rule: a kernel test never shares maps with another test (test runs change the
program's real maps), and every object loaded here is closed in a finally.
Must not know: attach modes, netns topologies (tests/kernel/netns.py has those).
"""

from __future__ import annotations

import os

import pytest

from natra.kernel import layout as L
from natra.kernel.params import ConfigValues, params_for, to_config

BPFFS = "/sys/fs/bpf"
BPF_FS_MAGIC = 0xCAFE4A11
# A small sketch keeps snapshots fast and makes column sharing likely.
TEST_WIDTH = 64
TEST_DEPTH = 4
TEST_RATE_BPS = 10_000_000


def _is_bpffs(path: str) -> bool:
    import ctypes

    class _StatFs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 120)]

    libc = ctypes.CDLL(None, use_errno=True)
    buf = _StatFs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return False
    return buf.f_type & 0xFFFFFFFF == BPF_FS_MAGIC


def kernel_unavailable() -> str | None:
    """Why kernel tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for bpf(2)"
    if not os.path.isdir(BPFFS) or not _is_bpffs(BPFFS):
        return f"bpffs is not mounted at {BPFFS} (mount -t bpf bpf {BPFFS})"
    from natra.kernel.loader import LoadError, object_path

    try:
        for variant in ("natra", "natra_trace", "natra_parse"):
            object_path(variant)
    except LoadError as e:
        return str(e)
    return None


@pytest.fixture(scope="session")
def kernel():
    """Skip the test unless root, bpffs and the built objects are present."""
    reason = kernel_unavailable()
    if reason:
        pytest.skip(reason)


def test_configs(rate_bps: int = TEST_RATE_BPS, *, to_pod: bool = True, from_pod: bool = False,
                 width: int = TEST_WIDTH, depth: int = TEST_DEPTH, **tuning) -> list[ConfigValues]:
    """Configs of both directions with the test clock; None-limited directions are disabled."""
    params = params_for(rate_bps, width=width, depth=depth, **tuning)
    return [to_config(params if on else None, test_clock=True, width=width, depth=depth)
            for on in (to_pod, from_pod)]


test_configs.__test__ = False  # a helper, not a test


@pytest.fixture
def load_natra(kernel):
    """Factory: load_natra(configs, flow_table=..., variant='natra') -> BpfObject, closed after."""
    from natra.kernel.loader import BpfObject, object_path

    loaded = []

    def load(configs=None, *, flow_table: int = 4096, variant: str = "natra"):
        obj = BpfObject.load(configs if configs is not None else test_configs(), flow_table=flow_table,
                             path=object_path(variant))
        loaded.append(obj)
        return obj

    try:
        yield load
    finally:
        for obj in loaded:
            obj.close()


@pytest.fixture
def natra_object(load_natra):
    """A freshly loaded private object: to_pod limited at 10 Mbit/s, test clock, from_pod off."""
    return load_natra()


DIRECTIONS = (L.DIR_TO_POD, L.DIR_FROM_POD)
