"""Run a CNI network configuration list the way libcni does.

Owns: the runtime's side of the CNI protocol for local use (the demo, the
benchmarks and the tests): conflist semantics (name and cniVersion injected
into each plugin's config, prevResult threaded through ADD, DEL in reverse
order with the cached result, CHECK in order), capability arguments turned
into `runtimeConfig` only for the capabilities a plugin declares, CNI_ARGS
with the Kubernetes keys, and a bin dir holding the real Debian plugins next
to `natra`.
Rule: plugins are real executables run as subprocesses; nothing is faked.
Must not know: what any plugin does inside.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

DEBIAN_CNI_DIR = "/usr/lib/cni"
PLUGIN_TIMEOUT_S = 60


class ChainError(RuntimeError):
    """A plugin of the chain failed; carries its CNI error object."""

    def __init__(self, plugin: str, command: str, code: int, output: dict | str, stderr: str):
        super().__init__(f"{plugin} {command} exited {code}: {output} {stderr.strip()[-500:]}")
        self.plugin, self.command, self.code, self.output, self.stderr = plugin, command, code, output, stderr


def make_bin_dir(directory: str | None = None, python: str = sys.executable) -> str:
    """A CNI bin dir: links to Debian's plugins plus a `natra` launcher."""
    directory = directory or tempfile.mkdtemp(prefix="natra-cnibin-")
    for name in os.listdir(DEBIAN_CNI_DIR):
        target = os.path.join(directory, name)
        if not os.path.exists(target):
            os.symlink(os.path.join(DEBIAN_CNI_DIR, name), target)
    launcher = os.path.join(directory, "natra")
    src_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(launcher, "w") as f:
        f.write("#!/bin/sh\n"
                f"PYTHONPATH={src_root}${{PYTHONPATH:+:$PYTHONPATH}} exec {python} -m natra \"$@\"\n")
    os.chmod(launcher, 0o755)
    return directory


@dataclass
class Attachment:
    """One Pod's attachment to one network: what a runtime remembers."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    k8s_args: dict[str, str] = field(default_factory=dict)
    capability_args: dict = field(default_factory=dict)
    cached_result: dict | None = None

    def cni_args(self) -> str:
        pairs = [("IgnoreUnknown", "1"), *self.k8s_args.items()]
        return ";".join(f"{k}={v}" for k, v in pairs)


class Chain:
    """A conflist and the bin dir to run it from."""

    def __init__(self, conflist: dict, bin_dir: str, extra_env: dict[str, str] | None = None):
        self.conflist = conflist
        self.bin_dir = bin_dir
        self.extra_env = extra_env or {}

    def _plugin_config(self, plugin: dict, att: Attachment, prev: dict | None) -> dict:
        config = dict(plugin)
        config["name"] = self.conflist["name"]
        config["cniVersion"] = self.conflist["cniVersion"]
        runtime = {cap: att.capability_args[cap]
                   for cap, on in plugin.get("capabilities", {}).items()
                   if on and cap in att.capability_args}
        if runtime:
            config["runtimeConfig"] = runtime
        if prev is not None:
            config["prevResult"] = prev
        return config

    def _exec(self, plugin: dict, command: str, att: Attachment, prev: dict | None) -> dict | None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": att.container_id,
            "CNI_NETNS": att.netns,
            "CNI_IFNAME": att.ifname,
            "CNI_ARGS": att.cni_args(),
            "CNI_PATH": self.bin_dir,
            **self.extra_env,
        }
        stdin = json.dumps(self._plugin_config(plugin, att, prev)).encode()
        exe = os.path.join(self.bin_dir, plugin["type"])
        proc = subprocess.run([exe], input=stdin, env=env, capture_output=True, timeout=PLUGIN_TIMEOUT_S)
        out = proc.stdout.decode(errors="replace").strip()
        if proc.returncode != 0:
            try:
                parsed: dict | str = json.loads(out)
            except ValueError:
                parsed = out
            stderr = proc.stderr.decode(errors="replace")
            raise ChainError(plugin["type"], command, proc.returncode, parsed, stderr)
        return json.loads(out) if out else None

    def add(self, att: Attachment) -> dict:
        prev = None
        for plugin in self.conflist["plugins"]:
            prev = self._exec(plugin, "ADD", att, prev)
        att.cached_result = prev
        return prev

    def check(self, att: Attachment) -> None:
        for plugin in self.conflist["plugins"]:
            self._exec(plugin, "CHECK", att, att.cached_result)

    def delete(self, att: Attachment) -> None:
        for plugin in reversed(self.conflist["plugins"]):
            self._exec(plugin, "DEL", att, att.cached_result)
        att.cached_result = None


def ptp_conflist(name: str, subnet: str, *, then: list[dict] | None = None, version: str = "1.0.0") -> dict:
    """`ptp` with host-local IPAM and a default route, followed by `then`."""
    ptp = {
        "type": "ptp",
        "ipMasq": False,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": f"/run/natra-ipam/{name}"},
    }
    return {"cniVersion": version, "name": name, "plugins": [ptp, *(then or [])]}


def natra_entry(**defaults) -> dict:
    return {"type": "natra", "capabilities": {"bandwidth": True, "io.kubernetes.cri.pod-annotations": True},
            **defaults}


def bandwidth_entry() -> dict:
    return {"type": "bandwidth", "capabilities": {"bandwidth": True}}


def remove_bin_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
