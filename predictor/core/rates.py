"""Recent arrival rate per model, and the reuse probability it implies.

Theory of operation
-------------------
The idle-gap histogram (:mod:`predictor.core.idle`) remembers a model's whole history
in 1-minute bins; that is what keep-alive and pre-warm windows need, but it answers
"will this model be asked for in the next few seconds?" poorly: on a fleet that evicts
a runner every few tens of seconds, every popular model's gaps sit in the first bin,
so every one of them looks certain to come back and the eviction order falls to the
reload cost alone.

This module counts each model's requests per minute over the last ``rate_window_s``
seconds (minute buckets, integers, so the count is exact and ages out deterministically
as the window slides) and estimates the rate ``lambda = count / window``. Treating the
next arrivals as a Poisson process of that rate (the Azure Functions trace spreads each
minute's invocations exactly so), the probability that the model is requested within
``h`` seconds is ``1 - exp(-lambda * h)``: it follows the traffic as it shifts (bursts,
the daily cycle) and ranks models by how soon they are likely wanted.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

__all__ = ["ArrivalRate"]


class ArrivalRate:
    """Requests of one model per minute over a sliding window of ``minutes`` minutes."""

    __slots__ = ("buckets", "minutes")

    def __init__(self, minutes: int) -> None:
        self.minutes = minutes
        self.buckets: deque[list[int]] = deque()
        """``[minute, count]`` in increasing minute order, only the window's minutes."""

    def add(self, ts: float) -> None:
        """Count one request that arrived at ``ts`` (seconds)."""
        minute = int(ts // 60)
        buckets = self.buckets
        if buckets and buckets[-1][0] == minute:
            buckets[-1][1] += 1
        elif not buckets or buckets[-1][0] < minute:
            buckets.append([minute, 1])
        elif minute > buckets[-1][0] - self.minutes:  # a late record still in the window
            for i, b in enumerate(buckets):
                if b[0] == minute:
                    b[1] += 1
                    break
                if b[0] > minute:
                    buckets.insert(i, [minute, 1])
                    break
        while buckets and buckets[0][0] <= buckets[-1][0] - self.minutes:
            buckets.popleft()

    def count(self, now: float) -> int:
        """Requests in the window ending at ``now`` (read-only)."""
        first = int(now // 60) - self.minutes + 1
        return sum(c for m, c in self.buckets if m >= first)

    def rate(self, now: float) -> float:
        """Requests per second over the window ending at ``now``."""
        return self.count(now) / (self.minutes * 60.0)

    def reuse_probability(self, now: float, horizon_s: float) -> float:
        """P(at least one request within ``horizon_s``) for Poisson arrivals at the rate."""
        return 1.0 - math.exp(-self.rate(now) * horizon_s)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {"minutes": self.minutes, "buckets": [list(b) for b in self.buckets]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArrivalRate:
        """Inverse of :meth:`to_dict`."""
        r = cls(int(data["minutes"]))
        r.buckets.extend([int(m), int(c)] for m, c in data["buckets"])
        return r
