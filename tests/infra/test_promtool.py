"""The alert rules through the real ``promtool`` (Debian's Prometheus package,
``scripts/prometheus install``): ``check rules``, then ``test rules`` with one unit test
per alert: input series that must fire it (with the labels it carries) and healthy
series that must not. Each alert's annotations are read from the rules file, so a
test states only what the expression must do."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.services._env import ServiceUnavailable

RULES = Path(__file__).resolve().parents[2] / "infra" / "prometheus" / "alerts.yml"

Series = dict[str, str]
#: ``{{ $labels.daemon }}`` in an annotation, filled in by Prometheus when it fires.
_LABEL = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")


def _fill(text: str, labels: dict[str, str]) -> str:
    return _LABEL.sub(lambda m: labels[m.group(1)], text)


#: alert -> (series that fire it, series that do not, eval time, extra labels of the alert)
CASES: dict[str, tuple[Series, Series, str, dict[str, str]]] = {
    "ALBNoDaemonAnswering": (
        {'alb_daemon_up{daemon="a"}': "0x10", 'alb_daemon_up{daemon="b"}': "0x10"},
        {'alb_daemon_up{daemon="a"}': "0x10", 'alb_daemon_up{daemon="b"}': "1x10"},
        "5m", {},
    ),
    "ALBDaemonDown": (
        {'alb_daemon_up{daemon="a"}': "0x10", 'alb_daemon_up{daemon="b"}': "1x10"},
        {'alb_daemon_up{daemon="a"}': "1x10", 'alb_daemon_up{daemon="b"}': "1x10"},
        "8m", {"daemon": "a"},
    ),
    "ALBCircuitOpen": (
        {'alb_daemon_circuit_open{daemon="a"}': "1x10"},
        {'alb_daemon_circuit_open{daemon="a"}': "0x10"},
        "8m", {"daemon": "a"},
    ),
    "ALBSustainedOverload": (
        {'alb_rejections_total{reason="high-water"}': "0+10x30"},
        {'alb_rejections_total{reason="high-water"}': "5x30"},
        "20m", {"reason": "high-water"},
    ),
    "ALBLoadsFailing": (
        {'alb_loads_total{reason="request",outcome="failed"}': "0+1x30",
         'alb_loads_total{reason="request",outcome="ok"}': "0+5x30"},
        {'alb_loads_total{reason="request",outcome="failed"}': "3x30",
         'alb_loads_total{reason="request",outcome="ok"}': "0+5x30"},
        "20m", {},
    ),
    "ALBWarmRequestsQueueing": (
        {'alb_queue_wait_seconds_bucket{cold="false",model="m",le="1"}': "0x30",
         'alb_queue_wait_seconds_bucket{cold="false",model="m",le="5"}': "0+10x30",
         'alb_queue_wait_seconds_bucket{cold="false",model="m",le="+Inf"}': "0+10x30"},
        {'alb_queue_wait_seconds_bucket{cold="false",model="m",le="1"}': "0+10x30",
         'alb_queue_wait_seconds_bucket{cold="false",model="m",le="5"}': "0+10x30",
         'alb_queue_wait_seconds_bucket{cold="false",model="m",le="+Inf"}': "0+10x30"},
        "20m", {},
    ),
    "ALBContextThrash": (
        {'alb_num_ctx_choices_total{choice="reload"}': "0+60x60"},
        {'alb_num_ctx_choices_total{choice="reload"}': "0+1x60"},
        "40m", {},
    ),
    "ALBEvictionChurn": (
        {'alb_evictions_total{daemon="a",reason="room"}': "0+6x60"},
        {'alb_evictions_total{daemon="a",reason="room"}': "0+1x60"},
        "50m", {},
    ),
    "ALBStreamFailures": (
        {'alb_stream_failures_total{endpoint="/api/chat",reason="upstream"}': "0+1x30",
         'alb_upstream_retries_total{daemon="a"}': "0+1x30"},
        {'alb_stream_failures_total{endpoint="/api/chat",reason="upstream"}': "0+1x30",
         'alb_upstream_retries_total{daemon="a"}': "7x30"},
        "25m", {},
    ),
    "ALBEventsDropped": (
        {'alb_events_dropped_total{topic="alb.access-log.v1",reason="spool_full"}': "0+1x10"},
        {'alb_events_dropped_total{topic="alb.access-log.v1",reason="spool_full"}': "2x10"},
        "8m", {},
    ),
    "ALBEventShipperRestarting": (
        {"alb_events_shipper_restarts_total": "0+1x20"},
        {"alb_events_shipper_restarts_total": "0+0.1x20"},
        "16m", {},
    ),
    "ALBEventsSpooling": (
        {"alb_events_spool_bytes": "100x30"},
        {"alb_events_spool_bytes": "0x30"},
        "20m", {},
    ),
    "ALBPrefetchMostlyWasted": (
        {"alb_prefetch_wasted_total": "0+5x200", "alb_prefetch_hits_total": "0+1x200"},
        {"alb_prefetch_wasted_total": "0+1x200", "alb_prefetch_hits_total": "0+5x200"},
        "150m", {},
    ),
    "ALBModelHintsStale": (
        {"alb_model_hints_reading": "1x40", 'alb_model_hints_total{outcome="applied"}': "5x40"},
        {"alb_model_hints_reading": "1x40",
         'alb_model_hints_total{outcome="applied"}': "0+1x40"},
        "30m", {},
    ),
    "ALBConnectionCapReached": (
        {'alb_connection_refusals_total{reason="connection_cap"}': "0+1x20"},
        {'alb_connection_refusals_total{reason="connection_cap"}': "4x20",
         'alb_connection_refusals_total{reason="head_timeout"}': "0+1x20"},
        "15m", {},
    ),
    "ALBBodyBudgetSpent": (
        {'alb_edge_refusals_total{reason="body_budget"}': "0+1x20"},
        {'alb_edge_refusals_total{reason="body_budget"}': "1x20",
         'alb_edge_refusals_total{reason="origin"}': "0+1x20"},
        "15m", {},
    ),
    "ALBBugsAnswered": (
        {'alb_requests_total{endpoint="/api/chat",model="m",status="500"}': "0+1x20"},
        {'alb_requests_total{endpoint="/api/chat",model="m",status="500"}': "1x20",
         'alb_requests_total{endpoint="/api/chat",model="m",status="200"}': "0+9x20"},
        "12m", {},
    ),
    "ALBKeyLimitsLocal": (
        {'alb_key_limits_mode{mode="local"}': "1x10", 'alb_key_limits_mode{mode="shared"}': "0x10"},
        {'alb_key_limits_mode{mode="local"}': "0x10", 'alb_key_limits_mode{mode="shared"}': "1x10"},
        "5m", {},
    ),
    "ALBKeyStoreUnreachable": (
        {"alb_keys_snapshot_age_seconds": "0+60x10"},
        {"alb_keys_snapshot_age_seconds": "1x10"},
        "8m", {},
    ),
    "ALBCoordinationDegraded": (
        {'alb_coordination_mode{mode="degraded"}': "1x10"},
        {'alb_coordination_mode{mode="degraded"}': "0x10"},
        "5m", {},
    ),
    "ALBDaemonWithoutOwner": (
        {'alb_daemon_owned{daemon="a",instance="r1"}': "0x10",
         'alb_daemon_owned{daemon="a",instance="r2"}': "0x10",
         'alb_daemon_owned{daemon="b",instance="r1"}': "1x10"},
        {'alb_daemon_owned{daemon="a",instance="r1"}': "0x10",
         'alb_daemon_owned{daemon="a",instance="r2"}': "1x10"},
        "5m", {"daemon": "a"},
    ),
    "ALBLeaseChurn": (
        {'alb_leases_total{action="lost"}': "0+1x30"},
        {'alb_leases_total{action="lost"}': "2x30", 'alb_leases_total{action="taken"}': "0+1x30"},
        "20m", {},
    ),
}  # fmt: skip


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not found: run `scripts/prometheus install` (Debian's prometheus)"
        if os.environ.get("CI") == "true":
            raise ServiceUnavailable(message)
        pytest.skip(message)
    return found


def _rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def _series(values: Series) -> list[dict[str, str]]:
    return [{"series": s, "values": v} for s, v in values.items()]


def test_promtool_checks_the_rules() -> None:
    recording = RULES.with_name("recording.yml")
    done = subprocess.run(
        [_promtool(), "check", "rules", str(RULES), str(recording)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout
    assert done.stdout.count("SUCCESS") == 2


def test_every_alert_has_a_unit_test() -> None:
    assert set(CASES) == set(_rules())


def test_every_alert_fires_on_its_condition_and_not_on_healthy_series(tmp_path: Path) -> None:
    rules = _rules()
    tests = []
    for alert, (firing, quiet, at, labels) in CASES.items():
        rule = rules[alert]
        expected = {
            "exp_labels": {**rule.get("labels", {}), **labels},
            "exp_annotations": {
                k: _fill(v, labels) for k, v in rule.get("annotations", {}).items()
            },
        }
        tests.append(
            {
                "name": f"{alert} fires",
                "interval": "1m",
                "input_series": _series(firing),
                "alert_rule_test": [
                    {"eval_time": at, "alertname": alert, "exp_alerts": [expected]}
                ],
            }
        )
        tests.append(
            {
                "name": f"{alert} stays quiet",
                "interval": "1m",
                "input_series": _series(quiet),
                "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": []}],
            }
        )
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "tests": tests}))
    done = subprocess.run(
        [_promtool(), "test", "rules", str(spec)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
