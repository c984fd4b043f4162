"""The `natra` command: the CNI plugin when a runtime calls it, a tool when a human does.

Owns: the process edge. With CNI_COMMAND in the environment it reads stdin,
runs natra.cni.plugin.run, writes stdout and exits with its code. Otherwise
it is an argparse CLI whose subcommands come from the SUBCOMMANDS table: each
entry names a module and the functions in it that add the arguments and run
the command, so other modules own their subcommands; only the chosen one is
imported.
Rule: in CNI mode nothing but the plugin's JSON reaches stdout, and nothing
heavy is imported: the call goes first to the node agent when one listens
(natra.cni.agentclient, which imports only what Python loaded at start-up), and
only when none answers does this process import the plugin and run the call
itself, under the container's lock (natra.cni.serial). Module level imports
stay at os, sys and time for that reason; argparse and importlib are imported
by the tool half only. A subcommand whose module needs an extra that is not
installed says which one (`missing_extra`), never a traceback; `natra-sim`
uses the same table.
Must not know: what the subcommands do.
"""

from __future__ import annotations

import os
import sys
import time

import natra


class Subcommand:
    """Where a subcommand lives: its module, help line, and the functions in the module."""

    __slots__ = ("module", "help", "main", "add_arguments")

    def __init__(self, module: str, help: str, main: str = "main",  # noqa: A002 - argparse's word
                 add_arguments: str | None = "add_arguments"):
        self.module = module
        self.help = help
        self.main = main  # function(args: argparse.Namespace) -> int
        self.add_arguments = add_arguments  # function(parser) -> None, optional

    def __repr__(self) -> str:
        return f"Subcommand({self.module!r}, {self.help!r}, main={self.main!r})"


SUBCOMMANDS: dict[str, Subcommand] = {
    "version": Subcommand("natra.cli", "print Natra's version and the CNI versions it speaks",
                          main="version_main", add_arguments=None),
    "demo": Subcommand("natra.lab.demo", "Natra beside the standard bandwidth plugin on this machine"),
    "status": Subcommand("natra.node.status_cli", "show what Natra limits on this node",
                         main="status_main", add_arguments="add_status_arguments"),
    "top": Subcommand("natra.node.status_cli", "live view of limited Pods and heavy hitters",
                      main="top_main", add_arguments="add_top_arguments"),
    "exporter": Subcommand("natra.node.status_cli", "serve Prometheus metrics and the live page",
                           main="exporter_main", add_arguments="add_exporter_arguments"),
    "install": Subcommand("natra.node.install_cli", "install Natra on this node (chain it into the conflist)",
                          main="install_main", add_arguments="add_install_arguments"),
    "uninstall": Subcommand("natra.node.install_cli", "remove Natra from this node",
                            main="uninstall_main", add_arguments="add_uninstall_arguments"),
    "agent": Subcommand("natra.node.agent", "run CNI calls warm for the plugin (the DaemonSet's process)",
                        main="agent_main", add_arguments="add_agent_arguments"),
}


# Third-party modules of the extras (pyproject.toml), by the name they import as.
EXTRA_OF_MODULE = {"numpy": "sim", "scapy": "sim", "matplotlib": "sim", "tqdm": "sim", "dask": "sim",
                   "distributed": "sim", "grpc": "lab"}


def missing_extra(exc: BaseException) -> str | None:
    """'pip install ...' advice when `exc` is an extra's module that is not installed."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    extra = EXTRA_OF_MODULE.get(exc.name.partition(".")[0])
    if extra is None:
        return None
    return f"needs the {extra!r} extra ({exc.name} is not installed): pip install 'natra[{extra}]'"


def version_main(args) -> int:
    from natra.cni import versions

    print(f"natra {natra.__version__} (CNI {', '.join(versions.SUPPORTED_VERSIONS)})")
    return 0


MAX_STDIN_BYTES = 4 * 1024 * 1024  # natra.cni.request's limit; one byte more tells "too large"


_exit_when_answered = False  # set by entry(): this process is the plugin and nothing follows


def run_plugin() -> int:
    from natra.cni import agentclient

    stdin = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
    answered = agentclient.forward(os.environ, stdin)
    if answered is not None:
        code, out, err = answered
        if err:
            sys.stderr.buffer.write(err)
            sys.stderr.buffer.flush()
    else:
        code, out = run_here(os.environ, stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    if answered is not None and _exit_when_answered:
        # The thin client holds nothing to clean up (the agent did the work): leave
        # without the interpreter's teardown, ~1.5 ms of every ADD and DEL.
        os._exit(code)
    return code


def run_here(env, stdin: bytes) -> tuple[int, bytes]:
    """The call in this process, under the container's lock (no agent answered)."""
    from natra.cni import serial
    from natra.cni.plugin import run

    with serial.hold(env) as held:
        if not held and env.get("CNI_CONTAINERID"):
            sys.stderr.write(f"natra WARN: container {env['CNI_CONTAINERID']} lock not held; going ahead\n")
        return run(env, stdin, now=time.time_ns(), stderr=sys.stderr)


def _resolve(entry: Subcommand, attribute: str | None):
    import importlib

    if attribute is None:
        return None
    module = importlib.import_module(entry.module)
    return getattr(module, attribute, None)


def build_parser(chosen: str | None):
    import argparse

    parser = argparse.ArgumentParser(prog="natra", description=natra.__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, entry in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=entry.help, description=entry.help)
        if name == chosen:
            try:
                add = _resolve(entry, entry.add_arguments)
            except ImportError:
                add = None
            if add is not None:
                add(sp)
    return parser


def entry() -> None:
    """The process entry point (console script, `python3 -m natra`, the node bundle)."""
    global _exit_when_answered
    _exit_when_answered = True
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("CNI_COMMAND"):
        return run_plugin()
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    entry = SUBCOMMANDS[args.command]
    try:
        fn = _resolve(entry, entry.main)
    except ImportError as exc:
        fn, why = None, str(exc)
        if missing_extra(exc):
            print(f"natra {args.command}: {missing_extra(exc)}", file=sys.stderr)
            return 2
    else:
        why = f"{entry.module} has no {entry.main}()"
    if fn is None:
        print(f"natra {args.command}: not available in this build ({why})", file=sys.stderr)
        return 2
    try:
        return int(fn(args) or 0)
    except ModuleNotFoundError as exc:  # a lazy import of an extra's module
        if not missing_extra(exc):
            raise
        print(f"natra {args.command}: {missing_extra(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a node tool that cannot read pins or files: say why, no traceback
        print(f"natra {args.command}: {exc}{_privilege_hint(exc)}", file=sys.stderr)
        return 1


def _privilege_hint(exc: OSError) -> str:
    import errno

    if exc.errno in (errno.EPERM, errno.EACCES):
        return " (run as root, or with CAP_BPF and CAP_SYS_ADMIN to read Natra's pins)"
    return ""
