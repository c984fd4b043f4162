"""simulations.pcapwrite: workloads written as pcap read back to the same keys, times, lengths, ECN."""

import numpy as np
import pytest
from natra.reference.key import parse_frame
from natra.simulations import workloads as W
from natra.simulations.pcapio import read_capture
from natra.simulations.pcapwrite import FULL_FRAMES, write_pcap

from natra.kernel import layout as L


def _passing(now, wire, keys, ect):
    return np.full(len(now), L.V_PASS_MOUSE, dtype=np.uint8)


@pytest.mark.parametrize("snaplen", [FULL_FRAMES, 96])
def test_ipv4_and_ipv6_workload_round_trips(tmp_path, snaplen):
    wl = W.elephants_mice(seed=2, duration_ns=20_000_000, n_elephants=2, ipv6_fraction=0.5)
    path = tmp_path / "mix.pcap"
    base = 1_700_000_000 * L.NS_PER_SEC + 123
    count = write_pcap(wl, path, base_ns=base, snaplen=snaplen, limit=3000)
    records = list(read_capture(path))
    assert len(records) == count == min(3000, len(wl))
    keys = wl.keys
    saw_v6 = saw_v4 = False
    for i, r in enumerate(records):
        parsed = parse_frame(r.frame)
        assert parsed.key == bytes(keys[i])
        assert r.time_ns == base + int(wl.now_ns[i])
        assert r.orig_len == int(wl.wire_len[i])
        assert len(r.frame) == (int(wl.wire_len[i]) if snaplen == FULL_FRAMES else min(96, r.orig_len))
        saw_v6 |= parsed.l3 == "ipv6"
        saw_v4 |= parsed.l3 == "ipv4"
    assert saw_v4 and saw_v6


def test_ect_packets_carry_ect0_and_udp_flows_are_udp(tmp_path):
    wl = W.flood_mix(_passing, seed=1, duration_ns=20_000_000, n_aimd=1, mice_load=0.0, ipv6_fraction=0.0)
    path = tmp_path / "flood.pcap"
    write_pcap(wl, path)
    for i, r in enumerate(read_capture(path)):
        parsed = parse_frame(r.frame)
        assert parsed.ecn == (2 if wl.ect[i] else 0)
        assert parsed.key[38] == wl.flows.proto[wl.flow_id[i]]


def test_closed_loop_workload_replayed_from_pcap_gets_the_same_verdicts(tmp_path):
    """The pcap carries everything the data path decides on: replaying it reproduces the run."""
    from natra.reference.engine import Batch, process_batch
    from natra.simulations import sweep

    point = sweep.Point("flood", 1024, 4, None, 100.0, None, 10**7, 1.0, 1)  # past the 0.5 s burst
    wl, _, _ = sweep.closed_loop(point, point.params())
    path = tmp_path / "flood.pcap"
    write_pcap(wl, path)
    records = list(read_capture(path))
    batch = Batch.from_frames([r.frame for r in records], np.array([r.time_ns for r in records]),
                              L.DIR_TO_POD, wire_len=np.array([r.orig_len for r in records]))
    result = process_batch(sweep._model(point.params(), point.flow_table), batch)
    assert np.array_equal(result.verdicts, wl.verdicts)
    assert np.count_nonzero(np.isin(wl.verdicts, sorted(L.DROPPING_VERDICTS))) > 0


@pytest.mark.parametrize("snaplen", [FULL_FRAMES, 60])
def test_numpy_frames_are_scapys_frames_byte_for_byte(tmp_path, snaplen):
    """The fast writer against scapy (frame_bytes): IPv4 and IPv6, TCP and UDP, ECT(0) and not,
    every frame length the workloads make; the snapshot cuts inside the headers too (60)."""
    from natra.simulations.pcapwrite import frame_bytes

    def marking(now, wire, keys, ect):
        return np.where(ect, L.V_MARK, L.V_PASS_MOUSE).astype(np.uint8)

    flood = W.flood_mix(marking, seed=3, duration_ns=20_000_000, n_aimd=2, mice_load=0.5, ipv6_fraction=0.5)
    assert (flood.flows.proto == 17).any() and (flood.flows.proto == 6).any() and flood.ect.any()
    for wl in (flood,
               W.elephants_mice(seed=4, duration_ns=5_000_000, ipv6_fraction=0.5,
                                mouse_frame_bytes=W.GSO_FRAME_BYTES)):
        assert wl.flows.ipv6.any() and not wl.flows.ipv6.all()
        path = tmp_path / f"{wl.name}.pcap"
        write_pcap(wl, path, snaplen=snaplen, base_ns=5 * L.NS_PER_SEC + 7)
        records = list(read_capture(path))
        assert len(records) == len(wl)
        cache: dict = {}
        for i, r in enumerate(records):
            frame = frame_bytes(wl, i, cache)
            assert r.frame == (frame if snaplen == FULL_FRAMES else frame[:snaplen]), i
            assert r.orig_len == len(frame) and r.time_ns == 5 * L.NS_PER_SEC + 7 + int(wl.now_ns[i])
