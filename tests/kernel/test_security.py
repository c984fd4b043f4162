"""What input and privilege can and cannot do to a node through the plugin.

Owns: the security claims of issue 9, against the real plugin process:
  - pin directories are 0700 and pins 0600; the log file is not world-readable;
  - container IDs and interface names the spec forbids are refused with the
    spec's error (code 4) before anything touches the file system, the
    kernel or a shell; a CNI_NETNS that is no network namespace fails open;
  - the log carries no Pod annotation value other than natra.io/ ones;
  - the plugin works with only the capabilities it needs (found by
    experiment, see docs/reliability.md): CAP_SYS_ADMIN alone for tcx (setns
    into the Pod's namespace needs it, and it implies bpf_capable and
    bpf_net_capable), CAP_SYS_ADMIN + CAP_NET_ADMIN for clsact (tc netlink
    checks CAP_NET_ADMIN itself) and for shaping (qdiscs and IFB devices);
    dropping a needed one fails open cleanly, and shaping without
    CAP_NET_ADMIN falls back to policing (the Pod is still limited).
Capabilities are dropped with util-linux `setpriv --bounding-set` in the
natra launcher, so the real plugin process runs without them.
Rule: nt9-* Pods on Lab("security") subnets; everything removed in a finally.
Must not know: the plugin's modules beyond datapath.inspect and pins.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys

import chain as C
import pytest
from faultlab import (
    Lab,
    add_ok,
    assert_limited,
    del_ok,
    inspection,
    natra_plugin,
    unavailable,
    wrap_launcher,
)

pytestmark = [pytest.mark.root, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]

INVALID_ENVIRONMENT = 4
FIFO_TIMEOUT_S = 8  # an ADD takes well under a second; this only bounds a hang
# Capability sets (setpriv syntax) the plugin needs, found by experiment:
# case -> (attach mode, Natra mode, capabilities).
ENOUGH = {"tcx-police": ("tcx", "police", "+sys_admin"),
          "tcx-shape": ("tcx", "shape", "+sys_admin,+net_admin"),
          "clsact-shape": ("clsact", "shape", "+sys_admin,+net_admin")}
# Missing one needed capability: (attach mode, what is left, what the log line names).
NOT_ENOUGH = {"tcx-without-sys_admin": ("tcx", "+bpf,+net_admin,+perfmon", "setns"),
              "clsact-without-net_admin": ("clsact", "+sys_admin,+bpf,+perfmon", "clsact")}


@pytest.fixture
def lab():
    made = Lab("security")
    try:
        yield made
    finally:
        made.close()


def env_for(lab: Lab, **overrides) -> dict[str, str]:
    env = {"CNI_CONTAINERID": "nt9-sec-c1", "CNI_NETNS": "/var/run/netns/nt9-none", "CNI_IFNAME": "eth0",
           "NATRA_BPFFS_ROOT": lab.root, "NATRA_STATE_DIR": os.path.join(lab.tmp, "state"),
           "NATRA_LOG_FILE": lab.log_file}
    env.update(overrides)
    return env


PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "veth0nt9"}, {"name": "eth0", "sandbox": "/x"}],
        "ips": [{"interface": 1, "address": "10.219.64.9/24"}]}


def raw_call(lab: Lab, command: str, env: dict[str, str], config: dict | None = None,
             timeout: float | None = None) -> C.Call:
    config = config or {"cniVersion": "1.0.0", "name": "n", "type": "natra", "prevResult": PREV,
                        "runtimeConfig": {"bandwidth": lab.limits()["bandwidth"]}}
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command, "CNI_PATH": lab.bin_dir,
            **env}
    proc = subprocess.run([os.path.join(lab.bin_dir, "natra")], input=json.dumps(config).encode(), env=full,
                          capture_output=True, timeout=timeout or C.PLUGIN_TIMEOUT_S)
    return C.Call("natra", command, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


# ---- modes --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["tcx", "clsact"])
def test_pins_are_root_only(lab, mode):
    ch = lab.chain(attachMode=mode)
    pod = lab.pod(ch, f"mo{mode[:2]}", capability_args=lab.limits())
    add_ok(lab, ch, pod)
    assert_limited(lab, pod, mode)
    found = inspection(lab, pod)
    modes = {}
    for dirpath, _, files in os.walk(found.pin_dir):
        modes[dirpath] = stat.S_IMODE(os.stat(dirpath).st_mode)
        for name in files:
            modes[os.path.join(dirpath, name)] = stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode)
    assert len(modes) >= 8, modes  # the directory, maps, programs, meta (and links under tcx)
    assert modes.pop(found.pin_dir) == 0o700
    assert set(modes.values()) == {0o600}, modes
    assert all(os.stat(p).st_uid == 0 for p in modes)
    log_mode = stat.S_IMODE(os.stat(lab.log_file).st_mode)
    assert log_mode & 0o007 == 0, oct(log_mode)  # not world-readable
    del_ok(lab, ch, pod)


# ---- invalid identifiers ---------------------------------------------------------------------

BAD_CONTAINER_IDS = ["../../../etc/natra", "a/b", "-leading-dash", ".hidden", "a b",
                     "$(touch /tmp/nt9-pwned)", "a;touch /tmp/nt9-pwned", "x\n", "ünïcode", "a" * 10 + "\x7f"]
BAD_IFNAMES = ["a" * 16, ".", "..", "e/0", "e:0", "e 0", "eth0\t", "../lo"]


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
@pytest.mark.parametrize("container_id", BAD_CONTAINER_IDS)
def test_invalid_container_ids_are_refused(lab, command, container_id):
    call = raw_call(lab, command, env_for(lab, CNI_CONTAINERID=container_id))
    assert call.code == 1, call.stdout
    out = call.output
    assert out["code"] == INVALID_ENVIRONMENT and "containerID" in out["msg"], out
    assert not [n for n in os.listdir(lab.root) if n not in ("maps.debug", "progs.debug")]
    assert not os.path.exists("/tmp/nt9-pwned")
    assert "Traceback" not in call.stderr


@pytest.mark.parametrize("ifname", BAD_IFNAMES)
def test_invalid_interface_names_are_refused(lab, ifname):
    call = raw_call(lab, "ADD", env_for(lab, CNI_IFNAME=ifname))
    assert call.code == 1 and call.output["code"] == INVALID_ENVIRONMENT, call.stdout
    assert "interface name" in call.output["msg"]


@pytest.mark.parametrize("netns", ["/etc/passwd", "/proc/self/ns/mnt", "/nonexistent/nt9", "relative/nt9",
                                   "/sys/fs/bpf"])
def test_a_netns_path_that_is_no_namespace_fails_open(lab, netns):
    call = raw_call(lab, "ADD", env_for(lab, CNI_NETNS=netns))
    assert call.code == 0 and call.output == PREV, call.stdout
    assert "failed open" in call.stderr and "peer check" in call.stderr
    assert lab.pins() == []


def test_a_fifo_as_netns_does_not_hang(lab):
    fifo = os.path.join(lab.tmp, "fifo")
    os.mkfifo(fifo)
    try:
        call = raw_call(lab, "ADD", env_for(lab, CNI_NETNS=fifo), timeout=FIFO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"ADD with CNI_NETNS={fifo} (a FIFO) still running after {FIFO_TIMEOUT_S} s")
    assert call.code == 0 and "failed open" in call.stderr


# ---- annotation values stay out of the log -------------------------------------------------------

def test_log_carries_no_foreign_annotation_values(lab):
    token = "tok-" + secrets.token_hex(8)
    bad_bw = "9" + secrets.token_hex(4) + "Xbit"  # invalid: logged as a note, its value must not be
    natra_value = "3"  # natra.io/width=3 is malformed and may be quoted: it is Natra's own key
    annotations = {"example.com/api-token": token, "kubernetes.io/ingress-bandwidth": bad_bw,
                   "vault.hashicorp.com/secret": token[::-1], "natra.io/width": natra_value,
                   "natra.io/not-a-knob": "nt9-unknown-" + token[-4:]}
    ch = lab.chain()
    pod = lab.pod(ch, "annot", capability_args={**lab.limits(), C.CAPABILITY_ANNOTATIONS: annotations})
    call = add_ok(lab, ch, pod)
    assert_limited(lab, pod)
    with open(lab.log_file) as f:
        logged = f.read() + call.stderr
    assert "malformed Natra annotation" in logged
    assert "ignored unknown annotation natra.io/not-a-knob" in logged
    assert token not in logged and token[::-1] not in logged and bad_bw not in logged
    assert "nt9-unknown-" not in logged  # even an unknown natra.io/ key's value is not echoed
    ch.check(pod)
    del_ok(lab, ch, pod)
    with open(lab.log_file) as f:
        assert token not in f.read()


# ---- capabilities ------------------------------------------------------------------------------

def _with_capabilities(lab: Lab, caps: str) -> None:
    """The natra launcher drops every capability not in `caps` (setpriv syntax) before exec."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) not installed")
    wrap_launcher(lab, ":", f"setpriv --bounding-set=-all,{caps} --inh-caps=-all -- ")


@pytest.mark.parametrize("case", sorted(ENOUGH))
def test_works_with_only_the_needed_capabilities(lab, case):
    mode, natra_mode, caps = ENOUGH[case]
    _with_capabilities(lab, caps)
    ch = lab.chain(version="1.1.0", attachMode=mode, mode=natra_mode)
    pod = lab.pod(ch, f"cap{mode[:2]}{natra_mode[:2]}", capability_args=lab.limits())
    call = add_ok(lab, ch, pod)
    assert f"via {mode}" in call.stderr and "falls back" not in call.stderr, call.stderr
    assert_limited(lab, pod, mode)
    assert set(inspection(lab, pod).meta["direction_modes"].values()) == {natra_mode}
    assert C.ping(pod.ip)
    assert [c.code for c in ch.check(pod)] == [0, 0]
    assert ch.status("natra").code == 0
    assert ch.gc("natra", [pod]).code == 0
    assert_limited(lab, pod, mode)
    del_ok(lab, ch, pod)


def test_shaping_without_net_admin_falls_back_to_policing(lab):
    """tcx needs only CAP_SYS_ADMIN, qdiscs and IFBs need CAP_NET_ADMIN: without it both
    directions police, say so, and the Pod is limited; DEL still leaves nothing."""
    _with_capabilities(lab, "+sys_admin")
    ch = lab.chain(version="1.1.0", attachMode="tcx")
    pod = lab.pod(ch, "capfb", capability_args=lab.limits())
    call = add_ok(lab, ch, pod)
    fallbacks = [line for line in call.stderr.splitlines() if "falls back to police mode" in line]
    assert len(fallbacks) == 2 and all("Operation not permitted" in line for line in fallbacks), call.stderr
    assert_limited(lab, pod, "tcx")
    record = inspection(lab, pod).meta
    assert record["direction_modes"] == {"to_pod": "police", "from_pod": "police"}
    assert set(record["shape_fallback"]) == {"to_pod", "from_pod"} and record["shaping"] == {}
    assert [c.code for c in ch.check(pod)] == [0, 0]
    del_ok(lab, ch, pod)


def test_the_capabilities_are_really_dropped(lab):
    """The launcher's drop is real: without any capability the plugin cannot even enter the netns."""
    _with_capabilities(lab, "-all")
    call = raw_call(lab, "ADD", env_for(lab, CNI_NETNS="/proc/1/ns/net"))
    assert call.code == 0 and "failed open" in call.stderr, call.stderr
    assert "Operation not permitted" in call.stderr or "Permission denied" in call.stderr


@pytest.mark.parametrize("case", sorted(NOT_ENOUGH))
def test_a_missing_capability_fails_open(lab, case):
    mode, caps, named = NOT_ENOUGH[case]
    _with_capabilities(lab, caps)
    ch = lab.chain(version="1.1.0", attachMode=mode)
    pod = lab.pod(ch, f"no{mode[:2]}", capability_args=lab.limits())
    call = add_ok(lab, ch, pod)
    failed = [line for line in call.stderr.splitlines() if "failed open" in line]
    assert len(failed) == 1 and named in failed[0] and "Operation not permitted" in failed[0], call.stderr
    assert inspection(lab, pod) is None and lab.pins() == [] and lab.leaked() == []
    assert C.ping(pod.ip)
    assert [c.code for c in ch.check(pod)] == [0, 0]
    with open(lab.log_file) as f:
        assert failed[0].split(": ", 1)[1] in f.read()
    del_ok(lab, ch, pod)
    assert natra_plugin(ch)["attachMode"] == mode


def test_node_tools_refused_by_the_kernel_say_why(lab):
    """`natra status` and `natra top` when the kernel refuses them the pins (no
    capability at all and a pin root of mode 000, so even uid 0 is refused):
    one line naming the refusal and what it takes, exit 1, no traceback."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) not installed")
    ch = lab.chain(version="1.1.0")
    pod = lab.pod(ch, "nocap", capability_args=lab.limits())
    add_ok(lab, ch, pod)
    mode = stat.S_IMODE(os.stat(lab.root).st_mode)
    os.chmod(lab.root, 0)
    try:
        for tool in (["status"], ["top", "--once", "--no-clear", "--interval", "0"]):
            out = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--",
                                  sys.executable, "-m", "natra", *tool, "--root", lab.root],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 1, (tool, out.stdout, out.stderr)
            assert "Traceback" not in out.stderr, out.stderr
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and "Permission denied" in lines[0] and "CAP_BPF" in lines[0], lines
    finally:
        os.chmod(lab.root, mode)
    del_ok(lab, ch, pod)
