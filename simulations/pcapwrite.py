"""Writing a workload as a pcap file, so the kernel engine can replay it.

Owns: turning a `Workload`'s packet table into Ethernet frames (IPv4 or
IPv6, TCP or UDP, ECT(0) when the packet is ECN-capable) and writing them
with nanosecond timestamps to classic pcap. The frames are built with numpy,
a chunk at a time (millions of frames a minute; scapy took 1.4 ms a frame,
two hours for a 10 s `manyflows`); `frame_bytes` builds one frame with scapy,
the reference the numpy builder is tested against byte for byte.
Rule: the frame of packet i is exactly wire_len[i] bytes on the wire and
parses to the workload's flow key for it; time is the workload's now_ns
plus a base the caller chooses. With a snapshot length the file keeps only
the first `snaplen` bytes of each frame but records the full original
length, which is what the data path charges (pcapio keeps it).
Must not know: the model, verdicts, metrics. Reading is simulations/pcapio.py.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from natra.simulations.workloads import IPPROTO_UDP, Workload
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

LINKTYPE_ETHERNET = 1
PCAP_MAGIC_NS = 0xA1B23C4D
ECT0 = 0x02  # ECN field value "ECT(0)"
POD_MAC = "02:00:00:00:00:0a"
PEER_MAC = "02:00:00:00:00:01"
FULL_FRAMES = 0  # snaplen value meaning: keep whole frames
DEFAULT_SNAPLEN = 128  # bytes kept per frame: every header, no payload
NS_PER_SEC = 1_000_000_000


def _headers(workload: Workload, flow: int, ect: bool):
    """The scapy header stack of one flow's frames (without payload)."""
    f = workload.flows
    sport, dport = int(f.sport[flow]), int(f.dport[flow])
    if f.ipv6[flow]:
        l3 = IPv6(src=_v6(f.saddr[flow]), dst=_v6(f.daddr[flow]), tc=ECT0 if ect else 0, hlim=64)
    else:
        l3 = IP(src=_v4(f.saddr[flow]), dst=_v4(f.daddr[flow]), tos=ECT0 if ect else 0, ttl=64, flags="DF")
    l4 = UDP(sport=sport, dport=dport) if f.proto[flow] == IPPROTO_UDP else TCP(sport=sport, dport=dport,
                                                                                   flags="A")
    return Ether(src=PEER_MAC, dst=POD_MAC) / l3 / l4


def _v4(addr: np.ndarray) -> str:
    return ".".join(str(int(b)) for b in addr[12:])


def _v6(addr: np.ndarray) -> str:
    raw = bytes(addr)
    return ":".join(raw[i:i + 2].hex() for i in range(0, 16, 2))


def frame_bytes(workload: Workload, index: int, _cache: dict | None = None) -> bytes:
    """The full Ethernet frame of packet `index` (wire_len bytes)."""
    flow, wire, ect = int(workload.flow_id[index]), int(workload.wire_len[index]), bool(workload.ect[index])
    cache_key = (flow, wire, ect)
    if _cache is not None and cache_key in _cache:
        return _cache[cache_key]
    headers = _headers(workload, flow, ect)
    header_len = len(bytes(headers))
    if wire < header_len:
        raise ValueError(f"packet {index}: {wire} bytes cannot hold its {header_len} bytes of headers")
    frame = bytes(headers / Raw(b"\x00" * (wire - header_len)))
    if _cache is not None:
        _cache[cache_key] = frame
    return frame


PROGRESS_EVERY = 65536  # frames written per chunk (and between progress callbacks)
IPV4_ID = 1  # what scapy writes by default; the fast writer writes the same bytes
TTL = 64
TCP_WINDOW = 8192
TCP_FLAGS_ACK = 0x10
ETH_P = {False: 0x0800, True: 0x86DD}


def _ones_sum(words: np.ndarray) -> np.ndarray:
    """Folded 16-bit ones' complement sum of each row of big-endian words."""
    total = words.astype(np.int64).sum(axis=1)
    while (total >> 16).any():
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _be(values, width: int) -> np.ndarray:
    """(n, width) bytes of each value, big-endian."""
    return np.asarray(values, dtype=np.int64).astype(f">u{width}").reshape(-1, 1).view(np.uint8)


def header_block(workload: Workload, index: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(headers (n, 74) uint8, header length per frame) of packets `index`, exactly as scapy builds them
    (frame_bytes): Ethernet, IPv4 (id 1, DF, TTL 64) or IPv6 (hop limit 64), TCP (ACK, window 8192)
    or UDP, checksums over the zero payload; ECT(0) for ECN-capable packets."""
    f = workload.flows
    fid = workload.flow_id[index]
    wire = workload.wire_len[index].astype(np.int64)
    ect = workload.ect[index]
    n = fid.shape[0]
    v6 = f.ipv6[fid]
    udp = f.proto[fid] == IPPROTO_UDP
    l3_len = np.where(v6, 40, 20)
    l4_len = np.where(udp, 8, 20)
    hlen = 14 + l3_len + l4_len
    short = np.flatnonzero(wire < hlen)
    if short.size:
        first = short[0]
        raise ValueError(f"a packet of {int(wire[first])} bytes cannot hold its {int(hlen[first])} bytes of "
                         f"headers")
    out = np.zeros((n, 74), dtype=np.uint8)
    out[:, 0:6] = np.frombuffer(bytes.fromhex(POD_MAC.replace(":", "")), dtype=np.uint8)
    out[:, 6:12] = np.frombuffer(bytes.fromhex(PEER_MAC.replace(":", "")), dtype=np.uint8)
    out[:, 12:14] = _be(np.where(v6, ETH_P[True], ETH_P[False]), 2)
    tos = np.where(ect, ECT0, 0)
    l3_payload = wire - 14 - l3_len  # the L4 segment's length
    proto = f.proto[fid].astype(np.int64)
    for is_v6 in (False, True):
        rows = np.flatnonzero(v6 == is_v6)
        if not rows.size:
            continue
        src = f.saddr[fid[rows]][:, 12:] if not is_v6 else f.saddr[fid[rows]]
        dst = f.daddr[fid[rows]][:, 12:] if not is_v6 else f.daddr[fid[rows]]
        seg = l3_payload[rows]
        if not is_v6:
            ip = np.zeros((rows.size, 20), dtype=np.uint8)
            ip[:, 0] = 0x45
            ip[:, 1] = tos[rows]
            ip[:, 2:4] = _be(wire[rows] - 14, 2)
            ip[:, 4:6] = _be(np.full(rows.size, IPV4_ID), 2)
            ip[:, 6] = 0x40  # DF
            ip[:, 8] = TTL
            ip[:, 9] = proto[rows]
            ip[:, 12:16] = src
            ip[:, 16:20] = dst
            ip[:, 10:12] = _be(0xFFFF - _ones_sum(ip.view(">u2")), 2)
        else:
            ip = np.zeros((rows.size, 40), dtype=np.uint8)
            ip[:, 0:4] = _be((6 << 28) | (tos[rows].astype(np.int64) << 20), 4)
            ip[:, 4:6] = _be(seg, 2)
            ip[:, 6] = proto[rows]
            ip[:, 7] = TTL
            ip[:, 8:24] = src
            ip[:, 24:40] = dst
        start = 14 + ip.shape[1]
        out[rows, 14:start] = ip
        addresses = np.concatenate([src, dst], axis=1).view(">u2").astype(np.int64)
        pseudo = addresses.sum(axis=1) + proto[rows] + seg
        sport, dport = f.sport[fid[rows]], f.dport[fid[rows]]
        for is_udp in (False, True):
            sub = np.flatnonzero(udp[rows] == is_udp)
            if not sub.size:
                continue
            l4 = np.zeros((sub.size, 8 if is_udp else 20), dtype=np.uint8)
            l4[:, 0:2] = _be(sport[sub], 2)
            l4[:, 2:4] = _be(dport[sub], 2)
            if is_udp:
                l4[:, 4:6] = _be(seg[sub], 2)
            else:
                l4[:, 12] = 5 << 4
                l4[:, 13] = TCP_FLAGS_ACK
                l4[:, 14:16] = _be(np.full(sub.size, TCP_WINDOW), 2)
            total = _ones_sum(np.concatenate([l4.view(">u2").astype(np.int64),
                                              pseudo[sub].reshape(-1, 1)], axis=1))
            check = 0xFFFF - total
            if is_udp:
                check = np.where(check == 0, 0xFFFF, check)
            l4[:, 6 if is_udp else 16:8 if is_udp else 18] = _be(check, 2)
            out[rows[sub], start:start + l4.shape[1]] = l4
    return out, hlen


def pcap_header(snaplen: int) -> bytes:
    return struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen or 65535, LINKTYPE_ETHERNET)


def records_block(workload: Workload, index: slice, base_ns: int, snaplen: int) -> bytes:
    """The pcap records (16-byte header and captured bytes) of packets `index`, as one buffer."""
    headers, hlen = header_block(workload, index)
    wire = workload.wire_len[index].astype(np.int64)
    n = wire.shape[0]
    caplen = wire if snaplen == FULL_FRAMES else np.minimum(wire, snaplen)
    t = base_ns + workload.now_ns[index].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(16 + caplen)[:-1]])
    buffer = np.zeros(int((16 + caplen).sum()), dtype=np.uint8)
    record = np.stack([t // NS_PER_SEC, t % NS_PER_SEC, caplen, wire], axis=1).astype("<u4")
    buffer[starts.reshape(-1, 1) + np.arange(16)] = record.view(np.uint8).reshape(n, 16)
    shown = np.minimum(caplen, hlen)
    for column in range(headers.shape[1]):
        rows = np.flatnonzero(shown > column)
        if not rows.size:
            break
        buffer[starts[rows] + 16 + column] = headers[rows, column]
    return buffer.tobytes()


def write_pcap(workload: Workload, path: str | Path, *, base_ns: int = 0, snaplen: int = DEFAULT_SNAPLEN,
               limit: int | None = None, progress=None) -> int:
    """Write the workload's packets (the first `limit`) to `path`; returns frames written.

    Frames are built with numpy, PROGRESS_EVERY at a time, byte for byte as
    scapy builds them (frame_bytes; tests/test_sim_pcapwrite.py compares them).
    `progress(n)` is called with the frames written since its last call."""
    count = len(workload) if limit is None else min(limit, len(workload))
    with open(path, "wb") as fh:
        fh.write(pcap_header(snaplen))
        for start in range(0, count, PROGRESS_EVERY):
            index = slice(start, min(start + PROGRESS_EVERY, count))
            try:
                fh.write(records_block(workload, index, base_ns, snaplen))
            except ValueError as e:
                raise ValueError(f"packets {index.start}..{index.stop - 1}: {e}") from None
            if progress:
                progress(index.stop - index.start)
    return count
