"""natra.kernel.params: defaults, clamps and the derived kernel config."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natra.kernel import layout as L
from natra.kernel.params import (
    MIN_DEFAULT_BURST_BITS,
    MIN_RESERVE_BITS,
    POLICE_BURST_FLOOR_BITS,
    DataPathParams,
    ParamError,
    burst_floor_raised,
    clock_tick_ns,
    default_burst_bits,
    default_reserve_bits,
    params_for,
    promised_burst_bits,
    to_config,
)

rates = st.integers(L.MIN_RATE_BPS, L.MAX_RATE_BPS)


def test_containerd_burst_is_clamped_to_half_a_second_of_rate():
    p = params_for(10_000_000, 2**32 - 1)
    assert p.burst_bits == 5_000_000


def test_small_asked_burst_is_raised_to_the_police_floor():
    """A drop policer's bucket must hold whole 64 KiB GSO packets: max(asked, floor)."""
    assert default_burst_bits(10_000_000, 80_000) == POLICE_BURST_FLOOR_BITS
    assert default_burst_bits(800, 200) == POLICE_BURST_FLOOR_BITS
    assert default_burst_bits(10_000_000, 3_000_000) == 3_000_000  # above the floor: kept
    assert burst_floor_raised(200, default_burst_bits(800, 200))
    assert not burst_floor_raised(3_000_000, 3_000_000) and not burst_floor_raised(None, 2_097_152)


def test_a_mode_may_pick_its_own_floor():
    """floor_bits=1 keeps every asked burst (a queueing mode's rule); the clamp still applies."""
    assert default_burst_bits(10_000_000, 80_000, floor_bits=1) == 80_000
    assert default_burst_bits(800, 200, floor_bits=1) == 200
    assert default_burst_bits(10_000_000, 2**32 - 1, floor_bits=1) == 5_000_000


def test_any_positive_rate_validates():
    """The standard plugin accepts any positive rate; so does the data path (1 bit/s and up)."""
    for rate in (1, 8, 800, 999, 8000):
        p = params_for(rate, 200)
        assert p.rate_bps == rate and p.burst_bits == POLICE_BURST_FLOOR_BITS


def test_burst_never_below_four_gso_packets_when_unasked():
    assert default_burst_bits(1000, None) == MIN_DEFAULT_BURST_BITS


@given(rates, st.one_of(st.none(), st.integers(1, 2**40)))
@settings(max_examples=300)
def test_defaults_always_validate_and_fit_u64(rate, burst):
    p = params_for(rate, burst)
    cfg = to_config(p)
    assert POLICE_BURST_FLOOR_BITS <= p.burst_bits <= L.MAX_BURST_BITS
    assert p.reserve_bits < p.burst_bits
    assert 0 <= cfg.early_line_nbit <= cfg.heavy_line_nbit <= cfg.tau_nbit < 2**64
    assert cfg.tau_nbit + L.MAX_ACCOUNTED_LEN * L.NBIT_PER_BYTE < 2**64
    assert L.MAX_ACCOUNTED_LEN * L.NBIT_PER_BYTE * L.MAX_SHARE_FLOWS < 2**64


def test_reserve_holds_two_gso_packets_but_at_most_half():
    assert default_reserve_bits(100 * MIN_RESERVE_BITS) == 5 * MIN_RESERVE_BITS
    assert default_reserve_bits(4 * MIN_RESERVE_BITS) == MIN_RESERVE_BITS
    assert default_reserve_bits(MIN_RESERVE_BITS) == MIN_RESERVE_BITS // 2


@pytest.mark.parametrize("change", [
    {"rate_bps": 0}, {"rate_bps": L.MAX_RATE_BPS + 1}, {"width": 1000}, {"depth": 9},
    {"depth": 0}, {"burst_bits": 2**34 + 1}, {"reserve_bits": 10_000}, {"window_ns": 10},
    {"threshold_bytes": 0},
])
def test_invalid_parameters_say_which(change):
    base = dict(rate_bps=10**7, burst_bits=10_000, reserve_bits=1000)
    base.update(change)
    with pytest.raises(ParamError):
        DataPathParams(**base).validate()


def test_unlimited_direction_keeps_sketch_shape():
    cfg = to_config(None, width=256, depth=2)
    assert cfg.flags & L.CFG_ENABLED == 0
    assert (cfg.width, cfg.depth) == (256, 2)


TICK_NS = 4_000_000  # HZ=250


def test_a_policed_direction_reads_the_coarse_clock_with_one_tick_of_rate_off_its_bucket():
    p = params_for(100_000_000)
    fine, coarse = to_config(p), to_config(p, coarse_tick_ns=TICK_NS)
    slack = 100_000_000 * TICK_NS  # nbit: R x tick
    assert not fine.flags & L.CFG_COARSE_CLOCK and coarse.flags & L.CFG_COARSE_CLOCK
    assert coarse.tau_nbit == fine.tau_nbit - slack
    assert coarse.heavy_line_nbit == fine.heavy_line_nbit - slack  # the reserve keeps its size
    assert coarse.early_line_nbit == coarse.heavy_line_nbit * p.early_percent // 100
    assert coarse.rate_bps == fine.rate_bps and coarse.window_ns == fine.window_ns


@pytest.mark.parametrize("why, params, kwargs", [
    ("shaping reads the coarse clock anyway", params_for(100_000_000, mode="shape"), {}),
    ("a burst of a few ticks of rate", params_for(1_000_000_000, 4_000_000), {}),
    ("no tick known", params_for(100_000_000), {"coarse_tick_ns": 0}),
    ("the test clock", params_for(100_000_000), {"test_clock": True}),
])
def test_the_bucket_is_whole_where_the_coarse_clock_is_not_taken(why, params, kwargs):
    args = {"coarse_tick_ns": TICK_NS, **kwargs}
    cfg = to_config(params, **args)
    assert not cfg.flags & L.CFG_COARSE_CLOCK, why
    assert cfg.tau_nbit == params.burst_bits * 10**9, why


@given(rate=st.integers(1, L.MAX_RATE_BPS), burst=st.one_of(st.none(), st.integers(1, L.MAX_BURST_BITS)),
       tick=st.sampled_from([0, 1_000_000, 3_333_333, 4_000_000, 10_000_000]))
@settings(max_examples=300)
def test_the_coarse_clock_never_costs_more_than_a_quarter_of_the_heavy_zone(rate, burst, tick):
    p = params_for(rate, burst)
    cfg = to_config(p, coarse_tick_ns=tick)
    taken = p.burst_bits * 10**9 - cfg.tau_nbit
    assert taken == (rate * tick if cfg.flags & L.CFG_COARSE_CLOCK else 0)
    assert 4 * taken <= (p.burst_bits - p.reserve_bits) * 10**9
    assert cfg.heavy_line_nbit > 0 and cfg.early_line_nbit <= cfg.heavy_line_nbit < cfg.tau_nbit


def test_the_promised_burst_counts_the_tick_a_coarse_clock_config_gave_up():
    p = params_for(100_000_000)
    for tick in (0, TICK_NS):
        assert promised_burst_bits(to_config(p, coarse_tick_ns=tick), TICK_NS) == p.burst_bits


def test_an_unlocked_sketch_is_a_shaping_flag_and_policing_keeps_its_lock():
    shape = to_config(params_for(100_000_000, mode="shape"))
    unlocked = to_config(params_for(100_000_000, mode="shape", sketch_lock=False))
    police = to_config(params_for(100_000_000, mode="police", sketch_lock=False))
    assert not shape.flags & L.CFG_UNLOCKED
    assert unlocked.flags == shape.flags | L.CFG_UNLOCKED
    assert unlocked.as_tuple()[:8] == shape.as_tuple()[:8]  # nothing else changes
    assert not police.flags & L.CFG_UNLOCKED  # its buckets need the lock
    assert police == to_config(params_for(100_000_000, mode="police"))


@pytest.mark.parametrize("why, config, tick", [
    ("shaping", to_config(params_for(100_000_000, mode="shape")), TICK_NS),
    ("policing that gave a tick of rate up",
     to_config(params_for(100_000_000), coarse_tick_ns=TICK_NS), TICK_NS),
    ("policing on the fine clock", to_config(params_for(100_000_000)), 0),
    ("the test clock", to_config(params_for(100_000_000, mode="shape"), test_clock=True), 0),
    ("a direction not limited", to_config(None), 0),
])
def test_the_tick_clock_is_written_where_a_tick_grained_clock_is_allowed(why, config, tick):
    assert clock_tick_ns(config, TICK_NS) == tick, why
    assert clock_tick_ns(config, 0) == 0, why  # no tick known: the coarse clock, or the fine one
