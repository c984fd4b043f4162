"""The wire in front of the CRI node: a "remote node" namespace and iperf3 runs.

Owns: the CRI tests' remote node: natra.lab.localnet's remote node (the one
the demo and the benchmarks use: a namespace joined to the host by a veth,
forwarding on that veth only, routed to every Pod) under the names and
addresses of these tests, so traffic into a Pod arrives from outside the host
as on a real node (a sender in the host's own namespace hides how a limiter
treats TCP); and iperf3 runs (natra.lab.iperf) between it and a Pod's
namespace, as the receiver counted them.
Rule: close() removes everything and never raises; a leftover of a killed
earlier run is removed before the node is made. Names carry the prefix nt10-
and addresses sit in 10.210.255.0/24, outside the Pod subnet of the CRI node
(10.210.0.0/17).
Must not know: CRI, containerd, CNI, Natra.
"""

from __future__ import annotations

from natra.lab import iperf
from natra.lab.localnet import LocalNet, netns_path, sh

PREFIX = "nt10-"
REMOTE_SUBNET = "10.210.255"  # host .1, remote node .2
HOST_ADDR = f"{REMOTE_SUBNET}.1"
REMOTE_ADDR = f"{REMOTE_SUBNET}.2"
POD_ROUTE = "10.210.0.0/17"  # the CRI node's Pod subnet
IPERF_PORT = 5210


class RemoteNode:
    def __init__(self) -> None:
        self.net = LocalNet(PREFIX)
        self.node = None

    @property
    def netns_path(self) -> str:
        return netns_path(self.node.netns)

    def up(self) -> RemoteNode:
        sh("ip", "netns", "del", f"{PREFIX}remote", check=False)  # a leftover of a killed run
        sh("ip", "link", "del", f"{PREFIX}rm", check=False)
        self.node = self.net.add_remote(REMOTE_SUBNET)
        return self

    def close(self) -> None:
        try:
            self.net.close()
        except Exception:  # noqa: BLE001 - never raises, as LocalNet.close promises
            pass

    def iperf(self, pod_netns: str, pod_ip: str, seconds: float, to_pod: bool) -> iperf.Transfer:
        """iperf3 between this node and a Pod; `to_pod` picks the direction.

        The server runs in the Pod; the client here sends (to_pod) or, with -R,
        receives. Both ways the client's JSON holds the receiver's own count.
        """
        return iperf.run(pod_netns, pod_ip, seconds, client_netns=self.node.netns, reverse=not to_pod,
                         port=IPERF_PORT)
