"""Speed of one simulation point: 10 million packets through one configuration.

Owns: the number quoted in docs/tuning.md for "a 10M-packet workload sweeps
through one configuration": time to generate the workload, to decide every
frame with the reference model (C fast path, one core) and to compute every
metric, each as packets per second.
Rule: one process, one core, the default configuration; the workload is the
web-search mix at a rate high enough to give the asked packet count. Wall
time and CPU time are both reported: on a shared machine the CPU time is the
number that does not depend on the neighbours.
Must not know: how the model or the metrics work inside.

Run: python bench/sim_speed.py [--packets 10000000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from natra.simulations import metrics
from natra.simulations import workloads as W
from natra.simulations.sweep import decide_all

from natra.kernel import layout as L
from natra.kernel.params import DEFAULT_FLOW_TABLE, params_for, to_config

BENCH_RATE_BPS = 10 * 10**9  # 10 Gbit/s at 0.6 load: about 0.5 M frames per second of traffic
PACKETS_PER_SIM_SECOND = 0.6 * BENCH_RATE_BPS / 8 / W.MTU_FRAME_BYTES


def measure(packets: int, seed: int = 1) -> dict:
    duration_ns = int(packets / PACKETS_PER_SIM_SECOND * L.NS_PER_SEC)
    c0, t0 = time.process_time(), time.perf_counter()
    wl = W.flow_size_workload("websearch", seed=seed, rate_bps=BENCH_RATE_BPS, duration_ns=duration_ns)
    c1, t1 = time.process_time(), time.perf_counter()
    params = params_for(BENCH_RATE_BPS)
    verdicts, heavy, estimates = decide_all(wl, params)
    c2, t2 = time.process_time(), time.perf_counter()
    cfg = to_config(params)
    result = metrics.evaluate(wl.now_ns, wl.wire_len, wl.flow_id, verdicts, heavy, estimates,
                              rate_bps=params.rate_bps, tau_nbit=cfg.tau_nbit,
                              reserve_nbit=cfg.tau_nbit - cfg.heavy_line_nbit,
                              threshold=params.threshold_bytes, window_ns=params.window_ns,
                              width=params.width, depth=params.depth, flow_table=DEFAULT_FLOW_TABLE,
                              duration_ns=wl.duration_ns)
    c3, t3 = time.process_time(), time.perf_counter()
    n = len(wl)
    return {
        "packets": n,
        "flows": len(wl.flows),
        "generate_s": t1 - t0,
        "model_s": t2 - t1,
        "metrics_s": t3 - t2,
        "total_s": t3 - t0,
        "cpu_generate_s": c1 - c0,
        "cpu_model_s": c2 - c1,
        "cpu_metrics_s": c3 - c2,
        "model_packets_per_cpu_s": n / (c2 - c1),
        "point_packets_per_cpu_s": n / (c3 - c1),
        "model_packets_per_s": n / (t2 - t1),
        "point_packets_per_s": n / (t3 - t1),
        "end_to_end_packets_per_s": n / (t3 - t0),
        "precision": result["precision"],
        "recall": result["recall"],
        "conformance_violations": result["conformance_violations"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    r = measure(args.packets, args.seed)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"{r['packets']:,} packets, {r['flows']:,} flows")
        print(f"  generate {r['generate_s']:.2f} s, model {r['model_s']:.2f} s "
              f"({r['model_packets_per_s'] / 1e6:.2f} M packets/s), metrics {r['metrics_s']:.2f} s")
        print(f"  one configuration (model + metrics): {r['point_packets_per_s'] / 1e6:.2f} M packets/s; "
              f"with generation {r['total_s']:.1f} s in all")
        print(f"  CPU time: model {r['cpu_model_s']:.2f} s, metrics {r['cpu_metrics_s']:.2f} s "
              f"({r['point_packets_per_cpu_s'] / 1e6:.2f} M packets per CPU second)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
