"""Faults a node really has, caused for real, each ending with a working Pod.

Owns: one test per fault of issue 9 that the plugin's own
chain tests (tests/kernel/test_cni_chain.py) do not already cause:
  tcx unavailable (forced clsact) -> works;
  a TBF qdisc of the standard bandwidth plugin, another clsact filter or
    other tcx programs already on the veth -> Natra coexists and the other
    one still runs;
  the veth or the netns vanishing between ADD and DEL (clsact too);
  the log directory unwritable (immutable, a file in its place) or full;
  map creation failing (memcg limit on the plugin process, real ENOMEM);
  a pin directory left by a crashed ADD (SIGKILL mid-ADD, and made by hand)
    -> the next ADD, DEL or GC recovers.
Each test checks the plugin's exit code, the Pod's network (ping), the log line
and that nothing of ours is left (pins, and config maps with our marker rates
found by walking every BPF map id).
Rule: everything made here is removed in a finally; names start with nt9-.
Must not know: the plugin's modules beyond datapath.inspect/list_installed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import chain as C
import pytest
from faultlab import (
    Lab,
    add_ok,
    assert_limited,
    del_ok,
    inspection,
    natra_packets,
    natra_plugin,
    qdisc_kinds,
    run,
    tc,
    unavailable,
    wrap_launcher,
)

MEMCG_LIMIT_BYTES = 64 * 1024 * 1024  # the plugin needs ~20 MB; a 1Mi-entry flow table needs >100 MB
HUGE_FLOW_TABLE = "1Mi"
CRASH_POLL_S = 0.0005

pytestmark = [pytest.mark.root, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]


@pytest.fixture
def lab():
    made = Lab()
    try:
        yield made
    finally:
        made.close()


# ---- tcx unavailable ------------------------------------------------------------------

def test_forced_clsact_limits_and_cleans_up(lab):
    """tcx cannot be removed from this kernel; attachMode=clsact takes the fallback path for real."""
    ch = lab.chain(attachMode="clsact")
    pod = lab.pod(ch, "clsact", capability_args=lab.limits())
    call = add_ok(lab, ch, pod)
    assert "via clsact" in call.stderr
    assert_limited(lab, pod, "clsact")
    veth = C.host_veth(pod)
    assert "clsact" in qdisc_kinds(veth)
    assert C.ping(pod.ip)
    assert natra_packets(lab, pod) > 0
    assert [c.code for c in ch.check(pod)] == [0, 0]
    natra_del = ch._run(natra_plugin(ch), "DEL", pod, pod.cached_result)
    assert natra_del.code == 0 and "DEL: removed" in natra_del.stderr
    assert "clsact" not in qdisc_kinds(veth)  # we made it, we removed it
    assert C.ping(pod.ip)
    del_ok(lab, ch, pod)


# ---- other programs on the veth -------------------------------------------------------



@pytest.mark.parametrize("mode", ["auto", "clsact"])
def test_coexists_with_the_standard_bandwidth_plugin(lab, mode):
    """ptp -> bandwidth -> natra: the TBF (and ingress qdisc) stay and keep shaping; Natra
    either limits both directions for real or fails open saying why."""
    limits = lab.limits()
    bandwidth = {"type": "bandwidth", "capabilities": {"bandwidth": True}}
    ch = lab.chain(before=[bandwidth], attachMode=mode)
    pod = lab.pod(ch, f"bw{mode[:2]}", capability_args=limits)
    call = add_ok(lab, ch, pod)
    veth = C.host_veth(pod)
    kinds = qdisc_kinds(veth)
    assert "tbf" in kinds and "ingress" in kinds, kinds
    tbf_before = next(q for q in tc("qdisc", "show", "dev", veth) if q["kind"] == "tbf")["packets"]
    if "failed open" in call.stderr:
        # clsact cannot share the device with an `ingress` qdisc: failing open is right.
        assert mode == "clsact" and "clsact" in call.stderr and inspection(lab, pod) is None
    else:
        assert "ADD: limited" in call.stderr
        assert_limited(lab, pod, "tcx" if mode == "auto" else mode)
    assert C.ping(pod.ip)
    tbf_after = next(q for q in tc("qdisc", "show", "dev", veth) if q["kind"] == "tbf")["packets"]
    assert tbf_after > tbf_before  # the TBF still sees (and shapes) the Pod's traffic
    assert [c.code for c in ch.check(pod)] == [0, 0, 0]
    natra_del = ch._run(natra_plugin(ch), "DEL", pod, pod.cached_result)
    assert natra_del.code == 0
    assert qdisc_kinds(veth) == kinds  # nothing of the other plugin removed
    del_ok(lab, ch, pod)


FOREIGN_C = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u64); } nt9_seen SEC(".maps");
SEC("tc") int nt9_foreign(struct __sk_buff *skb)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&nt9_seen, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
	return -1; /* TC_ACT_UNSPEC: go on with the next filter */
}
char LICENSE[] SEC("license") = "GPL";
"""


def _foreign_object(lab: Lab) -> str:
    """Another agent's classifier: counts every frame, then lets the next filter run."""
    import platform

    source, obj = os.path.join(lab.tmp, "foreign.c"), os.path.join(lab.tmp, "foreign.o")
    with open(source, "w") as f:
        f.write(FOREIGN_C)
    arch_include = f"/usr/include/{platform.machine()}-linux-gnu"
    argv = ["clang", "-O2", "-g", "-target", "bpf", "-I", arch_include, "-c", source, "-o", obj]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot build the foreign tc program: {done.stderr.strip()[:200]}")
    return obj


def _foreign_filter(veth: str, obj: str) -> None:
    run("tc", "qdisc", "add", "dev", veth, "clsact")
    for hook in ("ingress", "egress"):
        run("tc", "filter", "add", "dev", veth, hook, "prio", "1", "bpf", "da", "obj", obj, "sec", "tc")


def _prog_count(prog_id: int) -> int:
    """Frames one foreign program counted, read from its map (bpftool)."""
    info = json.loads(run("bpftool", "-j", "prog", "show", "id", str(prog_id)).stdout)
    total = 0
    for map_id in info.get("map_ids", []):
        value = json.loads(run("bpftool", "-j", "map", "lookup", "id", str(map_id),
                               "key", "0", "0", "0", "0").stdout)
        raw = value.get("value", [])
        total += int.from_bytes(bytes(int(b, 16) for b in raw), "little") if raw else 0
    return total


def _foreign_packets(veth: str) -> int:
    """Frames the foreign clsact filters counted."""
    total = 0
    for hook in ("ingress", "egress"):
        for f in tc("filter", "show", "dev", veth, hook):
            prog = f.get("options", {}).get("prog", {})
            if prog.get("name") == "nt9_foreign":
                total += _prog_count(prog["id"])
    return total


@pytest.mark.parametrize("mode", ["tcx", "clsact"])
def test_another_filter_keeps_running(lab, mode):
    ch = lab.chain(attachMode=mode)
    pod = lab.pod(ch, f"ff{mode[:2]}", capability_args=lab.limits())
    ptp = ch._run(ch.conflist["plugins"][0], "ADD", pod, None)
    assert ptp.code == 0
    pod.cached_result = ptp.output
    veth = C.host_veth(pod)
    _foreign_filter(veth, _foreign_object(lab))
    natra_add = ch._run(natra_plugin(ch), "ADD", pod, ptp.output)
    assert natra_add.code == 0 and f"via {mode}" in natra_add.stderr, natra_add.stderr
    assert_limited(lab, pod, mode)
    before = _foreign_packets(veth)
    assert C.ping(pod.ip)
    assert _foreign_packets(veth) > before  # the other program still runs ...
    assert natra_packets(lab, pod) > 0  # ... and so does ours
    natra_del = ch._run(natra_plugin(ch), "DEL", pod, pod.cached_result)
    assert natra_del.code == 0
    assert "clsact" in qdisc_kinds(veth)  # not ours: kept
    assert len(tc("filter", "show", "dev", veth, "egress")) >= 1
    before = _foreign_packets(veth)
    assert C.ping(pod.ip)
    assert _foreign_packets(veth) > before
    del_ok(lab, ch, pod)


def _foreign_tcx(lab: Lab, veth: str, tag: str) -> list[int]:
    """The foreign program attached as a tcx link on both hooks of `veth` (appended
    last); returns the link fds, which keep it attached until closed."""
    from natra.kernel import bpfsys

    pin = os.path.join(lab.root, f"foreign_{tag}")
    run("bpftool", "prog", "load", _foreign_object(lab), pin, "type", "classifier")
    fd = bpfsys.obj_get(pin)
    try:
        index = socket.if_nametoindex(veth)
        links = [bpfsys.link_create(fd, index, kind)
                 for kind in (bpfsys.BPF_TCX_EGRESS, bpfsys.BPF_TCX_INGRESS)]
    finally:
        os.close(fd)
        os.unlink(pin)
    for link in links:
        lab.cleanups.append(lambda link=link: os.close(link))
    return links


def _tcx_programs(veth: str) -> list[list[tuple[int, str]]]:
    """(id, name) of every program on the tcx egress and ingress hooks, in run order."""
    from natra.kernel import attach, bpfsys

    index = socket.if_nametoindex(veth)
    hooks = []
    for direction in (0, 1):
        hook = []
        for prog_id in attach.tcx_prog_ids(index, direction):
            fd = bpfsys.prog_get_fd_by_id(prog_id)
            try:
                hook.append((prog_id, bpfsys.prog_info(fd)["name"]))
            finally:
                os.close(fd)
        hooks.append(hook)
    return hooks


def _tcx_names(veth: str) -> list[list[str]]:
    return [[name for _, name in hook] for hook in _tcx_programs(veth)]


def _tcx_foreign_packets(veth: str) -> int:
    return sum(_prog_count(prog_id) for hook in _tcx_programs(veth) for prog_id, name in hook
               if name == "nt9_foreign")


def test_other_tcx_programs_keep_running(lab):
    """Foreign tcx programs before and after Natra's on both hooks: all of them run
    (Natra passes with TCX_NEXT), and Natra's DEL detaches only its own."""
    ch = lab.chain(attachMode="tcx")
    pod = lab.pod(ch, "ftcx", capability_args=lab.limits())
    ptp = ch._run(ch.conflist["plugins"][0], "ADD", pod, None)
    assert ptp.code == 0
    pod.cached_result = ptp.output
    veth = C.host_veth(pod)
    _foreign_tcx(lab, veth, "before")
    natra_add = ch._run(natra_plugin(ch), "ADD", pod, ptp.output)
    assert natra_add.code == 0 and "via tcx" in natra_add.stderr, natra_add.stderr
    _foreign_tcx(lab, veth, "after")
    assert _tcx_names(veth) == [["nt9_foreign", "natra_to_pod", "nt9_foreign"],
                                ["nt9_foreign", "natra_from_pod", "nt9_foreign"]]
    assert_limited(lab, pod, "tcx")
    before = _tcx_foreign_packets(veth)
    assert C.ping(pod.ip)
    seen = _tcx_foreign_packets(veth) - before
    assert seen >= 4 * 2  # echo request and reply, each through two foreign programs (>= 1 attempt)
    assert natra_packets(lab, pod) > 0
    natra_del = ch._run(natra_plugin(ch), "DEL", pod, pod.cached_result)
    assert natra_del.code == 0
    assert _tcx_names(veth) == [["nt9_foreign", "nt9_foreign"]] * 2
    before = _tcx_foreign_packets(veth)
    assert C.ping(pod.ip)
    assert _tcx_foreign_packets(veth) > before
    assert lab.leaked() == []


# ---- the veth or the netns vanishing ----------------------------------------------------

@pytest.mark.parametrize("mode", ["tcx", "clsact"])
@pytest.mark.parametrize("what", ["veth", "netns"])
def test_vanishing_between_add_and_del(lab, mode, what):
    ch = lab.chain(attachMode=mode)
    pod = lab.pod(ch, f"{what[:2]}{mode[:2]}", capability_args=lab.limits())
    add_ok(lab, ch, pod)
    assert_limited(lab, pod, mode)
    if what == "veth":
        run("ip", "link", "del", C.host_veth(pod))
    else:
        C.delete_netns(pod)
    natra_del = ch._run(natra_plugin(ch), "DEL", pod, pod.cached_result)
    assert natra_del.code == 0 and natra_del.stdout == "", natra_del.stdout
    assert "DEL: removed" in natra_del.stderr
    assert lab.pins() == [] and lab.leaked() == []
    ptp_del = ch._run(ch.conflist["plugins"][0], "DEL", pod, pod.cached_result)
    assert ptp_del.code == 0
    pod.cached_result = None
    if what == "netns":
        run("ip", "netns", "add", pod.name)
        run("ip", "-n", pod.name, "link", "set", "lo", "up")
    add_ok(lab, ch, pod)  # the same Pod, set up again, is limited and reachable
    assert_limited(lab, pod, mode)
    assert C.ping(pod.ip)
    del_ok(lab, ch, pod)


# ---- the log file ------------------------------------------------------------------------

def _immutable_dir(lab: Lab) -> str:
    directory = os.path.join(lab.tmp, "frozen")
    os.mkdir(directory)
    run("chattr", "+i", directory)
    lab.cleanups.append(lambda: run("chattr", "-i", directory, check=False))
    return os.path.join(directory, "natra.log")


def _file_in_place(lab: Lab) -> str:
    path = os.path.join(lab.tmp, "not-a-dir")
    with open(path, "w") as f:
        f.write("x")
    return os.path.join(path, "natra.log")


def _full_disk(lab: Lab) -> str:
    directory = os.path.join(lab.tmp, "full")
    os.mkdir(directory)
    run("mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", directory)
    lab.cleanups.append(lambda: run("umount", "-l", directory, check=False))
    fd = os.open(os.path.join(directory, "natra.log"), os.O_WRONLY | os.O_CREAT)  # an old log, then no space
    try:
        while os.write(fd, b"x" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return os.path.join(directory, "natra.log")


LOG_FAULTS = {"immutable-dir": _immutable_dir, "file-where-dir-should-be": _file_in_place,
              "full-tmpfs": _full_disk}


@pytest.mark.parametrize("fault", sorted(LOG_FAULTS))
def test_log_file_unusable(lab, fault):
    log_file = LOG_FAULTS[fault](lab)
    size_before = os.path.getsize(log_file) if os.path.exists(log_file) else None
    ch = lab.chain(logFile=log_file)
    pod = lab.pod(ch, fault[:6], capability_args=lab.limits())
    call = add_ok(lab, ch, pod)
    assert "ADD: limited" in call.stderr  # stderr still carries the line the runtime logs
    assert_limited(lab, pod)
    assert C.ping(pod.ip)
    assert (os.path.getsize(log_file) if os.path.exists(log_file) else None) == size_before
    del_ok(lab, ch, pod)


def test_unwritable_log_file_is_named_on_stderr(lab):
    log_file = _file_in_place(lab)
    ch = lab.chain(logFile=log_file)
    pod = lab.pod(ch, "lognm", capability_args=lab.limits())
    call = add_ok(lab, ch, pod)
    assert log_file in call.stderr


# ---- map creation failing ----------------------------------------------------------------

def _memcg(lab: Lab, limit_bytes: int) -> str:
    """A memory cgroup (v1 or v2) below ours with a hard limit; its path."""
    with open("/proc/self/cgroup") as f:
        lines = [line.strip().split(":", 2) for line in f]
    v1 = next((path for _, ctrl, path in lines if ctrl == "memory"), None)
    v2 = next((path for hid, ctrl, path in lines if hid == "0" and ctrl == ""), None)
    if v1 is not None and os.path.isdir(f"/sys/fs/cgroup/memory{v1}"):
        base, limit_file = f"/sys/fs/cgroup/memory{v1}", "memory.limit_in_bytes"
    elif v2 is not None and os.path.exists(f"/sys/fs/cgroup{v2}/memory.max"):
        base, limit_file = f"/sys/fs/cgroup{v2}", "memory.max"
    else:
        pytest.skip("no writable memory cgroup (v1 memory controller or v2 memory.max)")
    path = os.path.join(base, f"nt9-memcg-{lab.tag}-{os.getpid()}")
    try:
        os.mkdir(path)
    except OSError as e:
        pytest.skip(f"cannot make a memory cgroup: {e}")
    lab.cleanups.append(lambda: os.rmdir(path))
    with open(os.path.join(path, limit_file), "w") as f:
        f.write(str(limit_bytes))
    return path


def _launch_in_cgroup(lab: Lab, cgroup: str) -> None:
    """The plugin process joins `cgroup` before it starts."""
    wrap_launcher(lab, f"echo $$ > {cgroup}/cgroup.procs || exit 99")


def test_map_creation_fails_under_a_memory_limit(lab):
    """The plugin process in a memcg of 64 MiB: a 1Mi-entry flow table cannot be allocated
    (ENOMEM from BPF_MAP_CREATE, charged to the caller's memcg) -> fail open; the same
    Pod with the default table fits and is limited."""
    _launch_in_cgroup(lab, _memcg(lab, MEMCG_LIMIT_BYTES))
    ch = lab.chain()
    huge = {**lab.limits(), C.CAPABILITY_ANNOTATIONS: {"natra.io/flow-table": HUGE_FLOW_TABLE}}
    pod = lab.pod(ch, "memcg", capability_args=huge)
    call = add_ok(lab, ch, pod)
    assert "failed open" in call.stderr and "Cannot allocate memory" in call.stderr, call.stderr
    assert sum("failed open" in line for line in call.stderr.splitlines()) == 1
    assert inspection(lab, pod) is None and lab.pins() == [] and lab.leaked() == []
    assert C.ping(pod.ip)
    assert [c.code for c in ch.check(pod)] == [0, 0]  # CHECK after a failed-open ADD passes
    del_ok(lab, ch, pod)
    normal = lab.pod(ch, "memok", capability_args=lab.limits())
    add_ok(lab, ch, normal)
    assert_limited(lab, normal)
    del_ok(lab, ch, normal)


# ---- a crashed ADD -------------------------------------------------------------------------

def _crash_mid_add(lab: Lab, ch: C.Chain, pod: C.Pod, prev: dict) -> str:
    """Start natra ADD and SIGKILL it as soon as its pin directory appears; what was caught."""
    from natra.kernel import pins

    pin_dir = pins.pin_dir(pod.container_id, lab.root).path
    config = ch.plugin_config(natra_plugin(ch), pod, prev)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "ADD", "CNI_PATH": lab.bin_dir,
           **ch.env(pod)}
    proc = subprocess.Popen([os.path.join(lab.bin_dir, "natra")], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    proc.stdin.write(json.dumps(config).encode())
    proc.stdin.close()
    deadline = time.monotonic() + 30
    while not os.path.isdir(pin_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(CRASH_POLL_S)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return "killed with the directory made" if proc.returncode == -signal.SIGKILL and os.path.isdir(
        pin_dir) else f"finished first ({proc.returncode})"


def _partial_by_hand(lab: Lab, pod: C.Pod, rate: int) -> str:
    """What a crash after 'pin maps' leaves: meta says pending, maps and programs pinned,
    nothing attached."""
    from natra.kernel import bpfsys, datapath, meta, pins
    from natra.kernel import params as P
    from natra.kernel.loader import BpfObject

    pd = pins.pin_dir(pod.container_id, lab.root)
    configs = [P.to_config(P.params_for(rate))] * 2
    with BpfObject.load(configs) as obj:
        pins.make(pd)
        meta.write(pd.meta, {"version": datapath.META_VERSION, "container_id": pod.container_id,
                             "host_ifname": C.host_veth(pod), "ifindex": 0, "mode": datapath.MODE_PENDING,
                             "directions": [0, 1], "created_qdisc": False})
        obj.pin_maps(pd.path)
        for direction in (0, 1):
            bpfsys.obj_pin(obj.prog_fd(direction), pd.prog(direction))
    return "made by hand"


@pytest.mark.parametrize("how", ["sigkill", "by-hand"])
@pytest.mark.parametrize("recovery", ["ADD", "DEL", "GC"])
def test_pins_left_by_a_crashed_add(lab, how, recovery):
    ch = lab.chain(version="1.1.0")
    crashed_rate = lab.rate()
    pod = lab.pod(ch, f"cr{how[:2]}{recovery[:1]}", capability_args=lab.limits(crashed_rate))
    ptp = ch._run(ch.conflist["plugins"][0], "ADD", pod, None)
    assert ptp.code == 0
    pod.cached_result = ptp.output
    caught = _crash_mid_add(lab, ch, pod, ptp.output) if how == "sigkill" else _partial_by_hand(
        lab, pod, crashed_rate)
    print(f"crash: {caught}; pins left: {len(lab.pins())}")
    assert C.ping(pod.ip)  # whatever the crash left, the Pod's network works
    if recovery == "ADD":
        pod.capability_args = lab.limits()  # a different rate: the old objects must go
        call = ch._run(natra_plugin(ch), "ADD", pod, ptp.output)
        assert call.code == 0 and "ADD: limited" in call.stderr, call.stderr
        assert_limited(lab, pod)
        assert lab.leaked([crashed_rate]) == []  # the crashed attempt's objects are gone
        assert C.ping(pod.ip)
        assert [c.code for c in ch.check(pod)] == [0, 0]
    elif recovery == "DEL":
        call = ch._run(natra_plugin(ch), "DEL", pod, ptp.output)
        assert call.code == 0 and "DEL: removed" in call.stderr
        assert lab.pins() == [] and lab.leaked() == []
    else:
        call = ch.gc("natra", [])
        assert call.code == 0, call.stdout
        assert "GC: removed" in call.stderr
        assert lab.pins() == [] and lab.leaked() == []
    assert C.ping(pod.ip)
    del_ok(lab, ch, pod)
