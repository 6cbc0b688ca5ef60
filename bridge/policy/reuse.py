"""The eviction value's reuse term from a predictor, pure: ``PredictedReuse`` is a
``ReuseOracle`` over any ``ReuseEstimate`` (the embedded predictor's state, the Faust
worker's model hints, the replay's simulated predictor), recency breaking ties."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from bridge.policy.placement import RecencyOracle, ReuseOracle, RunnerView

#: Weight of recency in :class:`PredictedReuse`: small enough never to reorder two
#: runners the predictor tells apart by more than this, large enough to order the rest.
RECENCY_WEIGHT = 1e-3


class ReuseEstimate(Protocol):
    """The predictor's answer for one model; None: not enough evidence to say."""

    def estimate(self, model: str) -> float | None: ...


@dataclass(frozen=True, slots=True)
class PredictedReuse:
    """``ReuseOracle``: the predictor's P(reuse), recency breaking ties; recency alone
    for a model the predictor has too little history of (a model just used is not
    worth nothing because it is new)."""

    predictor: ReuseEstimate
    recency: ReuseOracle = field(default_factory=RecencyOracle)

    def reuse(self, daemon: str, runner: RunnerView) -> float:
        recent = self.recency.reuse(daemon, runner)
        p = self.predictor.estimate(runner.key)
        return recent if p is None else p + RECENCY_WEIGHT * recent
