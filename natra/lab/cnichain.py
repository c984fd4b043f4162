"""Run a CNI network configuration list the way libcni does.

Owns: the runtime's side of the CNI protocol for local use (the demo, the
benchmarks, the soak and every test that drives plugins): conflist semantics
(name and cniVersion injected into each plugin's config, prevResult threaded
through ADD, DEL in reverse order with the cached result, CHECK in order),
capability arguments turned into `runtimeConfig` only for the capabilities a
plugin declares, CNI_ARGS with the Kubernetes keys, STATUS/GC/VERSION per
plugin, per-plugin version caps (Debian's plugins stop at 1.0.0), and a bin
dir holding the real Debian plugins next to `natra`: a launcher of this
checkout's `python -m natra`, or the node bundle named by NATRA_PLUGIN.
Rule: plugins are real executables run as subprocesses; nothing is faked.
`run` reports every call as a `Call` and never raises on a plugin's failure;
`add`/`check`/`delete` raise `ChainError` at the first failing plugin.
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
NATRA_PLUGIN_ENV = "NATRA_PLUGIN"  # absolute path of a natra executable (the node bundle) for bin dirs
CAPABILITY_BANDWIDTH = "bandwidth"
CAPABILITY_ANNOTATIONS = "io.kubernetes.cri.pod-annotations"
# Debian's containernetworking-plugins 1.1.1 speak up to 1.0.0; a 1.1.0 result has the same
# shape, so a 1.1.0 conflist runs them at 1.0.0 (docs/cni.md).
DEBIAN_VERSION_CAPS = {"ptp": "1.0.0", "bridge": "1.0.0", "bandwidth": "1.0.0", "portmap": "1.0.0"}
DEFAULT_IPAM_DIR = "/run/natra-ipam"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


class ChainError(RuntimeError):
    """A plugin of the chain failed; carries its CNI error object."""

    def __init__(self, plugin: str, command: str, code: int, output: dict | str, stderr: str):
        super().__init__(f"{plugin} {command} exited {code}: {output} {stderr.strip()[-500:]}")
        self.plugin, self.command, self.code, self.output, self.stderr = plugin, command, code, output, stderr


@dataclass
class Call:
    """One plugin invocation and what came back."""

    plugin: str
    command: str
    code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def output(self):
        """The parsed stdout; the raw text when it is not JSON; None when empty."""
        try:
            return json.loads(self.stdout) if self.stdout.strip() else None
        except json.JSONDecodeError:
            return self.stdout

    def error(self) -> ChainError:
        return ChainError(self.plugin, self.command, self.code, self.output, self.stderr)


def invoke(bin_dir: str, plugin: str, command: str, config: dict | None, env: dict[str, str],
           stdin: bytes | None = None, timeout_s: float = PLUGIN_TIMEOUT_S) -> Call:
    """Run one plugin executable from `bin_dir` with `config` (or raw `stdin`) on stdin."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
                "CNI_PATH": bin_dir, **env}
    data = stdin if stdin is not None else json.dumps(config or {}).encode()
    proc = subprocess.run([os.path.join(bin_dir, plugin)], input=data, env=full_env,
                          capture_output=True, timeout=timeout_s)
    return Call(plugin, command, proc.returncode, proc.stdout.decode(errors="replace"),
                proc.stderr.decode(errors="replace"))


def make_bin_dir(directory: str | None = None, python: str = sys.executable, *,
                 plugin: str | None = None, prefix: str = "natra-cnibin-") -> str:
    """A CNI bin dir: links to Debian's plugins plus `natra`.

    `natra` is a link to `plugin` (or to $NATRA_PLUGIN when set, e.g. the node
    bundle dist/natra/natra), else a launcher running `python -m natra` from
    this checkout."""
    directory = directory or tempfile.mkdtemp(prefix=prefix)
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(DEBIAN_CNI_DIR):
        target = os.path.join(directory, name)
        if not os.path.lexists(target):
            os.symlink(os.path.join(DEBIAN_CNI_DIR, name), target)
    natra = os.path.join(directory, "natra")
    if os.path.lexists(natra):
        os.remove(natra)
    plugin = plugin or os.environ.get(NATRA_PLUGIN_ENV) or None
    if plugin:
        if not os.path.isabs(plugin) or not os.access(plugin, os.X_OK):
            raise FileNotFoundError(f"{NATRA_PLUGIN_ENV}: {plugin!r} is not an executable absolute path")
        os.symlink(plugin, natra)
        return directory
    src_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(natra, "w") as f:
        f.write("#!/bin/sh\n"
                f"PYTHONPATH={src_root}${{PYTHONPATH:+:$PYTHONPATH}} exec {python} -m natra \"$@\"\n")
    os.chmod(natra, 0o755)
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
        pairs = [("IgnoreUnknown", "1"), *self.k8s_args.items()]  # any order is valid
        return ";".join(f"{k}={v}" for k, v in pairs)

    @property
    def ip(self) -> str | None:
        """The first address of the cached result, without its prefix length."""
        for entry in (self.cached_result or {}).get("ips", []):
            return entry["address"].split("/")[0]
        return None

    @property
    def host_ifname(self) -> str | None:
        """The first host-side interface of the cached result (the veth, or a bridge)."""
        return next((i["name"] for i in (self.cached_result or {}).get("interfaces", [])
                     if not i.get("sandbox")), None)


class Chain:
    """A conflist and the bin dir to run it from.

    `version_caps`: plugin type -> highest version it speaks; a capped plugin
    runs at the lower of the cap and the conflist's version (and gets a
    prevResult relabelled to it), every other plugin at the conflist's."""

    def __init__(self, conflist: dict, bin_dir: str, extra_env: dict[str, str] | None = None,
                 version_caps: dict[str, str] | None = None):
        self.conflist = conflist
        self.bin_dir = bin_dir
        self.extra_env = dict(extra_env or {})
        self.version_caps = DEBIAN_VERSION_CAPS if version_caps is None else version_caps

    @property
    def version(self) -> str:
        return self.conflist["cniVersion"]

    def plugin_version(self, plugin_type: str) -> str:
        cap = self.version_caps.get(plugin_type)
        return cap if cap and _version_key(cap) < _version_key(self.version) else self.version

    def plugin_config(self, plugin: dict, att: Attachment | None, prev: dict | None) -> dict:
        """What the plugin reads on stdin."""
        config = json.loads(json.dumps(plugin))
        config["name"] = self.conflist["name"]
        config["cniVersion"] = self.plugin_version(plugin["type"])
        declared = plugin.get("capabilities") or {}
        runtime = {cap: value for cap, value in (att.capability_args if att else {}).items()
                   if declared.get(cap)}
        if runtime:
            config["runtimeConfig"] = runtime
        if prev is not None:
            config["prevResult"] = {**prev, "cniVersion": config["cniVersion"]} \
                if config["cniVersion"] != self.version else prev
        return config

    _plugin_config = plugin_config  # the older name

    def env(self, att: Attachment) -> dict[str, str]:
        return {"CNI_CONTAINERID": att.container_id, "CNI_NETNS": att.netns, "CNI_IFNAME": att.ifname,
                "CNI_ARGS": att.cni_args(), **self.extra_env}

    def run(self, plugin: dict, command: str, att: Attachment | None, prev: dict | None,
            extra: dict | None = None) -> Call:
        """One plugin call; `extra` keys are merged into its config (GC's attachment list)."""
        config = self.plugin_config(plugin, att, prev)
        config.update(extra or {})
        return invoke(self.bin_dir, plugin["type"], command, config,
                      self.env(att) if att else dict(self.extra_env))

    def _exec(self, plugin: dict, command: str, att: Attachment, prev: dict | None) -> dict | None:
        """One plugin call that must succeed: its parsed output, else ChainError."""
        call = self.run(plugin, command, att, prev)
        if not call.ok:
            raise call.error()
        return call.output

    # ---- whole-chain commands that raise at the first failure ---------------------------------

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

    # ---- whole-chain commands that report every call ------------------------------------------

    def add_calls(self, att: Attachment) -> list[Call]:
        """ADD through every plugin, stopping at the first failure; caches the last result."""
        prev, calls = None, []
        for plugin in self.conflist["plugins"]:
            calls.append(self.run(plugin, "ADD", att, prev))
            if not calls[-1].ok:
                return calls
            prev = calls[-1].output
        att.cached_result = prev
        return calls

    def check_calls(self, att: Attachment) -> list[Call]:
        """CHECK in order with the cached result, stopping at the first failure."""
        calls = []
        for plugin in self.conflist["plugins"]:
            calls.append(self.run(plugin, "CHECK", att, att.cached_result))
            if not calls[-1].ok:
                break
        return calls

    def delete_calls(self, att: Attachment) -> list[Call]:
        """DEL in reverse order with the cached result; every plugin runs."""
        calls = [self.run(p, "DEL", att, att.cached_result) for p in reversed(self.conflist["plugins"])]
        att.cached_result = None
        return calls

    # ---- per-plugin commands ------------------------------------------------------------------

    def plugin(self, plugin_type: str) -> dict:
        return next(p for p in self.conflist["plugins"] if p["type"] == plugin_type)

    def status(self, plugin_type: str) -> Call:
        return self.run(self.plugin(plugin_type), "STATUS", None, None)

    def gc(self, plugin_type: str, valid: list[Attachment], key: str = "cni.dev/valid-attachments") -> Call:
        entries = [{"containerID": a.container_id, "ifname": a.ifname} for a in valid]
        return self.run(self.plugin(plugin_type), "GC", None, None, {key: entries})

    def version_of(self, plugin_type: str) -> Call:
        return invoke(self.bin_dir, plugin_type, "VERSION", {"cniVersion": self.version}, {})


def ptp_entry(subnet: str, data_dir: str) -> dict:
    """`ptp` with host-local IPAM in `subnet` and a default route in the Pod."""
    return {"type": "ptp", "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir,
                     "routes": [{"dst": "0.0.0.0/0"}]}}


def bridge_entry(name: str, subnet: str, data_dir: str) -> dict:
    """`bridge` (gateway, no masquerade) with host-local IPAM and a default route."""
    return {**ptp_entry(subnet, data_dir), "type": "bridge", "bridge": name, "isGateway": True}


def ptp_conflist(name: str, subnet: str, *, then: list[dict] | None = None, version: str = "1.0.0",
                 ipam_dir: str = DEFAULT_IPAM_DIR) -> dict:
    """`ptp` with host-local IPAM (its data under `ipam_dir`/`name`), followed by `then`."""
    ptp = ptp_entry(subnet, os.path.join(ipam_dir, name))
    return {"cniVersion": version, "name": name, "plugins": [ptp, *(then or [])]}


def natra_entry(**defaults) -> dict:
    return {"type": "natra", "capabilities": {CAPABILITY_BANDWIDTH: True, CAPABILITY_ANNOTATIONS: True},
            **defaults}


def bandwidth_entry() -> dict:
    return {"type": "bandwidth", "capabilities": {CAPABILITY_BANDWIDTH: True}}


def remove_bin_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
