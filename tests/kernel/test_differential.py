"""Kernel versus model, step by step: the program must be the model, bit for bit.

A Hypothesis RuleBasedStateMachine drives a private loaded object (test clock,
time through __sk_buff.tstamp) and `natra.reference.engine.Model` with the same
steps: send a scapy-built frame (TCP/UDP/ICMP/SCTP over IPv4 and IPv6,
fragments, IPv6 extension headers, truncated headers, non-IP, ECT or not,
60..1514 bytes, a handful of flows, either direction), advance time, or
reconfigure a direction. After every step the verdict, the frame that comes
out (CE marks), in shaping mode the class (skb->priority) and the redirect,
and the full map state (config, state with the class owners, sketch, flows,
counters) must be equal.

CI runs 200 sequences of up to 200 steps; NATRA_DIFF_EXAMPLES and
NATRA_DIFF_STEPS override both for local runs.
"""

from __future__ import annotations

import functools
import os

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from natra.kernel import layout as L
from natra.kernel import maps, testrun
from natra.kernel.params import MODES, QDISC_MAJOR, DataPathParams, to_config

engine = pytest.importorskip("natra.reference.engine", reason="the reference model is not importable")

MAX_EXAMPLES = int(os.environ.get("NATRA_DIFF_EXAMPLES", "200"))
STEP_COUNT = int(os.environ.get("NATRA_DIFF_STEPS", "200"))
# Another build of the program to compare (e.g. a deliberately broken one, to
# see this test fail); the packaged natra.bpf.o when unset.
OBJECT_OVERRIDE = os.environ.get("NATRA_DIFF_OBJECT") or None
FLOW_TABLE = 4096  # far above the flows used: the model's exact LRU never has to evict
FLOWS = 6  # distinct (address, port) pairs; with a narrow sketch columns collide
MIN_FRAME, MAX_FRAME = 60, 1514

FRAME_KINDS = ("tcp4", "udp4", "icmp4", "sctp4", "frag4_first", "frag4_later", "ihl_trunc4",
               "ports_trunc4", "tcp6", "udp6", "icmp6", "frag6", "ext6", "ext6_five", "ext6_trunc",
               "arp", "vlan")


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
    pkt = {
        "tcp4": lambda: eth / ip4 / TCP(sport=sport, dport=443),
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
    burst = draw(bursts)
    return DataPathParams(
        rate_bps=draw(rates),
        burst_bits=burst,
        reserve_bits=draw(st.integers(0, burst - 1)),
        width=width,
        depth=depth,
        threshold_bytes=draw(st.one_of(st.integers(1, 20_000), st.integers(1, 1 << 40))),
        window_ns=draw(st.one_of(st.integers(1_000_000, 50_000_000), st.integers(1_000_000, 60 * 10**9))),
        ecn=draw(st.booleans()),
        early_percent=draw(st.integers(0, 100)),
        mode=draw(st.sampled_from(MODES)),
        # few classes as often as many: FLOWS heavy flows then exhaust them and share
        classes=draw(st.one_of(st.integers(1, 4), st.integers(1, L.MAX_CLASSES))),
    ).validate()


# Out of the Pod, shaping redirects to an IFB; any ifindex will do for a test run
# (the kernel returns TC_ACT_REDIRECT and does not forward the frame).
TEST_REDIRECT = {L.DIR_TO_POD: 0, L.DIR_FROM_POD: 1}


time_steps = st.one_of(st.just(0), st.integers(1, 10**6), st.integers(10**6, 10**9),
                       st.integers(10**9, 10**12))


class KernelVersusModel(RuleBasedStateMachine):
    """Each step goes to both; after each step everything must agree."""

    def __init__(self):
        super().__init__()
        self.obj = None
        self.model = None
        self.now = 0

    @initialize(data=st.data(), width=st.sampled_from([1, 4, 16]), depth=st.integers(1, L.MAX_DEPTH),
                enabled=st.sampled_from([(True, True), (True, False), (False, True)]),
                start=st.one_of(st.just(0), st.integers(0, 10**12), st.integers(2**62, 2**63)))
    def load(self, data, width, depth, enabled, start):
        from natra.kernel.loader import BpfObject

        self.width, self.depth = width, depth
        configs = [to_config(data.draw(params(width, depth)) if on else None, test_clock=True,
                             width=width, depth=depth, redirect_ifindex=TEST_REDIRECT[d])
                   for d, on in enumerate(enabled)]
        self.obj = BpfObject.load(configs, flow_table=FLOW_TABLE, path=OBJECT_OVERRIDE)
        # The pure-Python spec, not the optional C accelerator: the spec is the judge.
        self.model = engine.Model(configs, flow_table=FLOW_TABLE, accelerator=False)
        self.now = start

    def teardown(self):
        if self.obj is not None:
            self.obj.close()

    @rule(kind=st.sampled_from(FRAME_KINDS), flow=st.integers(0, FLOWS - 1),
          size=st.integers(MIN_FRAME, MAX_FRAME), ecn=st.integers(0, 3),
          direction=st.sampled_from([L.DIR_TO_POD, L.DIR_FROM_POD]), burst=st.integers(1, 4))
    def send_frame(self, kind, flow, size, ecn, direction, burst):
        frame = build_frame(kind, flow, size, ecn)
        for _ in range(burst):  # a few back-to-back frames of one flow, so flows turn heavy
            kernel = testrun.run(self.obj.prog_fd(direction), frame, self.now)
            model = self.model.process(frame, self.now, direction)
            event(f"verdict {L.VERDICT_NAMES[model.verdict]}" + (f" class {model.cls}" if model.cls else ""))
            want = testrun.TC_ACT_SHOT if model.verdict in L.DROPPING_VERDICTS else testrun.TCX_NEXT
            if model.cls and TEST_REDIRECT[direction]:
                want = testrun.TC_ACT_REDIRECT
            assert kernel.retval == want, (kind, L.VERDICT_NAMES[model.verdict], kernel.retval)
            assert kernel.frame_out == model.frame_out, (kind, L.VERDICT_NAMES[model.verdict])
            want_priority = (QDISC_MAJOR << 16) | model.cls if model.cls else 0
            assert kernel.priority == want_priority, (kind, model.cls, hex(kernel.priority))

    @rule(dt=time_steps)
    def advance_time(self, dt):
        self.now = min(self.now + dt, 2**64 - 1)

    @rule(data=st.data(), direction=st.sampled_from([L.DIR_TO_POD, L.DIR_FROM_POD]), on=st.booleans())
    def reconfigure(self, data, direction, on):
        p = data.draw(params(self.width, self.depth)) if on else None
        cfg = to_config(p, test_clock=True, width=self.width, depth=self.depth,
                        redirect_ifindex=TEST_REDIRECT[direction])
        maps.write_config(self.obj.map_fd("natra_config"), direction, cfg)
        self.model.reconfigure(direction, cfg)

    @invariant()
    def same_state(self):
        if self.obj is None:
            return
        kernel, model = maps.snapshot(self.obj), self.model.snapshot()
        for part in ("config", "state", "counters", "flows", "sketch"):
            assert kernel[part] == model[part], part


KernelVersusModel.TestCase.settings = settings(
    max_examples=MAX_EXAMPLES,
    stateful_step_count=STEP_COUNT,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@pytest.mark.root
class TestKernelVersusModel(KernelVersusModel.TestCase):
    @pytest.fixture(autouse=True)
    def _needs_kernel(self, kernel):
        """Skip without root, bpffs or the built objects (fixture in conftest)."""
