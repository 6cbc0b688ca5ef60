"""Native NDJSON streams and ``/v1`` SSE streams.

Facts: OLLAMA_FACTS.md §4. Source: server/routes.go @00188139 (``streamResponse``,
GenerateHandler/ChatHandler completion callbacks), api/types.go ``Metrics`` (omitempty,
time.Duration = ns), middleware/openai.go @077a50ba ``ChatWriter.writeResponse``,
openai/openai.go @00988753 (``ToChunk``, ``ToUsage``, ``ChatCompletionChunk``).
"""

from __future__ import annotations

import json
from typing import Any

import ollama
import openai

from tests.contract._support import Target

DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
TEN_MINUTES_NS = 600 * 10**9
OPTS = {"num_predict": 8, "temperature": 0, "seed": 1}


def _ndjson(target: Target, path: str, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    with target.client() as c, c.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        ctype = r.headers["content-type"]
        raw = b"".join(r.iter_raw())
    text = raw.decode()
    assert text.endswith("\n"), "every NDJSON object ends with a newline"
    return ctype, [json.loads(line) for line in text.splitlines() if line.strip()]


def _check_final(final: dict[str, Any]) -> None:
    """Final object: done true, done_reason stop|length, integer ns timings."""
    assert final["done"] is True
    assert final["done_reason"] in {"stop", "length"}
    for key in (*DURATIONS, "prompt_eval_count", "eval_count"):
        assert key in final, f"{key} missing from final object: {final}"
        assert isinstance(final[key], int), (key, final[key])
        assert final[key] > 0, (key, final[key])
    for key in DURATIONS:
        assert final[key] < TEN_MINUTES_NS, f"{key} is nanoseconds: {final[key]}"
    assert final["total_duration"] >= final["load_duration"]
    assert final["total_duration"] >= final["eval_duration"]
    assert final["total_duration"] >= final["prompt_eval_duration"]
    # Nanoseconds, not ms/µs: a whole request cannot be faster than 1 µs.
    assert final["total_duration"] > 1000


def test_generate_ndjson_stream(target: Target) -> None:
    """streamResponse: ``application/x-ndjson``; chunks {model,created_at,response,done:false};
    final has timings and (non-raw generate) the deprecated ``context``."""
    ctype, objs = _ndjson(
        target, "/api/generate", {"model": target.model, "prompt": "Say hi.", "options": OPTS}
    )
    assert ctype.startswith("application/x-ndjson")
    assert len(objs) >= 2
    for o in objs[:-1]:
        assert o["done"] is False
        assert isinstance(o["response"], str)
        assert o["model"] == target.model
        assert "created_at" in o
        assert "total_duration" not in o
    final = objs[-1]
    _check_final(final)
    assert final["model"] == target.model
    assert isinstance(final["context"], list)
    assert all(isinstance(x, int) for x in final["context"])
    assert "".join(o["response"] for o in objs)


def test_chat_ndjson_stream(target: Target) -> None:
    """Chat chunks carry ``message:{role:"assistant",content}``; final has no ``context``."""
    ctype, objs = _ndjson(
        target,
        "/api/chat",
        {
            "model": target.model,
            "messages": [{"role": "user", "content": "Say hi."}],
            "options": OPTS,
        },
    )
    assert ctype.startswith("application/x-ndjson")
    for o in objs[:-1]:
        assert o["done"] is False
        assert o["message"]["role"] == "assistant"
        assert isinstance(o["message"]["content"], str)
    final = objs[-1]
    _check_final(final)
    assert final["message"]["role"] == "assistant"
    assert "context" not in final
    assert "".join(o["message"]["content"] for o in objs)


def test_num_predict_gives_length(target: Target) -> None:
    """Hitting num_predict ends with done_reason "length" (llm DoneReasonLength)."""
    with target.client() as c:
        r = c.post(
            "/api/generate",
            json={
                "model": target.model,
                "prompt": "Count from one to one hundred.",
                "stream": False,
                "options": {"num_predict": 2, "temperature": 0},
            },
        )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["done"] is True
    assert body["done_reason"] == "length"
    assert body["eval_count"] <= 2


def test_chat_stream_via_official_client(target: Target) -> None:
    """The official ollama client streams /api/chat and sees done + timings."""
    with ollama.Client(host=target.base_url) as c:
        chunks = list(
            c.chat(
                model=target.model,
                messages=[{"role": "user", "content": "Say hi."}],
                stream=True,
                options=OPTS,
            )
        )
    assert chunks[-1].done is True
    assert chunks[-1].done_reason in {"stop", "length"}
    assert (chunks[-1].eval_count or 0) > 0
    assert all(not ch.done for ch in chunks[:-1])


def _sse_events(target: Target, body: dict[str, Any]) -> tuple[str, list[str]]:
    with target.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        ctype = r.headers["content-type"]
        raw = b"".join(r.iter_raw()).decode()
    assert raw.endswith("\n\n"), "each SSE event ends with a blank line"
    events = [e for e in raw.split("\n\n") if e]
    return ctype, events


def test_v1_sse_stream(target: Target) -> None:
    """ChatWriter: ``text/event-stream``; each event ``data: <chunk>``; chunk object
    chat.completion.chunk, system_fingerprint fp_ollama, delta.role assistant; the last
    choice chunk has finish_reason stop|length; stream ends ``data: [DONE]``."""
    ctype, events = _sse_events(
        target,
        {
            "model": target.model,
            "messages": [{"role": "user", "content": "Say hi."}],
            "stream": True,
            "max_tokens": 8,
            "temperature": 0,
        },
    )
    assert ctype.startswith("text/event-stream")
    assert all(e.startswith("data: ") for e in events), events
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert chunks
    ids = {ch["id"] for ch in chunks}
    assert len(ids) == 1
    assert next(iter(ids)).startswith("chatcmpl-")
    for ch in chunks:
        assert ch["object"] == "chat.completion.chunk"
        assert ch["model"] == target.model
        assert ch["system_fingerprint"] == "fp_ollama"
        assert isinstance(ch["created"], int)
        assert "usage" not in ch, "without include_usage no chunk carries usage"
        assert len(ch["choices"]) == 1
        assert ch["choices"][0]["index"] == 0
        assert ch["choices"][0]["delta"]["role"] == "assistant"
    assert all(ch["choices"][0]["finish_reason"] is None for ch in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}


def test_v1_sse_include_usage(target: Target) -> None:
    """stream_options.include_usage: one extra chunk with ``choices: []`` and usage
    {prompt_tokens, completion_tokens, total_tokens} right before ``[DONE]``."""
    _, events = _sse_events(
        target,
        {
            "model": target.model,
            "messages": [{"role": "user", "content": "Say hi."}],
            "stream": True,
            "max_tokens": 8,
            "temperature": 0,
            "stream_options": {"include_usage": True},
        },
    )
    assert events[-1] == "data: [DONE]"
    usage_chunk = json.loads(events[-2][len("data: ") :])
    assert usage_chunk["choices"] == []
    u = usage_chunk["usage"]
    assert set(u) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert u["prompt_tokens"] > 0
    assert u["completion_tokens"] > 0
    before = [json.loads(e[len("data: ") :]) for e in events[:-2]]
    assert before[-1]["choices"][0]["finish_reason"] in {"stop", "length"}


def test_v1_stream_via_openai_client(target: Target) -> None:
    """The official openai client consumes the SSE stream to the end."""
    with openai.OpenAI(base_url=f"{target.base_url}/v1", api_key="ollama") as client:
        stream = client.chat.completions.create(
            model=target.model,
            messages=[{"role": "user", "content": "Say hi."}],
            stream=True,
            max_tokens=8,
            temperature=0,
        )
        chunks = list(stream)
    assert chunks
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_v1_non_streamed_chat(target: Target) -> None:
    """ToChatCompletion: object chat.completion, message role assistant, usage."""
    with target.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": target.model,
                "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 8,
                "temperature": 0,
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["system_fingerprint"] == "fp_ollama"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in {"stop", "length"}
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
