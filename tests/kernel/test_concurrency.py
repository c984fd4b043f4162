"""Many Pods at once, as a busy node starts them: parallel ADD, DEL and GC.

Owns: the concurrency claims of issue 9, checked against the kernel:
  - PODS ADDs in parallel (each a real ptp -> natra chain in its own netns),
    then PODS natra DELs in parallel, ROUNDS times: every call succeeds,
    every Pod is limited in both directions after its ADD (datapath.inspect
    reads the kernel back), and after the DELs nothing of Natra is left:
    no pins, no tcx program and no clsact qdisc or filter on any host veth
    (netlink / BPF_PROG_QUERY), no shaping qdisc on any host veth and no IFB
    of any Pod (shaping is the default mode), and no map, program or link in the kernel
    (every BPF map id walked; a leaked program or link would keep its config
    map, which carries this run's marker rate, alive);
  - GC running while ADDs and DELs are in flight never removes the state of a
    Pod its valid list names, and does remove the ones it does not.
The wall time of each phase is printed (2 cores: Python start-up of 50
plugin processes dominates).
Rule: Pods are nt9-* namespaces on 10.219.96.0/19 (Lab "concurrency");
everything is removed in a finally.
Must not know: the plugin's modules beyond datapath.inspect.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import chain as C
import pytest
from faultlab import Lab, assert_limited, inspection, natra_plugin, qdisc_kinds, tc, unavailable

from natra.kernel import shaping

PODS = 50
ROUNDS = 2
GC_PODS = 12  # live Pods while GC runs
GC_STALE = 6  # Pods GC must remove
GC_CALLS = 6

pytestmark = [pytest.mark.root, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]


@pytest.fixture
def lab():
    made = Lab("concurrency")
    try:
        yield made
    finally:
        made.close()


def nothing_of_natra_on(veth: str) -> list[str]:
    """What of Natra netlink and BPF_PROG_QUERY still see on a host veth."""
    from natra.kernel import attach

    found = []
    index = socket.if_nametoindex(veth)
    for direction in (0, 1):
        for prog_id in attach.tcx_prog_ids(index, direction):
            found.append(f"tcx prog {prog_id} on {veth}")
    kinds = qdisc_kinds(veth)
    if "clsact" in kinds:
        found.append(f"clsact qdisc on {veth}")
    if shaping.inspect(index) is not None or {"tbf", "htb", "bfifo"} & set(kinds):
        found.append(f"shaping qdiscs on {veth}: {kinds}")
    for hook in ("ingress", "egress"):
        for f in tc("filter", "show", "dev", veth, hook):
            if "natra" in f.get("options", {}).get("prog", {}).get("name", ""):
                found.append(f"natra filter on {veth} {hook}")
    return found


def ifbs_of(pods) -> list[str]:
    """The IFBs of these Pods that exist."""
    names = {name for _, name in socket.if_nameindex()}
    return sorted(n for n in (shaping.ifb_name(p.container_id) for p in pods) if n in names)


def _timed(label: str, fn, items, workers: int):
    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        out = list(pool.map(fn, items))
    print(f"{label}: {len(items)} in parallel took {time.monotonic() - started:.1f} s")
    return out


def test_parallel_adds_and_dels_leave_nothing(lab):
    ch = lab.chain()
    natra = natra_plugin(ch)
    ptp = ch.conflist["plugins"][0]
    pods = [lab.pod(ch, f"p{i}", capability_args=lab.limits()) for i in range(PODS)]
    for round_no in range(ROUNDS):
        adds = _timed(f"round {round_no} ADD (ptp+natra)", ch.add, pods, PODS)
        failed = [calls[-1].stdout + calls[-1].stderr for calls in adds if [c.code for c in calls] != [0, 0]]
        assert not failed, failed[:3]
        assert all("ADD: limited" in C.natra_call(calls).stderr for calls in adds)
        for pod in pods:
            assert_limited(lab, pod, "tcx")
            assert set(inspection(lab, pod).meta["direction_modes"].values()) == {"shape"}
        assert len(ifbs_of(pods)) == PODS
        veths = [C.host_veth(pod) for pod in pods]
        dels = _timed(f"round {round_no} natra DEL", lambda p: ch._run(natra, "DEL", p, p.cached_result),
                      pods, PODS)
        assert [d.code for d in dels] == [0] * PODS, [d.stdout for d in dels if d.code][:3]
        assert lab.pins() == []
        left = [thing for veth in veths for thing in nothing_of_natra_on(veth)]
        assert left == [] and ifbs_of(pods) == []
        assert lab.leaked() == []
        ptp_dels = _timed(f"round {round_no} ptp DEL", lambda p: ch._run(ptp, "DEL", p, p.cached_result),
                          pods, PODS)
        assert [d.code for d in ptp_dels] == [0] * PODS
        for pod in pods:
            pod.cached_result = None
        for pod in pods:  # a fresh rate per round: the census tells rounds apart
            pod.capability_args = lab.limits()
    assert lab.leaked() == []


def test_gc_during_adds_and_dels_keeps_live_state(lab):
    ch = lab.chain(version="1.1.0")
    natra = natra_plugin(ch)
    live = [lab.pod(ch, f"g{i}", capability_args=lab.limits()) for i in range(GC_PODS)]
    stale = [lab.pod(ch, f"s{i}", capability_args=lab.limits()) for i in range(GC_STALE)]
    for pod in stale:  # installed earlier; the runtime has forgotten them
        assert [c.code for c in ch.add(pod)] == [0, 0]

    def gc(_):
        return ch.gc("natra", live)

    # Round 1: ADDs of the live Pods race with GCs whose valid list names them.
    jobs = [("add", pod) for pod in live] + [("gc", i) for i in range(GC_CALLS)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: ch.add(job[1]) if job[0] == "add" else gc(job[1]), jobs))
    for (kind, _), result in zip(jobs, results, strict=True):
        if kind == "add":
            assert [c.code for c in result] == [0, 0], result[-1].stderr
        else:
            assert result.code == 0, result.stdout
    for pod in live:
        assert_limited(lab, pod, "tcx")
    assert C.ping(live[0].ip)
    from natra.kernel import datapath

    assert sorted(datapath.list_installed(root=lab.root)) == sorted(p.container_id for p in live)
    # Round 2: DELs of half the live Pods race with GCs and with re-ADDs of the other half.
    leaving, staying = live[: GC_PODS // 2], live[GC_PODS // 2:]
    jobs = ([("del", pod) for pod in leaving] + [("readd", pod) for pod in staying]
            + [("gc", i) for i in range(GC_CALLS)])

    def step(job):
        kind, what = job
        if kind == "del":
            return ch._run(natra, "DEL", what, what.cached_result)
        if kind == "readd":
            return ch._run(natra, "ADD", what, what.cached_result)
        return ch.gc("natra", staying)

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(step, jobs))
    assert all(r.code == 0 for r in results), [r.stdout for r in results if r.code]
    for pod in staying:
        assert_limited(lab, pod, "tcx")
    assert sorted(datapath.list_installed(root=lab.root)) == sorted(p.container_id for p in staying)
    assert ifbs_of(live + stale) == ifbs_of(staying) and len(ifbs_of(staying)) == len(staying)
    assert C.ping(staying[0].ip)
