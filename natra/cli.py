"""The `natra` command: the CNI plugin when a runtime calls it, a tool when a human does.

Owns: the process edge. With CNI_COMMAND in the environment it reads stdin,
runs natra.cni.plugin.run, writes stdout and exits with its code. Otherwise
it is an argparse CLI whose subcommands come from the SUBCOMMANDS table: each
entry names a module and the functions in it that add the arguments and run
the command, so other modules own their subcommands; only the chosen one is
imported.
Rule: in CNI mode nothing but the plugin's JSON reaches stdout, and nothing
heavy is imported. A subcommand whose module needs an extra that is not
installed says which one (`missing_extra`), never a traceback; `natra-sim`
uses the same table.
Must not know: what the subcommands do.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import time
from dataclasses import dataclass

import natra


@dataclass(frozen=True)
class Subcommand:
    module: str
    help: str
    main: str = "main"  # function(args: argparse.Namespace) -> int
    add_arguments: str | None = "add_arguments"  # function(parser) -> None, optional


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


def version_main(args: argparse.Namespace) -> int:
    from natra.cni import versions

    print(f"natra {natra.__version__} (CNI {', '.join(versions.SUPPORTED_VERSIONS)})")
    return 0


def run_plugin() -> int:
    from natra.cni.plugin import run
    from natra.cni.request import MAX_STDIN_BYTES

    stdin = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)  # one byte more tells "too large"
    code, out = run(os.environ, stdin, now=time.time_ns(), stderr=sys.stderr)
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    return code


def _resolve(entry: Subcommand, attribute: str | None):
    if attribute is None:
        return None
    module = importlib.import_module(entry.module)
    return getattr(module, attribute, None)


def build_parser(chosen: str | None) -> argparse.ArgumentParser:
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
    if exc.errno in (errno.EPERM, errno.EACCES):
        return " (run as root, or with CAP_BPF and CAP_SYS_ADMIN to read Natra's pins)"
    return ""
