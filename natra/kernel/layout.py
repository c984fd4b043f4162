"""Python's mirror of bpf/natra.h: constants and ctypes layouts.

Owns: the byte layouts of every map key and value the loader, the model and
the tools read or write. Rule: nothing here is invented; each name and field
follows bpf/natra.h, and tests/test_layout.py checks this mirror against the
header's #defines and the compiled object's BTF (sizes and offsets).
Must not know: how maps are created, attached or pinned; numpy.
"""

from __future__ import annotations

import ctypes

DIR_TO_POD = 0  # host-veth egress, kubernetes.io/ingress-bandwidth
DIR_FROM_POD = 1  # host-veth ingress, kubernetes.io/egress-bandwidth
NDIRS = 2
DIRECTION_NAMES = {DIR_TO_POD: "to_pod", DIR_FROM_POD: "from_pod"}

MAX_DEPTH = 8
MAX_WIDTH = 65536
MAX_ACCOUNTED_LEN = 1 << 20
MAX_SHARE_FLOWS = 1024
MIN_RATE_BPS = 1  # any positive rate, as the standard plugin; see bpf/natra.h
MAX_RATE_BPS = 1_000_000_000_000_000
MAX_BURST_BITS = 1 << 34
MAX_IPV6_EXT = 4
NS_PER_SEC = 1_000_000_000
NBIT_PER_BYTE = 8_000_000_000
HASH_SEED1 = 0x4E415452
HASH_SEED2 = 0x41534B45
SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
HASH_OFFSET = 10

KEY_IPV6 = 0x01
KEY_FRAGMENT = 0x02
KEY_TRUNCATED = 0x04

CFG_ENABLED = 0x01
CFG_ECN = 0x02
CFG_TEST_CLOCK = 0x04
CFG_SHAPE = 0x08
CFG_COARSE_CLOCK = 0x10
CFG_UNLOCKED = 0x20

CLASS_ROOT = 1
CLASS_MICE = 2
CLASS_HEAVY_BASE = 16
MAX_CLASSES = 32

V_PASS_MOUSE = 0
V_PASS_HEAVY = 1
V_MARK = 2
V_DROP_MOUSE = 3
V_DROP_HEAVY = 4
V_DROP_SHARE = 5
V_PASS_UNLIMITED = 6
V_PASS_ERROR = 7
NVERDICTS = 8
VERDICT_NAMES = {
    V_PASS_MOUSE: "pass_mouse",
    V_PASS_HEAVY: "pass_heavy",
    V_MARK: "mark",
    V_DROP_MOUSE: "drop_mouse",
    V_DROP_HEAVY: "drop_heavy",
    V_DROP_SHARE: "drop_share",
    V_PASS_UNLIMITED: "pass_unlimited",
    V_PASS_ERROR: "pass_error",
}
PASSING_VERDICTS = frozenset({V_PASS_MOUSE, V_PASS_HEAVY, V_MARK, V_PASS_UNLIMITED, V_PASS_ERROR})
DROPPING_VERDICTS = frozenset({V_DROP_MOUSE, V_DROP_HEAVY, V_DROP_SHARE})

C_VERDICT_BASE = 0
C_FRAMES = 16
C_BYTES = 17
C_IPV4 = 18
C_IPV6 = 19
C_NON_IP = 20
C_FRAGMENT = 21
C_TRUNCATED = 22
C_FLOW_NEW = 23
C_FLOW_MISSING = 24
C_MARK_FAILED = 25
C_FLOW_OVERFLOW = 26
C_LOCK_FAILED = 27
NCOUNTERS = 32
COUNTER_NAMES = {
    C_FRAMES: "frames",
    C_BYTES: "bytes",
    C_IPV4: "ipv4",
    C_IPV6: "ipv6",
    C_NON_IP: "non_ip",
    C_FRAGMENT: "fragment",
    C_TRUNCATED: "truncated",
    C_FLOW_NEW: "flow_new",
    C_FLOW_MISSING: "flow_missing",
    C_MARK_FAILED: "mark_failed",
    C_FLOW_OVERFLOW: "flow_overflow",
    C_LOCK_FAILED: "lock_failed",
}
for _v, _name in VERDICT_NAMES.items():
    COUNTER_NAMES[C_VERDICT_BASE + 2 * _v] = f"{_name}_packets"
    COUNTER_NAMES[C_VERDICT_BASE + 2 * _v + 1] = f"{_name}_bytes"


def verdict_packets_index(verdict: int) -> int:
    return C_VERDICT_BASE + 2 * verdict


def verdict_bytes_index(verdict: int) -> int:
    return C_VERDICT_BASE + 2 * verdict + 1


class FlowKey(ctypes.Structure):
    """struct natra_flow_key: 40 bytes; ports and EtherType in network order."""

    _fields_ = [
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("ethertype", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
    ]


class Config(ctypes.Structure):
    """struct natra_config: one per direction (units in bpf/natra.h)."""

    _fields_ = [
        ("rate_bps", ctypes.c_uint64),
        ("tau_nbit", ctypes.c_uint64),
        ("heavy_line_nbit", ctypes.c_uint64),
        ("early_line_nbit", ctypes.c_uint64),
        ("window_ns", ctypes.c_uint64),
        ("threshold_bytes", ctypes.c_uint64),
        ("width", ctypes.c_uint32),
        ("depth", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("classes", ctypes.c_uint32),
        ("qdisc_major", ctypes.c_uint32),
        ("redirect_ifindex", ctypes.c_uint32),
        ("flow_slots", ctypes.c_uint32),
        ("tick_ns", ctypes.c_uint32),
    ]


class Cell(ctypes.Structure):
    """struct natra_cell: one sketch counter pair with its window tag."""

    _fields_ = [("epoch", ctypes.c_uint64), ("cur", ctypes.c_uint64), ("prev", ctypes.c_uint64)]


class Slot(ctypes.Structure):
    """struct natra_slot: the heavy flow that owns one shaping class."""

    _fields_ = [("flow_hash", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("until_epoch", ctypes.c_uint64)]


class State(ctypes.Structure):
    """struct natra_state: the aggregate bucket and heavy census of a direction."""

    _fields_ = [
        ("lock", ctypes.c_uint32),  # struct bpf_res_spin_lock (natra_compat: bpf_spin_lock)
        ("heavy_now", ctypes.c_uint32),
        ("heavy_prev", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("epoch", ctypes.c_uint64),
        ("backlog_nbit", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
        ("slots", Slot * MAX_CLASSES),
    ]


class Flow(ctypes.Structure):
    """struct natra_flow: one slot of the heavy-flow table (its owner's hashes, share
    bucket and counters; the owner's key is in natra_flow_keys at the same index)."""

    _fields_ = [
        ("h1", ctypes.c_uint32),
        ("h2", ctypes.c_uint32),
        ("backlog_nbit", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
        ("counted_epoch", ctypes.c_uint64),
        ("estimate_bytes", ctypes.c_uint64),
        ("passed_bytes", ctypes.c_uint64),
        ("dropped_bytes", ctypes.c_uint64),
        ("marked_packets", ctypes.c_uint64),
    ]


class Counters(ctypes.Structure):
    """struct natra_counters: one CPU's counters of one direction."""

    _fields_ = [("c", ctypes.c_uint64 * NCOUNTERS)]


class TraceRec(ctypes.Structure):
    """struct natra_trace_rec: one frame's decision, test builds only."""

    _fields_ = [
        ("now_ns", ctypes.c_uint64),
        ("len", ctypes.c_uint32),
        ("dir", ctypes.c_uint8),
        ("verdict", ctypes.c_uint8),
        ("heavy", ctypes.c_uint8),
        ("cls", ctypes.c_uint8),
    ]


STRUCTS = {
    "natra_flow_key": FlowKey,
    "natra_config": Config,
    "natra_cell": Cell,
    "natra_slot": Slot,
    "natra_state": State,
    "natra_flow": Flow,
    "natra_counters": Counters,
    "natra_trace_rec": TraceRec,
}

MAP_NAMES = ("natra_config", "natra_state", "natra_sketch", "natra_flows", "natra_flow_keys",
             "natra_counters")
PROG_NAMES = {DIR_TO_POD: "natra_to_pod", DIR_FROM_POD: "natra_from_pod"}
