"""The executor's decisions (natra/cni/executor.py) without root, through run(env, stdin).

Each CNI call goes through natra.cni.plugin.run as the runtime makes it, with the
executor's Kernel replaced by tests/fake_datapath.py's FakeDatapath: ADD that
limits (what install is given, the log line, the fail-open record cleared), a
shaped direction falling back to policing, fail-open when the peer check or the
data path fails, DEL, CHECK on matching and drifted state (with the CNI code of
each Kind), GC and STATUS. The fake only reaches these branches; that the data
path really limits, and that CHECK reads the real kernel, is tested as root in
tests/kernel/test_cni_chain.py, tests/kernel/test_faults.py and
tests/kernel/test_datapath.py.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
from fake_datapath import HOST_IFINDEX, IFB_IFINDEX, FakeDatapath

from natra.cni import executor, failopen, versions
from natra.cni.errors import Kind
from natra.cni.plan import make_plan
from natra.cni.plugin import run
from natra.cni.request import parse_request
from natra.kernel import layout as L
from natra.kernel import params as P
from natra.kernel.datapath import DatapathError, Hook

NOW = 1_700_000_000 * 10**9
NETNS = "/run/netns/nt4-fake"
CID = "nt4-c1"
RATE = 10_000_000
PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "veth1234", "mac": "aa:aa:aa:aa:aa:aa"},
                   {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "sandbox": NETNS}],
    "ips": [{"interface": 1, "address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}
BOTH = {"bandwidth": {"IngressRate": RATE, "IngressBurst": 2**32 - 1, "EgressRate": RATE,
                      "EgressBurst": 2**32 - 1}}


@pytest.fixture
def where(tmp_path):
    return {"NATRA_BPFFS_ROOT": str(tmp_path / "bpf"), "NATRA_STATE_DIR": str(tmp_path / "state"),
            "NATRA_LOG_FILE": ""}


@pytest.fixture
def fake():
    """The Pod's eth0 in NETNS has the host veth veth1234 as its peer."""
    return FakeDatapath(peers={(NETNS, "eth0"): (HOST_IFINDEX, "veth1234")})


def request(command, where, *, version="1.0.0", prev=PREV, cid=CID, **config):
    body = {"cniVersion": version, "name": "net", "type": "natra", **config}
    if prev is not None:
        body["prevResult"] = versions.convert_result(prev, version)
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": NETNS, "CNI_IFNAME": "eth0",
           "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "K8S_POD_NAME=web;K8S_POD_NAMESPACE=ns;K8S_POD_UID=u-1",
           **where}
    return env, json.dumps(body).encode()


def call(command, where, fake, **kwargs):
    """(exit code, parsed stdout or None, log lines as (level, message))."""
    env, stdin = request(command, where, **kwargs)
    err = io.StringIO()
    code, out = run(env, stdin, now=NOW, stderr=err, kernel=fake.kernel() if fake else executor.KERNEL)
    lines = [line.split(" ", 3)[2:] for line in err.getvalue().splitlines()]
    logged = [(level, rest.split(": ", 1)[1]) for level, rest in lines]
    return code, (json.loads(out) if out.strip() else None), logged


def plan_of(command, where, **kwargs):
    """The plan the plugin makes for this call (with this node's timer tick, as it does)."""
    from natra.kernel import ticks

    env, stdin = request(command, where, **kwargs)
    return make_plan(parse_request(env, stdin), env, clock_tick_ns=ticks.coarse_tick_ns())


def marker(where, cid=CID):
    return failopen.read(where["NATRA_STATE_DIR"], cid)


def seed_marker(where, cid=CID):
    failopen.write(where["NATRA_STATE_DIR"], failopen.Record(
        cid, directions={"to_pod": {"cause": "datapath", "message": "an earlier ADD failed"}}, since_ns=1))
    assert marker(where, cid) is not None


def error_code(out):
    assert set(out) == {"cniVersion", "code", "msg", "details"}
    return out["code"]


# ---- ADD ------------------------------------------------------------------------------------

def test_add_installs_what_the_plan_says_and_clears_the_marker(where, fake):
    seed_marker(where)  # an earlier ADD failed open; this one limits everything asked
    code, out, logged = call("ADD", where, fake, runtimeConfig=BOTH)
    assert code == 0
    assert out == versions.convert_result(PREV, "1.0.0")
    assert marker(where) is None
    attachment = plan_of("ADD", where, runtimeConfig=BOTH).attachment
    [(cid, got)] = fake.called("install")
    assert cid == CID and got["host_ifname"] == "veth1234"
    assert got["directions"] == {L.DIR_TO_POD, L.DIR_FROM_POD}
    assert got["configs"] == attachment.configs
    assert [c.rate_bps for c in got["configs"]] == [RATE, RATE]
    assert got["mode"] == "auto" and got["flow_table"] == attachment.flow_table
    assert got["root"] == where["NATRA_BPFFS_ROOT"] and got["object_path"] is None
    assert got["meta"]["pod"] == "ns/web" and got["meta"]["pod_uid"] == "u-1"
    assert got["meta"]["ips"] == ["10.1.0.5/24"]
    wishes = got["shaping"]
    assert sorted(wishes) == [L.DIR_TO_POD, L.DIR_FROM_POD]
    for direction, wish in wishes.items():
        assert wish.params.mode == "shape" and wish.params.rate_bps == RATE
        assert wish.fallback == attachment.fallback_config(direction)
        assert wish.fallback != attachment.configs[direction]  # the policing config, not the shaping one
    assert fake.called("remove") == []
    assert logged[-1] == ("INFO", f"ADD: limited to_pod {RATE} bit/s burst "
                          f"{attachment.configs[0].tau_nbit // 10**9} bits (shape); from_pod {RATE} bit/s "
                          f"burst {attachment.configs[1].tau_nbit // 10**9} bits (shape) on veth1234 via tcx")
    assert not [m for level, m in logged if level != "INFO"]


def test_add_one_direction_installs_only_that_direction(where, fake):
    code, _, logged = call("ADD", where, fake, runtimeConfig={"bandwidth": {
        "EgressRate": RATE, "EgressBurst": 2**32 - 1}})
    [(_, got)] = fake.called("install")
    assert code == 0 and got["directions"] == {L.DIR_FROM_POD} and sorted(got["shaping"]) == [L.DIR_FROM_POD]
    assert logged[-1][1].startswith(f"ADD: limited from_pod {RATE} bit/s") and "to_pod" not in logged[-1][1]


def test_add_says_when_tcx_was_unavailable(where, fake):
    fake.tcx_error = "kernel 6.1 has no tcx"
    code, _, logged = call("ADD", where, fake, runtimeConfig=BOTH)
    assert code == 0
    assert logged[-1][1].endswith("on veth1234 via clsact (tcx unavailable: kernel 6.1 has no tcx)")


def test_add_with_a_shape_fallback_logs_it_and_polices(where, fake):
    fake.shape_fails = {"from_pod": "ifb: Operation not supported"}
    code, out, logged = call("ADD", where, fake, runtimeConfig=BOTH)
    attachment = plan_of("ADD", where, runtimeConfig=BOTH).attachment
    assert code == 0 and out == versions.convert_result(PREV, "1.0.0")
    errors = [m for level, m in logged if level == "ERROR"]
    assert errors == ["ADD: from_pod falls back to police mode (the Pod is limited, by dropping): "
                      "shaping qdiscs cannot be installed: ifb: Operation not supported"]
    # The B of R*t + B the fallback keeps (its bucket gave a tick of rate up for the coarse clock).
    fallback_burst = P.promised_burst_bits(attachment.fallback_config(L.DIR_FROM_POD),
                                           attachment.clock_tick_ns)
    assert fallback_burst == attachment.fallback[L.DIR_FROM_POD].burst_bits
    assert logged[-1] == ("INFO", f"ADD: limited to_pod {RATE} bit/s burst "
                          f"{attachment.configs[0].tau_nbit // 10**9} bits (shape); from_pod {RATE} bit/s "
                          f"burst {fallback_burst} bits (police) on veth1234 via tcx")
    assert marker(where) is None  # limited (by dropping) is not failed open
    # CHECK reads the fallback back from the record: the policing config is the one in force,
    # and only the direction that still shapes has its qdiscs compared.
    code, out, logged = call("CHECK", where, fake, runtimeConfig=BOTH)
    assert (code, out) == (0, None), out
    assert [kwargs["shaped"].keys() for _, kwargs in fake.called("shaping_drift")] == [{L.DIR_TO_POD}]


def test_add_shape_fallback_under_an_asked_burst_warns_of_the_policing_floor(where, fake):
    fake.shape_fails = {"to_pod": "tbf: No such device"}
    small = {"bandwidth": {"IngressRate": RATE, "IngressBurst": 8000}}
    code, _, logged = call("ADD", where, fake, runtimeConfig=small)
    assert code == 0
    warns = [m for level, m in logged if level == "WARN"]
    assert any(m.startswith("to_pod burst 8000 bits is below the policing floor") for m in warns), logged


def test_add_fails_open_when_the_datapath_fails(where, fake):
    fake.failures["install"] = DatapathError("load object", "verifier rejected the program")
    code, out, logged = call("ADD", where, fake, runtimeConfig=BOTH)
    assert code == 0 and out == versions.convert_result(PREV, "1.0.0")
    message = "data path: load object: verifier rejected the program"
    assert logged[-1] == ("ERROR", f"ADD failed open, Pod is NOT limited: {message}")
    assert fake.called("remove") == [(CID, {"root": where["NATRA_BPFFS_ROOT"]})]  # nothing half-made left
    record = marker(where)
    assert record.directions == {"to_pod": {"cause": "datapath", "message": message},
                                 "from_pod": {"cause": "datapath", "message": message}}
    assert (record.pod, record.pod_uid, record.ifname, record.since_ns) == ("ns/web", "u-1", "eth0", NOW)
    # CRI-O calls CHECK right after ADD: nothing is installed, and CHECK passes on the record.
    code, out, logged = call("CHECK", where, fake, runtimeConfig=BOTH)
    assert (code, out) == (0, None)
    assert logged[-1][0] == "WARN" and "CHECK passes: ADD failed open earlier" in logged[-1][1]
    assert message in logged[-1][1]


def test_add_fails_open_even_when_its_cleanup_fails(where, fake):
    fake.failures["install"] = DatapathError("attach to_pod", "EBUSY")
    fake.failures["remove"] = OSError("bpffs gone")
    code, out, logged = call("ADD", where, fake, runtimeConfig=BOTH)
    assert code == 0 and out == versions.convert_result(PREV, "1.0.0")
    assert ("WARN", "cleanup after failed ADD: bpffs gone") in logged
    assert logged[-1] == ("ERROR", "ADD failed open, Pod is NOT limited: data path: attach to_pod: EBUSY")
    assert marker(where).directions["to_pod"]["cause"] == "datapath"


def test_add_fails_open_when_the_peer_cannot_be_found(where, fake):
    fake.peers.clear()  # the Pod's netns is gone
    code, out, logged = call("ADD", where, fake, runtimeConfig=BOTH)
    assert code == 0 and out == versions.convert_result(PREV, "1.0.0")
    assert fake.called("install") == []
    assert fake.called("remove") == [(CID, {"root": where["NATRA_BPFFS_ROOT"]})]
    level, message = logged[-1]
    assert level == "ERROR" and message.startswith(
        f"ADD failed open, Pod is NOT limited: peer check: cannot find the peer of eth0 in {NETNS}: ")
    assert {d["cause"] for d in marker(where).directions.values()} == {"peer_check"}


def test_add_fails_open_when_the_peer_is_not_in_prev_result(where, fake):
    fake.peers[(NETNS, "eth0")] = (77, "vethOTHER")
    code, out, logged = call("ADD", where, fake, runtimeConfig=BOTH)
    assert code == 0 and out == versions.convert_result(PREV, "1.0.0")
    assert fake.called("install") == []
    assert logged[-1] == ("ERROR", "ADD failed open, Pod is NOT limited: peer check: the peer of eth0 "
                          "is vethOTHER (ifindex 77), which prevResult does not list "
                          "(host interfaces: veth1234)")
    assert set(marker(where).directions) == {"to_pod", "from_pod"}


def test_add_fails_open_when_the_datapath_cannot_be_imported(where, fake):
    def broken():
        raise executor.FailOpen("natra.kernel.datapath cannot be imported: no libbpf", "datapath_unavailable")

    kernel = executor.Kernel(datapath=broken, peer=fake.peer)
    env, stdin = request("ADD", where, runtimeConfig=BOTH)
    err = io.StringIO()
    code, out = run(env, stdin, now=NOW, stderr=err, kernel=kernel)
    assert code == 0 and json.loads(out) == versions.convert_result(PREV, "1.0.0")
    assert "cleanup after failed ADD: natra.kernel.datapath cannot be imported" in err.getvalue()
    assert {d["cause"] for d in marker(where).directions.values()} == {"datapath_unavailable"}


def test_add_without_limits_never_touches_the_kernel(where, fake):
    seed_marker(where)
    code, out, logged = call("ADD", where, fake)
    assert (code, out) == (0, versions.convert_result(PREV, "1.0.0"))
    assert fake.calls == [] and marker(where) is None
    assert logged == [("INFO", "ADD: no bandwidth limits; result passed through")]


# ---- DEL ------------------------------------------------------------------------------------

def test_del_removes_and_clears_the_marker(where, fake):
    call("ADD", where, fake, runtimeConfig=BOTH)
    seed_marker(where)
    code, out, logged = call("DEL", where, fake, runtimeConfig=BOTH)
    assert (code, out) == (0, None)
    assert fake.called("remove") == [(CID, {"root": where["NATRA_BPFFS_ROOT"]})]
    assert fake.installed == {} and marker(where) is None
    assert logged == [("INFO", "DEL: removed")]


def test_del_succeeds_when_removal_fails(where, fake):
    seed_marker(where)
    fake.failures["remove"] = DatapathError("unpin /sys/fs/bpf/natra/x", "EPERM")
    code, out, logged = call("DEL", where, fake, runtimeConfig=BOTH)
    assert (code, out) == (0, None)
    assert logged == [("ERROR", "DEL: could not remove everything (GC will retry): "
                                "unpin /sys/fs/bpf/natra/x: EPERM")]
    assert marker(where) is None


# ---- CHECK ----------------------------------------------------------------------------------

def test_check_passes_on_what_add_installed(where, fake):
    call("ADD", where, fake, runtimeConfig=BOTH)
    code, out, logged = call("CHECK", where, fake, runtimeConfig=BOTH)
    assert (code, out) == (0, None)
    assert logged == [("INFO", "CHECK: tcx programs and configs match on veth1234")]
    [(cid, kwargs)] = fake.called("shaping_drift")
    assert cid == CID and set(kwargs["shaped"]) == {L.DIR_TO_POD, L.DIR_FROM_POD}
    assert fake.installed[CID].configs[L.DIR_FROM_POD].redirect_ifindex == IFB_IFINDEX


def test_check_reports_config_drift(where, fake):
    call("ADD", where, fake, runtimeConfig=BOTH)
    found = fake.installed[CID]
    changed = {**found.configs, L.DIR_TO_POD: replace(found.configs[L.DIR_TO_POD], rate_bps=RATE // 2)}
    fake.installed[CID] = replace(found, configs=changed)
    code, out, _ = call("CHECK", where, fake, runtimeConfig=BOTH)
    assert code == 1 and error_code(out) == Kind.STATE_DRIFT.value == 101
    assert out["msg"] == "Natra state differs from the config"
    assert f"to_pod config differs: rate_bps={RATE // 2} (want {RATE})" in out["details"]
    assert "from_pod" not in out["details"]


def test_check_reports_a_limit_changed_since_add(where, fake):
    call("ADD", where, fake, runtimeConfig=BOTH)
    faster = {"bandwidth": {**BOTH["bandwidth"], "EgressRate": 2 * RATE}}
    code, out, _ = call("CHECK", where, fake, runtimeConfig=faster)
    assert error_code(out) == Kind.STATE_DRIFT.value
    assert f"from_pod config differs: rate_bps={RATE} (want {2 * RATE})" in out["details"]


def test_check_reports_missing_state(where, fake):
    code, out, _ = call("CHECK", where, fake, runtimeConfig=BOTH)
    assert code == 1 and error_code(out) == Kind.STATE_MISSING.value == 100
    assert out["msg"] == "Natra state missing" and CID in out["details"]


def test_check_reports_unreadable_state(where, fake):
    fake.failures["inspect"] = DatapathError("container id", "bad name")
    code, out, _ = call("CHECK", where, fake, runtimeConfig=BOTH)
    assert code == 1 and error_code(out) == Kind.STATE_UNREADABLE.value == 102
    assert out["details"] == "container id: bad name"


def test_check_passes_on_unreadable_state_after_a_failed_open_add(where, fake):
    seed_marker(where)
    fake.failures["inspect"] = OSError("bpffs not mounted")
    code, out, logged = call("CHECK", where, fake, runtimeConfig=BOTH)
    assert (code, out) == (0, None)
    assert logged == [("WARN", "CHECK passes: ADD failed open (to_pod: an earlier ADD failed); "
                               "state unreadable: bpffs not mounted")]


def test_check_reports_shaping_drift(where, fake):
    call("ADD", where, fake, runtimeConfig=BOTH)
    fake.shaping_problems = ["to_pod: tbf rate 5000000 bit/s, plan 10000000"]
    code, out, _ = call("CHECK", where, fake, runtimeConfig=BOTH)
    assert error_code(out) == Kind.STATE_DRIFT.value
    assert out["details"] == "to_pod: tbf rate 5000000 bit/s, plan 10000000"


def test_check_reports_unreadable_qdiscs(where, fake):
    call("ADD", where, fake, runtimeConfig=BOTH)
    fake.failures["shaping_drift"] = OSError("netlink: EPERM")
    code, out, _ = call("CHECK", where, fake, runtimeConfig=BOTH)
    assert error_code(out) == Kind.STATE_UNREADABLE.value
    assert (out["msg"], out["details"]) == ("cannot read Natra's qdiscs", "netlink: EPERM")


def test_check_reports_inspection_problems_without_reading_qdiscs(where, fake):
    call("ADD", where, fake, runtimeConfig=BOTH)
    found = fake.installed[CID]
    hooks = {**found.hooks, L.DIR_FROM_POD: Hook(L.DIR_FROM_POD, False, "no tcx link")}
    fake.installed[CID] = replace(found, hooks=hooks, problems=["from_pod: no tcx link"])
    code, out, _ = call("CHECK", where, fake, runtimeConfig=BOTH)
    assert error_code(out) == Kind.STATE_DRIFT.value
    assert out["details"] == "from_pod: no tcx link; from_pod program is not attached"
    assert fake.called("shaping_drift") == []


def test_check_reports_a_host_interface_prev_result_does_not_list(where, fake):
    call("ADD", where, fake, runtimeConfig=BOTH)
    moved = {**PREV, "interfaces": [{"name": "vethNEW", "mac": "cc:cc:cc:cc:cc:cc"}, PREV["interfaces"][1]]}
    code, out, _ = call("CHECK", where, fake, prev=moved, runtimeConfig=BOTH)
    assert error_code(out) == Kind.STATE_DRIFT.value
    assert out["details"] == "attached to veth1234, prevResult lists vethNEW"


def test_check_reports_the_wrong_attach_mode(where, fake):
    call("ADD", where, fake, runtimeConfig=BOTH)
    code, out, _ = call("CHECK", where, fake, runtimeConfig=BOTH, attachMode="clsact")
    assert error_code(out) == Kind.STATE_DRIFT.value
    assert out["details"] == "attached with tcx, config asks for clsact"


# ---- GC -------------------------------------------------------------------------------------

def add_containers(where, fake, *cids):
    for cid in cids:
        code, _, _ = call("ADD", where, fake, cid=cid, runtimeConfig=BOTH)
        assert code == 0 and cid in fake.installed


def gc(where, fake, valid):
    entries = [{"containerID": cid, "ifname": ifname} for cid, ifname in valid]
    return call("GC", where, fake, version="1.1.0", prev=None, **{"cni.dev/valid-attachments": entries})


def test_gc_keeps_valid_containers_and_removes_stale_ones(where, fake):
    add_containers(where, fake, "keep-1", "stale-1", "stale-2", "other-if")
    for cid in ("keep-1", "stale-1"):
        seed_marker(where, cid)
    fake.orphan_ifbs = {"ifb-stale-1": "stale-1", "ifb-keep-1": "keep-1"}
    code, out, logged = gc(where, fake, [("keep-1", "eth0"), ("other-if", "net1")])
    assert (code, out) == (0, None)
    assert sorted(cid for cid, _ in fake.called("remove")) == ["other-if", "stale-1", "stale-2"]
    assert sorted(fake.installed) == ["keep-1"]
    [(_, kwargs)] = fake.called("remove_orphan_ifbs")
    assert kwargs["keep"] == {"keep-1", "other-if"}
    assert fake.orphan_ifbs == {"ifb-keep-1": "keep-1"}
    assert logged == [("INFO", "GC: removed 3 stale of 4 installed; orphan IFBs ifb-stale-1")]
    assert marker(where, "keep-1") is not None and marker(where, "stale-1") is None


def test_gc_removes_a_container_whose_state_is_unreadable(where, fake):
    add_containers(where, fake, "a", "b")
    fake.failures[("inspect", "b")] = OSError("meta unreadable")
    code, _, logged = gc(where, fake, [("a", "eth0")])
    assert code == 0 and sorted(fake.installed) == ["a"]
    assert logged == [("INFO", "GC: removed 1 stale of 2 installed")]


def test_gc_partial_failure_is_gc_incomplete(where, fake):
    add_containers(where, fake, "a", "b", "c")
    fake.failures[("remove", "c")] = DatapathError("remove shaping", "EBUSY")
    fake.ifb_failures = ["delete ifb-x: EPERM"]
    code, out, logged = gc(where, fake, [("a", "eth0")])
    assert code == 1 and error_code(out) == Kind.GC_INCOMPLETE.value == 103
    assert out["details"] == "c: remove shaping: EBUSY; delete ifb-x: EPERM"
    assert sorted(fake.installed) == ["a", "c"]  # b went; c could not
    assert ("INFO", "GC: removed 1 stale of 3 installed") in logged


def test_gc_cannot_list_is_an_io_failure(where, fake):
    fake.failures["list_installed"] = OSError("bpffs not mounted")
    code, out, _ = gc(where, fake, [])
    assert error_code(out) == Kind.IO_FAILURE.value
    assert out["details"] == "bpffs not mounted"


def test_gc_reports_when_ifbs_cannot_be_listed(where, fake):
    add_containers(where, fake, "a")
    fake.failures["remove_orphan_ifbs"] = OSError("netlink: EPERM")
    code, out, _ = gc(where, fake, [])
    assert error_code(out) == Kind.GC_INCOMPLETE.value
    assert out["details"] == "list IFB devices: netlink: EPERM"
    assert fake.installed == {}


# ---- STATUS ---------------------------------------------------------------------------------

def status(where, fake, **config):
    return call("STATUS", where, fake, version="1.1.0", prev=None, **config)


def test_status_is_silent_when_ready(where, fake):
    assert status(where, fake)[:2] == (0, None)
    assert fake.called("probe") == [(None, {"root": where["NATRA_BPFFS_ROOT"]})]


def test_status_problems_are_not_available(where, fake, tmp_path):
    fake.probe_problems = ["bpffs is not mounted at /sys/fs/bpf"]
    code, out, _ = status(where, fake, objectPath=str(tmp_path / "no.o"))
    assert code == 1 and error_code(out) == Kind.NOT_AVAILABLE.value == 50
    assert out["details"] == (f"bpffs is not mounted at /sys/fs/bpf; BPF object {tmp_path / 'no.o'} "
                              "(objectPath) does not exist")


def test_status_when_the_probe_fails_or_the_datapath_is_missing(where, fake):
    fake.failures["probe"] = RuntimeError("statfs crashed")
    code, out, _ = status(where, fake)
    assert error_code(out) == Kind.NOT_AVAILABLE.value and out["details"] == "probe failed: statfs crashed"

    def broken():
        raise executor.FailOpen("natra.kernel.datapath cannot be imported: no module", "datapath_unavailable")

    env, stdin = request("STATUS", where, version="1.1.0", prev=None)
    code, out = run(env, stdin, now=NOW, stderr=io.StringIO(), kernel=executor.Kernel(datapath=broken))
    out = json.loads(out)
    assert error_code(out) == Kind.NOT_AVAILABLE.value
    assert out["details"] == "natra.kernel.datapath cannot be imported: no module"


def test_the_default_kernel_is_the_real_one():
    """plugin.run's default: natra.kernel.datapath itself (imported on first use) and netlink's peer."""
    from natra.cni import plugin
    from natra.kernel import datapath

    assert plugin.run.__kwdefaults__["kernel"] is executor.KERNEL
    assert executor.KERNEL.datapath() is datapath
    with pytest.raises(OSError):
        executor.KERNEL.peer("/run/netns/nt4-does-not-exist", "eth0")
