"""Just enough rtnetlink to ask a Pod's namespace who its interface's peer is.

Owns: one RTM_GETLINK request by name over a raw AF_NETLINK socket, parsing
IFLA_LINK (the peer's ifindex, for a veth) from the answer, and running that
request inside another network namespace by entering it with setns(2) in a
short-lived thread (setns changes only the calling thread, so the process and
its other threads stay where they are).
Rule: no pyroute2 (it costs 150-200 ms per CNI call); every failure is a
NetlinkError that says which step failed and keeps the errno.
Must not know: CNI, BPF, which interface is the host side.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import socket
import struct
import threading
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_GETLINK = 18
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
IFLA_IFNAME = 3
IFLA_LINK = 5
IFLA_LINK_NETNSID = 37
CLONE_NEWNET = 0x40000000
NLMSG_HEADER = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
RTATTR = struct.Struct("=HH")  # len, type
NLA_TYPE_MASK = 0x3FFF  # an attribute's type without the nested / byte-order flags
RECV_BYTES = 65536  # one link message with all attributes fits easily
REPLY_TIMEOUT_S = 2.0  # the kernel answers in microseconds; this only bounds a hang


class NetlinkError(OSError):
    """A netlink step failed; the message names it."""


@dataclass(frozen=True)
class Link:
    ifindex: int
    ifname: str
    peer_ifindex: int | None  # IFLA_LINK: the peer of a veth, in the peer's namespace
    peer_netnsid: int | None  # IFLA_LINK_NETNSID when the peer is in another namespace


def align(n: int) -> int:
    """A netlink length rounded up to the 4-byte boundary messages and attributes keep."""
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One rtattr: length, type, payload, padded to the boundary."""
    raw = RTATTR.pack(RTATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (align(len(raw)) - len(raw))


def _request(ifname: str, seq: int) -> bytes:
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, ifname.encode() + b"\0")
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + body


def parse_attrs(data: bytes) -> dict[int, bytes]:
    attrs, pos = {}, 0
    while pos + RTATTR.size <= len(data):
        length, kind = RTATTR.unpack_from(data, pos)
        if length < RTATTR.size:
            break
        attrs.setdefault(kind & NLA_TYPE_MASK, data[pos + RTATTR.size:pos + length])
        pos += align(length)
    return attrs


def parse_link(message: bytes) -> Link:
    """A Link from one RTM_NEWLINK message (header included)."""
    offset = NLMSG_HEADER.size
    _, _, index, _, _ = IFINFOMSG.unpack_from(message, offset)
    attrs = parse_attrs(message[offset + IFINFOMSG.size:])
    name = attrs.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode()
    peer = struct.unpack("=I", attrs[IFLA_LINK][:4])[0] if IFLA_LINK in attrs else None
    nsid = struct.unpack("=i", attrs[IFLA_LINK_NETNSID][:4])[0] if IFLA_LINK_NETNSID in attrs else None
    return Link(index, name, peer, nsid)


def get_link(ifname: str) -> Link:
    """The link named `ifname` in the calling thread's network namespace."""
    seq = 1
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as sock:
        sock.settimeout(REPLY_TIMEOUT_S)
        sock.bind((0, 0))
        sock.send(_request(ifname, seq))
        data = sock.recv(RECV_BYTES)
    pos = 0
    while pos + NLMSG_HEADER.size <= len(data):
        length, kind, _, got_seq, _ = NLMSG_HEADER.unpack_from(data, pos)
        message = data[pos:pos + length]
        if got_seq == seq and kind == NLMSG_ERROR:
            errno = -struct.unpack_from("=i", message, NLMSG_HEADER.size)[0]
            if errno:
                raise NetlinkError(errno, f"RTM_GETLINK {ifname}: {os.strerror(errno)}")
        elif got_seq == seq and kind == RTM_NEWLINK:
            return parse_link(message)
        if length < NLMSG_HEADER.size:
            break
        pos += align(length)
    raise NetlinkError(f"RTM_GETLINK {ifname}: no link in the kernel's answer")


NETNS_TIMEOUT_S = 5.0  # entering a netns and one netlink round trip take milliseconds


def in_netns(netns_path: str, fn, *args):
    """fn(*args) run in the network namespace at `netns_path`, from a throwaway thread."""
    outcome: dict = {}

    def worker() -> None:
        try:
            # O_NONBLOCK: a FIFO named as CNI_NETNS must not hang the plugin.
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            outcome["error"] = NetlinkError(exc.errno, f"open netns {netns_path}: {exc.strerror}")
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                outcome["error"] = NetlinkError(errno, f"setns {netns_path}: {os.strerror(errno)}")
                return
            outcome["value"] = fn(*args)
        except Exception as exc:  # noqa: BLE001 - handed to the calling thread
            outcome["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=worker, name="natra-netns", daemon=True)
    thread.start()
    thread.join(NETNS_TIMEOUT_S)
    if thread.is_alive():
        raise NetlinkError(errno_mod.ETIMEDOUT, f"netns {netns_path}: no answer in {NETNS_TIMEOUT_S} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def peer_ifindex(netns_path: str, ifname: str) -> int:
    """ifindex (in its own namespace) of the veth peer of `ifname` inside `netns_path`."""
    link = in_netns(netns_path, get_link, ifname)
    if link.peer_ifindex is None or link.peer_ifindex == link.ifindex:
        raise NetlinkError(f"{ifname} in {netns_path} has no peer (not a veth?)")
    return link.peer_ifindex
