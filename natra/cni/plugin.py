"""The CNI plugin's commands, in the shape of every CNI plugin.

Owns: `run(env, stdin) -> (exit code, stdout bytes)`: parse and validate the
request, make the plan, then one short function per command carries it out;
CniError becomes error JSON and exit 1, anything unforeseen after the request
is understood fails open for ADD/DEL.
Rule: stdout carries exactly one JSON document (or nothing, where the spec
says so); logs go to the Log, never to stdout. Time comes in as `now` (ns).
Must not know: argv, sys.stdin/sys.stdout (natra.cli wires those), the kernel
(natra.cni.executor does that; `run` only hands it the executor's Kernel).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping

from natra.cni import executor, versions
from natra.cni.errors import CniError, Kind
from natra.cni.executor import KERNEL, Kernel
from natra.cni.log import Log
from natra.cni.plan import Plan, make_plan
from natra.cni.request import Request, parse_command, parse_request
from natra.cni.tuning import DEFAULT_LOG_FILE, DEFAULT_LOG_MAX_BYTES
from natra.kernel import ticks

EXIT_OK = 0
EXIT_ERROR = 1


def _json(document: dict) -> bytes:
    return json.dumps(document).encode() + b"\n"


def cmd_add(plan: Plan, log: Log, now: int, kernel: Kernel = KERNEL) -> bytes:
    return _json(executor.add(plan, log, now, kernel))


def cmd_del(plan: Plan, log: Log, now: int, kernel: Kernel = KERNEL) -> bytes:
    executor.delete(plan, log, now, kernel)
    return b""


def cmd_check(plan: Plan, log: Log, now: int, kernel: Kernel = KERNEL) -> bytes:
    executor.check(plan, log, now, kernel)
    return b""


def cmd_status(plan: Plan, log: Log, now: int, kernel: Kernel = KERNEL) -> bytes:
    executor.status(plan, log, now, kernel)
    return b""


def cmd_gc(plan: Plan, log: Log, now: int, kernel: Kernel = KERNEL) -> bytes:
    executor.gc(plan, log, now, kernel)
    return b""


COMMANDS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status, "GC": cmd_gc}


def cmd_version(request: Request) -> bytes:
    return _json(versions.version_info(request.cni_version))


def _log_for(env: Mapping[str, str], request: Request | None, plan: Plan | None, stderr) -> Log:
    settings = plan.settings if plan else None
    context = env.get("CNI_COMMAND", "-") or "-"
    if request is not None:
        context = f"{request.command} {request.container_id or '-'} {request.pod or '-'}"
    return Log(path=settings.log_file if settings else env.get("NATRA_LOG_FILE", DEFAULT_LOG_FILE),
               max_bytes=settings.log_max_bytes if settings else DEFAULT_LOG_MAX_BYTES,
               stderr=stderr if stderr is not None else sys.stderr, context=context)


def _request_version(stdin: bytes) -> str:
    """The version an error should carry: the config's if readable and supported."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError, TypeError, RecursionError):
        return versions.LATEST
    return version if isinstance(version, str) and versions.is_supported(version) else versions.LATEST


def run(env: Mapping[str, str], stdin: bytes, *, now: int, stderr=None, log: Log | None = None,
        kernel: Kernel = KERNEL) -> tuple[int, bytes]:
    """One CNI call: (exit code, stdout). `now` is ns since the epoch, for the log; `kernel` is
    what the executor acts on (the real kernel unless a test substitutes a stand-in)."""
    request = plan = None
    try:
        request = parse_request(env, stdin)
        if request.command == "VERSION":
            return EXIT_OK, cmd_version(request)
        plan = make_plan(request, env, clock_tick_ns=ticks.coarse_tick_ns())
        log = log or _log_for(env, request, plan, stderr)
        return EXIT_OK, COMMANDS[request.command](plan, log, now, kernel)
    except CniError as err:
        log = log or _log_for(env, request, plan, stderr)
        log.error(now, f"error {err.code}: {err}")
        return EXIT_ERROR, err.encode(request.cni_version if request else _request_version(stdin))
    except Exception as exc:  # noqa: BLE001 - the last line of fail-open
        log = log or _log_for(env, request, plan, stderr)
        command = request.command if request else env.get("CNI_COMMAND", "")
        if plan is not None and command in ("ADD", "DEL"):
            log.error(now, f"{command} failed open on an unexpected error: {exc!r}")
            if command == "ADD":
                executor.record_failed_open(plan, now, "unexpected", repr(exc))
            return EXIT_OK, (_json(plan.result) if command == "ADD" else b"")
        err = CniError.of(Kind.INVALID_CONFIG if plan is None else Kind.IO_FAILURE,
                          f"unexpected error in {command or 'request'}", repr(exc))
        log.error(now, f"error {err.code}: {err}")
        return EXIT_ERROR, err.encode(request.cni_version if request else _request_version(stdin))


__all__ = ["run", "parse_command", "cmd_add", "cmd_del", "cmd_check", "cmd_status", "cmd_gc", "cmd_version"]
