"""Progress within long steps (issue #20): generation, pcap writing, replay and sweep points say
where they are while they run, on stderr, redrawn by a heartbeat even when nothing moves."""

from __future__ import annotations

import contextlib
import io

import pytest
from natra.simulations import cli, progress, replay, runner


@pytest.fixture(autouse=True)
def fast_heartbeat(monkeypatch):
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.05)


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def lines(err: str) -> list[str]:
    return [x.strip() for x in err.replace("\r", "\n").splitlines() if x.strip()]


def test_generation_and_writing_report_while_they_run(tmp_path, monkeypatch):
    """manyflows (500,020 flows, 524,000 frames): each generation step is named as it starts, the
    heartbeat redraws in between, and the write bar counts frames chunk by chunk."""
    code, _, err = run("workload", "manyflows", str(tmp_path / "m.pcap"), "--duration", "1s")
    assert code == 0, err
    shown = lines(err)
    generating = [x for x in shown if x.startswith("generate manyflows:")]
    for step in ("500,020 flow keys", "elephants' frames", "frames of 500,000 small flows", "merging"):
        assert any(step in x for x in generating), (step, generating)
    assert len(generating) > 5  # redrawn, not one line at the end
    writing = [x for x in shown if x.startswith("write:")]
    assert any("65536/" in x for x in writing) and any("100%" in x for x in writing), writing
    code, _, err = run("workload", "manyflows", str(tmp_path / "q.pcap"), "--duration", "1s", "--quiet")
    assert code == 0 and not any(x.startswith(("generate manyflows:", "write:")) for x in lines(err))

    monkeypatch.setattr(replay, "PROGRESS_MIN_FRAMES", 1000)
    monkeypatch.setattr(replay, "PROGRESS_MIN_BYTES", 1000)
    code, _, err = run("workload", "mix", str(tmp_path / "x.pcap"), "--duration", "20ms", "--quiet")
    assert code == 0, err
    code, _, err = run("replay", str(tmp_path / "x.pcap"), "--rate", "1G")
    assert code == 0, err
    assert any(x.startswith("read:") and "frames" in x for x in lines(err))
    assert any(x.startswith("replay (model):") and "100%" in x for x in lines(err))


def test_a_sweep_point_reports_its_steps_in_process():
    points = runner.grid(["websearch"], [1024], [4], [None], [100.0], [None], rate_bps=10**9, duration_s=0.5,
                         seed=[1, 2])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        runner.run_grid(points, jobs=1)
    shown = lines(err.getvalue())
    for step in ("websearch 1024x4 seed 1: websearch: generating", "seed 2: websearch: model, frame 0 of",
                 "websearch: metrics over"):
        assert any(step in x for x in shown), (step, shown)


def test_a_sweep_point_reports_its_steps_from_dask_workers(tmp_path):
    pytest.importorskip("distributed")
    code, _, err = run("sweep", "--workload", "websearch", "--duration", "2s", "--seed", "1", "--seeds", "2",
                       "--jobs", "2", "--no-plots", "--out", str(tmp_path))
    assert code == 0, err
    from_workers = [x for x in lines(err) if x.startswith("sweep:") and "websearch 1024x4 seed" in x]
    assert from_workers, lines(err)
