"""Demo Pods as real CRI sandboxes: a private containerd whose CRI runs ptp -> natra.

Owns everything needed to run Pods the way a Kubernetes node does, without a
kubelet or a registry:
  - the sandbox image, built offline: a static `pause` (gcc -static) packed as
    an OCI image layout tarball (oci-layout, index.json, sha256-named blobs);
  - a containerd 1.6 node whose every path (root, state, sockets, runc root,
    CNI dirs, IPAM data, the Pods' netns) lives under one private directory,
    with the settings measured to run sandboxes on the project's machines
    (docs/cri.md);
  - the CNI chain ptp (host-local IPAM) -> limiter (`natra`, or the standard
    `bandwidth` for comparison), optionally recording every call's stdin and
    environment;
  - a minimal CRI client (protobuf written by hand for the six RuntimeService
    calls used, field numbers from k8s.io/cri-api runtime/v1; only grpcio is
    needed, imported when a node starts);
  - `DemoRuntime.start_sandbox(name, annotations) -> (netns_path, ip)` and
    `stop_sandbox(name)`, and a teardown that removes all of it.

Rules: nothing touches containerd's default paths or /etc/cni; close() never
raises and leaves no process, mount, netns or pin behind (sandboxes first,
then containerd, then its shims with their children, then mounts under the
private directory). Decisions (config text, conflist, image bytes, protobuf
bytes) are pure functions; processes and files are touched only by
ContainerdNode and DemoRuntime.
Must not know: the demo's traffic or what it measures; Natra's internals
(the plugin is an executable like any other). No numpy, scapy or pyroute2.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# ---- names and limits --------------------------------------------------------------------------

CONTAINERD, CTR = "containerd", "ctr"
NEEDED_TOOLS = (CONTAINERD, CTR, "runc", "containerd-shim-runc-v2", "gcc")
CRI_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin uses
DEBIAN_CNI_DIR = Path("/usr/lib/cni")
RUNTIME_PLUGINS = ("ptp", "host-local", "loopback", "bandwidth")
SANDBOX_IMAGE = "natra.test/pause:offline"
NETWORK_NAME = "natra-cri"
DEMO_POD_SUBNET = "10.97.0.0/16"
CNI_VERSION = "1.0.0"
LIMITER_NATRA, LIMITER_BANDWIDTH = "natra", "bandwidth"
LIMITER_CAPABILITIES = {"bandwidth": True, "io.kubernetes.cri.pod-annotations": True}
POD_NAMESPACE = "default"

START_TIMEOUT_S = 30.0  # containerd up and its CRI conditions true
STOP_GRACE_S = 10.0  # SIGTERM to SIGKILL
POLL_S = 0.1
CTR_TIMEOUT_S = 60.0
CRI_CALL_TIMEOUT_S = 60.0  # RunPodSandbox runs the whole CNI chain

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


class RuntimeUnavailable(RuntimeError):
    """containerd cannot run sandboxes here; the message says why."""


class CriCallError(RuntimeError):
    """A CRI call failed: `code` is the gRPC status name, `details` the runtime's text."""

    def __init__(self, call: str, code: str, details: str):
        super().__init__(f"CRI {call}: {code}: {details}")
        self.call, self.code, self.details = call, code, details


def why_unavailable() -> str | None:
    """None when this machine can run a DemoRuntime, else the reason."""
    if os.geteuid() != 0:
        return "containerd sandboxes need root"
    missing = [t for t in NEEDED_TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install containerd runc gcc)"
    lost = [p for p in RUNTIME_PLUGINS if not (DEBIAN_CNI_DIR / p).exists()]
    if lost:
        return f"missing CNI plugins {', '.join(lost)} (apt-get install containernetworking-plugins)"
    try:
        import grpc  # noqa: F401
    except ImportError:
        return "python module grpc missing (pip install grpcio)"
    return None


# ---- the sandbox image -------------------------------------------------------------------------

PAUSE_C = r"""
#include <signal.h>
#include <unistd.h>

/* PID 1 of a Pod sandbox: hold the namespaces, leave on SIGTERM/SIGINT.
   As PID 1 it would ignore signals without handlers, so install them. */
static void leave(int sig) { (void)sig; _exit(0); }

int main(void) {
    signal(SIGTERM, leave);
    signal(SIGINT, leave);
    for (;;)
        pause();
}
"""

OCI_LAYOUT_VERSION = "1.0.0"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME_KEY = "org.opencontainers.image.ref.name"
CONTAINERD_NAME_KEY = "io.containerd.image.name"  # the full name ctr import gives the image
PAUSE_PATH_IN_IMAGE = "pause"
EXEC_MODE, FILE_MODE = 0o755, 0o644
FIXED_MTIME = 0  # deterministic archives


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, **extra) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data), **extra}


def build_pause(workdir: Path, cc: str = "gcc") -> Path:
    """Compile the static pause binary in `workdir`; returns its path."""
    src, out = workdir / "pause.c", workdir / "pause"
    src.write_text(PAUSE_C)
    proc = subprocess.run([cc, "-static", "-Os", "-o", str(out), str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeUnavailable(f"{cc} -static pause.c (is libc6-dev installed?): {proc.stderr.strip()}")
    return out


def _tar_bytes(members: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, FIXED_MTIME
            info.uid = info.gid = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_blobs(pause_binary: bytes, arch: str = "amd64") -> tuple[Blob, Blob, Blob]:
    """(layer, config, manifest) of a one-layer image whose entry point is /pause."""
    layer = Blob(MEDIA_LAYER, _tar_bytes([(PAUSE_PATH_IN_IMAGE, pause_binary, EXEC_MODE)]))
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Entrypoint": ["/" + PAUSE_PATH_IN_IMAGE]},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},  # uncompressed: diff ID = digest
    }
    config_blob = Blob(MEDIA_CONFIG, json.dumps(config, sort_keys=True).encode())
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": config_blob.descriptor(), "layers": [layer.descriptor()]}
    return layer, config_blob, Blob(MEDIA_MANIFEST, json.dumps(manifest, sort_keys=True).encode())


def oci_layout_tar(pause_binary: bytes, image_name: str, arch: str = "amd64") -> bytes:
    """The OCI image layout, as a tar archive, naming the image `image_name`."""
    layer, config, manifest = image_blobs(pause_binary, arch)
    last = image_name.rsplit("/", 1)[-1]
    tag = last.rsplit(":", 1)[1] if ":" in last else "latest"
    index = {"schemaVersion": 2,
             "manifests": [manifest.descriptor(annotations={REF_NAME_KEY: tag,
                                                            CONTAINERD_NAME_KEY: image_name})]}
    members = [("oci-layout", json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode(), FILE_MODE),
               ("index.json", json.dumps(index, sort_keys=True).encode(), FILE_MODE)]
    for blob in (layer, config, manifest):
        members.append(("blobs/sha256/" + blob.digest.split(":", 1)[1], blob.data, FILE_MODE))
    return _tar_bytes(members)


# ---- the node's files --------------------------------------------------------------------------

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
    netns_dir = property(lambda self: self.state / "io.containerd.grpc.v1.cri" / "netns")

    def make(self) -> None:
        for d in (self.root, self.state, self.bin_dir, self.conf_dir, self.ipam_dir, self.captures):
            d.mkdir(parents=True, exist_ok=True)


def containerd_config(layout: NodeLayout, sandbox_image: str = SANDBOX_IMAGE) -> str:
    """config.toml (version 2 schema) for containerd 1.6, every path private."""
    q = json.dumps  # a JSON string is a valid TOML basic string
    cri = '[plugins."io.containerd.grpc.v1.cri"'
    runc = cri + '.containerd.runtimes.runc'
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
        '  default_runtime_name = "runc"',
        runc + "]",
        '  runtime_type = "io.containerd.runc.v2"',
        runc + ".options]",
        "  NoNewKeyring = true",
        f"  Root = {q(str(layout.state / 'runc'))}",
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


def conflist(layout: NodeLayout, limiter: dict, pod_subnet: str = DEMO_POD_SUBNET) -> dict:
    """ptp (host-local IPAM, default route in the Pod) then the limiter."""
    ptp = {"type": "ptp", "ipMasq": False,
           "ipam": {"type": "host-local", "subnet": pod_subnet, "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.ipam_dir)}}
    return {"cniVersion": CNI_VERSION, "name": NETWORK_NAME, "plugins": [ptp, limiter]}


# A plugin launcher: optionally record the call (stdin, environment), then run
# the plugin on that same stdin. containerd runs plugins with a minimal
# environment, hence absolute paths and explicit exports.
LAUNCHER = """#!/bin/sh
# Written by natra/demo_runtime.py.
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
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
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
            target.chmod(EXEC_MODE)
        else:
            target.symlink_to(DEBIAN_CNI_DIR / name)
    natra = layout.bin_dir / "natra"
    natra.write_text(launcher_text(natra_command(), natra_env(bpffs_root), captures))
    natra.chmod(EXEC_MODE)


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

    def start(self, sandbox_image: str = SANDBOX_IMAGE) -> None:
        self.layout.config.write_text(containerd_config(self.layout, sandbox_image))
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
        """SIGTERM, SIGKILL after the grace period; then its shims and mounts."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        kill_shims(str(self.layout.socket))
        unmount_under(self.layout.base)


# ---- a minimal CRI client: protobuf by hand ----------------------------------------------------
# Wire format: key = field << 3 | wire type; 0 = varint, 2 = length-delimited.
# Field numbers are those of k8s.io/cri-api pkg/apis/runtime/v1/api.proto.

CRI_SERVICE = "/runtime.v1.RuntimeService/"
WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_I32 = 0, 1, 2, 5
SANDBOX_READY = 0  # PodSandboxState


def pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_bytes(field: int, payload: bytes) -> bytes:
    return pb_varint(field << 3 | WIRE_LEN) + pb_varint(len(payload)) + payload


def pb_str(field: int, text: str) -> bytes:
    return pb_bytes(field, text.encode()) if text else b""


def pb_bool(field: int, value: bool) -> bytes:
    return pb_varint(field << 3 | WIRE_VARINT) + pb_varint(1) if value else b""


def pb_map(field: int, entries: dict[str, str]) -> bytes:
    return b"".join(pb_bytes(field, pb_str(1, k) + pb_str(2, v)) for k, v in sorted(entries.items()))


def pb_fields(buf: bytes) -> dict[int, list]:
    """Decode one message level: field -> values (int for varints, bytes otherwise)."""
    fields: dict[int, list] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = value = 0
        while True:
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(buf):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == WIRE_VARINT:
            value = varint()
        elif wire == WIRE_LEN:
            size = varint()
            value, pos = buf[pos:pos + size], pos + size
        elif wire in (WIRE_I64, WIRE_I32):
            size = 8 if wire == WIRE_I64 else 4
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"protobuf wire type {wire} not supported")
        fields.setdefault(field, []).append(value)
    return fields


def pb_first(fields: dict[int, list], field: int, default=b""):
    return fields.get(field, [default])[0]


def pb_decode_map(values: list[bytes]) -> dict[str, str]:
    entries = (pb_fields(v) for v in values)
    return {pb_first(e, 1).decode(): pb_first(e, 2).decode() for e in entries}


def run_pod_sandbox_request(name: str, uid: str, namespace: str, annotations: dict[str, str],
                            labels: dict[str, str] | None = None) -> bytes:
    metadata = pb_str(1, name) + pb_str(2, uid) + pb_str(3, namespace)
    # linux.security_context.namespace_options present and empty: every namespace per Pod
    linux = pb_bytes(2, pb_bytes(1, b""))
    config = (pb_bytes(1, metadata) + pb_str(2, name) + pb_map(6, labels or {})
              + pb_map(7, annotations) + pb_bytes(8, linux))
    return pb_bytes(1, config)


@dataclass(frozen=True)
class SandboxState:
    """What PodSandboxStatus(verbose) says about one sandbox."""

    id: str
    ready: bool
    ip: str
    netns_path: str
    cni_result: dict | None


def parse_sandbox_status(response: bytes) -> SandboxState:
    top = pb_fields(response)
    status = pb_fields(pb_first(top, 1))
    network = pb_fields(pb_first(status, 5))
    info = pb_decode_map(top.get(2, []))
    try:
        verbose = json.loads(info.get("info", "{}"))
    except ValueError:
        verbose = {}
    namespaces = verbose.get("runtimeSpec", {}).get("linux", {}).get("namespaces", [])
    netns = next((ns.get("path", "") for ns in namespaces if ns.get("type") == "network"), "")
    return SandboxState(id=pb_first(status, 1).decode(), ready=pb_first(status, 3, 0) == SANDBOX_READY,
                        ip=pb_first(network, 1).decode(), netns_path=netns,
                        cni_result=verbose.get("cniResult"))


class MiniCri:
    """The six RuntimeService calls over gRPC, without generated code."""

    def __init__(self, socket_path: str, timeout_s: float = CRI_CALL_TIMEOUT_S):
        import grpc

        self._grpc = grpc
        self._channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.timeout_s = timeout_s

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: bytes) -> bytes:
        stub = self._channel.unary_unary(CRI_SERVICE + method)  # no serializers: bytes in, bytes out
        try:
            return stub(request, timeout=self.timeout_s)
        except self._grpc.RpcError as err:
            raise CriCallError(method, err.code().name, err.details() or "") from err

    def conditions(self) -> dict[str, tuple[bool, str]]:
        runtime_status = pb_fields(pb_first(pb_fields(self._call("Status", b"")), 1))
        conds = [pb_fields(c) for c in runtime_status.get(1, [])]
        return {pb_first(c, 1).decode(): (bool(pb_first(c, 2, 0)), pb_first(c, 4).decode()) for c in conds}

    def run_sandbox(self, name: str, uid: str, namespace: str, annotations: dict[str, str]) -> str:
        response = self._call("RunPodSandbox", run_pod_sandbox_request(name, uid, namespace, annotations))
        return pb_first(pb_fields(response), 1).decode()

    def sandbox(self, sandbox_id: str) -> SandboxState:
        return parse_sandbox_status(self._call("PodSandboxStatus", pb_str(1, sandbox_id) + pb_bool(2, True)))

    def list_sandbox_ids(self) -> list[str]:
        items = pb_fields(self._call("ListPodSandbox", b"")).get(1, [])
        return [pb_first(pb_fields(item), 1).decode() for item in items]

    def stop_sandbox(self, sandbox_id: str) -> None:
        self._call("StopPodSandbox", pb_str(1, sandbox_id))

    def remove_sandbox(self, sandbox_id: str) -> None:
        self._call("RemovePodSandbox", pb_str(1, sandbox_id))


# ---- the demo's entry points -------------------------------------------------------------------

def _clear_bpffs_root(root: str) -> None:
    """Remove whatever Natra left under a private bpffs root, then the root."""
    if not os.path.isdir(root):
        return
    with contextlib.suppress(Exception):
        from natra import datapath

        for cid in datapath.list_installed(root=root):
            with contextlib.suppress(Exception):
                datapath.remove(cid, root=root)
    shutil.rmtree(root, ignore_errors=True)


class DemoRuntime:
    """A private containerd node running demo Pods as CRI sandboxes.

        with DemoRuntime() as rt:
            netns, ip = rt.start_sandbox("pod-a", {"kubernetes.io/ingress-bandwidth": "10M"})
            ...                      # nsenter --net=<netns> ... ; traffic to <ip>
            rt.stop_sandbox("pod-a")

    `bpffs_root` None uses Natra's default root; a private one (and
    `own_bpffs_root`) makes close() remove it. `record` keeps every CNI call's
    stdin and environment under <base>/captures.
    """

    def __init__(self, *, base: Path | None = None, limiter: str = LIMITER_NATRA,
                 pod_subnet: str = DEMO_POD_SUBNET, bpffs_root: str | None = None,
                 own_bpffs_root: bool = False, record: bool = False, dir_prefix: str = "natra-cri-"):
        self._base, self._dir_prefix = base, dir_prefix
        self.limiter, self.pod_subnet, self.record = limiter, pod_subnet, record
        self.bpffs_root, self.own_bpffs_root = bpffs_root, own_bpffs_root
        self.layout: NodeLayout | None = None  # made by start()
        self.node: ContainerdNode | None = None
        self.cri: MiniCri | None = None
        self.sandboxes: dict[str, str] = {}  # Pod name -> sandbox ID

    def __enter__(self) -> DemoRuntime:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        why = why_unavailable()
        if why:
            raise RuntimeUnavailable(why)
        self.layout = NodeLayout(self._base or Path(tempfile.mkdtemp(prefix=self._dir_prefix)))
        self.node = ContainerdNode(self.layout)
        self.layout.make()
        archive = self.layout.base / "pause-oci.tar"
        archive.write_bytes(oci_layout_tar(build_pause(self.layout.base).read_bytes(), SANDBOX_IMAGE))
        populate_bin_dir(self.layout, self.bpffs_root, self.record)
        entry = limiter_entry(self.limiter, self.layout, self.bpffs_root)
        (self.layout.conf_dir / "10-natra.conflist").write_text(
            json.dumps(conflist(self.layout, entry, self.pod_subnet), indent=1))
        self.node.start()
        self.cri = MiniCri(str(self.layout.socket))
        self.node.wait_ready(self.cri.conditions)
        self.node.import_image(archive)

    def start_sandbox(self, name: str, annotations: dict[str, str],
                      namespace: str = POD_NAMESPACE) -> tuple[str, str]:
        """Run a Pod sandbox; returns (network namespace path, Pod IP)."""
        uid = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:32]
        sandbox_id = self.cri.run_sandbox(name, uid, namespace, annotations)
        self.sandboxes[name] = sandbox_id
        state = self.cri.sandbox(sandbox_id)
        if not state.ready or not state.ip or not state.netns_path:
            raise RuntimeError(f"sandbox {name} ({sandbox_id}) started but is not usable: {state}")
        return state.netns_path, state.ip

    def sandbox(self, name: str) -> SandboxState:
        return self.cri.sandbox(self.sandboxes[name])

    def stop_sandbox(self, name: str) -> None:
        """Stop and remove a Pod sandbox (runs the chain's DEL)."""
        sandbox_id = self.sandboxes.pop(name)
        self.cri.stop_sandbox(sandbox_id)
        self.cri.remove_sandbox(sandbox_id)

    def remove_all(self) -> list[str]:
        """Stop and remove every sandbox the node lists; returns the errors met."""
        errors = []
        ids = []
        try:
            ids = self.cri.list_sandbox_ids() if self.cri else []
        except CriCallError as err:
            errors.append(str(err))
        for sandbox_id in ids:
            for step in (self.cri.stop_sandbox, self.cri.remove_sandbox):
                try:
                    step(sandbox_id)
                except CriCallError as err:
                    errors.append(str(err))
        self.sandboxes.clear()
        return errors

    def close(self) -> None:
        """Everything down; never raises."""
        with contextlib.suppress(Exception):
            self.remove_all()
        if self.cri is not None:
            with contextlib.suppress(Exception):
                self.cri.close()
            self.cri = None
        if self.node is not None:
            with contextlib.suppress(Exception):
                self.node.stop()
        if self.own_bpffs_root and self.bpffs_root:
            _clear_bpffs_root(self.bpffs_root)
        if self.layout is not None:
            with contextlib.suppress(Exception):
                remove_node_dir(self.layout.base)
