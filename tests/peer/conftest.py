"""The peer scenarios: the standard plugin's own integration tests, Natra in its place.

Owns: whether they can run here (root, the kernel, bpffs, the built object,
Debian's ptp/bridge/host-local/bandwidth, iproute2) and the skip with the
reason when not; the kernel tests' helpers (tests/kernel/chain.py and
netns.py) made importable, never copied; `peer_node`, everything one test
makes (bin dir, IPAM and state dirs, Natra's pin root, a "remote node"
namespace), removed afterwards also when the test fails.
Must not know: what the scenarios assert.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

KERNEL_TESTS = Path(__file__).resolve().parents[1] / "kernel"
if str(KERNEL_TESTS) not in sys.path:
    sys.path.insert(0, str(KERNEL_TESTS))

import chain as C  # noqa: E402  (tests/kernel/chain.py)
import netns as N  # noqa: E402  (tests/kernel/netns.py)

PEER_DIR = Path(__file__).resolve().parent
DEBIAN_PLUGINS = ("ptp", "bridge", "host-local", "bandwidth")


def pytest_collection_modifyitems(config, items):
    reason = N.kernel_skip_reason(cni_plugins=DEBIAN_PLUGINS)
    for item in items:
        if PEER_DIR not in Path(str(item.fspath)).parents:
            continue
        item.add_marker(pytest.mark.root)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"peer scenarios: {reason}"))


@dataclass
class PeerNode:
    """One test's node: CNI bin dir, temp dir, Natra's pin root, the remote node."""

    bin_dir: str
    tmp: str
    pin_root: str
    remote: N.Endpoint
    tag: str
    pods: list = field(default_factory=list)  # (chain, pod), deleted at the end

    def natra(self, **settings) -> dict:
        """Natra's conflist entry, its state kept in this test's directories."""
        return {"type": "natra", "bpffsRoot": self.pin_root, "logFile": os.path.join(self.tmp, "natra.log"),
                "stateDir": os.path.join(self.tmp, "state"), **settings}

    def pod(self, ch: C.Chain, suffix: str) -> C.Pod:
        pod = C.make_pod(f"{self.tag}-{suffix}")
        self.pods.append((ch, pod))
        return pod


@pytest.fixture
def peer_node():
    tag = N.unique_tag()
    bin_dir = C.make_bin_dir()
    tmp = tempfile.mkdtemp(prefix="nt5-peer-")
    pin_root = f"/sys/fs/bpf/nt5-{tag}"
    node = None
    try:
        with N.endpoint("r", tag) as remote:
            node = PeerNode(bin_dir, tmp, pin_root, remote, tag)
            try:
                yield node
            finally:
                _teardown(node)
    finally:
        shutil.rmtree(pin_root, ignore_errors=True)
        C.remove_tree(tmp)
        C.remove_tree(bin_dir)


def _teardown(node: PeerNode) -> None:
    """DEL every Pod (the standard plugin removes its qdiscs and ifb then), drop its netns,
    take Natra's leftovers and the bridges down."""
    from natra.kernel import datapath

    bridges = set()
    for ch, pod in reversed(node.pods):
        bridges.update(p["bridge"] for p in ch.conflist["plugins"] if p.get("type") == "bridge")
        try:
            if pod.cached_result is not None:
                ch.delete(pod)
        finally:
            try:
                datapath.remove(pod.container_id, root=node.pin_root)
            except Exception:  # noqa: BLE001 - best effort; the pin root is removed after
                pass
            N.run("ip", "netns", "pids", pod.name, check=False)
            for pid in N.run("ip", "netns", "pids", pod.name, check=False).split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            C.delete_netns(pod)
    for bridge in bridges:
        if N.link_exists(bridge):
            N.delete_link(bridge)
