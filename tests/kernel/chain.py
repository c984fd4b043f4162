"""Drive a CNI chain as libcni does, for the plugin's kernel tests.

Owns: a throwaway CNI bin dir (Debian's real plugins plus a `natra` launcher
that runs `python3 -m natra` from this checkout), Pods as network namespaces
named nt4-*, and `Chain`, the runtime side of a conflist: `name` and the
conflist's `cniVersion` injected into every plugin config, prevResult threaded
through ADD, DEL in reverse order and CHECK in order with the cached result,
capability args placed in `runtimeConfig` only for declared capabilities,
CNI_ARGS with the K8S_* keys, STATUS/GC/VERSION per plugin.
Rule: every plugin is a real executable run as a subprocess; nothing faked.
Every namespace and directory made here is removed by `cleanup`.
Must not know: what any plugin does inside.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

DEBIAN_CNI_DIR = "/usr/lib/cni"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFIX = "nt4-"
PLUGIN_TIMEOUT_S = 60
CAPABILITY_ANNOTATIONS = "io.kubernetes.cri.pod-annotations"


def make_bin_dir() -> str:
    directory = tempfile.mkdtemp(prefix="nt4-cnibin-")
    for name in os.listdir(DEBIAN_CNI_DIR):
        os.symlink(os.path.join(DEBIAN_CNI_DIR, name), os.path.join(directory, name))
    launcher = os.path.join(directory, "natra")
    with open(launcher, "w") as f:
        f.write(f"#!/bin/sh\nPYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}} "
                f"exec {sys.executable} -m natra \"$@\"\n")
    os.chmod(launcher, 0o755)
    return directory


@dataclass
class Call:
    """One plugin invocation and what came back."""

    plugin: str
    command: str
    code: int
    stdout: str
    stderr: str

    @property
    def output(self):
        try:
            return json.loads(self.stdout) if self.stdout.strip() else None
        except json.JSONDecodeError:
            return self.stdout


def invoke(bin_dir: str, plugin: str, command: str, config: dict | None, env: dict[str, str],
           stdin: bytes | None = None) -> Call:
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
                "CNI_PATH": bin_dir, **env}
    data = stdin if stdin is not None else json.dumps(config or {}).encode()
    proc = subprocess.run([os.path.join(bin_dir, plugin)], input=data, env=full_env,
                          capture_output=True, timeout=PLUGIN_TIMEOUT_S)
    return Call(plugin, command, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@dataclass
class Pod:
    """A Pod sandbox: a network namespace plus what a runtime remembers of it."""

    name: str
    container_id: str
    ifname: str = "eth0"
    k8s: dict[str, str] = field(default_factory=dict)
    capability_args: dict = field(default_factory=dict)
    cached_result: dict | None = None

    @property
    def netns(self) -> str:
        return f"/run/netns/{self.name}"

    def cni_args(self) -> str:
        pairs = [*self.k8s.items(), ("IgnoreUnknown", "1")]  # order is the runtime's business
        return ";".join(f"{k}={v}" for k, v in pairs)

    @property
    def ip(self) -> str | None:
        for entry in (self.cached_result or {}).get("ips", []):
            return entry["address"].split("/")[0]
        return None


def make_pod(suffix: str, container_id: str | None = None, **extra) -> Pod:
    name = PREFIX + suffix
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    k8s = {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": name,
           "K8S_POD_INFRA_CONTAINER_ID": container_id or name, "K8S_POD_UID": f"uid-{name}"}
    return Pod(name=name, container_id=container_id or f"{name}-0123abcd", k8s=k8s, **extra)


def delete_netns(pod: Pod) -> None:
    subprocess.run(["ip", "netns", "del", pod.name], capture_output=True)


class Chain:
    """A conflist and the bin dir its plugins run from."""

    def __init__(self, conflist: dict, bin_dir: str, version_caps: dict[str, str] | None = None):
        """`version_caps`: plugin type -> highest version it speaks. Debian's plugins
        (1.1.1) stop at 1.0.0, whose result has the same shape as 1.1.0; a capped
        plugin gets the capped version, everything else the conflist's."""
        self.conflist = conflist
        self.bin_dir = bin_dir
        self.version_caps = version_caps or {}
        self.extra_env: dict[str, str] = {}
        self.calls: list[Call] = []

    @property
    def version(self) -> str:
        return self.conflist["cniVersion"]

    def plugin_config(self, plugin: dict, pod: Pod | None, prev: dict | None) -> dict:
        config = json.loads(json.dumps(plugin))
        config["name"] = self.conflist["name"]
        config["cniVersion"] = self.version_caps.get(plugin["type"], self.version)
        if prev is not None and config["cniVersion"] != self.version:
            prev = {**prev, "cniVersion": config["cniVersion"]}
        declared = plugin.get("capabilities") or {}
        runtime = {cap: value for cap, value in (pod.capability_args if pod else {}).items()
                   if declared.get(cap)}
        if runtime:
            config["runtimeConfig"] = runtime
        if prev is not None:
            config["prevResult"] = prev
        return config

    def env(self, pod: Pod) -> dict[str, str]:
        return {"CNI_CONTAINERID": pod.container_id, "CNI_NETNS": pod.netns, "CNI_IFNAME": pod.ifname,
                "CNI_ARGS": pod.cni_args(), **self.extra_env}

    def _run(self, plugin: dict, command: str, pod: Pod | None, prev: dict | None,
             extra: dict | None = None) -> Call:
        config = self.plugin_config(plugin, pod, prev)
        config.update(extra or {})
        call = invoke(self.bin_dir, plugin["type"], command, config, self.env(pod) if pod else {})
        self.calls.append(call)
        return call

    def add(self, pod: Pod) -> list[Call]:
        """ADD through every plugin; stops at the first failure. Caches the last result."""
        prev, calls = None, []
        for plugin in self.conflist["plugins"]:
            call = self._run(plugin, "ADD", pod, prev)
            calls.append(call)
            if call.code != 0:
                return calls
            prev = call.output
        pod.cached_result = prev
        return calls

    def delete(self, pod: Pod) -> list[Call]:
        """DEL in reverse order with the cached result; every plugin runs."""
        prev = pod.cached_result
        calls = [self._run(p, "DEL", pod, prev) for p in reversed(self.conflist["plugins"])]
        pod.cached_result = None
        return calls

    def check(self, pod: Pod) -> list[Call]:
        calls = []
        for plugin in self.conflist["plugins"]:
            call = self._run(plugin, "CHECK", pod, pod.cached_result)
            calls.append(call)
            if call.code != 0:
                break
        return calls

    def status(self, plugin_type: str) -> Call:
        return self._run(self._plugin(plugin_type), "STATUS", None, None)

    def gc(self, plugin_type: str, valid: list[Pod], key: str = "cni.dev/valid-attachments") -> Call:
        entries = [{"containerID": p.container_id, "ifname": p.ifname} for p in valid]
        return self._run(self._plugin(plugin_type), "GC", None, None, {key: entries})

    def version_of(self, plugin_type: str) -> Call:
        call = invoke(self.bin_dir, plugin_type, "VERSION", {"cniVersion": self.version}, {})
        self.calls.append(call)
        return call

    def _plugin(self, plugin_type: str) -> dict:
        return next(p for p in self.conflist["plugins"] if p["type"] == plugin_type)


def ptp(subnet: str, data_dir: str) -> dict:
    return {"type": "ptp", "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir,
                     "routes": [{"dst": "0.0.0.0/0"}]}}


def bridge(name: str, subnet: str, data_dir: str) -> dict:
    return {"type": "bridge", "bridge": name, "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir,
                     "routes": [{"dst": "0.0.0.0/0"}]}}


def natra_entry(**settings) -> dict:
    return {"type": "natra", "capabilities": {"bandwidth": True, CAPABILITY_ANNOTATIONS: True},
            "logFile": "", **settings}


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
            payload = b"natra-nt4"
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload
            sock.sendto(packet, (address, 0))
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    data, (src, _) = sock.recvfrom(2048)
                except TimeoutError:
                    break
                ihl = (data[0] & 0x0F) * 4
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
                if src == address and kind == 0 and rid == ident and rseq == seq:
                    return True
    return False


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
