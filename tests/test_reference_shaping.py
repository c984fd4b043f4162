"""The model's shaping step (docs/design.md, "Shaping"): which class each frame goes to.

In shaping mode the program drops nothing: the sketch names mice and heavy
flows, mice go to the strict-priority mice class, and each heavy flow gets a
heavy class of its own while it is live (so DRR among the classes is fair per
flow), sharing by hash only when more heavy flows are live than there are
classes. These properties are what the qdisc tree relies on; the kernel is held
to the same decisions by tests/kernel/test_differential.py.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from natra.reference.engine import Model
from natra.reference.hashing import flow_hash

from natra.kernel import layout as L
from natra.kernel.params import DataPathParams, to_config

WINDOW = 10_000_000  # ns
THRESHOLD = 3_000  # bytes per window: two 1500-byte frames make a flow heavy
FRAME = 1_500


def shaping_model(classes: int, *, width: int = 1024, depth: int = 4) -> Model:
    p = DataPathParams(rate_bps=10_000_000, burst_bits=8 * 300_000, reserve_bits=8 * 100_000, width=width,
                       depth=depth, threshold_bytes=THRESHOLD, window_ns=WINDOW, mode="shape",
                       classes=classes).validate()
    cfg = to_config(p, test_clock=True, width=width, depth=depth)
    return Model([cfg, cfg], accelerator=False)


def key(flow: int) -> bytes:
    """A distinct 40-byte flow key per flow number (only its bytes matter to the model)."""
    return flow.to_bytes(4, "little") * 8 + bytes([0, 6, 0x08, 0x00, 0, 0, 6, 0])


def heavy_class(model: Model, flow: int, now: int) -> int:
    """Send frames of `flow` at `now` until the sketch calls it heavy; its class."""
    for _ in range(4):
        d = model.process_key(key(flow), FRAME, now, L.DIR_TO_POD)
        if d.heavy:
            return d.cls
    raise AssertionError(f"flow {flow} never turned heavy")


@settings(max_examples=200, deadline=None)
@given(classes=st.integers(1, L.MAX_CLASSES), flows=st.integers(1, L.MAX_CLASSES), windows=st.integers(1, 6),
       start=st.integers(0, 10**12))
def test_live_heavy_flows_up_to_the_class_count_each_own_a_class(classes, flows, windows, start):
    model = shaping_model(classes)
    flows = min(flows, classes)
    first = {}
    for w in range(windows):
        now = start + w * WINDOW
        for f in range(flows):
            cls = heavy_class(model, f, now)
            assert L.CLASS_HEAVY_BASE <= cls < L.CLASS_HEAVY_BASE + classes
            assert first.setdefault(f, cls) == cls, "a live flow keeps its class"
    assert len(set(first.values())) == flows, "each live heavy flow has a queue of its own"


@settings(max_examples=200, deadline=None)
@given(classes=st.integers(1, 8), extra=st.integers(1, 8), start=st.integers(0, 10**12))
def test_more_heavy_flows_than_classes_share_by_hash(classes, extra, start):
    model = shaping_model(classes)
    for f in range(classes):
        heavy_class(model, f, start)
    for f in range(classes, classes + extra):
        cls = heavy_class(model, f, start)
        assert cls == L.CLASS_HEAVY_BASE + flow_hash(key(f), L.HASH_SEED1) % classes


@settings(max_examples=200, deadline=None)
@given(classes=st.integers(1, 8), start=st.integers(0, 10**12), quiet=st.integers(0, 4))
def test_a_stopped_flow_frees_its_class_within_two_windows(classes, start, quiet):
    model = shaping_model(classes)
    owned = {f: heavy_class(model, f, start) for f in range(classes)}
    # Flow 0 stops; the others keep sending every window; a newcomer arrives
    # `quiet` windows later and must find flow 0's class from the second window on.
    for w in range(1, quiet + 1):
        for f in range(1, classes):
            heavy_class(model, f, start + w * WINDOW)
    newcomer = heavy_class(model, 10_000, start + quiet * WINDOW)
    if quiet >= 2:
        assert newcomer == owned[0]
    else:
        h1 = flow_hash(key(10_000), L.HASH_SEED1)
        assert newcomer == L.CLASS_HEAVY_BASE + h1 % classes  # nothing free yet: shared


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(st.tuples(st.integers(0, 40), st.integers(60, 65_536), st.integers(0, 10**8),
                                 st.sampled_from([L.DIR_TO_POD, L.DIR_FROM_POD])), max_size=300),
       classes=st.integers(1, L.MAX_CLASSES))
def test_shaping_never_drops_and_mice_go_to_the_mice_class(frames, classes):
    model = shaping_model(classes, width=64, depth=2)
    now = 0
    for flow, size, dt, direction in frames:
        now += dt
        d = model.process_key(key(flow), size, now, direction)
        assert d.verdict in (L.V_PASS_MOUSE, L.V_PASS_HEAVY)
        if d.heavy:
            assert d.verdict == L.V_PASS_HEAVY and L.CLASS_HEAVY_BASE <= d.cls < L.CLASS_HEAVY_BASE + classes
        else:
            assert d.verdict == L.V_PASS_MOUSE and d.cls == L.CLASS_MICE


def test_an_unlimited_direction_is_not_classified():
    p = DataPathParams(rate_bps=10_000_000, burst_bits=8 * 300_000, reserve_bits=8 * 100_000,
                       threshold_bytes=THRESHOLD, window_ns=WINDOW, mode="shape").validate()
    model = Model([to_config(p), to_config(None)], accelerator=False)
    d = model.process_key(key(1), FRAME, 0, L.DIR_FROM_POD)
    assert (d.verdict, d.cls) == (L.V_PASS_UNLIMITED, 0)


def test_the_batch_api_reports_the_same_classes():
    import numpy as np
    from natra.reference.engine import Batch, process_batch

    one, other = shaping_model(4), shaping_model(4)
    flows = [i % 7 for i in range(500)]
    times = [i * 100_000 for i in range(500)]
    per_packet = [one.process_key(key(f), FRAME, t, L.DIR_TO_POD).cls
                  for f, t in zip(flows, times, strict=True)]
    keys = np.frombuffer(b"".join(key(f) for f in flows), dtype=np.uint8).reshape(-1, 40)
    batch = Batch(np.array(times), np.full(500, FRAME), np.zeros(500), keys, np.zeros(500, dtype=bool))
    result = process_batch(other, batch)
    assert result.classes.tolist() == per_packet
    assert one.snapshot()["state"] == other.snapshot()["state"]
