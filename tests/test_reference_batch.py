"""Batch API == per-packet API (reference/engine.py, reference/accel.py, reference/_fast.c).

Four paths run the same random sequences: per-packet pure-Python spec,
per-packet through the C accelerator, batch with the Python fallback, batch
through the accelerator. Verdicts, heavy flags, estimates and the whole final
state (config, state, sketch, flows, counters) must be identical.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
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


THRESHOLDS = st.one_of(st.integers(1, 20_000), st.sampled_from([1500, 3000]))  # 1500: the boundary


@st.composite
def scenario(draw):
    width = draw(st.sampled_from([1, 2, 8, 64]))
    depth = draw(st.integers(1, 8))

    def cfg():
        if draw(st.integers(0, 4)) == 0:
            return to_config(None, width=width, depth=depth)
        rate = draw(st.sampled_from([1000, 10**6, 10**8, 10**12, 10**15]))
        burst = draw(st.integers(1, 200)) * 1500 * 8
        return to_config(DataPathParams(rate, burst, burst * draw(st.integers(0, 90)) // 100, width, depth,
                                        draw(st.one_of(THRESHOLDS)),
                                        draw(st.integers(10**6, 10**9)),
                                        draw(st.booleans()), draw(st.integers(0, 100))))

    configs = [cfg(), cfg()]
    flow_table = draw(st.sampled_from([0, 1, 3, 16, 4096]))
    nflows = draw(st.integers(1, 12))
    frames = draw(st.lists(st.tuples(st.integers(-10**6, 10**8), st.integers(0, nflows - 1),
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


def test_verdicts_are_not_all_alike(accelerator):
    """The random scenarios reach every decision branch (the comparison is not vacuous)."""
    seen = set()
    rng = np.random.default_rng(7)
    cfg = to_config(DataPathParams(10**6, 20 * 1500 * 8, 4 * 1500 * 8, 64, 4, 3000, 10**8, True, 50))
    model = Model([cfg, to_config(None, width=64, depth=4)], flow_table=8, accelerator=True)
    n = 5000
    keys = np.stack([np.frombuffer(key(int(i)), dtype=np.uint8) for i in rng.integers(0, 12, n)])
    batch = Batch(np.cumsum(rng.integers(0, 3_000_000, n)).astype(np.uint64), rng.integers(60, 1500, n),
                  np.zeros(n, np.uint8), keys, rng.random(n) < 0.5)
    seen |= set(process_batch(model, batch).verdicts.tolist())
    assert {L.V_PASS_MOUSE, L.V_PASS_HEAVY, L.V_MARK, L.V_DROP_HEAVY, L.V_DROP_SHARE} <= seen


def test_from_frames_matches_parse(accelerator):
    from natra.reference.key import parse_frame

    frames = [bytes(14) + b"\x45\x02" + bytes(60), b"\x00" * 10,
              bytes(12) + b"\x86\xdd" + b"\x61" + bytes(60)]
    batch = Batch.from_frames(frames, 5, 1)
    assert [bytes(k) for k in batch.keys] == [parse_frame(f).key for f in frames]
    assert batch.ect.tolist() == [parse_frame(f).ecn != 0 for f in frames]
    assert batch.wire_len.tolist() == [len(f) for f in frames]
    assert batch.now_ns.tolist() == [5, 5, 5] and batch.direction.tolist() == [1, 1, 1]
