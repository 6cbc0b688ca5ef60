"""The predictor inside the bridge (embedded mode) and its say in eviction.

Theory of operation. Without Kafka the bridge's events go over the in-process
``MemoryBus`` (``bridge.events.pipeline``). When ``ALB_PREDICTOR_EMBEDDED`` is on (the
default) the lifespan also owns a :class:`predictor.embedded.EmbeddedPredictor` on
that bus: it reads ``alb.access-log.v1`` and ``alb.model-state.v1`` as the group
``alb-predictor``, steps the pure core, and publishes prefetch / warm-cache events
that the bridge's own consumer (``bridge.events.prefetch_consumer``) acts on — the same loop a
Kafka deployment runs with the Faust worker, in one process, state in memory.

The same predictor answers the eviction policy's question "how likely is this
runner to be wanted again soon?" (:class:`PredictedReuse`, a ``ReuseOracle``):
P(requested within the reuse horizon) from the model's recent arrival rate (the
default) or its idle-time histogram, with recency as the tie-break, so runners the
predictor has equal hopes for are still ordered least recently used first. A model
the predictor has no evidence for (no request in the rate window; with the histogram,
fewer than ``min_samples`` idle gaps) is valued by recency alone: "no evidence" must
not read as "never again", or a model used a second ago would be the first evicted
for any prefetch. That rule and the idle-unload one are the core's
(:mod:`predictor.core.advice`: ``estimate_reuse``, ``keep_alive_after``); the
replay (``replay``) and the Faust worker's model hints use them too. With
Kafka the predictor runs elsewhere and its published hints stand in for the state
(``bridge.events.hints``); with the predictor off, the recency oracle stays.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from bridge.settings import Settings
from predictor.core.advice import estimate_reuse, keep_alive_after
from predictor.embedded import EmbeddedPredictor

if TYPE_CHECKING:
    from bridge.events.pipeline import Events

__all__ = [
    "PredictorEstimate",
    "PredictorKeepAlive",
    "embedded_wanted",
    "estimate_reuse",
    "keep_alive_after",
    "open_predictor",
]


class PredictorKeepAlive:
    """The bridge's per-model idle timeout from an ``EmbeddedPredictor``
    (:func:`keep_alive_after`); ``prefetched`` tells a runner loaded by a prefetch and
    not used yet (``bridge.events.prefetch_consumer.PrefetchBook``)."""

    def __init__(
        self, predictor: EmbeddedPredictor, prefetched: Callable[[str, str], bool]
    ) -> None:
        self._predictor = predictor
        self._prefetched = prefetched

    def seconds(self, daemon: str, model: str, cap: float) -> float:
        p = self._predictor
        return keep_alive_after(
            p.state, model, p.clock(), cap, prefetched=self._prefetched(daemon, model)
        )


class PredictorEstimate:
    """:class:`ReuseEstimate` over an ``EmbeddedPredictor`` (:func:`estimate_reuse`)."""

    def __init__(self, predictor: EmbeddedPredictor) -> None:
        self._predictor = predictor

    def estimate(self, model: str) -> float | None:
        p = self._predictor
        return estimate_reuse(p.state, model, p.clock())


def embedded_wanted(settings: Settings) -> bool:
    """The embedded predictor runs: events on, no Kafka, ``ALB_PREDICTOR_EMBEDDED``."""
    return settings.events and settings.predictor_embedded and not settings.kafka_bootstrap_servers


@asynccontextmanager
async def open_predictor(
    settings: Settings, events: Events | None
) -> AsyncIterator[EmbeddedPredictor | None]:
    """Start the embedded predictor on ``events.bus`` when wanted (else yield None);
    stop it on exit: it finishes the batch in hand and leaves the group."""
    if events is None or not embedded_wanted(settings):
        yield None
        return
    predictor = EmbeddedPredictor(
        events.bus,
        settings.predictor_core_config(),
        events.producer,
        tick_interval_s=settings.predictor_tick_interval_s,
    )
    async with predictor:
        yield predictor
