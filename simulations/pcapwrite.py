"""Writing a workload as a pcap file, so the kernel engine can replay it.

Owns: turning a `Workload`'s packet table into Ethernet frames (scapy builds
the headers: IPv4 or IPv6, TCP or UDP, ECT(0) when the packet is
ECN-capable) and writing them with nanosecond timestamps to classic pcap.
Rule: the frame of packet i is exactly wire_len[i] bytes on the wire and
parses to the workload's flow key for it; time is the workload's now_ns
plus a base the caller chooses. With a snapshot length the file keeps only
the first `snaplen` bytes of each frame but records the full original
length, which is what the data path charges (pcapio keeps it).
Must not know: the model, verdicts, metrics. Reading is simulations/pcapio.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from natra.simulations.workloads import IPPROTO_UDP, Workload
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import RawPcapWriter

LINKTYPE_ETHERNET = 1
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


PROGRESS_EVERY = 65536  # frames between progress callbacks


def write_pcap(workload: Workload, path: str | Path, *, base_ns: int = 0, snaplen: int = DEFAULT_SNAPLEN,
               limit: int | None = None, progress=None) -> int:
    """Write the workload's packets (the first `limit`) to `path`; returns frames written.

    `progress(n)` is called with the frames written since its last call."""
    count = len(workload) if limit is None else min(limit, len(workload))
    cache: dict = {}
    writer = RawPcapWriter(str(path), linktype=LINKTYPE_ETHERNET, nano=True,
                           snaplen=snaplen or 65535)
    try:
        writer.write_header(None)
        for i in range(count):
            frame = frame_bytes(workload, i, cache)
            captured = frame if snaplen == FULL_FRAMES else frame[:snaplen]
            t = base_ns + int(workload.now_ns[i])
            writer.write_packet(captured, sec=t // NS_PER_SEC, usec=t % NS_PER_SEC,
                                caplen=len(captured), wirelen=len(frame))
            if progress and (i + 1) % PROGRESS_EVERY == 0:
                progress(PROGRESS_EVERY)
        if progress and count % PROGRESS_EVERY:
            progress(count % PROGRESS_EVERY)
    finally:
        writer.close()
    return count
