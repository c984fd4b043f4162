"""`natra status` and `natra top`: what Natra does to each Pod, for a person.

Owns: the text shown to operators. `status` prints every Pod Natra manages on
this node once (namespace/name, container ID, interface, attach mode, limits
per direction, counters by class and action, heavy hitters) as a table, or
with `--json` the document that the exporter serves at /api/pods. `top`
redraws a table of Pods and their heavy hitters every interval, with rates
from counter growth between two snapshots (q or Ctrl-C quits).

Rule: the renderers (`render_status`, `render_top`) are pure: views, rates
and sizes in, text out. Reading pins, the clock, the terminal and sleeping
stay in the `run_*` functions at the bottom.
Must not know: map layouts, bpf(2), HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time
from collections.abc import Callable

from natra.node import observe

DEFAULT_INTERVAL_S = 1.0
TOP_HITTERS = 3  # heavy hitters per direction in `top` (status lists observe.DEFAULT_TOP)
CLEAR_SCREEN = "\x1b[H\x1b[2J"
QUIT_KEYS = ("q", "Q")


# ---- units for people ----------------------------------------------------------------------

def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # unreachable; keeps type checkers calm


def human_bits(n: float) -> str:
    for unit in ("bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"):
        if abs(n) < 1000 or unit == "Tbit/s":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} Tbit/s"


def _limit_text(d: observe.DirectionView) -> str:
    if d.limit is None:
        return "not limited"
    lim = d.limit
    return (f"{human_bits(lim.rate_bps)}, burst {human_bytes(lim.burst_bytes)}, reserve "
            f"{human_bytes(lim.reserve_bytes)}, heavy above {human_bytes(lim.threshold_bytes)}"
            f"/{lim.window_ns // 1_000_000} ms{', ECN' if lim.ecn else ''}")


def _title(v: observe.PodView) -> str:
    return f"{v.namespace}/{v.pod}" if v.namespace else v.pod


# ---- status ------------------------------------------------------------------------------

def render_status(views: list[observe.PodView]) -> str:
    """The human form of `natra status`."""
    if not views:
        return "natra: no Pod on this node has a Natra data path\n"
    out = []
    for v in sorted(views, key=lambda v: (v.namespace, v.pod, v.container_id)):
        out.append(f"{_title(v)}  (uid {v.uid})")
        out.append(f"  container {v.container_id}  interface {v.interface}  mode {v.attach_mode}"
                   f"  heavy-flow table {sum(d.flow_entries for d in v.directions) + v.unassigned_flows}"
                   f"/{v.flow_table_size}")
        for d in v.directions:
            out.append(f"  {d.direction:<8} {_limit_text(d)}{'' if d.attached else '  (not attached)'}")
            if not d.limited and not d.counters.get("frames", 0):
                continue
            out.append(f"    {'class':<13}{'action':<7}{'packets':>14}{'bytes':>16}")
            for t in d.traffic:
                if t.packets or t.klass != observe.CLASS_NONE:
                    out.append(f"    {t.klass:<13}{t.action:<7}{t.packets:>14,}{t.bytes:>16,}")
            c = d.counters
            out.append(f"    frames {c.get('frames', 0):,}  bytes {c.get('bytes', 0):,}"
                       f"  ipv4 {c.get('ipv4', 0):,}  ipv6 {c.get('ipv6', 0):,}"
                       f"  non-ip {c.get('non_ip', 0):,}"
                       f"  fragments {c.get('fragment', 0):,}  truncated {c.get('truncated', 0):,}")
            out.append(f"    bucket {human_bytes(d.backlog_bytes)} owed  heavy flows now {d.heavy_active}"
                       f"  new heavy entries {c.get('flow_new', 0):,}")
            if d.heavy_hitters:
                out.append(f"    {'heavy hitter':<52}{'estimate':>12}{'passed':>12}{'dropped':>12}  state")
                for h in d.heavy_hitters:
                    state = "heavy" if h.active else f"idle {h.idle_ns / 1e9:.1f}s"
                    out.append(f"    {h.flow:<52}{human_bytes(h.estimate_bytes):>12}"
                               f"{human_bytes(h.passed_bytes):>12}"
                               f"{human_bytes(h.dropped_bytes):>12}  {state}")
        out.append("")
    return "\n".join(out)


def status_json(views: list[observe.PodView], now: int) -> str:
    return json.dumps(observe.to_json(views, now), indent=2, sort_keys=False) + "\n"


# ---- top -----------------------------------------------------------------------------------

def render_top(views: list[observe.PodView], rates: dict[tuple[str, str], observe.DirectionRates],
               elapsed_ns: int, hitters: int = TOP_HITTERS) -> str:
    """One frame of `natra top`: a line per Pod direction, its recent heavy hitters under it.

    Busiest Pods first; a direction that is neither limited nor carried traffic is left out.
    """
    head = (f"natra top - {len(views)} Pod{'s' if len(views) != 1 else ''}, rates over "
            f"{elapsed_ns / 1e9:.1f} s (q quits)")
    lines = [head, "",
             f"{'POD':<28}{'DIR':<9}{'LIMIT':>12}{'PASSING':>13}{'DROPPING':>13}{'HEAVY':>6}  MICE / HEAVY"]
    busy = {cid: 0.0 for cid in (v.container_id for v in views)}
    for (cid, _), r in rates.items():
        busy[cid] = busy.get(cid, 0.0) + r.offered_bps
    for v in sorted(views, key=lambda v: (-busy[v.container_id], _title(v))):
        for d in v.directions:
            r = rates.get((v.container_id, d.direction))
            if r is None or (not d.limited and not d.counters.get("frames", 0)):
                continue
            limit = human_bits(d.limit.rate_bps) if d.limit else "-"
            lines.append(f"{_title(v)[:27]:<28}{d.direction:<9}{limit:>12}{human_bits(r.passed_bps):>13}"
                         f"{human_bits(r.dropped_bps):>13}{d.heavy_active:>6}  "
                         f"{human_bits(r.mouse_bps)} / {human_bits(r.heavy_bps)}")
            shown = [h for h in d.heavy_hitters if h.recent][:hitters]
            width = max((len(h.flow) for h in shown), default=0)
            for h in shown:
                state = "" if h.active else f"  idle {h.idle_ns / 1e9:.1f}s"
                lines.append(f"    {h.flow:<{width}}  estimate {human_bytes(h.estimate_bytes):>9}"
                             f"  offered {human_bits(r.flows_bps.get(h.key, 0.0)):>13}{state}")
    if not views:
        lines.append("(no Pod on this node has a Natra data path)")
    return "\n".join(lines) + "\n"


# ---- effects ----------------------------------------------------------------------------------

Reader = Callable[[], tuple[list[observe.PodView], int]]


def _reader(root: str | None, top: int) -> Reader:
    def read() -> tuple[list[observe.PodView], int]:
        now = time.monotonic_ns()  # the clock of bpf_ktime_get_ns
        return observe.collect(root, now, top), now
    return read


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="the document /api/pods serves")
    parser.add_argument("--top", type=int, default=observe.DEFAULT_TOP, help="heavy hitters per direction")
    parser.add_argument("--root", default=None, help="bpffs root of Natra's pins")


def status_main(args: argparse.Namespace) -> int:
    views, now = _reader(args.root, args.top)()
    sys.stdout.write(status_json(views, now) if args.json else render_status(views))
    return 0


def add_top_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, help="seconds between frames")
    parser.add_argument("--iterations", type=int, default=0, help="frames to draw, then exit (0: until q)")
    parser.add_argument("--once", action="store_true", help="draw one frame and exit (--iterations 1)")
    parser.add_argument("--no-clear", action="store_true", help="do not clear the screen between frames")
    parser.add_argument("--root", default=None, help="bpffs root of Natra's pins")


class _Keys:
    """Single keystrokes from a terminal stdin (cbreak mode), restored on exit."""

    def __init__(self) -> None:
        self.saved = None
        if sys.stdin.isatty():
            import termios
            import tty

            self.saved = termios.tcgetattr(sys.stdin.fileno())
            tty.setcbreak(sys.stdin.fileno())

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if a quit key was pressed."""
        if self.saved is None:
            time.sleep(seconds)
            return False
        ready, _, _ = select.select([sys.stdin], [], [], seconds)
        return bool(ready) and os.read(sys.stdin.fileno(), 1).decode(errors="ignore") in QUIT_KEYS

    def close(self) -> None:
        if self.saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self.saved)


def top_main(args: argparse.Namespace) -> int:
    frames = 1 if args.once else args.iterations
    read = _reader(args.root, observe.DEFAULT_TOP)
    keys = _Keys()
    try:
        before, then = read()
        drawn = 0
        while not frames or drawn < frames:
            if keys.wait(args.interval):
                break
            after, now = read()
            text = render_top(after, observe.rates(before, after, now - then), now - then)
            sys.stdout.write(text if args.no_clear else CLEAR_SCREEN + text)
            sys.stdout.flush()
            before, then, drawn = after, now, drawn + 1
    except KeyboardInterrupt:
        pass
    finally:
        keys.close()
    return 0


def exporter_main(args: argparse.Namespace) -> int:
    from natra.node import exporter  # prometheus_client only when serving

    return exporter.run(args)


def add_exporter_arguments(parser: argparse.ArgumentParser) -> None:
    from natra.node import exporter

    exporter.add_arguments(parser)


# name -> (help, add arguments, run). natra/cli.py's SUBCOMMANDS registry should name this module
# with these functions (status_main/add_status_arguments, top_main/add_top_arguments,
# exporter_main/add_exporter_arguments); `python3 -m natra.node.status_cli` runs them without it.
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {
    "status": ("every Pod Natra manages here: limits, counters, heavy hitters",
               add_status_arguments, status_main),
    "top": ("live table of Pod bandwidth and heavy hitters", add_top_arguments, top_main),
    "exporter": ("serve Prometheus metrics, /api/pods and a live page",
                 add_exporter_arguments, exporter_main),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="natra")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (text, add, run) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        add(p)
        p.set_defaults(run=run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
