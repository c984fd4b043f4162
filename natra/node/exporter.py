"""`natra exporter`: Prometheus metrics, a JSON API and a live page, over HTTP.

Owns: the metric families Natra exposes (names, units, labels), the collector
that builds them from fresh `PodView`s at every scrape (no cache, no thread
reading maps in the background), and the small HTTP server of the node's
DaemonSet container:

    /metrics    Prometheus text format (prometheus_client)
    /api/pods   the document of `natra status --json` (natra.node.observe.to_json)
    /           a self-refreshing page (natra/node/web/index.html) polling /api/pods

Rule: bounded label cardinality. Labels are namespace, pod, direction,
class, action, verdict and a few fixed enumerations; never a flow, port or
address (flows live in /api/pods and the page, not in the time series).
`metric_families` is pure: it turns views into families and can be tested
with made-up views. The port 9695 is the default (DEFAULT_LISTEN).
Must not know: map layouts or how pins are read (natra.node.observe does that).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from natra.node import observe

DEFAULT_LISTEN = "0.0.0.0:9695"  # inside Prometheus' exporter range; see docs/observability.md
POD_LABELS = ("namespace", "pod")
DIR_LABELS = (*POD_LABELS, "direction")
ATTACH_MODES = ("tcx", "clsact")  # every mode gets a 0/1 sample, the conventional enum gauge
PARSE_KINDS = ("ipv4", "ipv6", "non_ip", "fragment", "truncated")
FLOW_EVENTS = ("flow_new", "flow_missing", "flow_overflow", "mark_failed")
PAGE = "index.html"

Source = Callable[[], tuple[list[observe.PodView], int]]  # (views, now ns)
NotLimitedSource = Callable[[list[observe.PodView]], list[observe.NotLimited]]
MODES = (observe.MODE_POLICE, observe.MODE_SHAPE)
ENDPOINTS = ("/metrics", "/api/pods", "/", "/index.html", "/healthz")


def _causes() -> tuple[str, ...]:
    from natra.cni.failopen import CAUSES

    return tuple(CAUSES)


class ListenError(ValueError):
    """--listen is not ADDR:PORT; the message names the bad value."""


# ---- metric families (pure) -----------------------------------------------------------------

def _pod(v: observe.PodView) -> list[str]:
    return [v.namespace, v.pod]


def metric_families(views: list[observe.PodView], missing: list[observe.NotLimited] | None = None,
                    failed_open_seen: dict[str, int] | None = None) -> list[Metric]:
    """Every family Natra exposes, built from one snapshot of the node's Pods.

    `missing`: the Pod directions that asked for a limit and are not limited (fail-open
    records); `failed_open_seen`: cause -> fail-opens this exporter has seen so far.
    """
    pods = GaugeMetricFamily("natra_pods", "Pods with a Natra data path on this node", value=len(views))
    info = GaugeMetricFamily("natra_pod_info", "Identity of a Pod's data path (value 1)",
                             labels=[*POD_LABELS, "uid", "container_id", "interface"])
    mode = GaugeMetricFamily("natra_attach_mode", "How the Pod's programs are attached (1 for its mode)",
                             labels=[*POD_LABELS, "mode"])
    packets = CounterMetricFamily("natra_packets", "Frames decided, by flow class and action",
                                  labels=[*DIR_LABELS, "class", "action"])
    nbytes = CounterMetricFamily("natra_bytes", "Bytes decided (skb->len), by flow class and action",
                                 labels=[*DIR_LABELS, "class", "action"])
    vpackets = CounterMetricFamily("natra_verdict_packets", "Frames per verdict (the reason for an action)",
                                   labels=[*DIR_LABELS, "verdict"])
    vbytes = CounterMetricFamily("natra_verdict_bytes", "Bytes per verdict (the reason for an action)",
                                 labels=[*DIR_LABELS, "verdict"])
    parsed = CounterMetricFamily("natra_parsed_frames", "Frames by what the parser found",
                                 labels=[*DIR_LABELS, "kind"])
    events = CounterMetricFamily("natra_flow_table_events", "Heavy-flow table events",
                                 labels=[*DIR_LABELS, "event"])
    rate = GaugeMetricFamily("natra_limit_bytes_per_second", "Rate limit of a direction (bytes/s; "
                             "the Kubernetes annotation's bit/s divided by 8)", labels=list(DIR_LABELS))
    enforced = GaugeMetricFamily("natra_pod_enforced", "1 when the direction's asked limit is in "
                                 "force, 0 when Natra failed open and the Pod is NOT limited",
                                 labels=list(DIR_LABELS))
    not_limited = GaugeMetricFamily("natra_pods_not_limited", "Pod directions not limited now, by fail-open "
                                    "cause", labels=["cause"])
    failed_open = CounterMetricFamily("natra_fail_open", "Fail-opens this exporter has seen (a record "
                                      "appearing), by cause", labels=["cause"])
    dmode = GaugeMetricFamily("natra_direction_mode", "How a direction is limited (1 for its mode: shape "
                              "queues in qdiscs, police drops in the program)", labels=[*DIR_LABELS, "mode"])
    fallback = GaugeMetricFamily("natra_shape_fallback", "1 when a direction meant to shape polices instead "
                                 "(the reason is in /api/pods and natra status)", labels=list(DIR_LABELS))
    csent = CounterMetricFamily("natra_class_sent_bytes", "Bytes a shaping class sent",
                                labels=[*DIR_LABELS, "class"])
    csentp = CounterMetricFamily("natra_class_sent_packets", "Packets a shaping class sent",
                                 labels=[*DIR_LABELS, "class"])
    cdrops = CounterMetricFamily("natra_class_drops", "Packets a shaping class's queue dropped (full)",
                                 labels=[*DIR_LABELS, "class"])
    cbacklog = GaugeMetricFamily("natra_class_backlog_bytes", "Bytes queued in a shaping class now",
                                 labels=[*DIR_LABELS, "class"])
    cbacklogp = GaugeMetricFamily("natra_class_backlog_packets", "Packets queued in a shaping class now",
                                  labels=[*DIR_LABELS, "class"])
    cdelay = GaugeMetricFamily("natra_class_backlog_seconds", "How long a class's queue takes to leave at "
                               "its share", labels=[*DIR_LABELS, "class"])
    cshare = GaugeMetricFamily("natra_class_share_bytes_per_second", "Rate a shaping class may count on now",
                               labels=[*DIR_LABELS, "class"])
    burst = GaugeMetricFamily("natra_limit_burst_bytes", "Bucket depth (burst) of a direction",
                              labels=list(DIR_LABELS))
    reserve = GaugeMetricFamily("natra_limit_reserve_bytes", "Part of the burst only mice may spend",
                                labels=list(DIR_LABELS))
    threshold = GaugeMetricFamily("natra_heavy_threshold_bytes", "Bytes per window that make a flow heavy",
                                  labels=list(DIR_LABELS))
    backlog = GaugeMetricFamily("natra_bucket_backlog_bytes", "Bytes owed in the aggregate bucket now",
                                labels=list(DIR_LABELS))
    heavy = GaugeMetricFamily("natra_heavy_hitters", "Heavy flows in the current and previous window",
                              labels=list(DIR_LABELS))
    entries = GaugeMetricFamily("natra_heavy_flow_entries", "Used slots of the heavy-flow table",
                                labels=list(DIR_LABELS))
    table = GaugeMetricFamily("natra_heavy_flow_table_size", "Capacity of the heavy-flow table",
                              labels=list(POD_LABELS))
    for v in views:
        pod = _pod(v)
        info.add_metric([*pod, v.uid, v.container_id, v.interface], 1)
        for m in sorted({*ATTACH_MODES, v.attach_mode}):
            mode.add_metric([*pod, m], 1 if m == v.attach_mode else 0)
        table.add_metric(pod, v.flow_table_size)
        for d in v.directions:
            if not d.attached and not d.counters.get("frames", 0):
                continue  # no program on this hook: nothing to count, no series to keep
            lab = [*pod, d.direction]
            for t in d.traffic:
                packets.add_metric([*lab, t.klass, t.action], t.packets)
                nbytes.add_metric([*lab, t.klass, t.action], t.bytes)
            for name, counts in d.verdicts.items():
                vpackets.add_metric([*lab, name], counts["packets"])
                vbytes.add_metric([*lab, name], counts["bytes"])
            for kind in PARSE_KINDS:
                parsed.add_metric([*lab, kind], d.counters.get(kind, 0))
            for event in FLOW_EVENTS:
                events.add_metric([*lab, event], d.counters.get(event, 0))
            if d.limited:
                enforced.add_metric(lab, 1 if d.attached else 0)
                for m in MODES:
                    dmode.add_metric([*lab, m], 1 if m == d.mode else 0)
                fallback.add_metric(lab, 1 if d.fallback else 0)
            for c in d.classes:
                cl = [*lab, c.name]
                csent.add_metric(cl, c.sent_bytes)
                csentp.add_metric(cl, c.sent_packets)
                cdrops.add_metric(cl, c.drops_packets)
                cbacklog.add_metric(cl, c.backlog_bytes)
                cbacklogp.add_metric(cl, c.backlog_packets)
                cdelay.add_metric(cl, c.backlog_delay_ns / 1e9)
                cshare.add_metric(cl, c.share_bps / 8)
            if d.limit is not None:
                rate.add_metric(lab, d.limit.rate_bps / 8)
                burst.add_metric(lab, d.limit.burst_bytes)
                reserve.add_metric(lab, d.limit.reserve_bytes)
                threshold.add_metric(lab, d.limit.threshold_bytes)
                backlog.add_metric(lab, d.backlog_bytes)
                heavy.add_metric(lab, d.heavy_active)
                entries.add_metric(lab, d.flow_entries)
    counts = dict.fromkeys(_causes(), 0)
    for n in missing or []:
        enforced.add_metric([n.namespace, n.pod, n.direction], 0)
        counts[n.cause] = counts.get(n.cause, 0) + 1
    for cause, count in counts.items():
        not_limited.add_metric([cause], count)
    for cause, count in {**dict.fromkeys(_causes(), 0), **(failed_open_seen or {})}.items():
        failed_open.add_metric([cause], count)
    return [pods, info, mode, packets, nbytes, vpackets, vbytes, parsed, events, rate, burst, reserve,
            threshold, backlog, heavy, entries, table, enforced, not_limited, failed_open, dmode, fallback,
            csent, csentp, cdrops, cbacklog, cbacklogp, cdelay, cshare]


class NatraCollector:
    """A prometheus_client collector that reads the pins at each scrape."""

    def __init__(self, source: Source, missing: NotLimitedSource | None = None):
        self._source = source
        self._missing = missing or (lambda views: [])
        self.read_errors = 0  # scrapes whose reading failed (kept in this process)
        self._seen: set[tuple[str, str, int]] = set()  # (container, direction, since) counted
        self.failed_open_seen: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        try:
            views, _now = self._source()
        except OSError as e:
            self.read_errors += 1
            print(f"natra exporter: reading pins: {e}", file=sys.stderr)
            views = []
        try:
            missing = self._missing(views)
        except OSError as e:
            self.read_errors += 1
            print(f"natra exporter: reading fail-open records: {e}", file=sys.stderr)
            missing = []
        for n in missing:
            if (n.container_id, n.direction, n.since_ns) not in self._seen:
                self._seen.add((n.container_id, n.direction, n.since_ns))
                self.failed_open_seen[n.cause] = self.failed_open_seen.get(n.cause, 0) + 1
        yield from metric_families(views, missing, self.failed_open_seen)
        yield CounterMetricFamily("natra_exporter_read_errors", "Scrapes whose reading of the pins failed",
                                  value=self.read_errors)
        yield GaugeMetricFamily("natra_exporter_scrape_duration_seconds",
                                "Time this scrape spent reading pins", value=time.monotonic() - started)


def registry_for(source: Source, missing: NotLimitedSource | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NatraCollector(source, missing))
    return registry


def live_not_limited(state_dir: str | None = None) -> NotLimitedSource:
    """The fail-open records under the plugin's stateDir, read now."""
    return lambda views: observe.collect_not_limited(state_dir, views)


def live_source(root: str | None = None, top: int = observe.DEFAULT_TOP) -> Source:
    """Read every pin directory under `root` now (CLOCK_MONOTONIC, bpf_ktime_get_ns' clock)."""
    def read() -> tuple[list[observe.PodView], int]:
        now = time.monotonic_ns()
        return observe.collect(root, now, top), now
    return read


# ---- HTTP (effects) -------------------------------------------------------------------------------

def page() -> bytes:
    return resources.files("natra.node").joinpath("web", PAGE).read_bytes()


def make_handler(source: Source, registry: CollectorRegistry,
                 missing: NotLimitedSource | None = None) -> type[BaseHTTPRequestHandler]:
    missing = missing or (lambda views: [])

    class Handler(BaseHTTPRequestHandler):
        server_version = "natra-exporter"
        head_only = False

        def _send(self, status: int, ctype: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if not self.head_only:
                self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802 - the same answer as GET, without the body
            self.head_only = True
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/api/pods":
                views, now = source()
                body = json.dumps(observe.to_json(views, now, missing(views), time.time_ns())).encode()
                self._send(200, "application/json", body)
            elif path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", page())
            elif path == "/healthz":
                self._send(200, "text/plain", b"ok\n")
            else:
                self._send(404, "text/plain", b"not found\n")

        def log_message(self, fmt: str, *args) -> None:  # quiet: scrapes every few seconds
            pass

    return Handler


def parse_listen(text: str) -> tuple[str, int]:
    """'0.0.0.0:9695', ':9695', '[::]:9695' or '9695' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "0.0.0.0"
    if not port.isascii() or not port.isdigit():
        raise ListenError(f"--listen {text!r}: port {port!r} is not a number (expected ADDR:PORT)")
    value = int(port)
    if not 0 <= value <= 65535:
        raise ListenError(f"--listen {text!r}: port {value} outside 0..65535")
    return host, value


def listen_arg(text: str) -> str:
    """argparse type of --listen: checked before anything is served."""
    import argparse as ap

    try:
        parse_listen(text)
    except ListenError as e:
        raise ap.ArgumentTypeError(str(e)) from None
    return text


def make_server(listen: str, source: Source, missing: NotLimitedSource | None = None) -> ThreadingHTTPServer:
    host, port = parse_listen(listen)
    server_class = ThreadingHTTPServer
    if ":" in host:
        import socket

        class V6Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6
        server_class = V6Server
    server = server_class((host, port), make_handler(source, registry_for(source, missing), missing))
    server.daemon_threads = True
    return server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from natra.node.status_cli import non_negative_int

    parser.add_argument("--listen", default=DEFAULT_LISTEN, type=listen_arg,
                        help=f"address:port to serve on ({DEFAULT_LISTEN})")
    parser.add_argument("--root", default=None, help="bpffs root of Natra's pins (default $NATRA_BPFFS_ROOT "
                        "or /sys/fs/bpf/natra)")
    parser.add_argument("--top", type=non_negative_int, default=observe.DEFAULT_TOP,
                        help="heavy hitters per direction")
    parser.add_argument("--state-dir", default=None, help="the plugin's stateDir, where fail-open records "
                        f"live (default $NATRA_STATE_DIR or {observe.DEFAULT_STATE_DIR})")


def run(args: argparse.Namespace) -> int:
    from natra.node.status_cli import check_root

    error, _ = check_root(args.root)
    if error:
        print(f"natra exporter: {error}", file=sys.stderr)
        return 2
    try:
        server = make_server(args.listen, live_source(args.root, args.top),
                             live_not_limited(getattr(args, "state_dir", None)))
    except OSError as e:
        print(f"natra exporter: cannot serve on {args.listen}: {e.strerror or e}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    print(f"natra exporter: serving /metrics, /api/pods and / on {host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="natra exporter", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

