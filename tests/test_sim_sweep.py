"""simulations.sweep: grid runs, reproducibility, outputs, and the fast path against the model."""

import csv
import json

import numpy as np
import pytest
from natra.reference import accel
from natra.reference.engine import Model
from natra.simulations import runner, sweep
from natra.simulations import workloads as W
from natra.simulations.cli import main as natra_sim

from natra.kernel import layout as L
from natra.kernel.params import params_for, to_config

TIMING_FIELDS = ("model_s", "elapsed_s")


def _numbers(row):
    return {k: v for k, v in row.items() if k not in TIMING_FIELDS}


def _point(workload="websearch", **overrides):
    fields = {"workload": workload, "width": 1024, "depth": 4, "threshold_pct": None, "window_ms": 100.0,
              "reserve_pct": None, "rate_bps": 10**9, "duration_s": 1.0, "seed": 3}
    fields.update(overrides)
    return sweep.Point(**fields)


def test_same_seed_same_numbers_and_another_seed_differs():
    a = sweep.run_point(_point("zipf"))
    sweep.open_loop_workload.cache_clear()
    b = sweep.run_point(_point("zipf"))
    c = sweep.run_point(_point("zipf", seed=4))
    assert _numbers(a) == _numbers(b)
    assert _numbers(a) != _numbers(c)


def test_parallel_grid_equals_serial_grid_in_grid_order():
    points = sweep.grid(["mix"], [64, 256], [2], [1.0], [50.0], [None], rate_bps=10**8, duration_s=0.5,
                        seed=2)
    serial = sweep.run_grid(points, jobs=1, progress=False)
    parallel = sweep.run_grid(points, jobs=2, progress=False)
    assert [_numbers(r) for r in serial] == [_numbers(r) for r in parallel]
    assert [r["width"] for r in serial] == [64, 256]


@pytest.mark.parametrize("workload", ["websearch", "zipf"])
def test_default_configuration_meets_the_issue_targets(workload):
    row = sweep.run_point(_point(workload, duration_s=2.0))
    assert row["threshold_bytes"] == 10**9 // 8 // 10 // 100  # 1 % of rate x window at 1 Gbit/s
    assert row["recall"] >= 0.99 and row["precision"] >= 0.99
    assert row["conformance_violations"] == 0
    assert row["mice_load"] < 1.0 and row["mice_loss"] == 0.0


def test_overloaded_mix_keeps_conformance_and_mice_while_heavy_flows_are_dropped():
    row = sweep.run_point(_point("mix", duration_s=1.0))
    assert row["dropped_bytes"] > 0
    assert row["conformance_violations"] == 0
    assert row["mice_envelope_excess"] == 0 and row["mouse_classified_dropped_bytes"] == 0
    assert row["recall"] == 1.0


def test_closed_loop_flood_point_runs_and_conforms():
    row = sweep.run_point(_point("flood", duration_s=0.5))
    assert row["packets"] > 0 and row["conformance_violations"] == 0
    assert row["offered_load"] > 1.0


def test_threshold_and_reserve_percentages_become_bytes_and_bits():
    p = _point(threshold_pct=2.0, reserve_pct=10.0, window_ms=50.0).params()
    assert p.threshold_bytes == 10**9 * 50_000_000 // L.NS_PER_SEC // 8 * 2 // 100
    assert p.reserve_bits == p.burst_bits // 10
    assert p.window_ns == 50_000_000


@pytest.mark.skipif(not accel.available(), reason="C accelerator not built (make reference/_natra_fast.so)")
def test_fast_path_equals_the_per_packet_model_on_a_workload():
    wl = W.elephants_mice(seed=9, rate_bps=10**8, duration_ns=300_000_000, n_elephants=3, mice_load=0.3)
    params = params_for(wl.rate_bps, width=256, depth=3, window_ns=20_000_000)
    verdicts, heavy, estimates = sweep.decide_all(wl, params)
    configs = [to_config(None, width=256, depth=3)] * 2
    configs[L.DIR_TO_POD] = to_config(params)
    slow = Model(configs, flow_table=4096, accelerator=False)
    keys = wl.keys
    for i in range(len(wl)):
        d = slow.process_key(keys[i].tobytes(), int(wl.wire_len[i]), int(wl.now_ns[i]), L.DIR_TO_POD,
                             ect=bool(wl.ect[i]))
        assert (d.verdict, d.heavy, d.estimate) == (verdicts[i], heavy[i], estimates[i]), f"frame {i}"
    assert len(np.unique(verdicts)) > 1


def test_cli_sweep_writes_csv_json_and_plots(tmp_path, capsys):
    out = tmp_path / "out"
    code = natra_sim(["sweep", "--workload", "websearch", "--width", "256,1024", "--depth", "2",
                      "--duration", "500ms", "--json", "--quiet", "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["width"] for r in printed["results"]] == [256, 1024]
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {"precision", "recall", "f1", "state_bytes"} <= set(rows[0])
    assert json.loads((out / "results.json").read_text())["results"][0]["width"] == 256
    assert (out / "f1_vs_memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # only the width varied: no plot against window, threshold or reserve
    assert sorted(p.name for p in out.glob("*.png")) == ["f1_vs_memory.png"]


def test_plots_facet_a_big_grid_and_keep_legends_short(tmp_path):
    from natra.simulations import plots

    rows = [{**{f: None for f in sweep.GRID_FIELDS}, "workload": "zipf", "width": w, "depth": d,
             "threshold_pct": t, "window_ms": win, "rate_bps": 10**8, "duration_s": 1.0, "seed": 1,
             "options": "", "state_bytes": w * d * 48, "f1": 1.0, "threshold_bytes": 1000, "reserve_bytes": 1,
             "burst_bytes": 10, "detect_delay_p50_ms": 1.0, "small_flows_hit": 0.0, "mice_loss": 1.9e-7,
             "jain_heavy": 1.0, "jain_heavy_throughput": 1.0}
            for w in (256, 1024) for d in (1, 2, 4) for t in (0.5, 1.0, 2.0) for win in (50.0, 100.0, 200.0)]
    group_by = [f for f in plots.varying(rows) if f not in ("state_bytes", "width", "workload")]
    facet, lines = plots._facets(group_by, rows)
    assert facet and len({tuple(r[f] for f in lines) for r in rows}) <= plots.MAX_LINES
    written = plots.plot_all(rows, tmp_path)
    assert {p.name for p in written} == {"f1_vs_memory.png", "delay_vs_window.png",
                                         "mice_jain_vs_threshold.png"}


def test_cli_refuses_unknown_workload(tmp_path, capsys):
    assert natra_sim(["sweep", "--workload", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown workload" in capsys.readouterr().err


def test_cli_workload_writes_a_pcap_readable_back(tmp_path):
    from natra.reference.key import parse_frame
    from natra.simulations.pcapio import read_capture

    path = tmp_path / "ws.pcap"
    assert natra_sim(["workload", "websearch", str(path), "--duration", "50ms", "--limit", "200"]) == 0
    records = list(read_capture(path))
    wl = sweep.open_loop_workload("websearch", 1, W.DEFAULT_RATE_BPS, 0.05)
    assert len(records) == min(200, len(wl))
    for i, r in enumerate(records):
        assert parse_frame(r.frame).key == bytes(wl.keys[i]) and r.orig_len == wl.wire_len[i]


def test_rate_parser_is_the_cni_grammar():
    assert sweep.parse_rate("1G") == 10**9
    assert sweep.parse_rate("100M") == 10**8
    assert sweep.parse_rate("1Gi") == 2**30
    assert sweep.parse_rate("1e9") == 10**9
    assert sweep.parse_rate("64000") == 64000
    with pytest.raises(ValueError, match="rate '2.5gbit'"):
        sweep.parse_rate("2.5gbit")


def _colliding_pair(width: int, depth: int):
    """Two flows whose keys share every sketch column at this width and depth."""
    from natra.reference.hashing import columns, flow_hash_keys

    flows = W.make_flows(np.random.default_rng(5), np.zeros(4000, dtype=np.int8))
    cols = columns(flow_hash_keys(flows.keys, L.HASH_SEED1), flow_hash_keys(flows.keys, L.HASH_SEED2),
                   width, depth)
    seen = {}
    for i, tag in enumerate(map(tuple, cols.tolist())):
        if tag in seen:
            return flows, seen[tag], i
        seen[tag] = i
    raise AssertionError("no colliding pair among 4000 keys")


def test_full_collision_false_positive_is_counted_whatever_the_depth():
    for depth in (2, 4):
        flows, heavy_flow, mouse = _colliding_pair(16, depth)
        fid = np.array([heavy_flow] * 20 + [mouse], dtype=np.int32)
        now = np.arange(21, dtype=np.uint64) * np.uint64(1000)
        wire = np.full(21, W.MTU_FRAME_BYTES, dtype=np.uint32)
        wl = W.Workload("pair", 0, 10**9, 10**6, now, wire, fid, flows.ect[fid], flows)
        params = params_for(10**9, width=16, depth=depth, threshold_bytes=10_000)
        _, _, estimates = sweep.decide_all(wl, params)
        assert estimates[-1] > 20 * W.MTU_FRAME_BYTES  # the mouse inherits the elephant's count
        assert sweep.full_collision_false_positives(wl, estimates, params) == 1


def _pairs_by_brute_force(keys, width, depth):
    from natra.reference.hashing import key_columns

    tags = [tuple(key_columns(k.tobytes(), width, depth)) for k in keys]
    return sum(tags[i] == tags[j] for i in range(len(tags)) for j in range(i + 1, len(tags)))


@pytest.mark.parametrize(("width", "depth"), [(8, 1), (8, 2), (4, 3)])
def test_full_collision_key_pairs_counts_every_pair_sharing_all_columns(width, depth, monkeypatch):
    keys = W.make_flows(np.random.default_rng(11), np.zeros(150, dtype=np.int8)).keys
    expected = _pairs_by_brute_force(keys, width, depth)
    assert expected > 0
    assert sweep.full_collision_key_pairs(keys, width, depth) == expected
    monkeypatch.setattr(runner, "PACKED_TAG_BITS", 0)  # the row-by-row path for wide sketches
    assert sweep.full_collision_key_pairs(keys, width, depth) == expected


def test_independent_rows_leave_no_full_collision_at_depth_4():
    keys = W.make_flows(np.random.default_rng(12), np.zeros(20_000, dtype=np.int8)).keys
    two = sweep.full_collision_key_pairs(keys, 1024, 2)
    assert 50 < two < 400  # about n^2 / (2 * 1024^2) = 191 for independent rows
    assert sweep.full_collision_key_pairs(keys, 1024, 4) == 0


def test_role_throughput_counts_only_passed_frames_per_sender():
    roles = np.array([W.ROLE_AIMD, W.ROLE_AIMD, W.ROLE_FLOOD, W.ROLE_MOUSE], dtype=np.int8)
    flows = W.make_flows(np.random.default_rng(3), roles)
    fid = np.array([0, 0, 1, 2, 2, 2, 3], dtype=np.int32)
    verdicts = np.array([L.V_PASS_HEAVY, L.V_MARK, L.V_PASS_HEAVY, L.V_PASS_HEAVY, L.V_DROP_SHARE,
                         L.V_DROP_HEAVY, L.V_PASS_MOUSE], dtype=np.uint8)
    wire = np.full(fid.shape[0], 1250, dtype=np.uint32)  # 10 000 bits each
    now = np.arange(fid.shape[0], dtype=np.uint64)
    wl = W.Workload("t", 0, 10**9, L.NS_PER_SEC // 100, now, wire, fid, flows.ect[fid], flows)
    got = sweep.role_throughput(wl, verdicts)  # 10 ms run: 10 000 bits -> 1 Mbit/s
    assert got["aimd_mbps_max"] == 2.0 and got["aimd_mbps_min"] == 1.0 and got["aimd_mbps_mean"] == 1.5
    assert got["flood_mbps_mean"] == 1.0
    assert got["even_split_mbps"] == (2.0 + 1.0 + 1.0) / 3
    mice_only = W.make_flows(np.random.default_rng(3), np.array([W.ROLE_MOUSE], dtype=np.int8))
    one = np.zeros(1, dtype=np.int32)
    assert sweep.role_throughput(W.Workload("m", 0, 10**9, 10**7, now[:1], wire[:1], one, mice_only.ect[one],
                                            mice_only), verdicts[:1]) == {}


def test_csv_holds_the_union_of_columns_and_flood_rows_get_a_throughput_plot(tmp_path):
    rows = sweep.run_grid(sweep.grid(["websearch", "flood"], [1024], [4], [1.0], [100.0], [None],
                                     rate_bps=10**8, duration_s=0.3, seed=1), jobs=1, progress=False)
    sweep.write_csv(rows, tmp_path / "r.csv")
    with (tmp_path / "r.csv").open() as f:
        read = list(csv.DictReader(f))
    assert read[0]["flood_mbps_mean"] == "" and float(read[1]["flood_mbps_mean"]) > 0
    written = sweep.plot_all(rows, tmp_path)
    assert tmp_path / sweep.THROUGHPUT_PLOT in written
    assert sweep.plot_throughput(rows[:1], tmp_path / "none") is None
