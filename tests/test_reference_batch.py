"""Batch API == per-packet API (reference/engine.py, reference/accel.py, reference/_fast.c).

Four paths run the same random sequences: per-packet pure-Python spec,
per-packet through the C accelerator, batch with the Python fallback, batch
through the accelerator. Verdicts, heavy flags, estimates and the whole final
state (config, state, sketch, flows, counters) must be identical.

Two sizes: `scenario` (up to 300 frames of 12 flows, drawn frame by frame so
Hypothesis shrinks a failure to a few frames) and `large_scenario` (1,000 to
5,000 frames of 50 to 500 flows, made from a drawn seed by numpy: a few heavy
flows and many mice, every combination of the key flags IPV6, FRAGMENT and
TRUNCATED over IPv4, IPv6 and other EtherTypes, clocks stepping back, frames
from 1 byte to 2 MiB, flow tables that evict), where the accelerator must
still be the spec.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from natra.reference import accel
from natra.reference.engine import Batch, Model, process_batch
from natra.reference.key import make_key

from natra.kernel import layout as L
from natra.kernel.params import DataPathParams, to_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def accelerator():
    """The C accelerator, built with the Makefile target if it is missing."""
    if not accel.available() and shutil.which("make") and shutil.which("gcc"):
        subprocess.run(["make", "-s", "reference/_natra_fast.so"], cwd=ROOT, check=False,
                       capture_output=True)
        accel.reload()
    if not accel.available():
        pytest.skip("C accelerator not built and cannot be built here (needs make and gcc)")
    return True


def key(i: int) -> bytes:
    if i % 5 == 4:
        return make_key(bytes(16), bytes(16), 0, 0, 0x0806, 0, 0)  # ARP
    flags = L.KEY_IPV6 if i % 3 == 0 else 0
    return make_key(bytes([i]) * 16, bytes(16), 1000 + i, 80, 0x86DD if flags else 0x0800, 6, flags)


# 1500: the boundary; 2^40: every flow a mouse, so mice fill the whole bucket and drop
THRESHOLDS = st.one_of(st.integers(1, 20_000), st.sampled_from([1500, 3000, 1 << 40]))


def draw_configs(draw, width: int, depth: int) -> list:
    def cfg():
        if draw(st.integers(0, 4)) == 0:
            return to_config(None, width=width, depth=depth)
        rate = draw(st.sampled_from([1000, 10**6, 10**8, 10**12, 10**15]))
        burst = draw(st.one_of(st.integers(1, 200), st.integers(2, 12))) * 1500 * 8
        # ECN on twice as often, and early lines low as often as anywhere: the yellow zone
        # (marks, share drops) is met in a fair share of the examples
        return to_config(DataPathParams(rate, burst, burst * draw(st.integers(0, 90)) // 100, width, depth,
                                        draw(st.one_of(THRESHOLDS)),
                                        draw(st.integers(10**6, 10**9)),
                                        draw(st.sampled_from([True, True, False])),
                                        draw(st.one_of(st.integers(0, 100), st.integers(0, 30)))))

    return [cfg(), cfg()]


@st.composite
def scenario(draw):
    width = draw(st.sampled_from([1, 2, 8, 64]))
    depth = draw(st.integers(1, 8))
    configs = draw_configs(draw, width, depth)
    flow_table = draw(st.sampled_from([0, 1, 4, 16, 4096]))
    nflows = draw(st.integers(1, 12))
    # gaps: back-to-back bursts (the bucket fills: yellow zone, marks, share drops) or spread out
    gaps = st.one_of(st.integers(0, 10**4), st.integers(-10**6, 10**8))
    frames = draw(st.lists(st.tuples(gaps, st.integers(0, nflows - 1),
                                     st.one_of(st.just(1500), st.integers(1, 1600), st.integers(1, 2**21)),
                                     st.integers(0, 1), st.booleans()),
                           min_size=1, max_size=300))
    splits = draw(st.lists(st.integers(0, len(frames)), max_size=3))
    t0 = draw(st.integers(0, 2**63))
    return configs, flow_table, frames, sorted(splits), t0


def as_batch(frames, t0):
    now, t = [], t0
    for gap, *_ in frames:
        t = max(t + gap, 0)  # gaps may step back (another CPU's clock)
        now.append(t)
    keys = np.stack([np.frombuffer(key(f), dtype=np.uint8) for _, f, _, _, _ in frames])
    return Batch(np.array(now, dtype=np.uint64), np.array([s for _, _, s, _, _ in frames]),
                 np.array([d for *_, d, _ in frames]), keys, np.array([e for *_, e in frames]))


def per_packet(model, batch):
    out = [model.process_key(batch.keys[i].tobytes(), int(batch.wire_len[i]), int(batch.now_ns[i]),
                             int(batch.direction[i]), bool(batch.ect[i])) for i in range(len(batch))]
    return ([d.verdict for d in out], [d.heavy for d in out], [d.estimate for d in out])


def batched(model, batch, splits):
    verdicts, heavy, est = [], [], []
    bounds = [0, *splits, len(batch)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        if b <= a:
            continue
        part = Batch(batch.now_ns[a:b], batch.wire_len[a:b], batch.direction[a:b], batch.keys[a:b],
                     batch.ect[a:b])
        r = process_batch(model, part)
        verdicts += r.verdicts.tolist()
        heavy += r.heavy.tolist()
        est += r.estimates.tolist()
    return verdicts, heavy, est


# Every combination of the key flags; TRUNCATED and FRAGMENT move parse counters.
FLAG_SETS = [f for f in range(8) if f & ~(L.KEY_IPV6 | L.KEY_FRAGMENT | L.KEY_TRUNCATED) == 0]
OTHER_ETHERTYPES = [0x0806, 0x8100, 0x88B5, 0x0000]
PROTOS = [6, 17, 132, 1, 58, 0, 47]


def many_keys(rng: np.random.Generator, nflows: int) -> np.ndarray:
    """(nflows, 40) distinct keys over every flag combination and EtherType kind."""
    keys = np.zeros((nflows, 40), dtype=np.uint8)
    for i in range(nflows):
        flags = FLAG_SETS[int(rng.integers(len(FLAG_SETS)))]
        kind = int(rng.integers(4))
        if kind == 3:  # non-IP: the EtherType only (and any flags, as the accelerator must take any key)
            ethertype, proto, addrs, ports = OTHER_ETHERTYPES[int(rng.integers(4))], 0, bytes(32), (0, 0)
        else:
            ethertype = 0x86DD if flags & L.KEY_IPV6 else 0x0800
            proto = PROTOS[int(rng.integers(len(PROTOS)))]
            addrs = rng.integers(0, 256, 32, dtype=np.uint8).tobytes()
            if not flags & L.KEY_IPV6:
                addrs = bytes(10) + b"\xff\xff" + addrs[12:16] + bytes(10) + b"\xff\xff" + addrs[28:32]
            ports = (0, 0) if flags & (L.KEY_FRAGMENT | L.KEY_TRUNCATED) else \
                (int(rng.integers(1, 65536)), int(rng.integers(1, 65536)))
        k = make_key(addrs[:16], addrs[16:], ports[0], ports[1], ethertype, proto, flags)
        k = k[:36] + i.to_bytes(2, "big") + k[38:] if kind == 3 else k  # distinct even without addresses
        keys[i] = np.frombuffer(k, dtype=np.uint8)
    return keys


@st.composite
def large_scenario(draw):
    """Thousands of frames of hundreds of flows, from a drawn seed (numpy makes the arrays)."""
    width = draw(st.sampled_from([1, 16, 256, 1024]))
    depth = draw(st.integers(1, 8))
    configs = draw_configs(draw, width, depth)
    flow_table = draw(st.sampled_from([0, 1, 16, 64, 4096]))
    nflows = draw(st.integers(50, 500))
    n = draw(st.integers(1000, 5000))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    keys = many_keys(rng, nflows)
    # A few heavy flows, many mice: flow ranks from a Zipf law.
    flow = np.minimum(rng.zipf(draw(st.sampled_from([1.2, 1.6, 2.5])), n) - 1, nflows - 1)
    rng.shuffle(keys)
    gap_max = draw(st.sampled_from([10**3, 10**5, 10**7]))
    gaps = rng.integers(0, gap_max, n)
    back = rng.random(n) < draw(st.sampled_from([0.0, 0.02, 0.2]))  # another CPU's clock
    gaps = np.where(back, -rng.integers(0, 10**8, n), gaps)
    now = np.maximum(draw(st.integers(0, 2**62)) + np.cumsum(gaps), 0).astype(np.uint64)
    sizes = rng.integers(60, 1515, n)
    odd = rng.random(n)
    sizes = np.where(odd < 0.03, rng.integers(1, 60, n), sizes)
    sizes = np.where(odd > 0.98, rng.integers(1515, 2**21, n), sizes)
    return configs, flow_table, Batch(now, sizes, rng.integers(0, 2, n), keys[flow], rng.random(n) < 0.5)


@given(large_scenario())
@settings(max_examples=40, deadline=None)
def test_accelerator_equals_spec_on_thousands_of_frames(accelerator, case):
    configs, flow_table, batch = case
    spec = Model(configs, flow_table=flow_table, accelerator=False)
    expected = per_packet(spec, batch)
    fast = Model(configs, flow_table=flow_table, accelerator=True)
    assert batched(fast, batch, [len(batch) // 3]) == expected
    assert fast.snapshot() == spec.snapshot()
    fast_single = Model(configs, flow_table=flow_table, accelerator=True)
    assert per_packet(fast_single, batch) == expected
    assert fast_single.snapshot() == spec.snapshot()
    assert len(set(batch.keys[:, 39].tolist())) > 1  # several flag combinations in every example


@given(scenario())
@settings(max_examples=200, deadline=None)
def test_batch_fallback_equals_per_packet_spec(case):
    configs, flow_table, frames, splits, t0 = case
    batch = as_batch(frames, t0)
    spec = Model(configs, flow_table=flow_table, accelerator=False)
    expected = per_packet(spec, batch)
    fallback = Model(configs, flow_table=flow_table, accelerator=False)
    assert batched(fallback, batch, splits) == expected
    assert fallback.snapshot() == spec.snapshot()


@given(scenario())
@settings(max_examples=200, deadline=None)
def test_accelerator_equals_per_packet_spec(accelerator, case):
    configs, flow_table, frames, splits, t0 = case
    batch = as_batch(frames, t0)
    spec = Model(configs, flow_table=flow_table, accelerator=False)
    expected = per_packet(spec, batch)
    fast_batch = Model(configs, flow_table=flow_table, accelerator=True)
    assert batched(fast_batch, batch, splits) == expected
    assert fast_batch.snapshot() == spec.snapshot()
    fast_single = Model(configs, flow_table=flow_table, accelerator=True)
    assert per_packet(fast_single, batch) == expected
    assert fast_single.snapshot() == spec.snapshot()


class _AllSeen(Exception):
    """Every branch was reached: stop drawing."""


WANT_VERDICTS = {L.V_PASS_MOUSE, L.V_PASS_HEAVY, L.V_MARK, L.V_DROP_MOUSE, L.V_DROP_HEAVY, L.V_DROP_SHARE,
                 L.V_PASS_UNLIMITED}
WANT_COUNTERS = {L.C_IPV4, L.C_IPV6, L.C_NON_IP, L.C_FRAGMENT, L.C_TRUNCATED}


def _reaches_every_branch(strategy, to_model_and_batch, max_examples: int) -> tuple[set, set]:
    """Draw from `strategy` (as the property tests do, derandomized) until the spec has met every
    verdict and parse counter, or `max_examples` ran; (verdicts, counters) seen."""
    from natra.reference.engine import parse_counter_indexes

    verdicts, counters = set(), set()

    @given(strategy)
    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.generate], report_multiple_bugs=False)
    def draw(case):
        model, batch = to_model_and_batch(case)
        verdicts.update(per_packet(model, batch)[0])
        for k in batch.keys:
            counters.update(parse_counter_indexes(k.tobytes()))
        if verdicts >= WANT_VERDICTS and counters >= WANT_COUNTERS:
            raise _AllSeen

    try:
        draw()
    except _AllSeen:
        pass
    return verdicts, counters


def test_verdicts_are_not_all_alike():
    """The scenarios the property tests above draw reach every decision branch and every parse
    counter (so their comparison is not vacuous): the same strategies through the spec, within
    those tests' example budgets. The large scenario reaches all of them on its own; the small
    one (short lists, for shrinking) reaches marks and share drops in only a few per cent of its
    examples, so it is held to the other branches."""
    def small(case):
        configs, flow_table, frames, _, t0 = case
        return Model(configs, flow_table=flow_table, accelerator=False), as_batch(frames, t0)

    def large(case):
        configs, flow_table, batch = case
        return Model(configs, flow_table=flow_table, accelerator=False), batch

    verdicts, counters = _reaches_every_branch(large_scenario(), large, 40)
    assert verdicts >= WANT_VERDICTS, [L.VERDICT_NAMES[v] for v in WANT_VERDICTS - verdicts]
    assert counters >= WANT_COUNTERS, [L.COUNTER_NAMES[c] for c in WANT_COUNTERS - counters]
    verdicts, _ = _reaches_every_branch(scenario(), small, 200)
    want = WANT_VERDICTS - {L.V_MARK, L.V_DROP_SHARE}
    assert verdicts >= want, [L.VERDICT_NAMES[v] for v in want - verdicts]


def test_from_frames_matches_parse(accelerator):
    from natra.reference.key import parse_frame

    frames = [bytes(14) + b"\x45\x02" + bytes(60), b"\x00" * 10,
              bytes(12) + b"\x86\xdd" + b"\x61" + bytes(60)]
    batch = Batch.from_frames(frames, 5, 1)
    assert [bytes(k) for k in batch.keys] == [parse_frame(f).key for f in frames]
    assert batch.ect.tolist() == [parse_frame(f).ecn != 0 for f in frames]
    assert batch.wire_len.tolist() == [len(f) for f in frames]
    assert batch.now_ns.tolist() == [5, 5, 5] and batch.direction.tolist() == [1, 1, 1]
