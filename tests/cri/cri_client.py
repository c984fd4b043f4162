"""A small CRI client: the kubelet's side of the calls the CRI tests need.

Owns: compiling tests/cri/api.proto with grpcio-tools (at test time, into a
throw-away directory), the gRPC channel to a runtime's unix socket, and the
six RuntimeService calls the tests make (Status, RunPodSandbox,
PodSandboxStatus, ListPodSandbox, StopPodSandbox, RemovePodSandbox), returned
as plain dataclasses.

Rule: a failed call raises CriError carrying the gRPC status code and the
runtime's own message, so a test can tell "containerd rejected the Pod" from
"the connection broke".
Must not know: containerd's configuration, CNI, Natra.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILE = "api.proto"
GENERATED_PACKAGE = "nt10_cri_api"  # unique import name for the generated code
DEFAULT_CALL_TIMEOUT_S = 60.0  # RunPodSandbox runs the whole CNI chain
POD_NAMESPACE_DEFAULT = "default"


class CriError(RuntimeError):
    """A CRI call failed: `code` is the gRPC status name, `details` the runtime's text."""

    def __init__(self, call: str, code: str, details: str):
        super().__init__(f"CRI {call}: {code}: {details}")
        self.call, self.code, self.details = call, code, details


def compile_api(out_dir: Path):
    """Compile api.proto into `out_dir`; return (messages module, grpc module)."""
    from grpc_tools import protoc  # imported here: the tests skip when it is missing

    pkg_dir = out_dir / GENERATED_PACKAGE
    pkg_dir.mkdir(parents=True, exist_ok=True)
    (pkg_dir / "__init__.py").write_text("")
    (pkg_dir / PROTO_FILE).write_bytes((PROTO_DIR / PROTO_FILE).read_bytes())
    args = [
        "protoc",
        f"-I{out_dir}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"{GENERATED_PACKAGE}/{PROTO_FILE}",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on {PROTO_DIR / PROTO_FILE}")
    sys.path.insert(0, str(out_dir))
    try:
        pb2 = importlib.import_module(f"{GENERATED_PACKAGE}.api_pb2")
        pb2_grpc = importlib.import_module(f"{GENERATED_PACKAGE}.api_pb2_grpc")
    finally:
        sys.path.remove(str(out_dir))
    return pb2, pb2_grpc


_API = None


def api():
    """The compiled messages and stubs, compiled once per process."""
    global _API
    if _API is None:
        out_dir = Path(tempfile.mkdtemp(prefix="nt10-cri-proto-"))
        try:
            _API = compile_api(out_dir)
        finally:  # the modules are loaded; their files are no longer needed
            shutil.rmtree(out_dir, ignore_errors=True)
    return _API


@dataclass(frozen=True)
class PodSpec:
    """What the kubelet would send for a Pod: identity, labels, annotations."""

    name: str
    uid: str
    namespace: str = POD_NAMESPACE_DEFAULT
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SandboxView:
    """A sandbox as PodSandboxStatus(verbose) reports it."""

    id: str
    ready: bool
    ip: str
    netns_path: str  # "" when the runtime did not report one
    annotations: dict[str, str]
    cni_result: dict | None  # what the CNI chain returned, as containerd kept it


def netns_path_from_info(info: dict[str, str]) -> str:
    """The network namespace path in containerd's verbose sandbox info."""
    try:
        spec = json.loads(info.get("info", "{}")).get("runtimeSpec", {})
    except ValueError:
        return ""
    for ns in spec.get("linux", {}).get("namespaces", []):
        if ns.get("type") == "network":
            return ns.get("path", "")
    return ""


def cni_result_from_info(info: dict[str, str]) -> dict | None:
    try:
        return json.loads(info.get("info", "{}")).get("cniResult")
    except ValueError:
        return None


class CriClient:
    def __init__(self, socket_path: str, timeout_s: float = DEFAULT_CALL_TIMEOUT_S):
        import grpc

        self._grpc = grpc
        self.pb2, pb2_grpc = api()
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(f"unix://{socket_path}")
        self._stub = pb2_grpc.RuntimeServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, name: str, request):
        try:
            return getattr(self._stub, name)(request, timeout=self.timeout_s)
        except self._grpc.RpcError as err:
            raise CriError(name, err.code().name, err.details() or "") from err

    def conditions(self) -> dict[str, tuple[bool, str]]:
        """Runtime conditions: type -> (status, reason + message)."""
        resp = self._call("Status", self.pb2.StatusRequest())
        return {c.type: (c.status, f"{c.reason}: {c.message}") for c in resp.status.conditions}

    def run_sandbox(self, pod: PodSpec) -> str:
        pb = self.pb2
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=pod.name, uid=pod.uid, namespace=pod.namespace),
            hostname=pod.name,
            labels=pod.labels,
            annotations=pod.annotations,
            linux=pb.LinuxPodSandboxConfig(
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption())
            ),
        )
        return self._call("RunPodSandbox", pb.RunPodSandboxRequest(config=config)).pod_sandbox_id

    def sandbox(self, sandbox_id: str) -> SandboxView:
        pb = self.pb2
        request = pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True)
        resp = self._call("PodSandboxStatus", request)
        st, info = resp.status, dict(resp.info)
        return SandboxView(
            id=st.id,
            ready=st.state == pb.SANDBOX_READY,
            ip=st.network.ip,
            netns_path=netns_path_from_info(info),
            annotations=dict(st.annotations),
            cni_result=cni_result_from_info(info),
        )

    def list_sandbox_ids(self) -> list[str]:
        return [s.id for s in self._call("ListPodSandbox", self.pb2.ListPodSandboxRequest()).items]

    def stop_sandbox(self, sandbox_id: str) -> None:
        self._call("StopPodSandbox", self.pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))

    def remove_sandbox(self, sandbox_id: str) -> None:
        self._call("RemovePodSandbox", self.pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
