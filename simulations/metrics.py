"""What a run did, measured against exact ground truth from the packet table.

Owns: the definitions of every number the sweeps report (docs/tuning.md
quotes them): per-window heavy-hitter truth, precision / recall / F1, average
relative error, detection delay, mice loss, conformance violations, Jain's
index among heavy flows, and the state memory of a configuration.
Rule: ground truth is counted from the packets offered (every frame, passed
or dropped, as the sketch counts demand), in integers; conformance is checked
exactly in integer nano-bits over every interval that ends at a passed frame.
Definitions (per window e = now // window_ns, per flow f):
  * truly heavy (f, e): f's offered bytes in window e >= threshold.
  * detected (f, e): the sketch's current-window estimate reached the
    threshold at some frame of f in e; estimates only grow within a window,
    so this is the classification at f's last frame in e.
  * mouse (f, e): f's bytes are under the threshold in e and in e - 1 (the
    data path also calls a flow heavy on its previous window's count).
  * fairness: Jain's index over heavy flows of passed bytes / max-min fair
    share (demand-normalised, `jain_heavy`), and of plain mean throughput
    while heavy (`jain_heavy_throughput`, for flows that all want more).
  * short transfer: a flow whose whole offered size is <= SMALL_FLOW_BYTES
    (independent of the threshold, so thresholds can be compared on it).
Must not know: how workloads are generated, how the model decides, files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from natra.kernel import layout as L

FLOW_SLOT_BYTES = 64 + 40  # sizeof(struct natra_flow) + sizeof(struct natra_flow_key)
CELL_BYTES = 24  # sizeof(struct natra_cell)
INT64_SAFE = 1 << 62  # sums stay below this to be exact in int64
# A "short transfer" by total size, whatever the threshold: DCTCP's query and
# short-message class. Each loss of one costs it a retransmit timeout (~1 s,
# docs/DATAPATH measurements), so we count the transfers hit, not only bytes.
SMALL_FLOW_BYTES = 100_000
# window_truth counts (flow, window) pairs in a dense table when it has at most
# this many slots per packet (or DENSE_PAIRS_MIN), else it sorts.
DENSE_PAIRS_PER_PACKET = 4
DENSE_PAIRS_MIN = 1 << 22
_PASSING = np.array(sorted(L.PASSING_VERDICTS), dtype=np.uint8)
_DROPPING = np.array(sorted(L.DROPPING_VERDICTS), dtype=np.uint8)


def state_memory_bytes(width: int, depth: int, flow_table: int) -> int:
    """Bytes of BPF map values one Pod needs: both directions' sketch + the flow slots."""
    return L.NDIRS * depth * width * CELL_BYTES + flow_table * FLOW_SLOT_BYTES


def passed_mask(verdicts: np.ndarray) -> np.ndarray:
    return np.isin(verdicts, _PASSING)


def dropped_mask(verdicts: np.ndarray) -> np.ndarray:
    return np.isin(verdicts, _DROPPING)


# ---- per (flow, window) ground truth --------------------------------------------

@dataclass(frozen=True)
class WindowTruth:
    """Bytes per (flow, window) pair present in a packet table."""

    window_ns: int
    flow: np.ndarray  # int64[P], sorted by (flow, epoch)
    epoch: np.ndarray  # int64[P]
    bytes: np.ndarray  # int64[P] offered bytes
    pair_of_packet: np.ndarray  # int64[n]: pair index of each packet
    prev_bytes: np.ndarray  # int64[P]: same flow's bytes in epoch - 1 (0 if none)


def window_truth(now_ns: np.ndarray, wire_len: np.ndarray, flow_id: np.ndarray,
                 window_ns: int) -> WindowTruth:
    epoch = (np.asarray(now_ns, dtype=np.uint64) // np.uint64(window_ns)).astype(np.int64)
    fid = np.asarray(flow_id, dtype=np.int64)
    n_epochs = int(epoch.max()) + 2 if epoch.size else 1
    tag = fid * n_epochs + epoch
    span = (int(fid.max()) + 1) * n_epochs if fid.size else 1
    if span <= max(DENSE_PAIRS_PER_PACKET * tag.shape[0], DENSE_PAIRS_MIN):
        # every (flow, window) slot fits in a table: rank the present ones, no sort
        present = np.bincount(tag, minlength=span) > 0
        pairs = np.flatnonzero(present)
        inverse = (np.cumsum(present) - 1)[tag]
    else:
        pairs, inverse = np.unique(tag, return_inverse=True)
        inverse = inverse.reshape(-1)
    sums = np.zeros(pairs.shape[0], dtype=np.int64)
    np.add.at(sums, inverse, np.asarray(wire_len, dtype=np.int64))
    flow, ep = pairs // n_epochs, pairs % n_epochs
    prev = np.zeros_like(sums)
    at = np.searchsorted(pairs, pairs - 1)
    found = (at < pairs.shape[0]) & (pairs[np.minimum(at, pairs.shape[0] - 1)] == pairs - 1) & (ep > 0)
    prev[found] = sums[at[found]]
    return WindowTruth(window_ns, flow, ep, sums, inverse, prev)


def pair_max(truth: WindowTruth, values: np.ndarray) -> np.ndarray:
    """Per pair, the largest of `values` over the pair's packets."""
    out = np.zeros(truth.flow.shape[0], dtype=np.uint64)
    np.maximum.at(out, truth.pair_of_packet, np.asarray(values, dtype=np.uint64))
    return out


@dataclass(frozen=True)
class HeavyHitterScore:
    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int
    are: float  # mean over all pairs of (estimate - true) / true
    are_heavy: float  # same over the truly heavy pairs


def heavy_hitter_score(truth: WindowTruth, estimates: np.ndarray, threshold: int) -> HeavyHitterScore:
    est = pair_max(truth, estimates).astype(np.int64)
    heavy = truth.bytes >= threshold
    detected = est >= threshold
    tp = int(np.count_nonzero(heavy & detected))
    fp = int(np.count_nonzero(~heavy & detected))
    fn = int(np.count_nonzero(heavy & ~detected))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    rel = (est - truth.bytes) / np.maximum(truth.bytes, 1)
    are = float(rel.mean()) if rel.size else 0.0
    are_heavy = float(rel[heavy].mean()) if heavy.any() else 0.0
    return HeavyHitterScore(precision, recall, f1, tp, fp, fn, are, are_heavy)


# ---- detection delay ---------------------------------------------------------

def detection_delays_ns(now_ns: np.ndarray, flow_id: np.ndarray, heavy_flag: np.ndarray,
                        truth: WindowTruth, threshold: int) -> tuple[np.ndarray, int]:
    """Per flow that is truly heavy in some window: ns from its first frame to its first heavy frame.

    Returns (delays of detected elephants, count never flagged heavy).
    """
    elephants = np.unique(truth.flow[truth.bytes >= threshold])
    if elephants.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    fid = np.asarray(flow_id, dtype=np.int64)
    now = np.asarray(now_ns, dtype=np.int64)
    n_flows = int(fid.max()) + 1
    big = np.iinfo(np.int64).max
    first = np.full(n_flows, big, dtype=np.int64)
    np.minimum.at(first, fid, now)
    flagged = np.asarray(heavy_flag, dtype=bool)
    first_heavy = np.full(n_flows, big, dtype=np.int64)
    np.minimum.at(first_heavy, fid[flagged], now[flagged])
    fh = first_heavy[elephants]
    seen = fh != big
    return (fh[seen] - first[elephants][seen]), int(np.count_nonzero(~seen))


# ---- conformance -------------------------------------------------------------

def excess_over_bucket(now_ns: np.ndarray, wire_len: np.ndarray, rate_bps: int, depth_nbit: int) -> int:
    """Frames i at which some interval [t_j, t_i] carried more than rate*t + depth.

    In nano-bits: sum of cost_j..cost_i > rate_bps * (t_i - t_j) + depth_nbit,
    with cost = len * 8e9. This is the Lindley recursion of a bucket that
    admits everything: b_i = max(b_{i-1} - rate * dt, 0) + cost_i, and a
    violation is b_i > depth. Closed form: b_i = (C_i - r t_i) + max_{j<=i}
    (r t_j - C_{j-1}), exact in int64 after dividing by gcd(8e9, rate), else
    in Python integers.
    """
    n = len(now_ns)
    if n == 0:
        return 0
    g = math.gcd(L.NBIT_PER_BYTE, rate_bps)
    unit, drain = L.NBIT_PER_BYTE // g, rate_bps // g
    limit = depth_nbit // g  # b*g > depth  <=>  b > depth // g
    t = np.asarray(now_ns, dtype=np.uint64) - np.uint64(now_ns[0])
    wire = np.asarray(wire_len, dtype=np.int64)
    total = int(wire.sum()) * unit
    span = int(t[-1]) * drain
    if total + span < INT64_SAFE:
        cost = wire * unit
        rt = t.astype(np.int64) * drain
    else:
        cost = wire.astype(object) * unit
        rt = t.astype(np.int64).astype(object) * drain
    cum = np.cumsum(cost)
    backlog = (cum - rt) + np.maximum.accumulate(rt - (cum - cost))
    return int(np.count_nonzero(backlog > limit))


def conformance_violations(now_ns, wire_len, verdicts, rate_bps: int, tau_nbit: int) -> int:
    """Passed frames that end an interval exceeding R*t + B (must be 0)."""
    keep = passed_mask(verdicts)
    return excess_over_bucket(np.asarray(now_ns)[keep], np.asarray(wire_len)[keep], rate_bps, tau_nbit)


# ---- fairness ------------------------------------------------------------------

def water_fill(demands: np.ndarray, capacity: float) -> np.ndarray:
    """Max-min fair shares of `capacity` for these demands."""
    order = np.argsort(demands)
    share = np.zeros(demands.shape[0], dtype=float)
    left, remaining = float(capacity), demands.shape[0]
    for i in order:
        give = min(float(demands[i]), left / remaining)
        share[i] = give
        left -= give
        remaining -= 1
    return share


def jain(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=float)
    if values.size == 0 or not np.any(values):
        return 1.0
    return float(values.sum() ** 2 / (values.size * (values**2).sum()))


def heavy_fairness(truth: WindowTruth, passed_bytes_per_pair: np.ndarray,
                   threshold: int) -> tuple[float, int]:
    """Jain's index of heavy flows' throughput normalised by their max-min fair share.

    In each window, the truly heavy flows' offered bytes are their demands and
    what they were let through in total is the capacity shared; a flow's
    score is its passed bytes over its fair share, summed over the windows in
    which it is heavy. Returns (Jain's index over flows, number of flows).
    A flow that got exactly its max-min share everywhere scores 1.
    """
    heavy = truth.bytes >= threshold
    if not heavy.any():
        return 1.0, 0
    flows, epochs = truth.flow[heavy], truth.epoch[heavy]
    demand, passed = truth.bytes[heavy], passed_bytes_per_pair[heavy]
    fair = np.zeros(flows.shape[0], dtype=float)
    order = np.argsort(epochs, kind="stable")
    bounds = np.flatnonzero(np.diff(epochs[order])) + 1
    for group in np.split(order, bounds):
        fair[group] = water_fill(demand[group], float(passed[group].sum()))
    ids, inv = np.unique(flows, return_inverse=True)
    got = np.bincount(inv, weights=passed.astype(float), minlength=ids.shape[0])
    owed = np.bincount(inv, weights=fair, minlength=ids.shape[0])
    scored = owed > 0
    return jain(got[scored] / owed[scored]), int(ids.shape[0])


def heavy_throughput_fairness(truth: WindowTruth, passed_bytes_per_pair: np.ndarray, threshold: int) -> float:
    """Jain's index of heavy flows' mean passed bytes per window in which they are heavy.

    Not normalised by demand: meaningful when every heavy flow wants more
    than its share (long-lived TCP flows beside a flood), where a demand-
    normalised index is blind, since a TCP flow's demand shrinks with its
    losses and marks.
    """
    heavy = truth.bytes >= threshold
    if not heavy.any():
        return 1.0
    ids, inv = np.unique(truth.flow[heavy], return_inverse=True)
    got = np.bincount(inv, weights=passed_bytes_per_pair[heavy].astype(float), minlength=ids.shape[0])
    windows = np.bincount(inv, minlength=ids.shape[0])
    return jain(got / windows)


# ---- how many flows the run actually had ------------------------------------------

def flow_counts(now_ns: np.ndarray, flow_id: np.ndarray, truth: WindowTruth, duration_ns: int) -> dict:
    """Flows seen, flows per window (mean and max) and the mean number of flows active at once.

    A flow is active from its first to its last frame; the mean concurrency is
    the sum of those spans over the run's length (Little's law, measured).
    """
    fid = np.asarray(flow_id, dtype=np.int64)
    if fid.size == 0:
        return {"flows": 0, "flows_per_window_mean": 0.0, "flows_per_window_max": 0, "concurrency_mean": 0.0}
    now = np.asarray(now_ns, dtype=np.int64)
    ids, first = np.unique(fid, return_index=True)
    _, last_rev = np.unique(fid[::-1], return_index=True)
    last = fid.size - 1 - last_rev
    spans = now[last] - now[first]
    per_window = np.bincount(truth.epoch)
    per_window = per_window[per_window > 0] if per_window.size else per_window
    return {"flows": int(ids.size), "flows_per_window_mean": float(per_window.mean()),
            "flows_per_window_max": int(per_window.max()),
            "concurrency_mean": float(spans.sum()) / max(duration_ns, 1)}


# ---- everything at once -------------------------------------------------------

def evaluate(now_ns, wire_len, flow_id, verdicts, heavy_flag, estimates, *, rate_bps: int, tau_nbit: int,
             reserve_nbit: int, threshold: int, window_ns: int, width: int, depth: int,
             flow_table: int, duration_ns: int) -> dict:
    """Every metric of one run, as a flat dict of plain numbers."""
    truth = window_truth(now_ns, wire_len, flow_id, window_ns)
    hh = heavy_hitter_score(truth, estimates, threshold)
    delays, undetected = detection_delays_ns(now_ns, flow_id, heavy_flag, truth, threshold)
    wire = np.asarray(wire_len, dtype=np.int64)
    dropped = dropped_mask(verdicts)
    passed = ~dropped
    pair = truth.pair_of_packet
    mouse_pair = (truth.bytes < threshold) & (truth.prev_bytes < threshold)
    mouse_pkt = mouse_pair[pair]
    mice_offered = int(wire[mouse_pkt].sum())
    mice_dropped = int(wire[mouse_pkt & dropped].sum())
    passed_per_pair = np.bincount(pair, weights=np.where(passed, wire, 0), minlength=truth.flow.shape[0])
    jain_index, n_heavy_flows = heavy_fairness(truth, passed_per_pair.astype(np.int64), threshold)
    fids = np.asarray(flow_id, dtype=np.int64)
    flow_bytes = np.bincount(fids, weights=wire)
    small_flow = (flow_bytes <= SMALL_FLOW_BYTES) & (np.bincount(fids, minlength=flow_bytes.shape[0]) > 0)
    small_pkt = small_flow[fids]
    hit = np.bincount(fids[small_pkt & dropped], minlength=flow_bytes.shape[0]) > 0
    n_small = int(np.count_nonzero(small_flow))
    seconds = duration_ns / L.NS_PER_SEC
    classified_mouse = ~np.asarray(heavy_flag, dtype=bool)
    ms = 1e-6
    return {
        "packets": int(wire.shape[0]),
        "offered_load": float(wire.sum()) * 8 / (rate_bps * seconds),
        "passed_load": float(wire[passed].sum()) * 8 / (rate_bps * seconds),
        "mice_load": mice_offered * 8 / (rate_bps * seconds),
        "precision": hh.precision,
        "recall": hh.recall,
        "f1": hh.f1,
        "hh_true_positives": hh.true_positives,
        "hh_false_positives": hh.false_positives,
        "hh_false_negatives": hh.false_negatives,
        "are": hh.are,
        "are_heavy": hh.are_heavy,
        "elephants": int(delays.shape[0]) + undetected,
        "elephants_undetected": undetected,
        "detect_delay_p50_ms": float(np.median(delays)) * ms if delays.size else float("nan"),
        "detect_delay_p95_ms": float(np.percentile(delays, 95)) * ms if delays.size else float("nan"),
        "mice_offered_bytes": mice_offered,
        "mice_dropped_bytes": mice_dropped,
        "mice_loss": mice_dropped / mice_offered if mice_offered else 0.0,
        "small_flows": n_small,
        "small_flows_hit": int(np.count_nonzero(hit)) / max(n_small, 1),
        "small_flow_loss": float(wire[small_pkt & dropped].sum()) / max(float(wire[small_pkt].sum()), 1.0),
        "mouse_classified_dropped_bytes": int(wire[classified_mouse & dropped].sum()),
        "mice_envelope_excess": excess_over_bucket(np.asarray(now_ns)[classified_mouse],
                                                   wire[classified_mouse], rate_bps, reserve_nbit),
        "conformance_violations": conformance_violations(now_ns, wire_len, verdicts, rate_bps, tau_nbit),
        "jain_heavy": jain_index,
        "jain_heavy_throughput": heavy_throughput_fairness(truth, passed_per_pair, threshold),
        "heavy_flows": n_heavy_flows,
        "marked_packets": int(np.count_nonzero(np.asarray(verdicts) == L.V_MARK)),
        "dropped_bytes": int(wire[dropped].sum()),
        "state_bytes": state_memory_bytes(width, depth, flow_table),
        **flow_counts(now_ns, flow_id, truth, duration_ns),
    }
