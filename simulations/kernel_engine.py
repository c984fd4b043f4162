"""Replay engines `kernel` and `both` for `natra-sim replay`.

Owns: running capture frames through the real BPF program (a private copy,
loaded with the test clock, one BPF_PROG_TEST_RUN per frame with
`__sk_buff.tstamp` = the capture's time), reading each frame's exact verdict
from the program's counters, and `both`: the same frames through the kernel
and the reference model side by side, counting the frames where they disagree
and comparing every map at the end. The judge in `both` is the pure-Python
spec (`Model(accelerator=False)`); where the C accelerator is built it runs
as a third column, and its disagreements with the spec are counted and
reported apart (`accelerator` in the summary), so that a bug the accelerator
shares with the program cannot hide.

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
import sys
from collections.abc import Sequence

import numpy as np
from natra.reference import accel
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


class _Divergences:
    """Frames where one engine's verdicts differ from the judge's, the first few listed."""

    def __init__(self, name: str):
        self.name = name
        self.count = 0
        self.listed: list[dict] = []

    def add(self, batch: Batch, first_index: int, verdicts: np.ndarray, judged: np.ndarray) -> None:
        differ = np.nonzero(verdicts != judged)[0]
        for i in differ.tolist()[: max(0, MAX_LISTED_DIFFERENCES - len(self.listed))]:
            self.listed.append({
                "index": first_index + i, "time_ns": int(batch.now_ns[i]),
                "flow": format_key(batch.keys[i].tobytes()),
                self.name: L.VERDICT_NAMES[int(verdicts[i])], "model": L.VERDICT_NAMES[int(judged[i])]})
        self.count += len(differ)


def _state_differs(state: dict, judge: dict) -> list[str]:
    return sorted(name for name in judge if state.get(name) != judge[name])


class BothEngine:
    """Kernel and the pure-Python spec side by side (the spec judges), and the C accelerator
    as a third column where it is built; the kernel's verdicts are reported."""

    max_frame = TEST_RUN_MAX_FRAME

    def __init__(self, configs: Sequence[ConfigValues], flow_table: int):
        self.kernel = KernelEngine(configs, flow_table)
        self.model = Model(_with_test_clock(configs), flow_table=flow_table, accelerator=False)
        self.fast = (Model(_with_test_clock(configs), flow_table=flow_table, accelerator=True)
                     if accel.available() else None)
        self.frames = 0
        self.kernel_vs_spec = _Divergences("kernel")
        self.fast_vs_spec = _Divergences("accelerator")

    @property
    def divergences(self) -> int:
        return self.kernel_vs_spec.count

    def process_frames(self, batch: Batch, frames: Sequence[bytes]) -> BatchResult:
        prepared_b, prepared = prepared_batch(batch, frames)
        k = self.kernel.run_frames(prepared_b, prepared)
        m = process_batch(self.model, prepared_b)
        self.kernel_vs_spec.add(prepared_b, self.frames, k.verdicts, m.verdicts)
        if self.fast is not None:
            self.fast_vs_spec.add(prepared_b, self.frames, process_batch(self.fast, prepared_b).verdicts,
                                  m.verdicts)
        self.frames += len(prepared)
        return k

    def summary_extra(self) -> dict:
        """What `both` adds to the JSON summary: kernel vs spec, and apart, accelerator vs spec."""
        spec_state = self.model.snapshot()
        differing = _state_differs(self.kernel.snapshot(), spec_state)
        extra = {"divergences": self.kernel_vs_spec.count, "differences": self.kernel_vs_spec.listed,
                 "state_equal": not differing, "state_differs_in": differing, "accelerator": None}
        if self.fast is not None:
            fast_differing = _state_differs(self.fast.snapshot(), spec_state)
            extra["accelerator"] = {"divergences": self.fast_vs_spec.count,
                                    "differences": self.fast_vs_spec.listed,
                                    "state_equal": not fast_differing, "state_differs_in": fast_differing}
            if self.fast_vs_spec.count or fast_differing:
                print(f"natra-sim replay: the C accelerator differs from the spec on "
                      f"{self.fast_vs_spec.count} frames, final state in {fast_differing or 'nothing'} "
                      "(the kernel is judged by the spec)", file=sys.stderr)
        return extra

    def close(self) -> None:
        self.kernel.close()
