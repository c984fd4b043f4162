"""Reading captures: classic pcap (µs or ns, either byte order) and pcapng.

Owns: turning a capture file into records (time in ns, frame bytes, original
length) for Ethernet link types. Rule: time comes only from the capture's
timestamps, converted exactly with integer arithmetic (pcapng if_tsresol
included); the original length is kept because the data path charges
skb->len, not the snapshot. Anything this reader cannot interpret (another
link type, a damaged block) is an error that names the file and the offset.
Must not know: the model, verdicts, flows.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LINKTYPE_ETHERNET = 1
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


def _pcap_records(path: Path, data: bytes) -> Iterator[Record]:
    for order in ("<", ">"):
        magic = struct.unpack_from(order + "I", data)[0]
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            break
    else:  # pragma: no cover - read_capture checks the magic first
        raise CaptureError(f"{path}: not a pcap file")
    frac_per_ns = 1 if magic == PCAP_MAGIC_NS else 1000
    _, _, _, _, _, linktype = struct.unpack_from(order + "HHiIII", data, 4)
    if linktype & 0xFFFF != LINKTYPE_ETHERNET:
        raise CaptureError(f"{path}: link type {linktype & 0xFFFF} is not Ethernet (1)")
    rec = struct.Struct(order + "IIII")
    pos = PCAP_GLOBAL_HEADER
    while pos < len(data):
        if pos + PCAP_RECORD_HEADER > len(data):
            raise CaptureError(f"{path}: truncated record header at offset {pos}")
        sec, frac, incl, orig = rec.unpack_from(data, pos)
        pos += PCAP_RECORD_HEADER
        if pos + incl > len(data):
            raise CaptureError(f"{path}: truncated record at offset {pos - PCAP_RECORD_HEADER}")
        yield Record(sec * NS_PER_SEC + frac * frac_per_ns, data[pos:pos + incl], max(orig, incl))
        pos += incl


def _tsresol_to_ns(tsresol: int):
    """(multiplier, divisor) turning pcapng timestamp units into ns."""
    if tsresol & 0x80:
        return NS_PER_SEC, 1 << (tsresol & 0x7F)
    exp = tsresol & 0x7F
    return (10 ** (9 - exp), 1) if exp <= 9 else (1, 10 ** (exp - 9))


def _pcapng_records(path: Path, data: bytes) -> Iterator[Record]:
    pos = 0
    order = "<"
    interfaces: list[tuple[int, int, int]] = []  # (linktype, mul, div)
    while pos < len(data):
        if pos + 12 > len(data):
            raise CaptureError(f"{path}: truncated block at offset {pos}")
        btype = struct.unpack_from(order + "I", data, pos)[0]
        if btype == PCAPNG_SHB:
            bom = struct.unpack_from("<I", data, pos + 8)[0]
            order = "<" if bom == PCAPNG_BYTE_ORDER_MAGIC else ">"
            interfaces = []
        blen = struct.unpack_from(order + "I", data, pos + 4)[0]
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
            if linktype != LINKTYPE_ETHERNET:
                raise CaptureError(f"{path}: interface {ifid} has link type {linktype}, not Ethernet (1)")
            ticks = (hi << 32) | lo
            yield Record(ticks * mul // div, body[start:start + incl], max(orig, incl))
        pos += blen


def read_capture(path: str | Path) -> Iterator[Record]:
    """Records of a pcap or pcapng file, in file order."""
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
        return _pcapng_records(path, data)
    if PCAP_MAGIC_US in (first_le, first_be) or PCAP_MAGIC_NS in (first_le, first_be):
        return _pcap_records(path, data)
    raise CaptureError(f"{path}: neither pcap nor pcapng (magic 0x{first_le:08x})")
