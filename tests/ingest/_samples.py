"""Sample events: one of every kind the code can emit, and every enum value of each."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from ingest.hashing import prefix_hash, system_prompt_hash
from ingest.messages import (
    AccessLogEvent,
    DecisionEvent,
    Event,
    ModelHintEvent,
    ModelStateEvent,
    PrefetchEvent,
    WarmCacheEvent,
)
from ingest.trace import TraceRecord

NOW = datetime(2026, 1, 15, 9, 30, 12, 345678, tzinfo=UTC)
H_SYS = system_prompt_hash("You are a helpful assistant.")
H_PRE = prefix_hash([("system", "You are a helpful assistant."), ("user", "hi")])


def access_log(**over: Any) -> AccessLogEvent:
    fields: dict[str, Any] = {
        "producer": "alb-bridge/test",
        "ts": NOW,
        "request_id": "req-1",
        "session": "s-1",
        "session_source": "header",
        "api_key_id": "key-1",
        "endpoint": "/api/chat",
        "api": "native",
        "model": "llama3:latest",
        "daemon": "gpu-a",
        "status": "ok",
        "http_status": 200,
        "error_kind": None,
        "cold": False,
        "stream": True,
        "num_ctx_requested": 8192,
        "num_ctx_applied": 8192,
        "prompt_tokens": 812,
        "output_tokens": 154,
        "system_prompt_hash": H_SYS,
        "prefix_hash": H_PRE,
        "queue_ms": 1.5,
        "load_ms": 0.0,
        "ttft_ms": 80.0,
        "total_ms": 900.0,
    }
    return AccessLogEvent(**{**fields, **over})


def model_state(**over: Any) -> ModelStateEvent:
    fields: dict[str, Any] = {
        "producer": "alb-bridge/test",
        "model": "llama3:latest",
        "daemon": "gpu-a",
        "state": "loaded",
        "reason": "prefetch",
        "load_ms": 4200.0,
        "resident_ms": None,
        "size_bytes": 5_400_000_000,
        "size_vram_bytes": 5_000_000_000,
        "context_length": 8192,
        "keep_alive_s": -1.0,
        "decision_id": "0b9d2c1e-3f4a-4b5c-8d6e-7f8091a2b3c4",
        "error": None,
    }
    return ModelStateEvent(**{**fields, **over})


def decision(**over: Any) -> DecisionEvent:
    fields: dict[str, Any] = {
        "producer": "alb-bridge/test",
        "decision": "evict",
        "model": "qwen2:7b",
        "daemon": "gpu-a",
        "reason": "lowest_value",
        "request_id": "req-1",
        "num_ctx": None,
        "inputs": {"free_bytes": 1_200_000_000, "value": 0.12, "for_model": "x", "pinned": False},
    }
    return DecisionEvent(**{**fields, **over})


def prefetch(**over: Any) -> PrefetchEvent:
    fields: dict[str, Any] = {
        "producer": "alb-predictor/test",
        "model": "llama3:latest",
        "confidence": 0.8,
        "expected_arrival": NOW + timedelta(seconds=5),
        "expires_at": NOW + timedelta(seconds=60),
        "reason": "session_transition",
        "num_ctx": 4096,
        "keep_alive_s": 600.0,
    }
    return PrefetchEvent(**{**fields, **over})


def warm_cache(**over: Any) -> WarmCacheEvent:
    fields: dict[str, Any] = {
        "producer": "alb-predictor/test",
        "model": "llama3:latest",
        "system_prompt_hash": H_SYS,
        "num_ctx": None,
        "confidence": 0.6,
        "expected_arrival": NOW + timedelta(seconds=5),
        "expires_at": NOW + timedelta(seconds=60),
        "reason": "top_system_prompt",
    }
    return WarmCacheEvent(**{**fields, **over})


def trace_record(**over: Any) -> TraceRecord:
    fields: dict[str, Any] = {
        "ts": NOW,
        "session": "s-1",
        "model": "llama3:latest",
        "endpoint": "/api/chat",
        "api": "native",
        "prompt_tokens": 812,
        "output_tokens": 154,
        "system_prompt_hash": H_SYS,
        "prefix_hash": H_PRE,
        "num_ctx": None,
        "stream": True,
    }
    return TraceRecord(**{**fields, **over})


def model_hint(**over: Any) -> ModelHintEvent:
    fields: dict[str, Any] = {
        "producer": "alb-predictor/test",
        "model": "llama3:latest",
        "reuse_probability": 0.74,
        "horizon_s": 30.0,
        "keep_alive_s": 300.0,
        "prefetched_keep_alive_s": 300.0,
        "prewarm_after_s": 0.0,
        "pattern": "histogram",
        "expires_at": NOW + timedelta(seconds=30),
    }
    return ModelHintEvent(**{**fields, **over})


FACTORIES: dict[type[Event], Callable[..., Event]] = {
    AccessLogEvent: access_log,
    ModelStateEvent: model_state,
    DecisionEvent: decision,
    PrefetchEvent: prefetch,
    WarmCacheEvent: warm_cache,
    ModelHintEvent: model_hint,
}


def literal_values(annotation: Any) -> list[Any]:
    """The values of a ``Literal[...]`` (possibly ``| None``) annotation, else []."""
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [v for arg in typing.get_args(annotation) for v in literal_values(arg)]
    return []


def admits_none(annotation: Any) -> bool:
    if annotation is None or annotation is type(None):
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(admits_none(a) for a in typing.get_args(annotation))
    return False


def every_kind() -> Iterator[tuple[str, Event]]:
    """(label, event): the sample, each enum value of each field, and all-nullables-null."""
    for cls, make in FACTORIES.items():
        yield f"{cls.__name__}", make()
        nulls = {
            name: None for name, info in cls.model_fields.items() if admits_none(info.annotation)
        }
        yield f"{cls.__name__}-nulls", make(**nulls)
        for name, info in cls.model_fields.items():
            for value in literal_values(info.annotation):
                yield f"{cls.__name__}-{name}={value}", make(**{name: value})
