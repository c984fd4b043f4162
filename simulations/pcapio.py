"""Reading captures: classic pcap (µs or ns, either byte order) and pcapng.

Owns: turning a capture file into records (time in ns, Ethernet frame bytes,
original length, and the capture's direction where the link type says it)
for the link types a Pod's traffic is captured with: Ethernet (1), Linux
cooked v1 (113, `tcpdump -i any` before libpcap 1.10) and v2 (276, since),
and raw IP (101, 228, 229). A cooked or raw-IP frame is given the 14-byte
Ethernet header the veth would carry (its protocol as EtherType), and its
original length is counted as that Ethernet frame's.
Rule: time comes only from the capture's timestamps, converted exactly with
integer arithmetic (pcapng if_tsresol included); the original length is kept
because the data path charges skb->len, not the snapshot. A capture cut off
in its last record (a writer killed mid-write) is read up to the break and
`warn` is told where; anything else this reader cannot interpret (another
link type, a damaged block) is an error that names the file and the offset.
Must not know: the model, verdicts, flows.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4 or IPv6 (by the version nibble)
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
SLL_HLEN = 16
SLL2_HLEN = 20
ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PACKET_HOST = 0  # sll_pkttype: addressed to this host (received)
PACKET_OUTGOING = 4  # sent by this host
LINK_NAMES = {LINKTYPE_ETHERNET: "Ethernet", LINKTYPE_RAW: "raw IP", LINKTYPE_LINUX_SLL: "Linux cooked SLL",
              LINKTYPE_IPV4: "raw IPv4", LINKTYPE_IPV6: "raw IPv6", LINKTYPE_LINUX_SLL2: "Linux cooked SLL2"}
FAKE_MACS = bytes(12)  # cooked and raw frames get zero MAC addresses
NS_PER_SEC = 1_000_000_000
PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_GLOBAL_HEADER = 24
PCAP_RECORD_HEADER = 16
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAPNG_IDB = 0x00000001
PCAPNG_SPB = 0x00000003
PCAPNG_EPB = 0x00000006
PCAPNG_OPT_END = 0
PCAPNG_OPT_IF_TSRESOL = 9
PCAPNG_DEFAULT_TSRESOL_EXP10 = 6  # microseconds unless the interface says otherwise


class CaptureError(ValueError):
    """A capture that cannot be read; the message says which file and where."""


@dataclass(frozen=True, slots=True)
class Record:
    time_ns: int  # ns since the epoch, from the capture
    frame: bytes  # the captured bytes (Ethernet frame, possibly cut at the snapshot length)
    orig_len: int  # bytes the frame had on the wire (skb->len)
    pkttype: int | None = None  # Linux cooked captures: PACKET_HOST, PACKET_OUTGOING, ...


def _unsupported(path: Path, linktype: int, where: str) -> CaptureError:
    known = ", ".join(f"{name} ({n})" for n, name in LINK_NAMES.items())
    return CaptureError(f"{path}: {where}link type {linktype} is not one this reader knows ({known})")


def _to_ethernet(linktype: int, data: bytes, orig: int) -> tuple[bytes, int, int | None] | None:
    """(Ethernet frame, its original length, pkttype) of one captured link-layer frame; None if too short."""
    if linktype == LINKTYPE_ETHERNET:
        return data, max(orig, len(data)), None
    if linktype == LINKTYPE_LINUX_SLL:
        if len(data) < SLL_HLEN:
            return None
        pkttype, proto = struct.unpack_from("!H", data)[0], struct.unpack_from("!H", data, 14)[0]
        return (FAKE_MACS + struct.pack("!H", proto) + data[SLL_HLEN:],
                max(orig, len(data)) - SLL_HLEN + ETH_HLEN, pkttype)
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(data) < SLL2_HLEN:
            return None
        proto, pkttype = struct.unpack_from("!H", data)[0], data[10]
        return (FAKE_MACS + struct.pack("!H", proto) + data[SLL2_HLEN:],
                max(orig, len(data)) - SLL2_HLEN + ETH_HLEN, pkttype)
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if not data:
            return None
        version = data[0] >> 4
        proto = ETH_P_IPV6 if linktype == LINKTYPE_IPV6 or (linktype == LINKTYPE_RAW and version == 6) \
            else ETH_P_IP
        return FAKE_MACS + struct.pack("!H", proto) + data, max(orig, len(data)) + ETH_HLEN, None
    raise ValueError(linktype)


def _pcap_records(path: Path, data: bytes, warn) -> Iterator[Record]:
    for order in ("<", ">"):
        magic = struct.unpack_from(order + "I", data)[0]
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            break
    else:  # pragma: no cover - read_capture checks the magic first
        raise CaptureError(f"{path}: not a pcap file")
    frac_per_ns = 1 if magic == PCAP_MAGIC_NS else 1000
    _, _, _, _, _, linktype = struct.unpack_from(order + "HHiIII", data, 4)
    linktype &= 0xFFFF
    if linktype not in LINK_NAMES:
        raise _unsupported(path, linktype, "")
    rec = struct.Struct(order + "IIII")
    pos = PCAP_GLOBAL_HEADER
    index = 0
    while pos < len(data):
        if pos + PCAP_RECORD_HEADER > len(data):
            warn(f"{path}: the capture ends inside the header of record {index} (offset {pos}); "
                 f"read the {index} records before it")
            return
        sec, frac, incl, orig = rec.unpack_from(data, pos)
        if pos + PCAP_RECORD_HEADER + incl > len(data):
            warn(f"{path}: the capture ends inside record {index} (offset {pos}: {incl} bytes announced, "
                 f"{len(data) - pos - PCAP_RECORD_HEADER} there); read the {index} records before it")
            return
        pos += PCAP_RECORD_HEADER
        frame = _to_ethernet(linktype, data[pos:pos + incl], orig)
        if frame is None:
            raise CaptureError(f"{path}: record {index} at offset {pos - PCAP_RECORD_HEADER} is shorter "
                               f"than its {LINK_NAMES[linktype]} header")
        yield Record(sec * NS_PER_SEC + frac * frac_per_ns, *frame)
        pos += incl
        index += 1


def _tsresol_to_ns(tsresol: int):
    """(multiplier, divisor) turning pcapng timestamp units into ns."""
    if tsresol & 0x80:
        return NS_PER_SEC, 1 << (tsresol & 0x7F)
    exp = tsresol & 0x7F
    return (10 ** (9 - exp), 1) if exp <= 9 else (1, 10 ** (exp - 9))


def _pcapng_records(path: Path, data: bytes, warn) -> Iterator[Record]:
    pos = 0
    order = "<"
    interfaces: list[tuple[int, int, int]] = []  # (linktype, mul, div)
    while pos < len(data):
        if pos + 12 > len(data):
            warn(f"{path}: the capture ends inside the block at offset {pos}; read the blocks before it")
            return
        btype = struct.unpack_from(order + "I", data, pos)[0]
        if btype == PCAPNG_SHB:
            bom = struct.unpack_from("<I", data, pos + 8)[0]
            order = "<" if bom == PCAPNG_BYTE_ORDER_MAGIC else ">"
            interfaces = []
        blen = struct.unpack_from(order + "I", data, pos + 4)[0]
        if blen >= 12 and pos + blen > len(data) and btype != PCAPNG_SHB:
            warn(f"{path}: the capture ends inside the block at offset {pos} ({blen} bytes announced, "
                 f"{len(data) - pos} there); read the blocks before it")
            return
        if blen < 12 or pos + blen > len(data):
            raise CaptureError(f"{path}: bad block length {blen} at offset {pos}")
        body = data[pos + 8:pos + blen - 4]
        if btype == PCAPNG_IDB:
            linktype = struct.unpack_from(order + "H", body)[0]
            mul, div = _tsresol_to_ns(PCAPNG_DEFAULT_TSRESOL_EXP10)
            opt = 8
            while opt + 4 <= len(body):
                code, olen = struct.unpack_from(order + "HH", body, opt)
                if code == PCAPNG_OPT_END:
                    break
                if code == PCAPNG_OPT_IF_TSRESOL and olen >= 1:
                    mul, div = _tsresol_to_ns(body[opt + 4])
                opt += 4 + (olen + 3) // 4 * 4
            interfaces.append((linktype, mul, div))
        elif btype in (PCAPNG_EPB, PCAPNG_SPB):
            if btype == PCAPNG_EPB:
                ifid, hi, lo, incl, orig = struct.unpack_from(order + "IIIII", body)
                start = 20
            else:
                ifid, hi, lo, orig = 0, 0, 0, struct.unpack_from(order + "I", body)[0]
                start, incl = 4, min(orig, len(body) - 4)
            if ifid >= len(interfaces):
                raise CaptureError(f"{path}: packet for unknown interface {ifid} at offset {pos}")
            linktype, mul, div = interfaces[ifid]
            if linktype not in LINK_NAMES:
                raise _unsupported(path, linktype, f"interface {ifid} has ")
            ticks = (hi << 32) | lo
            frame = _to_ethernet(linktype, body[start:start + incl], orig)
            if frame is None:
                raise CaptureError(f"{path}: the packet at offset {pos} is shorter than its "
                                   f"{LINK_NAMES[linktype]} header")
            yield Record(ticks * mul // div, *frame)
        pos += blen


def _warn_default(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=3)


def read_capture(path: str | Path, warn=None) -> Iterator[Record]:
    """Records of a pcap or pcapng file, in file order; `warn(message)` hears of a cut-off end."""
    warn = warn or _warn_default
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CaptureError(f"read capture {path}: {e}") from e
    if len(data) < PCAP_GLOBAL_HEADER:
        raise CaptureError(f"{path}: too short for a capture ({len(data)} bytes)")
    first_le = struct.unpack_from("<I", data)[0]
    first_be = struct.unpack_from(">I", data)[0]
    if first_le == PCAPNG_SHB:
        return _pcapng_records(path, data, warn)
    if PCAP_MAGIC_US in (first_le, first_be) or PCAP_MAGIC_NS in (first_le, first_be):
        return _pcap_records(path, data, warn)
    raise CaptureError(f"{path}: neither pcap nor pcapng (magic 0x{first_le:08x})")
