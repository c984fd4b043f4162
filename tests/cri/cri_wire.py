"""The wire in front of the CRI node: a "remote node" namespace and iperf3 runs.

Owns: one network namespace standing for another node, joined to the host by
a veth with routes both ways and forwarding on that veth, so traffic into a Pod
arrives from outside the host as on a real node (a sender in the
host's own namespace hides how a limiter treats TCP); and running iperf3
(natra.lab.iperf) between that namespace and a Pod's namespace, returning bytes and seconds as
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
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from natra.lab import iperf

REMOTE_NETNS = "nt10-remote"
HOST_VETH = "nt10-rh"
REMOTE_VETH = "nt10-rr"
HOST_ADDR = "10.210.255.253"
REMOTE_ADDR = "10.210.255.254"
LINK_PREFIX = 30
POD_ROUTE = "10.210.0.0/17"  # the CRI node's Pod subnet
FORWARDING = "/proc/sys/net/ipv4/conf/{ifname}/forwarding"
IPERF_PORT = 5210


def run(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=timeout)


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

    def iperf(self, pod_netns: str, pod_ip: str, seconds: float, to_pod: bool) -> iperf.Transfer:
        """iperf3 between this node and a Pod; `to_pod` picks the direction.

        The server runs in the Pod; the client here sends (to_pod) or, with -R,
        receives. Both ways the client's JSON holds the receiver's own count.
        """
        return iperf.run(pod_netns, pod_ip, seconds, client_netns=REMOTE_NETNS, reverse=not to_pod,
                         port=IPERF_PORT)
