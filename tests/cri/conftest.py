"""Fixtures for the CRI end-to-end tests: a private containerd whose CRI runs
Pod sandboxes through the CNI chain ptp -> natra (or ptp -> bandwidth).

Owns: deciding whether containerd can run here (and skipping with the reason
when not), choosing the chain, bringing the node (natra.lab.cri.runtime's
DemoRuntime, recording every CNI call) and the remote namespace up once per
session, the kubelet-side CRI client (cri_client, compiled from our api.proto,
independent of the node's own hand-written client), a `pods` helper that
removes every sandbox a test started, and tearing all of it down (also when a
test fails): sandboxes, containerd, its shims and mounts, the private bpffs
root, the remote namespace; and reaping what a killed earlier run left.

Chain: ptp -> natra when `python3 -m natra` answers CNI VERSION, else
ptp -> the standard bandwidth plugin (tests that need Natra then skip).
NATRA_CRI_CHAIN=natra|bandwidth forces one.
Must not know: what the tests assert.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cri_wire as wire  # noqa: E402

import natra.lab.cri as CRI  # noqa: E402
from natra.lab.cri import node as NODE  # noqa: E402
from natra.lab.cri import runtime as R  # noqa: E402

CHAIN_ENV = "NATRA_CRI_CHAIN"
CHAIN_NATRA, CHAIN_BANDWIDTH = NODE.LIMITER_NATRA, NODE.LIMITER_BANDWIDTH
TEST_TOOLS = ("iperf3", "nsenter", "ip", "bpftool")
BPFFS = Path("/sys/fs/bpf")
BPFFS_ROOT_PREFIX = "nt10-cri-"  # + the pid of the test process
NODE_DIR_PREFIX = "nt10-cri-"  # under the temp dir
POD_SUBNET = "10.210.0.0/17"  # the upper half of 10.210.0.0/16 holds the remote node's link
VERSION_PROBE_TIMEOUT_S = 30


def _why_no_containerd() -> str | None:
    why = R.why_unavailable()
    if why:
        return why
    missing = [t for t in TEST_TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install iperf3 util-linux iproute2 bpftool)"
    try:
        __import__("grpc_tools")
    except ImportError:
        return "python module grpc_tools missing (pip install grpcio-tools)"
    return None


def natra_answers_version(bpffs_root: str) -> str | None:
    """None when `python3 -m natra` serves CNI VERSION, else why not."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "VERSION", **NODE.natra_env(bpffs_root)}
    try:
        proc = subprocess.run(NODE.natra_command(), input='{"cniVersion": "1.0.0"}', env=env,
                              capture_output=True, text=True, timeout=VERSION_PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"natra did not run: {err}"
    try:
        versions = json.loads(proc.stdout).get("supportedVersions", [])
    except ValueError:
        versions = []
    if proc.returncode != 0 or NODE.CNI_VERSION not in versions:
        return f"natra VERSION failed (rc {proc.returncode}): {(proc.stdout + proc.stderr).strip()[-300:]}"
    return None


def choose_chain(bpffs_root: str) -> tuple[str, str | None]:
    """(chain, why Natra is not in it)."""
    forced = os.environ.get(CHAIN_ENV)
    if forced == CHAIN_BANDWIDTH:
        return CHAIN_BANDWIDTH, f"{CHAIN_ENV}={forced}"
    why = None if os.path.ismount(BPFFS) else f"{BPFFS} is not a bpffs mount"
    why = why or natra_answers_version(bpffs_root)
    if why and forced == CHAIN_NATRA:
        pytest.fail(f"{CHAIN_ENV}=natra but {why}")
    return (CHAIN_BANDWIDTH, why) if why else (CHAIN_NATRA, None)


@dataclass
class CriNode:
    """What a test gets: the kubelet-side client, the node, the chain, the wire."""

    client: object  # cri_client.CriClient
    runtime: R.DemoRuntime
    chain: str
    why_not_natra: str | None
    bpffs_root: str
    remote: wire.RemoteNode

    @property
    def layout(self) -> NODE.NodeLayout:
        return self.runtime.layout

    def require_natra(self) -> None:
        if self.chain != CHAIN_NATRA:
            pytest.skip(f"chain is ptp -> bandwidth: {self.why_not_natra}")

    def calls_for(self, pod_name: str, command: str | None = None) -> list[NODE.CapturedCall]:
        """Recorded calls of the limiter plugin for one Pod."""
        return [c for c in NODE.captured_calls(self.layout)
                if f"K8S_POD_NAME={pod_name};" in c.env.get("CNI_ARGS", "") + ";"
                and (command is None or c.command == command)]


def _reap_stale_bpffs_roots() -> None:
    """Private bpffs roots of test processes that no longer exist."""
    for root in BPFFS.glob(BPFFS_ROOT_PREFIX + "*"):
        pid = root.name[len(BPFFS_ROOT_PREFIX):]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            R._clear_bpffs_root(str(root))


@pytest.fixture(scope="session")
def cri_node():
    why = _why_no_containerd()
    if why:
        pytest.skip(why)
    import cri_client

    NODE.reap_stale_nodes(Path(tempfile.gettempdir()), NODE_DIR_PREFIX)
    _reap_stale_bpffs_roots()
    bpffs_root = str(BPFFS / f"{BPFFS_ROOT_PREFIX}{os.getpid()}")
    chain, why_not_natra = choose_chain(bpffs_root)
    runtime = R.DemoRuntime(limiter=chain, pod_subnet=POD_SUBNET, bpffs_root=bpffs_root,
                            own_bpffs_root=True, record=True, dir_prefix=NODE_DIR_PREFIX)
    remote = wire.RemoteNode()
    client = None
    try:
        try:
            runtime.start()
        except CRI.RuntimeUnavailable as err:
            pytest.skip(f"containerd cannot run sandboxes here: {err}")
        client = cri_client.CriClient(str(runtime.layout.socket))
        remote.up()
        yield CriNode(client, runtime, chain, why_not_natra, bpffs_root, remote)
    finally:
        runtime.close()  # every sandbox, containerd, shims, mounts, the bpffs root, the directory
        if client is not None:
            client.close()
        remote.close()


@dataclass
class Pods:
    """Starts sandboxes for one test and removes them when the test ends."""

    node: CriNode
    prefix: str
    started: list[str] = field(default_factory=list)
    count: int = 0

    def spec(self, annotations: dict[str, str] | None = None, name: str | None = None):
        import cri_client

        self.count += 1
        return cri_client.PodSpec(name=name or f"{self.prefix}-{self.count}", uid=str(uuid.uuid4()),
                                  annotations=dict(annotations or {}))

    def run(self, pod) -> str:
        sid = self.node.client.run_sandbox(pod)
        self.started.append(sid)
        return sid

    def remove(self, sid: str) -> None:
        self.node.client.stop_sandbox(sid)
        self.node.client.remove_sandbox(sid)

    def cleanup(self) -> None:
        for sid in self.started:
            with contextlib.suppress(Exception):
                self.remove(sid)


@pytest.fixture
def pods(cri_node, request):
    name = request.node.name.replace("test_", "").replace("_", "-")[:20].strip("-")
    helper = Pods(cri_node, f"nt10-{name}")
    try:
        yield helper
    finally:
        helper.cleanup()
