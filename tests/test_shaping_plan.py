"""natra.kernel.shaping.plan: the numbers of a Pod direction's qdisc tree (pure, no root)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natra.kernel import layout as L
from natra.kernel import shaping
from natra.kernel.params import DataPathParams, params_for


@settings(max_examples=300, deadline=None)
@given(rate=st.integers(shaping.MIN_SHAPE_RATE_BPS, L.MAX_RATE_BPS),
       burst=st.one_of(st.none(), st.integers(1, 2**34)),
       classes=st.integers(1, L.MAX_CLASSES), mtu=st.integers(68, 9000))
def test_every_plan_keeps_its_invariants(rate, burst, classes, mtu):
    p = params_for(rate, burst, mode="shape", classes=classes)
    tree = shaping.plan(p, mtu)
    frame = mtu + shaping.ETH_HLEN
    assert tree.rate_bps <= rate and rate - tree.rate_bps < 8  # whole bytes per second
    assert tree.max_packet_bytes >= 2 * frame
    assert tree.burst_bytes >= tree.max_packet_bytes  # the tbf can pass its largest packet
    assert tree.burst_bytes == max(p.burst_bits // 8, tree.max_packet_bytes)  # an asked burst is kept
    assert 0 <= tree.reserve_bytes <= tree.burst_bytes // 2
    root, mice, *heavy = tree.classes
    assert (root.minor, mice.minor) == (L.CLASS_ROOT, L.CLASS_MICE)
    assert [c.minor for c in heavy] == [L.CLASS_HEAVY_BASE + k for k in range(classes)]
    assert root.rate_bps == root.ceil_bps == tree.rate_bps
    assert mice.prio == 0 and all(c.prio == 1 for c in heavy)  # mice first
    assert all(c.ceil_bps == tree.rate_bps for c in tree.classes)
    assert len({c.quantum_bytes for c in heavy}) == 1  # equal DRR shares
    assert all(c.quantum_bytes >= tree.max_packet_bytes for c in heavy)  # DRR stays exact
    half_second = tree.rate_bps * shaping.MAX_QUEUE_NS // (8 * 10**9)
    for c in [mice, *heavy]:
        assert c.queue_bytes >= 2 * frame or c.queue_bytes == 2**32 - 1  # holds what the tbf hands it
        floor = min(shaping.MIN_QUEUE_FRAMES * frame, half_second)
        assert c.queue_bytes >= floor or c.queue_bytes == 2**32 - 1
        assert c.queue_bytes <= max(half_second + 1, 2 * frame, tree.rate_bps * p.queue_ns // (8 * 10**9) + 1)


def test_queue_is_time_of_rate_above_the_frame_floor():
    p = params_for(10**9, mode="shape", queue_ns=20_000_000)
    assert shaping.plan(p, 1500).classes[2].queue_bytes == 10**9 // 8 // 50  # 20 ms at 1 Gbit/s
    low = params_for(2 * 10**6, mode="shape", queue_ns=20_000_000)
    assert shaping.plan(low, 1500).classes[2].queue_bytes == 64 * 1514  # 388 ms at 2 Mbit/s
    lower = params_for(10**6, mode="shape", queue_ns=20_000_000)
    assert shaping.plan(lower, 1500).classes[2].queue_bytes == 62_500  # capped at 500 ms of rate
    trickle = params_for(8_000, mode="shape")
    assert shaping.plan(trickle, 1500).classes[2].queue_bytes == 2 * 1514  # never below two frames


def test_max_packet_is_a_millisecond_between_two_frames_and_128k():
    assert shaping.max_packet_bytes(10**7, 1500) == 2 * 1514
    assert shaping.max_packet_bytes(10**8, 1500) == 12_500
    assert shaping.max_packet_bytes(10**9, 1500) == 125_000  # a whole 64 KiB GSO packet passes
    assert shaping.max_packet_bytes(10**10, 1500) == 128 * 1024
    assert shaping.max_packet_bytes(10**7, 9000) == 2 * 9014


def test_a_rate_below_one_byte_per_second_cannot_be_shaped():
    p = DataPathParams(rate_bps=7, burst_bits=8000, reserve_bits=0, mode="shape").validate()
    with pytest.raises(shaping.ShapeError, match="below 8 bit/s"):
        shaping.plan(p, 1500)


def test_ifb_names_are_short_stable_and_recognisable():
    name = shaping.ifb_name("a" * 64)
    assert len(name) <= 15 and shaping.is_ifb_name(name)
    assert name == shaping.ifb_name("a" * 64) != shaping.ifb_name("b" * 64)
    assert not shaping.is_ifb_name("ifb0") and not shaping.is_ifb_name("ntifbXYZ")


@settings(max_examples=50, deadline=None)
@given(rate=st.integers(10**6, 10**10), share=st.sampled_from([2, 4, 8]))
def test_shaping_defaults_call_a_bulk_flow_at_a_fraction_of_the_rate_heavy(rate, share):
    """Four bulk flows of a 10 Mbit/s Pod must not all be "mice" (they would share one queue)."""
    from natra.reference.engine import Model

    from natra.kernel.params import to_config

    p = params_for(rate, mode="shape")
    model = Model([to_config(p), to_config(p)], accelerator=False)
    frame = 1514
    gap_ns = frame * 8 * share * 10**9 // rate  # the flow sends at rate / share
    key = bytes(range(40))
    heavy_at = None
    for i in range(4 * p.window_ns // gap_ns + 1):
        if model.process_key(key, frame, i * gap_ns, L.DIR_TO_POD).heavy:
            heavy_at = i * gap_ns
            break
    assert heavy_at is not None and heavy_at <= p.window_ns
    request = model.process_key(bytes(reversed(range(40))), 10_000, 0, L.DIR_TO_POD)
    assert not request.heavy  # a 10 KB request stays a mouse
