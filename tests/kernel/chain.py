"""The kernel tests' view of natra.lab.cnichain: Pods as nt4-* namespaces, calls as results.

Owns: only what tests need on top of the one chain runner (natra/lab/cnichain.py):
a throwaway bin dir per test (`natra` is this checkout's `python -m natra`, or
the node bundle when NATRA_PLUGIN names it), `Pod` (an Attachment whose
network namespace is /run/netns/<name>), a `Chain` whose add/check/delete
return every plugin call instead of raising (tests assert on codes, stdout
and stderr), and an ICMP `ping` (this machine has no ping binary).
Rule: nothing here runs a plugin itself; natra.lab.cnichain does. Every namespace
and directory made here is removed by the caller's cleanup (delete_netns,
remove_tree).
Must not know: what any plugin does inside.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time

from natra.lab import cnichain
from natra.lab.cnichain import (  # noqa: F401 - re-exported for the test modules
    CAPABILITY_ANNOTATIONS,
    DEBIAN_CNI_DIR,
    PLUGIN_TIMEOUT_S,
    Call,
    invoke,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFIX = "nt4-"
ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
PING_PAYLOAD = b"natra-nt4"

ptp = cnichain.ptp_entry
bridge = cnichain.bridge_entry


def make_bin_dir(plugin: str | None = None) -> str:
    """Debian's plugins and `natra`: `plugin` (an executable path), else $NATRA_PLUGIN, else
    this checkout's `python -m natra`."""
    return cnichain.make_bin_dir(plugin=plugin, prefix="nt4-cnibin-")


def frozen(bin_dir: str) -> bool:
    """True when the bin dir's `natra` is an executable linked in (the bundle), not the launcher."""
    return os.path.islink(os.path.join(bin_dir, "natra"))


def natra_entry(**settings) -> dict:
    """Natra's conflist entry; no log file unless a test asks for one."""
    return cnichain.natra_entry(**{"logFile": "", **settings})


class Pod(cnichain.Attachment):
    """A Pod sandbox: a network namespace plus what a runtime remembers of it."""

    def __init__(self, name: str, container_id: str, ifname: str = "eth0", k8s: dict[str, str] | None = None,
                 capability_args: dict | None = None, cached_result: dict | None = None):
        super().__init__(container_id, f"/run/netns/{name}", ifname, dict(k8s or {}),
                         dict(capability_args or {}), cached_result)
        self.name = name

    @property
    def k8s(self) -> dict[str, str]:
        return self.k8s_args


def make_pod(suffix: str, container_id: str | None = None, **extra) -> Pod:
    name = PREFIX + suffix
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    k8s = {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": name,
           "K8S_POD_INFRA_CONTAINER_ID": container_id or name, "K8S_POD_UID": f"uid-{name}"}
    return Pod(name=name, container_id=container_id or f"{name}-0123abcd", k8s=k8s, **extra)


def delete_netns(pod: Pod) -> None:
    subprocess.run(["ip", "netns", "del", pod.name], capture_output=True)


class Chain(cnichain.Chain):
    """cnichain.Chain whose whole-chain commands return the calls made and never raise."""

    def __init__(self, conflist: dict, bin_dir: str, version_caps: dict[str, str] | None = None):
        super().__init__(conflist, bin_dir, version_caps=version_caps or {})

    _run = cnichain.Chain.run

    def add(self, pod: Pod) -> list[Call]:
        return self.add_calls(pod)

    def check(self, pod: Pod) -> list[Call]:
        return self.check_calls(pod)

    def delete(self, pod: Pod) -> list[Call]:
        return self.delete_calls(pod)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping(address: str, attempts: int = 3, timeout_s: float = 1.0) -> bool:
    """ICMP echo from the host's namespace (this machine has no ping binary)."""
    ident = os.getpid() & 0xFFFF
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(timeout_s)
        for seq in range(attempts):
            header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, _checksum(header + PING_PAYLOAD), ident,
                                 seq) + PING_PAYLOAD
            sock.sendto(packet, (address, 0))
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    data, (src, _) = sock.recvfrom(2048)
                except TimeoutError:
                    break
                ihl = (data[0] & 0x0F) * 4
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
                if src == address and kind == ICMP_ECHO_REPLY and rid == ident and rseq == seq:
                    return True
    return False


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def natra_call(calls: list) -> object:
    """Natra's own call among a chain operation's calls."""
    return next(c for c in calls if c.plugin == "natra")


def host_veth(pod) -> str:
    """The host side of the Pod's veth, as the chain's cached result names it."""
    return next(i["name"] for i in pod.cached_result["interfaces"] if not i.get("sandbox")
                and i["name"].startswith("veth"))
