"""Writing a sweep's results: CSV, results.json with provenance, and the store that makes sweeps resumable.

Owns: the CSV (the union of every row's columns), results.json (settings,
the version and git commit that produced it, rows), the summary table
printed on stdout, and `ResultStore`: one JSON line per finished point in
the output directory, keyed by the point's parameters, read back when the
same sweep is started again so only the missing points run.
Must not know: how rows were computed, plots.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
from dataclasses import fields
from pathlib import Path

from natra.simulations import units
from natra.simulations.runner import Point

DEFAULT = units.DEFAULT


# ---- output ------------------------------------------------------------------------

GRID_FIELDS = tuple(f.name for f in fields(Point))


def write_csv(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r)) if rows else list(GRID_FIELDS)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _plain(value):
    """Option values as JSON shows them: shares as spelled ('1%', '125000'), lists item by item."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, units.Share):
        return str(value)
    return value


def provenance() -> dict:
    """The natra version and, when run from a git checkout, its commit (and whether it had changes)."""
    from importlib import metadata

    try:
        version = metadata.version("natra")
    except metadata.PackageNotFoundError:
        version = None
    here = Path(__file__).resolve().parent
    out = {"natra_version": version, "commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            out["commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                                    capture_output=True, text=True, timeout=10)
            out["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def results_document(rows: list[dict], settings: dict) -> dict:
    return {"settings": settings, "provenance": provenance(),
            "results": [{k: _json_safe(v) for k, v in r.items()} for r in rows]}


STORE_NAME = "points.jsonl"


class ResultStore:
    """Finished points of a sweep directory, one JSON line each: {"key": ..., "row": ...}."""

    def __init__(self, directory: Path, fresh: bool = False):
        self.path = Path(directory) / STORE_NAME
        if fresh and self.path.exists():
            self.path.unlink()

    def load(self) -> dict[str, dict]:
        """Rows by key; a line cut off by an interruption is skipped."""
        rows: dict[str, dict] = {}
        if not self.path.exists():
            return rows
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
                rows[entry["key"]] = entry["row"]
            except (ValueError, KeyError, TypeError):
                continue
        return rows

    def add(self, key: str, row: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps({"key": key, "row": {k: _json_safe(v) for k, v in row.items()}}) + "\n")


