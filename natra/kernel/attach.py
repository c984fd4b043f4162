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

Must not know: maps, configs, pin directory names (callers pass paths), numpy.
pyroute2 is imported only inside the clsact functions: a tcx ADD never pays
its ~200 ms import. Raw bpf(2) calls go through natra/kernel/bpfsys.py (BPF_PROG_QUERY
through `bpfsys.prog_query`).
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

from natra.kernel import bpfsys
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

CLSACT_PARENT = {L.DIR_TO_POD: 0xFFFFFFF3, L.DIR_FROM_POD: 0xFFFFFFF2}
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


# ---- clsact (pyroute2, imported here only) -----------------------------------

def _iproute():
    from pyroute2 import IPRoute  # heavy: only the clsact path pays for it

    return IPRoute(flags=0)


@dataclass(frozen=True)
class ClsactFilter:
    """A bpf filter found on a clsact hook."""

    prio: int
    handle: int
    prog_id: int
    name: str


TCA_BPF_ID = 11  # u32 program id inside TCA_OPTIONS; pyroute2 does not decode it
_NLA_HEADER = struct.Struct("=HH")
_NLA_TYPE_MASK = 0x3FFF  # drops the nested / byte-order flag bits


def _bpf_filter_prog_id(opts) -> int:
    """Program id of a bpf filter, read from the raw TCA_OPTIONS attribute."""
    data, start = opts.data, opts.offset
    end = start + _NLA_HEADER.unpack_from(data, start)[0]
    pos = start + _NLA_HEADER.size
    while pos + _NLA_HEADER.size <= end:
        length, kind = _NLA_HEADER.unpack_from(data, pos)
        if length < _NLA_HEADER.size:
            break
        if kind & _NLA_TYPE_MASK == TCA_BPF_ID and length >= _NLA_HEADER.size + 4:
            return struct.unpack_from("=I", data, pos + _NLA_HEADER.size)[0]
        pos += (length + 3) & ~3
    return 0


def _filters(ipr, ifindex: int, direction: int) -> list[ClsactFilter]:
    found = []
    for msg in ipr.get_filters(index=ifindex, parent=CLSACT_PARENT[direction]):
        if msg.get_attr("TCA_KIND") != "bpf":
            continue
        opts = msg.get_attr("TCA_OPTIONS")
        if opts is None:
            continue
        found.append(ClsactFilter(prio=msg["info"] >> 16, handle=msg["handle"],
                                  prog_id=_bpf_filter_prog_id(opts),
                                  name=opts.get_attr("TCA_BPF_NAME") or ""))
    return found


def clsact_filters(ifindex: int, direction: int) -> list[ClsactFilter]:
    """Every bpf filter on the hook (ours has prio CLSACT_PRIO, handle CLSACT_HANDLE)."""
    with _iproute() as ipr:
        try:
            return _filters(ipr, ifindex, direction)
        except Exception:  # no clsact qdisc or no device: nothing is attached
            return []


def our_clsact_filter(ifindex: int, direction: int) -> ClsactFilter | None:
    for f in clsact_filters(ifindex, direction):
        if f.prio == CLSACT_PRIO and f.handle == CLSACT_HANDLE:
            return f
    return None


def _has_clsact(ipr, ifindex: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=ifindex))


def attach_clsact(prog_fd: int, ifindex: int, direction: int, name: str) -> bool:
    """Put our filter on the hook (replacing ours if there); True if we created the qdisc."""
    hook = HOOK_NAME[direction]
    step = f"attach clsact {hook} to ifindex {ifindex}"
    try:
        ipr = _iproute()
    except Exception as e:
        raise AttachError(f"{step}: open netlink", e) from e
    with ipr:
        try:
            created = not _has_clsact(ipr, ifindex)
            if created:
                ipr.tc("add", "clsact", ifindex)
        except Exception as e:
            if getattr(e, "code", None) != errno.EEXIST:
                raise AttachError(f"{step}: add clsact qdisc", e) from e
            created = False
            # EEXIST: another agent made clsact meanwhile (fine), or an `ingress`
            # qdisc holds ffff: (the standard bandwidth plugin's); then both our
            # filters would land in its one block, and egress would not be limited.
            if not _has_clsact(ipr, ifindex):
                raise AttachError(f"{step}: an ingress qdisc holds ffff:, clsact unavailable", e) from e
        try:
            ipr.tc("replace-filter", "bpf", ifindex, CLSACT_HANDLE, fd=prog_fd, name=name,
                   parent=CLSACT_PARENT[direction], prio=CLSACT_PRIO, protocol=ETH_P_ALL,
                   classid=1, direct_action=True)
        except Exception as e:
            if created:
                _delete_qdisc_if_empty(ipr, ifindex)
            raise AttachError(f"{step}: replace filter", e) from e
    return created


def _any_filter(ipr, ifindex: int) -> bool:
    """True if any filter of any kind sits on either clsact hook."""
    return any(msg.get_attr("TCA_KIND") for parent in CLSACT_PARENT.values()
               for msg in ipr.get_filters(index=ifindex, parent=parent))


def _delete_qdisc_if_empty(ipr, ifindex: int) -> bool:
    try:
        if _any_filter(ipr, ifindex):
            return False
        ipr.tc("del", "clsact", ifindex)
    except Exception:
        return False
    return True


def detach_clsact(ifindex: int, direction: int, *, prog_id: int | None = None,
                  delete_qdisc: bool = False) -> bool:
    """Delete our filter from the hook; True if it was there.

    With `prog_id`, a filter at our prio/handle running another program is
    left alone (someone replaced it). With `delete_qdisc`, the clsact qdisc is
    removed if no filter at all is left on either hook.
    """
    step = f"detach clsact {HOOK_NAME[direction]} from ifindex {ifindex}"
    with _iproute() as ipr:
        try:
            ours = [f for f in _filters(ipr, ifindex, direction)
                    if f.prio == CLSACT_PRIO and f.handle == CLSACT_HANDLE]
        except Exception:
            ours = []  # no qdisc, no device: nothing of ours is there
        removed = False
        if ours and (prog_id is None or ours[0].prog_id == prog_id):
            try:
                ipr.tc("del-filter", "bpf", ifindex, CLSACT_HANDLE, parent=CLSACT_PARENT[direction],
                       prio=CLSACT_PRIO, protocol=ETH_P_ALL)
            except Exception as e:
                raise AttachError(step, e) from e
            removed = True
        if delete_qdisc:
            _delete_qdisc_if_empty(ipr, ifindex)
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
