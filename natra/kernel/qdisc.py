"""Just enough rtnetlink to build and read the shaping qdiscs of a Pod.

Owns: IFB devices (create, bring up and name with an alias, delete, name ->
ifindex) and, on any ifindex of the caller's network namespace, an HTB root qdisc,
HTB classes, TBF leaf qdiscs under them, deleting qdiscs, and dumping qdiscs
and classes with their configuration and TCA_STATS2 counters. One raw
AF_NETLINK/NETLINK_ROUTE socket per call, stdlib only.

Rule: no pyroute2 (it costs 150-200 ms per CNI call) and no subprocess. Rates
are bit/s in, bit/s out; the kernel keeps whole bytes/s, so a rate is floored to
a multiple of 8 bit/s. Bursts are bytes in and out; the kernel keeps HTB
buffers (and dumps TBF buffers) as psched ticks of PSCHED_TICK_NS (see there),
so a burst reads back within one tick of what was asked (HTB rounds up, TBF's
dump rounds down), and never longer than MAX_TICKS ticks (see there). Rate
specs are sent with linklayer ethernet, so the kernel computes transmit times
itself and no rate table is sent. Every failure is a QdiscError naming the step
and the ifindex and keeping the errno (and the kernel's extended-ack text when
it gives one).

Must not know: CNI, BPF, which Pod a device belongs to, network namespaces.
"""

from __future__ import annotations

import errno as errno_mod
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

# The framing and the link constants are natra.kernel.netlink's; this module adds tc.
from natra.kernel.netlink import (
    IFINFOMSG,
    IFLA_IFNAME,
    NETLINK_ROUTE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSG_HEADER,
    RTM_GETLINK,
    RTM_NEWLINK,
    parse_attrs,
)
from natra.kernel.netlink import align as _align
from natra.kernel.netlink import attr as _attr

# ---- netlink framing ----------------------------------------------------------------------

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # errors quote only the request's header, not all of it
NETLINK_EXT_ACK = 11  # errors carry the kernel's text ("Specified class not found")
NLMSG_DONE = 3
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_ECHO = 0x8  # the kernel answers a GET of one qdisc only to a requester that asks for the echo
NLM_F_CAPPED = 0x100  # in an NLMSG_ERROR: the quoted request is its header only
NLM_F_ACK_TLVS = 0x200  # in an NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 0x8000  # strict kernel parsers want it on every nest we send
NLMSGERR = struct.Struct("=i")  # error, then the quoted request header
RECV_BYTES = 65536  # the kernel caps one dump skb at 32 KiB; twice that never truncates
REPLY_TIMEOUT_S = 2.0  # the kernel answers in microseconds; this only bounds a hang

# ---- links -------------------------------------------------------------------------------

RTM_DELLINK = 17
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFALIASZ = 256  # the kernel refuses a longer alias
IFLA_INFO_KIND = 1
IFF_UP = 0x1

# ---- traffic control ---------------------------------------------------------------------

RTM_NEWQDISC = 36
RTM_DELQDISC = 37
RTM_GETQDISC = 38
RTM_NEWTCLASS = 40
RTM_DELTCLASS = 41
RTM_GETTCLASS = 42
TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
TCA_KIND = 1
TCA_OPTIONS = 2
TCA_STATS2 = 7
TCA_STATS_BASIC = 1  # struct gnet_stats_basic: u64 bytes, u32 packets
TCA_STATS_QUEUE = 3  # struct gnet_stats_queue: qlen, backlog, drops, requeues, overlimits
TCA_STATS_PKT64 = 8  # u64 packets, sent when the u32 in TCA_STATS_BASIC overflowed
STATS_BASIC = struct.Struct("=QI")
STATS_QUEUE = struct.Struct("=IIIII")
TC_H_ROOT = 0xFFFFFFFF  # parent of a device's root qdisc
TC_H_MAJ_MASK = 0xFFFF0000
TC_H_MIN_MASK = 0x0000FFFF

# struct tc_ratespec: cell_log, linklayer, overhead, cell_align, mpu, rate (bytes/s, u32)
RATESPEC = struct.Struct("=BBHhHI")
TC_LINKLAYER_ETHERNET = 1  # kernel computes len -> time itself: no rate table needed

TCA_HTB_PARMS = 1
TCA_HTB_INIT = 2
TCA_HTB_DIRECT_QLEN = 5
TCA_HTB_RATE64 = 6
TCA_HTB_CEIL64 = 7
HTB_GLOB = struct.Struct("=IIIII")  # version, rate2quantum, defcls, debug, direct_pkts
HTB_OPT = struct.Struct("=12s12sIIIII")  # rate, ceil, buffer, cbuffer, quantum, level, prio
HTB_PROTOCOL_VERSION = 3  # htb_init refuses any other TCA_HTB_INIT version (HTB_VER >> 16)
HTB_PRIO_MAX = 7  # TC_HTB_NUMPRIO - 1; the kernel silently turns larger values into 7
HTB_R2Q_DEFAULT = 10  # tc's default; only used for classes that leave quantum to the kernel
QUANTUM_MAX_BYTES = 2**31 - 1  # the kernel keeps a class quantum in an int

TCA_TBF_PARMS = 1
TCA_TBF_RATE64 = 4
TCA_TBF_PRATE64 = 5
TCA_TBF_BURST = 6
TCA_TBF_PBURST = 7
TCA_FIFO_LIMIT = struct.Struct("=I")  # struct tc_fifo_qopt: the whole TCA_OPTIONS of a bfifo
TBF_QOPT = struct.Struct("=12s12sIII")  # rate, peakrate, limit, buffer, mtu

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

# The kernel's psched tick is fixed at compile time: PSCHED_SHIFT = 6, so a tick
# is 2**6 = 64 ns (include/net/pkt_sched.h, unchanged since Linux 2.6.31).
# /proc/net/psched publishes the same number as its second word (0x40) only for
# old tc binaries; reading it on every CNI call would buy nothing
# (tests/kernel/test_qdisc.py checks the file says 64).
PSCHED_TICK_NS = 64
NS_PER_S = 1_000_000_000
# tc_htb_opt.buffer/cbuffer and tc_tbf_qopt.buffer are u32 ticks, and the TBF
# dump truncates a longer buffer modulo 2**32. A burst is therefore cut to at
# most 2**32 - 1 ticks (274.9 s) of its rate: 27.5 kB at 800 bit/s, never a
# limit above a few Mbit/s. TBF's TCA_TBF_BURST is a u32 of bytes as well.
MAX_TICKS = U32_MAX
MIN_TICKS = 1  # a burst shorter than one tick still gets one (0 would be a bucket of nothing)
MIN_RATE_BPS = 8  # 1 byte/s; HTB refuses 0 and TBF would compute a zero transmit time


class QdiscError(OSError):
    """A qdisc, class or link step failed: `step`, `ifindex` (None before a link exists), errno."""

    def __init__(self, errno: int, step: str, ifindex: int | None, detail: str = "") -> None:
        where = f"ifindex {ifindex}" if ifindex is not None else "no ifindex"
        text = f"{step} ({where}): {os.strerror(errno)}"
        super().__init__(errno, text + (f": {detail}" if detail else ""))
        self.step = step
        self.ifindex = ifindex
        self.detail = detail


# ---- data read back ----------------------------------------------------------------------

@dataclass(frozen=True)
class Stats:
    """TCA_STATS2 counters of a qdisc or class (GSO super-packets count as their segments)."""

    sent_bytes: int  # bytes dequeued, link-layer header included
    sent_packets: int  # packets dequeued
    qlen_packets: int  # packets queued now
    backlog_bytes: int  # bytes queued now
    drops_packets: int  # packets dropped
    requeues: int  # packets handed back by the driver (count)
    overlimits: int  # times a packet had to wait for tokens (count)


@dataclass(frozen=True)
class HtbRoot:
    """TCA_OPTIONS of an htb qdisc."""

    r2q: int  # divisor from rate (bytes/s) to a default quantum (bytes); dimensionless
    default_minor: int  # minor of the class unclassified packets go to; 0 = direct queue
    direct_packets: int  # packets sent unshaped through the direct queue
    direct_qlen_packets: int  # length limit of the direct queue


@dataclass(frozen=True)
class HtbClassConfig:
    """TCA_OPTIONS of an htb class, as the kernel holds it."""

    rate_bps: int  # guaranteed rate, bit/s (the kernel's bytes/s times 8)
    ceil_bps: int  # rate with borrowing, bit/s
    burst_bytes: int  # buffer_ticks of rate, bytes
    cburst_bytes: int  # cbuffer_ticks of ceil, bytes
    buffer_ticks: int  # token bucket depth at rate, psched ticks of PSCHED_TICK_NS
    cbuffer_ticks: int  # token bucket depth at ceil, psched ticks
    quantum_bytes: int  # bytes per round among siblings of one prio (leaves only; 0 for inner)
    prio: int  # 0 (served first) .. 7 (leaves only)
    level: int  # 0 for a leaf, up to 7 for a root class


@dataclass(frozen=True)
class TbfConfig:
    """TCA_OPTIONS of a tbf qdisc (the kernel dumps the burst as ticks only)."""

    rate_bps: int  # bit/s
    burst_bytes: int  # buffer_ticks of rate, bytes (max_size itself is not dumped)
    buffer_ticks: int  # bucket depth, psched ticks of PSCHED_TICK_NS
    limit_bytes: int  # length of the bfifo behind the bucket, bytes


@dataclass(frozen=True)
class Qdisc:
    ifindex: int
    kind: str  # "htb", "tbf", "noqueue", ...
    handle: int  # u32 major:minor (minor 0); see handle() and handle_str()
    parent: int  # u32 classid it hangs from, or TC_H_ROOT
    stats: Stats
    htb: HtbRoot | None  # set when kind == "htb"
    tbf: TbfConfig | None  # set when kind == "tbf"


@dataclass(frozen=True)
class TrafficClass:
    ifindex: int
    kind: str  # kind of the qdisc owning the class
    classid: int  # u32 major:minor
    parent: int  # u32 classid of the parent class, the qdisc's handle, or TC_H_ROOT
    leaf_handle: int  # u32 handle of the qdisc under a leaf class, 0 when none
    stats: Stats
    htb: HtbClassConfig | None  # set when kind == "htb"


# ---- handles, rates and ticks -----------------------------------------------------------------

def handle(major: int, minor: int = 0) -> int:
    """The u32 tc handle major:minor; handle(1, 0x10) is what tc calls 1:10."""
    if not (0 <= major <= 0xFFFF and 0 <= minor <= 0xFFFF):
        raise ValueError(f"handle {major:#x}:{minor:#x} is outside 16 bits per half")
    return (major << 16) | minor


def handle_str(value: int) -> str:
    """tc's spelling of a handle: root, 1:, 1:10 (both halves hex)."""
    if value == TC_H_ROOT:
        return "root"
    major, minor = value >> 16, value & TC_H_MIN_MASK
    return f"{major:x}:" + (f"{minor:x}" if minor else "")


def rate_bytes_per_s(rate_bps: int) -> int:
    """The bytes/s the kernel keeps for `rate_bps` (floored: it counts whole bytes)."""
    return rate_bps // 8


def burst_ticks(burst_bytes: int, rate_bps: int) -> int:
    """Ticks a bucket needs to hold `burst_bytes` at `rate_bps`: rounded up, in MIN_TICKS..MAX_TICKS."""
    denominator = rate_bytes_per_s(rate_bps) * PSCHED_TICK_NS
    ticks = -(-burst_bytes * NS_PER_S // denominator)
    return max(MIN_TICKS, min(ticks, MAX_TICKS))


def ticks_burst(ticks: int, rate_bps: int) -> int:
    """Bytes that `ticks` psched ticks hold at `rate_bps` (floored)."""
    return ticks * PSCHED_TICK_NS * rate_bytes_per_s(rate_bps) // NS_PER_S


def max_burst_bytes(rate_bps: int) -> int:
    """The largest burst a bucket at `rate_bps` can hold: MAX_TICKS ticks, and a u32 of bytes."""
    return min(ticks_burst(MAX_TICKS, rate_bps), U32_MAX)


# ---- encoding --------------------------------------------------------------------------------

def _nest(kind: int, *children: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(children))


def u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _u64(value: int) -> bytes:
    return struct.pack("=Q", value)


def cstring(value: str) -> bytes:
    return value.encode() + b"\0"


def _ratespec(rate_bps: int) -> bytes:
    # The u32 field saturates; the full rate then travels in a *_RATE64 attribute.
    return RATESPEC.pack(0, TC_LINKLAYER_ETHERNET, 0, 0, 0, min(rate_bytes_per_s(rate_bps), U32_MAX))


def _needs_64(rate_bps: int) -> bool:
    return rate_bytes_per_s(rate_bps) >= 2**32


def tcmsg(ifindex: int, handle_: int, parent: int, info: int = 0) -> bytes:
    return TCMSG.pack(socket.AF_UNSPEC, ifindex, handle_, parent, info)


def htb_root_options(default_minor: int, r2q: int, direct_qlen_packets: int | None) -> bytes:
    glob = HTB_GLOB.pack(HTB_PROTOCOL_VERSION, r2q, default_minor, 0, 0)
    extra = _attr(TCA_HTB_DIRECT_QLEN, u32(direct_qlen_packets)) if direct_qlen_packets is not None else b""
    return _nest(TCA_OPTIONS, _attr(TCA_HTB_INIT, glob), extra)


def htb_class_options(rate_bps: int, ceil_bps: int, burst_bytes: int, cburst_bytes: int,
                      prio: int, quantum_bytes: int) -> bytes:
    opt = HTB_OPT.pack(_ratespec(rate_bps), _ratespec(ceil_bps), burst_ticks(burst_bytes, rate_bps),
                       burst_ticks(cburst_bytes, ceil_bps), quantum_bytes, 0, prio)
    parts = [_attr(TCA_HTB_PARMS, opt)]
    if _needs_64(rate_bps):
        parts.append(_attr(TCA_HTB_RATE64, _u64(rate_bytes_per_s(rate_bps))))
    if _needs_64(ceil_bps):
        parts.append(_attr(TCA_HTB_CEIL64, _u64(rate_bytes_per_s(ceil_bps))))
    return _nest(TCA_OPTIONS, *parts)


def tbf_options(rate_bps: int, burst_bytes: int, limit_bytes: int, peak_bps: int = 0,
                max_packet_bytes: int = 0) -> bytes:
    burst = min(burst_bytes, max_burst_bytes(rate_bps))
    peak = _ratespec(peak_bps) if peak_bps else bytes(RATESPEC.size)
    mtu_ticks = burst_ticks(max_packet_bytes, peak_bps) if peak_bps else 0
    qopt = TBF_QOPT.pack(_ratespec(rate_bps), peak, limit_bytes, burst_ticks(burst, rate_bps), mtu_ticks)
    # TCA_TBF_BURST makes the kernel use these exact bytes as max_size (the
    # largest packet it passes whole) and derive the bucket from them; with a
    # peak rate, TCA_TBF_PBURST caps max_size too (TBF segments a bigger GSO
    # packet, so the peak bucket sets the segmentation size, not the burst).
    parts = [_attr(TCA_TBF_PARMS, qopt), _attr(TCA_TBF_BURST, u32(burst))]
    if _needs_64(rate_bps):
        parts.append(_attr(TCA_TBF_RATE64, _u64(rate_bytes_per_s(rate_bps))))
    if peak_bps:
        parts.append(_attr(TCA_TBF_PBURST, u32(max_packet_bytes)))
        if _needs_64(peak_bps):
            parts.append(_attr(TCA_TBF_PRATE64, _u64(rate_bytes_per_s(peak_bps))))
    return _nest(TCA_OPTIONS, *parts)


# ---- decoding --------------------------------------------------------------------------------

def _get_u32(attrs: dict[int, bytes], kind: int) -> int | None:
    return struct.unpack_from("=I", attrs[kind])[0] if kind in attrs else None


def _get_u64(attrs: dict[int, bytes], kind: int) -> int | None:
    return struct.unpack_from("=Q", attrs[kind])[0] if kind in attrs else None


def _ratespec_bytes(spec: bytes, rate64: int | None) -> int:
    return rate64 if rate64 is not None else RATESPEC.unpack_from(spec)[5]


def parse_stats(data: bytes | None) -> Stats:
    attrs = parse_attrs(data or b"")
    sent_bytes = sent_packets = 0
    if TCA_STATS_BASIC in attrs:
        sent_bytes, sent_packets = STATS_BASIC.unpack_from(attrs[TCA_STATS_BASIC])
    sent_packets = _get_u64(attrs, TCA_STATS_PKT64) or sent_packets
    queue = STATS_QUEUE.unpack_from(attrs[TCA_STATS_QUEUE]) if TCA_STATS_QUEUE in attrs else (0,) * 5
    qlen, backlog, drops, requeues, overlimits = queue
    return Stats(sent_bytes, sent_packets, qlen, backlog, drops, requeues, overlimits)


def parse_htb_root(options: bytes) -> HtbRoot:
    attrs = parse_attrs(options)
    _, r2q, defcls, _, direct_pkts = HTB_GLOB.unpack_from(attrs[TCA_HTB_INIT])
    return HtbRoot(r2q, defcls, direct_pkts, _get_u32(attrs, TCA_HTB_DIRECT_QLEN) or 0)


def parse_htb_class(options: bytes) -> HtbClassConfig:
    attrs = parse_attrs(options)
    rate, ceil, buffer, cbuffer, quantum, level, prio = HTB_OPT.unpack_from(attrs[TCA_HTB_PARMS])
    rate_bps = 8 * _ratespec_bytes(rate, _get_u64(attrs, TCA_HTB_RATE64))
    ceil_bps = 8 * _ratespec_bytes(ceil, _get_u64(attrs, TCA_HTB_CEIL64))
    return HtbClassConfig(rate_bps, ceil_bps, ticks_burst(buffer, rate_bps), ticks_burst(cbuffer, ceil_bps),
                          buffer, cbuffer, quantum, prio, level)


def parse_tbf(options: bytes) -> TbfConfig:
    attrs = parse_attrs(options)
    rate, _, limit, buffer, _ = TBF_QOPT.unpack_from(attrs[TCA_TBF_PARMS])
    rate_bps = 8 * _ratespec_bytes(rate, _get_u64(attrs, TCA_TBF_RATE64))
    return TbfConfig(rate_bps, ticks_burst(buffer, rate_bps), buffer, limit)


def tc_message(message: bytes) -> tuple[tuple[int, int, int, int], dict[int, bytes]]:
    _, ifindex, handle_, parent, info = TCMSG.unpack_from(message, NLMSG_HEADER.size)
    return (ifindex, handle_, parent, info), parse_attrs(message[NLMSG_HEADER.size + TCMSG.size:])


def tc_kind(attrs: dict[int, bytes]) -> str:
    return attrs.get(TCA_KIND, b"").split(b"\0", 1)[0].decode()


def parse_qdisc(message: bytes) -> Qdisc:
    """A Qdisc from one RTM_NEWQDISC message (header included)."""
    (ifindex, handle_, parent, _), attrs = tc_message(message)
    kind, options = tc_kind(attrs), attrs.get(TCA_OPTIONS)
    htb = parse_htb_root(options) if kind == "htb" and options else None
    tbf = parse_tbf(options) if kind == "tbf" and options else None
    return Qdisc(ifindex, kind, handle_, parent, parse_stats(attrs.get(TCA_STATS2)), htb, tbf)


def parse_class(message: bytes) -> TrafficClass:
    """A TrafficClass from one RTM_NEWTCLASS message (header included)."""
    (ifindex, classid, parent, info), attrs = tc_message(message)
    kind, options = tc_kind(attrs), attrs.get(TCA_OPTIONS)
    htb = parse_htb_class(options) if kind == "htb" and options else None
    return TrafficClass(ifindex, kind, classid, parent, info, parse_stats(attrs.get(TCA_STATS2)), htb)


# ---- one request, its answers ------------------------------------------------------------------

def _ack_detail(kind: int, message: bytes, flags: int) -> str:
    """The extended-ack text of an NLMSG_ERROR/NLMSG_DONE, if the kernel sent one."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    offset = NLMSG_HEADER.size + NLMSGERR.size
    # An NLMSG_ERROR quotes the request (its header only, with NETLINK_CAP_ACK)
    # before the attributes; an NLMSG_DONE has them right after the error.
    if kind == NLMSG_ERROR and len(message) >= offset + NLMSG_HEADER.size:
        quoted_len = struct.unpack_from("=I", message, offset)[0]
        offset += NLMSG_HEADER.size if flags & NLM_F_CAPPED else _align(quoted_len)
    text = parse_attrs(message[offset:]).get(NLMSGERR_ATTR_MSG, b"")
    return text.split(b"\0", 1)[0].decode(errors="replace")


def _open() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.settimeout(REPLY_TIMEOUT_S)
        for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            sock.setsockopt(SOL_NETLINK, option, 1)
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def _error_of(message: bytes) -> int:
    """The errno (positive; 0 = success) an NLMSG_ERROR or NLMSG_DONE carries."""
    if len(message) < NLMSG_HEADER.size + NLMSGERR.size:
        return 0
    return -NLMSGERR.unpack_from(message, NLMSG_HEADER.size)[0]


class _Channel(threading.local):
    """One rtnetlink socket per thread, kept between requests (a shaping tree is ~60 of
    them) with a sequence number each; dropped after any failure, so a late answer to a
    request that failed can never be read as the answer to the next, and when the thread
    has moved to another network namespace since it was made."""

    sock: socket.socket | None = None
    seq: int = 0
    netns: int = 0  # inode of the network namespace the socket was made in


def _thread_netns() -> int:
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return 0


_channel = _Channel()


def _drop_channel() -> None:
    if _channel.sock is not None:
        _channel.sock.close()
        _channel.sock = None


def talk(msg_type: int, flags: int, body: bytes, step: str, ifindex: int | None) -> list[bytes]:
    """Send one request; its answers up to the ack (or the end of a dump). Raises QdiscError."""
    answers: list[bytes] = []
    try:
        here = _thread_netns()
        if _channel.sock is not None and _channel.netns != here:
            _drop_channel()  # the thread entered another namespace: the socket talks to the old one
        if _channel.sock is None:
            _channel.sock, _channel.netns = _open(), here
        sock = _channel.sock
        _channel.seq = _channel.seq % 0x7FFFFFFF + 1
        seq = _channel.seq
        sock.send(NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), msg_type, NLM_F_REQUEST | flags, seq, 0)
                  + body)
        while True:
            for kind, msg_flags, message in _split(sock.recv(RECV_BYTES), seq):
                if kind not in (NLMSG_ERROR, NLMSG_DONE):
                    answers.append(message)
                elif error := _error_of(message):
                    raise QdiscError(error, step, ifindex, _ack_detail(kind, message, msg_flags))
                else:
                    return answers
    except TimeoutError:
        _drop_channel()
        raise QdiscError(errno_mod.ETIMEDOUT, step, ifindex, f"no answer in {REPLY_TIMEOUT_S} s") from None
    except QdiscError:
        _drop_channel()
        raise
    except OSError as exc:
        _drop_channel()
        raise QdiscError(exc.errno or errno_mod.EIO, step, ifindex, "netlink socket") from exc


def _split(data: bytes, seq: int) -> Iterator[tuple[int, int, bytes]]:
    """(type, flags, message) of every message in one datagram that answers `seq`."""
    pos = 0
    while pos + NLMSG_HEADER.size <= len(data):
        length, kind, flags, got_seq, _ = NLMSG_HEADER.unpack_from(data, pos)
        if length < NLMSG_HEADER.size:
            break
        if got_seq == seq:
            yield kind, flags, data[pos:pos + length]
        pos += _align(length)


def modify(msg_type: int, flags: int, body: bytes, step: str, ifindex: int | None) -> None:
    talk(msg_type, NLM_F_ACK | flags, body, step, ifindex)


def _check(ok: bool, step: str, ifindex: int | None, why: str) -> None:
    if not ok:
        raise QdiscError(errno_mod.EINVAL, step, ifindex, why)


def _check_rate(rate_bps: int, what: str, step: str, ifindex: int) -> None:
    _check(rate_bps >= MIN_RATE_BPS and rate_bytes_per_s(rate_bps) <= U64_MAX, step, ifindex,
           f"{what} {rate_bps} bit/s is outside {MIN_RATE_BPS} bit/s .. 2**64 bytes/s")


# ---- links -----------------------------------------------------------------------------------

def _ifinfo(index: int, flags: int = 0, change: int = 0) -> bytes:
    return IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def link_index(name: str) -> int:
    """ifindex of the link `name` in the caller's namespace (QdiscError ENODEV when none)."""
    step = f"RTM_GETLINK {name}"
    answers = talk(RTM_GETLINK, NLM_F_ACK, _ifinfo(0) + _attr(IFLA_IFNAME, cstring(name)), step, None)
    for message in answers:
        return IFINFOMSG.unpack_from(message, NLMSG_HEADER.size)[2]
    raise QdiscError(errno_mod.ENODEV, step, None, "no link in the kernel's answer")


def create_ifb(name: str) -> int:
    """Create IFB device `name`, up, and return its ifindex (QdiscError EEXIST if the name is taken)."""
    # ifi_flags/ifi_change = IFF_UP in the creating message: the kernel applies
    # them right after registering the device, as `ip link add ... up` does.
    body = (_ifinfo(0, IFF_UP, IFF_UP) + _attr(IFLA_IFNAME, cstring(name))
            + _nest(IFLA_LINKINFO, _attr(IFLA_INFO_KIND, cstring("ifb"))))
    modify(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"RTM_NEWLINK ifb {name}", None)
    return link_index(name)


def set_link(ifindex: int, *, up: bool = True, alias: str | None = None) -> None:
    """Bring link `ifindex` up (or down) and, when given, set its alias (`ip link set ... alias`)."""
    body = _ifinfo(ifindex, IFF_UP if up else 0, IFF_UP)
    if alias is not None:
        _check(len(alias.encode()) < IFALIASZ, "RTM_NEWLINK alias", ifindex,
               f"alias longer than {IFALIASZ - 1} bytes")
        body += _attr(IFLA_IFALIAS, alias.encode())
    modify(RTM_NEWLINK, 0, body, f"RTM_NEWLINK set {'up' if up else 'down'}", ifindex)


def delete_link(link: int | str) -> bool:
    """Delete a link by ifindex or name; False when it was already gone (ENODEV)."""
    if isinstance(link, int):
        body, step, ifindex = _ifinfo(link), f"RTM_DELLINK {link}", link
    else:
        body, step, ifindex = _ifinfo(0) + _attr(IFLA_IFNAME, cstring(link)), f"RTM_DELLINK {link}", None
    try:
        modify(RTM_DELLINK, 0, body, step, ifindex)
    except QdiscError as exc:
        if exc.errno == errno_mod.ENODEV:
            return False
        raise
    return True


# ---- qdiscs and classes --------------------------------------------------------------------------

def replace_htb_root(ifindex: int, handle_major: int, default_minor: int, r2q: int = HTB_R2Q_DEFAULT,
                     direct_qlen_packets: int | None = None, parent: int = TC_H_ROOT) -> bool:
    """Make the qdisc under `parent` (the device's root by default, or a class of
    a classful qdisc such as tbf's `major:1`) an htb `handle_major:` sending
    unclassified packets to `handle_major:default_minor`. False when it already
    was exactly that (its classes stay); True when it was created, which drops
    whatever classes the old one had.

    HTB has no change operation: the kernel answers EINVAL to a replace of an htb
    with the same handle, so an equal one is left alone and a different one (or
    another kind under that handle) is deleted first.
    """
    step = f"RTM_NEWQDISC htb {handle_major:x}: under {handle_str(parent)}"
    want = handle(handle_major)
    body = (tcmsg(ifindex, want, parent) + _attr(TCA_KIND, cstring("htb"))
            + htb_root_options(default_minor, r2q, direct_qlen_packets))
    try:
        modify(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, body, step, ifindex)
        return True
    except QdiscError as exc:
        if exc.errno != errno_mod.EINVAL:
            raise
        there = next((q for q in dump_qdiscs(ifindex) if q.parent == parent), None)
        if there is None or there.handle != want:
            raise
        if there.htb and (there.htb.r2q, there.htb.default_minor) == (r2q, default_minor) and (
                direct_qlen_packets is None or there.htb.direct_qlen_packets == direct_qlen_packets):
            return False
    delete_qdisc(ifindex, parent)
    modify(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, body, step, ifindex)
    return True


def replace_htb_class(ifindex: int, classid: int, parent: int, rate_bps: int, ceil_bps: int,
                      burst_bytes: int, cburst_bytes: int, prio: int = 0, quantum_bytes: int = 0, *,
                      parent_known: bool = False) -> None:
    """Create or change htb class `classid` under `parent` (a class, or the htb qdisc's handle).

    quantum_bytes=0 leaves the quantum to the kernel (rate / r2q, clamped to
    1000..200000 bytes). The parent class must exist: the kernel itself would
    quietly make a class whose parent is missing a root class, so it is looked
    up first, unless the caller has just made it (`parent_known`). An existing
    class keeps its parent (the kernel ignores a new one).
    """
    step = f"RTM_NEWTCLASS htb {handle_str(classid)} under {handle_str(parent)}"
    _check(classid & TC_H_MIN_MASK != 0, step, ifindex, "a class needs a non-zero minor")
    _check_rate(rate_bps, "rate", step, ifindex)
    _check_rate(ceil_bps, "ceil", step, ifindex)
    _check(burst_bytes > 0 and cburst_bytes > 0, step, ifindex, "burst and cburst must be > 0 bytes")
    _check(0 <= prio <= HTB_PRIO_MAX, step, ifindex, f"prio {prio} is outside 0..{HTB_PRIO_MAX}")
    _check(0 <= quantum_bytes <= QUANTUM_MAX_BYTES, step, ifindex, f"quantum {quantum_bytes} bytes")
    if parent & TC_H_MIN_MASK and not parent_known:
        _require_class(ifindex, parent, step)
    body = (tcmsg(ifindex, classid, parent) + _attr(TCA_KIND, cstring("htb"))
            + htb_class_options(rate_bps, ceil_bps, burst_bytes, cburst_bytes, prio, quantum_bytes))
    modify(RTM_NEWTCLASS, NLM_F_CREATE | NLM_F_REPLACE, body, step, ifindex)


def _require_class(ifindex: int, classid: int, step: str) -> None:
    try:
        talk(RTM_GETTCLASS, NLM_F_ACK, tcmsg(ifindex, classid, 0), "RTM_GETTCLASS", ifindex)
    except QdiscError as exc:
        if exc.errno != errno_mod.ENOENT:
            raise
        why = f"parent class {handle_str(classid)} does not exist"
        raise QdiscError(exc.errno, step, ifindex, why) from None


def replace_tbf(ifindex: int, handle_: int, parent: int, rate_bps: int, burst_bytes: int,
                limit_bytes: int) -> None:
    """Create or change tbf qdisc `handle_` (minor 0) under leaf class `parent`.

    Only a leaf takes a qdisc: under an inner htb class the kernel answers
    EINVAL, under a missing one ENOENT ("Specified class not found"). A tbf
    already there under another handle is replaced, its queue dropped.

    burst_bytes is also the largest packet TBF passes whole: a bigger GSO packet
    is segmented in software (when one segment fits), a bigger non-GSO packet is
    dropped, so keep it at least the device MTU + 14. It is cut to
    max_burst_bytes(rate_bps). limit_bytes sizes the bfifo behind the bucket; 0
    would leave TBF with the noop child that drops everything, so it is refused.
    """
    step = f"RTM_NEWQDISC tbf {handle_str(handle_)} under {handle_str(parent)}"
    _check(handle_ & TC_H_MIN_MASK == 0 and handle_ != 0, step, ifindex, "a qdisc handle is major: only")
    _check_rate(rate_bps, "rate", step, ifindex)
    _check(burst_bytes > 0, step, ifindex, "burst must be > 0 bytes")
    _check(0 < limit_bytes <= U32_MAX, step, ifindex, f"limit {limit_bytes} bytes is outside 1..2**32-1")
    body = (tcmsg(ifindex, handle_, parent) + _attr(TCA_KIND, cstring("tbf"))
            + tbf_options(rate_bps, burst_bytes, limit_bytes))
    modify(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, body, step, ifindex)


def replace_tbf_root(ifindex: int, handle_: int, rate_bps: int, burst_bytes: int, peak_bps: int,
                     max_packet_bytes: int, interim_limit_bytes: int) -> bool:
    """Make the root qdisc of `ifindex` a tbf `handle_` with bucket `burst_bytes`
    at `rate_bps`, and a peak bucket of `max_packet_bytes` at `peak_bps` (> rate):
    the largest packet it passes whole, so bigger GSO packets are segmented.

    The caller grafts a child qdisc under `handle_ major:1`. A new tbf gets a
    bfifo of `interim_limit_bytes` there, so that it passes traffic until the
    child replaces it: a tbf with limit 0 has no queue and drops everything, and
    a plugin killed between the two steps would leave the device dark. An
    existing tbf is changed with limit 0, which keeps the child it has. True
    when it was created, False when an existing one was changed.
    """
    step = f"RTM_NEWQDISC tbf {handle_str(handle_)} at root"
    _check(handle_ & TC_H_MIN_MASK == 0 and handle_ != 0, step, ifindex, "a qdisc handle is major: only")
    _check_rate(rate_bps, "rate", step, ifindex)
    _check_rate(peak_bps, "peak rate", step, ifindex)
    _check(rate_bytes_per_s(peak_bps) > rate_bytes_per_s(rate_bps), step, ifindex,
           "the peak rate must be above the rate")
    _check(0 < max_packet_bytes <= burst_bytes, step, ifindex,
           f"max packet {max_packet_bytes} bytes must be within 1..burst {burst_bytes}")
    _check(0 < interim_limit_bytes <= U32_MAX, step, ifindex,
           f"interim limit {interim_limit_bytes} bytes is outside 1..2**32-1")
    root = root_qdisc(ifindex)
    existed = root is not None and root.handle == handle_ and root.kind == "tbf"
    body = (tcmsg(ifindex, handle_, TC_H_ROOT) + _attr(TCA_KIND, cstring("tbf"))
            + tbf_options(rate_bps, burst_bytes, 0 if existed else interim_limit_bytes, peak_bps,
                          max_packet_bytes))
    modify(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, body, step, ifindex)
    return not existed


def replace_bfifo(ifindex: int, handle_: int, parent: int, limit_bytes: int) -> None:
    """Create or change a bfifo `handle_` holding at most `limit_bytes` under leaf class `parent`."""
    step = f"RTM_NEWQDISC bfifo {handle_str(handle_)} under {handle_str(parent)}"
    _check(handle_ & TC_H_MIN_MASK == 0 and handle_ != 0, step, ifindex, "a qdisc handle is major: only")
    _check(0 < limit_bytes <= U32_MAX, step, ifindex, f"limit {limit_bytes} bytes is outside 1..2**32-1")
    body = (tcmsg(ifindex, handle_, parent) + _attr(TCA_KIND, cstring("bfifo"))
            + _attr(TCA_OPTIONS, TCA_FIFO_LIMIT.pack(limit_bytes)))
    modify(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, body, step, ifindex)


def delete_qdisc(ifindex: int, parent: int) -> bool:
    """Delete the qdisc under `parent` (a classid, or TC_H_ROOT); False when there was none of ours.

    ENOENT: nothing there. EINVAL: only a default qdisc with handle 0 there (the
    kernel's "Cannot delete qdisc with handle of zero"), which is not ours to delete.
    """
    step = f"RTM_DELQDISC under {handle_str(parent)}"
    try:
        modify(RTM_DELQDISC, 0, tcmsg(ifindex, 0, parent), step, ifindex)
    except QdiscError as exc:
        if exc.errno in (errno_mod.ENOENT, errno_mod.EINVAL):
            return False
        raise
    return True


def delete_class(ifindex: int, classid: int) -> bool:
    """Delete a leaf class (its qdisc goes with it); False when it was not there (ENOENT)."""
    step = f"RTM_DELTCLASS {handle_str(classid)}"
    try:
        modify(RTM_DELTCLASS, 0, tcmsg(ifindex, classid, 0), step, ifindex)
    except QdiscError as exc:
        if exc.errno == errno_mod.ENOENT:
            return False
        raise
    return True


def delete_root_qdisc(ifindex: int) -> bool:
    """Delete the root qdisc of `ifindex` (and with it every class and qdisc below)."""
    return delete_qdisc(ifindex, TC_H_ROOT)


def dump_all_qdiscs() -> dict[int, list[Qdisc]]:
    """Every device's qdiscs, as dump_qdiscs lists them, by ifindex: one dump for
    a reader that looks at many devices (the kernel sends all of them anyway)."""
    answers = talk(RTM_GETQDISC, NLM_F_DUMP, tcmsg(0, 0, 0), "RTM_GETQDISC dump", None)
    found: dict[int, list[Qdisc]] = {}
    for message in answers:
        q = parse_qdisc(message)
        found.setdefault(q.ifindex, []).append(q)
    return found


def dump_qdiscs(ifindex: int) -> list[Qdisc]:
    """The qdiscs of `ifindex` that `tc qdisc show` lists, root first.

    The kernel dumps every device of the namespace and leaves out the default
    qdiscs it hangs under new classes (TCA_DUMP_INVISIBLE would add them).
    """
    answers = talk(RTM_GETQDISC, NLM_F_DUMP, tcmsg(ifindex, 0, 0), "RTM_GETQDISC dump", ifindex)
    found = []
    for message in answers:
        if TCMSG.unpack_from(message, NLMSG_HEADER.size)[1] == ifindex:
            found.append(parse_qdisc(message))
    return found


def root_qdisc(ifindex: int) -> Qdisc | None:
    """The root qdisc of `ifindex` as dump_qdiscs lists it (None when it lists none).

    One RTM_GETQDISC for this device's root: a dump would carry every qdisc of
    every device in the namespace (the kernel does not filter dumps by ifindex),
    which on a node of shaped Pods grows with the Pods.
    """
    body = tcmsg(ifindex, 0, TC_H_ROOT)
    try:
        answers = talk(RTM_GETQDISC, NLM_F_ACK | NLM_F_ECHO, body, "RTM_GETQDISC root", ifindex)
    except QdiscError as exc:
        if exc.errno == errno_mod.ENOENT:
            return None
        raise
    return next((parse_qdisc(m) for m in answers), None)


def dump_classes(ifindex: int) -> list[TrafficClass]:
    """Every class of every qdisc of `ifindex` (tbf shows one pseudo-class, kind "tbf")."""
    answers = talk(RTM_GETTCLASS, NLM_F_DUMP, tcmsg(ifindex, 0, 0), "RTM_GETTCLASS dump", ifindex)
    return [parse_class(message) for message in answers]
