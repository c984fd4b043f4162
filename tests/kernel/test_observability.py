"""Observability on real traffic: counters, heavy hitters, status, top, metrics.

Three namespace Pods limited to RATE_BPS into the Pod (Natra installed by the
data-path facade). A remote node sends an iperf3 bulk flow into Pods 0 and 1
and short requests into all three. Then:
- every frame Natra passed into a Pod is a frame the host veth transmitted
  (interface counters; no ARP or IPv6 frames cross, so the match is exact),
  and frames = passed + dropped;
- the heavy hitters name each bulk flow (by its fixed client port) and never
  a short request; the short-only Pod has no heavy flow at all;
- `natra status --json`, `/api/pods` and `/metrics` (parsed by
  prometheus_client's own parser) show the same Pods and numbers, and
  `natra top` showed the same Pods and bulk flows while traffic flowed.
"""

from __future__ import annotations

import json
import os
import threading
import time

import netns
import observe_net as N
import pytest
from prometheus_client.parser import text_string_to_metric_families

from natra.node import observe

pytestmark = [pytest.mark.root, pytest.mark.slow]

RATE_BPS = 20_000_000
PODS = 3
BULK_PODS = (0, 1)
TRAFFIC_S = 3
SHORT_COUNT = 20
SHORT_SIZE = 10_000  # bytes: a mouse (the heavy threshold is at least 64 KiB)
SHORT_INTERVAL_S = 0.05
MID_TRAFFIC_S = 1.0  # when the live views start
LIVE_SAMPLES_S = 1.0  # views are sampled this long, every LIVE_SAMPLE_EVERY_S
LIVE_SAMPLE_EVERY_S = 0.05
AGEING_WAIT_S = 0.25  # > two 100 ms windows: a stopped flow is no longer heavy
SETTLE_S = 0.2  # last frames and ACKs in flight after the clients exit
BOTH_WAYS_S = 2


SKIP_REASON = netns.kernel_skip_reason(tools=("iperf3",))
if SKIP_REASON:
    pytestmark.append(pytest.mark.skip(reason=SKIP_REASON))


def _ns_stat(pod: N.Pod, name: str) -> int:
    return int(netns.run("cat", f"/sys/class/net/eth0/statistics/{name}", ns=pod.ns))


@pytest.fixture(scope="module")
def run():
    """The node, its traffic, and what was seen during and after it."""
    with N.node(PODS, RATE_BPS) as node:
        before = {p.container_id: (p.stat("tx_packets"), p.stat("tx_bytes"), _ns_stat(p, "rx_bytes"))
                  for p in node.pods}
        live: dict = {}

        def look_mid_traffic():
            time.sleep(MID_TRAFFIC_S)
            live["top"] = N.tool("top", "--iterations", "2", "--interval", "0.5", "--no-clear",
                                 root=node.root)
            live["views"] = []
            end = time.monotonic() + LIVE_SAMPLES_S
            while time.monotonic() < end:
                live["views"].append(observe.collect(node.root, time.monotonic_ns()))
                time.sleep(LIVE_SAMPLE_EVERY_S)

        with N.servers(node.pods, deadline_s=TRAFFIC_S + 20):
            bulks = {i: N.bulk(node.remote, node.pods[i], i, TRAFFIC_S) for i in BULK_PODS}
            shorts = {i: N.short(node.remote, p, SHORT_COUNT, SHORT_SIZE, SHORT_INTERVAL_S)
                      for i, p in enumerate(node.pods)}
            looker = threading.Thread(target=look_mid_traffic)
            looker.start()
            iperf = {i: N.finish(b, TRAFFIC_S + 20) for i, b in bulks.items()}
            short = {i: N.finish(s, TRAFFIC_S + 20) for i, s in shorts.items()}
            looker.join()
        time.sleep(SETTLE_S)
        after = {p.container_id: (p.stat("tx_packets"), p.stat("tx_bytes"), _ns_stat(p, "rx_bytes"))
                 for p in node.pods}
        yield {"node": node, "before": before, "after": after, "iperf": iperf, "short": short, "live": live}


def _views(node: N.Node) -> dict[str, observe.PodView]:
    return {v.container_id: v for v in observe.collect(node.root, time.monotonic_ns())}


def test_counters_equal_what_crossed_the_veth(run):
    views = _views(run["node"])
    assert set(views) == {p.container_id for p in run["node"].pods}
    for p in run["node"].pods:
        d = views[p.container_id].direction("to_pod")
        tx_packets = run["after"][p.container_id][0] - run["before"][p.container_id][0]
        tx_bytes = run["after"][p.container_id][1] - run["before"][p.container_id][1]
        rx_bytes = run["after"][p.container_id][2] - run["before"][p.container_id][2]
        passed_packets = sum(t.packets for t in d.traffic if t.action != observe.ACTION_DROP)
        dropped_packets = sum(t.packets for t in d.traffic if t.action == observe.ACTION_DROP)
        assert (passed_packets, d.passed_bytes) == (tx_packets, tx_bytes), p.name
        assert rx_bytes == d.passed_bytes, p.name
        assert d.counters["frames"] == passed_packets + dropped_packets
        assert d.counters["bytes"] == d.passed_bytes + d.dropped_bytes
        assert d.counters["ipv4"] == d.counters["frames"]  # nothing else was sent


def test_the_limit_was_reached_and_only_heavy_flows_paid(run):
    views = _views(run["node"])
    for i, p in enumerate(run["node"].pods):
        d = views[p.container_id].direction("to_pod")
        mouse_drops = sum(t.bytes for t in d.traffic if (t.klass, t.action) == ("mouse", "drop"))
        assert mouse_drops == 0, p.name
        assert run["short"][i]["failures"] == 0
        if i in BULK_PODS:
            assert d.dropped_bytes > 0, f"{p.name}: the bulk flow never met the limit"
            received = run["iperf"][i]["end"]["sum_received"]["bytes"]
            assert received <= d.passed_bytes  # payload only; frames add headers
        # Each short request's payload passed as a mouse.
        mice = sum(t.bytes for t in d.traffic if (t.klass, t.action) == ("mouse", "pass"))
        assert mice >= SHORT_COUNT * SHORT_SIZE


def _bulk_key(run, i: int) -> str:
    return f"tcp {run['node'].remote.ip}:{N.BULK_CPORT_BASE + i} > {run['node'].pods[i].ip}:{N.IPERF_PORT}"


def test_heavy_hitters_list_the_bulk_flow_and_not_the_short_ones(run):
    views = _views(run["node"])
    for i, p in enumerate(run["node"].pods):
        d = views[p.container_id].direction("to_pod")
        flows = {h.flow: h for h in d.heavy_hitters}
        assert not [f for f in flows if f.endswith(f":{N.SHORT_PORT}")], flows
        if i in BULK_PODS:
            bulk = flows[_bulk_key(run, i)]
            assert bulk.passed_bytes > 0 and bulk.dropped_bytes > 0
            heavy_bytes = sum(t.bytes for t in d.traffic if t.klass == observe.CLASS_HEAVY)
            assert bulk.passed_bytes + bulk.dropped_bytes <= heavy_bytes
        else:
            assert flows == {} and d.counters["flow_new"] == 0


def test_heavy_hitters_were_current_during_traffic_and_age_out_after(run):
    # A TCP flow held to its share may pause for an RTO, so "current" is checked
    # over samples taken every 50 ms while traffic flowed, not at one instant.
    for i in BULK_PODS:
        cid = run["node"].pods[i].container_id
        seen = [next(v for v in views if v.container_id == cid).direction("to_pod")
                for views in run["live"]["views"]]
        assert any(d.heavy_active >= 1 for d in seen)
        assert any(d.heavy_hitters and d.heavy_hitters[0].flow == _bulk_key(run, i)
                   and d.heavy_hitters[0].active for d in seen)
        assert all(d.heavy_active <= 1 for d in seen)  # one bulk flow; short requests never count
    time.sleep(AGEING_WAIT_S)
    for v in _views(run["node"]).values():
        d = v.direction("to_pod")
        assert d.heavy_active == 0 and not any(h.active for h in d.heavy_hitters)


def test_top_showed_the_same_pods_and_bulk_flows(run):
    text = run["live"]["top"]
    for i, p in enumerate(run["node"].pods):
        assert f"{N.POD_NAMESPACE}/{p.name}" in text
        if i in BULK_PODS:
            assert _bulk_key(run, i) in text


def _comparable(doc: dict) -> dict:
    """The parts of the JSON document that do not depend on when it was read."""
    out = {}
    for pod in doc["pods"]:
        dirs = {}
        for d in pod["directions"]:
            dirs[d["direction"]] = {
                "limit": d["limit"], "traffic": d["traffic"], "verdicts": d["verdicts"],
                "counters": d["counters"],
                "hitters": [(h["key"], h["flow"], h["estimate_bytes"], h["passed_bytes"], h["dropped_bytes"])
                            for h in d["heavy_hitters"]],
            }
        out[pod["container_id"]] = {k: pod[k] for k in
                                    ("namespace", "pod", "uid", "interface", "attach_mode")}
        out[pod["container_id"]]["directions"] = dirs
    return out


def test_status_json_api_and_metrics_agree(run):
    node = run["node"]
    time.sleep(AGEING_WAIT_S)  # heavy_active depends on `now`; let every flow age out first
    status = json.loads(N.tool("status", "--json", root=node.root))
    with N.exporter(node.root) as base:
        api = json.loads(N.get(base + "/api/pods"))
        text = N.get(base + "/metrics").decode()
    assert _comparable(status) == _comparable(api)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [s.value for s in families["natra_pods"].samples] == [PODS]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    for pod in status["pods"]:
        assert (pod["namespace"], pod["pod"]) == (N.POD_NAMESPACE, pod["pod"])
        base_labels = {"namespace": pod["namespace"], "pod": pod["pod"]}
        mode = tuple(sorted({**base_labels, "mode": pod["attach_mode"]}.items()))
        assert samples[("natra_attach_mode", mode)] == 1
        for d in pod["directions"]:
            series = {k for k in samples if ("direction", d["direction"]) in k[1]
                      and ("pod", pod["pod"]) in k[1]}
            if not d["attached"] and not d["counters"]["frames"]:
                assert not series  # no program on that hook: no series
                continue
            for t in d["traffic"]:
                labels = {**base_labels, "direction": d["direction"],
                          "class": t["klass"], "action": t["action"]}
                key = tuple(sorted(labels.items()))
                assert samples[("natra_bytes_total", key)] == t["bytes"]
                assert samples[("natra_packets_total", key)] == t["packets"]
            if d["limit"]:
                lab = tuple(sorted({**base_labels, "direction": d["direction"]}.items()))
                assert samples[("natra_limit_bytes_per_second", lab)] == RATE_BPS / 8
                assert samples[("natra_heavy_flow_entries", lab)] == d["flow_entries"]
                assert samples[("natra_heavy_hitters", lab)] == d["heavy_active"]


def test_flows_of_both_directions_are_told_apart_by_the_pods_route():
    """Both directions limited: the shared flow table is split by the Pod's /32 host route."""
    with N.node(1, RATE_BPS, both=True) as node:
        p, remote = node.pods[0], node.remote
        with N.servers(node.pods, deadline_s=TRAFFIC_S + 20, iperf_ports=(N.IPERF_PORT, N.IPERF_PORT + 1)):
            into = N.bulk(remote, p, 0, BOTH_WAYS_S)
            out = N.bulk(remote, p, 1, BOTH_WAYS_S, port=N.IPERF_PORT + 1, reverse=True)
            N.finish(into, BOTH_WAYS_S + 20)
            N.finish(out, BOTH_WAYS_S + 20)
        v = _views(node)[p.container_id]
    assert v.unassigned_flows == 0
    to_pod = [h.flow for h in v.direction("to_pod").heavy_hitters]
    from_pod = [h.flow for h in v.direction("from_pod").heavy_hitters]
    assert f"tcp {remote.ip}:{N.BULK_CPORT_BASE} > {p.ip}:{N.IPERF_PORT}" in to_pod
    assert f"tcp {p.ip}:{N.IPERF_PORT + 1} > {remote.ip}:{N.BULK_CPORT_BASE + 1}" in from_pod
    assert all(f.split(" > ")[1].startswith(p.ip + ":") for f in to_pod)
    assert all(f.split(" ")[1].startswith(p.ip + ":") for f in from_pod)


def test_a_pod_pinned_without_the_flow_keys_map_is_still_shown():
    """A Pod limited by a version before the array of flow slots has no natra_flow_keys
    pin (and a flow table of another layout): status still lists it, with its limits
    and counters, and no heavy hitters, instead of taking it for a Pod being deleted."""
    from natra.kernel import pins

    with N.node(1, RATE_BPS) as node:
        p = node.pods[0]
        os.unlink(pins.pin_dir(p.container_id, node.root).map("natra_flow_keys"))
        v = _views(node)[p.container_id]
    assert v.direction("to_pod").limited and v.direction("to_pod").heavy_hitters == ()
