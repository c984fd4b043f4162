"""The model's state tables: numpy arrays laid out like the BPF maps.

Owns: the numpy dtypes built from natra.kernel.layout's ctypes mirror of bpf/natra.h,
and `Tables`, the arrays of one model (config, state, sketch, heavy-flow
table with its LRU bookkeeping, counters). The pure-Python step and the C
accelerator both work on these same arrays, so they cannot drift apart.
Rule: field order and widths are those of bpf/natra.h; the flow table is
slot-based (a dict key -> slot plus arrays) so C can update it in place.
Must not know: the policy, parsing, hashing, files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from natra.kernel import layout as L
from natra.kernel.params import ConfigValues

CONFIG_DTYPE = np.dtype(L.Config)
STATE_DTYPE = np.dtype(L.State)
CELL_DTYPE = np.dtype(L.Cell)
FLOW_DTYPE = np.dtype(L.Flow)
KEY_LEN = 40  # sizeof(struct natra_flow_key)

CONFIG_FIELDS = ("rate_bps", "tau_nbit", "heavy_line_nbit", "early_line_nbit", "window_ns",
                 "threshold_bytes", "width", "depth", "flags", "classes", "qdisc_major", "redirect_ifindex")
STATE_FIELDS = tuple(n for n in STATE_DTYPE.names if n not in ("lock", "slots"))
FLOW_FIELDS = FLOW_DTYPE.names


def config_row(config: ConfigValues) -> np.ndarray:
    row = np.zeros((), dtype=CONFIG_DTYPE)
    for name, value in zip(CONFIG_FIELDS, config.as_tuple(), strict=True):
        row[name] = value
    return row


class Tables:
    """Every array the model owns; shapes fixed at construction."""

    def __init__(self, configs: Sequence[ConfigValues], flow_table: int):
        if len(configs) != L.NDIRS:
            raise ValueError(f"need one config per direction ({L.NDIRS}), got {len(configs)}")
        width, depth = configs[0].width, configs[0].depth
        for c in configs:
            if (c.width, c.depth) != (width, depth):
                raise ValueError("both directions must use the same sketch width and depth")
        if width <= 0 or width & (width - 1) or width > L.MAX_WIDTH or not 1 <= depth <= L.MAX_DEPTH:
            raise ValueError(f"sketch {width} x {depth} outside what the map layout allows")
        if flow_table < 0:
            raise ValueError("flow table size must be >= 0")
        self.width, self.depth, self.capacity = width, depth, flow_table
        self.config = np.zeros(L.NDIRS, dtype=CONFIG_DTYPE)
        for d, c in enumerate(configs):
            self.config[d] = config_row(c)
        self.state = np.zeros(L.NDIRS, dtype=STATE_DTYPE)
        self.sketch = np.zeros(L.NDIRS * depth * width, dtype=CELL_DTYPE)
        self.counters = np.zeros((L.NDIRS, L.NCOUNTERS), dtype=np.uint64)
        # Heavy-flow table (the LRU hash): slot arrays + key -> slot index.
        self.flows = np.zeros(flow_table, dtype=FLOW_DTYPE)
        self.flow_keys = np.zeros((flow_table, KEY_LEN), dtype=np.uint8)
        self.flow_tick = np.zeros(flow_table, dtype=np.uint64)  # last use; LRU victim = smallest
        # [0] next unused slot, [1] last tick handed out
        self.flow_meta = np.zeros(2, dtype=np.uint64)
        self.slot_of: dict[bytes, int] = {}
        self.key_of: list[bytes | None] = [None] * flow_table

    def record_slot(self, slot: int, key: bytes) -> None:
        """Bookkeeping after `slot` was (re)assigned to `key`."""
        old = self.key_of[slot]
        if old is not None and self.slot_of.get(old) == slot:
            del self.slot_of[old]
        self.key_of[slot] = key
        self.slot_of[key] = slot

    def flow_dict(self, slot: int) -> dict:
        row = self.flows[slot]
        return {name: int(row[name]) for name in FLOW_FIELDS}

    def snapshot(self) -> dict:
        configs = [{name: int(self.config[d][name]) for name in CONFIG_DTYPE.names} for d in range(L.NDIRS)]
        states = [{**{name: int(self.state[d][name]) for name in STATE_FIELDS},
                   "slots": [(int(f), int(u)) for f, _, u in self.state[d]["slots"].tolist()]}
                  for d in range(L.NDIRS)]
        sketch = [tuple(int(v) for v in row) for row in self.sketch.tolist()]
        flows = {key: self.flow_dict(slot) for key, slot in self.slot_of.items()}
        counters = [[int(v) for v in self.counters[d]] for d in range(L.NDIRS)]
        return {"config": configs, "state": states, "sketch": sketch, "flows": flows, "counters": counters}
