"""The node's timer tick, as the coarse clock shows it, and the data path's tick clock.

Owns: `coarse_tick_ns`, the resolution of CLOCK_MONOTONIC_COARSE: one timer tick
(1/HZ), by which that clock may lag the fine one. The plan takes R x tick off a
policed bucket that reads a tick-grained clock (natra.kernel.params.to_config), and
the loader writes it where the program reads the tick clock, jiffies x tick
(bpf/natra.h). `tick_clock_ns`: that clock as user space can read it, for tools that
compare the program's times with now.
Rule: `coarse_tick_ns` is one cheap syscall, read once per process; 0 when it
cannot be read (the data path then keeps the fine clock). `tick_clock_ns` is one
times(2) per call, off the CNI path (status and the exporter).
Must not know: Pods, configs.
"""

from __future__ import annotations

import functools
import os
import time

CLOCK_MONOTONIC_COARSE = 6  # <time.h>; what bpf_ktime_get_coarse_ns reads


@functools.cache
def coarse_tick_ns() -> int:
    try:
        return round(time.clock_getres(CLOCK_MONOTONIC_COARSE) * 1e9)
    except OSError:
        return 0


def tick_clock_ns() -> int:
    """Now on the data path's tick clock (jiffies x tick, ns), to within 10 ms: times(2)
    counts the same jiffies, in USER_HZ (100/s) steps."""
    return round(os.times().elapsed * 1e9)
