"""The plugin driven as a runtime drives it: Debian's ptp/bridge + host-local, then natra.

Each Pod is a network namespace (nt4-*); plugins run as subprocesses with the
environment and stdin libcni would give them (natra.lab.cnichain, through
tests/kernel/chain.py). Every test that takes `lab` runs twice: with
`python -m natra` from this checkout, and with the node bundle
(dist/natra/natra, `make node-bundle`) as /opt/cni/bin/natra would be called;
the bundle runs skip when it is not built. Natra's
state goes to a private bpffs root so GC here never touches anyone else's.
Kernel state is read back through natra.kernel.datapath.inspect, the kernel's own
tcx program query and bpftool.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import replace

import chain as C
import ci_tally
import netns
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from natra.cni import versions
from natra.kernel import layout as L
from natra.kernel import params as P
from natra.lab import iperf as iperf3

IN, OUT = L.DIR_TO_POD, L.DIR_FROM_POD
MAXU32 = 2**32 - 1
RATE_IN, RATE_OUT = 20_000_000, 10_000_000
CONTAINERD_ARGS = {"bandwidth": {"IngressRate": RATE_IN, "IngressBurst": MAXU32,
                                 "EgressRate": RATE_OUT, "EgressBurst": MAXU32}}
CRIO_ARGS = {"bandwidth": {"ingressRate": RATE_IN, "ingressBurst": 4 * 1024**3 - 1}}
VERSION_CAPS = {"ptp": "1.0.0", "bridge": "1.0.0"}  # Debian's plugins 1.1.1 stop at 1.0.0
BUNDLE = os.path.join(C.REPO, "dist", "natra", "natra")


SKIP_REASON = netns.kernel_skip_reason(node_bpffs=True, objects=netns.ALL_OBJECTS, cni_plugins=("ptp",))
pytestmark = [pytest.mark.root, pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))]


class Lab:
    """Everything one test makes: bin dir, IPAM dir, bpffs root, state, Pods. `close` removes it."""

    subnet_counter = 0

    def __init__(self, plugin: str | None = None):
        self.bin_dir = C.make_bin_dir(plugin)
        self.tmp = tempfile.mkdtemp(prefix="nt4-lab-")
        self.root = f"/sys/fs/bpf/nt4-{os.getpid()}-{Lab.subnet_counter}"
        Lab.subnet_counter += 1
        self.subnet = f"10.204.{Lab.subnet_counter}.0/24"
        self.pods: list[tuple[C.Chain, C.Pod]] = []

    @property
    def log_file(self) -> str:
        return os.path.join(self.tmp, "natra.log")

    def natra(self, **settings) -> dict:
        where = {"bpffsRoot": self.root, "stateDir": os.path.join(self.tmp, "state"),
                 "logFile": self.log_file}
        return C.natra_entry(**{**where, **settings})

    def chain(self, version: str, *, main: str = "ptp", **settings) -> C.Chain:
        ipam_dir = os.path.join(self.tmp, "ipam")
        first = C.ptp(self.subnet, ipam_dir) if main == "ptp" else C.bridge(
            f"nt4br{Lab.subnet_counter}", self.subnet, ipam_dir)
        conflist = {"cniVersion": version, "name": f"nt4net{Lab.subnet_counter}",
                    "plugins": [first, self.natra(**settings)]}
        return C.Chain(conflist, self.bin_dir, VERSION_CAPS)

    def pod(self, ch: C.Chain, suffix: str, **kwargs) -> C.Pod:
        pod = C.make_pod(f"{Lab.subnet_counter}-{suffix}", **kwargs)
        self.pods.append((ch, pod))
        return pod

    def close(self) -> None:
        from natra.kernel import datapath

        for ch, pod in self.pods:
            try:
                ch.delete(pod)
            finally:
                C.delete_netns(pod)
                try:
                    datapath.remove(pod.container_id, root=self.root)
                except Exception:  # noqa: BLE001 - best effort, the rmtree below finishes it
                    pass
        for ch, _ in self.pods[:1]:
            bridge = next((p.get("bridge") for p in ch.conflist["plugins"] if p["type"] == "bridge"), None)
            if bridge:
                subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        C.remove_tree(self.tmp)
        C.remove_tree(self.bin_dir)


@pytest.fixture(params=["python", "bundle"])
def plugin_runner(request) -> str | None:
    """The `natra` executable of the chain: None for the launcher (or $NATRA_PLUGIN), or the bundle."""
    if request.param == "python":
        return None
    if not os.access(BUNDLE, os.X_OK):
        pytest.skip(f"node bundle not built ({BUNDLE}; make node-bundle)")
    return BUNDLE


@pytest.fixture
def lab(plugin_runner):
    made = Lab(plugin_runner)
    try:
        yield made
    finally:
        made.close()




def prog_name(prog_id: int) -> str:
    out = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)],
                         capture_output=True, text=True)
    return json.loads(out.stdout).get("name", "") if out.returncode == 0 else ""


def tcx_programs(ifname: str) -> dict[int, list[str]]:
    """Names of the programs the kernel runs on each tcx hook of `ifname`."""
    from natra.kernel import attach

    index = socket.if_nametoindex(ifname)
    return {d: [prog_name(i) for i in attach.tcx_prog_ids(index, d)] for d in (IN, OUT)}


def expected_config(rate: int, burst: int | None, mode: str = "shape") -> P.ConfigValues:
    """The config the plan gives a direction (shaping, Natra's default, unless `mode` says),
    with this node's timer tick as the plugin reads it."""
    from natra.kernel import ticks

    return P.to_config(P.params_for(rate, burst, mode=mode), coarse_tick_ns=ticks.coarse_tick_ns())


def in_force(pod: C.Pod, direction: int, config: P.ConfigValues) -> P.ConfigValues:
    """`config` as the kernel holds it: shaping out of the Pod redirects to the Pod's IFB."""
    from natra.kernel import qdisc, shaping

    if config.shaping and direction == OUT:
        return replace(config, redirect_ifindex=qdisc.link_index(shaping.ifb_name(pod.container_id)))
    return config


def assert_limited(lab: Lab, pod: C.Pod, directions: dict[int, P.ConfigValues]):
    from natra.kernel import datapath

    found = datapath.inspect(pod.container_id, root=lab.root)
    assert found is not None and found.ok, found
    assert found.host_ifname == C.host_veth(pod)
    assert {d for d, h in found.hooks.items() if h.attached} == set(directions)
    for direction, config in directions.items():
        assert found.configs[direction] == in_force(pod, direction, config)
    progs = tcx_programs(C.host_veth(pod))
    for direction in (IN, OUT):
        want = [L.PROG_NAMES[direction][:15]] if direction in directions else []
        assert [n for n in progs[direction] if n.startswith("natra")] == want
    assert_trees(pod, {d for d, c in directions.items() if c.shaping}, found.meta)


def assert_trees(pod: C.Pod, shaped: set[int], record: dict | None = None):
    """Natra's tree is on the host veth iff to_pod shapes, the Pod's IFB exists iff from_pod does,
    and the meta record says so in the shape `natra status` reads."""
    from natra.kernel import qdisc, shaping

    veth = socket.if_nametoindex(C.host_veth(pod))
    assert (shaping.inspect(veth) is not None) == (IN in shaped)
    ifb = shaping.ifb_name(pod.container_id)
    try:
        ifb_index = qdisc.link_index(ifb)
    except qdisc.QdiscError:
        ifb_index = None
    assert (ifb_index is not None) == (OUT in shaped)
    if ifb_index is not None:
        assert shaping.inspect(ifb_index) is not None
    if record is not None:
        want = {}
        if IN in shaped:
            want["to_pod"] = {"ifindex": veth}
        if OUT in shaped:
            want["from_pod"] = {"ifb": ifb, "ifindex": ifb_index}
        assert record["shaping"] == want
        assert {n: m for n, m in record["direction_modes"].items() if m == "shape"} == {
            L.DIRECTION_NAMES[d]: "shape" for d in shaped}


def assert_not_limited(lab: Lab, pod: C.Pod):
    from natra.kernel import datapath

    assert datapath.inspect(pod.container_id, root=lab.root) is None
    programs = tcx_programs(C.host_veth(pod))
    assert all(not any(n.startswith("natra") for n in names) for names in programs.values())
    assert_trees(pod, set())


@pytest.mark.parametrize("version", versions.SUPPORTED_VERSIONS)
def test_containerd_ptp_chain_every_command(lab, version):
    ch = lab.chain(version)
    pod = lab.pod(ch, "cd", capability_args=CONTAINERD_ARGS)
    calls = ch.add(pod)
    assert [c.code for c in calls] == [0, 0], [c.stdout + c.stderr for c in calls]
    ptp_out, natra_out = calls[0].output, calls[1].output
    assert natra_out == versions.convert_result(ptp_out, version)  # passed through, nothing appended
    assert natra_out["cniVersion"] == version
    assert all(("version" in ip) == (version < "1.0.0") for ip in natra_out["ips"])
    # containerd's MaxUint32 burst is clamped to 500 ms of rate.
    want = {IN: expected_config(RATE_IN, MAXU32), OUT: expected_config(RATE_OUT, MAXU32)}
    assert want[IN].tau_nbit == RATE_IN // 2 * 10**9
    assert_limited(lab, pod, want)
    assert C.ping(pod.ip)

    if versions.at_least(version, "0.4.0"):
        assert [c.code for c in ch.check(pod)] == [0, 0]

    # A repeated ADD replaces: still exactly one program per hook.
    again = ch._run(ch.conflist["plugins"][1], "ADD", pod, ptp_out)
    assert again.code == 0 and again.output == natra_out
    assert_limited(lab, pod, want)

    if versions.at_least(version, "1.1.0"):
        status = ch.status("natra")
        assert (status.code, status.stdout) == (0, "")
        gc = ch.gc("natra", [pod])
        assert gc.code == 0
        assert_limited(lab, pod, want)

    info = ch.version_of("natra")
    assert info.code == 0 and info.output["supportedVersions"] == list(versions.SUPPORTED_VERSIONS)

    veth = C.host_veth(pod)
    cached = pod.cached_result
    dels = ch.delete(pod)
    assert [c.code for c in dels] == [0, 0]
    assert not os.path.exists(os.path.join(lab.root, pod.container_id))
    pod.cached_result = cached
    again = ch._run(ch.conflist["plugins"][1], "DEL", pod, cached)  # repeated DEL
    assert again.code == 0
    with pytest.raises(OSError):
        socket.if_nametoindex(veth)  # ptp removed the veth; nothing of ours kept it


def test_crio_bridge_chain_picks_the_veth_not_the_bridge(lab):
    ch = lab.chain("1.0.0", main="bridge")
    pod = lab.pod(ch, "crio", capability_args=CRIO_ARGS)
    calls = ch.add(pod)
    assert [c.code for c in calls] == [0, 0], [c.stderr for c in calls]
    assert len([i for i in pod.cached_result["interfaces"] if not i.get("sandbox")]) == 2
    assert_limited(lab, pod, {IN: expected_config(RATE_IN, 4 * 1024**3 - 1)})
    assert C.ping(pod.ip)
    assert [c.code for c in ch.check(pod)] == [0, 0]
    assert [c.code for c in ch.delete(pod)] == [0, 0]


def test_undeclared_capability_gives_no_limits(lab):
    """libcni hands capability args only to plugins that declare the capability."""
    ch = lab.chain("1.0.0")
    ch.conflist["plugins"][1]["capabilities"] = {C.CAPABILITY_ANNOTATIONS: True}
    pod = lab.pod(ch, "nocap", capability_args=CONTAINERD_ARGS)
    calls = ch.add(pod)
    assert [c.code for c in calls] == [0, 0] and calls[1].output == calls[0].output
    assert "no bandwidth limits" in calls[1].stderr
    assert_not_limited(lab, pod)


def test_del_after_the_netns_is_gone(lab):
    ch = lab.chain("1.0.0")
    pod = lab.pod(ch, "gone", capability_args=CONTAINERD_ARGS)
    assert [c.code for c in ch.add(pod)] == [0, 0]
    C.delete_netns(pod)  # the veth pair goes with it; our pinned links go defunct
    natra_del = ch._run(ch.conflist["plugins"][1], "DEL", pod, pod.cached_result)
    assert natra_del.code == 0, natra_del.stderr
    from natra.kernel import datapath

    assert datapath.inspect(pod.container_id, root=lab.root) is None
    assert datapath.list_installed(root=lab.root) == []


def test_parallel_pods(lab):
    """Runtimes run many containers at once: parallel ADDs, CHECKs and DELs must not interfere."""
    from concurrent.futures import ThreadPoolExecutor

    ch = lab.chain("1.0.0")
    pods = [lab.pod(ch, f"par{i}", capability_args=CONTAINERD_ARGS) for i in range(4)]
    with ThreadPoolExecutor(len(pods)) as pool:
        adds = list(pool.map(ch.add, pods))
        assert all([c.code for c in calls] == [0, 0] for calls in adds), adds
        want = {IN: expected_config(RATE_IN, MAXU32), OUT: expected_config(RATE_OUT, MAXU32)}
        for pod in pods:
            assert_limited(lab, pod, want)
        checks = list(pool.map(ch.check, pods))
        assert all([c.code for c in calls] == [0, 0] for calls in checks)
        dels = list(pool.map(ch.delete, pods))
        assert all([c.code for c in calls] == [0, 0] for calls in dels)
    from natra.kernel import datapath

    assert datapath.list_installed(root=lab.root) == []


def test_check_reports_drift_and_missing_state(lab):
    from natra.kernel import datapath

    ch = lab.chain("1.0.0")
    pod = lab.pod(ch, "drift", capability_args=CONTAINERD_ARGS)
    assert [c.code for c in ch.add(pod)] == [0, 0]
    pod.capability_args = {"bandwidth": {**CONTAINERD_ARGS["bandwidth"], "IngressRate": 30_000_000}}
    check = C.natra_call(ch.check(pod))
    assert check.code != 0
    assert check.output["code"] == 101 and "to_pod config differs" in check.output["details"]
    pod.capability_args = CONTAINERD_ARGS
    datapath.remove(pod.container_id, root=lab.root)  # something wiped our state
    check = C.natra_call(ch.check(pod))
    assert check.code != 0 and check.output["code"] == 100


def test_gc_removes_what_is_not_valid(lab):
    from natra.kernel import datapath

    ch = lab.chain("1.1.0")
    a = lab.pod(ch, "gca", capability_args=CONTAINERD_ARGS)
    b = lab.pod(ch, "gcb", capability_args=CONTAINERD_ARGS)
    for pod in (a, b):
        assert [c.code for c in ch.add(pod)] == [0, 0]
    assert sorted(datapath.list_installed(root=lab.root)) == sorted([a.container_id, b.container_id])
    assert ch.gc("natra", [a]).code == 0
    assert datapath.list_installed(root=lab.root) == [a.container_id]
    assert_limited(lab, a, {IN: expected_config(RATE_IN, MAXU32), OUT: expected_config(RATE_OUT, MAXU32)})
    assert_not_limited(lab, b)
    assert C.ping(b.ip)
    assert ch.gc("natra", [], key="cni.dev/attachments").code == 0
    assert datapath.list_installed(root=lab.root) == []
    assert_not_limited(lab, a)


def test_status_fails_only_when_add_cannot_work(lab):
    ch = lab.chain("1.1.0")
    assert ch.status("natra").code == 0
    started = time.monotonic()
    for _ in range(5):
        ch.status("natra")
    per_call = (time.monotonic() - started) / 5
    assert per_call < 1.0  # containerd polls STATUS; dominated by interpreter start-up
    broken = C.Chain({**ch.conflist, "plugins": [ch.conflist["plugins"][0],
                                                 lab.natra(bpffsRoot=os.path.join(lab.tmp, "plain"))]},
                     lab.bin_dir, VERSION_CAPS)
    status = broken.status("natra")
    assert status.code != 0 and status.output["code"] == 50 and "bpffs" in status.output["details"]


def _corrupt_object(lab: Lab) -> dict:
    path = os.path.join(lab.tmp, "corrupt.bpf.o")
    with open(path, "wb") as f:
        f.write(b"\x7fELF" + os.urandom(2000))
    return {"objectPath": path}


def _truncated_object(lab: Lab) -> dict:
    from natra.kernel.loader import object_path

    path = os.path.join(lab.tmp, "truncated.bpf.o")
    with open(object_path(), "rb") as src, open(path, "wb") as dst:
        dst.write(src.read()[:4096])
    return {"objectPath": path}


def _section_offset(elf: bytes, wanted: str) -> int:
    """File offset of an ELF64 little-endian section, by name."""
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    names_at = struct.unpack_from("<Q", elf, shoff + shstrndx * shentsize + 0x18)[0]
    for i in range(shnum):
        header = shoff + i * shentsize
        name_off, = struct.unpack_from("<I", elf, header)
        name = elf[names_at + name_off:elf.index(b"\0", names_at + name_off)].decode()
        if name == wanted:
            return struct.unpack_from("<Q", elf, header + 0x18)[0]
    raise LookupError(wanted)


def _rejected_object(lab: Lab) -> dict:
    """The real object with its first instruction reading r5, which is never set: the
    verifier refuses it ('R5 !read_ok'), a genuine verifier rejection."""
    from natra.kernel.loader import object_path

    with open(object_path(), "rb") as f:
        elf = bytearray(f.read())
    first = _section_offset(bytes(elf), "tc")
    # Overwrite the first instruction, whatever the compiler put there, with
    # `r0 = r5` (BPF_ALU64 | BPF_MOV | BPF_X): r5 is unset on entry.
    elf[first:first + 8] = bytes([0xBF, (5 << 4) | 0, 0, 0, 0, 0, 0, 0])
    path = os.path.join(lab.tmp, "rejected.bpf.o")
    with open(path, "wb") as f:
        f.write(elf)
    return {"objectPath": path}


# Each fail-open cause, made real: (settings of the natra entry, capability args, what the log says).
FAIL_OPEN = {
    "bpffs-not-mounted": (lambda lab: {"bpffsRoot": os.path.join(lab.tmp, "not-bpffs")}, CONTAINERD_ARGS,
                          "failed open"),
    "object-missing": (lambda lab: {"objectPath": os.path.join(lab.tmp, "missing.bpf.o")}, CONTAINERD_ARGS,
                       "missing.bpf.o"),
    "object-corrupt": (_corrupt_object, CONTAINERD_ARGS, "corrupt.bpf.o"),
    "object-truncated": (_truncated_object, CONTAINERD_ARGS, "failed open"),
    "verifier-rejection": (_rejected_object, CONTAINERD_ARGS, "!read_ok"),
    "invalid-bandwidth-annotation": (lambda lab: {}, {C.CAPABILITY_ANNOTATIONS: {
        "kubernetes.io/ingress-bandwidth": "10K"}}, "ignored invalid kubernetes.io/ingress-bandwidth"),
}


@pytest.mark.parametrize("cause", sorted(FAIL_OPEN))
def test_fail_open_causes(lab, cause):
    make_settings, args, logged = FAIL_OPEN[cause]
    ch = lab.chain("1.0.0", **make_settings(lab))
    pod = lab.pod(ch, cause[:6], capability_args=args)
    calls = ch.add(pod)
    assert [c.code for c in calls] == [0, 0], calls[-1].stdout
    assert calls[1].output == calls[0].output  # the result, unchanged
    assert logged in calls[1].stderr
    with open(lab.log_file) as f:
        assert logged in f.read()
    assert_not_limited(lab, pod)
    assert C.ping(pod.ip)
    assert [c.code for c in ch.check(pod)] == [0, 0]  # CRI-O's CHECK after ADD must not kill the Pod
    assert [c.code for c in ch.delete(pod)] == [0, 0]


def test_low_rate_and_small_burst_are_limited_not_failed_open(lab):
    """500 bit/s with a 200-bit burst (valid for the standard plugin) once failed open;
    in police mode it is enforced, with the burst raised to the policing floor and the floor logged."""
    ch = lab.chain("1.0.0", mode="police")
    pod = lab.pod(ch, "slow", capability_args={"bandwidth": {"IngressRate": 500, "IngressBurst": 200}})
    calls = ch.add(pod)
    assert [c.code for c in calls] == [0, 0], calls[-1].stdout
    assert "below the policing floor" in calls[1].stderr and "failed open" not in calls[1].stderr
    assert f"to_pod 500 bit/s burst {P.POLICE_BURST_FLOOR_BITS} bits" in calls[1].stderr
    assert_limited(lab, pod, {IN: expected_config(500, 200, "police")})
    assert [c.code for c in ch.check(pod)] == [0, 0]
    assert [c.code for c in ch.delete(pod)] == [0, 0]


def test_fail_open_on_peer_mismatch(lab):
    ch = lab.chain("1.0.0")
    pod = lab.pod(ch, "peer", capability_args=CONTAINERD_ARGS)
    ptp_add = ch._run(ch.conflist["plugins"][0], "ADD", pod, None)
    assert ptp_add.code == 0
    pod.cached_result = ptp_add.output
    lying = json.loads(json.dumps(ptp_add.output))
    lying["interfaces"][0]["name"] = "lo"  # a host interface that is not eth0's peer
    natra_add = ch._run(ch.conflist["plugins"][1], "ADD", pod, lying)
    assert natra_add.code == 0 and natra_add.output == lying
    assert "peer check" in natra_add.stderr and C.host_veth(pod) in natra_add.stderr
    assert_not_limited(lab, pod)
    assert C.ping(pod.ip)


def test_malformed_natra_annotation_limits_with_defaults(lab):
    ch = lab.chain("1.0.0", width=2048)
    args = {**CONTAINERD_ARGS, C.CAPABILITY_ANNOTATIONS: {"natra.io/width": "3", "natra.io/window": "1s"}}
    pod = lab.pod(ch, "annot", capability_args=args)
    calls = ch.add(pod)
    assert [c.code for c in calls] == [0, 0]
    assert "malformed Natra annotation" in calls[1].stderr
    wide = {"width": 2048}
    want = {IN: P.to_config(P.params_for(RATE_IN, MAXU32, mode="shape", **wide), width=2048),
            OUT: P.to_config(P.params_for(RATE_OUT, MAXU32, mode="shape", **wide), width=2048)}
    assert_limited(lab, pod, want)


def test_pod_annotation_overrides_reach_the_kernel(lab):
    ch = lab.chain("1.0.0")
    args = {**CONTAINERD_ARGS, C.CAPABILITY_ANNOTATIONS: {"natra.io/width": "256", "natra.io/window": "50ms"}}
    pod = lab.pod(ch, "tune", capability_args=args)
    assert [c.code for c in ch.add(pod)] == [0, 0]
    tuning = {"width": 256, "window_ns": 50_000_000}
    want = {IN: P.to_config(P.params_for(RATE_IN, MAXU32, mode="shape", **tuning), width=256),
            OUT: P.to_config(P.params_for(RATE_OUT, MAXU32, mode="shape", **tuning), width=256)}
    assert_limited(lab, pod, want)
    assert [c.code for c in ch.check(pod)] == [0, 0]


def test_add_imports_nothing_heavy(lab):
    """The tcx ADD path never imports numpy, scapy or pyroute2 (each costs 0.1-1.2 s per call)."""
    if C.frozen(lab.bin_dir):
        pytest.skip(ci_tally.NOT_APPLICABLE + "a frozen bundle ignores PYTHONPROFILEIMPORTTIME; "
                    "its imports are fixed at build time")
    ch = lab.chain("1.0.0", attachMode="tcx")
    ch.extra_env = {"PYTHONPROFILEIMPORTTIME": "1"}
    pod = lab.pod(ch, "imp", capability_args=CONTAINERD_ARGS)
    calls = ch.add(pod)
    assert [c.code for c in calls] == [0, 0]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in calls[1].stderr.splitlines()
                if line.startswith("import time:")}
    assert "natra" in imported
    assert not imported & {"numpy", "scapy", "pyroute2"}


def _iperf(pod: C.Pod, seconds: float, reverse: bool) -> tuple[int, float]:
    """(bytes received, seconds) of one iperf3 run between the host and the Pod."""
    done = iperf3.run(pod.name, pod.ip, seconds, reverse=reverse, port=5204)
    return done.received_bytes, done.seconds


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 not installed")
@pytest.mark.parametrize("mode", ["shape", "police"])
def test_traffic_stays_within_rate_times_time_plus_burst(lab, mode):
    ch = lab.chain("1.0.0", mode=mode)
    pod = lab.pod(ch, "iperf", capability_args=CONTAINERD_ARGS)
    assert [c.code for c in ch.add(pod)] == [0, 0]
    for reverse, rate in ((False, RATE_IN), (True, RATE_OUT)):
        got, seconds = _iperf(pod, 2, reverse)
        burst_bits = P.params_for(rate, MAXU32, mode=mode).burst_bits
        assert got * 8 <= rate * seconds + burst_bits, (reverse, got, seconds)
        assert got * 8 >= 0.5 * rate * seconds, (reverse, got, seconds)  # limited, not broken
        bound = (rate * seconds + burst_bits) / 8
        print(f"{mode} iperf3 {'egress' if reverse else 'ingress'}: {got * 8 / seconds / 1e6:.2f} Mbit/s "
              f"over {seconds:.2f} s, limit {rate / 1e6:.0f} Mbit/s, bound {bound:.0f} bytes, got {got}")


class PluginLifecycle(RuleBasedStateMachine):
    """Random ADD / DEL / CHECK sequences on one Pod; the kernel must match a one-line model:
    the limit of the last ADD, or nothing after a DEL (or an ADD without limits)."""

    def __init__(self):
        super().__init__()
        self.lab = Lab()
        self.chain = self.lab.chain("1.0.0")
        self.pod = self.lab.pod(self.chain, "sm")
        ptp_add = self.chain._run(self.chain.conflist["plugins"][0], "ADD", self.pod, None)
        assert ptp_add.code == 0, ptp_add.stdout
        self.ptp_result = self.pod.cached_result = ptp_add.output
        self.natra = self.chain.conflist["plugins"][1]
        self.model: int | None = None  # ingress rate installed, bit/s

    @rule(rate=st.sampled_from([None, 2_000_000, RATE_IN]))
    def add(self, rate):
        limits = {"IngressRate": rate, "IngressBurst": MAXU32}
        self.pod.capability_args = {"bandwidth": limits} if rate else {}
        call = self.chain._run(self.natra, "ADD", self.pod, self.ptp_result)
        assert call.code == 0 and call.output == self.ptp_result
        if rate:
            self.model = rate
        # An ADD without limits leaves an earlier install alone (runtimes DEL before re-ADD).

    @rule(with_prev=st.booleans())
    def delete(self, with_prev):
        call = self.chain._run(self.natra, "DEL", self.pod, self.ptp_result if with_prev else None)
        assert call.code == 0
        self.model = None

    @rule()
    def check(self):
        call = self.chain._run(self.natra, "CHECK", self.pod, self.ptp_result)
        asked = (self.pod.capability_args.get("bandwidth") or {}).get("IngressRate")
        if not asked:
            assert call.code == 0
        elif self.model is None:
            assert call.output["code"] == 100
        else:
            assert call.code == (0 if asked == self.model else 1)

    @invariant()
    def kernel_matches_model(self):
        if self.model is None:
            assert_not_limited(self.lab, self.pod)
        else:
            assert_limited(self.lab, self.pod, {IN: expected_config(self.model, MAXU32)})

    def teardown(self):
        self.lab.close()


TestPluginLifecycle = PluginLifecycle.TestCase
TestPluginLifecycle.settings = settings(max_examples=4, stateful_step_count=6, deadline=None,
                                        suppress_health_check=list(HealthCheck))
