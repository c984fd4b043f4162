"""natra/cri (image, node, protocol): the offline image, the node's files, the hand-written
CRI protobuf, and start_sandbox/stop_sandbox on a real node.

Without root: the OCI layout's descriptors are true (digests, sizes, media
types, diff IDs, an executable /pause) and reproducible; containerd's config
keeps every path private and carries the settings measured here; the conflist
chains ptp into the limiter; the hand-written protobuf agrees byte for byte
with messages compiled by grpcio-tools from tests/cri/api.proto (the public
field numbers), both ways. With root (the session's node): start_sandbox
returns a live netns and an IP the kubelet-side client also sees, and
stop_sandbox removes it.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import tarfile
import tomllib
from pathlib import Path

import cri_wire
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natra.lab.cri import image as OCI
from natra.lab.cri import node as NODE
from natra.lab.cri import protocol as PB

IMAGE = "natra.test/pause:nt10"
BASE = Path("/tmp/nt10-cri-example")
CRI = "io.containerd.grpc.v1.cri"
names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=30)


# ---- the image -------------------------------------------------------------------------------

def members(archive: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: (m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()}


def blob(files, descriptor: dict) -> bytes:
    algo, hexdigest = descriptor["digest"].split(":")
    _, data = files[f"blobs/{algo}/{hexdigest}"]
    assert algo == "sha256" and hashlib.sha256(data).hexdigest() == hexdigest
    assert descriptor["size"] == len(data)
    return data


@settings(max_examples=20, deadline=None)
@given(binary=st.binary(min_size=1, max_size=4096))
def test_every_image_descriptor_matches_its_blob(binary):
    files = members(OCI.oci_layout_tar(binary, IMAGE))
    assert json.loads(files["oci-layout"][1]) == {"imageLayoutVersion": "1.0.0"}
    [entry] = json.loads(files["index.json"][1])["manifests"]
    assert entry["mediaType"] == OCI.MEDIA_MANIFEST
    assert entry["annotations"] == {OCI.REF_NAME_KEY: "nt10", OCI.CONTAINERD_NAME_KEY: IMAGE}
    manifest = json.loads(blob(files, entry))
    assert manifest["config"]["mediaType"] == OCI.MEDIA_CONFIG
    config = json.loads(blob(files, manifest["config"]))
    [layer_desc] = manifest["layers"]
    assert layer_desc["mediaType"] == OCI.MEDIA_LAYER
    layer = blob(files, layer_desc)
    assert config["rootfs"]["diff_ids"] == [layer_desc["digest"]]
    assert config["config"]["Entrypoint"] == ["/pause"]
    pause_info, pause_bytes = members(layer)["pause"]
    assert pause_bytes == binary and pause_info.mode & 0o111 == 0o111


def test_image_archive_is_reproducible_and_named_by_content():
    assert OCI.oci_layout_tar(b"\x7fELF-a", IMAGE) == OCI.oci_layout_tar(b"\x7fELF-a", IMAGE)
    assert OCI.oci_layout_tar(b"\x7fELF-a", IMAGE) != OCI.oci_layout_tar(b"\x7fELF-b", IMAGE)


# ---- the node's files ------------------------------------------------------------------------

def paths_in(value) -> list[str]:
    if isinstance(value, dict):
        return [p for v in value.values() for p in paths_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in paths_in(v)]
    return [value] if isinstance(value, str) and value.startswith("/") else []


def test_config_keeps_every_path_private_and_the_measured_settings():
    config = tomllib.loads(NODE.containerd_config(NODE.NodeLayout(BASE)))
    assert paths_in(config)
    assert all(p.startswith(str(BASE) + "/") for p in paths_in(config)), paths_in(config)
    cri = config["plugins"][CRI]
    assert cri["disable_cgroup"] and cri["restrict_oom_score_adj"] and cri["netns_mounts_under_state_dir"]
    assert cri["containerd"]["snapshotter"] == "native"
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2" and runc["options"]["NoNewKeyring"] is True
    assert cri["sandbox_image"] == NODE.SANDBOX_IMAGE


def test_conflist_chains_ptp_into_the_limiter_with_both_capabilities():
    layout = NODE.NodeLayout(BASE)
    subnet = "10.210.0.0/17"
    conf = NODE.conflist(layout, NODE.limiter_entry(NODE.LIMITER_NATRA, layout, "/sys/fs/bpf/x"), subnet)
    ptp, natra = conf["plugins"]
    assert ptp["type"] == "ptp" and ptp["ipam"]["subnet"] == subnet
    assert ptp["ipam"]["dataDir"].startswith(str(BASE))
    assert natra["type"] == "natra" and natra["bpffsRoot"] == "/sys/fs/bpf/x"
    assert natra["capabilities"] == {"bandwidth": True, "io.kubernetes.cri.pod-annotations": True}
    assert all(natra[k].startswith(str(BASE)) for k in ("stateDir", "logFile"))
    # the test's remote node sits outside the Pod subnet it routes to
    pods = ipaddress.ip_network(subnet)
    assert str(pods) == cri_wire.POD_ROUTE
    assert all(ipaddress.ip_address(a) not in pods for a in (cri_wire.REMOTE_ADDR, cri_wire.HOST_ADDR))


# ---- the hand-written protobuf against compiled messages --------------------------------------

@pytest.fixture(scope="module")
def pb():
    pytest.importorskip("grpc_tools")
    import cri_client

    return cri_client.api()[0]


@settings(max_examples=50, deadline=None)
@given(name=names, uid=names, namespace=names,
       annotations=st.dictionaries(names, st.text(max_size=40), max_size=5))
def test_run_request_decodes_as_the_public_message(pb, name, uid, namespace, annotations):
    wire = PB.run_pod_sandbox_request(name, uid, namespace, annotations)
    request = pb.RunPodSandboxRequest.FromString(wire)
    config = request.config
    assert (config.metadata.name, config.metadata.uid, config.metadata.namespace) == (name, uid, namespace)
    assert config.hostname == name and dict(config.annotations) == annotations
    assert config.linux.HasField("security_context")


@settings(max_examples=50, deadline=None)
@given(sid=names, ip=st.ip_addresses(v=4).map(str), ready=st.booleans(), netns=names.map(lambda s: "/" + s))
def test_status_response_parses_like_the_public_message(pb, sid, ip, ready, netns):
    info = {"info": json.dumps({"runtimeSpec": {"linux": {"namespaces": [
        {"type": "pid"}, {"type": "network", "path": netns}]}}, "cniResult": {"Interfaces": {}}})}
    response = pb.PodSandboxStatusResponse(
        status=pb.PodSandboxStatus(id=sid, state=pb.SANDBOX_READY if ready else pb.SANDBOX_NOTREADY,
                                   network=pb.PodSandboxNetworkStatus(ip=ip), created_at=1),
        info=info)
    state = PB.parse_sandbox_status(response.SerializeToString())
    assert (state.id, state.ready, state.ip, state.netns_path) == (sid, ready, ip, netns)
    assert state.cni_result == {"Interfaces": {}}


@given(n=st.integers(min_value=0, max_value=2**64 - 1))
def test_varints_round_trip(n):
    assert PB.pb_fields(PB.pb_varint(1 << 3) + PB.pb_varint(n)) == {1: [n]}


# ---- on the session's node -------------------------------------------------------------------

@pytest.mark.root
def test_start_and_stop_sandbox_through_the_demo_api(cri_node):
    runtime = cri_node.runtime
    netns, ip = runtime.start_sandbox("nt10-demo-api", {"kubernetes.io/ingress-bandwidth": "10M"})
    try:
        assert Path(netns).exists() and ipaddress.ip_address(ip) in ipaddress.ip_network(runtime.pod_subnet)
        sid = runtime.sandboxes["nt10-demo-api"]
        seen = cri_node.client.sandbox(sid)  # the kubelet-side client agrees
        assert seen.ready and (seen.ip, seen.netns_path) == (ip, netns)
        assert cri_node.calls_for("nt10-demo-api", "ADD")
    finally:
        runtime.stop_sandbox("nt10-demo-api")
    assert sid not in cri_node.client.list_sandbox_ids()
    assert not Path(netns).exists()
