"""Helpers for the events tests: reading topics back, validating, waiting for outcomes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from bridge.events.pipeline import Events
from bridge.http.state import Bridge, Runtime
from ingest.bus import Delivery, EventBus
from ingest.contracts import validation_errors
from ingest.messages import ModelHintEvent, PrefetchEvent, WarmCacheEvent, utcnow


def bridge_of(app: Starlette) -> Bridge:
    bridge: Bridge = app.state.bridge
    return bridge


def runtime(app: Starlette) -> Runtime:
    return bridge_of(app).rt()


def events_of(app: Starlette) -> Events:
    events = runtime(app).events
    assert events is not None
    return events


async def read_topic(
    bus: EventBus,
    topic: str,
    want: int,
    *,
    timeout_s: float = 30,
    where: Callable[[dict[str, Any]], bool] = lambda _: True,
) -> list[Delivery]:
    """Deliveries of ``topic`` from the beginning (a fresh group) until ``want`` distinct
    matching event ids were seen, then whatever else arrives within a short grace."""
    got: list[Delivery] = []
    ids: set[str] = set()
    async with bus.subscribe([topic], f"verify-{uuid.uuid4().hex[:8]}") as sub:
        async with asyncio.timeout(timeout_s):
            while len(ids) < want:
                for d in await sub.getmany(0.5, max_records=5000):
                    doc = d.json()
                    if where(doc):
                        got.append(d)
                        ids.add(doc["event_id"])
        for d in await sub.getmany(0.5, max_records=5000):  # anything beyond: duplicates
            if where(d.json()):
                got.append(d)
    return got


def invalid(topic: str, deliveries: list[Delivery]) -> list[str]:
    """Schema violations (closed form: no undeclared field) of every delivery."""
    out: list[str] = []
    for d in deliveries:
        out += [f"{d.json()['event_id']}: {e}" for e in validation_errors(topic, d.json())]
    return out


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 10, what: str = "") -> float:
    """Poll until ``predicate()``; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def prefetch(model: str, *, expires_in_s: float = 60, confidence: float = 0.9) -> PrefetchEvent:
    now = utcnow()
    return PrefetchEvent(
        producer="test-predictor",
        model=model,
        confidence=confidence,
        expected_arrival=now + timedelta(seconds=1),
        expires_at=now + timedelta(seconds=expires_in_s),
        reason="transition",
        num_ctx=None,
        keep_alive_s=None,
    )


def model_hint(
    model: str,
    *,
    reuse_probability: float | None = 0.5,
    keep_alive_s: float = 300.0,
    prefetched_keep_alive_s: float = 300.0,
    expires_in_s: float = 60,
) -> ModelHintEvent:
    return ModelHintEvent(
        producer="test-predictor",
        model=model,
        reuse_probability=reuse_probability,
        horizon_s=30.0,
        keep_alive_s=keep_alive_s,
        prefetched_keep_alive_s=prefetched_keep_alive_s,
        prewarm_after_s=0.0,
        pattern="histogram",
        expires_at=utcnow() + timedelta(seconds=expires_in_s),
    )


def warm(model: str, digest: str, *, expires_in_s: float = 60) -> WarmCacheEvent:
    now = utcnow()
    return WarmCacheEvent(
        producer="test-predictor",
        model=model,
        system_prompt_hash=digest,
        num_ctx=None,
        confidence=0.9,
        expected_arrival=now + timedelta(seconds=1),
        expires_at=now + timedelta(seconds=expires_in_s),
        reason="top_system_prompt",
    )


def texts(deliveries: list[Delivery]) -> bytes:
    """All values, decoded and re-encoded (escapes resolved) for substring scans."""
    return b"\n".join(orjson.dumps(d.json()) for d in deliveries)


def first_seen_per_key(deliveries: list[Delivery]) -> dict[str, list[str]]:
    """Event ids per key in the order each was first delivered (duplicates skipped)."""
    seen: set[str] = set()
    out: dict[str, list[str]] = defaultdict(list)
    for d in deliveries:
        event_id = d.json()["event_id"]
        if event_id not in seen:
            seen.add(event_id)
            out[d.key or ""].append(event_id)
    return dict(out)
