"""P(next | current): smoothing, blending, and the sum-to-at-most-one property."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.core.config import PredictorConfig
from predictor.core.transitions import Transitions

MODELS = ["a", "b", "c", "d"]

requests = st.lists(
    st.tuples(
        st.floats(0, 400, allow_nan=False),  # time step
        st.sampled_from(["s1", "s2", "s3"]),
        st.sampled_from(MODELS),
    ),
    min_size=1,
    max_size=60,
)
configs = st.builds(
    PredictorConfig,
    window=st.sampled_from(["time", "count"]),
    window_minutes=st.integers(1, 15),
    count_window=st.integers(1, 30),
    session_count_window=st.integers(1, 10),
    transition_source=st.sampled_from(["session", "arrival"]),
    use_session=st.booleans(),
    session_prior=st.floats(0, 20),
    smoothing=st.floats(0, 5),
)


@settings(max_examples=200, deadline=None)
@given(cfg=configs, reqs=requests)
def test_probabilities_sum_to_at_most_one(
    cfg: PredictorConfig, reqs: list[tuple[float, str, str]]
) -> None:
    tr = Transitions(cfg)
    t = 0.0
    for dt, session, model in reqs:
        t += dt
        tr.observe(t, session, model)
        for s in ("s1", "s2", "s3", "unknown"):
            for current in MODELS:
                dist = tr.distribution(s, current, t)
                assert set(dist) == set(tr.known)
                assert all(0.0 <= p <= 1.0 for p in dist.values())
                assert math.fsum(dist.values()) <= 1.0 + 1e-9
                cands = tr.candidates(s, current, t)
                probs = [c.probability for c in cands]
                assert probs == sorted(probs, reverse=True)
                for c in cands:
                    assert dist[c.model] == pytest.approx(c.probability)


def test_additive_smoothing_formula() -> None:
    cfg = PredictorConfig(use_session=False, smoothing=0.5, window="count")
    tr = Transitions(cfg)
    # a->b three times, a->c once; known = {a, b, c}
    t = 0.0
    for nxt in ["b", "b", "b", "c"]:
        tr.observe(t, "s", "a")
        tr.observe(t + 1, "s", nxt)
        t += 10
    dist = tr.distribution("s", "a", t)
    den = 4 + 0.5 * (3 + 1)  # n + a * (|V| + 1)
    assert dist["b"] == pytest.approx((3 + 0.5) / den)
    assert dist["c"] == pytest.approx((1 + 0.5) / den)
    assert dist["a"] == pytest.approx(0.5 / den)
    assert sum(dist.values()) == pytest.approx(1 - 0.5 / den)


def test_maximum_likelihood_without_smoothing_and_session_blend() -> None:
    cfg = PredictorConfig(smoothing=0.0, session_prior=2.0)
    tr = Transitions(cfg)
    # Session x always goes a->c; everyone else a->b (8 times).
    t = 0.0
    for i in range(8):
        tr.observe(t, f"o{i}", "a")
        tr.observe(t + 2, f"o{i}", "b")
        t += 5
    for _ in range(2):
        tr.observe(t, "x", "a")
        tr.observe(t + 4, "x", "c")
        t += 5
    dist = tr.distribution("x", "a", t)
    w = 2 / (2 + 2.0)  # the session saw a-> twice
    g_b, g_c = 8 / 10, 2 / 10
    assert dist["c"] == pytest.approx(w * 1.0 + (1 - w) * g_c)
    assert dist["b"] == pytest.approx((1 - w) * g_b)
    cands = {c.model: c for c in tr.candidates("x", "a", t)}
    assert cands["c"].gap_s == pytest.approx(4.0)
    assert cands["b"].gap_s == pytest.approx(2.0)
    # A session with no history of its own gets the global estimate.
    assert tr.distribution("new", "a", t)["b"] == pytest.approx(g_b)


def test_top_ranks_the_global_transitions_with_the_smoothed_estimate() -> None:
    cfg = PredictorConfig(smoothing=0.5, window="count", session_prior=1.0)
    tr = Transitions(cfg)
    # a->b three times (gaps 1 s), a->c once (gap 3 s), b->a once: known = {a, b, c}.
    t = 0.0
    for nxt, gap in [("b", 1.0), ("b", 1.0), ("b", 1.0), ("c", 3.0)]:
        tr.observe(t, f"s{t}", "a")
        tr.observe(t + gap, f"s{t}", nxt)
        t += 10
    tr.observe(t, "z", "b")
    tr.observe(t + 2, "z", "a")
    slots = 0.5 * (3 + 1)
    top = tr.top(t + 2, 10)
    assert [(i, c.model) for i, c in top] == [("a", "b"), ("b", "a"), ("a", "c")]
    assert top[0][1].probability == pytest.approx((3 + 0.5) / (4 + slots))
    assert top[1][1].probability == pytest.approx((1 + 0.5) / (1 + slots))
    assert top[0][1].count == 3
    assert top[0][1].gap_s == pytest.approx(1.0)
    assert top[2][1].gap_s == pytest.approx(3.0)
    # No session's estimate in it: the global row as any new session would see it.
    assert top[0][1].probability == pytest.approx(tr.distribution("new", "a", t + 2)["b"])
    assert [c.model for _, c in tr.top(t + 2, 1)] == ["b"]
    assert tr.top(t + 2, 0) == []
    assert Transitions(cfg).top(0.0, 5) == []


def test_long_pause_starts_the_session_afresh() -> None:
    tr = Transitions(PredictorConfig(max_gap_s=60))
    tr.observe(0, "s", "a")
    tr.observe(61, "s", "b")
    assert tr.glob.total() == 0
    tr.observe(100, "s", "c")
    assert tr.glob.count("b", "c") == 1


def test_arrival_order_ignores_sessions() -> None:
    tr = Transitions(PredictorConfig(transition_source="arrival"))
    tr.observe(0, "s1", "a")
    tr.observe(1, "s2", "b")
    tr.observe(2, "s3", "c")
    assert tr.glob.count("a", "b") == 1
    assert tr.glob.count("b", "c") == 1


def test_sessions_are_bounded_and_expire() -> None:
    tr = Transitions(PredictorConfig(max_sessions=2, session_ttl_s=100))
    tr.observe(0, "s1", "a")
    tr.observe(1, "s2", "a")
    tr.observe(2, "s3", "a")
    assert list(tr.sessions) == ["s2", "s3"]
    tr.observe(50, "s2", "b")
    tr.expire(103)
    assert list(tr.sessions) == ["s2"]
    assert tr.current("s2") == "b"
