"""`natra-sim sweep` and `natra-sim workload`: parameter grids over the model.

Owns: the grid (workload x width x depth x threshold x window x reserve), one
run per grid point (workload -> reference model -> metrics), running the
points on every core with a progress bar, writing results as CSV and JSON,
and the PNG plots docs/tuning.md shows (F1 vs state memory, detection delay
vs window, mice loss and Jain's index vs threshold, mice loss vs reserve, and
each sender's throughput vs threshold for the flood workload); also the
per-point numbers that need the sketch's hashing or the flows' roles (key
pairs sharing every cell, false positives caused by them, throughput per
role), which metrics.py does not know about.
Rule: a point's numbers depend only on the point (its seed included), never
on the worker or the order points ran in; results come back in grid order.
Thresholds are given in % of what the Pod may send in a window (rate *
window), reserves in % of the burst; "default" means Natra's own rule from
natra/kernel/params.py. The burst is always Natra's default for the rate.
Must not know: how workloads or metrics are computed inside; the kernel.
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from natra.simulations import knobs, metrics, units
from natra.simulations import workloads as W

from natra.kernel import layout as L
from natra.kernel.params import (
    DEFAULT_FLOW_TABLE,
    DEFAULT_WINDOW_NS,
    MAX_FLOW_TABLE,
    MAX_WINDOW_NS,
    MIN_WINDOW_NS,
    params_for,
    to_config,
)

CHUNK_PACKETS = 1 << 20  # frames per process_batch call: bounds the (n, 40) key array to 40 MiB
WORKLOAD_CACHE = 4  # open-loop workloads kept per worker process
DEFAULT_OUT = "sim-results"
DEFAULT = units.DEFAULT  # grid value: Natra's own rule
PROGRESS_MIN_FRAMES = 200_000  # writes at least this large show a progress bar
MIN_DURATION_NS = 1_000_000  # 1 ms of traffic at least
MAX_DURATION_NS = 3600 * L.NS_PER_SEC
PLOT_COLUMNS = 2  # panels per row when a plot shows one metric or one workload
MBIT = 10**6
PACKED_TAG_BITS = 64  # a key's columns of all rows fit one uint64 up to this many bits


@dataclass(frozen=True)
class Point:
    """One configuration run against one workload."""

    workload: str
    width: int  # sketch columns
    depth: int  # sketch rows
    threshold_pct: float | None  # % of rate * window; None: natra.kernel.params' rule
    window_ms: float  # sketch window, ms
    reserve_pct: float | None  # % of the burst only mice may spend; None: natra.kernel.params' rule
    rate_bps: int  # the Pod's limit, bit/s
    duration_s: float  # workload length, s
    seed: int
    flow_table: int = DEFAULT_FLOW_TABLE
    options: tuple = ()  # (name, value) pairs passed to the workload generator
    threshold_fixed_bytes: int | None = None  # a threshold given in bytes (threshold_pct is then None)
    reserve_fixed_bytes: int | None = None  # a reserve given in bytes (reserve_pct is then None)

    @property
    def window_ns(self) -> int:
        return int(round(self.window_ms * 1e6))

    def params(self):
        tuning = {"width": self.width, "depth": self.depth, "window_ns": self.window_ns}
        if self.threshold_fixed_bytes is not None:
            tuning["threshold_bytes"] = self.threshold_fixed_bytes
        elif self.threshold_pct is not None:
            per_window_bits = self.rate_bps * self.window_ns // L.NS_PER_SEC
            tuning["threshold_bytes"] = max(round(per_window_bits * self.threshold_pct / (100 * 8)), 1)
        params = params_for(self.rate_bps, **tuning)
        if self.reserve_fixed_bytes is not None:
            params = params.with_(reserve_bits=self.reserve_fixed_bytes * 8).validate()
        elif self.reserve_pct is not None:
            params = params.with_(reserve_bits=round(params.burst_bits * self.reserve_pct / 100)).validate()
        return params


# ---- one point -------------------------------------------------------------------

class WorkloadError(ValueError):
    """A workload that cannot be generated with these arguments, or has no packet."""


def _generated(make, point_text: str):
    try:
        workload = make()
    except (ValueError, ZeroDivisionError, IndexError, OverflowError, MemoryError) as e:
        raise WorkloadError(f"workload {point_text}: cannot be generated: {e}") from None
    if len(workload[0] if isinstance(workload, tuple) else workload) == 0:
        raise WorkloadError(f"workload {point_text}: no packet at this rate, load and duration")
    return workload


@functools.lru_cache(maxsize=WORKLOAD_CACHE)
def open_loop_workload(name: str, seed: int, rate_bps: int, duration_s: float,
                       options: tuple = ()) -> W.Workload:
    return W.open_loop(name, seed=seed, rate_bps=rate_bps, duration_ns=int(round(duration_s * L.NS_PER_SEC)),
                       **dict(options))


def _model(params, flow_table: int):
    from natra.reference.engine import Model

    configs = [to_config(None, width=params.width, depth=params.depth)] * L.NDIRS
    configs[L.DIR_TO_POD] = to_config(params)
    return Model(configs, flow_table=flow_table)


def _batch(now_ns, wire_len, keys, ect):
    from natra.reference.engine import Batch

    return Batch(now_ns, wire_len, np.full(len(now_ns), L.DIR_TO_POD, dtype=np.uint8), keys, ect)


def decide_all(workload: W.Workload, params, flow_table: int = DEFAULT_FLOW_TABLE):
    """Run an open-loop workload through a fresh model: (verdicts, heavy, estimates)."""
    from natra.reference.engine import process_batch

    model = _model(params, flow_table)
    n = len(workload)
    verdicts = np.empty(n, dtype=np.uint8)
    heavy = np.empty(n, dtype=bool)
    estimates = np.empty(n, dtype=np.uint64)
    for part in workload.chunks(CHUNK_PACKETS):
        fid = workload.flow_id[part]
        result = process_batch(model, _batch(workload.now_ns[part], workload.wire_len[part],
                                             workload.flows.keys[fid], workload.ect[part]))
        verdicts[part], heavy[part], estimates[part] = result.verdicts, result.heavy, result.estimates
    return verdicts, heavy, estimates


def closed_loop(point: Point, params):
    """The flood workload, generated against a model of these params: (workload, heavy, estimates)."""
    from natra.reference.engine import process_batch

    model = _model(params, point.flow_table)
    heavy_parts, estimate_parts = [], []

    def decide(now_ns, wire_len, keys, ect):
        result = process_batch(model, _batch(now_ns, wire_len, keys, ect))
        heavy_parts.append(result.heavy)
        estimate_parts.append(result.estimates)
        return result.verdicts

    workload = W.flood_mix(decide, seed=point.seed, rate_bps=point.rate_bps,
                           duration_ns=int(round(point.duration_s * L.NS_PER_SEC)), **dict(point.options))
    return workload, np.concatenate(heavy_parts), np.concatenate(estimate_parts)


def full_collision_false_positives(workload: W.Workload, estimates: np.ndarray, params) -> int:
    """False-positive (flow, window) pairs that share every sketch cell with a truly heavy flow.

    Such a pair's estimate is at least the heavy flow's count whatever D is. With
    the bare double-hash columns ((h1 + row * h2) & (W - 1)) this happened
    whenever h1 and h2 agreed in their low bits; the finaliser on each row's
    column (docs/design.md, "The hash") makes it a true D-way coincidence.
    """
    from natra.reference.hashing import columns, murmur3_32_keys

    truth = metrics.window_truth(workload.now_ns, workload.wire_len, workload.flow_id, params.window_ns)
    est = metrics.pair_max(truth, estimates).astype(np.int64)
    heavy = truth.bytes >= params.threshold_bytes
    false_pos = ~heavy & (est >= params.threshold_bytes)
    if not false_pos.any():
        return 0
    keys = workload.flows.keys
    cols = columns(murmur3_32_keys(keys, L.HASH_SEED1), murmur3_32_keys(keys, L.HASH_SEED2),
                   params.width, params.depth)
    _, cells = np.unique(cols, axis=0, return_inverse=True)  # the flow's whole column set, as an id
    cells = cells.reshape(-1).astype(np.int64)
    span = int(cells.max()) + 1
    tag = truth.epoch * span + cells[truth.flow]
    return int(np.count_nonzero(np.isin(tag[false_pos], tag[heavy])))


def full_collision_key_pairs(keys: np.ndarray, width: int, depth: int) -> int:
    """Pairs of distinct flow keys that share their column in every row of a width x depth sketch.

    Whatever their traffic, such a pair can never be told apart by the sketch.
    With independent rows this is about n^2 / (2 W^D) pairs for n keys.
    """
    from natra.reference.hashing import columns, murmur3_32_keys

    if len(keys) < 2:
        return 0
    cols = columns(murmur3_32_keys(keys, L.HASH_SEED1), murmur3_32_keys(keys, L.HASH_SEED2), width, depth)
    bits = max(width - 1, 1).bit_length()
    if bits * depth <= PACKED_TAG_BITS:  # one integer per key: a much faster unique
        tags = np.zeros(len(cols), dtype=np.uint64)
        for row in range(depth):
            tags = (tags << np.uint64(bits)) | cols[:, row]
        _, counts = np.unique(tags, return_counts=True)
    else:
        _, counts = np.unique(cols, axis=0, return_counts=True)
    counts = counts.astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


ROLE_THROUGHPUT = ((W.ROLE_AIMD, "aimd"), (W.ROLE_FLOOD, "flood"))  # roles whose throughput rows report


def role_throughput(workload: W.Workload, verdicts: np.ndarray) -> dict:
    """Passed Mbit/s over the whole run per flow of the roles in ROLE_THROUGHPUT: min, mean, max.

    Only roles present in the workload appear (the flood workload's TCP-like
    senders and its UDP flood): what each sender got, not what it offered.
    """
    passed = metrics.passed_mask(verdicts)
    per_flow = np.bincount(workload.flow_id[passed], weights=workload.wire_len[passed],
                           minlength=len(workload.flows))
    mbps = per_flow * 8 * L.NS_PER_SEC / workload.duration_ns / MBIT
    out = {}
    together = []
    for role, name in ROLE_THROUGHPUT:
        mine = mbps[workload.flows.role == role]
        if mine.size:
            together.append(mine)
            out.update({f"{name}_mbps_min": float(mine.min()), f"{name}_mbps_mean": float(mine.mean()),
                        f"{name}_mbps_max": float(mine.max())})
    if together:  # what each would get if they had split their total evenly
        out["even_split_mbps"] = float(np.concatenate(together).mean())
    return out


def _describe(point: Point) -> str:
    options = "".join(f" {k}={v}" for k, v in point.options)
    return (f"{point.workload}{options} at {point.rate_bps} bit/s for {point.duration_s:g} s, "
            f"seed {point.seed}")


def run_point(point: Point) -> dict:
    """Every metric of one grid point, with the point's settings, as a flat dict."""
    started = time.perf_counter()
    params = point.params()
    text = _describe(point)
    if point.workload in W.CLOSED_LOOP:
        workload, heavy, estimates = _generated(lambda: closed_loop(point, params), text)
        verdicts = workload.verdicts
    else:
        workload = _generated(lambda: open_loop_workload(point.workload, point.seed, point.rate_bps,
                                                         point.duration_s, point.options), text)
        verdicts, heavy, estimates = decide_all(workload, params, point.flow_table)
    model_s = time.perf_counter() - started
    config = to_config(params)
    row = asdict(point)
    row["options"] = ",".join(f"{k}={v}" for k, v in point.options)
    row.update({
        "threshold_bytes": params.threshold_bytes,
        "reserve_bytes": params.reserve_bits // 8,
        "burst_bytes": params.burst_bits // 8,
    })
    row.update(metrics.evaluate(
        workload.now_ns, workload.wire_len, workload.flow_id, verdicts, heavy, estimates,
        rate_bps=params.rate_bps, tau_nbit=config.tau_nbit,
        reserve_nbit=config.tau_nbit - config.heavy_line_nbit, threshold=params.threshold_bytes,
        window_ns=params.window_ns, width=params.width, depth=params.depth,
        flow_table=point.flow_table, duration_ns=workload.duration_ns))
    row["hh_fp_full_collision"] = full_collision_false_positives(workload, estimates, params)
    row["full_collision_key_pairs"] = full_collision_key_pairs(workload.flows.keys, params.width,
                                                               params.depth)
    row.update(role_throughput(workload, verdicts))
    row["model_s"] = model_s
    row["elapsed_s"] = time.perf_counter() - started
    return row


# ---- the grid --------------------------------------------------------------------

def _share(value) -> tuple[float | None, int | None]:
    """A grid value for a threshold or reserve: None (Natra's rule), a % number, or a units.Share."""
    if isinstance(value, units.Share):
        return value.percent, value.bytes
    return value, None


def grid(workloads, widths, depths, thresholds, windows, reserves, *, rate_bps: int, duration_s: float,
         seed: int, flow_table: int = DEFAULT_FLOW_TABLE, options: tuple = ()) -> list[Point]:
    """Every combination; thresholds and reserves are % numbers, units.Share values or None."""
    points = []
    for wl, w, d, t, win, r in itertools.product(workloads, widths, depths, thresholds, windows, reserves):
        t_pct, t_bytes = _share(t)
        r_pct, r_bytes = _share(r)
        points.append(Point(wl, w, d, t_pct, win, r_pct, rate_bps, duration_s, seed, flow_table, options,
                            t_bytes, r_bytes))
    return points


def run_grid(points: list[Point], jobs: int = 0, progress: bool = True) -> list[dict]:
    """Run every point (in parallel when jobs != 1); rows in the order of `points`."""
    jobs = jobs or os.cpu_count() or 1
    bar = _progress(len(points), progress)
    rows: list[dict] = []
    try:
        if jobs == 1 or len(points) == 1:
            for p in points:
                rows.append(run_point(p))
                bar.update(1)
        else:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(min(jobs, len(points))) as pool:
                for row in pool.imap(run_point, points):
                    rows.append(row)
                    bar.update(1)
    finally:
        bar.close()
    return rows


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="sweep", unit="point", disable=not enabled, file=sys.stderr)


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


def results_document(rows: list[dict], settings: dict) -> dict:
    return {"settings": settings, "results": [{k: _json_safe(v) for k, v in r.items()} for r in rows]}


def varying(rows: list[dict]) -> list[str]:
    """Grid fields that take more than one value in these rows."""
    return [f for f in GRID_FIELDS if len({r[f] for r in rows}) > 1]


def _label(key: tuple, names: list[str]) -> str:
    units = {"threshold_pct": "% thr", "window_ms": " ms win", "reserve_pct": "% reserve"}
    parts = []
    for name, value in zip(names, key, strict=True):
        shown = "default" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        if name in ("width", "depth"):
            parts.append(f"{'W' if name == 'width' else 'D'}={shown}")
        elif name in units:
            parts.append(f"{shown}{units[name]}")
        else:
            parts.append(shown)
    return ", ".join(parts) or "all"


def _xvalue(row: dict, x: str, default_of: str | None):
    value = row[x]
    if value is None and default_of:
        return row[default_of]
    return value


SHORT_HIT_LABEL = "short transfers (<=100 KB) with a loss (fraction)"
RAW_JAIN_LABEL = "Jain's index, raw throughput of heavy flows"
PLOTS = (
    # file, x field, y fields (with axis labels), x label, title, log x?,
    # and the field holding x with 'default' resolved to a number
    ("f1_vs_memory.png", "state_bytes", (("f1", "heavy-hitter F1 (per window)"),),
     "state memory per Pod (bytes, log scale)", "Heavy-hitter F1 vs state memory (one line per depth, "
     "points: widths)", True, None),
    ("delay_vs_window.png", "window_ms", (("detect_delay_p50_ms", "median detection delay (ms)"),
                                          ("small_flows_hit", SHORT_HIT_LABEL)),
     "sketch window (ms, log scale)", "Detection delay of a new elephant vs window", True, None),
    ("mice_jain_vs_threshold.png", "threshold_pct", (("mice_loss", "mice bytes dropped (fraction)"),
                                                     ("small_flows_hit", SHORT_HIT_LABEL),
                                                     ("jain_heavy", "Jain's index among heavy flows"),
                                                     ("jain_heavy_throughput", RAW_JAIN_LABEL)),
     "heavy-hitter threshold (% of rate x window, log scale)", "Mice loss and fairness vs threshold", True,
     "threshold_pct_resolved"),
    ("mice_vs_reserve.png", "reserve_pct", (("mice_loss", "mice bytes dropped (fraction)"),
                                            ("small_flows_hit", SHORT_HIT_LABEL),
                                            ("passed_load", "passed bytes / (rate x duration)")),
     "mice reserve (% of burst)", "Mice loss vs reserve", False, "reserve_pct_resolved"),
)


UNIT_INTERVAL = ("f1", "mice_loss", "small_flows_hit", "jain_heavy", "jain_heavy_throughput")
LABEL_BELOW = 0.98  # F1 points under this get their width written beside them (the rest overlap at 1)
FRACTION_FLOOR = 0.05  # a fraction axis shows at least 0..5 %, so an all-zero line sits at the bottom


def _y_range(ax, y: str) -> None:
    """Fractions and indices start at 0 (Jain's index and F1 end at 1), so panels compare at a glance."""
    if y not in UNIT_INTERVAL:
        return
    top = 1.02 if y.startswith(("jain", "f1")) else max(ax.get_ylim()[1], FRACTION_FLOOR)
    ax.set_ylim(-0.02 * top if top < 1 else -0.02, top)


def plot_all(rows: list[dict], out: Path) -> list[Path]:
    """Write the PNG plots of PLOTS for these rows; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for r in rows:
        r.setdefault("threshold_pct_resolved",
                     100 * 8 * r["threshold_bytes"] * L.NS_PER_SEC / (r["rate_bps"] * r["window_ms"] * 1e6))
        r.setdefault("reserve_pct_resolved", 100 * r["reserve_bytes"] / r["burst_bytes"])
    written = []
    vary = varying(rows)
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    for name, x, ys, xlabel, title, logx, resolved in PLOTS:
        same_x = {x, "workload", x.replace("_pct", "_fixed_bytes")}  # a threshold in % or in bytes
        group_by = [f for f in vary if f not in same_x and not (x == "state_bytes" and f == "width")]
        panels = [(w, y) for y in ys for w in workloads]
        one_row_kind = len(workloads) == 1 or len(ys) == 1
        ncols = min(len(panels), PLOT_COLUMNS) if one_row_kind else len(workloads)
        nrows = -(-len(panels) // ncols)
        fig, grid_axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols + 0.5, 4.2 * nrows), squeeze=False)
        axes_of = {panel: grid_axes.flat[i] for i, panel in enumerate(panels)}
        for ax in list(grid_axes.flat)[len(panels):]:
            ax.set_visible(False)
        for workload in workloads:
            groups: dict[tuple, list[dict]] = {}
            for r in rows:
                if r["workload"] == workload:
                    groups.setdefault(tuple(r[f] for f in group_by), []).append(r)
            for y, ylabel in ys:
                ax = axes_of[(workload, (y, ylabel))]
                for key, members in groups.items():
                    pts = sorted((_xvalue(m, x, resolved), m[y], m["width"]) for m in members
                                 if m.get(y) is not None)
                    if pts:
                        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                                        label=_label(key, group_by))
                        if x == "state_bytes":  # the memory axis hides which width a point is
                            for px, py, width in (p for p in pts if p[1] < LABEL_BELOW):
                                ax.annotate(f"W={width}", (px, py), textcoords="offset points",
                                            xytext=(3, -11), fontsize="x-small", color=line.get_color())
                ax.set_title(f"workload: {workload}", fontsize="medium")
                ax.set_xlabel(xlabel)
                ax.set_ylabel(ylabel)
                if logx:
                    ax.set_xscale("log")
                ax.grid(True, alpha=0.3)
                _y_range(ax, y)
                if ax.lines and group_by:  # one line needs no legend
                    ax.legend(fontsize="small", title=", ".join(group_by))
        fig.suptitle(f"{title}\n{_context(rows)}")
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    throughput = plot_throughput(rows, out)
    return written + ([throughput] if throughput else [])


THROUGHPUT_PLOT = "throughput_vs_threshold.png"
THROUGHPUT_LINES = (("flood_mbps_mean", "UDP flood"), ("aimd_mbps_max", "TCP-like (AIMD), best"),
                    ("aimd_mbps_min", "TCP-like (AIMD), worst"),
                    ("even_split_mbps", "even split of their total"))


def plot_throughput(rows: list[dict], out: Path) -> Path | None:
    """Per-sender throughput vs threshold for workloads with AIMD senders and a flood; None if none has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("flood_mbps_mean") is not None]
    if not rows:
        return None
    vary = [f for f in varying(rows) if f not in ("threshold_pct", "workload")]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[f] for f in vary), []).append(r)
    fig, axes = plt.subplots(1, len(groups), figsize=(6.4 * len(groups) + 0.5, 4.6), squeeze=False)
    for ax, (key, members) in zip(axes.flat, groups.items(), strict=True):
        members = sorted(members, key=lambda m: m["threshold_pct_resolved"])
        xs = [m["threshold_pct_resolved"] for m in members]
        for field, label in THROUGHPUT_LINES:
            style = {"linestyle": "--", "color": "grey"} if field == "even_split_mbps" else {"marker": "o"}
            ax.plot(xs, [m[field] for m in members], label=label, **style)
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("heavy-hitter threshold (% of rate x window, log scale)")
        ax.set_ylabel("throughput over the run (Mbit/s)")
        ax.set_title(_label(key, vary) if vary else f"workload: {members[0]['workload']}", fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"What each sender got vs threshold\n{_context(rows)}")
    fig.tight_layout()
    path = out / THROUGHPUT_PLOT
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _context(rows: list[dict]) -> str:
    r = rows[0]
    names = sorted({row["workload"] for row in rows})
    options = sorted({row.get("options") or "" for row in rows} - {""})
    extra = f", {'; '.join(options)}" if options else ""
    return (f"{'+'.join(names)}{extra}: rate {_fmt_rate(r['rate_bps'])}, {r['duration_s']:g} s of traffic, "
            f"seed {r['seed']}")


def _fmt_rate(bps: int) -> str:
    for suffix, scale in (("Gbit/s", 10**9), ("Mbit/s", 10**6), ("kbit/s", 10**3)):
        if bps >= scale:
            return f"{bps / scale:g} {suffix}"
    return f"{bps} bit/s"


# ---- command line ----------------------------------------------------------------------

def parse_rate(text: str) -> int:
    """bit/s from a quantity ('1G', '100M', '1Gi', '1e9'): the CNI side's grammar (units.rate)."""
    try:
        return units.rate(text)
    except argparse.ArgumentTypeError as e:
        raise ValueError(str(e)) from None


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
FLOW_TABLE = units.bounded(units.count, minimum=1, maximum=MAX_FLOW_TABLE, what="flow table")
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
    parser.add_argument("--seed", type=SEED, default=1)
    parser.add_argument("--workload-arg", action="append", default=[], metavar="NAME=VALUE",
                        help="passed to the workload generator, e.g. load=1.2 (repeatable; listed below)")
    parser.add_argument("--flow-table", type=FLOW_TABLE, default=DEFAULT_FLOW_TABLE,
                        help="heavy-flow LRU entries")
    parser.add_argument("--jobs", type=JOBS, default=0, help="worker processes (0: one per core)")
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
        points = grid(args.workload, args.width, args.depth, args.threshold, windows_ms, args.reserve,
                      rate_bps=args.rate, duration_s=args.duration / L.NS_PER_SEC, seed=args.seed,
                      flow_table=args.flow_table, options=options)
        for p in points:
            p.params()
    except ValueError as e:
        print(f"natra-sim sweep: {e}", file=sys.stderr)
        return 2
    out = args.out or Path(DEFAULT_OUT) / "sweep-{}".format("-".join(args.workload))
    try:
        out.mkdir(parents=True, exist_ok=True)
        rows = run_grid(points, jobs=args.jobs, progress=not args.quiet)
    except (OSError, WorkloadError) as e:
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


def run_workload(args) -> int:
    """Write a generated workload as a pcap file (the flood one reacts to Natra's defaults)."""
    from natra.simulations.pcapwrite import DEFAULT_SNAPLEN, write_pcap

    started = time.perf_counter()
    try:
        options = knobs.parse_options([args.name], args.workload_arg)
        point = Point(args.name, 1024, 4, None, 100.0, None, args.rate, args.duration / L.NS_PER_SEC,
                      args.seed, options=options)
        text = _describe(point)
        if args.name in W.CLOSED_LOOP:
            workload = _generated(lambda: closed_loop(point, point.params()), text)[0]
        else:
            workload = _generated(lambda: open_loop_workload(args.name, args.seed, args.rate,
                                                             point.duration_s, options), text)
        snaplen = DEFAULT_SNAPLEN if args.snaplen is None else args.snaplen
        total = len(workload) if args.limit is None else min(args.limit, len(workload))
        print(f"generated {len(workload)} frames of {len(workload.flows)} flows in "
              f"{time.perf_counter() - started:.1f} s; writing {total}", file=sys.stderr)
        from tqdm import tqdm

        with tqdm(total=total, unit="frame", desc="write", file=sys.stderr,
                  disable=total < PROGRESS_MIN_FRAMES) as bar:
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
