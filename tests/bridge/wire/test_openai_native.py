"""The pure /v1 <-> native translation (``bridge.wire.openai_native``) and the num_ctx policy
that chooses it: request mapping as Ollama's ``openai.FromChatRequest`` /
``FromCompleteRequest`` do it, answers as its ``middleware.ChatWriter`` /
``CompleteWriter`` write them, checked with the official ``openai`` types."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai._models import construct_type
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from bridge.errors import BadRequest
from bridge.policy.numctx import DaemonDefault, Limits, Need, choose_target
from bridge.wire.openai_native import CHAT, COMPLETIONS, Translator, to_native, unix_time

CREATED_AT = "2026-11-27T00:00:01.123456789Z"
PNG = base64.b64encode(b"\x89PNG fake").decode()


def like_client(model: Any, raw: bytes) -> Any:
    """Parse as the ``openai`` client parses a stream chunk (leniently, by its types)."""
    value = construct_type(type_=model, value=orjson.loads(raw))
    assert isinstance(value, model)
    return value


def native(path: str, doc: dict[str, Any], num_ctx: int = 8192) -> dict[str, Any]:
    value = orjson.loads(to_native(path, doc, num_ctx))
    assert isinstance(value, dict)
    return value


# --- requests -------------------------------------------------------------------------------
def test_chat_request_maps_like_ollamas_middleware() -> None:
    doc = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "look", "arguments": '{"b": 1, "a": [2]}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
        ],
        "max_tokens": 30,
        "temperature": 0.2,
        "seed": 7,
        "stop": "END",
        "frequency_penalty": 0.5,
        "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
        "tools": [{"type": "function", "function": {"name": "look"}}],
        "stream": True,
        "reasoning_effort": "none",
        "keep_alive": "1h",
    }
    assert native(CHAT, doc) == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is this?"},
            {"role": "user", "content": "", "images": [PNG]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "look", "arguments": {"b": 1, "a": [2]}}}],
            },
            {"role": "tool", "content": "a cat", "tool_name": "look", "tool_call_id": "call_1"},
        ],
        "format": {"type": "object"},
        "options": {
            "stop": ["END"],
            "num_predict": 30,
            "temperature": 0.2,
            "seed": 7,
            "frequency_penalty": 0.5,
            "top_p": 1.0,
            "num_ctx": 8192,
        },
        "stream": True,
        "tools": [{"type": "function", "function": {"name": "look"}}],
        "think": False,
    }


def test_chat_defaults_and_json_object() -> None:
    got = native(
        CHAT,
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": " JSON_Object "},
            "max_completion_tokens": 9,
        },
        4096,
    )
    assert got["format"] == "json"
    assert got["stream"] is False
    assert got["options"] == {"num_predict": 9, "temperature": 1.0, "top_p": 1.0, "num_ctx": 4096}


def test_completions_request_maps_like_ollamas_middleware() -> None:
    got = native(
        COMPLETIONS,
        {"model": "m", "prompt": "once", "suffix": "end", "top_p": 0, "stop": ["a", "b"]},
    )
    assert got == {
        "model": "m",
        "prompt": "once",
        "suffix": "end",
        "options": {
            "stop": ["a", "b"],
            "temperature": 1.0,
            "frequency_penalty": 0,
            "presence_penalty": 0,
            "top_p": 1.0,  # CompletionRequest.TopP 0 means "unset"
            "num_ctx": 8192,
        },
        "stream": False,
    }


def test_logprobs_are_asked_for_as_ollamas_middleware_asks() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    got = native(CHAT, {**chat, "logprobs": True, "top_logprobs": 3})
    assert (got["logprobs"], got["top_logprobs"]) == (True, 3)
    got = native(CHAT, {**chat, "top_logprobs": 25})  # passed on: the daemon says 400
    assert "logprobs" not in got
    assert got["top_logprobs"] == 25
    assert "top_logprobs" not in native(CHAT, chat)
    # /v1/completions: an integer, > 0 means that many alternatives (and logprobs on)
    got = native(COMPLETIONS, {"model": "m", "prompt": "p", "logprobs": 2})
    assert (got["logprobs"], got["top_logprobs"]) == (True, 2)
    for off in (0, None):
        got = native(COMPLETIONS, {"model": "m", "prompt": "p", "logprobs": off})
        assert "logprobs" not in got
        assert "top_logprobs" not in got
    with pytest.raises(BadRequest, match=r"cannot unmarshal bool into Go struct field \.logprobs"):
        native(COMPLETIONS, {"model": "m", "prompt": "p", "logprobs": True})


@pytest.mark.parametrize(
    ("path", "doc", "message"),
    [
        (CHAT, {"messages": []}, "[] is too short - 'messages'"),
        (CHAT, {"messages": [{"role": "user"}]}, "invalid message content type: <nil>"),
        (
            CHAT,
            {"messages": [{"role": "user", "content": 3}]},
            "invalid message content type: float64",
        ),
        (
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
            "invalid message format",
        ),
        (
            CHAT,
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": "http://x"}]}
                ]
            },
            "invalid image input",
        ),
        (
            CHAT,
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": "data:image/png;base64,@@"}],
                    }
                ]
            },
            "invalid message format",
        ),
        (
            CHAT,
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": "not json"}}],
                    }
                ]
            },
            "invalid tool call arguments",
        ),
        (
            CHAT,
            {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "max"},
            'invalid reasoning value: \'max\' (must be "high", "medium", "low", or "none")',
        ),
        (COMPLETIONS, {"prompt": "x", "stop": ["a", 1]}, "invalid type for 'stop' field: float64"),
    ],
)
def test_what_ollama_refuses_is_refused_with_its_message(
    path: str, doc: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadRequest) as info:
        to_native(path, {"model": "m", **doc}, 8192)
    assert info.value.message == message


def test_wrong_types_are_a_400() -> None:
    with pytest.raises(BadRequest, match="temperature"):
        to_native(
            CHAT,
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            1,
        )
    with pytest.raises(BadRequest, match="prompt"):
        to_native(COMPLETIONS, {"model": "m", "prompt": ["a", "b"]}, 1)


# --- answers ---------------------------------------------------------------------------------
def _chat_done(**extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "created_at": CREATED_AT,
        "message": {"role": "assistant", "content": "hello"},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 11,
        "eval_count": 5,
    } | extra


def test_whole_chat_answer() -> None:
    t = Translator.for_request(CHAT, {"stream": False}, 42, 0)
    body = t.whole(_chat_done())
    assert body.endswith(b"}\n")
    assert orjson.loads(body) == {
        "id": "chatcmpl-42",
        "object": "chat.completion",
        "created": unix_time(CREATED_AT),
        "model": "m",
        "system_fingerprint": "fp_ollama",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    }
    ChatCompletion.model_validate_json(body)


def test_whole_chat_answer_with_tool_calls_and_thinking() -> None:
    t = Translator.for_request(CHAT, {}, 1, 0)
    msg = {
        "role": "assistant",
        "content": "",
        "thinking": "hmm",
        "tool_calls": [{"id": "c1", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}],
    }
    out = orjson.loads(t.whole(_chat_done(message=msg)))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["reasoning"] == "hmm"
    assert choice["message"]["tool_calls"] == [
        {
            "id": "c1",
            "index": 0,
            "type": "function",
            "function": {"name": "f", "arguments": '{"x":1}'},
        }
    ]
    parsed = ChatCompletion.model_validate(out)
    assert parsed.choices[0].message.tool_calls


def test_whole_completion_answer() -> None:
    t = Translator.for_request(COMPLETIONS, {}, 5, 0)
    done = {
        "model": "m",
        "created_at": CREATED_AT,
        "response": "text",
        "done": True,
        "done_reason": "length",
        "prompt_eval_count": 3,
        "eval_count": 2,
    }
    out = orjson.loads(t.whole(done))
    assert out["id"] == "cmpl-5"
    assert out["object"] == "text_completion"
    assert out["choices"] == [{"text": "text", "index": 0, "finish_reason": "length"}]
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    Completion.model_validate(out)


def _events(data: bytes) -> list[bytes]:
    assert data.endswith(b"\n\n")
    return [e for e in data.split(b"\n\n") if e]


def test_chat_stream_with_usage_ends_like_ollamas() -> None:
    t = Translator.for_request(
        CHAT, {"stream": True, "stream_options": {"include_usage": True}}, 7, 100
    )
    first = t.frame(
        {
            "model": "m",
            "created_at": CREATED_AT,
            "message": {"role": "assistant", "content": "he"},
            "done": False,
        }
    )
    last = t.frame(_chat_done(message={"role": "assistant", "content": ""}))
    (one,) = _events(first)
    chunk = orjson.loads(one.removeprefix(b"data: "))
    assert chunk == {
        "id": "chatcmpl-7",
        "object": "chat.completion.chunk",
        "created": 100,
        "model": "m",
        "system_fingerprint": "fp_ollama",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "he"}, "finish_reason": None}
        ],
    }
    final, usage, done = _events(last)
    assert done == b"data: [DONE]"
    assert orjson.loads(final.removeprefix(b"data: "))["choices"][0]["finish_reason"] == "stop"
    u = orjson.loads(usage.removeprefix(b"data: "))
    assert u["choices"] == []
    assert u["usage"] == {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    for e in (one, final, usage):
        ChatCompletionChunk.model_validate_json(e.removeprefix(b"data: "))


def test_chat_stream_finish_reason_is_tool_calls_once_a_call_was_sent() -> None:
    t = Translator.for_request(CHAT, {"stream": True}, 7, 100)
    call = {"function": {"name": "f", "arguments": {}}}
    t.frame(
        {
            "model": "m",
            "message": {"role": "assistant", "content": "", "tool_calls": [call]},
            "done": False,
        }
    )
    final, done = _events(t.frame(_chat_done(message={"role": "assistant", "content": ""})))
    assert (
        orjson.loads(final.removeprefix(b"data: "))["choices"][0]["finish_reason"] == "tool_calls"
    )
    assert done == b"data: [DONE]"


def test_completion_stream_with_usage_carries_zero_usage_until_the_end() -> None:
    t = Translator.for_request(
        COMPLETIONS, {"stream": True, "stream_options": {"include_usage": True}}, 3, 9
    )
    (one,) = _events(t.frame({"model": "m", "response": "a", "done": False}))
    chunk = orjson.loads(one.removeprefix(b"data: "))
    assert list(chunk) == [
        "id",
        "object",
        "created",
        "choices",
        "model",
        "system_fingerprint",
        "usage",
    ]
    assert chunk["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    final, usage, done = _events(
        t.frame(
            {
                "model": "m",
                "response": "",
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 2,
                "eval_count": 1,
            }
        )
    )
    assert done == b"data: [DONE]"
    assert orjson.loads(usage.removeprefix(b"data: "))["usage"]["total_tokens"] == 3
    for e in (one, final, usage):
        like_client(Completion, e.removeprefix(b"data: "))
    Completion.model_validate_json(final.removeprefix(b"data: "))


@given(
    pieces=st.lists(st.text(max_size=20), max_size=20),
    chat=st.booleans(),
    usage=st.booleans(),
    reason=st.sampled_from(["stop", "length"]),
)
def test_any_native_stream_becomes_a_valid_sse_stream_with_the_same_text(
    pieces: list[str], chat: bool, usage: bool, reason: str
) -> None:
    path = CHAT if chat else COMPLETIONS
    t = Translator.for_request(
        path, {"stream": True, "stream_options": {"include_usage": usage}}, 1, 2
    )
    out = b""
    for p in [*pieces, ""]:
        done = p == "" and out.count(b"data: ") == len(pieces)
        obj: dict[str, Any] = {"model": "m", "done": done}
        if chat:
            obj["message"] = {"role": "assistant", "content": p}
        else:
            obj["response"] = p
        if done:
            obj |= {"done_reason": reason, "prompt_eval_count": 4, "eval_count": len(pieces)}
        out += t.frame(obj)
    events = _events(out)
    assert events[-1] == b"data: [DONE]"
    assert all(e.startswith(b"data: {") for e in events[:-1])
    model = ChatCompletionChunk if chat else Completion
    chunks = [like_client(model, e.removeprefix(b"data: ")) for e in events[:-1]]
    text = ""
    for c in chunks:
        for choice in c.choices:
            text += (choice.delta.content or "") if chat else choice.text  # type: ignore[union-attr]
    assert text == "".join(pieces)
    assert len(chunks) == len(pieces) + 1 + usage
    with_reason = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert with_reason == [reason]
    if usage:
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == len(pieces)


@given(st.integers(0, 2**35), st.integers(0, 999_999_999), st.sampled_from(["Z", "+02:00"]))
def test_unix_time_reads_go_timestamps(seconds: int, nanos: int, zone: str) -> None:
    # Go's RFC 3339 with nanoseconds drops trailing zeros (and the dot for none).
    shift = 7200 if zone == "+02:00" else 0
    wall = datetime.fromtimestamp(seconds + shift, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f".{nanos:09d}".rstrip("0").rstrip(".")
    assert unix_time(wall + fraction + zone) == seconds


# --- the policy ------------------------------------------------------------------------------
LIMITS = Limits((2048, 4096, 8192, 16384, 32768), 2048, 262144, 512, 768)


def test_a_translatable_v1_need_fits_a_bigger_runner_and_a_plain_one_does_not() -> None:
    v1 = Need(600, auto=True, translate=True)
    assert v1.fits(8192, False)
    assert v1.fits(4096, True)
    assert not v1.fits(512, False)
    assert not Need(600, auto=True).fits(8192, False)


def _target(*needs: Need) -> Any:
    return choose_target(
        needs,
        default=DaemonDefault(4096, True),
        auto_ctx=None,
        model_context=32768,
        limits=LIMITS,
        prefer_default=True,
        size=lambda ctx: ctx,
        room=None,
    )


def test_v1_needs_beside_bigger_native_needs_get_the_bucket_when_translatable() -> None:
    native_big = Need(7000)
    assert (_target(Need(600, auto=True, translate=True), native_big).ctx) == 8192
    plain = _target(Need(600, auto=True), native_big)
    assert (plain.ctx, plain.auto) == (4096, True)
    alone = _target(Need(600, auto=True, translate=True))  # /v1 alone: the shared default
    assert (alone.ctx, alone.auto) == (4096, True)
    small = _target(Need(600, auto=True, translate=True), Need(3000))
    assert (small.ctx, small.auto) == (4096, True)


def test_a_v1_prompt_longer_than_the_default_gets_a_runner_that_holds_it() -> None:
    """Ollama's /v1 would cut a 6,000-token prompt to the 4096 default; translatable, it
    fits no runner that would, and a load for it takes the bucket that holds it. Not
    translatable (embeddings, ``ALB_OPENAI_NATIVE=false``), it runs at the default as
    on Ollama."""
    long = Need(6100, auto=True, prompt_tokens=6000, translate=True)
    assert long.cut_at(4096)
    assert not long.fits(4096, True)  # the default runner would cut it
    assert long.fits(8192, False)  # translated, at the bigger runner's num_ctx
    assert long.fits(0, True)  # a default runner of unknown context: as before
    target = _target(long, Need(600, auto=True, translate=True))
    assert (target.ctx, target.auto) == (8192, False)
    plain = Need(6100, auto=True, prompt_tokens=6000)
    assert not plain.cut_at(4096)
    assert plain.fits(4096, True)
    assert (_target(plain).ctx, _target(plain).auto) == (4096, True)
    # Its output beyond the context is Ollama's context shift, not a cut prompt.
    assert Need(4500, auto=True, prompt_tokens=1000, translate=True).fits(4096, True)
