"""Pure conversions from what the bridge knows to the events of ``alb.*.v1``.

No I/O, no clock except the timestamps the inputs carry. ``access_log_record`` (what
the bridge publishes: JSON straight from a dict, no pydantic model on the hot path)
and ``access_log_event`` (the same fields as the validated model) derive everything
from a ``RequestRecord``: the session (``X-ALB-Session``, else the OpenAI ``user``,
else the API key's id), the token counts from the final upstream frame (a regex over
that one frame, not a re-parse of the stream), the system-prompt and prefix hashes
from the parsed body, the outcome from the status and the error class. Both also
return the system prompt text, which goes to the prompt registry, never into an
event. ``decision_event`` and ``model_state_event`` map the decision log's records
and the loader's state changes onto their topics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import orjson

from bridge.events.sink import RequestRecord
from bridge.policy.numctx import client_num_ctx
from bridge.scheduling.decisions import Decision
from bridge.scheduling.loader import StateChange
from ingest.bus import Record
from ingest.hashing import prefix_hash, system_prompt_hash
from ingest.messages import (
    AccessLogEvent,
    DecisionEvent,
    ModelStateEvent,
    Scalar,
    Topic,
    access_log_json,
    new_event_id,
    utcnow,
)

_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_COUNTS = re.compile(rb'"(prompt_eval_count|eval_count|prompt_tokens|completion_tokens)":\s*(\d+)')
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_NAME_MAX = 512
_ACCESS_LOG = Topic.ACCESS_LOG.value
#: Errors the bridge answers before any daemon worked on the request.
_REFUSALS = frozenset(
    {
        "BadRequest",
        "Unauthorized",
        "Forbidden",
        "ModelNotFound",
        "Conflict",
        "BodyTooLarge",
        "RateLimited",
        "Overloaded",
        "Unavailable",
        "Replaced",
    }
)
Status = Literal["ok", "error", "rejected", "cancelled"]
SessionSource = Literal["header", "openai_user", "api_key"]


def code(text: str, default: str = "other") -> str:
    """``text`` as a snake_case code (``bigger-context``: ``bigger_context``), else ``default``."""
    candidate = text.strip().lower().replace("-", "_").replace(" ", "_")
    return candidate if _CODE.fullmatch(candidate) else default


def error_kind(class_name: str) -> str:
    """``UpstreamTimeout`` -> ``upstream_timeout``."""
    return _CAMEL.sub("_", class_name).lower()


def identify(
    headers: Sequence[tuple[bytes, bytes]],
    doc: Mapping[str, Any] | None,
    bridge_key: str | None = None,
) -> tuple[str | None, SessionSource | None, str | None]:
    """``(session, session_source, api_key_id)`` as DESIGN.md defines the session.

    ``api_key_id`` is the id of the bridge's API key that made the request
    (``bridge_key``, ``ALB_AUTH=keys``), else None: a credential the bridge did not
    issue (an OpenAI client's placeholder ``api_key``) identifies nobody, though its
    hash still names the session when nothing else does."""
    header = auth = None
    for name, value in headers:
        if name == b"x-alb-session" and value:
            header = value.decode("latin-1")[:_NAME_MAX]
        elif name == b"authorization" and value:
            auth = value
    if header:
        return header, "header", bridge_key
    user = doc.get("user") if doc is not None else None
    if isinstance(user, str) and user:
        return user[:_NAME_MAX], "openai_user", bridge_key
    if bridge_key is not None:
        return "key:" + bridge_key, "api_key", bridge_key
    if auth is not None:
        return "key:" + hashlib.sha256(auth).hexdigest()[:12], "api_key", None
    return None, None, None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def conversation(endpoint: str, doc: Mapping[str, Any]) -> tuple[str | None, list[tuple[str, str]]]:
    """The system prompt (None without one) and the ``(role, text)`` pairs that start the
    conversation, as ``ingest.hashing`` renders them. Embedding requests have neither."""
    messages = doc.get("messages")
    if isinstance(messages, list):
        pairs = [
            (str(m.get("role") or "user"), _text(m.get("content")))
            for m in messages
            if isinstance(m, dict)
        ]
        system = next((text for role, text in pairs if role == "system"), None)
        return system or None, pairs
    if "embed" in endpoint:
        return None, []
    prompt = doc.get("prompt")
    if isinstance(prompt, list):  # /v1/completions takes a list of prompts
        prompt = next((p for p in prompt if isinstance(p, str)), None)
    if not isinstance(prompt, str):
        return None, []
    system = doc.get("system")
    system = system if isinstance(system, str) and system else None
    return system, ([("system", system)] if system else []) + [("user", prompt)]


#: The largest integer an event carries (a signed 64-bit integer, as the schemas'
#: consumers read it); a larger value a client or a daemon sent is clamped to it.
INT_MAX = 2**63 - 1
#: Called with a field's name when its value was clamped or nulled to fit the event.
Clamped = Callable[[str], None]


def _bounded(field: str, value: int | None, on_clamped: Clamped | None) -> int | None:
    if value is None or value <= INT_MAX:
        return value
    if on_clamped is not None:
        on_clamped(field)
    return INT_MAX


def token_counts(tail: bytes) -> tuple[int | None, int | None]:
    """``(prompt tokens, output tokens)`` from the last frame (native or OpenAI usage)."""
    prompt = output = None
    for m in _COUNTS.finditer(tail[-4096:]):
        field, value = m.group(1), int(m.group(2)[:20])
        if field in (b"prompt_eval_count", b"prompt_tokens"):
            prompt = value
        else:
            output = value
    return prompt, output


def status_of(record: RequestRecord) -> tuple[Status, str | None]:
    """The outcome and the error kind of a finished request."""
    if record.status == 499 or record.error == "ClientGone":
        return "cancelled", "client_gone"
    if record.error is None:
        if record.stream_failed:
            return "error", "stream_failed"
        if record.status < 400:
            return "ok", None
        return "error", f"http_{record.status}"
    kind = code(error_kind(record.error))
    return ("rejected" if record.error in _REFUSALS else "error"), kind


def _access_log_fields(
    record: RequestRecord, producer: str, on_clamped: Clamped | None = None
) -> tuple[dict[str, Any], str | None]:
    """The access-log event's fields (all but ``event_id`` and ``ts``), each within the
    model's constraints by construction (an integer past 64 bits is clamped, and
    ``on_clamped`` told), and the system prompt to register (or None)."""
    doc = record.doc or {}
    session, source, key_id = identify(record.headers, record.doc, record.key_id)
    system, pairs = conversation(record.endpoint, doc)
    prompt_tokens, output_tokens = token_counts(record.tail)
    status, kind = status_of(record)
    request_id = next(
        (v.decode("latin-1") for k, v in record.headers if k == b"x-request-id"), None
    )
    native = record.api != "openai"
    requested = _bounded("num_ctx_requested", client_num_ctx(doc) if native else None, on_clamped)
    prompt_tokens = _bounded("prompt_tokens", prompt_tokens, on_clamped)
    output_tokens = _bounded("output_tokens", output_tokens, on_clamped)
    fields: dict[str, Any] = {
        "producer": producer[:_NAME_MAX] or "-",
        "request_id": request_id,
        "session": session,
        "session_source": source,
        "api_key_id": key_id,
        "endpoint": record.endpoint,
        "api": "native" if native else "openai",
        "model": record.model[:_NAME_MAX] or "-",
        "daemon": record.daemon[:_NAME_MAX] or None,
        "status": status,
        "http_status": min(max(record.status, 100), 599),
        "error_kind": kind,
        "cold": bool(record.cold),
        "stream": bool(record.stream),
        "num_ctx_requested": requested if requested is not None and requested >= 1 else None,
        "num_ctx_applied": record.num_ctx_applied if record.num_ctx_applied >= 1 else None,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "system_prompt_hash": system_prompt_hash(system) if system else None,
        "prefix_hash": prefix_hash(pairs) if pairs else None,
        "queue_ms": max(record.queue_ms, 0.0),
        "load_ms": max(record.load_ms, 0.0),
        "ttft_ms": None if record.ttft_ms is None else max(record.ttft_ms, 0.0),
        "total_ms": max(record.total_ms, 0.0),
    }
    return fields, system


def _ts(record: RequestRecord) -> datetime:
    return datetime.fromtimestamp(record.finished_at, UTC) if record.finished_at else utcnow()


def _safe_fields(
    record: RequestRecord, producer: str, on_clamped: Clamped | None
) -> tuple[dict[str, Any], str | None]:
    """``_access_log_fields``; should a value still defeat it, the event without what
    came from the body and the last frame (``on_clamped("body")``): never no event."""
    try:
        return _access_log_fields(record, producer, on_clamped)
    except Exception:
        if on_clamped is not None:
            on_clamped("body")
        bare = dataclasses.replace(record, doc=None, headers=[], tail=b"")
        return _access_log_fields(bare, producer, on_clamped)


def access_log_event(
    record: RequestRecord, producer: str, on_clamped: Clamped | None = None
) -> tuple[AccessLogEvent, str | None]:
    """The access-log event of ``record`` (the validated model) and the system prompt to
    register (or None). The bridge publishes ``access_log_record``, its fast twin."""
    fields, system = _safe_fields(record, producer, on_clamped)
    return AccessLogEvent(ts=_ts(record), **fields), system


def access_log_record(
    record: RequestRecord,
    producer: str,
    *,
    event_id: str | None = None,
    on_clamped: Clamped | None = None,
) -> tuple[Record, str | None]:
    """``access_log_event``'s record, serialised straight from the fields (no model, no
    validation: ~4x cheaper) with ``event_id`` (default: a fresh one); same bytes as the
    model's JSON."""
    fields, system = _safe_fields(record, producer, on_clamped)
    value = access_log_json(event_id=event_id or new_event_id(), ts=_ts(record), **fields)
    return Record(_ACCESS_LOG, fields["session"] or fields["api_key_id"], value), system


# --- decisions --------------------------------------------------------------------------

#: How each kind of the decision log maps onto the topic's ``decision`` enum. ``health``
#: and ``route`` records concern no model and are not published (the in-process log keeps
#: them); the original kind travels in ``inputs.kind``.
_DECISION: dict[str, Literal["load", "evict", "reject", "num_ctx"]] = {
    "load": "load",
    "evict": "evict",
    "unload": "evict",
    "reject": "reject",
    "num_ctx": "num_ctx",
    "pin": "load",
}
_DEFAULT_REASON = {"reject": "no_room", "evict": "room", "load": "request"}


def _scalar(value: Any) -> Scalar:
    if value is None or isinstance(value, bool | int | str):
        return value[:1024] if isinstance(value, str) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return orjson.dumps(value, default=str).decode()[:1024]


def decision_event(d: Decision, producer: str) -> DecisionEvent | None:
    """The ``alb.decisions.v1`` event of a decision record (None: not publishable)."""
    if not d.model:
        return None
    if d.kind in ("prefetch", "warm"):
        decision: Literal["load", "evict", "reject", "num_ctx"] = (
            "load" if d.inputs.get("outcome") in ("loaded", "warmed") else "reject"
        )
    elif d.kind in _DECISION:
        decision = _DECISION[d.kind]
    else:
        return None
    inputs: dict[str, Scalar] = {"kind": d.kind}
    reason = code(d.reason, "")
    if d.kind == "unload":
        reason = code(f"unload_{reason}", "unload")
    elif d.reason.startswith("room for "):
        reason, inputs["for_model"] = "room", d.reason.removeprefix("room for ")
    elif not reason:
        reason = _DEFAULT_REASON.get(decision, "other")
        inputs["message"] = d.reason[:1024]
    for key, value in d.inputs.items():
        if len(inputs) >= 64:
            break
        inputs[code(key, "input")] = _scalar(value)
    num_ctx = _int(d.inputs.get("num_ctx")) or None
    return DecisionEvent(
        event_id=UUID(d.event_id),
        ts=datetime.fromisoformat(d.ts),
        producer=producer,
        decision=decision,
        model=d.model[:_NAME_MAX],
        daemon=d.daemon or None,
        reason=reason,
        request_id=None,
        num_ctx=num_ctx,
        inputs=inputs,
    )


# --- model state --------------------------------------------------------------------


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def model_state_event(change: StateChange, producer: str) -> ModelStateEvent:
    """The ``alb.model-state.v1`` event of a loader state change."""
    row = change.row
    ctx = _int(row.get("context_length"))
    keep = change.keep_alive_s
    return ModelStateEvent(
        producer=producer,
        model=change.model[:_NAME_MAX],
        daemon=change.daemon,
        state=change.state,
        reason=code(change.reason),
        load_ms=change.load_ms,
        resident_ms=change.resident_ms,
        size_bytes=_int(row.get("size")),
        size_vram_bytes=_int(row.get("size_vram")),
        context_length=ctx or None,
        keep_alive_s=None if keep is None else (-1.0 if math.isinf(keep) else keep),
        decision_id=None,
        error=None if change.error is None else change.error[:1024],
    )
