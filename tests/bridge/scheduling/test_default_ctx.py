"""The daemon's default context: sizes learned under the runner's real context, the
default configured or learned (not only Ollama's VRAM tier), native requests falling
back to a smaller bucket when the default does not fit, and a /v1 400 that says why.

The simulated daemon has 24 GiB (Ollama's VRAM tier: 32768) but runs with
``OLLAMA_CONTEXT_LENGTH=4096``: the bridge's guess and the daemon disagree."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bridge.policy.numctx import DaemonDefault, Limits, Need, choose_target
from bridge.scheduling.scheduler import Scheduler
from bridge.settings import load_settings
from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._events import runtime
from tests.bridge._support import GIB, RunningBridge, running_bridge

CONFIG: dict[str, Any] = {
    "time_scale": 0.002,
    "gen_tokens_per_s": 1000,
    "prefill_tokens_per_s": 1_000_000,
    "models": [
        # 16 GiB + 256 KiB/token: 24 GiB at 32768 (over the 21.6 GiB budget), 17 at 4096.
        {
            "name": "big",
            "size": 16 * GIB,
            "context_length": 32768,
            "kv_bytes_per_token": 262144,
            "head_count_kv": 16,  # what /api/show says: 32 x 16 x (128 + 128) x 2 B
        },
        {"name": "small", "size": GIB, "context_length": 32768, "response_tokens": 2},
    ],
    "daemons": [{"name": "a", "memory": 24 * GIB, "context_length": 4096, "num_parallel": 1}],
}
LIMITS = Limits((2048, 4096, 8192, 16384, 32768), 2048, 262144, 512, 768)


@pytest.fixture
def fleet4k() -> Iterator[RunningFleet]:
    with serve_in_thread(CONFIG) as f:
        yield f


def _bridge(fleet: RunningFleet, query: str = "", **env: str) -> Any:
    d = fleet.daemon("a")
    daemons = f"a={d.base_url}?parallel=1&memory=24GiB{query}"
    return running_bridge(load_settings({"ALB_DAEMONS": daemons, "ALB_EVENTS": "false", **env}))


def _scheduler(b: RunningBridge) -> Scheduler:
    return runtime(b.app).scheduler


def _loads(fleet: RunningFleet) -> list[Any]:
    return [e for e in fleet.daemon("a").events() if e.kind == "load-start"]


def _v1(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _native(model: str) -> dict[str, Any]:
    return {"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 2}}


# --- 1. sizes are learned under the runner's real context ------------------------------------
async def test_a_default_context_load_is_learned_under_the_runners_real_context(
    fleet4k: RunningFleet,
) -> None:
    async with _bridge(fleet4k) as b, httpx.AsyncClient(base_url=b.base_url, timeout=30) as c:
        s = _scheduler(b)
        d = s.fleet.get("a")
        assert s.daemon_default(d) == DaemonDefault(32768, known=False)  # the VRAM-tier guess
        assert (await c.post("/v1/chat/completions", json=_v1("small"))).status_code == 200
        ps = (await c.get(f"{fleet4k.daemon('a').base_url}/api/ps")).json()["models"]
        (row,) = ps
        assert row["context_length"] == 4096
        info = s.fleet.infos["small:latest"]
        assert s.sizes.known("small:latest", 4096, 1) == row["size"]
        assert s.sizes.known("small:latest", 32768, 1) is None  # not under the guess
        # The next estimate for that context is the measured size, /v1 or native.
        assert s.target(info, d, [Need(0, auto=True)]).size == row["size"]
        assert s.sizes.size(info, 4096, 1) == row["size"]
        # ... and a bigger context is estimated from it, not from a mislabelled anchor.
        assert s.sizes.size(info, 32768, 1) == row["size"] + 131072 * (32768 - 4096)
        # The daemon's default is learned from that runner (4096 < the model's 32768).
        assert s.daemon_default(d) == DaemonDefault(4096, known=True)


# --- 2. large models: the default known, a smaller bucket, a /v1 400 that says why -----------
async def test_unknown_default_native_falls_back_to_a_bucket_and_v1_is_told_why(
    fleet4k: RunningFleet,
) -> None:
    async with _bridge(fleet4k) as b, httpx.AsyncClient(base_url=b.base_url, timeout=30) as c:
        v1 = await c.post("/v1/chat/completions", json=_v1("big"))
        native = await c.post("/api/generate", json=_native("big"))
        decisions = (await c.get("/alb/v1/decisions?kind=num_ctx")).json()["decisions"]
    assert v1.status_code == 400
    message = v1.json()["error"]["message"]
    assert "cannot set num_ctx" in message
    assert "32768" in message
    assert "?default_ctx=" in message
    assert native.status_code == 200, native.text
    (load,) = _loads(fleet4k)
    assert load.model == "big:latest"
    choice = [x for x in decisions if x["model"] == "big:latest"][-1]["inputs"]
    assert choice["choice"] == "default-too-big"
    assert choice["sent_num_ctx"] == 2048


async def test_configured_default_lets_v1_load_and_native_shares_the_runner(
    fleet4k: RunningFleet,
) -> None:
    async with (
        _bridge(fleet4k, "&default_ctx=4096") as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as c,
    ):
        s = _scheduler(b)
        assert s.daemon_default(s.fleet.get("a")) == DaemonDefault(4096, known=True)
        native = await c.post("/api/generate", json=_native("big"))
        v1 = await c.post("/v1/chat/completions", json=_v1("big"))
        decisions = (await c.get("/alb/v1/decisions?kind=num_ctx")).json()["decisions"]
    assert native.status_code == 200, native.text
    assert v1.status_code == 200, v1.text
    # The native load sent num_ctx 4096 explicitly: the daemon's default, so the /v1
    # request (no num_ctx: the default) reuses the runner.
    assert len(_loads(fleet4k)) == 1
    first = decisions[0]["inputs"]
    assert (first["choice"], first["sent_num_ctx"], first["auto"]) == ("daemon-default", 4096, True)


async def test_the_default_learned_from_one_model_unblocks_another_on_v1(
    fleet4k: RunningFleet,
) -> None:
    async with (
        _bridge(fleet4k) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as c,
    ):
        before = await c.post("/v1/chat/completions", json=_v1("big"))
        assert (await c.post("/v1/chat/completions", json=_v1("small"))).status_code == 200
        after = await c.post("/v1/chat/completions", json=_v1("big"))
        learned = (await c.get("/alb/v1/decisions?kind=num_ctx")).json()["decisions"]
    assert before.status_code == 400
    assert after.status_code == 200, after.text
    assert any(x["reason"] == "daemon-default-learned" for x in learned)


def test_default_ctx_setting_per_daemon_and_global() -> None:
    specs = load_settings(
        {"ALB_DAEMONS": "a=http://h:1?default_ctx=8192,b=http://h:2", "ALB_DEFAULT_NUM_CTX": "4096"}
    ).daemon_specs()
    assert [s.default_ctx for s in specs] == [8192, 4096]
    (plain,) = load_settings({"ALB_DAEMONS": "a=http://h:1"}).daemon_specs()
    assert plain.default_ctx is None


# --- the pure choice -------------------------------------------------------------------------
def _choose(needs: list[Need], default: DaemonDefault, room: int | None, **kw: Any) -> Any:
    return choose_target(
        needs,
        default=default,
        auto_ctx=kw.get("auto_ctx"),
        model_context=kw.get("model_context", 32768),
        limits=LIMITS,
        prefer_default=kw.get("prefer_default", True),
        size=lambda ctx: 16 * GIB + 262144 * ctx,
        room=room,
    )


def test_choose_target_sends_only_a_known_default_and_falls_back_when_it_does_not_fit() -> None:
    guess, known = DaemonDefault(32768, False), DaemonDefault(4096, True)
    small, v1 = [Need(1000)], [Need(0, auto=True)]
    # Guessed default that fits: no num_ctx sent (the daemon's own default applies).
    t = _choose(small, guess, None)
    assert (t.ctx, t.auto, t.num_ctx, t.reason) == (32768, True, None, "daemon-default")
    # Guessed default that does not fit: a native need loads the smallest bucket.
    t = _choose(small, guess, 20 * GIB)
    assert (t.ctx, t.auto, t.num_ctx, t.reason) == (2048, False, 2048, "default-too-big")
    # /v1 has no choice: the default, whatever its size (the caller refuses it).
    t = _choose(v1 + small, guess, 20 * GIB)
    assert (t.ctx, t.auto, t.num_ctx) == (32768, True, None)
    # A known default is sent explicitly: predictable size, still shared with /v1.
    t = _choose(small, known, 20 * GIB)
    assert (t.ctx, t.auto, t.num_ctx, t.size) == (4096, True, 4096, 16 * GIB + 262144 * 4096)
    t = _choose(v1, known, None, model_context=2048)
    assert (t.ctx, t.auto, t.num_ctx) == (2048, True, 4096)  # unclamped: what /v1 sends
    # A bucket equal to a known default is the default runner.
    t = _choose([Need(3000)], known, None, prefer_default=False)
    assert (t.ctx, t.auto, t.num_ctx) == (4096, True, 4096)
    t = _choose([Need(3000)], guess, None, prefer_default=False)
    assert (t.ctx, t.auto, t.num_ctx) == (4096, False, 4096)
