"""Embedded mode: the predictor runs inside the bridge over the in-process bus.

Real sockets against the simulator: sessions going A -> B teach the embedded
predictor, which then prefetches B right after A, so B is loaded before anyone asks
and the request for B is warm. Plus the oracle, the settings and the lifespan's
choice of mode.
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx
import pytest

from bridge.events.predictor import (
    PredictorEstimate,
    embedded_wanted,
    estimate_reuse,
    keep_alive_after,
)
from bridge.policy.placement import RecencyOracle, RunnerView
from bridge.policy.prefetch import PrefetchOracle
from bridge.policy.reuse import PredictedReuse
from bridge.settings import SettingsError, load_settings
from ollamasim.testing import RunningDaemon, RunningFleet, serve_in_thread
from predictor.core.config import PredictorConfig
from predictor.core.machine import new_state
from predictor.core.rates import ArrivalRate
from predictor.embedded import EmbeddedPredictor
from tests.bridge._events import runtime, wait_for
from tests.bridge._support import GIB, running_bridge, settings_for

FLEET: dict[str, Any] = {
    "time_scale": 0.01,
    "gen_tokens_per_s": 2000,
    "prefill_tokens_per_s": 100000,
    "models": [
        {"name": "alpha", "size": GIB, "response_tokens": 4},
        {"name": "beta", "size": GIB, "response_tokens": 4},
    ],
    "daemons": [{"name": "a", "memory": 16 * GIB, "load_fixed_s": 2.0, "num_parallel": 2}],
}


def _runner(key: str, idle_s: float = 0.0) -> RunnerView:
    return RunnerView(
        key=key, size=GIB, ctx=2048, auto=True, busy=False, pinned=False,
        idle_s=idle_s, reload_s=2.0,
    )  # fmt: skip


class _Fixed:
    def __init__(self, p: dict[str, float]) -> None:
        self.p = p

    def estimate(self, model: str) -> float | None:
        return self.p.get(model)


def test_predicted_reuse_scales_recency_by_the_prediction() -> None:
    oracle = PredictedReuse(_Fixed({"hot:latest": 0.6, "cold:latest": 0.1, "x:latest": 1.0}))
    # Equally recent: the prediction orders them.
    hot = oracle.reuse("a", _runner("hot:latest", idle_s=60))
    cold = oracle.reuse("a", _runner("cold:latest", idle_s=60))
    assert hot > cold
    # Equal predictions: recency orders them.
    recent = oracle.reuse("a", _runner("hot:latest", idle_s=1))
    stale = oracle.reuse("a", _runner("hot:latest", idle_s=900))
    assert recent > stale
    # The prediction scales recency between 0.5x and 1.5x: a sure reuse idle for long
    # still loses to an unlikely one just used.
    base = RecencyOracle().reuse("a", _runner("x:latest", idle_s=60))
    assert oracle.reuse("a", _runner("x:latest", idle_s=60)) == pytest.approx(1.5 * base)
    assert oracle.reuse("a", _runner("x:latest", idle_s=3000)) < oracle.reuse(
        "a", _runner("cold:latest", idle_s=0)
    )
    # No evidence yet: recency alone (the bridge's default oracle).
    unknown = _runner("new:latest", idle_s=10)
    assert oracle.reuse("a", unknown) == RecencyOracle().reuse("a", unknown)


def test_settings_choose_the_mode() -> None:
    env = {"ALB_DAEMONS": "http://127.0.0.1:1"}
    assert embedded_wanted(load_settings(env))
    assert not embedded_wanted(load_settings({**env, "ALB_PREDICTOR_EMBEDDED": "false"}))
    assert not embedded_wanted(load_settings({**env, "ALB_EVENTS": "false"}))
    assert not embedded_wanted(load_settings({**env, "ALB_KAFKA_BOOTSTRAP_SERVERS": "k:9092"}))
    assert load_settings(env).predictor_core_config() == PredictorConfig.recommended()
    cfg = load_settings({**env, "ALB_PREDICTOR_CONFIG": '{"cooldown_s": 5}'})
    assert cfg.predictor_core_config() == PredictorConfig.recommended().replace(cooldown_s=5)
    back = load_settings({**env, "ALB_PREDICTOR_CONFIG": '{"reuse_estimate": "histogram"}'})
    assert back.predictor_core_config().reuse_estimate == "histogram"
    assert back.predictor_core_config().fallback_keep_alive_s == 300.0
    with pytest.raises(SettingsError, match="ALB_PREDICTOR_CONFIG: unknown predictor settings"):
        load_settings({**env, "ALB_PREDICTOR_CONFIG": '{"nope": 1}'})
    with pytest.raises(SettingsError, match="ALB_PREDICTOR_CONFIG: not JSON"):
        load_settings({**env, "ALB_PREDICTOR_CONFIG": "{"})


@pytest.fixture
def fleet() -> Any:
    with serve_in_thread(FLEET) as f:
        yield f


async def test_predictor_off_keeps_the_recency_oracle(fleet: RunningFleet) -> None:
    async with running_bridge(settings_for(fleet, predictor_embedded=False)) as b:
        rt = runtime(b.app)
        assert rt.predictor is None
        oracle = rt.scheduler.oracle
        assert isinstance(oracle, PrefetchOracle)
        assert isinstance(oracle.inner, RecencyOracle)


async def _unload_all(client: httpx.AsyncClient, daemon: RunningDaemon) -> None:
    for model in ("alpha", "beta"):
        r = await client.post(f"/alb/v1/models/{model}/unload")
        assert r.status_code in (200, 404), r.text
    ps = await client.get("/api/ps")
    assert ps.json()["models"] == []


async def test_a_then_b_sessions_make_the_bridge_prefetch_b(fleet: RunningFleet) -> None:
    daemon = fleet.daemon("a")
    settings = settings_for(fleet, predictor_config='{"cooldown_s": 0}')
    async with (
        running_bridge(settings) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=20) as client,
    ):
        rt = runtime(b.app)
        predictor = rt.predictor
        assert isinstance(predictor, EmbeddedPredictor)
        assert isinstance(rt.scheduler.oracle, PrefetchOracle)
        assert isinstance(rt.scheduler.oracle.inner, PredictedReuse)
        assert isinstance(rt.scheduler.oracle.inner.predictor, PredictorEstimate)

        async def ask(model: str, session: str) -> httpx.Response:
            r = await client.post(
                "/api/generate",
                json={"model": model, "prompt": "hi", "stream": False},
                headers={"X-ALB-Session": session},
            )
            assert r.status_code == 200, r.text
            return r

        # Two sessions teach A -> B (the core wants two transitions); both cold.
        for i in range(2):
            assert (await ask("alpha", f"teach-{i}")).headers["x-alb-cold"] == "true"
            assert (await ask("beta", f"teach-{i}")).headers["x-alb-cold"] == "true"
            await _unload_all(client, daemon)
        # The predictor has seen both transitions and both unloads (model-state events):
        # otherwise it would not prefetch a model it believes loaded.
        await wait_for(
            lambda: (
                {"alpha:latest", "beta:latest"} <= set(predictor.loaded)
                and not any(predictor.loaded.values())
            ),
            what="the predictor saw the unloads",
        )

        mark = len(daemon.events())
        a_done_at = time.time()
        await ask("alpha", "live")

        # No request for B yet: the bridge loads it on the predictor's word.
        # (Polled without blocking: the bridge runs on this event loop.)
        def beta_loaded() -> bool:
            fresh = daemon.events()[mark:]
            return any(e.kind == "loaded" and e.model == "beta:latest" for e in fresh)

        await wait_for(beta_loaded, what="the prefetch of beta")
        beta = [e for e in daemon.events()[mark:] if e.model == "beta:latest"]
        # The bridge's own load call (a prompt-less generate) is the only request so far.
        assert [e.kind for e in beta][:2] == ["load-start", "loaded"]
        loaded_b = beta[1]
        assert loaded_b.wall_ts >= a_done_at
        r = await ask("beta", "live")
        assert r.headers["x-alb-cold"] == "false"
        beta = [e for e in daemon.events()[mark:] if e.model == "beta:latest"]
        assert [e.kind for e in beta].count("load-start") == 1
        served = [e for e in beta if e.kind == "request-start"][-1]
        assert served.wall_ts > loaded_b.wall_ts
        assert predictor.published >= 1
        decisions = (await client.get("/alb/v1/decisions")).json()["decisions"]
        prefetches = [d for d in decisions if d["kind"] == "prefetch"]
        assert prefetches, decisions[-10:]
        assert {d["model"] for d in prefetches} == {"beta:latest"}, prefetches


def test_the_rate_estimate_needs_a_request_in_its_window_the_histogram_min_samples() -> None:
    now = 10_000.0
    state = new_state(PredictorConfig.recommended())  # rate, 15-minute window, 30 s
    assert estimate_reuse(state, "a", now) is None  # never seen: the caller uses recency
    rate = state.rates["a"] = ArrivalRate(state.config.rate_window_minutes)
    for i in range(15):  # one request a minute
        rate.add(now - 60 * i - 1)
    p = estimate_reuse(state, "a", now)
    assert p is not None
    assert abs(p - (1 - math.exp(-30 / 60))) < 1e-9  # 15 per 15 min, 30 s horizon
    assert estimate_reuse(state, "a", now + 3600) is None  # nothing in the window any more
    hist_state = new_state(PredictorConfig.recommended().replace(reuse_estimate="histogram"))
    hist_state.rates["a"] = rate
    assert estimate_reuse(hist_state, "a", now) is None  # no idle gaps recorded yet


def test_keep_alive_follows_the_histogram_windows_and_unloads_unlikely_models_early() -> None:
    now = 10_000.0
    cfg = PredictorConfig.recommended()
    state = new_state(cfg)
    cap = 1800.0
    # no window yet: the fallback keep-alive; never above the operator's cap
    assert keep_alive_after(state, "a", now, cap) == cfg.fallback_keep_alive_s
    assert keep_alive_after(state, "a", now, 60.0) == 60.0
    state.hints["a"] = (900.0, 0.0, "histogram")  # keep 15 min after the last request
    assert keep_alive_after(state, "a", now, cap) == 900.0
    state.hints["a"] = (600.0, 120.0, "histogram")  # a pre-warm window: unload at once
    assert keep_alive_after(state, "a", now, cap) == 0.0
    # ... but the runner its pre-warm prefetch loaded is kept its window
    assert keep_alive_after(state, "a", now, cap, prefetched=True) == 600.0
    # unload_below: P(reuse within 30 s) of one request per 15 min is ~0.033
    lean = new_state(cfg.replace(unload_below=0.2))
    lean.rates["a"] = ArrivalRate(cfg.rate_window_minutes)
    lean.rates["a"].add(now - 5)
    assert keep_alive_after(lean, "a", now, cap) == 0.0
    assert keep_alive_after(lean, "a", now, cap, prefetched=True) == cfg.fallback_keep_alive_s
    for i in range(30):  # two a minute: P ~0.63, kept
        lean.rates["a"].add(now - 30 * i - 1)
    assert keep_alive_after(lean, "a", now, cap) == cfg.fallback_keep_alive_s
    # no evidence (never seen) is not "unlikely": kept
    assert keep_alive_after(lean, "b", now, cap) == cfg.fallback_keep_alive_s


async def test_the_embedded_predictors_keep_alive_unloads_idle_runners(
    fleet: RunningFleet,
) -> None:
    # A model seen once in 15 minutes has P(reuse within 30 s) ~0.03: with unload_below
    # 0.2 the bridge unloads it at its next refresh, not after ALB_IDLE_UNLOAD_AFTER.
    d = fleet.daemon("a")
    settings = settings_for(
        fleet,
        reclaim="idle",
        idle_unload_after=3600,
        refresh_interval=0.1,
        predictor_config='{"unload_below": 0.2}',
    )
    async with (
        running_bridge(settings) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=10) as c,
    ):
        r = await c.post("/api/generate", json={"model": "alpha", "prompt": "x", "stream": False})
        assert r.status_code == 200
        predictor = runtime(b.app).predictor
        assert isinstance(predictor, EmbeddedPredictor)
        await wait_for(lambda: "alpha:latest" in predictor.state.rates, what="the access log")

        def unloaded() -> bool:
            return any(e.kind == "unload" and e.model == "alpha:latest" for e in d.events())

        await wait_for(unloaded, 5.0, what="the predicted unload")
        # The daemon's unload event comes first; the bridge's view follows once the
        # daemon's /api/ps confirms it (Loader.unload).
        daemon = runtime(b.app).fleet.daemons["a"]
        await wait_for(lambda: "alpha:latest" not in daemon.loaded, 5.0, what="the bridge's view")
        assert (await c.get("/api/ps")).json()["models"] == []
