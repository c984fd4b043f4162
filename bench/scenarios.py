"""The benchmark scenarios (issues 8, 14 and 16), each returning plain JSON-able data.

Owns: what is measured and in which order: Pods made per scenario through the
real chain, repeats interleaved across limiters (so a slow moment of the
machine hits every limiter alike), raw figures per run, and the derived
per-run numbers (goodput / limit, bytes over R*t+B, retransmitted share of
the segments sent, Jain's index, latency percentiles, CPU seconds, ADD/DEL
seconds, map bytes). Medians and spreads are left to the report.
Rule: a scenario takes a Bench and Settings and returns data; it prints only
progress to stderr, and every Pod it makes is deleted before it returns (the
Bench removes them if it fails midway). TCP senders use `Settings.congestion`
(CUBIC, Linux's and most nodes' default) unless a run says otherwise.
Must not know: Markdown, plots.

Variants compared:
  natra-shape   ptp + natra with its default mode (shape: HTB queues behind the
                program's classes), containerd's burst (clamped to 500 ms of rate)
  natra-police  ptp + natra with `"mode": "police"` in its conflist entry (drops in the program)
  standard      ptp + the standard bandwidth plugin with the same B as Natra
                (so both make the same R*t+B promise)
  standard-ctrd ptp + the standard plugin with containerd's burst as sent (2^32-1 bits)
  none          ptp alone
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

from bench import stats
from bench.harness import CONTAINERD_BURST_BITS, SERVER_READY_S, Bench, Pod, cpu_busy_s
from natra.kernel.params import POLICE_BURST_FLOOR_BITS, default_burst_bits
from natra.node.agent import DEFAULT_LOADERS, loaders_for

DIRECTIONS = ("to_pod", "from_pod")  # into the Pod: remote -> Pod; out of it: iperf3 -R
IPERF_PORT = 5301
FAIR_PORT = 5401
SHORT_PORT = 7101
STEADY_FROM_S = 1.5  # s: B (500 ms of rate) is spent well within the first second
UDP_FLOOD_FACTOR = 5  # the UDP flood offers 5x the limit
UDP_DATAGRAM = "1400"  # bytes: fits the veth MTU without fragments
UNLIMITED_RATE_BPS = 10**15  # 1 Pbit/s: the largest rate Natra accepts, never reached
SHORT_SIZES = (1_000, 10_000, 100_000)  # bytes: request/response, and two transfers
SHORT_INTERVAL_S = 0.05  # between requests of one client, at least
IDLE_INTERVAL_S = 0.02
# The short requests of one size take at most this share of the limit, so at
# 10 Mbit/s the 100 KB client waits 0.4 s between requests (it would otherwise
# offer more than the limit by itself, and measure its own queue).
SHORT_SHARE = 0.2
WARMUP_S = 1.5  # the bulk flow fills the limit before the short transfers start
SETTLE_S = 1.0
# Each client's first request also pays for ARP and a cold process (27 ms seen
# idle); it is sent but not counted.
WARM_REQUESTS = 1  # after a burst of ADDs, before reading /proc/meminfo
KERNEL_MEM_FIELDS = ("SUnreclaim", "Percpu", "VmallocUsed", "KernelStack", "PageTables")
NATRA_VARIANTS = ("natra-shape", "natra-police")
MODE_OF = {"natra-shape": "shape", "natra-police": "police"}


@dataclass(frozen=True)
class Settings:
    repeats: int = 3
    repeats_1g: int = 2  # 1 Gbit/s runs cost the most CPU and vary the least
    congestion: str = "cubic"  # the senders' TCP congestion control
    bbr_repeats: int = 1  # the same bulk flows once more with BBR senders, reported apart
    variants: tuple[str, ...] = ("natra-shape", "natra-police", "standard")
    bulk_s: float = 5.0  # one bulk TCP flow (scenario 1) and fairness runs (3)
    rates_bps: tuple[int, ...] = (10_000_000, 100_000_000, 1_000_000_000)
    directions: tuple[str, ...] = DIRECTIONS
    udp_rates_bps: tuple[int, ...] = (10_000_000, 100_000_000, 1_000_000_000)
    udp_directions: tuple[str, ...] = ("to_pod",)
    latency_rates_bps: tuple[int, ...] = (10_000_000, 100_000_000, 1_000_000_000)
    load_s: float = 8.0  # the saturating download of scenario 2
    overhead_s: float = 5.0
    control_pods: int = 50
    # the node bundle in scenario 5 when it is built and not older than natra/ (make node-bundle)
    bundle: bool = True
    scale_pods: int = 100
    scale_rate_bps: int = 1_000_000_000
    scale_repeats: int = 2
    datapath_cost_args: tuple[str, ...] = ()  # bench/datapath_cost.py defaults
    ctrd_rate_bps: int = 100_000_000  # the standard plugin with containerd's burst, shown once
    ctrd_repeats: int = 2
    latency_variants: tuple[str, ...] = ("natra-shape", "natra-police", "standard")
    scale_variants: tuple[str, ...] = ("natra-shape", "standard")
    containerd_burst: bool = True  # also show the standard plugin with containerd's burst as sent
    # 7. the rate and burst sweep (issue 14), at the points where a queue matters: small
    # bursts at 10M..1G both ways, one frame at low rates into the Pod
    sweep_points: tuple[tuple[int, str, tuple[str, ...]], ...] = (
        (64_000, "mtu", ("to_pod",)), (1_000_000, "mtu", ("to_pod",)),
        (10_000_000, "mtu", DIRECTIONS), (10_000_000, "50ms", DIRECTIONS),
        (100_000_000, "mtu", DIRECTIONS), (100_000_000, "50ms", DIRECTIONS),
        (1_000_000_000, "mtu", DIRECTIONS), (1_000_000_000, "50ms", DIRECTIONS),
    )
    sweep_variants: tuple[str, ...] = ("natra-shape", "natra-police", "standard")
    sweep_s: float = 3.0  # one TCP flow per point and direction
    sweep_low_s: float = 6.0  # below 1 Mbit/s: one 1514-byte frame takes 12 ms..12 s of rate
    # 8. shaping's queue bound and class count (docs/tuning.md), 4 TCP flows into the Pod
    queue_points: tuple[tuple[int, str], ...] = (
        (10_000_000, "20ms"), (10_000_000, "100ms"), (10_000_000, "200ms"),
        (100_000_000, "2ms"), (100_000_000, "10ms"), (100_000_000, "20ms"), (100_000_000, "50ms"),
    )
    class_points: tuple[int, ...] = (1, 4)  # at 100M, beside the default 16
    queue_repeats: int = 2


SMOKE = Settings(
    repeats=1,
    repeats_1g=1,
    bbr_repeats=0,
    variants=("natra-shape", "natra-police"),
    bulk_s=2.0,
    rates_bps=(100_000_000,),
    directions=("to_pod",),
    udp_rates_bps=(100_000_000,),
    latency_rates_bps=(100_000_000,),
    load_s=3.5,
    overhead_s=1.5,
    control_pods=2,
    bundle=False,
    scale_pods=3,
    scale_repeats=1,
    datapath_cost_args=("--repeat", "20000", "--flows", "1024"),
    containerd_burst=False,
    latency_variants=("natra-shape",),
    scale_variants=("natra-shape",),
    sweep_points=((1_000_000, "mtu", ("to_pod",)),),
    sweep_variants=("natra-shape", "natra-police"),
    sweep_s=1.5,
    queue_points=((100_000_000, "20ms"),),
    class_points=(),
    queue_repeats=1,
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def natra_burst_bits(rate_bps: int) -> int:
    """The burst Natra really applies for containerd's request."""
    return default_burst_bits(rate_bps, CONTAINERD_BURST_BITS)


def make_pod(bench: Bench, variant: str, rate_bps: int | None, burst_bits: int | None = None,
             options: dict | None = None) -> Pod:
    """A Pod of `variant`; a Natra Pod is checked to run the mode the variant names."""
    if variant in NATRA_VARIANTS:
        opts = dict(options or {})
        if variant == "natra-police":
            opts["mode"] = "police"
        pod = bench.add_pod("natra", rate_bps, burst_bits=burst_bits or CONTAINERD_BURST_BITS, options=opts)
        shaped = bench.shaped_directions(pod)
        want = list(DIRECTIONS) if variant == "natra-shape" else []
        if sorted(shaped) != sorted(want):
            raise RuntimeError(f"{variant} Pod {pod.label} at {rate_bps} bit/s has the shaping tree on "
                               f"{shaped or 'no direction'}, expected {want or 'none'} (conflist {opts})")
        return pod
    if variant == "standard":
        return bench.add_pod("bandwidth", rate_bps, burst_bits=burst_bits or natra_burst_bits(rate_bps))
    if variant == "standard-ctrd":
        return bench.add_pod("bandwidth", rate_bps)
    if variant == "none":
        return bench.add_pod("none", None)
    raise ValueError(f"unknown variant {variant!r}")


def applied_burst_bits(variant: str, rate_bps: int) -> int:
    return CONTAINERD_BURST_BITS if variant == "standard-ctrd" else natra_burst_bits(rate_bps)


def repeats_for(s: Settings, rate_bps: int) -> int:
    return min(s.repeats, s.repeats_1g) if rate_bps >= 1_000_000_000 else s.repeats


# ---- iperf3 ---------------------------------------------------------------------------------


def intervals_of(report: dict) -> list[stats.Interval]:
    return [
        stats.Interval(iv["sum"]["start"], iv["sum"]["end"], int(iv["sum"]["bytes"]))
        for iv in report.get("intervals", [])
    ]


def sender_netns(bench: Bench, pod: Pod, direction: str) -> str:
    return bench.remote.netns if direction == "to_pod" else pod.netns


def _rtts_us(report: dict) -> list[float]:
    """The sending sockets' mean RTT (TCP_INFO, microseconds), per stream."""
    out = []
    for stream in report.get("end", {}).get("streams", []):
        sender = stream.get("sender") or {}
        if sender.get("mean_rtt"):
            out.append(float(sender["mean_rtt"]))
    return out


def tcp_run(bench: Bench, pod: Pod, direction: str, seconds: float, streams: int = 1,
            port: int = IPERF_PORT, alongside=None) -> dict:
    """TCP bulk flows (iperf3 -P streams); receiver-side intervals, the sender namespace's
    segments and retransmissions, the host's CPU seconds and the senders' RTT.
    `alongside()` starts other traffic right after the TCP client (its server already up)."""
    server = bench.iperf_server(pod, port)
    time.sleep(SERVER_READY_S)
    sender = sender_netns(bench, pod, direction)
    seg0, cpu0, t0 = bench.tcp_counters(sender), cpu_busy_s(), time.monotonic()
    client = bench.iperf_client(pod, port, seconds, "-P", str(streams),
                                *(["-R"] if direction == "from_pod" else []))
    if alongside is not None:
        alongside()
    client_report = bench.iperf_json(client, seconds)
    cpu1, t1 = cpu_busy_s(), time.monotonic()
    server_report = bench.iperf_json(server, seconds)
    seg1 = bench.tcp_counters(sender)
    receiver = server_report if direction == "to_pod" else client_report
    sending = client_report if direction == "to_pod" else server_report
    end = client_report["end"]
    out_segs = seg1["out_segs"] - seg0["out_segs"]
    retrans = seg1["retrans_segs"] - seg0["retrans_segs"]
    return {
        "streams": streams,
        "goodput_bps": end["sum_received"]["bits_per_second"],
        "received_bytes": end["sum_received"]["bytes"],
        "seconds": end["sum_received"]["seconds"],
        "retransmits": end["sum_sent"].get("retransmits"),
        "out_segs": out_segs,
        "retrans_segs": retrans,
        "retrans_pct": 100.0 * retrans / out_segs if out_segs else float("nan"),
        "cpu_s": cpu1 - cpu0,
        "wall_s": t1 - t0,
        "rtt_us": _rtts_us(sending),
        "stream_bytes": _stream_bytes(receiver),
        "intervals": intervals_of(receiver),
    }


def _stream_bytes(report: dict) -> list[int]:
    out = []
    for stream in report.get("end", {}).get("streams", []):
        got = stream.get("receiver") or {}
        out.append(int(got.get("bytes", 0)))
    return out


def steady_bps(intervals: list[stats.Interval]) -> float:
    """Receiver rate after STEADY_FROM_S, when the initial burst B has long been spent."""
    late = [iv for iv in intervals if iv.start_s >= STEADY_FROM_S]
    if not late:
        return float("nan")
    return sum(iv.payload_bytes for iv in late) * 8 / (late[-1].end_s - late[0].start_s)


def conformance(run: dict, rate_bps: int, burst_bits: int) -> None:
    """Bytes over R*t+B two ways: payload bytes (a floor under what any limiter
    counts, so > 0 is a broken promise) and wire bytes (every TCP segment's
    headers counted, as a qdisc counts a GSO packet)."""
    intervals = run.pop("intervals")
    run["counts"] = [iv.payload_bytes for iv in intervals]  # 0.1 s receiver intervals, for the notes
    run["steady_share"] = steady_bps(intervals) / rate_bps
    run["bytes_over"] = stats.bytes_over(intervals, rate_bps, burst_bits, wire_per_payload=1.0)
    run["bytes_over_wire"] = stats.bytes_over(intervals, rate_bps, burst_bits)


def natra_counters(pod: Pod, direction: str = "to_pod") -> dict[str, int] | None:
    """Verdict packet counters of one direction of a Natra Pod (None for other limiters)."""
    if pod.limiter != "natra":
        return None
    from natra.kernel import bpfsys, maps, pins
    from natra.kernel import layout as L

    fd = bpfsys.obj_get(pins.pin_dir(pod.container_id).map("natra_counters"))
    try:
        counters = maps.read_counters(fd, L.DIR_TO_POD if direction == "to_pod" else L.DIR_FROM_POD)
    finally:
        os.close(fd)
    return {name: counters[L.verdict_packets_index(v)] for v, name in L.VERDICT_NAMES.items()}


def counter_delta(before: dict | None, after: dict | None) -> dict | None:
    if before is None or after is None:
        return None
    return {k: after[k] - before[k] for k in after if after[k] - before[k]}


def shaper_stats(bench: Bench, pod: Pod, direction: str) -> dict | None:
    """The shaping tree of one direction so far: packets its leaf queues dropped, and bytes and
    packets its root tbf sent (after it segmented GSO packets above M). None: not shaped."""
    if pod.limiter != "natra" or pod.options.get("mode") == "police":
        return None
    from natra.kernel import shaping

    dev = pod.host_veth if direction == "to_pod" else shaping.ifb_name(pod.container_id)
    out = subprocess.run(["tc", "-j", "-s", "qdisc", "show", "dev", dev], capture_output=True, text=True)
    try:
        qdiscs = json.loads(out.stdout or "[]")
    except ValueError:
        return None
    root = next((q for q in qdiscs if q.get("kind") == "tbf" and q.get("root")), {})
    return {"drops": sum(int(q.get("drops", 0)) for q in qdiscs if q.get("kind") == "bfifo"),
            "tbf_bytes": int(root.get("bytes", 0)), "tbf_packets": int(root.get("packets", 0))}


def shaper_drops(bench: Bench, pod: Pod, direction: str) -> int | None:
    got = shaper_stats(bench, pod, direction)
    return None if got is None else got["drops"]


def measured(bench: Bench, pod: Pod, direction: str, fn):
    """fn() with the Natra verdicts and shaper counters of `direction` it caused added to its dict."""
    before, shaper0 = natra_counters(pod, direction), shaper_stats(bench, pod, direction)
    run = fn()
    run["natra_verdicts"] = counter_delta(before, natra_counters(pod, direction))
    shaper1 = shaper_stats(bench, pod, direction)
    delta = None if shaper0 is None or shaper1 is None else {k: shaper1[k] - shaper0[k] for k in shaper1}
    run["shaper_drops"] = None if delta is None else delta["drops"]
    run["shaper_sent"] = delta
    return run


# ---- 1. rate accuracy and retransmissions --------------------------------------------------------


def rate_accuracy(bench: Bench, s: Settings) -> dict:
    variants = s.variants
    pods = {(v, r): make_pod(bench, v, r) for r in s.rates_bps for v in variants}
    runs = []
    for congestion, repeats in ((s.congestion, s.repeats), ("bbr", s.bbr_repeats)):
        bench.use_congestion(congestion)
        for rep in range(repeats):
            for rate in s.rates_bps:
                if rep >= (repeats_for(s, rate) if congestion == s.congestion else repeats):
                    continue
                for direction in s.directions:
                    for variant in variants:
                        log(f"rate: {congestion} rep {rep + 1}/{repeats} {rate / 1e6:g}M {direction} "
                            f"{variant}")
                        pod = pods[(variant, rate)]
                        run = measured(bench, pod, direction,
                                       lambda pod=pod, direction=direction: tcp_run(bench, pod, direction,
                                                                                     s.bulk_s))
                        burst = applied_burst_bits(variant, rate)
                        conformance(run, rate, burst)
                        runs.append({"variant": variant, "rate_bps": rate, "direction": direction, "rep": rep,
                                     "congestion": congestion, "burst_bits": burst,
                                     "share": run["goodput_bps"] / rate, **run})
    bench.use_congestion(s.congestion)
    for pod in pods.values():
        bench.delete_pod(pod)
    ctrd = _containerd_burst(bench, s) if s.containerd_burst else []
    return {"bulk_s": s.bulk_s, "steady_from_s": STEADY_FROM_S, "congestion": s.congestion, "runs": runs,
            "containerd_burst": ctrd}


def _containerd_burst(bench: Bench, s: Settings) -> list[dict]:
    """The standard plugin as containerd really configures it (burst 2^32-1 bits), into the Pod."""
    rate = s.ctrd_rate_bps
    pod = make_pod(bench, "standard-ctrd", rate)
    runs = []
    try:
        for rep in range(s.ctrd_repeats):
            log(f"rate: rep {rep + 1}/{s.ctrd_repeats} standard plugin with containerd's burst")
            run = tcp_run(bench, pod, "to_pod", s.bulk_s)
            intervals = run["intervals"]
            run["bytes_over_natra_b"] = stats.bytes_over(intervals, rate, natra_burst_bits(rate), 1.0)
            conformance(run, rate, CONTAINERD_BURST_BITS)
            runs.append({"variant": "standard-ctrd", "rate_bps": rate, "rep": rep,
                         "share": run["goodput_bps"] / rate, **run})
    finally:
        bench.delete_pod(pod)
    return runs


# ---- 2. small requests under load ------------------------------------------------------------


def short_interval_s(size: int, rate_bps: int, floor_s: float) -> float:
    """Between two requests of one size: at least `floor_s`, and long enough that the
    requests of that size take at most SHORT_SHARE of the limit."""
    return max(floor_s, size * 8 / (rate_bps * SHORT_SHARE))


def _short_round(bench: Bench, pod: Pod, seconds: float, floor_s: float) -> dict[int, dict]:
    """One client per size; each sends as many requests as fit in `seconds` at the loaded
    pace, `floor_s` apart at least (so unloaded and loaded rounds have equal counts)."""
    clients = {}
    for size in SHORT_SIZES:
        interval = short_interval_s(size, pod.rate_bps, floor_s)
        count = max(5, int(seconds / short_interval_s(size, pod.rate_bps, SHORT_INTERVAL_S)))
        clients[size] = (bench.traffic_client(pod, SHORT_PORT, size, count + WARM_REQUESTS, interval),
                         count * (interval + 5.5) + 30)
    return {size: bench.traffic_json(proc, timeout) for size, (proc, timeout) in clients.items()}


def _latency_figures(result: dict) -> dict:
    lat = result["latencies_s"][WARM_REQUESTS:]
    return {
        "samples_ms": [round(x * 1e3, 3) for x in lat],
        "p50_ms": stats.percentile(lat, 50) * 1e3,
        "p99_ms": stats.percentile(lat, 99) * 1e3,
        "max_ms": max(lat) * 1e3 if lat else float("nan"),
        "count": len(lat),
        "failures": result["failures"],
    }


def small_requests(bench: Bench, s: Settings) -> dict:
    variants = s.latency_variants
    loaded_s = s.load_s - WARMUP_S - 1.0
    runs = []
    for rate in s.latency_rates_bps:
        pods = {v: make_pod(bench, v, rate) for v in variants}
        for rep in range(repeats_for(s, rate)):
            for variant in variants:
                pod = pods[variant]
                log(f"small requests: {rate / 1e6:g}M rep {rep + 1}/{repeats_for(s, rate)} {variant}")
                server = bench.traffic_server(pod, SHORT_PORT, s.load_s * 6 + 60)
                time.sleep(SERVER_READY_S)
                try:
                    idle = _short_round(bench, pod, loaded_s, IDLE_INTERVAL_S)
                    iperf_srv = bench.iperf_server(pod, IPERF_PORT)
                    time.sleep(SERVER_READY_S)
                    bulk = bench.iperf_client(pod, IPERF_PORT, s.load_s)
                    time.sleep(WARMUP_S)
                    before, drops0 = natra_counters(pod), shaper_drops(bench, pod, "to_pod")
                    loaded = _short_round(bench, pod, loaded_s, SHORT_INTERVAL_S)
                    bulk_report = bench.iperf_json(bulk, s.load_s)
                    bench.iperf_json(iperf_srv, s.load_s)
                    verdicts = counter_delta(before, natra_counters(pod))
                    drops1 = shaper_drops(bench, pod, "to_pod")
                finally:
                    bench.stop(server)
                end = bulk_report["end"]
                runs.append({
                    "variant": variant, "rate_bps": rate, "rep": rep,
                    "bulk_goodput_bps": end["sum_received"]["bits_per_second"],
                    "bulk_retransmits": end["sum_sent"].get("retransmits"),
                    "natra_verdicts": verdicts,
                    "shaper_drops": None if drops0 is None else drops1 - drops0,
                    "intervals_s": {str(size): short_interval_s(size, rate, SHORT_INTERVAL_S)
                                    for size in SHORT_SIZES},
                    "idle": {str(size): _latency_figures(idle[size]) for size in SHORT_SIZES},
                    "loaded": {str(size): _latency_figures(loaded[size]) for size in SHORT_SIZES},
                })
        for pod in pods.values():
            bench.delete_pod(pod)
    return {"load_s": s.load_s, "warmup_s": WARMUP_S, "short_share": SHORT_SHARE,
            "sizes": list(SHORT_SIZES), "congestion": s.congestion, "runs": runs}


# ---- 3. fairness --------------------------------------------------------------------------------


def _udp_received(report: dict, rate: int) -> dict:
    end = report["end"]
    got = end.get("sum_received") or end.get("sum") or {}
    return {"kind": "udp", "bytes": int(got.get("bytes", 0)),
            "share": got.get("bytes", 0) * 8 / (got.get("seconds") or 1.0) / rate}


def _aggregate_intervals(series: list[list[stats.Interval]]) -> list[stats.Interval]:
    """Receivers' intervals summed by index; each window spans the widest of theirs.

    With one report this is exact (one iperf3 receiver sums its streams on one
    clock); with two (the UDP flood has its own) their clocks start a few ms apart.
    """
    n = min(len(x) for x in series)
    return [
        stats.Interval(min(x[i].start_s for x in series), max(x[i].end_s for x in series),
                       sum(x[i].payload_bytes for x in series))
        for i in range(n)
    ]


def _fair_case(bench: Bench, pod: Pod, rate: int, direction: str, seconds: float, udp_flood: bool) -> dict:
    """4 TCP streams (-P 4), or a UDP flood beside 3 TCP streams (-P 3), one direction."""
    reverse = ["-R"] if direction == "from_pod" else []
    udp: dict = {}
    if udp_flood:
        udp["server"] = bench.iperf_server(pod, FAIR_PORT + 1)  # up before tcp_run's own pause

    def flood() -> None:
        udp["client"] = bench.iperf_client(pod, FAIR_PORT + 1, seconds, "-u", "-b",
                                           str(rate * UDP_FLOOD_FACTOR), "-l", UDP_DATAGRAM, *reverse)

    run = tcp_run(bench, pod, direction, seconds, streams=3 if udp_flood else 4, port=FAIR_PORT,
                  alongside=flood if udp_flood else None)
    rate_intervals = [run.pop("intervals")]
    flows = [{"kind": "tcp", "bytes": b, "share": b * 8 / (run["seconds"] or 1.0) / rate}
             for b in run["stream_bytes"]]
    if udp_flood:
        udp_client = bench.iperf_json(udp["client"], seconds)
        udp_server = bench.iperf_json(udp["server"], seconds)
        receiver = udp_server if direction == "to_pod" else udp_client
        udp_intervals = intervals_of(receiver)
        flows = [{**_udp_received(receiver, rate),
                  "steady_share": steady_bps(udp_intervals) / rate}, *flows]
        rate_intervals.append(udp_intervals)
    tcp_shares = [f["share"] for f in flows if f["kind"] == "tcp"]
    return {**run, "flows": flows, "jain_tcp": stats.jain(tcp_shares),
            "total_share": sum(f["share"] for f in flows), "intervals": _aggregate_intervals(rate_intervals)}


def fairness_cases(s: Settings) -> list[tuple[str, int, str]]:
    cases = [("4tcp", r, d) for r in s.rates_bps for d in s.directions]
    cases += [("udp+3tcp", r, d) for r in s.udp_rates_bps for d in s.udp_directions]
    return cases


def fairness(bench: Bench, s: Settings) -> dict:
    bench.use_congestion(s.congestion)
    rates = sorted({r for _, r, _ in fairness_cases(s)})
    pods = {(v, r): make_pod(bench, v, r) for r in rates for v in s.variants}
    runs = []
    for rep in range(s.repeats):
        for case, rate, direction in fairness_cases(s):
            if rep >= repeats_for(s, rate):
                continue
            for variant in s.variants:
                log(f"fairness: rep {rep + 1}/{repeats_for(s, rate)} {case} {rate / 1e6:g}M {direction} "
                    f"{variant}")
                pod = pods[(variant, rate)]
                run = measured(bench, pod, direction,
                               lambda pod=pod, rate=rate, direction=direction, case=case:
                               _fair_case(bench, pod, rate, direction, s.bulk_s, case == "udp+3tcp"))
                conformance(run, rate, applied_burst_bits(variant, rate))
                runs.append({"variant": variant, "case": case, "rate_bps": rate, "direction": direction,
                             "rep": rep, **run})
    for pod in pods.values():
        bench.delete_pod(pod)
    return {"seconds": s.bulk_s, "udp_factor": UDP_FLOOD_FACTOR, "congestion": s.congestion, "runs": runs}


# ---- 4. overhead ---------------------------------------------------------------------------------


def overhead(bench: Bench, s: Settings) -> dict:
    bench.use_congestion(s.congestion)
    pods = {
        "natra-shape-unlimited": make_pod(bench, "natra-shape", UNLIMITED_RATE_BPS),
        "natra-police-unlimited": make_pod(bench, "natra-police", UNLIMITED_RATE_BPS),
        "none": make_pod(bench, "none", None),
    }
    runs = []
    for rep in range(s.repeats):
        for direction in s.directions:
            for variant, pod in pods.items():
                log(f"overhead: rep {rep + 1}/{s.repeats} {direction} {variant}")
                run = tcp_run(bench, pod, direction, s.overhead_s)
                run.pop("intervals")
                runs.append({"variant": variant, "direction": direction, "rep": rep, **run})
    for pod in pods.values():
        bench.delete_pod(pod)
    log("overhead: bench/datapath_cost.py")
    return {"seconds": s.overhead_s, "runs": runs, "datapath_cost": datapath_cost(s.datapath_cost_args)}


def datapath_cost(args: tuple[str, ...]) -> dict:
    """The data-path cost benchmark's own JSON (bench/datapath_cost.py, run as it is)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datapath_cost.py")
    proc = subprocess.run(
        [sys.executable, script, "--json", *args], capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:]}
    return json.loads(proc.stdout)


# ---- 5. control plane --------------------------------------------------------------------------


def kernel_memory_kb() -> dict[str, int]:
    """Fields of /proc/meminfo that grow with kernel objects (kB)."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in KERNEL_MEM_FIELDS:
                out[name] = int(rest.split()[0])
    return out


def _bpftool(*args: str) -> list[dict]:
    proc = subprocess.run(["bpftool", "-j", "-f", *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return []
    return json.loads(proc.stdout or "[]")


MOVES_TIMEOUT_S = 30.0


def settle_attach_modes(container_ids: list[str], timeout_s: float = MOVES_TIMEOUT_S) -> dict:
    """Wait until no Pod is still to settle (the node agent swaps a Pod bound to the shared
    interim program to its own and moves an `auto` Pod to tcx once calls stop); how the
    Pods are attached then, how long that took, and how many the first look found on the
    shared program."""
    from natra.kernel import datapath

    started = time.monotonic()
    on_shared = None
    while True:
        modes = {}
        shared_now = 0
        for cid in container_ids:
            found = datapath.inspect(cid)
            mode = (found.mode if found is not None else "gone") or "?"
            if found is not None and found.meta.get("interim"):
                shared_now += 1
                mode += " (on the shared program)"
            elif found is not None and found.meta.get("tcx_pending"):
                mode += " (moving to tcx)"
            modes[mode] = modes.get(mode, 0) + 1
        on_shared = shared_now if on_shared is None else on_shared
        waited = time.monotonic() - started
        if not any("(" in m for m in modes) or waited >= timeout_s:
            return {"modes": modes, "settled_s": round(waited, 3), "on_shared_at_first": on_shared}
        time.sleep(0.05)


def natra_pin_memory(container_ids: list[str]) -> dict[str, dict]:
    """Per container: map and program memlock bytes (bpftool) and pinned objects."""
    from natra.kernel import pins

    dirs = {pins.pin_dir(cid).path: cid for cid in container_ids}
    out = {
        cid: {
            "map_bytes": 0,
            "maps": 0,
            "prog_bytes": 0,
            "progs": 0,
            "pins": len(pins.pin_dir(cid).entries()),
            "map_bytes_by_name": {},
        }
        for cid in container_ids
    }
    for kind, items in (("map", _bpftool("map", "show")), ("prog", _bpftool("prog", "show"))):
        for item in items:
            owners = {dirs[os.path.dirname(p)] for p in item.get("pinned", []) if os.path.dirname(p) in dirs}
            for cid in owners:
                out[cid][f"{kind}_bytes"] += int(item.get("bytes_memlock", 0))
                out[cid][f"{kind}s"] += 1
                if kind == "map":
                    out[cid]["map_bytes_by_name"][item.get("name", "?")] = int(item.get("bytes_memlock", 0))
    return out


def tc_objects() -> dict[str, int]:
    """Qdiscs, filters and ifb devices on the host (the standard plugin's objects)."""
    qdiscs = json.loads(
        subprocess.run(["tc", "-j", "qdisc", "show"], capture_output=True, text=True).stdout or "[]"
    )
    links = json.loads(
        subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout or "[]"
    )
    filters = 0
    for q in qdiscs:
        if q.get("kind") == "ingress":
            out = subprocess.run(
                ["tc", "-j", "filter", "show", "dev", q["dev"], "parent", "ffff:"],
                capture_output=True,
                text=True,
            ).stdout
            filters += len([f for f in json.loads(out or "[]") if "options" in f])
    return {
        "tbf": sum(q.get("kind") == "tbf" for q in qdiscs),
        "htb": sum(q.get("kind") == "htb" for q in qdiscs),
        "bfifo": sum(q.get("kind") == "bfifo" for q in qdiscs),
        "ingress": sum(q.get("kind") == "ingress" for q in qdiscs),
        "filters": filters,
        "ifb": sum(str(x.get("ifname", "")).startswith("bwp") for x in links),
        "natra_ifb": sum(str(x.get("ifname", "")).startswith("ntifb") for x in links),
    }


def _standard_tbf_of(pod: Pod) -> dict:
    out = subprocess.run(
        ["tc", "-j", "qdisc", "show", "dev", pod.host_veth], capture_output=True, text=True
    ).stdout
    for q in json.loads(out or "[]"):
        if q.get("kind") == "tbf":
            return q.get("options", {})
    return {}


CONTROL_RATE_BPS = 100_000_000
# Natra's conflist keys per control-plane variant ("shape" is the default entry).
CONTROL_OPTIONS = {"police": {"mode": "police"}, "shape-clsact": {"attachMode": "clsact"}}


def control_plane(bench: Bench, s: Settings) -> dict:
    # The node bundle alone and as the thin client of a node agent (the DaemonSet's way);
    # the checkout's python3 -m natra the same two ways; then the peers.
    variants = [("natra", "bundle-agent", "shape"), ("natra", "bundle-agent", "police"),
                ("natra", "bundle-agent", "shape-clsact"),
                ("natra", "bundle", "shape"), ("natra", "python-agent", "shape"),
                ("natra", "python", "shape"), ("natra", "python", "police"),
                ("bandwidth", "python", ""), ("none", "python", "")]
    if not (s.bundle and bench.bundle_available()):
        variants = [v for v in variants if not v[1].startswith("bundle")]
    rate = CONTROL_RATE_BPS
    results = {}
    for limiter, runner, mode in variants:
        name = limiter if limiter != "natra" else f"natra-{mode}-{runner}"
        options = CONTROL_OPTIONS.get(mode, {})
        plugin = {"none": "ptp"}.get(limiter, limiter)
        log(f"control plane: {s.control_pods} Pods with {name}")
        before_mem, before_tc = kernel_memory_kb(), tc_objects()
        pods, add_s, chain_add_s = [], [], []
        for _ in range(s.control_pods):
            pod = bench.add_pod(limiter, rate if limiter != "none" else None, natra_runner=runner,
                                options=options)
            pods.append(pod)
            add_s.append(pod.add_s[plugin])
            chain_add_s.append(sum(pod.add_s.values()))
        time.sleep(SETTLE_S)
        after_mem, after_tc = kernel_memory_kb(), tc_objects()
        entry = {
            "plugin": plugin,
            "pods": len(pods),
            "add_s": add_s,
            "chain_add_s": chain_add_s,
            "kernel_kb_delta": {k: after_mem[k] - before_mem.get(k, 0) for k in after_mem},
            "tc_delta": {k: after_tc[k] - before_tc[k] for k in after_tc},
        }
        if limiter == "natra":
            entry["attach"] = settle_attach_modes([p.container_id for p in pods])
            memory = natra_pin_memory([p.container_id for p in pods])
            entry["natra_memory"] = list(memory.values())
        if limiter == "bandwidth":
            entry["tbf_options"] = _standard_tbf_of(pods[0])
        del_s = []
        for pod in pods:
            del_s.append(bench.delete_pod(pod)[plugin])
        entry["del_s"] = del_s
        results[name] = entry
    paced_modes = [m for _lim, runner, m in variants if runner == "bundle-agent" and m in PACED_MODES]
    by_mode = _paced_adds(bench, s, "bundle-agent", paced_modes) if paced_modes else {}
    paced = {f"natra-{mode}-bundle-agent": v for mode, v in by_mode.items()}
    floors = {}
    for limiter, runner, mode in variants:
        if limiter == "natra" and f"natra-{runner}" not in floors:
            chain = bench.chain(limiter, runner, CONTROL_OPTIONS.get(mode, {}))
            floors[f"natra-{runner}"] = process_floor(os.path.join(chain.bin_dir, "natra"), chain.extra_env)
    floors["python3 -c pass"] = _timed_runs([sys.executable, "-c", "pass"], {}, b"")
    floors["bandwidth"] = process_floor(os.path.join(bench.chain("bandwidth").bin_dir, "bandwidth"))
    return {"rate_bps": rate, "variants": results, "paced": paced, "paced_gap_s": PACED_GAP_S,
            "agent_loaders": loaders_for(DEFAULT_LOADERS),
            "process_floor_s": floors}


# A node that starts Pods at a steady pace rather than in one burst: one ADD every
# PACED_GAP_S, longer than a verification (~90-190 ms), so the agent's pool keeps up.
PACED_GAP_S = 0.4
PACED_MODES = ("shape", "shape-clsact")


def _paced_adds(bench: Bench, s: Settings, runner: str, modes: list[str]) -> dict[str, dict]:
    """Each mode's Pods ADDed one every PACED_GAP_S, the modes taking turns (so a slow
    spell of the host falls on both alike), then each mode's moves settled and its DELs."""
    log(f"control plane: {s.control_pods} Pods per variant, one ADD every {PACED_GAP_S} s, "
        f"variants in turn: {', '.join(modes)}")
    pods: dict[str, list] = {mode: [] for mode in modes}
    add_s: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(s.control_pods):
        for mode in modes:
            time.sleep(PACED_GAP_S)
            pod = bench.add_pod("natra", CONTROL_RATE_BPS, natra_runner=runner,
                                options=CONTROL_OPTIONS.get(mode, {}))
            pods[mode].append(pod)
            add_s[mode].append(pod.add_s["natra"])
    out = {}
    for mode in modes:
        attached = settle_attach_modes([p.container_id for p in pods[mode]])
        del_s = [bench.delete_pod(pod)["natra"] for pod in pods[mode]]
        out[mode] = {"add_s": add_s[mode], "del_s": del_s, "attach": attached}
    return out


FLOOR_RUNS = 10
VERSION_STDIN = b'{"cniVersion": "1.0.0"}'


def _timed_runs(cmd: list[str], env: dict, stdin: bytes) -> list[float]:
    took = []
    for _ in range(FLOOR_RUNS):
        start = time.perf_counter()
        subprocess.run(cmd, input=stdin, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
                       capture_output=True, timeout=60)
        took.append(time.perf_counter() - start)
    return took


def process_floor(executable: str, env: dict | None = None) -> list[float]:
    """Seconds of a plugin's CNI VERSION call: process start and imports, no kernel work (with
    NATRA_AGENT_SOCKET in `env`, the thin client's start and one round trip to the agent)."""
    return _timed_runs([executable], {"NATRA_AGENT_SOCKET": "off", **(env or {}), "CNI_COMMAND": "VERSION"},
                       VERSION_STDIN)


# ---- 6. scale ------------------------------------------------------------------------------------


def scale(bench: Bench, s: Settings) -> dict:
    bench.use_congestion(s.congestion)
    rate = s.scale_rate_bps
    results = {}
    for variant in s.scale_variants:
        plugin = "natra" if variant.startswith("natra") else "bandwidth"
        before_mem = kernel_memory_kb()
        first = make_pod(bench, variant, rate)
        alone = []
        for rep in range(s.scale_repeats):
            log(f"scale: {variant} one Pod alone, rep {rep + 1}/{s.scale_repeats}")
            run = tcp_run(bench, first, "to_pod", s.bulk_s)
            conformance(run, rate, applied_burst_bits(variant, rate))
            alone.append(run)
        log(f"scale: adding {s.scale_pods - 1} more {variant} Pods")
        others, add_s = [], [first.add_s[plugin]]
        for _ in range(s.scale_pods - 1):
            pod = make_pod(bench, variant, rate)
            others.append(pod)
            add_s.append(pod.add_s[plugin])
        time.sleep(SETTLE_S)
        after_mem = kernel_memory_kb()
        crowded = []
        for rep in range(s.scale_repeats):
            log(f"scale: {variant} one Pod among {s.scale_pods}, rep {rep + 1}/{s.scale_repeats}")
            run = tcp_run(bench, first, "to_pod", s.bulk_s)
            conformance(run, rate, applied_burst_bits(variant, rate))
            crowded.append(run)
        entry = {
            "add_s": add_s,
            "alone": alone,
            "crowded": crowded,
            "kernel_kb_delta": {k: after_mem[k] - before_mem.get(k, 0) for k in after_mem},
        }
        if variant.startswith("natra"):
            memory = natra_pin_memory([first.container_id] + [p.container_id for p in others])
            entry["map_bytes_total"] = sum(m["map_bytes"] for m in memory.values())
            entry["prog_bytes_total"] = sum(m["prog_bytes"] for m in memory.values())
            entry["pins_total"] = sum(m["pins"] for m in memory.values())
        log(f"scale: deleting {s.scale_pods} {variant} Pods")
        del_s = [bench.delete_pod(p)[plugin] for p in [first, *others]]
        entry["del_s"] = del_s
        results[variant] = entry
    return {"rate_bps": rate, "pods": s.scale_pods, "variants": results}


# ---- 7. rate and burst sweep ---------------------------------------------------------------------

SWEEP_PORT = 5501
SWEEP_INTERVAL_S = 0.1
MTU_FRAME_BITS = stats.TCP_FRAME_BYTES * 8  # one full-size frame: the smallest burst swept
STEADY_MIN_S = 1.0  # the rate after the burst is reported only over at least this long
POD_MTU = 1500  # ptp's veth


def sweep_burst_bits(rate_bps: int, points: tuple[str, ...]) -> list[int]:
    """Asked bursts of a rate: "mtu" is one frame, "<n>ms" n ms of rate (never below one frame)."""
    out: list[int] = []
    for point in points:
        bits = MTU_FRAME_BITS if point == "mtu" else max(rate_bps * int(point.removesuffix("ms")) // 1000,
                                                        MTU_FRAME_BITS)
        if bits not in out:
            out.append(bits)
    return out


def natra_applied_bits(variant: str, rate_bps: int, asked_bits: int) -> tuple[int, int]:
    """(bucket Natra applies, the R*t+B promise's B) for an asked burst, in `variant`'s mode.

    Policing raises a small burst to its floor; shaping keeps it, but its tbf
    passes no packet larger than M (1 ms of rate, >= 2 frames), so B >= M.
    """
    from natra.kernel import params as P
    from natra.kernel import shaping

    if variant == "natra-police":
        applied = default_burst_bits(rate_bps, asked_bits)
        return applied, max(asked_bits, POLICE_BURST_FLOOR_BITS)
    tree = shaping.plan(P.params_for(rate_bps, asked_bits, mode=P.MODE_SHAPE), POD_MTU)
    return tree.burst_bytes * 8, tree.burst_bytes * 8


def after_burst_share(intervals: list[stats.Interval], rate_bps: int, burst_bits: int) -> float:
    """Goodput / limit after the receiver got the burst's worth of wire bytes (NaN if too late)."""
    wire = 0.0
    for k, iv in enumerate(intervals):
        wire += iv.payload_bytes * stats.WIRE_PER_PAYLOAD
        if wire >= burst_bits / 8:
            rest = intervals[k + 1:]
            if not rest or rest[-1].end_s - rest[0].start_s < STEADY_MIN_S:
                return float("nan")
            return sum(iv.payload_bytes for iv in rest) * 8 / (rest[-1].end_s - rest[0].start_s) / rate_bps
    return float("nan")


def _sweep_flow(bench: Bench, pod: Pod, direction: str, seconds: float,
                size: int) -> tuple[list[stats.Interval], bool, dict]:
    """One TCP flow through the Pod's limit: the receiver's bytes per interval, whether the
    connection was made at all, and the sender namespace's segments and retransmissions."""
    if direction == "to_pod":
        receiver, sender, host = pod.netns, bench.remote.netns, pod.ip
    else:
        receiver, sender, host = bench.remote.netns, pod.netns, bench.remote.ip
    traffic = (sys.executable, "-m", "natra.lab.traffic")
    sink = bench.spawn(receiver, *traffic, "bulk-sink", "--port", str(SWEEP_PORT),
                       "--seconds", f"{seconds:g}", "--interval", f"{SWEEP_INTERVAL_S:g}")
    if sink.stdout.readline().strip() != "ready":
        code, _, err = bench.finish(sink, 5)
        raise RuntimeError(f"bulk sink exited {code}: {err.strip()[-300:]}")
    seg0 = bench.tcp_counters(sender)
    send = bench.spawn(sender, *traffic, "bulk-send", "--host", host, "--port", str(SWEEP_PORT),
                       "--size", str(size), "--seconds", f"{seconds + 1:g}")
    code, out, err = bench.finish(sink, seconds + 30)
    send_code, _, send_err = bench.finish(send, 30)
    seg1 = bench.tcp_counters(sender)
    if code != 0:
        raise RuntimeError(f"bulk sink exited {code}: {err.strip()[-300:]}; "
                           f"sender exited {send_code}: {send_err.strip()[-300:]}")
    got = json.loads(out)
    dt = got["interval_s"]
    segs = {k: seg1[k] - seg0[k] for k in seg1}
    return ([stats.Interval(i * dt, (i + 1) * dt, n) for i, n in enumerate(got["counts"])], got["connected"],
            segs)


def rate_burst_sweep(bench: Bench, s: Settings) -> dict:
    """Natra (both modes) and the standard plugin at the same asked (R, B), one TCP flow each way.

    Each is checked against its own promise: policing R*t + max(B, floor),
    shaping R*t + max(B, M), the standard plugin R*t + B.
    """
    bench.use_congestion(s.congestion)
    runs = []
    for rate, point, directions in s.sweep_points:
        seconds = s.sweep_s if rate >= 1_000_000 else s.sweep_low_s
        asked = sweep_burst_bits(rate, (point,))[0]
        applied, promise = {"standard": asked}, {"standard": asked}
        for v in s.sweep_variants:
            if v in NATRA_VARIANTS:
                applied[v], promise[v] = natra_applied_bits(v, rate, asked)
        size = int(2 * (rate * seconds + max(applied.values())) // 8) + 65536  # greedy for the whole run
        pods = {}
        try:
            for v in s.sweep_variants:
                pods[v] = make_pod(bench, v, rate, burst_bits=asked)
            for direction in directions:
                for variant, pod in pods.items():
                    log(f"sweep: {rate:g} bit/s burst {asked} bits {direction} {variant}")
                    before = natra_counters(pod, direction)
                    intervals, connected, segs = _sweep_flow(bench, pod, direction, seconds, size)
                    got = sum(iv.payload_bytes for iv in intervals)
                    span = intervals[-1].end_s
                    runs.append({
                        "variant": variant, "rate_bps": rate, "direction": direction,
                        "asked_burst_bits": asked, "burst_bits": applied[variant],
                        "promise_bits": promise[variant], "seconds": span, "received_bytes": got,
                        "share": got * 8 / (rate * span),
                        "steady_share": after_burst_share(intervals, rate, applied[variant]),
                        "bytes_over": stats.bytes_over(intervals, rate, promise[variant], 1.0),
                        "bytes_over_wire": stats.bytes_over(intervals, rate, promise[variant]),
                        "natra_verdicts": counter_delta(before, natra_counters(pod, direction)),
                        "out_segs": segs["out_segs"], "retrans_segs": segs["retrans_segs"],
                        "retrans_pct": (100.0 * segs["retrans_segs"] / segs["out_segs"]
                                        if segs["out_segs"] else float("nan")),
                        "connected": connected, "counts": [iv.payload_bytes for iv in intervals],
                    })
        finally:
            for pod in pods.values():
                bench.delete_pod(pod)
    return {"floor_bits": POLICE_BURST_FLOOR_BITS, "interval_s": SWEEP_INTERVAL_S, "congestion": s.congestion,
            "runs": runs}


# ---- 8. shaping's queue bound and class count ----------------------------------------------------


def planned_tree(rate_bps: int, **tuning):
    """The shaping tree Natra plans for containerd's burst at this rate and tuning."""
    from natra.kernel import params as P
    from natra.kernel import shaping

    return shaping.plan(P.params_for(rate_bps, CONTAINERD_BURST_BITS, mode=P.MODE_SHAPE, **tuning), POD_MTU)


def _ns(duration: str) -> int:
    from natra.cni.tuning import read_duration

    return read_duration(duration, "queue")


def shaping_knobs(bench: Bench, s: Settings) -> dict:
    """4 TCP flows into a shaped Pod per queue bound (10M, 100M), and per class count at
    100M (4 TCP flows, and a UDP flood beside 3): retransmissions, the senders' RTT, Jain."""
    bench.use_congestion(s.congestion)
    points = [("queue", rate, {"queue": q}, "4tcp") for rate, q in s.queue_points]
    class_rate = 100_000_000
    points += [("classes", class_rate, {"classes": n}, case) for n in (*s.class_points, 16) if s.class_points
               for case in ("4tcp", "udp+3tcp")]
    runs = []
    pods: dict = {}
    try:
        for _, rate, options, _ in points:
            key = (rate, tuple(sorted(options.items())))
            if key not in pods:
                pods[key] = make_pod(bench, "natra-shape", rate, options=options)
        for rep in range(s.queue_repeats):
            for knob, rate, options, case in points:
                pod = pods[(rate, tuple(sorted(options.items())))]
                log(f"shaping knobs: rep {rep + 1}/{s.queue_repeats} {rate / 1e6:g}M {options} {case}")
                run = measured(bench, pod, "to_pod",
                               lambda pod=pod, rate=rate, case=case:
                               _fair_case(bench, pod, rate, "to_pod", s.bulk_s, case == "udp+3tcp"))
                conformance(run, rate, applied_burst_bits("natra-shape", rate))
                tuning = {"queue_ns": _ns(options["queue"])} if "queue" in options else dict(options)
                tree = planned_tree(rate, **tuning)
                runs.append({"knob": knob, "rate_bps": rate, "options": options, "case": case, "rep": rep,
                             "queue_bytes": tree.queue_bytes,
                             "queue_ms": tree.queue_bytes * 8 / rate * 1e3,
                             "classes": len(tree.classes) - 2, **run})
    finally:
        for pod in pods.values():
            bench.delete_pod(pod)
    return {"seconds": s.bulk_s, "congestion": s.congestion, "runs": runs}


SCENARIOS = {
    "rate": rate_accuracy,
    "latency": small_requests,
    "fairness": fairness,
    "overhead": overhead,
    "control": control_plane,
    "scale": scale,
    "sweep": rate_burst_sweep,
    "knobs": shaping_knobs,
}


def load_average() -> float:
    """The 1-minute load average: other work on the machine skews every figure."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def machine() -> dict:
    import platform

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    iperf = subprocess.run(["iperf3", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    try:
        with open("/proc/sys/net/ipv4/tcp_ecn") as f:
            tcp_ecn: int | None = int(f.read())
    except OSError:
        tcp_ecn = None
    with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
        congestion = f.read().strip()
    return {
        "tcp_ecn": tcp_ecn,
        "tcp_congestion_control": congestion,
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": cpu,
        "iperf3": re.sub(r"\s+", " ", iperf).strip(),
        "python": platform.python_version(),
    }
