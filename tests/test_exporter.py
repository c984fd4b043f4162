"""Tests of natra/node/exporter.py without a kernel: families from made-up views,
the text format as Prometheus' own parser reads it, and the HTTP endpoints on
loopback."""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from observe_records import flow, key, pod, raw_dir  # tests/ is on sys.path (rootdir-less import)
from prometheus_client.parser import text_string_to_metric_families

from natra.kernel import layout as L
from natra.node import exporter as E
from natra.node import observe as O


def view(cid: str, name: str, counters: list[int], nflows: int = 2) -> O.PodView:
    flows = {key("10.9.0.1", "10.1.0.2", 40000 + i, 5201): flow(counted_epoch=1, estimate=10_000 * (i + 1),
                                                                 passed=i)
             for i in range(nflows)}
    return O.build_view(pod({L.DIR_TO_POD: raw_dir(counters=counters)}, flows, cid=cid,
                            meta={"pod": f"ns1/{name}", "pod_uid": f"uid-{name}", "host_ifname": f"v{name}",
                                  "mode": "tcx"}), now=0)


def scrape(views: list[O.PodView]) -> dict:
    """name -> list of samples, through generate_latest and the official parser."""
    registry = E.registry_for(lambda: (views, 0))
    from prometheus_client.exposition import generate_latest

    text = generate_latest(registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def sample(samples, **labels) -> float:
    got = [s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(got) == 1, (labels, got)
    return got[0]


counters_st = st.lists(st.integers(0, 2**50), min_size=L.NCOUNTERS, max_size=L.NCOUNTERS)


@settings(max_examples=30, deadline=None)
@given(counters_st)
def test_metrics_parse_and_carry_the_counters(counters):
    v = view("c" * 16, "web", counters)
    m = scrape([v])
    d = v.direction("to_pod")
    for t in d.traffic:
        labels = {"namespace": "ns1", "pod": "web", "direction": "to_pod",
                  "class": t.klass, "action": t.action}
        assert sample(m["natra_bytes"], **labels) == t.bytes
        assert sample(m["natra_packets"], **labels) == t.packets
    for name, c in d.verdicts.items():
        assert sample(m["natra_verdict_bytes"], pod="web", verdict=name) == c["bytes"]
    assert sample(m["natra_parsed_frames"], pod="web", kind="ipv4") == counters[L.C_IPV4]
    assert sample(m["natra_flow_table_events"], pod="web", event="flow_new") == counters[L.C_FLOW_NEW]
    overflow = sample(m["natra_flow_table_events"], pod="web", event="flow_overflow")
    assert overflow == counters[L.C_FLOW_OVERFLOW]


def test_pod_level_gauges():
    views = [view("a" * 16, "a", [0] * L.NCOUNTERS), view("b" * 16, "b", [0] * L.NCOUNTERS, nflows=5)]
    m = scrape(views)
    assert sample(m["natra_pods"]) == 2
    assert sample(m["natra_attach_mode"], pod="a", mode="tcx") == 1
    assert sample(m["natra_attach_mode"], pod="a", mode="clsact") == 0
    assert sample(m["natra_limit_bytes_per_second"], pod="b", direction="to_pod") == 10_000_000 / 8
    assert sample(m["natra_heavy_flow_entries"], pod="b") == 5
    assert sample(m["natra_heavy_flow_table_size"], pod="b") == 4096
    info = [s for s in m["natra_pod_info"] if s.labels["pod"] == "a"][0]
    assert info.labels["uid"] == "uid-a" and info.labels["interface"] == "va" and info.value == 1


def test_no_flow_ever_becomes_a_label():
    views = [view("a" * 16, "a", [1] * L.NCOUNTERS, nflows=50)]
    m = scrape(views)
    allowed = {"namespace", "pod", "direction", "class", "action", "verdict", "kind", "event", "mode", "uid",
               "container_id", "interface", "cause"}
    series = 0
    for samples in m.values():
        for s in samples:
            assert set(s.labels) <= allowed
            assert not any("10.9.0.1" in value for value in s.labels.values())
            series += 1
    # 50 heavy flows must not add series: the count is per Pod, not per flow.
    assert series == sum(len(s) for s in scrape([view("a" * 16, "a", [1] * L.NCOUNTERS, nflows=1)]).values())


def test_a_direction_without_a_program_has_no_series():
    two = {L.DIR_TO_POD: raw_dir(), L.DIR_FROM_POD: raw_dir(rate_bps=None)}
    v = O.build_view(pod(two), now=0)  # pod() attaches to_pod only
    m = scrape([v])
    assert {s.labels["direction"] for s in m["natra_bytes"]} == {"to_pod"}


def test_a_failing_read_is_counted_not_fatal():
    def broken():
        raise OSError(13, "permission denied")

    from prometheus_client.exposition import generate_latest

    registry = E.registry_for(broken)
    generate_latest(registry)
    text = generate_latest(registry).decode()
    fams = {f.name: f.samples for f in text_string_to_metric_families(text)}
    assert sample(fams["natra_exporter_read_errors"]) == 2
    assert sample(fams["natra_pods"]) == 0


@pytest.mark.parametrize("text,expected", [
    ("0.0.0.0:9695", ("0.0.0.0", 9695)), (":9000", ("0.0.0.0", 9000)), ("[::1]:80", ("::1", 80)),
    ("127.0.0.1:0", ("127.0.0.1", 0)), ("8080", ("0.0.0.0", 8080)),
])
def test_parse_listen(text, expected):
    assert E.parse_listen(text) == expected


def test_http_endpoints_on_loopback():
    views = [view("a" * 16, "a", list(range(L.NCOUNTERS)))]
    server = E.make_server("127.0.0.1:0", lambda: (views, 42))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(base + "/api/pods", timeout=5) as r:
            doc = json.load(r)
            assert doc.pop("wall_ns") > 0
            want = json.loads(json.dumps(O.to_json(views, 42)))
            want.pop("wall_ns")
            assert doc == want
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            names = {f.name for f in text_string_to_metric_families(r.read().decode())}
            assert {"natra_bytes", "natra_packets", "natra_heavy_hitters", "natra_pods"} <= names
        with urllib.request.urlopen(base + "/", timeout=5) as r:
            page = r.read().decode()
            assert r.headers["Content-Type"].startswith("text/html") and "api/pods" in page
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/nope", timeout=5)
        assert missing.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_head_and_get_on_every_endpoint():
    views = [view("a" * 16, "a", list(range(L.NCOUNTERS)))]
    server = E.make_server("127.0.0.1:0", lambda: (views, 42))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for path in E.ENDPOINTS:
            with urllib.request.urlopen(urllib.request.Request(base + path, method="GET"), timeout=5) as r:
                body = r.read()
                assert r.status == 200 and int(r.headers["Content-Length"]) == len(body) > 0
                kind = r.headers["Content-Type"]
            with urllib.request.urlopen(urllib.request.Request(base + path, method="HEAD"), timeout=5) as r:
                assert r.status == 200 and r.read() == b"" and r.headers["Content-Type"] == kind, path
                assert int(r.headers["Content-Length"]) > 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("text", ["127.0.0.1:abc", ":99999", "127.0.0.1:", "[::1]:-1", "host:9x"])
def test_bad_listen_is_one_line_naming_it(text, capsys):
    from natra import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["exporter", "--listen", text])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and repr(text) in err


from prometheus_client.exposition import generate_latest  # noqa: E402


def _missing(cid="dead00beef", direction="to_pod", cause="peer_check", pod="team-a/lost-0"):
    from natra.cni import failopen

    return O.not_limited([failopen.Record(cid, pod=pod, pod_uid="u-9", directions={
        direction: {"cause": cause, "message": "peer check: cannot find the peer of eth0"}},
        since_ns=1_700_000_000 * 10**9)])


def test_fail_open_is_a_zero_enforced_series_and_counted_by_cause():
    views = [view("a" * 16, "a", [0] * L.NCOUNTERS)]
    registry = E.registry_for(lambda: (views, 42), lambda v: _missing())
    m = {f.name: f.samples for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert sample(m["natra_pod_enforced"], pod="a", direction="to_pod") == 1
    assert sample(m["natra_pod_enforced"], pod="lost-0", namespace="team-a", direction="to_pod") == 0
    assert sample(m["natra_pods_not_limited"], cause="peer_check") == 1
    assert sample(m["natra_pods_not_limited"], cause="datapath") == 0
    assert sample(m["natra_fail_open"], cause="peer_check") == 1
    generate_latest(registry)  # the same record again is not a new fail-open
    m = {f.name: f.samples for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert sample(m["natra_fail_open"], cause="peer_check") == 1


def test_limit_is_in_bytes_per_second_and_no_metric_is_in_bits():
    m = scrape([view("a" * 16, "a", [0] * L.NCOUNTERS)])
    assert sample(m["natra_limit_bytes_per_second"], pod="a", direction="to_pod") == 10_000_000 / 8
    assert not [name for name in m if "bits" in name]


SHAPER = {"rate_bps": 8_000_000, "burst_bytes": 100_000, "classes": [
    {"name": "root", "minor": 1, "sent_bytes": 5000, "sent_packets": 5, "drops_packets": 0,
     "backlog_bytes": 0, "backlog_packets": 0, "share_bps": 8_000_000},
    {"name": "mice", "minor": 2, "sent_bytes": 1000, "sent_packets": 2, "drops_packets": 0,
     "backlog_bytes": 0, "backlog_packets": 0, "share_bps": 8_000_000},
    {"name": "heavy0", "minor": 16, "sent_bytes": 4000, "sent_packets": 3, "drops_packets": 7,
     "backlog_bytes": 10_000, "backlog_packets": 7, "share_bps": 8_000_000}]}


def shaped_view(fallback: str | None = None) -> O.PodView:
    meta = {"pod": "team-a/shaped-0", "host_ifname": "veth9", "mode": "tcx",
            "shaping": {"to_pod": {"ifindex": 9}, "from_pod": {"ifb": "ntifb0123456789", "ifindex": 10}},
            "direction_modes": {"to_pod": "shape", "from_pod": "police" if fallback else "shape"}}
    if fallback:
        meta["shape_fallback"] = {"from_pod": fallback}
    directions = {L.DIR_TO_POD: O.RawDirection(raw_dir().config, {}, [0] * L.NCOUNTERS, SHAPER),
                  L.DIR_FROM_POD: raw_dir()}
    raw = O.RawPod("5a" * 8, meta, directions, {}, 4096)
    return O.build_view(raw, 10**12)


def test_shaped_classes_and_modes_in_the_metrics():
    m = scrape([shaped_view(fallback="root qdisc pfifo 1: is not Natra's")])
    lab = {"pod": "shaped-0", "direction": "to_pod"}
    assert sample(m["natra_direction_mode"], mode="shape", **lab) == 1
    assert sample(m["natra_direction_mode"], mode="police", **lab) == 0
    assert sample(m["natra_direction_mode"], mode="police", pod="shaped-0", direction="from_pod") == 1
    assert sample(m["natra_shape_fallback"], pod="shaped-0", direction="from_pod") == 1
    assert sample(m["natra_class_sent_bytes"], **{"class": "heavy0"}, **lab) == 4000
    assert sample(m["natra_class_drops"], **{"class": "heavy0"}, **lab) == 7
    assert sample(m["natra_class_backlog_bytes"], **{"class": "heavy0"}, **lab) == 10_000
    assert sample(m["natra_class_backlog_seconds"], **{"class": "heavy0"}, **lab) == pytest.approx(0.01)
    assert sample(m["natra_class_share_bytes_per_second"], **{"class": "mice"}, **lab) == 1_000_000
