"""`natra-sim sweep` and `natra-sim workload`: the command line of parameter sweeps.

Owns: the options of `sweep` (the grid, the scene, seeds, where it runs:
this process, an embedded Dask LocalCluster or a Dask scheduler; resuming)
and of `workload` (a generated workload as a pcap), and wiring them to
runner.py (points and runs), results.py (CSV, JSON, the resumable store)
and plots.py (PNG).
Rule: values use the one grammar of units.py; a bad value is a one-line
error and exit 2. The names tests and scripts used from this module before
the split (Point, run_point, grid, run_grid, ...) are re-exported.
Must not know: how a point is computed or drawn.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from natra.simulations import knobs, units
from natra.simulations import workloads as W
from natra.simulations.plots import PLOTS, THROUGHPUT_PLOT, plot_all, plot_throughput, varying  # noqa: F401
from natra.simulations.progress import Progress
from natra.simulations.results import (  # noqa: F401
    GRID_FIELDS,
    ResultStore,
    _plain,
    provenance,
    results_document,
    write_csv,
)
from natra.simulations.runner import (  # noqa: F401
    ClusterError,
    Point,
    WorkloadError,
    _describe,
    _generated,
    _model,
    check_points,
    closed_loop,
    decide_all,
    full_collision_false_positives,
    full_collision_key_pairs,
    grid,
    open_loop_workload,
    point_key,
    role_throughput,
    run_grid,
    run_point,
)

from natra.kernel import layout as L
from natra.kernel.params import (
    DEFAULT_FLOW_TABLE,
    DEFAULT_WINDOW_NS,
    MAX_FLOW_TABLE,
    MAX_WINDOW_NS,
    MIN_WINDOW_NS,
    flow_slots,
)

DEFAULT_OUT = "sim-results"
DEFAULT = units.DEFAULT  # grid value: Natra's own rule
PROGRESS_MIN_FRAMES = 200_000  # writes at least this large show a bar (a chunk is 65,536 frames)
MIN_DURATION_NS = 1_000_000  # 1 ms of traffic at least
MAX_DURATION_NS = 3600 * L.NS_PER_SEC


# ---- command line ----------------------------------------------------------------------

def parse_rate(text: str) -> int:
    """bit/s from a quantity ('1G', '100M', '1Gi', '1e9'): the CNI side's grammar (units.rate)."""
    try:
        return units.rate(text)
    except argparse.ArgumentTypeError as e:
        raise ValueError(str(e)) from None


def scheduler_address(text: str) -> str:
    """tcp://host:port (or host:port) of a Dask scheduler."""
    import re

    address = text if "://" in text else f"tcp://{text}"
    match = re.fullmatch(r"(tcp|tls|inproc|ucx)://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):([0-9]{1,5})", address)
    if not match or not 0 < int(match[3]) < 65536:
        raise argparse.ArgumentTypeError(f"scheduler {text!r}: an address like tcp://10.0.0.5:8786")
    return address


def workload_name(text: str) -> str:
    if text not in W.WORKLOAD_NAMES:
        raise argparse.ArgumentTypeError(f"unknown workload {text!r}; known: {', '.join(W.WORKLOAD_NAMES)}")
    return text


WIDTH = units.bounded(units.power_of_two, maximum=L.MAX_WIDTH, what="width")
DEPTH = units.bounded(units.count, minimum=1, maximum=L.MAX_DEPTH, what="depth")
WINDOW = units.bounded(units.duration_ns, minimum_ns=MIN_WINDOW_NS, maximum_ns=MAX_WINDOW_NS, what="window")
DURATION = units.bounded(units.duration_ns, minimum_ns=MIN_DURATION_NS, maximum_ns=MAX_DURATION_NS,
                         what="duration")
THRESHOLD = units.bounded(units.share, what="threshold", of="the window's volume (rate x window)")
RESERVE = units.bounded(units.share, what="reserve", of="the burst", minimum_bytes=0)
SEED = units.bounded(units.count, minimum=0, maximum=2**63 - 1, what="seed")
_FLOW_TABLE_COUNT = units.bounded(units.count, minimum=1, maximum=MAX_FLOW_TABLE, what="flow table")


def FLOW_TABLE(text: str) -> int:  # noqa: N802 (an argparse type, named as the others)
    """--flow-table: a count, rounded up to the power of two the table is made with."""
    return flow_slots(_FLOW_TABLE_COUNT(text))


JOBS = units.bounded(units.count, minimum=0, maximum=1024, what="jobs")


SUMMARY_COLUMNS = ("workload", "width", "depth", "threshold_pct", "window_ms", "reserve_pct", "precision",
                   "recall", "f1", "detect_delay_p50_ms", "mice_loss", "mice_load", "jain_heavy",
                   "conformance_violations", "state_bytes", "flows", "flows_per_window_mean",
                   "concurrency_mean")


def summary_table(rows: list[dict]) -> str:
    lines = ["  ".join(SUMMARY_COLUMNS)]
    for r in rows:
        cells = []
        for c in SUMMARY_COLUMNS:
            v = r.get(c)
            fixed = r.get(c.replace("_pct", "_fixed_bytes")) if c.endswith("_pct") else None
            if fixed is not None:
                cells.append(f"{fixed}B")
                continue
            cells.append(DEFAULT if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("  ".join(cells))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "workload arguments (--workload-arg NAME=VALUE) and their defaults:\n" + knobs.help_text()
    parser.add_argument("--workload", type=units.listed(workload_name), default=["websearch"],
                        help=f"comma list of {', '.join(W.WORKLOAD_NAMES)}")
    parser.add_argument("--width", type=units.listed(WIDTH), default=[1024],
                        help="comma list of sketch widths (powers of two)")
    parser.add_argument("--depth", type=units.listed(DEPTH), default=[4],
                        help=f"comma list of sketch depths (1..{L.MAX_DEPTH})")
    parser.add_argument("--threshold", type=units.listed(THRESHOLD, allow_default=True), default=[None],
                        help="comma list of heavy-hitter thresholds: bytes per window (125k, 64Ki) or a "
                             "percentage of rate x window spelled with %% (1%%); 'default': Natra's rule")
    parser.add_argument("--window", type=units.listed(WINDOW), default=[DEFAULT_WINDOW_NS],
                        help="comma list of sketch windows as durations (100ms, 1s)")
    parser.add_argument("--reserve", type=units.listed(RESERVE, allow_default=True), default=[None],
                        help="comma list of mice reserves: bytes (256Ki) or a percentage of the burst "
                             "(5%%); 'default': Natra's rule")
    parser.add_argument("--rate", type=units.rate, default=W.DEFAULT_RATE_BPS,
                        help="Pod rate in bit/s, a quantity (1G, 100M, 1Gi, 1e9)")
    parser.add_argument("--duration", type=DURATION, default=10 * L.NS_PER_SEC,
                        help="traffic per run, a duration (10s, 500ms)")
    parser.add_argument("--seed", type=units.listed(SEED), default=[1],
                        help="comma list of seeds (each point runs once per seed)")
    parser.add_argument("--seeds", type=units.bounded(units.count, minimum=1, maximum=1000, what="seeds"),
                        default=1, help="N: run seeds S..S+N-1 for each --seed S (plots show the mean)")
    parser.add_argument("--workload-arg", action="append", default=[], metavar="NAME=VALUE",
                        help="passed to the workload generator, e.g. load=1.2 (repeatable; listed below)")
    parser.add_argument("--flow-table", type=FLOW_TABLE, default=DEFAULT_FLOW_TABLE,
                        help="heavy-flow table slots (a power of two)")
    parser.add_argument("--jobs", type=JOBS, default=0,
                        help="worker processes of the embedded Dask LocalCluster (0: one per core; 1: run "
                             "in this process, no Dask)")
    parser.add_argument("--scheduler", type=scheduler_address, default=None, metavar="tcp://HOST:PORT",
                        help="run the points on this Dask scheduler's workers instead (dask.distributed; "
                             "the workers need natra[sim] installed)")
    parser.add_argument("--fresh", action="store_true",
                        help="forget finished points in --out (by default a sweep resumes: points whose "
                             "parameters are in OUT/points.jsonl are not run again)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output directory (default {DEFAULT_OUT}/sweep-WORKLOADS)")
    parser.add_argument("--json", action="store_true", help="print the JSON results on stdout")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    """Sweep a parameter grid over workloads; write CSV, JSON and PNG plots."""
    try:
        options = knobs.parse_options(args.workload, args.workload_arg)
        windows_ms = [ns / 1e6 for ns in args.window]
        seeds = list(dict.fromkeys(s + i for s in args.seed for i in range(args.seeds)))
        points = grid(args.workload, args.width, args.depth, args.threshold, windows_ms, args.reserve,
                      rate_bps=args.rate, duration_s=args.duration / L.NS_PER_SEC, seed=seeds,
                      flow_table=args.flow_table, options=options)
        for p in points:
            p.params()
        check_points(points)
    except ValueError as e:
        print(f"natra-sim sweep: {e}", file=sys.stderr)
        return 2
    out = args.out or Path(DEFAULT_OUT) / "sweep-{}".format("-".join(args.workload))
    try:
        out.mkdir(parents=True, exist_ok=True)
        store = ResultStore(out, fresh=args.fresh)
        done = store.load()
        resumed = sum(1 for p in points if point_key(p) in done)
        if resumed:
            print(f"resuming: {resumed} of {len(points)} points already in {store.path}", file=sys.stderr)
        rows = run_grid(points, jobs=args.jobs, progress=not args.quiet, scheduler=args.scheduler, done=done,
                        on_row=store.add)
    except (OSError, WorkloadError, ClusterError) as e:
        print(f"natra-sim sweep: {e}", file=sys.stderr)
        return 2
    settings = {"argv": sys.argv[1:], "grid": {k: _plain(v) for k, v in vars(args).items()
                                               if k not in ("out", "json", "quiet", "no_plots", "_run")}}
    settings["grid"]["out"] = str(out)
    document = results_document(rows, settings)
    write_csv(rows, out / "results.csv")
    (out / "results.json").write_text(json.dumps(document, indent=1))
    plots = [] if args.no_plots else plot_all(rows, out)
    if args.json:
        print(json.dumps(document, indent=1))
    else:
        print(summary_table(rows))
    print(f"wrote {out / 'results.csv'}, {out / 'results.json'}" + "".join(f", {p}" for p in plots),
          file=sys.stderr)
    return 0


# ---- `natra-sim workload`: a workload as pcap -----------------------------------------------

def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "workload arguments (--workload-arg NAME=VALUE) and their defaults:\n" + knobs.help_text()
    parser.add_argument("name", type=workload_name, help=", ".join(W.WORKLOAD_NAMES))
    parser.add_argument("output", type=Path, help="pcap file to write")
    parser.add_argument("--rate", type=units.rate, default=W.DEFAULT_RATE_BPS,
                        help="Pod rate in bit/s, a quantity (1G, 100M, 1Gi, 1e9)")
    parser.add_argument("--duration", type=DURATION, default=L.NS_PER_SEC, help="a duration (1s, 500ms)")
    parser.add_argument("--seed", type=SEED, default=1)
    parser.add_argument("--workload-arg", action="append", default=[], metavar="NAME=VALUE",
                        help="passed to the workload generator, e.g. load=1.2 (repeatable; listed below)")
    parser.add_argument("--limit", type=units.bounded(units.count, minimum=1, what="limit"), default=None,
                        help="write at most this many frames")
    parser.add_argument("--snaplen", default=None,
                        type=units.bounded(units.count, minimum=0, maximum=65535, what="snaplen"),
                        help="bytes kept per frame (0: whole frames; default: headers only, "
                                           "original lengths kept: every replay engine charges those)")
    parser.add_argument("--base-ns", default=0,
                        type=units.bounded(units.count, minimum=0, maximum=2**62, what="base-ns"),
                        help="timestamp of the workload's time 0, ns since the epoch")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run_workload(args) -> int:
    """Write a generated workload as a pcap file (the flood one reacts to Natra's defaults)."""
    from natra.simulations.pcapwrite import DEFAULT_SNAPLEN, write_pcap

    started = time.perf_counter()
    try:
        options = knobs.parse_options([args.name], args.workload_arg)
        point = Point(args.name, 1024, 4, None, 100.0, None, args.rate, args.duration / L.NS_PER_SEC,
                      args.seed, options=options)
        check_points([point])  # a workload that cannot exist is refused before anything is generated
        text = _describe(point)
        with Progress(f"generate {args.name}", unit="", enabled=not args.quiet) as bar:
            bar.stage("starting")
            if args.name in W.CLOSED_LOOP:
                workload = _generated(lambda: closed_loop(point, point.params()), text)[0]
            else:
                workload = _generated(lambda: open_loop_workload(args.name, args.seed, args.rate,
                                                                 point.duration_s, options), text)
            bar.stage(f"{len(workload):,} frames of {len(workload.flows):,} flows")
        snaplen = DEFAULT_SNAPLEN if args.snaplen is None else args.snaplen
        total = len(workload) if args.limit is None else min(args.limit, len(workload))
        print(f"generated {len(workload)} frames of {len(workload.flows)} flows in "
              f"{time.perf_counter() - started:.1f} s; writing {total}", file=sys.stderr)
        with Progress("write", total=total, unit="frame",
                      enabled=not args.quiet and total >= PROGRESS_MIN_FRAMES) as bar:
            count = write_pcap(workload, args.output, base_ns=args.base_ns, snaplen=snaplen, limit=args.limit,
                               progress=bar.update)
    except (ValueError, OSError) as e:
        print(f"natra-sim workload: {e}", file=sys.stderr)
        return 2
    print(f"wrote {count} frames of {len(workload.flows)} flows to {args.output}", file=sys.stderr)
    return 0


SUBCOMMANDS = {
    "sweep": (add_arguments, run),
    "workload": (add_workload_arguments, run_workload),
}


def main(argv: list[str] | None = None) -> int:
    from natra.simulations.cli import main as cli_main

    return cli_main(["sweep", *(sys.argv[1:] if argv is None else argv)])
