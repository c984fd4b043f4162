"""The benchmarks still run end to end, and their arithmetic is right.

Covers bench/ (stats, harness, scenarios, report, run_all): the pure
arithmetic is checked against brute force without root; the smoke run
(`python3 -m bench.run_all --smoke`, ~2 min) builds Pods through the real
chain (Natra in both modes: shaping, the default, and policing), runs every
scenario briefly, writes the document and plots into a temporary directory,
and must leave no namespace, pin or IFB device behind. Natra's bytes over
R*t+B must be 0 in every run that measures them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "kernel"))

import netns as N  # noqa: E402 - tests/kernel/netns.py: the kernel tests' skip rule

from bench import stats  # noqa: E402 - the repository root is not on sys.path under plain `pytest`

SMOKE_TIMEOUT_S = 240
PREFIX = "nt8-"


# ---- arithmetic ------------------------------------------------------------------------------------

def brute_over(intervals, rate_bps, burst_bits, wire):
    worst = 0.0
    for i in range(len(intervals)):
        for j in range(i, len(intervals)):
            got = sum(iv.payload_bytes for iv in intervals[i:j + 1]) * wire
            allowed = rate_bps / 8 * (intervals[j].end_s - intervals[i].start_s) + burst_bits / 8
            worst = max(worst, got - allowed)
    return worst


@st.composite
def interval_series(draw):
    sizes = draw(st.lists(st.integers(0, 2_000_000), min_size=1, max_size=30))
    lengths = draw(st.lists(st.floats(0.05, 0.2), min_size=len(sizes), max_size=len(sizes)))
    t, out = 0.0, []
    for size, length in zip(sizes, lengths, strict=True):
        out.append(stats.Interval(t, t + length, size))
        t += length
    return out


@given(interval_series(), st.integers(1_000_000, 10**10), st.integers(0, 10**9),
       st.sampled_from([1.0, stats.WIRE_PER_PAYLOAD]))
def test_bytes_over_matches_every_window_checked_by_hand(intervals, rate, burst, wire):
    assert stats.bytes_over(intervals, rate, burst, wire) == pytest.approx(
        brute_over(intervals, rate, burst, wire), rel=1e-9, abs=1e-3)


def test_bytes_over_is_zero_at_the_limit_and_sees_a_burst_above_it():
    rate, burst = 100_000_000, 50_000_000
    steady = [stats.Interval(i * 0.1, (i + 1) * 0.1, rate // 80) for i in range(100)]
    assert stats.bytes_over(steady, rate, burst, 1.0) == 0
    spike = [stats.Interval(0, 0.1, rate // 80 + burst // 8 + 1000), *steady[1:]]
    assert stats.bytes_over(spike, rate, burst, 1.0) == pytest.approx(1000)


@given(st.lists(st.floats(0.01, 10), min_size=1, max_size=20))
def test_jain_is_between_one_over_n_and_one(shares):
    j = stats.jain(shares)
    assert 1 / len(shares) - 1e-9 <= j <= 1 + 1e-9


def test_jain_extremes():
    assert stats.jain([0.25] * 4) == pytest.approx(1.0)
    assert stats.jain([1.0, 0, 0, 0]) == pytest.approx(0.25)


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_is_a_member_and_ordered(values, q):
    p = stats.percentile(values, q)
    assert p in values
    assert p <= stats.percentile(values, 100) == max(values)


def test_spread_median_and_range():
    sp = stats.spread([3.0, 1.0, 2.0, 10.0])
    assert (sp.median, sp.low, sp.high, sp.runs) == (2.5, 1.0, 10.0, 4)
    assert stats.spread([float("nan")]).runs == 0


def test_sweep_bursts_run_from_one_frame_to_half_a_second_of_rate():
    from bench import scenarios

    points = ("mtu", "50ms", "500ms")
    assert scenarios.sweep_burst_bits(1_000, points) == [12_112]  # 500 ms of 1 kbit/s is under a frame
    assert scenarios.sweep_burst_bits(64_000, points) == [12_112, 32_000]
    assert scenarios.sweep_burst_bits(10**6, points) == [12_112, 50_000, 500_000]


def test_after_burst_share_starts_once_the_burst_is_delivered():
    from bench import scenarios

    rate = 8_000_000  # 1 MB/s: 100,000 bytes per 0.1 s
    burst = [stats.Interval(0, 0.1, 300_000)]
    steady = [stats.Interval(0.1 * i, 0.1 * (i + 1), 90_000) for i in range(1, 21)]
    assert scenarios.after_burst_share(burst + steady, rate, 2_000_000) == pytest.approx(0.9)
    assert scenarios.after_burst_share(burst + steady[:5], rate, 2_000_000) != \
        scenarios.after_burst_share(burst + steady[:5], rate, 2_000_000)  # NaN: under 1 s left


# ---- the smoke run -------------------------------------------------------------------------------

def _unavailable() -> str | None:
    return N.kernel_skip_reason(node_bpffs=True, tools=("iperf3", "bpftool"),
                                cni_plugins=("ptp", "host-local", "bandwidth"))


def _leftovers(record_path: Path | None = None) -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    left = [line.split()[0] for line in netns if line.startswith(PREFIX)]
    root = Path("/sys/fs/bpf/natra")
    if root.is_dir():
        left += [p.name for p in root.iterdir() if p.name.startswith(PREFIX)]
    # Natra's IFB devices of the run's containers (ntifb + a hash of the container ID)
    if record_path is not None and record_path.exists():
        from natra.kernel.shaping import ifb_name

        for cid in json.loads(record_path.read_text()).get("containers", []):
            shown = subprocess.run(["ip", "link", "show", "dev", ifb_name(cid)], capture_output=True)
            if shown.returncode == 0:
                left.append(ifb_name(cid))
    return left


def _natra_overs(record: dict) -> list[tuple[str, float]]:
    sc = record["scenarios"]
    found = [(f"rate {r['variant']}", r["bytes_over"]) for r in sc["rate"]["runs"]
             if r["variant"].startswith("natra")]
    found += [(f"fairness {r['variant']}", r["bytes_over"]) for r in sc["fairness"]["runs"]
              if r["variant"].startswith("natra")]
    found += [("scale", r["bytes_over"]) for r in sc["scale"]["variants"]["natra-shape"]["alone"]
              + sc["scale"]["variants"]["natra-shape"]["crowded"]]
    found += [(f"sweep {r['variant']}", r["bytes_over"]) for r in sc["sweep"]["runs"]
              if r["variant"].startswith("natra")]
    found += [("knobs", r["bytes_over"]) for r in sc["knobs"]["runs"]]
    return found


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.usefixtures("default_pin_root")
def test_smoke_run_end_to_end(tmp_path):
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    out, img, record_path = tmp_path / "benchmarks.md", tmp_path / "img", tmp_path / "record.json"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "bench.run_all", "--smoke", "--out", str(out),
                           "--img-dir", str(img), "--json", str(record_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        record = json.loads(record_path.read_text())
        assert record["errors"] == {}
        assert record["containers"], "the record lists no container (the IFB check would be empty)"
        assert set(record["scenarios"]) == {"rate", "latency", "fairness", "overhead", "control", "scale",
                                              "sweep", "knobs"}
        modes = {r["variant"] for r in record["scenarios"]["rate"]["runs"]}
        assert {"natra-shape", "natra-police"} <= modes, modes
        overs = _natra_overs(record)
        assert overs, "no run measured Natra's bytes over R*t+B"
        assert all(over == 0 for _, over in overs), overs
        text = out.read_text()
        for heading in ("## 1. Bulk TCP", "## 2. Small requests", "## 3. Several flows", "## 4. Overhead",
                        "## 5. Control plane", "## 6. Scale", "## 7. Rate and burst sweep",
                        "## 8. Shaping's knobs", "## Aims"):
            assert heading in text
        for name in ("rate", "latency", "fairness", "fairness-udp", "control", "scale", "sweep",
                     "knobs-queue"):
            assert (img / f"bench-{name}.png").stat().st_size > 1000
    finally:
        assert _leftovers(record_path) == [], "the smoke run left namespaces, pins or IFB devices behind"
