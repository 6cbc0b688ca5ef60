"""The whole distributed loop on the real broker: bridge -> Kafka -> Faust -> Kafka -> bridge.

A bridge with ``ALB_KAFKA_BOOTSTRAP_SERVERS`` (no embedded predictor) in front of the
simulator, and a real ``alb predictor`` worker (a subprocess) on the bridge's own
topics. Sessions going A -> B through the bridge's HTTP API are the only input: the
bridge's access log teaches the worker, the worker's prefetch(B) after the next A
makes the bridge load B before anyone asks for it, and that request for B is warm.
The worker's model hints reach the same bridge's eviction value.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.events.hints import HintEstimate
from bridge.policy.prefetch import PrefetchOracle
from bridge.policy.reuse import PredictedReuse
from ingest.messages import Topic
from ingest.topics import ensure_topics
from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._events import runtime, wait_for
from tests.bridge._support import GIB, running_bridge, settings_for
from tests.predictor._worker import Worker, unique, wait_for_leaders
from tests.services._env import REPO_ROOT, tail

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(150)]

# Model names no other test uses: the worker reads the shared topics from the start.
A, B = f"loop-a-{uuid.uuid4().hex[:6]}", f"loop-b-{uuid.uuid4().hex[:6]}"
FLEET: dict[str, Any] = {
    "time_scale": 0.01,
    "gen_tokens_per_s": 2000,
    "prefill_tokens_per_s": 100000,
    "models": [
        {"name": A, "size": GIB, "response_tokens": 4},
        {"name": B, "size": GIB, "response_tokens": 4},
    ],
    "daemons": [{"name": "a", "memory": 16 * GIB, "load_fixed_s": 2.0, "num_parallel": 2}],
}


@pytest.fixture
def fleet() -> Any:
    with serve_in_thread(FLEET) as f:
        yield f


@pytest.fixture
async def worker(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Worker]:
    await ensure_topics(kafka_bootstrap)
    await wait_for_leaders(kafka_bootstrap, [t.value for t in Topic])
    app_id = unique("alb-t-loop")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "ALB_PREDICTOR_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ALB_PREDICTOR_APP_ID": app_id,
        "ALB_PREDICTOR_STORE": "memory://",
        "ALB_PREDICTOR_DATADIR": str(tmp_path / "data"),
        "ALB_PREDICTOR_TICK_INTERVAL_S": "1",
        "ALB_PREDICTOR_BATCH_S": "0.05",
        "ALB_PREDICTOR_CONFIG": '{"cooldown_s": 0}',
    }
    w = Worker(kafka_bootstrap, app_id, {}, env, tmp_path)
    w.start()
    try:
        yield w
    finally:
        w.stop()


async def test_sessions_through_a_kafka_bridge_teach_the_worker_and_b_is_loaded_before_asked(
    fleet: RunningFleet, worker: Worker, tmp_path: Path
) -> None:
    daemon = fleet.daemon("a")
    settings = settings_for(
        fleet,
        kafka_bootstrap_servers=worker.bootstrap,
        kafka_create_topics=False,
        producer_id=f"alb-test-{uuid.uuid4().hex[:8]}",
        consumer_group=f"alb-bridge-{uuid.uuid4().hex[:8]}",
        events_spool_dir=str(tmp_path / "spool"),
    )
    async with (
        running_bridge(settings) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as client,
    ):
        rt = runtime(b.app)
        assert rt.predictor is None  # Kafka: the worker predicts
        assert rt.consumer is not None
        assert rt.hints is not None
        oracle = rt.scheduler.oracle
        assert isinstance(oracle, PrefetchOracle)
        assert isinstance(oracle.inner, PredictedReuse)
        assert isinstance(oracle.inner.predictor, HintEstimate)
        await asyncio.wait_for(rt.consumer.ready.wait(), 30)
        await asyncio.wait_for(rt.hints.ready.wait(), 30)

        async def ask(model: str, session: str) -> httpx.Response:
            r = await client.post(
                "/api/generate",
                json={"model": model, "prompt": "hi", "stream": False},
                headers={"X-ALB-Session": session},
            )
            if r.status_code != 200:  # say why the daemon looked down, if it did
                d = rt.fleet.daemons["a"]
                breaker = rt.scheduler.breakers["a"]
                why = f"up={d.up} error={d.error!r} breaker={breaker.state} {breaker.last_error!r}"
                raise AssertionError(f"{model}: {r.status_code} {r.text} ({why})")
            return r

        async def unload_all() -> None:
            for model in (A, B):
                r = await client.post(f"/alb/v1/models/{model}/unload")
                assert r.status_code in (200, 404), r.text
            assert (await client.get("/api/ps")).json()["models"] == []

        # Two transitions: the core's bar, so no A of the teaching can trigger a prefetch
        # of B. (With a third, the worker could prefetch B after it; a worker behind the
        # log would send that prefetch after the unloads below, and nothing would tell it
        # from the one under test.)
        for i in range(2):
            await ask(A, f"teach-{i}")
            await ask(B, f"teach-{i}")
            await unload_all()

        # The worker publishes a hint per model every tick once it has read the log:
        # the bridge holds one for both, with evidence (requests in the rate window).
        key_a, key_b = f"{A}:latest", f"{B}:latest"
        book = rt.hints.book
        await wait_for(
            lambda: book.reuse(key_a) is not None and book.reuse(key_b) is not None,
            60,
            f"model hints from the worker\n{tail(worker.log)}",
        )
        worker.check_alive()

        # Now A alone, in new sessions, until the bridge loads B on the worker's word
        # (the worker drops a prefetch of a model its model-state view still shows
        # loaded, so the first A may come before it has read the unloads).
        mark = len(daemon.events())

        decision_log = b.app.state.bridge.decisions

        def prefetch_loads() -> int:  # the consumer records the decision once the load is done
            prefetched = decision_log.query(model=key_b, kind="prefetch", limit=1000)
            return sum(1 for d in prefetched if d.reason == "prefetch_loaded")

        assert prefetch_loads() == 0  # nothing before the first A after the teaching

        def b_loaded() -> bool:
            return prefetch_loads() > 0

        deadline = time.monotonic() + 60
        probe = 0
        while not b_loaded():
            if time.monotonic() > deadline:
                outcomes = [
                    (d.kind, d.reason, dict(d.inputs))
                    for d in decision_log.query(model=key_b, limit=50)
                ]
                why = f"no prefetch of B; B's decisions: {outcomes}"
                raise AssertionError(f"{why}\n{tail(worker.log)}")
            probe += 1
            await ask(A, f"live-{probe}")
            with contextlib.suppress(TimeoutError):  # not yet: another A
                await wait_for(b_loaded, 5, "the prefetch of B")

        assert any(e.kind == "loaded" and e.model == key_b for e in daemon.events()[mark:])
        decisions = (await client.get("/alb/v1/decisions", params={"model": B})).json()
        reasons = {(d["kind"], d["reason"]) for d in decisions["decisions"]}
        assert ("prefetch", "prefetch_loaded") in reasons, reasons
        r = await ask(B, f"live-{probe}")
        assert r.headers["x-alb-cold"] == "false"  # loaded before it was asked for
