"""Limited namespace Pods with traffic, for the observability tests (prefix nt7-).

Owns: a small node: a "remote node" namespace and N Pod namespaces, each
joined to the host by a veth with its own /30, routed both ways through the
host, and Natra installed on each Pod's host veth through the data-path
facade (natra.kernel.datapath) into a private bpffs. Neighbours are static and IPv6
is off on every veth, so the only frames that cross are the ones the test
sends: interface counters then account for every frame Natra counts.
Also the traffic: iperf3 bulk flows with a fixed client port and short
requests (natra.lab.traffic), and the exporter as a subprocess on loopback.

Rule: every namespace, veth, pin and process made here is removed on the way
out (context managers with finally), also when a test fails half-way.
Must not know: what the tests assert.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import netns

from natra.kernel import datapath
from natra.kernel import layout as L
from natra.kernel.params import params_for, to_config

PREFIX = "nt7-"
IPERF_PORT = 5201
SHORT_PORT = 7001
BULK_CPORT_BASE = 41000  # iperf3 --cport of Pod i's bulk flow: a key the test can name
POD_NAMESPACE = "nt7"
SERVER_START_S = 0.5  # iperf3 -s / the sink need this to listen
EXPORTER_START_S = 10.0


def _mac(ifname: str, ns: str | None = None) -> str:
    return netns.run("cat", f"/sys/class/net/{ifname}/address", ns=ns).strip()


@dataclass
class Side:
    """One namespace joined to the host."""

    ns: str
    host_if: str
    host_ip: str
    ip: str

    def stat(self, name: str) -> int:
        """A counter of the host-side veth (tx_* is traffic into the namespace)."""
        with open(f"/sys/class/net/{self.host_if}/statistics/{name}") as f:
            return int(f.read())


@dataclass
class Pod(Side):
    container_id: str = ""
    name: str = ""
    uid: str = ""


@dataclass
class Node:
    root: str  # bpffs root of this node's pins (NATRA_BPFFS_ROOT)
    remote: Side
    pods: list[Pod] = field(default_factory=list)


@contextlib.contextmanager
def _side(role: str, tag: str) -> Iterator[Side]:
    ns = f"{PREFIX}{role}-{tag}"
    host_if = f"{PREFIX}{tag}{role}"[:15]
    with netns.netns(ns):
        tmp = f"{host_if}x"[:15]
        netns.run("ip", "link", "add", host_if, "type", "veth", "peer", "name", tmp)
        try:
            netns.run("ip", "link", "set", tmp, "netns", ns)
            netns.run("ip", "link", "set", tmp, "name", "eth0", ns=ns)
            with open(f"/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6", "w") as f:
                f.write("1")
            netns.run("sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1", ns=ns)
            net = netns.free_subnet()
            host_ip, ip = (str(a) for a in list(net.hosts())[:2])
            netns.run("ip", "addr", "add", f"{host_ip}/{net.prefixlen}", "dev", host_if)
            netns.run("ip", "addr", "add", f"{ip}/{net.prefixlen}", "dev", "eth0", ns=ns)
            netns.run("ip", "link", "set", "eth0", "up", ns=ns)
            netns.run("ip", "link", "set", host_if, "up")
            netns.run("ip", "route", "add", "default", "via", host_ip, ns=ns)
            # Static neighbours both ways: no ARP frame ever crosses the veth.
            netns.run("ip", "neigh", "replace", ip, "lladdr", _mac("eth0", ns), "dev", host_if,
                      "nud", "permanent")
            netns.run("ip", "neigh", "replace", host_ip, "lladdr", _mac(host_if), "dev", "eth0",
                      "nud", "permanent", ns=ns)
            with open(f"/proc/sys/net/ipv4/conf/{host_if}/forwarding", "w") as f:
                f.write("1")
            yield Side(ns=ns, host_if=host_if, host_ip=host_ip, ip=ip)
        finally:
            netns.delete_link(host_if)


def pod_configs(rate_bps: int, both: bool = False):
    return [to_config(params_for(rate_bps)), to_config(params_for(rate_bps) if both else None)]


@contextlib.contextmanager
def node(pods: int, rate_bps: int, tag: str | None = None, *, both: bool = False) -> Iterator[Node]:
    """A remote node and `pods` Pods limited to `rate_bps` into the Pod, Natra installed.

    both=True limits traffic out of the Pod too, and routes each Pod address to its
    veth as a /32, as a ptp-style CNI does (Natra tells flow directions by it).
    """
    tag = tag or netns.unique_tag()
    with netns.private_bpffs() as mnt, contextlib.ExitStack() as stack:
        root = os.path.join(mnt, "natra")
        remote = stack.enter_context(_side("r", tag))
        built = Node(root=root, remote=remote)
        for i in range(pods):
            side = stack.enter_context(_side(f"p{i}", tag))
            pod = Pod(**vars(side), container_id=f"{PREFIX}{tag}-{i}-{uuid.uuid4().hex[:8]}",
                      name=f"web-{i}", uid=str(uuid.uuid4()))
            if both:
                netns.run("ip", "route", "add", f"{pod.ip}/32", "dev", pod.host_if)
            directions = {L.DIR_TO_POD, L.DIR_FROM_POD} if both else {L.DIR_TO_POD}
            datapath.install(pod.container_id, pod.host_if, pod_configs(rate_bps, both),
                             directions=directions, mode="auto", root=root,
                             meta={"pod": f"{POD_NAMESPACE}/{pod.name}", "pod_uid": pod.uid,
                                   "ifname": "eth0"})
            stack.callback(datapath.remove, pod.container_id, root=root)
            built.pods.append(pod)
        yield built


# ---- traffic ----------------------------------------------------------------------------------

@contextlib.contextmanager
def servers(pods: list[Pod], deadline_s: float,
            iperf_ports: tuple[int, ...] = (IPERF_PORT,)) -> Iterator[None]:
    """iperf3 (one test per port) and the short-request sink listening in every Pod."""
    with contextlib.ExitStack() as stack:
        for p in pods:
            for port in iperf_ports:
                stack.enter_context(netns.process(["iperf3", "-s", "-p", str(port), "-1"], ns=p.ns))
            stack.enter_context(netns.process([sys.executable, "-m", "natra.lab.traffic", "serve", "--port",
                                               str(SHORT_PORT), "--deadline", str(deadline_s)], ns=p.ns))
        time.sleep(SERVER_START_S)
        yield


def bulk(remote: Side, pod: Pod, index: int, seconds: float, *, port: int = IPERF_PORT,
         reverse: bool = False) -> subprocess.Popen:
    """An iperf3 TCP bulk flow remote -> Pod (reverse: Pod -> remote) with client port
    BULK_CPORT_BASE + index."""
    return subprocess.Popen(["ip", "netns", "exec", remote.ns, "iperf3", "-c", pod.ip, "-p", str(port),
                             "--cport", str(BULK_CPORT_BASE + index), "-t", str(seconds), "-J",
                             *(["-R"] if reverse else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def short(remote: Side, pod: Pod, count: int, size: int, interval_s: float) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", remote.ns, sys.executable, "-m", "natra.lab.traffic",
                             "client", "--host", pod.ip, "--port", str(SHORT_PORT), "--size", str(size),
                             "--count", str(count), "--interval", str(interval_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> dict:
    """Wait for a client and return its JSON output (killed if it overstays)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{proc.args}: exit {proc.returncode}: {err.strip()[:500]}")
    return json.loads(out)


# ---- the tools as an operator runs them ----------------------------------------------------------

def tool_env(root: str, state: str | None = None) -> dict[str, str]:
    """The environment of `natra status/top/exporter` over pin root `root` (fail-open records: `state`)."""
    env = {**os.environ, "NATRA_BPFFS_ROOT": root}
    if state is not None:
        env["NATRA_STATE_DIR"] = state
    return env


def tool(*args: str, root: str, state: str | None = None, timeout: float = 30) -> str:
    done = subprocess.run([sys.executable, "-m", "natra", *args], capture_output=True, text=True,
                          env=tool_env(root, state), timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"natra {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[:500]}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def exporter(root: str, state: str | None = None) -> Iterator[str]:
    """`natra exporter` on a free loopback port; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "natra", "exporter", "--listen",
                             f"127.0.0.1:{port}"], env=tool_env(root, state), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + EXPORTER_START_S
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1):
                    break
            except OSError as e:
                if proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"exporter at {base} did not start: {e}") from e
                time.sleep(0.1)
        yield base
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.communicate()


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()
