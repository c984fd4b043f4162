"""`natra-sim`: the command line of simulations and replays.

Owns: the subcommand table and `main`, which only wires argv to a
subcommand's `run(args) -> exit code`.
Rule: subcommands are pluggable: `SUBCOMMANDS[name] = (add_arguments, run)`.
A module listed in PLUGIN_MODULES that exists is imported first and may
register itself, either by calling `register` or by exposing its own
`SUBCOMMANDS` dict of the same shape; a missing one is skipped silently.
Without the `sim` extra (numpy, scapy, matplotlib, tqdm) every invocation,
--help included, says which extra to install and exits 2: the subcommands'
modules, which need it, are imported only inside `main`.
Must not know: what any subcommand does.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from natra.cli import missing_extra

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

SUBCOMMANDS: dict[str, tuple[AddArguments, Run]] = {}
# Modules that add subcommands (sweep, bench) when they exist.
PLUGIN_MODULES = ("natra.simulations.sweep", "natra.simulations.recommend", "natra.simulations.bench",
                  "natra.simulations.commands")


def register(name: str, add_arguments: AddArguments, run: Run) -> None:
    SUBCOMMANDS[name] = (add_arguments, run)


def _load_plugins() -> None:
    from natra.simulations import replay  # numpy and scapy: only once a command runs

    SUBCOMMANDS.setdefault("replay", (replay.add_arguments, replay.run))
    for module_name in PLUGIN_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                continue
            raise
        SUBCOMMANDS.update(getattr(module, "SUBCOMMANDS", {}))


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: 'natra-sim sweep: error: ...' and exit 2, no usage dump."""

    def error(self, message: str):
        # One line: join the message's lines, but keep the spaces within them (a refused
        # value is quoted as given: '  ' must not read ' ').
        one_line = " ".join(line.strip() for line in message.splitlines() if line.strip())
        self.exit(2, f"{self.prog}: error: {one_line} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
    parser = Parser(prog="natra-sim", description="Natra simulations and capture replays")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, run) in sorted(SUBCOMMANDS.items()):
        doc = (run.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else None)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --help, or a one-line usage error (exit 2)
            return done.code if isinstance(done.code, int) else 2
        return args._run(args)
    except ModuleNotFoundError as exc:
        if not missing_extra(exc):
            raise
        print(f"natra-sim: {missing_extra(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
