"""Sweeps on Dask (issue #20): a real scheduler and two worker processes on 127.0.0.1, seeds, resume."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import subprocess
import time

import pytest

pytest.importorskip("distributed")
from natra.simulations import cli, runner, sweep  # noqa: E402

TIMING = ("model_s", "elapsed_s")
GRID = ["--workload", "zipf", "--width", "256,1024", "--depth", "2", "--duration", "100ms", "--rate", "100M",
        "--seed", "3", "--seeds", "2", "--no-plots", "--quiet", "--json"]


def numbers(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster():
    """`dask scheduler` and two `dask worker` processes, one thread each, on 127.0.0.1."""
    dask = shutil.which("dask") or pytest.skip("the dask command is not installed")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], **quiet)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([dask, "worker", address, "--nworkers", "1", "--nthreads", "1",
                                           "--no-dashboard", "--host", "127.0.0.1"], **quiet))
        from dask.distributed import Client

        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout=5) as client:
                    client.wait_for_workers(2, timeout=60)
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_sweep_on_a_dask_scheduler_with_two_workers_equals_the_local_run(tmp_path, dask_cluster):
    code, out, err = run("sweep", *GRID, "--jobs", "1", "--out", str(tmp_path / "local"))
    assert code == 0, err
    local = json.loads(out)
    code, out, err = run("sweep", *GRID, "--scheduler", dask_cluster, "--out", str(tmp_path / "dask"))
    assert code == 0, err
    remote = json.loads(out)
    assert len(remote["results"]) == 4  # 2 widths x 2 seeds
    assert [r["seed"] for r in remote["results"]] == [3, 4, 3, 4]
    assert numbers(remote["results"]) == numbers(local["results"])
    prov = json.loads((tmp_path / "dask" / "results.json").read_text())["provenance"]
    assert prov["natra_version"] and len(prov["commit"] or "") == 40
    from dask.distributed import Client

    with Client(dask_cluster, timeout=10) as client:  # both worker processes took part
        ran = client.run(lambda dask_worker: len(dask_worker.data) + len(dask_worker.state.log))
    assert len(ran) == 2 and all(ran.values())


def test_an_interrupted_sweep_resumes_with_the_missing_points_only(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    first = GRID[:3] + ["256"] + GRID[4:]
    assert run("sweep", *first, "--jobs", "1", "--out", str(out))[0] == 0
    assert len((out / "points.jsonl").read_text().splitlines()) == 2
    with (out / "points.jsonl").open("a") as fh:
        fh.write('{"key": "cut off by a kill')  # an interrupted write is skipped
    ran = []
    real = runner.run_point

    def counting(point):
        ran.append(point.width)
        return real(point)

    monkeypatch.setattr(runner, "run_point", counting)
    code, stdout, err = run("sweep", *GRID[:-1], "--jobs", "1", "--out", str(out))
    assert code == 0 and "resuming: 2 of 4 points" in err
    assert ran == [1024, 1024]
    ran.clear()
    assert run("sweep", *GRID, "--jobs", "1", "--out", str(out), "--fresh")[0] == 0
    assert len(ran) == 4


def test_an_unreachable_scheduler_is_a_one_line_error(tmp_path):
    code, _, err = run("sweep", *GRID, "--scheduler", f"127.0.0.1:{_free_port()}", "--out", str(tmp_path))
    assert code == 2 and "Dask scheduler tcp://127.0.0.1:" in err and len(err.strip().splitlines()) == 1
    code, _, err = run("sweep", "--scheduler", "http://x", "--out", str(tmp_path))
    assert code == 2 and "scheduler 'http://x'" in err


def test_several_seeds_per_point_are_averaged_in_plots():
    rows = [{**{f: 0 for f in sweep.GRID_FIELDS}, "seed": s, "f1": v} for s, v in ((1, 0.5), (2, 1.0))]
    from natra.simulations.plots import mean_over_seeds

    (row,) = mean_over_seeds(rows)
    assert row["f1"] == 0.75 and row["seeds"] == 2
