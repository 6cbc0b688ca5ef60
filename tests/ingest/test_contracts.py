"""The event models and the schema files agree, and every kind of event validates."""

from __future__ import annotations

import hashlib
import socket
from datetime import timedelta
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from ingest.bus import BusUnavailable
from ingest.contracts import TRACE_SCHEMA, load_schema, schema_names, validation_errors
from ingest.errors import IngestError
from ingest.hashing import PREFIX_CHARS, prefix_hash, system_prompt_hash
from ingest.messages import EVENT_TYPES, AccessLogEvent, Topic, key_for, parse_event
from ingest.topics import ensure_topics
from ingest.trace import TraceRecord, dump_lines, from_access_log, load_lines
from tests.ingest import _samples

ENVELOPE = {"event_id", "schema_version", "ts", "producer"}
MODELS: list[tuple[str, type[BaseModel]]] = [
    *((topic.value, cls) for topic, cls in EVENT_TYPES.items()),
    (TRACE_SCHEMA, TraceRecord),
]
KINDS = list(_samples.every_kind())


def test_one_schema_per_topic_plus_the_trace() -> None:
    assert schema_names() == sorted([*(t.value for t in Topic), TRACE_SCHEMA])


@pytest.mark.parametrize(("label", "event"), KINDS, ids=[k for k, _ in KINDS])
def test_every_kind_of_event_validates_against_its_closed_schema(label: str, event: Any) -> None:
    assert validation_errors(event.TOPIC.value, orjson.loads(event.to_json())) == []


def test_trace_records_validate() -> None:
    for record in (_samples.trace_record(), _samples.trace_record(prompt_tokens=None)):
        assert validation_errors(TRACE_SCHEMA, orjson.loads(record.to_json())) == []


@pytest.mark.parametrize(("name", "model"), MODELS, ids=[n for n, _ in MODELS])
def test_models_and_schemas_agree(name: str, model: type[BaseModel]) -> None:
    schema = load_schema(name)
    props: dict[str, Any] = schema["properties"]
    fields = model.model_fields
    assert set(props) == set(fields), "the same field names"
    required_in_model = {n for n, f in fields.items() if f.is_required()}
    expected = required_in_model | (ENVELOPE & set(fields))
    assert set(schema["required"]) == expected, "required = no default (plus the envelope)"
    for field_name, info in fields.items():
        types = props[field_name].get("type")
        nullable = "null" in types if isinstance(types, list) else types == "null"
        assert nullable == _samples.admits_none(info.annotation), f"{field_name}: nullability"
        values = _samples.literal_values(info.annotation)
        if values:
            enum = props[field_name]["enum"]
            assert set(enum) - {None} == set(values), f"{field_name}: enum values"


def test_schemas_declare_no_field_for_text() -> None:
    for name in schema_names():
        for field_name in load_schema(name)["properties"]:
            if field_name.endswith(("_hash", "_tokens")):
                continue
            words = set(field_name.split("_"))
            assert not words & {"prompt", "completion", "messages", "message", "text", "content"}


def test_a_leaked_field_fails_the_closed_schema() -> None:
    data = orjson.loads(_samples.access_log().to_json())
    data["prompt"] = "tell me a secret"
    assert any("prompt" in e for e in validation_errors(Topic.ACCESS_LOG.value, data))
    assert validation_errors(Topic.ACCESS_LOG.value, data, strict=False) == []  # readers: open


def test_models_refuse_unknown_fields_and_naive_timestamps() -> None:
    with pytest.raises(ValidationError):
        _samples.access_log(prompt="x")
    with pytest.raises(ValidationError):
        _samples.access_log(ts=_samples.NOW.replace(tzinfo=None))


def test_timestamps_are_written_in_utc_with_z() -> None:
    from datetime import timezone  # noqa: PLC0415

    event = _samples.access_log(ts=_samples.NOW.astimezone(timezone(timedelta(hours=2))))
    assert orjson.loads(event.to_json())["ts"] == "2026-01-15T09:30:12.345678Z"


@pytest.mark.parametrize(("label", "event"), KINDS[:12], ids=[k for k, _ in KINDS[:12]])
def test_parse_event_round_trips(label: str, event: Any) -> None:
    assert parse_event(event.TOPIC.value, event.to_json()) == event


def test_parse_event_ignores_fields_of_a_newer_revision() -> None:
    event = _samples.prefetch()
    data = orjson.loads(event.to_json()) | {"schema_version": 2, "new_field": 1}
    parsed = parse_event(Topic.PREFETCH.value, orjson.dumps(data))
    assert parsed.event_id == event.event_id
    assert parsed.schema_version == 2


def test_keys_follow_design() -> None:
    assert _samples.access_log().key() == "s-1"
    assert _samples.access_log(session=None).key() == "key-1"
    assert _samples.access_log(session=None, api_key_id=None).key() is None
    for make in (_samples.model_state, _samples.decision, _samples.prefetch, _samples.warm_cache):
        assert make().key() == make().model
    assert key_for(Topic.MODEL_STATE.value, _samples.model_state().to_json()) == "llama3:latest"
    assert key_for("some.other.topic", b"{}") is None


def test_system_prompt_hash_is_sha256_of_the_exact_utf8_text() -> None:
    text = "Tu es un assistant. \u00e9"
    assert system_prompt_hash(text) == hashlib.sha256(text.encode()).hexdigest()
    assert system_prompt_hash(text) != system_prompt_hash(text + " ")


def test_prefix_hash_groups_requests_that_start_alike() -> None:
    shared = "x" * PREFIX_CHARS
    a = prefix_hash([("system", shared), ("user", "question one")])
    b = prefix_hash([("system", shared), ("user", "question two")])
    c = prefix_hash([("system", "short"), ("user", "question one")])
    d = prefix_hash([("system", "short"), ("user", "question two")])
    assert a == b
    assert c != d


def test_trace_from_access_log_uses_arrival_time() -> None:
    event = _samples.access_log(total_ms=1500.0)
    record = from_access_log(event)
    assert record.ts == event.ts - timedelta(milliseconds=1500)
    assert record.num_ctx == event.num_ctx_requested
    lines = list(dump_lines([record, _samples.trace_record()]))
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    assert list(load_lines([*lines, b"\n"])) == [record, _samples.trace_record()]


def test_trace_reader_names_the_bad_line() -> None:
    good = _samples.trace_record().to_json()
    with pytest.raises(ValueError, match="trace line 2"):
        list(load_lines([good, b'{"ts": "nope"}']))


def test_access_log_json_is_small() -> None:
    assert len(_samples.access_log().to_json()) < 800
    assert isinstance(_samples.access_log(), AccessLogEvent)


async def test_topic_admin_on_a_closed_port_is_bus_unavailable() -> None:
    """The topic admin's Kafka and socket errors come out as ingest's BusUnavailable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BusUnavailable) as caught:
        await ensure_topics(f"127.0.0.1:{port}")
    assert isinstance(caught.value, IngestError)
