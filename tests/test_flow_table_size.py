"""The heavy-flow table sized from what it must hold (natra.kernel.params.flow_table_entries)."""

from __future__ import annotations

from natra.kernel import params as P


def test_defaults_get_the_floor_and_the_table_grows_with_heavy_flows_per_window():
    slow = P.params_for(100_000_000)  # threshold 64 KiB: ~19 heavy flows per 100 ms window
    assert P.flow_table_entries([slow, slow]) == P.MIN_AUTO_FLOW_TABLE == 1024
    fast = P.params_for(10_000_000_000)  # threshold 1 % of a window: 100 heavy flows per window
    assert P.flow_table_entries([fast, fast]) == 1024  # 4 x 200, a power of two
    many = P.params_for(10_000_000_000, threshold_bytes=125_000)  # 0.1 %: 1,000 per window
    assert P.flow_table_entries([many, None]) == 4096  # 4 x 1,000
    assert P.flow_table_entries([many, many]) == 8192  # both directions share the table


def test_the_derived_size_is_capped_and_shaping_needs_none():
    tiny = P.params_for(10**12, threshold_bytes=1)
    assert P.flow_table_entries([tiny, tiny]) == P.MAX_AUTO_FLOW_TABLE
    shaped = P.params_for(10**12, threshold_bytes=1, mode=P.MODE_SHAPE)
    assert P.flow_table_entries([shaped, None]) == P.MIN_AUTO_FLOW_TABLE
    assert P.flow_table_entries([None, None]) == P.MIN_AUTO_FLOW_TABLE


def test_a_pod_without_flow_table_gets_the_derived_size_and_an_asked_one_wins():
    from natra.cni.tuning import Tuning

    assert Tuning().flow_table is None
    assert Tuning(flow_table=128).validate().flow_table == 128


def test_an_asked_size_is_rounded_up_to_the_power_of_two_the_table_is_made_with():
    assert [P.flow_slots(n) for n in (1, 2, 3, 128, 129, 5000, P.MAX_FLOW_TABLE)] == \
        [1, 2, 4, 128, 256, 8192, P.MAX_FLOW_TABLE]
    assert P.flow_slots(None) is None
