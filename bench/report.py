"""docs/benchmarks.md and its plots, from the record of one `bench.run_all` run.

Owns: the document's shape: machine and date, the method, the aims table
(met or missed, with the measured figure), one section per scenario with its
tables and plot, every figure the median over the repeated runs with
[min-max] after it, ratios taken run by run inside the same run of the bench.
Rule: reads only the record (a dict, or the JSON file `run_all` saved), so a
document can be re-rendered without a kernel: `python3 -m bench.report FILE`.
Must not know: how anything was measured (namespaces, iperf3, CNI).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import defaultdict

from bench.stats import WIRE_PER_PAYLOAD, percentile, ratio, spread
from natra.node.agent import DEFAULT_POOL_DEPTH, DEFAULT_SHARED_SLOTS, IDLE_BEFORE_MOVE_S

IMG_PREFIX = "bench-"
NAMES = {
    "natra-shape": "Natra shape",
    "natra-police": "Natra police",
    "standard": "standard plugin",
    "standard-ctrd": "standard plugin, containerd burst",
    "none": "no limiter (ptp only)",
    "natra-shape-python": "Natra shape (python3 -m natra)",
    "natra-police-python": "Natra police (python3 -m natra)",
    "natra-shape-bundle": "Natra shape (node bundle)",
    "natra-shape-bundle-agent": "Natra shape (node bundle + agent)",
    "natra-police-bundle-agent": "Natra police (node bundle + agent)",
    "natra-shape-python-agent": "Natra shape (python3 -m natra + agent)",
    "natra-shape-clsact-bundle-agent": "Natra shape, attachMode clsact (node bundle + agent)",
    "bandwidth": "standard bandwidth plugin",
    "natra-shape-unlimited": "Natra shape at 1 Pbit/s",
    "natra-police-unlimited": "Natra police at 1 Pbit/s",
}
COLORS = {
    "natra-shape": "#2ca02c",
    "natra-police": "#1f77b4",
    "standard": "#ff7f0e",
    "none": "#7f7f7f",
    "natra-shape-python": "#2ca02c",
    "natra-police-python": "#1f77b4",
    "natra-shape-bundle": "#17becf",
    "natra-shape-bundle-agent": "#9467bd",
    "natra-police-bundle-agent": "#8c564b",
    "natra-shape-python-agent": "#bcbd22",
    "natra-shape-clsact-bundle-agent": "#e377c2",
    "bandwidth": "#ff7f0e",
}
DIRECTION_NAMES = {"to_pod": "into the Pod", "from_pod": "out of the Pod"}
SHAPE = "natra-shape"
# The aims of issue 16 (shaping), kept for both Natra modes' rows but judged on the default.
AIM_RETRANS_PCT = 0.5
AIM_SHARE = 0.95
AIM_JAIN4 = 0.98
AIM_FLOOD = 0.30
AIM_JAIN3 = 0.95
AIM_P99_RATIO = 1.5
AIM_OVERHEAD = 0.95
AIM_SWEEP_SHARE = 0.9  # issue 14: Natra >= 0.9 of the limit after the burst wherever the standard plugin is
# Issue 18: a Pod's ADD and DEL on the node bundle with the node agent.
AIM_ADD_P50_MS, AIM_ADD_P99_MS, AIM_DEL_P50_MS = 30, 60, 20
PAYLOAD_CEILING = 1 / WIRE_PER_PAYLOAD  # 1448/1514: payload share of a limit counted in frame bytes


# ---- formatting -------------------------------------------------------------------------------


def _attach_text(attached: dict | None) -> str:
    """'50 tcx, 1.3 s after the last ADD' from a scenario's settled attach modes."""
    if not attached:
        return "not recorded"
    modes = ", ".join(f"{n} {mode}" for mode, n in sorted(attached["modes"].items()))
    shared = attached.get("on_shared_at_first")
    return (f"{modes}, {attached['settled_s']:.1f} s after the last ADD"
            + (f" ({shared} had been on the shared program)" if shared else ""))


def _num(x: float, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def fmt_spread(values: list[float], spec: str = ".3f", scale: float = 1.0) -> str:
    """'median [min-max]' of per-run values (just the value for one run)."""
    sp = spread([v * scale for v in values if v is not None])
    if sp.runs == 0:
        return "n/a"
    if sp.runs == 1:
        return _num(sp.median, spec)
    return f"{_num(sp.median, spec)} [{_num(sp.low, spec)}-{_num(sp.high, spec)}]"


def med(values: list[float]) -> float:
    return spread([v for v in values if v is not None]).median


def rate_name(bps: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if bps >= div:
            return f"{bps / div:g}{unit}"
    return f"{bps:g}"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, img_dir: str, name: str) -> str:
    os.makedirs(img_dir, exist_ok=True)
    path = os.path.join(img_dir, f"{IMG_PREFIX}{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _errbar(values: list[float]) -> tuple[float, float, float]:
    sp = spread(values)
    return sp.median, sp.median - sp.low, sp.high - sp.median


# ---- 1..4 ---------------------------------------------------------------------------------------
def _variants(runs: list[dict], order=("natra-shape", "natra-police", "standard", "standard-ctrd", "none")):
    have = {r["variant"] for r in runs}
    return [v for v in order if v in have] + sorted(have - set(order))


def _keys(runs: list[dict]) -> list[tuple[int, str]]:
    return sorted({(r["rate_bps"], r["direction"]) for r in runs}, key=lambda k: (k[0], k[1] != "to_pod"))


def _where(rate: int, direction: str) -> str:
    return f"{rate_name(rate)} {DIRECTION_NAMES[direction]}"


def _aim(aims: list, text: str, value: float, ok: bool, spec: str, by: str = "") -> None:
    aims.append((text, _num(value, spec), met(ok), "" if ok else by))


def _bar_plot(
    name: str,
    title: str,
    panels: list[tuple[str, dict, float | None, bool]],
    labels: list[str],
    variants: list[str],
    img_dir: str,
    rel: str,
) -> list[str]:
    """One row of bar panels; each: (y label, {variant: [(median, down, up) per label]}, aim line, log)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.4))
    axes = axes if len(panels) > 1 else [axes]
    width = 0.8 / max(len(variants), 1)
    for ax, (ylabel, series, aim, log) in zip(axes, panels, strict=True):
        for i, v in enumerate(variants):
            vals = series.get(v)
            if not vals:
                continue
            xs = [k + (i - (len(variants) - 1) / 2) * width for k in range(len(labels))]
            mids = [m for m, _, _ in vals]
            # _errbar gives (median, down, up): distances from the median
            errs = [[max(lo, 0) for _, lo, _ in vals], [max(hi, 0) for _, _, hi in vals]]
            ax.bar(xs, mids, width, yerr=errs, color=COLORS.get(v), label=NAMES.get(v, v), capsize=2)
        if aim is not None:
            ax.axhline(aim, color="k", ls="--", lw=0.8)
        if log:
            ax.set_yscale("symlog", linthresh=0.1)
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=8)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    _save(fig, img_dir, name)
    return [f"![{title}]({rel}/{IMG_PREFIX}{name}.png)"]


def _series(groups: dict, keys: list, variants: list[str], field: str, scale: float = 1.0) -> dict:
    out = {}
    for v in variants:
        vals = []
        for k in keys:
            xs = [
                r[field] * scale
                for r in groups.get((*k, v), [])
                if r.get(field) is not None and not (isinstance(r[field], float) and math.isnan(r[field]))
            ]
            vals.append(_errbar(xs) if xs else (float("nan"), 0, 0))
        out[v] = vals
    return out


def _rtt_ms(run: dict) -> float | None:
    rtts = run.get("rtt_us") or []
    return sum(rtts) / len(rtts) / 1e3 if rtts else None


# ---- 1. bulk TCP ---------------------------------------------------------------------------------


def section_rate(data: dict, img_dir: str, rel: str, aims: list) -> list[str]:
    cc = data.get("congestion", "cubic")
    main = [r for r in data["runs"] if r.get("congestion", cc) == cc]
    bbr = [r for r in data["runs"] if r.get("congestion") == "bbr" and cc != "bbr"]
    variants = _variants(main)
    groups = defaultdict(list)
    for r in main:
        groups[(r["rate_bps"], r["direction"], r["variant"])].append(r)
    keys = _keys(main)
    t = data["bulk_s"]
    goodput_rows, retrans_rows, over_rows = [], [], []
    for rate, direction in keys:
        g = [_where(rate, direction)]
        rt = [_where(rate, direction)]
        ov = [_where(rate, direction)]
        for v in variants:
            rs = groups[(rate, direction, v)]
            g += [fmt_spread([r["share"] for r in rs]), fmt_spread([r["steady_share"] for r in rs])]
            rt += [
                fmt_spread([r["retrans_pct"] for r in rs], ".2f"),
                fmt_spread([_rtt_ms(r) for r in rs], ".1f"),
            ]
            ov += [
                fmt_spread([r["bytes_over"] for r in rs], ".0f"),
                fmt_spread([r["bytes_over_wire"] for r in rs], ".0f"),
            ]
        goodput_rows.append(g)
        retrans_rows.append(rt)
        over_rows.append(ov)
        for v in variants:
            if v != SHAPE:
                continue
            rs = groups[(rate, direction, v)]
            steady = med([r["steady_share"] for r in rs])
            _aim(
                aims,
                f"1. goodput after the burst >= {AIM_SHARE} of the limit (payload), "
                f"{_where(rate, direction)}",
                steady,
                steady >= AIM_SHARE,
                ".3f",
                f"short by {AIM_SHARE - steady:.3f}; payload can be at most {PAYLOAD_CEILING:.3f} of a "
                f"limit counted in frame bytes: {steady * WIRE_PER_PAYLOAD:.3f} in frame bytes; whole run "
                f"{med([r['share'] for r in rs]):.3f}",
            )
            pct = med([r["retrans_pct"] for r in rs])
            _aim(
                aims,
                f"1. one TCP flow ({cc}) retransmits <= {AIM_RETRANS_PCT} % of segments, "
                f"{_where(rate, direction)}",
                pct,
                pct <= AIM_RETRANS_PCT,
                ".3f",
                f"{pct / AIM_RETRANS_PCT:.1f}x the aim",
            )
            worst = max(r["bytes_over"] for r in rs)
            _aim(
                aims,
                f"1. bytes over R*t+B = 0 at the receiver (payload), {_where(rate, direction)}",
                worst,
                worst == 0,
                ".0f",
                f"{worst:.0f} bytes over",
            )
    head_g = ["limit, direction"] + [
        f"{NAMES[v]} {x}" for v in variants for x in ("whole run", "after 1.5 s")
    ]
    head_r = ["limit, direction"] + [f"{NAMES[v]} {x}" for v in variants for x in ("retrans. %", "RTT ms")]
    head_o = ["limit, direction"] + [f"{NAMES[v]} {x}" for v in variants for x in ("payload", "wire")]
    out = [
        "## 1. Bulk TCP: goodput, retransmissions, conformance",
        "",
        f"One TCP flow (iperf3, {t:g} s, {cc} sender) into the Pod from the remote-node namespace, and out "
        "of it (iperf3 -R, the Pod sends). **Goodput** is payload: iperf3's receiver-side byte count, "
        "divided by the limit. *Whole run* includes the burst B spent at the start (B = 500 ms of rate, "
        f"so B/(R*t) = {0.5 / t:.2f} of the limit over {t:g} s); *after 1.5 s* counts only the receiver's "
        "0.1 s intervals from 1.5 s on, when B has long been spent: this is the figure the aim is judged "
        f"on. Limiters count frame bytes, and a full segment carries 1448 payload bytes in a 1514-byte "
        f"frame, so a limiter that is exact in frame bytes delivers at most {PAYLOAD_CEILING:.3f} of its "
        "limit as payload.",
        "",
        *table(head_g, goodput_rows),
        "",
        "**Retransmissions** are the sender namespace's TCP RetransSegs / OutSegs over the run "
        "(/proc/net/snmp; GSO packets count as the segments they carry), in %. RTT is the sending "
        "socket's mean smoothed RTT (TCP_INFO via iperf3), which grows by what the limiter queues.",
        "",
        *table(head_r, retrans_rows),
        "",
        "**Bytes over R\\*t+B** is the largest excess over any window of consecutive 0.1 s receiver "
        "intervals, in payload bytes (a floor under what any limiter counts, so anything above 0 breaks "
        f"the promise) and in wire bytes (payload x {WIRE_PER_PAYLOAD:.4f}).",
        "",
        *table(head_o, over_rows),
        "",
    ]
    panels = [
        ("goodput / limit after 1.5 s", _series(groups, keys, variants, "steady_share"), AIM_SHARE, False),
        (
            "retransmitted % of segments",
            _series(groups, keys, variants, "retrans_pct"),
            AIM_RETRANS_PCT,
            True,
        ),
    ]
    labels = [f"{rate_name(r)}\n{'in' if d == 'to_pod' else 'out'}" for r, d in keys]
    out += _bar_plot("rate", f"one TCP flow ({cc})", panels, labels, variants, img_dir, rel)
    out += [""]
    if bbr:
        out += _bbr_table(bbr, t)
    ctrd = data.get("containerd_burst") or []
    if ctrd:
        out += [
            f"**The standard plugin as containerd configures it** ({rate_name(ctrd[0]['rate_bps'])} into the "
            "Pod, burst 2^32-1 bits taken as it is), runs back to back on one fresh Pod:",
            "",
            *table(
                ["run", "goodput / limit", "retrans. %", "bytes over R*t+B with Natra's B (payload)"],
                [
                    [
                        str(i + 1),
                        _num(r["share"], ".3f"),
                        _num(r["retrans_pct"], ".2f"),
                        _num(r["bytes_over_natra_b"], ".0f"),
                    ]
                    for i, r in enumerate(ctrd)
                ],
            ),
            "",
            "The bucket starts full (537 MB at 100M), so the first run after ADD is not limited at all. "
            "Natra clamps the same request to 500 ms of rate.",
            "",
        ]
    verd = []
    for rate, direction in keys:
        for v in variants:
            rs = [r for r in groups[(rate, direction, v)] if r.get("natra_verdicts") is not None]
            if not rs:
                continue
            names = sorted({k for r in rs for k in r["natra_verdicts"]})
            text = ", ".join(f"{k} {med([r['natra_verdicts'].get(k, 0) for r in rs]):.0f}" for k in names)
            drops = [r["shaper_drops"] for r in rs if r.get("shaper_drops") is not None]
            if drops:
                text += f"; shaper queue drops {med(drops):.0f}"
            verd.append([_where(rate, direction), NAMES[v], text])
    if verd:
        out += [
            "Natra's verdicts per run (packets, i.e. GRO/GSO super-packets, median over runs; its pinned "
            "counters) and, in shaping mode, packets dropped by the tree's leaf queues:",
            "",
            *table(["limit, direction", "mode", "verdicts"], verd),
            "",
        ]
    return out


def _bbr_table(runs: list[dict], t: float) -> list[str]:
    groups = defaultdict(list)
    for r in runs:
        groups[(r["rate_bps"], r["direction"], r["variant"])].append(r)
    variants = _variants(runs)
    rows = []
    for rate, direction in _keys(runs):
        row = [_where(rate, direction)]
        for v in variants:
            rs = groups[(rate, direction, v)]
            row += [
                fmt_spread([r["retrans_pct"] for r in rs], ".2f"),
                fmt_spread([r["steady_share"] for r in rs]),
                fmt_spread([_rtt_ms(r) for r in rs], ".1f"),
            ]
        rows.append(row)
    n = max(len(x) for x in groups.values())
    return [
        f"**The same flows with BBR senders** (this machine's default, BBR v1; {n} run(s) per cell, "
        f"{t:g} s). "
        "Not judged against the aims: the aims are for CUBIC, Linux's and most nodes' default. BBR paces "
        "at its own estimate of the bottleneck rate and probes above it every few round trips; it does "
        "not back off on a lost segment, so a shallow queue overflows at each probe:",
        "",
        *table(
            ["limit, direction"]
            + [f"{NAMES[v]} {x}" for v in variants for x in ("retrans. %", "after 1.5 s", "RTT ms")],
            rows,
        ),
        "",
    ]


# ---- 2. small requests under load ------------------------------------------------------------


def _pooled(runs: list[dict], phase: str, size: str) -> list[float]:
    return [x for r in runs for x in r[phase][size]["samples_ms"]]


def section_latency(data: dict, img_dir: str, rel: str, aims: list) -> list[str]:
    runs = data["runs"]
    sizes = [str(x) for x in data["sizes"]]
    variants = _variants(runs)
    rates = sorted({r["rate_bps"] for r in runs})
    rows = []
    plot = {}
    for rate in rates:
        for size in sizes:
            for v in variants:
                rs = [r for r in runs if r["variant"] == v and r["rate_bps"] == rate]
                if not rs:
                    continue
                idle, loaded = _pooled(rs, "idle", size), _pooled(rs, "loaded", size)
                pi, pl = percentile(idle, 99), percentile(loaded, 99)
                per_run = [ratio(r["loaded"][size]["p99_ms"], r["idle"][size]["p99_ms"]) for r in rs]
                pooled_ratio = ratio(pl, pi)
                plot[(rate, size, v)] = (pi, pl)
                fails = sum(r["idle"][size]["failures"] + r["loaded"][size]["failures"] for r in rs)
                rows.append(
                    [
                        rate_name(rate),
                        f"{int(size) // 1000} KB",
                        NAMES[v],
                        _num(percentile(idle, 50), ".2f"),
                        _num(pi, ".2f"),
                        _num(percentile(loaded, 50), ".2f"),
                        _num(pl, ".2f"),
                        f"**{_num(pooled_ratio, '.2f')}**",
                        fmt_spread(per_run, ".2f"),
                        f"{len(idle)} / {len(loaded)}",
                        str(fails),
                    ]
                )
                if v == SHAPE:
                    _aim(
                        aims,
                        f"2. p99 loaded / unloaded <= {AIM_P99_RATIO}, {int(size) // 1000} KB at "
                        f"{rate_name(rate)}",
                        pooled_ratio,
                        pooled_ratio <= AIM_P99_RATIO,
                        ".2f",
                        f"{pooled_ratio / AIM_P99_RATIO:.2f}x the aim (p99 {pi:.2f} -> {pl:.2f} ms)",
                    )
    first = runs[0]
    intervals = {rate_name(r["rate_bps"]): r["intervals_s"] for r in runs}
    ivtext = "; ".join(
        f"{k}: " + ", ".join(f"{int(s) // 1000} KB every {v * 1e3:.0f} ms" for s, v in iv.items())
        for k, iv in intervals.items()
    )
    out = [
        "## 2. Small requests under load",
        "",
        f"A bulk iperf3 download ({data.get('congestion', 'cubic')} sender) saturates the Pod's limit "
        "into the "
        f"Pod for {data['load_s']:g} s; after {first.get('warmup_s', data.get('warmup_s', 1.5)):g} s, three "
        "clients in the remote node each send requests of 1 KB, 10 KB or 100 KB on a fresh TCP connection "
        "to a server in the Pod, which answers one byte. Latency is connect to answer, in ms. *Unloaded* "
        "is the same three clients without the download. A size's requests take at most "
        f"{data.get('short_share', 0.2):.0%} of the limit, so they do not queue behind themselves "
        f"({ivtext}). "
        "The ratio is taken on the **pooled** p99 (every run's samples together: at 10M a run has only "
        "about 15 requests of 100 KB, and one run's p99 is its maximum); the median of the per-run ratios "
        "is beside it. Each client's first request (ARP, a cold process) is not counted.",
        "",
        *table(
            [
                "limit",
                "size",
                "limiter",
                "unloaded p50",
                "unloaded p99",
                "loaded p50",
                "loaded p99",
                "p99 loaded / unloaded",
                "per run",
                "samples unloaded / loaded",
                "failed",
            ],
            rows,
        ),
        "",
    ]
    plt = _plt()
    fig, axes = plt.subplots(1, len(rates), figsize=(4.2 * len(rates), 3.3), squeeze=False)
    width = 0.8 / max(len(variants), 1)
    for ax, rate in zip(axes[0], rates, strict=True):
        for i, v in enumerate(variants):
            xs = [k + (i - (len(variants) - 1) / 2) * width for k in range(len(sizes))]
            ax.bar(
                xs,
                [plot.get((rate, s, v), (0, 0))[1] for s in sizes],
                width,
                color=COLORS.get(v),
                label=f"{NAMES[v]} loaded",
            )
            ax.plot(xs, [plot.get((rate, s, v), (0, 0))[0] for s in sizes], "k_", ms=10)
        ax.set_yscale("log")
        ax.set_xticks(range(len(sizes)), [f"{int(s) // 1000} KB" for s in sizes])
        ax.set_title(f"{rate_name(rate)}: p99 ms loaded (bars), unloaded (-)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    _save(fig, img_dir, "latency")
    out += [f"![small requests]({rel}/{IMG_PREFIX}latency.png)", ""]
    bulk = []
    for rate in rates:
        for v in variants:
            rs = [r for r in runs if r["variant"] == v and r["rate_bps"] == rate]
            text = fmt_spread([r["bulk_goodput_bps"] / rate for r in rs])
            verd = [r for r in rs if r.get("natra_verdicts")]
            extra = ""
            if verd:
                names = sorted({k for r in verd for k in r["natra_verdicts"]})
                extra = ", ".join(
                    f"{k} {med([r['natra_verdicts'].get(k, 0) for r in verd]):.0f}" for k in names
                )
            bulk.append([rate_name(rate), NAMES[v], text, extra])
    out += [
        "The download's goodput / limit during the loaded runs, and Natra's verdicts in them "
        "(median per run):",
        "",
        *table(["limit", "limiter", "bulk goodput / limit", "Natra verdicts"], bulk),
        "",
    ]
    return out


# ---- 3. fairness --------------------------------------------------------------------------------


def section_fairness(data: dict, img_dir: str, rel: str, aims: list) -> list[str]:
    runs = data["runs"]
    variants = _variants(runs)
    out = [
        "## 3. Several flows: fairness, retransmissions",
        "",
        f"Four TCP flows of one iperf3 client (-P 4, {data.get('congestion', 'cubic')}), and an "
        f"unresponsive UDP flood offering {data['udp_factor']}x the limit beside three TCP flows, "
        f"{data['seconds']:g} s each. Shares are each flow's receiver-side payload rate over the limit; "
        "Jain's index is taken over the TCP flows; retransmissions are the TCP sender namespace's.",
        "",
    ]
    plot_groups = {}
    for case in ("4tcp", "udp+3tcp"):
        cr = [r for r in runs if r["case"] == case]
        if not cr:
            continue
        groups = defaultdict(list)
        for r in cr:
            groups[(r["rate_bps"], r["direction"], r["variant"])].append(r)
        rows = []
        for rate, direction in _keys(cr):
            row = [_where(rate, direction)]
            for v in variants:
                rs = groups[(rate, direction, v)]
                row.append(fmt_spread([r["jain_tcp"] for r in rs]))
                if case == "udp+3tcp":
                    row.append(fmt_spread([r["flows"][0]["share"] for r in rs]))
                    row.append(fmt_spread([r["flows"][0].get("steady_share") for r in rs]))
                row += [
                    fmt_spread([r["retrans_pct"] for r in rs], ".2f"),
                    fmt_spread([r["total_share"] for r in rs]),
                    fmt_spread([r["bytes_over"] for r in rs], ".0f"),
                ]
            rows.append(row)
            rs = groups[(rate, direction, SHAPE)]
            if not rs:
                continue
            j = med([r["jain_tcp"] for r in rs])
            if case == "4tcp":
                _aim(
                    aims,
                    f"3. Jain >= {AIM_JAIN4}, 4 TCP flows, {_where(rate, direction)}",
                    j,
                    j >= AIM_JAIN4,
                    ".3f",
                    f"short by {AIM_JAIN4 - j:.3f}",
                )
                pct = med([r["retrans_pct"] for r in rs])
                _aim(
                    aims,
                    f"3. 4 TCP flows retransmit <= {AIM_RETRANS_PCT} %, {_where(rate, direction)}",
                    pct,
                    pct <= AIM_RETRANS_PCT,
                    ".3f",
                    f"{pct / AIM_RETRANS_PCT:.1f}x the aim",
                )
            else:
                f = med([r["flows"][0].get("steady_share") for r in rs])
                whole = med([r["flows"][0]["share"] for r in rs])
                _aim(
                    aims,
                    f"3. UDP flood <= {AIM_FLOOD} of the limit after 1.5 s, {_where(rate, direction)}",
                    f,
                    f <= AIM_FLOOD,
                    ".3f",
                    f"{f - AIM_FLOOD:.3f} over",
                )
                aims[-1] = (*aims[-1][:3], (aims[-1][3] + "; " if aims[-1][3] else "")
                            + f"whole run {whole:.3f} (the flood takes most of B at the start)")
                _aim(
                    aims,
                    f"3. TCP Jain beside the flood >= {AIM_JAIN3}, {_where(rate, direction)}",
                    j,
                    j >= AIM_JAIN3,
                    ".3f",
                    f"short by {AIM_JAIN3 - j:.3f}",
                )
            worst = max(r["bytes_over"] for r in rs)
            _aim(
                aims,
                f"3. bytes over R*t+B = 0 (payload), {case}, {_where(rate, direction)}",
                worst,
                worst == 0,
                ".0f",
                f"{worst:.0f} bytes over",
            )
        cols = (["Jain", "flood whole run", "flood after 1.5 s"] if case == "udp+3tcp" else ["Jain"]) + [
            "retrans. %",
            "total",
            "over B",
        ]
        title = "4 TCP flows" if case == "4tcp" else "UDP flood + 3 TCP flows"
        out += [
            f"**{title}**",
            "",
            *table(["limit, direction"] + [f"{NAMES[v]} {c}" for v in variants for c in cols], rows),
            "",
        ]
        plot_groups[case] = (groups, _keys(cr))
    panels, labels = [], None
    if "4tcp" in plot_groups:
        g, k = plot_groups["4tcp"]
        labels = [f"{rate_name(r)}\n{'in' if d == 'to_pod' else 'out'}" for r, d in k]
        panels.append(("4 TCP flows: Jain", _series(g, k, variants, "jain_tcp"), AIM_JAIN4, False))
        panels.append(
            ("4 TCP flows: retrans. %", _series(g, k, variants, "retrans_pct"), AIM_RETRANS_PCT, True)
        )
    if panels:
        out += _bar_plot("fairness", "several flows", panels, labels, variants, img_dir, rel)
    if "udp+3tcp" in plot_groups:
        g, k = plot_groups["udp+3tcp"]
        for r in (x for rs in g.values() for x in rs):
            r["flood_share"] = r["flows"][0].get("steady_share")
        out += [""] + _bar_plot(
            "fairness-udp",
            "UDP flood beside 3 TCP flows",
            [
                ("flood share after 1.5 s", _series(g, k, variants, "flood_share"), AIM_FLOOD, False),
                ("TCP Jain", _series(g, k, variants, "jain_tcp"), AIM_JAIN3, False),
            ],
            [f"{rate_name(r)}\n{'in' if d == 'to_pod' else 'out'}" for r, d in k],
            variants,
            img_dir,
            rel,
        )
    return out


# ---- 4. overhead ---------------------------------------------------------------------------------


def section_overhead(data: dict, img_dir: str, rel: str, aims: list) -> list[str]:
    runs = data["runs"]
    rows, cpu_rows = [], []
    natra = [
        v for v in ("natra-shape-unlimited", "natra-police-unlimited") if any(r["variant"] == v for r in runs)
    ]
    for direction in ("to_pod", "from_pod"):
        z = {r["rep"]: r for r in runs if r["direction"] == direction and r["variant"] == "none"}
        if not z:
            continue
        row = [DIRECTION_NAMES[direction], fmt_spread([r["goodput_bps"] for r in z.values()], ".2f", 1e-9)]
        for v in natra:
            n = {r["rep"]: r for r in runs if r["direction"] == direction and r["variant"] == v}
            ratios = [ratio(n[k]["goodput_bps"], z[k]["goodput_bps"]) for k in n if k in z]
            row += [fmt_spread([r["goodput_bps"] for r in n.values()], ".2f", 1e-9), fmt_spread(ratios)]
            m = med(ratios)
            _aim(
                aims,
                f"4. {NAMES[v]} / no program >= {AIM_OVERHEAD}, {DIRECTION_NAMES[direction]}",
                m,
                m >= AIM_OVERHEAD,
                ".3f",
                f"short by {AIM_OVERHEAD - m:.3f}",
            )
        rows.append(row)
        for v in ("none", *natra):
            rs = [r for r in runs if r["direction"] == direction and r["variant"] == v]
            cpu_rows.append(
                [
                    DIRECTION_NAMES[direction],
                    NAMES[v],
                    fmt_spread([r["goodput_bps"] for r in rs], ".2f", 1e-9),
                    fmt_spread([r["cpu_s"] / r["wall_s"] for r in rs], ".2f"),
                    fmt_spread([r["cpu_s"] / r["wall_s"] / (r["goodput_bps"] / 1e9) for r in rs], ".2f"),
                ]
            )
    out = [
        "## 4. Overhead and CPU",
        "",
        f"One TCP flow for {data['seconds']:g} s through a Pod with Natra at 1 Pbit/s in each mode (programs "
        "attached, every packet parsed and counted; in shaping mode also the tbf + htb tree on the host veth "
        "and the IFB out of the Pod, at a rate never reached) and through a Pod with no program; runs "
        "alternate, and the ratio is taken run by run.",
        "",
        *table(
            ["direction", "no program, Gbit/s"]
            + [f"{NAMES[v]}{x}" for v in natra for x in (", Gbit/s", " / none")],
            rows,
        ),
        "",
        "CPU: the host's busy CPU time over the run (/proc/stat, all CPUs, outside idle and iowait) per "
        "second, and per Gbit/s of goodput. Sender, receiver, both limiters and everything else on the "
        "machine are in it (the machine is shared: see the load table), so it is an upper bound on what "
        "each path costs, comparable only between rows of one run.",
        "",
        *table(["direction", "variant", "Gbit/s", "CPUs busy", "CPU-s per Gbit"], cpu_rows),
        "",
    ]
    cost = data.get("datapath_cost") or {}
    if "results" in cost:
        r = cost["results"]
        out += [
            f"Per-packet cost of the program from `bench/datapath_cost.py` (BPF_PROG_TEST_RUN, repeat "
            f"{cost['repeat']}, {cost['flows']} flows in the spread cases; the same program classifies in "
            "shaping mode):",
            "",
            *table(
                ["case", "ns / packet", "x parse-only"],
                [
                    [k, _num(v["ns_per_packet"], ".1f"), _num(v["ratio_to_parse_only"], ".2f")]
                    for k, v in r.items()
                ],
            ),
            "",
        ]
    elif cost:
        out += [f"`bench/datapath_cost.py` failed: {cost.get('error')}", ""]
    return out


# ---- 5. control plane ------------------------------------------------------------------------------


def section_control(data: dict, img_dir: str, rel: str, aims: list) -> list[str]:
    variants = data["variants"]
    rows = []
    for name, v in variants.items():
        add_ms, del_ms = [x * 1e3 for x in v["add_s"]], [x * 1e3 for x in v["del_s"]]
        chain_ms = [x * 1e3 for x in v["chain_add_s"]]
        rows.append(
            [
                NAMES.get(name, name),
                f"`{v['plugin']}`",
                str(v["pods"]),
                _num(percentile(add_ms, 50), ".1f"),
                _num(percentile(add_ms, 99), ".1f"),
                _num(percentile(del_ms, 50), ".1f"),
                _num(percentile(del_ms, 99), ".1f"),
                _num(percentile(chain_ms, 50), ".1f"),
            ]
        )
    floors = data.get("process_floor_s") or {}
    client_ms = percentile([x * 1e3 for x in floors.get("natra-bundle-agent", [])], 50)
    python_ms = percentile([x * 1e3 for x in floors.get("python3 -c pass", [])], 50)
    burst_rows = []
    for name in ("natra-shape-bundle-agent", "natra-police-bundle-agent", "natra-shape-clsact-bundle-agent"):
        v = variants.get(name)
        if v:
            add_ms, del_ms = [x * 1e3 for x in v["add_s"]], [x * 1e3 for x in v["del_s"]]
            ready, later = add_ms[:DEFAULT_POOL_DEPTH], add_ms[DEFAULT_POOL_DEPTH:]
            burst_rows.append([NAMES[name], _num(percentile(ready, 50), ".1f"), _num(max(ready), ".1f"),
                               _num(percentile(later, 50), ".1f"), _num(max(later or [math.nan]), ".1f"),
                               _num(sum(add_ms) / len(add_ms), ".1f"), _attach_text(v.get("attach"))])
            why_add = (f"the first {DEFAULT_POOL_DEPTH} ADDs, which take ready objects: "
                       f"p50 {percentile(ready, 50):.1f} ms; the rest take one the loaders made meanwhile, "
                       "or the shared program (section 5)")
            _aim(aims, f"{NAMES[name]}: ADD p50 <= {AIM_ADD_P50_MS} ms", percentile(add_ms, 50),
                 percentile(add_ms, 50) <= AIM_ADD_P50_MS, ".1f", why_add)
            _aim(aims, f"{NAMES[name]}: ADD p99 <= {AIM_ADD_P99_MS} ms", percentile(add_ms, 99),
                 percentile(add_ms, 99) <= AIM_ADD_P99_MS, ".1f", why_add)
            _aim(aims, f"{NAMES[name]}: DEL p50 <= {AIM_DEL_P50_MS} ms", percentile(del_ms, 50),
                 percentile(del_ms, 50) <= AIM_DEL_P50_MS, ".1f",
                 f"the thin client's start alone is {_num(client_ms, '.1f')} ms (CNI VERSION, section 5)")
    paced_rows = []
    for name, v in (data.get("paced") or {}).items():
        add_ms, del_ms = [x * 1e3 for x in v["add_s"]], [x * 1e3 for x in v["del_s"]]
        paced_rows.append([NAMES[name], str(len(add_ms)), _num(percentile(add_ms, 50), ".1f"),
                           _num(percentile(add_ms, 99), ".1f"), _num(max(add_ms), ".1f"),
                           _num(percentile(del_ms, 50), ".1f"), _num(percentile(del_ms, 99), ".1f"),
                           _attach_text(v.get("attach"))])
        why = (f"one ADD every {data.get('paced_gap_s')} s, each finds a verified object ready; the thin "
               f"client's start alone is {_num(client_ms, '.1f')} ms and `python3 -c pass` "
               f"{_num(python_ms, '.1f')} ms in this sitting (CNI VERSION, section 5)")
        for what, value, aim in (("ADD p50", percentile(add_ms, 50), AIM_ADD_P50_MS),
                                 ("ADD p99", percentile(add_ms, 99), AIM_ADD_P99_MS),
                                 ("DEL p50", percentile(del_ms, 50), AIM_DEL_P50_MS)):
            _aim(aims, f"{NAMES[name]}, Pods at a steady pace: {what} <= {aim} ms", value, value <= aim,
                 ".1f", why)
    std = variants.get("bandwidth")
    ratio_rows = []
    if std:
        s50 = percentile(std["add_s"], 50)
        for name, v in variants.items():
            if name.startswith("natra"):
                add = percentile(v["add_s"], 50) / s50
                dele = percentile(v["del_s"], 50) / percentile(std["del_s"], 50)
                ratio_rows.append(f"{NAMES[name]} ADD p50 is {_times(add)} the standard plugin's; "
                                  f"DEL p50 {_times(dele)}.")
    out = [
        "## 5. Control plane",
        "",
        f"{next(iter(variants.values()))['pods']} Pods ADDed one after another through the chain, then "
        "DELeted; the time is the limiter plugin's own call (a fresh process each, as a runtime runs it), "
        "in ms; *chain ADD* adds `ptp` + `host-local`. p99 is nearest-rank. *+ agent*: the plugin is the "
        "thin client of a running `natra agent` (the DaemonSet's container; docs/design.md, \"The node "
        "agent\"), which keeps verified programs ready and answers DEL before the RCU waits of detaching.",
        "",
        *table(
            ["variant", "plugin timed", "Pods", "ADD p50", "ADD p99", "DEL p50", "DEL p99", "chain ADD p50"],
            rows,
        ),
        "",
        *ratio_rows,
        "",
    ]
    if burst_rows:
        out += [
            f"The agent keeps {DEFAULT_POOL_DEPTH} verified objects of the default tuning ready "
            f"(`natra agent --pool`) and verifies new ones on {data.get('agent_loaders', 1)} thread(s) "
            f"at once (`--loaders`, at the lowest priority), and keeps {DEFAULT_SHARED_SLOTS} Pods' maps "
            "ready for its shared interim program (`--shared-slots`). These 50 ADDs come back to back; "
            "an ADD that finds no verified object ready is bound to the shared program at once and gets "
            "its own program after the burst (docs/design.md, \"The shared interim program\"). The rows "
            "with `attachMode: auto` (the default) are answered on clsact and moved to tcx once the burst "
            "is over (*attached, before the DELs*: the kernel's view once the Pods were settled, and how "
            "many the first look after the last ADD found still on the shared program). ADD in ms, "
            "split there:",
            "",
            *table(["variant", f"first {DEFAULT_POOL_DEPTH}: p50", "max", "the rest: p50", "max",
                    "mean of all", "attached, before the DELs"], burst_rows),
            "",
        ]
    if paced_rows:
        out += [
            f"The same Pods started at a steady pace instead: one ADD every {data.get('paced_gap_s')} s "
            "(longer than a verification, so each ADD finds a verified object ready), the variants "
            "taking turns, then the DELs; "
            "the agent as above, ms. The agent answers an `attachMode: auto` ADD (the default) with the "
            "programs on clsact filters and moves the Pod to tcx links once no call has come for "
            f"{IDLE_BEFORE_MOVE_S * 1000:.0f} ms (two RCU grace periods, off the ADD; docs/design.md, "
            "\"The node agent\"). *Attached, before the DELs* is what the kernel had once the moves were "
            "done, and how long after the last ADD that was:",
            "",
            *table(["variant", "Pods", "ADD p50", "ADD p99", "ADD max", "DEL p50", "DEL p99",
                    "attached, before the DELs"], paced_rows),
            "",
        ]
    if floors:
        out += [
            "Where the time goes: the same executables answering CNI `VERSION` (process start, imports, "
            f"argument handling; no kernel work), {len(next(iter(floors.values())))} calls each, ms:",
            "",
            *table(
                ["executable", "p50", "max"],
                [
                    [f"`{k}`", _num(percentile([x * 1e3 for x in v], 50), ".1f"), _num(max(v) * 1e3, ".1f")]
                    for k, v in floors.items()
                ],
            ),
            "",
        ]
    mem_rows = []
    for name, v in variants.items():
        delta = v["kernel_kb_delta"]
        per_pod_kb = sum(delta.values()) / max(v["pods"], 1)
        if "natra_memory" in v:
            m = v["natra_memory"]
            objs = (
                f"{med([x['maps'] for x in m]):.0f} maps + {med([x['progs'] for x in m]):.0f} programs "
                f"({med([x['pins'] for x in m]):.0f} pins incl. links and meta)"
            )
            map_kib = med([x["map_bytes"] for x in m]) / 1024
            prog_kib = med([x["prog_bytes"] for x in m]) / 1024
            exact = f"{map_kib:.0f} KiB maps + {prog_kib:.0f} KiB programs"
            t = v.get("tc_delta", {})
            if t.get("htb"):
                objs += (
                    f"; qdiscs {t.get('tbf', 0) / v['pods']:.0f} tbf + {t['htb'] / v['pods']:.0f} htb + "
                    f"{t.get('bfifo', 0) / v['pods']:.0f} bfifo + {t.get('natra_ifb', 0) / v['pods']:.0f}"
                    " IFB device"
                )
                exact += " (qdiscs not counted)"
        elif name == "bandwidth":
            t = v["tc_delta"]
            objs = (
                f"{t['tbf'] / v['pods']:.0f} tbf + {t['ingress'] / v['pods']:.0f} ingress qdisc + "
                f"{t['filters'] / v['pods']:.0f} filter(s) + {t['ifb'] / v['pods']:.0f} ifb device"
            )
            exact = "not exposed by the kernel"
        else:
            objs, exact = "veth pair + routes (ptp)", "-"
        mem_rows.append([NAMES.get(name, name), objs, exact, f"{per_pod_kb:.0f}"])
    out += [
        "Memory per Pod. Natra's figure is exact: `bytes_memlock` of its pinned maps and programs "
        "(bpftool). The standard plugin's qdiscs and ifb device report no size, so the last column "
        "compares all variants the same way: the growth of /proc/meminfo SUnreclaim + Percpu + "
        "VmallocUsed + KernelStack + PageTables across the ADDs, divided by the Pods. It includes "
        "ptp's veth pair and routes (see the ptp-only row) and is noisy (other processes allocate too; "
        "one measurement per variant).",
        "",
        *table(
            ["variant", "objects per Pod", "exact kernel bytes per Pod", "meminfo growth per Pod, KiB"],
            mem_rows,
        ),
        "",
    ]
    if std and std.get("tbf_options"):
        o = std["tbf_options"]
        out += [
            f"The standard plugin's TBF at {rate_name(data['rate_bps'])} with containerd's burst: rate "
            f"{o.get('rate')} B/s, burst {o.get('burst')} B, latency {o.get('lat')} us "
            "(as `tc -j` shows it).",
            "",
        ]
    by_name = next(
        (v["natra_memory"][0].get("map_bytes_by_name") for v in variants.values() if v.get("natra_memory")),
        None,
    )
    if by_name:
        out += [
            "Natra's maps of one Pod (`bytes_memlock`, default tuning at this rate):",
            "",
            *table(["map", "KiB"], [[f"`{k}`", f"{b / 1024:.1f}"] for k, b in sorted(by_name.items())]),
            "",
        ]
    out += _plot_control(variants, img_dir, rel)
    return out


def _plot_control(variants, img_dir: str, rel: str) -> list[str]:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    names = list(variants)
    for ax, what in zip(axes, ("add_s", "del_s"), strict=True):
        data = [[x * 1e3 for x in variants[n][what]] for n in names]
        ax.boxplot(data, whis=(1, 99), showfliers=True)
        ax.set_xticks(
            range(1, len(names) + 1), [NAMES.get(n, n).replace(" (", "\n(") for n in names], fontsize=7
        )
        ax.set_yscale("log")
        ax.set_title(f"{what[:3].upper()} latency per Pod (ms, log)")
    _save(fig, img_dir, "control")
    return [f"![control plane]({rel}/{IMG_PREFIX}control.png)"]


# ---- 6. scale ------------------------------------------------------------------------------------


def section_scale(data: dict, img_dir: str, rel: str, aims: list) -> list[str]:
    rows = []
    for name, v in data["variants"].items():
        add_ms = [x * 1e3 for x in v["add_s"]]
        first, last = add_ms[:10], add_ms[-10:]
        alone = [r["goodput_bps"] / data["rate_bps"] for r in v["alone"]]
        crowded = [r["goodput_bps"] / data["rate_bps"] for r in v["crowded"]]
        mem = (
            f"{v['map_bytes_total'] / 2**20:.1f} MiB maps + {v['prog_bytes_total'] / 2**20:.1f} MiB progs, "
            f"{v['pins_total']} pins"
            if "map_bytes_total" in v
            else "-"
        )
        rows.append(
            [
                NAMES[name],
                _num(percentile(first, 50), ".1f"),
                _num(percentile(last, 50), ".1f"),
                _num(percentile(add_ms, 99), ".1f"),
                mem,
                f"{sum(v['kernel_kb_delta'].values()) / 1024:.1f}",
                fmt_spread(alone),
                fmt_spread(crowded),
                _num(ratio(med(crowded), med(alone)), ".3f"),
                fmt_spread([r["bytes_over"] for r in v["alone"] + v["crowded"]], ".0f"),
            ]
        )
        if name.startswith("natra"):
            worst = max(r["bytes_over"] for r in v["alone"] + v["crowded"])
            aims.append(
                (
                    f"6. {NAMES[name]} bytes over R*t+B = 0 (payload), one Pod alone and among the others",
                    _num(worst, ".0f"),
                    met(worst == 0),
                    "" if worst == 0 else f"{worst:.0f} bytes over",
                )
            )
    out = [
        "## 6. Scale",
        "",
        f"{data['pods']} Pods limited to {rate_name(data['rate_bps'])} on this node, "
        "ADDed one after another. "
        "The first Pod's TCP download (into the Pod) is measured alone and again with the others attached "
        "(idle). ADD times in ms; memory as in section 5.",
        "",
        *table(
            [
                "limiter",
                "ADD p50, first 10",
                "ADD p50, last 10",
                "ADD p99",
                "exact kernel bytes (all Pods)",
                "meminfo growth, MiB",
                "goodput/limit alone",
                f"with {data['pods'] - 1} others",
                "ratio",
                "over (payload B)",
            ],
            rows,
        ),
        "",
    ]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3))
    for name, v in data["variants"].items():
        ax.plot(
            range(1, len(v["add_s"]) + 1),
            [x * 1e3 for x in v["add_s"]],
            ".",
            ms=4,
            color=COLORS.get(name),
            label=NAMES[name],
        )
    ax.set_yscale("log")
    ax.set_xlabel("Pods on the node")
    ax.set_ylabel("ADD ms (log)")
    ax.set_title("ADD latency as the node fills")
    ax.legend(fontsize=8)
    _save(fig, img_dir, "scale")
    return out + [f"![scale]({rel}/{IMG_PREFIX}scale.png)"]


# ---- 7. rate and burst sweep ---------------------------------------------------------------------


def _bits_name(bits: int) -> str:
    return f"{bits:,} bit"


def _sweep_groups(runs: list[dict]) -> tuple[dict, list]:
    groups = defaultdict(list)
    for r in runs:
        groups[(r["rate_bps"], r["asked_burst_bits"], r["direction"], r["variant"])].append(r)
    keys = sorted({k[:3] for k in groups}, key=lambda k: (k[0], k[1], k[2] != "to_pod"))
    return groups, keys


def sweep_misses(data: dict, variant: str = SHAPE) -> list[dict]:
    """Points where `variant`'s rate after the burst is below the aim while the standard plugin's is not."""
    groups, keys = _sweep_groups(data["runs"])
    out = []
    for key in keys:
        n, s = groups.get((*key, variant), []), groups.get((*key, "standard"), [])
        if not n or not s:
            continue
        ns, ss = med([r["steady_share"] for r in n]), med([r["steady_share"] for r in s])
        if ss >= AIM_SWEEP_SHARE and not ns >= AIM_SWEEP_SHARE:
            out.append(
                {"rate_bps": key[0], "asked": key[1], "direction": key[2], "natra": ns, "standard": ss}
            )
    return out


def section_sweep(data: dict, img_dir: str, rel: str, aims: list) -> list[str]:
    groups, keys = _sweep_groups(data["runs"])
    variants = _variants(data["runs"])
    rows = []
    for key in keys:
        rate, asked, direction = key
        row = [rate_name(rate), _bits_name(asked), DIRECTION_NAMES[direction]]
        for v in variants:
            rs = groups.get((*key, v), [])
            if not rs:
                row += ["-"] * 4
                continue
            r = rs[0]
            row += [
                _bits_name(r["promise_bits"]),
                _num(r["steady_share"], ".3f"),
                _num(r.get("retrans_pct", float("nan")), ".2f"),
                _num(r["bytes_over"], ".0f"),
            ]
        rows.append(row)
    if SHAPE in variants:
        misses = sweep_misses(data)
        where = ", ".join(
            f"{rate_name(m['rate_bps'])}/{m['asked']:,} bit {DIRECTION_NAMES[m['direction']]} "
            f"{m['natra']:.2f}"
            for m in misses
        )
        aims.append(
            (
                f"7. sweep: {NAMES[SHAPE]} after the burst >= {AIM_SWEEP_SHARE} of the limit wherever the "
                "standard plugin is",
                f"{len(misses)} of {len(keys)} points below",
                met(not misses),
                where,
            )
        )
        worst = max((r["bytes_over"] for r in data["runs"] if r["variant"] == SHAPE), default=0)
        _aim(
            aims,
            f"7. sweep: {NAMES[SHAPE]} bytes over R*t+max(B, M) = 0 (payload)",
            worst,
            worst == 0,
            ".0f",
            f"{worst:.0f} bytes over",
        )
    out = [
        "## 7. Rate and burst sweep, at the points where a queue matters",
        "",
        f"One TCP flow ({data.get('congestion', 'cubic')}) per point through each limiter at the same asked "
        "(R, B): small bursts (one frame, 50 ms of rate) at 10M, 100M and 1G both ways, one frame at "
        "64k and 1M into the Pod (issue 14's full sweep, down to 1 kbit/s and up to 500 ms of burst, runs "
        "with the settings of `bench/scenarios.py`; a burst of 500 ms of rate is section 1). Each limiter "
        "is checked against its own promise *B*: policing R*t + max(B, 4 GSO packets), shaping R*t + "
        "max(B, M) (M, the largest packet its tbf passes whole, is 1 ms of rate and at least two frames), "
        f"the standard plugin R*t + B. *After the burst* is the payload rate once the receiver got B, "
        f"over the rest of the run ({data['interval_s']:g} s intervals).",
        "",
        *table(
            ["limit", "asked burst", "direction"]
            + [f"{NAMES[v]} {c}" for v in variants for c in ("B", "after the burst", "retrans. %", "over B")],
            rows,
        ),
        "",
    ]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.4))
    width = 0.8 / max(len(variants), 1)
    for i, v in enumerate(variants):
        xs = [k + (i - (len(variants) - 1) / 2) * width for k in range(len(keys))]
        ax.bar(
            xs,
            [med([r["steady_share"] for r in groups.get((*k, v), [])]) for k in keys],
            width,
            color=COLORS.get(v),
            label=NAMES[v],
        )
    ax.axhline(AIM_SWEEP_SHARE, color="k", ls="--", lw=0.8)
    ax.set_xticks(
        range(len(keys)),
        [f"{rate_name(r)}\n{_burst_label(r, b)}\n{'in' if d == 'to_pod' else 'out'}" for r, b, d in keys],
        fontsize=6,
    )
    ax.set_ylabel("goodput / limit after the burst")
    ax.legend(fontsize=7)
    _save(fig, img_dir, "sweep")
    return out + [f"![sweep]({rel}/{IMG_PREFIX}sweep.png)"]


def _burst_label(rate_bps: int, bits: int) -> str:
    if bits <= 12112:
        return "1 frame"
    return f"{bits / rate_bps * 1e3:.0f} ms"


# ---- 8. shaping's knobs -----------------------------------------------------------------------------


def section_knobs(data: dict, img_dir: str, rel: str, aims: list) -> list[str]:
    runs = data["runs"]
    q = [r for r in runs if r["knob"] == "queue"]
    c = [r for r in runs if r["knob"] == "classes"]
    out = [
        "## 8. Shaping's knobs: queue bound and class count",
        "",
        "A shaped Pod (everything else default) with 4 TCP flows into it "
        f"({data.get('congestion', 'cubic')}, "
        f"{data['seconds']:g} s) per queue bound, and at 100M per class count also a UDP flood beside 3 TCP "
        "flows. *Queue* is each class's bfifo as planned (the `queue` knob in ms of rate, never below 64 "
        "full frames); RTT is the senders' mean smoothed RTT. docs/tuning.md reads these runs.",
        "",
    ]
    if q:
        groups = defaultdict(list)
        for r in q:
            groups[(r["rate_bps"], r["options"]["queue"])].append(r)
        rows = []
        for (rate, knob), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[1][0]["queue_bytes"])):
            rows.append(
                [
                    rate_name(rate),
                    knob,
                    f"{rs[0]['queue_bytes']:,} B = {rs[0]['queue_ms']:.1f} ms",
                    fmt_spread([r["retrans_pct"] for r in rs], ".3f"),
                    fmt_spread([_rtt_ms(r) for r in rs], ".1f"),
                    fmt_spread([r["jain_tcp"] for r in rs]),
                    fmt_spread([r["steady_share"] for r in rs]),
                    fmt_spread([r.get("shaper_drops") for r in rs], ".0f"),
                ]
            )
        out += [
            "**Queue bound** (4 TCP flows):",
            "",
            *table(
                [
                    "limit",
                    "queue asked",
                    "queue per class",
                    "retrans. %",
                    "RTT ms",
                    "Jain",
                    "goodput after 1.5 s",
                    "queue drops",
                ],
                rows,
            ),
            "",
        ]
        plt = _plt()
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for rate, color in zip(
            sorted({r["rate_bps"] for r in q}), ("#d62728", "#2ca02c", "#1f77b4"), strict=False
        ):
            pts = sorted(
                ((rs[0]["queue_ms"], rs) for (rt, _), rs in groups.items() if rt == rate), key=lambda x: x[0]
            )
            xs = [x for x, _ in pts]
            axes[0].plot(
                xs,
                [med([r["retrans_pct"] for r in rs]) for _, rs in pts],
                "o-",
                color=color,
                label=rate_name(rate),
            )
            axes[1].plot(
                xs, [med([_rtt_ms(r) for r in rs]) for _, rs in pts], "o-", color=color, label=rate_name(rate)
            )
        axes[0].axhline(AIM_RETRANS_PCT, color="k", ls="--", lw=0.8)
        axes[0].set_ylabel("retransmitted % of segments")
        axes[1].set_ylabel("senders' mean RTT, ms")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("queue per class, ms of rate")
            ax.legend(fontsize=7)
        fig.suptitle("4 TCP flows into a shaped Pod: the queue bound", fontsize=9)
        _save(fig, img_dir, "knobs-queue")
        out += [f"![queue bound]({rel}/{IMG_PREFIX}knobs-queue.png)", ""]
    if c:
        groups = defaultdict(list)
        for r in c:
            groups[(r["classes"], r["case"])].append(r)
        rows = []
        for (n, case), rs in sorted(groups.items()):
            rows.append(
                [
                    str(n),
                    case,
                    fmt_spread([r["jain_tcp"] for r in rs]),
                    (fmt_spread([r["flows"][0].get("steady_share") for r in rs]) if case == "udp+3tcp"
                     else "-"),
                    fmt_spread([r["retrans_pct"] for r in rs], ".3f"),
                    fmt_spread([_rtt_ms(r) for r in rs], ".1f"),
                ]
            )
        out += [
            "**Heavy classes** (100M):",
            "",
            *table(["classes", "case", "TCP Jain", "flood share after 1.5 s", "retrans. %", "RTT ms"], rows),
            "",
        ]
    return out


SECTIONS = {
    "rate": section_rate,
    "latency": section_latency,
    "fairness": section_fairness,
    "overhead": section_overhead,
    "control": section_control,
    "scale": section_scale,
    "sweep": section_sweep,
    "knobs": section_knobs,
}


PEER_RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_cost_results.json")


def _times(ratio: float) -> str:
    """A ratio as '3x', or '0.36x' below 10 (rounding 0.4 to '0x' says nothing)."""
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.2g}x"


NO_LOCK_SUFFIX = "_nolock"  # peer_cost --lock-cost: a build without the lock, measurement only


def _peer_mode_label(mode: str) -> str:
    if mode.endswith(NO_LOCK_SUFFIX):
        return f"{mode.removesuffix(NO_LOCK_SUFFIX)} without the lock*"
    return mode


def section_peer(path: str = PEER_RECORD) -> list[str]:
    """Section 9 from the record of `bench/peer_cost.py --json` (run apart: it needs the
    peer's source, which `make bench` does not fetch); nothing when there is none."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        d = json.load(f)
    rows = []
    for key, row in d["results"].items():
        case, flows = key.split("/")
        peer = row.get("peer", {}).get("ns_above_trivial")
        cells = [case.replace("_", " "), f"{int(flows):,}"]
        for m in d["modes"]:
            ours = row[f"natra_{m}"]["ns_above_trivial"]
            cells.append(f"{ours:.0f}")
        cells.append(f"{peer:.0f}" if peer is not None else "-")
        for m in d["modes"]:
            ours = row[f"natra_{m}"]["ns_above_trivial"]
            cells.append(f"{ours / peer:.2f}" if peer else "-")
        rows.append(cells)
    at_most = {m_: sum(1 for r in d["results"].values() if "peer" in r
                       and r[f"natra_{m_}"]["ns_above_trivial"] <= r["peer"]["ns_above_trivial"])
               for m_ in d["modes"] if not m_.endswith(NO_LOCK_SUFFIX)}
    no_lock = any(m_.endswith(NO_LOCK_SUFFIX) for m_ in d["modes"])
    mem = d.get("memory", {})
    mem_rows = [[name.replace("_", " "), f"{v['total'] / 1024:,.0f} KiB",
                 (f"sketch {v['width']} x {v['depth']}, flow table {v['flow_table']:,}" if "width" in v
                  else "its maps as it declares them")] for name, v in mem.items()]
    m = d["machine"]
    return [
        "## 9. Per-packet cost and BPF memory beside the original Go Natra",
        "",
        f"`bench/peer_cost.py`, {d['date_utc']}, {m['cpu']} ({m['cpus']} CPUs), Linux {m['kernel']}, "
        f"load average {d['load_before']} before and {d['load_after']} after; peer: {d['peer']}. "
        "BPF_PROG_TEST_RUN on 1514-byte TCP frames, ns above a return-only program, median of "
        f"{d['rounds']} interleaved rounds (docs/datapath-cost.md has the method and the breakdown).",
        "",
        *table(["case", "flows", *[f"Natra {_peer_mode_label(m_)} ns" for m_ in d["modes"]], "peer ns",
                *[f"{_peer_mode_label(m_)} / peer" for m_ in d["modes"]]], rows),
        "",
        "At or below the peer (the aim of issue 18): "
        + ", ".join(f"{m_} {n} of {len(rows)} cases" for m_, n in at_most.items())
        + ". docs/datapath-cost.md says where the rest goes and why.",
        "",
        *(["\\* Measurement only (`--lock-cost`): the same source built without the lock, to show "
           "what the lock costs a frame. Never shipped, since without the lock neither R*t+B nor "
           "\"no false negatives\" holds when CPUs share a direction; not counted towards the aim.",
           ""] if no_lock else []),
        "BPF memory per Pod (the kernel's memlock charge of every map and program of one loaded object):",
        "",
        *table(["object", "memlock", "sizes"], mem_rows),
        "",
    ]


def render(record: dict, img_dir: str, rel: str) -> str:
    m = record["machine"]
    aims: list = []
    body: list[str] = []
    for name, fn in SECTIONS.items():
        if name in record["scenarios"]:
            body += fn(record["scenarios"][name], img_dir, rel, aims) + [""]
        elif name in record.get("errors", {}):
            body += [f"## {name}", "", f"This scenario failed: `{record['errors'][name]}`", ""]
    st = record["settings"]
    missed = sum(1 for a in aims if a[2] != "met")
    head = [
        "# Benchmarks: Natra's two modes beside the standard bandwidth plugin",
        "",
        f"Generated by `make bench` (`python3 -m bench.run_all`) on {record['date_utc']}"
        + (
            " — **smoke run: durations and repeats cut, figures not meaningful**"
            if record.get("smoke")
            else ""
        )
        + f"; the run took {record.get('seconds', 0) / 60:.0f} min.",
        "",
        f"Machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}, {m['iperf3']}, Python {m['python']}; "
        f"host default TCP congestion control {m.get('tcp_congestion_control', '?')}.",
        "",
        *[line for name, o in sorted(record.get("scenario_machines", {}).items()) for line in (
            f"Scenario `{name}` was re-run on another machine: {o['nproc']} CPUs, {o['cpu']}, "
            f"Linux {o['kernel']}; compare its figures with each other, not with other sections.", "")],
        *[line for caveat in record.get("caveats", []) for line in (caveat, "")],
        "## Method",
        "",
        "- Every Pod is a network namespace made through the real CNI chain (Debian's `ptp` + `host-local`, "
        "then `natra`, or the standard `bandwidth` plugin, or nothing), with containerd-shaped `bandwidth` "
        'capability args. Traffic comes from a "remote node" namespace routed through the host, so a drop '
        "at the host veth is a loss on the wire. *Into the Pod*: the remote node sends; *out of the Pod*: "
        "the Pod sends.",
        "- Contenders, side by side in the same runs: **Natra shape** (Natra's conflist entry as shipped: "
        "shaping is the default; every such Pod is checked to carry the tbf + htb tree on its host veth and "
        'its IFB device), **Natra police** (`"mode": "police"` in the entry; checked to carry no tree), '
        "and the **standard plugin**, given the same burst B as Natra (500 ms of rate, what Natra applies "
        "for containerd's request) so all three make the same R*t+B promise.",
        f"- TCP senders use **{st.get('congestion', 'cubic')}** (Linux's default and most nodes'): the bench "
        "sets `net.ipv4.tcp_congestion_control` in every sending namespace, adds the algorithm to the root "
        "namespace's `tcp_allowed_congestion_control` if it is missing and puts the old value back at the "
        "end. This machine's own default is BBR; section 1 also shows BBR senders, apart.",
        f"- Repeats: {st['repeats']} at 10M and 100M, "
        f"{min(st['repeats'], st.get('repeats_1g', st['repeats']))} "
        f"at 1G, interleaved across contenders (a slow moment of the machine hits all of them). The issue "
        "asks for medians over 5 runs; with three contenders, three rates, two directions and 2 shared CPUs "
        "that is about 80 minutes, so `make bench` runs 3 (2 at 1G, where runs vary least and cost the most "
        "CPU) to stay near 35 minutes; `python3 -m bench.run_all --repeats 5` runs 5. Cells are "
        "`median [min-max]` over runs.",
        "",
    ]
    cond = record.get("conditions") or {}
    if cond:
        head += [
            "The machine was shared with other work while this ran (tests and simulations of other "
            "engineers); the 1-minute load average on its 2 CPUs around each scenario:",
            "",
            *table(
                ["scenario", "finished", "minutes", "load before", "load after"],
                [
                    [
                        k,
                        v["date_utc"],
                        f"{v['seconds'] / 60:.1f}",
                        f"{v['loadavg_1min_before']:.1f}",
                        f"{v['loadavg_1min_after']:.1f}",
                    ]
                    for k, v in cond.items()
                ],
            ),
            "",
        ]
    if aims:
        head += [
            "## Aims (issues 16 and 18), judged on Natra's default mode (shape) where a row names no mode",
            "",
            f"{len(aims) - missed} of {len(aims)} met.",
            "",
            *table(
                ["aim", "measured (median)", "", "by how much / closest honest figure"],
                [list(a) for a in aims],
            ),
            "",
        ]
    if record.get("analysis"):
        head += ["## Misses and findings, from the measurements", "", *record["analysis"], ""]
    body += section_peer()
    return "\n".join(head + body) + "\n"


def write(record: dict, out: str, img_dir: str) -> None:
    from bench import analysis

    record = {**record, "analysis": analysis.notes(record)}
    rel = os.path.relpath(img_dir, os.path.dirname(os.path.abspath(out)))
    text = render(record, img_dir, rel)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if not args:
        print("usage: python3 -m bench.report RECORD.json [OUT.md [IMG_DIR]]", file=sys.stderr)
        return 2
    with open(args[0]) as f:
        record = json.load(f)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = args[1] if len(args) > 1 else os.path.join(repo, "docs", "benchmarks.md")
    img = args[2] if len(args) > 2 else os.path.join(repo, "docs", "img")
    write(record, out, img)
    return 0


if __name__ == "__main__":
    sys.exit(main())
