"""Tests of natra/node/status_cli.py: the text of `natra status` / `natra top` from
made-up views, and both commands end to end on a node with no Natra Pod."""

from __future__ import annotations

import json

from observe_records import flow, key, pod, raw_dir  # tests/ is on sys.path (rootdir-less import)

from natra.kernel import layout as L
from natra.node import observe as O
from natra.node import status_cli as S

NOW = 10**12
WINDOW = 100_000_000


def busy_view(cid: str, name: str, passed: int, flows: dict | None = None) -> O.PodView:
    c = [0] * L.NCOUNTERS
    c[L.verdict_bytes_index(L.V_PASS_HEAVY)] = passed
    c[L.verdict_packets_index(L.V_PASS_HEAVY)] = passed // 1500
    c[L.C_FRAMES] = passed // 1500
    return O.build_view(pod({L.DIR_TO_POD: raw_dir(counters=c)}, flows or {}, cid=cid,
                            meta={"pod": f"shop/{name}", "host_ifname": f"veth{name}",
                                  "mode": "clsact"}), NOW)


def test_status_text_names_the_pod_its_limit_and_its_heavy_hitters():
    flows = {key("10.9.0.1", "10.1.0.2", 40000, 5201): flow(NOW // WINDOW + 1, estimate=2_000_000,
                                                            passed=3_000_000, dropped=500_000, last_ns=NOW)}
    text = S.render_status([busy_view("a" * 20, "cart", 3_000_000, flows)])
    assert "shop/cart" in text and "interface vethcart" in text and "mode clsact" in text
    assert "to_pod   10.0 Mbit/s" in text
    assert "tcp 10.9.0.1:40000 > 10.1.0.2:5201" in text and "heavy" in text
    assert "from_pod" not in text  # absent direction, nothing to say


def test_status_says_when_a_pod_is_still_to_move_to_tcx():
    moving = O.build_view(pod({L.DIR_TO_POD: raw_dir()}, {}, cid="c" * 20,
                              meta={"pod": "shop/new", "host_ifname": "vethnew", "mode": "clsact",
                                    "tcx_pending": True}), NOW)
    assert moving.tcx_pending and "mode clsact (moving to tcx)" in S.render_status([moving])
    settled = busy_view("a" * 20, "cart", 0)
    assert not settled.tcx_pending and "moving" not in S.render_status([settled])


def test_status_text_without_pods():
    assert "no Pod" in S.render_status([])


def test_top_orders_by_traffic_and_lists_only_recent_hitters():
    old_flow = key("10.9.0.1", "10.1.0.2", 1, 1)
    new_flow = key("10.9.0.1", "10.1.0.2", 2, 2)
    flows = {old_flow: flow(1, estimate=9, last_ns=NOW - 5 * O.RECENT_NS),
             new_flow: flow(NOW // WINDOW - 3, estimate=1, last_ns=NOW - O.RECENT_NS // 2)}
    before = [busy_view("a" * 20, "quiet", 0), busy_view("b" * 20, "loud", 0, flows)]
    after = [busy_view("a" * 20, "quiet", 1_000), busy_view("b" * 20, "loud", 1_000_000, flows)]
    text = S.render_top(after, O.rates(before, after, 10**9), 10**9)
    assert text.index("shop/loud") < text.index("shop/quiet")
    assert "tcp 10.9.0.1:2 > 10.1.0.2:2" in text and "idle 0.5s" in text
    assert "tcp 10.9.0.1:1 > 10.1.0.2:1" not in text
    assert "8.0 Mbit/s" in text  # 1 MB in one second


def test_both_commands_on_a_node_without_natra(tmp_path, capsys, monkeypatch):
    root = str(tmp_path / "natra")
    (tmp_path / "natra").mkdir()
    monkeypatch.setenv("NATRA_STATE_DIR", str(tmp_path / "state"))
    assert S.main(["status", "--json", "--root", root]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pods"] == [] and doc["version"] == O.JSON_VERSION
    assert S.main(["status", "--root", root]) == 0
    assert "no Pod" in capsys.readouterr().out
    assert S.main(["top", "--once", "--interval", "0", "--no-clear", "--root", root]) == 0
    assert "natra top - 0 Pods" in capsys.readouterr().out


def test_a_missing_root_is_named(tmp_path, capsys):
    """`natra status --root /nonexistent` says the root is missing instead of 'no Pod'."""
    missing = str(tmp_path / "nonexistent")
    for argv in (["status", "--root", missing], ["top", "--once", "--root", missing]):
        assert S.main(argv) == 2
        err = capsys.readouterr().err
        assert missing in err and "does not exist" in err and len(err.strip().splitlines()) == 1


def test_status_says_when_the_heavy_flow_table_overflows():
    quiet = S.render_status([busy_view("a" * 20, "cart", 3_000_000)])
    assert "OVERFLOW" not in quiet
    c = [0] * L.NCOUNTERS
    c[L.C_FRAMES] = 10
    c[L.C_FLOW_NEW] = 9
    c[L.C_FLOW_OVERFLOW] = 7
    v = O.build_view(pod({L.DIR_TO_POD: raw_dir(counters=c)}, {}, cid="b" * 20,
                         meta={"pod": "shop/flood", "host_ifname": "vethflood", "mode": "clsact"}), NOW)
    text = S.render_status([v])
    assert "TABLE OVERFLOW: 7 heavy frames shared another live flow's slot" in text
    assert f"the {v.flow_table_size}-slot table" in text
    assert O.to_json([v], NOW)["pods"][0]["directions"][0]["counters"]["flow_overflow"] == 7
