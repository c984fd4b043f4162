"""ECN Congestion Experienced marking of one frame, as the kernel program does it.

Owns: the byte rewrite for verdict MARK: IPv4 TOS |= 3 with the header checksum
patched incrementally exactly like the kernel's csum_replace2() on the 16-bit
word that holds the TOS; IPv6 traffic class |= 3 (no checksum in IPv6).
Rule: a pure function of the frame bytes; the model compares its output with
the kernel's frame bit for bit, so even the one's-complement corner cases
(0x0000 vs 0xffff) follow csum_replace2, not a full recomputation.
Must not know: why a frame is marked (the policy), flow keys, hashing.
"""

from __future__ import annotations

ECN_MASK = 0x03
ECN_CE = 0x03
IPV6_ECN_SHIFT = 4  # ECN bits sit at bits 4-5 of the IPv6 header's second byte
MASK16 = 0xFFFF
IPV4_CHECK_OFFSET = 10  # header checksum field inside the IPv4 header


def _csum16_add(csum: int, addend: int) -> int:
    """One's-complement 16-bit add with end-around carry (the kernel's csum16_add)."""
    res = (csum + addend) & MASK16
    return (res + (1 if res < addend else 0)) & MASK16


def csum_replace2(check: int, old: int, new: int) -> int:
    """The kernel's csum_replace2: ~csum16_add(csum16_sub(~check, old), new)."""
    return ~_csum16_add(_csum16_add(~check & MASK16, ~old & MASK16), new) & MASK16


def ipv4_header_checksum(header: bytes) -> int:
    """The full RFC 791 checksum over a header whose check field is taken as is."""
    total = 0
    for i in range(0, len(header), 2):
        total += (header[i] << 8) | header[i + 1]
    while total >> 16:
        total = (total & MASK16) + (total >> 16)
    return ~total & MASK16


def mark_ce(frame: bytes, l3: str | None, l3_offset: int) -> bytes | None:
    """The frame with ECN set to CE, or None when there is no IP header to mark."""
    out = bytearray(frame)
    if l3 == "ipv4":
        old_word = (out[l3_offset] << 8) | out[l3_offset + 1]
        out[l3_offset + 1] |= ECN_CE
        new_word = (out[l3_offset] << 8) | out[l3_offset + 1]
        pos = l3_offset + IPV4_CHECK_OFFSET
        check = (out[pos] << 8) | out[pos + 1]
        check = csum_replace2(check, old_word, new_word)
        out[pos], out[pos + 1] = check >> 8, check & 0xFF
        return bytes(out)
    if l3 == "ipv6":
        out[l3_offset + 1] |= ECN_CE << IPV6_ECN_SHIFT
        return bytes(out)
    return None
