"""The shaping devices of one container: its trees on the host veth and on its IFB.

Owns, per direction of one container: bringing the tree of natra.kernel.shaping
up where it belongs (into the Pod: the root of the host veth; out of the Pod:
the container's IFB, made or reused by its derived name), taking it down,
reading it back against the plan (CHECK), and finding the IFBs no container
owns any more (GC). The MTU the trees are planned for is the host veth's.
An IFB carries the alias `natra:<pin root>`, so a GC of one pin root never
deletes the IFB of another (a second network, or a test lab, on the same node).

Rule: it touches only trees of ours (shaping.remove refuses a foreign root) and
IFB devices whose name derives from a container ID; every failure is a
ShapeError that says which direction and step.
Must not know: CNI, pins, meta, the program.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from natra.kernel import layout as L
from natra.kernel import qdisc, shaping
from natra.kernel.params import ConfigValues, DataPathParams
from natra.kernel.shaping import ShapeError

ALIAS_PREFIX = "natra:"
SYS_NET = "/sys/class/net"
GONE = (errno.ENODEV, errno.ENXIO, errno.ENOENT)  # the device vanished under us


@dataclass(frozen=True)
class Wish:
    """A direction the plan shapes: its parameters, and the policing config it falls back to."""

    params: DataPathParams  # mode shape
    fallback: ConfigValues  # the policing config when the tree cannot be built


@dataclass(frozen=True)
class Shaped:
    """Where one direction's tree stands."""

    direction: int
    ifindex: int  # the device carrying the tree
    ifb: str | None = None  # out of the Pod: the IFB's name

    def record(self) -> dict:
        """The meta record's entry: {"ifindex": n} into the Pod, {"ifb": name, "ifindex": n} out."""
        return {"ifindex": self.ifindex} if self.ifb is None else {"ifb": self.ifb, "ifindex": self.ifindex}


def owner(pin_root: str) -> str:
    """The alias of the IFBs a pin root owns."""
    return (ALIAS_PREFIX + pin_root)[:qdisc.IFALIASZ - 1]


def mtu(ifname: str) -> int:
    """The MTU of a device of this namespace (sysfs; no netlink round trip)."""
    try:
        with open(os.path.join(SYS_NET, ifname, "mtu")) as f:
            return int(f.read())
    except (OSError, ValueError) as exc:
        raise ShapeError(f"read the MTU of {ifname}: {exc}") from exc


def alias_of(name: str) -> str | None:
    try:
        with open(os.path.join(SYS_NET, name, "ifalias")) as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def _ifb(name: str, alias: str) -> int:
    """The IFB `name`, made now or reused from an earlier ADD of the same container; up, aliased."""
    try:
        ifindex = qdisc.create_ifb(name)
    except qdisc.QdiscError as exc:
        if exc.errno != errno.EEXIST:
            raise ShapeError(f"from_pod: create IFB {name}: {exc}") from exc
        try:
            ifindex = qdisc.link_index(name)
        except qdisc.QdiscError as again:
            raise ShapeError(f"from_pod: find IFB {name}: {again}") from again
    try:
        qdisc.set_link(ifindex, up=True, alias=alias)
    except qdisc.QdiscError as exc:
        raise ShapeError(f"from_pod: bring IFB {name} up: {exc}") from exc
    return ifindex


def bring_up(container_id: str, direction: int, host_ifindex: int, mtu_bytes: int, params: DataPathParams,
             alias: str) -> Shaped:
    """Build (or bring to the plan) the tree of one direction; ShapeError when it cannot be."""
    name = L.DIRECTION_NAMES[direction]
    try:
        tree = shaping.plan(params, mtu_bytes)
        if direction == L.DIR_TO_POD:
            shaping.apply(host_ifindex, tree)
            return Shaped(direction, host_ifindex)
        ifb = shaping.ifb_name(container_id)
        ifindex = _ifb(ifb, alias)
        shaping.apply(ifindex, tree)
        return Shaped(direction, ifindex, ifb)
    except ShapeError as exc:
        if str(exc).startswith(f"{name}:"):
            raise
        raise ShapeError(f"{name}: {exc}") from exc


def _gone(exc: BaseException) -> bool:
    cause = exc.__cause__ if isinstance(exc, ShapeError) else exc
    return isinstance(cause, OSError) and cause.errno in GONE


def take_down(container_id: str, direction: int, host_ifindex: int | None) -> bool:
    """Remove one direction's tree: ours on the host veth (when it still exists), the IFB by its
    derived name. True when something was removed; nothing there is fine."""
    if direction == L.DIR_TO_POD:
        if not host_ifindex:
            return False
        try:
            return shaping.remove(host_ifindex)
        except ShapeError as exc:
            if _gone(exc):
                return False
            raise
    return delete_ifb(shaping.ifb_name(container_id))


def drift(container_id: str, direction: int, host_ifindex: int, host_ifname: str, params: DataPathParams,
          recorded: dict | None) -> list[str]:
    """How one shaped direction's device differs from the plan (and from the meta record)."""
    name = L.DIRECTION_NAMES[direction]
    tree = shaping.plan(params, mtu(host_ifname))
    if direction == L.DIR_TO_POD:
        return [f"{name} qdiscs on {host_ifname}: {p}" for p in shaping.drift(host_ifindex, tree)]
    ifb = shaping.ifb_name(container_id)
    try:
        ifindex = qdisc.link_index(ifb)
    except qdisc.QdiscError:
        return [f"{name} IFB {ifb} is missing"]
    problems = []
    if recorded and recorded.get("ifindex") != ifindex:
        problems.append(f"{name} IFB {ifb} is ifindex {ifindex}, the program redirects to "
                        f"{recorded.get('ifindex')}")
    return problems + [f"{name} qdiscs on IFB {ifb}: {p}" for p in shaping.drift(ifindex, tree)]


def orphan_ifbs(keep: Iterable[str], alias: str) -> list[str]:
    """IFBs of this owner whose name derives from none of the container IDs in `keep`."""
    wanted = {shaping.ifb_name(cid) for cid in keep}
    return sorted(name for _, name in socket.if_nameindex()
                  if shaping.is_ifb_name(name) and name not in wanted and alias_of(name) in (alias, ""))


def delete_ifb(name: str) -> bool:
    """Delete the IFB `name`; False when there is none. Asks whether it exists first (no
    privilege needed), so a plugin without CAP_NET_ADMIN that never made one is not refused."""
    if not os.path.exists(os.path.join(SYS_NET, name)):
        return False
    try:
        return qdisc.delete_link(name)
    except qdisc.QdiscError as exc:
        raise ShapeError(f"from_pod: delete IFB {name}: {exc}") from exc
