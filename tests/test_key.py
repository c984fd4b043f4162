"""Flow-key extraction (reference/key.py) on scapy-built frames of every kind.

Each expected key is built here from the packet's own fields and the rules of
docs/design.md, never from the parser's output; truncation is checked at
every byte boundary of the headers.
"""

from __future__ import annotations

import ipaddress
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from natra.reference.key import KEY_LEN, format_key, make_key, parse_frame  # noqa: E402
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether  # noqa: E402
from scapy.layers.sctp import SCTP  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from natra.kernel import layout as L  # noqa: E402

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
V4 = ("10.0.0.1", "10.0.0.2")
V6 = ("2001:db8::1", "2001:db8:ffff::2")


def v4mapped(a: str) -> bytes:
    return b"\x00" * 10 + b"\xff\xff" + ipaddress.IPv4Address(a).packed


def v6(a: str) -> bytes:
    return ipaddress.IPv6Address(a).packed


def ports_of(l4) -> tuple[int, int]:
    return (l4.sport, l4.dport) if l4 is not None else (0, 0)


V4_CASES = {
    "tcp": (TCP(sport=40000, dport=80), 6, (40000, 80)),
    "udp": (UDP(sport=53, dport=5353), 17, (53, 5353)),
    "sctp": (SCTP(sport=36412, dport=38412), 132, (36412, 38412)),
    "icmp": (ICMP(), 1, (0, 0)),
}


@pytest.mark.parametrize("name", sorted(V4_CASES))
@pytest.mark.parametrize("tos", [0, 1, 2, 3, 0xB8, 0xBA])
def test_ipv4_every_protocol_and_ecn(name, tos):
    l4, proto, (sport, dport) = V4_CASES[name]
    frame = bytes(Ether(**MAC) / IP(src=V4[0], dst=V4[1], tos=tos) / l4 / Raw(b"p" * 20))
    parsed = parse_frame(frame)
    assert parsed.key == make_key(v4mapped(V4[0]), v4mapped(V4[1]), sport, dport, 0x0800, proto, 0)
    assert (parsed.ecn, parsed.l3, parsed.l3_offset, parsed.flags) == (tos & 3, "ipv4", 14, 0)


@pytest.mark.parametrize("flags,frag", [("MF", 0), (0, 185), ("MF", 1)])
def test_ipv4_fragments_have_no_ports(flags, frag):
    frame = bytes(Ether(**MAC) / IP(src=V4[0], dst=V4[1], flags=flags, frag=frag, proto=17) / Raw(b"x" * 30))
    parsed = parse_frame(frame)
    assert parsed.key == make_key(v4mapped(V4[0]), v4mapped(V4[1]), 0, 0, 0x0800, 17, L.KEY_FRAGMENT)
    assert parsed.flags == L.KEY_FRAGMENT


def test_ipv4_dont_fragment_is_not_a_fragment():
    frame = bytes(Ether(**MAC) / IP(src=V4[0], dst=V4[1], flags="DF") / TCP(sport=1, dport=2))
    assert parse_frame(frame).flags == 0


@pytest.mark.parametrize("with_options", [False, True])
def test_ipv4_truncated_at_every_byte(with_options):
    ip = IP(src=V4[0], dst=V4[1], tos=2)
    if with_options:
        ip.options = IPOption(b"\x01\x01\x01\x00")  # NOPs + EOL: IHL 6
    frame = bytes(Ether(**MAC) / ip / TCP(sport=40000, dport=443))
    ihl = (frame[14] & 0x0F) * 4
    assert ihl == (24 if with_options else 20)
    for cut in range(len(frame) + 1):
        parsed = parse_frame(frame[:cut])
        if cut < 14:
            expected = make_key(ethertype=0, flags=L.KEY_TRUNCATED)
        elif cut < 14 + ihl:
            expected = make_key(ethertype=0x0800, flags=L.KEY_TRUNCATED)
        elif cut < 14 + ihl + 4:
            expected = make_key(v4mapped(V4[0]), v4mapped(V4[1]), 0, 0, 0x0800, 6, L.KEY_TRUNCATED)
        else:
            expected = make_key(v4mapped(V4[0]), v4mapped(V4[1]), 40000, 443, 0x0800, 6, 0)
        assert parsed.key == expected, cut
        assert len(parsed.key) == KEY_LEN
        assert parsed.l3 == (None if cut < 14 + ihl else "ipv4")


def test_ipv4_ihl_below_five_is_truncated():
    frame = bytearray(bytes(Ether(**MAC) / IP(src=V4[0], dst=V4[1]) / UDP(sport=1, dport=2)))
    frame[14] = 0x44  # IHL 4: not a valid header
    parsed = parse_frame(bytes(frame))
    assert parsed.key == make_key(ethertype=0x0800, flags=L.KEY_TRUNCATED) and parsed.ecn == 0


V6_CASES = {
    "tcp": (TCP(sport=40000, dport=80), 6, (40000, 80)),
    "udp": (UDP(sport=53, dport=5353), 17, (53, 5353)),
    "sctp": (SCTP(sport=1, dport=2), 132, (1, 2)),
    "icmpv6": (ICMPv6EchoRequest(), 58, (0, 0)),
}


@pytest.mark.parametrize("name", sorted(V6_CASES))
@pytest.mark.parametrize("tc", [0, 1, 2, 3, 0xB8, 0x4E])
def test_ipv6_every_protocol_and_ecn(name, tc):
    l4, proto, (sport, dport) = V6_CASES[name]
    frame = bytes(Ether(**MAC) / IPv6(src=V6[0], dst=V6[1], tc=tc) / l4)
    parsed = parse_frame(frame)
    assert parsed.key == make_key(v6(V6[0]), v6(V6[1]), sport, dport, 0x86DD, proto, L.KEY_IPV6)
    assert (parsed.ecn, parsed.l3, parsed.l3_offset) == (tc & 3, "ipv6", 14)


EXT = {
    "hbh": (IPv6ExtHdrHopByHop, 0),
    "rt": (lambda: IPv6ExtHdrRouting(addresses=["2001:db8::9"]), 43),
    "dst": (IPv6ExtHdrDestOpt, 60),
}


def _ext_chain(names):
    layers, types = [], []
    for n in names:
        make, t = EXT[n]
        layers.append(make())
        types.append(t)
    return layers, types


@given(st.lists(st.sampled_from(sorted(EXT)), min_size=0, max_size=6), st.sampled_from(sorted(V6_CASES)),
       st.booleans())
@settings(max_examples=200, deadline=None)
def test_ipv6_extension_headers_and_truncation(names, l4name, fragment):
    """Up to six extension headers (a fragment header last or not), cut at every byte."""
    layers, types = _ext_chain(names)
    l4, proto, (sport, dport) = V6_CASES[l4name]
    if fragment:
        layers.append(IPv6ExtHdrFragment(m=1))
        types.append(44)
    pkt = Ether(**MAC) / IPv6(src=V6[0], dst=V6[1])
    for layer in layers:
        pkt = pkt / layer
    frame = bytes(pkt / l4.copy())
    # Header boundaries from the bytes (independent of the parser): type, start, length.
    bounds, pos = [], 54
    for t in types:
        length = 8 if t == 44 else (frame[pos + 1] + 1) * 8
        bounds.append((t, pos, length))
        pos += length
    src, dst = v6(V6[0]), v6(V6[1])
    for cut in list(range(0, pos + 6)) + [len(frame)]:
        parsed = parse_frame(frame[:cut])
        if cut < 14:
            expected = make_key(ethertype=0, flags=L.KEY_TRUNCATED)
        elif cut < 54:
            expected = make_key(ethertype=0x86DD, flags=L.KEY_TRUNCATED)
        else:
            expected = None
            for i, (t, start, length) in enumerate(bounds):
                if i == L.MAX_IPV6_EXT:  # a fifth header: the walk gives up
                    expected = make_key(src, dst, 0, 0, 0x86DD, t, L.KEY_IPV6 | L.KEY_TRUNCATED)
                    break
                if cut < start + length:
                    expected = make_key(src, dst, 0, 0, 0x86DD, t, L.KEY_IPV6 | L.KEY_TRUNCATED)
                    break
                if t == 44:
                    expected = make_key(src, dst, 0, 0, 0x86DD, proto, L.KEY_IPV6 | L.KEY_FRAGMENT)
                    break
            if expected is None:
                if proto in (6, 17, 132) and cut < pos + 4:
                    expected = make_key(src, dst, 0, 0, 0x86DD, proto, L.KEY_IPV6 | L.KEY_TRUNCATED)
                else:
                    whole = cut >= pos + 4
                    expected = make_key(src, dst, sport if whole else 0, dport if whole else 0,
                                        0x86DD, proto, L.KEY_IPV6)
        assert parsed.key == expected, (cut, names, fragment)


@pytest.mark.parametrize("offset,m", [(0, 1), (100, 0), (100, 1)])
def test_ipv6_fragment_header(offset, m):
    frame = bytes(Ether(**MAC) / IPv6(src=V6[0], dst=V6[1]) / IPv6ExtHdrFragment(offset=offset, m=m, nh=17)
                  / Raw(b"z" * 16))
    parsed = parse_frame(frame)
    assert parsed.key == make_key(v6(V6[0]), v6(V6[1]), 0, 0, 0x86DD, 17, L.KEY_IPV6 | L.KEY_FRAGMENT)


def test_non_ip_and_vlan_are_keyed_by_ethertype():
    arp = parse_frame(bytes(Ether(**MAC) / ARP(pdst="10.0.0.2")))
    assert arp.key == make_key(ethertype=0x0806) and (arp.l3, arp.ecn) == (None, 0)
    vlan = parse_frame(bytes(Ether(**MAC) / Dot1Q(vlan=7) / IP(src=V4[0], dst=V4[1], tos=3) / UDP()))
    assert vlan.key == make_key(ethertype=0x8100) and vlan.ecn == 0
    assert format_key(arp.key) == "ethertype 0x0806"
    assert format_key(vlan.key) == "ethertype 0x8100"


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_any_bytes_give_a_key(data):
    """Nothing bypasses: arbitrary bytes parse to a 40-byte key without error."""
    parsed = parse_frame(data)
    assert len(parsed.key) == KEY_LEN and 0 <= parsed.ecn <= 3
    assert parsed.key[39] == parsed.flags
    format_key(parsed.key)


def test_format_key_examples():
    tcp4 = parse_frame(bytes(Ether(**MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80)))
    assert format_key(tcp4.key) == "tcp 10.0.0.1:40000 > 10.0.0.2:80"
    ip6 = IPv6(src="2001:db8::1", dst="2001:db8::2")
    udp6 = parse_frame(bytes(Ether(**MAC) / ip6 / UDP(sport=53, dport=5353)))
    assert format_key(udp6.key) == "udp [2001:db8::1]:53 > [2001:db8::2]:5353"
    icmp = parse_frame(bytes(Ether(**MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()))
    assert format_key(icmp.key) == "icmp 10.0.0.1 > 10.0.0.2"
    frag = parse_frame(bytes(Ether(**MAC) / IP(src="10.0.0.1", dst="10.0.0.2", frag=3, proto=17) / Raw(b"x")))
    assert format_key(frag.key) == "udp 10.0.0.1 > 10.0.0.2 fragment"
    assert format_key(parse_frame(b"\x00" * 20).key) == "ethertype 0x0000"
    assert format_key(parse_frame(b"\x00" * 12 + b"\x08\x00").key) == "ethertype 0x0800 truncated"


def _c_parser():
    from natra.reference import accel

    p = accel.parser()
    if p is None:
        pytest.skip("C accelerator not built (make reference/_natra_fast.so)")
    return p


ETH = bytes(12)
FRAME_PREFIXES = st.sampled_from([b"", ETH + b"\x08\x00", ETH + b"\x86\xdd", ETH + b"\x08\x00\x45",
                                  ETH + b"\x08\x00\x46\x01\x00\x00\x00\x00\x00\x00",
                                  ETH + b"\x86\xdd\x60\x00\x00\x00\x00\x00\x00"])


@given(FRAME_PREFIXES, st.binary(max_size=160), st.sampled_from([None, 0, 6, 17, 43, 44, 60, 132, 58]))
@settings(max_examples=300, deadline=None)
def test_c_parser_equals_python(prefix, rest, nexthdr):
    """The accelerator's parser (per-packet fast path) gives the spec's key, ECN and L3."""
    parser = _c_parser()
    frame = bytearray(prefix + rest)
    if nexthdr is not None and len(frame) > 20 and frame[12:14] == b"\x86\xdd":
        frame[20] = nexthdr  # steer IPv6 into extension-header walks
    frame = bytes(frame)
    p = parse_frame(frame)
    assert parser.parse(frame) == (p.key, p.ecn, p.l3, p.l3_offset, p.flags)


def test_c_parser_on_scapy_frames():
    parser = _c_parser()
    frames = [bytes(Ether(**MAC) / IP(src=V4[0], dst=V4[1], tos=t) / l4) for t in (0, 2) for l4, _, _ in
              V4_CASES.values()]
    frames += [bytes(Ether(**MAC) / IPv6(src=V6[0], dst=V6[1], tc=1) / IPv6ExtHdrHopByHop()
                     / IPv6ExtHdrFragment() / UDP())]
    frames += [f[:cut] for f in frames[:2] for cut in range(len(f))]
    for f in frames:
        p = parse_frame(f)
        assert parser.parse(f) == (p.key, p.ecn, p.l3, p.l3_offset, p.flags)
    keys, ecn = parser.parse_many(frames)
    assert [bytes(k) for k in keys] == [parse_frame(f).key for f in frames]
    assert ecn.tolist() == [parse_frame(f).ecn for f in frames]


def test_header_len_is_what_each_gso_segment_repeats():
    tcp = bytes(Ether() / IP() / TCP(options=[("MSS", 1460), ("NOP", None), ("NOP", None)]) / Raw(b"x" * 10))
    assert parse_frame(tcp).hdr_len == 14 + 20 + 28
    udp6 = bytes(Ether() / IPv6() / UDP() / Raw(b"x" * 10))
    assert parse_frame(udp6).hdr_len == 14 + 40 + 8
    assert parse_frame(bytes(Ether() / IP() / ICMP())).hdr_len == 0
    assert parse_frame(bytes(Ether() / IP(flags="MF") / UDP())).hdr_len == 0  # a fragment
    assert parse_frame(tcp[:14 + 20 + 12]).hdr_len == 0  # the data offset byte is missing
