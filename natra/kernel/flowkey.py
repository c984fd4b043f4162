"""Readable flow keys: one formatter for the model, the replay tools and `natra status`.

Owns: turning a 40-byte `struct natra_flow_key` (bpf/natra.h) into text such
as 'tcp 10.0.0.1:40000 > 10.0.0.2:80', 'udp [fd00::1]:1 > [fd00::2]:53',
'icmp 10.0.0.1 > 10.0.0.2' or 'ethertype 0x0806'.
Rule: pure, standard library only, so the tools on a node (which carry no
numpy and no model) format keys exactly as the model does.
Must not know: maps, parsing frames.
"""

from __future__ import annotations

import ipaddress

from natra.kernel import layout as L

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmpv6"}
PORTED = frozenset({6, 17, 132})  # protocols whose first 4 L4 bytes are the ports


def _address(raw: bytes, v6: bool) -> str:
    return str(ipaddress.IPv6Address(raw)) if v6 else str(ipaddress.IPv4Address(raw[12:]))


def format_key(key: bytes) -> str:
    """The key as text; ports and EtherType are in network byte order in the key."""
    sport = int.from_bytes(key[32:34], "big")
    dport = int.from_bytes(key[34:36], "big")
    ethertype = int.from_bytes(key[36:38], "big")
    proto, flags = key[38], key[39]
    notes = "".join(n for bit, n in ((L.KEY_FRAGMENT, " fragment"), (L.KEY_TRUNCATED, " truncated"))
                    if flags & bit)
    header_only = flags & L.KEY_TRUNCATED and key[:32] == bytes(32) and proto == 0
    if ethertype not in (ETH_P_IP, ETH_P_IPV6) or header_only:
        return f"ethertype 0x{ethertype:04x}{notes}"
    v6 = ethertype == ETH_P_IPV6
    src, dst = _address(key[:16], v6), _address(key[16:32], v6)
    name = PROTO_NAMES.get(proto, f"proto {proto}")
    if proto in PORTED and not flags & (L.KEY_FRAGMENT | L.KEY_TRUNCATED):
        if v6:
            src, dst = f"[{src}]", f"[{dst}]"
        return f"{name} {src}:{sport} > {dst}:{dport}"
    return f"{name} {src} > {dst}{notes}"
