"""The shipped Prometheus rules parse and name only metrics the bridge exports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import yaml

from ollamasim.testing import RunningFleet
from tests.bridge._support import running_bridge, settings_for
from tests.bridge.conftest import bridge, client, fleet  # noqa: F401  (fixtures)

RULES = Path(__file__).resolve().parents[2] / "infra" / "prometheus" / "alerts.yml"
_METRIC = re.compile(r"\balb_[a-z0-9_]+")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_rule_is_complete() -> None:
    rules = _rules()
    assert len(rules) >= 10
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["expr"].strip()
        assert rule["labels"]["severity"] in {"page", "ticket", "info"}
        assert rule["annotations"]["summary"]


async def test_rules_name_only_exported_metrics(
    client: httpx.AsyncClient,  # noqa: F811
    fleet: RunningFleet,  # noqa: F811
    tmp_path: Path,
) -> None:
    exposition = (await client.get("/metrics")).text
    # And a bridge with keys (ALB_AUTH=keys): the key ring's and limits' metrics.
    keyed = settings_for(fleet, auth="keys", keys_file=str(tmp_path / "keys.sqlite"))
    async with running_bridge(keyed) as b, httpx.AsyncClient(base_url=b.base_url) as c:
        exposition += (await c.get("/metrics")).text
    exported = set(re.findall(r"^# TYPE (alb_[a-z0-9_]+) ", exposition, flags=re.M))
    assert "alb_daemon_up" in exported
    for rule in _rules():
        for name in _METRIC.findall(rule["expr"]):
            base = name
            for suffix in _HISTOGRAM_SUFFIXES:
                if name.endswith(suffix) and name[: -len(suffix)] in exported:
                    base = name[: -len(suffix)]
            # Counters are exposed under their name without "_total" in "# TYPE" lines.
            candidates = {base, base.removesuffix("_total")}
            assert candidates & exported, f"{rule['alert']}: {name} is not exported by the bridge"
