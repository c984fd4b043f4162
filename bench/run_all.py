"""`make bench`: every scenario (issues 8, 14, 16) in one run, then docs/benchmarks.md.

Owns: the command line, the order of the scenarios, the run's record (machine,
date, settings, each scenario's data or its error) saved as JSON, and the
call that turns that record into the document and plots (bench.report).
Rule: scenarios run one after another (the machine has 2 cores); a failing
scenario is recorded and the rest still run; whatever happens, Ctrl-C and
SIGTERM included, the Bench removes everything it made.
Must not know: how a scenario measures or how a table looks.

Usage (root, from the repository root):
    python3 -m bench.run_all                      # full run, ~35 min (3 repeats)
    python3 -m bench.run_all --smoke --out /tmp/b.md --img-dir /tmp/img
    python3 -m bench.run_all --only rate,latency
    python3 -m bench.run_all --only overhead --merge   # re-run one scenario into the record
    python3 -m bench.report bench/last_results.json   # re-render only
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback

from bench import report, scenarios
from bench.harness import DEFAULT_NET, PREFIX, Bench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "docs", "benchmarks.md")
DEFAULT_IMG_DIR = os.path.join(REPO, "docs", "img")
DEFAULT_JSON = os.path.join(REPO, "bench", "last_results.json")


def _interrupt(*_):
    raise KeyboardInterrupt


def run(settings: scenarios.Settings, only: list[str], smoke: bool, prefix: str = PREFIX,
        net: int = DEFAULT_NET) -> dict:
    record = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "smoke": smoke,
        "machine": scenarios.machine(),
        "settings": dict(vars(settings)),
        "scenarios": {},
        "errors": {},
        "conditions": {},
    }
    started = time.monotonic()
    with Bench(prefix, net) as bench:
        for name in only:
            t0 = time.monotonic()
            load_before = scenarios.load_average()
            try:
                record["scenarios"][name] = scenarios.SCENARIOS[name](bench, settings)
            except KeyboardInterrupt:
                record["errors"][name] = "interrupted"
                raise
            except Exception as e:  # noqa: BLE001 - recorded; the other scenarios still run
                record["errors"][name] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
                for problem in bench.reset():
                    print(f"bench reset: {problem}", file=sys.stderr)
            record["conditions"][name] = {
                "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "seconds": round(time.monotonic() - t0, 1),
                "repeats": settings.repeats,
                "loadavg_1min_before": load_before,
                "loadavg_1min_after": scenarios.load_average(),
            }
            scenarios.log(f"{name}: {time.monotonic() - t0:.0f} s")
        record["containers"] = sorted(bench.container_ids)
    record["seconds"] = round(time.monotonic() - started, 1)
    return record


def merge(path: str, fresh: dict) -> dict:
    """The record at `path` with the scenarios of `fresh` replacing its own."""
    with open(path) as f:
        old = json.load(f)
    old["containers"] = sorted(set(old.get("containers", [])) | set(fresh.get("containers", [])))
    for key in ("scenarios", "errors", "conditions"):
        old.setdefault(key, {})
        for name in fresh["scenarios"].keys() | fresh["errors"].keys():
            old[key].pop(name, None)
        old[key].update(fresh.get(key, {}))
    elsewhere = old.setdefault("scenario_machines", {})  # scenarios re-run on another machine
    for name in fresh["scenarios"]:
        if fresh["machine"] != old.get("machine"):
            elsewhere[name] = fresh["machine"]
        else:
            elsewhere.pop(name, None)
    old["seconds"] = old.get("seconds", 0) + fresh["seconds"]
    old["date_utc"] = f"{old['date_utc']} (re-run {', '.join(fresh['scenarios'])}: {fresh['date_utc']})"
    return old


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.run_all", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--smoke", action="store_true", help="a short run that only checks everything still works"
    )
    ap.add_argument(
        "--only",
        default=",".join(scenarios.SCENARIOS),
        help=f"comma-separated scenarios (default all: {','.join(scenarios.SCENARIOS)})",
    )
    ap.add_argument("--out", default=DEFAULT_OUT, help="Markdown document to write")
    ap.add_argument("--img-dir", default=DEFAULT_IMG_DIR, help="directory for the bench-*.png plots")
    ap.add_argument("--json", default=DEFAULT_JSON, help="where to keep the raw record")
    ap.add_argument(
        "--merge", action="store_true", help="replace only these scenarios in the record at --json"
    )
    ap.add_argument("--repeats", type=int, help="override the number of repeated runs")
    ap.add_argument("--prefix", default=PREFIX, help=f"names of namespaces and containers (default {PREFIX})")
    ap.add_argument("--net", type=int, default=DEFAULT_NET,
                    help=f"Pods in 10.NET.0.0/16, the remote node in 10.NET+1.0.0/24 (default "
                    f"{DEFAULT_NET}); another prefix and net let a run share the host with a smoke run")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (namespaces, veths, BPF)", file=sys.stderr)
        return 1
    only = [x for x in args.only.split(",") if x]
    unknown = [x for x in only if x not in scenarios.SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}")
    settings = scenarios.SMOKE if args.smoke else scenarios.Settings()
    if args.repeats:
        from dataclasses import replace

        settings = replace(settings, repeats=args.repeats)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        record = run(settings, only, args.smoke, args.prefix, args.net)
    except KeyboardInterrupt:
        print("bench: interrupted; everything it made is removed", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.merge:
        record = merge(args.json, record)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(record, f, indent=1, default=float)
    report.write(record, args.out, args.img_dir)
    print(
        f"bench: wrote {args.out} and {args.json} in {record['seconds']:.0f} s"
        + (f"; errors: {record['errors']}" if record["errors"] else ""),
        file=sys.stderr,
    )
    return 1 if record["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
