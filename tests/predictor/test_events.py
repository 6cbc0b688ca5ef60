"""The seam to ``ingest.messages``: real access-log events in, valid topic events out."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from ingest.contracts import validation_errors
from ingest.messages import AccessLogEvent
from predictor.codec import from_access_log, prefetch_event, warm_cache_event
from predictor.core import Prefetch, WarmCache, new_state, step
from predictor.core.config import PredictorConfig
from predictor.traces.format import sha256_hex

SYS_B = sha256_hex("system b")


def _access(ts: datetime, session: str, model: str, **extra: object) -> AccessLogEvent:
    fields: dict[str, object] = {
        "producer": "test",
        "ts": ts,
        "request_id": None,
        "session": session,
        "session_source": "header",
        "api_key_id": None,
        "endpoint": "/api/chat",
        "api": "native",
        "model": model,
        "daemon": "d1",
        "status": "ok",
        "http_status": 200,
        "error_kind": None,
        "cold": False,
        "stream": True,
        "num_ctx_requested": None,
        "num_ctx_applied": 4096,
        "prompt_tokens": 10,
        "output_tokens": 5,
        "system_prompt_hash": None,
        "prefix_hash": None,
        "queue_ms": 0.0,
        "load_ms": 0.0,
        "ttft_ms": 1.0,
        "total_ms": 1500.0,
    }
    fields.update(extra)
    return AccessLogEvent.model_validate(fields)


def test_access_log_event_becomes_a_record() -> None:
    ev = _access(datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC), "s", "llama3:latest")
    rec = from_access_log(ev)
    assert rec.ts == pytest.approx(datetime(2026, 1, 1, 0, 0, 8, 500000, tzinfo=UTC).timestamp())
    assert (rec.session, rec.model, rec.status, rec.num_ctx) == ("s", "llama3:latest", 200, 4096)
    assert rec.duration_s == pytest.approx(1.5)


def test_outputs_become_schema_valid_events() -> None:
    state = new_state(PredictorConfig(cooldown_s=0))
    base = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    out = []
    for i in range(10):
        t = base + 60 * i
        for rec in (
            from_access_log(_access(datetime.fromtimestamp(t, UTC), f"s{i}", "a:latest")),
            from_access_log(
                _access(
                    datetime.fromtimestamp(t + 12, UTC),
                    f"s{i}",
                    "b:latest",
                    system_prompt_hash=SYS_B,
                )
            ),
        ):
            state, o = step(state, rec)
            out.extend(o)
    prefetches = [o for o in out if isinstance(o, Prefetch)]
    warms = [o for o in out if isinstance(o, WarmCache)]
    assert prefetches
    assert warms
    for p in prefetches:
        ev = prefetch_event(p, producer="alb-predictor/test")
        assert validation_errors("alb.prefetch.v1", orjson.loads(ev.to_json())) == []
        assert ev.num_ctx == 4096
    for w in warms:
        ev2 = warm_cache_event(w, producer="alb-predictor/test")
        assert validation_errors("alb.warm-cache.v1", orjson.loads(ev2.to_json())) == []
