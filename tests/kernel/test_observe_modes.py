"""The shaping mode and fail-open as the operator's tools see them, on real kernel state.

1. A namespace Pod with Natra installed (tests/kernel/observe_net.py), a real
   shaping tree (natra.kernel.shaping.apply) on its host veth for traffic into
   the Pod and on a throwaway IFB (ntifb*) for traffic out of it, and the meta
   record carrying `shaping` / `direction_modes` as the CNI plugin writes them.
   UDP sent into the Pod crosses the tree; `natra status --json`, the text form,
   `natra top` and the exporter's /metrics must show the mode and the classes
   with their counters. A fallback to police is then recorded and shown.
2. Every fail-open cause, caused for real through the CNI chain (ptp, then
   natra from this checkout): `natra status` (text and --json), `natra top`,
   the exporter's /metrics and /api/pods (the page's document) show the Pod as
   NOT limited, with its cause and since when; DEL clears it.
Everything made here (namespaces, veths, the IFB, qdiscs, pins, processes) is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys

import netns
import observe_net as N
import pytest

from natra.kernel import meta as meta_record
from natra.kernel import pins, qdisc, shaping
from natra.kernel.params import params_for

SKIP = netns.kernel_skip_reason(tools=("ip",))
pytestmark = [pytest.mark.root, pytest.mark.skipif(SKIP is not None, reason=str(SKIP))]
RATE_BPS = 20_000_000
MTU = 1500


@contextlib.contextmanager
def ifb(name: str):
    subprocess.run(["ip", "link", "add", name, "type", "ifb"], check=True, capture_output=True, timeout=10)
    try:
        subprocess.run(["ip", "link", "set", name, "up"], check=True, capture_output=True, timeout=10)
        yield qdisc.link_index(name)
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10)


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} {labels}")


def test_shaped_classes_in_status_top_and_exporter(tmp_path):
    state = str(tmp_path / "state")
    with N.node(1, RATE_BPS, both=True) as node:
        pod = node.pods[0]
        veth = qdisc.link_index(pod.host_if)
        tree = shaping.plan(params_for(RATE_BPS, mode="shape", classes=4), MTU)
        name = shaping.ifb_name(pod.container_id)
        with ifb(name) as ifb_index:
            try:
                shaping.apply(veth, tree)
                shaping.apply(ifb_index, tree)
                where = pins.pin_dir(pod.container_id, node.root)
                record = meta_record.read(where.meta)
                record.update({"shaping": {"to_pod": {"ifindex": veth}, "from_pod": {"ifb": name,
                                                                                     "ifindex": ifb_index}},
                               "direction_modes": {"to_pod": "shape", "from_pod": "shape"}})
                meta_record.write(where.meta, record)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # into the Pod, via the veth
                    for _ in range(200):
                        s.sendto(b"x" * 1000, (pod.ip, 9))
                doc = json.loads(N.tool("status", "--json", root=node.root, state=state))
                [p] = doc["pods"]
                to_pod, from_pod = p["directions"]
                assert (to_pod["mode"], to_pod["device"], from_pod["mode"], from_pod["device"]) == \
                    ("shape", pod.host_if, "shape", name)
                classes = {c["name"]: c for c in to_pod["classes"]}
                assert set(classes) == {"root", "mice", "heavy0", "heavy1", "heavy2", "heavy3"}
                sent = classes["root"]["sent_bytes"]
                leaves = [c for n, c in classes.items() if n != "root"]
                # 200 kB at once is more than a class's queue: what did not leave was dropped.
                assert sum(c["sent_packets"] + c["drops_packets"] for c in leaves) == 200
                assert sent > 0 and sum(c["sent_bytes"] for c in leaves) == sent
                assert all(set(c) >= {"backlog_bytes", "backlog_delay_ns", "drops_packets"}
                           for c in classes.values())
                text = N.tool("status", root=node.root, state=state)
                assert f"mode shape on {pod.host_if}" in text and f"mode shape on {name}" in text
                top = N.tool("top", "--once", "--interval", "0.2", "--no-clear", root=node.root, state=state)
                assert f"mode shape on {pod.host_if}" in top and "heavy0" in top
                with N.exporter(node.root, state) as base:
                    metrics = N.get(base + "/metrics").decode()
                lab = {"pod": pod.name, "direction": "to_pod"}
                assert metric(metrics, "natra_direction_mode", mode="shape", **lab) == 1
                assert metric(metrics, "natra_class_sent_bytes_total", **lab, **{"class": "root"}) == sent
                assert metric(metrics, "natra_class_backlog_seconds", **lab, **{"class": "mice"}) >= 0
                assert metric(metrics, "natra_pod_enforced", **lab) == 1
                # A direction that fell back to police says so, with the reason.
                record.update({"direction_modes": {"to_pod": "shape", "from_pod": "police"},
                               "shape_fallback": {"from_pod": "another root qdisc on the IFB"}})
                meta_record.write(where.meta, record)
                text = N.tool("status", root=node.root, state=state)
                assert "mode police (shaping fell back: another root qdisc on the IFB)" in text
            finally:
                shaping.remove(veth)
    assert not [line for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
                .splitlines() if name in line]


# ---- fail-open, each cause for real ------------------------------------------------------------

def _chain_module():
    sys.path.insert(0, os.path.dirname(__file__))
    import test_cni_chain

    return test_cni_chain


@pytest.fixture
def lab():
    chain = _chain_module()
    if chain.SKIP_REASON:
        pytest.skip(chain.SKIP_REASON)
    made = chain.Lab(None)  # this checkout's natra: the bundle may predate the record
    try:
        yield made
    finally:
        made.close()


CAUSE_LABELS = {"bpffs-not-mounted": "datapath", "object-missing": "datapath", "object-corrupt": "datapath",
                "object-truncated": "datapath", "verifier-rejection": "datapath",
                "invalid-bandwidth-annotation": "invalid_annotation", "peer-mismatch": "peer_check"}


@pytest.mark.parametrize("cause", sorted(CAUSE_LABELS))
def test_every_fail_open_cause_is_seen_in_every_view(lab, cause):
    chain = _chain_module()
    state = os.path.join(lab.tmp, "state")
    if cause == "peer-mismatch":
        ch = lab.chain("1.0.0")
        pod = lab.pod(ch, "peer", capability_args=chain.CONTAINERD_ARGS)
        ptp = ch._run(ch.conflist["plugins"][0], "ADD", pod, None)
        assert ptp.code == 0
        pod.cached_result = ptp.output
        lying = json.loads(json.dumps(ptp.output))
        lying["interfaces"][0]["name"] = "lo"
        assert ch._run(ch.conflist["plugins"][1], "ADD", pod, lying).code == 0
        direction = "to_pod"
    else:
        make_settings, args, _ = chain.FAIL_OPEN[cause]
        ch = lab.chain("1.0.0", **make_settings(lab))
        pod = lab.pod(ch, cause[:6], capability_args=args)
        assert [c.code for c in ch.add(pod)] == [0, 0]
        direction = "to_pod"
    label = CAUSE_LABELS[cause]
    os.makedirs(lab.root, exist_ok=True)  # the bpffs-not-mounted case made no root at all
    try:
        name = pod.k8s["K8S_POD_NAME"]
        text = N.tool("status", root=lab.root, state=state)
        assert "NOT LIMITED" in text and f"default/{name}  {direction}  cause {label}  since " in text
        doc = json.loads(N.tool("status", "--json", root=lab.root, state=state))
        entry = next(n for n in doc["not_limited"] if n["pod"] == name and n["direction"] == direction)
        assert entry["cause"] == label and 0 < doc["wall_ns"] - entry["since_ns"] < 600 * 10**9
        top = N.tool("top", "--once", "--interval", "0.1", "--no-clear", root=lab.root, state=state)
        assert f"NOT LIMITED  default/{name}  {direction}  cause {label}" in top
        with N.exporter(lab.root, state) as base:
            metrics = N.get(base + "/metrics").decode()
            api = json.loads(N.get(base + "/api/pods"))
        assert metric(metrics, "natra_pod_enforced", pod=name, direction=direction) == 0
        assert metric(metrics, "natra_pods_not_limited", cause=label) >= 1
        assert metric(metrics, "natra_fail_open_total", cause=label) >= 1
        assert api["not_limited"] == doc["not_limited"]
        assert [c.code for c in ch.delete(pod)] == [0, 0]
        doc = json.loads(N.tool("status", "--json", root=lab.root, state=state))
        assert not [n for n in doc["not_limited"] if n["pod"] == name]
    finally:
        if cause == "bpffs-not-mounted":
            with contextlib.suppress(OSError):
                os.rmdir(lab.root)
