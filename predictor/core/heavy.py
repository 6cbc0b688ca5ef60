"""Top system prompts per model: bounded heavy hitters (space-saving).

Metwally, Agrawal and El Abbadi, "Efficient Computation of Frequent and Top-k Elements
in Data Streams", ICDT 2005. ``capacity`` counters; an unseen key takes over the counter
with the smallest count ``m`` and starts at ``m + 1`` with error ``m``. A key's true
count lies in ``[count - error, count]``, and every key whose true count exceeds
``offered / capacity`` is guaranteed to hold a counter. The warm-up policy uses the
lower bound ``count - error`` so it never warms a prompt on an over-estimate.
Ties are broken by key, so the structure is deterministic.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SpaceSaving"]


class SpaceSaving:
    """Approximate top-k counter over string keys."""

    __slots__ = ("capacity", "counters", "offered")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.counters: dict[str, list[int]] = {}
        """key -> [count, error]"""
        self.offered = 0

    def offer(self, key: str) -> None:
        """Count one occurrence of ``key``."""
        self.offered += 1
        counters = self.counters
        cell = counters.get(key)
        if cell is not None:
            cell[0] += 1
        elif len(counters) < self.capacity:
            counters[key] = [1, 0]
        else:
            victim = min(counters, key=lambda k: (counters[k][0], k))
            floor = counters.pop(victim)[0]
            counters[key] = [floor + 1, floor]

    def top(self, n: int) -> list[tuple[str, int, int]]:
        """Up to ``n`` ``(key, guaranteed_count, count)``, by guaranteed count then key."""
        ranked = sorted(self.counters.items(), key=lambda kv: (-(kv[1][0] - kv[1][1]), kv[0]))
        return [(k, c - e, c) for k, (c, e) in ranked[:n]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {"capacity": self.capacity, "offered": self.offered, "counters": self.counters}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpaceSaving:
        """Inverse of :meth:`to_dict`."""
        ss = cls(int(data["capacity"]))
        ss.offered = int(data["offered"])
        ss.counters = {str(k): [int(v[0]), int(v[1])] for k, v in data["counters"].items()}
        return ss
