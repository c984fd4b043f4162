"""Read and write Natra's maps through their file descriptors.

Owns: the conversion between map bytes (layouts of bpf/natra.h, mirrored in
natra.kernel.layout) and Python values: config per direction, state, sketch cells,
the heavy-flow table, per-CPU counters summed over possible CPUs, and
`snapshot`, the whole state in exactly the shape of the model's
`Model.snapshot()` so model and kernel can be compared with `==`.
Rule: works on plain fds, so a tool can read maps pinned by another process
(open them with bpfsys.obj_get). Reads are not atomic across entries.
Must not know: libbpf, loading, attach modes; numpy.
"""

from __future__ import annotations

import ctypes
import struct
from functools import lru_cache
from typing import Protocol

from natra.kernel import bpfsys
from natra.kernel import layout as L
from natra.kernel.params import ConfigValues

POSSIBLE_CPUS_FILE = "/sys/devices/system/cpu/possible"
_U32 = struct.Struct("=I")
PERCPU_VALUE_ALIGN = 8  # the kernel lays per-CPU values out rounded up to 8 bytes


class HasMapFds(Protocol):
    def map_fd(self, name: str) -> int: ...


def _key(index: int) -> bytes:
    return _U32.pack(index)


def _fields(struct_type: type[ctypes.Structure], raw: bytes, skip: tuple[str, ...] = ()) -> dict:
    value = struct_type.from_buffer_copy(raw[:ctypes.sizeof(struct_type)])
    return {name: int(getattr(value, name)) for name, _ in struct_type._fields_ if name not in skip}


def _lookup(fd: int, index: int, struct_type: type[ctypes.Structure]) -> bytes:
    raw = bpfsys.map_lookup(fd, _key(index), ctypes.sizeof(struct_type))
    if raw is None:
        raise KeyError(f"array map fd {fd} has no entry {index}")
    return raw


# ---- config -----------------------------------------------------------------------------

_CONFIG_NAMES = ("rate_bps", "tau_nbit", "heavy_line_nbit", "early_line_nbit", "window_ns",
                 "threshold_bytes", "width", "depth", "flags", "classes", "qdisc_major", "redirect_ifindex")


def write_config(fd: int, direction: int, config: ConfigValues, flow_slots: int,
                 tick_ns: int = 0) -> None:
    """struct natra_config of `config`, with the size of the object's flow table (the
    loader's, not the plan's: the program finds a heavy flow's slot from it) and the
    node's tick where the direction reads the tick clock (params.clock_tick_ns)."""
    value = L.Config(*config.as_tuple())
    value.flow_slots = flow_slots
    value.tick_ns = tick_ns
    bpfsys.map_update(fd, _key(direction), bytes(value))


def read_config(fd: int, direction: int) -> ConfigValues:
    """The plan's part of a direction's config (flow_slots and tick_ns are the object's
    and the node's: `config_fields` has them)."""
    fields = _fields(L.Config, _lookup(fd, direction, L.Config))
    return ConfigValues(*(fields[name] for name in _CONFIG_NAMES))


def config_fields(fd: int, direction: int) -> dict:
    """Every field of a direction's struct natra_config, by name."""
    return _fields(L.Config, _lookup(fd, direction, L.Config))


# ---- state and sketch -----------------------------------------------------------------------

def read_state(fd: int, direction: int) -> dict:
    """natra_state fields of a direction, except the lock word; `slots` as
    (flow_hash, until_epoch) pairs, as the model's snapshot has them."""
    raw = _lookup(fd, direction, L.State)
    value = L.State.from_buffer_copy(raw[:ctypes.sizeof(L.State)])
    fields = _fields(L.State, raw, skip=("lock", "slots"))
    fields["slots"] = [(int(s.flow_hash), int(s.until_epoch)) for s in value.slots]
    return fields


def read_sketch(fd: int, n: int) -> list[tuple[int, int, int]]:
    """(epoch, cur, prev) of cells 0..n-1 (n = 2 * depth * width)."""
    rows = bpfsys.map_lookup_batch(fd, _U32.size, ctypes.sizeof(L.Cell))
    cells = {_U32.unpack(k)[0]: struct.unpack("=QQQ", v) for k, v in rows}
    missing = [i for i in range(n) if i not in cells]
    if missing:
        raise KeyError(f"sketch map fd {fd} has no cell {missing[0]} (it holds {len(cells)})")
    return [cells[i] for i in range(n)]


# ---- heavy flows ----------------------------------------------------------------------------

_FLOW_SIZE = ctypes.sizeof(L.Flow)
_KEY_SIZE = ctypes.sizeof(L.FlowKey)
_COUNTED_EPOCH_WORD = L.Flow.counted_epoch.offset // 8  # natra_flow is whole u64 words


def read_flows(flows_fd: int, keys_fd: int) -> dict[bytes, dict]:
    """Every used slot of the heavy-flow table: its owner's key bytes (natra_flow_keys)
    -> natra_flow fields. Both maps are arrays of the same size, read whole as raw
    buffers (slot i at i * size); a slot never used has counted_epoch 0 and is skipped
    before anything is decoded: the table is mostly empty."""
    _, values = bpfsys.map_lookup_batch_raw(flows_fd, _U32.size, _FLOW_SIZE)
    counted = memoryview(values).cast("Q")[_COUNTED_EPOCH_WORD::_FLOW_SIZE // 8]
    used = [i for i, epoch in enumerate(counted) if epoch]
    if not used:
        return {}
    _, keys = bpfsys.map_lookup_batch_raw(keys_fd, _U32.size, _KEY_SIZE)
    return {keys[i * _KEY_SIZE:(i + 1) * _KEY_SIZE]:
            _fields(L.Flow, values[i * _FLOW_SIZE:(i + 1) * _FLOW_SIZE]) for i in used}


# ---- counters -------------------------------------------------------------------------------

def _parse_cpu_list(text: str) -> int:
    """Number of CPUs in a list such as '0-3,5' (the kernel uses max index + 1)."""
    highest = -1
    for part in text.strip().split(","):
        if part:
            highest = max(highest, int(part.split("-")[-1]))
    return highest + 1


@lru_cache(maxsize=1)
def possible_cpus() -> int:
    with open(POSSIBLE_CPUS_FILE) as f:
        return _parse_cpu_list(f.read())


def read_counters(fd: int, direction: int) -> list[int]:
    """NCOUNTERS counters of a direction, summed over every possible CPU."""
    per_cpu = ctypes.sizeof(L.Counters)
    stride = (per_cpu + PERCPU_VALUE_ALIGN - 1) // PERCPU_VALUE_ALIGN * PERCPU_VALUE_ALIGN
    ncpu = possible_cpus()
    raw = bpfsys.map_lookup(fd, _key(direction), stride * ncpu)
    if raw is None:
        raise KeyError(f"counters map fd {fd} has no entry {direction}")
    totals = [0] * L.NCOUNTERS
    for cpu in range(ncpu):
        values = struct.unpack_from(f"={L.NCOUNTERS}Q", raw, cpu * stride)
        totals = [t + v for t, v in zip(totals, values, strict=True)]
    return [t & 0xFFFFFFFFFFFFFFFF for t in totals]


# ---- everything -------------------------------------------------------------------------------

def snapshot(obj_or_fds: HasMapFds | dict[str, int]) -> dict:
    """The whole map state, shaped like reference Model.snapshot().

    Accepts a loaded BpfObject (anything with map_fd(name)) or a dict of map
    name -> fd (for pinned maps).
    """
    def fd(name: str) -> int:
        return obj_or_fds[name] if isinstance(obj_or_fds, dict) else obj_or_fds.map_fd(name)

    configs = [config_fields(fd("natra_config"), d) for d in range(L.NDIRS)]
    width, depth = configs[0]["width"], configs[0]["depth"]
    return {
        "config": configs,
        "state": [read_state(fd("natra_state"), d) for d in range(L.NDIRS)],
        "sketch": read_sketch(fd("natra_sketch"), L.NDIRS * depth * width),
        "flows": read_flows(fd("natra_flows"), fd("natra_flow_keys")),
        "counters": [read_counters(fd("natra_counters"), d) for d in range(L.NDIRS)],
    }
