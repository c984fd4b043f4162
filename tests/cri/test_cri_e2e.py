"""End to end under a real container runtime: containerd's CRI runs Pod
sandboxes through the CNI chain ptp -> natra, exactly as on a Kubernetes node.

What is checked here, through CRI calls only (the kubelet's side):
- what containerd 1.6 hands the limiter plugin (runtimeConfig, CNI_ARGS);
- a Pod with ingress/egress annotations is limited both ways (iperf3 from a
  "remote node" namespace into the Pod and back): received bytes within
  R*t + B, goodput at least GOODPUT_FLOOR of the rate;
- natra.io/ tuning annotations reach the kernel's config; a malformed one
  does not stop the Pod (fail open) and its standard limits still hold;
- an invalid kubernetes.io/ingress-bandwidth is rejected by containerd itself,
  before any plugin runs (why per-Pod tuning lives under natra.io/);
- removing sandboxes, one or twenty in parallel, leaves nothing behind.
The fixture (conftest.py) falls back to ptp -> bandwidth when Natra cannot
run; the tests about Natra's own state then skip with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cri_client import CriError

from natra.lab.cri.node import LIMITER_NATRA as CHAIN_NATRA

pytestmark = [pytest.mark.root, pytest.mark.slow]

INGRESS_KEY = "kubernetes.io/ingress-bandwidth"
EGRESS_KEY = "kubernetes.io/egress-bandwidth"
INGRESS_BPS, EGRESS_BPS = 10_000_000, 20_000_000
LIMITS = {INGRESS_KEY: "10M", EGRESS_KEY: "20M"}
CONTAINERD_BURST_BITS = 2**32 - 1  # what containerd 1.6 sends when the Pod names no burst
IPERF_SECONDS = 3
GOODPUT_FLOOR = 0.8  # TCP through a limiter of this rate reaches well above it
TIMING_SLACK_S = 0.05  # the receiver's clock vs the limiter's: start-up and last packets
PARALLEL_PODS = 20
GONE_TIMEOUT_S = 5.0  # veths and programs vanish asynchronously after their netns
NANO = 1_000_000_000
STATUS_TIMEOUT_S = 30


def start(pods, annotations: dict[str, str], name: str | None = None):
    spec = pods.spec(annotations, name)
    sid = pods.run(spec)
    view = pods.node.client.sandbox(sid)
    assert view.ready, f"sandbox {sid} not ready"
    assert view.ip and Path(view.netns_path).exists(), view
    return spec, sid, view


def host_interfaces(view) -> list[str]:
    """Interfaces the chain made on the host side (no sandbox path)."""
    return [name for name, itf in (view.cni_result or {}).get("Interfaces", {}).items()
            if not itf.get("Sandbox")]


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def bpf_object_exists(kind: str, obj_id: int) -> bool:
    return subprocess.run(["bpftool", kind, "show", "id", str(obj_id)], capture_output=True).returncode == 0


def eventually(predicate, timeout_s: float = GONE_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def inspection(node, sid):
    from natra.kernel import datapath

    return datapath.inspect(sid, root=node.bpffs_root)


def pinned_ids(pin_dir: str) -> list[tuple[str, int]]:
    """(bpftool kind, id) of every pinned program and link of one container."""
    found = []
    for pin in sorted(Path(pin_dir).iterdir()):
        for kind in ("prog", "link"):
            if pin.name.startswith(kind + "_"):
                out = subprocess.run(["bpftool", "-j", kind, "show", "pinned", str(pin)],
                                     capture_output=True, text=True)
                if out.returncode == 0:
                    found.append((kind, json.loads(out.stdout)["id"]))
    return found


def status_pod(node, sid) -> dict | None:
    """The Pod's entry in `natra status --json` (the operator's view), or None."""
    out = subprocess.run([sys.executable, "-m", "natra", "status", "--json", "--root", node.bpffs_root],
                         capture_output=True, text=True, timeout=STATUS_TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    return next((p for p in json.loads(out.stdout)["pods"] if p["container_id"] == sid), None)


def burst_bytes(node, sid, direction: int, pod_name: str) -> float:
    """B of the envelope: the burst the limiter really applies in `direction`."""
    if node.chain == CHAIN_NATRA:
        config = inspection(node, sid).configs[direction]
        return config.tau_nbit / 8 / NANO
    sent = node.calls_for(pod_name, "ADD")[-1].stdin["runtimeConfig"]["bandwidth"]
    return sent["IngressBurst" if direction == 0 else "EgressBurst"] / 8


def assert_limited(transfer, rate_bps: int, burst: float) -> None:
    ceiling = rate_bps / 8 * (transfer.seconds + TIMING_SLACK_S) + burst
    assert transfer.received_bytes <= ceiling, (transfer, ceiling)
    assert transfer.bits_per_s >= GOODPUT_FLOOR * rate_bps, (transfer, rate_bps)


# ---- what the runtime sends -------------------------------------------------------------------

def test_containerd_sends_limits_annotations_and_pod_identity(cri_node, pods):
    annotations = {**LIMITS, "natra.io/width": "256", "example.com/other": "x"}
    spec, sid, view = start(pods, annotations)
    adds = cri_node.calls_for(spec.name, "ADD")
    assert len(adds) == 1
    add = adds[0]
    runtime_config = add.stdin["runtimeConfig"]
    assert runtime_config["bandwidth"] == {
        "IngressRate": INGRESS_BPS, "IngressBurst": CONTAINERD_BURST_BITS,
        "EgressRate": EGRESS_BPS, "EgressBurst": CONTAINERD_BURST_BITS,
    }
    assert runtime_config["io.kubernetes.cri.pod-annotations"] == annotations
    args = dict(kv.split("=", 1) for kv in add.env["CNI_ARGS"].split(";"))
    assert args["K8S_POD_NAME"] == spec.name and args["K8S_POD_UID"] == spec.uid
    assert args["K8S_POD_NAMESPACE"] == spec.namespace and args["K8S_POD_INFRA_CONTAINER_ID"] == sid
    assert add.env["CNI_CONTAINERID"] == sid and add.env["CNI_IFNAME"] == "eth0"
    assert add.env["CNI_NETNS"] == view.netns_path
    prev_ips = [ip["address"].split("/")[0] for ip in add.stdin["prevResult"]["ips"]]
    assert view.ip in prev_ips

    pods.remove(sid)
    dels = cri_node.calls_for(spec.name, "DEL")
    assert dels and dels[-1].env["CNI_CONTAINERID"] == sid
    assert dels[-1].stdin["runtimeConfig"]["bandwidth"] == runtime_config["bandwidth"]


# ---- limits ------------------------------------------------------------------------------------

def test_pod_is_limited_in_both_directions(cri_node, pods):
    spec, sid, view = start(pods, LIMITS)
    for direction, rate, to_pod in ((0, INGRESS_BPS, True), (1, EGRESS_BPS, False)):
        burst = burst_bytes(cri_node, sid, direction, spec.name)
        if cri_node.chain == CHAIN_NATRA:  # Natra clamps containerd's 512 MiB burst
            assert burst * 8 < CONTAINERD_BURST_BITS / 100
        transfer = cri_node.remote.iperf(view.netns_path, view.ip, IPERF_SECONDS, to_pod=to_pod)
        assert_limited(transfer, rate, burst)


def test_sandboxes_are_shaped_by_default_and_policed_on_request(cri_node, pods):
    """Through containerd's CRI: both directions queue in Natra's qdisc trees (the host veth and
    the Pod's IFB) unless the Pod asks `natra.io/mode: police`."""
    if cri_node.chain != CHAIN_NATRA:
        pytest.skip("Natra's modes: the standard plugin's chain has none")
    from natra.kernel import shaping

    _, sid, _ = start(pods, LIMITS)
    pod = status_pod(cri_node, sid)
    assert {d["direction"]: d["mode"] for d in pod["directions"]} == {"to_pod": "shape", "from_pod": "shape"}
    assert all(d["classes"] for d in pod["directions"])  # the trees are there and read back
    assert link_exists(shaping.ifb_name(sid))
    _, police_sid, _ = start(pods, {**LIMITS, "natra.io/mode": "police"})
    pod = status_pod(cri_node, police_sid)
    modes = {d["direction"]: d["mode"] for d in pod["directions"]}
    assert modes == {"to_pod": "police", "from_pod": "police"}
    assert not link_exists(shaping.ifb_name(police_sid))


def test_natra_tuning_annotations_reach_the_kernel(cri_node, pods):
    cri_node.require_natra()
    from natra.kernel import layout as L
    from natra.kernel import params as P

    tuning = {"natra.io/width": "256", "natra.io/depth": "2", "natra.io/window": "50ms",
              "natra.io/threshold": "128Ki", "natra.io/max-burst-time": "300ms", "natra.io/ecn": "false",
              "natra.io/flow-table": "1024"}
    spec, sid, _ = start(pods, {**LIMITS, **tuning})
    found = inspection(cri_node, sid)
    assert found is not None and found.ok, found and found.problems
    for direction, rate in ((L.DIR_TO_POD, INGRESS_BPS), (L.DIR_FROM_POD, EGRESS_BPS)):
        config = found.configs[direction]
        assert config.rate_bps == rate
        assert (config.width, config.depth) == (256, 2)
        assert config.window_ns == 50_000_000
        assert config.threshold_bytes == 128 * 1024
        burst_bits = max(rate * 300 // 1000, P.MIN_DEFAULT_BURST_BITS)  # 300 ms of rate, floored
        assert config.tau_nbit == burst_bits * NANO
        assert config.flags & L.CFG_ENABLED and not config.flags & L.CFG_ECN

    shown = status_pod(cri_node, sid)  # what an operator sees agrees, with the Pod's identity
    assert shown is not None
    assert (shown["pod"], shown["namespace"], shown["uid"]) == (spec.name, spec.namespace, spec.uid)
    assert shown["flow_table_size"] == 1024
    for entry in shown["directions"]:
        rate = INGRESS_BPS if entry["direction"] == "to_pod" else EGRESS_BPS
        assert entry["attached"] and entry["limit"]["rate_bps"] == rate
        assert entry["limit"]["window_ns"] == 50_000_000 and entry["limit"]["ecn"] is False


def test_malformed_natra_annotation_fails_open(cri_node, pods):
    cri_node.require_natra()
    from natra.kernel import layout as L
    from natra.kernel import params as P

    spec, sid, view = start(pods, {**LIMITS, "natra.io/width": "banana", "natra.io/window": "-3"})
    shown = status_pod(cri_node, sid)
    assert shown is not None and all(d["attached"] for d in shown["directions"])
    found = inspection(cri_node, sid)
    assert found is not None and found.ok, found and found.problems
    config = found.configs[L.DIR_TO_POD]
    assert config.rate_bps == INGRESS_BPS and config.width == P.DEFAULT_WIDTH
    assert config.window_ns == P.params_for(INGRESS_BPS, mode=P.MODE_SHAPE).window_ns  # shaping's default
    log = (cri_node.layout.base / "natra.log").read_text()
    assert any(spec.name in line and "malformed" in line for line in log.splitlines()), log[-2000:]
    transfer = cri_node.remote.iperf(view.netns_path, view.ip, IPERF_SECONDS, to_pod=True)
    assert_limited(transfer, INGRESS_BPS, burst_bytes(cri_node, sid, L.DIR_TO_POD, spec.name))


def test_invalid_ingress_annotation_is_rejected_by_containerd(cri_node, pods):
    """containerd parses the annotation as a Quantity before any plugin runs.

    Observed with containerd 1.6.20: the failed sandbox stays listed as
    NOTREADY with no network, and StopPodSandbox keeps failing on the same
    annotation; only the node's teardown removes it (docs/cri.md)."""
    before = set(cri_node.client.list_sandbox_ids())
    spec = pods.spec({INGRESS_KEY: json.dumps({"rate": "10M", "width": 256})})
    with pytest.raises(CriError) as raised:
        pods.run(spec)
    assert "bandwidth annotations" in raised.value.details, raised.value
    assert cri_node.calls_for(spec.name) == []  # no plugin ever saw this Pod
    for sid in set(cri_node.client.list_sandbox_ids()) - before:
        left = cri_node.client.sandbox(sid)
        assert not left.ready and not left.ip and left.cni_result is None, left


# ---- nothing left behind -----------------------------------------------------------------------

def test_removing_a_sandbox_leaves_nothing(cri_node, pods):
    _, sid, view = start(pods, LIMITS)
    host_side = host_interfaces(view)
    assert host_side
    objects = []
    if cri_node.chain == CHAIN_NATRA:
        found = inspection(cri_node, sid)
        assert found is not None and found.ok
        objects = pinned_ids(found.pin_dir)
        assert {kind for kind, _ in objects} >= {"prog"}
    pods.remove(sid)
    assert not Path(view.netns_path).exists()
    assert eventually(lambda: not any(link_exists(n) for n in host_side)), host_side
    if cri_node.chain == CHAIN_NATRA:
        assert inspection(cri_node, sid) is None and status_pod(cri_node, sid) is None
        assert eventually(lambda: not any(bpf_object_exists(k, i) for k, i in objects)), objects


def test_twenty_parallel_sandboxes_leave_nothing(cri_node, pods):
    specs = [pods.spec(LIMITS) for _ in range(PARALLEL_PODS)]
    with ThreadPoolExecutor(PARALLEL_PODS) as pool:
        sids = list(pool.map(pods.run, specs))
        views = list(pool.map(cri_node.client.sandbox, sids))
    assert all(v.ready for v in views)
    assert len({v.ip for v in views}) == PARALLEL_PODS
    host_side = [n for v in views for n in host_interfaces(v)]
    objects = []
    if cri_node.chain == CHAIN_NATRA:
        found = [inspection(cri_node, sid) for sid in sids]
        assert all(f is not None and f.ok for f in found), [f and f.problems for f in found]
        objects = [o for f in found for o in pinned_ids(f.pin_dir)]
    with ThreadPoolExecutor(PARALLEL_PODS) as pool:
        list(pool.map(pods.remove, sids))

    assert not set(sids) & set(cri_node.client.list_sandbox_ids())
    assert not any(Path(v.netns_path).exists() for v in views)
    leased = [p.name for p in cri_node.layout.ipam_dir.rglob("*") if p.name[0].isdigit()]
    assert leased == [], leased
    assert eventually(lambda: not any(link_exists(n) for n in host_side))
    if cri_node.chain == CHAIN_NATRA:
        from natra.kernel import datapath

        assert not set(sids) & set(datapath.list_installed(root=cri_node.bpffs_root))
        assert eventually(lambda: not any(bpf_object_exists(k, i) for k, i in objects))
