"""Kernel versus model, step by step: the program must be the model, bit for bit.

A Hypothesis RuleBasedStateMachine drives a private loaded object (test clock,
time through __sk_buff.tstamp) and `natra.reference.engine.Model`, the
pure-Python spec (`accelerator=False`: the spec is the judge), with the same
steps:

* send a window of 5..40 small ECT frames of one flow back to back (the bucket
  then fills in steps small enough to stop in the yellow zone's top quarter,
  where CE marks happen);
* send a scapy-built frame: TCP (with and without options)/UDP/ICMP/SCTP over
  IPv4 and IPv6, fragments, IPv6 extension headers, truncated headers, non-IP,
  ECT or not, a handful of flows or many, either direction, 60..3500 bytes
  (BPF_PROG_TEST_RUN refuses frames above ~3.7 KB), sometimes as a GSO
  super-packet (`gso_segs` 2..65535, TCP and UDP: charged its headers once per
  segment, design.md "Units"). GSO is how frames up to 9,000 bytes and beyond
  are reached here: the test run cannot carry a 9,000-byte frame, and its
  skb->len is always the frame's length (so `wire_len == len(frame)`), but a
  3,500-byte super-packet of a few segments is charged what a jumbo frame is,
  and one of 65,535 segments hits the 1 MiB charge cap;
* move the clock forwards or backwards (another CPU's clock: nothing drains);
* reconfigure a direction (police or shape mode, or off);
* set the heavy-flow census of a direction (as thousands of heavy flows would),
  so the MAX_SHARE_FLOWS cap and the saturating count are reached.

After every frame the exact verdict (from the direction's verdict counters,
which move by one per frame: the program's return value only says
pass/drop/redirect), the return value, the frame that comes out (CE marks) and
in shaping mode the class (skb->priority) and the redirect must be the
model's. After every step the full map state must be equal (config, state with
the class owners, sketch, flows, counters).

The flow table: most examples use 4,096 slots, far above the flows used; the
others use 1, 2 or 4 slots with up to MANY_FLOWS flows, so heavy flows share
slots and take the slots of idle ones. A flow's slot is its hash masked by the
size on both sides, so kernel and model hold the same flows in the same slots
and everything is compared in full in every example.

The same machine also drives the compat build (bpf_spin_lock) and the shared
interim build (natra_shared.bpf.o: a Pod bound to one of its slots, its own
program swapped in on the same maps at a step Hypothesis picks; 25 sequences
each, NATRA_DIFF_COMPAT_EXAMPLES and NATRA_DIFF_SHARED_EXAMPLES).

CI runs 200 sequences of up to 200 steps; NATRA_DIFF_EXAMPLES and
NATRA_DIFF_STEPS override both for local runs. NATRA_DIFF_OBJECT names another
build of the program to compare (tests/kernel/test_mutants.py runs this machine
against deliberately broken builds, through `machine_for`).
"""

from __future__ import annotations

import ctypes
import functools
import os

import ci_tally
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from natra.kernel import bpfsys, maps, testrun
from natra.kernel import layout as L
from natra.kernel.loader import OBJECT_DIR
from natra.kernel.params import MODE_SHAPE, MODES, QDISC_MAJOR, DataPathParams, to_config

engine = pytest.importorskip("natra.reference.engine", reason="the reference model is not importable")

MAX_EXAMPLES = int(os.environ.get("NATRA_DIFF_EXAMPLES", "200"))
STEP_COUNT = int(os.environ.get("NATRA_DIFF_STEPS", "200"))
# Another build of the program to compare (e.g. a deliberately broken one, to
# see this test fail); the packaged natra.bpf.o when unset.
OBJECT_OVERRIDE = os.environ.get("NATRA_DIFF_OBJECT") or None
FLOW_TABLE = 4096  # slots, far above the flows used
SMALL_TABLES = (1, 2, 4)  # slots: heavy flows share them and take idle flows' slots
FLOWS = 6  # distinct (address, port) pairs; with a narrow sketch columns collide
MANY_FLOWS = 64  # ... drawn now and then, so that small flow tables fill
MIN_FRAME, MAX_FRAME = 60, 3500  # BPF_PROG_TEST_RUN refuses frames above ~3.7 KB
MAX_GSO_SEGS = 65535  # skb_shared_info.gso_segs is 16 bits

FRAME_KINDS = ("tcp4", "tcp4_opts", "udp4", "icmp4", "sctp4", "frag4_first", "frag4_later", "ihl_trunc4",
               "ports_trunc4", "tcp6", "tcp6_opts", "udp6", "icmp6", "frag6", "ext6", "ext6_five",
               "ext6_trunc", "arp", "vlan")
@functools.lru_cache(maxsize=4096)
def build_frame(kind: str, flow: int, size: int, ecn: int) -> bytes:
    """A frame of `kind` for flow number `flow`, padded to `size` bytes where it fits."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import (
        ICMPv6EchoRequest,
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrFragment,
        IPv6ExtHdrHopByHop,
        IPv6ExtHdrRouting,
    )
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from scapy.layers.sctp import SCTP
    from scapy.packet import Raw

    src4, dst4 = f"10.9.{flow}.1", "10.9.100.2"
    src6, dst6 = f"fd00:9::{flow + 1}", "fd00:9::ff"
    sport = 30000 + 7 * flow
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    ip4 = IP(src=src4, dst=dst4, tos=ecn)
    ip6 = IPv6(src=src6, dst=dst6, tc=ecn)
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (flow, 0)), ("SAckOK", b"")]  # 12 -> doff 8
    pkt = {
        "tcp4": lambda: eth / ip4 / TCP(sport=sport, dport=443),
        "tcp4_opts": lambda: eth / ip4 / TCP(sport=sport, dport=443, options=opts),
        "tcp6_opts": lambda: eth / ip6 / TCP(sport=sport, dport=443, options=opts),
        "udp4": lambda: eth / ip4 / UDP(sport=sport, dport=53),
        "icmp4": lambda: eth / ip4 / ICMP(id=flow),
        "sctp4": lambda: eth / ip4 / SCTP(sport=sport, dport=9),
        "frag4_first": lambda: eth / IP(src=src4, dst=dst4, tos=ecn, flags="MF") / UDP(sport=sport),
        "frag4_later": lambda: eth / IP(src=src4, dst=dst4, tos=ecn, frag=185, proto=17) / Raw(b"f" * 8),
        "tcp6": lambda: eth / ip6 / TCP(sport=sport, dport=443),
        "udp6": lambda: eth / ip6 / UDP(sport=sport, dport=53),
        "icmp6": lambda: eth / ip6 / ICMPv6EchoRequest(id=flow),
        "frag6": lambda: eth / ip6 / IPv6ExtHdrFragment(m=1, id=flow) / UDP(sport=sport),
        "ext6": lambda: eth / ip6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt()
        / TCP(sport=sport, dport=443),
        "ext6_five": lambda: eth / ip6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting()
        / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / UDP(sport=sport),
        "arp": lambda: Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=src4, pdst=dst4),
        "vlan": lambda: eth / Dot1Q(vlan=flow) / ip4 / UDP(sport=sport),
    }
    if kind in pkt:
        raw = bytes(pkt[kind]())
    elif kind in ("ihl_trunc4", "ports_trunc4"):
        eth4 = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800))
        ip20 = bytes(IP(src=src4, dst=dst4, tos=ecn, proto=6, ihl=15))[:20]  # IHL: 60 header bytes
        if kind == "ihl_trunc4":  # the frame ends inside the 60-byte header
            return (eth4 + ip20 + bytes(39))[:min(size, 14 + 59)]
        return eth4 + ip20 + bytes(40) + b"\x75\x31"  # ends 2 bytes into the TCP header
    elif kind == "ext6_trunc":  # Hop-by-Hop header that claims 1608 bytes
        raw = bytes(eth / ip6 / IPv6ExtHdrHopByHop(len=200, autopad=0) / UDP(sport=sport))
        return raw[:max(MIN_FRAME, min(size, len(raw)))]
    else:
        raise ValueError(kind)
    if size > len(raw):
        raw += bytes(size - len(raw))
    return raw


rates = st.one_of(st.integers(L.MIN_RATE_BPS, 100_000_000), st.integers(L.MIN_RATE_BPS, L.MAX_RATE_BPS))
bursts = st.one_of(st.integers(8 * 2000, 8 * 200_000), st.integers(1, L.MAX_BURST_BITS))


@st.composite
def params(draw, width: int, depth: int) -> DataPathParams:
    # Half the configs are congested: a slow rate, a bucket of a few frames, ECN on and
    # flows heavy after a frame or two, so the yellow zone (marks, share drops) is reached.
    congested = draw(st.booleans())
    burst = draw(st.integers(8 * 3000, 8 * 40_000) if congested else bursts)
    return DataPathParams(
        rate_bps=draw(st.integers(L.MIN_RATE_BPS, 10_000_000) if congested else rates),
        burst_bits=burst,
        reserve_bits=draw(st.integers(0, burst // 4) if congested else st.integers(0, burst - 1)),
        width=width,
        depth=depth,
        threshold_bytes=draw(st.integers(1, 3000) if congested else
                             st.one_of(st.integers(1, 20_000), st.integers(1, 1 << 40))),
        window_ns=draw(st.one_of(st.integers(1_000_000, 50_000_000), st.integers(1_000_000, 60 * 10**9))),
        ecn=draw(st.just(True) if congested else st.booleans()),
        early_percent=draw(st.integers(0, 60) if congested else st.integers(0, 100)),
        mode=(mode := draw(st.sampled_from(MODES + (MODES[0],)))),  # police twice as often: more branches
        # shaping's sketch step with or without the lock: the same in one CPU's order
        sketch_lock=draw(st.booleans()) if mode == MODE_SHAPE else True,
        # few classes as often as many: FLOWS heavy flows then exhaust them and share
        classes=draw(st.one_of(st.integers(1, 4), st.integers(1, L.MAX_CLASSES))),
    ).validate()


# Out of the Pod, shaping redirects to an IFB; any ifindex will do for a test run
# (the kernel returns TC_ACT_REDIRECT and does not forward the frame).
TEST_REDIRECT = {L.DIR_TO_POD: 0, L.DIR_FROM_POD: 1}


time_steps = st.one_of(st.just(0), st.integers(1, 10**6), st.integers(10**6, 10**9),
                       st.integers(10**9, 10**12),
                       st.integers(-10**9, -1))  # a clock that steps back (another CPU's)
frame_sizes = st.one_of(st.integers(MIN_FRAME, 1514), st.integers(1515, MAX_FRAME))
# (gso_segs, gso_size): mostly a plain frame; else a super-packet charged as a jumbo frame
# (a few segments), as a big TSO packet (dozens) or at the 1 MiB cap (tens of thousands).
gso = st.one_of(st.just((0, 0)), st.just((0, 0)),
                st.tuples(st.integers(2, 8), st.integers(500, 1448)),
                st.tuples(st.integers(9, 64), st.integers(500, 1448)),
                st.tuples(st.integers(10_000, MAX_GSO_SEGS), st.just(1)))
flows = st.one_of(st.integers(0, FLOWS - 1), st.integers(0, MANY_FLOWS - 1))
census = st.one_of(st.integers(0, 8), st.integers(L.MAX_SHARE_FLOWS - 2, L.MAX_SHARE_FLOWS + 2),
                   st.integers(2**32 - 3, 2**32 - 1))


def write_census(fd: int, direction: int, heavy_now: int, heavy_prev: int) -> None:
    """Set heavy_now and heavy_prev of a direction's natra_state (the lock word is not copied)."""
    key = direction.to_bytes(4, "little")
    value = L.State.from_buffer_copy(bpfsys.map_lookup(fd, key, ctypes.sizeof(L.State)))
    value.heavy_now, value.heavy_prev = heavy_now, heavy_prev
    bpfsys.map_update(fd, key, bytes(value))


class KernelVersusModel(RuleBasedStateMachine):
    """Each step goes to both; after each frame and each step everything must agree."""

    object_path: str | None = OBJECT_OVERRIDE  # None: the packaged natra.bpf.o
    examples_run = 0  # examples started against this class's object
    tallied = True  # counted in the run's summary as differential examples (not for mutants)

    def __init__(self):
        super().__init__()
        self.obj = None
        self.model = None
        self.now = 0

    @initialize(data=st.data(), width=st.sampled_from([1, 4, 16]), depth=st.integers(1, L.MAX_DEPTH),
                enabled=st.sampled_from([(True, True), (True, False), (False, True)]),
                start=st.one_of(st.just(0), st.integers(0, 10**12), st.integers(2**62, 2**63)),
                flow_table=st.one_of(st.just(FLOW_TABLE), st.just(FLOW_TABLE), st.sampled_from(SMALL_TABLES)))
    def load(self, data, width, depth, enabled, start, flow_table):
        self.width, self.depth, self.flow_table = width, depth, flow_table
        configs = [to_config(data.draw(params(width, depth)) if on else None, test_clock=True,
                             width=width, depth=depth, redirect_ifindex=TEST_REDIRECT[d])
                   for d, on in enumerate(enabled)]
        self.obj = self.load_object(configs, flow_table)
        # The pure-Python spec, not the optional C accelerator: the spec is the judge.
        self.model = engine.Model(configs, flow_table=flow_table, accelerator=False)
        self.now = start
        self.counters = [[0] * L.NCOUNTERS for _ in range(L.NDIRS)]
        event(f"flow table {'small' if flow_table < FLOW_TABLE else 'large'}")
        type(self).examples_run += 1
        if self.tallied:
            ci_tally.add(ci_tally.DIFF_EXAMPLES)

    def load_object(self, configs, flow_table):
        from natra.kernel.loader import BpfObject

        return BpfObject.load(configs, flow_table=flow_table, path=self.object_path)

    def teardown(self):
        if self.obj is not None:
            self.obj.close()
            self.obj = None

    def kernel_verdict(self, direction: int) -> int:
        """The one verdict counter of `direction` that this frame moved."""
        after = maps.read_counters(self.obj.map_fd("natra_counters"), direction)
        before, self.counters[direction] = self.counters[direction], after
        moved = [v for v in range(L.NVERDICTS)
                 if after[L.verdict_packets_index(v)] != before[L.verdict_packets_index(v)]]
        assert len(moved) == 1, f"{len(moved)} verdict counters moved for one frame"
        return moved[0]

    @rule(kind=st.sampled_from(FRAME_KINDS), flow=flows, size=frame_sizes, ecn=st.integers(0, 3),
          direction=st.sampled_from([L.DIR_TO_POD, L.DIR_FROM_POD]), burst=st.integers(1, 4), gso=gso)
    def send_frame(self, kind, flow, size, ecn, direction, burst, gso):
        frame = build_frame(kind, flow, size, ecn)
        for _ in range(burst):  # a few back-to-back frames of one flow, so flows turn heavy
            self.one_frame(kind, frame, direction, *gso)

    @rule(kind=st.sampled_from(["tcp4", "tcp4_opts", "udp4", "tcp6", "udp6"]), flow=flows,
          size=st.integers(MIN_FRAME, 600), ecn=st.integers(1, 3),
          direction=st.sampled_from([L.DIR_TO_POD, L.DIR_FROM_POD]), length=st.integers(5, 40))
    def send_window(self, kind, flow, size, ecn, direction, length):
        """A TCP window's worth of small ECT frames of one flow, back to back: the bucket fills
        in steps smaller than the yellow zone's top quarter, where marks happen."""
        frame = build_frame(kind, flow, size, ecn)
        for _ in range(length):
            self.one_frame(kind, frame, direction, 0, 0)

    def one_frame(self, kind: str, frame: bytes, direction: int, segs: int, seg_size: int) -> None:
        """One frame to both; the verdict, class, return value and frame out must agree."""
        kernel = testrun.run(self.obj.prog_fd(direction), frame, self.now, gso_segs=segs, gso_size=seg_size)
        model = self.model.process(frame, self.now, direction, gso_segs=max(segs, 1))
        verdict = self.kernel_verdict(direction)
        if self.tallied:
            ci_tally.add(ci_tally.DIFF_FRAMES)
        event(f"verdict {L.VERDICT_NAMES[model.verdict]}" + (f" class {model.cls}" if model.cls else ""))
        if segs > 1:
            event("gso super-packet")
        want_priority = (QDISC_MAJOR << 16) | model.cls if model.cls else 0
        assert kernel.priority == want_priority, (kind, model.cls, hex(kernel.priority))
        assert verdict == model.verdict, (kind, L.VERDICT_NAMES[verdict], L.VERDICT_NAMES[model.verdict])
        want = testrun.TC_ACT_SHOT if model.verdict in L.DROPPING_VERDICTS else testrun.TCX_NEXT
        if model.cls and TEST_REDIRECT[direction]:
            want = testrun.TC_ACT_REDIRECT
        assert kernel.retval == want, (kind, L.VERDICT_NAMES[model.verdict], kernel.retval)
        assert kernel.frame_out == model.frame_out, (kind, L.VERDICT_NAMES[model.verdict])

    @rule(dt=time_steps)
    def advance_time(self, dt):
        self.now = min(max(self.now + dt, 0), 2**64 - 1)

    @rule(data=st.data(), direction=st.sampled_from([L.DIR_TO_POD, L.DIR_FROM_POD]), on=st.booleans())
    def reconfigure(self, data, direction, on):
        p = data.draw(params(self.width, self.depth)) if on else None
        cfg = to_config(p, test_clock=True, width=self.width, depth=self.depth,
                        redirect_ifindex=TEST_REDIRECT[direction])
        # as the loader writes it: with its flow table's size
        maps.write_config(self.obj.map_fd("natra_config"), direction, cfg, flow_slots=self.flow_table)
        self.model.reconfigure(direction, cfg)

    @rule(direction=st.sampled_from([L.DIR_TO_POD, L.DIR_FROM_POD]), heavy_now=census, heavy_prev=census)
    def set_census(self, direction, heavy_now, heavy_prev):
        """As if thousands of heavy flows had been counted (N is capped at MAX_SHARE_FLOWS)."""
        write_census(self.obj.map_fd("natra_state"), direction, heavy_now, heavy_prev)
        self.model.tables.state[direction]["heavy_now"] = heavy_now
        self.model.tables.state[direction]["heavy_prev"] = heavy_prev

    @invariant()
    def same_state(self):
        if self.obj is None:
            return
        kernel, model = maps.snapshot(self.obj), self.model.snapshot()
        for part in ("config", "state", "counters", "flows", "sketch"):
            assert kernel[part] == model[part], part
        if self.flow_table < FLOW_TABLE and any(c[L.C_FLOW_OVERFLOW] for c in model["counters"]):
            event("heavy flows shared a slot")


def machine_for(object_path: str | None) -> type[KernelVersusModel]:
    """The machine, comparing the model with the program built at `object_path`."""
    return type("KernelVersusModelOf", (KernelVersusModel,),
                {"object_path": object_path, "tallied": False, "examples_run": 0})


def machine_settings(examples: int) -> settings:
    return settings(max_examples=examples, stateful_step_count=STEP_COUNT, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


KernelVersusModel.TestCase.settings = machine_settings(MAX_EXAMPLES)


@pytest.mark.root
class TestKernelVersusModel(KernelVersusModel.TestCase):
    @pytest.fixture(autouse=True)
    def _needs_kernel(self, kernel):
        """Skip without root, bpffs or the built objects (fixture in conftest)."""


COMPAT_EXAMPLES = int(os.environ.get("NATRA_DIFF_COMPAT_EXAMPLES", "25"))


_CompatMachine = machine_for(str(OBJECT_DIR / "natra_compat.bpf.o"))
_CompatMachine.TestCase.settings = machine_settings(COMPAT_EXAMPLES)


@pytest.mark.root
class TestCompatKernelVersusModel(_CompatMachine.TestCase):
    """natra_compat.bpf.o (bpf_spin_lock, for kernels before 6.15) against the model."""

    @pytest.fixture(autouse=True)
    def _needs_kernel(self, kernel):
        """Skip without root, bpffs or the built objects (fixture in conftest)."""


SHARED_EXAMPLES = int(os.environ.get("NATRA_DIFF_SHARED_EXAMPLES", "25"))


class SharedVersusModel(KernelVersusModel):
    """The shared interim build (natra_shared.bpf.o), a Pod bound to one of its slots
    under ifindex 1 (a test run's frames are on the loopback device), against the
    model; and, at a step Hypothesis picks, the Pod's own program swapped in on the
    same maps, as the node agent does: the model runs on, unaware, and must still agree."""

    object_path = None
    tallied = False
    examples_run = 0

    def load_object(self, configs, flow_table):
        from natra.kernel import interim

        self.shared = interim.SharedProgram.load(configs, flow_table=flow_table)
        assert self.shared.fill_slot()
        self.bound = self.shared.bind(configs, 1)
        self.own = None
        event("on the shared program")
        return self.bound

    @precondition(lambda self: self.obj is not None and self.own is None)
    @rule()
    def swap_to_own(self):
        from natra.kernel import interim
        from natra.kernel.loader import BpfObject

        fds = {name: self.bound.map_fd(name) for name in L.MAP_NAMES}
        configs = [maps.read_config(fds["natra_config"], d) for d in range(L.NDIRS)]
        self.own = BpfObject.load(configs, flow_table=self.flow_table, reuse=fds)
        assert interim.unbind(self.shared.prog_ids().values(), 1)
        self.obj = self.own
        event("swapped to its own program")

    def teardown(self):
        for part in ("own", "bound", "shared"):
            obj = getattr(self, part, None)
            if obj is not None:
                obj.close()
                setattr(self, part, None)
        self.obj = None


SharedVersusModel.TestCase.settings = machine_settings(SHARED_EXAMPLES)


@pytest.mark.root
class TestSharedKernelVersusModel(SharedVersusModel.TestCase):
    """natra_shared.bpf.o against the model, then the own program swapped in on its maps."""

    @pytest.fixture(autouse=True)
    def _needs_kernel(self, kernel):
        """Skip without root, bpffs or the built objects (fixture in conftest)."""
