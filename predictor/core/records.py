"""The predictor's input: one small typed record per finished request.

The core never sees a Kafka event or a trace line, only :class:`AccessRecord`. Two thin
adapters build one: :func:`record_from_event` from an access-log event (a dict, as the
bridge publishes it on ``alb.access-log.v1``) and :func:`record_from_trace` from a line
of a JSONL replay trace. Both accept the time as float seconds (``ts``), integer
milliseconds (``ts_ms``) or an RFC 3339 string, so the core only ever sees float seconds.

``ts`` is the request's *arrival* time. An access-log event is written when the request
finishes; when it carries the request's total duration the adapter subtracts it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["AccessRecord", "RecordError", "record_from_event", "record_from_trace", "ts_seconds"]


class RecordError(ValueError):
    """An input could not be turned into an :class:`AccessRecord`; the message says why."""


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One request as the predictor sees it.

    ``ts`` is the arrival time in seconds (any epoch, as long as it is the same for all
    records and ``tick`` calls); ``duration_s`` is how long the request ran, used to
    measure idle gaps from the end of one request to the start of the next.
    ``status`` is the HTTP status the client got (0 when unknown).
    """

    ts: float
    session: str
    model: str
    status: int = 200
    cold: bool = False
    system_prompt_hash: str | None = None
    num_ctx: int | None = None
    duration_s: float = 0.0

    @property
    def counts_as_demand(self) -> bool:
        """Whether the request shows real demand for its model.

        Client errors (4xx) are ignored, except 408 (timeout) and 429 (rate limited):
        those clients did want the model. Server errors (5xx, including the bridge's 503
        while a model loads) still show demand.
        """
        s = self.status
        return not (400 <= s < 500) or s in (408, 429)


def ts_seconds(value: object) -> float:
    """Seconds from a float/int of seconds, an aware datetime or an RFC 3339 string."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise RecordError("timestamps must be timezone-aware")
        return value.timestamp()
    if isinstance(value, bool):
        raise RecordError(f"timestamp must be a number or an RFC 3339 string, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError as exc:
            raise RecordError(f"unparseable timestamp {value!r}") from exc
    raise RecordError(f"timestamp must be a number or an RFC 3339 string, got {value!r}")


def _time(event: Mapping[str, Any]) -> float:
    if "ts_ms" in event and event["ts_ms"] is not None:
        return ts_seconds(event["ts_ms"]) / 1000.0
    if "ts" not in event:
        raise RecordError("record has neither 'ts' nor 'ts_ms'")
    return ts_seconds(event["ts"])


def _opt_str(event: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = event.get(key)
        if value is not None and value != "":
            return str(value)
    return None


def _opt_int(event: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = event.get(key)
        if value is not None:
            return int(value)
    return None


def _status(event: Mapping[str, Any]) -> int:
    http = event.get("http_status")
    status = event.get("status")
    if status == "cancelled":
        return 0  # the client went away, but it did want the model
    if http is not None:
        return int(http)
    return int(status) if isinstance(status, int) else 0


def record_from_event(event: Mapping[str, Any]) -> AccessRecord:
    """Build a record from an access-log event (``alb.access-log.v1`` as a dict, e.g.
    ``AccessLogEvent.model_dump()``, or its parsed JSON).

    Reads ``ts`` / ``ts_ms``, ``session`` (else ``api_key_id``), ``model``,
    ``http_status`` (a ``cancelled`` request counts as demand), ``cold``,
    ``system_prompt_hash``, ``num_ctx`` (else ``num_ctx_applied``, else
    ``num_ctx_requested``) and the total duration from ``total_ms`` or ``duration_s``,
    in which case ``ts`` is the finish time. Unknown keys are ignored, so the event
    may grow without breaking the predictor.
    """
    model = _opt_str(event, "model")
    if model is None:
        raise RecordError("record has no 'model'")
    if event.get("total_ms") is not None:
        duration: float | None = float(event["total_ms"]) / 1000.0
    elif event.get("duration_s") is not None:
        duration = float(event["duration_s"])
    else:
        duration = None
    finished = _time(event)
    arrival = finished - duration if duration is not None else finished
    return AccessRecord(
        ts=arrival,
        session=_opt_str(event, "session", "api_key_id") or "",
        model=model,
        status=_status(event),
        cold=bool(event.get("cold", False)),
        system_prompt_hash=_opt_str(event, "system_prompt_hash"),
        num_ctx=_opt_int(event, "num_ctx", "num_ctx_applied", "num_ctx_requested"),
        duration_s=max(0.0, duration or 0.0),
    )


def record_from_trace(line: Mapping[str, Any]) -> AccessRecord:
    """Build a record from one parsed line of a JSONL replay trace (all requests are 200)."""
    model = _opt_str(line, "model")
    if model is None:
        raise RecordError("trace line has no 'model'")
    return AccessRecord(
        ts=_time(line),
        session=_opt_str(line, "session") or "",
        model=model,
        system_prompt_hash=_opt_str(line, "system_prompt_hash"),
        num_ctx=_opt_int(line, "num_ctx"),
    )
