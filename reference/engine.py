"""The reference model: per-frame decisions of docs/design.md, the executable spec.

Owns: the sketch step, the heavy-flow census, the aggregate and per-flow GCRA
in nano-bits, the green/yellow/reserve zones, ECN marking and the counters,
for both directions, over the arrays of `Tables` (the BPF maps' layout).
`Model.process` / `Model.process_key` are the per-packet API; `process_batch`
runs arrays of frames through the same step and leaves the same state.
Rule: time is an argument (`now_ns`); all arithmetic is unsigned 64-bit on
integers, division by zero yields 0 as in BPF; `_step_spec` follows
design.md line by line. The C accelerator (reference/_fast.c) is a
transcription of `_step_spec`, used only when built and checked against it by
tests/test_reference_batch.py.
Must not know: clocks, files, sockets, the kernel.

The heavy-flow table is the kernel's: `flow_table` slots (a power of two), a
heavy flow's slot h1 & (flow_table - 1), kept, shared or taken as `_claim_slot`
says, so model and kernel hold the same flows in the same slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from natra.reference import accel
from natra.reference.ecn import mark_ce
from natra.reference.hashing import HASH_SEEDS, columns, flow_hash_keys, hash_columns, key_hashes
from natra.reference.key import ETH_P_IP, ETH_P_IPV6, KEY_LEN, parse_frame
from natra.reference.tables import Tables, config_row

from natra.kernel import layout as L
from natra.kernel.params import ConfigValues

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
_ETHERTYPE_AT = 36  # byte offset of the EtherType inside the key
_FLAGS_AT = 39


def _div(a: int, b: int) -> int:
    """Unsigned division as BPF defines it: x / 0 == 0."""
    return a // b if b else 0


def drain(backlog: int, last: int, now: int, rate: int) -> tuple[int, int]:
    """design.md `drain`: (backlog, last) after draining at `rate` nbit/ns until `now`."""
    if now > last:
        dt = now - last
        # dt > backlog // rate  <=>  dt * rate > backlog, without overflow
        backlog = 0 if dt > _div(backlog, rate) else (backlog - dt * rate) & U64
        last = now
    return backlog, last


def parse_counter_indexes(key: bytes) -> list[int]:
    """Parse counters a frame with this key adds to (from the key alone)."""
    ethertype = (key[_ETHERTYPE_AT] << 8) | key[_ETHERTYPE_AT + 1]
    flags = key[_FLAGS_AT]
    out = [L.C_IPV4 if ethertype == ETH_P_IP else L.C_IPV6 if ethertype == ETH_P_IPV6 else L.C_NON_IP]
    if flags & L.KEY_FRAGMENT:
        out.append(L.C_FRAGMENT)
    if flags & L.KEY_TRUNCATED:
        out.append(L.C_TRUNCATED)
    return out


@dataclass(frozen=True, slots=True)
class Decision:
    """What the data path did with one frame."""

    verdict: int  # layout.V_*
    heavy: bool  # classified heavy by the sketch
    estimate: int  # bytes: the sketch's new_cur (0 when the direction is unlimited)
    key: bytes  # struct natra_flow_key
    frame_out: bytes | None  # the frame as it leaves (CE set on MARK); None from process_key
    cls: int = 0  # shaping: the HTB class minor the frame goes to (layout.CLASS_*); 0 = none


class Model:
    """Both directions of one Pod's data path, over the BPF maps' layout."""

    def __init__(self, configs: Sequence[ConfigValues], flow_table: int = 4096,
                 accelerator: bool | None = None):
        self.tables = Tables(configs, flow_table)
        self.width, self.depth = self.tables.width, self.tables.depth
        self._cells = self.tables.sketch.view(np.uint64).reshape(-1, 3)  # epoch, cur, prev
        self._fast = accel.bind(self.tables) if accelerator in (None, True) else None
        self._parser = accel.parser() if self._fast is not None else None
        if accelerator and self._fast is None:
            raise RuntimeError(f"the C accelerator is not built ({accel.LIBRARY}); run make")

    @property
    def accelerated(self) -> bool:
        return self._fast is not None

    # ---- per-packet API -------------------------------------------------
    def process(self, frame: bytes, now_ns: int, direction: int, wire_len: int | None = None,
                gso_segs: int = 1) -> Decision:
        """One frame. `wire_len` is skb->len (default len(frame)); a GSO super-packet of
        `gso_segs` segments is charged its headers once per segment, as on the wire:
        wire_len + (gso_segs - 1) * hdr_len (design.md, "Units")."""
        wire = len(frame) if wire_len is None else wire_len
        if gso_segs > 1:
            p = parse_frame(frame)
            charge = wire + (gso_segs - 1) * p.hdr_len if p.hdr_len else wire
            verdict, heavy, estimate, cls = self._decide(p.key, wire, now_ns, direction, p.ecn != 0, charge)
            out = mark_ce(frame, p.l3, p.l3_offset) if verdict == L.V_MARK else frame
            return Decision(verdict, heavy, estimate, p.key, out, cls)
        if self._parser is not None:
            key, ecn, l3, l3_offset, _ = self._parser.parse(frame)
        else:
            p = parse_frame(frame)
            key, ecn, l3, l3_offset = p.key, p.ecn, p.l3, p.l3_offset
        verdict, heavy, estimate, cls = self._decide(key, wire, now_ns, direction, ecn != 0)
        out = mark_ce(frame, l3, l3_offset) if verdict == L.V_MARK else frame
        return Decision(verdict, heavy, estimate, key, out, cls)

    def process_key(self, key: bytes, wire_len: int, now_ns: int, direction: int,
                    ect: bool = False) -> Decision:
        if len(key) != KEY_LEN:
            raise ValueError(f"flow key must be {KEY_LEN} bytes")
        verdict, heavy, estimate, cls = self._decide(key, wire_len, now_ns, direction, ect)
        return Decision(verdict, heavy, estimate, key, None, cls)

    @property
    def shaping(self) -> bool:
        """Some direction classifies for the shaper (the accelerator does not know that step)."""
        return any(int(c["flags"]) & L.CFG_SHAPE for c in self.tables.config)

    def _decide(self, key: bytes, wire_len: int, now_ns: int, direction: int, ect: bool,
                charge_len: int | None = None):
        if self._fast is not None and (charge_len is None or charge_len == wire_len) and not self.shaping:
            return (*self._fast.step(key, wire_len, now_ns, direction, ect), 0)
        h1, h2 = key_hashes(key)  # the spec shares the accelerator's tables
        cols = hash_columns(h1, h2, self.width, self.depth)
        return self._step_spec(key, h1, h2, cols, wire_len, now_ns, direction, ect, charge_len)

    def reconfigure(self, direction: int, config: ConfigValues) -> None:
        if (config.width, config.depth) != (self.width, self.depth):
            raise ValueError("width and depth are fixed for the model's lifetime")
        self.tables.config[direction] = config_row(config, self.tables.capacity)

    def snapshot(self) -> dict:
        return self.tables.snapshot()

    # ---- the specification ----------------------------------------------
    def _claim_slot(self, key: bytes, h1: int, h2: int, epoch: int, counters: np.ndarray) -> int:
        """The slot a heavy frame is decided with (-1: no table): its flow's own; else,
        while another live flow (counted in this window or the last) holds it, that
        flow's, shared (FLOW_OVERFLOW); else the frame's flow takes it, zeroed (FLOW_NEW)."""
        t = self.tables
        if t.capacity == 0:
            return -1
        slot = h1 & (t.capacity - 1)
        flow = t.flows[slot]
        if int(flow["h1"]) == h1 and int(flow["h2"]) == h2:
            return slot
        counted = int(flow["counted_epoch"])
        if counted and counted >= epoch:
            counters[L.C_FLOW_OVERFLOW] += 1
            return slot
        t.flows[slot] = 0
        flow["h1"], flow["h2"] = h1, h2
        t.flow_keys[slot] = np.frombuffer(key, dtype=np.uint8)
        counters[L.C_FLOW_NEW] += 1
        return slot

    def _heavy_class(self, d: int, h1: int, epoch: int, classes: int) -> int:
        """design.md "Shaping": the heavy class (0..classes-1) of the key whose h1 is given,
        under the lock.

        The class the flow owns while that is live; else the first class from
        h1 % classes on that no live flow owns, which the flow then owns; else
        (every class owned by another live flow) h1 % classes, shared.
        """
        slots = self.tables.state[d]["slots"]
        n = min(max(classes, 1), L.MAX_CLASSES)
        start = h1 % n
        found = free = -1
        for i in range(n):
            j = (start + i) % n
            live = epoch < int(slots[j]["until_epoch"])
            if live and int(slots[j]["flow_hash"]) == h1:
                found = j
                break
            if not live and free < 0:
                free = j
        if found < 0:
            if free < 0:
                return start
            found = free
            slots[found]["flow_hash"] = h1
        if int(slots[found]["until_epoch"]) < epoch + 2:
            slots[found]["until_epoch"] = epoch + 2
        return found

    def _step_spec(self, key: bytes, h1: int, h2: int, cols: Sequence[int], wire_len: int, now: int, d: int,
                   ect: bool, charge_len: int | None = None) -> tuple[int, bool, int, int]:
        t = self.tables
        cfg = t.config[d]
        counters = t.counters[d]
        counters[L.C_FRAMES] += 1
        counters[L.C_BYTES] += wire_len
        for idx in parse_counter_indexes(key):
            counters[idx] += 1
        length = min(wire_len if charge_len is None else charge_len, L.MAX_ACCOUNTED_LEN)
        cost = length * L.NBIT_PER_BYTE
        heavy, new_cur, cls = False, 0, 0
        if not int(cfg["flags"]) & L.CFG_ENABLED:
            verdict = L.V_PASS_UNLIMITED
        else:
            rate, tau = int(cfg["rate_bps"]), int(cfg["tau_nbit"])
            heavy_line, early_line = int(cfg["heavy_line_nbit"]), int(cfg["early_line_nbit"])
            epoch = _div(now, int(cfg["window_ns"]))
            # -- lock: sketch step --
            heavy, new_cur = self._sketch_step(d, cols, epoch, length, int(cfg["threshold_bytes"]))
            st = t.state[d]
            st_epoch = int(st["epoch"])
            if epoch > st_epoch:  # heavy-flow census, rolled by window
                st["heavy_prev"] = int(st["heavy_now"]) if epoch == st_epoch + 1 else 0
                st["heavy_now"] = 0
                st["epoch"] = epoch
            if int(cfg["flags"]) & L.CFG_SHAPE:
                # Shaping: classify only; the qdisc queues and paces (no bucket here)
                if heavy:
                    cls = L.CLASS_HEAVY_BASE + self._heavy_class(d, h1, epoch, int(cfg["classes"]))
                    verdict = L.V_PASS_HEAVY
                else:
                    cls, verdict = L.CLASS_MICE, L.V_PASS_MOUSE
                counters[L.verdict_packets_index(verdict)] += 1
                counters[L.verdict_bytes_index(verdict)] += wire_len
                return verdict, heavy, new_cur, cls
            backlog, last = drain(int(st["backlog_nbit"]), int(st["last_ns"]), now, rate)
            if not heavy:
                f = backlog + cost
                if f <= tau:
                    backlog = f
                    verdict = L.V_PASS_MOUSE
                else:
                    verdict = L.V_DROP_MOUSE
                st["backlog_nbit"], st["last_ns"] = backlog, last
            else:
                # (the drain above touches other fields than the slot, so its place is free)
                slot = self._claim_slot(key, h1, h2, epoch, counters)
                f = backlog + cost
                if slot < 0:
                    counters[L.C_FLOW_MISSING] += 1
                    over_share = False
                else:
                    flow = t.flows[slot]
                    if int(flow["counted_epoch"]) < epoch + 1:
                        flow["counted_epoch"] = epoch + 1
                        st["heavy_now"] = min(int(st["heavy_now"]) + 1, U32)
                    n = min(max(int(st["heavy_now"]), int(st["heavy_prev"]), 1), L.MAX_SHARE_FLOWS)
                    fbacklog, flast = drain(int(flow["backlog_nbit"]), int(flow["last_ns"]), now, rate)
                    flow["last_ns"] = flast
                    flow["estimate_bytes"] = new_cur
                    fb = min(fbacklog, heavy_line)
                    fcost = cost * n
                    over_share = fcost > heavy_line - fb
                if f > heavy_line:
                    verdict = L.V_DROP_HEAVY
                elif f > early_line and over_share:
                    verdict = L.V_DROP_SHARE
                else:
                    backlog = f
                    if slot >= 0:
                        fbacklog = heavy_line if over_share else fb + fcost
                    ecn_on = int(cfg["flags"]) & L.CFG_ECN
                    # Mark only when the aggregate is past the early line AND the flow's
                    # own share bucket is past its mark line: a flow within its share is
                    # left alone
                    # (a quarter of the yellow zone below the heavy line, so that a flow
                    # whose bucket is still draining after slow start is not marked on
                    # every round trip; docs/tuning.md section 8)
                    mark_line = heavy_line - ((heavy_line - early_line) >> 2)
                    flow_yellow = slot < 0 or fbacklog > mark_line
                    marks = f > early_line and ecn_on and ect and flow_yellow
                    verdict = L.V_MARK if marks else L.V_PASS_HEAVY
                st["backlog_nbit"], st["last_ns"] = backlog, last
                if slot >= 0:
                    flow["backlog_nbit"] = fbacklog
                    if verdict in (L.V_PASS_HEAVY, L.V_MARK):
                        flow["passed_bytes"] = (int(flow["passed_bytes"]) + wire_len) & U64
                    else:
                        flow["dropped_bytes"] = (int(flow["dropped_bytes"]) + wire_len) & U64
                    if verdict == L.V_MARK:
                        flow["marked_packets"] = int(flow["marked_packets"]) + 1
        counters[L.verdict_packets_index(verdict)] += 1
        counters[L.verdict_bytes_index(verdict)] += wire_len
        return verdict, heavy, new_cur, cls

    def _sketch_step(self, d: int, cols: Sequence[int], epoch: int, length: int,
                     threshold: int) -> tuple[bool, int]:
        """Roll the key's D cells, conservative update; (heavy, new_cur)."""
        cells = self._cells
        base = d * self.depth * self.width
        idxs = [base + row * self.width + int(c) for row, c in enumerate(cols)]
        curs, prevs = [], []
        for i in idxs:
            cell_epoch, cur, prev = (int(v) for v in cells[i])
            if cell_epoch < epoch:  # roll lazily
                prev = cur if cell_epoch + 1 == epoch else 0
                cur = 0
                cells[i] = (epoch, cur, prev)
            curs.append(cur)
            prevs.append(prev)
        new_cur = (min(curs) + length) & U64
        for i, cur in zip(idxs, curs, strict=True):
            if cur < new_cur:
                cells[i, 1] = new_cur
        heavy = new_cur >= threshold or min(prevs) >= threshold
        return heavy, new_cur


@dataclass
class Batch:
    """Frames as arrays, one row per frame (the batch API's input)."""

    now_ns: np.ndarray  # uint64 ns
    wire_len: np.ndarray  # uint32 bytes: skb->len
    direction: np.ndarray  # uint8: layout.DIR_*
    keys: np.ndarray  # (n, 40) uint8: struct natra_flow_key
    ect: np.ndarray  # bool: the frame is ECN-capable (ECN field != 0)

    def __post_init__(self):
        self.now_ns = np.ascontiguousarray(self.now_ns, dtype=np.uint64)
        self.wire_len = np.ascontiguousarray(self.wire_len, dtype=np.uint32)
        self.direction = np.ascontiguousarray(self.direction, dtype=np.uint8)
        self.keys = np.ascontiguousarray(self.keys, dtype=np.uint8).reshape(-1, KEY_LEN)
        self.ect = np.ascontiguousarray(self.ect, dtype=bool)
        n = len(self.keys)
        for name in ("now_ns", "wire_len", "direction", "ect"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"batch column {name} has {len(getattr(self, name))} rows, keys {n}")

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_frames(cls, frames: Sequence[bytes], now_ns, direction, wire_len=None) -> Batch:
        n = len(frames)
        fast = accel.parser()
        if fast is not None:
            keys, ecn = fast.parse_many(frames)
            ect = ecn != 0
        else:
            keys = np.empty((n, KEY_LEN), dtype=np.uint8)
            ect = np.empty(n, dtype=bool)
            flat = keys.reshape(-1)
            for i, frame in enumerate(frames):
                parsed = parse_frame(frame)
                flat[i * KEY_LEN:(i + 1) * KEY_LEN] = np.frombuffer(parsed.key, dtype=np.uint8)
                ect[i] = parsed.ecn != 0
        lens = wire_len
        if lens is None:
            lens = np.fromiter((len(f) for f in frames), dtype=np.uint32, count=n)
        return cls(np.broadcast_to(np.asarray(now_ns, dtype=np.uint64), (n,)),
                   lens, np.broadcast_to(np.asarray(direction, dtype=np.uint8), (n,)), keys, ect)


@dataclass
class BatchResult:
    verdicts: np.ndarray  # uint8[n], layout.V_*
    heavy: np.ndarray  # bool[n]
    estimates: np.ndarray  # uint64[n], bytes (sketch new_cur)
    classes: np.ndarray | None = None  # uint8[n]: shaping class minor per frame (0 = none)


def process_batch(model: Model, batch: Batch) -> BatchResult:
    """Decide every row in order; same verdicts and final state as the per-packet API."""
    n = len(batch)
    h1 = flow_hash_keys(batch.keys, HASH_SEEDS[0])
    h2 = flow_hash_keys(batch.keys, HASH_SEEDS[1])
    if model._fast is not None and not model.shaping:
        result = model._fast.run(batch, h1, h2)
        result.classes = np.zeros(n, dtype=np.uint8)
        return result
    cols = columns(h1, h2, model.width, model.depth).tolist()
    verdicts = np.empty(n, dtype=np.uint8)
    heavy = np.empty(n, dtype=bool)
    estimates = np.empty(n, dtype=np.uint64)
    classes = np.empty(n, dtype=np.uint8)
    now, wire, dirs, ect = (a.tolist() for a in (batch.now_ns, batch.wire_len, batch.direction, batch.ect))
    keys, h1s, h2s = batch.keys, h1.tolist(), (h2 | np.uint32(1)).tolist()
    for i in range(n):
        v, h, e, c = model._step_spec(keys[i].tobytes(), h1s[i], h2s[i], cols[i], wire[i], now[i], dirs[i],
                                      ect[i])
        verdicts[i], heavy[i], estimates[i], classes[i] = v, h, e, c
    return BatchResult(verdicts, heavy, estimates, classes)
