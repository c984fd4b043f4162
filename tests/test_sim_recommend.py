"""`natra-sim recommend` (issue #20): the tuning question as one command."""

from __future__ import annotations

import contextlib
import io
import json

from natra.simulations import cli, recommend

BASE = [
    "recommend",
    "--rate",
    "100M",
    "--workload",
    "zipf",
    "--flows",
    "2000",
    "--duration",
    "300ms",
    "--seeds",
    "2",
    "--jobs",
    "1",
    "--quiet",
]


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_recommends_the_smallest_sketch_meeting_every_target_on_every_seed(tmp_path):
    code, out, err = run(
        *BASE,
        "--width",
        "16,256,1024",
        "--depth",
        "1,4",
        "--threshold",
        "default",
        "--out",
        str(tmp_path),
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    best, configs = doc["recommended"], doc["configurations"]
    assert best["meets"] and best["seeds"] == 2
    assert best["worst_precision"] >= 0.99 and best["worst_recall"] >= 0.99 and best["worst_mice_loss"] == 0
    assert all(c["state_bytes"] >= best["state_bytes"] for c in configs if c["meets"])
    assert any(not c["meets"] for c in configs)  # 16 x 1 cannot tell 2000 flows apart
    assert doc["runner_up"]["state_bytes"] >= best["state_bytes"]
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    code, text, _ = run(
        *BASE, "--width", "16,256,1024", "--depth", "1,4", "--threshold", "default", "--out", str(tmp_path)
    )  # the same grid again: every point resumed
    assert code == 0 and "recommended: width" in text and "runner-up:" in text and "confidence" in text


def test_an_unreachable_target_is_said_so_with_the_closest(tmp_path):
    code, out, _ = run(*BASE, "--width", "8", "--depth", "1", "--out", str(tmp_path))
    assert code == 1
    assert "no configuration in the grid meets the targets" in out and "closest: width 8 x depth 1" in out


def test_a_concurrency_the_workload_cannot_have_is_a_one_line_error(tmp_path):
    code, _, err = run(
        "recommend", "--workload", "websearch", "--concurrency", "20000", "--out", str(tmp_path)
    )
    assert code == 2 and "GB in flight" in err and len(err.strip().splitlines()) == 1


def test_judge_uses_the_worst_seed():
    rows = [
        {
            "width": 64,
            "depth": 2,
            "threshold_pct": None,
            "threshold_fixed_bytes": None,
            "window_ms": 100.0,
            "threshold_bytes": 1,
            "state_bytes": 10,
            "precision": p,
            "recall": 1.0,
            "mice_loss": 0.0,
        }
        for p in (1.0, 0.98)
    ]
    (c,) = recommend.judge(rows, {"precision": 0.99, "recall": 0.99, "mice_loss": 0.0})
    assert not c["meets"] and c["worst_precision"] == 0.98
