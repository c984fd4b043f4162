"""The data path as the CNI plugin sees it: install, inspect, remove, list, probe.

Owns: the order of the kernel steps for one container, nothing else:
    install: find the host veth -> remove a previous install's programs and pins
             -> make the pin directory -> write meta
             -> shaped directions: bring each tree up (natra.kernel.shapers); a
                direction whose tree cannot be built falls back to its policing
                config; the IFB's ifindex goes into the from_pod config
             -> take down the trees of directions no longer shaped
             -> load the object -> pin maps and programs
             -> attach each limited direction (links pinned) -> final meta
    settle   (a long-lived process, after it has answered the ADD):
             own_program (a Pod it bound to the shared interim program): load
                the Pod's own copy bound to its pinned maps -> swap it in where
                the shared one runs (link update, or filter replace) -> pin it
                -> take the Pod's slot name out of the shared program -> meta
             move_to_tcx (an `auto` ADD it attached with clsact): attach the tcx
                links -> meta "tcx" -> delete our clsact filters (and the qdisc
                we made) -> final meta
    remove:  detach (tcx links; our clsact filters while the veth exists)
             -> take down the shaping trees (host veth if it still exists, the IFB)
             -> unpin everything -> remove the directory
It is pure orchestration of natra.kernel.loader, natra.kernel.attach, natra.kernel.pins,
natra.kernel.shapers and natra.kernel.meta.

Rules kept:
- Per-container state lives only in the pin directory (its name derives from
  the container ID), so DEL, CHECK and GC need no state file.
- install is idempotent: a second install for the same container removes the
  first's programs and pins before building the new ones (no duplicate links or
  filters, no leaked pins) and brings its trees to the new plan in place (the
  same IFB, no second one). If it fails midway it removes what it made, trees
  and IFB included, and raises DatapathError(step, cause).
- The meta record says per limited direction what is in force:
  "direction_modes" {"to_pod": "shape"|"police", ...}, "shaping" (the shaped
  directions' devices: {"to_pod": {"ifindex"}, "from_pod": {"ifb", "ifindex"}})
  and, for a direction that fell back, "shape_fallback" {name: reason}.
- tcx later: a process that gives `use_tcx_later` (the node agent) has an `auto`
  install attach clsact filters, which take no RCU grace period, and move the
  Pod to tcx links after its answer. The record keeps "tcx_pending" true until
  the move is complete; while it is, filters and links may both be present
  (the links run first, and a frame they pass meets the same program and maps
  once more in the filter: it is charged twice, which only tightens the limit),
  and remove deletes both. A move that finds the container gone or re-made
  does nothing; one whose tcx attach fails leaves the Pod on clsact with
  "tcx_error", as `auto` does on a kernel without tcx.
- shared interim program: a process whose object source hands out Pods bound to
  the shared program (natra.kernel.interim) records "interim" {"prog_ids"}
  until own_program has swapped the Pod's own copy in; both copies run on the
  same maps, so the Pod's state carries over, and each swap is atomic (no frame
  meets both). remove takes the Pod's slot name out of the shared program.
- remove succeeds when everything is already gone, when the veth or the netns
  vanished, and when called twice.
- inspect reports what the kernel really has (link attached to the expected
  ifindex, our filter present and running our program), not what files exist.
- probe answers in a few ms: no object load, no netlink.

Must not know: CNI, quantities, annotations. No pyroute2 at module level: only
the clsact path (natra.kernel.attach) imports it.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

from natra.kernel import attach, bpfsys, interim, maps, meta, pins, shapers
from natra.kernel import layout as L
from natra.kernel.params import MODE_POLICE, MODE_SHAPE, ConfigValues, DataPathParams
from natra.kernel.shapers import Wish

BPF_FS_MAGIC = 0xCAFE4A11
LIBBPF_SONAME = "libbpf.so.1"
META_VERSION = 1
# A fallback reason as the meta record keeps it (the log has it whole): the record
# is one BPF map value of meta.META_VALUE_SIZE bytes, which a kernel error text
# must not overflow.
REASON_MAX_CHARS = 300
MODE_PENDING = "pending"  # meta written, attach not finished (a crash leaves this)
# Where install gets a loaded object: BpfObject.load, or a long-lived process's
# pool of objects loaded ahead (natra.kernel.pool, set by the node agent).
_object_source = None


# Where remove hands the steps that wait for RCU grace periods: None runs them in
# line; the node agent runs them after it has answered (see remove).
_deferred_teardown = None


def use_deferred_teardown(later) -> None:
    """Make remove hand its slow last steps to `later(step)`; None: run them in line."""
    global _deferred_teardown
    _deferred_teardown = later


# Where an `auto` install hands the move from clsact to tcx: None attaches tcx in
# line; the node agent moves the Pod after it has answered (see move_to_tcx).
_tcx_later = None


def use_tcx_later(later) -> None:
    """Make an `auto` install attach clsact and hand `later(container_id, step)` the
    move to tcx links; None: attach tcx in line."""
    global _tcx_later
    _tcx_later = later


def use_object_source(take) -> None:
    """Make install take loaded objects from `take(configs, flow_table=, path=, ifindex=)`
    (which may hand out a Pod bound to the shared program); None: load."""
    global _object_source
    _object_source = take


class DatapathError(Exception):
    """A data-path step failed: `step` names it, `cause` keeps the original error."""

    def __init__(self, step: str, cause: BaseException | str):
        self.step = step
        self.cause = cause
        super().__init__(f"{step}: {cause}")


@dataclass(frozen=True)
class Installed:
    container_id: str
    pin_dir: str  # bpffs directory holding every pin of this container
    mode: str  # 'tcx' or 'clsact': what was really used
    ifindex: int
    host_ifname: str
    directions: tuple[int, ...]
    tcx_error: str | None = None  # why 'auto' fell back to clsact
    tcx_pending: bool = False  # on clsact now; the caller's `later` moves it to tcx
    interim: bool = False  # on the shared program now; the caller's `later` swaps its own copy in
    direction_modes: Mapping[str, str] = field(default_factory=dict)  # direction name -> shape|police
    shape_fallback: Mapping[str, str] = field(default_factory=dict)  # direction name -> why it polices
    configs: tuple[ConfigValues, ...] = ()  # what the kernel got (fallback and redirect applied)


@dataclass(frozen=True)
class Hook:
    """One direction's attachment as the kernel reports it."""

    direction: int
    attached: bool
    detail: str  # what was found, or what is wrong


@dataclass(frozen=True)
class Inspection:
    container_id: str
    pin_dir: str
    mode: str | None
    ifindex: int | None
    host_ifname: str | None
    hooks: dict[int, Hook]
    configs: dict[int, ConfigValues]  # read back from the pinned natra_config map
    meta: dict
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# ---- install ----------------------------------------------------------------------

def install(container_id: str, host_ifname: str, configs: Sequence[ConfigValues], *,
            directions: set[int], mode: str = "auto", flow_table: int = 4096,
            meta: dict | None = None, root: str | None = None,
            object_path: str | None = None, shaping: Mapping[int, Wish] | None = None) -> Installed:
    """Shape, load, pin and attach Natra for one container (replacing a previous install).

    `shaping` names the directions to shape (their configs in `configs` are the
    shaping ones); a direction whose tree cannot be built gets its Wish's
    policing config instead, and Installed.shape_fallback says why.
    """
    from natra.kernel import loader  # libbpf binding: only install needs it

    try:
        pd = pins.pin_dir(container_id, root)
    except pins.PinError as e:
        raise DatapathError("container id", e) from e
    wanted = tuple(sorted(directions))
    if not wanted or any(d not in L.DIRECTION_NAMES for d in wanted):
        raise DatapathError("directions", f"{sorted(directions)} must be a non-empty subset of "
                            f"{sorted(L.DIRECTION_NAMES)}")
    if mode not in attach.MODES:
        raise DatapathError("attach mode", f"unknown mode {mode!r} (one of {', '.join(attach.MODES)})")
    try:
        ifindex = socket.if_nametoindex(host_ifname)
    except OSError as e:
        raise DatapathError(f"find host interface {host_ifname}", e) from e
    if pd.exists():
        _remove_programs(pd, meta_record(pd))
    shaping = {d: w for d, w in (shaping or {}).items() if d in wanted}

    record = {**(meta or {}), "version": META_VERSION, "container_id": container_id,
              "host_ifname": host_ifname, "ifindex": ifindex, "mode": MODE_PENDING,
              "requested_mode": mode, "directions": list(wanted), "created_qdisc": False,
              "flow_table": flow_table}
    configs = list(configs)
    step = f"make pin directory {pd.path}"
    obj = None
    try:
        pins.make(pd)
        step = "write meta"
        _write_meta(pd, record)  # the host ifindex is known to cleanup before any tree exists
        step = "shaping"
        modes, devices, fallback = _shape(container_id, host_ifname, ifindex, shaping, configs,
                                          pins.resolve_root(root))
        record.update({"direction_modes": {L.DIRECTION_NAMES[d]: modes[d] for d in wanted},
                       "shaping": devices})
        if fallback:
            record["shape_fallback"] = {name: why[:REASON_MAX_CHARS] for name, why in fallback.items()}
        step = "take down trees no longer shaped"
        for direction in L.DIRECTION_NAMES:
            if L.DIRECTION_NAMES[direction] not in devices:
                shapers.take_down(container_id, direction, ifindex)
        step = "write meta"
        _write_meta(pd, record)
        step = "load object"
        if _object_source is not None:
            obj = _object_source(configs, flow_table=flow_table, path=object_path, ifindex=ifindex)
        else:
            obj = loader.BpfObject.load(configs, flow_table=flow_table, path=object_path)
        if getattr(obj, "interim", False):
            record["interim"] = {"prog_ids": {str(d): i for d, i in obj.prog_ids().items()},
                                 "slot": obj.slot, "object_path": obj.path}
        step = "pin maps"
        obj.pin_maps(pd.path)
        step = "pin programs"
        for direction in wanted:
            bpfsys.obj_pin(obj.prog_fd(direction), pd.prog(direction))
        for name in pd.entries():
            pins.secure(os.path.join(pd.path, name))
        pending = mode == attach.MODE_AUTO and _tcx_later is not None
        if pending:
            try:
                used, tcx_error = _attach_all(pd, obj, ifindex, wanted, attach.MODE_CLSACT, record)
            except attach.AttachError:
                # No clsact here (an `ingress` qdisc holds the hook): tcx in line, as without `later`.
                _detach(pd, record)
                record.update({"mode": MODE_PENDING, "created_qdisc": False})
                pending = False
        if not pending:
            used, tcx_error = _attach_all(pd, obj, ifindex, wanted, mode, record)
        record["tcx_error"] = tcx_error
        record["tcx_pending"] = pending
        step = "write meta"
        _write_meta(pd, record)
    except BaseException as e:
        _undo(container_id, root)
        if "interim" in record:
            _unbind(record)
        if isinstance(e, attach.AttachError):
            raise DatapathError(e.step, e.cause) from e
        if isinstance(e, Exception):
            raise DatapathError(step, e) from e
        raise
    finally:
        if obj is not None:
            obj.close()
    bound = "interim" in record
    if pending or bound:
        if _tcx_later is not None:
            _tcx_later(container_id, lambda: settle(container_id, root=root))
        else:
            settle(container_id, root=root)  # a source of bound Pods without a later: swap in line
            bound = pending = False
    return Installed(container_id=container_id, pin_dir=pd.path, mode=used, ifindex=ifindex,
                     host_ifname=host_ifname, directions=wanted, tcx_error=tcx_error, tcx_pending=pending,
                     interim=bound,
                     direction_modes=dict(record["direction_modes"]), shape_fallback=fallback,
                     configs=tuple(configs))


def _attach_all(pd: pins.PinDir, obj, ifindex: int, wanted: Sequence[int], mode: str,
                record: dict) -> tuple[str, str | None]:
    """Attach each direction's program in `mode`; (the mode used, why tcx was not)."""
    used, tcx_error = mode, None
    for direction in wanted:
        done = attach.attach(obj.prog_fd(direction), ifindex, direction, mode=used,
                             link_pin=pd.link(direction), name=L.PROG_NAMES[direction])
        used, tcx_error = done.mode, tcx_error or done.tcx_error
        record["created_qdisc"] = record["created_qdisc"] or done.created_qdisc
        record["mode"] = used  # known after the first hook; kept for cleanup
        _write_meta(pd, record)
    return used, tcx_error


def settle(container_id: str, *, root: str | None = None) -> str:
    """What a long-lived process does for a Pod once it has answered its ADD: put the Pod's
    own program in place of the shared interim one, then move it to tcx links. What it did,
    in words, for the log."""
    try:
        pd = pins.pin_dir(container_id, root)
    except pins.PinError as e:
        raise DatapathError("container id", e) from e
    record = meta_record(pd) if pd.exists() else {}
    words = []
    if record.get("interim"):
        words.append(own_program(pd, record))
    if record.get("tcx_pending"):
        words.append(move_to_tcx(container_id, root=root))
    return "; ".join(words) or "nothing to do (removed, re-made, or settled already)"


def own_program(pd: pins.PinDir, record: dict) -> str:
    """Swap the Pod's own verified program in where the shared interim one runs, bound to the
    same pinned maps; then take its slot name out of the shared program. Updates `record`.

    Order: load (the verifier, ~90-190 ms of CPU) -> per direction, the tcx link is
    updated or our clsact filter replaced (each atomic) -> the program pin replaced ->
    the slot name removed -> meta. Cut short, it is redone by the next call: a pin still
    holding the shared program's id means that direction is not done."""
    from natra.kernel import loader  # libbpf binding

    ifindex = record.get("ifindex")
    if not _same_interface(ifindex, record.get("host_ifname")):
        return f"nothing to swap: host interface {record.get('host_ifname')} is gone"
    shared_ids = {int(d): i for d, i in record["interim"].get("prog_ids", {}).items()}
    directions = record.get("directions", [])
    todo = [d for d in directions if attach.pinned_prog_id(pd.prog(d)) in (shared_ids.get(d), None)]
    if todo:
        configs = _read_configs(pd)
        fds: dict[str, int] = {}
        try:
            for name in L.MAP_NAMES:
                fds[name] = bpfsys.obj_get(pd.map(name))
            obj = loader.BpfObject.load([configs[d] for d in sorted(configs)],
                                        flow_table=record.get("flow_table", loader.DEFAULT_FLOW_TABLE),
                                        path=record["interim"].get("object_path"), reuse=fds)
        except (OSError, KeyError, loader.LoadError) as e:
            record["interim_error"] = str(e)[:REASON_MAX_CHARS]
            _write_meta(pd, record)
            return f"stays on the shared program: {e}"
        finally:
            for fd in fds.values():
                os.close(fd)
        try:
            for direction in todo:
                fd = obj.prog_fd(direction)
                if os.path.exists(pd.link(direction)):
                    link = bpfsys.obj_get(pd.link(direction))
                    try:
                        bpfsys.link_update(link, fd)
                    finally:
                        os.close(link)
                if _may_have_filters(record) and attach.our_clsact_filter(ifindex, direction) is not None:
                    attach.attach_clsact(fd, ifindex, direction, L.PROG_NAMES[direction])
                fresh = pd.prog(direction) + "_own"
                pins.unpin(fresh)
                bpfsys.obj_pin(fd, fresh)
                pins.secure(fresh)
                os.replace(fresh, pd.prog(direction))  # atomic: the pin always names a program
        except (OSError, attach.AttachError) as e:
            raise DatapathError("swap in the Pod's own program", e) from e
        finally:
            obj.close()
    _unbind(record)
    record.pop("interim", None)
    record.pop("interim_error", None)
    _write_meta(pd, record)
    return "own program in place of the shared one"


def _unbind(record: dict) -> None:
    """Take the Pod's slot name out of the shared program it was bound to (if any)."""
    bound = record.get("interim") or {}
    if bound.get("prog_ids") and record.get("ifindex"):
        try:
            interim.unbind(bound["prog_ids"].values(), record["ifindex"], bound.get("slot"))
        except OSError:
            pass  # the shared program's owner refills nothing while the name stays; harmless


def move_to_tcx(container_id: str, *, root: str | None = None) -> str:
    """Move a container that an `auto` install left on clsact ("tcx_pending") to tcx links.

    Order: every direction's link first (from then on the links run before the
    filters), the record says "tcx", then our filters and the clsact qdisc we made
    go, then "tcx_pending" is cleared. A move cut short anywhere is finished by the
    next one (attached links are kept). What it did, in words, for the log."""
    try:
        pd = pins.pin_dir(container_id, root)
    except pins.PinError as e:
        raise DatapathError("container id", e) from e
    record = meta_record(pd) if pd.exists() else {}
    if not record.get("tcx_pending"):
        return "nothing to move (removed, re-made, or moved already)"
    ifindex = record.get("ifindex")
    if not _same_interface(ifindex, record.get("host_ifname")):
        return f"nothing to move: host interface {record.get('host_ifname')} is gone"
    directions = record.get("directions", [])
    if record.get("mode") == attach.MODE_CLSACT:
        for direction in directions:
            if _tcx_hook(pd, direction, ifindex).attached:
                continue  # a move cut short attached this one
            try:
                fd = bpfsys.obj_get(pd.prog(direction))
            except OSError as e:
                raise DatapathError(f"open pinned program {pd.prog(direction)}", e) from e
            try:
                attach.attach_tcx(fd, ifindex, direction, pd.link(direction))
            except attach.AttachError as e:
                for d in directions:
                    try:
                        attach.detach_tcx(pd.link(d))
                    except attach.AttachError:
                        pass  # the filters still run; remove unpins what is left
                record.update({"tcx_pending": False, "tcx_error": str(e)[:REASON_MAX_CHARS]})
                _write_meta(pd, record)
                return f"stays on clsact: {e}"
            finally:
                os.close(fd)
        record["mode"] = attach.MODE_TCX
        _write_meta(pd, record)
    if record.get("mode") != attach.MODE_TCX:
        return f"nothing to move: mode {record.get('mode')!r}"
    _detach_filters(pd, record)
    record.update({"tcx_pending": False, "created_qdisc": False})
    _write_meta(pd, record)
    return "moved to tcx"


def pending_moves(*, root: str | None = None) -> list[str]:
    """Containers still to settle: a move to tcx or a swap from the shared program not
    finished (the process that was to do it died)."""
    found = []
    for container_id in list_installed(root=root):
        try:
            record = meta_record(pins.pin_dir(container_id, root))
            if record.get("tcx_pending") or (record.get("interim") and not record.get("interim_error")):
                found.append(container_id)
        except pins.PinError:
            continue
    return found


def _shape(container_id: str, host_ifname: str, ifindex: int, shaping: Mapping[int, Wish],
           configs: list[ConfigValues], pin_root: str) -> tuple[dict[int, str], dict, dict[str, str]]:
    """Bring up each shaped direction's tree, updating `configs` in place (redirect, fallback).

    Returns (mode per direction, the "shaping" record, {direction name: why it polices}).
    """
    modes = {d: MODE_POLICE for d in L.DIRECTION_NAMES}
    devices, fallback = {}, {}
    mtu = None
    for direction, wish in sorted(shaping.items()):
        name = L.DIRECTION_NAMES[direction]
        try:
            mtu = mtu or shapers.mtu(host_ifname)
            done = shapers.bring_up(container_id, direction, ifindex, mtu, wish.params,
                                    shapers.owner(pin_root))
        except shapers.ShapeError as e:
            fallback[name] = str(e)
            configs[direction] = wish.fallback
            continue  # its half-made tree goes with the take-down of unshaped directions
        modes[direction] = MODE_SHAPE
        devices[name] = done.record()
        if done.ifb is not None:
            configs[direction] = replace(configs[direction], redirect_ifindex=done.ifindex)
    return modes, devices, fallback


def _write_meta(pd: pins.PinDir, record: dict) -> None:
    meta.write(pd.meta, record)


def _undo(container_id: str, root: str | None) -> None:
    """Best-effort removal after a failed install; the install's error wins."""
    try:
        remove(container_id, root=root)
    except Exception:  # noqa: BLE001 - the caller raises the original failure
        pass


# ---- remove -------------------------------------------------------------------------

def _same_interface(ifindex: int | None, ifname: str | None) -> bool:
    """True if `ifindex` still exists and still carries the name it had at install."""
    if not ifindex:
        return False
    try:
        return socket.if_indextoname(ifindex) == ifname
    except OSError:
        return False


def meta_record(pd: pins.PinDir) -> dict:
    return meta.read(pd.meta) or {}


def _remove_programs(pd: pins.PinDir, record: dict) -> None:
    """Detach and unpin the programs of a previous install, leaving its trees for the new one."""
    _detach(pd, record)
    _unpin(pd)


def _detach(pd: pins.PinDir, record: dict) -> None:
    """Detach the programs (tcx links; our clsact filters while the veth exists; the slot
    name in the shared program)."""
    for direction in L.DIRECTION_NAMES:
        try:
            attach.detach_tcx(pd.link(direction))
        except attach.AttachError:
            pass  # unpinning below drops the last reference, which detaches it too
    _detach_filters(pd, record)
    _unbind(record)


def _may_have_filters(record: dict) -> bool:
    return record.get("mode") != attach.MODE_TCX or bool(record.get("tcx_pending"))


def _detach_filters(pd: pins.PinDir, record: dict) -> None:
    """Our clsact filters (and the qdisc we made), while the veth exists."""
    if _may_have_filters(record) and _same_interface(record.get("ifindex"), record.get("host_ifname")):
        present = [d for d in L.DIRECTION_NAMES if os.path.exists(pd.prog(d))]
        for i, direction in enumerate(present):
            try:
                attach.detach_clsact(record["ifindex"], direction,
                                     prog_id=attach.pinned_prog_id(pd.prog(direction)),
                                     delete_qdisc=bool(record.get("created_qdisc")) and i == len(present) - 1)
            except attach.AttachError as e:
                raise DatapathError(e.step, e.cause) from e


def _unpin(pd: pins.PinDir) -> None:
    try:
        pins.clear(pd)
    except OSError as e:
        raise DatapathError(f"unpin {pd.path}", e) from e


def _take_down_trees(container_id: str, record: dict) -> None:
    """Our trees: on the host veth while it is still the one we shaped, and the IFB by name."""
    same = _same_interface(record.get("ifindex"), record.get("host_ifname"))
    host = record.get("ifindex") if same else None
    for direction in L.DIRECTION_NAMES:
        try:
            shapers.take_down(container_id, direction, host)
        except shapers.ShapeError as e:
            raise DatapathError("remove shaping", e) from e


def remove(container_id: str, *, root: str | None = None, later=None) -> None:
    """Detach, take the trees down and unpin everything of this container; fine if it is already gone.

    Programs go first (so nothing redirects to an IFB being deleted), then the
    trees, then the pins: a failure before the unpin leaves the pins for GC to retry.

    `later(step)`, given by a long-lived process (the node agent), splits the
    removal: the pins go now, holding an fd of each tcx link, and `step` (run by
    the caller after it has answered) detaches those links and takes the trees
    and the IFB down. Detaching a tcx link and deleting a device each wait for an
    RCU grace period (~10 ms here), which a Pod's DEL need not wait for: once the
    pins are gone nothing of the container is left to find, and if the process
    dies before `step` runs, closing its fds detaches the links and GC deletes
    the IFB (an IFB of no pinned container is an orphan).
    """
    later = later or _deferred_teardown
    try:
        pd = pins.pin_dir(container_id, root)
    except pins.PinError as e:
        raise DatapathError("container id", e) from e
    if not pd.exists():
        if later is None:
            _take_down_trees(container_id, {})  # an IFB outliving its pins (only its name is known)
        else:
            later(lambda: _take_down_trees(container_id, {}))
        return
    record = meta_record(pd)
    if later is None:
        _detach(pd, record)
        _take_down_trees(container_id, record)
        _unpin(pd)
        return
    links = _hold_links(pd)
    try:
        if _may_have_filters(record):
            _detach_filters(pd, record)  # netlink, no grace period to wait for
        _unbind(record)  # a plain hash: no grace period either
        _unpin(pd)
    except BaseException:
        _release_links(links, detach=False)
        raise

    def finish() -> None:
        _release_links(links, detach=True)
        _take_down_trees(container_id, record)

    later(finish)


def _hold_links(pd: pins.PinDir) -> list[int]:
    fds = []
    for direction in L.DIRECTION_NAMES:
        try:
            fds.append(bpfsys.obj_get(pd.link(direction)))
        except OSError:
            pass  # not pinned (clsact, or one direction): nothing to hold
    return fds


def _release_links(fds: list[int], *, detach: bool) -> None:
    for fd in fds:
        try:
            if detach:
                bpfsys.link_detach(fd)
        except OSError:
            pass  # already detached, or its device is gone: closing releases it either way
        finally:
            os.close(fd)


def remove_orphan_ifbs(keep: Collection[str], *, root: str | None = None) -> tuple[list[str], list[str]]:
    """GC: delete this pin root's IFBs whose name derives from no container in `keep`.

    Returns (names removed, failures)."""
    removed, failed = [], []
    for name in shapers.orphan_ifbs(keep, shapers.owner(pins.resolve_root(root))):
        try:
            if shapers.delete_ifb(name):
                removed.append(name)
        except shapers.ShapeError as e:
            failed.append(str(e))
    return removed, failed


# ---- inspect ------------------------------------------------------------------------

def _read_configs(pd: pins.PinDir) -> dict[int, ConfigValues]:
    try:
        fd = bpfsys.obj_get(pd.map("natra_config"))
    except OSError:
        return {}
    try:
        return {direction: maps.read_config(fd, direction) for direction in L.DIRECTION_NAMES}
    except OSError:
        return {}
    finally:
        os.close(fd)


def _tcx_hook(pd: pins.PinDir, direction: int, ifindex: int | None) -> Hook:
    link = attach.tcx_link(pd.link(direction))
    want_prog = attach.pinned_prog_id(pd.prog(direction))
    if link is None:
        return Hook(direction, False, f"no tcx link pinned at {pd.link(direction)}")
    if link.ifindex == 0:
        return Hook(direction, False, f"tcx link {link.link_id} is defunct (its device is gone)")
    if link.ifindex != ifindex or link.attach_type != attach.TCX_ATTACH_TYPE[direction]:
        return Hook(direction, False, f"tcx link {link.link_id} is on ifindex {link.ifindex} "
                    f"type {link.attach_type}, expected ifindex {ifindex} "
                    f"type {attach.TCX_ATTACH_TYPE[direction]}")
    if want_prog is not None and link.prog_id != want_prog:
        return Hook(direction, False,
                    f"tcx link {link.link_id} runs prog {link.prog_id}, not ours ({want_prog})")
    return Hook(direction, True, f"tcx {attach.HOOK_NAME[direction]} link {link.link_id} prog {link.prog_id}")


def _clsact_hook(pd: pins.PinDir, direction: int, ifindex: int | None) -> Hook:
    want_prog = attach.pinned_prog_id(pd.prog(direction))
    found = attach.our_clsact_filter(ifindex, direction) if ifindex else None
    hook = attach.HOOK_NAME[direction]
    if found is None:
        return Hook(direction, False, f"no natra filter (prio {attach.CLSACT_PRIO}) on clsact {hook} "
                    f"of ifindex {ifindex}")
    if found.prog_id != want_prog:
        return Hook(direction, False,
                    f"clsact {hook} filter runs prog {found.prog_id}, not ours ({want_prog})")
    return Hook(direction, True, f"clsact {hook} filter prio {found.prio} prog {found.prog_id}")


def inspect(container_id: str, *, root: str | None = None) -> Inspection | None:
    """What is really installed for this container, or None if it has no pin directory."""
    try:
        pd = pins.pin_dir(container_id, root)
    except pins.PinError as e:
        raise DatapathError("container id", e) from e
    if not pd.exists():
        return None
    record = meta.read(pd.meta) or {}
    problems = [] if record else [f"no readable meta record at {pd.meta}"]
    mode, ifindex, ifname = record.get("mode"), record.get("ifindex"), record.get("host_ifname")
    if record and not _same_interface(ifindex, ifname):
        problems.append(f"host interface {ifname} (ifindex {ifindex}) is gone")
    hooks = {}
    for direction in record.get("directions", []):
        if mode == attach.MODE_TCX:
            hooks[direction] = _tcx_hook(pd, direction, ifindex)
        elif mode == attach.MODE_CLSACT:
            hooks[direction] = _clsact_hook(pd, direction, ifindex)
        else:
            hooks[direction] = Hook(direction, False, f"install did not finish (mode {mode!r})")
        if not hooks[direction].attached:
            problems.append(f"{L.DIRECTION_NAMES[direction]}: {hooks[direction].detail}")
    configs = _read_configs(pd)
    if not configs:
        problems.append(f"no readable natra_config map in {pd.path}")
    return Inspection(container_id=container_id, pin_dir=pd.path, mode=mode, ifindex=ifindex,
                      host_ifname=ifname, hooks=hooks, configs=configs, meta=record, problems=problems)


def shaping_drift(found: Inspection, shaped: Mapping[int, DataPathParams]) -> list[str]:
    """CHECK: how the trees of the directions that should shape (`shaped`) differ from their
    plans: a direction the record does not list as shaped, a missing IFB, qdisc drift."""
    problems = []
    devices = found.meta.get("shaping") or {}
    for direction, params in sorted(shaped.items()):
        name = L.DIRECTION_NAMES[direction]
        if name not in devices:
            problems.append(f"{name} should be shaped but the install did not shape it")
            continue
        try:
            problems += shapers.drift(found.container_id, direction, found.ifindex, found.host_ifname, params,
                                      devices.get(name))
        except shapers.ShapeError as e:
            problems.append(f"{name}: {e}")
    return problems


# ---- list and probe -------------------------------------------------------------------

def list_installed(*, root: str | None = None) -> list[str]:
    """Container IDs that have a pin directory (what GC compares with the valid list)."""
    return pins.list_containers(root)


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]


def _fs_type(path: str) -> int | None:
    buf = _StatFs()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return None
    return buf.f_type & 0xFFFFFFFF


NSFS_MAGIC = 0x6E736673


def is_netns(path: str) -> bool:
    """`path` is a namespace file here (a bind mount of nsfs, or /proc/<pid>/ns/net): what
    setns(2) can enter. An empty file where another mount namespace has the mount is not."""
    return _fs_type(path) == NSFS_MAGIC


def probe(*, root: str | None = None) -> list[str]:
    """Problems that make an install impossible here; [] means ready. A few ms."""
    problems = []
    base = pins.resolve_root(root)
    existing = base
    while not os.path.exists(existing):
        existing = os.path.dirname(existing) or "/"
    if _fs_type(existing) != BPF_FS_MAGIC:
        problems.append(f"bpffs is not mounted at {existing} (needed for {base}): "
                        f"mount -t bpf bpf {existing}")
    try:
        from natra.kernel import loader

        loader.object_path()
    except FileNotFoundError as e:
        problems.append(f"BPF object missing: {e}")
    except Exception as e:  # noqa: BLE001 - any import failure makes ADD impossible
        problems.append(f"loader unavailable: {e}")
    try:
        ctypes.CDLL(LIBBPF_SONAME)
    except OSError as e:
        problems.append(f"{LIBBPF_SONAME} missing (apt-get install libbpf1): {e}")
    return problems

