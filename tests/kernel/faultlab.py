"""The fault lab: what the fault, security and concurrency tests share.

Owns: `Lab` (a private bpffs mount, bin dir, IPAM and log dirs, nt9-* Pods on
10.219.0.0/16 and marker rates that witness leaks), the skip reason of those
tests (`unavailable`), and the checks they all make: the plugin's entry
(`natra_plugin`), `tc` and `qdisc_kinds`, `inspection` / `assert_limited`,
`natra_packets`, `add_ok` / `del_ok` (every plugin exits 0 and nothing of ours
is left), and `wrap_launcher` (run something before the plugin).
Rule: everything a Lab makes is removed by its close(); names start with nt9-;
each test module takes its own block of subnets (SUBNET_BLOCKS).
Must not know: the plugin's modules beyond datapath.inspect and the map readers.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import chain as C
import netns

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import soak  # noqa: E402 - the BPF census lives with the soak script

PREFIX = "nt9-"
VERSION_CAPS = {"ptp": "1.0.0", "bridge": "1.0.0", "bandwidth": "1.0.0"}
# Rates (bit/s) only these tests use: a config map carrying one outlives our state only by a leak.
MARKER_BASE = 21_800_011
MARKER_STEP = 13
# Pod /24s inside 10.219.0.0/16 per test module, so the modules can run side by side.
SUBNET_BLOCKS = {"faults": range(1, 64), "security": range(64, 96), "concurrency": range(96, 128),
                 "shaping": range(128, 160)}
LEAK_SETTLE_S = 5.0  # RCU grace periods and deferred frees take milliseconds; seconds mean a leak


def unavailable() -> str | None:
    return netns.kernel_skip_reason(node_bpffs=True, objects=netns.ALL_OBJECTS, cni_plugins=("ptp",))


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


class Lab:
    """Everything one test makes; `close` removes all of it."""

    counters: dict[str, itertools.count] = {}
    rate_counter = itertools.count()

    def __init__(self, module: str = "faults"):
        blocks = SUBNET_BLOCKS[module]
        n = next(Lab.counters.setdefault(module, itertools.count()))
        self.tag = f"{module[0]}{n}"
        self.subnet = f"10.219.{blocks[n % len(blocks)]}.0/24"
        self.bin_dir = C.make_bin_dir()
        self.tmp = tempfile.mkdtemp(prefix="nt9-lab-")
        self.root = os.path.join(self.tmp, "bpffs")
        os.mkdir(self.root)
        self.pods: list[tuple[C.Chain, C.Pod]] = []
        self.rates: list[int] = []
        self.cleanups: list = []
        run("mount", "-t", "bpf", "bpf", self.root)

    @property
    def log_file(self) -> str:
        return os.path.join(self.tmp, "log", "natra.log")

    def rate(self) -> int:
        """A fresh marker rate (bit/s)."""
        value = MARKER_BASE + MARKER_STEP * (os.getpid() % 4096 * 256 + next(Lab.rate_counter) % 256)
        self.rates.append(value)
        return value

    def limits(self, rate: int | None = None) -> dict:
        rate = rate or self.rate()
        return {"bandwidth": {"ingressRate": rate, "ingressBurst": rate,
                              "egressRate": rate, "egressBurst": rate}}

    def natra(self, **settings) -> dict:
        where = {"bpffsRoot": self.root, "stateDir": os.path.join(self.tmp, "state"),
                 "logFile": self.log_file}
        return C.natra_entry(**{**where, **settings})

    def chain(self, *, version: str = "1.0.0", before: list[dict] | None = None, **settings) -> C.Chain:
        ptp = C.ptp(self.subnet, os.path.join(self.tmp, "ipam"))
        conflist = {"cniVersion": version, "name": f"nt9net{self.tag}",
                    "plugins": [ptp, *(before or []), self.natra(**settings)]}
        return C.Chain(conflist, self.bin_dir, VERSION_CAPS)

    def pod(self, ch: C.Chain, suffix: str, **kwargs) -> C.Pod:
        name = f"{PREFIX}{self.tag}-{suffix}"
        run("ip", "netns", "add", name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        k8s = {"K8S_POD_NAMESPACE": "nt9", "K8S_POD_NAME": name, "K8S_POD_UID": f"uid-{name}"}
        pod = C.Pod(name=name, container_id=f"{name}-c0ffee", k8s=k8s, **kwargs)
        self.pods.append((ch, pod))
        return pod

    def leaked(self, rates: list[int] | None = None, settle_s: float = LEAK_SETTLE_S) -> list[int]:
        """Ids of config maps alive in the kernel that carry one of this lab's rates.

        The kernel frees a program's maps only after an RCU grace period (and tc
        filters of a deleted device in a workqueue), so ids linger for a moment:
        poll until they are gone or `settle_s` has passed.
        """
        deadline = time.monotonic() + settle_s
        while True:
            found = soak.census(marker_rates=self.rates if rates is None else rates).marked_config_maps
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def pins(self) -> list[str]:
        found = []
        for dirpath, _, files in os.walk(self.root):
            found += [os.path.join(dirpath, f) for f in files
                      if not (dirpath == self.root and f in soak.BPFFS_PRESETS)]
        return found

    def close(self) -> None:
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:  # noqa: BLE001 - keep cleaning
                pass
        for ch, pod in self.pods:
            try:
                if pod.cached_result is not None:
                    ch.delete(pod)
            except Exception:  # noqa: BLE001
                pass
            finally:
                C.delete_netns(pod)
        run("umount", "-l", self.root, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.bin_dir, ignore_errors=True)


def natra_plugin(ch: C.Chain) -> dict:
    return next(p for p in ch.conflist["plugins"] if p["type"] == "natra")


def tc(*args: str) -> list[dict]:
    out = run("tc", "-j", "-s", *args).stdout
    return json.loads(out) if out.strip() else []


def qdisc_kinds(ifname: str) -> list[str]:
    return sorted(q["kind"] for q in tc("qdisc", "show", "dev", ifname))


def inspection(lab: Lab, pod: C.Pod):
    from natra.kernel import datapath

    return datapath.inspect(pod.container_id, root=lab.root)


def assert_limited(lab: Lab, pod: C.Pod, mode: str | None = None) -> None:
    found = inspection(lab, pod)
    assert found is not None and found.ok, found
    assert found.host_ifname == C.host_veth(pod)
    assert all(h.attached for h in found.hooks.values()) and len(found.hooks) == 2
    if mode:
        assert found.mode == mode


def natra_packets(lab: Lab, pod: C.Pod) -> int:
    """Frames Natra's programs saw for this Pod (both directions, every counter)."""
    from natra.kernel import bpfsys, maps, pins

    fd = bpfsys.obj_get(pins.pin_dir(pod.container_id, lab.root).map("natra_counters"))
    try:
        return sum(sum(maps.read_counters(fd, d)) for d in (0, 1))
    finally:
        os.close(fd)


def add_ok(lab: Lab, ch: C.Chain, pod: C.Pod) -> C.Call:
    calls = ch.add(pod)
    assert [c.code for c in calls] == [0] * len(calls), [c.stdout + c.stderr for c in calls]
    call = C.natra_call(calls)
    from natra.cni import versions

    assert call.output == versions.convert_result(calls[-2].output, ch.version)  # passed through
    return call


def del_ok(lab: Lab, ch: C.Chain, pod: C.Pod) -> None:
    calls = ch.delete(pod)
    assert [c.code for c in calls] == [0] * len(calls), [c.stdout + c.stderr for c in calls]
    assert lab.pins() == []
    assert lab.leaked() == []


def wrap_launcher(lab: Lab, before: str, prefix: str = "") -> None:
    """Replace the bin dir's `natra` by a script that runs `before`, then execs the plugin
    (the node bundle the bin dir links to, or this checkout's `python -m natra`) behind
    `prefix`. The link is removed first, so the bundle itself is never written to."""
    launcher = os.path.join(lab.bin_dir, "natra")
    if os.path.islink(launcher):
        plugin = os.path.realpath(launcher)
    else:
        plugin = f"env PYTHONPATH={REPO} {sys.executable} -m natra"
    os.remove(launcher)
    with open(launcher, "w") as f:
        f.write(f"#!/bin/sh\n{before}\nexec {prefix}{plugin} \"$@\"\n")
    os.chmod(launcher, 0o755)
