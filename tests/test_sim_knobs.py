"""Workload knobs researchers think in (flows, concurrency, load, duration, seed), issue #20."""

import contextlib
import io
import logging

import numpy as np
import pytest

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from natra.simulations import cli, knobs, metrics, sweep  # noqa: E402
from natra.simulations import workloads as W  # noqa: E402
from natra.simulations.pcapio import read_capture  # noqa: E402


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_flows_sets_the_number_of_flows_and_concurrency_their_send_rate():
    wl = W.flow_size_workload("websearch", rate_bps=10**9, duration_ns=4 * 10**9, flows=400, seed=2)
    assert abs(len(wl.flows) - 400) < 4 * 400**0.5  # Poisson count around the asked mean
    wl = W.flow_size_workload("websearch", rate_bps=10**9, duration_ns=5 * 10**9, concurrency=10, seed=2)
    per_second = 0.6 * 10**9 / 8 / W.cdf_mean_bytes(W.WEB_SEARCH_CDF)
    assert wl.settings["send_bps"] == W.plan_concurrency("websearch", per_second, 5.0, 10).send_bps
    assert wl.settings["send_bps"] < int(0.6 * 10**9 / 10)  # below steady-state Little: the run starts empty
    truth = metrics.window_truth(wl.now_ns, wl.wire_len, wl.flow_id, 10**8)
    measured = metrics.flow_counts(wl.now_ns, wl.flow_id, truth, wl.duration_ns)
    assert 7 < measured["concurrency_mean"] < 14  # one seed of a heavy-tailed mix around the asked 10
    assert measured["flows"] == len(np.unique(wl.flow_id))


def test_the_concurrency_model_predicts_the_measured_mean():
    """run_concurrency (the bound's model) against generated runs: the mean over seeds is the ask."""
    got = []
    for seed in range(1, 7):
        wl = W.flow_size_workload("websearch", rate_bps=10**8, duration_ns=20 * 10**9, concurrency=12,
                                  seed=seed, load=2.0)
        truth = metrics.window_truth(wl.now_ns, wl.wire_len, wl.flow_id, 10**8)
        got.append(metrics.flow_counts(wl.now_ns, wl.flow_id, truth, wl.duration_ns)["concurrency_mean"])
    assert 12 * 0.8 < np.mean(got) < 12 * 1.2, got


@pytest.mark.parametrize(("concurrency", "seconds", "why"), [
    (20_000, 10, "at any send rate"),  # 20,000 web-search flows at 1 Gbit/s: tens of GB in flight
    (30, 10, "the rest still in flight"),  # a rate slow enough for 30 leaves 28 % of the bytes unsent
])
def test_an_impossible_concurrency_is_refused_with_the_bytes_in_flight(concurrency, seconds, why):
    with pytest.raises(ValueError, match=f"GB in flight.*{why}"):
        W.flow_size_workload("websearch", rate_bps=10**9, duration_ns=seconds * 10**9,
                             concurrency=concurrency)


def test_the_bound_is_sound_both_ways_on_the_command_line(tmp_path):
    """30 concurrent web-search flows at 1 Gbit/s: refused in 10 s (one line, exit 2, nothing written),
    accepted in 20 s (the check is up front: the refusal costs no generation)."""
    pcap = tmp_path / "w.pcap"
    for argv in (["workload", "websearch", str(pcap), "--workload-arg", "concurrency=30"],
                 ["recommend", "--workload", "websearch", "--concurrency", "30",
                  "--out", str(tmp_path / "r")]):
        code, out, err = _run([*argv, "--rate", "1G", "--duration", "10s"])
        assert code == 2 and len(err.strip().splitlines()) == 1 and "GB in flight" in err, (argv, err)
        assert not pcap.exists() and not (tmp_path / "r" / "points.jsonl").exists()
    per_second = 0.6 * 10**9 / 8 / W.cdf_mean_bytes(W.WEB_SEARCH_CDF)
    plan = W.plan_concurrency("websearch", per_second, 20.0, 30)
    assert plan.sent_share >= W.MIN_SENT_SHARE and plan.most > 30
    W.check_feasible("websearch", 10**9, 20 * 10**9, concurrency=30)  # no error
    code, _, err = _run(["workload", "websearch", str(pcap), "--rate", "100M", "--duration", "20s",
                         "--workload-arg", "concurrency=3", "--limit", "1000", "--quiet"])
    assert code == 0 and pcap.exists(), err


def test_flow_counts_by_hand():
    now = np.array([0, 10, 20, 30, 150], dtype=np.uint64)
    fid = np.array([0, 1, 0, 1, 2])
    truth = metrics.window_truth(now, np.full(5, 100), fid, 100)
    got = metrics.flow_counts(now, fid, truth, 200)
    assert got == {"flows": 3, "flows_per_window_mean": 1.5, "flows_per_window_max": 2,
                   "concurrency_mean": (20 + 20 + 0) / 200}


def test_knobs_are_listed_in_help_and_reach_both_subcommands(tmp_path):
    code, out, _ = _run(["sweep", "--help"])
    assert code == 0
    for name in ("flows=auto", "concurrency=auto", "load=0.6", "n_flows=10000", "flows_per_window=50000"):
        assert name in out
    code, out, _ = _run(["workload", "--help"])
    assert code == 0 and "concurrency=auto" in out
    pcap = tmp_path / "w.pcap"
    code, _, err = _run(["workload", "websearch", str(pcap), "--duration", "200ms",
                         "--workload-arg", "flows=30", "--snaplen", "0"])
    assert code == 0, err
    flows = {r.frame[26:38] for r in read_capture(pcap)}
    assert 10 < len(flows) < 60
    assert sweep.run_point(sweep.Point("websearch", 1024, 4, None, 100.0, None, 10**9, 0.2, 1,
                                       options=(("flows", 30),)))["flows"] == len(flows)


def test_run_rows_report_the_concurrency_they_had():
    row = sweep.run_point(sweep.Point("zipf", 1024, 4, None, 100.0, None, 10**8, 0.3, 1))
    assert row["flows"] > 0 and row["flows_per_window_max"] >= row["flows_per_window_mean"] > 0
    assert row["concurrency_mean"] > 0


def test_knob_grammar():
    assert knobs.parse_options(["websearch"], ["concurrency=20k", "load=0.8", "send_bps=100M"]) == (
        ("concurrency", 20_000), ("load", 0.8), ("send_bps", 10**8))
    assert knobs.parse_options(["manyflows"], ["window_ns=50ms"]) == (("window_ns", 50_000_000),)
    for bad in ("load=0", "concurrency=-1", "ipv6_fraction=2", "frame_bytes=10", "send_bps=fast"):
        with pytest.raises(ValueError):
            knobs.parse_options(["websearch"], [bad])
