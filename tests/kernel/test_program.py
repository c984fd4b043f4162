"""The kernel program on crafted frames through BPF_PROG_TEST_RUN: clear cases.

Each test loads a private object with the test clock (time fed through
__sk_buff.tstamp), sends scapy-built frames, and checks verdicts, the frames
that come out and the counters and maps read back. Expected numbers are
derived from the configuration in the test, not copied from a run.
(tests/kernel/test_differential.py compares everything with the model.)
"""

from __future__ import annotations

import os

import pytest
from natra.reference.key import parse_frame
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from natra.kernel import layout as L
from natra.kernel import maps, testrun
from natra.kernel.params import DataPathParams, to_config

TEST_WIDTH = 64  # a small sketch: snapshots stay quick
TEST_DEPTH = 4
RATE_BPS = 8_000_000  # 1 byte per microsecond: times below are easy to read
BURST_BYTES = 100_000
RESERVE_BYTES = 20_000
THRESHOLD_BYTES = 10_000
WINDOW_NS = 1_000_000_000
FRAME_LEN = 1000  # every test frame is exactly this long (skb->len)
T0 = 10 * WINDOW_NS  # a start time well past zero, inside window 10
ECT0 = 0x02


def _params(ecn: bool = True) -> DataPathParams:
    return DataPathParams(rate_bps=RATE_BPS, burst_bits=BURST_BYTES * 8, reserve_bits=RESERVE_BYTES * 8,
                          width=TEST_WIDTH, depth=TEST_DEPTH, threshold_bytes=THRESHOLD_BYTES,
                          window_ns=WINDOW_NS, ecn=ecn, early_percent=50).validate()


def _configs(ecn: bool = True, from_pod: bool = False):
    p = _params(ecn)
    return [to_config(p, test_clock=True, width=TEST_WIDTH, depth=TEST_DEPTH),
            to_config(p if from_pod else None, test_clock=True, width=TEST_WIDTH, depth=TEST_DEPTH)]


def _pad(pkt, length: int = FRAME_LEN) -> bytes:
    raw = bytes(pkt)
    assert len(raw) <= length
    return bytes(pkt / Raw(b"\x00" * (length - len(raw))))


def tcp4(sport: int, tos: int = 0, length: int = FRAME_LEN) -> bytes:
    return _pad(Ether() / IP(src="10.1.0.1", dst="10.1.0.2", tos=tos) / TCP(sport=sport, dport=80), length)


def tcp6(sport: int, tc: int = 0) -> bytes:
    return _pad(Ether() / IPv6(src="fd00::1", dst="fd00::2", tc=tc) / TCP(sport=sport, dport=80))


def _cost_nbit(length: int = FRAME_LEN) -> int:
    return length * L.NBIT_PER_BYTE


def _send(obj, frame: bytes, now: int, direction: int = L.DIR_TO_POD) -> testrun.RunResult:
    return testrun.run(obj.prog_fd(direction), frame, now)


def _flows(obj) -> dict[bytes, dict]:
    return maps.read_flows(obj.map_fd("natra_flows"), obj.map_fd("natra_flow_keys"))


def _counter(obj, index: int, direction: int = L.DIR_TO_POD) -> int:
    return maps.read_counters(obj.map_fd("natra_counters"), direction)[index]


def _verdict_count(obj, verdict: int, direction: int = L.DIR_TO_POD) -> int:
    return _counter(obj, L.verdict_packets_index(verdict), direction)


def _ipv4_checksum_ok(header: bytes) -> bool:
    total = sum((header[i] << 8) | header[i + 1] for i in range(0, len(header), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def _fill_with_heavy(obj, frame_of, now: int) -> list[testrun.RunResult]:
    """One flow sends FRAME_LEN frames at `now` until its first drop; the results."""
    cfg = _configs()[0]
    limit = cfg.tau_nbit // _cost_nbit() + 2  # it must be dropped before the bucket's depth
    results = []
    for _ in range(limit):
        results.append(_send(obj, frame_of(), now))
        if results[-1].retval == testrun.TC_ACT_SHOT:
            return results
    raise AssertionError("a bulk flow was never dropped")


@pytest.mark.root
def test_mice_pass_while_the_bucket_can_pay_and_then_are_dropped(load_natra):
    obj = load_natra(_configs())
    cfg = _configs()[0]
    can_pay = cfg.tau_nbit // _cost_nbit()  # frames the full bucket pays for at one instant
    per_flow = (THRESHOLD_BYTES - 1) // FRAME_LEN  # frames a flow may send and stay a mouse
    results = [_send(obj, tcp4(sport=20000 + i // per_flow), T0) for i in range(can_pay + 1)]
    assert [r.retval for r in results[:can_pay]] == [testrun.TCX_NEXT] * can_pay
    assert results[-1].retval == testrun.TC_ACT_SHOT
    assert _verdict_count(obj, L.V_PASS_MOUSE) == can_pay
    assert _verdict_count(obj, L.V_DROP_MOUSE) == 1
    assert _counter(obj, L.verdict_bytes_index(L.V_PASS_MOUSE)) == can_pay * FRAME_LEN
    assert _counter(obj, L.C_FRAMES) == can_pay + 1
    assert _counter(obj, L.C_IPV4) == can_pay + 1
    assert _flows(obj) == {}  # mice never allocate
    state = maps.read_state(obj.map_fd("natra_state"), L.DIR_TO_POD)
    assert state["backlog_nbit"] == can_pay * _cost_nbit()
    assert state["last_ns"] == T0


@pytest.mark.root
def test_bulk_flow_turns_heavy_is_dropped_at_heavy_line_and_a_mouse_still_passes(load_natra):
    obj = load_natra(_configs(ecn=False))
    cfg = _configs(ecn=False)[0]
    results = _fill_with_heavy(obj, lambda: tcp4(sport=40000), T0)
    passed = len(results) - 1
    assert passed == cfg.heavy_line_nbit // _cost_nbit()  # dropped exactly where it would cross the line
    mice_frames = (THRESHOLD_BYTES - 1) // FRAME_LEN + 1  # frames before the sketch says heavy
    assert _verdict_count(obj, L.V_PASS_MOUSE) == mice_frames - 1
    assert _verdict_count(obj, L.V_PASS_HEAVY) == passed - (mice_frames - 1)
    assert _verdict_count(obj, L.V_DROP_HEAVY) == 1
    assert _counter(obj, L.C_FLOW_NEW) == 1

    key = parse_frame(tcp4(sport=40000)).key
    flows = _flows(obj)
    assert list(flows) == [key]
    assert flows[key]["passed_bytes"] == (passed - (mice_frames - 1)) * FRAME_LEN
    assert flows[key]["dropped_bytes"] == FRAME_LEN
    assert flows[key]["counted_epoch"] == T0 // WINDOW_NS + 1
    assert maps.read_state(obj.map_fd("natra_state"), L.DIR_TO_POD)["heavy_now"] == 1

    # The reserve is for mice: a new small flow still gets through.
    mouse = _send(obj, tcp4(sport=50000), T0)
    assert mouse.retval == testrun.TCX_NEXT
    assert _verdict_count(obj, L.V_PASS_MOUSE) == mice_frames
    assert _send(obj, tcp4(sport=40000), T0).retval == testrun.TC_ACT_SHOT  # the bulk flow still not


def _send_until_marked(obj, frame: bytes):
    """Send one heavy flow's frames at T0 until the first CE mark.

    Returns (index, result). Checks on the way that every frame before it passed
    untouched, and at the mark that the aggregate is past the early line and the
    flow's own share bucket past its mark line (design.md: only the flow that
    congests is marked), while just before the mark at least one was not."""
    cfg = _configs()[0]
    mark_line = cfg.heavy_line_nbit - ((cfg.heavy_line_nbit - cfg.early_line_nbit) >> 2)
    key = parse_frame(frame).key
    flow_before = 0
    for i in range(cfg.heavy_line_nbit // _cost_nbit()):
        r = _send(obj, frame, T0)
        assert r.retval == testrun.TCX_NEXT
        flow = _flows(obj).get(key, {"backlog_nbit": 0})
        aggregate = (i + 1) * _cost_nbit()
        if r.frame_out != frame:
            assert aggregate > cfg.early_line_nbit and flow["backlog_nbit"] > mark_line
            assert aggregate - _cost_nbit() <= cfg.early_line_nbit or flow_before <= mark_line
            return i, r
        flow_before = flow["backlog_nbit"]
    raise AssertionError("no frame was marked before the heavy line")


@pytest.mark.root
def test_ect_heavy_frame_in_the_yellow_zone_is_marked_with_a_valid_ipv4_checksum(load_natra):
    obj = load_natra(_configs(ecn=True))
    frame = tcp4(sport=40001, tos=ECT0)
    _, marked = _send_until_marked(obj, frame)
    assert _verdict_count(obj, L.V_MARK) == 1
    out = marked.frame_out
    assert out[15] & 0x03 == 0x03  # CE
    assert out[15] & 0xFC == frame[15] & 0xFC  # DSCP kept
    assert out[16:24] == frame[16:24] and out[26:] == frame[26:] and out[:15] == frame[:15]
    assert out[24:26] != frame[24:26]
    assert _ipv4_checksum_ok(out[14:34])
    assert _ipv4_checksum_ok(frame[14:34])
    flow = _flows(obj)[parse_frame(frame).key]
    assert flow["marked_packets"] == 1


@pytest.mark.root
def test_flow_within_its_share_is_not_marked_while_another_congests(load_natra):
    """Regression (simulations): ECN TCP flows within their share were marked whenever a
    flood kept the aggregate yellow, and starved. Now only the congesting flow is."""
    obj = load_natra(_configs(ecn=True))
    cfg = _configs()[0]
    hog, polite = tcp4(sport=40010, tos=ECT0), tcp4(sport=40011, tos=ECT0)
    for _ in range(THRESHOLD_BYTES // FRAME_LEN + 1):  # make the polite flow heavy first
        _send(obj, polite, T0)
    while (_verdict_count(obj, L.V_PASS_MOUSE) + _verdict_count(obj, L.V_PASS_HEAVY)
           + _verdict_count(obj, L.V_MARK)) * _cost_nbit() <= cfg.early_line_nbit:
        _send(obj, hog, T0)  # the hog alone pushes the aggregate into the yellow zone
    r = _send(obj, polite, T0)
    assert r.retval == testrun.TCX_NEXT and r.frame_out == polite
    assert _verdict_count(obj, L.V_PASS_HEAVY) >= 1


@pytest.mark.root
def test_non_ect_heavy_frame_in_the_yellow_zone_is_not_marked(load_natra):
    obj = load_natra(_configs(ecn=True))
    cfg = _configs()[0]
    frame = tcp4(sport=40002, tos=0)
    n = cfg.heavy_line_nbit // _cost_nbit()
    outs = [_send(obj, frame, T0) for _ in range(n)]
    assert all(r.frame_out == frame and r.retval == testrun.TCX_NEXT for r in outs)
    assert _verdict_count(obj, L.V_MARK) == 0


@pytest.mark.root
def test_ipv6_ect_heavy_frame_is_marked_in_the_traffic_class(load_natra):
    obj = load_natra(_configs(ecn=True))
    frame = tcp6(sport=40003, tc=ECT0)
    i, marked = _send_until_marked(obj, frame)
    out = marked.frame_out
    assert IPv6(out[14:]).tc == ECT0 | 0x03
    assert out[:15] == frame[:15] and out[16:] == frame[16:]
    assert _verdict_count(obj, L.V_MARK) == 1
    assert _counter(obj, L.C_IPV6) == i + 1


@pytest.mark.root
def test_non_ip_frames_are_counted_keyed_by_ethertype_and_policed(load_natra):
    obj = load_natra(_configs())
    arp = _pad(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.1.0.2"), 60)
    vlan = _pad(Ether() / Dot1Q(vlan=7) / IP(dst="10.1.0.2") / UDP(), 200)
    assert _send(obj, arp, T0).retval == testrun.TCX_NEXT
    assert _send(obj, vlan, T0).retval == testrun.TCX_NEXT
    assert _counter(obj, L.C_NON_IP) == 2
    assert _counter(obj, L.C_IPV4) == 0
    assert _counter(obj, L.C_FRAMES) == 2
    assert _counter(obj, L.C_BYTES) == 60 + 200
    assert _verdict_count(obj, L.V_PASS_MOUSE) == 2  # accounted like any mouse
    state = maps.read_state(obj.map_fd("natra_state"), L.DIR_TO_POD)
    assert state["backlog_nbit"] == _cost_nbit(60) + _cost_nbit(200)


@pytest.mark.root
def test_fragments_and_truncated_headers_are_counted(load_natra):
    obj = load_natra(_configs())
    frag = _pad(Ether() / IP(dst="10.1.0.2", flags="MF", frag=0) / UDP(sport=1, dport=2), 300)
    later = _pad(Ether() / IP(dst="10.1.0.2", frag=100, proto=17) / Raw(b"x" * 8), 300)
    # IHL says 60 header bytes, the frame holds 20 (test runs refuse IPv4 frames under 34 bytes).
    truncated = bytes(Ether(type=0x0800)) + b"\x4f" + b"\x00" * 19
    icmp = _pad(Ether() / IP(dst="10.1.0.2") / ICMP(), 100)
    for frame in (frag, later, truncated, icmp):
        assert _send(obj, frame, T0).retval == testrun.TCX_NEXT
    assert _counter(obj, L.C_FRAGMENT) == 2
    assert _counter(obj, L.C_TRUNCATED) == 1
    assert _counter(obj, L.C_IPV4) == 4


@pytest.mark.root
def test_a_disabled_direction_passes_everything_and_keeps_no_state(load_natra):
    obj = load_natra(_configs(from_pod=False))
    cfg = _configs()[0]
    n = cfg.tau_nbit // _cost_nbit() + 5  # more than the to_pod bucket could pay
    results = [_send(obj, tcp4(sport=40004), T0, L.DIR_FROM_POD) for _ in range(n)]
    assert all(r.retval == testrun.TCX_NEXT for r in results)
    assert _verdict_count(obj, L.V_PASS_UNLIMITED, L.DIR_FROM_POD) == n
    assert _counter(obj, L.C_FRAMES, L.DIR_FROM_POD) == n
    assert _counter(obj, L.C_FRAMES, L.DIR_TO_POD) == 0
    state = maps.read_state(obj.map_fd("natra_state"), L.DIR_FROM_POD)
    assert state["backlog_nbit"] == 0 and state["last_ns"] == 0
    assert all(cell == (0, 0, 0) for cell in maps.read_sketch(obj.map_fd("natra_sketch"),
                                                               L.NDIRS * TEST_DEPTH * TEST_WIDTH))


@pytest.mark.root
def test_both_directions_keep_separate_buckets(load_natra):
    obj = load_natra(_configs(from_pod=True))
    cfg = _configs()[0]
    can_pay = cfg.tau_nbit // _cost_nbit()
    per_flow = (THRESHOLD_BYTES - 1) // FRAME_LEN
    for direction in (L.DIR_TO_POD, L.DIR_FROM_POD):
        verdicts = [_send(obj, tcp4(sport=20000 + i // per_flow), T0, direction).retval
                    for i in range(can_pay + 1)]
        assert verdicts == [testrun.TCX_NEXT] * can_pay + [testrun.TC_ACT_SHOT]


@pytest.mark.root
def test_time_comes_from_tstamp_and_drains_the_bucket(load_natra):
    obj = load_natra(_configs())
    cfg = _configs()[0]
    can_pay = cfg.tau_nbit // _cost_nbit()
    per_flow = (THRESHOLD_BYTES - 1) // FRAME_LEN
    for i in range(can_pay):
        _send(obj, tcp4(sport=20000 + i // per_flow), T0)
    probe = tcp4(sport=30000)
    assert _send(obj, probe, T0).retval == testrun.TC_ACT_SHOT
    one_frame_ns = _cost_nbit() // cfg.rate_bps  # time the bucket needs to drain one frame
    assert _send(obj, probe, T0 + one_frame_ns - 1).retval == testrun.TC_ACT_SHOT
    assert _send(obj, probe, T0 + one_frame_ns).retval == testrun.TCX_NEXT
    state = maps.read_state(obj.map_fd("natra_state"), L.DIR_TO_POD)
    assert state["last_ns"] == T0 + one_frame_ns
    assert state["backlog_nbit"] == cfg.tau_nbit
    # A clock that steps back never drains nor moves `last` backwards.
    assert _send(obj, probe, T0).retval == testrun.TC_ACT_SHOT
    assert maps.read_state(obj.map_fd("natra_state"), L.DIR_TO_POD)["last_ns"] == T0 + one_frame_ns


@pytest.mark.root
def test_heavy_flow_ages_out_within_two_windows(load_natra):
    obj = load_natra(_configs(ecn=False))
    frame = tcp4(sport=40005)
    mice_first = (THRESHOLD_BYTES - 1) // FRAME_LEN  # frames before the estimate reaches T
    n = mice_first + 2
    verdicts = [_send(obj, frame, T0).retval for _ in range(n)]
    assert verdicts == [testrun.TCX_NEXT] * n
    assert _verdict_count(obj, L.V_PASS_HEAVY) == 2
    _send(obj, frame, T0 + WINDOW_NS)  # next window: prev holds its bytes, still heavy
    assert _verdict_count(obj, L.V_PASS_HEAVY) == 3
    _send(obj, frame, T0 + 3 * WINDOW_NS)  # two windows on: a mouse again
    assert _verdict_count(obj, L.V_PASS_HEAVY) == 3
    assert _verdict_count(obj, L.V_PASS_MOUSE) == mice_first + 1


@pytest.mark.root
@pytest.mark.parametrize("frame, hdr_end", [
    (tcp4(sport=41000), 14 + 20 + 20),
    (_pad(Ether() / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=41001, dport=53)), 14 + 40 + 8),
    (_pad(Ether() / IP(src="10.1.0.1", dst="10.1.0.2") / ICMP()), 0),  # no per-segment header known
])
def test_gso_super_packets_are_charged_their_headers_once_per_segment(load_natra, frame, hdr_end):
    """Regression (benchmarks): skb->len of a GSO super-packet holds its headers once, the
    wire once per segment; charging skb->len let ~4.6 % more than R*t+B onto the wire."""
    from natra.reference.engine import Model

    configs = _configs()
    obj, model = load_natra(configs), Model(configs)
    segs = 7
    for i in range(3):
        r = testrun.run(obj.prog_fd(L.DIR_TO_POD), frame, T0 + i, gso_segs=segs, gso_size=1000)
        d = model.process(frame, T0 + i, L.DIR_TO_POD, gso_segs=segs)
        assert r.retval == (testrun.TC_ACT_SHOT if d.verdict in L.DROPPING_VERDICTS else testrun.TCX_NEXT)
    charged = len(frame) + (segs - 1) * hdr_end
    state = maps.read_state(obj.map_fd("natra_state"), L.DIR_TO_POD)
    assert state["backlog_nbit"] == 3 * charged * L.NBIT_PER_BYTE - 2 * RATE_BPS  # 2 ns drained
    assert maps.snapshot(obj) == model.snapshot()
    assert _counter(obj, L.C_BYTES) == 3 * len(frame)  # counters stay in skb->len, as the veth counts


@pytest.mark.root
@pytest.mark.parametrize("flow_table", [4096, 16])
def test_heavy_flows_beyond_the_flow_slots_share_them_and_are_counted(load_natra, flow_table):
    """64 heavy flows (one frame each makes a flow heavy), twice round in one window: the
    first flow of each slot (h1 masked by the size) owns it and the others share it, each
    shared frame counted; the kernel's table is the model's, slot for slot."""
    from natra.reference.engine import Model
    from natra.reference.hashing import key_hashes

    p = _params().with_(width=4096, threshold_bytes=FRAME_LEN, burst_bits=L.MAX_BURST_BITS,
                        reserve_bits=RESERVE_BYTES * 8, rate_bps=L.MAX_RATE_BPS)
    cfgs = [to_config(p, test_clock=True, width=4096, depth=TEST_DEPTH),
            to_config(None, test_clock=True, width=4096, depth=TEST_DEPTH)]
    obj, model = load_natra(cfgs, flow_table=flow_table), Model(cfgs, flow_table=flow_table)
    frames = [tcp4(1000 + sport) for sport in range(64)]
    owners: dict[int, bytes] = {}
    for frame in frames:
        key = parse_frame(frame).key
        owners.setdefault(key_hashes(key)[0] & (flow_table - 1), key)
    for _ in range(2):
        for frame in frames:
            _send(obj, frame, T0)
            model.process(frame, T0, L.DIR_TO_POD)
    assert _counter(obj, L.C_FLOW_MISSING) == 0
    assert _counter(obj, L.C_FLOW_NEW) == len(owners)
    assert _counter(obj, L.C_FLOW_OVERFLOW) == 2 * (len(frames) - len(owners))
    if flow_table == 16:
        assert len(owners) <= 16 and _counter(obj, L.C_FLOW_OVERFLOW) >= 2 * 48
    snap = maps.snapshot(obj)
    assert set(snap["flows"]) == set(owners.values())
    assert snap == model.snapshot()


CLOCK_MONOTONIC_COARSE = 6  # clock id (time.h); bpf_ktime_get_coarse_ns reads this clock


@pytest.mark.root
def test_without_the_test_clock_shaping_numbers_windows_by_a_tick_clock_and_policing_by_the_fine_one(
        load_natra):
    """Shaping only numbers sketch windows, so it reads a cheap tick-grained clock;
    policing drains its bucket by the ns and reads the fine one, unless its config says
    the plan took a tick of rate off its bucket (NATRA_CFG_COARSE_CLOCK). The loader
    writes the node's tick (natra_config.tick_ns) for both: the program then reads the
    tick clock, jiffies x tick; with tick_ns 0 it reads the coarse clock. With a 1 ns
    window a frame's window number is the clock it read. The tick clock's readings are
    multiples of the tick near times(2)'s jiffies, which the others almost never are;
    a fine clock is (almost always) past the coarse clock's last tick, so each check
    fails for the wrong clock with a chance of ~run time / tick per round; five rounds
    each."""
    import dataclasses
    import time

    from natra.kernel import ticks
    from natra.kernel.params import MODE_SHAPE

    idle = to_config(None, width=TEST_WIDTH, depth=TEST_DEPTH)
    obj_police = load_natra([dataclasses.replace(to_config(_params()), window_ns=1), idle])
    obj_shape = load_natra([dataclasses.replace(to_config(dataclasses.replace(_params(), mode=MODE_SHAPE)),
                                                window_ns=1), idle])
    coarse_police = to_config(_params(), coarse_tick_ns=ticks.coarse_tick_ns())
    assert coarse_police.flags & L.CFG_COARSE_CLOCK
    obj_coarse_police = load_natra([dataclasses.replace(coarse_police, window_ns=1), idle])
    assert obj_shape.path.endswith("natra.bpf.o")  # the compat build keeps the fine clock
    tick = ticks.coarse_tick_ns()
    assert tick > 0
    for obj in (obj_shape, obj_coarse_police):
        assert maps.config_fields(obj.map_fd("natra_config"), L.DIR_TO_POD)["tick_ns"] == tick
    assert maps.config_fields(obj_police.map_fd("natra_config"), L.DIR_TO_POD)["tick_ns"] == 0
    coarse = []  # the same two configs with tick_ns 0, on objects of their own (a state
    for obj in (obj_shape, obj_coarse_police):  # stamped by one clock stays ahead of the other)
        again = load_natra([maps.read_config(obj.map_fd("natra_config"), d) for d in range(L.NDIRS)])
        fd = again.map_fd("natra_config")
        maps.write_config(fd, L.DIR_TO_POD, maps.read_config(fd, L.DIR_TO_POD),
                          flow_slots=maps.config_fields(fd, L.DIR_TO_POD)["flow_slots"], tick_ns=0)
        coarse.append(again)
    for i in range(5):
        frame = tcp4(sport=40000 + i)
        for obj in (obj_shape, obj_coarse_police):  # the tick clock
            _send(obj, frame, 0)
            epoch = maps.read_state(obj.map_fd("natra_state"), L.DIR_TO_POD)["epoch"]
            assert epoch % tick == 0, (i, epoch, tick)
            assert abs(epoch - ticks.tick_clock_ns()) <= 20_000_000 + tick, (i, epoch, ticks.tick_clock_ns())
        for obj in coarse:  # tick_ns 0: the coarse clock
            before = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)
            _send(obj, frame, 0)
            after = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)
            epoch = maps.read_state(obj.map_fd("natra_state"), L.DIR_TO_POD)["epoch"]
            assert before <= epoch <= after, (i, before, epoch, after)

        before = time.monotonic_ns()
        _send(obj_police, frame, 0)
        after = time.monotonic_ns()
        epoch = maps.read_state(obj_police.map_fd("natra_state"), L.DIR_TO_POD)["epoch"]
        assert before <= epoch <= after, (i, before, epoch, after)
        time.sleep(0.001)


CONCURRENT_REPEAT = 500_000  # runs per CPU: long enough for the two CPUs' runs to overlap


def _from_two_cpus_at_once(obj, frame: bytes, repeat: int) -> None:
    """CPUs 0 and 1 each run `frame` `repeat` times through to_pod, started together
    (one thread pinned to each; the test-run syscall releases the GIL)."""
    import threading

    start = threading.Barrier(2, timeout=30)
    errors = []

    def on(cpu: int) -> None:
        try:
            os.sched_setaffinity(0, {cpu})
            start.wait()
            testrun.run(obj.prog_fd(L.DIR_TO_POD), frame, T0, repeat=repeat)
        except Exception as exc:  # noqa: BLE001 - reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=on, args=(cpu,)) for cpu in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.root
@pytest.mark.skipif(len(os.sched_getaffinity(0) & {0, 1}) < 2, reason="needs CPUs 0 and 1")
@pytest.mark.parametrize("sketch_lock", [True, False], ids=["locked", "unlocked"])
def test_two_cpus_stepping_one_flows_cells_at_once(load_natra, sketch_lock):
    """The guarantee the shaping lock buys (docs/design.md, "Concurrency"): with it, the
    conservative update of two CPUs hammering one flow at once loses nothing, every cell
    of the flow holds every byte; with `sketchLock: false` an update may be lost, so a
    cell holds at most every byte (never more: no charge is invented). The frames are
    mice, so the unlocked program never takes the lock for them."""
    import dataclasses

    from natra.kernel.params import MODE_SHAPE

    p = dataclasses.replace(_params(), mode=MODE_SHAPE, threshold_bytes=1 << 40, sketch_lock=sketch_lock)
    configs = [to_config(p, test_clock=True), to_config(None, width=TEST_WIDTH, depth=TEST_DEPTH)]
    assert bool(configs[0].flags & L.CFG_UNLOCKED) is not sketch_lock
    obj = load_natra(configs)
    _from_two_cpus_at_once(obj, tcp4(sport=40000), CONCURRENT_REPEAT)

    sent = 2 * CONCURRENT_REPEAT * FRAME_LEN
    assert _verdict_count(obj, L.V_PASS_MOUSE) == 2 * CONCURRENT_REPEAT
    cells = maps.read_sketch(obj.map_fd("natra_sketch"), 2 * TEST_DEPTH * TEST_WIDTH)
    flow_cells = [cur for _epoch, cur, _prev in cells[:TEST_DEPTH * TEST_WIDTH] if cur]
    assert len(flow_cells) == TEST_DEPTH  # one cell per row, all of them this flow's
    if sketch_lock:
        assert flow_cells == [sent] * TEST_DEPTH
    else:
        assert all(0 < cur <= sent for cur in flow_cells), (flow_cells, sent)
        print(f"unlocked: the flow's cells hold {min(flow_cells) / sent:.4f} of the bytes sent")
