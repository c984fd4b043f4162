"""`natra demo`: Natra beside the standard bandwidth plugin on this machine.

Owns: the README's main job. It builds three "Pods" through the real CNI chain
(Debian's `ptp` + `host-local`, then `natra`, or the standard `bandwidth`
plugin, or no limiter), the limited two at the same rate, and a "remote node"
namespace to send from. Into each Pod it runs one bulk TCP download (iperf3)
and, at the same time, short request/response transfers; then it prints a
side-by-side table: bulk goodput as a share of the limit, short transfer
latency p50/p99 idle and under load, drops, heavy hitters found.
Two runtimes make the Pods: `netns` (default) runs the chain itself on
namespaces it makes (natra.lab.cnichain); `containerd` runs a private containerd
(natra.lab.cri.runtime) whose CRI makes real Pod sandboxes from the standard
annotations, the standard-plugin Pod through a second runtime handler
(RuntimeClass) with its own network.
Rule: everything it makes is removed on the way out, Ctrl-C and SIGTERM
included; a second signal during clean-up does not cut it short. Concurrent
runs take different slots (a lock file each), so names, subnets and
container IDs never collide: netns `ntdemo-<slot>-*`, remote node
10.97.<slot>.0/24, Pods 10.98.<4*slot+i>.0/24.
Must not know: how Natra decides (it reads counters like any tool).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

DEMO_PREFIX = "ntdemo-"
RUNTIME_NETNS, RUNTIME_CONTAINERD = "netns", "containerd"
RUNTIMES = (RUNTIME_NETNS, RUNTIME_CONTAINERD)
LIMITER_NATRA, LIMITER_BANDWIDTH, LIMITER_NONE = "natra", "bandwidth", "none"
MODE_SHAPE, MODE_POLICE = "shape", "police"
# (label, limiter, Natra's mode): Natra shaping (its default), Natra policing, the
# standard plugin, and nothing.
PODS = (("natra", LIMITER_NATRA, MODE_SHAPE), ("natra-police", LIMITER_NATRA, MODE_POLICE),
        ("standard", LIMITER_BANDWIDTH, None), ("unlimited", LIMITER_NONE, None))
ANNOTATION_MODE = "natra.io/mode"
STANDARD_HANDLER = "standard"  # the containerd runtime handler whose network ends in `bandwidth`
ANNOTATION_INGRESS = "kubernetes.io/ingress-bandwidth"
ANNOTATION_EGRESS = "kubernetes.io/egress-bandwidth"

SLOT_DIR = "/run/natra-demo"
BLOCKS_PER_SLOT = 5  # one /24 per Pod of PODS, and one for the containerd runtime's networks
MAX_SLOTS = 48  # BLOCKS_PER_SLOT Pod subnets a slot within 10.98.0.0/16
REMOTE_SUBNET = "10.97.{slot}"  # the remote node's /24: .1 host side, .2 remote
POD_SUBNET = "10.98.{block}.0/24"
CRI_BLOCK = 4  # the containerd runtime's networks share the slot's fifth /24
SHORT_PORT = 7001
IPERF_PORT = 5201
CONTAINERD_BURST_BITS = 2**32 - 1  # what containerd sends when the Pod says nothing
NATRA_BURST_S = 0.5  # Natra's clamp of a runtime's burst, seconds of rate (docs/cni.md)

WARMUP_REQUESTS = 3
IDLE_REQUESTS, IDLE_INTERVAL_S = 30, 0.02
LOADED_INTERVAL_S = 0.05
MIN_LOADED_REQUESTS = 10
FILL_S_MAX = 2.0  # the bulk flow fills the limit before loaded requests start
SERVER_START_S = 0.5
TRAFFIC_TIMEOUT_S = 60


@dataclass
class PodRun:
    label: str
    limiter: str  # LIMITER_*
    mode: str | None = None  # Natra's mode (MODE_SHAPE / MODE_POLICE); None for the others
    netns_path: str = ""
    ip: str = ""
    host_veth: str = ""
    container_id: str = ""
    results: dict = field(default_factory=dict)


# ---- decisions -------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def slot_prefix(slot: int) -> str:
    return f"{DEMO_PREFIX}{slot}-"


def pod_subnet(slot: int, index: int) -> str:
    return POD_SUBNET.format(block=BLOCKS_PER_SLOT * slot + index)


def bandwidth_args(rate_bps: int, burst_bits: int) -> dict:
    """The `bandwidth` capability as containerd fills it for a Pod with both annotations."""
    return {"IngressRate": rate_bps, "IngressBurst": burst_bits,
            "EgressRate": rate_bps, "EgressBurst": burst_bits}


def pod_annotations(limiter: str, rate: str, mode: str | None = None) -> dict[str, str]:
    """A limited Pod says its rate both ways (and a Natra Pod its mode); the unlimited one says nothing."""
    if limiter == LIMITER_NONE:
        return {}
    return {ANNOTATION_INGRESS: rate, ANNOTATION_EGRESS: rate, **({ANNOTATION_MODE: mode} if mode else {})}


def limiter_text(pod: PodRun) -> str:
    return f"{pod.limiter} ({pod.mode})" if pod.mode else pod.limiter


def host_veth_of(cri_result: dict | None) -> str:
    """The host-side interface in containerd's verbose cniResult (the one outside the sandbox)."""
    interfaces = (cri_result or {}).get("Interfaces") or {}
    return next((name for name, i in interfaces.items() if not (i or {}).get("Sandbox") and name != "lo"), "")


def pod_results(rate_bps: int, bulk: dict, idle: dict, loaded: dict) -> dict:
    """One Pod's row from iperf3's JSON report and the two request/response runs."""
    goodput = bulk["end"]["sum_received"]["bits_per_second"]
    ms = 1e3
    return {
        "goodput_bps": goodput,
        "goodput_share": goodput / rate_bps,
        "retransmits": bulk["end"].get("sum_sent", {}).get("retransmits"),
        "idle_p50_ms": percentile(idle["latencies_s"], 50) * ms,
        "idle_p99_ms": percentile(idle["latencies_s"], 99) * ms,
        "load_p50_ms": percentile(loaded["latencies_s"], 50) * ms,
        "load_p99_ms": percentile(loaded["latencies_s"], 99) * ms,
        "short_failures": loaded["failures"],
    }


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "n/a"
    return format(value, spec)


def render_table(pods: list[PodRun], rate_bps: int, size: int, burst_bits: int) -> str:
    head = (f"Limit {rate_bps / 1e6:g} Mbit/s into each Pod; bulk iperf3 download plus "
            f"{size / 1000:g} KB request/response transfers from a remote-node namespace\n")
    cols = ["Pod", "limiter", "bulk Mbit/s", "of limit", "retransmits", "idle p50/p99 ms",
            "loaded p50/p99 ms", "drops", "heavy hitters"]
    rows = []
    for p in pods:
        r = p.results
        rows.append([p.label, limiter_text(p), _fmt(r.get("goodput_bps", 0) / 1e6, ".1f"),
                     _fmt(r.get("goodput_share"), ".2f") if p.limiter != LIMITER_NONE else "-",
                     _fmt(r.get("retransmits"), "d"),
                     f"{_fmt(r.get('idle_p50_ms'), '.1f')} / {_fmt(r.get('idle_p99_ms'), '.1f')}",
                     f"{_fmt(r.get('load_p50_ms'), '.1f')} / {_fmt(r.get('load_p99_ms'), '.1f')}",
                     _fmt(r.get("drops"), "d"), _fmt(r.get("heavy"), "d")])
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows, strict=True)]

    def line(cells: list) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [head, line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
    standard = next((p.results for p in pods if p.limiter == LIMITER_BANDWIDTH), {})
    ratios = [f"Short-transfer p99 under load: standard plugin / Natra{f' ({p.mode})' if p.mode else ''} = "
              f"{standard['load_p99_ms'] / p.results['load_p99_ms']:.1f}x"
              for p in pods if p.limiter == LIMITER_NATRA and p.results.get("load_p99_ms")
              and standard.get("load_p99_ms")]
    if ratios:
        out.append("\n" + "\n".join(ratios))
    if burst_bits == CONTAINERD_BURST_BITS:
        out.append(f"Both got containerd's burst of 2^32-1 bits. The standard plugin makes it a "
                   f"{burst_bits / 8 / 2**20:.0f} MiB TBF bucket ({burst_bits / rate_bps:.0f} s of line rate "
                   f"before it limits); Natra clamps it to {NATRA_BURST_S * 1e3:.0f} ms of rate "
                   "(docs/cni.md).")
    return "\n".join(out)


def report(pods: list[PodRun], rate_bps: int, burst_bits: int, runtime: str, prefix: str) -> dict:
    results = {p.label: {"limiter": p.limiter, "mode": p.mode, "container_id": p.container_id,
                         "host_veth": p.host_veth, **p.results} for p in pods}
    return {"rate_bps": rate_bps, "burst_bits": burst_bits, "runtime": runtime, "prefix": prefix,
            "pods": results}


# ---- effects: slots, processes, Pods -----------------------------------------------------------

class Slot:
    """A run's slot: the lowest free index whose lock file this process holds (the kernel drops
    the lock when the process dies, however it dies)."""

    def __init__(self, directory: str = SLOT_DIR, slots: int = MAX_SLOTS):
        os.makedirs(directory, exist_ok=True)
        for index in range(slots):
            fd = os.open(os.path.join(directory, f"slot-{index}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.index, self._fd = index, fd
            return
        raise RuntimeError(f"all {slots} demo slots under {directory} are taken")

    def release(self) -> None:
        os.close(self._fd)


class Processes:
    """Every traffic process of a run, so that clean-up can end them all."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def spawn(self, netns_path: str, *cmd: str) -> subprocess.Popen:
        proc = subprocess.Popen(["nsenter", f"--net={netns_path}", *cmd],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def end(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()

    def end_all(self) -> None:
        for proc in self.procs:
            self.end(proc)
        self.procs.clear()


class NetnsPods:
    """Pods as namespaces made here, the chain run by natra.lab.cnichain."""

    def __init__(self, net, prefix: str, slot: int, rate_bps: int, burst_bits: int):
        from natra.lab import cnichain

        self.cnichain, self.net, self.prefix, self.slot = cnichain, net, prefix, slot
        self.rate_bps, self.burst_bits = rate_bps, burst_bits
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        self.bin_dir = cnichain.make_bin_dir(os.path.join(self.tmp, "bin"))
        self.started: list[tuple] = []  # (chain, attachment)

    def open(self) -> None:
        """Nothing to start: the chain runs from this process."""

    def start(self, pod: PodRun, index: int) -> None:
        c = self.cnichain
        netns = self.net.add_netns(pod.label)
        natra = [c.natra_entry(mode=pod.mode)] if pod.mode else [c.natra_entry()]
        then = {LIMITER_NATRA: natra, LIMITER_BANDWIDTH: [c.bandwidth_entry()], LIMITER_NONE: []}
        conflist = c.ptp_conflist(f"{self.prefix}{pod.label}", pod_subnet(self.slot, index),
                                  then=then[pod.limiter], ipam_dir=os.path.join(self.tmp, "ipam"))
        chain = c.Chain(conflist, self.bin_dir)
        pod.container_id = f"{self.prefix}{pod.label}-{uuid.uuid4().hex[:12]}"
        att = c.Attachment(
            container_id=pod.container_id, netns=f"/var/run/netns/{netns}",
            k8s_args={"K8S_POD_NAMESPACE": "demo", "K8S_POD_NAME": pod.label,
                      "K8S_POD_UID": str(uuid.uuid4())},
            capability_args={} if pod.limiter == LIMITER_NONE
            else {c.CAPABILITY_BANDWIDTH: bandwidth_args(self.rate_bps, self.burst_bits)})
        self.started.append((chain, att))
        chain.add(att)
        pod.netns_path, pod.ip, pod.host_veth = att.netns, att.ip, att.host_ifname

    def close(self) -> None:
        for chain, att in reversed(self.started):  # DEL must succeed, with or without a cached result
            failed = [c for c in chain.delete_calls(att) if not c.ok]
            for call in failed:
                print(f"natra demo: DEL of {att.container_id} failed: {call.error()}", file=sys.stderr)
        self.started.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


class CriPods:
    """Pods as containerd sandboxes made through CRI from their annotations."""

    def __init__(self, prefix: str, slot: int, rate: str):
        from pathlib import Path

        from natra.lab.cri import node, runtime

        self.prefix, self.rate = prefix, rate
        node.reap_stale_nodes(Path(tempfile.gettempdir()), f"{DEMO_PREFIX}cri-")
        self.runtime = runtime.DemoRuntime(
            limiter=LIMITER_NATRA, pod_subnet=pod_subnet(slot, CRI_BLOCK), dir_prefix=f"{DEMO_PREFIX}cri-",
            handlers={STANDARD_HANDLER: LIMITER_BANDWIDTH})

    def open(self) -> None:
        try:
            self.runtime.start()
        finally:
            if self.runtime.layout is not None:
                print(f"natra demo: containerd node in {self.runtime.layout.base}", file=sys.stderr,
                      flush=True)

    def start(self, pod: PodRun, index: int) -> None:
        name = f"{self.prefix}{pod.label}"
        handler = STANDARD_HANDLER if pod.limiter == LIMITER_BANDWIDTH else ""
        annotations = pod_annotations(pod.limiter, self.rate, pod.mode)
        pod.netns_path, pod.ip = self.runtime.start_sandbox(name, annotations, runtime_handler=handler)
        state = self.runtime.sandbox(name)
        pod.container_id, pod.host_veth = state.id, host_veth_of(state.cni_result)

    def close(self) -> None:
        self.runtime.close()


def _collect(proc: subprocess.Popen, timeout: float) -> dict:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"traffic client failed: {err.strip()[-400:]}")
    return json.loads(out)


def _natra_stats(pod: PodRun) -> dict:
    """Drops and heavy hitters of a Natra Pod, read from its pinned maps."""
    from natra.node import observe  # the same reader `natra status` uses

    raw = observe.read_pod(pod.container_id)
    if raw is None:
        return {"drops": None, "heavy": None}
    view = observe.build_view(raw, now=time.monotonic_ns())
    to_pod = view.direction("to_pod")
    drops = sum(v["packets"] for name, v in to_pod.verdicts.items() if name.startswith("drop"))
    drops += sum(c.drops_packets for c in to_pod.classes)  # shaping: the queues' drops
    heavy = sum(1 for h in to_pod.heavy_hitters if h.passed_bytes + h.dropped_bytes > 0)
    # shaping: each heavy flow has a class of its own
    heavy += sum(1 for c in to_pod.classes if c.name.startswith("heavy") and c.sent_packets)
    return {"drops": drops, "heavy": heavy}


def _tbf_drops(pod: PodRun) -> int | None:
    """Drops of the standard plugin's TBF on the Pod's host veth (traffic into the Pod)."""
    out = subprocess.run(["tc", "-s", "-j", "qdisc", "show", "dev", pod.host_veth],
                         capture_output=True, text=True).stdout
    try:
        qdiscs = json.loads(out or "[]")
    except ValueError:
        return None
    drops = [q.get("drops", 0) for q in qdiscs if q.get("kind") == "tbf"]
    return sum(drops) if drops else None


def _client(procs: Processes, remote_path: str, pod: PodRun, size: int, count: int,
            interval: float) -> subprocess.Popen:
    return procs.spawn(remote_path, sys.executable, "-m", "natra.lab.traffic", "client", "--host", pod.ip,
                       "--port", str(SHORT_PORT), "--size", str(size), "--count", str(count),
                       "--interval", str(interval))


def _run_pod(procs: Processes, remote_path: str, pod: PodRun, rate_bps: int, duration: float,
             size: int) -> None:
    server = procs.spawn(pod.netns_path, sys.executable, "-m", "natra.lab.traffic", "serve",
                         "--port", str(SHORT_PORT), "--deadline", str(duration * 3 + 30))
    iperf_srv = procs.spawn(pod.netns_path, "iperf3", "-s", "-1", "-p", str(IPERF_PORT))
    try:
        time.sleep(SERVER_START_S)
        _collect(_client(procs, remote_path, pod, size, WARMUP_REQUESTS, 0.0), TRAFFIC_TIMEOUT_S)
        idle = _collect(_client(procs, remote_path, pod, size, IDLE_REQUESTS, IDLE_INTERVAL_S),
                        TRAFFIC_TIMEOUT_S)
        bulk = procs.spawn(remote_path, "iperf3", "-c", pod.ip, "-p", str(IPERF_PORT), "-t", str(duration),
                           "-J")
        time.sleep(min(FILL_S_MAX, duration / 4))
        count = max(MIN_LOADED_REQUESTS, int((duration - 3) / LOADED_INTERVAL_S))
        loaded = _collect(_client(procs, remote_path, pod, size, count, LOADED_INTERVAL_S),
                          duration * 4 + TRAFFIC_TIMEOUT_S)
        bulk_out, _ = bulk.communicate(timeout=duration + TRAFFIC_TIMEOUT_S)
        pod.results = pod_results(rate_bps, json.loads(bulk_out), idle, loaded)
        if pod.limiter == LIMITER_NATRA:
            pod.results.update(_natra_stats(pod))
        elif pod.limiter == LIMITER_BANDWIDTH:
            pod.results.update({"drops": _tbf_drops(pod), "heavy": None})
        else:
            pod.results.update({"drops": None, "heavy": None})
    finally:
        procs.end(server)
        procs.end(iperf_srv)


class Interrupts:
    """SIGINT and SIGTERM as KeyboardInterrupt, except inside `critical()`: a Pod half made
    (a plugin killed mid-ADD, a sandbox containerd is still creating) could not be cleaned up,
    so there the signal waits until the step is done."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.depth, self.pending = 0, False
        self.previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}

    def _on_signal(self, *_) -> None:
        if self.depth:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending:
            raise KeyboardInterrupt

    def ignore(self) -> None:
        """From here on (clean-up), signals are ignored: a second Ctrl-C must not cut it short."""
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def run(rate_bps: int, duration: float, size: int, as_json: bool = False,
        burst_bits: int = CONTAINERD_BURST_BITS, runtime: str = RUNTIME_NETNS,
        rate: str | None = None) -> int:
    """The whole demo; `rate` is the annotation text the containerd runtime gives its Pods."""
    from natra.lab.localnet import LocalNet

    if os.geteuid() != 0:
        print("natra demo: needs root (namespaces, veths, BPF)", file=sys.stderr)
        return 1
    if runtime == RUNTIME_CONTAINERD:
        from natra.lab.cri import runtime as cri_runtime

        why = cri_runtime.why_unavailable()
        if why:
            print(f"natra demo: --runtime containerd is not available here: {why}", file=sys.stderr)
            return 1
    pods = [PodRun(label, limiter, mode) for label, limiter, mode in PODS]
    interrupts = Interrupts()
    procs = Processes()
    cleanup = contextlib.ExitStack()
    try:
        with interrupts.critical():  # each thing is registered for clean-up as it is made
            slot = Slot()
            cleanup.callback(slot.release)
            prefix = slot_prefix(slot.index)
            print(f"natra demo: run {prefix} ({runtime} runtime)", file=sys.stderr, flush=True)
            net = LocalNet(prefix=prefix)
            cleanup.callback(net.close)
            if runtime == RUNTIME_CONTAINERD:
                maker = CriPods(prefix, slot.index, rate or f"{rate_bps}")
                burst_bits = CONTAINERD_BURST_BITS  # containerd sends it whatever the demo is told
            else:
                maker = NetnsPods(net, prefix, slot.index, rate_bps, burst_bits)
            cleanup.callback(maker.close)
            cleanup.callback(procs.end_all)
            maker.open()
            remote = net.add_remote(REMOTE_SUBNET.format(slot=slot.index))
        remote_path = f"/var/run/netns/{remote.netns}"
        for index, pod in enumerate(pods):
            with interrupts.critical():
                maker.start(pod, index)
        for pod in pods:
            print(f"natra demo: traffic into the {pod.label} Pod ({pod.limiter}) ...", file=sys.stderr,
                  flush=True)
            _run_pod(procs, remote_path, pod, rate_bps, duration, size)
        if as_json:
            print(json.dumps(report(pods, rate_bps, burst_bits, runtime, prefix), indent=2))
        else:
            print(render_table(pods, rate_bps, size, burst_bits))
        return 0
    except KeyboardInterrupt:
        print("natra demo: interrupted, cleaning up", file=sys.stderr, flush=True)
        return 130
    finally:
        interrupts.ignore()
        try:
            cleanup.close()
        finally:
            interrupts.restore()


def _rate_arg(text: str) -> str:
    from natra.cni.quantity import QuantityError, parse_bandwidth

    try:
        if parse_bandwidth(text) <= 0:
            raise QuantityError("must be positive")
    except (QuantityError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a bandwidth like 100M ({e})") from None
    return text


def _burst_arg(text: str) -> str:
    from natra.cni.quantity import QuantityError, parse_quantity

    try:
        if not 0 < parse_quantity(text) < 2**64:
            raise QuantityError("must be positive")
    except (QuantityError, ValueError, OverflowError) as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a burst in bits like 1Mi ({e})") from None
    return text


def _duration_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 and at most 3600 seconds")
    return value


def _size_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bytes") from None
    if not 0 < value <= 2**30:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 1 and 2^30 bytes")
    return value


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--rate", default="100M", type=_rate_arg,
                    help="limit per Pod, a Kubernetes quantity in bit/s (default 100M)")
    ap.add_argument("--duration", type=_duration_arg, default=8.0,
                    help="seconds of bulk traffic per Pod (default 8)")
    ap.add_argument("--size", type=_size_arg, default=10_000, help="bytes per short transfer (default 10000)")
    ap.add_argument("--burst", default=None, type=_burst_arg,
                    help="burst both plugins get, a quantity in bits (default: containerd's 2^32-1; "
                         "the containerd runtime always sends that)")
    ap.add_argument("--runtime", choices=RUNTIMES, default=RUNTIME_NETNS,
                    help="netns: run the CNI chain on namespaces (default); containerd: real CRI Pod "
                         "sandboxes of a private containerd, limits from their annotations")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")


def main(args: argparse.Namespace) -> int:
    from natra.cni.quantity import parse_bandwidth, parse_quantity

    burst = CONTAINERD_BURST_BITS if args.burst is None else int(parse_quantity(args.burst))
    return run(parse_bandwidth(args.rate), args.duration, args.size, args.json, burst,
               runtime=args.runtime, rate=args.rate)
