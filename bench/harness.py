"""Side-by-side measurement: interleaved rounds of direct and proxied batches.

Theory of operation: the machine is small and shared, so its speed drifts
from second to second. Comparing a proxy's numbers with the direct numbers of
some other minute would mostly measure that drift. So every round runs every
scenario against every target back to back (the target order rotates each
round, so nobody is always first after a pause), and a proxy's *added*
latency is computed within a round — proxied minus direct, same scenario, same
round — before taking the median over rounds. Absolute figures are medians
over rounds too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from bench.loadgen import BatchResult, Target, Workload
from bench.report import median, percentile

DIRECT = "direct"


def _chat(model: str, stream: bool) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
            "stream": stream,
        }
    )


#: The request kinds, named by API and mode ("paced": a non-streaming reply that
#: takes 80 ms, like a short real completion; the others answer at once).
WORKLOADS = {
    "native": Workload("native", "/api/chat", _chat("bench-fast", False)),
    "native-stream": Workload("native-stream", "/api/chat", _chat("bench-stream", True), b"\n"),
    "native-paced": Workload("native-paced", "/api/chat", _chat("bench-paced", False)),
    "openai": Workload("openai", "/v1/chat/completions", _chat("bench-fast", False)),
    "openai-paced": Workload("openai-paced", "/v1/chat/completions", _chat("bench-paced", False)),
    "openai-stream": Workload(
        "openai-stream", "/v1/chat/completions", _chat("bench-stream", True), b"\n\n"
    ),
}


@dataclass(frozen=True)
class Scenario:
    """A workload at one concurrency, ``total`` requests per batch."""

    workload: Workload
    concurrency: int
    total: int
    #: Seconds over which the connections' first requests are spread (streams).
    stagger: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.workload.name} c={self.concurrency}"


#: Per-batch metrics, each a function of the batch's samples (seconds or req/s).
METRICS: dict[str, Callable[[BatchResult], float]] = {
    "p50": lambda b: percentile(b.latencies, 50),
    "p99": lambda b: percentile(b.latencies, 99),
    "ttft_p50": lambda b: percentile(b.ttfts, 50),
    "ttft_p99": lambda b: percentile(b.ttfts, 99),
    "gap_p50": lambda b: percentile(b.gaps, 50),
    "gap_p99": lambda b: percentile(b.gaps, 99),
    "rps": lambda b: b.rps,
}


class Results:
    """Every batch, by (scenario name, target name), in round order."""

    def __init__(self) -> None:
        self.batches: dict[tuple[str, str], list[BatchResult]] = {}

    def add(self, scenario: str, target: str, batch: BatchResult) -> None:
        self.batches.setdefault((scenario, target), []).append(batch)

    def absolute(self, scenario: str, target: str, metric: str) -> float:
        """Median over rounds of ``metric``."""
        fn = METRICS[metric]
        return median([fn(b) for b in self.batches.get((scenario, target), [])])

    def added(self, scenario: str, target: str, metric: str) -> float:
        """Median over rounds of (target - direct) for ``metric``, paired by round."""
        fn = METRICS[metric]
        mine = self.batches.get((scenario, target), [])
        base = self.batches.get((scenario, DIRECT), [])
        return median([fn(a) - fn(b) for a, b in zip(mine, base, strict=False)])

    def ratio(self, scenario: str, target: str, metric: str) -> float:
        """Median over rounds of target / direct for ``metric``."""
        fn = METRICS[metric]
        mine = self.batches.get((scenario, target), [])
        base = self.batches.get((scenario, DIRECT), [])
        pairs = [(fn(a), fn(b)) for a, b in zip(mine, base, strict=False)]
        return median([a / b if b else math.nan for a, b in pairs])

    def errors(self, target: str) -> int:
        return sum(b.errors for (_, t), bs in self.batches.items() if t == target for b in bs)


async def warm_up(targets: Sequence[Target], scenarios: Sequence[Scenario]) -> None:
    """Open every pool and run each scenario once, unrecorded (loads, JIT-free caches)."""
    for target in targets:
        for s in scenarios:
            await target.run(s.workload, s.concurrency, max(s.concurrency * 2, 20))


async def interleave(
    targets: Sequence[Target],
    scenarios: Sequence[Scenario],
    rounds: int,
    progress: Callable[[str], None] = lambda _msg: None,
) -> Results:
    """``rounds`` rounds; in each, every scenario on every target, order rotating."""
    results = Results()
    for r in range(rounds):
        for s in scenarios:
            k = r % len(targets)
            for target in [*targets[k:], *targets[:k]]:
                batch = await target.run(s.workload, s.concurrency, s.total, s.stagger)
                results.add(s.name, target.name, batch)
        progress(f"round {r + 1}/{rounds} done")
    return results
