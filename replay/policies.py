"""The policies a replay can run, as data.

``ollama`` models Ollama's own scheduler (no bridge); every other policy runs the
bridge's real placement, eviction and num_ctx code and differs only in what feeds it:

===============  ====================================================================
``ollama``       Ollama's defaults: 5-minute keep_alive, shortest-keep_alive eviction,
                 one load at a time per daemon, no prefetch; a static model -> daemon
                 assignment stands in for the load balancer in front of the daemons
``bridge-lru``   the bridge as shipped without a predictor: its ``RecencyOracle``
                 (recency x reload cost, LRU as the tie-break), idle unload after
                 ``ALB_IDLE_UNLOAD_AFTER`` (1800 s), no prefetch
``seed``         + the seed article's predictor (``PredictorConfig.seed_article()``:
                 global transitions over the last 50 requests, prefetch at >= 0.6)
``histogram``    + the hybrid histogram alone (keep-alive and pre-warm from idle-gap
                 histograms, reuse for eviction from them; no transition prefetch)
``ours``         + the full predictor (session + global transitions, histograms,
                 reuse hints), with :data:`OURS` as its configuration: the eviction
                 value's reuse comes from each model's recent arrival rate
===============  ====================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from predictor.core.config import PredictorConfig

__all__ = ["OURS", "POLICIES", "PolicySpec", "policy_named"]

Kind = Literal["ollama", "bridge"]
OracleKind = Literal["recency", "predictor"]
KeepAliveKind = Literal["fixed", "hints"]


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """One policy of the comparison (see the module docstring)."""

    name: str
    kind: Kind
    predictor: PredictorConfig | None = None
    """None: no prediction at all."""
    oracle: OracleKind = "recency"
    """``recency``: the bridge's ``RecencyOracle``; ``predictor``: P(reuse within the
    horizon) from the predictor (``reuse_probability``: idle-gap histograms or recent
    arrival rate, as its ``reuse_estimate`` says)."""
    keep_alive: KeepAliveKind = "fixed"
    """``fixed``: idle unload after ``idle_unload_after_s``; ``hints``: per model from the
    predictor's ``KeepAliveHint`` (``fixed`` until a model has one)."""
    idle_unload_after_s: float = 1800.0
    prefetch: bool = True
    """Act on the predictor's prefetch events."""
    description: str = field(default="", compare=False)


def _histogram_only() -> PredictorConfig:
    # Transitions are still counted (the core always does) but can never reach a
    # prefetch: no candidate is seen a billion times.
    return PredictorConfig(min_count=10**9, confidence_threshold=1.0)


#: "Ours": the full predictor, as the bridge and the worker run it unconfigured
#: (``PredictorConfig.recommended``; tuned on the replays of BENCHMARKS.md, "Policies on
#: replayed traces"). The reuse horizon (30 s) was chosen on synthetic seeds 1-6 (mean
#: cold-start rate); of the rate windows 5 and 15 min, 5 was better there but worse on
#: Azure, so the 15-minute default stayed.
OURS = PredictorConfig.recommended()


def _policies() -> dict[str, PolicySpec]:
    return {
        "ollama": PolicySpec(
            "ollama", "ollama", description="Ollama defaults (keep_alive 5m, no bridge)"
        ),
        "bridge-lru": PolicySpec(
            "bridge-lru", "bridge", description="bridge, recency/LRU eviction, no prediction"
        ),
        "seed": PolicySpec(
            "seed",
            "bridge",
            predictor=PredictorConfig.seed_article(),
            description="bridge + seed article (last 50, conf >= 0.6)",
        ),
        "histogram": PolicySpec(
            "histogram",
            "bridge",
            predictor=_histogram_only(),
            oracle="predictor",
            keep_alive="hints",
            description="bridge + hybrid histogram only",
        ),
        "ours": PolicySpec(
            "ours",
            "bridge",
            predictor=OURS,
            oracle="predictor",
            keep_alive="hints",
            description="bridge + full predictor",
        ),
    }


POLICIES: dict[str, PolicySpec] = _policies()


def policy_named(name: str, predictor: PredictorConfig | None = None) -> PolicySpec:
    """The named policy; ``predictor`` overrides its predictor configuration."""
    try:
        spec = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}") from None
    if predictor is not None and spec.kind == "bridge":
        from dataclasses import replace  # noqa: PLC0415

        return replace(spec, predictor=predictor)
    return spec
