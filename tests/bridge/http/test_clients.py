"""The official ``ollama`` and ``openai`` Python clients, unmodified, against the bridge."""

from __future__ import annotations

import ollama
import openai
import pytest

from ollamasim.testing import RunningFleet
from tests.bridge._support import RunningBridge

MSG = [{"role": "user", "content": "hello"}]


async def test_ollama_client(bridge: RunningBridge) -> None:
    async with ollama.AsyncClient(host=bridge.base_url) as c:
        chat = await c.chat(model="chatty", messages=MSG)
        assert chat.done
        assert chat.message.content
        parts = [p async for p in await c.chat(model="chatty", messages=MSG, stream=True)]
        assert parts[-1].done
        assert "".join(p.message.content or "" for p in parts)
        gen = await c.generate(model="chatty", prompt="hi")
        assert gen.response
        streamed = [p async for p in await c.generate(model="chatty", prompt="hi", stream=True)]
        assert streamed[-1].done
        emb = await c.embed(model="vec", input=["a", "b"])
        assert len(emb.embeddings) == 2
        listed = await c.list()
        assert {m.model for m in listed.models} == {"chatty:latest", "other:latest", "vec:latest"}
        shown = await c.show("chatty")
        assert "/root/.ollama" not in (shown.modelfile or "")
        assert "FROM chatty:latest" in (shown.modelfile or "")
        ps = await c.ps()
        assert {m.model for m in ps.models} == {"chatty:latest", "vec:latest"}
        with pytest.raises(ollama.ResponseError) as info:
            await c.chat(model="nope", messages=MSG)
        assert info.value.status_code == 404
        assert info.value.error == "model 'nope' not found"


async def test_openai_client(bridge: RunningBridge) -> None:
    async with openai.AsyncOpenAI(
        base_url=bridge.base_url + "/v1", api_key="unused", max_retries=0
    ) as c:
        done = await c.chat.completions.create(model="chatty", messages=MSG)  # type: ignore[arg-type]
        assert done.choices[0].message.content
        stream = await c.chat.completions.create(
            model="chatty",
            messages=MSG,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [ch async for ch in stream]
        assert chunks[-1].usage is not None
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        comp = await c.completions.create(model="chatty", prompt="once")
        assert comp.choices[0].text
        emb = await c.embeddings.create(model="vec", input=["a", "b"])
        assert len(emb.data) == 2
        models = await c.models.list()
        assert {m.id for m in models.data} == {"chatty:latest", "other:latest", "vec:latest"}
        one = await c.models.retrieve("chatty")
        assert one.id == "chatty"
        with pytest.raises(openai.NotFoundError, match="model 'nope' not found"):
            await c.chat.completions.create(model="nope", messages=MSG)  # type: ignore[arg-type]


async def test_openai_client_sees_a_cut_stream_as_an_error(
    bridge: RunningBridge, fleet: RunningFleet
) -> None:
    async with openai.AsyncOpenAI(
        base_url=bridge.base_url + "/v1", api_key="unused", max_retries=0
    ) as c:
        await c.chat.completions.create(model="chatty", messages=MSG)  # type: ignore[arg-type]
        fleet.daemon("a").faults.end_stream_early(after_chunks=2)
        stream = await c.chat.completions.create(
            model="chatty",
            messages=MSG,  # type: ignore[arg-type]
            stream=True,
        )
        with pytest.raises(openai.APIError, match="ended without"):
            async for _ in stream:
                pass
