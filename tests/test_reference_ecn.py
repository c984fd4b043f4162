"""CE marking (reference/ecn.py): the IPv4 checksum stays valid, IPv6 gets TC |= 3."""

from __future__ import annotations

import logging

from hypothesis import given, settings
from hypothesis import strategies as st

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from natra.reference.ecn import csum_replace2, ipv4_header_checksum, mark_ce  # noqa: E402
from natra.reference.key import parse_frame  # noqa: E402
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402


@given(st.integers(0, 255), st.integers(0, 255), st.integers(1, 255), st.integers(0, 0xFFFF),
       st.ip_addresses(v=4), st.ip_addresses(v=4))
@settings(max_examples=300, deadline=None)
def test_ipv4_mark_keeps_checksum_valid(tos, ttl, proto, ident, src, dst):
    ip = IP(src=str(src), dst=str(dst), tos=tos, ttl=ttl, proto=proto, id=ident)
    frame = bytes(Ether() / ip / UDP())
    parsed = parse_frame(frame)
    out = mark_ce(frame, parsed.l3, parsed.l3_offset)
    header = out[14:14 + 20]
    assert ipv4_header_checksum(header) == 0  # verifies
    assert out[15] == tos | 3
    assert out[:15] == frame[:15] and out[16:24] == frame[16:24] and out[26:] == frame[26:]
    assert parse_frame(out).ecn == 3


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
@settings(max_examples=300, deadline=None)
def test_csum_replace2_is_ones_complement_update(check, old, new):
    """Changing a word by old -> new changes the one's-complement sum by new - old."""
    def fold(x):
        while x >> 16:
            x = (x & 0xFFFF) + (x >> 16)
        return x

    out = csum_replace2(check, old, new)
    # ~out == ~check - old + new in one's complement arithmetic (mod 0xffff)
    assert (0xFFFF - out) % 0xFFFF == fold((0xFFFF - check) + (0xFFFF - old) + new) % 0xFFFF


@given(st.integers(0, 255), st.integers(0, 0xFFFFF))
@settings(max_examples=200, deadline=None)
def test_ipv6_mark_sets_traffic_class_ecn(tc, fl):
    frame = bytes(Ether() / IPv6(tc=tc, fl=fl) / UDP())
    parsed = parse_frame(frame)
    out = mark_ce(frame, parsed.l3, parsed.l3_offset)
    again = IPv6(out[14:])
    assert again.tc == tc | 3 and again.fl == fl
    assert out[:14] == frame[:14] and out[16:] == frame[16:]


def test_non_ip_cannot_be_marked():
    assert mark_ce(b"\x00" * 60, None, 0) is None
