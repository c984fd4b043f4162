"""The model's guarantees (docs/design.md, "Guarantees"), each as a property over generated traffic.

Every property is the exact envelope docs/design.md states, checked on the
pure-Python specification (Model(..., accelerator=False)); the long runs use
the batch API, which tests/test_reference_batch.py proves identical.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from natra.reference.engine import Batch, Model, drain, process_batch
from natra.reference.hashing import key_columns, key_hashes
from natra.reference.key import make_key, parse_frame

from natra.kernel import layout as L
from natra.kernel.params import POLICE_BURST_FLOOR_BITS, DataPathParams, params_for, to_config

ROOT = Path(__file__).resolve().parents[1]
PASSING = L.PASSING_VERDICTS
SETTINGS = settings(max_examples=200, deadline=None)
U64_MAX = 2**64 - 1
FRAME_SIZES = [60, 64, 100, 576, 1500, 9000, 65535]


@pytest.fixture(scope="module")
def accelerator():
    """Long runs use the batch API; build its C accelerator if missing (it is
    proven equal to the spec in test_reference_batch.py). Without gcc they run
    on the pure-Python fallback, slower but the same."""
    from natra.reference import accel

    if not accel.available() and shutil.which("make") and shutil.which("gcc"):
        subprocess.run(["make", "-s", "reference/_natra_fast.so"], cwd=ROOT, check=False, capture_output=True)
        accel.reload()
    return accel.available()


def flow_key(i: int, proto: int = 6) -> bytes:
    return make_key(b"\x00" * 10 + b"\xff\xff" + bytes([10, 0, 0, 1]),
                    b"\x00" * 10 + b"\xff\xff" + bytes([10, 0, 0, 2]), 40000 + i, 80, 0x0800, proto, 0)


def config(rate, burst, reserve, threshold, window=100_000_000, width=64, depth=4, ecn=True, early=50):
    return to_config(DataPathParams(rate, burst, reserve, width, depth, threshold, window, ecn, early))


def charged(wire_len: int) -> int:
    return min(wire_len, L.MAX_ACCOUNTED_LEN)


def max_interval_excess(admitted: list[tuple[int, int]], rate: int, tau: int) -> int:
    """max over admission pairs i <= j of (cost of i..j) - (rate*(t_j - t_i) + tau), exactly.

    With prefix sums S, the bound for i..j is S_j - S_{i-1} <= rate*(t_j - t_i) + tau,
    i.e. (S_j - rate*t_j) - min_{i<=j}(S_{i-1} - rate*t_i) <= tau: one sweep.
    """
    worst = -(2**200)
    low = None
    total = 0
    for t, cost in admitted:
        start = total - rate * t  # S_{i-1} - rate*t_i for i = this frame
        low = start if low is None else min(low, start)
        total += cost
        worst = max(worst, (total - rate * t) - low - tau)
    return worst


@st.composite
def limits(draw, width=64):
    rate = draw(st.one_of(st.sampled_from([1000, 10**6, 10**7, 10**9, 10**12, 10**15]),
                          st.integers(1000, 10**15)))
    burst = draw(st.one_of(st.integers(1, 2000).map(lambda n: n * 1500 * 8),
                           st.integers(1, L.MAX_BURST_BITS)))
    burst = min(burst, L.MAX_BURST_BITS)
    reserve = burst * draw(st.integers(0, 60)) // 100
    threshold = draw(st.one_of(st.integers(1, 200_000), st.just(2**62)))
    window = draw(st.integers(1_000_000, 60_000_000_000))
    return config(rate, burst, reserve, threshold, window, width=width, ecn=draw(st.booleans()),
                  early=draw(st.integers(0, 100)))


@st.composite
def traffic(draw, nflows=6, max_events=150):
    """(gap ns, flow, wire_len, ect, direction) with gaps relative to a frame's time at `rate`."""
    return draw(st.lists(st.tuples(st.integers(0, 400), st.integers(0, nflows - 1),
                                   st.one_of(st.sampled_from(FRAME_SIZES), st.integers(1, 2**21)),
                                   st.booleans(), st.integers(0, 1)),
                         min_size=1, max_size=max_events))


def gap_ns(pct: int, size: int, rate: int) -> int:
    """`pct` % of the time `size` bytes take at `rate` (so 100 is exactly the rate)."""
    return charged(size) * L.NBIT_PER_BYTE * pct // (100 * rate)


@given(limits(), limits(), traffic(), st.integers(0, 2**62))
@SETTINGS
def test_conformance_over_every_interval(cfg0, cfg1, events, t0):
    """Guarantee 1: bytes admitted over any interval t are <= R*t + B, per direction."""
    cfg1 = config(cfg1.rate_bps, cfg1.tau_nbit // 10**9, (cfg1.tau_nbit - cfg1.heavy_line_nbit) // 10**9,
                  cfg1.threshold_bytes, cfg1.window_ns, width=cfg0.width)
    cfgs = [cfg0, cfg1]
    model = Model(cfgs, flow_table=4, accelerator=False)
    admitted = {0: [], 1: []}
    now = t0
    for pct, flow, size, ect, d in events:
        now += gap_ns(pct, size, cfgs[d].rate_bps)
        dec = model.process_key(flow_key(flow), size, now, d, ect)
        if dec.verdict in PASSING:
            admitted[d].append((now, charged(size) * L.NBIT_PER_BYTE))
        assert model.tables.state[d]["backlog_nbit"] <= cfgs[d].tau_nbit
    for d in (0, 1):
        assert max_interval_excess(admitted[d], cfgs[d].rate_bps, cfgs[d].tau_nbit) <= 0


def test_conformance_sweep_catches_an_excess():
    """The sweep is not vacuous: one byte over R*t + B is found."""
    rate, tau = 10**9, 10 * 10**9 * 8  # 1 Gbit/s, 10 bytes of burst
    ok = [(0, 5 * L.NBIT_PER_BYTE), (8, 6 * L.NBIT_PER_BYTE)]  # 11 bytes in 8 ns: 1 + 10 allowed
    assert max_interval_excess(ok, rate, tau) == 0
    bad = [(0, 5 * L.NBIT_PER_BYTE), (7, 6 * L.NBIT_PER_BYTE)]
    assert max_interval_excess(bad, rate, tau) > 0


@st.composite
def mice_and_floods(draw):
    """Mice at a fraction of R in small frames, heavy flows far above R in GSO frames."""
    rate = draw(st.sampled_from([10**6, 10**7, 10**8, 10**9]))
    burst_frames = draw(st.integers(20, 400))
    burst = burst_frames * 1500 * 8
    reserve = burst * draw(st.integers(5, 50)) // 100
    threshold = draw(st.integers(3000, 100_000))
    window = draw(st.integers(1_000_000, 1_000_000_000))
    cfg = config(rate, burst, reserve, threshold, window, width=256, early=draw(st.integers(0, 100)),
                 ecn=draw(st.booleans()))
    mice = draw(st.lists(st.tuples(st.integers(100, 2000), st.integers(0, 5), st.integers(60, 1500)),
                         min_size=5, max_size=80))
    flood_sizes = st.sampled_from([1500, 9000, 65535])
    floods = draw(st.lists(st.tuples(st.integers(0, 30), st.integers(6, 7), flood_sizes),
                           min_size=10, max_size=120))
    return cfg, mice, floods


def _timeline(cfg, stream, t0):
    now, out = t0, []
    for pct, flow, size in stream:
        now += gap_ns(pct, size, cfg.rate_bps)
        out.append((now, flow, size))
    return out


@given(mice_and_floods(), st.integers(0, 2**50))
@SETTINGS
def test_mice_first_envelope(case, t0):
    """Guarantee 2: if the frames classified mouse, fed alone to a GCRA of rate R and
    depth `reserve`, would all pass, the model passes all of them, whatever heavy
    flows send alongside."""
    cfg, mice, floods = case
    frames = sorted(_timeline(cfg, mice, t0) + _timeline(cfg, floods, t0), key=lambda f: f[0])
    model = Model([cfg, to_config(None, width=cfg.width, depth=cfg.depth)], accelerator=False)
    decided = [(t, size, model.process_key(flow_key(flow), size, t, 0, ect=True)) for t, flow, size in frames]
    reserve = cfg.tau_nbit - cfg.heavy_line_nbit
    backlog = last = 0
    envelope_holds = True
    for t, size, dec in decided:
        if dec.heavy:
            continue
        backlog, last = drain(backlog, last, t, cfg.rate_bps)
        if backlog + charged(size) * L.NBIT_PER_BYTE > reserve:
            envelope_holds = False
            break
        backlog += charged(size) * L.NBIT_PER_BYTE
    heavy_dropped = any(d.heavy and d.verdict not in PASSING for _, _, d in decided)
    event(f"mice envelope holds: {envelope_holds}, heavy frames dropped: {heavy_dropped}")
    if envelope_holds:
        assert all(d.verdict == L.V_PASS_MOUSE for _, _, d in decided if not d.heavy)


def test_mice_first_under_a_flood():
    """A fixed case where heavy frames are throttled and the mice lose nothing."""
    rate = 10**7
    cfg = config(rate, 200 * 1500 * 8, 40 * 1500 * 8, 20_000, 100_000_000, width=256)
    model = Model([cfg, to_config(None, width=256, depth=4)], accelerator=False)
    verdicts = {"mouse": [], "heavy": []}
    for i in range(20_000):  # 2 s: a 64 KB GSO flood every 1 ms (50x the rate) ...
        t = 10**9 + i * 100_000
        if i % 10 == 0:
            verdicts["heavy"].append(model.process_key(flow_key(99), 65535, t, 0).verdict)
        if i % 50 == 0:  # ... and 300 B mice from many flows (24 kbit/s)
            verdicts["mouse"].append(model.process_key(flow_key(i // 50 % 40), 300, t + 7, 0).verdict)
    assert set(verdicts["mouse"]) == {L.V_PASS_MOUSE}
    assert L.V_DROP_HEAVY in verdicts["heavy"] or L.V_DROP_SHARE in verdicts["heavy"]


@given(st.integers(1, 64).map(lambda w: 1 << (w.bit_length() - 1)), st.integers(1, 8),
       st.lists(st.tuples(st.integers(0, 20), st.integers(0, 30_000_000), st.integers(1, 70_000)),
                min_size=1, max_size=200),
       st.integers(1_000_000, 50_000_000), st.integers(0, 2**40))
@SETTINGS
def test_no_underestimate_within_a_window(width, depth, frames, window, t0):
    """Guarantee 3: the estimate is never below the flow's true bytes in the window."""
    cfg = config(10**9, 10**6, 0, 2**40, window, width=width, depth=depth)
    model = Model([cfg, to_config(None, width=width, depth=depth)], accelerator=False)
    exact: dict[tuple[int, int], int] = {}
    now = t0
    for flow, gap, size in frames:
        now += gap
        exact[(flow, now // window)] = exact.get((flow, now // window), 0) + size
        dec = model.process_key(flow_key(flow), size, now, 0)
        assert dec.estimate >= exact[(flow, now // window)]


def _cbr_batch(flows, duration_ns, t0, seed):
    """Constant-bit-rate flows: [(rate bit/s, frame bytes, key)] -> Batch sorted by time."""
    rng = np.random.default_rng(seed)
    times, ids, sizes = [], [], []
    for i, (rate, size, _) in enumerate(flows):
        gap = size * 8 * 10**9 // rate
        start = int(rng.integers(0, gap))
        t = np.arange(start, duration_ns, gap, dtype=np.uint64)
        times.append(t)
        ids.append(np.full(len(t), i))
        sizes.append(np.full(len(t), size))
    t, f, s = (np.concatenate(a) for a in (times, ids, sizes))
    order = np.argsort(t, kind="stable")
    t, f, s = t[order], f[order], s[order]
    keys = np.stack([np.frombuffer(k, dtype=np.uint8) for _, _, k in flows])
    return Batch(t + np.uint64(t0), s, np.zeros(len(t), np.uint8), keys[f], np.zeros(len(t), bool)), f, s


def jain(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(x.sum() ** 2 / (len(x) * (x**2).sum()))


@given(st.integers(2, 8), st.integers(120, 400), st.sampled_from([10**6, 10**7]),
       st.sampled_from([576, 1500, 9000]), st.integers(0, 2**32), st.integers(0, 2**62))
@SETTINGS
def test_fairness_equal_heavy_flows(accelerator, n, overload_pct, rate, size, seed, t0):
    """Guarantee 4: N equal CBR heavy flows above R/N get Jain's index >= 0.95.

    Envelope: the census counts flows seen in the current or previous window,
    so each flow sends several frames per window (window >= 4 frame gaps);
    with sparser flows N is undercounted and the share is too generous."""
    demand = rate * overload_pct // (100 * n)
    window = max(100_000_000, 4 * size * 8 * 10**9 // demand)
    threshold = max(demand * window // (8 * 10**9) // 4, 1)  # each flow is heavy
    # A bucket of 100 ms or 40 frames: shares are a long-run property (many bucket times).
    burst = max(rate // 10, 40 * size * 8)
    burst_time = burst * 10**9 // rate
    params = params_for(rate, burst, reserve_bits=burst // 10, threshold_bytes=threshold, window_ns=window)
    flows = [(demand, size, flow_key(i)) for i in range(n)]
    # long enough for 20 bucket times and for ~200 frames per flow's share in the measured half
    duration = max(20 * burst_time, 2 * 200 * 8 * size * n * 10**9 // rate)
    batch, fid, sizes = _cbr_batch(flows, duration, t0, seed)
    model = Model([to_config(params), to_config(None)])
    result = process_batch(model, batch)
    late = (batch.now_ns - np.uint64(t0)) >= duration // 2  # after the first burst has played out
    ok = np.isin(result.verdicts, list(PASSING)) & late
    got = np.bincount(fid[ok], weights=sizes[ok], minlength=n)
    assert jain(got) >= 0.95, got
    assert got.sum() * 8 * 10**9 <= rate * (duration // 2 + 1) + params.burst_bits * 10**9


@given(st.sampled_from([10**6, 2 * 10**6, 4 * 10**6]), st.integers(0, 2**32), st.integers(0, 2**62))
@SETTINGS
def test_udp_flood_cannot_starve_tcp_flows(accelerator, rate, seed, t0):
    """Guarantee 4: one UDP flood at 10 R next to 3 TCP flows at R/4 each: the
    three get (almost) all of their demand; the flood is held to what is left."""
    window = 100_000_000
    threshold = rate * window // (8 * 10**9) // 40  # R/4 flows are heavy
    params = params_for(rate, threshold_bytes=threshold, window_ns=window)
    flows = [(10 * rate, 1500, flow_key(0, proto=17))] + [(rate // 4, 1500, flow_key(i)) for i in (1, 2, 3)]
    duration = 2 * 10**9
    batch, fid, sizes = _cbr_batch(flows, duration, t0, seed)
    result = process_batch(Model([to_config(params), to_config(None)]), batch)
    late = (batch.now_ns - np.uint64(t0)) >= duration // 2
    ok = np.isin(result.verdicts, list(PASSING)) & late
    got = np.bincount(fid[ok], weights=sizes[ok], minlength=4)
    offered = np.bincount(fid[late], weights=sizes[late], minlength=4)
    assert (got[1:] >= 0.95 * offered[1:]).all(), (got, offered)
    assert got[0] <= 0.3 * rate / 8 * (duration / 2 / 1e9)


@given(st.integers(1, 30), st.integers(1_000_000, 1_000_000_000), st.integers(0, 2**50),
       st.lists(st.integers(0, 1000), min_size=0, max_size=5), st.integers(2, 6))
@SETTINGS
def test_ageing_stopped_flow_is_not_heavy_after_two_windows(heavy_frames, window, t0, others, later):
    """Guarantee 6: a flow that stops is a mouse again, and out of the census, two windows on."""
    cfg = config(10**9, 10**7, 10**6, 10_000, window, width=1024)
    stopped = flow_key(500)
    cols = key_columns(stopped, 1024, 4)
    for o in others:  # no other flow shares every cell of the stopped flow
        assume(key_columns(flow_key(o), 1024, 4) != cols)
    model = Model([cfg, to_config(None, width=1024, depth=4)], accelerator=False)
    now = t0
    for i in range(heavy_frames):
        now = t0 + i * (window // max(heavy_frames, 1)) // 2
        model.process_key(stopped, 9000, now, 0)
    assert model.process_key(stopped, 9000, now, 0).heavy  # it was heavy
    stop_epoch = now // window
    for j, o in enumerate(others):  # other mice keep the data path busy
        model.process_key(flow_key(o), 100, now + (j + 1) * window // 3, 0)
    probe_time = (stop_epoch + later) * window + window // 2
    dec = model.process_key(stopped, 100, probe_time, 0)
    assert not dec.heavy and dec.estimate == 100
    state = model.snapshot()["state"][0]
    assert state["heavy_now"] == 0 and state["heavy_prev"] == 0


@given(st.sampled_from([1, 2, 4, 8, 16]), st.integers(1, 60))
@settings(max_examples=200, deadline=None)
def test_flow_table_is_bounded(capacity, nflows):
    """Guarantee 6: per-flow state lives in a table of fixed size. Heavy flows in one
    window: the first flow of each slot (h1 mod size) owns it, the others share it."""
    cfg = config(10**6, 10**6, 10**5, 1, 100_000_000)
    model = Model([cfg, to_config(None, width=64, depth=4)], flow_table=capacity, accelerator=False)
    owners: dict[int, bytes] = {}
    for i in range(nflows):
        model.process_key(flow_key(i), 100, 10**9 + i, 0)
        owners.setdefault(key_hashes(flow_key(i))[0] % capacity, flow_key(i))
    snap = model.snapshot()
    assert set(snap["flows"]) == set(owners.values())
    assert len(snap["flows"]) <= capacity
    assert snap["counters"][0][L.C_FLOW_NEW] == len(owners)
    assert snap["counters"][0][L.C_FLOW_OVERFLOW] == nflows - len(owners)


def test_a_slot_is_shared_while_its_flow_is_live_then_taken():
    """One slot, two heavy flows: B shares A's slot while A was counted in this window
    or the last; once A has been idle a whole window, B takes the slot, zeroed."""
    window = 100_000_000
    cfg = config(10**9, 10**6, 10**5, 1, window)
    model = Model([cfg, to_config(None, width=64, depth=4)], flow_table=1, accelerator=False)
    a, b = flow_key(1), flow_key(2)
    t0 = 10 * window
    model.process_key(a, 100, t0, 0)
    model.process_key(b, 200, t0 + 1, 0)  # same window: shared
    model.process_key(b, 300, t0 + window, 0)  # next window: A was counted in the last
    snap = model.snapshot()
    assert list(snap["flows"]) == [a]
    assert snap["flows"][a]["passed_bytes"] == 600  # B's frames are charged to the shared slot
    assert snap["counters"][0][L.C_FLOW_NEW] == 1 and snap["counters"][0][L.C_FLOW_OVERFLOW] == 2
    assert snap["state"][0]["heavy_now"] == 1  # the census counts the slot once
    model.process_key(b, 400, t0 + 3 * window, 0)  # A idle in windows t0+2W.. : B takes it
    snap = model.snapshot()
    assert list(snap["flows"]) == [b]
    assert snap["flows"][b]["passed_bytes"] == 400
    assert snap["flows"][b]["h1"] == key_hashes(b)[0] and snap["flows"][b]["h2"] == key_hashes(b)[1]
    assert snap["counters"][0][L.C_FLOW_NEW] == 2 and snap["counters"][0][L.C_FLOW_OVERFLOW] == 2


RATES = [L.MIN_RATE_BPS, 10**6, 10**9, 10**12, L.MAX_RATE_BPS]


@given(st.sampled_from(RATES), st.sampled_from([1, 12_000, 2**32, L.MAX_BURST_BITS]),
       st.integers(0, 99), st.lists(st.tuples(st.sampled_from([0, 1, 10**3, 10**9, 2**40, 2**62, 2**63]),
                                              st.integers(1, 2**22), st.integers(0, 3)),
                                    min_size=1, max_size=40),
       st.sampled_from([0, 1, 2**63, U64_MAX - 2**63]), st.integers(1, 2**62))
@SETTINGS
def test_arithmetic_at_the_extremes(rate, burst, reserve_pct, frames, t0, threshold):
    """Guarantee 5: any rate 1 kbit/s..1 Pbit/s, burst up to 2^34 bits, idle gaps up to
    2^63 ns, the first frame at any time: conformance holds and every state value fits
    u64 (numpy refuses larger ints; the C twin, wrapping at 2^64, agrees bit for bit)."""
    cfg = config(rate, burst, burst * reserve_pct // 100, threshold, 1_000_000)
    cfgs = [cfg, to_config(None, width=64, depth=4)]
    model = Model(cfgs, flow_table=8, accelerator=False)
    from natra.reference import accel
    twin = Model(cfgs, flow_table=8) if accel.available() else None
    now, admitted = t0, []
    for gap, size, flow in frames:
        now = min(now + gap, U64_MAX)
        dec = model.process_key(flow_key(flow), size, now, 0)
        if twin is not None:
            assert twin.process_key(flow_key(flow), size, now, 0) == dec
        if dec.verdict in PASSING:
            admitted.append((now, charged(size) * L.NBIT_PER_BYTE))
    assert max_interval_excess(admitted, rate, cfg.tau_nbit) <= 0
    if twin is not None:
        assert twin.snapshot() == model.snapshot()


@given(st.sampled_from(RATES), st.integers(1, 3), st.integers(105, 200), st.sampled_from([64, 1500, 65535]),
       st.booleans(), st.integers(0, 2**60))
@SETTINGS
def test_long_run_rate_error_below_a_thousandth(accelerator, rate, burst_frames, load_pct, size, heavy, t0):
    """Guarantee 5: a greedy flow (offered above R, bucket >= 2 frames) gets exactly
    R*t plus at most the burst: R*t <= admitted <= R*t + B over any run, so the
    long-run error is B / (R*t), here < 0.1 % (no precision is lost anywhere)."""
    size = min(max(size, rate // (8 * 10**5)), L.MAX_ACCOUNTED_LEN)  # a frame takes >= ~8 ns at the rate
    burst = (burst_frames + 1) * size * 8
    cfg = config(rate, burst, 0, 1 if heavy else 2**62, 1_000_000_000)
    gap = size * 8 * 10**9 * 100 // (rate * load_pct)
    n = 1100 * cfg.tau_nbit // (gap * rate) + 2  # long enough that B is < 0.1 % of R*t
    t = np.uint64(t0) + np.arange(n, dtype=np.uint64) * np.uint64(gap)
    key = np.frombuffer(flow_key(1), dtype=np.uint8)
    batch = Batch(t, np.full(n, size), np.zeros(n, np.uint8), np.tile(key, (n, 1)), np.zeros(n, bool))
    res = process_batch(Model([cfg, to_config(None, width=64, depth=4)]), batch)
    admitted = int(np.isin(res.verdicts, list(PASSING)).sum()) * size * L.NBIT_PER_BYTE
    span = (n - 1) * gap
    assert rate * span <= admitted <= rate * span + cfg.tau_nbit
    assert (admitted - rate * span) * 1000 < rate * span


ASKED_BURSTS = st.one_of(st.sampled_from([1, 200, 16_000, 12_000, 100_000, POLICE_BURST_FLOOR_BITS - 1,
                                          POLICE_BURST_FLOOR_BITS, 8 * (2**32 - 1)]),
                         st.integers(1, 8 * (2**32 - 1)))  # every burst the standard plugin accepts
ANY_RATE = st.one_of(st.sampled_from([1, 2, 800, 8000, 64_000, L.MAX_RATE_BPS]),
                     st.integers(L.MIN_RATE_BPS, L.MAX_RATE_BPS))


@given(ANY_RATE, ASKED_BURSTS, st.booleans(),
       st.lists(st.tuples(st.sampled_from([0, 1, 10**3, 10**6, 10**9, 10**12, 10**15, 2**62]),
                          st.sampled_from([60, 526, 1514, 9000, 65535, 70_000]), st.integers(0, 2)),
                min_size=1, max_size=40))
@SETTINGS
def test_police_promise_for_any_rate_and_asked_burst(rate, asked, heavy, frames):
    """docs/cni.md's promise, policing mode: for any rate 1 bit/s .. 1 Pbit/s and any
    asked burst B the parameters validate (no fail-open), and over any interval of t
    the admitted bytes are at most R*t + max(B, floor), floor = four 64 KiB GSO packets."""
    params = params_for(rate, asked, **({"threshold_bytes": 1} if heavy else {}))
    assert params.burst_bits <= max(asked, POLICE_BURST_FLOOR_BITS)
    cfg = to_config(params.with_(width=64))
    model = Model([cfg, to_config(None, width=64, depth=4)], flow_table=8, accelerator=False)
    now, admitted = 10**9, []
    for gap, size, flow in frames:
        now = min(now + gap, U64_MAX)
        if model.process_key(flow_key(flow), size, now, 0).verdict in PASSING:
            admitted.append((now, charged(size) * L.NBIT_PER_BYTE))
    promise = max(asked, POLICE_BURST_FLOOR_BITS) * 10**9
    assert max_interval_excess(admitted, rate, promise) <= 0


@given(ANY_RATE, ASKED_BURSTS, st.booleans(), st.integers(60, 65536 + 4096))
@SETTINGS
def test_police_floor_lets_a_gso_packet_pass(rate, asked, heavy, size):
    """The floor's reason: with a full bucket a whole GSO super-packet (64 KiB plus the
    headers charged per segment) passes, as a mouse and as a heavy frame, whatever was
    asked, so a small burst never makes a TCP sender's packets unpayable forever."""
    params = params_for(rate, asked, **({"threshold_bytes": 1} if heavy else {}))
    model = Model([to_config(params.with_(width=64)), to_config(None, width=64, depth=4)],
                  flow_table=8, accelerator=False)
    dec = model.process_key(flow_key(1), size, 10**9, 0)
    assert dec.verdict in PASSING and (dec.heavy or not heavy)


def test_long_run_one_kbit_for_a_million_seconds(accelerator):
    """1 kbit/s offered 2 kbit/s for 10^6 s: the admitted volume is R*t within 0.1 %."""
    rate, size, seconds = 1000, 1500, 10**6
    gap = size * 8 * 10**9 // (2 * rate)  # 6 s per frame: twice the rate
    n = seconds * 10**9 // gap
    t = np.arange(n, dtype=np.uint64) * np.uint64(gap) + np.uint64(12345)
    key = np.frombuffer(flow_key(2), dtype=np.uint8)
    cfg = config(rate, 10 * size * 8, 2 * size * 8, 2**62, 1_000_000_000)
    res = process_batch(Model([cfg, to_config(None, width=64, depth=4)]),
                        Batch(t, np.full(n, size), np.zeros(n, np.uint8), np.tile(key, (n, 1)),
                              np.zeros(n, bool)))
    admitted_bits = int(np.isin(res.verdicts, list(PASSING)).sum()) * size * 8
    span_s = (n - 1) * gap / 1e9
    assert abs(admitted_bits - rate * span_s) < 0.001 * rate * span_s
    assert admitted_bits * 10**9 <= rate * (n - 1) * gap + cfg.tau_nbit


def test_unlimited_direction_passes_and_counts():
    model = Model([to_config(None), to_config(params_for(10**6))], accelerator=False)
    dec = model.process_key(flow_key(1), 1500, 10**9, L.DIR_TO_POD)
    assert (dec.verdict, dec.heavy, dec.estimate) == (L.V_PASS_UNLIMITED, False, 0)
    snap = model.snapshot()
    assert snap["counters"][0][L.C_FRAMES] == 1 and snap["counters"][0][L.C_BYTES] == 1500
    assert not any(cur for _, cur, _ in snap["sketch"])


def test_mark_rewrites_the_frame_and_counts():
    """An ECT heavy frame in the yellow zone comes out with CE set and a valid checksum."""
    from natra.reference.ecn import ipv4_header_checksum
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    cfg = config(10**6, 100 * 1500 * 8, 10 * 1500 * 8, 1000, 100_000_000)
    model = Model([cfg, to_config(None, width=64, depth=4)], accelerator=False)
    frame = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", tos=2) / UDP(sport=1, dport=2) / (b"x" * 1400))
    marked = None
    for i in range(200):
        dec = model.process(frame, 10**9 + i * 1000, 0)
        if dec.verdict == L.V_MARK:
            marked = dec
            break
        assert dec.frame_out == frame
    assert marked is not None
    out = marked.frame_out
    assert parse_frame(out).ecn == 3 and ipv4_header_checksum(out[14:34]) == 0
    snap = model.snapshot()
    assert snap["counters"][0][L.verdict_packets_index(L.V_MARK)] == 1
    assert snap["flows"][parse_frame(frame).key]["marked_packets"] == 1


def test_snapshot_layout():
    cfg = config(10**6, 10**6, 10**5, 1000)
    model = Model([cfg, cfg], flow_table=16, accelerator=False)
    snap = model.snapshot()
    assert len(snap["sketch"]) == 2 * 64 * 4 and len(snap["counters"][1]) == L.NCOUNTERS
    assert list(snap["state"][0]) == ["heavy_now", "heavy_prev", "pad", "epoch", "backlog_nbit", "last_ns",
                                      "slots"]
    assert snap["config"][0]["rate_bps"] == 10**6
    with pytest.raises(ValueError):
        model.reconfigure(0, config(10**6, 10**6, 10**5, 1000, width=128))
