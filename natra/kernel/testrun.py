"""Run a loaded program on one crafted frame with BPF_PROG_TEST_RUN.

Owns: the `__sk_buff` context a test run gets (192 bytes, only `tstamp` set,
which the program reads as `now` under NATRA_CFG_TEST_CLOCK) and the result
(the program's return value as a signed int, the frame as it left, the
kernel's average run time).
Rule: time is an argument (`now_ns`); nothing here reads a clock. `len`,
`protocol` and `tstamp_type` must stay zero in the context (the kernel
rejects them). Frames are capped by the kernel at about 3.7 KB, and it refuses
(EINVAL) IPv4 frames shorter than 34 bytes and IPv6 frames shorter than 54:
it pulls the IP header before the program runs.
Must not know: Natra's policy, maps or the model.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from natra.kernel import bpfsys

SKB_CTX_SIZE = 192  # sizeof(struct __sk_buff) on this kernel
SKB_PRIORITY_OFFSET = 32  # offsetof(struct __sk_buff, priority): shaping names the class here
SKB_TSTAMP_OFFSET = 152  # offsetof(struct __sk_buff, tstamp)
SKB_GSO_SEGS_OFFSET = 164  # offsetof(struct __sk_buff, gso_segs): the run's skb gets it
SKB_GSO_SIZE_OFFSET = 176  # offsetof(struct __sk_buff, gso_size)
ETH_HLEN = 14  # the kernel refuses shorter test frames
MIN_IPV4_FRAME = 34  # ... and IPv4 frames without a whole 20-byte header
MIN_IPV6_FRAME = 54  # ... and IPv6 frames without the 40-byte header
TC_ACT_SHOT = 2
TCX_NEXT = -1  # == TC_ACT_UNSPEC
TC_ACT_REDIRECT = 7  # bpf_redirect's verdict (shaping out of the Pod: to the IFB)


@dataclass(frozen=True)
class RunResult:
    retval: int  # the program's return value, signed (TCX_NEXT is -1)
    frame_out: bytes  # the frame after the program (CE marks show here)
    duration_ns: int  # kernel's average ns per run over `repeat`
    priority: int = 0  # skb->priority as the program left it (shaping: the HTB class)


def skb_context(now_ns: int, gso_segs: int = 0, gso_size: int = 0) -> bytes:
    ctx = bytearray(SKB_CTX_SIZE)
    struct.pack_into("=Q", ctx, SKB_TSTAMP_OFFSET, now_ns)
    struct.pack_into("=I", ctx, SKB_GSO_SEGS_OFFSET, gso_segs)
    struct.pack_into("=I", ctx, SKB_GSO_SIZE_OFFSET, gso_size)
    return bytes(ctx)


def run(prog_fd: int, frame: bytes, now_ns: int, repeat: int = 1, gso_segs: int = 0,
        gso_size: int = 0) -> RunResult:
    """Run the program `repeat` times on `frame` with `__sk_buff.tstamp = now_ns`
    (and, to stand in for a GSO super-packet, its segment count and size)."""
    if len(frame) < ETH_HLEN:
        raise ValueError(f"test-run frames need at least {ETH_HLEN} bytes, got {len(frame)}")
    ctx = skb_context(now_ns, gso_segs, gso_size)
    retval, out, duration, ctx_out = bpfsys.prog_test_run(prog_fd, frame, ctx, repeat)
    signed = retval - (1 << 32) if retval & 0x80000000 else retval
    priority = struct.unpack_from("=I", ctx_out, SKB_PRIORITY_OFFSET)[0] if ctx_out else 0
    return RunResult(signed, out, duration, priority)
