"""The per-container pin directory in bpffs: its place and its names.

Owns: where one container's pinned objects live (`<root>/<name>`), how the
directory name derives from CNI_CONTAINERID, the name of every pin inside it,
making and emptying the directory, and listing the containers that have one.
DEL, CHECK and GC find everything from the container ID alone; there is no
state file anywhere else.

Rule: the name is a pure, deterministic, reversible function of a valid
container ID. bpffs refuses '.' in names, so the encoding maps it away:
'_' -> '__' and '.' -> '_d' (every other allowed character stays as it is).
IDs whose encoding would exceed NAME_MAX use '_h' + SHA-256 instead; the meta
record (natra/kernel/meta.py) keeps the real ID for those.

Layout of a directory:
    link_to_pod, link_from_pod   tcx links (tcx mode only)
    prog_to_pod, prog_from_pod   the programs (to recognise our clsact filters)
    natra_config, natra_state, ...   every map, by its name in the object
    meta                         a one-entry ARRAY map holding JSON (natra/kernel/meta.py)

Must not know: how objects are loaded or attached; pyroute2; numpy.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from dataclasses import dataclass

from natra.kernel import layout as L

DEFAULT_ROOT = "/sys/fs/bpf/natra"
ROOT_ENV = "NATRA_BPFFS_ROOT"
DIR_MODE = 0o700  # only root may look at or change a Pod's limiter
PIN_MODE = 0o600
NAME_MAX = 255  # longest file name bpffs (any Linux fs) accepts
# The CNI spec: non-empty, alphanumerics plus '_', '.', '-' (libcni's regex).
CONTAINER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
HASHED_PREFIX = "_h"

LINK_PINS = {L.DIR_TO_POD: "link_to_pod", L.DIR_FROM_POD: "link_from_pod"}
PROG_PINS = {L.DIR_TO_POD: "prog_to_pod", L.DIR_FROM_POD: "prog_from_pod"}
META_PIN = "meta"


class PinError(ValueError):
    """A container ID that the CNI spec does not allow (says why)."""


def validate_container_id(container_id: str) -> str:
    if not isinstance(container_id, str) or not CONTAINER_ID_RE.fullmatch(container_id):
        raise PinError(f"container ID {container_id!r} is not alphanumerics plus '_', '.', '-'")
    return container_id


def encode_name(container_id: str) -> str:
    """Directory name for a container ID (no '.'; reversible unless hashed)."""
    validate_container_id(container_id)
    name = container_id.replace("_", "__").replace(".", "_d")
    if len(name) > NAME_MAX:
        return HASHED_PREFIX + hashlib.sha256(container_id.encode()).hexdigest()
    return name


def decode_name(name: str) -> str | None:
    """The container ID a directory name stands for; None if hashed or not ours."""
    if name.startswith(HASHED_PREFIX):
        return None
    out, i = [], 0
    while i < len(name):
        ch = name[i]
        if ch == "_":
            nxt = name[i + 1:i + 2]
            if nxt == "_":
                out.append("_")
            elif nxt == "d":
                out.append(".")
            else:
                return None
            i += 2
            continue
        if ch == ".":
            return None
        out.append(ch)
        i += 1
    decoded = "".join(out)
    return decoded if CONTAINER_ID_RE.fullmatch(decoded) else None


def resolve_root(root: str | None = None) -> str:
    return root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT


@dataclass(frozen=True)
class PinDir:
    """One container's directory and the paths of its pins."""

    root: str
    container_id: str

    @property
    def path(self) -> str:
        return os.path.join(self.root, encode_name(self.container_id))

    def link(self, direction: int) -> str:
        return os.path.join(self.path, LINK_PINS[direction])

    def prog(self, direction: int) -> str:
        return os.path.join(self.path, PROG_PINS[direction])

    def map(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def meta(self) -> str:
        return os.path.join(self.path, META_PIN)

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def entries(self) -> list[str]:
        try:
            return sorted(os.listdir(self.path))
        except FileNotFoundError:
            return []


def pin_dir(container_id: str, root: str | None = None) -> PinDir:
    validate_container_id(container_id)
    return PinDir(root=resolve_root(root), container_id=container_id)


def make(pins: PinDir) -> None:
    """Create root and container directory (mode 0700); existing ones are kept."""
    for path in (pins.root, pins.path):
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass
        os.chmod(path, DIR_MODE)


def secure(path: str) -> None:
    """Give a fresh pin the mode pins must have."""
    os.chmod(path, PIN_MODE)


def unpin(path: str) -> bool:
    """Remove one pin; False if it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def clear(pins: PinDir) -> None:
    """Unpin everything in the directory and remove it; a missing one is fine."""
    for name in pins.entries():
        unpin(os.path.join(pins.path, name))
    try:
        os.rmdir(pins.path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise


def list_names(root: str | None = None) -> list[str]:
    """Directory names under the root (empty if the root does not exist)."""
    base = resolve_root(root)
    try:
        return sorted(n for n in os.listdir(base) if os.path.isdir(os.path.join(base, n)))
    except FileNotFoundError:
        return []


def list_containers(root: str | None = None) -> list[str]:
    """Container IDs that have a pin directory (hashed names via their meta)."""
    from natra.kernel import meta  # local: meta needs bpf(2), plain listing does not

    base = resolve_root(root)
    found = []
    for name in list_names(base):
        cid = decode_name(name)
        if cid is None and name.startswith(HASHED_PREFIX):
            record = meta.read(os.path.join(base, name, META_PIN)) or {}
            cid = record.get("container_id")
        if cid is not None:
            found.append(cid)
    return sorted(found)
