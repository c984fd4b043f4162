"""The arithmetic of the benchmarks: percentiles, spreads, fairness, conformance.

Owns: every number the benchmark report derives from raw measurements:
nearest-rank percentiles, the median of repeated runs with its min-max
spread, Jain's fairness index, and "bytes over R*t+B", the largest excess of
delivered bytes over what a limiter may let through in any window of a
receiver's per-interval byte counts.
Rule: pure functions of their arguments (no clock, no I/O, no subprocess), so
the smoke test can check them without a kernel.
Must not know: iperf3, namespaces, CNI, plotting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# A full-size TCP segment through a veth: 1448 bytes of payload (MSS 1460 less
# 12 bytes of timestamp option) in a 1514-byte frame (Ethernet 14 + IPv4 20 +
# TCP 32). Limiters count frame bytes; iperf3 reports payload bytes.
TCP_PAYLOAD_BYTES = 1448
TCP_FRAME_BYTES = 1514
WIRE_PER_PAYLOAD = TCP_FRAME_BYTES / TCP_PAYLOAD_BYTES


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered) / 100)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Spread:
    """The median of repeated runs and the range they covered."""

    median: float
    low: float  # smallest run
    high: float  # largest run
    runs: int

    def as_dict(self) -> dict:
        return {"median": self.median, "low": self.low, "high": self.high, "runs": self.runs}


def spread(values: Sequence[float]) -> Spread:
    """Median (the mean of the two middle values for an even count) and min-max."""
    finite = sorted(v for v in values if v == v)
    if not finite:
        nan = float("nan")
        return Spread(nan, nan, nan, 0)
    n = len(finite)
    mid = finite[n // 2] if n % 2 else (finite[n // 2 - 1] + finite[n // 2]) / 2
    return Spread(mid, finite[0], finite[-1], n)


def jain(shares: Sequence[float]) -> float:
    """Jain's fairness index: 1 for equal shares, 1/n when one flow takes all."""
    if not shares:
        return float("nan")
    total = sum(shares)
    squares = sum(x * x for x in shares)
    if squares == 0:
        return float("nan")
    return total * total / (len(shares) * squares)


@dataclass(frozen=True)
class Interval:
    """Bytes a receiver got between two instants (seconds since the test began)."""

    start_s: float
    end_s: float
    payload_bytes: int


def bytes_over(intervals: Sequence[Interval], rate_bps: int, burst_bits: int,
               wire_per_payload: float = WIRE_PER_PAYLOAD) -> float:
    """Largest excess, in wire bytes, of any run of consecutive intervals over R*t + B.

    For every window [start of interval i, end of interval j] the wire bytes
    delivered (payload scaled by `wire_per_payload`) are compared with
    rate*(end - start)/8 + burst/8; the result is the largest difference, or 0
    when every window keeps the promise. O(n): for each j the best i is the one
    minimising (bytes before i) - rate * (start of i).
    """
    rate_bytes_s = rate_bps / 8
    burst_bytes = burst_bits / 8
    worst = 0.0
    before = 0.0  # wire bytes delivered before the current interval
    best_start = math.inf  # min over i <= j of before_i - rate * start_i
    for iv in intervals:
        best_start = min(best_start, before - rate_bytes_s * iv.start_s)
        before += iv.payload_bytes * wire_per_payload
        excess = before - rate_bytes_s * iv.end_s - best_start - burst_bytes
        worst = max(worst, excess)
    return worst


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is 0 or NaN."""
    if not denominator or denominator != denominator:
        return float("nan")
    return numerator / denominator
