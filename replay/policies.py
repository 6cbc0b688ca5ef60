"""The policies a replay can run, as data.

``ollama`` models Ollama's own scheduler (no bridge); every other policy runs the
bridge's real placement, eviction and num_ctx code and differs only in what feeds it:

====================  ===============================================================
``ollama``            Ollama's defaults: 5-minute keep_alive, shortest-keep_alive
                      eviction, one load at a time per daemon, no prefetch; a static
                      model -> daemon assignment stands in for the load balancer in
                      front of the daemons; a loaded model's queue is unbounded
``ollama-forever``    the same with ``OLLAMA_KEEP_ALIVE=-1``, the usual production
                      tuning: a runner leaves only when a load needs its room
``ollama-max-queue``  the defaults with a bounded queue: beyond ``OLLAMA_QUEUE_BOUND``
                      (204, the bridge's high-water depth) requests waiting for one
                      model, a 503 (what a proxy with a queue limit in front does)
``bridge-lru``        the bridge as shipped without a predictor: its
                      ``RecencyOracle`` (recency x reload cost, LRU as the
                      tie-break), idle memory reclaimed on demand, no prefetch
``seed``              + the seed article's predictor
                      (``PredictorConfig.seed_article()``: global transitions over
                      the last 50 requests, prefetch at >= 0.6)
``histogram``         + the hybrid histogram alone (pre-warm from idle-gap
                      histograms, reuse for eviction from them; no transition
                      prefetch)
``ours``              + the full predictor (session + global transitions,
                      histograms, reuse hints), with :data:`OURS` as its
                      configuration: the eviction value's reuse comes from each
                      model's recent arrival rate
====================  ===============================================================

Every bridge policy replicates a hot model (``ALB_REPLICATION``, on by default:
``bridge.policy.replicas``); the ``-norepl`` variants in ``VARIANTS`` do not.

Memory (``reclaim``): every bridge policy above keeps an idle runner until a load needs
its room (``ALB_RECLAIM=demand``, the bridge's default). ``VARIANTS`` holds the same
policies with ``ALB_RECLAIM=idle`` (``-reclaim``: idle unload after
``ALB_IDLE_UNLOAD_AFTER``, 1800 s, or, for ``histogram`` and ``ours``, the predictor's
per-model keep-alive), for GPUs shared with other work, where idle memory has a cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from predictor.core.config import PredictorConfig

__all__ = ["OLLAMA_QUEUE_BOUND", "OURS", "POLICIES", "VARIANTS", "PolicySpec", "policy_named"]

Kind = Literal["ollama", "bridge"]
OracleKind = Literal["recency", "predictor"]
KeepAliveKind = Literal["fixed", "hints"]
ReclaimKind = Literal["demand", "idle"]

#: ``ollama-max-queue``: requests waiting for one model beyond this get a 503 (the
#: bridge's high-water depth with its defaults, ``ALB_QUEUE_CAPACITY x ALB_HIGH_WATER``).
OLLAMA_QUEUE_BOUND = 204


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
    replicate: bool = True
    """Copies of a hot model on other daemons (``ALB_REPLICATION``)."""
    reclaim: ReclaimKind = "demand"
    """``demand``: an idle runner stays until a load needs its room (``ALB_RECLAIM``);
    ``idle``: it is also unloaded after its keep-alive (``keep_alive``)."""
    ollama_keep_alive: float | str | None = None
    """``ollama``: ``OLLAMA_KEEP_ALIVE`` for every daemon (None: the fleet file's)."""
    ollama_queue: int | None = None
    """``ollama``: requests waiting for one model beyond this get a 503 (None: Ollama's
    own bound only, ``OLLAMA_MAX_QUEUE`` on the pending queue)."""
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
        "ollama-forever": PolicySpec(
            "ollama-forever",
            "ollama",
            ollama_keep_alive=-1,
            description="Ollama with OLLAMA_KEEP_ALIVE=-1",
        ),
        "ollama-max-queue": PolicySpec(
            "ollama-max-queue",
            "ollama",
            ollama_queue=OLLAMA_QUEUE_BOUND,
            description=f"Ollama defaults, 503 beyond {OLLAMA_QUEUE_BOUND} waiting per model",
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

#: The bridge policies with ``ALB_RECLAIM=idle``, and without replication
#: (``ALB_REPLICATION=false``), see the module docstring.
VARIANTS: dict[str, PolicySpec] = {
    **{
        f"{name}-reclaim": replace(spec, name=f"{name}-reclaim", reclaim="idle")
        for name, spec in POLICIES.items()
        if spec.kind == "bridge"
    },
    **{
        f"{name}-norepl": replace(spec, name=f"{name}-norepl", replicate=False)
        for name, spec in POLICIES.items()
        if spec.kind == "bridge"
    },
}


def policy_named(name: str, predictor: PredictorConfig | None = None) -> PolicySpec:
    """The named policy; ``predictor`` overrides its predictor configuration."""
    spec = POLICIES.get(name) or VARIANTS.get(name)
    if spec is None:
        known = ", ".join([*POLICIES, *VARIANTS])
        raise ValueError(f"unknown policy {name!r}; choose from {known}")
    if predictor is not None and spec.kind == "bridge":
        return replace(spec, predictor=predictor)
    return spec
