"""Real TCP through the limited host veth: conformance (R*t + B) and goodput (> 80 % of R).

A "remote node" namespace and a "Pod" namespace are joined through the host
(tests/kernel/netns.py), Natra is installed on the Pod's host veth through the
facade (natra/kernel/datapath.py) in tcx and in clsact mode, and iperf3 runs a few
seconds of bulk TCP: remote -> Pod (DIR_TO_POD, host-veth egress) and
Pod -> remote (DIR_FROM_POD, host-veth ingress). The receiving iperf3 reports
bytes per interval (JSON); every run of consecutive intervals must stay within
R*t + B (R the rate in bytes/s, B the burst Natra applied), and the whole
transfer must reach 80 % of R. iperf3 counts TCP payload only, so headers give
the check a few % of room that the kernel does not have.

Measured goodput ratios are printed (run with -s to see them).
"""

from __future__ import annotations

import json
import os
import threading
import time

import netns
import pytest

from natra.kernel import datapath, maps, pins
from natra.kernel import layout as L
from natra.kernel.params import params_for, to_config

SKIP_REASON = netns.kernel_skip_reason(tools=("iperf3",))
pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))]

# Seconds per run. At 10M a policed TCP flow sends ~200 GSO super-packets in 3 s
# and loses ~40 of them whole; one retransmission timeout (>= 200 ms, doubled
# when it repeats) then weighs a third of a 2 s steady window, and a busy CI
# host once measured 0.62 there. 6 s at 10M judges the same 80 % over 5 s.
DURATION_S = {"10M": 6, "100M": 3}  # 8 runs keep the module near 45 s
INTERVAL_S = 0.5  # iperf3's reporting interval
MIN_GOODPUT_RATIO = 0.80
STEADY_AFTER_S = 1.0  # the default burst (500 ms of R) is spent by then
SERVER_START_S = 0.3  # time the iperf3 server needs to listen
PORT = 5301
CID = "nt3-traffic"


@pytest.fixture(scope="module")
def topology():
    with netns.pod_and_remote() as t:
        yield t


@pytest.fixture
def root():
    with netns.private_bpffs() as mnt:
        yield os.path.join(mnt, "natra")


def iperf(topology: netns.Topology, direction: int, seconds: int) -> dict:
    """Bulk TCP in `direction`; returns the receiving server's JSON report."""
    if direction == L.DIR_TO_POD:
        receiver, sender = topology.pod, topology.remote
    else:
        receiver, sender = topology.remote, topology.pod
    with netns.process(["iperf3", "-s", "-1", "-J", "-p", str(PORT)], ns=receiver.ns) as server:
        time.sleep(SERVER_START_S)
        netns.run("iperf3", "-c", receiver.ip, "-p", str(PORT), "-t", str(seconds), "-i", str(INTERVAL_S),
                  "-J", ns=sender.ns, timeout=seconds + 20)
        out, err = server.communicate(timeout=20)
    assert server.returncode == 0, err
    return json.loads(out)


def worst_excess(intervals: list[tuple[float, float, int]], rate_bytes: float, burst_bytes: float) -> float:
    """max over runs of consecutive intervals of bytes - (R*t + B); <= 0 means conforming."""
    worst = float("-inf")
    for i in range(len(intervals)):
        total = 0
        for j in range(i, len(intervals)):
            total += intervals[j][2]
            span = intervals[j][1] - intervals[i][0]
            worst = max(worst, total - (rate_bytes * span + burst_bytes))
    return worst


RATES = {"10M": 10_000_000, "100M": 100_000_000}
# The fine clock in both attach modes; and the coarse clock, which the plugin gives a
# policed direction whose bucket can spare a tick of rate (natra.kernel.params.to_config).
CASES = [(mode, rate, d, "fine") for d in (L.DIR_TO_POD, L.DIR_FROM_POD)
         for mode in ("tcx", "clsact") for rate in RATES]
CASES += [("tcx", rate, d, "coarse") for d in (L.DIR_TO_POD, L.DIR_FROM_POD) for rate in RATES]


def read_counters(root: str, direction: int) -> list[int]:
    from natra.kernel import bpfsys

    fd = bpfsys.obj_get(pins.pin_dir(CID, root).map("natra_counters"))
    try:
        return maps.read_counters(fd, direction)
    finally:
        os.close(fd)


def judge(report: dict, counters: list[int], rate_bps: int, burst_bits: int, label: str) -> None:
    """Assert the run stayed within R*t+B and reached MIN_GOODPUT_RATIO of R (overall and steady)."""
    intervals = [(iv["sum"]["start"], iv["sum"]["end"], iv["sum"]["bytes"]) for iv in report["intervals"]]
    rate_bytes, burst_bytes = rate_bps / 8, burst_bits / 8
    excess = worst_excess(intervals, rate_bytes, burst_bytes)
    received = report["end"]["sum_received"]
    goodput_ratio = received["bytes"] * 8 / received["seconds"] / rate_bps
    # After the first second the initial burst B is spent: what TCP sustains at R.
    steady = [iv for iv in intervals if iv[0] >= STEADY_AFTER_S]
    steady_ratio = sum(b for _, _, b in steady) * 8 / (steady[-1][1] - steady[0][0]) / rate_bps
    drops = sum(counters[L.verdict_packets_index(v)] for v in L.DROPPING_VERDICTS)
    marks = counters[L.verdict_packets_index(L.V_MARK)]
    print(f"\n{label}: goodput {goodput_ratio:.3f} of R over "
          f"{received['seconds']:.2f} s ({steady_ratio:.3f} after {STEADY_AFTER_S:.0f} s), "
          f"worst window {excess / 1e3:+.0f} kB vs R*t+B, "
          f"frames {counters[L.C_FRAMES]}, drops {drops}, CE marks {marks}")
    assert counters[L.C_FRAMES] > 0  # the traffic really crossed our program
    assert excess <= 0, f"{excess:.0f} bytes above R*t+B"
    assert goodput_ratio > MIN_GOODPUT_RATIO
    assert steady_ratio > MIN_GOODPUT_RATIO


@pytest.mark.parametrize("mode, rate, direction, clock", CASES,
                         ids=[f"{L.DIRECTION_NAMES[d]}-{m}-{r}-{c}" for m, r, d, c in CASES])
def test_tcp_stays_within_the_limit_and_reaches_it(topology, root, mode, rate, direction, clock):
    from natra.kernel import ticks

    rate_bps = RATES[rate]
    params = params_for(rate_bps)
    tick = ticks.coarse_tick_ns() if clock == "coarse" else 0
    cfgs = [to_config(params if d == direction else None, coarse_tick_ns=tick)
            for d in (L.DIR_TO_POD, L.DIR_FROM_POD)]
    assert bool(cfgs[direction].flags & L.CFG_COARSE_CLOCK) == (clock == "coarse")
    done = datapath.install(CID, topology.pod.host_if, cfgs, directions={direction}, mode=mode, root=root)
    try:
        assert done.mode == mode
        report = iperf(topology, direction, DURATION_S[rate])
        counters = read_counters(root, direction)
    finally:
        datapath.remove(CID, root=root)
    judge(report, counters, rate_bps, params.burst_bits,
          f"{L.DIRECTION_NAMES[direction]} {mode} {rate} {clock}")


MOVE_AFTER_S = 1.5  # into the transfer: the burst is spent and TCP runs at R


def iperf_with_a_step_midway(topology: netns.Topology, direction: int, step) -> dict:
    """100M bulk TCP in `direction`, `step()` run MOVE_AFTER_S into it; the server's report."""
    def midway() -> None:
        time.sleep(SERVER_START_S + MOVE_AFTER_S)
        step()

    runner = threading.Thread(target=midway)
    runner.start()
    try:
        return iperf(topology, direction, DURATION_S["100M"])
    finally:
        runner.join()


@pytest.mark.parametrize("direction", [L.DIR_TO_POD, L.DIR_FROM_POD], ids=lambda d: L.DIRECTION_NAMES[d])
def test_the_move_from_clsact_to_tcx_in_mid_transfer_keeps_the_limit(topology, root, direction):
    """The node agent's way (an `auto` ADD answered on clsact, moved to tcx afterwards),
    with the move made while bulk TCP runs: both hooks run the program for a grace
    period, which may only tighten the limit; the transfer must stay within R*t+B and
    still reach 80 % of R, and end on the tcx link."""
    rate_bps = RATES["100M"]
    params = params_for(rate_bps)
    cfgs = [to_config(params if d == direction else None) for d in (L.DIR_TO_POD, L.DIR_FROM_POD)]
    moves, moved = [], []
    datapath.use_tcx_later(lambda container_id, step: moves.append(step))
    try:
        done = datapath.install(CID, topology.pod.host_if, cfgs, directions={direction}, mode="auto",
                                root=root)
    finally:
        datapath.use_tcx_later(None)
    try:
        assert done.mode == "clsact" and done.tcx_pending and len(moves) == 1

        report = iperf_with_a_step_midway(topology, direction, lambda: moved.append(moves[0]()))
        found = datapath.inspect(CID, root=root)
        counters = read_counters(root, direction)
    finally:
        datapath.remove(CID, root=root)
    assert moved == ["moved to tcx"] and found.ok and found.mode == "tcx", (moved, found.problems)
    judge(report, counters, rate_bps, params.burst_bits, f"{L.DIRECTION_NAMES[direction]} moved mid-run 100M")


@pytest.mark.parametrize("direction", [L.DIR_TO_POD, L.DIR_FROM_POD], ids=lambda d: L.DIRECTION_NAMES[d])
def test_a_pod_on_the_shared_program_keeps_the_limit_through_its_own_program_and_the_move(
        topology, root, direction):
    """The node agent's way when a burst has taken every ready object: the ADD binds the Pod
    to the shared interim program (a real pool with one filled slot); while bulk TCP runs,
    its own program is swapped in on the same maps and the Pod moves to tcx. The transfer
    must stay within R*t+B, reach 80 % of R, and end on the Pod's own program on tcx."""
    from natra.kernel import pool as pool_mod

    rate_bps = RATES["100M"]
    params = params_for(rate_bps)
    cfgs = [to_config(params if d == direction else None) for d in (L.DIR_TO_POD, L.DIR_FROM_POD)]
    objects = pool_mod.ObjectPool(per_shape=0, shared=True, slots=1)
    objects.prime(cfgs, flow_table=4096, depth=0)
    assert objects.shared_once() and objects.shared_once()  # the program, then a slot
    moves, moved = [], []
    datapath.use_tcx_later(lambda container_id, step: moves.append(step))
    datapath.use_object_source(objects.take)
    try:
        done = datapath.install(CID, topology.pod.host_if, cfgs, directions={direction}, mode="auto",
                                root=root)
    finally:
        datapath.use_tcx_later(None)
        datapath.use_object_source(None)
    try:
        assert done.interim and done.tcx_pending and len(moves) == 1

        report = iperf_with_a_step_midway(topology, direction, lambda: moved.append(moves[0]()))
        found = datapath.inspect(CID, root=root)
        counters = read_counters(root, direction)
    finally:
        datapath.remove(CID, root=root)
        objects.stop()
    assert moved == ["own program in place of the shared one; moved to tcx"], moved
    assert found.ok and found.mode == "tcx" and "interim" not in found.meta, found.problems
    judge(report, counters, rate_bps, params.burst_bits,
          f"{L.DIRECTION_NAMES[direction]} shared, then own, 100M")
