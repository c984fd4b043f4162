"""One private containerd node: its files, its process, and taking it all down again.

Owns: the node's layout (every path under one private directory), containerd's
config (version 2 schema, settings measured to run sandboxes here, docs/cri.md;
one runtime handler per network), the CNI conflists (ptp -> a limiter) and bin
dir (Debian's plugins linked, `natra` and `bandwidth` launchers that may record
every call), the recorded calls, the containerd child process and the
teardown of what it leaves (CNI plugins still running, shims and their
children, mounts, the directory, orphaned nodes of killed runs).
Rule: config text, conflists and launchers are pure functions; processes and
files are touched only by ContainerdNode and the teardown functions, which
never raise for what is already gone.
Must not know: CRI messages (natra.lab.cri.protocol), the image's bytes
(natra.lab.cri.image), the demo.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from natra.lab.cri import RuntimeUnavailable
from natra.lab.cri.protocol import CriCallError

CONTAINERD, CTR = "containerd", "ctr"
NEEDED_TOOLS = (CONTAINERD, CTR, "runc", "containerd-shim-runc-v2", "gcc")
CRI_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin uses
DEBIAN_CNI_DIR = Path("/usr/lib/cni")
RUNTIME_PLUGINS = ("ptp", "host-local", "loopback", "bandwidth")
SANDBOX_IMAGE = "natra.test/pause:offline"
NETWORK_NAME = "natra-cri"
DEMO_POD_SUBNET = "10.99.0.0/16"  # no other user of this repository takes it
CNI_VERSION = "1.0.0"
LIMITER_NATRA, LIMITER_BANDWIDTH = "natra", "bandwidth"
LIMITER_CAPABILITIES = {"bandwidth": True, "io.kubernetes.cri.pod-annotations": True}
POD_NAMESPACE = "default"
LAUNCHER_MODE = 0o755
DEFAULT_HANDLER = "runc"  # the runtime handler (RuntimeClass) Pods get when they name none

START_TIMEOUT_S = 30.0  # containerd up and its CRI conditions true
STOP_GRACE_S = 10.0  # SIGTERM to SIGKILL
POLL_S = 0.1
CTR_TIMEOUT_S = 60.0
PLUGIN_TIMEOUT_S = 30.0  # a CNI plugin still running when containerd stops

# Plugins containerd would otherwise load that reach outside our directories
# or need kernel features we do not use. io.containerd.runtime.v1.linux cannot
# be disabled: the CRI plugin fails to load without it.
DISABLED_PLUGINS = (
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.overlayfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)


@dataclass(frozen=True)
class NodeLayout:
    """Every path of one private node, all under `base`."""

    base: Path

    root = property(lambda self: self.base / "root")
    state = property(lambda self: self.base / "state")
    socket = property(lambda self: self.base / "containerd.sock")
    config = property(lambda self: self.base / "config.toml")
    log = property(lambda self: self.base / "containerd.log")
    bin_dir = property(lambda self: self.base / "cni-bin")
    conf_dir = property(lambda self: self.base / "cni-conf")
    ipam_dir = property(lambda self: self.base / "ipam")
    captures = property(lambda self: self.base / "captures")

    def conf_dir_for(self, handler: str) -> Path:
        """CNI conf dir of a runtime handler; the default handler ("") uses conf_dir."""
        return self.conf_dir if handler in ("", DEFAULT_HANDLER) else self.base / f"cni-conf-{handler}"
    netns_dir = property(lambda self: self.state / "io.containerd.grpc.v1.cri" / "netns")

    def make(self) -> None:
        for d in (self.root, self.state, self.bin_dir, self.conf_dir, self.ipam_dir, self.captures):
            d.mkdir(parents=True, exist_ok=True)


def _runc_handler(layout: NodeLayout, handler: str) -> list[str]:
    """One runtime handler running runc; a non-default one reads its own CNI conf dir, so a
    Pod picks its network (and limiter) by its RuntimeClass, as on a Kubernetes node."""
    q = json.dumps
    section = f'[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{handler}'
    own_network = [] if handler == DEFAULT_HANDLER else [
        f"  cni_conf_dir = {q(str(layout.conf_dir_for(handler)))}", "  cni_max_conf_num = 1"]
    return [section + "]", '  runtime_type = "io.containerd.runc.v2"', *own_network,
            section + ".options]", "  NoNewKeyring = true", f"  Root = {q(str(layout.state / 'runc'))}"]


def containerd_config(layout: NodeLayout, sandbox_image: str = SANDBOX_IMAGE,
                      handlers: tuple[str, ...] = ()) -> str:
    """config.toml (version 2 schema) for containerd 1.6, every path private; `handlers`
    are runtime handlers beside the default one, each with its own CNI network."""
    q = json.dumps  # a JSON string is a valid TOML basic string
    cri = '[plugins."io.containerd.grpc.v1.cri"'
    runtimes = [line for h in (DEFAULT_HANDLER, *handlers) for line in _runc_handler(layout, h)]
    return "\n".join([
        "version = 2",
        f"root = {q(str(layout.root))}",
        f"state = {q(str(layout.state))}",
        "disabled_plugins = [" + ", ".join(q(p) for p in DISABLED_PLUGINS) + "]",
        "[grpc]",
        f"  address = {q(str(layout.socket))}",
        "[ttrpc]",
        f"  address = {q(str(layout.socket) + '.ttrpc')}",
        '[plugins."io.containerd.internal.v1.opt"]',
        f"  path = {q(str(layout.root / 'opt'))}",
        cri + "]",
        f"  sandbox_image = {q(sandbox_image)}",
        "  disable_cgroup = true",
        "  restrict_oom_score_adj = true",
        "  disable_apparmor = true",
        "  netns_mounts_under_state_dir = true",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        cri + ".containerd]",
        '  snapshotter = "native"',
        f"  default_runtime_name = {q(DEFAULT_HANDLER)}",
        *runtimes,
        cri + ".cni]",
        f"  bin_dir = {q(str(layout.bin_dir))}",
        f"  conf_dir = {q(str(layout.conf_dir))}",
        "  max_conf_num = 1",
        "",
    ])


def limiter_entry(limiter: str, layout: NodeLayout, bpffs_root: str | None) -> dict:
    """The conflist entry after ptp: Natra (private state, log and pins) or the standard plugin."""
    if limiter == LIMITER_BANDWIDTH:
        return {"type": "bandwidth", "capabilities": LIMITER_CAPABILITIES}
    entry = {"type": "natra", "capabilities": LIMITER_CAPABILITIES,
             "stateDir": str(layout.base / "natra-state"), "logFile": str(layout.base / "natra.log")}
    if bpffs_root:
        entry["bpffsRoot"] = bpffs_root
    return entry


def conflist(layout: NodeLayout, limiter: dict, pod_subnet: str = DEMO_POD_SUBNET,
             name: str = NETWORK_NAME) -> dict:
    """ptp (host-local IPAM, default route in the Pod) then the limiter."""
    ptp = {"type": "ptp", "ipMasq": False,
           "ipam": {"type": "host-local", "subnet": pod_subnet, "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.ipam_dir)}}
    return {"cniVersion": CNI_VERSION, "name": name, "plugins": [ptp, limiter]}


def networks(limiter: str, handlers: dict[str, str], pod_subnet: str) -> list[tuple[str, str, str, str]]:
    """(runtime handler, limiter, network name, subnet) per network: the default handler keeps
    the whole `pod_subnet` when alone, else every network gets an equal, disjoint part of it."""
    wanted = [(DEFAULT_HANDLER, limiter), *sorted(handlers.items())]
    if len(wanted) == 1:
        return [(DEFAULT_HANDLER, limiter, NETWORK_NAME, pod_subnet)]
    parts = list(ipaddress.ip_network(pod_subnet).subnets(prefixlen_diff=(len(wanted) - 1).bit_length()))
    return [(h, lim, NETWORK_NAME if h == DEFAULT_HANDLER else f"{NETWORK_NAME}-{h}", str(part))
            for (h, lim), part in zip(wanted, parts, strict=False)]


# A plugin launcher: optionally record the call (stdin, environment), then run
# the plugin on that same stdin. containerd runs plugins with a minimal
# environment, hence absolute paths and explicit exports.
LAUNCHER = """#!/bin/sh
# Written by natra/lab/cri/node.py.
{record}{exports}exec {command} "$@"{stdin}
"""
RECORD = """rec="{captures}/$(date +%s%N)-$$-$CNI_COMMAND"
cat > "$rec.stdin"
env > "$rec.env"
"""


def launcher_text(command: list[str], env: dict[str, str], captures: Path | None) -> str:
    return LAUNCHER.format(
        record=RECORD.format(captures=captures) if captures else "",
        exports="".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()),
        command=" ".join(shlex.quote(c) for c in command),
        stdin=' < "$rec.stdin"' if captures else "",
    )


def natra_command() -> list[str]:
    return [sys.executable, "-m", "natra"]


def natra_env(bpffs_root: str | None) -> dict[str, str]:
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    if bpffs_root:
        env["NATRA_BPFFS_ROOT"] = bpffs_root
    return env


def populate_bin_dir(layout: NodeLayout, bpffs_root: str | None, record: bool) -> None:
    """ptp, host-local, loopback linked from Debian; bandwidth and natra launchers."""
    captures = layout.captures if record else None
    for name in RUNTIME_PLUGINS:
        target = layout.bin_dir / name
        if name == "bandwidth":
            target.write_text(launcher_text([str(DEBIAN_CNI_DIR / name)], {}, captures))
            target.chmod(LAUNCHER_MODE)
        else:
            target.symlink_to(DEBIAN_CNI_DIR / name)
    natra = layout.bin_dir / "natra"
    natra.write_text(launcher_text(natra_command(), natra_env(bpffs_root), captures))
    natra.chmod(LAUNCHER_MODE)


@dataclass(frozen=True)
class CapturedCall:
    """One CNI call as the runtime made it (recording nodes only)."""

    command: str
    stdin: dict
    env: dict[str, str]


def captured_calls(layout: NodeLayout) -> list[CapturedCall]:
    """Every recorded call, oldest first."""
    calls = []
    for stdin_file in sorted(layout.captures.glob("*.stdin")):
        try:
            stdin = json.loads(stdin_file.read_text() or "{}")
            lines = stdin_file.with_suffix(".env").read_text().splitlines()
        except (OSError, ValueError):
            continue  # a call still being written
        env = dict(line.split("=", 1) for line in lines if "=" in line)
        calls.append(CapturedCall(env.get("CNI_COMMAND", ""), stdin, env))
    return calls


# ---- the containerd process and its teardown ---------------------------------------------------

def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def shim_pids(address: str) -> list[int]:
    """Shims of the containerd serving `address` (their argv names it)."""
    return [pid for pid in _pids()
            if (argv := _argv(pid)) and argv[0].endswith("containerd-shim-runc-v2") and address in argv]


def kill_shims(address: str) -> None:
    """SIGKILL those shims and, first, the sandbox processes they run (their
    children), which would otherwise outlive them as orphans."""
    shims = shim_pids(address)
    children = [pid for pid in _pids() if _ppid(pid) in shims]
    for pid in children + shims:
        _kill(pid)


def mounts_under(base: Path) -> list[str]:
    """Mount points at or below `base`, deepest first."""
    prefix = str(base.resolve())
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True)


def unmount_under(base: Path) -> None:
    for point in mounts_under(base):
        subprocess.run(["umount", "-l", point], capture_output=True)


def remove_node_dir(base: Path) -> bool:
    """Remove the private directory once nothing is mounted under it."""
    if mounts_under(base):
        return False
    shutil.rmtree(base, ignore_errors=True)
    return True


def reap_stale_nodes(tmp: Path, prefix: str) -> list[Path]:
    """Remove what a killed earlier run left under `tmp/prefix*`: its orphaned
    containerd (parent gone), that node's shims, mounts and directory."""
    removed = []
    for base in sorted(tmp.glob(prefix + "*")):
        layout = NodeLayout(base)
        if not layout.config.exists():
            continue
        owners = [pid for pid in _pids() if _argv(pid)[:3] == [CONTAINERD, "--config", str(layout.config)]]
        if any(_ppid(pid) != 1 for pid in owners):
            continue  # a live run owns it
        for pid in owners:
            _kill(pid)
        kill_shims(str(layout.socket))
        unmount_under(base)
        if remove_node_dir(base):
            removed.append(base)
    return removed


class ContainerdNode:
    """One containerd child process serving CRI on a private socket."""

    def __init__(self, layout: NodeLayout):
        self.layout = layout
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, sandbox_image: str = SANDBOX_IMAGE, handlers: tuple[str, ...] = ()) -> None:
        self.layout.config.write_text(containerd_config(self.layout, sandbox_image, handlers))
        self._log = open(self.layout.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([CONTAINERD, "--config", str(self.layout.config), "--log-level", "info"],
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def log_lines(self) -> list[str]:
        try:
            return self.layout.log.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def wait_ready(self, conditions, timeout_s: float = START_TIMEOUT_S) -> None:
        """Poll `conditions()` (CRI Status: type -> (ok, why)) until all are true."""
        deadline = time.monotonic() + timeout_s
        last = "socket never appeared"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = "\n".join(self.log_lines()[-15:])
                raise RuntimeUnavailable(f"containerd exited with {self.proc.returncode}:\n{tail}")
            if self.layout.socket.exists():
                try:
                    conds = conditions()
                except CriCallError as err:
                    if err.code == "UNIMPLEMENTED":  # serving, but its CRI plugin failed to load
                        why = "\n".join(x for x in self.log_lines() if "failed to load plugin" in x)
                        raise RuntimeUnavailable(f"containerd runs without its CRI plugin:\n{why}") from err
                    last = str(err)
                else:
                    if conds and all(ok for ok, _ in conds.values()):
                        return
                    last = repr(conds)
            time.sleep(POLL_S)
        tail = "\n".join(self.log_lines()[-15:])
        raise RuntimeUnavailable(f"CRI not ready after {timeout_s} s ({last}):\n{tail}")

    def ctr(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([CTR, "--address", str(self.layout.socket), "-n", CRI_NAMESPACE, *args],
                              capture_output=True, text=True, timeout=CTR_TIMEOUT_S)

    def import_image(self, archive: Path) -> None:
        proc = self.ctr("images", "import", "--snapshotter", "native", str(archive))
        if proc.returncode != 0:
            raise RuntimeUnavailable(f"ctr images import {archive}: {proc.stderr.strip()}")

    def stop(self) -> None:
        """SIGTERM, SIGKILL after the grace period; then the CNI plugins it was still running
        (their own time to finish: killed mid-ADD they could leave state behind), its shims
        and mounts."""
        plugins: list[int] = []
        if self.proc is not None and self.proc.poll() is None:
            plugins = [pid for pid in _pids() if _ppid(pid) == self.proc.pid]
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        deadline = time.monotonic() + PLUGIN_TIMEOUT_S
        while plugins and time.monotonic() < deadline:
            time.sleep(POLL_S)
            plugins = [pid for pid in plugins if Path(f"/proc/{pid}").exists()]
        for pid in plugins:
            _kill(pid)
        kill_shims(str(self.layout.socket))
        unmount_under(self.layout.base)
