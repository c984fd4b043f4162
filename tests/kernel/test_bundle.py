"""The node bundle (dist/natra/natra) installed and run as a runtime runs /opt/cni/bin/natra.

`natra install` puts the bundle into a fake host root's /opt/cni/bin next to
Debian's real plugins and chains it into a ptp conflist; the chain then runs
against namespace Pods exactly as libcni would (natra.lab.cnichain): VERSION,
ADD with containerd-shaped limits, CHECK, traffic through the limit both ways,
DEL, and the uninstall that gives the conflist back. The bundle is not built
by the test suite (`make node-bundle` takes a while): without it, skip.
test_image.py drives the same fake node with the bundle the image installs.

Names: netns and pins start with nd6-. Everything made here is removed in a
finally, also when a test fails.
"""

from __future__ import annotations

import filecmp
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

import netns
import nodelab as N
import pytest

from natra.lab.cnichain import Chain, make_bin_dir
from natra.node import install as inst

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "dist" / "natra"
PREFIX = "nd6-"
BPFFS = "/sys/fs/bpf"
ADD_RUNS = 12


def _missing() -> str | None:
    if not (BUNDLE / "natra").is_file():
        return "node bundle not built (make node-bundle)"
    # the bundle carries its own BPF objects
    return netns.kernel_skip_reason(objects=(), node_bpffs=True, tools=("iperf3",),
                                    cni_plugins=("ptp", "host-local"))


pytestmark = [pytest.mark.root, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


@pytest.fixture
def node(tmp_path):
    """A fake host root with the bundle installed by `natra install`, and a private pin root."""
    tag = secrets.token_hex(3)
    root = tmp_path / "host"
    original = N.fake_host(root, f"{PREFIX}{tag}", tmp_path / "ipam")
    pins = f"{BPFFS}/{PREFIX}{tag}"
    os.makedirs(pins, exist_ok=True)
    try:
        inst.install(root, BUNDLE, defaults={"bpffsRoot": pins, "logFile": str(tmp_path / "natra.log")},
                     cni_bin_dirs=[inst.DEFAULT_CNI_BIN_DIR])
        yield root, tag, pins
        inst.uninstall(root, cni_bin_dirs=[inst.DEFAULT_CNI_BIN_DIR])
        assert (root / inst.DEFAULT_CONF_DIR / N.CONFLIST).read_bytes() == original
    finally:
        subprocess.run(["rm", "-rf", pins], capture_output=True)


def test_version_as_the_runtime_calls_it(node):
    root, _, _ = node
    plugin = root / inst.DEFAULT_CNI_BIN_DIR / "natra"
    assert plugin.is_symlink()
    out = subprocess.run([plugin], input=b"", env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
                         capture_output=True, check=True, cwd="/")
    info = json.loads(out.stdout)
    assert set(info["supportedVersions"]) >= {"0.3.1", "1.0.0", "1.1.0"}


def test_chain_through_the_bundle_limits_a_pod_both_ways(node):
    """The chain runs the installed bundle (not the Python launcher); the Pod it adds has both
    programs hooked and pinned under the configured root with the Pod's rate, CHECK passes and
    iperf3 measures the limit each way (limited_pod asserts R*t+B and at least half of R);
    the chain's DEL leaves the pin root empty."""
    from natra.kernel import datapath
    from natra.kernel import layout as L

    root, tag, pins = node
    plugin = root / inst.DEFAULT_CNI_BIN_DIR / "natra"
    # natra install copies the bundle into natra.d/<digest>/ and links the plugin there
    assert filecmp.cmp(plugin.resolve(), BUNDLE / "natra", shallow=False), "the chain runs another natra"
    with N.limited_pod(root, f"{PREFIX}{tag}") as pod:
        found = datapath.inspect(pod.att.container_id, root=pins)
        assert found is not None, os.listdir(pins)
        assert found.host_ifname == pod.host_veth
        assert {d for d, h in found.hooks.items() if h.attached} == {L.DIR_TO_POD, L.DIR_FROM_POD}
        assert {d: c.rate_bps for d, c in found.configs.items()} == {
            L.DIR_TO_POD: N.LIMIT_BPS, L.DIR_FROM_POD: N.LIMIT_BPS}
    assert os.listdir(pins) == []


def test_add_latency_bundle_next_to_python(node, tmp_path):
    """Reports ADD latency of both entry points, interleaved so load on the
    shared machine hits both alike, with the CPU time each call used (less
    sensitive to that load). Not a pass/fail on speed: it fails if an ADD does
    not limit the Pod (a failed-open ADD also exits 0, so each call's log line
    is checked, and after the last one the Pod's program is hooked with its
    rate), since the time of an ADD that did nothing is no ADD latency."""
    from natra.kernel import datapath
    from natra.kernel import layout as L

    root, tag, pins = node
    chain = N.chain_of(root)
    (tmp_path / "pybin").mkdir()
    python_chain = Chain(chain.conflist, make_bin_dir(str(tmp_path / "pybin"), python=sys.executable))
    natra = next(p for p in chain.conflist["plugins"] if p["type"] == "natra")
    limits = {"IngressRate": N.LIMIT_BPS, "IngressBurst": N.MAX_UINT32}
    times: dict[str, list[float]] = {"bundle": [], "python -m natra": []}
    cpu: dict[str, list[float]] = {label: [] for label in times}
    with N.Pod(chain, f"{PREFIX}{tag}", limits) as pod:
        ptp = chain.conflist["plugins"][0]
        prev = chain._exec(ptp, "ADD", pod.att, None)
        try:
            for _ in range(ADD_RUNS):
                for label, runner in (("bundle", chain), ("python -m natra", python_chain)):
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    start = time.perf_counter()
                    call = runner.run(natra, "ADD", pod.att, prev)  # a repeated ADD replaces
                    times[label].append((time.perf_counter() - start) * 1000)
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu[label].append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
                                      * 1000)
                    assert call.ok and call.output == prev, (label, call.code, call.stderr)
                    assert "ADD: limited to_pod" in call.stderr and "failed open" not in call.stderr, \
                        (label, call.stderr)
            found = datapath.inspect(pod.att.container_id, root=pins)
            assert found is not None and found.ok, found and found.problems
            assert {d for d, h in found.hooks.items() if h.attached} == {L.DIR_TO_POD}
            assert found.configs[L.DIR_TO_POD].rate_bps == N.LIMIT_BPS
        finally:
            chain._exec(natra, "DEL", pod.att, prev)
            chain._exec(ptp, "DEL", pod.att, prev)
    for label, ms in times.items():
        ms.sort()
        print(f"natra ADD via {label}: wall p50 {statistics.median(ms):.1f} ms, min {ms[0]:.1f} ms, "
              f"max {ms[-1]:.1f} ms; CPU p50 {statistics.median(cpu[label]):.1f} ms over {len(ms)} runs")
