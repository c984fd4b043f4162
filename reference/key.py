"""Flow-key extraction: raw Ethernet frame bytes -> struct natra_flow_key.

Owns: the parse rules of docs/design.md ("The flow key"), step for step, and
the readable form of a key (`format_key`). The C program's `parse_frame` must
produce the same 40 bytes for every frame, truncated or not.
Rule: every frame gets a key (nothing bypasses the policy); a header that is
not wholly inside the frame is never read, it only sets TRUNCATED.
Must not know: hashing, the sketch, the policy, pcap files.

Choices where design.md leaves room (also in the issue report):
* IPv4: no check of the version nibble; only the EtherType says "IPv4".
* "Bytes present" always means bytes of the frame (not the IP total length).
* An IPv6 extension header is truncated when its full length (8 bytes for a
  Fragment header, (hdr[1] + 1) * 8 for the others) is not in the frame; the
  walk then ends with proto = that header's type, ports 0 and TRUNCATED.
* A truncated IP header (v4 or v6) gives l3 = None and ecn = 0: nothing to mark.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from natra.kernel import layout as L
from natra.kernel.flowkey import format_key  # noqa: F401  (one formatter for model and tools)

KEY_LEN = 40  # sizeof(struct natra_flow_key)
ETH_HLEN = 14  # destination, source, EtherType
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPV4_MIN_HLEN = 20
IPV6_HLEN = 40
PORTS_LEN = 4  # source and destination port, the first 4 bytes of TCP/UDP/SCTP
IPV4_MF = 0x2000
IPV4_OFFSET_MASK = 0x1FFF
IPV6_FRAG_HLEN = 8
IPV6_EXT_MIN_HLEN = 8
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP = 6, 17, 132
IPPROTO_ICMP, IPPROTO_ICMPV6 = 1, 58
PORTED_PROTOS = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP})
IPV6_HOPOPTS, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_DSTOPTS = 0, 43, 44, 60
IPV6_EXT_HEADERS = frozenset({IPV6_HOPOPTS, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_DSTOPTS})
V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"

PROTO_NAMES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_SCTP: "sctp",
               IPPROTO_ICMP: "icmp", IPPROTO_ICMPV6: "icmpv6"}

_KEY_TAIL = struct.Struct("!HHHBB")  # sport, dport, ethertype (network order), proto, flags
_ZERO_ADDR = bytes(16)


@dataclass(frozen=True, slots=True)
class ParsedFrame:
    """What the parser learnt from one frame."""

    key: bytes  # 40 bytes, struct natra_flow_key
    ecn: int  # 0..3, the ECN field of the IP header (0 when there is none)
    l3: str | None  # 'ipv4' | 'ipv6' | None (non-IP or truncated IP header)
    l3_offset: int  # byte offset of the IP header in the frame (14), 0 when l3 is None
    flags: int  # KEY_* flags, as in the key
    hdr_len: int = 0  # bytes from the frame's start through its TCP/UDP header; 0 unknown


TCP_DOFF_AT = 12  # byte of the TCP header holding the data offset (high nibble)
TCP_MIN_HLEN = 20
UDP_HLEN = 8


def header_len(frame: bytes, l4_offset: int, proto: int) -> int:
    """Bytes through the TCP/UDP header at `l4_offset` (each GSO segment repeats them); 0 unknown.

    TCP: the data offset byte must be in the frame and say >= 20 bytes; UDP: the
    8-byte header must be in the frame. Other protocols: 0.
    """
    if proto == IPPROTO_TCP and l4_offset + TCP_DOFF_AT + 1 <= len(frame):
        doff = (frame[l4_offset + TCP_DOFF_AT] >> 4) * 4
        return l4_offset + doff if doff >= TCP_MIN_HLEN else 0
    if proto == IPPROTO_UDP and l4_offset + UDP_HLEN <= len(frame):
        return l4_offset + UDP_HLEN
    return 0


def make_key(saddr: bytes = _ZERO_ADDR, daddr: bytes = _ZERO_ADDR, sport: int = 0, dport: int = 0,
             ethertype: int = 0, proto: int = 0, flags: int = 0) -> bytes:
    """Pack the fields of struct natra_flow_key (ports and EtherType as numbers)."""
    return saddr + daddr + _KEY_TAIL.pack(sport, dport, ethertype, proto, flags)


def _only_ethertype(ethertype: int, flags: int) -> ParsedFrame:
    return ParsedFrame(make_key(ethertype=ethertype, flags=flags), 0, None, 0, flags)


def _ports(frame: bytes, off: int, proto: int) -> tuple[int, int, int]:
    """(sport, dport, extra flags) for an unfragmented L4 header at `off`."""
    if proto not in PORTED_PROTOS:
        return 0, 0, 0
    if off + PORTS_LEN > len(frame):
        return 0, 0, L.KEY_TRUNCATED
    sport, dport = struct.unpack_from("!HH", frame, off)
    return sport, dport, 0


def _parse_ipv4(frame: bytes) -> ParsedFrame:
    off = ETH_HLEN
    if off + IPV4_MIN_HLEN > len(frame):
        return _only_ethertype(ETH_P_IP, L.KEY_TRUNCATED)
    ihl = (frame[off] & 0x0F) * 4
    if ihl < IPV4_MIN_HLEN or off + ihl > len(frame):
        return _only_ethertype(ETH_P_IP, L.KEY_TRUNCATED)
    ecn = frame[off + 1] & 0x03
    frag = struct.unpack_from("!H", frame, off + 6)[0]
    proto = frame[off + 9]
    saddr = V4_MAPPED_PREFIX + frame[off + 12:off + 16]
    daddr = V4_MAPPED_PREFIX + frame[off + 16:off + 20]
    hdr = 0
    if frag & (IPV4_MF | IPV4_OFFSET_MASK):
        flags, sport, dport = L.KEY_FRAGMENT, 0, 0
    else:
        sport, dport, flags = _ports(frame, off + ihl, proto)
        if not flags:
            hdr = header_len(frame, off + ihl, proto)
    key = make_key(saddr, daddr, sport, dport, ETH_P_IP, proto, flags)
    return ParsedFrame(key, ecn, "ipv4", off, flags, hdr)


def _parse_ipv6(frame: bytes) -> ParsedFrame:
    off = ETH_HLEN
    if off + IPV6_HLEN > len(frame):
        return _only_ethertype(ETH_P_IPV6, L.KEY_TRUNCATED)
    ecn = (frame[off + 1] >> 4) & 0x03
    saddr = frame[off + 8:off + 24]
    daddr = frame[off + 24:off + 40]
    nexthdr = frame[off + 6]
    pos = off + IPV6_HLEN
    flags = L.KEY_IPV6
    ended = False  # the walk ended without ports (fragment or truncated)
    for _ in range(L.MAX_IPV6_EXT):
        if nexthdr not in IPV6_EXT_HEADERS:
            break
        if pos + IPV6_EXT_MIN_HLEN > len(frame):
            flags |= L.KEY_TRUNCATED
            ended = True
            break
        hlen = IPV6_FRAG_HLEN if nexthdr == IPV6_FRAGMENT else (frame[pos + 1] + 1) * 8
        if pos + hlen > len(frame):
            flags |= L.KEY_TRUNCATED
            ended = True
            break
        if nexthdr == IPV6_FRAGMENT:
            flags |= L.KEY_FRAGMENT
            nexthdr = frame[pos]
            ended = True
            break
        nexthdr = frame[pos]
        pos += hlen
    else:
        if nexthdr in IPV6_EXT_HEADERS:  # a fifth extension header
            flags |= L.KEY_TRUNCATED
            ended = True
    sport = dport = hdr = 0
    if not ended:
        sport, dport, extra = _ports(frame, pos, nexthdr)
        flags |= extra
        if not extra:
            hdr = header_len(frame, pos, nexthdr)
    key = make_key(saddr, daddr, sport, dport, ETH_P_IPV6, nexthdr, flags)
    return ParsedFrame(key, ecn, "ipv6", off, flags, hdr)


def parse_frame(frame: bytes) -> ParsedFrame:
    """The flow key and ECN field of one Ethernet frame (design.md rules 1-4)."""
    if len(frame) < ETH_HLEN:
        return _only_ethertype(0, L.KEY_TRUNCATED)
    ethertype = (frame[12] << 8) | frame[13]
    if ethertype == ETH_P_IP:
        return _parse_ipv4(frame)
    if ethertype == ETH_P_IPV6:
        return _parse_ipv6(frame)
    return _only_ethertype(ethertype, 0)


def key_fields(key: bytes) -> dict:
    """The fields of a packed key (ports and EtherType as numbers)."""
    sport, dport, ethertype, proto, flags = _KEY_TAIL.unpack_from(key, 32)
    return {"saddr": key[:16], "daddr": key[16:32], "sport": sport, "dport": dport,
            "ethertype": ethertype, "proto": proto, "flags": flags}


