"""step / tick: decisions, budget and cooldown, determinism, state round trips."""

from __future__ import annotations

from collections import Counter, deque

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.core import (
    KeepAliveHint,
    Output,
    PredictorState,
    Prefetch,
    ReuseHint,
    WarmCache,
    new_state,
    output_to_dict,
    reuse_probability,
    state_from_dict,
    state_to_dict,
    step,
    tick,
)
from predictor.core.config import PredictorConfig
from predictor.core.records import AccessRecord


def _run(state: PredictorState, records: list[AccessRecord]) -> list[Output]:
    out: list[Output] = []
    for rec in records:
        state, o = step(state, rec)
        out.extend(o)
    return out


def _a_then_b(n: int, *, gap: float = 10.0, period: float = 60.0) -> list[AccessRecord]:
    recs = []
    for i in range(n):
        t = i * period
        recs.append(AccessRecord(t, f"s{i % 4}", "A", system_prompt_hash="sysA"))
        recs.append(AccessRecord(t + gap, f"s{i % 4}", "B", system_prompt_hash="sysB"))
    return recs


def test_a_then_b_prefetches_b_after_a_with_its_system_prompt() -> None:
    state = new_state(PredictorConfig(cooldown_s=0))
    _run(state, _a_then_b(10))
    state, out = step(state, AccessRecord(1000.0, "s1", "A", system_prompt_hash="sysA"))
    prefetches = [o for o in out if isinstance(o, Prefetch)]
    assert len(prefetches) == 1
    p = prefetches[0]
    assert (p.model, p.reason, p.source) == ("B", "global_transition", "A")
    assert p.confidence >= 0.9
    assert p.expected_arrival == pytest.approx(1010.0)
    assert p.expires_at == pytest.approx(1010.0 + state.config.prefetch_slack_s)
    warms = [o for o in out if isinstance(o, WarmCache)]
    assert warms == [
        WarmCache(
            "B",
            "sysB",
            p.expires_at,
            1.0,
            confidence=p.confidence,
            expected_arrival=p.expected_arrival,
        )
    ]
    assert output_to_dict(p)["type"] == "prefetch"


def test_a_session_with_its_own_habit_gets_a_session_transition() -> None:
    state = new_state(PredictorConfig(cooldown_s=0, session_prior=2.0))
    _run(state, _a_then_b(10))  # everyone: A -> B
    for i in range(6):  # session x: A -> C, with num_ctx 8192
        t = 2000.0 + 60 * i
        state, _ = step(state, AccessRecord(t, "x", "A"))
        state, _ = step(state, AccessRecord(t + 5, "x", "C", num_ctx=8192))
    state, out = step(state, AccessRecord(2400.0, "x", "A"))
    p = next(o for o in out if isinstance(o, Prefetch))
    assert (p.model, p.reason, p.num_ctx) == ("C", "session_transition", 8192)
    assert p.expected_arrival == pytest.approx(2405.0)


def test_cooldown_and_budget_are_respected() -> None:
    cfg = PredictorConfig(cooldown_s=120, max_prefetch_per_minute=1)
    state = new_state(cfg)
    recs = _a_then_b(60, period=20.0)
    sent: list[tuple[float, Prefetch]] = []
    for rec in recs:
        state, out = step(state, rec)
        sent.extend((rec.ts, o) for o in out if isinstance(o, Prefetch))
    assert sent
    per_minute = Counter(int(t // 60) for t, _ in sent)
    assert max(per_minute.values()) <= 1
    last: dict[str, float] = {}
    for t, p in sent:
        assert t - last.get(p.model, -1e9) >= 120
        last[p.model] = t


def test_client_errors_are_not_demand() -> None:
    state = new_state()
    state, out = step(state, AccessRecord(0.0, "s", "typo-model", status=404))
    assert out == []
    assert state.transitions.known == {}
    state, out = step(state, AccessRecord(1.0, "s", "m", status=429))
    assert "m" in state.transitions.known


def test_keep_alive_hint_goes_out_when_the_windows_change() -> None:
    state = new_state(PredictorConfig(recompute_every=1))
    out = _run(state, [AccessRecord(i * 600.0, "s", "M") for i in range(15)])
    hints = [o for o in out if isinstance(o, KeepAliveHint)]
    assert hints[0].pattern == "few-samples"
    assert hints[-1].pattern == "histogram"
    assert hints[-1].prewarm_after_s == pytest.approx(600 * 0.9)
    assert len(hints) == len({(h.keep_alive_s, h.prewarm_after_s, h.pattern) for h in hints})


def test_tick_fires_the_histogram_prewarm_once() -> None:
    state = new_state(PredictorConfig(recompute_every=1, reuse_hints_on_tick=False))
    _run(state, [AccessRecord(i * 600.0, f"s{i}", "M") for i in range(15)])
    last = 14 * 600.0
    due = last + 600 * 0.9
    state, out = tick(state, due - 1)
    assert out == []
    state, out = tick(state, due + 5)
    assert len(out) == 1
    p = out[0]
    assert isinstance(p, Prefetch)
    assert (p.model, p.reason) == ("M", "idle_histogram")
    assert p.keep_alive_s == pytest.approx(11 * 60 * 1.1 - 600 * 0.9)
    assert p.expires_at == pytest.approx(last + 11 * 60 * 1.1)
    assert p.confidence == pytest.approx(1.0)
    state, out = tick(state, due + 30)
    assert out == []


def test_reuse_hints_on_tick() -> None:
    state = new_state()
    _run(state, [AccessRecord(i * 30.0, "s", "M") for i in range(20)])
    state, out = tick(state, 20 * 30.0)
    hints = [o for o in out if isinstance(o, ReuseHint)]
    assert [h.model for h in hints] == ["M"]
    assert hints[0].probability == pytest.approx(reuse_probability(state, "M", 600.0))
    assert 0.9 < hints[0].probability < 1.0
    assert reuse_probability(state, "never-seen", 600.0) == 0.0


def _seed_reference(records: list[AccessRecord]) -> list[list[str]]:
    """The seed article's policy, written directly: the last 50 requests in arrival
    order, P(j | i) = c(i, j) / n(i) over their consecutive pairs, prefetch every j != i
    with P >= 0.6 after a request of i."""
    history: deque[str] = deque(maxlen=50)
    decisions = []
    for rec in records:
        history.append(rec.model)
        pairs = list(zip(list(history)[:-1], list(history)[1:], strict=True))
        cur = rec.model
        n = sum(1 for a, _ in pairs if a == cur)
        counts = Counter(b for a, b in pairs if a == cur)
        decisions.append(sorted(j for j, c in counts.items() if j != cur and c / n >= 0.6))
    return decisions


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 120.0, allow_nan=False), st.sampled_from("ABCD")),
        min_size=1,
        max_size=150,
    )
)
def test_seed_article_policy_is_a_configuration(steps: list[tuple[float, str]]) -> None:
    records: list[AccessRecord] = []
    t = 0.0
    for dt, model in steps:
        t += dt
        records.append(AccessRecord(t, f"s{len(records) % 7}", model))
    state = new_state(PredictorConfig.seed_article())
    ours = []
    for rec in records:
        state, out = step(state, rec)
        assert all(isinstance(o, Prefetch) for o in out)
        ours.append(sorted(o.model for o in out if isinstance(o, Prefetch)))
    assert ours == _seed_reference(records)


records_strategy = st.lists(
    st.tuples(
        st.floats(0.0, 900.0, allow_nan=False),
        st.sampled_from(["s1", "s2", "s3"]),
        st.sampled_from(["A", "B", "C"]),
        st.sampled_from([None, "p1", "p2"]),
        st.sampled_from([200, 200, 404, 503]),
        st.booleans(),  # tick after this record
    ),
    max_size=80,
)


def _drive(
    state: PredictorState, items: list[tuple[float, str, str, str | None, int, bool]], t0: float
) -> tuple[PredictorState, list[Output]]:
    out: list[Output] = []
    t = t0
    for dt, session, model, sp, status, do_tick in items:
        t += dt
        state, o = step(state, AccessRecord(t, session, model, status, system_prompt_hash=sp))
        out.extend(o)
        if do_tick:
            state, o = tick(state, t + 1.0)
            out.extend(o)
    return state, out


@settings(max_examples=60, deadline=None)
@given(
    items=records_strategy,
    cut=st.integers(0, 80),
    window=st.sampled_from(["time", "count"]),
    rate=st.booleans(),
)
def test_state_round_trip_continues_identically(
    items: list[tuple[float, str, str, str | None, int, bool]], cut: int, window: str, rate: bool
) -> None:
    cfg = PredictorConfig(
        window="time" if window == "time" else "count",
        min_samples=2,
        recompute_every=3,
        reuse_estimate="rate" if rate else "histogram",
    )
    head, tail = items[:cut], items[cut:]
    s1, out_head = _drive(new_state(cfg), head, 0.0)
    t_cut = s1.now or 0.0
    blob = orjson.dumps(state_to_dict(s1))
    s2 = state_from_dict(orjson.loads(blob))
    _, out_a = _drive(s1, tail, t_cut)
    _, out_b = _drive(s2, tail, t_cut)
    assert out_a == out_b
    # and determinism: a fresh run gives the same decisions
    _, again = _drive(new_state(cfg), head, 0.0)
    assert again == out_head


@settings(max_examples=60, deadline=None)
@given(items=records_strategy, budget=st.integers(0, 3), cooldown=st.floats(0, 300))
def test_budget_and_cooldown_hold_for_any_input(
    items: list[tuple[float, str, str, str | None, int, bool]], budget: int, cooldown: float
) -> None:
    cfg = PredictorConfig(
        max_prefetch_per_minute=budget,
        cooldown_s=cooldown,
        min_count=1,
        confidence_threshold=0.3,
        min_samples=2,
        recompute_every=1,
    )
    state = new_state(cfg)
    stamped: list[tuple[float, Prefetch]] = []
    t = 0.0
    for dt, session, model, sp, status, do_tick in items:
        t += dt
        state, o = step(state, AccessRecord(t, session, model, status, system_prompt_hash=sp))
        # Decisions are stamped with the latest time seen (a tick may be ahead of t).
        stamped.extend((state.now or t, p) for p in o if isinstance(p, Prefetch))
        if do_tick:
            state, o = tick(state, t + 1.0)
            stamped.extend((state.now or t, p) for p in o if isinstance(p, Prefetch))
    per_minute = Counter(int(ts // 60) for ts, _ in stamped)
    assert all(n <= budget for n in per_minute.values())
    last: dict[str, float] = {}
    for ts, p in stamped:
        assert 0.0 <= p.confidence <= 1.0
        assert p.expires_at >= ts
        if p.model in last:
            assert ts - last[p.model] >= cooldown
        last[p.model] = ts
