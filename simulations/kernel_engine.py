"""Replay engines `kernel` and `both` for `natra-sim replay`.

Owns: running capture frames through the real BPF program (a private copy,
loaded with the test clock, one BPF_PROG_TEST_RUN per frame with
`__sk_buff.tstamp` = the capture's time), reading each frame's exact verdict
from the program's counters, and `both`: the same frames through the kernel
and the reference model side by side, counting the frames where they disagree
and comparing every map at the end.

Rule: both twins get byte-identical input, and every frame is charged its
original (wire) length, as the model engine charges it. The program charges
skb->len; BPF_PROG_TEST_RUN's skb->len is the length of the data it is given
(the context's `wire_len` is accepted but the program does not read it,
measured on 6.18), so a frame captured headers-only is zero-padded back to its
wire length. A frame longer than the test path can carry (TEST_RUN_MAX_FRAME:
a GRO/GSO super-packet, a jumbo frame) cannot be run exactly: the engine
refuses it (FrameTooLong) rather than charge a cut frame.
Must not know: how the summary is printed (replay.py does that).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from natra.reference.engine import Batch, BatchResult, Model, process_batch
from natra.reference.key import KEY_LEN, format_key, parse_frame

from natra.kernel import layout as L
from natra.kernel.params import ConfigValues

# One page minus the skb headroom (NET_SKB_PAD 64) and the aligned skb_shared_info
# (320) on x86-64: 3712 bytes run, 3713 get EINVAL (measured on 6.18).
TEST_RUN_MAX_FRAME = 3712
HEAVY_VERDICTS = frozenset({L.V_PASS_HEAVY, L.V_MARK, L.V_DROP_HEAVY, L.V_DROP_SHARE})
MAX_LISTED_DIFFERENCES = 10


class FrameTooLong(ValueError):
    """A frame whose wire length BPF_PROG_TEST_RUN cannot carry: no exact kernel verdict."""


def prepare_frame(frame: bytes, wire_len: int) -> bytes:
    """The frame as the kernel runs it: the captured bytes, zero-padded to `wire_len`."""
    if wire_len > TEST_RUN_MAX_FRAME:
        raise FrameTooLong(f"a {wire_len}-byte frame is longer than the {TEST_RUN_MAX_FRAME} bytes "
                           f"BPF_PROG_TEST_RUN carries")
    return frame[:wire_len] + bytes(max(0, wire_len - len(frame)))


def prepared_batch(batch: Batch, frames: Sequence[bytes]) -> tuple[Batch, list[bytes]]:
    """Frames padded to batch.wire_len (the original lengths, unchanged) and their keys."""
    prepared = [prepare_frame(f, int(n)) for f, n in zip(frames, batch.wire_len.tolist(), strict=True)]
    keys = np.empty((len(prepared), KEY_LEN), dtype=np.uint8)
    ect = np.empty(len(prepared), dtype=bool)
    for i, frame in enumerate(prepared):
        parsed = parse_frame(frame)
        keys[i] = np.frombuffer(parsed.key, dtype=np.uint8)
        ect[i] = parsed.ecn != 0
    return Batch(batch.now_ns, batch.wire_len, batch.direction, keys, ect), prepared


def _with_test_clock(configs: Sequence[ConfigValues]) -> list[ConfigValues]:
    return [dataclasses.replace(c, flags=c.flags | L.CFG_TEST_CLOCK) for c in configs]


class KernelEngine:
    """The BPF program as a replay engine (root, bpffs not needed: nothing is pinned)."""

    max_frame = TEST_RUN_MAX_FRAME  # replay refuses captures with longer frames up front

    def __init__(self, configs: Sequence[ConfigValues], flow_table: int):
        from natra.kernel.loader import BpfObject

        self.obj = BpfObject.load(_with_test_clock(configs), flow_table=flow_table)

    def _verdict_packets(self, direction: int) -> list[int]:
        from natra.kernel import maps

        counters = maps.read_counters(self.obj.map_fd("natra_counters"), direction)
        return [counters[L.verdict_packets_index(v)] for v in range(L.NVERDICTS)]

    def run_frames(self, batch: Batch, frames: Sequence[bytes]) -> BatchResult:
        """Frames already prepared; the verdict of each is the counter that moved."""
        from natra.kernel import testrun

        n = len(frames)
        verdicts = np.empty(n, dtype=np.uint8)
        for i, frame in enumerate(frames):
            direction = int(batch.direction[i])
            before = self._verdict_packets(direction)
            testrun.run(self.obj.prog_fd(direction), frame, int(batch.now_ns[i]))
            after = self._verdict_packets(direction)
            moved = [v for v in range(L.NVERDICTS) if after[v] != before[v]]
            if len(moved) != 1:
                raise RuntimeError(f"frame {i}: {len(moved)} verdict counters moved")
            verdicts[i] = moved[0]
        heavy = np.isin(verdicts, list(HEAVY_VERDICTS))
        return BatchResult(verdicts, heavy, np.zeros(n, dtype=np.uint64))

    def process_frames(self, batch: Batch, frames: Sequence[bytes]) -> BatchResult:
        prepared_b, prepared = prepared_batch(batch, frames)
        return self.run_frames(prepared_b, prepared)

    def snapshot(self) -> dict:
        from natra.kernel import maps

        return maps.snapshot(self.obj)

    def close(self) -> None:
        self.obj.close()


class BothEngine:
    """Kernel and model side by side; the kernel's verdicts are reported."""

    max_frame = TEST_RUN_MAX_FRAME

    def __init__(self, configs: Sequence[ConfigValues], flow_table: int):
        self.kernel = KernelEngine(configs, flow_table)
        self.model = Model(_with_test_clock(configs), flow_table=flow_table)
        self.frames = 0
        self.divergences = 0
        self.differences: list[dict] = []

    def process_frames(self, batch: Batch, frames: Sequence[bytes]) -> BatchResult:
        prepared_b, prepared = prepared_batch(batch, frames)
        k = self.kernel.run_frames(prepared_b, prepared)
        m = process_batch(self.model, prepared_b)
        differ = np.nonzero(k.verdicts != m.verdicts)[0]
        for i in differ.tolist()[: max(0, MAX_LISTED_DIFFERENCES - len(self.differences))]:
            self.differences.append({
                "index": self.frames + i, "time_ns": int(prepared_b.now_ns[i]),
                "flow": format_key(prepared_b.keys[i].tobytes()),
                "kernel": L.VERDICT_NAMES[int(k.verdicts[i])], "model": L.VERDICT_NAMES[int(m.verdicts[i])]})
        self.divergences += len(differ)
        self.frames += len(prepared)
        return k

    def summary_extra(self) -> dict:
        """What `both` adds to the JSON summary."""
        kernel_state, model_state = self.kernel.snapshot(), self.model.snapshot()
        differing = sorted(name for name in model_state if kernel_state.get(name) != model_state[name])
        return {"divergences": self.divergences, "differences": self.differences,
                "state_equal": not differing, "state_differs_in": differing}

    def close(self) -> None:
        self.kernel.close()
