"""The PNG plots of a sweep (docs/tuning.md shows them).

Owns: which plots a sweep's rows get (F1 vs state memory, detection delay vs
window, mice loss and Jain's index vs threshold, mice loss vs reserve, and
each sender's throughput vs threshold for the flood workload), their panels,
lines, labels and axes.
Rule: rows in, PNG files out; several seeds of one point are drawn as their mean.
Must not know: how rows were computed, CSV or JSON.
"""

from __future__ import annotations

from pathlib import Path

from natra.simulations.metrics import CELL_BYTES
from natra.simulations.results import GRID_FIELDS

from natra.kernel import layout as L

PLOT_COLUMNS = 2  # panels per row when a plot shows one metric or one workload


def varying(rows: list[dict]) -> list[str]:
    """Grid fields that take more than one value in these rows."""
    return [f for f in GRID_FIELDS if len({r[f] for r in rows}) > 1]


def _label(key: tuple, names: list[str]) -> str:
    units = {"threshold_pct": "% thr", "window_ms": " ms win", "reserve_pct": "% reserve"}
    parts = []
    for name, value in zip(names, key, strict=True):
        shown = "default" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        if name in ("width", "depth"):
            parts.append(f"{'W' if name == 'width' else 'D'}={shown}")
        elif name in units:
            parts.append(f"{shown}{units[name]}")
        else:
            parts.append(shown)
    return ", ".join(parts) or "all"


def _xvalue(row: dict, x: str, default_of: str | None):
    value = row[x]
    if value is None and default_of:
        return row[default_of]
    return value


SHORT_HIT_LABEL = "short transfers (<=100 KB) hit, fraction"
RAW_JAIN_LABEL = "Jain's index, raw throughput of heavy flows"
PLOTS = (
    # file, x field, y fields (with axis labels), x label, title, log x?,
    # and the field holding x with 'default' resolved to a number
    ("f1_vs_memory.png", "sketch_bytes", (("f1_miss", "1 - F1: heavy-hitter decisions missed"),),
     "sketch memory per Pod (bytes, log scale)",
     "Heavy-hitter misses (1 - F1, per flow and window) vs sketch memory, both directions' cells (one line "
     "per depth, points: widths; the flow table adds the same to every point)", True, None),
    ("delay_vs_window.png", "window_ms", (("detect_delay_p50_ms", "median detection delay (ms, log scale)"),
                                          ("small_flows_hit", SHORT_HIT_LABEL)),
     "sketch window (ms, log scale)", "Detection delay of a new elephant vs window", True, None),
    ("mice_jain_vs_threshold.png", "threshold_pct", (("mice_loss", "mice bytes dropped (fraction)"),
                                                     ("small_flows_hit", SHORT_HIT_LABEL),
                                                     ("jain_heavy", "Jain's index among heavy flows"),
                                                     ("jain_heavy_throughput", RAW_JAIN_LABEL)),
     "heavy-hitter threshold (% of rate x window, log scale)", "Mice loss and fairness vs threshold", True,
     "threshold_pct_resolved"),
    ("mice_vs_reserve.png", "reserve_pct", (("mice_loss", "mice bytes dropped (fraction)"),
                                            ("small_flows_hit", SHORT_HIT_LABEL),
                                            ("passed_load", "passed bytes / (rate x duration)")),
     "mice reserve (% of burst)", "Mice loss vs reserve", "symlog", "reserve_pct_resolved"),
)


UNIT_INTERVAL = ("f1", "f1_miss", "mice_loss", "small_flows_hit", "jain_heavy", "jain_heavy_throughput")
FRACTION_FLOOR = 0.05  # a fraction axis shows at least 0..5 %, so an all-zero line sits at the bottom


def _y_range(ax, y: str) -> None:
    """Fractions and indices start at 0 (Jain's index and F1 end at 1), so panels compare at a glance."""
    if y not in UNIT_INTERVAL:
        return
    top = 1.02 if y.startswith(("jain", "f1")) else max(ax.get_ylim()[1], FRACTION_FLOOR)
    ax.set_ylim(-0.02 * top if top < 1 else -0.02, top)


def mean_over_seeds(rows: list[dict]) -> list[dict]:
    """One row per point whatever its seeds: numbers averaged over the seeds (None where one is None)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple((f, r[f]) for f in GRID_FIELDS if f != "seed"), []).append(r)
    if all(len(g) == 1 for g in groups.values()):
        return rows
    out = []
    for members in groups.values():
        row = dict(members[0])
        for k, v in row.items():
            if k in GRID_FIELDS or not isinstance(v, int | float) or isinstance(v, bool):
                continue
            values = [m.get(k) for m in members]
            row[k] = None if any(x is None for x in values) else sum(values) / len(values)
        row["seed"] = members[0]["seed"]
        row["seeds"] = len(members)
        out.append(row)
    return out


MAX_LINES = 6  # lines per panel; more groups are split into facets (one panel per value)
SMALL_FRACTIONS = ("mice_loss", "small_flows_hit", "f1_miss")  # decisions hang on 1e-7: symlog axes
SYMLOG_FLOOR = {"f1_miss": 1e-4}  # others: 1e-7 (one mouse byte in ten million)
SYMLOG_FLOOR_DEFAULT = 1e-7
LOG_Y = ("detect_delay_p50_ms",)  # grows in proportion to the window: a straight line on log-log
TARGETS = {"f1_miss": (0.01, "F1 0.99")}  # dashed line: where the targets sit
SPREAD = 0.1  # a symlog x axis when the smallest positive value tried is below this share of the largest
SYMLOG_HEADROOM = 3.0  # the top of a symlog axis: this times the largest value
X_VARIES = {"sketch_bytes": ("width", "depth"), "window_ms": ("window_ms",),
            "threshold_pct": ("threshold_pct", "threshold_fixed_bytes"),
            "reserve_pct": ("reserve_pct", "reserve_fixed_bytes")}


def _order(key: tuple) -> tuple:
    """Sort lines by their values as numbers ('default', None, last), not as text."""
    return tuple((v is None, v if isinstance(v, int | float) else 0, str(v)) for v in key)


def _facets(group_by: list[str], rows: list[dict]) -> tuple[list[str], list[str]]:
    """(the fields whose values become panels, the fields that stay lines): at most MAX_LINES lines."""
    facet, lines = [], list(group_by)
    while len(lines) > 1 and len({tuple(r[f] for f in lines) for r in rows}) > MAX_LINES:
        field = max(lines, key=lambda f: len({r[f] for r in rows}))
        facet.append(field)
        lines.remove(field)
    return facet, lines


def plot_all(rows: list[dict], out: Path) -> list[Path]:
    """Write the PNG plots of PLOTS whose x parameter varied (seeds averaged); returns their paths.

    One panel per workload and metric, and per value of one more parameter when
    the lines would exceed MAX_LINES (facets); colours from one colour map per
    panel, legends beside the panels, symlog axes for the small fractions.
    """
    rows = mean_over_seeds(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for r in rows:
        r.setdefault("sketch_bytes", L.NDIRS * r["depth"] * r["width"] * CELL_BYTES)
        if r.get("f1") is not None:
            r.setdefault("f1_miss", 1.0 - r["f1"])
        r.setdefault("threshold_pct_resolved",
                     100 * 8 * r["threshold_bytes"] * L.NS_PER_SEC / (r["rate_bps"] * r["window_ms"] * 1e6))
        r.setdefault("reserve_pct_resolved", 100 * r["reserve_bytes"] / r["burst_bytes"])
    written = []
    vary = varying(rows)
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    for name, x, ys, xlabel, title, logx, resolved in PLOTS:
        if not any(f in vary for f in X_VARIES[x]):
            continue  # nothing to draw against a parameter that did not vary
        same_x = {x, "workload", x.replace("_pct", "_fixed_bytes")}  # a threshold in % or in bytes
        group_by = [f for f in vary if f not in same_x and not (x == "sketch_bytes" and f == "width")]
        facet, line_by = _facets(group_by, rows)
        facet_values = sorted({tuple(r[f] for f in facet) for r in rows}, key=_order)
        panels = [(w, y, v) for y in ys for w in workloads for v in facet_values]
        ncols = min(len(panels), max(PLOT_COLUMNS, len(facet_values)), 4)
        nrows = -(-len(panels) // ncols)
        fig, grid_axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols + 2.6, 3.9 * nrows + 1.0),
                                      squeeze=False)
        for ax in list(grid_axes.flat)[len(panels):]:
            ax.set_visible(False)
        for ax, (workload, (y, ylabel), value) in zip(grid_axes.flat, panels, strict=False):
            groups: dict[tuple, list[dict]] = {}
            for r in rows:
                if r["workload"] == workload and tuple(r[f] for f in facet) == value:
                    groups.setdefault(tuple(r[f] for f in line_by), []).append(r)
            colours = plt.get_cmap("viridis" if len(groups) > 10 else "tab10")
            for i, (key, members) in enumerate(sorted(groups.items(), key=lambda kv: _order(kv[0]))):
                pts = sorted((_xvalue(m, x, resolved), m[y], m["width"], m[x] is None) for m in members
                             if m.get(y) is not None)
                if not pts:
                    continue
                colour = colours(i / max(len(groups) - 1, 1)) if len(groups) > 10 else colours(i % 10)
                line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="os^Dv<>p"[i % 8],
                                color=colour, label=_label(key, line_by))
                if x == "sketch_bytes":  # the memory axis hides which width a point is
                    for px, py, width, _ in (p for p in pts if p[1] > 0):
                        ax.annotate(f"W={width}", (px, py), textcoords="offset points",
                                    xytext=(4, 3) if i % 2 == 0 else (4, -10), fontsize="x-small",
                                    color=line.get_color())
                for px, py, _, is_default in pts:  # a grid value 'default' is drawn where it resolves
                    if is_default and resolved:
                        ax.annotate(f"default\n({px:.3g})", (px, py), textcoords="offset points",
                                    xytext=(0, 8), ha="center", fontsize="x-small", color=line.get_color())
            where = f"workload: {workload}" + (f", {_label(value, facet)}" if facet else "")
            ax.set_title(where, fontsize="medium")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel + (" (symlog)" if y in SMALL_FRACTIONS else ""))
            tried = sorted({v for p in ax.lines for v in p.get_xdata()})
            positive = [v for v in tried if v > 0]
            if logx == "symlog" and positive and positive[0] < SPREAD * positive[-1]:
                # 0 and values a hundred times apart (0, 0.25 .. 20 %): linear near 0, log above
                ax.set_xscale("symlog", linthresh=positive[0])
                ax.set_xticks(tried, [f"{v:g}" for v in tried], minor=False)
                ax.minorticks_off()
                ax.set_xlabel(xlabel.replace(")", ", symlog scale)"))
            elif logx is True:
                ax.set_xscale("log")
                if x != "sketch_bytes":  # the values tried, written as numbers, not as 6x10^-1
                    xs = sorted({p.get_xdata()[i] for p in ax.lines for i in range(len(p.get_xdata()))})
                    ax.set_xticks(xs, [f"{v:g}" for v in xs], minor=False)
                    ax.minorticks_off()
            ax.grid(True, alpha=0.3)
            if y in SMALL_FRACTIONS:
                ax.set_yscale("symlog", linthresh=SYMLOG_FLOOR.get(y, SYMLOG_FLOOR_DEFAULT))
                highest = max([max(p.get_ydata(), default=0) for p in ax.lines] + [0])
                ax.set_ylim(bottom=0, top=max(FRACTION_FLOOR, highest * SYMLOG_HEADROOM))
            elif y in LOG_Y and all(v > 0 for p in ax.lines for v in p.get_ydata()):
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(NullFormatter())
            else:
                _y_range(ax, y)
            if y in TARGETS:
                level, text = TARGETS[y]
                ax.axhline(level, color="tab:red", linestyle="--", linewidth=1)
                ax.annotate(text, (1.0, level), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                            fontsize="x-small", color="tab:red")
            if ax.lines and line_by:  # one line needs no legend
                ax.legend(fontsize="x-small", title=", ".join(line_by), title_fontsize="x-small",
                          loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        fig.suptitle(f"{title}\n{_context(rows)}", fontsize="medium")
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        path = out / name
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    throughput = plot_throughput(rows, out)
    return written + ([throughput] if throughput else [])


THROUGHPUT_PLOT = "throughput_vs_threshold.png"
THROUGHPUT_LINES = (("flood_mbps_mean", "UDP flood", {"marker": "o", "color": "tab:red"}),
                    ("aimd_mbps_max", "TCP-like (AIMD), best", {"marker": "^", "color": "tab:blue"}),
                    ("aimd_mbps_min", "TCP-like (AIMD), worst",
                     {"marker": "v", "color": "tab:blue", "linestyle": ":"}),
                    ("even_split_mbps", "even split of their total", {"linestyle": "--", "color": "grey"}))


def plot_throughput(rows: list[dict], out: Path) -> Path | None:
    """Per-sender throughput vs threshold for workloads with AIMD senders and a flood; None if none has.

    The TCP-like senders' best and worst are two lines with the band between
    them shaded (they often coincide); the legend sits beside the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("flood_mbps_mean") is not None]
    if not rows:
        return None
    vary = [f for f in varying(rows) if f not in ("threshold_pct", "workload")]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[f] for f in vary), []).append(r)
    fig, axes = plt.subplots(1, len(groups), figsize=(6.4 * len(groups) + 2.6, 4.6), squeeze=False)
    for ax, (key, members) in zip(axes.flat, groups.items(), strict=True):
        members = sorted(members, key=lambda m: m["threshold_pct_resolved"])
        xs = [m["threshold_pct_resolved"] for m in members]
        for field, label, style in THROUGHPUT_LINES:
            ax.plot(xs, [m[field] for m in members], label=label, **style)
        ax.fill_between(xs, [m["aimd_mbps_min"] for m in members], [m["aimd_mbps_max"] for m in members],
                        color="tab:blue", alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{v:g}" for v in xs], minor=False)
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_xlabel("heavy-hitter threshold (% of rate x window, log scale)")
        ax.set_ylabel("throughput over the run (Mbit/s)")
        ax.set_title(_label(key, vary) if vary else f"workload: {members[0]['workload']}", fontsize="medium")
        ax.grid(True, alpha=0.3)
    axes.flat[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle(f"What each sender got vs threshold\n{_context(rows)}", fontsize="medium")
    fig.tight_layout()
    path = out / THROUGHPUT_PLOT
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _context(rows: list[dict]) -> str:
    r = rows[0]
    names = sorted({row["workload"] for row in rows})
    options = sorted({(row.get("options") or "").replace(",", ", ") for row in rows} - {""})
    extra = f", {'; '.join(options)}" if options else ""
    return (f"{'+'.join(names)}{extra}: rate {_fmt_rate(r['rate_bps'])}, {r['duration_s']:g} s of traffic, "
            f"seed {r['seed']}")


def _fmt_rate(bps: int) -> str:
    for suffix, scale in (("Gbit/s", 10**9), ("Mbit/s", 10**6), ("kbit/s", 10**3)):
        if bps >= scale:
            return f"{bps / scale:g} {suffix}"
    return f"{bps} bit/s"


