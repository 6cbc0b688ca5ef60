"""Regression tests for the black-box probe of d613fd3 (issue #12, findings 1-4): a few
anonymous requests must never wedge a model, get a 500, go unlogged, or be read one way
by the bridge and another by Ollama."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from bridge.errors import Api, BadRequest
from bridge.events.builders import access_log_record
from bridge.events.sink import RequestRecord
from bridge.http import proxy
from bridge.http.routes_native import CHAT, GENERATE
from bridge.http.routes_openai import CHAT as V1_CHAT
from bridge.wire import jsonbody
from bridge.wire.parsing import parse, rewrite
from ingest.messages import Topic
from tests.bridge._events import events_of, read_topic
from tests.bridge._support import RunningBridge

DEEP = "[" * 300 + "]" * 300
PLAIN = {"model": "chatty", "prompt": "hi", "stream": False}


def _native_error(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/json"), r.text
    body = r.json()
    assert set(body) == {"error"}, body
    return str(body["error"])


def _openai_error(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/json"), r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return str(err["message"])


async def _nothing_held(bridge: RunningBridge, client: httpx.AsyncClient) -> None:
    models = (await client.get("/alb/v1/models")).json()
    held = {(d["name"], m["model"]): m["in_flight"] for d in models["daemons"] for m in d["models"]}
    assert all(v == 0 for v in held.values()), held
    metrics = (await client.get("/metrics")).text
    busy = [
        line
        for line in metrics.splitlines()
        if line.startswith("alb_in_flight{") and not line.endswith(" 0.0")
    ]
    assert busy == []
    r = await client.post("/api/generate", json=PLAIN, timeout=10)
    assert r.status_code == 200, r.text


# --- finding 1: the slot leak ---------------------------------------------------------


async def test_deep_nesting_is_a_400_and_leaks_no_slot(
    bridge: RunningBridge, client: httpx.AsyncClient
) -> None:
    body = b'{"model":"chatty","prompt":"hi","keep_alive":"5m","x":' + DEEP.encode() + b"}"
    for _ in range(3):
        r = await client.post("/api/generate", content=body)
        assert r.status_code == 400
        assert "'x[0][0][0]…' nests deeper than 64 levels" in _native_error(r)
    await _nothing_held(bridge, client)


@pytest.mark.parametrize("value", [2**63, 2**64 - 1])
async def test_integers_past_64_bits_are_a_400(
    bridge: RunningBridge, client: httpx.AsyncClient, value: int
) -> None:
    body = b'{"model":"chatty","prompt":"hi","options":{"seed":' + str(value).encode() + b"}}"
    r = await client.post("/api/generate", content=body)
    assert r.status_code == 400
    assert "'options.seed' is out of range" in _native_error(r)
    await _nothing_held(bridge, client)


async def test_a_bug_while_a_slot_is_held_is_a_500_in_shape_and_gives_the_slot_back(
    bridge: RunningBridge, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mechanism, not the two known triggers: whatever raises between admission and
    the end of the relay, the slot comes back and the answer is in the API's shape."""

    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("a bug in the rewrite")

    monkeypatch.setattr(proxy, "rewrite", broken)
    for path, err in (("/api/generate", _native_error), ("/v1/chat/completions", _openai_error)):
        body = {"model": "chatty", "prompt": "hi", "messages": [{"role": "user", "content": "x"}]}
        for _ in range(3):  # more than the model's two slots
            r = await client.post(path, json=body)
            assert r.status_code == 500
            message = err(r)
            assert message.startswith("internal error in the bridge (logged as ")
            assert "Traceback" not in r.text
            assert "a bug in the rewrite" not in r.text
    monkeypatch.undo()
    await _nothing_held(bridge, client)


async def test_v1_on_a_runner_at_another_context_leaks_no_slot(
    bridge: RunningBridge, client: httpx.AsyncClient
) -> None:
    # A runner at a non-default context makes /v1 go through the translation.
    r = await client.post("/api/generate", json={**PLAIN, "options": {"num_ctx": 8192}})
    assert r.status_code == 200
    deep = b'{"model":"chatty","messages":[{"role":"user","content":"hi"}],"tools":' + (
        DEEP.encode() + b"}"
    )
    for _ in range(3):
        r = await client.post("/v1/chat/completions", content=deep)
        assert r.status_code == 400
        assert "nests deeper" in _openai_error(r)
    await _nothing_held(bridge, client)


# --- finding 2: 500s that must be 400s --------------------------------------------------


async def test_deep_show_is_a_400(bridge: RunningBridge, client: httpx.AsyncClient) -> None:
    r = await client.post("/api/show", content=b'{"model":"chatty","x":' + DEEP.encode() + b"}")
    assert r.status_code == 400
    assert "nests deeper" in _native_error(r)


@pytest.mark.parametrize("messages", [5, True])
async def test_messages_on_generate_is_an_unknown_field_as_in_ollama(
    bridge: RunningBridge, client: httpx.AsyncClient, messages: Any
) -> None:
    """GenerateRequest has no ``messages``: Go ignores the field, and so does the bridge."""
    r = await client.post("/api/generate", json={**PLAIN, "messages": messages})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"role": "assistant", "content": "", "tool_calls": 5}, "messages[0].tool_calls"),
        ({"role": "user", "content": "x", "images": "abc"}, "messages[0].images"),
        ({"role": 7, "content": "x"}, "messages[0].role"),
        ({"role": "user", "content": ["parts"]}, "messages[0].content"),
        ("not an object", "messages[0]"),
    ],
)
async def test_wrong_types_in_chat_messages_are_a_400_naming_the_field(
    bridge: RunningBridge, client: httpx.AsyncClient, message: Any, field: str
) -> None:
    r = await client.post("/api/chat", json={"model": "chatty", "messages": [message]})
    assert r.status_code == 400
    assert f"invalid type for '{field}'" in _native_error(r)
    await _nothing_held(bridge, client)


async def test_deeply_nested_tools_are_a_400(
    bridge: RunningBridge, client: httpx.AsyncClient
) -> None:
    body = b'{"model":"chatty","messages":[],"tools":[' + DEEP.encode() + b"]}"
    r = await client.post("/api/chat", content=body)
    assert r.status_code == 400
    assert "'tools[0]" in _native_error(r)


# --- finding 3: an access-log event for every request ---------------------------------


async def test_a_huge_num_ctx_is_served_and_still_logged(
    bridge: RunningBridge, client: httpx.AsyncClient
) -> None:
    body = b'{"model":"chatty","prompt":"hi","stream":false,"options":{"num_ctx":1e20}}'
    r = await client.post("/api/generate", content=body, headers={"x-alb-session": "huge"})
    assert r.status_code == 200, r.text
    events = events_of(bridge.app)
    got = await read_topic(
        events.bus, Topic.ACCESS_LOG.value, 1, where=lambda d: d["session"] == "huge"
    )
    doc = got[0].json()
    assert doc["num_ctx_requested"] == 2**63 - 1
    metrics = (await client.get("/metrics")).text
    assert 'alb_events_clamped_total{field="num_ctx_requested"} 1.0' in metrics


def test_the_builder_writes_an_event_whatever_the_body_holds() -> None:
    clamped: list[str] = []
    record = RequestRecord(
        endpoint="/api/generate",
        model="chatty:latest",
        status=200,
        session="s",
        daemon="a",
        cold=False,
        queue_ms=0.0,
        load_ms=0.0,
        ttft_ms=1.0,
        total_ms=2.0,
        stream_failed=False,
        api="native",
        stream=False,
        error=None,
        num_ctx_applied=4096,
        finished_at=1.0,
        doc={"options": {"num_ctx": 1e300}, "system": {"not": "text"}},
        headers=[],
        tail=b'{"done":true,"prompt_eval_count":99999999999999999999999,"eval_count":3}',
    )
    built, _ = access_log_record(record, "p", on_clamped=clamped.append)
    value = orjson.loads(built.value)
    assert value["num_ctx_requested"] == 2**63 - 1
    assert value["prompt_tokens"] == 2**63 - 1
    assert value["output_tokens"] == 3
    assert sorted(clamped) == ["num_ctx_requested", "prompt_tokens"]


# --- finding 4: one reading of the body, Go's -------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"model": "chatty", "Model": "gpt-oss:120b-cloud", "prompt": "hi"},
        {"model": "chatty", "MODEL": "other", "prompt": "hi"},
        {"model": "chatty", "prompt": "hi", "keep_alive": "5m", "Keep_Alive": 0},
        {"model": "chatty", "prompt": "hi", "options": {}, "OPTIONS": {"num_ctx": 131072}},
        {"model": "chatty", "prompt": "hi", "stream": False, "\u017ftream": True},
    ],
)
async def test_two_spellings_of_one_field_are_a_400(
    bridge: RunningBridge, client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    r = await client.post("/api/generate", json=body)
    assert r.status_code == 400
    assert "is given twice" in _native_error(r)


async def test_a_case_variant_is_read_as_go_reads_it(
    bridge: RunningBridge, client: httpx.AsyncClient
) -> None:
    """``Model`` alone is the model; ``Options`` alone are the options: the bridge plans
    with them and forwards them spelt as the fields, so the daemon reads the same."""
    r = await client.post(
        "/api/generate",
        json={"Model": "chatty", "Prompt": "hi", "Stream": False, "Options": {"num_ctx": 8192}},
    )
    assert r.status_code == 200, r.text
    ps = (await client.get("/api/ps")).json()["models"]
    assert [(m["name"], m["context_length"]) for m in ps] == [("chatty:latest", 8192)]
    r = await client.post("/api/generate", json={"Model": "other:cloud", "prompt": "hi"})
    assert r.status_code == 403


def test_fold_follows_go_simple_folding() -> None:
    assert jsonbody.go_fold("MODEL") == "model"
    assert jsonbody.go_fold("\u212aeep_alive") == "keep_alive"  # the Kelvin sign
    assert jsonbody.go_fold("\u017ftream") == "stream"  # the long s
    assert jsonbody.go_fold("mod\u00e9l") is None
    parsed = parse(b'{"\\u212aEEP_ALIVE": "5m", "model": "chatty", "Prompt": "x"}', GENERATE)
    assert parsed.keep_alive == 300
    assert parsed.folded
    forwarded = orjson.loads(rewrite(b"{}", parsed, "honour", 0, 86400))
    assert set(forwarded) == {"keep_alive", "model", "prompt"}
    # Keys of a map (options) are matched exactly by Ollama too: left alone.
    parsed = parse(b'{"model": "chatty", "options": {"NUM_CTX": 9}}', GENERATE)
    assert parsed.runner_options == {}
    assert not parsed.folded


def test_message_keys_fold_and_unknown_fields_are_not_read() -> None:
    parsed = parse(b'{"model":"m","messages":[{"Role":"user","CONTENT":"hi"}]}', CHAT)
    assert parsed.doc["messages"] == [{"role": "user", "content": "hi"}]
    with pytest.raises(BadRequest, match=r"'messages\[0\].content' is given twice"):
        parse(b'{"model":"m","messages":[{"content":"a","Content":"b"}]}', CHAT)
    # ``name`` is a field of ShowRequest only: on generate it is not the model.
    with pytest.raises(BadRequest, match="model is required"):
        parse(b'{"name":"m","prompt":"x"}', GENERATE)
    # OpenAI's chat accepts content parts; Ollama's native chat does not.
    assert parse(b'{"model":"m","messages":[{"content":[{"type":"text"}]}]}', V1_CHAT)
    assert V1_CHAT.api is Api.OPENAI


async def test_a_translated_v1_stream_without_a_prompt_ends_properly(
    bridge: RunningBridge, client: httpx.AsyncClient
) -> None:
    """Found by the fuzzer: through the native API an empty prompt is a load, which
    Ollama answers with one JSON object even when asked to stream."""
    r = await client.post("/api/generate", json={**PLAIN, "options": {"num_ctx": 8192}})
    assert r.status_code == 200
    r = await client.post("/v1/completions", json={"model": "chatty", "stream": True})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n"), r.text
    await _nothing_held(bridge, client)


@pytest.mark.parametrize("path", ["/metrics", "/alb/v1/decisions", "/readyz", "/api/tags"])
async def test_a_bug_in_any_route_is_a_500_in_shape(
    bridge: RunningBridge, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    state = bridge.app.state.bridge

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(state.metrics, "render", broken)
    monkeypatch.setattr(state.decisions, "query", broken)
    monkeypatch.setattr(state.rt().fleet, "refresh_all", broken)
    r = await client.get(path)
    assert r.status_code == 500
    assert _native_error(r).startswith("internal error in the bridge (logged as ")


def test_limits_hold_on_the_quick_path_and_the_walk() -> None:
    """Small bodies skip the walk only when no limit can be passed; large ones walk."""
    padding = b'"p":"' + b"x" * (70 * 1024) + b'",'
    deep = b"[" * 65 + b"]" * 65
    for pad in (b"", padding):
        with pytest.raises(BadRequest, match="nests deeper than 64 levels"):
            jsonbody.decode(b"{" + pad + b'"a":' + deep + b"}")
        with pytest.raises(BadRequest, match="out of range"):
            jsonbody.decode(b"{" + pad + b'"a":[1,9223372036854775808]}')
        # At the limits: 64 levels (the body is one), the largest 64-bit integers.
        ok = b"{" + pad + b'"a":' + b"[" * 63 + b"]" * 63 + b',"b":-9223372036854775808}'
        assert jsonbody.decode(ok)["b"] == -(2**63)
        # Brackets inside strings and long digit runs in strings only cost the walk.
        assert jsonbody.decode(b"{" + pad + b'"s":"' + b"[" * 100 + b'1234567890123456789"}')
    with pytest.raises(BadRequest, match="longer than 600"):
        parse(b'{"model":"' + b"m" * 601 + b'","prompt":"x"}', GENERATE)
