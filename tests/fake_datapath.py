"""FakeDatapath: a FAKE of natra.kernel.datapath and of the veth peer lookup, for executor tests.

It stands in for the kernel only so that tests/test_cni_executor.py can reach the
branches of natra/cni/executor.py without root: ADD limiting a Pod, a shaped
direction falling back to policing, fail-open on a peer-check or data-path
failure, DEL, CHECK on matching or drifted state, GC, STATUS. It models nothing
of the kernel beyond what those branches read back: an install is remembered as
the Inspection natra.kernel.datapath.inspect would return for it (the real
Installed/Inspection/Hook classes, so a change of their fields shows here), and
any method can be told to fail. Passing tests against it say the executor's
decisions are right, never that the data path works: the real-kernel tests in
tests/kernel/ (test_cni_chain.py, test_faults.py, test_datapath.py, ...) cover the
real thing.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field, replace

from natra.cni.executor import Kernel
from natra.kernel import layout as L
from natra.kernel.datapath import Hook, Inspection, Installed
from natra.kernel.params import MODE_POLICE, MODE_SHAPE

HOST_IFINDEX = 41  # the host veth's ifindex as the fake reports it
IFB_IFINDEX = 900  # the IFB out of the Pod, when from_pod is shaped


@dataclass
class FakeDatapath:
    """Remembers every call (`calls`: (method, container id or None, kwargs)) and the installs.

    peers: (netns, pod ifname) -> (ifindex, host ifname); anything else is ENOENT, as for a
        namespace that is gone.
    failures: method name, or (method name, container id), -> the exception that call raises.
    shape_fails: direction name -> why its tree "cannot be built" (install polices it instead).
    orphan_ifbs: IFB name -> the container id it derives from (remove_orphan_ifbs deletes those
        of containers not kept); ifb_failures: what remove_orphan_ifbs reports as failed.
    shaping_problems: what shaping_drift reports; probe_problems: what probe reports.
    tcx_error: set, an "auto" install attaches with clsact and says why tcx was unavailable.
    """

    peers: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    failures: dict = field(default_factory=dict)
    shape_fails: dict[str, str] = field(default_factory=dict)
    orphan_ifbs: dict[str, str] = field(default_factory=dict)
    ifb_failures: list[str] = field(default_factory=list)
    shaping_problems: list[str] = field(default_factory=list)
    probe_problems: list[str] = field(default_factory=list)
    tcx_error: str | None = None
    installed: dict[str, Inspection] = field(default_factory=dict)
    calls: list[tuple[str, str | None, dict]] = field(default_factory=list)

    def kernel(self) -> Kernel:
        """The executor's Kernel with this fake in place of the data path and the peer lookup."""
        return Kernel(datapath=lambda: self, peer=self.peer)

    def called(self, method: str) -> list[tuple[str | None, dict]]:
        return [(cid, kwargs) for name, cid, kwargs in self.calls if name == method]

    def _call(self, method: str, container_id: str | None = None, **kwargs) -> None:
        self.calls.append((method, container_id, kwargs))
        failure = self.failures.get((method, container_id), self.failures.get(method))
        if failure is not None:
            raise failure

    # ---- the peer lookup ----------------------------------------------------------------

    def peer(self, netns: str, ifname: str) -> tuple[int, str]:
        self._call("peer", None, netns=netns, ifname=ifname)
        try:
            return self.peers[(netns, ifname)]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", netns) from None

    # ---- natra.kernel.datapath's functions, as the executor calls them --------------------

    def install(self, container_id, host_ifname, configs, *, directions, mode, flow_table, meta, root,
                object_path, shaping) -> Installed:
        self._call("install", container_id, host_ifname=host_ifname, configs=tuple(configs),
                   directions=set(directions), mode=mode, flow_table=flow_table, meta=dict(meta), root=root,
                   object_path=object_path, shaping=dict(shaping))
        configs = list(configs)
        wanted = tuple(sorted(directions))
        modes = {L.DIRECTION_NAMES[d]: MODE_POLICE for d in wanted}
        devices, fallback = {}, {}
        for direction, wish in sorted(shaping.items()):
            name = L.DIRECTION_NAMES[direction]
            if name in self.shape_fails:
                fallback[name] = self.shape_fails[name]
                configs[direction] = wish.fallback
                continue
            modes[name] = MODE_SHAPE
            if direction == L.DIR_FROM_POD:
                devices[name] = {"ifb": f"fake-ifb-{container_id[:8]}", "ifindex": IFB_IFINDEX}
                configs[direction] = replace(configs[direction], redirect_ifindex=IFB_IFINDEX)
            else:
                devices[name] = {"ifindex": HOST_IFINDEX}
        used = "clsact" if mode == "clsact" or (mode == "auto" and self.tcx_error) else "tcx"
        tcx_error = self.tcx_error if mode == "auto" else None
        record = {**meta, "container_id": container_id, "host_ifname": host_ifname, "ifindex": HOST_IFINDEX,
                  "mode": used, "requested_mode": mode, "directions": list(wanted),
                  "direction_modes": modes, "shaping": devices, "flow_table": flow_table,
                  "tcx_error": tcx_error}
        if fallback:
            record["shape_fallback"] = dict(fallback)
        self.installed[container_id] = Inspection(
            container_id=container_id, pin_dir=f"{root}/{container_id}", mode=used, ifindex=HOST_IFINDEX,
            host_ifname=host_ifname, hooks={d: Hook(d, True, "fake hook") for d in wanted},
            configs=dict(enumerate(configs)), meta=record)
        return Installed(container_id=container_id, pin_dir=f"{root}/{container_id}", mode=used,
                         ifindex=HOST_IFINDEX, host_ifname=host_ifname, directions=wanted,
                         tcx_error=tcx_error, direction_modes=modes, shape_fallback=fallback,
                         configs=tuple(configs))

    def remove(self, container_id, *, root=None) -> None:
        self._call("remove", container_id, root=root)
        self.installed.pop(container_id, None)

    def inspect(self, container_id, *, root=None) -> Inspection | None:
        self._call("inspect", container_id, root=root)
        return self.installed.get(container_id)

    def shaping_drift(self, found, shaped) -> list[str]:
        self._call("shaping_drift", found.container_id, shaped=dict(shaped))
        return list(self.shaping_problems)

    def list_installed(self, *, root=None) -> list[str]:
        self._call("list_installed", None, root=root)
        return sorted(self.installed)

    def remove_orphan_ifbs(self, keep, *, root=None) -> tuple[list[str], list[str]]:
        self._call("remove_orphan_ifbs", None, keep=set(keep), root=root)
        removed = sorted(name for name, owner in self.orphan_ifbs.items() if owner not in keep)
        for name in removed:
            del self.orphan_ifbs[name]
        return removed, list(self.ifb_failures)

    def probe(self, *, root=None) -> list[str]:
        self._call("probe", None, root=root)
        return list(self.probe_problems)
