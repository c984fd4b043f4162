"""What reading Natra's counters and tables costs the data path, per packet.

Owns: the benchmark behind issue 7's "reading the counters costs the data
path no more than a few ns per packet". It loads the production object (real
clock), sends FLOW_ENTRIES heavy flows into its 4,096-slot flow table (the
flows that meet in a slot share it), and times the
program with BPF_PROG_TEST_RUN `repeat` on one CPU while another process on
the other CPU does, as fast as it can:
  * nothing (idle),
  * `counters`: reads the per-CPU counters of both directions (what a
    Prometheus scrape of the byte/packet families needs),
  * `everything`: what `natra status` / one exporter scrape reads for a Pod
    (config, state and counters of both directions, the whole flow table in
    BPF_MAP_LOOKUP_BATCH calls, not decoded).
A scrape every few seconds reads far less than this; hammering is the worst
case. Frames: a mouse frame (no flow ever heavy) and a heavy frame (every
frame heavy, its flow entry present), both passing.
Rule: the kernel's per-run average (`duration`) is the measure, median over
ROUNDS rounds; the reader's own rate is reported so a reader that starved
cannot pass for a cheap one. Needs root, 2 CPUs and `make bpf`.
Must not know: the policy's decisions.

Usage: python3 bench/counter_cost.py [--repeat 200000] [--rounds 7] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import statistics
import struct
import sys
import time

from natra.kernel import bpfsys, maps, testrun
from natra.kernel import layout as L
from natra.kernel.loader import BpfObject
from natra.kernel.params import DataPathParams, to_config

FRAME_LEN = 1514
RATE_BPS = 100_000_000_000  # 100 Gbit/s: repeated frames keep passing
BURST_BITS = 1 << 34
NEVER_HEAVY = 1 << 62  # bytes per window: no flow turns heavy
ALWAYS_HEAVY = 1  # byte: every frame is heavy
FLOW_ENTRIES = 4096  # heavy flows sent into the table the reader walks (the default table size)
DATA_CPU, READER_CPU = 0, 1
READERS = ("idle", "counters", "everything")
READER_WARMUP_S = 0.2
MAPS_READ = ("natra_counters", "natra_config", "natra_state", "natra_flows", "natra_flow_keys")
SLOT_SIZE, FLOW_KEY_SIZE, FLOW_VALUE_SIZE = 4, ctypes.sizeof(L.FlowKey), ctypes.sizeof(L.Flow)


def frame(flow: int = 0) -> bytes:
    """Ethernet + IPv4 + TCP, flow number in the source address and port, padded to FRAME_LEN."""
    eth = bytes.fromhex("02000000000a" "02000000000b" "0800")
    src = bytes([10, 66, (flow >> 8) & 0xFF, flow & 0xFF])
    dst = bytes([10, 77, 0, 1])
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, FRAME_LEN - 14, 0, 0x4000, 64, 6, 0, src, dst)
    tcp = struct.pack("!HHIIBBHHH", 30000 + (flow & 0x3FFF), 443, 1, 0, 5 << 4, 0x10, 65535, 0, 0)
    head = eth + ip + tcp
    return head + bytes(FRAME_LEN - len(head))


def load(threshold: int) -> BpfObject:
    params = DataPathParams(rate_bps=RATE_BPS, burst_bits=BURST_BITS, reserve_bits=BURST_BITS // 20,
                            threshold_bytes=threshold)
    return BpfObject.load([to_config(params), to_config(None)], flow_table=FLOW_ENTRIES)


def fill_flow_table(obj: BpfObject) -> int:
    prog = obj.prog_fd(L.DIR_TO_POD)
    now = time.monotonic_ns()
    for i in range(FLOW_ENTRIES):
        testrun.run(prog, frame(i), now)
    return len(maps.read_flows(obj.map_fd("natra_flows"), obj.map_fd("natra_flow_keys")))


def _reader(kind: str, fds: dict[str, int], stop, count) -> None:
    os.sched_setaffinity(0, {READER_CPU})
    n = 0
    while not stop.is_set():
        for d in (L.DIR_TO_POD, L.DIR_FROM_POD):
            maps.read_counters(fds["natra_counters"], d)
            if kind == "everything":
                maps.read_config(fds["natra_config"], d)
                maps.read_state(fds["natra_state"], d)
        if kind == "everything":
            # The batch syscall is what touches the kernel; decoding the entries into
            # dicts (maps.read_flows) is user-space work that would only slow the loop.
            bpfsys.map_lookup_batch(fds["natra_flows"], SLOT_SIZE, FLOW_VALUE_SIZE)
            bpfsys.map_lookup_batch(fds["natra_flow_keys"], SLOT_SIZE, FLOW_KEY_SIZE)
        n += 1
    count.value = n


def time_runs(obj: BpfObject, pkt: bytes, reader: str, repeat: int, rounds: int) -> dict:
    """Median ns/packet of `rounds` test runs while `reader` runs on the other CPU."""
    fds = {name: obj.map_fd(name) for name in MAPS_READ}
    ctx = mp.get_context("fork")  # the child inherits the map fds
    stop, count = ctx.Event(), ctx.Value("q", 0)
    child = None
    if reader != "idle":
        child = ctx.Process(target=_reader, args=(reader, fds, stop, count))
        child.start()
        time.sleep(READER_WARMUP_S)
    started = time.monotonic()
    try:
        prog = obj.prog_fd(L.DIR_TO_POD)
        samples = [testrun.run(prog, pkt, 0, repeat).duration_ns for _ in range(rounds)]
    finally:
        stop.set()
        if child is not None:
            child.join(timeout=30)
    elapsed = time.monotonic() - started + (READER_WARMUP_S if child else 0)
    return {"ns_per_packet": statistics.median(samples), "min": min(samples), "max": max(samples),
            "reader_loops_per_s": round(count.value / elapsed) if child else 0}


def measure(repeat: int, rounds: int) -> dict:
    os.sched_setaffinity(0, {DATA_CPU})
    out: dict = {"repeat": repeat, "rounds": rounds, "flow_entries": FLOW_ENTRIES, "results": {}}
    for path, threshold in (("mouse", NEVER_HEAVY), ("heavy", ALWAYS_HEAVY)):
        with load(threshold) as obj:
            entries = fill_flow_table(obj)
            if path == "mouse":  # a mouse object has no entries: give the reader the same table to walk
                with load(ALWAYS_HEAVY) as donor:
                    fill_flow_table(donor)
                    for name, size in (("natra_flows", FLOW_VALUE_SIZE), ("natra_flow_keys", FLOW_KEY_SIZE)):
                        for slot, value in bpfsys.map_lookup_batch(donor.map_fd(name), SLOT_SIZE, size):
                            bpfsys.map_update(obj.map_fd(name), slot, value)
                entries = len(maps.read_flows(obj.map_fd("natra_flows"), obj.map_fd("natra_flow_keys")))
            pkt = frame(0)
            obj_results = {r: time_runs(obj, pkt, r, repeat, rounds) for r in READERS}
            counters = maps.read_counters(obj.map_fd("natra_counters"), L.DIR_TO_POD)
            passed = sum(counters[L.verdict_packets_index(v)] for v in L.PASSING_VERDICTS)
            out["results"][path] = {"flow_entries": entries, "frames": counters[L.C_FRAMES],
                                    "passed": passed, "readers": obj_results}
    return out


def report(data: dict) -> str:
    lines = [f"BPF_PROG_TEST_RUN repeat={data['repeat']}, median of {data['rounds']} rounds, "
             f"CPU {DATA_CPU}; reader on CPU {READER_CPU}; {data['flow_entries']} heavy-flow entries",
             f"{'path':<7}{'reader':<12}{'ns/packet':>10}{'vs idle':>9}{'reader loops/s':>16}"]
    for path, res in data["results"].items():
        idle = res["readers"]["idle"]["ns_per_packet"]
        for reader, r in res["readers"].items():
            lines.append(f"{path:<7}{reader:<12}{r['ns_per_packet']:>10.0f}{r['ns_per_packet'] - idle:>+9.0f}"
                         f"{r['reader_loops_per_s']:>16,}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/counter_cost.py", description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0 or (os.cpu_count() or 1) < 2:
        print("counter_cost: needs root and 2 CPUs", file=sys.stderr)
        return 2
    data = measure(args.repeat, args.rounds)
    print(json.dumps(data, indent=2) if args.json else report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
