"""The clsact qdisc and cls_bpf filters on it, over rtnetlink.

Owns: adding, finding and deleting a device's clsact qdisc (`tc qdisc add dev X
clsact`), putting a direct-action bpf filter on one of its two hooks by program
fd (`tc filter replace ... bpf da fd N`), listing the bpf filters of a hook with
their priority, handle, program id and name, and deleting one filter.

Rule: no pyroute2 (its import and its message decoding cost more than the
kernel's work: ~200 ms to import, ~20 ms to decode a dump of every qdisc in
the namespace); requests and their framing (tcmsg, attributes) are
natra.kernel.qdisc's, one rtnetlink socket per thread, and fail as QdiscError
naming the step, the ifindex and the errno.
Must not know: which filter is Natra's (priority and handle are arguments),
CNI, how programs are loaded.
"""

from __future__ import annotations

import errno as errno_mod
import socket
import struct
from dataclasses import dataclass

from natra.kernel import qdisc as tc
from natra.kernel.netlink import attr as _attr
from natra.kernel.netlink import parse_attrs

RTM_NEWTFILTER = 44
RTM_DELTFILTER = 45
RTM_GETTFILTER = 46

TC_H_CLSACT = 0xFFFFFFF1  # parent of the clsact qdisc (== TC_H_INGRESS)
CLSACT_HANDLE = 0xFFFF0000  # ffff:
HOOK_INGRESS = 0xFFFFFFF2  # ffff:fff2, frames the device receives
HOOK_EGRESS = 0xFFFFFFF3  # ffff:fff3, frames the device sends

# cls_bpf attributes (linux/pkt_cls.h) and its direct-action flag.
TCA_BPF_CLASSID = 3
TCA_BPF_FD = 6
TCA_BPF_NAME = 7
TCA_BPF_FLAGS = 8
TCA_BPF_ID = 11
TCA_BPF_FLAG_ACT_DIRECT = 1


@dataclass(frozen=True)
class BpfFilter:
    """A bpf filter found on a clsact hook."""

    prio: int
    handle: int
    prog_id: int
    name: str


def _info(prio: int, protocol: int) -> int:
    """tcm_info of a filter: priority in the upper half, protocol in network order below."""
    return (prio << 16) | socket.htons(protocol)


def _filter_msg(ifindex: int, hook: int, prio: int, protocol: int, handle: int) -> bytes:
    return tc.tcmsg(ifindex, handle, hook, _info(prio, protocol))


def qdisc_kind_at_ingress(ifindex: int) -> str | None:
    """Kind of the qdisc holding ffff: ("clsact", "ingress"), or None when there is none."""
    body = tc.tcmsg(ifindex, 0, TC_H_CLSACT)
    try:
        answers = tc.talk(tc.RTM_GETQDISC, tc.NLM_F_ACK | tc.NLM_F_ECHO, body, "RTM_GETQDISC ffff:", ifindex)
    except tc.QdiscError as exc:
        if exc.errno in (errno_mod.ENOENT, errno_mod.EINVAL):
            return None
        raise
    for message in answers:
        return tc.tc_kind(tc.tc_message(message)[1]) or None
    return None


def add_qdisc(ifindex: int) -> bool:
    """Add a clsact qdisc; True if this call made it, False if one was there.

    QdiscError EEXIST when ffff: is held by another kind (an `ingress` qdisc,
    such as the standard bandwidth plugin's): filters for both hooks would then
    land in its one block.
    """
    step = "RTM_NEWQDISC clsact"
    body = tc.tcmsg(ifindex, CLSACT_HANDLE, TC_H_CLSACT) + _attr(tc.TCA_KIND, tc.cstring("clsact"))
    try:
        tc.modify(tc.RTM_NEWQDISC, tc.NLM_F_CREATE | tc.NLM_F_EXCL, body, step, ifindex)
        return True
    except tc.QdiscError as exc:
        if exc.errno != errno_mod.EEXIST:
            raise
        kind = qdisc_kind_at_ingress(ifindex)
        if kind == "clsact":
            return False
        raise tc.QdiscError(errno_mod.EEXIST, step, ifindex,
                            f"an {kind or 'unknown'} qdisc holds ffff:, clsact unavailable") from None


def delete_qdisc(ifindex: int) -> bool:
    """Delete the clsact qdisc and every filter on it; False when there was none."""
    if qdisc_kind_at_ingress(ifindex) != "clsact":
        return False
    body = tc.tcmsg(ifindex, CLSACT_HANDLE, TC_H_CLSACT)
    try:
        tc.modify(tc.RTM_DELQDISC, 0, body, "RTM_DELQDISC clsact", ifindex)
    except tc.QdiscError as exc:
        if exc.errno in (errno_mod.ENOENT, errno_mod.EINVAL):
            return False
        raise
    return True


def replace_bpf_filter(ifindex: int, hook: int, prio: int, protocol: int, handle: int, prog_fd: int,
                       name: str) -> None:
    """Create, or replace at (prio, protocol, handle), a direct-action bpf filter running `prog_fd`."""
    step = f"RTM_NEWTFILTER bpf prio {prio} on {tc.handle_str(hook)}"
    options = (_attr(TCA_BPF_FD, tc.u32(prog_fd)) + _attr(TCA_BPF_NAME, tc.cstring(name))
               + _attr(TCA_BPF_FLAGS, tc.u32(TCA_BPF_FLAG_ACT_DIRECT)) + _attr(TCA_BPF_CLASSID, tc.u32(1)))
    body = (_filter_msg(ifindex, hook, prio, protocol, handle) + _attr(tc.TCA_KIND, tc.cstring("bpf"))
            + _attr(tc.TCA_OPTIONS | tc.NLA_F_NESTED, options))
    tc.modify(RTM_NEWTFILTER, tc.NLM_F_CREATE | tc.NLM_F_REPLACE, body, step, ifindex)


def delete_bpf_filter(ifindex: int, hook: int, prio: int, protocol: int, handle: int) -> bool:
    """Delete the bpf filter at (prio, protocol, handle); False when it was not there."""
    step = f"RTM_DELTFILTER bpf prio {prio} on {tc.handle_str(hook)}"
    body = _filter_msg(ifindex, hook, prio, protocol, handle) + _attr(tc.TCA_KIND, tc.cstring("bpf"))
    try:
        tc.modify(RTM_DELTFILTER, 0, body, step, ifindex)
    except tc.QdiscError as exc:
        if exc.errno in (errno_mod.ENOENT, errno_mod.EINVAL):
            return False
        raise
    return True


def parse_filter(message: bytes) -> tuple[str, BpfFilter | None]:
    """(kind, the bpf filter) of one RTM_NEWTFILTER message; a chain's header (no
    options) and filters of other kinds give None."""
    (_, handle, _, info), attrs = tc.tc_message(message)
    kind = tc.tc_kind(attrs)
    options = attrs.get(tc.TCA_OPTIONS)
    if kind != "bpf" or options is None:
        return kind, None
    opts = parse_attrs(options)
    prog_id = struct.unpack_from("=I", opts[TCA_BPF_ID])[0] if len(opts.get(TCA_BPF_ID, b"")) >= 4 else 0
    name = opts.get(TCA_BPF_NAME, b"").split(b"\0", 1)[0].decode(errors="replace")
    return kind, BpfFilter(prio=info >> 16, handle=handle, prog_id=prog_id, name=name)


def dump_filters(ifindex: int, hook: int) -> list[tuple[str, BpfFilter | None]]:
    """(kind, bpf filter or None) of every filter message on `hook`; [] when the
    device has no clsact qdisc (or no longer exists)."""
    body = tc.tcmsg(ifindex, 0, hook)
    try:
        answers = tc.talk(RTM_GETTFILTER, tc.NLM_F_DUMP, body, f"RTM_GETTFILTER dump {tc.handle_str(hook)}",
                          ifindex)
    except tc.QdiscError as exc:
        if exc.errno in (errno_mod.ENOENT, errno_mod.EINVAL, errno_mod.ENODEV):
            return []
        raise
    return [parse_filter(m) for m in answers
            if tc.TCMSG.unpack_from(m, tc.NLMSG_HEADER.size)[1] == ifindex]


def bpf_filters(ifindex: int, hook: int) -> list[BpfFilter]:
    """The bpf filters on `hook`."""
    return [f for _, f in dump_filters(ifindex, hook) if f is not None]


def any_filter(ifindex: int) -> bool:
    """True if a filter of any kind sits on either hook."""
    return any(kind for hook in (HOOK_INGRESS, HOOK_EGRESS) for kind, _ in dump_filters(ifindex, hook))
