"""Local stand-ins for a node's network: Pod namespaces and a remote node.

Owns: creating and always removing the network namespaces the demo and the
benchmarks use as Pods, and a "remote node" namespace joined to the host by a
veth with forwarding and routes both ways, so Pod-bound traffic arrives from
the wire as it does on a real node (a sender in the host's own namespace would
hide how a limiter treats TCP).
Rule: every object made here is registered for removal before it is made
use of; `LocalNet.close()` removes all of it and never raises.
Must not know: CNI plugins, limiters.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field


def sh(*args: str, check: bool = True, netns: str | None = None, **kw) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(args)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def netns_path(name: str) -> str:
    return f"/var/run/netns/{name}"


@dataclass
class RemoteNode:
    netns: str
    host_veth: str
    host_ip: str  # host side of the link, the remote's gateway
    ip: str  # the remote node's own address


@dataclass
class LocalNet:
    """Namespaces and links of one run; `prefix` keeps runs apart."""

    prefix: str
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def add_netns(self, name: str) -> str:
        full = f"{self.prefix}{name}"
        self.namespaces.append(full)
        sh("ip", "netns", "add", full)
        sh("ip", "link", "set", "lo", "up", netns=full)
        return full

    def add_remote(self, subnet_prefix: str = "10.97.0") -> RemoteNode:
        """A namespace joined to the host at <subnet_prefix>.1/.2, routed to every Pod."""
        ns = self.add_netns("remote")
        host_veth = f"{self.prefix}rm"[:15]
        self.links.append(host_veth)
        sh("ip", "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "addr", "add", f"{subnet_prefix}.1/24", "dev", host_veth)
        sh("ip", "link", "set", host_veth, "up")
        sh("ip", "addr", "add", f"{subnet_prefix}.2/24", "dev", "eth0", netns=ns)
        sh("ip", "link", "set", "eth0", "up", netns=ns)
        sh("ip", "route", "add", "default", "via", f"{subnet_prefix}.1", netns=ns)
        # Forwarding on this veth only (the host's global ip_forward is not ours
        # to touch; ptp turns forwarding on for the Pods' side at every ADD).
        with open(f"/proc/sys/net/ipv4/conf/{host_veth}/forwarding", "w") as f:
            f.write("1")  # gone with the veth
        return RemoteNode(ns, host_veth, f"{subnet_prefix}.1", f"{subnet_prefix}.2")

    def close(self) -> None:
        for link in self.links:
            sh("ip", "link", "del", link, check=False)
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "pids", ns, check=False)
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        self.links.clear()
        self.namespaces.clear()

    def __enter__(self) -> LocalNet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
