"""Real-world captures (issue #20): pcap and pcapng; Ethernet, Linux cooked (SLL, SLL2) and raw IP;
a cut-off last record; one Pod's traffic in one direction."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import struct

import pytest

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from natra.simulations import cli, pcapio, replay  # noqa: E402
from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

POD, PEER = "10.244.1.10", "10.0.0.7"
T0 = 1_700_000_000 * 10**9


def eth(src, dst, size, sport=40000, dport=80, v6=False):
    l3 = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / l3 / TCP(sport=sport, dport=dport)
    return bytes(pkt) + bytes(max(size - len(pkt), 0))


def traffic():
    """Data into the Pod (1514 B frames at 3x 10 Mbit/s) and the Pod's ACKs (66 B), 0.2 s."""
    recs = []
    gap = 1514 * 8 * 10**9 // (3 * 10**7)
    for i in range(0, 200_000_000 // gap):
        recs.append((T0 + i * gap, eth(PEER, POD, 1514)))
        if i % 2:
            recs.append((T0 + i * gap + 1000, eth(POD, PEER, 66, sport=80, dport=40000)))
    return recs


def link_header(linktype, frame, outgoing):
    proto, payload = frame[12:14], frame[14:]
    pkttype = pcapio.PACKET_OUTGOING if outgoing else pcapio.PACKET_HOST
    if linktype == pcapio.LINKTYPE_LINUX_SLL:
        return struct.pack("!HHH8s", pkttype, 1, 6, b"\x02" * 6) + proto + payload
    if linktype == pcapio.LINKTYPE_LINUX_SLL2:
        return proto + b"\x00\x00" + struct.pack("!IHBB8s", 3, 1, pkttype, 6, b"\x02" * 6) + payload
    if linktype in (pcapio.LINKTYPE_RAW, pcapio.LINKTYPE_IPV4):
        return payload
    return frame


def write_pcap(path, linktype, records, snaplen=65535):
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, linktype))
        for t, frame in records:
            data = link_header(linktype, frame, frame[26:30] == bytes(map(int, POD.split("."))))
            cut = data[:snaplen]
            fh.write(struct.pack("<IIII", t // 10**9, t % 10**9, len(cut), len(data)))
            fh.write(cut)


def write_pcapng(path, linktype, records, snaplen=65535):
    def block(btype, body):
        body += bytes(-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    tsresol = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)  # ns
    out += block(1, struct.pack("<HHI", linktype, 0, 65535) + tsresol)
    for t, frame in records:
        data = link_header(linktype, frame, frame[26:30] == bytes(map(int, POD.split("."))))
        cut = data[:snaplen]
        out += block(6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(cut), len(data)) + cut)
    path.write_bytes(out)


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def summary(path, *extra):
    code, out, err = run("replay", str(path), "--rate", "10M", "--json", *extra)
    assert code == 0, err
    s = json.loads(out)
    s.pop("settings")
    return s


@pytest.mark.parametrize("writer", [write_pcap, write_pcapng])
@pytest.mark.parametrize("linktype", [pcapio.LINKTYPE_LINUX_SLL, pcapio.LINKTYPE_LINUX_SLL2,
                                      pcapio.LINKTYPE_RAW, pcapio.LINKTYPE_IPV4])
def test_cooked_and_raw_captures_read_as_the_ethernet_frames(tmp_path, writer, linktype):
    recs = traffic()
    writer(tmp_path / "eth.cap", pcapio.LINKTYPE_ETHERNET, recs, snaplen=128)
    writer(tmp_path / "other.cap", linktype, recs, snaplen=128)
    ether = list(pcapio.read_capture(tmp_path / "eth.cap"))
    other = list(pcapio.read_capture(tmp_path / "other.cap"))
    assert [r.orig_len for r in other] == [r.orig_len for r in ether] == [len(f) for _, f in recs]
    # the snapshot cut the link-layer bytes, so a cooked frame keeps a few bytes more or less
    assert [r.frame[12:100] for r in other] == [r.frame[12:100] for r in ether]
    if linktype in (pcapio.LINKTYPE_LINUX_SLL, pcapio.LINKTYPE_LINUX_SLL2):
        assert {r.pkttype for r in other} == {pcapio.PACKET_HOST, pcapio.PACKET_OUTGOING}
    assert summary(tmp_path / "other.cap") == summary(tmp_path / "eth.cap")


def test_unknown_link_type_names_the_known_ones(tmp_path):
    write_pcap(tmp_path / "x.pcap", 147, traffic()[:3])
    code, _, err = run("replay", str(tmp_path / "x.pcap"), "--rate", "10M")
    assert code == 2 and "link type 147" in err and "SLL2 (276)" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("writer", [write_pcap, write_pcapng])
def test_a_cut_off_last_record_is_read_up_to_the_break_with_a_warning(tmp_path, writer):
    recs = traffic()[:50]
    path = tmp_path / "cut.cap"
    writer(path, pcapio.LINKTYPE_ETHERNET, recs)
    path.write_bytes(path.read_bytes()[:-700])  # into the last 1514-byte record
    warnings = []
    got = list(pcapio.read_capture(path, warn=warnings.append))
    assert len(got) == len(recs) - 1 and len(warnings) == 1 and "ends inside" in warnings[0]
    code, out, err = run("replay", str(path), "--rate", "10M", "--json")
    assert code == 0 and json.loads(out)["packets"] == len(recs) - 1
    assert err.count("warning: ") == 1 and "ends inside" in err


def test_pod_and_direction_select_the_data_or_the_acks(tmp_path):
    recs = traffic()
    path = tmp_path / "both-ways.pcap"
    write_pcap(path, pcapio.LINKTYPE_LINUX_SLL2, recs, snaplen=128)
    data = [f for _, f in recs if len(f) == 1514]
    acks = [f for _, f in recs if len(f) == 66]
    code, out, _ = run("replay", str(path), "--rate", "10M", "--json", "--pod", POD)
    into = json.loads(out)
    assert code == 0 and into["packets"] == len(data) and into["bytes"] == 1514 * len(data)
    assert into["settings"]["frames_left_out"] == len(acks) and into["settings"]["pod"] == [POD]
    assert into["dropped"]["bytes"] > 0  # 3x the rate
    code, out, _ = run("replay", str(path), "--rate", "10M", "--json", "--pod", POD, "--direction", "egress")
    out_of = json.loads(out)
    assert out_of["packets"] == len(acks) and out_of["dropped"]["packets"] == 0
    # without --pod the ACKs are charged to the data's bucket
    assert summary(path)["bytes"] == into["bytes"] + out_of["bytes"]
    assert replay.pod_address("fd00::a") == bytes.fromhex("fd00000000000000000000000000000a")
    code, _, err = run("replay", str(path), "--rate", "10M", "--pod", "10.0.0.300")
    assert code == 2 and "pod '10.0.0.300'" in err
