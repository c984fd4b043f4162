"""Sweep points and their runs: the grid, one run per point, and running many (locally or on Dask).

Owns: a grid point (workload x width x depth x threshold x window x reserve
x seed, with the scene: rate, duration, options), one run per point
(workload -> reference model -> metrics, plus the numbers that need the
sketch's hashing or the flows' roles: key pairs sharing every cell, false
positives caused by them, throughput per role), each point's key (its
parameters, so an interrupted sweep resumes), and running a list of points
in this process or on a Dask cluster (dask.distributed: an embedded
LocalCluster, or a scheduler's address).
Rule: a point's numbers depend only on the point (its seed included), never
on the worker or the order points ran in; results come back in grid order.
Thresholds are % of what the Pod may send in a window (rate * window) or
bytes, reserves % of the burst or bytes; None means Natra's own rule from
natra/kernel/params.py. The burst is always Natra's default for the rate.
Must not know: files, plots, the command line; how workloads or metrics are
computed inside; the kernel.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
from natra.simulations import captured, metrics, units
from natra.simulations import workloads as W
from natra.simulations.captured import CAPTURE, capture_workload
from natra.simulations.progress import Progress, listening, stage

from natra.kernel import layout as L
from natra.kernel.params import DEFAULT_FLOW_TABLE, params_for, to_config

CHUNK_PACKETS = 1 << 20  # frames per process_batch call: bounds the (n, 40) key array to 40 MiB
WORKLOAD_CACHE = 4  # open-loop workloads kept per worker process
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
        stage(f"{workload.name}: model, frame {part.start:,} of {n:,}")
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
    from natra.reference.hashing import columns, flow_hash_keys

    truth = metrics.window_truth(workload.now_ns, workload.wire_len, workload.flow_id, params.window_ns)
    est = metrics.pair_max(truth, estimates).astype(np.int64)
    heavy = truth.bytes >= params.threshold_bytes
    false_pos = ~heavy & (est >= params.threshold_bytes)
    if not false_pos.any():
        return 0
    keys = workload.flows.keys
    cols = columns(flow_hash_keys(keys, L.HASH_SEED1), flow_hash_keys(keys, L.HASH_SEED2),
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
    from natra.reference.hashing import columns, flow_hash_keys

    if len(keys) < 2:
        return 0
    cols = columns(flow_hash_keys(keys, L.HASH_SEED1), flow_hash_keys(keys, L.HASH_SEED2), width, depth)
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
    """Every metric of one grid point, with the point's settings, as a flat dict.

    Says which step it is in through progress.stage (the sweep's bar, or the
    Dask client's, shows it while the point runs)."""
    started = time.perf_counter()
    params = point.params()
    text = _describe(point)
    if point.workload == CAPTURE:
        stage("reading the capture")
        workload = capture_workload(point.options)
        verdicts, heavy, estimates = decide_all(workload, params, point.flow_table)
    elif point.workload in W.CLOSED_LOOP:
        stage(f"{point.workload}: closed loop with the model")
        workload, heavy, estimates = _generated(lambda: closed_loop(point, params), text)
        verdicts = workload.verdicts
    else:
        stage(f"{point.workload}: generating")
        workload = _generated(lambda: open_loop_workload(point.workload, point.seed, point.rate_bps,
                                                         point.duration_s, point.options), text)
        verdicts, heavy, estimates = decide_all(workload, params, point.flow_table)
    model_s = time.perf_counter() - started
    stage(f"{point.workload}: metrics over {len(workload):,} frames")
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
         seed: int | Iterable[int], flow_table: int = DEFAULT_FLOW_TABLE, options: tuple = ()) -> list[Point]:
    """Every combination, seeds innermost; thresholds and reserves are % numbers, units.Share or None."""
    seeds = [seed] if isinstance(seed, int) else list(seed)
    points = []
    for wl, w, d, t, win, r, sd in itertools.product(workloads, widths, depths, thresholds, windows, reserves,
                                                     seeds):
        t_pct, t_bytes = _share(t)
        r_pct, r_bytes = _share(r)
        points.append(Point(wl, w, d, t_pct, win, r_pct, rate_bps, duration_s, sd, flow_table, options,
                            t_bytes, r_bytes))
    return points


def check_points(points: Iterable[Point]) -> None:
    """WorkloadError for a point whose workload cannot exist, before anything runs."""
    for scene in {(p.workload, p.rate_bps, p.duration_s, p.options) for p in points}:
        name, rate, seconds, options = scene
        try:
            W.check_feasible(name, rate, int(round(seconds * L.NS_PER_SEC)), **dict(options))
        except ValueError as e:
            raise WorkloadError(str(e)) from None


def point_key(point: Point) -> str:
    """The point's parameters (seed and scene included) as a short stable key: resumes find it."""
    fields_ = asdict(point)
    fields_["options"] = [[k, v] for k, v in point.options]
    text = json.dumps(fields_, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def run_grid(points: list[Point], jobs: int = 0, progress: bool = True, *, scheduler: str | None = None,
             done: dict[str, dict] | None = None,
             on_row: Callable[[str, dict], None] | None = None) -> list[dict]:
    """Every point's row, in the order of `points`.

    Points whose key is in `done` (finished by an earlier, interrupted run) are
    not run again. The rest run in this process when jobs == 1 and there is no
    scheduler, else on Dask: the scheduler at `scheduler` ('tcp://host:8786'),
    or an embedded LocalCluster of `jobs` worker processes (0: one per core).
    `on_row(key, row)` hears of each point as it finishes (the result store).
    The bar on stderr counts points and shows the step each running point is
    in (generating, model, metrics), redrawn every few seconds.
    """
    finished = dict(done or {})
    keys = [point_key(p) for p in points]
    todo = list({k: p for k, p in zip(keys, points, strict=True) if k not in finished}.items())
    with Progress("sweep", total=len(keys), unit="point", enabled=progress) as bar:
        bar.update(len(keys) - len(todo))
        if not todo or (scheduler is None and (jobs == 1 or len(todo) == 1)):
            results: Iterable = _in_process(todo, bar)
        else:
            results = run_on_dask(todo, jobs, scheduler, bar)
        for key, row in results:
            finished[key] = row
            if on_row:
                on_row(key, row)
            bar.update(1)
    return [finished[k] for k in keys]


def _in_process(todo: list[tuple[str, Point]], bar: Progress) -> Iterable[tuple[str, dict]]:
    """Points one scene after the other, so each workload is generated once (WORKLOAD_CACHE)."""
    for key, point, _ in placement(todo, ["here"]):
        label = _short(point)
        with listening(lambda text, label=label: bar.stage(f"{label}: {text}")):
            row = run_point(point)
        yield key, row


def _short(point: Point) -> str:
    return f"{point.workload} {point.width}x{point.depth} seed {point.seed}"


class ClusterError(RuntimeError):
    """The Dask scheduler cannot be reached, or the cluster cannot start."""


PROGRESS_TOPIC = "natra-sim-progress"
# Dask's nanny starts worker processes with MALLOC_TRIM_THRESHOLD_=65536. Setting
# it turns off glibc's adaptive mmap threshold, so every large numpy array is
# mmapped and unmapped afresh and its pages faulted in again: a point then took
# about twice as long in a worker as in the calling process (0.52 s against
# 1.05 s for one 10 Gbit/s, 4 s web-search point), which ate the whole speed-up
# of a second worker. The embedded cluster starts its workers without it.
WORKER_ENV_UNSET = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def _run_point_on_worker(point: Point, key: str) -> dict:
    """run_point on a Dask worker, its steps sent to the client as events of PROGRESS_TOPIC."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return run_point(point)
    label = _short(point)

    def tell(text: str) -> None:
        worker.log_event(PROGRESS_TOPIC, {"key": key, "stage": f"{label}: {text}"})

    with listening(tell):
        return run_point(point)


def _scene(point: Point) -> tuple:
    """What a point's workload depends on: points of one scene share one generated workload."""
    return point.workload, point.seed, point.rate_bps, point.duration_s, point.options


def placement(todo: list[tuple[str, Point]], workers: list[str]) -> list[tuple[str, Point, str | None]]:
    """(key, point, preferred worker): points sorted by scene and cut into len(workers) runs of
    nearly equal length, so that a worker generates each workload of its run once (its cache
    keeps it) instead of every worker generating every workload."""
    if not workers:
        return [(k, p, None) for k, p in todo]
    first_seen: dict[tuple, int] = {}
    for _, p in todo:
        first_seen.setdefault(_scene(p), len(first_seen))
    ordered = sorted(todo, key=lambda kp: first_seen[_scene(kp[1])])
    n = len(workers)
    return [(k, p, workers[i * n // len(ordered)]) for i, (k, p) in enumerate(ordered)]


def run_on_dask(todo: list[tuple[str, Point]], jobs: int = 0, scheduler: str | None = None,
                bar: Progress | None = None) -> Iterable[tuple[str, dict]]:
    """(key, row) of each point as Dask finishes it, in finishing order."""
    import logging
    import os

    import dask
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    try:
        if scheduler is None:
            workers = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
            with dask.config.set(WORKER_ENV_UNSET):
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
            client = Client(cluster)
        else:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        if cluster is not None:
            cluster.close()
        raise ClusterError(f"Dask scheduler {scheduler or 'LocalCluster'}: {e}") from None
    try:
        if bar is not None:
            client.subscribe_topic(PROGRESS_TOPIC, lambda event: bar.stage(event[1]["stage"]))
        addresses = sorted(client.scheduler_info().get("workers", {}))
        for options in {p.options for _, p in todo if p.workload == CAPTURE}:
            if options in captured.LOADED:  # read here already: send it rather than read it again
                client.run(captured.prime, options, captured.LOADED[options])
        futures = {}
        for k, p, where in placement(todo, addresses):
            restrict = {"workers": [where], "allow_other_workers": True} if where else {}
            futures[client.submit(_run_point_on_worker, p, k, key=f"natra-point-{k}", pure=False,
                                  **restrict)] = k
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


CONNECT_TIMEOUT_S = 10
