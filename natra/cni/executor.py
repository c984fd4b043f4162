"""Carry a Plan out: the only part of the plugin with effects.

Owns: the peer check (the host interface named in prevResult must be the veth
peer of CNI_IFNAME inside the Pod's namespace), the calls into natra.kernel.datapath
for each command, the fail-open rule and its marker files (so a CHECK right
after a failed-open ADD passes, as CRI-O needs), and the log line each
command leaves.
Rule: after a request is understood, ADD and DEL never fail: every error is
one log line and the Pod keeps working unlimited. Only CHECK, STATUS and GC
report kernel problems, as CNI errors. natra.kernel.datapath is imported lazily so
the pure core never needs it.
Seam: every effect on the kernel goes through a `Kernel` (the data path, loaded on
first use, and the veth peer lookup); each command takes one, the real one by
default, so the decisions here run against a stand-in without root
(tests/test_cni_executor.py) as well as against the kernel (tests/kernel/).
Must not know: how limits are read or configs computed (the Plan says it),
how results are printed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from natra.cni import failopen
from natra.cni.errors import CniError, Kind
from natra.cni.log import Log
from natra.cni.plan import Attachment, Plan, configs_in_force, drift, floor_note, keeps
from natra.kernel import layout as L
from natra.kernel.params import MODE_POLICE, promised_burst_bits

FAIL_OPEN_DIR = failopen.FAIL_OPEN_DIR  # under Settings.state_dir: one record per failed-open container


class FailOpen(Exception):
    """Limiting this Pod is impossible; the message is the log line's cause, `kind` its label."""

    def __init__(self, message: str, kind: str = "unexpected"):
        super().__init__(message)
        self.kind = kind


class Datapath(Protocol):
    """What the executor calls of natra.kernel.datapath (the module itself is the real one)."""

    def install(self, container_id: str, host_ifname: str, configs: Sequence[Any], *,
                directions: set[int], mode: str, flow_table: int, meta: dict, root: str | None,
                object_path: str | None, shaping: Mapping[int, Any]) -> Any: ...

    def remove(self, container_id: str, *, root: str | None = None) -> None: ...

    def inspect(self, container_id: str, *, root: str | None = None) -> Any: ...

    def shaping_drift(self, found: Any, shaped: Mapping[int, Any]) -> list[str]: ...

    def list_installed(self, *, root: str | None = None) -> list[str]: ...

    def remove_orphan_ifbs(self, keep: Collection[str], *, root: str | None = None
                           ) -> tuple[list[str], list[str]]: ...

    def probe(self, *, root: str | None = None) -> list[str]: ...


def _import_datapath() -> Datapath:
    try:
        from natra.kernel import datapath
    except Exception as exc:  # noqa: BLE001 - a broken install must not break Pods
        raise FailOpen(f"natra.kernel.datapath cannot be imported: {exc}", "datapath_unavailable") from exc
    return datapath


def _veth_peer(netns: str, ifname: str) -> tuple[int, str]:
    """(ifindex, name) here of the veth peer of `ifname` inside `netns`; OSError if there is none."""
    from natra.kernel import netlink

    peer = netlink.peer_ifindex(netns, ifname)
    return peer, socket.if_indextoname(peer)


@dataclass(frozen=True)
class Kernel:
    """The executor's only ways to the kernel. `datapath()` gives the data path (the real one
    imports natra.kernel.datapath on first use, so the pure core and the no-limit ADD never
    load it; an import failure is a FailOpen); `peer(netns, ifname)` finds the veth peer."""

    datapath: Callable[[], Datapath] = _import_datapath
    peer: Callable[[str, str], tuple[int, str]] = _veth_peer


KERNEL = Kernel()  # the real one: what the plugin uses


def _write_marker(plan: Plan, now: int, directions: dict[str, tuple[str, str]]) -> None:
    """Record which asked directions are not limited, why (cause label, message) and since when."""
    state = plan.settings.state_dir
    earlier = failopen.read(state, plan.container_id)
    uid = (plan.attachment.meta.get("pod_uid", "") if plan.attachment else "") or ""
    ifname = plan.attachment.pod_ifname if plan.attachment else ""
    record = failopen.Record(
        plan.container_id, pod=plan.pod, pod_uid=uid, ifname=ifname,
        directions={d: {"cause": kind, "message": message} for d, (kind, message) in directions.items()},
        since_ns=earlier.since_ns if earlier and earlier.since_ns else now, updated_ns=now)
    try:
        failopen.write(state, record)
    except OSError:
        pass  # CHECK will report the missing state instead; ADD still succeeds


def record_failed_open(plan: Plan, now: int, kind: str, message: str) -> None:
    """The whole ADD failed open: every direction the Pod asked for is unlimited."""
    refused = dict(plan.refused)
    _write_marker(plan, now, {d: ("invalid_annotation", refused[d]) if d in refused else (kind, message)
                              for d in (plan.asked or (failopen.UNKNOWN,))})


def _read_marker(plan: Plan) -> str | None:
    record = failopen.read(plan.settings.state_dir, plan.container_id)
    if record is None:
        return None
    return "; ".join(f"{d}: {v['message']}" for d, v in sorted(record.directions.items())) or "unknown cause"


def _clear_marker(plan: Plan) -> None:
    failopen.clear(plan.settings.state_dir, plan.container_id)


def host_interface(attachment: Attachment, kernel: Kernel = KERNEL) -> str:
    """The prevResult host interface that really is the peer of the Pod's interface."""
    try:
        peer, name = kernel.peer(attachment.netns, attachment.pod_ifname)
    except OSError as exc:
        raise FailOpen(f"peer check: cannot find the peer of {attachment.pod_ifname} "
                       f"in {attachment.netns}: {exc}", "peer_check") from exc
    if name not in attachment.host_candidates:
        raise FailOpen(f"peer check: the peer of {attachment.pod_ifname} is {name} (ifindex {peer}), "
                       f"which prevResult does not list (host interfaces: "
                       f"{', '.join(attachment.host_candidates) or 'none'})", "peer_check")
    return name


def _describe(attachment: Attachment, modes=None, configs=None) -> str:
    parts = []
    for direction in sorted(attachment.directions):
        name = L.DIRECTION_NAMES[direction]
        limit = attachment.meta.get("limits", {}).get(name, {})
        burst = limit.get("burst_bits")
        if configs and configs[direction].tau_nbit:
            burst = promised_burst_bits(configs[direction], attachment.clock_tick_ns)
        mode = (modes or {}).get(name)
        parts.append(f"{name} {limit.get('rate_bps')} bit/s burst {burst} bits"
                     + (f" ({mode})" if mode else ""))
    return "; ".join(parts)


def _wishes(attachment: Attachment) -> dict:
    """The shaped directions, as natra.kernel.datapath.install takes them."""
    from natra.kernel.shapers import Wish

    return {d: Wish(params, attachment.fallback_config(d)) for d, params in attachment.shaped().items()}


def _log_fallbacks(attachment: Attachment, fallback, log: Log, now: int) -> None:
    """A shaped direction that polices instead is said loudly: the Pod is limited, but drops."""
    for name, why in sorted(fallback.items()):
        direction = next(d for d, n in L.DIRECTION_NAMES.items() if n == name)
        log.error(now, f"ADD: {name} falls back to police mode (the Pod is limited, by dropping): "
                  f"shaping qdiscs cannot be installed: {why}")
        asked = attachment.meta.get("limits", {}).get(name, {}).get("asked_burst_bits")
        note = floor_note(name, asked, attachment.fallback[direction])
        if note:
            log.warn(now, note)


def add(plan: Plan, log: Log, now: int, kernel: Kernel = KERNEL) -> dict:
    """Limit the Pod if it has limits; return the result to print. Never raises."""
    for note in plan.notes:
        log.warn(now, note)
    attachment = plan.attachment
    try:
        if plan.cause:
            raise FailOpen(plan.cause, plan.cause_kind or "unexpected")
        if attachment is None:
            if plan.refused:
                _write_marker(plan, now, {d: ("invalid_annotation", why) for d, why in plan.refused})
                log.error(now, "ADD failed open, Pod is NOT limited: "
                          + "; ".join(f"{d}: {why}" for d, why in plan.refused))
            else:
                _clear_marker(plan)
                log.info(now, "ADD: no bandwidth limits; result passed through")
            return plan.result
        host = host_interface(attachment, kernel)
        datapath = kernel.datapath()
        settings = plan.settings
        try:
            installed = datapath.install(
                attachment.container_id, host, attachment.configs, directions=set(attachment.directions),
                mode=attachment.mode, flow_table=attachment.flow_table, meta=dict(attachment.meta),
                root=settings.bpffs_root, object_path=settings.object_path, shaping=_wishes(attachment))
        except Exception as exc:  # noqa: BLE001 - DatapathError and anything unforeseen
            raise FailOpen(f"data path: {exc}", "datapath") from exc
        _log_fallbacks(attachment, installed.shape_fallback, log, now)
    except FailOpen as exc:
        _cleanup_after_failure(plan, log, now, kernel)
        record_failed_open(plan, now, exc.kind, str(exc))
        log.error(now, f"ADD failed open, Pod is NOT limited: {exc}")
        return plan.result
    if plan.refused:  # limited, but a direction it asked for is not
        _write_marker(plan, now, {d: ("invalid_annotation", why) for d, why in plan.refused})
    else:
        _clear_marker(plan)
    log.info(now, f"ADD: limited {_describe(attachment, installed.direction_modes, installed.configs)} "
             f"on {host} via {installed.mode}"
             + (" (tcx links follow the answer)" if installed.tcx_pending else "")
             + (" (on the shared program until its own is verified)" if installed.interim else "")
             + (f" (tcx unavailable: {installed.tcx_error})" if installed.tcx_error else ""))
    return plan.result


def _cleanup_after_failure(plan: Plan, log: Log, now: int, kernel: Kernel) -> None:
    """Leave nothing half-made behind a failed ADD (a previous ADD's state included)."""
    try:
        kernel.datapath().remove(plan.container_id, root=plan.settings.bpffs_root)
    except Exception as exc:  # noqa: BLE001 - the Pod works without us; say so and go on
        log.warn(now, f"cleanup after failed ADD: {exc}")


def delete(plan: Plan, log: Log, now: int, kernel: Kernel = KERNEL) -> None:
    """Remove everything of this container. Never raises."""
    for note in plan.notes:
        log.warn(now, note)
    _clear_marker(plan)
    try:
        kernel.datapath().remove(plan.container_id, root=plan.settings.bpffs_root)
    except Exception as exc:  # noqa: BLE001 - DEL must succeed; GC retries later
        log.error(now, f"DEL: could not remove everything (GC will retry): {exc}")
        return
    log.info(now, "DEL: removed")


def check(plan: Plan, log: Log, now: int, kernel: Kernel = KERNEL) -> None:
    """Compare the kernel with the plan; CniError(100-102) on drift."""
    attachment = plan.attachment
    if attachment is None:
        return
    earlier = plan.cause or _read_marker(plan)
    try:
        inspection = kernel.datapath().inspect(plan.container_id, root=plan.settings.bpffs_root)
    except Exception as exc:  # noqa: BLE001
        if earlier:
            log.warn(now, f"CHECK passes: ADD failed open ({earlier}); state unreadable: {exc}")
            return
        raise CniError.of(Kind.STATE_UNREADABLE, "cannot read Natra's kernel state", str(exc)) from exc
    if inspection is None:
        if earlier:
            log.warn(now, f"CHECK passes: ADD failed open earlier, Pod is not limited: {earlier}")
            return
        raise CniError.of(Kind.STATE_MISSING, "Natra state missing",
                          f"container {plan.container_id} has bandwidth limits but no Natra "
                          "programs or pins (ADD not run, or removed since)")
    attached = [d for d, hook in inspection.hooks.items() if hook.attached]
    modes, redirects = _in_force(inspection.meta)
    wanted = configs_in_force(attachment, modes, redirects)
    problems = list(inspection.problems) + drift(attachment, inspection.mode, attached, inspection.configs,
                                                 wanted)
    if not inspection.problems:
        shaped = {d: p for d, p in attachment.shaped().items() if modes.get(d) != MODE_POLICE}
        try:
            problems += kernel.datapath().shaping_drift(inspection, shaped)
        except Exception as exc:  # noqa: BLE001
            raise CniError.of(Kind.STATE_UNREADABLE, "cannot read Natra's qdiscs", str(exc)) from exc
    if attachment.host_candidates and inspection.host_ifname not in attachment.host_candidates:
        problems.append(f"attached to {inspection.host_ifname}, prevResult lists "
                        f"{', '.join(attachment.host_candidates)}")
    if problems:
        raise CniError.of(Kind.STATE_DRIFT, "Natra state differs from the config", "; ".join(problems))
    log.info(now, f"CHECK: {inspection.mode} programs and configs match on {inspection.host_ifname}")


def _in_force(record: dict) -> tuple[dict[int, str], dict[int, int]]:
    """From the meta record: the directions that fell back to policing, and where each
    shaped direction redirects (the IFB out of the Pod)."""
    index = {n: d for d, n in L.DIRECTION_NAMES.items()}
    modes = {index[n]: MODE_POLICE for n in (record.get("shape_fallback") or {}) if n in index}
    redirects = {index[n]: dev.get("ifindex", 0) for n, dev in (record.get("shaping") or {}).items()
                 if n in index and isinstance(dev, dict) and dev.get("ifb")}
    return modes, redirects


def status(plan: Plan, log: Log, now: int, kernel: Kernel = KERNEL) -> None:
    """Silent when ready (containerd polls it every few seconds); CniError(50) otherwise."""
    try:
        problems = kernel.datapath().probe(root=plan.settings.bpffs_root)
    except FailOpen as exc:
        problems = [str(exc)]
    except Exception as exc:  # noqa: BLE001
        problems = [f"probe failed: {exc}"]
    if plan.settings.object_path and not os.path.isfile(plan.settings.object_path):
        problems.append(f"BPF object {plan.settings.object_path} (objectPath) does not exist")
    if problems:
        raise CniError.of(Kind.NOT_AVAILABLE, "Natra cannot limit Pods on this node", "; ".join(problems))


def gc(plan: Plan, log: Log, now: int, kernel: Kernel = KERNEL) -> None:
    """Remove every installed container GC's valid list does not name, and every IFB of this
    pin root whose name derives from no valid container."""
    datapath = kernel.datapath()
    root = plan.settings.bpffs_root
    failed = []
    try:
        installed = datapath.list_installed(root=root)
    except Exception as exc:  # noqa: BLE001
        raise CniError.of(Kind.IO_FAILURE, "cannot list Natra's pinned state", str(exc)) from exc
    removed = 0
    for container_id in installed:
        ifname = None
        try:
            found = datapath.inspect(container_id, root=root)
            ifname = (found.meta or {}).get("ifname") if found else None
        except Exception:  # noqa: BLE001 - unreadable state is stale state
            pass
        if keeps(plan, container_id, ifname):
            continue
        try:
            datapath.remove(container_id, root=root)
            removed += 1
        except Exception as exc:  # noqa: BLE001
            failed.append(f"{container_id}: {exc}")
    try:
        ifbs, ifb_failures = datapath.remove_orphan_ifbs({cid for cid, _ in plan.keep}, root=root)
    except Exception as exc:  # noqa: BLE001
        ifbs, ifb_failures = [], [f"list IFB devices: {exc}"]
    failed += ifb_failures
    failopen.gc(plan.settings.state_dir, {cid for cid, _ in plan.keep})
    log.info(now, f"GC: removed {removed} stale of {len(installed)} installed"
             + (f"; orphan IFBs {', '.join(ifbs)}" if ifbs else ""))
    if failed:
        raise CniError.of(Kind.GC_INCOMPLETE, "GC could not remove every stale attachment", "; ".join(failed))
