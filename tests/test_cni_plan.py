"""Request -> Plan: directions, exact configs, host veth candidates, no-op and GC plans, drift."""

import json

import pytest

from natra.cni.errors import CniError
from natra.cni.limits import POD_ANNOTATIONS_CAPABILITY
from natra.cni.plan import configs_in_force, drift, host_candidates, keeps, make_plan
from natra.cni.request import parse_request
from natra.kernel import layout as L
from natra.kernel import params as P

IN, OUT = L.DIR_TO_POD, L.DIR_FROM_POD
MAXU32 = 2**32 - 1
PTP_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "veth1234", "mac": "aa:aa:aa:aa:aa:aa"},
                   {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "sandbox": "/run/netns/p"}],
    "ips": [{"interface": 1, "address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
}
BRIDGE_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "cni0", "mac": "cc:cc:cc:cc:cc:cc"},
                   {"name": "vethb", "mac": "dd:dd:dd:dd:dd:dd"},
                   {"name": "eth0", "mac": "ee:ee:ee:ee:ee:ee", "sandbox": "/run/netns/p"}],
    "ips": [{"interface": 2, "address": "10.2.0.5/24", "gateway": "10.2.0.1"}],
}
ENV = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/p", "CNI_IFNAME": "eth0", "CNI_PATH": "/bin",
       "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_UID=u"}


def plan_of(command="ADD", version="1.0.0", prev=PTP_RESULT, env=None, tick_ns=0, **config):
    body = {"cniVersion": version, "name": "net", "type": "natra", **config}
    if prev is not None:
        body["prevResult"] = prev
    request = parse_request({**ENV, "CNI_COMMAND": command, **(env or {})}, json.dumps(body).encode())
    return make_plan(request, {}, clock_tick_ns=tick_ns)


def containerd(ingress=10_000_000, egress=20_000_000):
    return {"bandwidth": {"IngressRate": ingress, "IngressBurst": MAXU32,
                          "EgressRate": egress, "EgressBurst": MAXU32}}


def test_containerd_add_plans_both_directions_with_clamped_bursts():
    plan = plan_of(runtimeConfig=containerd())
    a = plan.attachment
    assert a.directions == {IN, OUT}
    assert a.host_candidates == ("veth1234",)
    for direction, rate in ((IN, 10_000_000), (OUT, 20_000_000)):
        config = a.configs[direction]
        # The clamp: at most DEFAULT_BURST_TIME_NS of rate, never 2^32-1 bits.
        burst = rate * P.DEFAULT_BURST_TIME_NS // L.NS_PER_SEC
        assert config.tau_nbit == burst * 10**9
        assert config.rate_bps == rate
        # Shaping is the default; the policing fallback comes from the same code path.
        assert config == P.to_config(P.params_for(rate, MAXU32, mode="shape"))
        assert config.shaping and config.redirect_ifindex == 0
        assert a.params[direction] == P.params_for(rate, MAXU32, mode="shape")
        assert a.fallback_config(direction) == P.to_config(P.params_for(rate, MAXU32))
    assert a.shaped() == {IN: a.params[IN], OUT: a.params[OUT]}
    assert a.meta["limits"]["to_pod"]["burst_bits"] == 5_000_000
    assert a.meta["limits"]["to_pod"]["mode"] == "shape" and a.meta["tuning"]["mode"] == "shape"
    assert a.meta["pod"] == "ns/web"
    assert a.meta["ips"] == [ip["address"] for ip in PTP_RESULT["ips"]]  # observability needs them
    assert plan.result == PTP_RESULT and plan.cause is None


def test_with_the_nodes_tick_policing_reads_the_coarse_clock_and_shaping_is_unchanged():
    tick = 4_000_000
    shaped = plan_of(runtimeConfig=containerd(), tick_ns=tick).attachment
    policed = plan_of(runtimeConfig=containerd(), mode="police", tick_ns=tick).attachment
    for direction, rate in ((IN, 10_000_000), (OUT, 20_000_000)):
        assert shaped.configs[direction] == plan_of(runtimeConfig=containerd()).attachment.configs[direction]
        for config in (policed.configs[direction], shaped.fallback_config(direction)):
            assert config == P.to_config(P.params_for(rate, MAXU32), coarse_tick_ns=tick)
            assert config.flags & L.CFG_COARSE_CLOCK
            assert config.tau_nbit == rate * P.DEFAULT_BURST_TIME_NS - rate * tick


def test_one_direction_leaves_the_other_unlimited():
    plan = plan_of(runtimeConfig={"bandwidth": {"egressRate": 1_000_000, "egressBurst": 100_000}},
                   mode="police")
    a = plan.attachment
    assert a.directions == {OUT}
    assert a.configs[IN] == P.to_config(None)
    # A burst below the policing floor is raised to it, and the plan says so.
    assert a.configs[OUT].tau_nbit == P.POLICE_BURST_FLOOR_BITS * 10**9
    assert a.meta["limits"]["from_pod"]["asked_burst_bits"] == 100_000
    assert any("from_pod burst 100000 bits is below the policing floor" in n for n in plan.notes)


def test_shaping_keeps_a_small_burst_and_its_fallback_polices_with_the_floor():
    plan = plan_of(runtimeConfig={"bandwidth": {"egressRate": 1_000_000, "egressBurst": 100_000}})
    a = plan.attachment
    assert a.configs[OUT].tau_nbit == 100_000 * 10**9 and a.configs[OUT].shaping
    assert not any("policing floor" in n for n in plan.notes)
    assert a.fallback[OUT].mode == "police" and a.fallback[OUT].burst_bits == P.POLICE_BURST_FLOOR_BITS
    assert a.fallback[IN] is None and a.params[IN] is None
    assert not a.fallback_config(OUT).shaping


def test_configs_in_force_follow_fallback_and_redirect():
    a = plan_of(runtimeConfig=containerd()).attachment
    both_shaped = configs_in_force(a, {IN: "shape", OUT: "shape"}, {OUT: 42})
    assert both_shaped[IN] == a.configs[IN] and both_shaped[OUT].redirect_ifindex == 42
    fell_back = configs_in_force(a, {IN: "police", OUT: "shape"}, {OUT: 42})
    assert fell_back[IN] == a.fallback_config(IN) and not fell_back[IN].shaping
    police = plan_of(runtimeConfig=containerd(), mode="police").attachment
    assert police.shaped() == {} and configs_in_force(police, {}, {OUT: 42}) == police.configs


def test_a_burst_above_the_floor_is_kept_without_a_note():
    plan = plan_of(runtimeConfig={"bandwidth": {"egressRate": 10_000_000, "egressBurst": 3_000_000}})
    assert plan.attachment.configs[OUT].tau_nbit == 3_000_000 * 10**9 and not plan.notes


def test_no_limits_is_a_pass_through():
    plan = plan_of(version="0.4.0", prev={**PTP_RESULT, "cniVersion": "0.4.0"})
    assert plan.attachment is None and plan.cause is None
    assert plan.result["ips"][0]["version"] == "4"


def test_no_limits_no_prev_result_does_not_crash():
    plan = plan_of(prev=None)
    assert plan.attachment is None and plan.result == {"cniVersion": "1.0.0"}


def test_limits_without_prev_result_is_a_protocol_error():
    with pytest.raises(CniError) as excinfo:
        plan_of(prev=None, runtimeConfig=containerd())
    assert excinfo.value.code == 7 and "chained" in excinfo.value.msg


def test_check_needs_no_prev_result():
    plan = plan_of(command="CHECK", prev=None, runtimeConfig=containerd())
    assert plan.attachment.directions == {IN, OUT} and plan.cause is None


def test_host_candidates_ptp_and_bridge():
    assert host_candidates(PTP_RESULT, "eth0") == ("veth1234",)
    assert host_candidates(BRIDGE_RESULT, "eth0") == ("vethb", "cni0")
    assert host_candidates({}, "eth0") == ()
    assert host_candidates({"interfaces": "x"}, "eth0") == ()


def test_no_host_interface_is_a_fail_open_cause():
    prev = {**PTP_RESULT, "interfaces": [PTP_RESULT["interfaces"][1]]}
    plan = plan_of(prev=prev, runtimeConfig=containerd())
    assert "no host-side interface" in plan.cause


@pytest.mark.parametrize("rate", [1, 500, 800, 8000])
def test_low_rates_the_standard_plugin_accepts_are_limited(rate):
    """Upstream's own test data (800 bit/s, 200 bits) once failed open; it is enforced."""
    plan = plan_of(runtimeConfig={"bandWidth": {"ingressRate": rate, "ingressBurst": 200,
                                                "egressRate": rate, "egressBurst": 200}}, mode="police")
    assert plan.cause is None and plan.attachment.directions == {IN, OUT}
    for direction in (IN, OUT):
        config = plan.attachment.configs[direction]
        assert config.rate_bps == rate and config.tau_nbit == P.POLICE_BURST_FLOOR_BITS * 10**9
    assert plan.attachment.meta["limits"]["to_pod"]["burst_bits"] == P.POLICE_BURST_FLOOR_BITS
    assert sum("below the policing floor" in n for n in plan.notes) == 2


def test_a_rate_above_a_petabit_is_limited_at_the_bound_and_noted():
    plan = plan_of(runtimeConfig={"bandwidth": {"ingressRate": 10**18, "ingressBurst": 10**9}})
    assert plan.cause is None and plan.attachment.configs[IN].rate_bps == L.MAX_RATE_BPS
    assert plan.attachment.meta["limits"]["to_pod"]["asked_rate_bps"] == 10**18
    assert any(f"limited to {L.MAX_RATE_BPS} bit/s" in n for n in plan.notes)


def test_cluster_tuning_and_pod_overrides_reach_the_configs():
    annotations = {"natra.io/width": "4096", "natra.io/window": "50ms"}
    plan = plan_of(runtimeConfig={**containerd(), POD_ANNOTATIONS_CAPABILITY: annotations}, depth=2,
                   attachMode="clsact", flowTable=128)
    a = plan.attachment
    assert {c.width for c in a.configs} == {4096} and {c.depth for c in a.configs} == {2}
    assert a.configs[IN].window_ns == 50_000_000
    assert (a.mode, a.flow_table) == ("clsact", 128)


def test_an_asked_flow_table_is_made_with_the_next_power_of_two():
    plan = plan_of(runtimeConfig=containerd(), flowTable=5000)
    assert plan.cause is None and plan.attachment.flow_table == 8192


def test_malformed_natra_annotation_uses_defaults_and_notes_it():
    annotations = {"natra.io/width": "lots"}
    plan = plan_of(runtimeConfig={**containerd(), POD_ANNOTATIONS_CAPABILITY: annotations})
    assert plan.attachment.configs[IN] == P.to_config(P.params_for(10_000_000, MAXU32, mode="shape"))
    assert any("malformed Natra annotation" in n for n in plan.notes)


@pytest.mark.parametrize(("config", "annotations", "want"), [
    ({}, {}, ("shape", P.DEFAULT_CLASSES, P.DEFAULT_QUEUE_NS)),
    ({"mode": "police"}, {}, ("police", P.DEFAULT_CLASSES, P.DEFAULT_QUEUE_NS)),
    ({"mode": "police", "classes": 4, "queue": "5ms"}, {"natra.io/mode": "shape"}, ("shape", 4, 5_000_000)),
    ({}, {"natra.io/classes": "8", "natra.io/queue": "100ms"}, ("shape", 8, 100_000_000)),
    ({"mode": "police"}, {"natra.io/mode": "queue"}, ("police", P.DEFAULT_CLASSES, P.DEFAULT_QUEUE_NS)),
])
def test_mode_classes_and_queue_reach_the_params(config, annotations, want):
    plan = plan_of(runtimeConfig={**containerd(), POD_ANNOTATIONS_CAPABILITY: annotations}, **config)
    params = plan.attachment.params[IN]
    assert (params.mode, params.classes, params.queue_ns) == want
    assert plan.attachment.configs[IN].shaping == (want[0] == "shape")
    if want[0] == "shape":
        assert plan.attachment.configs[IN].classes == want[1]
    assert any("malformed" in n for n in plan.notes) == (annotations.get("natra.io/mode") == "queue")


def test_extended_annotation_shapes_the_shared_sketch():
    value = json.dumps({"rate": "10M", "burst": "3M", "cms": {"width": 256, "depth": 2,
                                                             "heavyHitterThreshold": 70000}})
    plan = plan_of(runtimeConfig={POD_ANNOTATIONS_CAPABILITY: {"kubernetes.io/ingress-bandwidth": value}})
    a = plan.attachment
    assert a.directions == {IN}
    assert [(c.width, c.depth) for c in a.configs] == [(256, 2), (256, 2)]
    assert a.configs[IN].threshold_bytes == 70000
    assert a.configs[IN].tau_nbit == 3_000_000 * 10**9


def test_invalid_bandwidth_annotation_is_only_a_note():
    plan = plan_of(runtimeConfig={POD_ANNOTATIONS_CAPABILITY: {"kubernetes.io/egress-bandwidth": "10K"}})
    assert plan.attachment is None and plan.cause is None
    assert any("egress-bandwidth" in n for n in plan.notes)


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_keep_set(key):
    plan = plan_of(command="GC", version="1.1.0", prev=None,
                   **{key: [{"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "net1"}]})
    assert plan.keep == {("a", "eth0"), ("b", "net1")}
    assert keeps(plan, "a", "eth0") and keeps(plan, "a", None)
    assert not keeps(plan, "b", "eth0") and not keeps(plan, "c", None)


def test_gc_keep_set_must_be_a_list():
    with pytest.raises(CniError):
        plan_of(command="GC", version="1.1.0", prev=None, **{"cni.dev/valid-attachments": {"a": 1}})


def test_drift():
    a = plan_of(runtimeConfig=containerd()).attachment
    both = {IN: a.configs[IN], OUT: a.configs[OUT]}
    assert drift(a, "tcx", [IN, OUT], both) == []
    assert drift(a, "tcx", [IN], both) == ["from_pod program is not attached"]
    other = plan_of(runtimeConfig=containerd(ingress=3_000_000)).attachment
    problems = drift(a, "tcx", [IN, OUT], {IN: other.configs[IN], OUT: a.configs[OUT]})
    assert len(problems) == 1 and "rate_bps=3000000 (want 10000000)" in problems[0]
    one = plan_of(runtimeConfig={"bandwidth": {"egressRate": 1_000_000, "egressBurst": 100_000}}).attachment
    assert drift(one, "tcx", [IN, OUT], {IN: one.configs[IN], OUT: one.configs[OUT]}) == [
        "to_pod program is attached but to_pod has no limit"]
    assert drift(a, "tcx", [IN, OUT], {}) == ["to_pod config missing", "from_pod config missing"]
