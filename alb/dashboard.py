"""The Grafana dashboard, generated from code (grafana-foundation-sdk).

``PANELS`` is the dashboard as data: a row, then panels of one or more PromQL queries.
``build()`` turns it into Grafana's JSON through the SDK's builders;
``alb dashboard --out infra/grafana/alb.json`` writes the provisioned file. The tests
check that the file is what ``build()`` makes now, and run every query against a real
Prometheus scraping a live bridge (``tests/infra/test_prometheus.py``): each must
return series. ``$datasource`` is a Prometheus datasource variable, so the same JSON
works in any Grafana.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

UID = "alb-bridge"
_DS = DataSourceRef(type_val="prometheus", uid="${datasource}")


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""


def q(expr: str, legend: str) -> Query:
    return Query(expr, legend)


#: Rows of panels: (row title, panels).
PANELS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Daemons",
        (
            Panel(
                "Memory per daemon",
                "bytes",
                (
                    q('max by (daemon) (alb_daemon_memory_bytes{kind="used"})', "{{daemon}} used"),
                    q(
                        'max by (daemon) (alb_daemon_memory_bytes{kind="budget"})',
                        "{{daemon}} budget",
                    ),
                    q(
                        'max by (daemon) (alb_daemon_memory_bytes{kind="capacity"})',
                        "{{daemon}} capacity",
                    ),
                ),
                "What the loaded runners take, what the bridge plans with (capacity less "
                "headroom and memory held outside the bridge), and the daemon's capacity "
                "(every replica sees the same daemon: the largest reading). Healthy: used "
                "below budget; used at budget with evictions rising means the working set "
                "does not fit.",
            ),
            Panel(
                "Runners by state",
                "short",
                (
                    q(
                        "max by (daemon, state) (sum by (daemon, state, instance) (alb_runners))",
                        "{{daemon}} {{state}}",
                    ),
                ),
                "loading, serving (a request holds a slot), idle; pinned ones also as pinned "
                "(the replica that sees the most). Loading for long: a slow disk or a load "
                "that will fail (ALBLoadsFailing).",
            ),
            Panel(
                "Daemon up and circuit",
                "short",
                (
                    q("min by (daemon) (alb_daemon_up)", "{{daemon}} up"),
                    q("max by (daemon) (alb_daemon_circuit_open)", "{{daemon}} circuit open"),
                ),
                "1 = up on every replica; a circuit at 1 keeps traffic away from a daemon "
                "that fails its health checks.",
            ),
        ),
    ),
    (
        "Models",
        (
            Panel(
                "Requests per second by model and status",
                "reqps",
                (
                    q(
                        "sum by (model, status) (rate(alb_requests_total[$__rate_interval]))",
                        "{{model}} {{status}}",
                    ),
                ),
            ),
            Panel(
                "Latency p50 / p99 by model",
                "s",
                (
                    q(
                        "histogram_quantile(0.5, sum by (model, le) "
                        "(rate(alb_request_duration_seconds_bucket[$__rate_interval])))",
                        "{{model}} p50",
                    ),
                    q(
                        "histogram_quantile(0.99, sum by (model, le) "
                        "(rate(alb_request_duration_seconds_bucket[$__rate_interval])))",
                        "{{model}} p99",
                    ),
                ),
            ),
            Panel(
                "Time to first token p50 / p99 by model",
                "s",
                (
                    q(
                        "histogram_quantile(0.5, sum by (model, le) "
                        "(rate(alb_time_to_first_byte_seconds_bucket[$__rate_interval])))",
                        "{{model}} p50",
                    ),
                    q(
                        "histogram_quantile(0.99, sum by (model, le) "
                        "(rate(alb_time_to_first_byte_seconds_bucket[$__rate_interval])))",
                        "{{model}} p99",
                    ),
                ),
            ),
            Panel(
                "Queue depth and requests in flight",
                "short",
                (
                    q("sum by (model) (alb_queue_depth)", "{{model}} queued"),
                    q("sum by (model) (alb_in_flight)", "{{model}} in flight"),
                ),
            ),
            Panel(
                "Queue wait p99, warm and cold",
                "s",
                (
                    q(
                        "histogram_quantile(0.99, sum by (model, cold, le) "
                        "(rate(alb_queue_wait_seconds_bucket[$__rate_interval])))",
                        "{{model}} cold={{cold}}",
                    ),
                ),
                "Cold: the wait included a load. Warm requests that queue want more slots.",
            ),
            Panel(
                "Cold starts per second",
                "reqps",
                (
                    q(
                        'sum by (model) (rate(alb_queue_wait_seconds_count{cold="true"}'
                        "[$__rate_interval]))",
                        "{{model}}",
                    ),
                ),
            ),
            Panel(
                "Loads by reason and outcome",
                "ops",
                (
                    q(
                        "sum by (reason, outcome) (rate(alb_loads_total[$__rate_interval]))",
                        "{{reason}} {{outcome}}",
                    ),
                ),
            ),
            Panel(
                "Cold starts by cause",
                "reqps",
                (
                    q(
                        "sum by (cause) (rate(alb_cold_starts_total[$__rate_interval]))",
                        "{{cause}}",
                    ),
                ),
            ),
            Panel(
                "Evictions, unloads and replicas",
                "ops",
                (
                    q(
                        "sum by (reason) (rate(alb_evictions_total[$__rate_interval]))",
                        "evict {{reason}}",
                    ),
                    q(
                        "sum by (reason) (rate(alb_unloads_total[$__rate_interval]))",
                        "unload {{reason}}",
                    ),
                    q(
                        "sum by (action) (rate(alb_replicas_total[$__rate_interval]))",
                        "replica {{action}}",
                    ),
                ),
            ),
        ),
    ),
    (
        "Admission",
        (
            Panel(
                "Refused: 503 and 429",
                "reqps",
                (
                    q(
                        'sum by (status) (rate(alb_requests_total{status=~"503|429"}'
                        "[$__rate_interval]))",
                        "{{status}}",
                    ),
                    q(
                        "sum by (reason) (rate(alb_rejections_total[$__rate_interval]))",
                        "rejected {{reason}}",
                    ),
                    q(
                        "sum by (limit) (rate(alb_key_limited_total[$__rate_interval]))",
                        "key over {{limit}}",
                    ),
                ),
                "503: over the high-water mark or no daemon; 429: a key over a limit.",
            ),
        ),
    ),
    (
        "Events",
        (
            Panel(
                "Pipeline: queued, backlog, spool",
                "short",
                (
                    q("alb_events_queued", "{{instance}} queued"),
                    q("alb_events_backlog", "{{instance}} records not built yet"),
                    q("alb_events_spool_bytes", "{{instance}} spool bytes"),
                ),
                "Lag of the access log: events waiting in memory, records waiting to be "
                "built, bytes spooled to disk while the bus is down or slow.",
            ),
            Panel(
                "Events sent, dropped; shipper restarts",
                "ops",
                (
                    q(
                        "sum by (topic) (rate(alb_events_sent_total[$__rate_interval]))",
                        "sent {{topic}}",
                    ),
                    q(
                        "sum(rate(alb_events_dropped_total[$__rate_interval])) or vector(0)",
                        "dropped",
                    ),
                    q(
                        "increase(alb_events_shipper_restarts_total[1h]) or vector(0)",
                        "shipper restarts / h",
                    ),
                ),
            ),
        ),
    ),
    (
        "Predictor",
        (
            Panel(
                "Prefetches by outcome",
                "ops",
                (
                    q(
                        "sum by (outcome) (rate(alb_prefetch_total[$__rate_interval])) "
                        "or vector(0)",
                        "{{outcome}}",
                    ),
                    q("rate(alb_prefetch_hits_total[$__rate_interval])", "hits"),
                    q("rate(alb_prefetch_wasted_total[$__rate_interval])", "wasted"),
                ),
            ),
            Panel(
                "Model hints: freshness",
                "short",
                (
                    q("alb_model_hints_held", "hints held"),
                    q("alb_model_hints_reading", "reading (Kafka)"),
                    q(
                        "sum by (outcome) (rate(alb_model_hints_total[$__rate_interval])) "
                        "or vector(0)",
                        "{{outcome}}",
                    ),
                ),
                "With Kafka: hints held and applied per second; a reader that applies none "
                "for ten minutes fires ALBModelHintsStale.",
            ),
        ),
    ),
)


def queries() -> list[str]:
    """Every PromQL expression of the dashboard."""
    return [query.expr for _, panels in PANELS for p in panels for query in p.queries]


def build() -> dict[str, object]:
    """The dashboard as Grafana's JSON (a dict)."""
    board = (
        db.Dashboard("Async-Load Bridge")
        .uid(UID)
        .tags(["alb", "ollama"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(db.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    ref = 0
    for row, panels in PANELS:
        board = board.with_row(db.Row(row))
        for p in panels:
            panel = (
                timeseries.Panel()
                .title(p.title)
                .description(p.description)
                .unit(p.unit)
                .datasource(_DS)
                .height(8)
                .span(12)
            )
            for query in p.queries:
                ref += 1
                panel = panel.with_target(
                    prometheus.Dataquery()
                    .expr(query.expr)
                    .legend_format(query.legend)
                    .ref_id(f"Q{ref}")
                )
            board = board.with_panel(panel)
    doc: dict[str, object] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return doc


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"
