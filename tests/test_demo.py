"""natra/lab/demo.py without root: percentiles, the table, the Pods' annotations and addresses, slots.

The kernel half (the demo actually run, Ctrl-C included) is tests/kernel/test_demo_live.py.
"""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natra.lab import demo as D
from natra.lab.cri import node as NODE

TAKEN = [ipaddress.ip_network(n) for n in ("10.200.0.0/13", "10.208.0.0/16", "10.209.0.0/16",
                                           "10.210.0.0/16", "10.219.0.0/16", "10.236.0.0/16")]
RATE = 100_000_000


# ---- percentile ------------------------------------------------------------------------------

@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=200),
       q=st.floats(1, 100))
def test_percentile_is_the_nearest_rank(values, q):
    p = D.percentile(values, q)
    assert p in values
    n = len(values)
    assert sum(v <= p for v in values) >= q / 100 * n  # at least q % at or below it
    assert sum(v < p for v in values) < q / 100 * n  # and it is the smallest such value


def test_percentile_of_nothing_is_nan_and_known_ranks():
    assert math.isnan(D.percentile([], 50))
    values = [float(v) for v in range(1, 101)]
    assert (D.percentile(values, 50), D.percentile(values, 99), D.percentile(values, 100)) == (50, 99, 100)
    assert D.percentile([3.0, 1.0, 2.0], 50) == 2.0


# ---- the table -------------------------------------------------------------------------------

def _pod(label, limiter, **results) -> D.PodRun:
    return D.PodRun(label, limiter, results=results)


def _three(natra_p99: float, standard_p99: float) -> list[D.PodRun]:
    common = {"idle_p50_ms": 0.5, "idle_p99_ms": 2.0, "load_p50_ms": 1.0}
    return [_pod("natra", "natra", goodput_bps=97e6, goodput_share=0.97, load_p99_ms=natra_p99, drops=12,
                 heavy=1, **common),
            _pod("standard", "bandwidth", goodput_bps=1.2e9, goodput_share=12.0, load_p99_ms=standard_p99,
                 drops=None, heavy=None, **common),
            _pod("unlimited", "none", goodput_bps=9e9, goodput_share=90.0, load_p99_ms=float("nan"),
                 drops=None, heavy=None, **common)]


def test_table_has_one_row_per_pod_in_order_with_aligned_columns():
    text = D.render_table(_three(2.0, 50.0), RATE, 10_000, D.CONTAINERD_BURST_BITS)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("Pod"))
    rows = lines[header + 2:header + 5]
    assert [r.split()[0] for r in rows] == ["natra", "standard", "unlimited"]
    assert set(lines[header + 1].replace(" ", "")) == {"-"}
    start = lines[header].index("of limit")
    assert rows[0][start:].startswith("0.97") and rows[1][start:].startswith("12.00")
    assert rows[2][start:].startswith("-")  # no limit, no share
    assert "1.0 / 2.0" in rows[0] and "1.0 / n/a" in rows[2]  # loaded p50/p99; NaN shows as n/a
    assert "Limit 100 Mbit/s" in lines[0] and "10 KB" in lines[0]


def test_table_reports_the_latency_ratio_and_the_burst_note():
    text = D.render_table(_three(2.0, 50.0), RATE, 10_000, D.CONTAINERD_BURST_BITS)
    assert "standard plugin / Natra = 25.0x" in text
    assert "512 MiB TBF bucket (43 s of line rate" in text and "500 ms" in text
    other = D.render_table(_three(4.0, 10.0), RATE, 10_000, 50_000_000)
    assert "= 2.5x" in other and "TBF bucket" not in other


def test_pod_results_from_an_iperf3_report():
    bulk = {"end": {"sum_received": {"bits_per_second": 95e6}, "sum_sent": {"retransmits": 7}}}
    got = D.pod_results(RATE, bulk, {"latencies_s": [0.001, 0.002]}, {"latencies_s": [0.004], "failures": 1})
    assert got["goodput_share"] == pytest.approx(0.95) and got["retransmits"] == 7
    assert (got["idle_p50_ms"], got["idle_p99_ms"], got["load_p99_ms"]) == pytest.approx((1.0, 2.0, 4.0))
    assert got["short_failures"] == 1


def test_json_report_names_every_pod_and_the_run():
    pods = _three(2.0, 50.0)
    pods[0].container_id, pods[0].host_veth = "ntdemo-0-natra-abc", "veth1"
    got = D.report(pods, RATE, D.CONTAINERD_BURST_BITS, D.RUNTIME_NETNS, "ntdemo-0-")
    assert set(got["pods"]) == {"natra", "standard", "unlimited"}
    assert got["pods"]["natra"]["container_id"] == "ntdemo-0-natra-abc"
    assert got["pods"]["natra"]["load_p99_ms"] == 2.0 and got["prefix"] == "ntdemo-0-"


# ---- Pods: annotations, addresses, the containerd runtime's networks ---------------------------

def test_limited_pods_annotate_both_directions_and_the_unlimited_none():
    both = {D.ANNOTATION_INGRESS: "10M", D.ANNOTATION_EGRESS: "10M"}
    assert D.pod_annotations(D.LIMITER_NATRA, "10M") == both
    assert D.pod_annotations(D.LIMITER_BANDWIDTH, "10M") == D.pod_annotations(D.LIMITER_NATRA, "10M")
    assert D.pod_annotations(D.LIMITER_NONE, "10M") == {}


def test_host_veth_is_the_interface_outside_the_sandbox():
    ns = "/tmp/x/netns/cni-1"
    result = {"Interfaces": {"eth0": {"Sandbox": ns}, "lo": {"Sandbox": ns}, "vetheb7c05a1": {"Sandbox": ""}}}
    assert D.host_veth_of(result) == "vetheb7c05a1"
    assert D.host_veth_of(None) == "" and D.host_veth_of({"Interfaces": None}) == ""


def _all_subnets(slot: int) -> list[ipaddress.IPv4Network]:
    pods = [ipaddress.ip_network(D.pod_subnet(slot, i)) for i in range(len(D.PODS))]
    cri = [ipaddress.ip_network(n[3]) for n in NODE.networks(
        D.LIMITER_NATRA, {D.STANDARD_HANDLER: D.LIMITER_BANDWIDTH}, D.pod_subnet(slot, D.CRI_BLOCK))]
    remote = ipaddress.ip_network(D.REMOTE_SUBNET.format(slot=slot) + ".0/24")
    return pods + cri + [remote]


@given(a=st.integers(0, D.MAX_SLOTS - 1), b=st.integers(0, D.MAX_SLOTS - 1))
def test_runs_in_different_slots_share_no_subnet_and_avoid_the_other_tests(a, b):
    mine = _all_subnets(a)
    assert all(not x.overlaps(y) for i, x in enumerate(mine) for y in mine[i + 1:])
    assert all(not x.overlaps(t) for x in mine for t in TAKEN)
    if a != b:
        assert all(not x.overlaps(y) for x in mine for y in _all_subnets(b))
    assert D.slot_prefix(a) != D.slot_prefix(b) or a == b


def test_containerd_networks_pick_the_limiter_per_runtime_handler():
    nets = NODE.networks(D.LIMITER_NATRA, {D.STANDARD_HANDLER: D.LIMITER_BANDWIDTH}, "10.98.3.0/24")
    assert [(h, lim) for h, lim, _, _ in nets] == [(NODE.DEFAULT_HANDLER, "natra"), ("standard", "bandwidth")]
    assert len({name for _, _, name, _ in nets}) == 2
    assert NODE.networks("natra", {}, "10.98.3.0/24") == [(NODE.DEFAULT_HANDLER, "natra", NODE.NETWORK_NAME,
                                                         "10.98.3.0/24")]
    config = NODE.containerd_config(NODE.NodeLayout(Path("/tmp/ntdemo-x")), handlers=(D.STANDARD_HANDLER,))
    assert 'runtimes.standard]' in config and 'cni_conf_dir = "/tmp/ntdemo-x/cni-conf-standard"' in config


# ---- slots ---------------------------------------------------------------------------------

def test_slots_are_exclusive_until_released(tmp_path):
    first = D.Slot(str(tmp_path), slots=2)
    second = D.Slot(str(tmp_path), slots=2)
    assert {first.index, second.index} == {0, 1}
    with pytest.raises(RuntimeError, match="slots"):
        D.Slot(str(tmp_path), slots=2)
    first.release()
    again = D.Slot(str(tmp_path), slots=2)
    assert again.index == first.index
    again.release()
    second.release()
