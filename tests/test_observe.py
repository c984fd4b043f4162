"""Pure tests of natra/node/observe.py: from made-up pinned records to PodViews.

No kernel: RawPod records are built (tests/observe_records.py) the way the edge reads them
(fields of natra_config / natra_state, NCOUNTERS counters, flow dicts).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from natra.reference import key as refkey
from observe_records import config, flow, key, pod, raw_dir

from natra.kernel import layout as L
from natra.kernel.params import params_for
from natra.node import observe as O

MS = 1_000_000
WINDOW = 100 * MS

counters_st = st.lists(st.integers(0, 2**40), min_size=L.NCOUNTERS, max_size=L.NCOUNTERS)


# ---- class / action ----------------------------------------------------------------------

@given(counters_st)
def test_traffic_folds_every_verdict_once(counters):
    traffic = O.traffic_of(counters)
    verdicts = range(L.NVERDICTS)
    assert sum(t.packets for t in traffic) == sum(counters[L.verdict_packets_index(v)] for v in verdicts)
    assert sum(t.bytes for t in traffic) == sum(counters[L.verdict_bytes_index(v)] for v in verdicts)
    assert len({(t.klass, t.action) for t in traffic}) == len(traffic)


def test_drops_are_split_by_class_and_share_drops_are_heavy():
    c = [0] * L.NCOUNTERS
    c[L.verdict_bytes_index(L.V_DROP_MOUSE)] = 100
    c[L.verdict_bytes_index(L.V_DROP_HEAVY)] = 20
    c[L.verdict_bytes_index(L.V_DROP_SHARE)] = 3
    c[L.verdict_packets_index(L.V_MARK)] = 7
    c[L.verdict_bytes_index(L.V_MARK)] = 7000
    got = {(t.klass, t.action): t for t in O.traffic_of(c)}
    assert got[("mouse", "drop")].bytes == 100
    assert got[("heavy", "drop")].bytes == 23
    assert got[("heavy", "mark")].packets == 7
    view = O.build_view(pod({L.DIR_TO_POD: raw_dir(counters=c)}), now=0).direction("to_pod")
    assert view.dropped_bytes == 123
    assert view.passed_bytes == 7000  # marked frames passed
    assert view.marked_packets == 7
    assert view.verdicts["drop_share"] == {"packets": 0, "bytes": 3}


def test_other_counters_are_named_from_the_layout():
    c = list(range(L.NCOUNTERS))
    view = O.build_view(pod({L.DIR_TO_POD: raw_dir(counters=c)}), now=0).direction("to_pod")
    assert view.counters["frames"] == L.C_FRAMES
    assert view.counters["truncated"] == L.C_TRUNCATED
    assert view.counters["mark_failed"] == L.C_MARK_FAILED
    assert view.counters["flow_overflow"] == L.C_FLOW_OVERFLOW
    assert not any(name.endswith("_packets") for name in view.counters)


# ---- limits and bucket --------------------------------------------------------------------

def test_limit_comes_back_in_user_units():
    p = params_for(25_000_000)
    lim = O.limit_of(config(25_000_000))
    assert lim.rate_bps == 25_000_000
    assert lim.burst_bytes == p.burst_bits // 8
    assert lim.reserve_bytes == p.reserve_bits // 8
    assert lim.threshold_bytes == p.threshold_bytes
    assert lim.ecn is p.ecn
    assert O.limit_of(config(None)) is None


@given(st.integers(0, 2**62), st.integers(0, 2**40), st.integers(0, 2**40), st.integers(1000, 10**15))
def test_drained_backlog_never_grows_and_never_goes_negative(backlog, last, dt, rate):
    now = last + dt
    got = O.drained_backlog(backlog, last, now, rate)
    assert 0 <= got <= backlog
    assert got == max(0, backlog - dt * rate)
    assert O.drained_backlog(backlog, last, last - 1 if last else 0, rate) == backlog


# ---- heavy hitters: ageing, census, direction, ranking -------------------------------------

@given(st.integers(0, 10**6))
def test_a_flow_ages_out_within_two_windows(epoch):
    f = flow(counted_epoch=epoch + 1)
    assert O.is_active(f, WINDOW, epoch * WINDOW)
    assert O.is_active(f, WINDOW, (epoch + 1) * WINDOW + WINDOW - 1)
    assert not O.is_active(f, WINDOW, (epoch + 2) * WINDOW)


def test_census_follows_the_programs_roll():
    st_ = {"epoch": 5, "heavy_now": 2, "heavy_prev": 3}
    assert O.heavy_census(st_, WINDOW, 5 * WINDOW) == 3
    assert O.heavy_census(st_, WINDOW, 6 * WINDOW) == 2
    assert O.heavy_census(st_, WINDOW, 7 * WINDOW) == 0


def test_direction_of_a_flow():
    pod_ip = O.pod_addresses({"ips": ["10.1.0.2/24", "fd00::2"]})
    into = key("10.9.0.1", "10.1.0.2", 40000, 5201)
    out = key("10.1.0.2", "10.9.0.1", 5201, 40000)
    other = key("10.7.0.1", "10.8.0.1", 1, 2)
    both = (L.DIR_TO_POD, L.DIR_FROM_POD)
    assert O.flow_direction(into, pod_ip, both) == L.DIR_TO_POD
    assert O.flow_direction(out, pod_ip, both) == L.DIR_FROM_POD
    assert O.flow_direction(other, pod_ip, both) is None
    assert O.flow_direction(other, frozenset(), (L.DIR_FROM_POD,)) == L.DIR_FROM_POD
    assert O.flow_direction(key("fd00::9", "fd00::2", 1, 2), pod_ip, both) == L.DIR_TO_POD


def test_heavy_hitters_are_ranked_active_first_then_by_estimate_and_cut_to_top():
    now = 50 * WINDOW
    flows = {key("10.9.0.1", "10.1.0.2", 40000 + i, 80):
             flow(counted_epoch=50 if i % 2 else 10, estimate=i * 1000, passed=i, last_ns=now - i)
             for i in range(1, 9)}
    view = O.build_view(pod(flows=flows), now=now, top=3).direction("to_pod")
    assert view.flow_entries == 8
    assert [h.estimate_bytes for h in view.heavy_hitters] == [7000, 5000, 3000]
    assert all(h.active for h in view.heavy_hitters)
    assert view.heavy_hitters[0].flow == "tcp 10.9.0.1:40007 > 10.1.0.2:80"
    assert view.heavy_hitters[0].idle_ns == 7
    assert bytes.fromhex(view.heavy_hitters[0].key) in flows


def test_flows_without_a_direction_are_counted_apart():
    two = {L.DIR_TO_POD: raw_dir(), L.DIR_FROM_POD: raw_dir()}
    flows = {key("10.7.0.1", "10.8.0.1", 1, 2): flow(1)}
    view = O.build_view(pod(two, flows, meta={"ips": ["10.1.0.2"]}), now=0)
    assert view.unassigned_flows == 1
    assert all(d.flow_entries == 0 for d in view.directions)


# ---- the readable key ------------------------------------------------------------------------

key_st = st.builds(
    refkey.make_key,
    saddr=st.one_of(st.binary(min_size=16, max_size=16), st.binary(min_size=4, max_size=4).map(
        lambda b: O.V4_MAPPED + b)),
    daddr=st.one_of(st.binary(min_size=16, max_size=16), st.binary(min_size=4, max_size=4).map(
        lambda b: O.V4_MAPPED + b)),
    sport=st.integers(0, 65535), dport=st.integers(0, 65535),
    ethertype=st.sampled_from([0, 0x0800, 0x86DD, 0x0806]),
    proto=st.sampled_from([0, 1, 6, 17, 58, 132, 47]),
    flags=st.sampled_from([0, L.KEY_FRAGMENT, L.KEY_TRUNCATED, L.KEY_IPV6]),
)


@given(key_st)
def test_format_key_reads_every_key(k):
    text = O.format_key(k)
    assert text and text == refkey.format_key(k)  # the model re-exports the same formatter


def test_reading_tables_imports_no_model_and_no_numpy():
    """natra.node.observe runs on nodes from the bundle, which carries neither."""
    import subprocess
    import sys

    code = ("import sys, natra.node.observe; "
            "bad = [m for m in ('numpy', 'natra.reference') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_format_key_examples():
    assert O.format_key(key("10.0.0.1", "10.0.0.2", 40000, 80)) == "tcp 10.0.0.1:40000 > 10.0.0.2:80"
    assert O.format_key(key("fd00::1", "fd00::2", 1, 53, proto=17)) == "udp [fd00::1]:1 > [fd00::2]:53"
    assert O.format_key(refkey.make_key(ethertype=0x0806)) == "ethertype 0x0806"


# ---- identity and addresses -------------------------------------------------------------------

def test_identity_from_meta_and_without():
    v = O.build_view(pod(), now=0)
    assert (v.namespace, v.pod, v.uid) == ("team-a", "web-1", "u-1")
    assert (v.interface, v.attach_mode) == ("veth1", "tcx")
    bare = O.build_view(pod(meta={}), now=0)
    assert (bare.namespace, bare.pod, bare.attach_mode) == ("", "c0ffee001122", O.UNKNOWN)


def test_pod_addresses_from_host_routes():
    v4 = ("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
          "vethA\t0200010A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n"
          "vethA\t0000010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
          "vethB\t0300010A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n")
    v6 = ("fd000000000000000000000000000002 80 00000000000000000000000000000000 00 "
          "00000000000000000000000000000000 00000400 00000001 00000000 00000001     vethA\n"
          "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 "
          "00000000000000000000000000000000 00000100 00000001 00000000 00000001     vethA\n")
    assert O.routed_pod_ips(v4, v6, "vethA") == ["10.1.0.2", "fd00::2"]
    assert O.routed_pod_ips(v4, "", "vethB") == ["10.1.0.3"]


# ---- rates ---------------------------------------------------------------------------------------

def _view_with(pass_bytes: int, drop_bytes: int, flow_bytes: int, cid="c1") -> O.PodView:
    c = [0] * L.NCOUNTERS
    c[L.verdict_bytes_index(L.V_PASS_MOUSE)] = pass_bytes
    c[L.verdict_packets_index(L.V_PASS_MOUSE)] = pass_bytes // 1000
    c[L.verdict_bytes_index(L.V_DROP_HEAVY)] = drop_bytes
    flows = {key("10.9.0.1", "10.1.0.2", 1, 2): flow(1, passed=flow_bytes)}
    return O.build_view(pod({L.DIR_TO_POD: raw_dir(counters=c)}, flows, cid=cid), now=0)


@given(st.integers(0, 10**12), st.integers(0, 10**9), st.integers(0, 10**9), st.integers(1, 10**10))
def test_rates_are_growth_over_time(base, grow_pass, grow_drop, elapsed):
    before = _view_with(base, base, base)
    after = _view_with(base + grow_pass, base + grow_drop, base + grow_pass)
    r = O.rates([before], [after], elapsed)[("c1", "to_pod")]
    secs = elapsed / 1e9
    assert r.passed_bps == pytest.approx(8 * grow_pass / secs)
    assert r.dropped_bps == pytest.approx(8 * grow_drop / secs)
    assert r.mouse_bps == pytest.approx(8 * grow_pass / secs)
    assert r.heavy_bps == 0
    assert r.flows_bps[after.directions[0].heavy_hitters[0].key] == pytest.approx(8 * grow_pass / secs)


def test_a_counter_that_went_back_restarts_and_a_new_pod_counts_from_zero():
    before = _view_with(10**9, 0, 0)
    after = _view_with(1000, 0, 0)
    assert O.rates([before], [after], 10**9)[("c1", "to_pod")].passed_bps == 8000
    fresh = _view_with(5000, 0, 0, cid="c2")
    assert O.rates([before], [fresh], 10**9)[("c2", "to_pod")].passed_bps == 8 * 5000
    assert O.rates([], [fresh], 0)[("c2", "to_pod")].passed_bps == 0


# ---- JSON -----------------------------------------------------------------------------------------

def test_json_document_round_trips_and_is_sorted():
    a = O.build_view(pod(cid="b" * 20, meta={"pod": "z/zz"}), now=1)
    b = O.build_view(pod(cid="a" * 20, meta={"pod": "a/aa"}), now=1)
    doc = json.loads(json.dumps(O.to_json([a, b], now=1)))
    assert doc["version"] == O.JSON_VERSION and doc["now_ns"] == 1
    assert [p["pod"] for p in doc["pods"]] == ["aa", "zz"]
    d = doc["pods"][0]["directions"][0]
    assert d["direction"] == "to_pod" and d["limit"]["rate_bps"] == 10_000_000
    assert {t["klass"] for t in d["traffic"]} == {"mouse", "heavy", "unclassified"}


def test_a_direction_on_the_tick_clock_is_seen_at_the_tick_clock_now():
    """A direction whose config has tick_ns stamps its state with jiffies x tick: its bucket
    drains, and its census ages, by `tick_now`; the others by `now` (CLOCK_MONOTONIC)."""
    rate, backlog = 10_000_000, 10**15
    on_tick, mono = raw_dir(rate), raw_dir(rate)
    on_tick.config["tick_ns"] = 4_000_000
    tick_now, now = 10**16, 10**9  # the tick clock runs far ahead of CLOCK_MONOTONIC
    for rd, stamp in ((on_tick, tick_now), (mono, now)):
        rd.state.update(backlog_nbit=backlog, last_ns=stamp - 10**6, epoch=stamp // WINDOW,
                        heavy_now=3, heavy_prev=0)
    assert O.program_now(on_tick.config, now, tick_now) == tick_now
    assert O.program_now(on_tick.config, now, None) == now  # a caller that has no tick clock
    assert O.program_now(mono.config, now, tick_now) == now
    for rd in (on_tick, mono):
        view = O.build_view(pod({L.DIR_TO_POD: rd}), now=now, tick_now=tick_now).direction("to_pod")
        assert view.backlog_bytes == (backlog - 10**6 * rate) // 8 // 10**9
        assert view.heavy_active == 3
