"""`natra-sim replay`: a capture through the data path, with a per-flow summary.

Owns: turning capture records into batches (time from the capture), running
them through an engine (the reference model; `kernel` and `both` plug in
through `ENGINES`), and the summary (totals and per-flow bytes by verdict),
as JSON, a table, or a per-frame CSV.
Rule: the deciding part (`replay_records`, `summarize`) is pure; reading the
file, the progress bar and printing live in `run` at the edge.
Must not know: how an engine decides (it only calls `process_batch`).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from natra.reference.engine import Batch, BatchResult, Model, process_batch
from natra.reference.key import KEY_LEN, format_key, parse_frame
from natra.simulations.pcapio import Record, read_capture
from natra.simulations.progress import Progress

from natra.kernel import layout as L
from natra.kernel.params import (
    DEFAULT_DEPTH,
    DEFAULT_FLOW_TABLE,
    DEFAULT_WIDTH,
    DEFAULT_WINDOW_NS,
    MAX_FLOW_TABLE,
    MAX_WINDOW_NS,
    MIN_WINDOW_NS,
    ConfigValues,
    flow_slots,
    params_for,
    to_config,
)

PARSE_BYTES = 512  # a frame's first bytes the key is read from (the program pulls as many)
CHUNK_FRAMES = 65536  # frames per batch: bounds memory and paces the progress bar
PROGRESS_MIN_FRAMES = 200_000  # captures at least this large show a progress bar
PROGRESS_MIN_BYTES = 16 << 20  # capture files at least this large show a bar while they are read
TABLE_FLOWS = 20  # flows listed in the table output (largest first)
DIRECTIONS = {"ingress": L.DIR_TO_POD, "egress": L.DIR_FROM_POD}
VERDICT_CLASS = {v: ("mark" if v == L.V_MARK else "pass" if v in L.PASSING_VERDICTS else "drop")
                 for v in range(L.NVERDICTS)}


class ModelEngine:
    """The reference model as a replay engine."""

    def __init__(self, configs: Sequence[ConfigValues], flow_table: int):
        self.model = Model(configs, flow_table=flow_table)

    def process_batch(self, batch: Batch) -> BatchResult:
        return process_batch(self.model, batch)


# Engine name -> factory(configs, flow_table) returning an object with
# process_batch(Batch) -> BatchResult, or "module:attribute" naming that
# factory (imported only when chosen, so the kernel engine's dependencies stay
# out of model replays).
ENGINES: dict[str, Callable | str] = {
    "model": ModelEngine,
    "kernel": "natra.simulations.kernel_engine:KernelEngine",  # the real program (root)
    "both": "natra.simulations.kernel_engine:BothEngine",  # kernel and model, divergences counted
}


def register_engine(name: str, factory: Callable | str) -> None:
    ENGINES[name] = factory


def make_engine(name: str, configs: Sequence[ConfigValues], flow_table: int = DEFAULT_FLOW_TABLE):
    """An engine by name (`model`, and whatever was registered)."""
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}") from None
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(configs, flow_table)


@dataclass
class ReplayResult:
    """Per-frame outcome of a replay (arrays in capture order) and the flows seen."""

    time_ns: np.ndarray  # uint64
    wire_len: np.ndarray  # uint32 bytes
    verdicts: np.ndarray  # uint8 layout.V_*
    heavy: np.ndarray  # bool
    flow_id: np.ndarray  # int64 index into `flows`
    flows: list[bytes]  # distinct flow keys


def wire_frame(rec: Record, limit: int = PARSE_BYTES) -> bytes:
    """The frame's first min(orig_len, limit) bytes: a frame cut by the snapshot is zero-padded,
    exactly as the kernel engine pads it to its wire length, so every engine reads the same key."""
    want = min(rec.orig_len, limit)
    frame = rec.frame[:want]
    return frame + bytes(want - len(frame)) if len(frame) < want else frame


def too_long(records: Sequence[Record], max_frame: int) -> str | None:
    """Why an engine that runs frames of at most `max_frame` bytes must refuse these, or None."""
    long = [i for i, r in enumerate(records) if r.orig_len > max_frame]
    if not long:
        return None
    largest = max(records[i].orig_len for i in long)
    return (f"{len(long)} of {len(records)} frames are longer than the {max_frame} bytes "
            f"BPF_PROG_TEST_RUN can run (first: frame {long[0]}, {records[long[0]].orig_len} bytes; "
            f"largest {largest}), so the kernel cannot charge them their length; GRO/GSO "
            f"super-packets? Replay with --engine model, or capture with GSO off on the sender")


def pod_address(text: str) -> bytes:
    """A Pod's IPv4 or IPv6 address as the flow key holds it (16 bytes, IPv4-mapped)."""
    import ipaddress

    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"pod {text!r}: an IPv4 or IPv6 address like 10.244.1.10") from None
    return (b"\x00" * 10 + b"\xff\xff" + addr.packed) if addr.version == 4 else addr.packed


def select_records(records: Iterable[Record], pods: Sequence[bytes], direction: int) -> tuple[list, int]:
    """The records of traffic into (DIR_TO_POD) or out of the Pods; and how many were left out."""
    if not pods:
        records = list(records)
        return records, 0
    wanted = set(pods)
    at = slice(16, 32) if direction == L.DIR_TO_POD else slice(0, 16)
    kept, left_out = [], 0
    for rec in records:
        if parse_frame(wire_frame(rec)).key[at] in wanted:
            kept.append(rec)
        else:
            left_out += 1
    return kept, left_out


def large_file(path) -> bool:
    """Whether reading `path` takes long enough to show a bar (unreadable: let the reader say why)."""
    try:
        return os.path.getsize(path) >= PROGRESS_MIN_BYTES
    except OSError:
        return False


def counted(records: Iterable[Record], bar, every: int = CHUNK_FRAMES) -> Iterator[Record]:
    """`records`, telling `bar` how many were read every `every` of them."""
    n = 0
    for n, rec in enumerate(records, 1):
        if n % every == 0:
            bar.update(every)
        yield rec
    bar.update(n % every)


def replay_records(records: Iterable[Record], engine, direction: int,
                   progress: Callable[[int], None] | None = None) -> ReplayResult:
    """Run every record through `engine` in order, CHUNK_FRAMES at a time."""
    times, lens, verdicts, heavy, keys = [], [], [], [], []
    chunk: list[Record] = []

    def flush():
        n = len(chunk)
        kb = np.empty((n, KEY_LEN), dtype=np.uint8)
        ect = np.empty(n, dtype=bool)
        for i, rec in enumerate(chunk):
            parsed = parse_frame(wire_frame(rec))
            kb[i] = np.frombuffer(parsed.key, dtype=np.uint8)
            ect[i] = parsed.ecn != 0
        t = np.fromiter((r.time_ns for r in chunk), dtype=np.uint64, count=n)
        wl = np.fromiter((r.orig_len for r in chunk), dtype=np.uint32, count=n)
        batch = Batch(t, wl, np.full(n, direction, dtype=np.uint8), kb, ect)
        if hasattr(engine, "process_frames"):  # engines that run the frames themselves (kernel)
            res = engine.process_frames(batch, [r.frame for r in chunk])
        else:
            res = engine.process_batch(batch)
        times.append(t), lens.append(wl), verdicts.append(res.verdicts), heavy.append(res.heavy)
        keys.append(kb)
        if progress:
            progress(n)
        chunk.clear()

    for rec in records:
        chunk.append(rec)
        if len(chunk) == CHUNK_FRAMES:
            flush()
    if chunk:
        flush()
    if not times:
        empty = np.zeros(0, dtype=np.uint64)
        return ReplayResult(empty, empty.astype(np.uint32), empty.astype(np.uint8), empty.astype(bool),
                            empty.astype(np.int64), [])
    allkeys = np.concatenate(keys)
    _, first, inverse = np.unique(allkeys.view(f"V{KEY_LEN}").reshape(-1), return_index=True,
                                  return_inverse=True)
    flows = [allkeys[i].tobytes() for i in first.tolist()]
    return ReplayResult(np.concatenate(times), np.concatenate(lens), np.concatenate(verdicts),
                        np.concatenate(heavy), inverse.reshape(-1).astype(np.int64), flows)


def _sum_by(ids: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.int64)
    np.add.at(out, ids, values.astype(np.int64))
    return out


def summarize(result: ReplayResult, settings: dict | None = None) -> dict:
    """Totals and per-flow figures; `passed` includes the marked frames (they pass)."""
    v, wl = result.verdicts, result.wire_len.astype(np.int64)
    is_mark = v == L.V_MARK
    is_pass = np.isin(v, list(L.PASSING_VERDICTS))
    is_drop = ~is_pass

    def tally(mask):
        return {"packets": int(mask.sum()), "bytes": int(wl[mask].sum())}

    n = len(result.flows)
    fid = result.flow_id
    packets = np.bincount(fid, minlength=n)
    total = _sum_by(fid, wl, n)
    passed = _sum_by(fid, wl * is_pass, n)
    dropped = _sum_by(fid, wl * is_drop, n)
    marked = np.bincount(fid, weights=is_mark, minlength=n).astype(np.int64)
    heavy = np.bincount(fid, weights=result.heavy, minlength=n) > 0
    flows = [{"flow": format_key(key), "packets": int(packets[i]), "bytes": int(total[i]),
              "passed_bytes": int(passed[i]), "dropped_bytes": int(dropped[i]),
              "marked_packets": int(marked[i]), "heavy": bool(heavy[i])}
             for i, key in enumerate(result.flows)]
    flows.sort(key=lambda f: (-f["bytes"], f["flow"]))
    span = int(result.time_ns.max() - result.time_ns.min()) if len(result.time_ns) else 0
    summary = {"packets": int(len(v)), "bytes": int(wl.sum()), "duration_ns": span,
               "passed": tally(is_pass), "dropped": tally(is_drop), "marked": tally(is_mark),
               "verdicts": {L.VERDICT_NAMES[k]: int((v == k).sum()) for k in range(L.NVERDICTS)}}
    if settings is not None:
        summary["settings"] = settings
    summary["flows"] = flows
    return summary


def verdict_rows(result: ReplayResult) -> Iterable[tuple]:
    """CSV rows: index, time in ns, pass/drop/mark, flow, heavy (1/0)."""
    names = [format_key(k) for k in result.flows]
    for i, (t, v, h, f) in enumerate(zip(result.time_ns.tolist(), result.verdicts.tolist(),
                                         result.heavy.tolist(), result.flow_id.tolist(), strict=True)):
        yield i, t, VERDICT_CLASS[v], names[f], int(h)


def format_table(summary: dict, limit: int = TABLE_FLOWS) -> str:
    lines = [f"{summary['packets']} frames, {summary['bytes']} bytes over "
             f"{summary['duration_ns'] / 1e9:.3f} s"]
    for name in ("passed", "marked", "dropped"):
        t = summary[name]
        share = 100.0 * t["bytes"] / summary["bytes"] if summary["bytes"] else 0.0
        lines.append(f"  {name:8} {t['packets']:>10} frames {t['bytes']:>14} bytes  {share:6.2f} %")
    flows = summary["flows"]
    width = max([len(f["flow"]) for f in flows[:limit]] + [4])
    lines.append("")
    lines.append(f"{'flow':<{width}}  {'frames':>9} {'bytes':>13} {'passed':>13} {'dropped':>13} "
                 f"{'marked':>7}  heavy")
    for f in flows[:limit]:
        lines.append(f"{f['flow']:<{width}}  {f['packets']:>9} {f['bytes']:>13} {f['passed_bytes']:>13} "
                     f"{f['dropped_bytes']:>13} {f['marked_packets']:>7}  {'yes' if f['heavy'] else 'no'}")
    if len(flows) > limit:
        lines.append(f"... and {len(flows) - limit} more flows (--json lists all)")
    return "\n".join(lines)


# ---- the command line (the edge: files, progress bar, stdout) ------------
def engine_name(text: str) -> str:
    if text not in ENGINES:
        raise argparse.ArgumentTypeError(f"unknown engine {text!r}; known: {', '.join(sorted(ENGINES))}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from natra.simulations import units

    parser.add_argument("pcap", help="capture file: pcap or pcapng; Ethernet, Linux cooked (SLL, SLL2: "
                                     "tcpdump -i any) or raw IP")
    parser.add_argument("--rate", required=True, type=units.rate,
                        help="limit in bit/s, a quantity as in the bandwidth annotations (10M, 1G, 1Gi, 1e9)")
    parser.add_argument("--burst", type=units.bounded(units.size, what="burst"), default=None,
                        help="bucket depth in bits, a quantity as in the annotations (default: as "
                             "natra.kernel.params)")
    parser.add_argument("--width", type=units.bounded(units.power_of_two, maximum=L.MAX_WIDTH, what="width"),
                        default=DEFAULT_WIDTH, help="sketch columns (a power of two)")
    parser.add_argument("--depth", type=units.bounded(units.count, minimum=1, maximum=L.MAX_DEPTH,
                                                      what="depth"),
                        default=DEFAULT_DEPTH, help=f"sketch rows (1..{L.MAX_DEPTH})")
    parser.add_argument("--threshold", type=units.bounded(units.share, what="threshold",
                                                          of="the window's volume (rate x window)"),
                        default=None, help="heavy-hitter threshold: bytes per window (125k, 64Ki) or a "
                                           "percentage of rate x window spelled with %% (1%%)")
    parser.add_argument("--window", type=units.bounded(units.duration_ns, minimum_ns=MIN_WINDOW_NS,
                                                       maximum_ns=MAX_WINDOW_NS, what="window"),
                        default=None, help="sketch window, a duration (100ms, 1s)")
    table_count = units.bounded(units.count, minimum=1, maximum=MAX_FLOW_TABLE, what="flow table")
    parser.add_argument("--flow-table", type=lambda text: flow_slots(table_count(text)),
                        default=DEFAULT_FLOW_TABLE, help="heavy-flow table slots (a power of two)")
    parser.add_argument("--no-ecn", action="store_true", help="drop instead of marking ECT heavy frames")
    parser.add_argument("--engine", default="model", type=engine_name,
                        help="model (default); kernel: the real program through BPF_PROG_TEST_RUN (root); "
                             "both: kernel and model side by side, disagreeing frames counted as "
                             "'divergences' (exit 1 when any frame or the final map state differs). Every "
                             "engine charges each frame its original length: the kernel engines zero-pad "
                             "headers-only frames back to it and refuse captures with frames longer than "
                             "the test path runs (3712 bytes: GRO/GSO super-packets)")
    parser.add_argument("--direction", choices=sorted(DIRECTIONS), default="ingress",
                        help="ingress = traffic into the Pod (host-veth egress), egress = out of it; with "
                             "--pod only that direction's frames are replayed")
    parser.add_argument("--pod", action="append", type=pod_address, default=[], metavar="ADDR",
                        help="the Pod's IPv4 or IPv6 address (repeatable): replay only frames to it "
                             "(ingress) or from it (egress), e.g. the data and not its ACKs; without it "
                             "every frame counts as the chosen direction")
    parser.add_argument("--verdicts", metavar="FILE", help="write one CSV line per frame")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def build_configs(args) -> tuple[list[ConfigValues], dict]:
    tuning = {"width": args.width, "depth": args.depth}
    if args.window is not None:
        tuning["window_ns"] = args.window
    if args.threshold is not None and args.threshold.percent is not None:
        volume_bits = args.rate * (args.window or DEFAULT_WINDOW_NS) // L.NS_PER_SEC
        tuning["threshold_bytes"] = max(round(volume_bits * args.threshold.percent / (100 * 8)), 1)
    elif args.threshold is not None:
        tuning["threshold_bytes"] = args.threshold.bytes
    if args.no_ecn:
        tuning["ecn"] = False
    params = params_for(args.rate, args.burst, **tuning)
    direction = DIRECTIONS[args.direction]
    configs = [to_config(None, width=params.width, depth=params.depth) for _ in range(L.NDIRS)]
    configs[direction] = to_config(params)
    settings = {"engine": args.engine, "direction": args.direction, "rate_bps": params.rate_bps,
                "burst_bits": params.burst_bits, "reserve_bits": params.reserve_bits, "width": params.width,
                "depth": params.depth, "threshold_bytes": params.threshold_bytes,
                "window_ns": params.window_ns, "ecn": params.ecn}
    return configs, settings


def run(args) -> int:
    """Replay a capture through the data path and summarise per flow."""
    from natra.simulations.pcapio import CaptureError

    from natra.kernel.params import ParamError

    try:
        configs, settings = build_configs(args)
        warnings: list[str] = []
        with Progress("read", unit="frame", enabled=large_file(args.pcap)) as reading:
            captured = counted(read_capture(args.pcap, warn=warnings.append), reading)
            records, left_out = select_records(captured, args.pod, DIRECTIONS[args.direction])
    except (ParamError, CaptureError, ValueError) as e:
        print(f"natra-sim replay: {e}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"natra-sim replay: warning: {warning}", file=sys.stderr)
    if args.pod:
        import ipaddress

        settings["pod"] = [str(ipaddress.ip_address(a[12:] if a[:12] == b"\x00" * 10 + b"\xff\xff" else a))
                           for a in args.pod]
        settings["frames_left_out"] = left_out
    try:
        engine = make_engine(args.engine, configs, args.flow_table)
    except Exception as e:  # the kernel engine's loader errors (not root, no object) end here
        print(f"natra-sim replay: engine {args.engine}: {e}", file=sys.stderr)
        return 2
    max_frame = getattr(engine, "max_frame", None)
    refusal = too_long(records, max_frame) if max_frame else None
    if refusal:
        if hasattr(engine, "close"):
            engine.close()
        print(f"natra-sim replay: engine {args.engine}: {refusal}", file=sys.stderr)
        return 2
    try:
        with Progress(f"replay ({args.engine})", total=len(records), unit="frame",
                      enabled=len(records) >= PROGRESS_MIN_FRAMES) as bar:
            result = replay_records(records, engine, DIRECTIONS[args.direction], bar.update)
        extra = engine.summary_extra() if hasattr(engine, "summary_extra") else {}
    except (ValueError, OSError) as e:  # a frame the kernel's test path refuses
        print(f"natra-sim replay: engine {args.engine}: {e}", file=sys.stderr)
        return 2
    finally:
        if hasattr(engine, "close"):
            engine.close()
    if args.verdicts:
        with open(args.verdicts, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(("index", "time_ns", "verdict", "flow", "heavy"))
            writer.writerows(verdict_rows(result))
    summary = summarize(result, settings)
    summary.update(extra)
    text = json.dumps(summary, indent=2) if args.json else format_table(summary)
    agree = not extra or (extra["divergences"] == 0 and extra["state_equal"])
    if extra:
        summary["engines_agree"] = agree
        text = json.dumps(summary, indent=2) if args.json else text
    if extra and not args.json:
        state = "equal" if extra["state_equal"] else "differs in " + ", ".join(extra["state_differs_in"])
        text += f"\n\nkernel vs model: {extra['divergences']} frames disagree; final map state {state}"
    print(text)
    if not agree:
        print(f"natra-sim replay: the engines DISAGREE ({extra['divergences']} frames, map state "
              f"{'equal' if extra['state_equal'] else 'different'}); exit 1", file=sys.stderr)
        return 1
    return 0
