"""The adapter seam: access-log events and trace lines to AccessRecord."""

from __future__ import annotations

import pytest

from predictor.core.records import AccessRecord, RecordError, record_from_event, record_from_trace


def test_event_with_rfc3339_finish_time_and_duration() -> None:
    rec = record_from_event(
        {
            "event_id": "x",
            "ts": "2024-01-01T00:00:10Z",
            "session": "s",
            "model": "llama3:latest",
            "status": "ok",
            "http_status": 200,
            "cold": True,
            "system_prompt_hash": "abc",
            "num_ctx_requested": 4096,
            "num_ctx_applied": 8192,
            "total_ms": 2500.0,
            "queue_ms": 3.0,
        }
    )
    assert rec == AccessRecord(
        ts=1704067207.5,
        session="s",
        model="llama3:latest",
        status=200,
        cold=True,
        system_prompt_hash="abc",
        num_ctx=8192,
        duration_s=2.5,
    )


def test_event_with_milliseconds_and_api_key_fallback() -> None:
    rec = record_from_event(
        {"ts_ms": 1500, "session": None, "api_key_id": "k1", "model": "m", "http_status": 503}
    )
    assert (rec.ts, rec.session, rec.status, rec.duration_s) == (1.5, "k1", 503, 0.0)
    assert rec.counts_as_demand


def test_bad_inputs_say_why() -> None:
    with pytest.raises(RecordError, match="model"):
        record_from_event({"ts": 1.0})
    with pytest.raises(RecordError, match="timestamp"):
        record_from_event({"ts": "yesterday", "model": "m"})
    with pytest.raises(RecordError, match="ts"):
        record_from_trace({"model": "m"})


def test_trace_line() -> None:
    rec = record_from_trace(
        {"ts": 12.5, "session": "s", "model": "m", "system_prompt_hash": "h", "num_ctx": None}
    )
    assert rec == AccessRecord(12.5, "s", "m", system_prompt_hash="h")


@pytest.mark.parametrize(
    ("status", "demand"),
    [(200, True), (404, False), (400, False), (408, True), (429, True), (500, True), (0, True)],
)
def test_which_statuses_show_demand(status: int, demand: bool) -> None:
    assert AccessRecord(0.0, "s", "m", status=status).counts_as_demand is demand
