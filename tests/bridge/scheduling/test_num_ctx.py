"""num_ctx without reload thrash: the alternating-context pattern, through the bridge
and straight to the simulator; requests that cannot fit get a 400."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._support import GIB, running_bridge, settings_for

#: One 16 GiB daemon (Ollama's default context there: 4096) and one 32k-context model.
CONFIG: dict[str, Any] = {
    "time_scale": 0.002,
    "gen_tokens_per_s": 1000,
    "prefill_tokens_per_s": 1_000_000,
    "models": [
        {"name": "ctxm", "size": 4 * GIB, "context_length": 32768, "response_tokens": 2},
    ],
    "daemons": [{"name": "a", "memory": 16 * GIB, "num_parallel": 1}],
}
N = 100


@pytest.fixture
def ctx_fleet() -> Iterator[RunningFleet]:
    with serve_in_thread(CONFIG) as f:
        yield f


def _prompt(words: int) -> str:
    return " ".join(f"w{i % 97}" for i in range(words))


SMALL, LARGE = _prompt(1000), _prompt(6000)  # ~1k and ~6k tokens (the sim: one per word)


def _body(i: int, *, client_ctx: bool) -> dict[str, Any]:
    small = i % 2 == 0
    body: dict[str, Any] = {
        "model": "ctxm",
        "prompt": SMALL if small else LARGE,
        "stream": False,
        "options": {"num_predict": 2},
    }
    if client_ctx:  # what Aider-like clients do: size num_ctx to the prompt
        body["options"]["num_ctx"] = 2048 if small else 8192
    return body


def _loads(fleet: RunningFleet) -> int:
    return sum(1 for e in fleet.daemon("a").events() if e.kind == "load-start")


async def _run(base_url: str, *, client_ctx: bool) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as c:
        return [
            await c.post("/api/generate", json=_body(i, client_ctx=client_ctx)) for i in range(N)
        ]


async def test_alternating_context_costs_at_most_one_reload_through_the_bridge(
    ctx_fleet: RunningFleet,
) -> None:
    direct = await _run(ctx_fleet.daemon("a").base_url, client_ctx=True)
    assert all(r.status_code == 200 for r in direct)
    direct_reloads = _loads(ctx_fleet) - 1
    unload_reasons = {e.reason for e in ctx_fleet.daemon("a").events() if e.kind == "unload"}
    assert unload_reasons == {"reload-options-changed"}

    results = {}
    for client_ctx in (True, False):
        with serve_in_thread(CONFIG) as fresh:
            async with running_bridge(settings_for(fresh)) as b:
                replies = await _run(b.base_url, client_ctx=client_ctx)
                async with httpx.AsyncClient(base_url=b.base_url) as c:
                    decisions = (await c.get("/alb/v1/decisions?kind=num_ctx")).json()
            assert [r.status_code for r in replies] == [200] * N
            results[client_ctx] = (_loads(fresh) - 1, decisions["decisions"])
    print(
        f"\nalternating ~1k/~6k tokens, {N} requests: direct to the simulator "
        f"{direct_reloads} reloads; through the bridge {results[True][0]} reload(s) "
        f"with the clients' num_ctx, {results[False][0]} without"
    )
    assert direct_reloads == N - 1  # every switch reloads
    assert results[True][0] <= 1
    assert results[False][0] <= 1
    ((ctx_reload, *_rest),) = [d for d in [results[True][1]] if d]
    assert ctx_reload["reason"] == "bigger-context"
    assert ctx_reload["inputs"]["num_ctx"] >= 8192


async def test_a_prompt_longer_than_the_model_is_a_clear_400(ctx_fleet: RunningFleet) -> None:
    async with (
        running_bridge(settings_for(ctx_fleet)) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as c,
    ):
        huge = {"model": "ctxm", "prompt": _prompt(40000), "stream": False}
        r = await c.post("/api/generate", json=huge)
        v1 = await c.post(
            "/v1/completions", json={"model": "ctxm", "prompt": _prompt(40000), "max_tokens": 2}
        )
        rejected = (await c.get("/alb/v1/decisions?kind=reject")).json()["decisions"]
    assert r.status_code == 400
    assert "context is 32768 tokens" in r.json()["error"]
    assert v1.status_code == 400
    assert v1.json()["error"]["type"] == "invalid_request_error"
    assert rejected
    assert rejected[0]["model"] == "ctxm:latest"
    assert not [e for e in ctx_fleet.daemon("a").events() if e.kind == "load-start"]


async def test_runner_options_are_stripped_so_clients_cannot_force_reloads(
    ctx_fleet: RunningFleet,
) -> None:
    async with (
        running_bridge(settings_for(ctx_fleet)) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as c,
    ):
        for batch in (128, 256, 512):
            body = {"model": "ctxm", "prompt": "hi", "stream": False}
            body["options"] = {"num_batch": batch, "num_thread": batch // 64}
            assert (await c.post("/api/generate", json=body)).status_code == 200
        v1 = await c.post(
            "/v1/chat/completions",
            json={"model": "ctxm", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert v1.status_code == 200
    assert _loads(ctx_fleet) == 1  # native and /v1 share the default-context runner
