"""The benchmarks' test bench: Pods made through the real CNI chain, and traffic into them.

Owns: one `Bench` per run: a "remote node" namespace (natra.lab.localnet), CNI
bin dirs (Debian's plugins plus `natra` as the Python entry point or the node
bundle), one conflist per limiter ("natra" = ptp + natra, "bandwidth" = ptp +
the standard plugin, "none" = ptp alone) each with its own /24 of
10.208.0.0/16, Pods as namespaces with containerd-shaped bandwidth capability
args, per-plugin timing of every CNI call, the iperf3 / natra.lab.traffic
processes it starts, the TCP congestion control of the sending namespaces
(adding it to the root namespace's tcp_allowed_congestion_control when it is
not there, and putting the old value back), and the counters a run reads
(a namespace's TCP segments and retransmissions, the host's CPU time).
Rule: everything it makes is registered before use and removed by `close()`
(DEL through the chain, then namespaces, bin dirs, IPAM stores, stray pins and
IFB devices of its containers, its processes, the root sysctl it changed),
which never raises; Ctrl-C and SIGTERM land
in the same `close()`.
Must not know: what a scenario measures or how the report looks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

from natra.lab import cnichain
from natra.lab.localnet import LocalNet, netns_path

PREFIX = "nt8-"
# Addresses of a bench with `net` = 208 (the default): Pods in 10.208.0.0/16, one /24 per
# conflist (253 Pods each), the remote node at 10.209.0.2 (the host's side .1). Another `net`
# (and prefix) lets a long run share the host with a smoke run of the default one.
DEFAULT_NET = 208
REMOTE_SUBNET = "10.{remote}.0"
POD_SUBNET = "10.{net}.{block}.0/24"
IPAM_DIR = "/run/natra-ipam"
AGENT_WARM_S = 3.0  # a started agent's pool loads eight objects of the default shape (~90-190 ms each)
LIMITERS = ("natra", "bandwidth", "none")
# What containerd sends as the burst when a Pod asks for none (bits).
CONTAINERD_BURST_BITS = 2**32 - 1
BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dist", "natra", "natra")
IPERF_INTERVAL = "0.1"  # s: iperf3's finest report interval, the grain of the R*t+B check
SERVER_READY_S = 0.3  # iperf3 / natra.lab.traffic servers listen well within this
IPERF_GRACE_S = 30  # beyond the test length before a hung iperf3 is killed
ALLOWED_CC = "/proc/sys/net/ipv4/tcp_allowed_congestion_control"  # root namespace: what others may pick


def bandwidth_args(rate_bps: int, burst_bits: int = CONTAINERD_BURST_BITS) -> dict:
    """The `bandwidth` capability as containerd fills it for a Pod with both annotations."""
    return {"IngressRate": rate_bps, "IngressBurst": burst_bits,
            "EgressRate": rate_bps, "EgressBurst": burst_bits}


class TimedChain(cnichain.Chain):
    """A Chain that records how long each plugin call took (seconds)."""

    def __init__(self, conflist: dict, bin_dir: str):
        super().__init__(conflist, bin_dir)
        self.calls: list[tuple[str, str, float]] = []  # (plugin type, command, seconds)

    def _exec(self, plugin: dict, command: str, att, prev):
        start = time.perf_counter()
        try:
            return super()._exec(plugin, command, att, prev)
        finally:
            self.calls.append((plugin["type"], command, time.perf_counter() - start))

    def last(self, plugin_type: str, command: str) -> float:
        return next(s for t, c, s in reversed(self.calls) if t == plugin_type and c == command)


@dataclass
class Pod:
    label: str
    limiter: str
    rate_bps: int | None
    burst_bits: int | None
    netns: str
    chain: TimedChain
    attachment: cnichain.Attachment
    ip: str = ""
    host_veth: str = ""
    add_s: dict = field(default_factory=dict)  # plugin type -> seconds of its ADD
    options: dict = field(default_factory=dict)  # keys of Natra's conflist entry beyond the defaults

    @property
    def container_id(self) -> str:
        return self.attachment.container_id


class Bench:
    """Namespaces, chains, Pods and processes of one benchmark run."""

    def __init__(self, prefix: str = PREFIX, net: int = DEFAULT_NET):
        self.prefix = prefix
        self.net_base = net
        self.net = LocalNet(prefix=prefix)
        self.bin_dirs: dict[str, str] = {}
        self.chains: dict[tuple[str, str], TimedChain] = {}
        self.pods: list[Pod] = []
        self.procs: list[subprocess.Popen] = []
        self.agents: dict[str, tuple[subprocess.Popen, str]] = {}  # runner -> (natra agent, its socket)
        self.remote = None
        self._count = 0
        self._container_ids: set[str] = set()  # every container ADDed, for stray IFB devices
        self.congestion: str | None = None  # senders' TCP congestion control; None: the namespace default
        self._allowed_cc_before: str | None = None  # the root sysctl's value, when we changed it
        self._pin_root_existed = True  # the node's pin root was there before the run (set by start)

    def start(self) -> Bench:
        from natra.kernel import pins

        self._pin_root_existed = os.path.isdir(pins.resolve_root())
        self.bin_dirs["python"] = cnichain.make_bin_dir(prefix_dir(self.prefix, "cnibin-py"))
        self.remote = self.net.add_remote(REMOTE_SUBNET.format(remote=self.net_base + 1))
        return self

    # ---- chains and Pods -------------------------------------------------------------

    def bundle_available(self) -> bool:
        """The node bundle is built, and not older than this checkout's natra/ sources."""
        if not os.access(BUNDLE, os.X_OK):
            return False
        built = os.stat(BUNDLE).st_mtime
        source = os.path.join(os.path.dirname(os.path.dirname(BUNDLE)), os.pardir, "natra")
        for directory, _, files in os.walk(os.path.normpath(source)):
            if any(f.endswith(".py") and os.stat(os.path.join(directory, f)).st_mtime > built for f in files):
                print(f"bench: {BUNDLE} is older than natra/ (make node-bundle); its rows are left out",
                      file=sys.stderr)
                return False
        return True

    def _bin_dir(self, natra_runner: str) -> str:
        natra_runner = natra_runner.removesuffix("-agent")  # the same executable, talking to an agent
        if natra_runner not in self.bin_dirs:
            directory = cnichain.make_bin_dir(prefix_dir(self.prefix, "cnibin-bundle"))
            launcher = os.path.join(directory, "natra")
            os.remove(launcher)
            os.symlink(BUNDLE, launcher)
            self.bin_dirs[natra_runner] = directory
        return self.bin_dirs[natra_runner]

    def chain(self, limiter: str, natra_runner: str = "python", options: dict | None = None) -> TimedChain:
        """The conflist of `limiter`; `options` are keys of Natra's entry (e.g. mode, queue)."""
        options = dict(options or {})
        tag = "".join(f"-{k}{v}" for k, v in sorted(options.items())).replace(" ", "")
        key = (limiter, natra_runner, tag)
        if key not in self.chains:
            block = len(self.chains)
            then = {"natra": [cnichain.natra_entry(**options)], "bandwidth": [cnichain.bandwidth_entry()],
                    "none": []}[limiter]
            name = f"{self.prefix}{limiter}-{natra_runner}{tag}"
            conflist = cnichain.ptp_conflist(name, POD_SUBNET.format(net=self.net_base, block=block),
                                             then=then)
            self.chains[key] = TimedChain(conflist, self._bin_dir(natra_runner))
            if natra_runner.endswith("-agent"):
                self.chains[key].extra_env["NATRA_AGENT_SOCKET"] = self.agent_socket(natra_runner)
        return self.chains[key]

    def agent_socket(self, natra_runner: str) -> str:
        """The socket of a `natra agent` for this runner (started once, from the node bundle
        for "bundle-agent" as the DaemonSet's image runs it, else from this checkout)."""
        if natra_runner in self.agents and self.agents[natra_runner][0].poll() is None:
            return self.agents[natra_runner][1]
        path = os.path.join(prefix_dir(self.prefix, f"agent-{natra_runner}"), "agent", "agent.sock")
        cmd = [BUNDLE] if natra_runner.startswith("bundle") else [sys.executable, "-m", "natra"]
        proc = subprocess.Popen([*cmd, "agent", "--socket", path], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.exists(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"natra agent ({natra_runner}) did not start: exit {proc.poll()}")
            time.sleep(0.05)
        time.sleep(AGENT_WARM_S)  # its pool loads the default shape's programs
        self.agents[natra_runner] = (proc, path)
        return path

    def stop_agents(self) -> list[str]:
        problems = []
        for runner, (proc, path) in list(self.agents.items()):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                problems.append(f"natra agent ({runner}) did not stop on SIGTERM")
            shutil.rmtree(os.path.dirname(os.path.dirname(path)), ignore_errors=True)
            del self.agents[runner]
        return problems

    def add_pod(self, limiter: str, rate_bps: int | None, natra_runner: str = "python",
                burst_bits: int = CONTAINERD_BURST_BITS, options: dict | None = None) -> Pod:
        """A namespace Pod through the chain of `limiter`, limited both ways to `rate_bps`.

        `burst_bits` is what the runtime asks for (containerd's 2^32-1 when the
        Pod says nothing); Natra clamps it, the standard plugin takes it as is.
        """
        self._count += 1
        label = f"{limiter[:2]}{self._count}"
        netns = self.net.add_netns(label)
        chain = self.chain(limiter, natra_runner, options)
        cid = f"{self.prefix}{label}-{uuid.uuid4().hex[:12]}"
        limited = rate_bps and limiter != "none"
        capability = {"bandwidth": bandwidth_args(rate_bps, burst_bits)} if limited else {}
        att = cnichain.Attachment(container_id=cid, netns=netns_path(netns),
                                  k8s_args={"K8S_POD_NAMESPACE": "bench", "K8S_POD_NAME": label,
                                            "K8S_POD_UID": str(uuid.uuid4())},
                                  capability_args=capability)
        pod = Pod(label, limiter, rate_bps, burst_bits, netns, chain, att, options=dict(options or {}))
        self.pods.append(pod)
        self._container_ids.add(cid)
        if self.congestion:
            self._set_netns_congestion(netns, self.congestion)
        result = chain.add(att)
        pod.add_s = {t: s for t, c, s in chain.calls[-len(chain.conflist["plugins"]):] if c == "ADD"}
        pod.ip = result["ips"][0]["address"].split("/")[0]
        pod.host_veth = next(i["name"] for i in result["interfaces"] if not i.get("sandbox"))
        return pod

    def delete_pod(self, pod: Pod) -> dict:
        """DEL through the chain and remove the namespace; plugin type -> seconds of its DEL."""
        n = len(pod.chain.conflist["plugins"])
        pod.chain.delete(pod.attachment)
        took = {t: s for t, c, s in pod.chain.calls[-n:] if c == "DEL"}
        self._drop_netns(pod)
        return took

    def _drop_netns(self, pod: Pod) -> None:
        if pod in self.pods:
            self.pods.remove(pod)
        subprocess.run(["ip", "netns", "del", pod.netns], capture_output=True, check=False)
        if pod.netns in self.net.namespaces:
            self.net.namespaces.remove(pod.netns)

    # ---- what a Pod got ------------------------------------------------------------------

    def shaped_directions(self, pod: Pod) -> list[str]:
        """Directions whose qdisc tree Natra installed: "to_pod" (tbf root on the host veth) and
        "from_pod" (its IFB device). Empty for a policing or unlimited Pod."""
        from natra.kernel import shaping

        out = []
        root = _root_qdisc(pod.host_veth)
        if root and root.get("kind") == "tbf" and root.get("handle") == f"{shaping.TBF_MAJOR:x}:":
            out.append("to_pod")
        ifb = shaping.ifb_name(pod.container_id)
        if subprocess.run(["ip", "link", "show", "dev", ifb], capture_output=True).returncode == 0:
            out.append("from_pod")
        return out

    # ---- TCP congestion control and counters --------------------------------------------

    def use_congestion(self, algorithm: str | None) -> None:
        """Senders (the remote node and every Pod, now and later) use `algorithm`.

        A namespace other than the root may only pick what the root namespace's
        tcp_allowed_congestion_control lists; it is added there when missing and
        the old value is put back by close().
        """
        if algorithm:
            with open(ALLOWED_CC) as f:
                allowed = f.read().split()
            if algorithm not in allowed:
                if self._allowed_cc_before is None:
                    self._allowed_cc_before = " ".join(allowed)
                with open(ALLOWED_CC, "w") as f:
                    f.write(" ".join([*allowed, algorithm]))
        self.congestion = algorithm
        target = algorithm or _root_default_congestion()
        for netns in [self.remote.netns, *(p.netns for p in self.pods)]:
            self._set_netns_congestion(netns, target)

    @staticmethod
    def _set_netns_congestion(netns: str, algorithm: str) -> None:
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w",
                        f"net.ipv4.tcp_congestion_control={algorithm}"], check=True, capture_output=True)

    def _restore_allowed_congestion(self) -> list[str]:
        if self._allowed_cc_before is None:
            return []
        try:
            with open(ALLOWED_CC, "w") as f:
                f.write(self._allowed_cc_before)
            self._allowed_cc_before = None
            return []
        except OSError as e:
            return [f"restore {ALLOWED_CC}: {e}"]

    @staticmethod
    def tcp_counters(netns: str) -> dict[str, int]:
        """The namespace's TCP OutSegs and RetransSegs (/proc/net/snmp: GSO packets count as
        the segments they carry)."""
        out = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"],
                             capture_output=True, text=True, check=True).stdout
        lines = [ln.split() for ln in out.splitlines() if ln.startswith("Tcp:")]
        fields = dict(zip(lines[0][1:], (int(x) for x in lines[1][1:]), strict=True))
        return {"out_segs": fields["OutSegs"], "retrans_segs": fields["RetransSegs"]}

    # ---- processes --------------------------------------------------------------------

    def spawn(self, netns: str, *cmd: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.returncode, out, err

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.kill()
        self.finish(proc, timeout=5)

    def iperf_server(self, pod: Pod, port: int) -> subprocess.Popen:
        """A one-test iperf3 server in the Pod that prints its JSON report at the end."""
        return self.spawn(pod.netns, "iperf3", "-s", "-1", "-J", "-i", IPERF_INTERVAL, "-p", str(port))

    def iperf_client(self, pod: Pod, port: int, seconds: float, *extra: str) -> subprocess.Popen:
        return self.spawn(self.remote.netns, "iperf3", "-c", pod.ip, "-p", str(port), "-t", f"{seconds:g}",
                          "-i", IPERF_INTERVAL, "-J", *extra)

    def iperf_json(self, proc: subprocess.Popen, seconds: float) -> dict:
        code, out, err = self.finish(proc, timeout=seconds + IPERF_GRACE_S)
        try:
            report = json.loads(out)
        except ValueError as e:
            raise RuntimeError(f"iperf3 exited {code} without JSON: {err.strip()[-300:]}") from e
        if "error" in report:
            raise RuntimeError(f"iperf3: {report['error']}")
        return report

    def traffic_server(self, pod: Pod, port: int, deadline_s: float) -> subprocess.Popen:
        return self.spawn(pod.netns, sys.executable, "-m", "natra.lab.traffic", "serve", "--port", str(port),
                          "--deadline", f"{deadline_s:g}")

    def traffic_client(self, pod: Pod, port: int, size: int, count: int,
                       interval_s: float) -> subprocess.Popen:
        return self.spawn(self.remote.netns, sys.executable, "-m", "natra.lab.traffic", "client",
                          "--host", pod.ip, "--port", str(port), "--size", str(size), "--count", str(count),
                          "--interval", f"{interval_s:g}")

    def traffic_json(self, proc: subprocess.Popen, timeout: float) -> dict:
        code, out, err = self.finish(proc, timeout=timeout)
        if code != 0:
            raise RuntimeError(f"natra.lab.traffic client exited {code}: {err.strip()[-300:]}")
        return json.loads(out)

    # ---- cleanup ----------------------------------------------------------------------

    def reset(self) -> list[str]:
        """DEL every Pod still up (after a scenario failed midway) and stop processes."""
        problems = []
        for proc in list(self.procs):
            try:
                self.stop(proc)
            except Exception as e:  # noqa: BLE001 - cleanup goes on
                problems.append(f"stop process {proc.args}: {e}")
        for pod in list(self.pods):
            if pod.attachment.cached_result is not None:
                try:
                    pod.chain.delete(pod.attachment)
                except Exception as e:  # noqa: BLE001 - cleanup goes on
                    problems.append(f"DEL {pod.label}: {e}")
            self._drop_netns(pod)
        return problems

    def close(self) -> list[str]:
        """Remove everything; returns the problems met (never raises)."""
        problems = self.reset()
        problems += self.stop_agents()
        problems += _remove_stray_pins(self.prefix)
        problems += self._remove_pin_root_it_made()
        problems += self._remove_stray_ifbs()
        problems += self._restore_allowed_congestion()
        try:
            self.net.close()
        except Exception as e:  # noqa: BLE001
            problems.append(f"close namespaces: {e}")
        for directory in self.bin_dirs.values():
            cnichain.remove_bin_dir(directory)
        for chain in self.chains.values():
            shutil.rmtree(os.path.join(IPAM_DIR, chain.conflist["name"]), ignore_errors=True)
        return problems

    @property
    def container_ids(self) -> set[str]:
        return set(self._container_ids)

    def _remove_pin_root_it_made(self) -> list[str]:
        """The node's pin root (/sys/fs/bpf/natra), if this run's Pods made it: removed once empty."""
        from natra.kernel import pins

        root = pins.resolve_root()
        if self._pin_root_existed or not os.path.isdir(root):
            return []
        try:
            os.rmdir(root)
        except OSError as e:
            return [f"remove the pin root {root} this run made: {e}"]
        return []

    def _remove_stray_ifbs(self) -> list[str]:
        """IFB devices of our containers that a failed DEL left (named from the container ID)."""
        from natra.kernel import shaping

        problems = []
        for cid in sorted(self._container_ids):
            name = shaping.ifb_name(cid)
            if subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0:
                done = subprocess.run(["ip", "link", "del", name], capture_output=True, text=True)
                if done.returncode != 0:
                    problems.append(f"remove {name}: {done.stderr.strip()}")
        return problems

    def __enter__(self) -> Bench:
        try:
            return self.start()
        except BaseException:
            # Not close(): the namespace that failed may be another run's (same prefix), and
            # LocalNet registers a name before it makes it. Only what start() made here goes.
            for directory in self.bin_dirs.values():
                cnichain.remove_bin_dir(directory)
            raise

    def __exit__(self, *exc) -> None:
        for problem in self.close():
            print(f"bench cleanup: {problem}", file=sys.stderr)


def prefix_dir(prefix: str, name: str) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix=f"{prefix}{name}-")


def _remove_stray_pins(prefix: str) -> list[str]:
    """Pins left by our containers (a DEL that failed); removed through the facade."""
    from natra.kernel import datapath

    problems = []
    try:
        ids = [c for c in datapath.list_installed() if c.startswith(prefix)]
    except OSError as e:
        return [f"list pins: {e}"]
    for cid in ids:
        try:
            datapath.remove(cid)
        except Exception as e:  # noqa: BLE001
            problems.append(f"remove pins of {cid}: {e}")
    return problems


def _root_qdisc(dev: str) -> dict | None:
    out = subprocess.run(["tc", "-j", "qdisc", "show", "dev", dev, "root"], capture_output=True, text=True)
    try:
        return next(iter(json.loads(out.stdout or "[]")), None)
    except ValueError:
        return None


def _root_default_congestion() -> str:
    with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
        return f.read().strip()


def cpu_busy_s() -> float:
    """CPU seconds spent by the whole host, all CPUs, outside idle and iowait (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")
