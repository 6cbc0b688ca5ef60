"""Space-saving heavy hitters: the guarantees the warm-up policy relies on."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.core.heavy import SpaceSaving


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 6),
    stream=st.lists(st.sampled_from([f"h{i}" for i in range(12)]), max_size=300),
)
def test_space_saving_bounds(capacity: int, stream: list[str]) -> None:
    ss = SpaceSaving(capacity)
    for key in stream:
        ss.offer(key)
    truth = Counter(stream)
    assert len(ss.counters) <= capacity
    assert ss.offered == len(stream)
    for key, (count, error) in ss.counters.items():
        assert count - error <= truth[key] <= count
    for key, n in truth.items():
        if n > len(stream) / capacity:
            assert key in ss.counters
    assert SpaceSaving.from_dict(ss.to_dict()).to_dict() == ss.to_dict()


def test_top_orders_by_guaranteed_count_then_key() -> None:
    ss = SpaceSaving(3)
    for key in ["b", "a", "a", "c", "b", "a"]:
        ss.offer(key)
    assert ss.top(2) == [("a", 3, 3), ("b", 2, 2)]
