"""One CNI call per container at a time, across the node agent and the plugin's own process.

Owns: the per-container lock file `<lock dir>/<container id>` and its flock.
Runtimes never run two calls for one container at once, but with the node
agent there are two actors: a client that stopped waiting for a wedged agent
runs the call itself while the agent may still be in it. The lock makes the
second one wait for the first, so the two never interleave their kernel steps.
Rule: the wait is bounded (`timeout_s`); past it the call goes ahead unlocked
and `held` says so, for the log (a holder stuck that long is wedged in the
kernel, and a Pod start must not wait on it). Lock files are a few bytes each
under /run (tmpfs), removed by DEL.
Must not know: what the call does.
"""

from __future__ import annotations

import fcntl
import os
import time

LOCK_DIR_ENV = "NATRA_LOCK_DIR"
DEFAULT_LOCK_DIR = "/run/natra/lock"
DEFAULT_TIMEOUT_S = 10.0
POLL_S = 0.005


def lock_dir(env) -> str:
    return env.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR


def _name_ok(container_id: str) -> bool:
    return (0 < len(container_id) <= 200 and "/" not in container_id and "\0" not in container_id
            and container_id not in (".", ".."))


class hold:  # noqa: N801 - used as `with serial.hold(env) as held:`
    """Hold the lock of env's CNI_CONTAINERID for the block; `as` gives True when held.

    False (and nothing locked) when the call names no valid container, the lock
    file cannot be made, or the wait ran out."""

    def __init__(self, env, *, timeout_s: float = DEFAULT_TIMEOUT_S, clock=time.monotonic, sleep=time.sleep):
        self.env, self.timeout_s, self.clock, self.sleep = env, timeout_s, clock, sleep
        self.container_id = env.get("CNI_CONTAINERID", "")
        self.fd = -1
        self.held = False

    def __enter__(self) -> bool:
        if not _name_ok(self.container_id):
            return False
        directory = lock_dir(self.env)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self.fd = os.open(os.path.join(directory, self.container_id),
                              os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return False
        give_up = self.clock() + self.timeout_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.held = True
                return True
            except BlockingIOError:
                if self.clock() >= give_up:
                    return False
                self.sleep(POLL_S)
            except OSError:
                return False

    def __exit__(self, *exc) -> None:
        if self.fd < 0:
            return
        if self.held and self.env.get("CNI_COMMAND") == "DEL":
            try:
                os.unlink(os.path.join(lock_dir(self.env), self.container_id))
            except OSError:
                pass
        os.close(self.fd)  # releases the flock
        self.fd = -1
