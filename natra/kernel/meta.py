"""The meta record of one container: who it is and what was installed for it.

Owns: storing a small JSON document (Pod namespace/name/UID, container ID,
ifname, host ifindex/ifname, attach mode, limits applied) next to the
container's pins. bpffs holds no regular files, so the record lives in a
pinned BPF ARRAY map of one entry (`natra_meta`, value META_VALUE_SIZE bytes):
the JSON text, NUL-padded. `bpftool map dump pinned <dir>/meta` shows it.

Rule: writing replaces the whole record atomically (one map update); reading
a missing or unreadable record gives None, never an exception, because DEL and
GC must work on whatever is left.

Must not know: attach modes, the program, pyroute2. bpf(2) goes through
natra/kernel/bpfsys.py, except BPF_MAP_CREATE, which bpfsys does not have (yet):
`_create_map` below can move there.
"""

from __future__ import annotations

import json
import os

from natra.kernel import bpfsys

META_MAP_NAME = b"natra_meta"
META_VALUE_SIZE = 4096  # bytes of JSON; the record is a few hundred
BPF_MAP_TYPE_ARRAY = 2

_KEY = bytes(4)  # the record sits at index 0


class MetaError(OSError):
    """The record could not be written (the step and errno are in the text)."""


def _create_map() -> int:
    return bpfsys.map_create(BPF_MAP_TYPE_ARRAY, len(_KEY), META_VALUE_SIZE, 1, META_MAP_NAME)


def encode(record: dict) -> bytes:
    text = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    if len(text) > META_VALUE_SIZE:
        raise MetaError(f"meta record is {len(text)} bytes, more than {META_VALUE_SIZE}")
    return text


def decode(raw: bytes) -> dict | None:
    text = raw.split(b"\0", 1)[0]
    try:
        record = json.loads(text) if text else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def write(path: str, record: dict) -> None:
    """Create (mode 0600) or overwrite the pinned record at `path`."""
    text = encode(record)
    value = text.ljust(META_VALUE_SIZE, b"\0")
    fresh = not os.path.exists(path)
    step = "create meta map"
    fd = -1
    try:
        fd = _create_map() if fresh else bpfsys.obj_get(path)
        step = "write meta map"
        bpfsys.map_update(fd, _KEY, value)
        if fresh:
            step = f"pin meta map at {path}"
            bpfsys.obj_pin(fd, path)
            os.chmod(path, 0o600)
    except OSError as e:
        raise MetaError(e.errno, f"{step}: {e.strerror}") from e
    finally:
        if fd >= 0:
            os.close(fd)


def read(path: str) -> dict | None:
    """The record pinned at `path`, or None if absent or unreadable."""
    try:
        fd = bpfsys.obj_get(path)
    except OSError:
        return None
    try:
        value = bpfsys.map_lookup(fd, _KEY, META_VALUE_SIZE)
        return decode(value) if value is not None else None
    except OSError:
        return None
    finally:
        os.close(fd)
