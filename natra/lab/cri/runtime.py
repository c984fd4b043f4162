"""`DemoRuntime`: a private containerd node running Pods as CRI sandboxes.

Owns: deciding whether this machine can run one (`why_unavailable`), bringing
a node up (image built and imported, one network per runtime handler,
containerd ready), start_sandbox/stop_sandbox, and a close() that removes
every sandbox, containerd, its shims, mounts, the private directory and,
when asked, a private bpffs root.
Rule: close() never raises and leaves no process, mount, netns or pin behind
(sandboxes first, then containerd, then its shims with their children, then
mounts under the private directory).
Must not know: the demo's traffic or what it measures; Natra's internals.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from natra.lab.cri import RuntimeUnavailable
from natra.lab.cri.image import build_pause, oci_layout_tar
from natra.lab.cri.node import (
    DEBIAN_CNI_DIR,
    DEMO_POD_SUBNET,
    LIMITER_NATRA,
    NEEDED_TOOLS,
    POD_NAMESPACE,
    RUNTIME_PLUGINS,
    SANDBOX_IMAGE,
    ContainerdNode,
    NodeLayout,
    conflist,
    limiter_entry,
    networks,
    populate_bin_dir,
    remove_node_dir,
)
from natra.lab.cri.protocol import CriCallError, MiniCri, SandboxState


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
        return "python module grpc missing (pip install 'natra[lab]')"
    return None


def _clear_bpffs_root(root: str) -> None:
    """Remove whatever Natra left under a private bpffs root, then the root."""
    if not os.path.isdir(root):
        return
    with contextlib.suppress(Exception):
        from natra.kernel import datapath

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
    `own_bpffs_root`) makes close() remove it. `handlers` adds runtime handlers
    (RuntimeClasses) beside the default one, each with its own network and
    limiter: {"standard": "bandwidth"} lets start_sandbox(..., "standard")
    run a Pod through ptp -> bandwidth while the others go through `limiter`. `record` keeps every CNI call's
    stdin and environment under <base>/captures.
    """

    def __init__(self, *, base: Path | None = None, limiter: str = LIMITER_NATRA,
                 pod_subnet: str = DEMO_POD_SUBNET, bpffs_root: str | None = None,
                 own_bpffs_root: bool = False, record: bool = False, dir_prefix: str = "natra-cri-",
                 handlers: dict[str, str] | None = None):
        self._base, self._dir_prefix = base, dir_prefix
        self.handlers = dict(handlers or {})
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
        for handler, limiter, name, subnet in networks(self.limiter, self.handlers, self.pod_subnet):
            entry = limiter_entry(limiter, self.layout, self.bpffs_root)
            conf_dir = self.layout.conf_dir_for(handler)
            conf_dir.mkdir(parents=True, exist_ok=True)
            (conf_dir / "10-natra.conflist").write_text(
                json.dumps(conflist(self.layout, entry, subnet, name), indent=1))
        self.node.start(handlers=tuple(self.handlers))
        self.cri = MiniCri(str(self.layout.socket))
        self.node.wait_ready(self.cri.conditions)
        self.node.import_image(archive)

    def start_sandbox(self, name: str, annotations: dict[str, str], namespace: str = POD_NAMESPACE,
                      runtime_handler: str = "") -> tuple[str, str]:
        """Run a Pod sandbox (with a runtime handler of `handlers`, or the default);
        returns (network namespace path, Pod IP)."""
        uid = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:32]
        sandbox_id = self.cri.run_sandbox(name, uid, namespace, annotations, runtime_handler)
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
