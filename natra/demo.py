"""`natra demo`: Natra beside the standard bandwidth plugin on this machine.

Owns: the README's main job. It builds three namespace "Pods" through the real
CNI chain (Debian's `ptp` + `host-local`, then `natra`, or the standard
`bandwidth` plugin, or nothing), all limited to the same rate, and a "remote
node" namespace to send from. Into each Pod it runs one bulk TCP download
(iperf3) and, at the same time, short request/response transfers; then it
prints a side-by-side table: bulk goodput as a share of the limit, short
transfer latency p50/p99 idle and under load, drops, heavy hitters found.
Rule: everything it makes is removed on the way out (Ctrl-C included).
Must not know: how Natra decides (it reads counters and tables like any tool).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

from natra import cnichain
from natra.localnet import LocalNet, netns_path, sh

DEMO_PREFIX = "ntdemo-"
POD_SUBNET = "10.98.{index}.0/24"
SHORT_PORT = 7001
IPERF_PORT = 5201
CONTAINERD_BURST_BITS = 2**32 - 1  # what containerd sends when the Pod says nothing


@dataclass
class PodRun:
    label: str
    limiter: str  # "natra" | "bandwidth" | "none"
    netns: str = ""
    ip: str = ""
    host_veth: str = ""
    attachment: cnichain.Attachment | None = None
    chain: cnichain.Chain | None = None
    results: dict = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def _bandwidth_args(rate_bps: int, burst_bits: int) -> dict:
    return {"IngressRate": rate_bps, "IngressBurst": burst_bits,
            "EgressRate": rate_bps, "EgressBurst": burst_bits}


def _start_pod(net: LocalNet, pod: PodRun, index: int, bin_dir: str, rate_bps: int, burst_bits: int) -> None:
    pod.netns = net.add_netns(pod.label)
    then = {"natra": [cnichain.natra_entry()], "bandwidth": [cnichain.bandwidth_entry()],
            "none": []}[pod.limiter]
    conflist = cnichain.ptp_conflist(f"{DEMO_PREFIX}{pod.label}", POD_SUBNET.format(index=index), then=then)
    pod.chain = cnichain.Chain(conflist, bin_dir)
    cid = f"{DEMO_PREFIX}{pod.label}-{uuid.uuid4().hex[:12]}"
    pod.attachment = cnichain.Attachment(
        container_id=cid, netns=netns_path(pod.netns),
        k8s_args={"K8S_POD_NAMESPACE": "demo", "K8S_POD_NAME": pod.label, "K8S_POD_UID": str(uuid.uuid4())},
        capability_args={"bandwidth": _bandwidth_args(rate_bps, burst_bits)} if pod.limiter != "none" else {},
    )
    result = pod.chain.add(pod.attachment)
    pod.ip = result["ips"][0]["address"].split("/")[0]
    pod.host_veth = next(i["name"] for i in result["interfaces"] if not i.get("sandbox"))


def _stop_pod(pod: PodRun) -> None:
    if pod.chain and pod.attachment and pod.attachment.cached_result is not None:
        try:
            pod.chain.delete(pod.attachment)
        except cnichain.ChainError as err:
            print(f"natra demo: DEL of {pod.label} failed: {err}", file=sys.stderr)


def _spawn(netns: str, *cmd: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", netns, *cmd],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _short_client(remote_ns: str, pod: PodRun, size: int, count: int, interval: float) -> subprocess.Popen:
    return _spawn(remote_ns, sys.executable, "-m", "natra.traffic", "client", "--host", pod.ip,
                  "--port", str(SHORT_PORT), "--size", str(size), "--count", str(count),
                  "--interval", str(interval))


def _collect(proc: subprocess.Popen, timeout: float) -> dict:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"traffic client failed: {err.strip()[-400:]}")
    return json.loads(out)


def _natra_stats(pod: PodRun) -> dict:
    """Drops and heavy hitters of a Natra Pod, read from its pinned maps."""
    import time as _time

    from natra import observe  # the same reader `natra status` uses

    raw = observe.read_pod(pod.attachment.container_id)
    if raw is None:
        return {"drops": None, "heavy": None}
    view = observe.build_view(raw, now=_time.monotonic_ns())
    to_pod = view.direction("to_pod")
    drops = sum(v["packets"] for name, v in to_pod.verdicts.items() if name.startswith("drop"))
    heavy = sum(1 for h in to_pod.heavy_hitters if h.passed_bytes + h.dropped_bytes > 0)
    return {"drops": drops, "heavy": heavy}


def _tbf_drops(pod: PodRun) -> int | None:
    """Drops of the standard plugin's TBF (on an ifb for ingress limits)."""
    out = sh("tc", "-s", "-j", "qdisc", "show", check=False).stdout
    try:
        qdiscs = json.loads(out or "[]")
    except ValueError:
        return None
    drops = [q.get("drops", 0) for q in qdiscs if q.get("kind") == "tbf" and q.get("dev") == pod.host_veth]
    return sum(drops) if drops else None


def _run_pod(remote_ns: str, pod: PodRun, rate_bps: int, duration: float, size: int) -> None:
    server = _spawn(pod.netns, sys.executable, "-m", "natra.traffic", "serve", "--port", str(SHORT_PORT),
                    "--deadline", str(duration * 3 + 30))
    iperf_srv = _spawn(pod.netns, "iperf3", "-s", "-1", "-p", str(IPERF_PORT))
    try:
        time.sleep(0.5)
        _collect(_short_client(remote_ns, pod, size, 3, 0.0), timeout=60)  # warm-up: ARP, caches
        idle = _collect(_short_client(remote_ns, pod, size, 30, 0.02), timeout=60)
        bulk = _spawn(remote_ns, "iperf3", "-c", pod.ip, "-p", str(IPERF_PORT), "-t", str(duration), "-J")
        time.sleep(min(2.0, duration / 4))  # let the bulk flow fill the limit first
        count = max(10, int((duration - 3) / 0.05))
        loaded = _collect(_short_client(remote_ns, pod, size, count, 0.05), timeout=duration * 4 + 30)
        bulk_out, _ = bulk.communicate(timeout=duration + 30)
        report = json.loads(bulk_out)
        goodput = report["end"]["sum_received"]["bits_per_second"]
        pod.results = {
            "goodput_bps": goodput,
            "goodput_share": goodput / rate_bps,
            "retransmits": report["end"].get("sum_sent", {}).get("retransmits"),
            "idle_p50_ms": percentile(idle["latencies_s"], 50) * 1e3,
            "idle_p99_ms": percentile(idle["latencies_s"], 99) * 1e3,
            "load_p50_ms": percentile(loaded["latencies_s"], 50) * 1e3,
            "load_p99_ms": percentile(loaded["latencies_s"], 99) * 1e3,
            "short_failures": loaded["failures"],
        }
        if pod.limiter == "natra":
            pod.results.update(_natra_stats(pod))
        elif pod.limiter == "bandwidth":
            pod.results.update({"drops": _tbf_drops(pod), "heavy": None})
        else:
            pod.results.update({"drops": None, "heavy": None})
    finally:
        for proc in (server, iperf_srv):
            proc.kill()
            proc.wait()


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "n/a"
    return format(value, spec)


def render_table(pods: list[PodRun], rate_bps: int, size: int, burst_bits: int) -> str:
    head = (f"Limit {rate_bps / 1e6:g} Mbit/s into each Pod; bulk iperf3 download plus "
            f"{size // 1000} KB request/response transfers from a remote-node namespace\n")
    cols = ["Pod", "limiter", "bulk Mbit/s", "of limit", "idle p50/p99 ms", "loaded p50/p99 ms", "drops",
            "heavy hitters"]
    rows = []
    for p in pods:
        r = p.results
        rows.append([p.label, p.limiter, _fmt(r.get("goodput_bps", 0) / 1e6, ".1f"),
                     _fmt(r.get("goodput_share"), ".2f") if p.limiter != "none" else "-",
                     f"{_fmt(r.get('idle_p50_ms'), '.1f')} / {_fmt(r.get('idle_p99_ms'), '.1f')}",
                     f"{_fmt(r.get('load_p50_ms'), '.1f')} / {_fmt(r.get('load_p99_ms'), '.1f')}",
                     _fmt(r.get("drops"), "d"), _fmt(r.get("heavy"), "d")])
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
    out = [head, line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
    by = {p.limiter: p.results for p in pods}
    if "natra" in by and "bandwidth" in by and by["natra"].get("load_p99_ms"):
        ratio = by["bandwidth"]["load_p99_ms"] / by["natra"]["load_p99_ms"]
        out.append(f"\nShort-transfer p99 under load: standard plugin / Natra = {ratio:.1f}x")
    if burst_bits == CONTAINERD_BURST_BITS:
        out.append(f"Both got containerd's burst of 2^32-1 bits. The standard plugin makes it a "
                   f"{burst_bits / 8 / 2**20:.0f} MiB TBF bucket ({burst_bits / rate_bps:.0f} s of line rate "
                   "before it limits); Natra clamps it to 500 ms of rate (docs/cni.md).")
    return "\n".join(out)


def run(rate_bps: int, duration: float, size: int, as_json: bool = False,
        burst_bits: int = CONTAINERD_BURST_BITS) -> int:
    if os.geteuid() != 0:
        print("natra demo: needs root (namespaces, veths, BPF)", file=sys.stderr)
        return 1
    pods = [PodRun("natra", "natra"), PodRun("standard", "bandwidth"), PodRun("unlimited", "none")]
    net = LocalNet(prefix=DEMO_PREFIX)
    bin_dir = cnichain.make_bin_dir()
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        remote = net.add_remote()
        for index, pod in enumerate(pods):
            _start_pod(net, pod, index, bin_dir, rate_bps, burst_bits)
        for pod in pods:
            print(f"natra demo: traffic into the {pod.label} Pod ({pod.limiter}) ...", file=sys.stderr)
            _run_pod(remote.netns, pod, rate_bps, duration, size)
        if as_json:
            results = {p.label: {"limiter": p.limiter, **p.results} for p in pods}
            print(json.dumps({"rate_bps": rate_bps, "burst_bits": burst_bits, "pods": results}, indent=2))
        else:
            print(render_table(pods, rate_bps, size, burst_bits))
        return 0
    except KeyboardInterrupt:
        print("natra demo: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        for pod in pods:
            _stop_pod(pod)
        net.close()
        cnichain.remove_bin_dir(bin_dir)
        signal.signal(signal.SIGTERM, previous)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--rate", default="100M",
                    help="limit per Pod, a Kubernetes quantity in bit/s (default 100M)")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of bulk traffic per Pod (default 8)")
    ap.add_argument("--size", type=int, default=10_000, help="bytes per short transfer (default 10000)")
    ap.add_argument("--burst", default=None,
                    help="burst both plugins get, a quantity in bits (default: containerd's 2^32-1)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")


def main(args: argparse.Namespace) -> int:
    from natra.cni.quantity import parse_bandwidth, parse_quantity

    burst = CONTAINERD_BURST_BITS if args.burst is None else int(parse_quantity(args.burst))
    return run(parse_bandwidth(args.rate), args.duration, args.size, args.json, burst)
