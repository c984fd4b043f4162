"""Replay speed of the reference model: packets per second, per-packet and batch.

Owns: one repeatable measurement (fixed seed, synthetic traffic: 1000 flows,
Zipf-like sizes of flows, a 100 Mbit/s limit that is often exceeded) of
  * Model.process (parse + decide, per frame),
  * Model.process_key (decide only, per frame),
  * process_batch (hash + decide over arrays),
each with the C accelerator and with the pure-Python fallback.
Rule: a script, not a timed test; it prints what it measured and nothing else.
Must not know: pcap files, the kernel.

Run: python3 bench/replay_speed.py [--frames N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from natra.reference import accel
from natra.reference.engine import Batch, Model, process_batch
from natra.reference.key import parse_frame

from natra.kernel.params import params_for, to_config

FLOWS = 1000
RATE_BPS = 100_000_000
SEED = 1


def synthetic_frames(n: int, rng) -> tuple[list[bytes], np.ndarray]:
    """IPv4/TCP frames of FLOWS flows (heavy-tailed popularity) and their times (ns)."""
    weights = 1.0 / np.arange(1, FLOWS + 1)
    flow = rng.choice(FLOWS, size=n, p=weights / weights.sum())
    sizes = rng.choice([64, 576, 1500], size=n, p=[0.3, 0.2, 0.5])
    templates = []
    for i in range(FLOWS):
        ip = bytes([0x45, 0x02, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, i >> 8, i & 0xFF, 10, 1, 0, 1])
        templates.append(bytes(12) + b"\x08\x00" + ip + (40000 + i).to_bytes(2, "big") + b"\x00\x50")
    frames = [templates[f] + bytes(int(s) - 38) for f, s in zip(flow.tolist(), sizes.tolist(), strict=True)]
    gaps = rng.exponential(sizes * 8e9 / (1.5 * RATE_BPS)).astype(np.uint64)  # 1.5x the limit
    return frames, np.cumsum(gaps) + np.uint64(10**9)


def measure(label: str, n: int, fn) -> float:
    """Run fn once; print packets/s by wall time and by this process's CPU time
    (the CPU figure is the one-core speed even when other work shares the machine)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"{label:<40} {n:>9} frames  wall {wall:7.3f} s {n / wall:>11,.0f}/s"
          f"  cpu {cpu:7.3f} s {n / cpu:>11,.0f} packets/s")
    return n / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--per-packet-frames", type=int, default=200_000)
    parser.add_argument("--python-frames", type=int, default=50_000)
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    frames, times = synthetic_frames(args.frames, rng)
    configs = [to_config(params_for(RATE_BPS)), to_config(None)]
    keys_batch = Batch.from_frames(frames, times, 0)
    keys = [parse_frame(f).key for f in frames[: args.per_packet_frames]]
    print(f"accelerator: {'built' if accel.available() else 'missing (make reference/_natra_fast.so)'}")
    modes = [("C", True), ("Python", False)] if accel.available() else [("Python", False)]
    for name, fast in modes:
        n_pp = args.per_packet_frames if fast else args.python_frames
        n_b = args.frames if fast else args.python_frames

        m = Model(configs, accelerator=fast)
        tl = times.tolist()
        measure(f"per-packet process(frame) [{name}]", n_pp,
                lambda m=m, n=n_pp, tl=tl: [m.process(frames[i], tl[i], 0) for i in range(n)])
        m = Model(configs, accelerator=fast)
        measure(f"per-packet process_key(key) [{name}]", n_pp,
                lambda m=m, n=n_pp, tl=tl: [m.process_key(keys[i % len(keys)], len(frames[i]), tl[i], 0)
                                            for i in range(n)])
        part = Batch(keys_batch.now_ns[:n_b], keys_batch.wire_len[:n_b], keys_batch.direction[:n_b],
                     keys_batch.keys[:n_b], keys_batch.ect[:n_b])
        m = Model(configs, accelerator=fast)
        measure(f"batch process_batch(keys) [{name}]", n_b, lambda m=m, part=part: process_batch(m, part))
    measure("Batch.from_frames (parse)", min(args.frames, 200_000),
            lambda: Batch.from_frames(frames[:200_000], times[:200_000], 0))


if __name__ == "__main__":
    main()
