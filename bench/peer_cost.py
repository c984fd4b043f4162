"""Per-packet cost and BPF memory of Natra's program beside the original Go Natra's.

Owns: the comparison of issue 18, parts 2 and 3. The peer is the tc program of
the original Go Natra (terraboops/natra, `bpf/natra.bpf.c`). It is third-party
code and never part of this repository: this script takes its source (or a
compiled object) with `--peer PATH`, or, without it, tries `git clone` of the
public repository into a temporary directory. It compiles the peer there with
clang, measures it, and deletes the directory. Without a peer it measures Natra
alone and says so.

Method (the same sitting, the same frames, the same harness for every program):
  * BPF_PROG_TEST_RUN on 1514-byte IPv4 TCP frames; flows are spread by
    rewriting the source address and port of one template frame;
  * one flow: `repeat` runs of one frame per call (the kernel's mean);
    1,024 and 65,536 flows: every flow's frame once per call, cycled (one
    warm-up pass first, so heavy flows have their state), mean per call;
  * each figure is ns above a trivial program (return-only tc program compiled
    here) timed the same way in the same round, so the harness's own cost is
    taken out; rounds interleave the programs (order rotated each round) and
    the table shows the median over rounds;
  * cases: mouse (threshold out of reach), heavy passing (every frame heavy,
    the limit out of reach), heavy dropped (every frame heavy, the limit
    exhausted); the counters of each program are checked to show that every
    measured frame took the case's path (the peer's stats map, Natra's
    verdict counters);
  * Natra in both modes: police (drops in the program) and shape
    (NATRA_CFG_SHAPE: the program only classifies; "heavy dropped" is the same
    configuration as police, the frames are classified, the queue would pace),
    and shape with `sketchLock: false` (shape_unlocked: the sketch step without
    the lock, the cheaper variant with the weaker promise under concurrency);
  * Natra's sketch and flow table as a Pod gets them by default (width 1,024,
    depth 4; the flow table sized by `natra.kernel.params.flow_table_entries`
    for the case's limits); the peer's maps as it declares them.
Memory: the sum of `memlock` (the kernel's charge) of every map and program of
one loaded object, read from /proc/self/fdinfo, for Natra at defaults and at
the largest tuning, and for the peer.

What the lock costs (--lock-cost): police and shape again, from a build of
the same source with the lock's calls removed (-DNATRA_MEASURE_NO_LOCK,
compiled into the temporary directory and deleted with it). That build is for
measuring only: without the lock neither R*t+B nor "no false negatives" holds
when CPUs share a direction, so it is never shipped, and its columns do not
count towards the aim.

Needs root and `make bpf` (and the repository's bpf/ for --lock-cost). Usage:
  python3 bench/peer_cost.py [--peer PATH] [--rounds 7] [--repeat 200000] [--shared] [--lock-cost] [--json]
(--shared adds each mode on the shared interim program, a Pod bound to one of its slots.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from natra.kernel import interim, libbpf, maps, testrun, ticks
from natra.kernel import layout as L
from natra.kernel.bpfsys import map_update
from natra.kernel.loader import BpfObject
from natra.kernel.params import (
    MAX_AUTO_FLOW_TABLE,
    MAX_FLOW_TABLE,
    MODE_POLICE,
    MODE_SHAPE,
    flow_table_entries,
    params_for,
    to_config,
)

PEER_REPO = "https://github.com/terraboops/natra"
PEER_PATH_IN_REPO = "bpf/natra.bpf.c"
FRAME_LEN = 1514
FLOW_COUNTS = (1, 1024, 65536)
CASES = ("mouse", "heavy_pass", "heavy_drop")
SADDR_AT = 14 + 12
SPORT_AT = 14 + 20
UNREACHABLE_THRESHOLD = 1 << 62  # bytes: no flow ever turns heavy
PASS_RATE_BPS = 10**15  # the peer's passing rate: the largest, its bucket never fills in a sitting
# Natra's passing rate: far above what a test run sends (~0.12 Tbit/s), so the bucket
# never fills in a sitting, yet a Pod's rate whose bucket spares a timer tick of rate,
# so policing reads the coarse clock as the plugin configures it (at 1 Pbit/s it would not).
NATRA_PASS_RATE_BPS = 500 * 10**9
DROP_RATE_BPS = 1000  # bit/s: after the first frames every heavy frame is refused
TRIVIAL_C = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("tc") int trivial(struct __sk_buff *skb) { return 0; }
char LICENSE[] SEC("license") = "Dual BSD/GPL";
"""
CLANG_FLAGS = ["-O2", "-g", "-target", "bpf", "-mcpu=v3",
               "-I", f"/usr/include/{platform.machine()}-linux-gnu"]
# The peer's layouts, read from its source (struct natra_config, struct token_bucket,
# its stat slots); used only to fill its maps and read its counters.
PEER_STAT_PASSED, PEER_STAT_HH, PEER_STAT_DROPPED, PEER_STATS_PER_DIR = 0, 2, 5, 6


def template_frame() -> bytes:
    eth = bytes.fromhex("020000000002" "020000000001" "0800")
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, FRAME_LEN - 14, 0, 0x4000, 64, 6, 0,
                     bytes([10, 1, 0, 1]), bytes([10, 2, 0, 1]))
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 5 << 4, 0x10, 65535, 0, 0)
    frame = eth + ip + tcp
    return frame + bytes(FRAME_LEN - len(frame))


def flow_frames(n: int) -> list[bytes]:
    base = template_frame()
    if n == 1:
        return [base]
    out = []
    for i in range(n):
        f = bytearray(base)
        f[SADDR_AT + 2:SADDR_AT + 4] = struct.pack("!H", (i >> 16) & 0xFFFF)
        f[SPORT_AT:SPORT_AT + 2] = struct.pack("!H", i & 0xFFFF)
        out.append(bytes(f))
    return out


# ---- building the peer and the trivial program in a temporary directory ------------------

def compile_bpf(src: str, out: str) -> None:
    subprocess.run(["clang", *CLANG_FLAGS, "-c", src, "-o", out], check=True,
                   capture_output=True, text=True)


def fetch_peer(tmp: str) -> tuple[str | None, str]:
    """Clone the peer's repository into `tmp`; (source path or None, what happened)."""
    dest = os.path.join(tmp, "peer")
    try:
        subprocess.run(["git", "clone", "--depth", "1", "--quiet", PEER_REPO, dest], check=True,
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    except (subprocess.SubprocessError, OSError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        return None, f"could not fetch {PEER_REPO}: {detail.strip().splitlines()[-1] if detail else e}"
    rev = subprocess.run(["git", "-C", dest, "rev-parse", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    return os.path.join(dest, PEER_PATH_IN_REPO), f"fetched {PEER_REPO} at {rev}"


def peer_object(arg: str | None, tmp: str) -> tuple[str | None, str]:
    """The peer's compiled object in `tmp` (or the given .o), and where it came from."""
    if arg and arg.endswith(".o"):
        return arg, f"object {arg}"
    if arg:
        src, how = arg, f"source {arg}"
    else:
        src, how = fetch_peer(tmp)
        if src is None:
            return None, how
    out = os.path.join(tmp, "peer.bpf.o")
    try:
        compile_bpf(src, out)
    except subprocess.CalledProcessError as e:
        return None, f"{how}: clang failed: {e.stderr.strip()[-400:]}"
    except OSError as e:
        return None, f"{how}: clang failed: {e}"
    return out, how + ", compiled here"


# ---- loading any object through libbpf ---------------------------------------------------

class RawObject:
    """An object loaded as it is (the peer, the trivial program): fds by name."""

    def __init__(self, path: str):
        self._obj = libbpf.object_open(path)
        try:
            libbpf.object_load(self._obj)
        except BaseException:
            libbpf.object_close(self._obj)
            raise

    def prog_fd(self, name: str) -> int:
        return libbpf.program_fd(libbpf.find_program(self._obj, name))

    def map_fd(self, name: str) -> int:
        return libbpf.map_fd(libbpf.find_map(self._obj, name))

    def close(self) -> None:
        if self._obj:
            libbpf.object_close(self._obj)
            self._obj = None


def memlock(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    return 0


def map_entries(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("max_entries:"):
                return int(line.split()[1])
    return 0


# ---- the contenders ------------------------------------------------------------------------

@dataclass
class Contender:
    name: str
    fd: int
    counts: callable = field(repr=False, default=None)  # () -> dict of path counters
    close: callable = field(repr=False, default=None)


# Shaping with `sketchLock: false` (the sketch step without the lock: cheaper, weaker
# under concurrency; docs/design.md, "Concurrency").
MODE_SHAPE_UNLOCKED = "shape_unlocked"
# Column labels of the printed table.
MODE_LABELS = {MODE_POLICE: "police", MODE_SHAPE: "shape", MODE_SHAPE_UNLOCKED: "shape-u"}
# --lock-cost: a mode from the build without the lock (measurement only, never shipped).
NO_LOCK_SUFFIX = "_nolock"
SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bpf", "natra.bpf.c")


def shipped(mode: str) -> bool:
    """Whether a mode is one a Pod can run (the aim counts only these)."""
    return not mode.endswith(NO_LOCK_SUFFIX)


def build_no_lock(tmp: str, source: str = SOURCE) -> str:
    """Compile `source` without the lock into `tmp`; the object's path."""
    if not os.path.isfile(source):
        raise FileNotFoundError(f"--lock-cost needs the repository's {source}")
    out = os.path.join(tmp, "natra_nolock.bpf.o")
    subprocess.run(["clang", *CLANG_FLAGS, "-I", os.path.dirname(source), "-DNATRA_MEASURE_NO_LOCK",
                    "-c", source, "-o", out], check=True, capture_output=True, text=True)
    return out


def natra_params(case: str, mode: str):
    knobs = ({"mode": MODE_SHAPE, "sketch_lock": False} if mode == MODE_SHAPE_UNLOCKED
             else {"mode": mode})
    if case == "mouse":
        return params_for(NATRA_PASS_RATE_BPS, 1 << 34, threshold_bytes=UNREACHABLE_THRESHOLD,
                          ecn=False, **knobs)
    if case == "heavy_pass":
        return params_for(NATRA_PASS_RATE_BPS, 1 << 34, threshold_bytes=1, ecn=False, **knobs)
    return params_for(DROP_RATE_BPS, None, threshold_bytes=1, ecn=False, **knobs)


NATRA_OBJECT: str | None = None  # --natra-object; None: the loader's choice for this kernel
NO_LOCK_OBJECT: str | None = None  # --lock-cost: build_no_lock's object


SHARED_SUFFIX = "_shared"  # --shared: the same mode on the shared interim program
TEST_RUN_IFINDEX = 1  # a test run's frames are on the loopback device


def load_natra(case: str, mode: str, flow_table: int | None = None) -> tuple[Contender, BpfObject]:
    base = mode.removesuffix(SHARED_SUFFIX).removesuffix(NO_LOCK_SUFFIX)
    path = NATRA_OBJECT if shipped(mode) else NO_LOCK_OBJECT
    p = natra_params(case, base)
    table = flow_table or flow_table_entries([p, None])
    cfgs = [to_config(p, coarse_tick_ns=ticks.coarse_tick_ns()), to_config(None)]  # as the plugin does
    if mode.endswith(SHARED_SUFFIX):
        program = interim.SharedProgram.load(cfgs, flow_table=table, path=NATRA_OBJECT)
        program.fill_slot()
        obj = program.bind(cfgs, TEST_RUN_IFINDEX)

        def close() -> None:
            obj.close()
            program.close()
    else:
        obj = BpfObject.load(cfgs, flow_table=table, path=path)
        close = obj.close

    def counts() -> dict:
        c = maps.read_counters(obj.map_fd("natra_counters"), L.DIR_TO_POD)
        out = {L.VERDICT_NAMES[v]: c[L.verdict_packets_index(v)] for v in range(L.NVERDICTS)
               if c[L.verdict_packets_index(v)]}
        out["flow_table"] = map_entries(obj.map_fd("natra_flows"))
        return out

    return Contender(f"natra_{mode}", obj.prog_fd(L.DIR_TO_POD), counts, close), obj


def load_peer(path: str, case: str) -> Contender:
    obj = RawObject(path)
    cfg_fd = obj.map_fd("natra_config_map")
    key = struct.pack("=I", 0)  # DIR_INGRESS, the program natra_ingress
    # struct natra_config {rate_bps, burst_bytes, hh_threshold, edt_pacing}
    if case == "mouse":
        cfg = (PASS_RATE_BPS, 1 << 62, UNREACHABLE_THRESHOLD, 0)
    elif case == "heavy_pass":
        cfg = (PASS_RATE_BPS, 1 << 62, 0, 0)
    else:
        cfg = (1, 0, 0, 0)  # burst 0: the bucket never holds a frame's tokens; frames are not ECT
    map_update(cfg_fd, key, struct.pack("=QQQQ", *cfg))
    if case == "heavy_pass":
        # struct token_bucket {lock u32 (+pad), tokens, last_update_ns, next_release_ns}:
        # a full bucket whose last update lies in the future, so the refill
        # (whose (ns / 1000) * rate overflows u64 at this rate) adds nothing and
        # every frame of the sitting is paid from the tokens.
        map_update(obj.map_fd("natra_bucket_map"), key, struct.pack("=QQQQ", 0, 1 << 62, 1 << 63, 0))
    stats_fd = obj.map_fd("natra_stats_map")
    ncpu = maps.possible_cpus()

    def counts() -> dict:
        from natra.kernel.bpfsys import map_lookup

        def slot(s: int) -> int:
            raw = map_lookup(stats_fd, struct.pack("=I", s), 8 * ncpu)
            return sum(struct.unpack(f"={ncpu}Q", raw)) if raw else 0
        return {"passed": slot(PEER_STAT_PASSED), "heavy": slot(PEER_STAT_HH),
                "dropped": slot(PEER_STAT_DROPPED)}

    return Contender("peer", obj.prog_fd("natra_ingress"), counts, obj.close)


# ---- timing ---------------------------------------------------------------------------------

def time_frames(fd: int, frames: list[bytes], repeat: int) -> float:
    """Kernel ns per run: one frame x `repeat`, or every frame once (mean)."""
    if len(frames) == 1:
        return float(testrun.run(fd, frames[0], 0, repeat=repeat).duration_ns)
    total = 0
    for frame in frames:
        total += testrun.run(fd, frame, 0).duration_ns
    return total / len(frames)


def measure(peer_path: str | None, rounds: int, repeat: int, flow_counts, modes, log,
            flow_table: int | None = None) -> dict:
    trivial_dir = tempfile.mkdtemp(prefix="natra-trivial-")
    try:
        src = os.path.join(trivial_dir, "trivial.bpf.c")
        with open(src, "w") as f:
            f.write(TRIVIAL_C)
        compile_bpf(src, os.path.join(trivial_dir, "trivial.bpf.o"))
        trivial_obj = RawObject(os.path.join(trivial_dir, "trivial.bpf.o"))
    finally:
        shutil.rmtree(trivial_dir)
    trivial = Contender("trivial", trivial_obj.prog_fd("trivial"), lambda: {}, trivial_obj.close)
    results = {}
    try:
        for n in flow_counts:
            frames = flow_frames(n)
            for case in CASES:
                contenders = [trivial]
                for mode in modes:
                    contenders.append(load_natra(case, mode, flow_table)[0])
                if peer_path:
                    contenders.append(load_peer(peer_path, case))
                try:
                    for c in contenders:  # warm-up: every flow's state exists, the bucket is in its case
                        time_frames(c.fd, frames, max(1, repeat // 10))
                    before = {c.name: c.counts() for c in contenders}
                    samples = {c.name: [] for c in contenders}
                    for r in range(rounds):
                        k = r % len(contenders)
                        order = contenders[k:] + contenders[:k]
                        if r % 2:
                            order.reverse()
                        for c in order:
                            samples[c.name].append(time_frames(c.fd, frames, repeat))
                    after = {c.name: c.counts() for c in contenders}
                finally:
                    for c in contenders[1:]:
                        c.close()
                base = statistics.median(samples["trivial"])
                row = {"trivial_ns": round(base, 1)}
                for c in contenders[1:]:
                    above = [s - t for s, t in zip(samples[c.name], samples["trivial"], strict=True)]
                    row[c.name] = {"ns_above_trivial": round(statistics.median(above), 1),
                                   "rounds": [round(a, 1) for a in above],
                                   "paths": {k: after[c.name].get(k, 0) - before[c.name].get(k, 0)
                                             for k in after[c.name] if k != "flow_table"}}
                    if "flow_table" in after[c.name]:
                        row[c.name]["flow_table"] = after[c.name]["flow_table"]
                results[f"{case}/{n}"] = row
                log(format_row(case, n, row, modes))
    finally:
        trivial.close()
    return results


# ---- memory ---------------------------------------------------------------------------------

def natra_memory(params, flow_table: int) -> dict:
    with BpfObject.load([to_config(params), to_config(params)], flow_table=flow_table,
                        path=NATRA_OBJECT) as obj:
        out = {name: memlock(obj.map_fd(name)) for name in obj.map_names}
        out.update({f"prog_{d}": memlock(obj.prog_fd(d)) for d in range(L.NDIRS)})
    return out


def peer_memory(path: str) -> dict:
    obj = RawObject(path)
    try:
        out = {name: memlock(obj.map_fd(name))
               for name in ("natra_config_map", "natra_bucket_map", "natra_cms_map", "natra_stats_map")}
        out.update({name: memlock(obj.prog_fd(name)) for name in ("natra_ingress", "natra_egress")})
    finally:
        obj.close()
    return out


def memory(peer_path: str | None) -> dict:
    defaults = params_for(100_000_000)
    largest = params_for(100_000_000, width=L.MAX_WIDTH, depth=L.MAX_DEPTH)
    out = {
        "natra_defaults": {"width": defaults.width, "depth": defaults.depth,
                           "flow_table": flow_table_entries([defaults, defaults]),
                           "bytes": natra_memory(defaults, flow_table_entries([defaults, defaults]))},
        "natra_largest_sketch": {"width": L.MAX_WIDTH, "depth": L.MAX_DEPTH,
                                 "flow_table": MAX_AUTO_FLOW_TABLE,
                                 "bytes": natra_memory(largest, MAX_AUTO_FLOW_TABLE)},
        "natra_largest": {"width": L.MAX_WIDTH, "depth": L.MAX_DEPTH, "flow_table": MAX_FLOW_TABLE,
                          "bytes": natra_memory(largest, MAX_FLOW_TABLE)},
    }
    if peer_path:
        out["peer"] = {"bytes": peer_memory(peer_path)}
    for v in out.values():
        v["total"] = sum(v["bytes"].values())
    return out


# ---- report ---------------------------------------------------------------------------------

def _ratio(ours: dict | None, peer: dict | None) -> str:
    if not ours or not peer:
        return "-"
    p = peer["ns_above_trivial"]
    return f"{ours['ns_above_trivial'] / p:.2f}" if p > 0 else "-"


def format_row(case: str, n: int, row: dict, modes) -> str:
    cells = [f"{case:<11}", f"{n:>6}", f"{row['trivial_ns']:>8.1f}"]
    for name in [f"natra_{m}" for m in modes] + ["peer"]:
        cells.append(f"{row[name]['ns_above_trivial']:>8.1f}" if name in row else f"{'-':>8}")
    for m in modes:
        cells.append(f"{_ratio(row.get(f'natra_{m}'), row.get('peer')):>10}")
    return " ".join(cells)


def mode_label(mode: str) -> str:
    """A mode's short column label: 'shape-u', 'police+s' (on the shared program),
    'police-n' (without the lock, measurement only)."""
    base = mode.removesuffix(SHARED_SUFFIX).removesuffix(NO_LOCK_SUFFIX)
    return (MODE_LABELS.get(base, base) + ("+s" if mode.endswith(SHARED_SUFFIX) else "")
            + ("" if shipped(mode) else "-n"))


def header(modes) -> str:
    cols = ["case       ", " flows", " trivial"] + [f"{mode_label(m):>8}" for m in modes] + ["    peer"]
    cols += [f"{mode_label(m) + '/p':>10}" for m in modes]
    return " ".join(cols)


def report(data: dict) -> str:
    modes = data["modes"]
    lines = [f"Natra vs peer per-packet cost, {data['date_utc']}, kernel {data['machine']['kernel']}, "
             f"{data['machine']['cpu']} ({data['machine']['cpus']} CPUs), load {data['load_before']} -> "
             f"{data['load_after']}",
             f"peer: {data['peer']}",
             f"ns above a trivial program, median of {data['rounds']} interleaved rounds; "
             f"1 flow: repeat {data['repeat']}; spread: each flow once per call",
             header(modes)]
    for key, row in data["results"].items():
        case, n = key.split("/")
        lines.append(format_row(case, int(n), row, modes))
    lines.append("paths taken (measured frames):")
    for key, row in data["results"].items():
        parts = [f"{name} {row[name]['paths']}" for name in row if isinstance(row[name], dict)]
        lines.append(f"  {key}: " + "; ".join(parts))
    if data.get("memory"):
        lines.append("BPF memory per Pod (memlock of maps + programs):")
        for name, v in data["memory"].items():
            extra = (f" width {v['width']} depth {v['depth']} flow table {v['flow_table']}"
                     if "width" in v else "")
            lines.append(f"  {name:<15} {v['total'] / 1024:>10.1f} KiB{extra}  "
                         + ", ".join(f"{k} {b // 1024} KiB" for k, b in v["bytes"].items()))
    return "\n".join(lines)


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peer", help="the peer's bpf/natra.bpf.c (or a compiled .o); "
                    "without it the script tries to clone the peer's repository into a temp dir")
    ap.add_argument("--no-peer", action="store_true", help="measure Natra alone")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=200_000, help="runs per call in the one-flow cases")
    ap.add_argument("--flows", default=",".join(map(str, FLOW_COUNTS)))
    ap.add_argument("--modes", default=f"{MODE_POLICE},{MODE_SHAPE},{MODE_SHAPE_UNLOCKED}",
                    help=f"any of {MODE_POLICE}, {MODE_SHAPE}, {MODE_SHAPE_UNLOCKED} (shaping with "
                         "sketchLock false)")
    ap.add_argument("--shared", action="store_true",
                    help="also each mode on the shared interim program (a Pod bound to one of its slots)")
    ap.add_argument("--lock-cost", action="store_true",
                    help="also police and shape from a build without the lock (measurement only: "
                         "what the lock costs a frame)")
    ap.add_argument("--flow-table", type=int, help="Natra's flow-table entries instead of the derived size")
    ap.add_argument("--natra-object", help="Natra's object (e.g. natra/bpf/natra_compat.bpf.o); "
                    "default: what the loader picks for this kernel")
    ap.add_argument("--json", metavar="FILE", help="also write the record here")
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    if args.shared:
        modes += [m + SHARED_SUFFIX for m in list(modes)]
    if args.lock_cost:
        modes += [m + NO_LOCK_SUFFIX for m in (MODE_POLICE, MODE_SHAPE) if m in modes]
    global NATRA_OBJECT, NO_LOCK_OBJECT
    NATRA_OBJECT = args.natra_object
    flow_counts = [int(x) for x in args.flows.split(",")]
    libbpf.lib()
    tmp = tempfile.mkdtemp(prefix="natra-peer-")
    try:
        if args.lock_cost:
            try:
                NO_LOCK_OBJECT = build_no_lock(tmp)
            except (OSError, subprocess.CalledProcessError) as e:
                detail = getattr(e, "stderr", "") or str(e)
                print(f"natra: --lock-cost: cannot build without the lock: {detail.strip()[-400:]}",
                      file=sys.stderr)
                return 2
        if args.no_peer:
            peer_path, how = None, "not measured (--no-peer)"
        else:
            peer_path, how = peer_object(args.peer, tmp)
        if peer_path is None:
            print(f"PEER ABSENT: {how}; measuring Natra alone (pass --peer PATH to the peer's "
                  f"{PEER_PATH_IN_REPO})", file=sys.stderr)
        load_before = _load()
        print(header(modes), flush=True)
        t0 = time.monotonic()
        results = measure(peer_path, args.rounds, args.repeat, flow_counts, modes,
                          lambda line: print(line, flush=True), args.flow_table)
        data = {
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": {"kernel": platform.release(), "cpu": _cpu_model(),
                        "cpus": len(os.sched_getaffinity(0))},
            "load_before": load_before, "load_after": _load(), "peer": how if peer_path else f"ABSENT: {how}",
            "natra_object": NATRA_OBJECT or "loader default",
            "rounds": args.rounds, "repeat": args.repeat, "modes": modes, "frame_len": FRAME_LEN,
            "seconds": round(time.monotonic() - t0, 1), "results": results,
            "memory": memory(peer_path),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(report(data))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
