"""One daemon, /v1 traffic and native requests that need more context: the bridge serves
the /v1 requests through the native API at the loaded runner's num_ctx, so the model
loads once; the answers parse with the official ``openai`` client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._support import GIB, running_bridge, settings_for

#: One 16 GiB daemon (Ollama's default context there: 4096) and one 32k-context model.
CONFIG: dict[str, Any] = {
    "time_scale": 0.002,
    "gen_tokens_per_s": 1000,
    "prefill_tokens_per_s": 1_000_000,
    "models": [
        {
            "name": "ctxm",
            "size": 4 * GIB,
            "context_length": 32768,
            "response_tokens": 3,
            "capabilities": ["completion", "tools"],
        },
    ],
    "daemons": [{"name": "a", "memory": 16 * GIB, "num_parallel": 1}],
}
N = 100
LARGE = " ".join(f"w{i % 97}" for i in range(6000))  # ~6k tokens: needs the 8192 bucket
MSG = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def ctx_fleet() -> Iterator[RunningFleet]:
    with serve_in_thread(CONFIG) as f:
        yield f


def _events(fleet: RunningFleet, kind: str) -> list[Any]:
    return [e for e in fleet.daemon("a").events() if e.kind == kind]


async def _v1(c: openai.AsyncOpenAI, i: int) -> None:
    """One /v1 request of four kinds (chat / completions, streamed or not)."""
    which = i % 4
    if which == 0:
        done = await c.chat.completions.create(model="ctxm", messages=MSG)  # type: ignore[arg-type]
        assert done.object == "chat.completion"
        assert done.id.startswith("chatcmpl-")
        assert done.system_fingerprint == "fp_ollama"
        assert done.choices[0].message.role == "assistant"
        assert done.choices[0].message.content
        assert done.choices[0].finish_reason in ("stop", "length")
        assert done.usage is not None
        assert done.usage.completion_tokens > 0
        assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
        assert done.model == "ctxm"
    elif which == 1:
        stream = await c.chat.completions.create(
            model="ctxm",
            messages=MSG,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [ch async for ch in stream]
        assert chunks[-1].usage is not None
        assert chunks[-1].choices == []
        assert chunks[-2].choices[0].finish_reason in ("stop", "length")
        assert all(ch.object == "chat.completion.chunk" for ch in chunks)
        assert len({ch.id for ch in chunks}) == 1
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    elif which == 2:
        comp = await c.completions.create(model="ctxm", prompt="once upon", max_tokens=2)
        assert comp.object == "text_completion"
        assert comp.id.startswith("cmpl-")
        assert comp.choices[0].text
        assert comp.choices[0].finish_reason == "length"
        assert comp.usage is not None
        assert comp.usage.completion_tokens == 2
    else:
        parts = await c.completions.create(model="ctxm", prompt="once upon", stream=True)
        pieces = [p async for p in parts]
        assert pieces[-1].choices[0].finish_reason in ("stop", "length")
        assert "".join(p.choices[0].text for p in pieces)


async def test_alternating_v1_and_large_native_requests_load_once(
    ctx_fleet: RunningFleet,
) -> None:
    async with (
        running_bridge(settings_for(ctx_fleet)) as b,
        openai.AsyncOpenAI(base_url=b.base_url + "/v1", api_key="unused", max_retries=0) as oai,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as c,
    ):
        for i in range(N):
            if i % 2 == 0:  # the native request first: it sets the runner's context
                r = await c.post(
                    "/api/chat",
                    json={
                        "model": "ctxm",
                        "messages": [{"role": "user", "content": LARGE}],
                        "stream": False,
                    },
                )
                assert r.status_code == 200, r.text
                assert r.json()["done"] is True
            else:
                await _v1(oai, i // 2)
        metrics = (await c.get("/metrics")).text
        ps = (await c.get("/api/ps")).json()
    assert len(_events(ctx_fleet, "load-start")) == 1
    assert not _events(ctx_fleet, "unload")
    assert ps["models"][0]["context_length"] == 8192
    endpoints = [e.detail.get("endpoint") for e in _events(ctx_fleet, "request-start")]
    assert "/v1/chat/completions" not in endpoints
    assert "/v1/completions" not in endpoints
    completions = sum(1 for j in range(N // 2) if j % 4 in (2, 3))
    assert endpoints.count("/api/generate") == completions + 1  # and the bridge's load
    assert endpoints.count("/api/chat") == N // 2 + sum(1 for j in range(N // 2) if j % 4 < 2)
    assert 'alb_num_ctx_choices_total{choice="translated"} 50.0' in metrics


async def test_without_a_bigger_runner_v1_passes_through(ctx_fleet: RunningFleet) -> None:
    async with (
        running_bridge(settings_for(ctx_fleet)) as b,
        openai.AsyncOpenAI(base_url=b.base_url + "/v1", api_key="unused", max_retries=0) as oai,
    ):
        for i in range(4):
            await _v1(oai, i)
    endpoints = [e.detail.get("endpoint") for e in _events(ctx_fleet, "request-start")]
    assert sorted(endpoints) == sorted(
        ["/api/generate"]  # the bridge's load
        + ["/v1/chat/completions"] * 2
        + ["/v1/completions"] * 2
    )


async def test_a_v1_prompt_longer_than_the_default_context_is_not_cut_short(
    ctx_fleet: RunningFleet,
) -> None:
    """Ollama's /v1 runs at the daemon's default context (4096 here) and cuts a longer
    prompt to fit it. The bridge loads a runner that holds it (the 8192 bucket) and
    sends the request through the native API at that num_ctx; the short /v1 request
    after it is served there too, without a reload."""
    async with (
        running_bridge(settings_for(ctx_fleet)) as b,
        openai.AsyncOpenAI(base_url=b.base_url + "/v1", api_key="unused", max_retries=0) as oai,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as c,
    ):
        long = await oai.chat.completions.create(
            model="ctxm",
            messages=[{"role": "user", "content": LARGE}],
        )
        assert long.object == "chat.completion"
        assert long.usage is not None
        assert long.usage.prompt_tokens > 4096
        await _v1(oai, 0)
        metrics = (await c.get("/metrics")).text
        ps = (await c.get("/api/ps")).json()
    assert len(_events(ctx_fleet, "load-start")) == 1
    assert ps["models"][0]["context_length"] == 8192
    endpoints = [e.detail.get("endpoint") for e in _events(ctx_fleet, "request-start")]
    assert "/v1/chat/completions" not in endpoints
    assert 'alb_num_ctx_choices_total{choice="translated"} 2.0' in metrics


async def test_without_translation_a_long_v1_prompt_runs_at_the_default_as_on_ollama(
    ctx_fleet: RunningFleet,
) -> None:
    async with (
        running_bridge(settings_for(ctx_fleet, openai_native=False)) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as c,
    ):
        body = {"model": "ctxm", "messages": [{"role": "user", "content": LARGE}]}
        assert (await c.post("/v1/chat/completions", json=body)).status_code == 200
        ps = (await c.get("/api/ps")).json()
    assert ps["models"][0]["context_length"] == 4096
    endpoints = [e.detail.get("endpoint") for e in _events(ctx_fleet, "request-start")]
    assert "/v1/chat/completions" in endpoints


async def test_translation_can_be_turned_off(ctx_fleet: RunningFleet) -> None:
    async with (
        running_bridge(settings_for(ctx_fleet, openai_native=False)) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as c,
    ):
        big = {"model": "ctxm", "messages": [{"role": "user", "content": LARGE}], "stream": False}
        assert (await c.post("/api/chat", json=big)).status_code == 200
        small = {"model": "ctxm", "messages": MSG}
        assert (await c.post("/v1/chat/completions", json=small)).status_code == 200
    assert len(_events(ctx_fleet, "load-start")) == 2  # the /v1 request reloads


async def test_translated_errors_keep_the_openai_shape(ctx_fleet: RunningFleet) -> None:
    async with (
        running_bridge(settings_for(ctx_fleet)) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as c,
    ):
        big = {"model": "ctxm", "messages": [{"role": "user", "content": LARGE}], "stream": False}
        assert (await c.post("/api/chat", json=big)).status_code == 200
        bad = {
            "model": "ctxm",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}],
        }
        r = await c.post("/v1/chat/completions", json=bad)
        assert r.status_code == 400
        assert r.json() == {
            "error": {
                "message": "invalid image input",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
        # The slot was handed back: the next request is served.
        ok = await c.post("/v1/chat/completions", json={"model": "ctxm", "messages": MSG})
        assert ok.status_code == 200
        assert ok.json()["object"] == "chat.completion"
    assert len(_events(ctx_fleet, "load-start")) == 1


@pytest.mark.parametrize("fault", ["error", "early"])
async def test_a_cut_translated_stream_ends_with_an_openai_error_event(
    ctx_fleet: RunningFleet, fault: str
) -> None:
    async with (
        running_bridge(settings_for(ctx_fleet)) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as c,
    ):
        big = {"model": "ctxm", "messages": [{"role": "user", "content": LARGE}], "stream": False}
        assert (await c.post("/api/chat", json=big)).status_code == 200
        faults = ctx_fleet.daemon("a").faults
        if fault == "error":
            faults.error_mid_stream(after_chunks=2, message="runner died")
        else:
            faults.end_stream_early(after_chunks=2)
        body = {"model": "ctxm", "messages": MSG, "stream": True}
        async with c.stream("POST", "/v1/chat/completions", json=body) as r:
            data = b"".join([part async for part in r.aiter_bytes()])
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
    events = data.split(b"\n\n")
    assert b"data: [DONE]" not in events
    assert events[-1] == b""
    assert all(e.startswith(b'data: {"id":"chatcmpl-') for e in events[:-2])
    message = "runner died" if fault == "error" else "the daemon's stream ended without"
    assert events[-2].startswith(b'data: {"error":{"message":"' + message.encode())
    assert len(_events(ctx_fleet, "load-start")) == 1
