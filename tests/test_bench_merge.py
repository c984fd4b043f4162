"""bench.run_all.merge: a scenario re-run on another machine says so in the record."""

from __future__ import annotations

import json

from bench.run_all import merge

AMD = {"nproc": 2, "cpu": "AMD EPYC", "kernel": "6.18"}
INTEL = {"nproc": 2, "cpu": "Intel Xeon", "kernel": "6.18"}


def record(machine: dict, scenarios: dict, date: str) -> dict:
    return {"machine": machine, "scenarios": scenarios, "errors": {}, "conditions": {}, "seconds": 60,
            "date_utc": date, "containers": []}


def test_a_re_run_elsewhere_is_marked_and_a_re_run_at_home_clears_the_mark(tmp_path):
    path = tmp_path / "rec.json"
    path.write_text(json.dumps(record(AMD, {"control": {"x": 1}, "rate": {"y": 2}}, "d0")))
    merged = merge(str(path), record(INTEL, {"control": {"x": 3}}, "d1"))
    assert merged["scenarios"] == {"control": {"x": 3}, "rate": {"y": 2}}
    assert merged["machine"] == AMD and merged["scenario_machines"] == {"control": INTEL}
    path.write_text(json.dumps(merged))
    again = merge(str(path), record(AMD, {"control": {"x": 4}}, "d2"))
    assert again["scenario_machines"] == {}
