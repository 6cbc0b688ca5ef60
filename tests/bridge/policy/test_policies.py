"""Pure policies: sizing, num_ctx, placement and eviction plans, the circuit breaker."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import BadRequest
from bridge.policy.health import Breaker
from bridge.policy.numctx import Calibrator, Limits, Need, bucket, need_for, prompt_size
from bridge.policy.placement import (
    NEVER,
    DaemonView,
    Load,
    RecencyOracle,
    Reject,
    RoomPlan,
    RunnerView,
    Serve,
    eviction_value,
    plan_room,
    route,
)
from bridge.policy.sizing import ModelInfo, SizeBook, kv_bytes_per_token, model_info_from_show
from bridge.scheduling.decisions import DecisionLog

GB = 10**9
LIMITS = Limits((2048, 4096, 8192, 16384, 32768), 2048, 262144, 512, 768)


# --- sizes -------------------------------------------------------------------------------
def test_kv_formula_matches_the_simulator_and_the_real_tiny_model() -> None:
    sim_default = {  # ollamasim's /api/show for a default ModelConfig
        "general.architecture": "llama",
        "llama.block_count": 32,
        "llama.attention.head_count": 32,
        "llama.attention.head_count_kv": 8,
        "llama.embedding_length": 4096,
    }
    assert kv_bytes_per_token(sim_default) == 131072  # the sim's kv_bytes_per_token default
    tiny = {  # docs/real-ollama.md: 2 layers, width 64, 4 heads / 2 KV heads
        "general.architecture": "llama",
        "llama.block_count": 2,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.embedding_length": 64,
    }
    per_token = kv_bytes_per_token(tiny)
    assert per_token == 256
    # /api/ps on v0.17.4: 921,600 B at num_ctx 2048, 659,456 B at 1024.
    assert per_token * (2048 - 1024) == 921_600 - 659_456
    assert kv_bytes_per_token({"general.architecture": "llama"}) is None


def test_size_book_learns_and_anchors_on_real_sizes() -> None:
    info = model_info_from_show(
        "m:latest",
        4 * GB,
        {"model_info": {"general.architecture": "x", "x.context_length": 8192}},
    )
    assert info.context_length == 8192
    book = SizeBook()
    assert book.size(info, 2048, 1) == 4 * GB + info.kv_bytes_per_token * 2048
    book.learn("m:latest", 2048, 1, 5 * GB)
    assert book.size(info, 2048, 1) == 5 * GB
    assert book.size(info, 4096, 1) == 5 * GB + info.kv_bytes_per_token * 2048


# --- num_ctx -----------------------------------------------------------------------------
def test_buckets_round_up_and_cap_at_the_model() -> None:
    assert bucket(1, LIMITS.buckets, 0) == 2048
    assert bucket(2049, LIMITS.buckets, 0) == 4096
    assert bucket(40000, LIMITS.buckets, 0) == 65536  # doubling past the last bucket
    assert bucket(5000, LIMITS.buckets, 6000) == 6000


def test_need_counts_messages_tools_images_and_the_answer() -> None:
    doc = {
        "messages": [
            {"role": "system", "content": "x" * 350},
            {"role": "user", "content": "y" * 3500, "images": ["aGk="]},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "options": {"num_predict": 100},
    }
    size = prompt_size(doc)
    assert (size.messages, size.images) == (2, 1)
    need = need_for(
        doc, embed=False, openai=False, model_context=0, chars_per_token=3.5, limits=LIMITS
    )
    assert need.predict_tokens == 100
    assert need.prompt_tokens > (3850 / 3.5) + 768
    assert not need.auto
    v1 = need_for(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        embed=False,
        openai=True,
        model_context=0,
        chars_per_token=3.5,
        limits=LIMITS,
    )
    assert v1.auto
    assert v1.predict_tokens == 512
    assert not v1.fits(1 << 20, False)
    assert v1.fits(10, True)


def test_client_num_ctx_is_honoured_within_bounds_and_too_long_prompts_are_400() -> None:
    def need(doc: dict[str, object], ctx: int = 0) -> Need:
        return need_for(
            doc, embed=False, openai=False, model_context=ctx, chars_per_token=4, limits=LIMITS
        )

    assert need({"prompt": "hi", "options": {"num_ctx": 8192}}).tokens == 8192
    assert need({"prompt": "hi", "options": {"num_ctx": 16}}).tokens == 2048  # the minimum
    assert need({"prompt": "hi", "options": {"num_ctx": 8192}}, ctx=4096).tokens == 4096
    with pytest.raises(BadRequest, match="context is 4096 tokens"):
        need({"prompt": "z" * 40000}, ctx=4096)
    embed = need_for(
        {"input": ["a" * 100000]},
        embed=True,
        openai=False,
        model_context=512,
        chars_per_token=4,
        limits=LIMITS,
    )
    assert embed.tokens == 512  # embeddings truncate, as Ollama does by default


def test_calibrator_learns_chars_per_token() -> None:
    cal = Calibrator(3.5)
    size = prompt_size({"prompt": "word " * 1000})
    for _ in range(20):
        cal.observe("m", size, 1000 + 8, 768)
    assert cal.ratio("m") == pytest.approx(5.0, rel=0.02)
    assert cal.ratio("other") == 3.5


# --- placement and eviction ---------------------------------------------------------------
def _runner(key: str, size: int, **kw: object) -> RunnerView:
    base: dict[str, object] = {
        "ctx": 4096,
        "auto": True,
        "busy": False,
        "pinned": False,
        "idle_s": 10.0,
        "reload_s": 5.0,
    }
    base.update(kw)
    return RunnerView(key, size, **base)  # type: ignore[arg-type]


def _view(
    name: str, runners: list[RunnerView], budget: int | None = 20 * GB, **kw: object
) -> DaemonView:
    return DaemonView(
        name=name,
        up=bool(kw.get("up", True)),
        models=frozenset({"a", "b", "c", "d", "new", "big"}),
        runners={r.key: r for r in runners},
        budget=budget,
        max_loaded=int(kw.get("max_loaded", 3)),  # type: ignore[call-overload]
        outstanding=int(kw.get("outstanding", 0)),  # type: ignore[call-overload]
    )


ORACLE = RecencyOracle()


def _value(r: RunnerView) -> float:
    return eviction_value(ORACLE, "x", r)


def test_plan_evicts_the_least_valuable_idle_unpinned_runner_only() -> None:
    view = _view(
        "x",
        [
            _runner("a", 8 * GB, idle_s=1.0),  # recent: valuable
            _runner("b", 8 * GB, idle_s=900.0),  # stale: cheapest to lose
            _runner("c", 2 * GB, busy=True, idle_s=5000.0),
        ],
    )
    plan = plan_room(view, "new", 6 * GB, _value)
    assert isinstance(plan, RoomPlan)
    assert plan.victims == ("b",)
    pinned = _view("x", [_runner("a", 10 * GB, pinned=True), _runner("b", 9 * GB, busy=True)])
    assert plan_room(pinned, "new", 6 * GB, _value) is None  # wait for b
    assert plan_room(pinned, "new", 11 * GB, _value) is NEVER  # a is pinned for good
    assert plan_room(_view("x", []), "big", 40 * GB, _value) is NEVER


def test_route_prefers_a_fitting_runner_then_free_memory_then_least_value_lost() -> None:
    need = Need(3000)
    a = _view("a", [_runner("new", 2 * GB, ctx=4096, auto=False)], outstanding=5)
    b = _view("b", [], outstanding=0)
    assert route([a, b], "new", need, lambda v: 2 * GB, ORACLE) == Serve("a")
    big = Need(6000)
    got = route([a, b], "new", big, lambda v: 3 * GB, ORACLE)
    assert isinstance(got, Load)
    assert got.daemon == "b"
    assert got.plan is not None
    full = _view("a", [_runner("c", 19 * GB, idle_s=1)])
    fuller = _view("b", [_runner("d", 19 * GB, idle_s=9999)])
    got = route([full, fuller], "new", need, lambda v: 5 * GB, ORACLE)
    assert isinstance(got, Load)
    assert got.daemon == "b"
    assert got.plan is not None
    assert got.plan.victims == ("d",)
    too_big = route([full, fuller], "big", need, lambda v: 40 * GB, ORACLE)
    assert isinstance(too_big, Reject)
    assert too_big.status == 400
    assert "40.0 GiB" not in too_big.reason
    assert "GiB" in too_big.reason
    assert route([_view("a", [], up=False)], "new", need, lambda v: GB, ORACLE) is None


runners_st = st.lists(
    st.builds(
        RunnerView,
        key=st.sampled_from(["a", "b", "c", "d", "e", "f"]),
        size=st.integers(1, 30).map(lambda g: g * GB // 2),
        ctx=st.sampled_from([2048, 4096, 8192]),
        auto=st.booleans(),
        busy=st.booleans(),
        pinned=st.booleans(),
        idle_s=st.floats(0, 1e5),
        reload_s=st.floats(0.1, 100),
        loading=st.booleans(),
    ),
    max_size=6,
    unique_by=lambda r: r.key,
)


@settings(max_examples=300, deadline=None)
@given(
    runners=runners_st,
    budget=st.integers(4, 48).map(lambda g: g * GB // 2),
    size=st.integers(1, 40).map(lambda g: g * GB // 2),
    max_loaded=st.integers(1, 4),
    key=st.sampled_from(["a", "new"]),
)
def test_a_plan_never_exceeds_the_budget_nor_evicts_busy_pinned_or_loading(
    runners: list[RunnerView], budget: int, size: int, max_loaded: int, key: str
) -> None:
    view = _view("x", runners, budget, max_loaded=max_loaded)
    plan = plan_room(view, key, size, _value)
    if not isinstance(plan, RoomPlan):
        return
    by_key = {r.key: r for r in runners}
    for v in plan.victims:
        r = by_key[v]
        assert not (r.busy)
        assert not (r.pinned)
        assert not (r.loading)
        assert v != key
    remaining = [r for r in runners if r.key not in plan.victims and r.key != key]
    assert sum(r.size for r in remaining) + size <= budget
    assert len(remaining) + 1 <= max_loaded


@settings(max_examples=200, deadline=None)
@given(
    runners_a=runners_st, runners_b=runners_st, size=st.integers(1, 40).map(lambda g: g * GB // 2)
)
def test_a_routed_load_fits_its_daemon(
    runners_a: list[RunnerView], runners_b: list[RunnerView], size: int
) -> None:
    views = [_view("a", runners_a, 20 * GB), _view("b", runners_b, 12 * GB)]
    got = route(views, "new", Need(100), lambda v: size, ORACLE)
    if isinstance(got, Load) and got.plan is not None:
        v = next(x for x in views if x.name == got.daemon)
        kept = [r for r in v.runners.values() if r.key not in got.plan.victims]
        assert sum(r.size for r in kept) + size <= (v.budget or 0)
        assert not any(v.runners[k].busy or v.runners[k].pinned for k in got.plan.victims)
    if isinstance(got, Reject) and got.status == 400:
        assert size > 20 * GB


# --- breaker and decisions --------------------------------------------------------------------
def test_breaker_opens_after_n_failures_and_half_opens_after_the_cooldown() -> None:
    b = Breaker(failures_to_open=3, cooldown=10)
    assert b.allows_traffic(0)
    assert not b.failure(1, "x")
    assert not b.failure(2, "x")
    assert b.failure(3, "x")  # the third opens it
    assert not b.allows_traffic(5)
    assert not b.wants_probe(5)
    assert b.wants_probe(13)
    assert b.state == "half-open"
    assert not b.allows_traffic(13)
    assert b.failure(14, "still broken")  # the probe failed: open again
    assert not b.wants_probe(20)
    assert b.wants_probe(24)
    assert b.success()
    assert b.allows_traffic(24)


def test_decision_log_is_bounded_and_shaped_for_kafka() -> None:
    log = DecisionLog(capacity=3)
    for i in range(5):
        log.record("load", f"m{i % 2}", "gpu0", "request", num_ctx=2048 * (i + 1))
    assert len(log) == 3
    newest = log.query(limit=10)
    assert [d.inputs["num_ctx"] for d in newest] == [10240, 8192, 6144]
    assert [d.model for d in log.query(model="m0")] == ["m0", "m0"]
    row = newest[0].to_json()
    assert set(row) == {"event_id", "ts", "kind", "model", "daemon", "reason", "inputs"}
    uuid.UUID(row["event_id"], version=4)
    assert row["ts"].endswith("Z")
    datetime.fromisoformat(row["ts"].replace("Z", "+00:00"))


def test_model_info_for_embedding_models() -> None:
    info = ModelInfo("e", GB, 512, 1024, embedding_only=True)
    assert model_info_from_show("e", GB, {"capabilities": ["embedding"]}).embedding_only
    assert info.context_length == 512


async def test_a_waiter_queued_on_an_open_gate_is_served_at_once() -> None:
    """Regression: a request admitted while the gate was closed, queued after it opened
    (its task ran later), must not wait for a release that never comes."""
    from bridge.scheduling.gate import Gate  # noqa: PLC0415

    gate = Gate(slots=2)
    gate.open(ctx=4096, auto=True)
    await asyncio.wait_for(gate.wait("s", Need(100)), 1)
    assert gate.busy == 1
    big = asyncio.ensure_future(gate.wait("t", Need(9000)))
    await asyncio.sleep(0.01)
    assert not big.done()  # does not fit the runner: stays queued for a reload
    assert [n.tokens for n in gate.unfit()] == [9000]
    big.cancel()
