"""The shaper of one Pod direction: the qdiscs that queue what the program classifies.

Owns: the shape and the numbers of the qdisc tree (`plan`, pure), and carrying
it out on one device over natra.kernel.qdisc (`apply`, `remove`, `inspect`,
`drift`), plus the name of a Pod's IFB device. The tree, per direction (on the
host veth for traffic into the Pod, on the Pod's IFB for traffic out of it):

    4e53:   tbf  rate R, bucket B, peak bucket M      conformance: R*t + B, exactly;
     |                                                  segments GSO packets above M
     +- 4e54:  htb  (child of 4e53:1)                  default: heavy class 0
         +- 4e54:1    rate = ceil = R, burst B - reserve     every frame is charged here
             +- 4e54:2     mice: rate = ceil = R, burst reserve, prio 0    -> bfifo
             +- 4e54:16+k  heavy k: rate 8 bit/s, ceil R, prio 1, quantum M  -> bfifo

Mice are green in their own bucket (R, reserve) and go first; heavy classes only
borrow from 4e54:1, which every frame (mice too) is charged to, so heavy
traffic stops while mice have taken the bucket below the reserve line and
shares what is left by DRR, equal quanta per class. The tbf on top holds the
whole Pod to R*t + B whatever HTB's own buckets do. docs/design.md, "Shaping",
says why each number is what it is.

Rule: `plan` is pure integer arithmetic on parameters; the effect functions
touch only qdiscs and IFB devices named by the plan or by the container ID,
never anything else on the device.
Must not know: CNI, pins, the BPF program (it only shares the class numbers of
bpf/natra.h through natra.kernel.layout).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from natra.kernel import layout as L
from natra.kernel import qdisc
from natra.kernel.params import QDISC_MAJOR, DataPathParams

TBF_MAJOR = QDISC_MAJOR - 1  # 0x4e53: the root tbf; the htb under it is QDISC_MAJOR
TBF_CHILD = qdisc.handle(TBF_MAJOR, 1)  # tbf's one class, where the htb hangs
LEAF_MAJOR_BASE = 0x100  # leaf bfifo of class minor m gets handle (0x100 + m):
ETH_HLEN = 14
# The largest packet that passes the shaper whole: a millisecond of rate, at
# least two full frames, at most 128 KiB. At 10 Mbit/s a 64 KiB GSO packet holds
# the line for 52 ms, and mice would wait behind it; segmenting costs CPU at
# high rates, where a millisecond is more than a super-packet anyway. The cap
# is above a full 64 KiB GSO packet as the qdisc counts it (its headers once
# per segment: ~68 KiB): a 64 KiB cap made the tbf segment every super-packet
# at 1 Gbit/s, and the shaped download ran out of CPU (benchmarks, section 1).
MAX_PACKET_NS = 1_000_000
MAX_PACKET_CAP = 128 * 1024
MIN_FRAMES_PER_PACKET = 2
# A class's queue holds queue_ns of the Pod's rate, and never fewer than this
# many full frames: TCP's loss rate grows as 1/window^2, and below ~64 frames of
# window a loss-based sender retransmits more than 0.5 % (measured at 10 Mbit/s:
# 17 frames 0.6-0.9 %, 64 frames 0.08-0.3 %; docs/tuning.md).
MIN_QUEUE_FRAMES = 64
# ... but a queue never holds more than this much time of rate, whatever the
# frame count says: below ~1.5 Mbit/s the 64 frames would be seconds to minutes
# (measured: at 800 bit/s what one transfer left queued made the next
# connection's SYN time out). There a heavy flow loses more, and waits less.
MAX_QUEUE_NS = 500_000_000
# The peak bucket's rate: far above any Pod rate so it never paces, only caps
# the packet size.
PEAK_FACTOR = 16
MIN_PEAK_BPS = 100 * 10**9
MAX_PEAK_BPS = 8 * (2**64 - 1)
HEAVY_RATE_BPS = qdisc.MIN_RATE_BPS  # a heavy class's own rate: it borrows everything
MIN_SHAPE_RATE_BPS = qdisc.MIN_RATE_BPS  # HTB and TBF count whole bytes per second
IFB_PREFIX = "ntifb"  # + 10 hex digits of the container ID's SHA-256: 15 characters
IFB_NAME_HEX = 10


class ShapeError(Exception):
    """The shaper cannot be set up as planned; says which step and why (cause chained)."""


@dataclass(frozen=True)
class ClassPlan:
    """One HTB class and its leaf queue."""

    minor: int  # class minor under QDISC_MAJOR (layout.CLASS_*)
    name: str  # "root", "mice", "heavy0".. for people
    parent_minor: int  # 0: the htb itself
    rate_bps: int  # bit/s, the class's own (green) rate
    ceil_bps: int  # bit/s, the most it may send borrowing
    burst_bytes: int
    cburst_bytes: int
    prio: int  # 0 first
    quantum_bytes: int  # DRR share per round among classes of one prio
    queue_bytes: int  # the leaf bfifo's limit; 0 for an inner class

    @property
    def classid(self) -> int:
        return qdisc.handle(QDISC_MAJOR, self.minor)

    @property
    def leaf_handle(self) -> int:
        return qdisc.handle(LEAF_MAJOR_BASE + self.minor)


@dataclass(frozen=True)
class ShaperPlan:
    """The whole tree for one direction of one Pod."""

    rate_bps: int  # bit/s, R (whole bytes per second)
    burst_bytes: int  # B as applied: max(asked burst, max_packet_bytes)
    reserve_bytes: int  # of B, only mice may spend it
    max_packet_bytes: int  # M: bigger GSO packets are segmented
    peak_bps: int  # bit/s of the peak bucket (never binding)
    classes: tuple[ClassPlan, ...]  # root, mice, heavy 0..n-1

    @property
    def default_minor(self) -> int:
        return L.CLASS_HEAVY_BASE

    @property
    def queue_bytes(self) -> int:
        return max(c.queue_bytes for c in self.classes)

    def promise_bytes(self, seconds: float) -> float:
        """Bytes the tree may let through in `seconds`: R*t + B."""
        return self.rate_bps / 8 * seconds + self.burst_bytes


def frame_bytes(mtu: int) -> int:
    """A full frame on a device of this MTU, Ethernet header included."""
    return mtu + ETH_HLEN


def max_packet_bytes(rate_bps: int, mtu: int) -> int:
    frame = frame_bytes(mtu)
    wanted = rate_bps * MAX_PACKET_NS // (8 * L.NS_PER_SEC)
    return max(min(wanted, MAX_PACKET_CAP), MIN_FRAMES_PER_PACKET * frame)


def queue_bytes(rate_bps: int, queue_ns: int, mtu: int) -> int:
    """queue_ns of rate, at least MIN_QUEUE_FRAMES frames, but never more than
    MAX_QUEUE_NS of rate (64 frames are 97 s at 8 kbit/s), and never fewer than
    MIN_FRAMES_PER_PACKET frames (a queue must hold what the tbf may hand it)."""
    per_second = 8 * L.NS_PER_SEC  # bit/s * ns / per_second = bytes, in integers
    wanted = max(rate_bps * queue_ns // per_second, MIN_QUEUE_FRAMES * frame_bytes(mtu))
    capped = min(wanted, rate_bps * MAX_QUEUE_NS // per_second)
    return min(max(capped, MIN_FRAMES_PER_PACKET * frame_bytes(mtu)), qdisc.U32_MAX)


def plan(params: DataPathParams, mtu: int) -> ShaperPlan:
    """The tree that shapes one direction with these parameters on a device of this MTU."""
    if params.rate_bps < MIN_SHAPE_RATE_BPS:
        raise ShapeError(f"rate {params.rate_bps} bit/s is below {MIN_SHAPE_RATE_BPS} bit/s, the least "
                         "HTB and TBF can pace (they count whole bytes per second)")
    rate = params.rate_bps // 8 * 8
    packet = max_packet_bytes(rate, mtu)
    burst = max(params.burst_bits // 8, packet)
    reserve = min(params.reserve_bits // 8, burst // 2)
    queue = queue_bytes(rate, params.queue_ns, mtu)
    shared = max(burst - reserve, packet)
    classes = [
        ClassPlan(L.CLASS_ROOT, "root", 0, rate, rate, shared, shared, 0, packet, 0),
        ClassPlan(L.CLASS_MICE, "mice", L.CLASS_ROOT, rate, rate, max(reserve, packet), max(reserve, packet),
                  0, packet, queue),
    ]
    classes += [ClassPlan(L.CLASS_HEAVY_BASE + k, f"heavy{k}", L.CLASS_ROOT, HEAVY_RATE_BPS, rate, packet,
                          packet, 1, packet, queue) for k in range(params.classes)]
    peak = min(max(rate * PEAK_FACTOR, MIN_PEAK_BPS), MAX_PEAK_BPS)
    return ShaperPlan(rate, burst, reserve, packet, peak, tuple(classes))


# ---- IFB naming ---------------------------------------------------------------------------------

def ifb_name(container_id: str) -> str:
    """The IFB device that queues a Pod's outgoing traffic: derived from the container ID."""
    digest = hashlib.sha256(container_id.encode()).hexdigest()
    return IFB_PREFIX + digest[:IFB_NAME_HEX]


def is_ifb_name(name: str) -> bool:
    rest = name[len(IFB_PREFIX):]
    return (name.startswith(IFB_PREFIX) and len(rest) == IFB_NAME_HEX
            and all(c in "0123456789abcdef" for c in rest))


# ---- effects ------------------------------------------------------------------------------------

def _step(what: str, ifindex: int, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except qdisc.QdiscError as exc:
        raise ShapeError(f"{what} on ifindex {ifindex}: {exc}") from exc


def is_ours(root: qdisc.Qdisc | None) -> bool:
    return root is not None and root.kind == "tbf" and root.handle == qdisc.handle(TBF_MAJOR)


def foreign_root(ifindex: int) -> qdisc.Qdisc | None:
    """A root qdisc on the device that Natra did not make (None when there is none, or it is ours).

    The kernel's default root (handle 0: noqueue on a veth, or the default
    multiqueue/fq_codel kinds) is nobody's and may be replaced.
    """
    root = _step("read the root qdisc", ifindex, qdisc.root_qdisc, ifindex)
    if root is None or is_ours(root) or root.handle == 0:
        return None
    return root


def apply(ifindex: int, tree: ShaperPlan) -> None:
    """Build the tree on `ifindex`, or bring an existing one of ours to the plan (idempotent).

    Refuses (ShapeError) when another root qdisc is on the device: it is not ours
    to replace.
    """
    other = foreign_root(ifindex)
    if other is not None:
        raise ShapeError(f"ifindex {ifindex} already has a root qdisc {other.kind} "
                         f"{qdisc.handle_str(other.handle)} that Natra did not make")
    # Until the htb is grafted, a new tbf queues in a bfifo as deep as the
    # deepest class queue: the device stays open if this process dies in between.
    _step("tbf root", ifindex, qdisc.replace_tbf_root, ifindex, qdisc.handle(TBF_MAJOR), tree.rate_bps,
          tree.burst_bytes, tree.peak_bps, tree.max_packet_bytes, tree.queue_bytes)
    fresh = _step("htb under the tbf", ifindex, qdisc.replace_htb_root, ifindex, QDISC_MAJOR,
                  tree.default_minor, parent=TBF_CHILD)
    made: set[int] = set()  # classes made or changed above: their children need no lookup of them
    for c in tree.classes:
        parent = qdisc.handle(QDISC_MAJOR, c.parent_minor) if c.parent_minor else qdisc.handle(QDISC_MAJOR)
        _step(f"class {c.name}", ifindex, qdisc.replace_htb_class, ifindex, c.classid, parent, c.rate_bps,
              c.ceil_bps, c.burst_bytes, c.cburst_bytes, c.prio, c.quantum_bytes,
              parent_known=c.parent_minor in made)
        made.add(c.minor)
        if c.queue_bytes:
            _step(f"queue of class {c.name}", ifindex, qdisc.replace_bfifo, ifindex, c.leaf_handle, c.classid,
                  c.queue_bytes)
    if fresh:
        return  # a new htb has only the classes just made
    wanted = {c.minor for c in tree.classes}
    for cls in _step("list classes", ifindex, qdisc.dump_classes, ifindex):
        if cls.kind == "htb" and cls.classid >> 16 == QDISC_MAJOR and cls.classid & 0xFFFF not in wanted:
            _step("drop a class the plan no longer has", ifindex, _delete_class, ifindex, cls.classid)


def _delete_class(ifindex: int, classid: int) -> None:
    qdisc.delete_qdisc(ifindex, classid)
    qdisc.delete_class(ifindex, classid)


def remove(ifindex: int) -> bool:
    """Remove our tree from `ifindex` (only if the root is ours); True when something was removed."""
    root = _step("read the root qdisc", ifindex, qdisc.root_qdisc, ifindex)
    if not is_ours(root):
        return False
    return _step("delete the root qdisc", ifindex, qdisc.delete_root_qdisc, ifindex)


@dataclass(frozen=True)
class ClassState:
    """What one class did and holds now."""

    name: str
    minor: int
    sent_bytes: int
    sent_packets: int
    drops_packets: int  # by its leaf queue (full)
    backlog_bytes: int
    backlog_packets: int
    share_bps: int  # bit/s it may count on: R for root and mice; heavy: R / active heavy classes

    @property
    def backlog_delay_ns(self) -> int:
        """How long its backlog takes to leave at its share."""
        return self.backlog_bytes * 8 * L.NS_PER_SEC // self.share_bps if self.share_bps else 0


@dataclass(frozen=True)
class ShaperState:
    ifindex: int
    rate_bps: int
    burst_bytes: int
    classes: tuple[ClassState, ...]


def inspect(ifindex: int, qdiscs: list[qdisc.Qdisc] | None = None) -> ShaperState | None:
    """Our tree on `ifindex` as the kernel has it, with per-class counters; None when absent.

    `qdiscs`: the device's qdiscs from one dump_all_qdiscs a caller reading many
    devices made (each dump carries every device's); None: dump them here.
    """
    if qdiscs is None:
        qdiscs = _step("list qdiscs", ifindex, qdisc.dump_qdiscs, ifindex)
    root = next((q for q in qdiscs if q.parent == qdisc.TC_H_ROOT), None)
    if not is_ours(root) or root.tbf is None:
        return None
    leaves = {q.parent: q for q in qdiscs}
    htb = [c for c in _step("list classes", ifindex, qdisc.dump_classes, ifindex)
           if c.kind == "htb" and c.classid >> 16 == QDISC_MAJOR and c.htb is not None]
    rate = root.tbf.rate_bps
    heavy_busy = sum(1 for c in htb if c.classid & 0xFFFF >= L.CLASS_HEAVY_BASE and c.stats.backlog_bytes)
    states = []
    for c in sorted(htb, key=lambda c: c.classid):
        minor = c.classid & 0xFFFF
        leaf = leaves.get(c.classid)
        stats = leaf.stats if leaf is not None else c.stats
        share = rate // max(heavy_busy, 1) if minor >= L.CLASS_HEAVY_BASE else rate
        states.append(ClassState(class_name(minor), minor, c.stats.sent_bytes, c.stats.sent_packets,
                                 stats.drops_packets, stats.backlog_bytes, stats.qlen_packets, share))
    return ShaperState(ifindex, rate, root.tbf.burst_bytes, tuple(states))


def class_name(minor: int) -> str:
    if minor == L.CLASS_ROOT:
        return "root"
    if minor == L.CLASS_MICE:
        return "mice"
    if minor >= L.CLASS_HEAVY_BASE:
        return f"heavy{minor - L.CLASS_HEAVY_BASE}"
    return f"class{minor}"


def drift(ifindex: int, tree: ShaperPlan) -> list[str]:
    """How the device differs from the plan, one sentence per difference (empty: none)."""
    qdiscs = _step("list qdiscs", ifindex, qdisc.dump_qdiscs, ifindex)
    root = next((q for q in qdiscs if q.parent == qdisc.TC_H_ROOT), None)
    if not is_ours(root):
        what = "no root qdisc" if root is None else f"root qdisc {root.kind} {qdisc.handle_str(root.handle)}"
        return [f"ifindex {ifindex} has {what}, not Natra's tbf {TBF_MAJOR:x}:"]
    problems = []
    if root.tbf is not None and root.tbf.rate_bps != tree.rate_bps:
        problems.append(f"tbf rate {root.tbf.rate_bps} bit/s, planned {tree.rate_bps}")
    child = next((q for q in qdiscs if q.parent == TBF_CHILD), None)
    if child is None or child.kind != "htb" or child.handle != qdisc.handle(QDISC_MAJOR):
        problems.append(f"no htb {QDISC_MAJOR:x}: under the tbf")
        return problems
    have = {c.classid & 0xFFFF: c for c in _step("list classes", ifindex, qdisc.dump_classes, ifindex)
            if c.kind == "htb" and c.classid >> 16 == QDISC_MAJOR and c.htb is not None}
    leaves = {q.parent for q in qdiscs}
    for c in tree.classes:
        got = have.get(c.minor)
        if got is None:
            problems.append(f"class {c.name} ({qdisc.handle_str(c.classid)}) is missing")
            continue
        if (got.htb.rate_bps, got.htb.ceil_bps, got.htb.prio) != (c.rate_bps, c.ceil_bps, c.prio):
            problems.append(f"class {c.name} has rate {got.htb.rate_bps} ceil {got.htb.ceil_bps} prio "
                            f"{got.htb.prio}, planned {c.rate_bps} {c.ceil_bps} {c.prio}")
        if c.queue_bytes and c.classid not in leaves:
            problems.append(f"class {c.name} has no queue")
    extra = sorted(set(have) - {c.minor for c in tree.classes})
    if extra:
        problems.append(f"classes not in the plan: {', '.join(class_name(m) for m in extra)}")
    return problems
