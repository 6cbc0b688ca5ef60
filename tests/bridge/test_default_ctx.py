"""The daemon's default context: sizes learned under the runner's real context.

The simulated daemon has 24 GiB (Ollama's VRAM tier: 32768) but runs with
``OLLAMA_CONTEXT_LENGTH=4096``: the bridge's guess and the daemon disagree."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bridge.numctx import Need
from bridge.scheduler import Scheduler
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
