"""The node bundle (dist/natra/natra) installed and run as a runtime runs /opt/cni/bin/natra.

`natra install` puts the bundle into a fake host root's /opt/cni/bin next to
Debian's real plugins and chains it into a ptp conflist; the chain then runs
against namespace Pods exactly as libcni would (natra.cnichain): VERSION,
ADD with containerd-shaped limits, CHECK, traffic through the limit both ways,
DEL, and the uninstall that gives the conflist back. The bundle is not built
by the test suite (`make node-bundle` takes a while): without it, skip.

Names: netns and pins start with nd6-. Everything made here is removed in a
finally, also when a test fails.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natra import attach, params
from natra import install as inst
from natra.cnichain import DEBIAN_CNI_DIR, Attachment, Chain, make_bin_dir

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "dist" / "natra"
PREFIX = "nd6-"
BPFFS = "/sys/fs/bpf"
CNI_VERSION = "1.0.0"  # Debian's plugins (1.1.1) speak up to 1.0.0
LIMIT_BPS = 20_000_000
IPERF_SECONDS = 2
IPERF_PORT = 5201
# Bits delivered in t seconds stay within R*t + B (B: Natra's clamped burst);
# iperf3's receiver clock starts a little after the first bytes, hence 2 %.
TIMING_SLACK = 1.02
MIN_SHARE = 0.5  # a limiter that throttles far below its rate is broken too
ADD_RUNS = 12
SUBNET_POOL = ipaddress.ip_network("10.236.0.0/16")
MAX_UINT32 = 2**32 - 1  # containerd's burst when the Pod sets none


def _missing() -> str | None:
    if not (BUNDLE / "natra").is_file():
        return "node bundle not built (make node-bundle)"
    if os.geteuid() != 0:
        return "needs root (netns, bpf)"
    if not os.path.exists(os.path.join(DEBIAN_CNI_DIR, "ptp")):
        return "needs containernetworking-plugins (ptp, host-local)"
    if shutil.which("iperf3") is None:
        return "needs iperf3"
    out = subprocess.run(["stat", "-f", "-c", "%T", BPFFS], capture_output=True, text=True).stdout
    if "bpf" not in out:
        return f"bpffs not mounted at {BPFFS}"
    return None


pytestmark = [pytest.mark.root, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _free_subnet() -> str:
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                            text=True).stdout
    used = [ipaddress.ip_network(w.split()[0], strict=False) for w in routes.splitlines()
            if w and w.split()[0][0].isdigit()]
    subnets = list(SUBNET_POOL.subnets(new_prefix=24))
    random.shuffle(subnets)
    for s in subnets:
        if not any(s.overlaps(u) for u in used):
            return str(s)
    raise RuntimeError("no free /24 in the test pool")


@pytest.fixture
def node(tmp_path):
    """A fake host root with the bundle installed by `natra install`, and a private pin root."""
    tag = secrets.token_hex(3)
    root = tmp_path / "host"
    conf_dir = root / inst.DEFAULT_CONF_DIR
    conf_dir.mkdir(parents=True)
    bin_dir = root / inst.DEFAULT_CNI_BIN_DIR
    bin_dir.mkdir(parents=True)
    for name in os.listdir(DEBIAN_CNI_DIR):
        os.symlink(os.path.join(DEBIAN_CNI_DIR, name), bin_dir / name)
    pins = f"{BPFFS}/{PREFIX}{tag}"
    conflist = {"cniVersion": CNI_VERSION, "name": f"{PREFIX}{tag}", "plugins": [
        {"type": "ptp", "ipMasq": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": _free_subnet()}]],
                  "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(tmp_path / "ipam")}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]}
    original = json.dumps(conflist, indent=1).encode()
    (conf_dir / "10-ptp.conflist").write_bytes(original)
    os.makedirs(pins, exist_ok=True)
    try:
        inst.install(root, BUNDLE, defaults={"bpffsRoot": pins, "logFile": str(tmp_path / "natra.log")},
                     cni_bin_dirs=[inst.DEFAULT_CNI_BIN_DIR])
        yield root, tag, pins
        inst.uninstall(root, cni_bin_dirs=[inst.DEFAULT_CNI_BIN_DIR])
        assert (conf_dir / "10-ptp.conflist").read_bytes() == original
    finally:
        subprocess.run(["rm", "-rf", pins], capture_output=True)


def _chain(root: Path) -> Chain:
    conf = json.loads((root / inst.DEFAULT_CONF_DIR / "10-ptp.conflist").read_bytes())
    return Chain(conf, str(root / inst.DEFAULT_CNI_BIN_DIR))


class Pod:
    """A namespace Pod; removed with its chain DEL on exit."""

    def __init__(self, chain: Chain, tag: str, limits: dict):
        self.chain, self.name = chain, f"{PREFIX}{tag}"
        self.att = Attachment(
            container_id=f"{self.name}-c0ffee", netns=f"/var/run/netns/{self.name}",
            k8s_args={"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": self.name,
                      "K8S_POD_INFRA_CONTAINER_ID": f"{self.name}-c0ffee", "K8S_POD_UID": f"uid-{tag}"},
            capability_args={"bandwidth": limits, "portMappings": [],
                             "io.kubernetes.cri.pod-annotations": {}})
        self.result: dict | None = None

    def __enter__(self) -> Pod:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        return self

    def add(self) -> dict:
        self.result = self.chain.add(self.att)
        return self.result

    @property
    def address(self) -> str:
        return self.result["ips"][0]["address"].split("/")[0]

    @property
    def host_veth(self) -> str:
        return next(i["name"] for i in self.result["interfaces"] if not i.get("sandbox"))

    def __exit__(self, *exc) -> None:
        try:
            if self.att.cached_result is not None:
                self.chain.delete(self.att)
        finally:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def _hooked_programs(ifname: str) -> int:
    """Programs on the veth's two tcx hooks, or Natra's clsact filters when it fell back."""
    index = socket.if_nametoindex(ifname)
    count = sum(len(attach.tcx_prog_ids(index, direction)) for direction in (0, 1))
    for parent in ("ingress", "egress"):
        out = subprocess.run(["tc", "filter", "show", "dev", ifname, parent], capture_output=True, text=True)
        count += out.stdout.count("natra")
    return count


def _iperf(pod: Pod, reverse: bool) -> tuple[float, float]:
    """(bits received, seconds) of an iperf3 run between the host and the Pod's server."""
    server = subprocess.Popen(["ip", "netns", "exec", pod.name, "iperf3", "-s", "-1", "-p", str(IPERF_PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        cmd = ["iperf3", "-c", pod.address, "-p", str(IPERF_PORT), "-t", str(IPERF_SECONDS), "-J"]
        out = subprocess.run(cmd + (["-R"] if reverse else []), capture_output=True, text=True,
                             timeout=IPERF_SECONDS + 20)
        received = json.loads(out.stdout)["end"]["sum_received"]
        return received["bytes"] * 8, received["seconds"]
    finally:
        server.kill()
        server.wait()


def test_version_as_the_runtime_calls_it(node):
    root, _, _ = node
    plugin = root / inst.DEFAULT_CNI_BIN_DIR / "natra"
    assert plugin.is_symlink()
    out = subprocess.run([plugin], input=b"", env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
                         capture_output=True, check=True, cwd="/")
    info = json.loads(out.stdout)
    assert set(info["supportedVersions"]) >= {"0.3.1", "1.0.0", "1.1.0"}


def test_chain_through_the_bundle_limits_a_pod_both_ways(node):
    root, tag, pins = node
    chain = _chain(root)
    assert [p["type"] for p in chain.conflist["plugins"]] == ["ptp", "natra", "portmap"]
    limits = {"IngressRate": LIMIT_BPS, "IngressBurst": MAX_UINT32,
              "EgressRate": LIMIT_BPS, "EgressBurst": MAX_UINT32}
    with Pod(chain, tag, limits) as pod:
        pod.add()
        assert _hooked_programs(pod.host_veth) == 2
        chain.check(pod.att)
        burst = params.default_burst_bits(LIMIT_BPS, MAX_UINT32)
        for direction, reverse in (("to the Pod", False), ("from the Pod", True)):
            bits, seconds = _iperf(pod, reverse)
            assert bits <= (LIMIT_BPS * seconds + burst) * TIMING_SLACK, (direction, bits, seconds)
            assert bits >= MIN_SHARE * LIMIT_BPS * seconds, (direction, bits, seconds)
        chain.delete(pod.att)
        assert os.listdir(pins) == []


def test_add_latency_bundle_next_to_python(node, tmp_path):
    """Reports ADD latency of both entry points, interleaved so load on the
    shared machine hits both alike, with the CPU time each call used (less
    sensitive to that load). Not a pass/fail on speed: it fails only if an ADD
    fails."""
    root, tag, _ = node
    chain = _chain(root)
    (tmp_path / "pybin").mkdir()
    python_chain = Chain(chain.conflist, make_bin_dir(str(tmp_path / "pybin"), python=sys.executable))
    natra = next(p for p in chain.conflist["plugins"] if p["type"] == "natra")
    limits = {"IngressRate": LIMIT_BPS, "IngressBurst": MAX_UINT32}
    times: dict[str, list[float]] = {"bundle": [], "python -m natra": []}
    cpu: dict[str, list[float]] = {label: [] for label in times}
    with Pod(chain, tag, limits) as pod:
        ptp = chain.conflist["plugins"][0]
        prev = chain._exec(ptp, "ADD", pod.att, None)
        try:
            for _ in range(ADD_RUNS):
                for label, runner in (("bundle", chain), ("python -m natra", python_chain)):
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    start = time.perf_counter()
                    runner._exec(natra, "ADD", pod.att, prev)  # a repeated ADD replaces
                    times[label].append((time.perf_counter() - start) * 1000)
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu[label].append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
                                      * 1000)
        finally:
            chain._exec(natra, "DEL", pod.att, prev)
            chain._exec(ptp, "DEL", pod.att, prev)
    for label, ms in times.items():
        ms.sort()
        print(f"natra ADD via {label}: wall p50 {statistics.median(ms):.1f} ms, min {ms[0]:.1f} ms, "
              f"max {ms[-1]:.1f} ms; CPU p50 {statistics.median(cpu[label]):.1f} ms over {len(ms)} runs")
