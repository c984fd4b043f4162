"""The workload generators' knobs as natra-sim options: names, grammar, help.

Owns: which NAME=VALUE pairs `--workload-arg` accepts for each workload, read
from the generators' own signatures (so a new keyword is a new knob), the
grammar of each value (units.py: rates for *_bps, durations for *_ns, sizes
for *_bytes, true/false for flags, whole numbers and decimals otherwise), and
the help text that lists them.
Rule: an unknown name or a bad value is a ValueError of one line that names
the workload and the knobs it has.
Must not know: what a knob does inside its generator.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Iterable
from dataclasses import dataclass

from natra.simulations import units
from natra.simulations import workloads as W

# Keywords a generator takes that are not knobs: the scene (own options) or plumbing.
NOT_KNOBS = frozenset({"seed", "rate_bps", "duration_ns", "decide", "drop_verdicts", "mark_verdicts",
                       "dist"})
KNOB_HELP = {
    "load": "offered bytes / (rate x duration), > 0",
    "flows": "flows in the run (sets the arrival rate; overrides load)",
    "concurrency": "mean flows active at once (sets the flows' send rate)",
    "n_flows": "flows in the run",
    "flows_per_window": "fresh small flows in every window",
    "mice_load": "mice's offered bytes / (rate x duration)",
    "ipv6_fraction": "share of flows over IPv6, 0..1",
    "aimd_ecn": "TCP-like senders set ECT(0): true/false",
}


FRACTION_KNOBS = frozenset({"ipv6_fraction", "elephant_share", "start_spread"})  # in 0..1
MAY_BE_ZERO = frozenset({"n_elephants", "n_aimd"})  # counts that may be 0
MAX_LOAD = 100.0  # loads are multiples of the rate; 100x is already absurd


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str  # rate, duration, size, bool, count, number
    default: object

    def parse(self, text: str):
        what = f"workload argument {self.name}"
        try:
            if self.kind == "rate":
                return units.rate(text)
            if self.kind == "duration":
                return units.duration_ns(text, what=what)
            if self.kind == "size":
                return units.size(text, minimum=W.MIN_FRAME_BYTES, maximum=W.GSO_FRAME_BYTES, what=what) \
                    if self.name.endswith("frame_bytes") else units.size(text, minimum=W.MIN_FRAME_BYTES,
                                                                         what=what)
            if self.kind == "count":
                return units.count(text, minimum=0 if self.name in MAY_BE_ZERO else 1,
                                   maximum=W.MAX_V4_PEERS, what=what)
            if self.kind == "bool":
                if text.lower() in ("true", "1", "yes"):
                    return True
                if text.lower() in ("false", "0", "no"):
                    return False
                raise argparse.ArgumentTypeError(f"{what} {text!r}: true or false")
            if self.name in FRACTION_KNOBS:
                return units.number(text, minimum=0.0, maximum=1.0, what=what)
            return units.number(text, minimum=0.0, maximum=MAX_LOAD, what=what, open_below=True)
        except argparse.ArgumentTypeError as e:
            raise ValueError(str(e)) from None

    def shown_default(self) -> str:
        if self.default is None:
            return "auto"
        if self.kind == "duration":
            return units.format_ns(int(self.default))
        return str(self.default).lower() if isinstance(self.default, bool) else f"{self.default:g}"


def _kind(name: str, default) -> str:
    if name.endswith("_bps"):
        return "rate"
    if name.endswith("_ns"):
        return "duration"
    if name.endswith("_bytes"):
        return "size"
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int) or name in ("flows", "concurrency"):
        return "count"
    return "number"


def knobs(workload: str) -> dict[str, Knob]:
    """The knobs of one workload, by name, in the generator's order."""
    if workload not in W.WORKLOAD_NAMES:
        raise ValueError(f"unknown workload {workload!r}; known: {', '.join(W.WORKLOAD_NAMES)}")
    generator = W.GENERATORS[workload]
    out = {}
    for p in inspect.signature(generator).parameters.values():
        if p.kind is not p.KEYWORD_ONLY or p.name in NOT_KNOBS:
            continue
        out[p.name] = Knob(p.name, _kind(p.name, p.default), p.default)
    return out


def parse_options(workloads: Iterable[str], items: Iterable[str]) -> tuple:
    """['load=1.2', 'flows=500'] -> (('flows', 500), ('load', 1.2)), checked against every workload."""
    workloads = list(workloads)
    tables = {w: knobs(w) for w in workloads}
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name or not text:
            raise ValueError(f"workload argument {item!r} is not NAME=VALUE")
        for w, table in tables.items():
            if name not in table:
                raise ValueError(f"workload {w} has no argument {name!r}; it has: {', '.join(table)}")
            out[name] = table[name].parse(text.strip())
    return tuple(sorted(out.items()))


def help_text() -> str:
    """Every workload's knobs with their defaults, for --help."""
    lines = []
    for w in W.WORKLOAD_NAMES:
        table = knobs(w)
        lines.append(f"{w}: " + ", ".join(f"{k.name}={k.shown_default()}" for k in table.values()))
    notes = "; ".join(f"{k}: {v}" for k, v in KNOB_HELP.items())
    return "\n".join(lines) + "\n(" + notes + ")"
