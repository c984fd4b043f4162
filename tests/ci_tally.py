"""What the kernel tests actually ran, counted for the run's summary line.

Owns: the counters the differential, replay and mutation tests add to
(differential examples and frames, frames replayed over veths, mutants
planted and killed) and the rule that decides whether a skip is allowed.
tests/conftest.py prints the counters at the end of the run (one line,
`natra tally: ...`) and, under NATRA_REQUIRE_KERNEL=1 (CI, .ci/run), turns
every skip into a failure: a runner without root, bpffs, the built objects,
containerd or a tool would otherwise report green with nothing run.
Rule: a skip that is right on every machine (the test does not apply to this
parameter) says so with a reason starting NOT_APPLICABLE; only those stay skips.
Must not know: what the tests check.
"""

from __future__ import annotations

import os

REQUIRE_ENV = "NATRA_REQUIRE_KERNEL"
NOT_APPLICABLE = "not applicable: "

# Names as printed, in print order.
DIFF_EXAMPLES = "differential examples"
DIFF_FRAMES = "differential frames"
VETH_FRAMES = "frames replayed over veths"
MUTANTS_KILLED = "mutants killed"
MUTANTS_PLANTED = "mutants planted"

COUNTS: dict[str, int] = {DIFF_EXAMPLES: 0, DIFF_FRAMES: 0, VETH_FRAMES: 0, MUTANTS_KILLED: 0,
                          MUTANTS_PLANTED: 0}


def add(name: str, n: int = 1) -> None:
    COUNTS[name] += n


def required() -> bool:
    """CI mode: a skip is a failure (NATRA_REQUIRE_KERNEL=1)."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def summary_line() -> str:
    return (f"natra tally: {COUNTS[DIFF_EXAMPLES]} differential examples "
            f"({COUNTS[DIFF_FRAMES]} frames), {COUNTS[VETH_FRAMES]} frames replayed over veths, "
            f"{COUNTS[MUTANTS_KILLED]} of {COUNTS[MUTANTS_PLANTED]} mutants killed")
