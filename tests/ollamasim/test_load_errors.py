"""A load the daemon can never fit answers Ollama's memory error at once (issue #12):
nothing is unloaded for it, and the runner it would have replaced keeps serving."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ollamasim.testing import RunningDaemon, serve_in_thread

GIB = 1024**3
CONFIG: dict[str, Any] = {
    "time_scale": 0.01,
    "gen_tokens_per_s": 500,
    "prefill_tokens_per_s": 10_000,
    "models": [
        # 2 GiB + 64 KiB per token: 4096 tokens → 2.25 GiB; 131072 tokens → 10 GiB.
        {"name": "long", "size": 2 * GIB, "context_length": 131072, "kv_bytes_per_token": 65536},
        {"name": "other", "size": 3 * GIB, "context_length": 8192, "kv_bytes_per_token": 1024},
    ],
    "daemons": [{"name": "d", "memory": 8 * GIB, "load_fixed_s": 1.0}],
}


@pytest.fixture
def d() -> Iterator[RunningDaemon]:
    with serve_in_thread(CONFIG) as fleet:
        yield fleet.daemon("d")


def test_a_load_bigger_than_the_daemon_fails_at_once_and_unloads_nothing(
    d: RunningDaemon,
) -> None:
    with httpx.Client(base_url=d.base_url, timeout=10) as c:
        gen = {"prompt": "hi", "stream": False, "options": {"num_ctx": 4096}}
        assert c.post("/api/generate", json={"model": "long", **gen}).status_code == 200
        assert c.post("/api/generate", json={"model": "other", "keep_alive": "1h"}).is_success
        n = len(d.events())
        t0 = time.monotonic()
        r = c.post(
            "/api/generate",
            json={"model": "long", "prompt": "hi", "options": {"num_ctx": 131072}},
        )
        elapsed = time.monotonic() - t0
        assert r.status_code == 500
        assert r.json() == {
            "error": "model requires more system memory (10.0 GiB) than is available (8.0 GiB)"
        }
        assert elapsed < 1.0  # no unload, no load: an answer, not a wait
        new = d.events()[n:]
        assert [e.kind for e in new] == ["load-failed"]
        ps = {m["name"] for m in c.get("/api/ps").json()["models"]}
        assert ps == {"long:latest", "other:latest"}
        again = c.post("/api/generate", json={"model": "long", **gen})
        assert again.status_code == 200
        assert again.json()["load_duration"] < 1e7  # the same runner: no reload
