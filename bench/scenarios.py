"""The six benchmark scenarios of issue 8, each returning plain JSON-able data.

Owns: what is measured and in which order: Pods made per scenario through the
real chain, repeats interleaved across limiters (so a slow moment of the
machine hits every limiter alike), raw figures per run, and the derived
per-run numbers (goodput / limit, bytes over R*t+B, Jain's index, latency
percentiles, ADD/DEL seconds, map bytes). Medians and spreads are left to
the report.
Rule: a scenario takes a Bench and Settings and returns data; it prints only
progress to stderr, and every Pod it makes is deleted before it returns (the
Bench removes them if it fails midway).
Must not know: Markdown, plots.

Variants compared:
  natra         ptp + natra, containerd's burst (Natra clamps it to B = 500 ms of rate)
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
from bench.harness import CONTAINERD_BURST_BITS, SERVER_READY_S, Bench, Pod
from natra.kernel.params import POLICE_BURST_FLOOR_BITS, default_burst_bits

DIRECTIONS = ("to_pod", "from_pod")  # into the Pod: remote -> Pod; out of it: iperf3 -R
IPERF_PORT = 5301
FAIR_PORT = 5401
SHORT_PORT = 7101
STEADY_FROM_S = 2.0  # s: B (500 ms of rate) is spent within the first second at veth speed
UDP_FLOOD_FACTOR = 5  # the UDP flood offers 5x the limit
UDP_DATAGRAM = "1400"  # bytes: fits the veth MTU without fragments
UNLIMITED_RATE_BPS = 10**15  # 1 Pbit/s: the largest rate Natra accepts, never reached
SHORT_SIZES = (1_000, 10_000, 100_000)  # bytes: request/response, and two transfers
SHORT_INTERVAL_S = 0.05  # between requests of one client under load
IDLE_INTERVAL_S = 0.02
WARMUP_S = 2.0  # the bulk flow fills the limit before the short transfers start
SETTLE_S = 1.0
# Each client's first request also pays for ARP and a cold process (27 ms seen
# idle); it is sent but not counted.
WARM_REQUESTS = 1  # after a burst of ADDs, before reading /proc/meminfo
KERNEL_MEM_FIELDS = ("SUnreclaim", "Percpu", "VmallocUsed", "KernelStack", "PageTables")


@dataclass(frozen=True)
class Settings:
    repeats: int = 5
    bulk_s: float = 10.0  # one bulk TCP flow (scenario 1) and fairness runs (3)
    rates_bps: tuple[int, ...] = (10_000_000, 100_000_000, 1_000_000_000)
    directions: tuple[str, ...] = DIRECTIONS
    latency_rate_bps: int = 100_000_000
    load_s: float = 12.0  # the saturating download of scenario 2
    idle_requests: int = 100  # per size, unloaded
    fairness_rate_bps: int = 100_000_000
    overhead_s: float = 10.0
    control_pods: int = 50
    bundle: bool = True  # include the node bundle in scenario 5 when it is built
    scale_pods: int = 100
    scale_rate_bps: int = 1_000_000_000
    datapath_cost_args: tuple[str, ...] = ()  # bench/datapath_cost.py defaults
    ctrd_rate_bps: int = 100_000_000  # the standard plugin with containerd's burst, shown once
    latency_variants: tuple[str, ...] = ("natra", "standard", "none")
    scale_variants: tuple[str, ...] = ("natra", "standard")
    containerd_burst: bool = True  # also show the standard plugin with containerd's burst as sent
    # 7. the rate and burst sweep (issue 14): every rate, bursts from one frame to 500 ms of rate
    sweep_rates_bps: tuple[int, ...] = (1_000, 64_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000)
    sweep_bursts: tuple[str, ...] = ("mtu", "50ms", "500ms")
    sweep_directions: tuple[str, ...] = DIRECTIONS
    sweep_s: float = 3.0  # one TCP flow per point and direction
    sweep_low_s: float = 6.0  # below 1 Mbit/s: one 1514-byte frame takes 12 ms..12 s of rate


SMOKE = Settings(
    repeats=1,
    bulk_s=2.0,
    rates_bps=(100_000_000,),
    directions=("to_pod",),
    load_s=3.5,
    idle_requests=10,
    overhead_s=1.5,
    control_pods=2,
    bundle=False,
    scale_pods=3,
    datapath_cost_args=("--repeat", "20000", "--flows", "1024"),
    containerd_burst=False,
    latency_variants=("natra", "standard"),
    scale_variants=("natra",),
    sweep_rates_bps=(1_000_000,),
    sweep_bursts=("mtu",),
    sweep_directions=("to_pod",),
    sweep_s=1.5,
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def natra_burst_bits(rate_bps: int) -> int:
    """The burst Natra really applies for containerd's request."""
    return default_burst_bits(rate_bps, CONTAINERD_BURST_BITS)


def make_pod(bench: Bench, variant: str, rate_bps: int | None) -> Pod:
    if variant == "natra":
        return bench.add_pod("natra", rate_bps)
    if variant == "standard":
        return bench.add_pod("bandwidth", rate_bps, burst_bits=natra_burst_bits(rate_bps))
    if variant == "standard-ctrd":
        return bench.add_pod("bandwidth", rate_bps)
    if variant == "none":
        return bench.add_pod("none", None)
    raise ValueError(f"unknown variant {variant!r}")


def applied_burst_bits(variant: str, rate_bps: int) -> int:
    return CONTAINERD_BURST_BITS if variant == "standard-ctrd" else natra_burst_bits(rate_bps)


# ---- iperf3 ---------------------------------------------------------------------------------


def intervals_of(report: dict) -> list[stats.Interval]:
    return [
        stats.Interval(iv["sum"]["start"], iv["sum"]["end"], int(iv["sum"]["bytes"]))
        for iv in report.get("intervals", [])
    ]


def bulk_run(bench: Bench, pod: Pod, direction: str, seconds: float, port: int = IPERF_PORT) -> dict:
    """One TCP bulk flow; receiver-side intervals (the Pod's server, or the client with -R)."""
    server = bench.iperf_server(pod, port)
    time.sleep(SERVER_READY_S)
    client = bench.iperf_client(pod, port, seconds, *(["-R"] if direction == "from_pod" else []))
    client_report = bench.iperf_json(client, seconds)
    server_report = bench.iperf_json(server, seconds)
    receiver = server_report if direction == "to_pod" else client_report
    end = client_report["end"]
    return {
        "goodput_bps": end["sum_received"]["bits_per_second"],
        "received_bytes": end["sum_received"]["bytes"],
        "seconds": end["sum_received"]["seconds"],
        "retransmits": end["sum_sent"].get("retransmits"),
        "intervals": intervals_of(receiver),
    }


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


# ---- 1. rate accuracy ---------------------------------------------------------------------


def rate_accuracy(bench: Bench, s: Settings) -> dict:
    variants = ("natra", "standard")
    pods = {(v, r): make_pod(bench, v, r) for r in s.rates_bps for v in variants}
    runs = []
    for rep in range(s.repeats):
        for rate in s.rates_bps:
            for direction in s.directions:
                for variant in variants:
                    log(f"rate accuracy: rep {rep + 1}/{s.repeats} {rate / 1e6:g}M {direction} {variant}")
                    pod = pods[(variant, rate)]
                    before = natra_counters(pod, direction)
                    run = bulk_run(bench, pod, direction, s.bulk_s)
                    run["natra_verdicts"] = counter_delta(before, natra_counters(pod, direction))
                    run["steady_share"] = steady_bps(run["intervals"]) / rate
                    burst = applied_burst_bits(variant, rate)
                    conformance(run, rate, burst)
                    runs.append(
                        {
                            "variant": variant,
                            "rate_bps": rate,
                            "direction": direction,
                            "rep": rep,
                            "burst_bits": burst,
                            "share": run["goodput_bps"] / rate,
                            **run,
                        }
                    )
    ctrd = _containerd_burst(bench, s) if s.containerd_burst else []
    for pod in pods.values():
        bench.delete_pod(pod)
    return {"bulk_s": s.bulk_s, "runs": runs, "containerd_burst": ctrd}


def _containerd_burst(bench: Bench, s: Settings) -> list[dict]:
    """The standard plugin as containerd really configures it (burst 2^32-1 bits), into the Pod."""
    rate = s.ctrd_rate_bps
    pod = make_pod(bench, "standard-ctrd", rate)
    runs = []
    try:
        for rep in range(s.repeats):
            log(f"rate accuracy: rep {rep + 1}/{s.repeats} standard plugin with containerd's burst")
            run = bulk_run(bench, pod, "to_pod", s.bulk_s)
            intervals = run["intervals"]
            run["bytes_over_natra_b"] = stats.bytes_over(intervals, rate, natra_burst_bits(rate), 1.0)
            conformance(run, rate, CONTAINERD_BURST_BITS)
            runs.append(
                {
                    "variant": "standard-ctrd",
                    "rate_bps": rate,
                    "rep": rep,
                    "share": run["goodput_bps"] / rate,
                    **run,
                }
            )
    finally:
        bench.delete_pod(pod)
    return runs


# ---- 2. small requests under load ------------------------------------------------------------


def _short_round(bench: Bench, pod: Pod, count: int, interval_s: float) -> dict[int, dict]:
    clients = {
        size: bench.traffic_client(pod, SHORT_PORT, size, count + WARM_REQUESTS, interval_s)
        for size in SHORT_SIZES
    }
    timeout = count * (interval_s + 5.5) + 30
    return {size: bench.traffic_json(proc, timeout) for size, proc in clients.items()}


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
    rate = s.latency_rate_bps
    variants = s.latency_variants
    pods = {v: make_pod(bench, v, rate) for v in variants}
    loaded_count = max(5, int((s.load_s - WARMUP_S - 1) / SHORT_INTERVAL_S))
    runs = []
    for rep in range(s.repeats):
        for variant in variants:
            pod = pods[variant]
            log(f"small requests: rep {rep + 1}/{s.repeats} {variant}")
            server = bench.traffic_server(pod, SHORT_PORT, s.load_s * 3 + 60)
            time.sleep(SERVER_READY_S)
            try:
                idle = _short_round(bench, pod, s.idle_requests, IDLE_INTERVAL_S)
                iperf_srv = bench.iperf_server(pod, IPERF_PORT)
                time.sleep(SERVER_READY_S)
                bulk = bench.iperf_client(pod, IPERF_PORT, s.load_s)
                time.sleep(WARMUP_S)
                before = natra_counters(pod)
                loaded = _short_round(bench, pod, loaded_count, SHORT_INTERVAL_S)
                bulk_report = bench.iperf_json(bulk, s.load_s)
                bench.iperf_json(iperf_srv, s.load_s)
                verdicts = counter_delta(before, natra_counters(pod))
            finally:
                bench.stop(server)
            end = bulk_report["end"]
            short_bytes = sum(size * len(loaded[size]["latencies_s"]) for size in SHORT_SIZES)
            runs.append(
                {
                    "variant": variant,
                    "rep": rep,
                    "bulk_goodput_bps": end["sum_received"]["bits_per_second"],
                    "bulk_retransmits": end["sum_sent"].get("retransmits"),
                    "short_bytes_loaded": short_bytes,
                    "natra_verdicts": verdicts,
                    "idle": {str(size): _latency_figures(idle[size]) for size in SHORT_SIZES},
                    "loaded": {str(size): _latency_figures(loaded[size]) for size in SHORT_SIZES},
                }
            )
    for pod in pods.values():
        bench.delete_pod(pod)
    return {
        "rate_bps": rate,
        "load_s": s.load_s,
        "interval_s": SHORT_INTERVAL_S,
        "sizes": list(SHORT_SIZES),
        "runs": runs,
    }


# ---- 3. fairness --------------------------------------------------------------------------------


def _stream_shares(server_report: dict, kind: str, rate: int) -> list[dict]:
    """Each stream's receiver-side rate as a share of the limit.

    A UDP server reports 0 bytes per stream; its one stream's bytes are in sum_received.
    """
    if kind == "udp":
        got = server_report["end"]["sum_received"]
        return [
            {
                "kind": kind,
                "bytes": int(got["bytes"]),
                "share": got["bytes"] * 8 / (got["seconds"] or 1.0) / rate,
            }
        ]
    flows = []
    for stream in server_report["end"]["streams"]:
        got = stream.get("receiver") or stream.get("udp") or {}
        secs = got.get("seconds") or 1.0
        flows.append(
            {"kind": kind, "bytes": int(got.get("bytes", 0)), "share": got.get("bytes", 0) * 8 / secs / rate}
        )
    return flows


def _aggregate_intervals(reports: list[dict]) -> list[stats.Interval]:
    """Receivers' intervals summed by index; each window spans the widest of theirs.

    With one report this is exact (one iperf3 server sums its streams on one
    clock); with two (the UDP flood has its own server) their clocks start a
    few ms apart.
    """
    series = [intervals_of(r) for r in reports]
    n = min(len(x) for x in series)
    return [
        stats.Interval(
            min(x[i].start_s for x in series),
            max(x[i].end_s for x in series),
            sum(x[i].payload_bytes for x in series),
        )
        for i in range(n)
    ]


def _fair_case(bench: Bench, pod: Pod, rate: int, seconds: float, udp_flood: bool) -> dict:
    """4 TCP streams from one iperf3 client (-P 4), or a UDP flood beside 3 TCP streams (-P 3)."""
    tcp_streams = 3 if udp_flood else 4
    tcp_srv = bench.iperf_server(pod, FAIR_PORT)
    udp_srv = bench.iperf_server(pod, FAIR_PORT + 1) if udp_flood else None
    time.sleep(SERVER_READY_S)
    tcp_cli = bench.iperf_client(pod, FAIR_PORT, seconds, "-P", str(tcp_streams))
    udp_cli = (
        bench.iperf_client(
            pod, FAIR_PORT + 1, seconds, "-u", "-b", str(rate * UDP_FLOOD_FACTOR), "-l", UDP_DATAGRAM
        )
        if udp_flood
        else None
    )
    tcp_client_report = bench.iperf_json(tcp_cli, seconds)
    reports = [bench.iperf_json(tcp_srv, seconds)]
    flows = _stream_shares(reports[0], "tcp", rate)
    if udp_flood:
        bench.iperf_json(udp_cli, seconds)
        reports.append(bench.iperf_json(udp_srv, seconds))
        flows = _stream_shares(reports[1], "udp", rate) + flows
    tcp_shares = [f["share"] for f in flows if f["kind"] == "tcp"]
    return {
        "flows": flows,
        "jain_tcp": stats.jain(tcp_shares),
        "total_share": sum(f["share"] for f in flows),
        "tcp_retransmits": tcp_client_report["end"]["sum_sent"].get("retransmits"),
        "intervals": _aggregate_intervals(reports),
    }


def fairness(bench: Bench, s: Settings) -> dict:
    rate = s.fairness_rate_bps
    variants = ("natra", "standard")
    pods = {v: make_pod(bench, v, rate) for v in variants}
    runs = []
    for rep in range(s.repeats):
        for case in ("4tcp", "udp+3tcp"):
            for variant in variants:
                log(f"fairness: rep {rep + 1}/{s.repeats} {case} {variant}")
                before = natra_counters(pods[variant])
                run = _fair_case(bench, pods[variant], rate, s.bulk_s, udp_flood=case == "udp+3tcp")
                run["natra_verdicts"] = counter_delta(before, natra_counters(pods[variant]))
                conformance(run, rate, applied_burst_bits(variant, rate))
                runs.append({"variant": variant, "case": case, "rep": rep, **run})
    for pod in pods.values():
        bench.delete_pod(pod)
    return {"rate_bps": rate, "seconds": s.bulk_s, "udp_offered_bps": rate * UDP_FLOOD_FACTOR, "runs": runs}


# ---- 4. overhead ---------------------------------------------------------------------------------


def overhead(bench: Bench, s: Settings) -> dict:
    pods = {
        "natra-unlimited": bench.add_pod("natra", UNLIMITED_RATE_BPS),
        "none": make_pod(bench, "none", None),
    }
    runs = []
    for rep in range(s.repeats):
        for direction in s.directions:
            for variant, pod in pods.items():
                log(f"overhead: rep {rep + 1}/{s.repeats} {direction} {variant}")
                run = bulk_run(bench, pod, direction, s.overhead_s)
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
        "ingress": sum(q.get("kind") == "ingress" for q in qdiscs),
        "filters": filters,
        "ifb": sum(str(x.get("ifname", "")).startswith("bwp") for x in links),
    }


def _standard_tbf_of(pod: Pod) -> dict:
    out = subprocess.run(
        ["tc", "-j", "qdisc", "show", "dev", pod.host_veth], capture_output=True, text=True
    ).stdout
    for q in json.loads(out or "[]"):
        if q.get("kind") == "tbf":
            return q.get("options", {})
    return {}


def control_plane(bench: Bench, s: Settings) -> dict:
    variants = [("natra", "python"), ("natra", "bundle"), ("bandwidth", "python"), ("none", "python")]
    if not (s.bundle and bench.bundle_available()):
        variants.remove(("natra", "bundle"))
    rate = s.latency_rate_bps
    results = {}
    for limiter, runner in variants:
        name = limiter if limiter != "natra" else f"natra-{runner}"
        plugin = {"none": "ptp"}.get(limiter, limiter)
        log(f"control plane: {s.control_pods} Pods with {name}")
        before_mem, before_tc = kernel_memory_kb(), tc_objects()
        pods, add_s, chain_add_s = [], [], []
        for _ in range(s.control_pods):
            pod = bench.add_pod(limiter, rate if limiter != "none" else None, natra_runner=runner)
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
            memory = natra_pin_memory([p.container_id for p in pods])
            entry["natra_memory"] = list(memory.values())
        if limiter == "bandwidth":
            entry["tbf_options"] = _standard_tbf_of(pods[0])
        del_s = []
        for pod in pods:
            del_s.append(bench.delete_pod(pod)[plugin])
        entry["del_s"] = del_s
        results[name] = entry
    floors = {}
    for limiter, runner in variants:
        if limiter == "natra":
            launcher = os.path.join(bench.chain(limiter, runner).bin_dir, "natra")
            floors[f"natra-{runner}"] = process_floor(launcher)
    floors["python3 -c pass"] = _timed_runs([sys.executable, "-c", "pass"], {}, b"")
    floors["bandwidth"] = process_floor(os.path.join(bench.chain("bandwidth").bin_dir, "bandwidth"))
    return {"rate_bps": rate, "variants": results, "process_floor_s": floors}


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


def process_floor(executable: str) -> list[float]:
    """Seconds of a plugin's CNI VERSION call: process start and imports, no kernel work."""
    return _timed_runs([executable], {"CNI_COMMAND": "VERSION"}, VERSION_STDIN)


# ---- 6. scale ------------------------------------------------------------------------------------


def scale(bench: Bench, s: Settings) -> dict:
    rate = s.scale_rate_bps
    results = {}
    for variant in s.scale_variants:
        plugin = "natra" if variant == "natra" else "bandwidth"
        before_mem = kernel_memory_kb()
        first = make_pod(bench, variant, rate)
        alone = []
        for rep in range(s.repeats):
            log(f"scale: {variant} one Pod alone, rep {rep + 1}/{s.repeats}")
            run = bulk_run(bench, first, "to_pod", s.bulk_s)
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
        for rep in range(s.repeats):
            log(f"scale: {variant} one Pod among {s.scale_pods}, rep {rep + 1}/{s.repeats}")
            run = bulk_run(bench, first, "to_pod", s.bulk_s)
            conformance(run, rate, applied_burst_bits(variant, rate))
            crowded.append(run)
        entry = {
            "add_s": add_s,
            "alone": alone,
            "crowded": crowded,
            "kernel_kb_delta": {k: after_mem[k] - before_mem.get(k, 0) for k in after_mem},
        }
        if variant == "natra":
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


def sweep_burst_bits(rate_bps: int, points: tuple[str, ...]) -> list[int]:
    """Asked bursts of a rate: "mtu" is one frame, "<n>ms" n ms of rate (never below one frame)."""
    out: list[int] = []
    for point in points:
        bits = MTU_FRAME_BITS if point == "mtu" else max(rate_bps * int(point.removesuffix("ms")) // 1000,
                                                        MTU_FRAME_BITS)
        if bits not in out:
            out.append(bits)
    return out


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
                size: int) -> tuple[list[stats.Interval], bool]:
    """One TCP flow through the Pod's limit: the receiver's bytes per interval, and
    whether the connection was made at all."""
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
    send = bench.spawn(sender, *traffic, "bulk-send", "--host", host, "--port", str(SWEEP_PORT),
                       "--size", str(size), "--seconds", f"{seconds + 1:g}")
    code, out, err = bench.finish(sink, seconds + 30)
    send_code, _, send_err = bench.finish(send, 30)
    if code != 0:
        raise RuntimeError(f"bulk sink exited {code}: {err.strip()[-300:]}; "
                           f"sender exited {send_code}: {send_err.strip()[-300:]}")
    got = json.loads(out)
    dt = got["interval_s"]
    return [stats.Interval(i * dt, (i + 1) * dt, n) for i, n in enumerate(got["counts"])], got["connected"]


def rate_burst_sweep(bench: Bench, s: Settings) -> dict:
    """Natra and the standard plugin at the same asked (R, B), one TCP flow each way.

    Natra applies max(B, floor) (clamped to 500 ms of rate above the floor),
    the standard plugin B as asked; each is checked against its own promise.
    """
    runs = []
    for rate in s.sweep_rates_bps:
        seconds = s.sweep_s if rate >= 1_000_000 else s.sweep_low_s
        for asked in sweep_burst_bits(rate, s.sweep_bursts):
            natra_b = default_burst_bits(rate, asked)
            applied = {"natra": natra_b, "standard": asked}
            promise = {"natra": max(asked, POLICE_BURST_FLOOR_BITS), "standard": asked}
            size = int(2 * (rate * seconds + natra_b) // 8) + 65536  # greedy for the whole run
            pods = {"natra": bench.add_pod("natra", rate, burst_bits=asked),
                    "standard": bench.add_pod("bandwidth", rate, burst_bits=asked)}
            try:
                for direction in s.sweep_directions:
                    for variant, pod in pods.items():
                        log(f"sweep: {rate:g} bit/s burst {asked} bits {direction} {variant}")
                        before = natra_counters(pod, direction)
                        intervals, connected = _sweep_flow(bench, pod, direction, seconds, size)
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
                            "connected": connected, "counts": [iv.payload_bytes for iv in intervals],
                        })
            finally:
                for pod in pods.values():
                    bench.delete_pod(pod)
    return {"floor_bits": POLICE_BURST_FLOOR_BITS, "interval_s": SWEEP_INTERVAL_S, "runs": runs}


SCENARIOS = {
    "rate": rate_accuracy,
    "latency": small_requests,
    "fairness": fairness,
    "overhead": overhead,
    "control": control_plane,
    "scale": scale,
    "sweep": rate_burst_sweep,
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
    return {
        "tcp_ecn": tcp_ecn,
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": cpu,
        "iperf3": re.sub(r"\s+", " ", iperf).strip(),
        "python": platform.python_version(),
    }
