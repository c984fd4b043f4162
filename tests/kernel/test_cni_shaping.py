"""The CNI contract in shaping mode, through the real ptp -> natra chain (issue 16).

Owns the claims of docs/cni.md, "Mode", against the kernel:
  - ADD (shaping, the default) builds Natra's tree on the host veth (into the
    Pod) and on the Pod's IFB (out of the Pod), points the from_pod config's
    redirect at the IFB, records both in the meta record, and traffic flows;
  - CHECK passes right after ADD and reports (code 101) a class or the IFB
    deleted by hand;
  - a repeated ADD keeps the same IFB and the same tree; a re-ADD in police
    mode takes the trees down;
  - DEL removes every qdisc, class and IFB Natra made and nothing else (a
    foreign qdisc on another device stays), also when repeated or when the
    netns is gone;
  - GC removes an orphan IFB of its pin root, not another root's;
  - a foreign root qdisc on the host veth makes to_pod fall back to policing:
    logged, recorded, the Pod limited, the foreign qdisc left alone;
  - police mode from the conflist makes no qdisc and no IFB.
Rule: nt9-* Pods on Lab("shaping") subnets; every device made here (nt9d*
veth pairs, ntifb* IFBs) is removed in a finally or by the Lab's cleanups.
Must not know: the plugin's modules beyond datapath.inspect, shaping and qdisc readers.
"""

from __future__ import annotations

import errno
import secrets
import socket

import chain as C
import pytest
from faultlab import Lab, add_ok, del_ok, inspection, natra_plugin, run, tc, unavailable

from natra.kernel import layout as L
from natra.kernel import params as P
from natra.kernel import pins, qdisc, shapers, shaping, ticks

pytestmark = [pytest.mark.root, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]

IN, OUT = L.DIR_TO_POD, L.DIR_FROM_POD
STATE_DRIFT = 101
FOREIGN_MAJOR = 0x7  # an htb handle Natra never uses


@pytest.fixture
def lab():
    made = Lab("shaping")
    try:
        yield made
    finally:
        made.close()


def ifb_index(pod: C.Pod) -> int | None:
    try:
        return qdisc.link_index(shaping.ifb_name(pod.container_id))
    except qdisc.QdiscError as exc:
        assert exc.errno == errno.ENODEV, exc
        return None


def veth_index(pod: C.Pod) -> int:
    return socket.if_nametoindex(C.host_veth(pod))


def ours_on(ifindex: int) -> list:
    """Natra's qdiscs and classes on a device (tbf 4e53:, htb 4e54: and its classes and leaves)."""
    found = [q for q in qdisc.dump_qdiscs(ifindex) if q.handle >> 16 in (shaping.TBF_MAJOR, P.QDISC_MAJOR)
             or q.parent >> 16 == P.QDISC_MAJOR]
    return found + [c for c in qdisc.dump_classes(ifindex) if c.classid >> 16 == P.QDISC_MAJOR]


def classes(ifindex: int) -> list:
    return [(c.classid, c.parent, c.htb) for c in qdisc.dump_classes(ifindex) if c.kind == "htb"]


def assert_shaped(lab: Lab, pod: C.Pod, rate: int, shaped: set[int]) -> dict:
    """Both directions limited at `rate`; the `shaped` ones by Natra's tree, the others policing."""
    found = inspection(lab, pod)
    assert found is not None and found.ok, found
    record = found.meta
    devices = {}
    for direction in (IN, OUT):
        name = L.DIRECTION_NAMES[direction]
        config = found.configs[direction]
        assert config.rate_bps == rate
        assert config.shaping == (direction in shaped), (name, config)
        assert record["direction_modes"][name] == ("shape" if direction in shaped else "police")
    if IN in shaped:
        devices["to_pod"] = {"ifindex": veth_index(pod)}
        assert shaping.inspect(veth_index(pod)).rate_bps == rate // 8 * 8
    else:
        assert shaping.inspect(veth_index(pod)) is None
    ifb = ifb_index(pod)
    if OUT in shaped:
        assert ifb is not None and found.configs[OUT].redirect_ifindex == ifb
        devices["from_pod"] = {"ifb": shaping.ifb_name(pod.container_id), "ifindex": ifb}
        assert shaping.inspect(ifb).rate_bps == rate // 8 * 8
    else:
        assert ifb is None and found.configs[OUT].redirect_ifindex == 0
    assert record["shaping"] == devices
    return record


def assert_nothing_left(pod: C.Pod, veth: int | None) -> None:
    assert ifb_index(pod) is None
    if veth is not None:
        assert ours_on(veth) == []


def test_add_shapes_both_directions_check_passes_del_leaves_nothing(lab):
    dummy = f"nt9d{secrets.token_hex(3)}"
    run("ip", "link", "add", dummy, "type", "veth", "peer", "name", dummy + "p")
    lab.cleanups.append(lambda: run("ip", "link", "del", dummy, check=False))
    run("tc", "qdisc", "add", "dev", dummy, "root", "handle", f"{FOREIGN_MAJOR:x}:", "htb")
    ch = lab.chain(version="1.1.0")
    rate = lab.rate()
    pod = lab.pod(ch, "both", capability_args=lab.limits(rate))
    call = add_ok(lab, ch, pod)
    assert "(shape)" in call.stderr and "falls back" not in call.stderr, call.stderr
    assert_shaped(lab, pod, rate, {IN, OUT})
    assert qdisc.root_qdisc(ifb_index(pod)).kind == "tbf"
    assert shapers.alias_of(shaping.ifb_name(pod.container_id)) == shapers.owner(pins.resolve_root(lab.root))
    assert C.ping(pod.ip)  # both ways: out of the Pod through the IFB
    assert [c.code for c in ch.check(pod)] == [0, 0]
    veth = veth_index(pod)
    natra_del = ch._run(natra_plugin(ch), "DEL", pod, pod.cached_result)
    assert natra_del.code == 0, natra_del.stderr
    assert_nothing_left(pod, veth)
    assert lab.pins() == []
    assert C.ping(pod.ip)  # unlimited, not broken
    again = ch._run(natra_plugin(ch), "DEL", pod, pod.cached_result)
    assert again.code == 0
    foreign = qdisc.root_qdisc(socket.if_nametoindex(dummy))
    assert (foreign.kind, foreign.handle) == ("htb", qdisc.handle(FOREIGN_MAJOR))
    del_ok(lab, ch, pod)


def test_check_reports_a_class_or_the_ifb_deleted_by_hand(lab):
    ch = lab.chain()
    pod = lab.pod(ch, "drift", capability_args=lab.limits())
    add_ok(lab, ch, pod)
    veth = veth_index(pod)
    heavy3 = qdisc.handle(P.QDISC_MAJOR, L.CLASS_HEAVY_BASE + 3)
    qdisc.delete_qdisc(veth, heavy3)
    qdisc.delete_class(veth, heavy3)
    check = C.natra_call(ch.check(pod))
    assert check.code == 1 and check.output["code"] == STATE_DRIFT, check.stdout
    assert "to_pod qdiscs on" in check.output["details"] and "heavy3" in check.output["details"]
    repair = ch._run(natra_plugin(ch), "ADD", pod, pod.cached_result)  # a repeated ADD repairs the tree
    assert repair.code == 0, repair.stderr
    assert [c.code for c in ch.check(pod)] == [0, 0]
    assert C.ping(pod.ip)
    qdisc.delete_link(shaping.ifb_name(pod.container_id))
    assert not C.ping(pod.ip, attempts=2)  # the program redirects to a device that is gone: dropped
    check = C.natra_call(ch.check(pod))
    assert check.code == 1 and check.output["code"] == STATE_DRIFT
    assert f"from_pod IFB {shaping.ifb_name(pod.container_id)} is missing" in check.output["details"]
    repair = ch._run(natra_plugin(ch), "ADD", pod, pod.cached_result)  # a repeated ADD makes it again
    assert repair.code == 0 and C.ping(pod.ip)
    assert [c.code for c in ch.check(pod)] == [0, 0]
    del_ok(lab, ch, pod)
    assert_nothing_left(pod, None)


def test_repeated_add_keeps_the_ifb_and_the_tree_and_police_takes_them_down(lab):
    ch = lab.chain()
    rate = lab.rate()
    pod = lab.pod(ch, "again", capability_args=lab.limits(rate))
    add_ok(lab, ch, pod)
    first = (ifb_index(pod), classes(veth_index(pod)), classes(ifb_index(pod)))
    natra = natra_plugin(ch)
    for _ in range(2):
        again = ch._run(natra, "ADD", pod, pod.cached_result)
        assert again.code == 0 and "ADD: limited" in again.stderr, again.stderr
        assert (ifb_index(pod), classes(veth_index(pod)), classes(ifb_index(pod))) == first
    assert sum(shaping.is_ifb_name(name) and name == shaping.ifb_name(pod.container_id)
               for _, name in socket.if_nameindex()) == 1
    assert_shaped(lab, pod, rate, {IN, OUT})
    assert [c.code for c in ch.check(pod)] == [0, 0]
    natra["mode"] = "police"  # the operator switches the node to policing; the runtime re-ADDs
    again = ch._run(natra, "ADD", pod, pod.cached_result)
    assert again.code == 0 and "(police)" in again.stderr
    assert_shaped(lab, pod, rate, set())
    assert ours_on(veth_index(pod)) == []
    assert [c.code for c in ch.check(pod)] == [0, 0]
    del_ok(lab, ch, pod)


def test_a_foreign_root_qdisc_on_the_veth_makes_to_pod_police(lab):
    ch = lab.chain()
    rate = lab.rate()
    pod = lab.pod(ch, "foreign", capability_args=lab.limits(rate))
    ptp, natra = ch.conflist["plugins"]
    ptp_add = ch._run(ptp, "ADD", pod, None)
    assert ptp_add.code == 0, ptp_add.stdout
    pod.cached_result = ptp_add.output
    veth = veth_index(pod)
    qdisc.replace_htb_root(veth, FOREIGN_MAJOR, 1)  # somebody else's shaping
    call = ch._run(natra, "ADD", pod, ptp_add.output)
    assert call.code == 0 and call.output == ptp_add.output
    fallback = [line for line in call.stderr.splitlines() if "falls back to police mode" in line]
    assert len(fallback) == 1 and "to_pod" in fallback[0] and "Natra did not make" in fallback[0], call.stderr
    with open(lab.log_file) as f:
        assert fallback[0].split("ADD: ", 1)[1] in f.read()
    record = assert_shaped(lab, pod, rate, {OUT})
    assert "Natra did not make" in record["shape_fallback"]["to_pod"]
    assert "from_pod" not in record["shape_fallback"]
    # Policing with the floor: the asked burst (= rate bits) is below it.
    police = P.params_for(rate, rate)
    assert inspection(lab, pod).configs[IN] == P.to_config(police, coarse_tick_ns=ticks.coarse_tick_ns())
    assert C.ping(pod.ip)
    assert [c.code for c in ch.check(pod)] == [0, 0]
    natra_del = ch._run(natra, "DEL", pod, pod.cached_result)
    assert natra_del.code == 0
    root = qdisc.root_qdisc(veth)
    assert (root.kind, root.handle) == ("htb", qdisc.handle(FOREIGN_MAJOR))  # not ours to remove
    assert_nothing_left(pod, None)
    del_ok(lab, ch, pod)


def test_police_mode_from_the_conflist_makes_no_qdisc(lab):
    ch = lab.chain(mode="police")
    rate = lab.rate()
    pod = lab.pod(ch, "police", capability_args=lab.limits(rate))
    call = add_ok(lab, ch, pod)
    assert "(police)" in call.stderr
    assert_shaped(lab, pod, rate, set())
    assert "shape_fallback" not in inspection(lab, pod).meta
    assert [c.code for c in ch.check(pod)] == [0, 0]
    del_ok(lab, ch, pod)


def test_pod_annotation_picks_the_mode(lab):
    ch = lab.chain(mode="police")
    rate = lab.rate()
    pod = lab.pod(ch, "annot", capability_args={**lab.limits(rate), C.CAPABILITY_ANNOTATIONS: {
        "natra.io/mode": "shape", "natra.io/classes": "4", "natra.io/queue": "5ms"}})
    add_ok(lab, ch, pod)
    assert_shaped(lab, pod, rate, {IN, OUT})
    heavy = [c for c in shaping.inspect(veth_index(pod)).classes if c.name.startswith("heavy")]
    assert len(heavy) == 4
    assert [c.code for c in ch.check(pod)] == [0, 0]
    del_ok(lab, ch, pod)
    assert_nothing_left(pod, None)


def test_del_after_the_netns_is_gone_removes_the_ifb(lab):
    ch = lab.chain()
    pod = lab.pod(ch, "gone", capability_args=lab.limits())
    add_ok(lab, ch, pod)
    assert ifb_index(pod) is not None
    C.delete_netns(pod)  # the veth pair and its tree go with it; the IFB is ours to delete
    for _ in range(2):
        natra_del = ch._run(natra_plugin(ch), "DEL", pod, pod.cached_result)
        assert natra_del.code == 0, natra_del.stderr
    assert_nothing_left(pod, None)
    assert lab.pins() == []


def test_gc_removes_orphan_ifbs_of_its_root_only(lab):
    ch = lab.chain(version="1.1.0")
    live = lab.pod(ch, "gclive", capability_args=lab.limits())
    stale = lab.pod(ch, "gcstale", capability_args=lab.limits())
    for pod in (live, stale):
        add_ok(lab, ch, pod)
    mine = shapers.owner(pins.resolve_root(lab.root))
    orphan = shaping.ifb_name(f"nt9-orphan-{secrets.token_hex(4)}")
    other = shaping.ifb_name(f"nt9-other-{secrets.token_hex(4)}")
    for name, alias in ((orphan, mine), (other, shapers.owner("/elsewhere"))):
        lab.cleanups.append(lambda name=name: qdisc.delete_link(name))
        qdisc.set_link(qdisc.create_ifb(name), alias=alias)
    gc = ch.gc("natra", [live])
    assert gc.code == 0, gc.stdout
    assert ifb_index(live) is not None and ifb_index(stale) is None
    names = {name for _, name in socket.if_nameindex()}
    assert orphan not in names and other in names
    assert inspection(lab, stale) is None
    assert_shaped(lab, live, inspection(lab, live).configs[IN].rate_bps, {IN, OUT})
    assert [c.code for c in ch.check(live)] == [0, 0]
    del_ok(lab, ch, live)


def test_tc_sees_the_tree_natra_reads(lab):
    """iproute2 reads the same tree back: tbf root, htb under it, one bfifo per leaf class."""
    ch = lab.chain()
    pod = lab.pod(ch, "tc", capability_args=lab.limits())
    add_ok(lab, ch, pod)
    for dev in (C.host_veth(pod), shaping.ifb_name(pod.container_id)):
        kinds = sorted(q["kind"] for q in tc("qdisc", "show", "dev", dev) if q["kind"] != "clsact")
        assert kinds == ["bfifo"] * (1 + P.DEFAULT_CLASSES) + ["htb", "tbf"], (dev, kinds)
    del_ok(lab, ch, pod)


def test_a_rate_below_what_qdiscs_count_polices(lab):
    """5 bit/s is a valid limit (the standard plugin takes it) but HTB and TBF count whole bytes
    per second: both directions police, with the policing floor, and say why."""
    ch = lab.chain()
    pod = lab.pod(ch, "slow", capability_args={"bandwidth": {"ingressRate": 5, "ingressBurst": 200,
                                                             "egressRate": 5, "egressBurst": 200}})
    call = add_ok(lab, ch, pod)
    assert call.stderr.count("falls back to police mode") == 2 and "below 8 bit/s" in call.stderr, call.stderr
    assert call.stderr.count("below the policing floor") == 2
    record = assert_shaped(lab, pod, 5, set())
    assert set(record["shape_fallback"]) == {"to_pod", "from_pod"}
    assert record["limits"]["to_pod"]["fallback_burst_bits"] == P.POLICE_BURST_FLOOR_BITS
    assert inspection(lab, pod).configs[IN] == P.to_config(P.params_for(5, 200),
                                                           coarse_tick_ns=ticks.coarse_tick_ns())
    assert [c.code for c in ch.check(pod)] == [0, 0]
    del_ok(lab, ch, pod)
