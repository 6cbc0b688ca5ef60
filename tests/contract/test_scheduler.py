"""Reloads, the prefix (KV) cache and the max-queue 503.

Facts: OLLAMA_FACTS.md §5-6. Source: server/sched.go (``needsReload``, ``GetRunner``,
``ErrMaxQueue``), server/routes.go @00188139 (``handleScheduleError``, ``load_duration`` =
checkpointLoaded - checkpointStart), runner/{llamarunner,ollamarunner}/runner.go
(``NewSequence`` numPromptInputs, final ``CompletionResponse``).

Behaviours that need several models and controllable load times (one load at a time,
shortest-keep_alive eviction, client disconnect aborting a load, loaded models bypassing
the queue) are left to the simulator's own tests (tests/ollamasim), see OLLAMA_FACTS.md §7.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from typing import Any

import httpx
import pytest

from tests.contract._support import Target, ps_entry, unload_all


def _gen(t: Target, **options: Any) -> dict[str, Any]:
    with t.client() as c:
        r = c.post(
            "/api/generate",
            json={
                "model": t.model,
                "prompt": "Hi",
                "stream": False,
                "options": {"num_predict": 1, **options},
            },
        )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_reload_on_num_ctx_change_not_on_temperature(fresh: Target) -> None:
    """needsReload compares ``api.Runner`` options (num_ctx, num_batch, num_gpu, main_gpu,
    use_mmap, num_thread) with reflect.DeepEqual: a num_ctx change reloads the runner
    (large load_duration again, /api/ps context_length changes); sampling options such as
    temperature reuse it (load_duration stays tiny, context_length unchanged)."""
    t = fresh
    cold = _gen(t, num_ctx=512, temperature=0.2)["load_duration"]
    ctx1 = (ps_entry(t, t.model) or {}).get("context_length")
    warm = _gen(t, num_ctx=512, temperature=0.2)["load_duration"]
    same_runner = _gen(t, num_ctx=512, temperature=0.9)["load_duration"]
    assert ctx1 == 512, f"context_length after num_ctx=512: {ctx1}"
    assert cold > 4 * warm, (cold, warm)
    assert cold > 4 * same_runner, f"temperature must not reload: {cold=} {same_runner=}"
    assert (ps_entry(t, t.model) or {}).get("context_length") == 512

    reloaded = _gen(t, num_ctx=1024, temperature=0.9)["load_duration"]
    assert reloaded > 4 * warm, f"num_ctx change must reload: {reloaded=} {warm=}"
    assert reloaded > 4 * same_runner
    assert (ps_entry(t, t.model) or {}).get("context_length") == 1024


def test_prefix_cache_visible_in_prompt_eval_duration(fresh: Target, sim_only: Target) -> None:
    """Sim only: the real fixture's random-weight ``tiny`` model renders only the last
    user message (its template drops the system prompt) into 7-9 tokens evaluated in
    0.3-3 ms on CPU (measured against v0.17.4), so there is no shared prefix to reuse and
    the timings are noise.

    The runner computes prompt_eval_count = len(inputs) in NewSequence, *before*
    LoadCacheSlot drops the cached prefix, so the count stays the full prompt length;
    prompt_eval_duration (processingDuration) covers only the uncached suffix and drops."""
    t = fresh
    system = " ".join(f"Rule {i}: answer politely and precisely." for i in range(60))

    def ask(question: str) -> dict[str, Any]:
        with t.client() as c:
            r = c.post(
                "/api/chat",
                json={
                    "model": t.model,
                    "stream": False,
                    "options": {"num_predict": 1},
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": question},
                    ],
                },
            )
        assert r.status_code == 200, r.text
        return dict(r.json())

    first = ask("What is the capital of France?")
    second = ask("What is the capital of Spain?")
    assert first["prompt_eval_count"] > 200
    assert second["prompt_eval_count"] >= 0.9 * first["prompt_eval_count"], (
        "prompt_eval_count reports the full prompt even on a cache hit",
        first["prompt_eval_count"],
        second["prompt_eval_count"],
    )
    assert second["prompt_eval_duration"] * 3 < first["prompt_eval_duration"], (
        first["prompt_eval_duration"],
        second["prompt_eval_duration"],
    )


def test_max_queue_503(target: Target, sim_only: Target) -> None:
    """Sim only: needs a daemon with OLLAMA_MAX_QUEUE=1 and slow loads; the real fixture
    runs with the default 512.

    Requests for models that are not loaded go into the buffered pendingReqCh (capacity
    OLLAMA_MAX_QUEUE). While slow-a loads, the single processPending goroutine takes the
    slow-b request and blocks waiting for slow-a to be evicted; the next request fills
    the channel, later ones fail the non-blocking send → ErrMaxQueue → handleScheduleError
    503 ``server busy, please try again.  maximum pending requests exceeded`` (two spaces),
    no Retry-After. (Requests for the *same* loading model would instead block on the
    runner in GetRunner, so distinct models are used.)"""
    fleet = target.fleet
    daemon = next(d for d in fleet.daemons if str(getattr(d, "name", "")) == "tinyqueue")
    base = str(daemon.base_url).rstrip("/")

    def call(model: str) -> httpx.Response:
        with httpx.Client(base_url=base, timeout=60) as c:
            return c.post("/api/generate", json={"model": model})

    with cf.ThreadPoolExecutor(max_workers=6) as pool:
        first = pool.submit(call, "slow-a")
        time.sleep(0.1)  # slow-a is loading (60 simulated s = 0.6 s of wall time)
        rest = list(pool.map(call, ["slow-b", "slow-c", "slow-d", "slow-b", "slow-c"]))
        results = [first.result(), *rest]
    busy = [r for r in results if r.status_code == 503]
    assert busy, [(r.status_code, r.text) for r in results]
    assert results[0].status_code == 200, results[0].text
    for r in results:
        assert r.status_code in {200, 503}, r.text
    for r in busy:
        assert r.json() == {
            "error": "server busy, please try again.  maximum pending requests exceeded"
        }
        assert "retry-after" not in r.headers
    with httpx.Client(base_url=base, timeout=60) as c:
        for m in c.get("/api/ps").json()["models"]:
            c.post("/api/generate", json={"model": m["name"], "keep_alive": 0})


@pytest.fixture(autouse=True)
def _leave_clean(target: Target) -> Any:
    yield
    if target.kind == "sim":
        unload_all(target)
