"""The wire in front of the CRI node: a "remote node" namespace and iperf3 runs.

Owns: one network namespace standing for another node, joined to the host by
a veth with routes both ways and forwarding on that veth, so traffic into a Pod
arrives from outside the host as on a real node (a sender in the
host's own namespace hides how a limiter treats TCP); and running iperf3
between that namespace and a Pod's namespace, returning bytes and seconds as
the receiver counted them.

Rule: every object is registered for removal before it is used; close()
removes all of it and never raises. The host's global ip_forward is not ours
to touch: forwarding is enabled on our veth only (the Pods' host veths get it
from ptp, which turns ip_forward on at every ADD, as on any node).
Names carry the prefix nt10- and addresses sit in 10.210.255.252/30, outside
the Pod subnet of the CRI node (10.210.0.0/17).
Must not know: CRI, containerd, CNI, Natra.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REMOTE_NETNS = "nt10-remote"
HOST_VETH = "nt10-rh"
REMOTE_VETH = "nt10-rr"
HOST_ADDR = "10.210.255.253"
REMOTE_ADDR = "10.210.255.254"
LINK_PREFIX = 30
POD_ROUTE = "10.210.0.0/17"  # the CRI node's Pod subnet
FORWARDING = "/proc/sys/net/ipv4/conf/{ifname}/forwarding"
IPERF_PORT = 5210
IPERF_CONNECT_TIMEOUT_MS = 3000
IPERF_EXTRA_WAIT_S = 20  # beyond the run's own length before we give up on it
SERVER_START_WAIT_S = 5.0


def run(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=timeout)


def in_netns_path(netns_path: str, *args: str) -> list[str]:
    """argv running `args` in the network namespace mounted at `netns_path`."""
    return ["nsenter", f"--net={netns_path}", *args]


@dataclass(frozen=True)
class Transfer:
    """One iperf3 run as the receiver counted it."""

    received_bytes: int
    seconds: float

    @property
    def bits_per_s(self) -> float:
        return 8 * self.received_bytes / self.seconds


@dataclass
class RemoteNode:
    undo: list[list[str]] = field(default_factory=list)

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{REMOTE_NETNS}"

    def up(self) -> RemoteNode:
        run("ip", "netns", "del", REMOTE_NETNS, check=False)  # a leftover of a killed run
        run("ip", "link", "del", HOST_VETH, check=False)
        self.undo.append(["ip", "netns", "del", REMOTE_NETNS])
        run("ip", "netns", "add", REMOTE_NETNS)
        self.undo.append(["ip", "link", "del", HOST_VETH])
        run("ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", REMOTE_VETH,
            "netns", REMOTE_NETNS)
        run("ip", "addr", "add", f"{HOST_ADDR}/{LINK_PREFIX}", "dev", HOST_VETH)
        run("ip", "link", "set", HOST_VETH, "up")
        ns = ["ip", "-n", REMOTE_NETNS]
        run(*ns, "addr", "add", f"{REMOTE_ADDR}/{LINK_PREFIX}", "dev", REMOTE_VETH)
        run(*ns, "link", "set", REMOTE_VETH, "up")
        run(*ns, "link", "set", "lo", "up")
        run(*ns, "route", "add", POD_ROUTE, "via", HOST_ADDR)
        Path(FORWARDING.format(ifname=HOST_VETH)).write_text("1\n")  # gone with the veth
        return self

    def close(self) -> None:
        for argv in reversed(self.undo):
            with contextlib.suppress(Exception):
                run(*argv, check=False)
        self.undo.clear()

    def iperf(self, pod_netns: str, pod_ip: str, seconds: float, to_pod: bool) -> Transfer:
        """iperf3 between this node and a Pod; `to_pod` picks the direction.

        The server runs in the Pod; the client here sends (to_pod) or, with -R,
        receives. Both ways the client's JSON holds the receiver's own count.
        """
        server = subprocess.Popen(
            in_netns_path(pod_netns, "iperf3", "-s", "-1", "-p", str(IPERF_PORT)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = ["ip", "netns", "exec", REMOTE_NETNS, "iperf3", "-c", pod_ip, "-p", str(IPERF_PORT),
                      "-t", str(seconds), "-J", "--connect-timeout", str(IPERF_CONNECT_TIMEOUT_MS)]
            if not to_pod:
                client.append("-R")
            _wait_listening(pod_netns, IPERF_PORT)
            proc = run(*client, check=False, timeout=seconds + IPERF_EXTRA_WAIT_S)
            report = json.loads(proc.stdout or "{}")
            if "error" in report or "sum_received" not in report.get("end", {}):
                raise RuntimeError(f"iperf3 to {pod_ip}: {report.get('error', proc.stderr.strip())}")
            end = report["end"]["sum_received"]
            return Transfer(received_bytes=int(end["bytes"]), seconds=float(end["seconds"]))
        finally:
            if server.poll() is None:
                server.kill()
            server.wait()


def _wait_listening(netns_path: str, port: int) -> None:
    """Return once a TCP socket listens on `port` in that namespace."""
    deadline = time.monotonic() + SERVER_START_WAIT_S
    while time.monotonic() < deadline:
        out = run(*in_netns_path(netns_path, "ss", "-Hltn", f"sport = :{port}"), check=False)
        if out.stdout.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"iperf3 server in {netns_path} not listening after {SERVER_START_WAIT_S} s")
