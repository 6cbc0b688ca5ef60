"""Event models: the Python side of the contracts in ``schemas/*.json``.

One frozen pydantic model per topic. Every event carries the envelope
(``event_id``, ``schema_version``, ``ts``, ``producer``); every field a model
declares is always serialised (``null`` when unknown), so a consumer never has to
tell "absent" from "unknown". The schema files are the contract; the tests check
that these models and the files agree (field names, required set, nullability,
enums) and that every kind of event validates.

Privacy: no model has a field for prompt or completion text. Prompts appear only
as hashes (``ingest.hashing``).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal
from uuid import UUID, uuid4

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1
"""Revision of the v1 topic schemas this code writes; a compatible change bumps it."""


class Topic(StrEnum):
    """The topics of DESIGN.md. The ``.v1`` suffix changes only with a breaking change."""

    ACCESS_LOG = "alb.access-log.v1"
    MODEL_STATE = "alb.model-state.v1"
    DECISIONS = "alb.decisions.v1"
    PREFETCH = "alb.prefetch.v1"
    WARM_CACHE = "alb.warm-cache.v1"
    MODEL_HINTS = "alb.model-hints.v1"


Name = Annotated[str, Field(min_length=1, max_length=512)]
Code = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
"""A machine-readable reason or kind: snake_case, bounded (safe as a metric label)."""
Hash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
"""A lower-case hex SHA-256 (see ``ingest.hashing``)."""
Millis = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]
Ctx = Annotated[int, Field(ge=1)]
Bytes = Annotated[int, Field(ge=0)]
Confidence = Annotated[float, Field(ge=0, le=1)]
Scalar = float | int | str | bool | None


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is refused (its zone would be a guess)."""
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return value.astimezone(UTC)


class Event(BaseModel):
    """The envelope shared by every topic. Subclasses set ``TOPIC`` and ``key()``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    TOPIC: ClassVar[Topic]

    event_id: UUID = Field(default_factory=uuid4)
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    ts: datetime = Field(default_factory=utcnow)
    producer: Name

    @field_validator("ts", "expected_arrival", "expires_at", check_fields=False)
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return as_utc(value)

    def key(self) -> str | None:
        """The Kafka key (DESIGN.md): per-key order is what consumers may rely on."""
        raise NotImplementedError

    def to_json(self) -> bytes:
        """Compact JSON, every field present; ``ts`` as RFC 3339 UTC with ``Z``."""
        return self.model_dump_json().encode()


class AccessLogEvent(Event):
    """One finished request (``alb.access-log.v1``): counts, hashes, timings; no text."""

    TOPIC: ClassVar[Topic] = Topic.ACCESS_LOG

    request_id: str | None
    session: Name | None
    session_source: Literal["header", "openai_user", "api_key"] | None
    api_key_id: Name | None
    endpoint: Annotated[str, Field(pattern=r"^/", max_length=256)]
    api: Literal["native", "openai"]
    model: Name
    daemon: Name | None
    status: Literal["ok", "error", "rejected", "cancelled"]
    http_status: Annotated[int, Field(ge=100, le=599)]
    error_kind: Code | None
    cold: bool
    stream: bool
    num_ctx_requested: Ctx | None
    num_ctx_applied: Ctx | None
    prompt_tokens: Count | None
    output_tokens: Count | None
    system_prompt_hash: Hash | None
    prefix_hash: Hash | None
    queue_ms: Millis
    load_ms: Millis
    ttft_ms: Millis | None
    total_ms: Millis

    def key(self) -> str | None:
        return self.session or self.api_key_id


class _EventIds:
    """Random (version 4) UUIDs as strings, from ``os.urandom`` in blocks of 256: one
    system call per 256 ids instead of one per id. A forked child starts a fresh block,
    so parent and child never share ids."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._pool, self._at = b"", 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(16 * 256), 0
        self._at = at + 16
        b = bytearray(self._pool[at : at + 16])
        b[6] = (b[6] & 0x0F) | 0x40  # version 4
        b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
        h = b.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


new_event_id = _EventIds()
"""A fresh ``event_id`` (a random UUID, as its string)."""


def access_log_json(
    *,
    event_id: str,
    ts: datetime,
    producer: str,
    request_id: str | None,
    session: str | None,
    session_source: str | None,
    api_key_id: str | None,
    endpoint: str,
    api: str,
    model: str,
    daemon: str | None,
    status: str,
    http_status: int,
    error_kind: str | None,
    cold: bool,
    stream: bool,
    num_ctx_requested: int | None,
    num_ctx_applied: int | None,
    prompt_tokens: int | None,
    output_tokens: int | None,
    system_prompt_hash: str | None,
    prefix_hash: str | None,
    queue_ms: float,
    load_ms: float,
    ttft_ms: float | None,
    total_ms: float,
) -> bytes:
    """``AccessLogEvent(...).to_json()`` for the same arguments, byte for byte, without
    building or validating the model: the bridge's per-request fast path. The caller
    guarantees the model's constraints by construction (``bridge.events.builders``);
    ``tests/ingest/test_events_fast.py`` checks both claims against the model and
    ``schemas/alb.access-log.v1.json``. ``ts`` must be UTC."""
    return orjson.dumps(
        {
            "event_id": event_id,
            "schema_version": SCHEMA_VERSION,
            "ts": ts,
            "producer": producer,
            "request_id": request_id,
            "session": session,
            "session_source": session_source,
            "api_key_id": api_key_id,
            "endpoint": endpoint,
            "api": api,
            "model": model,
            "daemon": daemon,
            "status": status,
            "http_status": http_status,
            "error_kind": error_kind,
            "cold": cold,
            "stream": stream,
            "num_ctx_requested": num_ctx_requested,
            "num_ctx_applied": num_ctx_applied,
            "prompt_tokens": prompt_tokens,
            "output_tokens": output_tokens,
            "system_prompt_hash": system_prompt_hash,
            "prefix_hash": prefix_hash,
            "queue_ms": queue_ms,
            "load_ms": load_ms,
            "ttft_ms": ttft_ms,
            "total_ms": total_ms,
        },
        option=orjson.OPT_UTC_Z,
    )


class ModelStateEvent(Event):
    """A runner changed state on a daemon (``alb.model-state.v1``)."""

    TOPIC: ClassVar[Topic] = Topic.MODEL_STATE

    model: Name
    daemon: Name
    state: Literal["loaded", "unloaded", "evicted", "load_failed"]
    reason: Code
    load_ms: Millis | None
    resident_ms: Millis | None
    size_bytes: Bytes | None
    size_vram_bytes: Bytes | None
    context_length: Ctx | None
    keep_alive_s: float | None
    decision_id: UUID | None
    error: Annotated[str, Field(max_length=1024)] | None

    def key(self) -> str | None:
        return self.model


class DecisionEvent(Event):
    """A load / evict / reject / num_ctx decision and what it was based on."""

    TOPIC: ClassVar[Topic] = Topic.DECISIONS

    decision: Literal["load", "evict", "reject", "num_ctx"]
    model: Name
    daemon: Name | None
    reason: Code
    request_id: str | None
    num_ctx: Ctx | None
    inputs: Annotated[dict[Code, Scalar], Field(max_length=64)]

    def key(self) -> str | None:
        return self.model


class PrefetchEvent(Event):
    """The predictor expects ``model`` to be wanted soon (``alb.prefetch.v1``)."""

    TOPIC: ClassVar[Topic] = Topic.PREFETCH

    model: Name
    confidence: Confidence
    expected_arrival: datetime
    expires_at: datetime
    reason: Code
    num_ctx: Ctx | None
    keep_alive_s: float | None

    def key(self) -> str | None:
        return self.model


class WarmCacheEvent(Event):
    """Warm ``model``'s prompt cache with a system prompt known by hash."""

    TOPIC: ClassVar[Topic] = Topic.WARM_CACHE

    model: Name
    system_prompt_hash: Hash
    num_ctx: Ctx | None
    confidence: Confidence
    expected_arrival: datetime
    expires_at: datetime
    reason: Code

    def key(self) -> str | None:
        return self.model


HintPattern = Literal["histogram", "out-of-range", "uncertain", "few-samples"]
"""How the idle-time histogram of a model reads (``predictor.core.idle``)."""
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ModelHintEvent(Event):
    """The predictor's view of one model, for bridges without predictor state
    (``alb.model-hints.v1``, published on every tick; the newest per model wins)."""

    TOPIC: ClassVar[Topic] = Topic.MODEL_HINTS

    model: Name
    reuse_probability: Confidence | None
    horizon_s: Seconds
    keep_alive_s: Seconds
    prefetched_keep_alive_s: Seconds
    prewarm_after_s: Seconds
    pattern: HintPattern | None
    expires_at: datetime

    def key(self) -> str | None:
        return self.model


EVENT_TYPES: dict[Topic, type[Event]] = {
    cls.TOPIC: cls
    for cls in (
        AccessLogEvent,
        ModelStateEvent,
        DecisionEvent,
        PrefetchEvent,
        WarmCacheEvent,
        ModelHintEvent,
    )
}


def parse_event(topic: str, value: bytes) -> Event:
    """Decode a value read from ``topic`` into its model (``ValueError`` if it is not one)."""
    try:
        cls = EVENT_TYPES[Topic(topic)]
    except ValueError:
        raise ValueError(f"no event model for topic {topic!r}") from None
    # Unknown fields from a newer producer revision are ignored, as the schemas allow.
    data = orjson.loads(value)
    if not isinstance(data, dict):
        raise ValueError(f"{topic}: an event must be a JSON object")
    known = {k: v for k, v in data.items() if k in cls.model_fields}
    return cls.model_validate(known)


def key_for(topic: str, value: bytes) -> str | None:
    """The key DESIGN.md gives an event of ``topic`` (None for topics it does not know)."""
    try:
        return parse_event(topic, value).key()
    except ValueError:
        return None
