"""Shared fixtures of the kernel tests: skip without the kernel, private loaded objects.

Owns: the `kernel` fixture, which skips a test that cannot run here (the rule
is netns.kernel_skip_reason's), and `load_natra`, a factory of freshly loaded
private objects that are always closed again, also when a test fails.
Rule: a kernel test never shares maps with another test (test runs change the
program's real maps), and every object loaded here is closed in a finally.
Must not know: attach modes, netns topologies (tests/kernel/netns.py has those).
"""

from __future__ import annotations

import netns
import pytest

from natra.kernel import layout as L
from natra.kernel.params import ConfigValues, params_for, to_config

# A small sketch keeps snapshots fast and makes column sharing likely.
TEST_WIDTH = 64
TEST_DEPTH = 4
TEST_RATE_BPS = 10_000_000


@pytest.fixture(scope="session")
def kernel():
    """Skip the test unless root, bpffs (at /sys/fs/bpf too) and the built objects are present."""
    reason = netns.kernel_skip_reason(node_bpffs=True, objects=netns.ALL_OBJECTS)
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
