"""natra/kernel/qdisc.py against the kernel, cross-checked with iproute2's tc.

Every test builds on its own throw-away devices (names `nq<hex>...`), and a
fixture deletes them in a `finally`, which takes every qdisc and class on them
along. The tc cross-check reads qdiscs as JSON (`tc -j`) and classes as text:
iproute2 6.1 prints no JSON for htb classes. It reads with -d -raw so tc shows
the raw buffer ticks, which must equal ours exactly; the bursts tc derives from
them are truncated to whole microseconds of the rate, so bytes are compared
within that. The functional test shapes real TCP from the root namespace into a
namespace at 20 Mbit/s and checks the bytes the class counted against R*t + B.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import netns
import pytest

from natra.kernel import qdisc as Q

SKIP_REASON = netns.kernel_skip_reason(bpf=False)  # root for rtnetlink, iproute2 to cross-check


def needs_root(test):
    return pytest.mark.root(pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))(test))


RATES_BPS = [800, 1_000, 10_000_000, 1_000_000_000, 40_000_000_000, 100_000_000_000]
MIN_BURST_BYTES = 3028  # two full-size Ethernet frames
BURST_TIME_S = 0.01  # bursts are 10 ms of their rate, at least MIN_BURST_BYTES
FRAMES = 5  # raw frames sent through a built tree, so the counters are not all zero
FRAME_BYTES = 100
ETH_P_LOCAL_EXPERIMENTAL = 0x88B5  # nobody listens for it: the peer drops the frames
SETTLE_S = 1.0  # longest wait for the qdisc to dequeue the raw frames
TC_TIME_UNIT_S = 1e-6  # tc turns ticks into whole microseconds before it prints a burst
KIB = 1024


def _tag() -> str:
    return secrets.token_hex(3)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@contextlib.contextmanager
def _veth(name: str) -> Iterator[int]:
    """A veth pair `name` / `name`p in the root netns, up, with IPv6 off (silent); ifindex of `name`."""
    _ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    try:
        for end in (name, f"{name}p"):
            _write(f"/proc/sys/net/ipv6/conf/{end}/disable_ipv6", "1")
            _ip("link", "set", end, "up")
        yield Q.link_index(name)
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10)


@pytest.fixture
def veth() -> Iterator[tuple[str, int]]:
    name = f"nq{_tag()}a"
    with _veth(name) as ifindex:
        yield name, ifindex


# ---- the tree: htb 1: -> 1:1 (rate = ceil = R) -> a prio-0 leaf and prio-1 leaves, each with a tbf ----

def _burst(rate_bps: int) -> int:
    return max(MIN_BURST_BYTES, int(rate_bps / 8 * BURST_TIME_S))


def _leaves(rate_bps: int) -> list[dict]:
    """(minor, prio, rate, quantum) of the leaves; quantum 0 = the kernel derives it."""
    spec = [(0x10, 0, rate_bps // 2, 1514), (0x11, 1, rate_bps // 4, 3000),
            (0x12, 1, rate_bps // 4, 4500), (0x13, 1, rate_bps // 8, 0)]
    return [dict(minor=m, prio=p, rate=r, ceil=rate_bps, quantum=qu, burst=_burst(r), cburst=_burst(rate_bps),
                 limit=2 * _burst(r) + 3000) for m, p, r, qu in spec]


def _build(ifindex: int, rate_bps: int) -> None:
    Q.replace_htb_root(ifindex, 1, 0x10)
    Q.replace_htb_class(ifindex, Q.handle(1, 1), Q.handle(1), rate_bps, rate_bps, _burst(rate_bps),
                        _burst(rate_bps), 0, 1514)
    for leaf in _leaves(rate_bps):
        Q.replace_htb_class(ifindex, Q.handle(1, leaf["minor"]), Q.handle(1, 1), leaf["rate"], leaf["ceil"],
                            leaf["burst"], leaf["cburst"], leaf["prio"], leaf["quantum"])
        Q.replace_tbf(ifindex, Q.handle(leaf["minor"]), Q.handle(1, leaf["minor"]), leaf["rate"],
                      leaf["burst"], leaf["limit"])


def _kernel_quantum(rate_bps: int, r2q: int = Q.HTB_R2Q_DEFAULT) -> int:
    """htb_change_class: rate (bytes/s) / r2q, clamped to 1000..200000 bytes."""
    return min(max(Q.rate_bytes_per_s(rate_bps) // r2q, 1000), 200_000)


def _tick_bytes(rate_bps: int) -> int:
    return Q.ticks_burst(1, rate_bps) + 1


def _send_frames(ifname: str) -> None:
    frame = b"\xff" * 6 + b"\x02\0\0\0\0\x01" + ETH_P_LOCAL_EXPERIMENTAL.to_bytes(2, "big")
    frame += b"\0" * (FRAME_BYTES - len(frame))
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        for _ in range(FRAMES):
            sock.send(frame)


def _wait_sent(ifindex: int, classid: int, packets: int) -> None:
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        if any(c.classid == classid and c.stats.sent_packets >= packets for c in Q.dump_classes(ifindex)):
            return
        time.sleep(0.01)


# ---- reading tc --------------------------------------------------------------------------

def _tc(*args: str) -> str:
    return subprocess.run(["tc", *args], check=True, capture_output=True, text=True, timeout=10).stdout


def _tc_handle(text: str) -> int:
    major, _, minor = text.partition(":")
    return Q.handle(int(major, 16), int(minor or "0", 16))


UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def _tc_rate_bps(text: str) -> int:
    number, unit = re.fullmatch(r"([\d.]+)([KMGT]?)bit", text).groups()
    return round(float(number) * UNITS[unit])


def _tc_size(text: str) -> tuple[int, int]:
    """(bytes, rounding tc allows itself) of a size like 1600b, 12Kb, 3Mb (sprint_size)."""
    number, unit = re.fullmatch(r"([\d.]+)([KM]?)b(?:/\d+)?", text).groups()
    scale, slack = {"": (1, 0), "K": (KIB, 16), "M": (KIB * KIB, KIB)}[unit]
    return round(float(number) * scale), slack


CLASS_LINE = re.compile(
    r"class htb (?P<classid>\S+) (?:parent (?P<parent>\S+)|root)(?: leaf (?P<leaf>\S+))?"
    r"(?: prio (?P<prio>\d+))?(?: quantum (?P<quantum>\d+))? rate (?P<rate>\S+) ceil (?P<ceil>\S+)"
    r" linklayer \S+ burst (?P<burst>\S+) mpu \S+ cburst (?P<cburst>\S+) mpu \S+ level (?P<level>\d+)"
    r" buffer \[(?P<buffer>[0-9a-f]+)\] cbuffer \[(?P<cbuffer>[0-9a-f]+)\]")
SENT_LINE = re.compile(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+) requeues (\d+)\)")
BACKLOG_LINE = re.compile(r"backlog (\S+) (\d+)p requeues (\d+)")


def _tc_classes(ifname: str) -> dict[int, dict]:
    """htb classes from `tc -d -raw -s class show` text, keyed by classid."""
    found = {}
    for block in _tc("-d", "-raw", "-s", "class", "show", "dev", ifname).split("\n\n"):
        head = CLASS_LINE.search(block)
        if not head:
            continue
        sent, backlog = SENT_LINE.search(block).groups(), BACKLOG_LINE.search(block).groups()
        found[_tc_handle(head["classid"])] = dict(
            head.groupdict(), sent_bytes=int(sent[0]), sent_packets=int(sent[1]), drops=int(sent[2]),
            overlimits=int(sent[3]), requeues=int(sent[4]), backlog_bytes=_tc_size(backlog[0])[0],
            qlen=int(backlog[1]))
    return found


def _tc_qdiscs(ifname: str) -> dict[int, dict]:
    return {_tc_handle(q["handle"]): q
            for q in json.loads(_tc("-d", "-raw", "-s", "-j", "qdisc", "show", "dev", ifname))}


def _assert_burst(ours_bytes: int, tc_text: str, rate_bps: int) -> None:
    tc_bytes, slack = _tc_size(tc_text)
    allowed = Q.rate_bytes_per_s(rate_bps) * TC_TIME_UNIT_S + slack + 1
    assert abs(ours_bytes - tc_bytes) <= allowed, (ours_bytes, tc_text)


def _assert_rate(ours_bps: int, tc_text: str) -> None:
    # tc divides by 1000 while the rate is >= 1000 units, dropping remainders: < 0.1 % off
    assert abs(ours_bps - _tc_rate_bps(tc_text)) <= ours_bps / 1000, (ours_bps, tc_text)


# ---- tests without the kernel ---------------------------------------------------------------

def test_handles_spell_like_tc():
    assert Q.handle(1, 0x10) == 0x10010
    assert Q.handle_str(Q.handle(1, 0x10)) == "1:10"
    assert Q.handle_str(Q.handle(0xFFFF)) == "ffff:"
    assert Q.handle_str(Q.TC_H_ROOT) == "root"
    with pytest.raises(ValueError):
        Q.handle(0x10000)


def test_burst_ticks_round_up_and_clamp():
    assert Q.burst_ticks(1600, 800) == 250_000_000  # 1600 B at 100 B/s = 16 s = 16e9 ns / 64
    assert Q.burst_ticks(100_000, 40_000_000_000) == 313  # 20 us = 312.5 ticks, rounded up
    assert Q.ticks_burst(313, 40_000_000_000) >= 100_000
    assert Q.burst_ticks(1, 10**15) == Q.MIN_TICKS  # 1 byte at 1 Pbit/s is far below one tick
    assert Q.burst_ticks(10**9, 800) == Q.MAX_TICKS
    assert Q.max_burst_bytes(800) == (2**32 - 1) * 64 * 100 // 10**9  # 274.9 s of 100 B/s
    assert Q.max_burst_bytes(10**15) == 2**32 - 1  # TCA_TBF_BURST is a u32


def test_rates_of_2_to_the_32_bytes_use_the_64_bit_attributes():
    low = Q.parse_attrs(Q.parse_attrs(Q.htb_class_options(8 * (2**32 - 1), 8 * (2**32 - 1), 1, 1, 0, 0))[
        Q.TCA_OPTIONS])
    high = Q.parse_attrs(Q.parse_attrs(Q.htb_class_options(8 * 2**32, 10**15, 1, 1, 0, 0))[Q.TCA_OPTIONS])
    assert Q.TCA_HTB_RATE64 not in low and Q.TCA_HTB_CEIL64 not in low
    assert struct_u64(high[Q.TCA_HTB_RATE64]) == 2**32 and struct_u64(high[Q.TCA_HTB_CEIL64]) == 10**15 // 8
    config = Q.parse_htb_class(Q.parse_attrs(Q.htb_class_options(8 * 2**32, 10**15, 1, 1, 0, 0))[
        Q.TCA_OPTIONS])
    assert (config.rate_bps, config.ceil_bps) == (8 * 2**32, 10**15)  # the u32 fields saturate
    tbf = Q.parse_attrs(Q.parse_attrs(Q.tbf_options(100_000_000_000, 10**6, 10**6))[Q.TCA_OPTIONS])
    assert struct_u64(tbf[Q.TCA_TBF_RATE64]) == 12_500_000_000
    assert int.from_bytes(tbf[Q.TCA_TBF_BURST], "little") == 10**6


def struct_u64(raw: bytes) -> int:
    return int.from_bytes(raw[:8], "little")


# ---- tests against the kernel --------------------------------------------------------------

@needs_root
@pytest.mark.parametrize("rate_bps", RATES_BPS)
def test_tree_reads_back_as_built_and_as_tc_sees_it(veth, rate_bps):
    ifname, ifindex = veth
    _build(ifindex, rate_bps)
    _send_frames(ifname)
    _wait_sent(ifindex, Q.handle(1, 0x10), FRAMES)

    qdiscs = {q.handle: q for q in Q.dump_qdiscs(ifindex)}
    classes = {c.classid: c for c in Q.dump_classes(ifindex) if c.kind == "htb"}
    tc_qdiscs, tc_classes = _tc_qdiscs(ifname), _tc_classes(ifname)

    root = qdiscs[Q.handle(1)]
    assert root.kind == "htb" and root.parent == Q.TC_H_ROOT
    assert (root.htb.default_minor, root.htb.r2q) == (0x10, Q.HTB_R2Q_DEFAULT)
    tc_root = tc_qdiscs[Q.handle(1)]
    assert tc_root["kind"] == "htb" and tc_root["root"] is True
    assert int(tc_root["options"]["default"], 16) == root.htb.default_minor
    assert tc_root["options"]["r2q"] == root.htb.r2q
    assert tc_root["options"]["direct_qlen"] == root.htb.direct_qlen_packets

    expected = {Q.handle(1, 1): dict(rate=rate_bps, ceil=rate_bps, burst=_burst(rate_bps),
                                     cburst=_burst(rate_bps), prio=0, quantum=None, level=7,
                                     parent=Q.TC_H_ROOT)}
    for leaf in _leaves(rate_bps):
        expected[Q.handle(1, leaf["minor"])] = dict(
            leaf, level=0, parent=Q.handle(1, 1),
            quantum=leaf["quantum"] or _kernel_quantum(leaf["rate"]))
    assert set(classes) == set(expected) == set(tc_classes)
    for classid, want in expected.items():
        got, tc = classes[classid].htb, tc_classes[classid]
        assert classes[classid].parent == want["parent"]
        floored_rate, floored_ceil = 8 * (want["rate"] // 8), 8 * (want["ceil"] // 8)
        assert (got.rate_bps, got.ceil_bps, got.level) == (floored_rate, floored_ceil, want["level"])
        assert 0 <= got.burst_bytes - want["burst"] <= _tick_bytes(got.rate_bps)
        assert 0 <= got.cburst_bytes - want["cburst"] <= _tick_bytes(got.ceil_bps)
        if want["level"] == 0:
            assert (got.prio, got.quantum_bytes) == (want["prio"], want["quantum"])
            assert (int(tc["prio"]), int(tc["quantum"])) == (got.prio, got.quantum_bytes)
            assert _tc_handle(tc["leaf"]) == classes[classid].leaf_handle == Q.handle(want["minor"])
        _assert_rate(got.rate_bps, tc["rate"])
        _assert_rate(got.ceil_bps, tc["ceil"])
        assert (int(tc["buffer"], 16), int(tc["cbuffer"], 16)) == (got.buffer_ticks, got.cbuffer_ticks)
        _assert_burst(got.burst_bytes, tc["burst"], got.rate_bps)
        _assert_burst(got.cburst_bytes, tc["cburst"], got.ceil_bps)
        stats = classes[classid].stats
        assert (stats.sent_bytes, stats.sent_packets, stats.drops_packets, stats.overlimits, stats.requeues,
                stats.backlog_bytes, stats.qlen_packets) == (
            tc["sent_bytes"], tc["sent_packets"], tc["drops"], tc["overlimits"], tc["requeues"],
            tc["backlog_bytes"], tc["qlen"])

    for leaf in _leaves(rate_bps):
        tbf, tc = qdiscs[Q.handle(leaf["minor"])], tc_qdiscs[Q.handle(leaf["minor"])]
        assert tbf.kind == tc["kind"] == "tbf"
        assert tbf.parent == _tc_handle(tc["parent"]) == Q.handle(1, leaf["minor"])
        assert tbf.tbf.rate_bps == 8 * (leaf["rate"] // 8) == 8 * tc["options"]["rate"]
        assert tbf.tbf.limit_bytes == leaf["limit"] == tc["options"]["limit"]
        assert tbf.tbf.buffer_ticks == int(tc["options"]["burst_raw"], 16)
        assert abs(tbf.tbf.burst_bytes - leaf["burst"]) <= _tick_bytes(tbf.tbf.rate_bps)
        _assert_burst(tbf.tbf.burst_bytes, tc["options"]["burst"], tbf.tbf.rate_bps)

    assert set(qdiscs) == set(tc_qdiscs)
    for handle_, q in qdiscs.items():
        tc = tc_qdiscs[handle_]
        assert (q.stats.sent_bytes, q.stats.sent_packets, q.stats.drops_packets, q.stats.overlimits,
                q.stats.requeues, q.stats.backlog_bytes, q.stats.qlen_packets) == (
            tc["bytes"], tc["packets"], tc["drops"], tc["overlimits"], tc["requeues"], tc["backlog"],
            tc["qlen"])

    # The frames went root -> default class 1:10 -> its tbf, and up through 1:1.
    for counted in (root, qdiscs[Q.handle(0x10)], classes[Q.handle(1, 0x10)], classes[Q.handle(1, 1)]):
        assert (counted.stats.sent_bytes, counted.stats.sent_packets) == (FRAMES * FRAME_BYTES, FRAMES)


@needs_root
def test_psched_tick_is_the_kernels():
    with open("/proc/net/psched") as f:
        assert int(f.read().split()[1], 16) == Q.PSCHED_TICK_NS


@needs_root
def test_replace_twice_changes_nothing(veth):
    _, ifindex = veth
    _build(ifindex, 10_000_000)
    before = (Q.dump_qdiscs(ifindex), Q.dump_classes(ifindex))
    assert Q.replace_htb_root(ifindex, 1, 0x10) is False
    _build(ifindex, 10_000_000)
    assert (Q.dump_qdiscs(ifindex), Q.dump_classes(ifindex)) == before
    assert [q.kind for q in before[0]].count("htb") == 1


@needs_root
def test_replace_changes_a_class_and_a_tbf_in_place(veth):
    _, ifindex = veth
    _build(ifindex, 10_000_000)
    Q.replace_htb_class(ifindex, Q.handle(1, 0x11), Q.handle(1, 1), 3_000_000, 9_000_000, 20_000, 30_000,
                        2, 4000)
    Q.replace_tbf(ifindex, Q.handle(0x11), Q.handle(1, 0x11), 3_000_000, 20_000, 50_000)
    classes = {c.classid: c for c in Q.dump_classes(ifindex) if c.kind == "htb"}
    changed = classes[Q.handle(1, 0x11)].htb
    assert (changed.rate_bps, changed.ceil_bps, changed.prio, changed.quantum_bytes) == (
        3_000_000, 9_000_000, 2, 4000)
    assert len(classes) == 5
    tbfs = [q for q in Q.dump_qdiscs(ifindex) if q.kind == "tbf"]
    assert len(tbfs) == 4
    changed_tbf = next(q.tbf for q in tbfs if q.handle == Q.handle(0x11))
    assert (changed_tbf.rate_bps, changed_tbf.limit_bytes) == (3_000_000, 50_000)


@needs_root
def test_a_different_htb_root_replaces_the_old_one_and_its_classes(veth):
    _, ifindex = veth
    _build(ifindex, 10_000_000)
    assert Q.replace_htb_root(ifindex, 1, 0x20) is True  # HTB cannot change in place: rebuilt
    roots = [q for q in Q.dump_qdiscs(ifindex) if q.parent == Q.TC_H_ROOT]
    assert [(q.kind, q.handle, q.htb.default_minor) for q in roots] == [("htb", Q.handle(1), 0x20)]
    assert Q.dump_classes(ifindex) == []
    assert Q.replace_htb_root(ifindex, 2, 0x20) is True  # another handle: the kernel swaps roots
    assert [q.handle for q in Q.dump_qdiscs(ifindex) if q.parent == Q.TC_H_ROOT] == [Q.handle(2)]


@needs_root
def test_bursts_longer_than_2_to_the_32_ticks_are_cut(veth):
    ifname, ifindex = veth
    Q.replace_htb_root(ifindex, 1, 0x10)
    Q.replace_htb_class(ifindex, Q.handle(1, 0x10), Q.handle(1), 800, 800, 10**6, 10**6, 0, 1514)
    Q.replace_tbf(ifindex, Q.handle(0x10), Q.handle(1, 0x10), 800, 10**6, 10**6)
    htb = next(c.htb for c in Q.dump_classes(ifindex) if c.classid == Q.handle(1, 0x10))
    assert htb.buffer_ticks == htb.cbuffer_ticks == Q.MAX_TICKS
    assert htb.burst_bytes == Q.max_burst_bytes(800) == 27_487
    tc = _tc_classes(ifname)[Q.handle(1, 0x10)]
    assert int(tc["buffer"], 16) == Q.MAX_TICKS
    tbf = next(q.tbf for q in Q.dump_qdiscs(ifindex) if q.kind == "tbf")
    assert tbf.buffer_ticks <= Q.MAX_TICKS and abs(tbf.burst_bytes - 27_487) <= 1


@needs_root
def test_deleting_what_is_not_there_is_harmless(veth):
    _, ifindex = veth
    assert Q.delete_root_qdisc(ifindex) is False  # only the default noqueue (handle 0) is there
    _build(ifindex, 1_000_000_000)
    assert Q.delete_qdisc(ifindex, Q.handle(1, 0x11)) is True
    assert Q.delete_qdisc(ifindex, Q.handle(1, 0x11)) is False  # the default pfifo is back, handle 0
    assert Q.delete_qdisc(ifindex, Q.handle(1, 0x99)) is False  # no such class
    assert Q.delete_root_qdisc(ifindex) is True
    assert Q.delete_root_qdisc(ifindex) is False
    assert Q.dump_classes(ifindex) == []
    assert all(q.kind == "noqueue" for q in Q.dump_qdiscs(ifindex))


@needs_root
def test_the_root_qdisc_is_read_from_its_device_alone(veth):
    """root_qdisc asks the kernel for one device's root (a dump would carry every
    device's qdiscs): it must say what the dump says, for each kind of root, and
    never another device's."""
    name, ifindex = veth

    def config(q):  # all but the counters, which traffic may move between two reads
        return None if q is None else (q.ifindex, q.kind, q.handle, q.parent, q.htb, q.tbf)

    def from_dump():
        return config(next((q for q in Q.dump_qdiscs(ifindex) if q.parent == Q.TC_H_ROOT), None))

    assert config(Q.root_qdisc(ifindex)) == from_dump()  # the default root (noqueue, handle 0)
    with _veth(f"{name[:-1]}b") as other:
        _build(other, 100_000_000)
        assert config(Q.root_qdisc(ifindex)) == from_dump()
        _build(ifindex, 1_000_000_000)
        root = Q.root_qdisc(ifindex)
        assert (root.kind, root.handle) == ("htb", Q.handle(1)) and config(root) == from_dump()
        assert Q.delete_root_qdisc(ifindex) is True
        Q.replace_tbf_root(ifindex, Q.handle(0x7), 10**8, 10**6, 10**9, 65_536, 10**6)
        root = Q.root_qdisc(ifindex)
        assert (root.kind, root.handle) == ("tbf", Q.handle(0x7)) and config(root) == from_dump()
        assert Q.root_qdisc(other).kind == "htb"
    with pytest.raises(Q.QdiscError) as err:
        Q.root_qdisc(2**31 - 1)  # no such device
    assert err.value.errno == 19  # ENODEV


@needs_root
def test_ifb_create_shape_delete():
    name = f"nq{_tag()}i"
    try:
        ifindex = Q.create_ifb(name)
        with open(f"/sys/class/net/{name}/ifindex") as f:
            assert int(f.read()) == ifindex == Q.link_index(name)
        with open(f"/sys/class/net/{name}/flags") as f:
            assert int(f.read(), 16) & 0x1  # IFF_UP
        details = json.loads(subprocess.run(["ip", "-d", "-j", "link", "show", name], check=True,
                                            capture_output=True, text=True).stdout)
        assert details[0]["linkinfo"]["info_kind"] == "ifb"
        with pytest.raises(Q.QdiscError) as taken:
            Q.create_ifb(name)
        assert taken.value.errno == 17 and name in str(taken.value)  # EEXIST
        _build(ifindex, 40_000_000_000)
        assert len([c for c in Q.dump_classes(ifindex) if c.kind == "htb"]) == 5
        assert Q.delete_link(ifindex) is True
        assert Q.delete_link(ifindex) is False
        assert Q.delete_link(name) is False
        with pytest.raises(Q.QdiscError) as gone:
            Q.link_index(name)
        assert gone.value.errno == 19  # ENODEV
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10)


@needs_root
def test_errors_say_step_and_ifindex_and_keep_errno(veth):
    _, ifindex = veth
    Q.replace_htb_root(ifindex, 1, 0x10)
    Q.replace_htb_class(ifindex, Q.handle(1, 1), Q.handle(1), 10**7, 10**7, 3028, 3028, 0, 1514)
    cases = [
        (lambda: Q.replace_htb_class(ifindex, Q.handle(1, 5), Q.handle(1, 0x99), 10**6, 10**6, 3028, 3028),
         2, "parent class 1:99 does not exist"),  # ENOENT; the kernel alone would make 1:5 a root class
        (lambda: Q.replace_htb_class(ifindex, Q.handle(7, 5), Q.handle(7), 10**6, 10**6, 3028, 3028),
         2, "RTM_NEWTCLASS htb 7:5 under 7:"),  # no qdisc 7:
        (lambda: Q.replace_tbf(ifindex, Q.handle(0x20), Q.handle(1, 0x99), 10**6, 3028, 6000),
         2, "Specified class not found"),  # the kernel's extended ack
        (lambda: Q.replace_htb_class(ifindex, Q.handle(1, 5), Q.handle(1, 1), 10**6, 10**6, 3028, 3028, 8),
         22, "prio 8"),
        (lambda: Q.replace_htb_class(ifindex, Q.handle(1, 5), Q.handle(1, 1), 7, 10**6, 3028, 3028),
         22, "rate 7 bit/s"),
        (lambda: Q.replace_tbf(ifindex, Q.handle(0x20), Q.handle(1, 1), 10**6, 3028, 0), 22, "limit 0"),
    ]
    for call, errno, text in cases:
        with pytest.raises(Q.QdiscError) as failed:
            call()
        assert isinstance(failed.value, OSError)
        assert failed.value.errno == errno and failed.value.ifindex == ifindex
        assert text in str(failed.value) and f"ifindex {ifindex}" in str(failed.value)
    with pytest.raises(Q.QdiscError) as no_device:
        Q.replace_htb_root(2**31 - 1, 1, 0x10)
    assert no_device.value.errno == 19 and "RTM_NEWQDISC htb 1: under root" in str(no_device.value)
    assert [c.classid for c in Q.dump_classes(ifindex)] == [Q.handle(1, 1)]  # nothing half-made


# ---- real traffic -----------------------------------------------------------------------------

SHAPED_BPS = 20_000_000
SHAPED_BURST_BYTES = 25_000  # 10 ms of 20 Mbit/s
TRAFFIC_S = 3.0
TOLERANCE = 0.10
CHUNK_BYTES = 65536
PORT = 5201


def _sink(server: socket.socket) -> None:
    """Read and drop until the source closes (reading on keeps the source's sendall from blocking)."""
    server.settimeout(TRAFFIC_S + 5)
    conn, _ = server.accept()
    with conn:
        conn.settimeout(TRAFFIC_S + 5)
        while conn.recv(CHUNK_BYTES):
            pass


def _source(address: str, stop: threading.Event) -> None:
    with socket.create_connection((address, PORT), timeout=5) as client:
        chunk = b"\0" * CHUNK_BYTES
        while not stop.is_set():
            client.sendall(chunk)


@needs_root
@pytest.mark.slow
def test_tcp_into_a_namespace_is_shaped_to_rate_times_time_plus_burst():
    tag = _tag()
    ns, host_if = f"nq{tag}n", f"nq{tag}t"
    with netns.netns(ns), netns.veth(host_if, ns):
        subnet = netns.free_subnet()
        host_ip, pod_ip = (str(a) for a in list(subnet.hosts())[:2])
        _ip("addr", "add", f"{host_ip}/{subnet.prefixlen}", "dev", host_if)
        netns.run("ip", "addr", "add", f"{pod_ip}/{subnet.prefixlen}", "dev", "eth0", ns=ns)
        ifindex = Q.link_index(host_if)
        Q.replace_htb_root(ifindex, 1, 0x10)
        Q.replace_htb_class(ifindex, Q.handle(1, 1), Q.handle(1), SHAPED_BPS, SHAPED_BPS,
                            SHAPED_BURST_BYTES, SHAPED_BURST_BYTES, 0, 1514)
        Q.replace_htb_class(ifindex, Q.handle(1, 0x10), Q.handle(1, 1), SHAPED_BPS, SHAPED_BPS,
                            SHAPED_BURST_BYTES, SHAPED_BURST_BYTES, 0, 1514)
        Q.replace_tbf(ifindex, Q.handle(0x10), Q.handle(1, 0x10), SHAPED_BPS, SHAPED_BURST_BYTES,
                      4 * SHAPED_BURST_BYTES)
        with netns.entered(ns):
            server = socket.create_server((pod_ip, PORT))
        stop = threading.Event()
        sink = threading.Thread(target=_sink, args=(server,), daemon=True)
        source = threading.Thread(target=_source, args=(pod_ip, stop), daemon=True)
        try:
            sink.start()
            before = _class_bytes(ifindex, Q.handle(1, 1))
            started = time.monotonic()
            source.start()
            time.sleep(TRAFFIC_S)
            sent = _class_bytes(ifindex, Q.handle(1, 1)) - before
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            source.join(5)
            sink.join(5)
            server.close()
        expected = SHAPED_BPS / 8 * elapsed + SHAPED_BURST_BYTES
        print(f"shaped: {sent} bytes in {elapsed:.2f} s, expected {expected:.0f} ({sent / expected:.3f})")
        assert abs(sent - expected) <= TOLERANCE * expected


def _class_bytes(ifindex: int, classid: int) -> int:
    return next(c.stats.sent_bytes for c in Q.dump_classes(ifindex) if c.classid == classid)


def test_the_kept_socket_follows_the_thread_into_another_namespace():
    """qdisc keeps one rtnetlink socket per thread; a thread that enters a namespace must
    talk to that namespace, not to the one its socket was made in."""
    ns = f"nt5-chan-{secrets.token_hex(3)}"
    Q.link_index("lo")  # the socket is made here, in the host's namespace
    with netns.netns(ns):
        netns.run("ip", "link", "add", "ntonlyhere0", "type", "veth", "peer", "name", "ntonlyhere1", ns=ns)
        with netns.entered(ns):
            assert Q.link_index("ntonlyhere0") > 0
        with pytest.raises(Q.QdiscError):
            Q.link_index("ntonlyhere0")  # back home: not here


def _root_stats(ifindex: int) -> Q.Stats:
    return next(q.stats for q in Q.dump_qdiscs(ifindex) if q.parent == Q.TC_H_ROOT)


@needs_root
def test_a_new_tbf_root_passes_traffic_before_its_child_is_grafted_and_a_change_keeps_the_child(veth):
    """A plugin killed between the tbf root and the htb under it must not leave the
    device dark: the new tbf queues in an interim bfifo. A change of an existing
    tbf keeps the child grafted under it."""
    name, ifindex = veth
    rate, burst = 10_000_000, 100_000
    assert Q.replace_tbf_root(ifindex, Q.handle(0x4E53), rate, burst, 2 * rate, 3028, 64_000) is True
    _send_frames(name)
    deadline = time.monotonic() + SETTLE_S
    while _root_stats(ifindex).sent_packets < FRAMES and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = _root_stats(ifindex)
    assert (stats.sent_packets, stats.drops_packets) == (FRAMES, 0)  # limit 0 would drop all 5

    assert Q.replace_htb_root(ifindex, 0x4E54, 0x10, parent=Q.handle(0x4E53, 1)) is True
    assert Q.replace_tbf_root(ifindex, Q.handle(0x4E53), rate, 2 * burst, 2 * rate, 3028, 64_000) is False
    child = [(q.kind, q.handle) for q in Q.dump_qdiscs(ifindex) if q.parent == Q.handle(0x4E53, 1)]
    assert child == [("htb", Q.handle(0x4E54))]
