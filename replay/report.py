"""What a replay measures, and the table it prints.

* **cold-start rate**: requests that found no ready runner able to serve them on
  arrival (a load or a reload was needed, or one was still in progress) / requests;
  split by cause, in the live bridge's words (``bridge.policy.cold``): ``first``, the
  model's first load in the replay (or waiting for it); ``gone``, the model was ready
  before but is nowhere now (unloaded, evicted, or being loaded again); ``context``, a
  runner of the model is ready but cannot serve the request (a longer context; for
  Ollama, other runner options); ``copy``, cold by choice: a ready runner elsewhere
  would serve it, and it joined a copy being loaded for the shorter wait;
* **p50 / p99 latency** (arrival -> last token) and **TTFT** (arrival -> first token)
  over the requests that completed; and **p99 TTFT over every request**, one refused
  after its last try counted as never answered (``None`` when the 99th percentile is
  one of those: more than 1 % never answered), so a policy cannot shorten its tail by
  refusing;
* **prefetch precision**: prefetch loads whose runner served a real request before it
  left the daemon / prefetch loads; **recall**: those hits / (hits + loads that real
  requests had to wait for);
* **refused**: requests still refused (429, 5xx) after the client's last retry
  (``replay.des.Clients``); **errors** counts them and every other error (400, 404);
* **SLO attainment**: requests whose first token came within the SLO (5 s by default)
  / requests (a request refused after its last try never attains it);
* **wasted loads**: loads whose runner left (or the replay ended) before serving any
  request;
* **idle memory-seconds**: the integral over time of the bytes held by runners that are
  loaded with nothing in flight or queued, up to the last request's completion
  (reported in GB-hours, GB = 10^9 bytes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bridge.policy.cold import COLD_CAUSES, CONTEXT, COPY, FIRST, GONE

__all__ = [
    "COLD_CAUSES",
    "COLUMNS",
    "CONTEXT",
    "COPY",
    "FIRST",
    "GONE",
    "ReplayReport",
    "Tally",
    "markdown_table",
    "percentile",
    "percentile_all",
]

GB = 1e9


def percentile_all(values: Sequence[float], never: int, p: float) -> float | None:
    """Nearest-rank percentile of ``values`` and ``never`` more that have no value
    (never answered, ranked above every value): None when the rank falls among them."""
    n = len(values) + never
    if not n:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * n))
    return sorted(values)[rank - 1] if rank <= len(values) else None


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(slots=True)
class Tally:
    """Counters the simulation updates as it goes."""

    requests: int = 0
    completed: int = 0
    errors: int = 0
    #: Requests still refused (429 / 5xx) after their last try.
    refused_final: int = 0
    #: Tries after a refusal.
    retries: int = 0
    cold: int = 0
    #: Cold requests by cause (``COLD_CAUSES``).
    cold_causes: dict[str, int] = field(default_factory=dict)
    #: Requests served by a runner whose context is shorter than their prompt: Ollama
    #: cuts such a prompt to fit (silently, a worse answer); the bridge never does.
    truncated: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    loads: int = 0
    demand_loads: int = 0
    #: Loads of a second (or further) copy of a model that is loaded elsewhere.
    replica_loads: int = 0
    reloads: int = 0
    evictions: int = 0
    idle_unloads: int = 0
    prefetch_events: int = 0
    prefetch_accepted: int = 0
    prefetch_loads: int = 0
    prefetch_hits: int = 0
    wasted_loads: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    idle_byte_s: float = 0.0
    max_memory_share: float = 0.0
    horizon_s: float = 0.0

    def refuse(self, why: str) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """The metrics of one replay of one policy."""

    policy: str
    requests: int
    completed: int
    errors: int
    refused_final: int
    retries: int
    cold_start_rate: float
    #: Share of all requests that were cold by choice: a ready copy of the model held
    #: them elsewhere, and the copy being loaded promised the shorter wait (``COPY``).
    cold_ready_copy_rate: float
    #: Shares of all requests cold for the other causes (``COLD_CAUSES``); with
    #: ``cold_ready_copy_rate`` they add up to ``cold_start_rate``.
    cold_first_rate: float
    cold_gone_rate: float
    cold_context_rate: float
    #: Share of all requests whose prompt was cut to the runner's context (``Tally``).
    truncated_rate: float
    p50_latency_s: float
    p99_latency_s: float
    p50_ttft_s: float
    p95_ttft_s: float
    p99_ttft_s: float
    #: p99 TTFT over every request, one refused for good counted as never answered
    #: (None: the 99th percentile is one of those).
    p99_ttft_all_s: float | None
    #: Share of all requests whose first token came within ``slo_s`` (a refused
    #: request never does).
    slo_s: float
    slo_attainment: float
    mean_latency_s: float
    loads: int
    demand_loads: int
    replica_loads: int
    reloads: int
    evictions: int
    prefetch_loads: int
    prefetch_hits: int
    prefetch_precision: float
    prefetch_recall: float
    wasted_loads: int
    idle_gb_h: float
    max_memory_share: float
    horizon_s: float
    refused: dict[str, int]

    @classmethod
    def from_tally(cls, policy: str, t: Tally, slo_s: float = 5.0) -> ReplayReport:
        hits = t.prefetch_hits
        within = sum(1 for x in t.ttfts if x <= slo_s)

        def share(cause: str) -> float:
            return t.cold_causes.get(cause, 0) / t.requests if t.requests else 0.0

        return cls(
            policy=policy,
            requests=t.requests,
            completed=t.completed,
            errors=t.errors,
            refused_final=t.refused_final,
            retries=t.retries,
            cold_start_rate=t.cold / t.requests if t.requests else 0.0,
            cold_ready_copy_rate=share(COPY),
            cold_first_rate=share(FIRST),
            cold_gone_rate=share(GONE),
            cold_context_rate=share(CONTEXT),
            truncated_rate=t.truncated / t.requests if t.requests else 0.0,
            p50_latency_s=percentile(t.latencies, 50),
            p99_latency_s=percentile(t.latencies, 99),
            p50_ttft_s=percentile(t.ttfts, 50),
            p95_ttft_s=percentile(t.ttfts, 95),
            p99_ttft_s=percentile(t.ttfts, 99),
            p99_ttft_all_s=percentile_all(t.ttfts, t.refused_final, 99),
            slo_s=slo_s,
            slo_attainment=within / t.requests if t.requests else 0.0,
            mean_latency_s=sum(t.latencies) / len(t.latencies) if t.latencies else 0.0,
            loads=t.loads,
            demand_loads=t.demand_loads,
            replica_loads=t.replica_loads,
            reloads=t.reloads,
            evictions=t.evictions,
            prefetch_loads=t.prefetch_loads,
            prefetch_hits=hits,
            prefetch_precision=hits / t.prefetch_loads if t.prefetch_loads else 0.0,
            prefetch_recall=hits / (hits + t.demand_loads) if hits + t.demand_loads else 0.0,
            wasted_loads=t.wasted_loads,
            idle_gb_h=t.idle_byte_s / GB / 3600.0,
            max_memory_share=t.max_memory_share,
            horizon_s=t.horizon_s,
            refused=dict(sorted(t.refused.items())),
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON / CSV ready; ``refused`` stays a dict)."""
        return asdict(self)


#: (header, field, format) of the printed table.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("policy", "policy", "{}"),
    ("cold %", "cold_start_rate", "{:.2%}"),
    ("truncated %", "truncated_rate", "{:.2%}"),
    ("p50 lat s", "p50_latency_s", "{:.2f}"),
    ("p99 lat s", "p99_latency_s", "{:.2f}"),
    ("p50 TTFT s", "p50_ttft_s", "{:.3f}"),
    ("p99 TTFT s", "p99_ttft_s", "{:.2f}"),
    ("loads", "loads", "{}"),
    ("prefetch P", "prefetch_precision", "{:.2f}"),
    ("prefetch R", "prefetch_recall", "{:.2f}"),
    ("wasted", "wasted_loads", "{}"),
    ("idle GB·h", "idle_gb_h", "{:.1f}"),
    ("refused", "refused_final", "{}"),
    ("errors", "errors", "{}"),
)


def markdown_table(reports: Sequence[ReplayReport]) -> str:
    """One Markdown table, a row per report."""
    head = "| " + " | ".join(h for h, _, _ in COLUMNS) + " |"
    rule = "| " + " | ".join("---" if f == "policy" else "---:" for _, f, _ in COLUMNS) + " |"
    rows = [
        "| " + " | ".join(fmt.format(getattr(r, f)) for _, f, fmt in COLUMNS) + " |"
        for r in reports
    ]
    return "\n".join([head, rule, *rows])
