"""``access_log_json`` (the bridge's fast serialiser) against its contract: the same bytes
as ``AccessLogEvent(...).to_json()`` for every valid input, and schema-valid JSON.
``new_event_id``: random version-4 UUIDs, never repeated, fresh in a forked child."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.contracts import validation_errors
from ingest.messages import AccessLogEvent, Topic, access_log_json, new_event_id

_name = st.text(min_size=1, max_size=40)
_hash = st.text("0123456789abcdef", min_size=64, max_size=64)
_code = st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z")
_ms = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
_count = st.integers(min_value=0, max_value=2**40)
_ctx = st.integers(min_value=1, max_value=2**20)

FIELDS = st.fixed_dictionaries(
    {
        "producer": _name,
        "request_id": st.none() | st.text(max_size=40),
        "session": st.none() | _name,
        "session_source": st.sampled_from([None, "header", "openai_user", "api_key"]),
        "api_key_id": st.none() | _name,
        "endpoint": st.from_regex(r"\A/[a-z/_.0-9]{0,30}\Z"),
        "api": st.sampled_from(["native", "openai"]),
        "model": _name,
        "daemon": st.none() | _name,
        "status": st.sampled_from(["ok", "error", "rejected", "cancelled"]),
        "http_status": st.integers(min_value=100, max_value=599),
        "error_kind": st.none() | _code,
        "cold": st.booleans(),
        "stream": st.booleans(),
        "num_ctx_requested": st.none() | _ctx,
        "num_ctx_applied": st.none() | _ctx,
        "prompt_tokens": st.none() | _count,
        "output_tokens": st.none() | _count,
        "system_prompt_hash": st.none() | _hash,
        "prefix_hash": st.none() | _hash,
        "queue_ms": _ms,
        "load_ms": _ms,
        "ttft_ms": st.none() | _ms,
        "total_ms": _ms,
    }
)
TS = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=300, deadline=None)
@given(fields=FIELDS, ts=TS)
def test_fast_json_is_the_models_json(fields: dict[str, Any], ts: datetime) -> None:
    event_id = new_event_id()
    fast = access_log_json(event_id=event_id, ts=ts, **fields)
    model = AccessLogEvent(event_id=UUID(event_id), ts=ts, **fields)
    assert fast == model.to_json()
    assert validation_errors(Topic.ACCESS_LOG.value, orjson.loads(fast)) == []


def test_event_ids_are_random_v4_uuids() -> None:
    ids = [new_event_id() for _ in range(2000)]  # several blocks of the pool
    assert len(set(ids)) == len(ids)
    for text in ids[:600]:
        uuid = UUID(text)
        assert (uuid.version, uuid.variant, str(uuid)) == (4, "specified in RFC 4122", text)


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    new_event_id()  # the pool now holds unused ids that a child would inherit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.write(write, new_event_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert child != new_event_id()
