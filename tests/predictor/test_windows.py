"""Sliding windows: exact expiry (against a brute-force recount) and round trips."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.core.windows import CountWindow, MinuteWindow, window_from_dict

MODELS = ["a", "b", "c"]

# One operation: (minute step, delta back for a late event, prev, next, gap_ms).
ops = st.lists(
    st.tuples(
        st.integers(0, 4),
        st.integers(0, 6),
        st.sampled_from(MODELS),
        st.sampled_from(MODELS),
        st.integers(0, 10_000),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(minutes=st.integers(1, 5), ops=ops)
def test_minute_window_expiry_is_exact(
    minutes: int, ops: list[tuple[int, int, str, str, int]]
) -> None:
    win = MinuteWindow(minutes)
    kept: list[tuple[int, str, str, int]] = []
    clock = 0
    for step_by, back, prev, nxt, gap in ops:
        clock += step_by
        minute = clock - back  # sometimes late
        accepted = win.add(minute, prev, nxt, gap)
        now = win.now_minute
        assert now is not None
        # Brute force: an event counts while now - m < N; a late one outside is refused.
        assert accepted == (now - minute < minutes)
        if accepted:
            kept.append((minute, prev, nxt, gap))
        live = [(p, n, g) for m, p, n, g in kept if now - m < minutes]
        counts = Counter((p, n) for p, n, _ in live)
        for p in MODELS:
            assert win.row_total(p) == sum(c for (pp, _), c in counts.items() if pp == p)
            for n in MODELS:
                assert win.count(p, n) == counts[(p, n)]
                gaps = sum(g for pp, nn, g in live if (pp, nn) == (p, n))
                cell = win.row(p).get(n)
                assert (cell[1] if cell else 0) == gaps
        assert window_from_dict(win.to_dict()).to_dict() == win.to_dict()


def test_a_transition_counts_for_exactly_n_minutes() -> None:
    win = MinuteWindow(10)
    win.add(100, "a", "b", 5)
    for now in range(100, 110):
        win.advance(now)
        assert win.count("a", "b") == 1, now
    win.advance(110)
    assert win.count("a", "b") == 0
    assert win.row("a") == {}
    assert win.total() == 0


def test_time_never_moves_back() -> None:
    win = MinuteWindow(2)
    win.add(10, "a", "b", 0)
    win.advance(5)
    assert win.now_minute == 10
    assert win.count("a", "b") == 1


@settings(max_examples=100, deadline=None)
@given(size=st.integers(1, 10), ops=ops)
def test_count_window_keeps_the_last_k(
    size: int, ops: list[tuple[int, int, str, str, int]]
) -> None:
    win = CountWindow(size)
    seen: list[tuple[str, str]] = []
    for _, _, prev, nxt, gap in ops:
        win.add(0, prev, nxt, gap)
        seen.append((prev, nxt))
        last = Counter(seen[-size:])
        for p in MODELS:
            for n in MODELS:
                assert win.count(p, n) == last[(p, n)]
    assert window_from_dict(win.to_dict()).to_dict() == win.to_dict()
