"""Putting a loaded program on a host veth, and taking it off: tcx and clsact.

Owns: one function per attach mode and direction-shaped hooks:
    DIR_TO_POD   -> host-veth egress   (tcx egress,  clsact parent ffff:fff3)
    DIR_FROM_POD -> host-veth ingress  (tcx ingress, clsact parent ffff:fff2)
and reading back what is really attached (for CHECK and `natra status`).

Rules kept:
- tcx: a link made with BPF_LINK_CREATE is pinned at once (a closed, unpinned
  link is a broken link). Replacing detaches the old link (BPF_LINK_DETACH)
  before unpinning it, so an immediate re-attach cannot meet EEXIST; other
  programs on the same tcx hook are never touched.
- clsact: our filter has a fixed priority and handle (CLSACT_PRIO, CLSACT_HANDLE)
  and protocol ETH_P_ALL, so `replace` never duplicates and delete finds it.
  Removing deletes only our filter, and deletes the clsact qdisc only when we
  created it and no filter is left on it: other agents' filters keep running.
- `auto` probes tcx by trying it, and falls back to clsact.
- Errors say which step failed and keep the cause: AttachError.

Must not know: maps, configs, pin directory names (callers pass paths), numpy,
pyroute2. Raw bpf(2) calls go through natra/kernel/bpfsys.py (BPF_PROG_QUERY
through `bpfsys.prog_query`), rtnetlink through natra/kernel/clsact.py.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from natra.kernel import bpfsys, clsact
from natra.kernel import layout as L

MODE_AUTO = "auto"
MODE_TCX = "tcx"
MODE_CLSACT = "clsact"
MODES = (MODE_AUTO, MODE_TCX, MODE_CLSACT)

BPF_TCX_INGRESS = bpfsys.BPF_TCX_INGRESS  # 46
BPF_TCX_EGRESS = bpfsys.BPF_TCX_EGRESS  # 47
BPF_LINK_TYPE_TCX = 11
TCX_ATTACH_TYPE = {L.DIR_TO_POD: BPF_TCX_EGRESS, L.DIR_FROM_POD: BPF_TCX_INGRESS}
HOOK_NAME = {L.DIR_TO_POD: "egress", L.DIR_FROM_POD: "ingress"}

CLSACT_PARENT = {L.DIR_TO_POD: clsact.HOOK_EGRESS, L.DIR_FROM_POD: clsact.HOOK_INGRESS}
# A priority of our own ("NT" in ASCII): far from 1, the one other CNIs
# usually take, so our replace never hits their filter and theirs never ours.
CLSACT_PRIO = 0x4E54
CLSACT_HANDLE = 1
ETH_P_ALL = 0x0003
PIN_MODE = 0o600

# Errors from BPF_LINK_CREATE that mean "this kernel has no tcx": fall back.
_NO_TCX_ERRNOS = frozenset({errno.EINVAL, errno.EOPNOTSUPP, 524})  # 524: ENOTSUPP


class AttachError(Exception):
    """One attach step failed: `step` says which, `cause` is the original error."""

    def __init__(self, step: str, cause: BaseException | str):
        self.step = step
        self.cause = cause
        super().__init__(f"{step}: {cause}")


def prog_id(prog_fd: int) -> int:
    """Kernel ID of a program (struct bpf_prog_info.id)."""
    return bpfsys.prog_info(prog_fd)["id"]


def pinned_prog_id(path: str) -> int | None:
    try:
        fd = bpfsys.obj_get(path)
    except OSError:
        return None
    try:
        return prog_id(fd)
    finally:
        os.close(fd)


_QUERY_MAX_PROGS = 64  # programs one tcx hook is read back with; far above real use


def tcx_prog_ids(ifindex: int, direction: int) -> list[int]:
    """IDs of every program on the tcx hook, in run order (BPF_PROG_QUERY)."""
    return bpfsys.prog_query(ifindex, TCX_ATTACH_TYPE[direction], _QUERY_MAX_PROGS)["prog_ids"]


# ---- tcx ---------------------------------------------------------------------

@dataclass(frozen=True)
class TcxLink:
    """What a pinned tcx link says about itself (struct bpf_link_info)."""

    link_id: int
    prog_id: int
    ifindex: int  # 0 once the device is gone (the link is then defunct)
    attach_type: int


def tcx_link(link_pin: str) -> TcxLink | None:
    """The pinned link's info, or None if there is no such pin or it is no tcx link."""
    try:
        fd = bpfsys.obj_get(link_pin)
    except OSError:
        return None
    try:
        info = bpfsys.link_info(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if info["type"] != BPF_LINK_TYPE_TCX:
        return None
    return TcxLink(link_id=info["id"], prog_id=info["prog_id"], ifindex=info["ifindex"],
                   attach_type=info["attach_type"])


def attach_tcx(prog_fd: int, ifindex: int, direction: int, link_pin: str) -> None:
    """Attach as a tcx link and pin it at `link_pin` (replacing a link pinned there)."""
    hook = HOOK_NAME[direction]
    if os.path.exists(link_pin):
        detach_tcx(link_pin)
    try:
        fd = bpfsys.link_create(prog_fd, ifindex, TCX_ATTACH_TYPE[direction])
    except OSError as e:
        raise AttachError(f"attach tcx {hook} to ifindex {ifindex}", e) from e
    try:
        bpfsys.obj_pin(fd, link_pin)
        os.chmod(link_pin, PIN_MODE)
    except OSError as e:
        # Closing the only fd of an unpinned link detaches it: nothing is left.
        raise AttachError(f"pin tcx {hook} link at {link_pin}", e) from e
    finally:
        os.close(fd)


def detach_tcx(link_pin: str) -> bool:
    """Detach the pinned link and unpin it; False if there was no pin."""
    try:
        fd = bpfsys.obj_get(link_pin)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise AttachError(f"open tcx link {link_pin}", e) from e
    try:
        bpfsys.link_detach(fd)
    except OSError as e:
        # A link whose device vanished is already detached (defunct).
        if e.errno not in (errno.ENOLINK, errno.EINVAL, errno.ENOENT, errno.ENODEV):
            raise AttachError(f"detach tcx link {link_pin}", e) from e
    finally:
        os.close(fd)
    try:
        os.unlink(link_pin)
    except FileNotFoundError:
        pass
    return True


# ---- clsact (rtnetlink through natra.kernel.clsact) ---------------------------

ClsactFilter = clsact.BpfFilter


def clsact_filters(ifindex: int, direction: int) -> list[ClsactFilter]:
    """Every bpf filter on the hook (ours has prio CLSACT_PRIO, handle CLSACT_HANDLE)."""
    try:
        return clsact.bpf_filters(ifindex, CLSACT_PARENT[direction])
    except clsact.tc.QdiscError:  # no device: nothing is attached
        return []


def our_clsact_filter(ifindex: int, direction: int) -> ClsactFilter | None:
    for f in clsact_filters(ifindex, direction):
        if f.prio == CLSACT_PRIO and f.handle == CLSACT_HANDLE:
            return f
    return None


def attach_clsact(prog_fd: int, ifindex: int, direction: int, name: str) -> bool:
    """Put our filter on the hook (replacing ours if there); True if we created the qdisc."""
    step = f"attach clsact {HOOK_NAME[direction]} to ifindex {ifindex}"
    try:
        created = clsact.add_qdisc(ifindex)
    except clsact.tc.QdiscError as e:
        # EEXIST here: an `ingress` qdisc holds ffff: (the standard bandwidth plugin's);
        # both our filters would land in its one block, and egress would not be limited.
        raise AttachError(f"{step}: add clsact qdisc", e) from e
    try:
        clsact.replace_bpf_filter(ifindex, CLSACT_PARENT[direction], CLSACT_PRIO, ETH_P_ALL, CLSACT_HANDLE,
                                  prog_fd, name)
    except clsact.tc.QdiscError as e:
        if created:
            _delete_qdisc_if_empty(ifindex)
        raise AttachError(f"{step}: replace filter", e) from e
    return created


def _delete_qdisc_if_empty(ifindex: int) -> bool:
    try:
        if clsact.any_filter(ifindex):
            return False
        return clsact.delete_qdisc(ifindex)
    except clsact.tc.QdiscError:
        return False


def detach_clsact(ifindex: int, direction: int, *, prog_id: int | None = None,
                  delete_qdisc: bool = False) -> bool:
    """Delete our filter from the hook; True if it was there.

    With `prog_id`, a filter at our prio/handle running another program is
    left alone (someone replaced it). With `delete_qdisc`, the clsact qdisc is
    removed if no filter at all is left on either hook.
    """
    step = f"detach clsact {HOOK_NAME[direction]} from ifindex {ifindex}"
    ours = [f for f in clsact_filters(ifindex, direction)
            if f.prio == CLSACT_PRIO and f.handle == CLSACT_HANDLE]
    removed = False
    if ours and (prog_id is None or ours[0].prog_id == prog_id):
        try:
            removed = clsact.delete_bpf_filter(ifindex, CLSACT_PARENT[direction], CLSACT_PRIO, ETH_P_ALL,
                                               CLSACT_HANDLE)
        except clsact.tc.QdiscError as e:
            raise AttachError(step, e) from e
    if delete_qdisc:
        _delete_qdisc_if_empty(ifindex)
    return removed


# ---- mode choice ---------------------------------------------------------------

@dataclass(frozen=True)
class Attached:
    """Result of one attach: the mode used and whether a clsact qdisc was made."""

    mode: str
    created_qdisc: bool = False
    tcx_error: str | None = None  # why auto fell back to clsact


def attach(prog_fd: int, ifindex: int, direction: int, *, mode: str, link_pin: str,
           name: str) -> Attached:
    """Attach in `mode` ('tcx', 'clsact' or 'auto': tcx if the kernel takes it)."""
    if mode not in MODES:
        raise AttachError("choose attach mode", f"unknown mode {mode!r} (expected one of {MODES})")
    if mode == MODE_CLSACT:
        return Attached(MODE_CLSACT, attach_clsact(prog_fd, ifindex, direction, name))
    try:
        attach_tcx(prog_fd, ifindex, direction, link_pin)
        return Attached(MODE_TCX)
    except AttachError as e:
        no_tcx = isinstance(e.cause, OSError) and e.cause.errno in _NO_TCX_ERRNOS
        if mode == MODE_TCX or not no_tcx or not e.step.startswith("attach tcx"):
            raise
        return Attached(MODE_CLSACT, attach_clsact(prog_fd, ifindex, direction, name), tcx_error=str(e))
