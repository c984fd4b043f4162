"""The model's state tables: numpy arrays laid out like the BPF maps.

Owns: the numpy dtypes built from natra.kernel.layout's ctypes mirror of bpf/natra.h,
and `Tables`, the arrays of one model (config, state, sketch, heavy-flow
table, counters). The pure-Python step and the C accelerator both work on
these same arrays, so they cannot drift apart.
Rule: field order and widths are those of bpf/natra.h; the flow table is the
kernel's array of slots, a flow's slot found from its hash.
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


def config_row(config: ConfigValues, flow_slots: int) -> np.ndarray:
    """struct natra_config of `config`, with the table's size as the loader writes it."""
    row = np.zeros((), dtype=CONFIG_DTYPE)
    for name, value in zip(CONFIG_FIELDS, config.as_tuple(), strict=True):
        row[name] = value
    row["flow_slots"] = flow_slots
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
        if flow_table < 0 or flow_table & (flow_table - 1):
            raise ValueError("flow table size must be 0 or a power of two")
        self.width, self.depth, self.capacity = width, depth, flow_table
        self.config = np.zeros(L.NDIRS, dtype=CONFIG_DTYPE)
        for d, c in enumerate(configs):
            self.config[d] = config_row(c, flow_table)
        self.state = np.zeros(L.NDIRS, dtype=STATE_DTYPE)
        self.sketch = np.zeros(L.NDIRS * depth * width, dtype=CELL_DTYPE)
        self.counters = np.zeros((L.NDIRS, L.NCOUNTERS), dtype=np.uint64)
        # Heavy-flow table: natra_flows and natra_flow_keys, a slot per h1 & (flow_table - 1);
        # 0 slots: none.
        self.flows = np.zeros(flow_table, dtype=FLOW_DTYPE)
        self.flow_keys = np.zeros((flow_table, KEY_LEN), dtype=np.uint8)

    def flow_dict(self, slot: int) -> dict:
        row = self.flows[slot]
        return {name: int(row[name]) for name in FLOW_FIELDS}

    def snapshot(self) -> dict:
        configs = [{name: int(self.config[d][name]) for name in CONFIG_DTYPE.names} for d in range(L.NDIRS)]
        states = [{**{name: int(self.state[d][name]) for name in STATE_FIELDS},
                   "slots": [(int(f), int(u)) for f, _, u in self.state[d]["slots"].tolist()]}
                  for d in range(L.NDIRS)]
        sketch = [tuple(int(v) for v in row) for row in self.sketch.tolist()]
        used = np.flatnonzero(self.flows["counted_epoch"])
        flows = {self.flow_keys[slot].tobytes(): self.flow_dict(int(slot)) for slot in used}
        counters = [[int(v) for v in self.counters[d]] for d in range(L.NDIRS)]
        return {"config": configs, "state": states, "sketch": sketch, "flows": flows, "counters": counters}
