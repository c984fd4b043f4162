"""`natra-sim recommend`: the tuning question as one command.

Owns: turning "this rate, this workload (its flows or concurrency), these
targets for precision, recall and mice loss" into a grid of sketch shapes,
thresholds and windows run on several seeds (runner.run_grid: in process or
on Dask), judging each configuration by its worst seed, and the answer: the
smallest sketch (state memory per Pod) that meets every target on every
seed, with its threshold and window, a confidence statement, the runner-up,
and a frontier plot (memory against the worst precision, recall and mice
loss). When nothing in the grid meets the targets it says so and shows the
best it found (exit 1); a workload that cannot exist (that concurrency at
that rate) is a one-line error (exit 2).
Rule: the judgement is the worst seed, never the mean.
Must not know: how a point is computed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from natra.simulations import knobs, units
from natra.simulations import workloads as W
from natra.simulations.captured import CAPTURE
from natra.simulations.results import ResultStore, results_document, write_csv
from natra.simulations.runner import ClusterError, check_points, grid, point_key, run_grid
from natra.simulations.sweep import (
    DEPTH,
    DURATION,
    FLOW_TABLE,
    JOBS,
    SEED,
    THRESHOLD,
    WIDTH,
    WINDOW,
    scheduler_address,
    workload_name,
)

from natra.kernel import layout as L
from natra.kernel.params import DEFAULT_FLOW_TABLE

CONFIG_FIELDS = ("width", "depth", "threshold_pct", "threshold_fixed_bytes", "window_ms")
CONFIDENCE = 0.95
CAPTURE_CONFIDENCE = (
    "met on this capture, one run of real traffic: no seeds, so no confidence beyond it is claimed "
    "(capture more, or longer, to judge other traffic)"
)


def judge(rows: list[dict], targets: dict) -> list[dict]:
    """One entry per configuration: its worst seed's numbers and whether every seed met the targets."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[f] for f in CONFIG_FIELDS), []).append(r)
    out = []
    for members in groups.values():
        first = members[0]
        worst = {
            "precision": min(m["precision"] for m in members),
            "recall": min(m["recall"] for m in members),
            "mice_loss": max(m["mice_loss"] for m in members),
        }
        meets = (
            worst["precision"] >= targets["precision"]
            and worst["recall"] >= targets["recall"]
            and worst["mice_loss"] <= targets["mice_loss"]
        )
        out.append(
            {
                **{f: first[f] for f in CONFIG_FIELDS},
                "threshold_bytes": first["threshold_bytes"],
                "state_bytes": first["state_bytes"],
                "seeds": len(members),
                "meets": meets,
                **{f"worst_{k}": v for k, v in worst.items()},
                "flows": min(m.get("flows", 0) for m in members),
                "concurrency_mean": min(m.get("concurrency_mean", 0.0) for m in members),
                "flows_per_window_mean": min(m.get("flows_per_window_mean", 0.0) for m in members),
            }
        )
    # smallest memory first; then the larger margin on precision, the smaller mice loss, Natra's own
    # threshold rule, the smaller threshold
    out.sort(
        key=lambda c: (
            not c["meets"],
            c["state_bytes"],
            -c["worst_precision"],
            c["worst_mice_loss"],
            c["threshold_pct"] is not None or c["threshold_fixed_bytes"] is not None,  # Natra's rule first
            c["threshold_bytes"],
        )
    )
    return out


def describe(c: dict) -> str:
    threshold = (
        f"{c['threshold_fixed_bytes']} B"
        if c["threshold_fixed_bytes"] is not None
        else "Natra's default rule"
        if c["threshold_pct"] is None
        else f"{c['threshold_pct']:g}%"
    )
    return (
        f"width {c['width']} x depth {c['depth']} ({c['state_bytes']:,} bytes of state per Pod), "
        f"threshold {threshold} (= {c['threshold_bytes']:,} bytes per window), window {c['window_ms']:g}ms"
    )


def confidence_statement(seeds: int) -> str:
    bound = 1 - (1 - CONFIDENCE) ** (1 / seeds)
    return (
        f"met on all {seeds} seeds (judged by the worst seed); with {seeds} passing seeds the share of "
        f"seeds on which it would miss a target is below {bound:.0%} with {CONFIDENCE:.0%} confidence "
        f"(more --seeds narrow this: 10 seeds give 26%, 30 give 10%)"
    )


def plot_frontier(configs: list[dict], targets: dict, best: dict | None, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("worst_precision", "precision (worst seed)", "precision", False),
        ("worst_recall", "recall (worst seed)", "recall", False),
        ("worst_mice_loss", "mice loss, fraction of mice bytes (worst seed)", "mice_loss", True),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15.5, 4.8))
    memory = sorted({c["state_bytes"] for c in configs})
    for ax, (field, label, target, log) in zip(axes, panels, strict=True):
        ax.scatter(
            [c["state_bytes"] for c in configs],
            [c[field] for c in configs],
            s=14,
            color="0.6",
            label="every configuration",
        )
        pick = max if target != "mice_loss" else min
        frontier = [pick(c[field] for c in configs if c["state_bytes"] == m) for m in memory]
        ax.plot(memory, frontier, marker="o", color="tab:blue", label="best at this memory")
        ax.axhline(targets[target], color="tab:red", linestyle="--", label=f"target {targets[target]:g}")
        if best is not None:
            ax.scatter(
                [best["state_bytes"]],
                [best[field]],
                s=120,
                facecolors="none",
                edgecolors="tab:green",
                linewidths=2,
                label="recommended",
                zorder=5,
            )
        ax.set_xscale("log")
        if log:
            ax.set_yscale("symlog", linthresh=1e-7)
            ax.set_ylim(bottom=0)
        ax.set_xlabel("state memory per Pod (bytes, log scale)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "workload arguments (--workload-arg NAME=VALUE) and their defaults:\n" + knobs.help_text()
    parser.add_argument(
        "--rate", type=units.rate, default=W.DEFAULT_RATE_BPS, help="the Pod's limit (1G, 100M)"
    )
    parser.add_argument(
        "--workload",
        type=workload_name,
        default=None,
        help=", ".join(W.WORKLOAD_NAMES) + " (default websearch)",
    )
    parser.add_argument(
        "--pcap",
        type=Path,
        default=None,
        metavar="FILE",
        help="a capture instead of a generated workload: pcap or pcapng; Ethernet, Linux cooked (SLL, SLL2: "
        "tcpdump -i any) or raw IP; headers-only captures are charged their original lengths. One run: "
        "--seeds does not apply. With --scheduler the path must be readable on every worker",
    )
    parser.add_argument(
        "--pod",
        action="append",
        default=[],
        metavar="ADDR",
        help="with --pcap: only frames to (ingress) or from (egress) this Pod address (repeatable)",
    )
    parser.add_argument(
        "--direction",
        choices=("ingress", "egress"),
        default="ingress",
        help="with --pcap and --pod: traffic into the Pod (default) or out of it",
    )
    parser.add_argument(
        "--flows",
        type=units.bounded(units.count, minimum=1, maximum=W.MAX_V4_PEERS, what="flows"),
        help="flows in the run (websearch, datamining: flows=; zipf: n_flows=)",
    )
    parser.add_argument(
        "--concurrency",
        type=units.bounded(units.count, minimum=1, maximum=W.MAX_V4_PEERS, what="concurrency"),
        help="mean flows active at once (websearch, datamining)",
    )
    parser.add_argument("--workload-arg", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--precision",
        type=units.bounded(units.number, maximum=1.0, what="precision"),
        default=0.99,
        help="target heavy-hitter precision (default 0.99)",
    )
    parser.add_argument(
        "--recall",
        type=units.bounded(units.number, maximum=1.0, what="recall"),
        default=0.99,
        help="target heavy-hitter recall (default 0.99)",
    )
    parser.add_argument(
        "--mice-loss",
        type=units.bounded(units.number, maximum=1.0, what="mice loss"),
        default=0.0,
        help="largest acceptable fraction of mice bytes dropped (default 0)",
    )
    parser.add_argument("--width", type=units.listed(WIDTH), default=[128, 256, 512, 1024, 2048, 4096])
    parser.add_argument("--depth", type=units.listed(DEPTH), default=[2, 4])
    parser.add_argument(
        "--threshold",
        type=units.listed(THRESHOLD, allow_default=True),
        default=[None, units.Share(percent=0.5), units.Share(percent=2.0)],
        help="thresholds to try: bytes, %% of rate x window, or default",
    )
    parser.add_argument("--window", type=units.listed(WINDOW), default=[100_000_000])
    parser.add_argument("--duration", type=DURATION, default=2 * L.NS_PER_SEC)
    parser.add_argument("--seed", type=SEED, default=1, help="first seed")
    parser.add_argument(
        "--seeds",
        type=units.bounded(units.count, minimum=1, maximum=1000, what="seeds"),
        default=3,
        help="seeds per configuration (default 3)",
    )
    parser.add_argument("--flow-table", type=FLOW_TABLE, default=DEFAULT_FLOW_TABLE)
    parser.add_argument("--jobs", type=JOBS, default=0)
    parser.add_argument("--scheduler", type=scheduler_address, default=None, metavar="tcp://HOST:PORT")
    parser.add_argument("--out", type=Path, default=None, help="default sim-results/recommend-WORKLOAD")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quiet", action="store_true")


def _capture(args) -> tuple[tuple, object]:
    """(options naming the capture, its Workload); ValueError for a bad combination or capture."""
    from natra.simulations.captured import capture_options, capture_workload
    from natra.simulations.pcapio import CaptureError
    from natra.simulations.replay import pod_address

    clash = [
        name
        for name, given in (
            ("--workload", args.workload),
            ("--flows", args.flows),
            ("--concurrency", args.concurrency),
            ("--workload-arg", args.workload_arg),
        )
        if given
    ]
    if clash:
        raise ValueError(f"--pcap replaces a generated workload: drop {', '.join(clash)}")
    for address in args.pod:
        try:
            pod_address(address)
        except argparse.ArgumentTypeError as e:
            raise ValueError(str(e)) from None
    try:
        options = capture_options(args.pcap, args.pod, args.direction)
        workload = capture_workload(options)
    except OSError as e:
        raise ValueError(f"capture {args.pcap}: {e.strerror or e}") from None
    except CaptureError as e:
        raise ValueError(str(e)) from None
    for warning in workload.settings["warnings"]:
        print(f"natra-sim recommend: warning: {warning}", file=sys.stderr)
    return options, workload


def _options(args) -> tuple:
    items = list(args.workload_arg)
    if args.flows is not None:
        items.append(f"{'n_flows' if args.workload == 'zipf' else 'flows'}={args.flows}")
    if args.concurrency is not None:
        items.append(f"concurrency={args.concurrency}")
    return knobs.parse_options([args.workload], items)


def run(args) -> int:
    """The smallest sketch, threshold and window meeting precision, recall and mice-loss targets."""
    targets = {"precision": args.precision, "recall": args.recall, "mice_loss": args.mice_loss}
    capture = None
    try:
        if args.pcap is not None:
            options, capture = _capture(args)
            args.workload, args.seeds, args.seed = CAPTURE, 1, 0
            args.duration = capture.duration_ns
        else:
            if args.pod:
                raise ValueError("--pod selects frames of a capture: it needs --pcap")
            args.workload = args.workload or "websearch"
            options = _options(args)
        out = args.out or Path("sim-results") / f"recommend-{args.pcap.stem if capture else args.workload}"
        points = grid(
            [args.workload],
            args.width,
            args.depth,
            args.threshold,
            [ns / 1e6 for ns in args.window],
            [None],
            rate_bps=args.rate,
            duration_s=args.duration / L.NS_PER_SEC,
            seed=range(args.seed, args.seed + args.seeds),
            flow_table=args.flow_table,
            options=options,
        )
        for p in points:
            p.params()
        check_points(points)
        out.mkdir(parents=True, exist_ok=True)
        store = ResultStore(out)
        rows = run_grid(
            points,
            jobs=args.jobs,
            progress=not args.quiet,
            scheduler=args.scheduler,
            done=store.load(),
            on_row=store.add,
        )
    except (ValueError, OSError, ClusterError) as e:
        print(f"natra-sim recommend: {e}", file=sys.stderr)
        return 2
    configs = judge(rows, targets)
    meeting = [c for c in configs if c["meets"]]
    best = meeting[0] if meeting else None
    runner_up = (
        next(
            (c for c in meeting[1:] if (c["width"], c["depth"]) != (best["width"], best["depth"])),
            meeting[1] if len(meeting) > 1 else None,
        )
        if best
        else None
    )
    write_csv(rows, out / "results.csv")
    document = results_document(
        rows, {"argv": sys.argv[1:], "targets": targets, "points": [point_key(p) for p in points]}
    )
    document["configurations"] = configs
    document["recommended"], document["runner_up"] = best, runner_up
    (out / "results.json").write_text(json.dumps(document, indent=1, default=str))
    seen = configs[0]
    measured = (
        f"{seen['flows']:,} flows, {seen['flows_per_window_mean']:.0f} per window, "
        f"{seen['concurrency_mean']:.1f} active at once"
    )
    if capture is not None:
        picked = dict(options)
        where = f", {picked['direction']} of {picked['pod']}" if picked["pod"] else ""
        scene = (
            f"capture {args.pcap} ({len(capture):,} frames{where}, "
            f"{capture.duration_ns / L.NS_PER_SEC:.3g} s) at {args.rate:,} bit/s: {measured}"
        )
    else:
        scene = (
            f"{args.workload}{''.join(f' {k}={v}' for k, v in options)} at {args.rate:,} bit/s, "
            f"{args.duration / L.NS_PER_SEC:g} s x {args.seeds} seeds: {measured} "
            f"(measured, least over the seeds)"
        )
    title = (
        f"natra-sim recommend: {scene}\ntargets: precision >= {targets['precision']:g}, recall >= "
        f"{targets['recall']:g}, mice loss <= {targets['mice_loss']:g}"
    )
    plot = plot_frontier(configs, targets, best, out / "frontier.png", title)
    lines = [
        scene,
        f"targets: precision >= {targets['precision']:g}, recall >= {targets['recall']:g}, "
        f"mice loss <= {targets['mice_loss']:g}; {len(configs)} configurations tried",
    ]
    if best:
        lines += [
            f"recommended: {describe(best)}",
            f"  {'on the capture' if capture is not None else 'worst seed'}: precision "
            f"{best['worst_precision']:.4f}, recall {best['worst_recall']:.4f}, "
            f"mice loss {best['worst_mice_loss']:.3g}",
            f"  {confidence_statement(best['seeds']) if capture is None else CAPTURE_CONFIDENCE}",
        ]
        if runner_up:
            lines.append(
                f"runner-up: {describe(runner_up)} (worst precision {runner_up['worst_precision']:.4f})"
            )
    else:
        closest = max(
            configs, key=lambda c: (c["worst_precision"] + c["worst_recall"], -c["worst_mice_loss"])
        )
        lines += [
            "no configuration in the grid meets the targets on every seed (unreachable here: widen "
            "--width/--depth/--threshold, or relax a target)",
            f"closest: {describe(closest)}: worst precision {closest['worst_precision']:.4f}, recall "
            f"{closest['worst_recall']:.4f}, mice loss {closest['worst_mice_loss']:.3g}",
        ]
    lines.append(f"frontier plot: {plot}; every run: {out / 'results.csv'}")
    print(json.dumps(document, indent=1, default=str) if args.json else "\n".join(lines))
    return 0 if best else 1


SUBCOMMANDS = {"recommend": (add_arguments, run)}
