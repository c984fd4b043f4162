"""The node's timer tick, as the coarse clock shows it.

Owns: `coarse_tick_ns`, the resolution of CLOCK_MONOTONIC_COARSE: one timer tick
(1/HZ), by which that clock may lag the fine one. The plan takes R x tick off a
policed bucket that reads it (natra.kernel.params.to_config).
Rule: one cheap syscall, read once per process; 0 when it cannot be read (the
data path then keeps the fine clock).
Must not know: Pods, configs.
"""

from __future__ import annotations

import functools
import time

CLOCK_MONOTONIC_COARSE = 6  # <time.h>; what bpf_ktime_get_coarse_ns reads


@functools.cache
def coarse_tick_ns() -> int:
    try:
        return round(time.clock_getres(CLOCK_MONOTONIC_COARSE) * 1e9)
    except OSError:
        return 0
