"""`natra demo` run for real (natra/lab/demo.py; the pure half is tests/test_demo.py): JSON results, Ctrl-C,
and nothing left behind.

Each test runs the demo as a subprocess (`python -m natra demo`), which takes
its own slot (namespaces `ntdemo-<slot>-*`, subnets 10.97.<slot>/24 and
10.98.<4*slot+i>/24), so these tests run safely beside any other. After every
run: no namespace of that run, no pin directory for its container IDs, no
host veth of its Pods, no process naming its namespaces.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import netns
import pytest

from natra.kernel import pins
from natra.lab import demo as D
from natra.lab.cri import runtime as R

REPO = Path(__file__).resolve().parents[2]
DURATION_S = 3
RUN_TIMEOUT_S = 180
INTERRUPT_AFTER_S = 4
EXIT_AFTER_INTERRUPT_S = 60
IPERF_ACCOUNTING = 1.03  # iperf3's receiver counts a little after the sender's last second
MIN_SHARE = 0.8  # TCP through a 100 Mbit/s Natra Pod reaches at least this share of the limit


SKIP_REASON = netns.kernel_skip_reason(node_bpffs=True, objects=netns.ALL_OBJECTS,
                                       tools=("iperf3", "nsenter"), cni_plugins=("ptp",))
pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("default_pin_root"),
              pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))]


def demo(*args: str) -> list[str]:
    return [sys.executable, "-m", "natra", "demo", "--duration", str(DURATION_S), *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}".rstrip(":")}


def run_prefix(stderr: str) -> str:
    found = re.search(r"natra demo: run (ntdemo-\d+-)", stderr)
    assert found, stderr
    return found.group(1)


def assert_nothing_left(prefix: str, container_ids: list[str] = (), veths: list[str] = ()) -> None:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [line for line in namespaces.splitlines() if line.startswith(prefix)], namespaces
    assert not [p.name for p in Path(pins.DEFAULT_ROOT).glob(f"{prefix}*")]
    for cid in container_ids:
        assert not pins.pin_dir(cid).exists(), cid
    for veth in filter(None, veths):
        with pytest.raises(OSError):
            socket.if_nametoindex(veth)
    mine = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(f"/netns/{prefix}".encode() in a for a in argv):
            mine.append(argv)
    assert not mine, mine


@pytest.fixture(scope="module")
def netns_run() -> dict:
    proc = subprocess.run(demo("--json"), capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_four_pods_one_per_limiter_and_mode(netns_run):
    assert netns_run["runtime"] == "netns" and netns_run["rate_bps"] == 100_000_000
    assert {label: (p["limiter"], p["mode"]) for label, p in netns_run["pods"].items()} == {
        "natra": ("natra", "shape"), "natra-police": ("natra", "police"), "standard": ("bandwidth", None),
        "unlimited": ("none", None)}
    assert all(p["short_failures"] == 0 for p in netns_run["pods"].values())


@pytest.mark.parametrize("pod", ["natra", "natra-police"])
def test_natra_holds_the_limit_and_tcp_reaches_it(netns_run, pod):
    """Received bytes within R*t + B (B: Natra's clamp of containerd's burst), and >= 80 % of R."""
    share = netns_run["pods"][pod]["goodput_share"]
    bound = (1 + D.NATRA_BURST_S / DURATION_S) * IPERF_ACCOUNTING
    assert MIN_SHARE <= share <= bound, (share, bound)
    assert netns_run["pods"][pod]["heavy"] >= 1  # the bulk flow was found


def test_shaping_retransmits_less_than_policing(netns_run):
    """The point of shaping: the bulk flow queues instead of losing its super-packets."""
    pods = netns_run["pods"]
    assert pods["natra"]["retransmits"] < pods["natra-police"]["retransmits"], pods
    print(f"retransmits: shape {pods['natra']['retransmits']}, police {pods['natra-police']['retransmits']}")


def test_short_transfers_under_load_are_faster_with_natra(netns_run):
    pods = netns_run["pods"]
    assert pods["natra"]["load_p99_ms"] < pods["standard"]["load_p99_ms"], pods
    print(f"loaded p99: natra {pods['natra']['load_p99_ms']:.1f} ms, "
          f"standard {pods['standard']['load_p99_ms']:.1f} ms")


def test_run_leaves_nothing(netns_run):
    pods = netns_run["pods"].values()
    assert all(p["container_id"].startswith(netns_run["prefix"]) for p in pods)
    assert_nothing_left(netns_run["prefix"], [p["container_id"] for p in pods],
                        [p["host_veth"] for p in pods])


def test_ctrl_c_exits_and_leaves_nothing():
    proc = subprocess.Popen(demo(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        time.sleep(INTERRUPT_AFTER_S)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=EXIT_AFTER_INTERRUPT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted, cleaning up" in stderr
    assert_nothing_left(run_prefix(stderr))


@pytest.mark.skipif(R.why_unavailable() is not None, reason=f"containerd: {R.why_unavailable()}")
def test_containerd_runtime_runs_the_pods_as_cri_sandboxes():
    proc = subprocess.run(demo("--runtime", "containerd", "--json"), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, env=env())
    if proc.returncode != 0 and "not available" in proc.stderr:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    pods = got["pods"]
    assert got["runtime"] == "containerd" and got["burst_bits"] == D.CONTAINERD_BURST_BITS
    assert all(re.fullmatch(r"[0-9a-f]{64}", p["container_id"]) for p in pods.values())  # sandbox IDs
    bound = (1 + D.NATRA_BURST_S / DURATION_S) * IPERF_ACCOUNTING
    assert MIN_SHARE <= pods["natra"]["goodput_share"] <= bound
    assert pods["standard"]["goodput_share"] > pods["natra"]["goodput_share"]  # the 512 MiB TBF bucket
    assert pods["natra"]["load_p99_ms"] < pods["standard"]["load_p99_ms"]
    assert_nothing_left(got["prefix"], [p["container_id"] for p in pods.values()],
                        [p["host_veth"] for p in pods.values()])
    node = re.search(r"containerd node in (\S+)", proc.stderr).group(1)
    assert not os.path.exists(node)
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if node.encode() in _read(p)]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
