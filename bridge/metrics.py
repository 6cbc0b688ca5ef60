"""Prometheus metrics (prefix ``alb_``), on a registry owned by one app.

No module-level collectors: ``Metrics()`` makes a fresh ``CollectorRegistry``,
so two apps in one process (tests) never share counters. Label values are
bounded: ``model`` is a normalised name the fleet knows (or ``"-"``),
``endpoint`` a route path, ``status`` the HTTP status.

The per-request collectors also come as ``Children`` (``m.requests_by(path,
model, "200")``): ``labels()`` builds and validates a label tuple under a lock
on every call, ~5 % of the bridge's CPU per request; a child looked up once per
label tuple costs one dict lookup afterwards. Bounded labels keep the caches small.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase

from bridge.policy.cold import COLD_CAUSES

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
)
CONTENT_TYPE = CONTENT_TYPE_LATEST

_M = TypeVar("_M", bound=MetricWrapperBase)


class Children(Generic[_M]):
    """``metric.labels(*values)``, built once per tuple of label values (positional,
    in the metric's label order) and reused."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], _M] = {}

    def __call__(self, *values: str) -> _M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class GaugeFrom:
    """A labelled gauge read at scrape time from ``source`` (``(label values, value)``
    pairs): the state it shows is the one the bridge acts on, not a copy kept beside it."""

    def __init__(self, name: str, doc: str, labels: list[str], registry: CollectorRegistry):
        self._name, self._doc, self._labels = name, doc, labels
        self.source: Callable[[], Iterable[tuple[list[str], float]]] = list
        registry.register(self)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self._name, self._doc, labels=self._labels)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._doc, labels=self._labels)
        for values, value in self.source():
            family.add_metric(values, value)
        yield family


class Metrics:
    """Every collector the bridge exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "alb_requests",
            "Requests answered, by endpoint, model and HTTP status.",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "alb_request_duration_seconds",
            "Time from request to the end of the response.",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "alb_time_to_first_byte_seconds",
            "Time from request to the first upstream byte sent to the client.",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "alb_queue_depth",
            "Requests waiting for a slot or a load, per daemon and model.",
            ["daemon", "model"],
            registry=r,
        )
        self.cold_starts = Counter(
            "alb_cold_starts",
            "Requests that waited for a load, by cause (bridge.policy.cold): first, gone, "
            "context, copy.",
            ["cause"],
            registry=r,
        )
        for cause in COLD_CAUSES:
            self.cold_starts.labels(cause=cause)
        self.queue_wait = Histogram(
            "alb_queue_wait_seconds",
            "Time a request waited for its slot (load included).",
            ["model", "cold"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        #: Slots held, read from the scheduler's gates (the counters admission uses).
        self.in_flight = GaugeFrom(
            "alb_in_flight",
            "Requests holding a slot (running upstream), per daemon and model.",
            ["daemon", "model"],
            r,
        )
        self.runners = GaugeFrom(
            "alb_runners",
            "1 per runner the bridge sees on a daemon, by state: loading, serving (a request "
            "holds a slot), idle; pinned runners also as pinned.",
            ["daemon", "model", "state"],
            r,
        )
        self.loads = Counter(
            "alb_loads",
            "Model loads started by the bridge, by reason and outcome.",
            ["reason", "outcome"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "alb_load_duration_seconds",
            "Duration of model loads started by the bridge.",
            ["model", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.unloads = Counter(
            "alb_unloads",
            "Model unloads started by the bridge, by reason and outcome.",
            ["reason", "outcome"],
            registry=r,
        )
        self.replicas = Counter(
            "alb_replicas",
            "Copies of a hot model: loaded on another daemon (replicate, or replicate-failed) "
            "and unloaded after the burst (retire).",
            ["action"],
            registry=r,
        )
        # Known label values start at 0, so a dashboard shows 0 rather than no data.
        for action in ("replicate", "replicate-failed", "retire"):
            self.replicas.labels(action=action)
        self.rejections = Counter(
            "alb_rejections",
            "Requests refused before reaching a daemon, by reason.",
            ["reason"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "alb_upstream_retries",
            "Upstream attempts repeated before the first byte reached the client.",
            ["daemon"],
            registry=r,
        )
        self.stream_failures = Counter(
            "alb_stream_failures",
            "Streams that failed after their first byte (reported in-band).",
            ["endpoint", "reason"],
            registry=r,
        )
        self.daemon_up = Gauge(
            "alb_daemon_up", "1 when the daemon answered its last check.", ["daemon"], registry=r
        )
        self.evictions = Counter(
            "alb_evictions",
            "Runners the bridge unloaded to make room, by daemon and reason.",
            ["daemon", "reason"],
            registry=r,
        )
        self.num_ctx_choices = Counter(
            "alb_num_ctx_choices",
            "Context decisions: fits-loaded, load, reload, rejected, translated (/v1 natively).",
            ["choice"],
            registry=r,
        )
        self.num_ctx_loaded = Histogram(
            "alb_num_ctx_loaded",
            "num_ctx of the runners the bridge loaded.",
            buckets=(2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144),
            registry=r,
        )
        self.memory = Gauge(
            "alb_daemon_memory_bytes",
            "Per daemon: capacity, budget (capacity minus headroom and others' use), used.",
            ["daemon", "kind"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "alb_daemon_circuit_open",
            "1 while the daemon's circuit breaker keeps traffic away.",
            ["daemon"],
            registry=r,
        )
        self.health_checks = Counter(
            "alb_health_checks",
            "Active health checks, by daemon and outcome.",
            ["daemon", "outcome"],
            registry=r,
        )
        self.failovers = Counter(
            "alb_failovers",
            "Requests placed again on another daemon before their first byte.",
            ["daemon"],
            registry=r,
        )
        # --- the edge and the connections (bridge.http.edge, bridge.http.connections) ---------
        self.edge_refusals = Counter(
            "alb_edge_refusals",
            "Requests refused at the edge: host, origin, body_too_large, body_budget.",
            ["reason"],
            registry=r,
        )
        self.connection_refusals = Counter(
            "alb_connection_refusals",
            "Connections answered and closed by their limits: head_timeout, "
            "head_too_large, body_too_slow, connection_cap, bad_request.",
            ["reason"],
            registry=r,
        )
        self.client_connections = Gauge(
            "alb_client_connections", "Open client connections.", registry=r
        )
        #: ``in_use`` / ``capacity`` of the bridge-wide request-body budget.
        self.body_budget = GaugeFrom(
            "alb_body_budget_bytes",
            "Request-body bytes held by requests in progress, and the budget.",
            ["kind"],
            r,
        )

        # --- several replicas (bridge.coord) -------------------------------------------------
        self.coord_mode = Gauge(
            "alb_coordination_mode",
            "1 for this replica's coordination mode: solo, shared (Redis) or degraded "
            "(Redis unreachable: serving on its own state).",
            ["mode"],
            registry=r,
        )
        self.coord_replicas = Gauge(
            "alb_coordination_replicas", "Live bridge replicas this one last saw.", registry=r
        )
        self.daemon_owned = Gauge(
            "alb_daemon_owned",
            "1 while this replica holds the daemon's lease (it runs its loads and unloads).",
            ["daemon"],
            registry=r,
        )
        self.leases = Counter(
            "alb_leases",
            "Daemon leases: taken, lost (expired or taken over), released (handed back).",
            ["action"],
            registry=r,
        )
        self.coord_errors = Counter(
            "alb_coordination_errors",
            "Redis calls of the coordination that failed or timed out, by operation.",
            ["op"],
            registry=r,
        )

        # Cached children of the collectors every request touches (see the module doc).
        self.requests_by = Children(self.requests)
        self.latency_by = Children(self.latency)
        self.ttft_by = Children(self.ttft)
        self.retries_by = Children(self.upstream_retries)
        self.num_ctx_choice = Children(self.num_ctx_choices)

    def render(self) -> bytes:
        return generate_latest(self.registry)
