"""Fixtures every test folder may use.

Owns: clean-up of the node-wide pin root (/sys/fs/bpf/natra) for the tests
that drive Natra exactly as a node would (the demo, the benchmarks) and so
cannot point it at a private bpffs. Every other kernel test uses a private root;
a session-wide watch removes the root if any other test makes it and leaves it
empty, and names that test in the summary so it can be fixed.
Also: CI's refusal to skip (NATRA_REQUIRE_KERNEL=1 turns every skip, at
collection or in a test, into a failure; ci_tally.py has the rule) and the
summary line of what the kernel tests ran (`natra tally: ...`).
"""

from __future__ import annotations

import contextlib
import os

import ci_tally
import pytest

from natra.kernel.pins import DEFAULT_ROOT as DEFAULT_PIN_ROOT

_appeared_in: list[str] = []
_removed_at_end: list[bool] = []


def _remove_if_empty(path: str) -> bool:
    with contextlib.suppress(FileNotFoundError, OSError):
        os.rmdir(path)  # fails (and stays) if anything is still pinned in it
        return True
    return False


@pytest.fixture(scope="module")
def default_pin_root():
    """Remove /sys/fs/bpf/natra afterwards if this module made it and left it empty."""
    existed = os.path.isdir(DEFAULT_PIN_ROOT)
    yield DEFAULT_PIN_ROOT
    if not existed:
        _remove_if_empty(DEFAULT_PIN_ROOT)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    before = os.path.isdir(DEFAULT_PIN_ROOT)
    yield
    if not before and os.path.isdir(DEFAULT_PIN_ROOT) and "default_pin_root" not in item.fixturenames:
        _appeared_in.append(item.nodeid)


@pytest.fixture(scope="session", autouse=True)
def node_pin_root_as_found():
    """Leave /sys/fs/bpf/natra as the run found it, when what a test left is an empty directory."""
    existed = os.path.isdir(DEFAULT_PIN_ROOT)
    yield
    if not existed and os.path.isdir(DEFAULT_PIN_ROOT):
        _removed_at_end.append(_remove_if_empty(DEFAULT_PIN_ROOT))


def _skip_reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _refuse_skip(report) -> None:
    """Under NATRA_REQUIRE_KERNEL=1 a skip (other than a not-applicable one) fails."""
    if not report.skipped or hasattr(report, "wasxfail") or not ci_tally.required():
        return
    reason = _skip_reason(report.longrepr)
    if reason.removeprefix("Skipped: ").startswith(ci_tally.NOT_APPLICABLE):
        return
    report.outcome = "failed"
    report.longrepr = f"{ci_tally.REQUIRE_ENV}=1 (CI) refuses to skip: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _refuse_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _refuse_skip(outcome.get_result())


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(ci_tally.summary_line())
    for nodeid in _appeared_in:
        outcome = "removed at the end" if any(_removed_at_end) else "left in place"
        terminalreporter.write_line(f"natra: {DEFAULT_PIN_ROOT} appeared during {nodeid} ({outcome})")
