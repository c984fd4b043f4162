"""docs/benchmarks.md and its plots, from the record of one `bench.run_all` run.

Owns: the document's shape: machine and date, how to reproduce, the aims
table (met or missed, by how much), one section per scenario with its table
and plot, every figure the median over the repeated runs with [min-max]
after it, and ratios taken run by run inside the same run of the bench.
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

from bench.stats import WIRE_PER_PAYLOAD, jain, percentile, ratio, spread

IMG_PREFIX = "bench-"
NAMES = {
    "natra": "Natra",
    "standard": "standard plugin",
    "standard-ctrd": "standard plugin, containerd burst",
    "none": "no limiter (ptp only)",
    "natra-python": "Natra (python3 -m natra)",
    "natra-bundle": "Natra (node bundle)",
    "bandwidth": "standard bandwidth plugin",
    "natra-unlimited": "Natra at 1 Pbit/s",
}
COLORS = {
    "natra": "#1f77b4",
    "standard": "#ff7f0e",
    "none": "#7f7f7f",
    "natra-python": "#1f77b4",
    "natra-bundle": "#17becf",
    "bandwidth": "#ff7f0e",
}
DIRECTION_NAMES = {"to_pod": "into the Pod", "from_pod": "out of the Pod"}
# The aims of issue 8.
AIM_SHARE = 0.93
AIM_P99_RATIO = 1.5
AIM_JAIN = 0.95
AIM_OVERHEAD = 0.95


# ---- formatting -------------------------------------------------------------------------------


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


# ---- 1. rate accuracy ------------------------------------------------------------------------


def section_rate(data: dict, img_dir: str, rel: str, aims: list) -> list[str]:
    runs = data["runs"]
    groups = defaultdict(list)
    for r in runs:
        groups[(r["rate_bps"], r["direction"], r["variant"])].append(r)
    keys = sorted({(k[0], k[1]) for k in groups}, key=lambda k: (k[0], k[1] != "to_pod"))
    goodput_rows, promise_rows = [], []
    for rate, direction in keys:
        n, s = groups.get((rate, direction, "natra"), []), groups.get((rate, direction, "standard"), [])
        by_rep = {r["rep"]: r for r in s}
        ratios = [ratio(r["goodput_bps"], by_rep[r["rep"]]["goodput_bps"]) for r in n if r["rep"] in by_rep]
        where = [rate_name(rate), DIRECTION_NAMES[direction]]
        goodput_rows.append([
            *where,
            fmt_spread([r["share"] for r in n]),
            fmt_spread([r.get("steady_share") for r in n]),
            fmt_spread([r["share"] for r in s]),
            fmt_spread([r.get("steady_share") for r in s]),
            fmt_spread(ratios),
        ])
        promise_rows.append([
            *where,
            fmt_spread([r["retransmits"] for r in n], ".0f"),
            fmt_spread([r["retransmits"] for r in s], ".0f"),
            fmt_spread([r["bytes_over"] for r in n], ".0f"),
            fmt_spread([r["bytes_over"] for r in s], ".0f"),
            fmt_spread([r["bytes_over_wire"] for r in n], ".0f"),
            fmt_spread([r["bytes_over_wire"] for r in s], ".0f"),
        ])
        share = med([r["share"] for r in n])
        aims.append((
            f"1. goodput / limit >= {AIM_SHARE}, {rate_name(rate)} {DIRECTION_NAMES[direction]}",
            _num(share, ".3f"),
            met(share >= AIM_SHARE),
            "" if share >= AIM_SHARE else f"short by {AIM_SHARE - share:.3f} of the limit",
        ))
        worst = max((r["bytes_over"] for r in n), default=0)
        aims.append((
            f"1. Natra bytes over R*t+B = 0 (payload), {rate_name(rate)} {DIRECTION_NAMES[direction]}",
            _num(worst, ".0f"),
            met(worst == 0),
            "" if worst == 0 else f"{worst:.0f} bytes over",
        ))
    out = [
        "## 1. Rate accuracy",
        "",
        f"One TCP bulk flow (iperf3, {data['bulk_s']:g} s) into the Pod from the remote-node namespace, "
        "and out of it (iperf3 -R). Goodput is iperf3's receiver-side payload rate divided by the limit; "
        "over the whole run it includes the burst B spent at the start (B/(R*t) = 0.05 of the limit over "
        "10 s), so the column *after 2 s* gives the rate once B is spent. "
        "B is the burst Natra applies for containerd's request (`default_burst_bits(R, 2**32-1)`, "
        "500 ms of rate); the standard plugin is given the same B here so both make the same promise. "
        "Payload is at most 1448/1514 = 0.956 of the frame bytes a qdisc counts.",
        "",
        *table(["limit", "direction", "Natra goodput/limit", "Natra after 2 s", "std goodput/limit",
                "std after 2 s", "Natra / std goodput"], goodput_rows),
        "",
        "*Bytes over R\\*t+B* is the largest excess over any window of consecutive 0.1 s receiver "
        "intervals, counted in payload bytes (a floor under what any limiter counts, so anything above "
        f"0 breaks the promise) and in wire bytes (payload x {WIRE_PER_PAYLOAD:.4f}: every 1448-byte "
        "segment in a 1514-byte frame, as a qdisc counts a GSO packet). Retransmissions are the "
        "sender's, per run.",
        "",
        *table(["limit", "direction", "Natra retrans.", "std retrans.", "Natra over, payload B",
                "std over, payload B", "Natra over, wire B", "std over, wire B"], promise_rows),
        "",
    ]
    out += _plot_rate(groups, keys, img_dir, rel)
    ctrd = sorted(data.get("containerd_burst") or [], key=lambda r: r["rep"])
    if ctrd:
        r0 = ctrd[0]
        later = [r["share"] for r in ctrd[1:]]
        out += [
            "",
            f"**The standard plugin as containerd configures it** ({rate_name(r0['rate_bps'])} into the Pod, "
            "burst 2^32-1 bits taken as it is: a 537 MB bucket, 43 s of rate). Runs back to back on one "
            "fresh Pod:",
            "",
            *table(
                ["run", "goodput / limit", "retransmits", "bytes over R*t+B, its own B",
                 "bytes over R*t+B with Natra's B (payload)"],
                [[str(r["rep"] + 1), _num(r["share"], ".3f"), _num(r["retransmits"], ".0f"),
                  _num(r["bytes_over"], ".0f"), _num(r["bytes_over_natra_b"], ".0f")] for r in ctrd],
            ),
            "",
            f"The first run after ADD got {r0['share']:.2f}x the limit: the bucket starts full. "
            + (f"Later runs got {min(later):.3f}-{max(later):.3f}x because the bucket, drained by the first "
               "run, refills at the limit rate and takes 43 s to do so. " if later else "")
            + "Natra clamps the same request to 500 ms of rate.",
        ]
    rows = []
    for rate, direction in keys:
        natra_runs = groups.get((rate, direction, "natra"), [])
        vs = [r["natra_verdicts"] for r in natra_runs if r.get("natra_verdicts")]
        names = sorted({k for v in vs for k in v})
        if vs:
            rows.append([rate_name(rate), DIRECTION_NAMES[direction],
                         ", ".join(f"{k} {med([v.get(k, 0) for v in vs]):.0f}" for k in names)])
    if rows:
        out += ["", "Natra's verdicts per run (packets, i.e. GRO/GSO super-packets, median over runs; "
                "from its pinned counters):", "", *table(["limit", "direction", "verdicts"], rows)]
    return out


def _plot_rate(groups, keys, img_dir: str, rel: str) -> list[str]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.38
    for i, variant in enumerate(("natra", "standard")):
        xs, ys, lo, hi = [], [], [], []
        for j, key in enumerate(keys):
            vals = [r["share"] for r in groups.get((*key, variant), [])]
            if not vals:
                continue
            m, a, b = _errbar(vals)
            xs.append(j + (i - 0.5) * width)
            ys.append(m)
            lo.append(a)
            hi.append(b)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, color=COLORS[variant], label=NAMES[variant])
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(AIM_SHARE, color="red", lw=0.8, ls="--", label=f"aim {AIM_SHARE}")
    ax.set_xticks(range(len(keys)), [f"{rate_name(r)}\n{DIRECTION_NAMES[d]}" for r, d in keys], fontsize=8)
    ax.set_ylabel("goodput / limit")
    ax.set_title("Rate accuracy: one TCP flow (median, min-max)")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, img_dir, "rate")
    return [f"![rate accuracy]({rel}/{IMG_PREFIX}rate.png)"]


# ---- 2. small requests -------------------------------------------------------------------------


def section_latency(data: dict, img_dir: str, rel: str, aims: list) -> list[str]:
    runs = data["runs"]
    variants = [v for v in ("natra", "standard", "none") if any(r["variant"] == v for r in runs)]
    rows = []
    for size in data["sizes"]:
        key = str(size)
        for v in variants:
            rs = [r for r in runs if r["variant"] == v]
            pooled_idle = [x for r in rs for x in r["idle"][key]["samples_ms"]]
            pooled_load = [x for r in rs for x in r["loaded"][key]["samples_ms"]]
            ratios = [ratio(r["loaded"][key]["p99_ms"], r["idle"][key]["p99_ms"]) for r in rs]
            rows.append(
                [
                    f"{size // 1000} KB",
                    NAMES[v],
                    fmt_spread([r["idle"][key]["p50_ms"] for r in rs], ".2f"),
                    fmt_spread([r["idle"][key]["p99_ms"] for r in rs], ".2f"),
                    fmt_spread([r["loaded"][key]["p50_ms"] for r in rs], ".2f"),
                    fmt_spread([r["loaded"][key]["p99_ms"] for r in rs], ".2f"),
                    fmt_spread(ratios, ".2f"),
                    f"{_num(percentile(pooled_idle, 99), '.2f')} / "
                    f"{_num(percentile(pooled_load, 99), '.2f')}",
                    f"{sum(r['loaded'][key]['failures'] for r in rs)}",
                ]
            )
            if v == "natra":
                m = med(ratios)
                aims.append(
                    (
                        f"2. Natra p99 loaded / unloaded <= {AIM_P99_RATIO}, {size // 1000} KB",
                        _num(m, ".2f"),
                        met(m <= AIM_P99_RATIO),
                        "" if m <= AIM_P99_RATIO else f"{m / AIM_P99_RATIO:.2f}x over the aim",
                    )
                )
    first_size = str(data["sizes"][0])
    short_s = (len(runs[0]["loaded"][first_size]["samples_ms"]) + 1) * data["interval_s"] if runs else 1
    bulk = [
        [
            NAMES[v],
            fmt_spread([r["bulk_goodput_bps"] / data["rate_bps"] for r in runs if r["variant"] == v]),
            fmt_spread([r["short_bytes_loaded"] * 8 / short_s / data["rate_bps"] for r in runs
                        if r["variant"] == v]),
            fmt_spread([r["bulk_retransmits"] for r in runs if r["variant"] == v], ".0f"),
        ]
        for v in variants
    ]
    n_idle = len(runs[0]["idle"][str(data["sizes"][0])]["samples_ms"]) if runs else 0
    n_load = len(runs[0]["loaded"][str(data["sizes"][0])]["samples_ms"]) if runs else 0
    out = [
        "## 2. Small requests under load",
        "",
        f"Limit {rate_name(data['rate_bps'])} into the Pod. A bulk iperf3 download saturates it for "
        f"{data['load_s']:g} s; after 2 s, three clients in the remote node each send requests of 1 KB, "
        f"10 KB or 100 KB every {data['interval_s'] * 1e3:g} ms on a fresh TCP connection to a server in "
        "the Pod, which answers one byte. Latency is connect to answer, in ms. *Unloaded* is the same "
        f"three clients without the download. Per run: {n_idle} unloaded and {n_load} loaded requests "
        "per size (each client's first request, which also pays for ARP and a cold process, is not "
        "counted). Cells are the median over runs [min-max] of each run's percentile; *pooled p99* "
        "takes all runs' samples together.",
        "",
        *table(
            [
                "size",
                "limiter",
                "unloaded p50",
                "unloaded p99",
                "loaded p50",
                "loaded p99",
                "loaded p99 / unloaded p99",
                "pooled p99 unloaded / loaded",
                "failed",
            ],
            rows,
        ),
        "",
        "Bulk download during the loaded runs:",
        "",
        *table(
            ["limiter", "bulk goodput / limit", "short transfers / limit (while they ran)",
             "bulk retransmits"],
            bulk,
        ),
        "",
    ]
    out += _plot_latency(runs, variants, data["sizes"], img_dir, rel)
    return out


def _plot_latency(runs, variants, sizes, img_dir: str, rel: str) -> list[str]:
    plt = _plt()
    fig, axes = plt.subplots(1, len(sizes), figsize=(10, 3.4), sharey=True)
    for ax, size in zip(axes, sizes, strict=True):
        key = str(size)
        for i, v in enumerate(variants):
            rs = [r for r in runs if r["variant"] == v]
            for j, phase in enumerate(("idle", "loaded")):
                vals = [r[phase][key]["p99_ms"] for r in rs]
                m, a, b = _errbar(vals)
                ax.bar(
                    i * 2.6 + j,
                    m,
                    0.9,
                    yerr=[[a], [b]],
                    capsize=3,
                    color=COLORS[v],
                    alpha=0.45 if phase == "idle" else 1.0,
                    label=f"{NAMES[v]} {'unloaded' if phase == 'idle' else 'loaded'}"
                    if size == sizes[0]
                    else None,
                )
        ax.set_yscale("log")
        ax.set_xticks(
            [i * 2.6 + 0.5 for i in range(len(variants))],
            [NAMES[v].split(" (")[0] for v in variants],
            fontsize=7,
        )
        ax.set_title(f"{size // 1000} KB requests: p99\n(light: unloaded, dark: loaded)", fontsize=9)
    axes[0].set_ylabel("ms (log)")
    _save(fig, img_dir, "latency")
    return [f"![latency under load]({rel}/{IMG_PREFIX}latency.png)"]


# ---- 3. fairness -----------------------------------------------------------------------------------


def section_fairness(data: dict, img_dir: str, rel: str, aims: list) -> list[str]:
    runs = data["runs"]
    rows = []
    for case in ("4tcp", "udp+3tcp"):
        for v in ("natra", "standard"):
            rs = [r for r in runs if r["case"] == case and r["variant"] == v]
            if not rs:
                continue
            nflows = len(rs[0]["flows"])
            shares = " / ".join(
                f"{f['kind']} " + fmt_spread([r["flows"][i]["share"] for r in rs], ".2f")
                for i, f in enumerate(rs[0]["flows"])
            )
            rows.append(
                [
                    case,
                    NAMES[v],
                    fmt_spread([r["jain_tcp"] for r in rs]),
                    fmt_spread([jain([f["share"] for f in r["flows"]]) for r in rs]),
                    shares,
                    fmt_spread([r["total_share"] for r in rs]),
                    fmt_spread([r.get("tcp_retransmits") for r in rs], ".0f"),
                    fmt_spread([r["bytes_over"] for r in rs], ".0f"),
                    fmt_spread([r["bytes_over_wire"] for r in rs], ".0f"),
                ]
            )
            if v == "natra":
                m = med([r["jain_tcp"] for r in rs])
                aims.append(
                    (
                        f"3. Jain's index of the TCP flows >= {AIM_JAIN}, {case}",
                        _num(m, ".3f"),
                        met(m >= AIM_JAIN),
                        "" if m >= AIM_JAIN else f"short by {AIM_JAIN - m:.3f}",
                    )
                )
                worst = max(r["bytes_over"] for r in rs)
                aims.append(
                    (
                        f"3. Natra bytes over R*t+B = 0 (payload), {case}",
                        _num(worst, ".0f"),
                        met(worst == 0),
                        "" if worst == 0 else f"{worst:.0f} bytes over",
                    )
                )
            del nflows
    out = [
        "## 3. Fairness",
        "",
        f"Limit {rate_name(data['rate_bps'])} into the Pod, {data['seconds']:g} s. *4tcp*: one iperf3 client "
        "with four TCP streams (`-P 4`) to a server in the Pod. *udp+3tcp*: one UDP flood offering "
        f"{rate_name(data['udp_offered_bps'])} (5x the limit) plus three TCP flows (`-P 3`). "
        "Share = the flow's "
        "receiver-side rate / the limit (per flow: median over runs [min-max]); Jain's index over the TCP "
        "flows only. Bytes over R*t+B on the sum of the flows (one server's 0.1 s intervals for 4tcp; for "
        "udp+3tcp two servers' intervals aligned by index, clocks a few ms apart). The wire figure uses "
        "TCP framing; a 1400-byte UDP datagram carries 42 bytes of headers (x 1.030, not x 1.046), so "
        "for udp+3tcp it overstates the wire bytes of both limiters.",
        "",
        *table(
            [
                "case",
                "limiter",
                "Jain (TCP)",
                "Jain (all flows)",
                "shares",
                "sum of shares",
                "TCP retransmits",
                "over (payload B)",
                "over (wire B)",
            ],
            rows,
        ),
        "",
    ]
    verdict_rows = []
    for case in ("4tcp", "udp+3tcp"):
        vs = [
            r["natra_verdicts"]
            for r in runs
            if r["case"] == case and r["variant"] == "natra" and r.get("natra_verdicts")
        ]
        names = sorted({k for v in vs for k in v})
        if vs:
            verdict_rows.append([case, ", ".join(f"{k} {med([v.get(k, 0) for v in vs]):.0f}" for k in names)])
    for v in ("natra", "standard"):
        rs = [r for r in runs if r["case"] == "udp+3tcp" and r["variant"] == v]
        tcp = [f["share"] for r in rs for f in r["flows"] if f["kind"] == "tcp"]
        udp = [f["share"] for r in rs for f in r["flows"] if f["kind"] == "udp"]
        if tcp and udp:
            out += [
                f"With the UDP flood, {NAMES[v]}: the flood kept {med(udp):.2f} of the limit (median), the "
                f"TCP flows {min(tcp):.2f}-{max(tcp):.2f} each (a fair quarter is 0.25). Jain's index over "
                "the TCP flows alone says only that they are equal to each other; the all-flows index "
                "shows the flood's advantage.",
                "",
            ]
    if verdict_rows:
        out += [
            "Natra's verdicts into the Pod during these runs (packets, median):",
            "",
            *table(["case", "verdicts"], verdict_rows),
            "",
        ]
    out += _plot_fairness(runs, img_dir, rel)
    return out


def _plot_fairness(runs, img_dir: str, rel: str) -> list[str]:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, case in zip(axes, ("4tcp", "udp+3tcp"), strict=True):
        for i, v in enumerate(("natra", "standard")):
            rs = [r for r in runs if r["case"] == case and r["variant"] == v]
            if not rs:
                continue
            for k, f in enumerate(rs[0]["flows"]):
                m, a, b = _errbar([r["flows"][k]["share"] for r in rs])
                ax.bar(
                    k + (i - 0.5) * 0.38,
                    m,
                    0.38,
                    yerr=[[a], [b]],
                    capsize=3,
                    color=COLORS[v],
                    label=NAMES[v] if k == 0 else None,
                    hatch="//" if f["kind"] == "udp" else None,
                )
            ax.set_xticks(
                range(len(rs[0]["flows"])), [f"{f['kind']} {k + 1}" for k, f in enumerate(rs[0]["flows"])]
            )
        ax.axhline(0.25 if case == "4tcp" else 0.25, color="black", lw=0.8, ls=":")
        ax.set_title(f"{case}: share of the limit per flow")
    axes[0].set_ylabel("share of the limit")
    axes[0].legend(fontsize=8)
    _save(fig, img_dir, "fairness")
    return [f"![fairness]({rel}/{IMG_PREFIX}fairness.png)"]


# ---- 4. overhead -----------------------------------------------------------------------------------


def section_overhead(data: dict, img_dir: str, rel: str, aims: list) -> list[str]:
    runs = data["runs"]
    rows, noise = [], []
    for direction in ("to_pod", "from_pod"):
        n = {r["rep"]: r for r in runs if r["direction"] == direction and r["variant"] == "natra-unlimited"}
        z = {r["rep"]: r for r in runs if r["direction"] == direction and r["variant"] == "none"}
        if not n:
            continue
        ratios = [ratio(n[k]["goodput_bps"], z[k]["goodput_bps"]) for k in n if k in z]
        rows.append(
            [
                DIRECTION_NAMES[direction],
                fmt_spread([r["goodput_bps"] for r in n.values()], ".2f", 1e-9),
                fmt_spread([r["goodput_bps"] for r in z.values()], ".2f", 1e-9),
                fmt_spread(ratios),
            ]
        )
        m = med(ratios)
        base = [r["goodput_bps"] / 1e9 for r in z.values()]
        if base:
            noise.append(f"{DIRECTION_NAMES[direction]} the no-program runs alone range "
                         f"{min(base):.2f}-{max(base):.2f} Gbit/s")
        aims.append(
            (
                f"4. unlimited Natra / no program >= {AIM_OVERHEAD}, {DIRECTION_NAMES[direction]}",
                _num(m, ".3f"),
                met(m >= AIM_OVERHEAD),
                "" if m >= AIM_OVERHEAD else f"short by {AIM_OVERHEAD - m:.3f}",
            )
        )
    out = [
        "## 4. Overhead",
        "",
        f"One TCP flow for {data['seconds']:g} s through a Pod with Natra at 1 Pbit/s (programs attached, "
        "every packet parsed and counted, never limited) and through a Pod with no program; runs "
        "alternate, and the ratio is taken run by run.",
        "",
        *table(["direction", "Natra unlimited, Gbit/s", "no program, Gbit/s", "ratio"], rows),
        "",
        "Run-to-run noise is of the same size as any difference: " + "; ".join(noise) + ". A ratio "
        "above 1 is that noise, not a speed-up.",
        "",
    ]
    cost = data.get("datapath_cost") or {}
    if "results" in cost:
        r = cost["results"]
        aim = cost["aims"]
        worst_ratio = max(r["mouse"]["ratio_to_parse_only"], r["heavy"]["ratio_to_parse_only"])
        out += [
            f"Per-packet cost from `bench/datapath_cost.py` (BPF_PROG_TEST_RUN, repeat {cost['repeat']}, "
            f"{cost['flows']} flows in the spread cases; its own output, run inside this bench):",
            "",
            *table(
                ["case", "ns / packet", "x parse-only"],
                [
                    [k, _num(v["ns_per_packet"], ".1f"), _num(v["ratio_to_parse_only"], ".2f")]
                    for k, v in r.items()
                ],
            ),
            "",
            f"Its aims (issue 3): mouse <= {aim['mouse_ns']} ns "
            f"({met(r['mouse']['ns_per_packet'] <= aim['mouse_ns'])}), heavy <= "
            f"{aim['heavy_ns']} ns ({met(r['heavy']['ns_per_packet'] <= aim['heavy_ns'])}), "
            f"<= {aim['ratio']}x parse-only ({met(worst_ratio <= aim['ratio'])}). These are single-CPU "
            "kernel times per run of the program; the machine was shared while "
            "they were taken.",
        ]
    elif cost:
        out += [f"`bench/datapath_cost.py` failed: {cost.get('error')}"]
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
    std = variants.get("bandwidth")
    ratio_rows = []
    if std:
        s50 = percentile(std["add_s"], 50)
        for name, v in variants.items():
            if name.startswith("natra"):
                ratio_rows.append(
                    f"{NAMES[name]} ADD p50 is {percentile(v['add_s'], 50) / s50:.0f}x the standard "
                    f"plugin's; DEL p50 {percentile(v['del_s'], 50) / percentile(std['del_s'], 50):.0f}x."
                )
    out = [
        "## 5. Control plane",
        "",
        f"{next(iter(variants.values()))['pods']} Pods ADDed one after another through the chain, then "
        "DELeted; the time is the limiter plugin's own call (a fresh process each, as a runtime runs it), "
        "in ms; *chain ADD* adds `ptp` + `host-local`. p99 of 50 is the largest but one.",
        "",
        *table(
            ["variant", "plugin timed", "Pods", "ADD p50", "ADD p99", "DEL p50", "DEL p99", "chain ADD p50"],
            rows,
        ),
        "",
        *ratio_rows,
        "",
    ]
    floors = data.get("process_floor_s") or {}
    if floors:
        out += [
            "Where the time goes: the same executables answering CNI `VERSION` (process start, imports, "
            f"argument handling; no kernel work), {len(next(iter(floors.values())))} calls each, ms:",
            "",
            *table(
                ["executable", "p50", "max"],
                [[f"`{k}`", _num(percentile([x * 1e3 for x in v], 50), ".1f"), _num(max(v) * 1e3, ".1f")]
                 for k, v in floors.items()],
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
    by_name = next((v["natra_memory"][0].get("map_bytes_by_name") for v in variants.values()
                    if v.get("natra_memory")), None)
    if by_name:
        out += [
            "Natra's maps of one Pod (`bytes_memlock`, the default sketch 4 x 1024 and flow table 4096):",
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
        if name == "natra":
            worst = max(r["bytes_over"] for r in v["alone"] + v["crowded"])
            aims.append(
                (
                    "6. Natra bytes over R*t+B = 0 (payload), one Pod alone and among the others",
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
            color=COLORS[name],
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

AIM_SWEEP_SHARE = 0.9  # issue 14: Natra >= 0.9 of the limit wherever the standard plugin is


def _bits_name(bits: int) -> str:
    return f"{bits:,} bit"


def _sweep_groups(runs: list[dict]) -> tuple[dict, list]:
    groups = defaultdict(list)
    for r in runs:
        groups[(r["rate_bps"], r["asked_burst_bits"], r["direction"], r["variant"])].append(r)
    keys = sorted({k[:3] for k in groups}, key=lambda k: (k[0], k[1], k[2] != "to_pod"))
    return groups, keys


def sweep_misses(data: dict) -> list[dict]:
    """Points where Natra's rate after the burst is below the aim while the standard plugin's is not."""
    groups, keys = _sweep_groups(data["runs"])
    out = []
    for key in keys:
        n, s = groups.get((*key, "natra"), []), groups.get((*key, "standard"), [])
        ns, ss = med([r["steady_share"] for r in n]), med([r["steady_share"] for r in s])
        if ss == ss and ss >= AIM_SWEEP_SHARE and not (ns == ns and ns >= AIM_SWEEP_SHARE):
            verdicts: dict[str, int] = {}
            for r in n:
                for k, v in (r.get("natra_verdicts") or {}).items():
                    verdicts[k] = verdicts.get(k, 0) + v
            out.append({"rate_bps": key[0], "asked_burst_bits": key[1], "direction": key[2],
                        "natra": ns, "standard": ss, "verdicts": verdicts})
    return out


def section_sweep(data: dict, img_dir: str, rel: str, aims: list) -> list[str]:
    groups, keys = _sweep_groups(data["runs"])
    floor = data["floor_bits"]
    rows = []
    for rate, asked, direction in keys:
        n = groups.get((rate, asked, direction, "natra"), [])
        s = groups.get((rate, asked, direction, "standard"), [])
        rows.append([
            rate_name(rate), _bits_name(asked), _bits_name(n[0]["burst_bits"]) if n else "n/a",
            DIRECTION_NAMES[direction],
            _sweep_share(n), _sweep_share(s),
            fmt_spread([r["steady_share"] for r in n]), fmt_spread([r["steady_share"] for r in s]),
            fmt_spread([r["bytes_over_wire"] for r in n], ".0f"),
            fmt_spread([r["bytes_over_wire"] for r in s], ".0f"),
        ])
    natra = [r for r in data["runs"] if r["variant"] == "natra"]
    worst = max((r["bytes_over"] for r in natra), default=0)
    worst_wire = max((r["bytes_over_wire"] for r in natra), default=0)
    misses = sweep_misses(data)
    aims.append((
        f"7. sweep: Natra after the burst >= {AIM_SWEEP_SHARE} of the limit wherever the standard plugin is",
        f"{len(misses)} of {len(keys)} points below",
        met(not misses),
        "" if not misses else ", ".join(
            f"{rate_name(m['rate_bps'])}/{_bits_name(m['asked_burst_bits'])} "
            f"{DIRECTION_NAMES[m['direction']]} {_num(m['natra'], '.2f')}" for m in misses),
    ))
    aims.append((
        "7. sweep: Natra bytes over R*t+max(B, floor) = 0 (payload)",
        _num(worst, ".0f"),
        met(worst == 0),
        "" if worst == 0 else f"{worst:.0f} bytes over",
    ))
    out = [
        "## 7. Rate and burst sweep",
        "",
        "Natra and the standard plugin given the same asked limit (R, B) as static runtime values, for "
        "every rate from 1 kbit/s to 1 Gbit/s and bursts from one 1514-byte frame to 500 ms of rate "
        "(a burst below one frame is raised to one frame; points that coincide are shown once). "
        "One TCP flow per point and direction, from the remote-node namespace into the Pod and from the "
        "Pod to it, "
        f"{_sweep_seconds(data, 10**6):g} s per flow at 1 Mbit/s and up, "
        f"{_sweep_seconds(data, 1000):g} s below; the receiver counts payload bytes per "
        f"{data['interval_s']:g} s on its own clock (natra.lab.traffic bulk-sink: no control channel "
        "through the limit, so 1 kbit/s works).",
        "",
        f"The standard plugin applies B as asked. Natra polices, so it applies max(B, floor) with the "
        f"floor {_bits_name(floor)} (four 64 KiB GSO packets, docs/cni.md), clamped to 500 ms of rate "
        r"above the floor: its promise is R\*t + max(B, floor). *Goodput / limit* is over the whole "
        r"flow, the burst included: where the burst is large next to R\*t (every Natra point below "
        "10 Mbit/s) it is far above 1 and says only that the bucket started full. *After the burst* is "
        "the goodput once the receiver got the applied burst's worth of wire bytes, over at least 1 s "
        "(n/a when the run ended sooner). *Bytes over* is the largest excess over any window of "
        f"receiver intervals, in wire bytes (payload x {WIRE_PER_PAYLOAD:.4f}), against each limiter's "
        r"own promise (Natra R\*t + max(B, floor), standard R\*t + B).",
        "",
        *table(["limit", "asked B", "Natra's B", "direction", "Natra goodput/limit", "std goodput/limit",
                "Natra after the burst", "std after the burst", "Natra over, wire B", "std over, wire B"],
               rows),
        "",
        rf"Natra's worst excess over R\*t+max(B, floor): {worst:.0f} payload bytes, "
        f"{worst_wire:.0f} wire bytes.",
        "",
    ]
    if misses:
        out += [f"Where Natra's rate after the burst is below {AIM_SWEEP_SHARE} of the limit while the "
                "standard plugin's is not (Natra's verdicts summed over the runs, packets):", ""]
        out += table(["limit", "asked B", "direction", "Natra after the burst", "std after the burst",
                      "Natra verdicts"],
                     [[rate_name(m["rate_bps"]), _bits_name(m["asked_burst_bits"]),
                       DIRECTION_NAMES[m["direction"]],
                       _num(m["natra"], ".3f"), _num(m["standard"], ".3f"),
                       ", ".join(f"{k} {v}" for k, v in sorted(m["verdicts"].items()))] for m in misses])
        out += [""]
    out += _plot_sweep(groups, keys, img_dir, rel)
    return out


def _sweep_share(runs: list[dict]) -> str:
    """Goodput / limit over the whole flow; says so when TCP could not even connect."""
    if runs and not any(r.get("connected", True) for r in runs):
        return "0 (no connection)"
    return fmt_spread([r["share"] for r in runs])


def _sweep_seconds(data: dict, rate: int) -> float:
    runs = [r["seconds"] for r in data["runs"] if (r["rate_bps"] >= 10**6) == (rate >= 10**6)]
    return runs[0] if runs else float("nan")


def _burst_label(rate_bps: int, bits: int) -> str:
    """An asked burst as the plot names it: one frame, or ms of rate."""
    if bits <= 1514 * 8:
        return "frame"
    return f"{bits * 1000 / rate_bps:.3g} ms"


def _plot_sweep(groups, keys, img_dir: str, rel: str) -> list[str]:
    plt = _plt()
    directions = [d for d in DIRECTION_NAMES if any(k[2] == d for k in keys)]
    points = sorted({k[:2] for k in keys})
    fig, axes = plt.subplots(2, len(directions), figsize=(13, 6.8), squeeze=False)
    width = 0.38
    for col, direction in enumerate(directions):
        for row, (field, title, log) in enumerate((("share", "whole flow", True),
                                                   ("steady_share", "after the burst", False))):
            ax = axes[row][col]
            for i, variant in enumerate(("natra", "standard")):
                xs, ys = [], []
                for j, (rate, asked) in enumerate(points):
                    v = med([r[field] for r in groups.get((rate, asked, direction, variant), [])])
                    if v == v:
                        xs.append(j + (i - 0.5) * width)
                        ys.append(v)
                ax.bar(xs, ys, width, color=COLORS[variant], label=NAMES[variant])
            ax.axhline(1.0, color="black", lw=0.8)
            if log:
                ax.set_yscale("log")
            else:
                ax.axhline(AIM_SWEEP_SHARE, color="red", lw=0.8, ls="--", label=f"aim {AIM_SWEEP_SHARE}")
                ax.set_ylim(0, 1.3)
            ax.set_xticks(range(len(points)), [f"{rate_name(r)}\n{_burst_label(r, b)}" for r, b in points],
                          fontsize=6.5)
            ax.set_ylabel("goodput / limit")
            ax.set_title(f"{DIRECTION_NAMES[direction]}, {title}", fontsize=9)
    handles, labels = axes[1][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper right", ncol=3)
    fig.suptitle("Rate and burst sweep: one TCP flow per point (rate, asked burst B);\n"
                 "Natra applies max(B, 2,097,152 bit)", fontsize=10, x=0.3)
    _save(fig, img_dir, "sweep")
    return [f"![rate and burst sweep]({rel}/{IMG_PREFIX}sweep.png)"]


# ---- the document ----------------------------------------------------------------------------------

SECTIONS = {
    "rate": section_rate,
    "latency": section_latency,
    "fairness": section_fairness,
    "overhead": section_overhead,
    "control": section_control,
    "scale": section_scale,
    "sweep": section_sweep,
}


def render(record: dict, img_dir: str, rel: str) -> str:
    m = record["machine"]
    aims: list = []
    body: list[str] = []
    for name, fn in SECTIONS.items():
        if name in record["scenarios"]:
            body += fn(record["scenarios"][name], img_dir, rel, aims) + [""]
        elif name in record.get("errors", {}):
            body += [f"## {name}", "", f"This scenario failed: `{record['errors'][name]}`", ""]
    head = [
        "# Benchmarks: Natra beside the standard bandwidth plugin",
        "",
        f"Generated by `make bench` (`python3 -m bench.run_all`) on {record['date_utc']}"
        + (
            " — **smoke run: durations and repeats cut, figures not meaningful**"
            if record.get("smoke")
            else ""
        )
        + f"; the run took {record.get('seconds', 0) / 60:.0f} min.",
        "",
        f"Machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}, {m['iperf3']}, Python {m['python']}.",
        "",
        "Every Pod is a network namespace made through the real CNI chain (Debian's `ptp` + `host-local`, "
        "then `natra`, or the standard `bandwidth` plugin, or nothing), with containerd-shaped `bandwidth` "
        'capability args. Traffic comes from a "remote node" namespace routed through the host, so a drop '
        "at the host veth is a loss on the wire. Every figure is the median over "
        f"{record['settings']['repeats']} repeated runs with [min-max] after it; repeats of the limiters "
        "alternate, and ratios are taken between runs of the same repeat.",
        "",
    ]
    cond = record.get("conditions") or {}
    if cond:
        head += [
            "The machine was shared with other work while this ran (tests and simulations of other "
            "engineers); the 1-minute load average on its 2 CPUs around each scenario:",
            "",
            *table(
                ["scenario", "finished", "minutes", "repeats", "load before", "load after"],
                [[k, v["date_utc"], f"{v['seconds'] / 60:.1f}", str(v.get("repeats", "")),
                  f"{v['loadavg_1min_before']:.1f}", f"{v['loadavg_1min_after']:.1f}"]
                 for k, v in cond.items()],
            ),
            "",
        ]
    if aims:
        head += [
            "## Aims",
            "",
            *table(["aim", "measured (median)", "", "by how much"], [list(a) for a in aims]),
            "",
        ]
    if record.get("analysis"):
        head += ["## Misses and findings, from the measurements", "", *record["analysis"], ""]
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
