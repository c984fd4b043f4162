"""Fail-open and shaping in every view, without root (issue #19, issue #16 item 4).

The plugin fails open for real where no privilege is needed (a Pod netns that
does not exist: the peer check; an invalid bandwidth annotation; prevResult
without a host interface), then `natra status` (text and --json), `natra top`,
the exporter's metrics and /api/pods (the page's document) must all show the
Pod as NOT limited with its cause and since when. DEL clears the record and GC
removes orphans. Shaped directions (made-up qdisc counters) show their mode,
fallback and classes.
"""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from observe_records import raw_dir
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from natra.cni import failopen, versions
from natra.cni.plugin import run
from natra.kernel import layout as L
from natra.kernel.params import params_for, to_config
from natra.node import exporter as E
from natra.node import observe as O
from natra.node import status_cli as S

NOW = 1_700_000_000 * 10**9
MAXU32 = 2**32 - 1
PREV = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "veth1234", "mac": "aa:aa:aa:aa:aa:aa"},
                       {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "sandbox": "/run/netns/nt4-none"}],
        "ips": [{"interface": 1, "address": "10.1.0.5/24", "gateway": "10.1.0.1"}]}
LIMITS = {"bandwidth": {"IngressRate": 10_000_000, "IngressBurst": MAXU32}}
ANNOTATIONS = "io.kubernetes.cri.pod-annotations"
# cause -> (runtimeConfig, prevResult, the direction left unlimited)
CAUSES = {
    "peer_check": (LIMITS, PREV, "to_pod"),
    "invalid_annotation": ({ANNOTATIONS: {"kubernetes.io/egress-bandwidth": "10K"}}, PREV, "from_pod"),
    "no_host_interface": (LIMITS, {**PREV, "interfaces": [PREV["interfaces"][1]]}, "to_pod"),
}


@pytest.fixture
def where(tmp_path):
    (tmp_path / "bpf").mkdir()
    return {"NATRA_BPFFS_ROOT": str(tmp_path / "bpf"), "NATRA_STATE_DIR": str(tmp_path / "state"),
            "NATRA_LOG_FILE": ""}


def cni(command, where, runtime=None, prev=PREV, cid="nt4-c1", extra=None):
    body = {"cniVersion": "1.1.0" if command == "GC" else "1.0.0", "name": "net", "type": "natra",
            **(extra or {})}
    if runtime is not None:
        body["runtimeConfig"] = runtime
    if prev is not None and command in ("ADD", "CHECK"):
        body["prevResult"] = versions.convert_result(prev, "1.0.0")
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/nt4-none",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
           "CNI_ARGS": "K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=team-a;K8S_POD_UID=u-1;IgnoreUnknown=1", **where}
    err = io.StringIO()
    code, out = run(env, json.dumps(body).encode(), now=NOW, stderr=err)
    return code, out, err.getvalue()


def views_of(where, capsys, monkeypatch):
    """(status text, status JSON, top frame, metrics text, /api/pods document)."""
    monkeypatch.setenv("NATRA_STATE_DIR", where["NATRA_STATE_DIR"])
    monkeypatch.setattr(O, "collect", lambda root=None, now=None, top=O.DEFAULT_TOP: [])
    root = where["NATRA_BPFFS_ROOT"]
    assert S.main(["status", "--root", root]) == 0
    text = capsys.readouterr().out
    assert S.main(["status", "--json", "--root", root]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert S.main(["top", "--once", "--interval", "0", "--no-clear", "--root", root]) == 0
    top = capsys.readouterr().out
    missing = E.live_not_limited(where["NATRA_STATE_DIR"])
    metrics = generate_latest(E.registry_for(lambda: ([], 0), missing)).decode()
    api = O.to_json([], 0, missing([]), NOW)
    return text, doc, top, metrics, api


def enforced(metrics: str) -> dict[tuple[str, str, str], float]:
    fams = {f.name: f for f in text_string_to_metric_families(metrics)}
    return {(s.labels["namespace"], s.labels["pod"], s.labels["direction"]): s.value
            for s in fams["natra_pod_enforced"].samples}


@pytest.mark.parametrize("cause", sorted(CAUSES))
def test_each_cause_is_seen_in_every_view_and_cleared_by_del(cause, where, capsys, monkeypatch):
    runtime, prev, direction = CAUSES[cause]
    code, out, err = cni("ADD", where, runtime, prev)
    assert code == 0 and "NOT limited" in err
    record = failopen.read(where["NATRA_STATE_DIR"], "nt4-c1")
    assert record is not None and record.pod == "team-a/web-0" and record.since_ns == NOW
    assert record.directions[direction]["cause"] == cause
    text, doc, top, metrics, api = views_of(where, capsys, monkeypatch)
    assert text.startswith("NOT LIMITED: 1 Pod direction")
    assert f"team-a/web-0  {direction}  cause {cause}" in text
    assert "since 2023-11-14 22:13:20 UTC" in text
    [entry] = doc["not_limited"]
    assert (entry["namespace"], entry["pod"], entry["direction"], entry["cause"], entry["since_ns"]) == \
        ("team-a", "web-0", direction, cause, NOW)
    assert f"NOT LIMITED  team-a/web-0  {direction}  cause {cause}" in top
    assert enforced(metrics) == {("team-a", "web-0", direction): 0.0}
    assert f'natra_pods_not_limited{{cause="{cause}"}} 1.0' in metrics
    assert api["not_limited"] == doc["not_limited"]
    # A second ADD keeps "since"; CHECK passes (CRI-O); DEL clears the record.
    assert cni("ADD", where, runtime, prev)[0] == 0
    assert failopen.read(where["NATRA_STATE_DIR"], "nt4-c1").since_ns == NOW
    assert cni("CHECK", where, runtime, prev)[0] == 0
    assert cni("DEL", where, runtime, prev)[0] == 0
    assert failopen.read_all(where["NATRA_STATE_DIR"]) == []
    text, doc, top, metrics, api = views_of(where, capsys, monkeypatch)
    assert "NOT LIMITED" not in text + top and doc["not_limited"] == [] and enforced(metrics) == {}


def test_gc_removes_orphaned_records(where):
    for cid in ("nt4-keep", "nt4-orphan"):
        assert cni("ADD", where, LIMITS, cid=cid)[0] == 0
    assert {r.container_id for r in failopen.read_all(where["NATRA_STATE_DIR"])} == {"nt4-keep", "nt4-orphan"}
    valid = {"cni.dev/valid-attachments": [{"containerID": "nt4-keep", "ifname": "eth0"}]}
    code, out, err = cni("GC", where, extra=valid, prev=None)
    assert code == 0, out
    assert [r.container_id for r in failopen.read_all(where["NATRA_STATE_DIR"])] == ["nt4-keep"]


def test_a_record_of_an_older_natra_still_shows(tmp_path):
    (tmp_path / "fail-open").mkdir()
    (tmp_path / "fail-open" / "old1").write_text("peer check: gone\n")
    [n] = O.not_limited(failopen.read_all(str(tmp_path)))
    assert (n.direction, n.cause, n.message, n.pod) == ("unknown", "unknown", "peer check: gone", "old1")


def test_a_direction_limited_since_is_not_reported():
    view = O.build_view(O.RawPod("c1", {"pod": "a/b"}, {L.DIR_TO_POD: raw_dir()}, {}, 1, (L.DIR_TO_POD,)), 0)
    record = failopen.Record("c1", pod="a/b", directions={"to_pod": {"cause": "datapath", "message": "x"},
                                                          "from_pod": {"cause": "datapath", "message": "x"}})
    assert [n.direction for n in O.not_limited([record], [view])] == ["from_pod"]


SHAPER = {"rate_bps": 8_000_000, "burst_bytes": 100_000, "classes": [
    {"name": "root", "minor": 1, "sent_bytes": 5000, "sent_packets": 5, "drops_packets": 0,
     "backlog_bytes": 0, "backlog_packets": 0, "share_bps": 8_000_000},
    {"name": "heavy0", "minor": 16, "sent_bytes": 4000, "sent_packets": 3, "drops_packets": 7,
     "backlog_bytes": 10_000, "backlog_packets": 7, "share_bps": 8_000_000}]}


def shaped(sent: int = 4000, fallback: str | None = None, sketch_lock: bool = True) -> O.PodView:
    shaper = json.loads(json.dumps(SHAPER))
    shaper["classes"][1]["sent_bytes"] = sent
    meta = {"pod": "team-a/shaped-0", "host_ifname": "veth9",
            "shaping": {"to_pod": {"ifindex": 9}, "from_pod": {"ifb": "ntifb0123456789", "ifindex": 10}},
            "direction_modes": {"to_pod": "shape", "from_pod": "police" if fallback else "shape"}}
    if fallback:
        meta["shape_fallback"] = {"from_pod": fallback}
    config = dataclasses.asdict(to_config(params_for(10_000_000, mode="shape", sketch_lock=sketch_lock)))
    raw = O.RawPod("5a" * 8, meta, {L.DIR_TO_POD: O.RawDirection(config, {}, [0] * L.NCOUNTERS, shaper),
                                    L.DIR_FROM_POD: raw_dir()}, {}, 4096)
    return O.build_view(raw, 10**12)


def test_modes_fallback_and_classes_in_status_and_json():
    view = shaped(fallback="ifindex 10 already has a root qdisc pfifo 1: that Natra did not make")
    text = S.render_status([view])
    assert "to_pod   10.0 Mbit/s" in text and "mode shape on veth9" in text
    assert "mode police (shaping fell back: ifindex 10 already has a root qdisc pfifo 1:" in text
    assert "heavy0" in text and "10.0 kB" in text and "10.0 ms" in text
    d = O.to_json([view], 0)["pods"][0]["directions"]
    assert d[0]["mode"] == "shape" and d[0]["device"] == "veth9" and d[1]["fallback"].startswith("ifindex 10")
    assert d[0]["classes"][1] == {
        "name": "heavy0", "sent_bytes": 4000, "sent_packets": 3, "drops_packets": 7, "backlog_bytes": 10_000,
        "backlog_packets": 7, "backlog_delay_ns": 10_000_000, "share_bps": 8_000_000}


def test_a_shaped_direction_without_the_sketch_lock_says_so():
    locked, unlocked = shaped(), shaped(sketch_lock=False)
    assert "sketch unlocked" not in S.render_status([locked])
    assert "mode shape on veth9, sketch unlocked" in S.render_status([unlocked])
    rates = O.rates([unlocked], [unlocked], 10**9)
    assert "mode shape on veth9, sketch unlocked" in S.render_top([unlocked], rates, 10**9)
    d = O.to_json([unlocked], 0)["pods"][0]["directions"]
    assert d[0]["sketch_lock"] is False and d[1]["sketch_lock"] is True  # its config keeps the lock


def test_police_mode_when_meta_says_nothing():
    view = O.build_view(O.RawPod("c1", {"pod": "a/b"}, {L.DIR_TO_POD: raw_dir()}, {}, 1, (L.DIR_TO_POD,)), 0)
    assert view.directions[0].mode == "police" and view.directions[0].classes == ()


def test_top_shows_class_rates_between_samples():
    before, after = shaped(sent=4000), shaped(sent=4000 + 125_000)
    rates = O.rates([before], [after], 10**9)
    assert rates[(after.container_id, "to_pod")].classes_bps["heavy0"] == 1_000_000
    frame = S.render_top([after], rates, 10**9)
    assert "mode shape on veth9" in frame and "heavy0   sending    1.0 Mbit/s" in frame
