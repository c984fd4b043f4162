"""simulations.workloads: seeded generators, flow keys, CDFs, loads, the AIMD loop."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from natra.reference.key import ETH_P_IP, ETH_P_IPV6, make_key
from natra.simulations import workloads as W

from natra.kernel import layout as L

SHORT_NS = 300_000_000  # 0.3 s keeps every generator well under a second
SMALL = {
    "websearch": {"duration_ns": SHORT_NS},
    "datamining": {"duration_ns": SHORT_NS, "load": 3.0},
    "zipf": {"duration_ns": SHORT_NS, "n_flows": 2000},
    "mix": {"duration_ns": SHORT_NS},
    "manyflows": {"duration_ns": SHORT_NS, "flows_per_window": 2000},
}


def _arrays(wl: W.Workload):
    return (wl.now_ns, wl.wire_len, wl.flow_id, wl.ect, wl.flows.keys, wl.flows.role)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_same_workload_and_another_seed_differs(name):
    a = W.open_loop(name, seed=7, **SMALL[name])
    b = W.open_loop(name, seed=7, **SMALL[name])
    c = W.open_loop(name, seed=8, **SMALL[name])
    assert len(a) > 0
    for x, y in zip(_arrays(a), _arrays(b), strict=True):
        assert np.array_equal(x, y)
    assert len(a) != len(c) or not np.array_equal(a.now_ns, c.now_ns)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_packet_table_is_time_ordered_and_well_formed(name):
    wl = W.open_loop(name, seed=3, **SMALL[name])
    assert np.all(np.diff(wl.now_ns.astype(np.int64)) >= 0)
    assert wl.now_ns.dtype == np.uint64 and wl.wire_len.dtype == np.uint32
    assert int(wl.now_ns.max()) < wl.duration_ns
    assert wl.wire_len.min() >= W.MIN_FRAME_BYTES
    assert wl.wire_len.max() <= W.MTU_FRAME_BYTES
    assert wl.flow_id.min() >= 0 and wl.flow_id.max() < len(wl.flows)
    assert wl.keys.shape == (len(wl), 40)
    assert np.array_equal(wl.ect, wl.flows.ect[wl.flow_id])


def test_flow_keys_match_the_reference_packing_for_ipv4_and_ipv6():
    wl = W.flow_size_workload("websearch", seed=5, duration_ns=SHORT_NS, ipv6_fraction=0.5)
    f = wl.flows
    assert f.ipv6.any() and (~f.ipv6).any()
    for i in range(len(f)):
        v6 = bool(f.ipv6[i])
        expected = make_key(bytes(f.saddr[i]), bytes(f.daddr[i]), int(f.sport[i]), int(f.dport[i]),
                            ETH_P_IPV6 if v6 else ETH_P_IP, int(f.proto[i]), L.KEY_IPV6 if v6 else 0)
        assert bytes(f.keys[i]) == expected
        if not v6:
            assert bytes(f.saddr[i][:12]) == W.V4_MAPPED_PREFIX
    assert len({bytes(k) for k in f.keys}) == len(f), "two flows share a key"


def test_web_search_sizes_follow_the_published_cdf():
    rng = np.random.default_rng(11)
    sizes = W.sample_sizes(rng, W.WEB_SEARCH_CDF, 200_000)
    for size, prob in W.WEB_SEARCH_CDF:
        assert abs(np.mean(sizes <= size) - prob) < 0.005
    assert sizes.max() <= 30_000 * W.KB


def test_data_mining_sizes_follow_the_published_cdf():
    rng = np.random.default_rng(12)
    sizes = W.sample_sizes(rng, W.DATA_MINING_CDF, 200_000)
    for size, prob in W.DATA_MINING_CDF:
        assert abs(np.mean(sizes <= size) - prob) < 0.005


def test_cdf_mean_matches_samples():
    rng = np.random.default_rng(13)
    sizes = W.sample_sizes(rng, W.WEB_SEARCH_CDF, 400_000)
    assert abs(sizes.mean() / W.cdf_mean_bytes(W.WEB_SEARCH_CDF) - 1) < 0.02


@pytest.mark.parametrize("load", [0.3, 0.8])
def test_zipf_offers_the_requested_load(load):
    wl = W.zipf_workload(seed=2, load=load, duration_ns=L.NS_PER_SEC, n_flows=1000)
    offered = wl.wire_len.astype(np.int64).sum() * 8 / wl.rate_bps
    assert abs(offered / load - 1) < 0.03


def test_zipf_popularity_falls_with_rank():
    wl = W.zipf_workload(seed=2, duration_ns=L.NS_PER_SEC, n_flows=1000, exponent=1.2)
    counts = np.bincount(wl.flow_id, minlength=1000)
    assert counts[0] > counts[9] > counts[99] > 0
    assert abs(counts[0] / counts[9] - 10 ** 1.2) / 10 ** 1.2 < 0.15


def test_mix_elephants_overload_and_mice_stay_at_their_load():
    wl = W.elephants_mice(seed=4, duration_ns=L.NS_PER_SEC, n_elephants=3, mice_load=0.2)
    seconds = wl.duration_ns / L.NS_PER_SEC
    wire = wl.wire_len.astype(np.int64)
    role = wl.flows.role[wl.flow_id]
    mice_load = wire[role == W.ROLE_MOUSE].sum() * 8 / (wl.rate_bps * seconds)
    assert abs(mice_load - 0.2) < 0.03
    assert wire[role == W.ROLE_ELEPHANT].sum() * 8 / (wl.rate_bps * seconds) > 2.0
    assert wl.flows.keys.shape[0] == 3 + np.count_nonzero(wl.flows.role == W.ROLE_MOUSE)


def test_many_flows_has_the_asked_flows_per_window():
    wl = W.many_flows(seed=1, flows_per_window=5000, duration_ns=400_000_000, n_elephants=5)
    epochs = wl.now_ns // np.uint64(100_000_000)
    for e in range(4):
        distinct = np.unique(wl.flow_id[epochs == e]).shape[0]
        assert 5000 <= distinct <= 5000 * 1.1 + 5


@given(sizes=st.lists(st.integers(1, 200_000), min_size=1, max_size=20), seed=st.integers(0, 1000))
@settings(max_examples=40, deadline=None)
def test_packetize_keeps_every_byte_of_flows_that_finish(sizes, seed):
    rng = np.random.default_rng(seed)
    sizes = np.array(sizes)
    now, wire, fid = W.packetize(rng, sizes, np.zeros(len(sizes), dtype=np.uint64), 10**9, 10**12)
    sent = np.bincount(fid, weights=wire, minlength=len(sizes))
    assert np.all(sent >= sizes)
    assert np.all(sent - sizes < W.MIN_FRAME_BYTES)
    assert np.all(np.diff(now.astype(np.int64)) >= 0)


def test_packetize_paces_at_the_send_rate_on_average():
    rng = np.random.default_rng(1)
    now, wire, _ = W.packetize(rng, np.array([10_000_000]), np.array([0], dtype=np.uint64),
                               100_000_000, 10**12)
    rate = wire[:-1].astype(np.int64).sum() * 8 / (int(now[-1]) / 1e9)
    assert abs(rate / 100_000_000 - 1) < 0.01


def _passing(now, wire, keys, ect):
    return np.full(len(now), L.V_PASS_MOUSE, dtype=np.uint8)


def test_flood_mix_aimd_grows_when_nothing_drops_and_the_flood_is_constant():
    wl = W.flood_mix(_passing, seed=1, duration_ns=200_000_000, n_aimd=2, mice_load=0.0)
    rounds = wl.now_ns // np.uint64(wl.settings["rtt_ns"])
    aimd0 = np.bincount(rounds[wl.flow_id == 0].astype(np.int64))
    assert aimd0[0] == W.AIMD_INITIAL_WINDOW
    assert aimd0[1] == 2 * W.AIMD_INITIAL_WINDOW  # slow start doubles
    flood = np.bincount(rounds[wl.flow_id == 2].astype(np.int64))
    assert flood.max() - flood.min() <= 1
    assert wl.flows.proto[2] == W.IPPROTO_UDP and not wl.flows.ect[2]
    assert wl.flows.ect[0] and wl.flows.ect[1]
    assert np.array_equal(wl.verdicts, np.zeros(len(wl), dtype=np.uint8))


def test_flood_mix_aimd_halves_on_every_congested_round():
    def drop_aimd(now, wire, keys, ect):
        return np.where(ect, L.V_DROP_HEAVY, L.V_PASS_MOUSE).astype(np.uint8)

    wl = W.flood_mix(drop_aimd, seed=1, duration_ns=100_000_000, n_aimd=1, mice_load=0.0)
    rounds = wl.now_ns // np.uint64(wl.settings["rtt_ns"])
    sent = np.bincount(rounds[wl.flow_id == 0].astype(np.int64))
    assert list(sent[:5]) == [10, 5, 2, 1, 1]


def test_unknown_and_closed_loop_names_are_refused_by_open_loop():
    with pytest.raises(ValueError, match="unknown"):
        W.open_loop("nope")
    with pytest.raises(ValueError, match="closed loop"):
        W.open_loop("flood")
