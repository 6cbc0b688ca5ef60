"""The seam between the core's outputs/inputs and the topic events of ``ingest.messages``.

The core speaks float seconds since the Unix epoch and plain dataclasses; the topics
speak RFC 3339 datetimes and pydantic models with an envelope. These functions are
the only place that converts, so the Faust app and the embedded mode publish the same
events. The envelope's ``ts`` (when the event was made) is the caller's to give: it
is the shell's clock, never read here unless left out (then the model's default).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from ingest.messages import (
    AccessLogEvent,
    HintPattern,
    ModelHintEvent,
    PrefetchEvent,
    WarmCacheEvent,
)
from predictor.core.advice import ModelHint
from predictor.core.outputs import Prefetch, WarmCache
from predictor.core.records import AccessRecord, record_from_event

__all__ = ["from_access_log", "model_hint_event", "prefetch_event", "warm_cache_event"]


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _envelope(producer: str, ts: datetime | None) -> dict[str, Any]:
    return {"producer": producer} if ts is None else {"producer": producer, "ts": ts}


def from_access_log(event: AccessLogEvent) -> AccessRecord:
    """The predictor's record of an access-log event (arrival = finish - total_ms)."""
    return record_from_event(event.model_dump())


def prefetch_event(p: Prefetch, *, producer: str, ts: datetime | None = None) -> PrefetchEvent:
    """``alb.prefetch.v1`` for a core :class:`Prefetch`."""
    return PrefetchEvent(
        **_envelope(producer, ts),
        model=p.model,
        confidence=p.confidence,
        expected_arrival=_dt(p.expected_arrival),
        expires_at=_dt(p.expires_at),
        reason=p.reason,
        num_ctx=p.num_ctx,
        keep_alive_s=p.keep_alive_s,
    )


def warm_cache_event(w: WarmCache, *, producer: str, ts: datetime | None = None) -> WarmCacheEvent:
    """``alb.warm-cache.v1`` for a core :class:`WarmCache`."""
    return WarmCacheEvent(
        **_envelope(producer, ts),
        model=w.model,
        system_prompt_hash=w.system_prompt_hash,
        num_ctx=w.num_ctx,
        confidence=min(1.0, w.confidence),
        expected_arrival=_dt(w.expected_arrival),
        expires_at=_dt(w.expires_at),
        reason=w.reason,
    )


def model_hint_event(
    h: ModelHint, ttl_s: float, *, producer: str, ts: datetime | None = None
) -> ModelHintEvent:
    """``alb.model-hints.v1`` for a core :class:`ModelHint`, valid ``ttl_s`` from its time."""
    return ModelHintEvent(
        **_envelope(producer, ts),
        model=h.model,
        reuse_probability=h.reuse_probability,
        horizon_s=h.horizon_s,
        keep_alive_s=h.keep_alive_s,
        prefetched_keep_alive_s=h.prefetched_keep_alive_s,
        prewarm_after_s=h.prewarm_after_s,
        pattern=cast(HintPattern | None, h.pattern),  # checked by the model
        expires_at=_dt(h.at + ttl_s),
    )
