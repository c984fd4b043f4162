"""simulations.metrics: ground truth and every reported number, against brute force."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from natra.simulations import metrics as M

from natra.kernel import layout as L


def _brute_excess(now, wire, rate_bps, depth_nbit):
    """Frames i ending some interval [t_j, t_i] with more than rate*t + depth (O(n^2), Python ints)."""
    bad = 0
    for i in range(len(now)):
        total = 0
        for j in range(i, -1, -1):
            total += int(wire[j]) * L.NBIT_PER_BYTE
            if total > rate_bps * (int(now[i]) - int(now[j])) + depth_nbit:
                bad += 1
                break
    return bad


frames = st.lists(st.tuples(st.integers(0, 2_000_000), st.integers(1, 70_000)), min_size=1, max_size=40)


@given(frames=frames, rate=st.sampled_from([1000, 1_000_000, 123_456_789, 10**9, 10**15]),
       depth_bytes=st.integers(1, 200_000))
@settings(max_examples=150, deadline=None)
def test_excess_over_bucket_equals_brute_force(frames, rate, depth_bytes):
    gaps, wire = zip(*frames, strict=True)
    now = np.cumsum(np.array(gaps, dtype=np.uint64)) + np.uint64(10**12)
    wire = np.array(wire, dtype=np.uint32)
    depth = depth_bytes * L.NBIT_PER_BYTE
    assert M.excess_over_bucket(now, wire, rate, depth) == _brute_excess(now, wire, rate, depth)


def test_excess_uses_exact_integers_when_int64_would_overflow():
    # 1 Pbit/s over 100 s is 1e26 nbit: only the Python-integer path can hold it.
    now = np.array([0, 100 * L.NS_PER_SEC, 100 * L.NS_PER_SEC], dtype=np.uint64)
    wire = np.array([1000, 1000, 1000], dtype=np.uint32)
    depth = 1500 * L.NBIT_PER_BYTE
    assert M.excess_over_bucket(now, wire, 10**15, depth) == 1
    assert M.excess_over_bucket(now, wire, 10**15, depth) == _brute_excess(now, wire, 10**15, depth)


def test_conformance_counts_only_passed_frames():
    now = np.zeros(3, dtype=np.uint64)
    wire = np.array([1000, 1000, 1000], dtype=np.uint32)
    tau = 2000 * L.NBIT_PER_BYTE
    passed_all = np.array([L.V_PASS_MOUSE, L.V_PASS_HEAVY, L.V_MARK], dtype=np.uint8)
    one_dropped = np.array([L.V_PASS_MOUSE, L.V_DROP_HEAVY, L.V_PASS_MOUSE], dtype=np.uint8)
    assert M.conformance_violations(now, wire, passed_all, 10**6, tau) == 1
    assert M.conformance_violations(now, wire, one_dropped, 10**6, tau) == 0


def _table():
    # flow 0: 3 frames in window 0 (300 B), 1 frame in window 1 (100 B); flow 1: 50 B in window 1.
    now = np.array([0, 10, 20, 105, 150], dtype=np.uint64)
    wire = np.array([100, 100, 100, 100, 50], dtype=np.uint32)
    fid = np.array([0, 0, 0, 0, 1], dtype=np.int32)
    return now, wire, fid


def test_window_truth_counts_bytes_per_flow_and_window_with_the_previous_window():
    now, wire, fid = _table()
    t = M.window_truth(now, wire, fid, window_ns=100)
    assert list(zip(t.flow.tolist(), t.epoch.tolist(), t.bytes.tolist(), t.prev_bytes.tolist(),
                    strict=True)) == [(0, 0, 300, 0), (0, 1, 100, 300), (1, 1, 50, 0)]
    assert t.pair_of_packet.tolist() == [0, 0, 0, 1, 2]


def test_exact_estimates_score_perfectly_and_an_inflated_mouse_is_a_false_positive():
    now, wire, fid = _table()
    t = M.window_truth(now, wire, fid, window_ns=100)
    exact = np.array([100, 200, 300, 100, 50], dtype=np.uint64)
    s = M.heavy_hitter_score(t, exact, threshold=250)
    assert (s.precision, s.recall, s.f1, s.are) == (1.0, 1.0, 1.0, 0.0)
    inflated = exact.copy()
    inflated[4] = 260  # flow 1 collided with flow 0
    s = M.heavy_hitter_score(t, inflated, threshold=250)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (1, 1, 0)
    assert s.precision == 0.5 and s.recall == 1.0
    assert abs(s.are - (210 / 50) / 3) < 1e-12


def test_an_underestimate_is_a_false_negative():
    now, wire, fid = _table()
    t = M.window_truth(now, wire, fid, window_ns=100)
    low = np.array([100, 200, 240, 100, 50], dtype=np.uint64)
    s = M.heavy_hitter_score(t, low, threshold=250)
    assert (s.true_positives, s.false_negatives, s.recall) == (0, 1, 0.0)


def test_detection_delay_runs_from_first_frame_to_first_heavy_frame():
    now, wire, fid = _table()
    t = M.window_truth(now, wire, fid, window_ns=100)
    heavy = np.array([False, False, True, True, False])
    delays, missed = M.detection_delays_ns(now, fid, heavy, t, threshold=250)
    assert delays.tolist() == [20] and missed == 0
    delays, missed = M.detection_delays_ns(now, fid, np.zeros(5, dtype=bool), t, threshold=250)
    assert delays.size == 0 and missed == 1


def test_water_fill_is_max_min_fair():
    shares = M.water_fill(np.array([10.0, 100.0, 100.0]), 110.0)
    assert shares.tolist() == [10.0, 50.0, 50.0]
    assert M.water_fill(np.array([5.0, 5.0]), 100.0).tolist() == [5.0, 5.0]


def test_jain_index_bounds():
    assert M.jain(np.array([3.0, 3.0, 3.0])) == 1.0
    assert abs(M.jain(np.array([1.0, 0.0, 0.0, 0.0])) - 0.25) < 1e-12


def test_heavy_fairness_normalises_by_fair_share():
    # two heavy flows in one window; flow 0 demands little and gets it all: still fair.
    t = M.WindowTruth(100, np.array([0, 1]), np.array([0, 0]), np.array([300, 3000]),
                      np.array([0, 1]), np.array([0, 0]))
    fair, n = M.heavy_fairness(t, np.array([300, 1000]), threshold=250)
    assert n == 2 and fair == 1.0
    unfair, _ = M.heavy_fairness(t, np.array([0, 1300]), threshold=250)
    assert unfair < 0.6


def test_state_memory_of_the_default_sketch():
    assert M.state_memory_bytes(1024, 4, 4096) == 2 * 4 * 1024 * 24 + 4096 * (64 + 40) == 622_592


def test_evaluate_reports_mice_loss_from_dropped_mouse_windows():
    now, wire, fid = _table()
    verdicts = np.array([L.V_PASS_HEAVY, L.V_PASS_HEAVY, L.V_PASS_HEAVY, L.V_DROP_HEAVY, L.V_DROP_MOUSE],
                        dtype=np.uint8)
    heavy = np.array([False, False, True, True, False])
    est = np.array([100, 200, 300, 100, 50], dtype=np.uint64)
    r = M.evaluate(now, wire, fid, verdicts, heavy, est, rate_bps=10**9, tau_nbit=10**15,
                   reserve_nbit=10**14, threshold=250, window_ns=100, width=64, depth=2, flow_table=16,
                   duration_ns=200)
    # flow 0's window 1 (100 B) is not a mouse: its previous window was heavy.
    assert r["mice_offered_bytes"] == 50 and r["mice_dropped_bytes"] == 50 and r["mice_loss"] == 1.0
    assert r["mouse_classified_dropped_bytes"] == 50
    assert r["conformance_violations"] == 0
    assert r["recall"] == 1.0 and r["precision"] == 1.0
    assert r["state_bytes"] == M.state_memory_bytes(64, 2, 16)


@given(packets=st.lists(st.tuples(st.integers(0, 5_000), st.integers(0, 30), st.integers(60, 1514)),
                        min_size=1, max_size=60))
@settings(max_examples=60, deadline=None)
def test_window_truth_dense_table_and_sorting_agree(packets):
    packets.sort()
    now = np.array([p[0] for p in packets], dtype=np.uint64)
    fid = np.array([p[1] for p in packets], dtype=np.int32)
    wire = np.array([p[2] for p in packets], dtype=np.uint32)
    dense = M.window_truth(now, wire, fid, window_ns=700)
    saved = M.DENSE_PAIRS_PER_PACKET, M.DENSE_PAIRS_MIN
    M.DENSE_PAIRS_PER_PACKET, M.DENSE_PAIRS_MIN = 0, 0  # force the sorting path
    try:
        sorted_ = M.window_truth(now, wire, fid, window_ns=700)
    finally:
        M.DENSE_PAIRS_PER_PACKET, M.DENSE_PAIRS_MIN = saved
    for name in ("flow", "epoch", "bytes", "pair_of_packet", "prev_bytes"):
        assert np.array_equal(getattr(dense, name), getattr(sorted_, name)), name
    assert dense.bytes.sum() == wire.sum()
