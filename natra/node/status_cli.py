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


def human_ns(ns: float) -> str:
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


def human_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def since_text(n: observe.NotLimited, wall_ns: int) -> str:
    if not n.since_ns:
        return "since an unknown time"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(n.since_ns / 1e9))
    return f"since {stamp} ({human_age((wall_ns - n.since_ns) / 1e9)} ago)"


def render_not_limited(missing: list[observe.NotLimited], wall_ns: int) -> list[str]:
    """The NOT LIMITED section: every Pod direction that asked for a limit and has none."""
    if not missing:
        return []
    out = [f"NOT LIMITED: {len(missing)} Pod direction{'s' if len(missing) != 1 else ''} asked for a "
           "limit and Natra failed open"]
    for n in missing:
        title = f"{n.namespace}/{n.pod}" if n.namespace else n.pod
        out.append(f"  {title}  {n.direction}  cause {n.cause}  {since_text(n, wall_ns)}")
        out.append(f"    container {n.container_id}: {n.message}")
    out.append("")
    return out


def _unlocked_text(d: observe.DirectionView) -> str:
    """What follows a shaped direction's mode when it runs `sketchLock: false`."""
    return "" if d.sketch_lock else ", sketch unlocked"


def _mode_text(d: observe.DirectionView) -> str:
    if d.fallback:
        return f"  mode police (shaping fell back: {d.fallback})"
    if d.mode == observe.MODE_SHAPE:
        return (f"  mode shape on {d.device}" if d.device else "  mode shape") + _unlocked_text(d)
    return "  mode police" if d.limited else ""


def render_classes(d: observe.DirectionView) -> list[str]:
    if not d.classes:
        return [f"    shaping tree not found on {d.device or 'its device'}"] if d.mode == observe.MODE_SHAPE \
            else []
    out = [f"    {'class':<10}{'sent packets':>14}{'sent bytes':>16}{'drops':>10}{'backlog':>12}"
           f"{'queued':>9}{'delay':>11}{'share':>14}"]
    for c in d.classes:
        out.append(f"    {c.name:<10}{c.sent_packets:>14,}{c.sent_bytes:>16,}{c.drops_packets:>10,}"
                   f"{human_bytes(c.backlog_bytes):>12}{c.backlog_packets:>9,}{human_ns(c.backlog_delay_ns):>11}"
                   f"{human_bits(c.share_bps):>14}")
    return out


# ---- status ------------------------------------------------------------------------------

def _overflow_text(overflows: int, size: int) -> str:
    """What `natra status` says when heavy flows had to share slots of the flow table."""
    if not overflows:
        return ""
    return (f"  TABLE OVERFLOW: {overflows:,} heavy frames shared another live flow's slot"
            f" (the {size}-slot table is small for the Pod's heavy flows; raise flowTable)")


def render_status(views: list[observe.PodView], missing: list[observe.NotLimited] | None = None,
                  wall_ns: int = 0, root_note: str = "") -> str:
    """The human form of `natra status`: the NOT LIMITED section first, then every Pod."""
    out = render_not_limited(missing or [], wall_ns)
    if not views:
        out.append(f"natra: no Pod on this node has a Natra data path{root_note}")
        return "\n".join(out) + "\n"
    for v in sorted(views, key=lambda v: (v.namespace, v.pod, v.container_id)):
        out.append(f"{_title(v)}  (uid {v.uid})")
        out.append(f"  container {v.container_id}  interface {v.interface}  mode {v.attach_mode}"
                   f"{' (moving to tcx)' if v.tcx_pending else ''}"
                   f"{' (shared program until its own is verified)' if v.interim else ''}"
                   f"  heavy-flow table {sum(d.flow_entries for d in v.directions) + v.unassigned_flows}"
                   f"/{v.flow_table_size}")
        for d in v.directions:
            out.append(f"  {d.direction:<8} {_limit_text(d)}{'' if d.attached else '  (not attached)'}"
                       f"{_mode_text(d)}")
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
                       f" (counted in this and the last {d.limit.window_ns // 1_000_000 if d.limit else 0} ms"
                       f" window)  new heavy entries {c.get('flow_new', 0):,}"
                       f"{_overflow_text(c.get('flow_overflow', 0), v.flow_table_size)}")
            out.extend(render_classes(d))
            if d.heavy_hitters:
                out.append(f"    {'heavy hitter':<52}{'estimate':>12}{'passed':>12}{'dropped':>12}  state")
                for h in d.heavy_hitters:
                    state = "heavy" if h.active else f"idle {h.idle_ns / 1e9:.1f}s"
                    out.append(f"    {h.flow:<52}{human_bytes(h.estimate_bytes):>12}"
                               f"{human_bytes(h.passed_bytes):>12}"
                               f"{human_bytes(h.dropped_bytes):>12}  {state}")
        out.append("")
    return "\n".join(out)


def status_json(views: list[observe.PodView], now: int, missing: list[observe.NotLimited] | None = None,
                wall_ns: int = 0) -> str:
    return json.dumps(observe.to_json(views, now, missing, wall_ns), indent=2, sort_keys=False) + "\n"


# ---- top -----------------------------------------------------------------------------------

def render_top(views: list[observe.PodView], rates: dict[tuple[str, str], observe.DirectionRates],
               elapsed_ns: int, hitters: int = TOP_HITTERS, missing: list[observe.NotLimited] | None = None,
               wall_ns: int = 0) -> str:
    """One frame of `natra top`: a line per Pod direction, its recent heavy hitters under it.

    Busiest Pods first; a direction that is neither limited nor carried traffic is left out.
    """
    head = (f"natra top - {len(views)} Pod{'s' if len(views) != 1 else ''}, rates over "
            f"{elapsed_ns / 1e9:.1f} s (q quits)")
    lines = [head, ""]
    for n in missing or []:
        title = f"{n.namespace}/{n.pod}" if n.namespace else n.pod
        lines.append(f"NOT LIMITED  {title[:40]}  {n.direction}  cause {n.cause}  {since_text(n, wall_ns)}")
    if missing:
        lines.append("")
    lines.append(f"{'POD':<28}{'DIR':<9}{'LIMIT':>12}{'PASSING':>13}{'DROPPING':>13}{'HEAVY':>6}"
                 "  MICE / HEAVY")
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
            if d.fallback:
                lines.append(f"    mode police (shaping fell back: {d.fallback})")
            elif d.mode == observe.MODE_SHAPE:
                lines.append(f"    mode shape on {d.device or '?'}{_unlocked_text(d)}")
                for c in d.classes:
                    lines.append(f"      {c.name:<8} sending {human_bits(r.classes_bps.get(c.name, 0.0)):>13}"
                                 f"  drops {r.class_drops_per_s.get(c.name, 0.0):>7.1f}/s"
                                 f"  backlog {human_bytes(c.backlog_bytes):>9}"
                                 f" {human_ns(c.backlog_delay_ns):>9}")
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
EXIT_USAGE = 2


def _reader(root: str | None, top: int) -> Reader:
    def read() -> tuple[list[observe.PodView], int]:
        now = time.monotonic_ns()  # the clock of bpf_ktime_get_ns
        return observe.collect(root, now, top), now
    return read


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < 86400:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 0 and less than a day")
    return value


def _add_places(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=None,
                        help="bpffs root of Natra's pins (default $NATRA_BPFFS_ROOT or /sys/fs/bpf/natra)")
    parser.add_argument("--state-dir", default=None, help="the plugin's stateDir, where fail-open records "
                        f"live (default $NATRA_STATE_DIR or {observe.DEFAULT_STATE_DIR})")


def check_root(root: str | None) -> tuple[str | None, str]:
    """(error, note): an explicit root that is missing is an error; the default one only a note."""
    from natra.kernel import pins

    where = pins.resolve_root(root)
    if os.path.isdir(where):
        return None, ""
    if root is not None or os.environ.get(pins.ROOT_ENV):
        return f"pin root {where} does not exist (check --root or ${pins.ROOT_ENV})", ""
    return None, f" (pin root {where} does not exist yet: nothing was ever limited here)"


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="the document /api/pods serves")
    parser.add_argument("--top", type=non_negative_int, default=observe.DEFAULT_TOP,
                        help="heavy hitters per direction")
    _add_places(parser)


def status_main(args: argparse.Namespace) -> int:
    error, note = check_root(args.root)
    if error:
        print(f"natra status: {error}", file=sys.stderr)
        return EXIT_USAGE
    views, now = _reader(args.root, args.top)() if not note else ([], time.monotonic_ns())
    missing = observe.collect_not_limited(getattr(args, "state_dir", None), views)
    wall = time.time_ns()
    sys.stdout.write(status_json(views, now, missing, wall) if args.json
                     else render_status(views, missing, wall, note))
    return 0


def add_top_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=positive_seconds, default=DEFAULT_INTERVAL_S,
                        help="seconds between frames")
    parser.add_argument("--iterations", type=non_negative_int, default=0,
                        help="frames to draw, then exit (0: until q)")
    parser.add_argument("--once", action="store_true", help="draw one frame and exit (--iterations 1)")
    parser.add_argument("--no-clear", action="store_true", help="do not clear the screen between frames")
    _add_places(parser)


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
    error, note = check_root(args.root)
    if error:
        print(f"natra top: {error}", file=sys.stderr)
        return EXIT_USAGE
    pods = _reader(args.root, observe.DEFAULT_TOP)
    state = getattr(args, "state_dir", None)

    def read() -> tuple[list[observe.PodView], int]:
        return pods() if not note else ([], time.monotonic_ns())
    keys = _Keys()
    try:
        before, then = read()
        drawn = 0
        while not frames or drawn < frames:
            if keys.wait(args.interval):
                break
            after, now = read()
            missing = observe.collect_not_limited(state, after)
            text = render_top(after, observe.rates(before, after, now - then), now - then,
                              missing=missing, wall_ns=time.time_ns())
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
