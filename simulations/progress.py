"""Progress of long steps on stderr, also while a step runs.

Owns: `Progress`, a tqdm bar that a background thread redraws every
HEARTBEAT_S seconds (so its elapsed time and current stage move even while
one numpy call or one sweep point runs for minutes), with a stage text
beside it; and `stage(text)`, which the workload generators call between
their steps to say where they are (it does nothing unless a Progress is
listening in this thread's context).
Rule: reporting never changes what is computed; every line goes to stderr.
Must not know: what the steps compute.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from collections.abc import Callable, Iterator

HEARTBEAT_S = 2.0  # seconds between redraws of a bar that has not moved

_LISTENER: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "natra_sim_progress", default=None)


def stage(text: str) -> None:
    """Tell the listening Progress (if any) which step is running now."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(text)


@contextlib.contextmanager
def listening(listener: Callable[[str], None]) -> Iterator[None]:
    """Route stage() calls made in this context to `listener` (a Dask worker's event, a bar's text)."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


class Progress:
    """A bar for `total` units (None: an open count; unit "": elapsed time only) that keeps moving
    while a step runs.

    Use as a context manager; `update(n)` counts units done, `stage(text)`
    names the step in progress. `enabled=False` prints nothing.
    """

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", *, enabled: bool = True,
                 file=None, heartbeat_s: float | None = None):
        from tqdm import tqdm

        self.enabled = enabled
        counted = "{n_fmt} " + unit + "s, " if unit else ""
        shape = {} if total is not None else {"bar_format": "{desc}: " + counted + "{elapsed}{postfix}"}
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=file or sys.stderr,
                        dynamic_ncols=True, mininterval=0.5, **shape)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = None
        self._token = None
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s

    def __enter__(self) -> Progress:
        self._token = _LISTENER.set(self.stage)
        if self.enabled:
            self._thread = threading.Thread(target=self._beat, name="natra-sim-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                self.bar.refresh()

    def stage(self, text: str) -> None:
        with self._lock:
            self.bar.set_postfix_str(text, refresh=self.enabled)

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.bar.update(n)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._token is not None:
            _LISTENER.reset(self._token)
            self._token = None
        self.bar.close()
