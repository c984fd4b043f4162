"""A minimal CRI client: the six RuntimeService calls, protobuf written by hand.

Owns: encoding RunPodSandbox/StopPodSandbox/RemovePodSandbox/PodSandboxStatus/
ListPodSandbox/Status requests and decoding their responses with the field
numbers of k8s.io/cri-api runtime/v1, and `MiniCri`, the gRPC channel that
carries them (grpcio is imported only when a client is made).
Rule: encoding and decoding are pure functions of bytes; only MiniCri talks.
Must not know: containerd's files or process, CNI, the demo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

CRI_CALL_TIMEOUT_S = 60.0  # RunPodSandbox runs the whole CNI chain


class CriCallError(RuntimeError):
    """A CRI call failed: `code` is the gRPC status name, `details` the runtime's text."""

    def __init__(self, call: str, code: str, details: str):
        super().__init__(f"CRI {call}: {code}: {details}")
        self.call, self.code, self.details = call, code, details


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
                            labels: dict[str, str] | None = None, runtime_handler: str = "") -> bytes:
    metadata = pb_str(1, name) + pb_str(2, uid) + pb_str(3, namespace)
    # linux.security_context.namespace_options present and empty: every namespace per Pod
    linux = pb_bytes(2, pb_bytes(1, b""))
    config = (pb_bytes(1, metadata) + pb_str(2, name) + pb_map(6, labels or {})
              + pb_map(7, annotations) + pb_bytes(8, linux))
    return pb_bytes(1, config) + pb_str(2, runtime_handler)


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

    def run_sandbox(self, name: str, uid: str, namespace: str, annotations: dict[str, str],
                    runtime_handler: str = "") -> str:
        request = run_pod_sandbox_request(name, uid, namespace, annotations, runtime_handler=runtime_handler)
        response = self._call("RunPodSandbox", request)
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
