"""The eviction value's reuse term from a predictor, pure: ``PredictedReuse`` is a
``ReuseOracle`` over any ``ReuseEstimate`` (the embedded predictor's state, the Faust
worker's model hints, the replay's simulated predictor) and recency together.

reuse = recency x (``NEUTRAL`` + P(reuse)): recency (``RecencyOracle``, 300 s half-life)
scaled by the prediction between 0.5x (never reused) and 1.5x (surely), 1x without
evidence. Chosen on the capacity sweep (BENCHMARKS.md, "Fleet policy"): the prediction
alone (with recency as a tie-break) was best on the memory-bound 3-daemon fleet and
worst of the bridge policies at 4 to 8 daemons, where a model's last use says more
about its next than its arrival rate over 15 minutes does; the product keeps both."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from bridge.policy.placement import RecencyOracle, ReuseOracle, RunnerView

#: The prediction's neutral point: recency x (NEUTRAL + P); P = NEUTRAL is no evidence.
NEUTRAL = 0.5


class ReuseEstimate(Protocol):
    """The predictor's answer for one model; None: not enough evidence to say."""

    def estimate(self, model: str) -> float | None: ...


@dataclass(frozen=True, slots=True)
class PredictedReuse:
    """``ReuseOracle``: recency scaled by the predictor's P(reuse) (see the module doc);
    recency alone for a model the predictor has too little history of (a model just
    used is not worth nothing because it is new)."""

    predictor: ReuseEstimate
    recency: ReuseOracle = field(default_factory=RecencyOracle)

    def reuse(self, daemon: str, runner: RunnerView) -> float:
        recent = self.recency.reuse(daemon, runner)
        p = self.predictor.estimate(runner.key)
        return recent if p is None else recent * (NEUTRAL + p) / (2 * NEUTRAL)
