"""A fake node for the bundle and image tests: a host root with Debian's
plugins, a ptp conflist to chain into, namespace Pods, iperf3 through them.

Owns: what test_bundle.py (the bundle installed by the Python installer) and
test_image.py (the bundle installed by the image's init container) both drive:
`fake_host` (bin dir with Debian's plugins linked in, conf dir with one ptp
conflist on a free /24), `Pod` (a namespace Pod added and deleted through a
natra.lab.cnichain Chain), `iperf`, `hooked_programs` and `limited_pod` (a Pod
whose limit is measured both ways against R*t+B).
Rule: every name starts with the caller's prefix; every namespace a Pod makes
is removed on exit, also when the test fails.
Must not know: how Natra got onto the fake host.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from natra.kernel import attach, params
from natra.lab import iperf as iperf3
from natra.lab.cnichain import DEBIAN_CNI_DIR, Attachment, Chain
from natra.node import install as inst

CNI_VERSION = "1.0.0"  # Debian's plugins (1.1.1) speak up to 1.0.0
CONFLIST = "10-ptp.conflist"
SUBNET_POOL = ipaddress.ip_network("10.236.0.0/16")
IPERF_PORT = 5201
MAX_UINT32 = 2**32 - 1  # containerd's burst when the Pod sets none
LIMIT_BPS = 20_000_000
IPERF_SECONDS = 2
# Bits delivered in t seconds stay within R*t + B (B: Natra's clamped burst);
# iperf3's receiver clock starts a little after the first bytes, hence 2 %.
TIMING_SLACK = 1.02
MIN_SHARE = 0.5  # a limiter that throttles far below its rate is broken too
BOTH_WAYS = (("to the Pod", False), ("from the Pod", True))


def free_subnet() -> str:
    """A /24 of the pool that no route of this machine overlaps."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                            text=True).stdout
    used = [ipaddress.ip_network(w.split()[0], strict=False) for w in routes.splitlines()
            if w and w.split()[0][0].isdigit()]
    subnets = list(SUBNET_POOL.subnets(new_prefix=24))
    random.shuffle(subnets)
    for s in subnets:
        if not any(s.overlaps(u) for u in used):
            return str(s)
    raise RuntimeError("no free /24 in the test pool")


def fake_host(root: Path, name: str, ipam_dir: Path) -> bytes:
    """Make ROOT a node: Debian's plugins in its CNI bin dir and a ptp conflist
    named NAME in its conf dir. Returns the conflist's bytes."""
    conf_dir = root / inst.DEFAULT_CONF_DIR
    conf_dir.mkdir(parents=True)
    bin_dir = root / inst.DEFAULT_CNI_BIN_DIR
    bin_dir.mkdir(parents=True)
    for plugin in os.listdir(DEBIAN_CNI_DIR):
        os.symlink(os.path.join(DEBIAN_CNI_DIR, plugin), bin_dir / plugin)
    conflist = {"cniVersion": CNI_VERSION, "name": name, "plugins": [
        {"type": "ptp", "ipMasq": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": free_subnet()}]],
                  "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(ipam_dir)}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]}
    original = json.dumps(conflist, indent=1).encode()
    (conf_dir / CONFLIST).write_bytes(original)
    return original


def chain_of(root: Path) -> Chain:
    """The chain the fake host's conflist names, run from its bin dir."""
    conf = json.loads((root / inst.DEFAULT_CONF_DIR / CONFLIST).read_bytes())
    return Chain(conf, str(root / inst.DEFAULT_CNI_BIN_DIR))


class Pod:
    """A namespace Pod; removed with its chain DEL on exit."""

    def __init__(self, chain: Chain, name: str, limits: dict):
        self.chain, self.name = chain, name
        self.att = Attachment(
            container_id=f"{name}-c0ffee", netns=f"/var/run/netns/{name}",
            k8s_args={"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": name,
                      "K8S_POD_INFRA_CONTAINER_ID": f"{name}-c0ffee", "K8S_POD_UID": f"uid-{name}"},
            capability_args={"bandwidth": limits, "portMappings": [],
                             "io.kubernetes.cri.pod-annotations": {}})
        self.result: dict | None = None

    def __enter__(self) -> Pod:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        return self

    def add(self) -> dict:
        self.result = self.chain.add(self.att)
        return self.result

    @property
    def address(self) -> str:
        return self.result["ips"][0]["address"].split("/")[0]

    @property
    def host_veth(self) -> str:
        return next(i["name"] for i in self.result["interfaces"] if not i.get("sandbox"))

    def __exit__(self, *exc) -> None:
        try:
            if self.att.cached_result is not None:
                self.chain.delete(self.att)
        finally:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def remove_ifbs(pin_root: str) -> list[str]:
    """Delete every IFB Natra made for `pin_root` (its alias names the root) and return
    their names: a test's finally, so that a DEL that did not run leaves no device."""
    from natra.kernel import shapers

    alias = shapers.owner(pin_root)
    left = [name for _, name in socket.if_nameindex() if shapers.alias_of(name) == alias]
    for name in left:
        shapers.delete_ifb(name)
    return left


def hooked_programs(ifname: str) -> int:
    """Natra's programs on the veth: per direction, the programs on its tcx hook, or
    Natra's clsact filter when the hook has none (an `auto` ADD through the node agent
    is on clsact until the agent moves it to tcx; in the move's midst both hooks hold
    it, and the link is what stays)."""
    index = socket.if_nametoindex(ifname)
    count = 0
    for direction in (0, 1):
        on_tcx = len(attach.tcx_prog_ids(index, direction))
        count += on_tcx or int(attach.our_clsact_filter(index, direction) is not None)
    return count


def iperf(pod: Pod, reverse: bool, seconds: int) -> tuple[float, float]:
    """(bits received, seconds) of an iperf3 run between the host and the Pod's server."""
    done = iperf3.run(pod.name, pod.address, seconds, reverse=reverse, port=IPERF_PORT)
    return done.bits, done.seconds


@contextmanager
def limited_pod(root: Path, name: str, directions=BOTH_WAYS) -> Iterator[Pod]:
    """A Pod with containerd-shaped limits added through the fake node's chain
    (ptp, natra, portmap), its programs hooked, CHECK passing, its limit measured
    with iperf3 in `directions`; deleted through the chain when the block ends
    (the Pod's exit does it on failure)."""
    chain = chain_of(root)
    assert [p["type"] for p in chain.conflist["plugins"]] == ["ptp", "natra", "portmap"]
    limits = {"IngressRate": LIMIT_BPS, "IngressBurst": MAX_UINT32,
              "EgressRate": LIMIT_BPS, "EgressBurst": MAX_UINT32}
    burst = params.default_burst_bits(LIMIT_BPS, MAX_UINT32)
    with Pod(chain, name, limits) as pod:
        pod.add()
        assert hooked_programs(pod.host_veth) == 2
        chain.check(pod.att)
        for direction, reverse in directions:
            bits, seconds = iperf(pod, reverse, IPERF_SECONDS)
            assert bits <= (LIMIT_BPS * seconds + burst) * TIMING_SLACK, (direction, bits, seconds)
            assert bits >= MIN_SHARE * LIMIT_BPS * seconds, (direction, bits, seconds)
        yield pod
        chain.delete(pod.att)
