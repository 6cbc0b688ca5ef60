"""Access-log and model-state events for the predictor's stream tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ingest.messages import AccessLogEvent, ModelStateEvent


def access_event(
    session: str | None,
    model: str,
    ts: float,
    *,
    total_ms: float = 100.0,
    http_status: int = 200,
    system_prompt_hash: str | None = None,
) -> AccessLogEvent:
    """A finished request of ``session`` for ``model`` that *arrived* at ``ts`` (seconds)."""
    finished = datetime.fromtimestamp(ts, tz=UTC) + timedelta(milliseconds=total_ms)
    return AccessLogEvent(
        producer="test-bridge",
        ts=finished,
        request_id=None,
        session=session,
        session_source="header" if session else None,
        api_key_id=None,
        endpoint="/api/chat",
        api="native",
        model=model,
        daemon="d0",
        status="ok" if http_status < 400 else "error",
        http_status=http_status,
        error_kind=None,
        cold=False,
        stream=False,
        num_ctx_requested=None,
        num_ctx_applied=None,
        prompt_tokens=10,
        output_tokens=10,
        system_prompt_hash=system_prompt_hash,
        prefix_hash=None,
        queue_ms=0.0,
        load_ms=0.0,
        ttft_ms=10.0,
        total_ms=total_ms,
    )


def model_state_event(model: str, state: str, daemon: str = "d0") -> ModelStateEvent:
    """``model`` changed ``state`` on ``daemon``."""
    return ModelStateEvent(
        producer="test-bridge",
        model=model,
        daemon=daemon,
        state=state,  # type: ignore[arg-type]
        reason="request",
        load_ms=None,
        resident_ms=None,
        size_bytes=None,
        size_vram_bytes=None,
        context_length=None,
        keep_alive_s=None,
        decision_id=None,
        error=None,
    )


def a_then_b(start: float, sessions: int, *, prefix: str = "s") -> list[AccessLogEvent]:
    """Sessions going A -> B nine times in ten (else A -> C), 2 s apart, 1 s between sessions."""
    out = []
    for i in range(sessions):
        t = start + i
        nxt = "C" if i % 10 == 9 else "B"
        out.append(access_event(f"{prefix}{i}", "A", t))
        out.append(access_event(f"{prefix}{i}", nxt, t + 2.0))
    return out
