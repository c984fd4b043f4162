"""The Grafana dashboard in docs/observability.md loads as JSON, has the structure Grafana imports,
and queries only metrics the exporter serves (so a renamed metric cannot leave it blank)."""

from __future__ import annotations

import json
import os
import re

from natra.cni import failopen
from natra.node import exporter as E

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "observability.md")
MARKER = "<!-- grafana-dashboard -->"


def dashboard() -> dict:
    with open(DOC) as f:
        text = f.read()
    block = text.split(MARKER, 1)[1]
    body = block.split("```json", 1)[1].split("```", 1)[0]
    return json.loads(body)


def served_names() -> set[str]:
    names = set()
    for family in E.metric_families([], [], dict.fromkeys(failopen.CAUSES, 0)):
        names.add(family.name)
        names.update({family.name + "_total"} if family.type == "counter" else set())
    return names | {"natra_exporter_read_errors_total", "natra_exporter_scrape_duration_seconds"}


def test_the_dashboard_loads_and_has_grafanas_structure():
    d = dashboard()
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    panels = d["panels"]
    assert panels and len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        assert p["type"] in {"timeseries", "table", "stat", "gauge"} and p["title"]
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["datasource"]["type"] == "prometheus" and p["targets"]
        assert all(t["refId"] and t["expr"] for t in p["targets"])
    assert "NOT LIMITED" in panels[0]["title"] and "natra_pod_enforced" in panels[0]["targets"][0]["expr"]


def test_every_queried_metric_is_served():
    served = served_names()
    for p in dashboard()["panels"]:
        for t in p["targets"]:
            for name in re.findall(r"\bnatra_[a-z_]+", t["expr"]):
                assert name in served, (p["title"], name)
