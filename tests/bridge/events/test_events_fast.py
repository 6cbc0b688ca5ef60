"""``access_log_record`` (what the bridge publishes) is ``access_log_event`` (the validated
model) in other clothes: for any finished request, the same bytes but for the fresh
``event_id``, the same key and topic, and schema-valid JSON, with no prompt text."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.events.builders import access_log_event, access_log_record
from bridge.events.sink import RequestRecord
from ingest.contracts import validation_errors
from ingest.messages import Topic

SECRET = "You are Captain Secret-Sauce, the confidential pirate assistant."
_plain = st.text(max_size=30)
_text = _plain | st.just(SECRET)  # prompt text: may never reach an event
_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "user", "assistant", "", None]),
        "content": _text | st.lists(st.fixed_dictionaries({"text": _text}), max_size=2),
    }
)
_doc = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "messages": st.lists(_message, max_size=4),
        "prompt": _text | st.lists(_text, max_size=2),
        "system": _text,
        "user": _plain,
        "options": st.fixed_dictionaries(
            {"num_ctx": st.integers(-5, 2**17) | st.floats(-1, 1e6) | st.booleans()}
        ),
    },
)
_headers = st.lists(
    st.tuples(
        st.sampled_from([b"x-alb-session", b"authorization", b"x-request-id", b"accept"]),
        st.binary(max_size=20),
    ),
    max_size=4,
)
_tail = st.sampled_from(
    [
        b"",
        b'{"done":true,"prompt_eval_count":12,"eval_count":34}',
        b'{"usage":{"prompt_tokens":5,"completion_tokens":7}}',
        b"not json",
    ]
)
_ms = st.floats(min_value=-10, max_value=1e7, allow_nan=False)
RECORDS = st.builds(
    RequestRecord,
    endpoint=st.sampled_from(["/api/chat", "/api/generate", "/api/embed", "/v1/chat/completions"]),
    model=st.text(max_size=600),
    status=st.integers(0, 999),
    session=st.just("peer:1"),
    daemon=st.text(max_size=600),
    cold=st.booleans(),
    queue_ms=_ms,
    load_ms=_ms,
    ttft_ms=st.none() | _ms,
    total_ms=_ms,
    stream_failed=st.booleans(),
    api=st.sampled_from(["native", "openai"]),
    stream=st.booleans(),
    error=st.none()
    | st.sampled_from(["ClientGone", "Overloaded", "UpstreamTimeout", "HTTPError", "X"])
    | st.text(max_size=10),
    num_ctx_applied=st.integers(-1, 2**17),
    finished_at=st.floats(min_value=1e9, max_value=4e9),
    doc=_doc,
    headers=_headers,
    tail=_tail,
)


@settings(max_examples=400, deadline=None)
@given(record=RECORDS)
def test_fast_record_equals_the_validated_event(record: RequestRecord) -> None:
    fast, system = access_log_record(record, "bridge-test")
    event, system_too = access_log_event(record, "bridge-test")
    assert system == system_too
    assert (fast.topic, fast.key) == (Topic.ACCESS_LOG.value, event.key())
    value: dict[str, Any] = orjson.loads(fast.value)
    same = event.model_copy(update={"event_id": UUID(value["event_id"])})
    assert fast.value == same.to_json()
    assert validation_errors(Topic.ACCESS_LOG.value, value) == []
    assert SECRET not in fast.value.decode()  # hashed, never the text
