"""The Grafana dashboard file is what ``alb.dashboard`` generates, and is well formed:
every panel queries the ``$datasource`` Prometheus, every query has a legend. (That
each query returns data from a live bridge: ``test_prometheus.py``.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from alb.dashboard import PANELS, UID, queries, render

BOARD = Path(__file__).resolve().parents[2] / "infra" / "grafana" / "alb.json"
ALB = str(Path(sys.executable).parent / "alb")


def test_the_file_is_what_the_code_generates() -> None:
    assert BOARD.read_text() == render(), "run `alb dashboard --out infra/grafana/alb.json`"
    done = subprocess.run(
        [ALB, "dashboard", "--out", str(BOARD), "--check"], capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_every_panel_queries_the_datasource_variable() -> None:
    doc = json.loads(BOARD.read_text())
    assert doc["uid"] == UID
    assert [v["name"] for v in doc["templating"]["list"]] == ["datasource"]
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    assert rows == [row for row, _ in PANELS]
    assert len(panels) == sum(len(ps) for _, ps in PANELS)
    exprs = []
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip()
            assert t["legendFormat"].strip()
            exprs.append(t["expr"])
    assert exprs == queries()
    assert len({t["refId"] for p in panels for t in p["targets"]}) == len(exprs)
