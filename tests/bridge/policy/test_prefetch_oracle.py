"""A prefetched runner no request used yet is the least recently used (ModelMesh's rule)."""

from __future__ import annotations

from bridge.policy.placement import DaemonView, RecencyOracle, RunnerView, eviction_value, plan_room
from bridge.policy.prefetch import PrefetchOracle

GIB = 1024**3


class _Book:
    def __init__(self, unused: set[tuple[str, str]]) -> None:
        self.unused = unused

    def confidence(self, daemon: str, key: str) -> float | None:
        return 0.95 if (daemon, key) in self.unused else None


def test_an_unused_prefetched_runner_is_evicted_before_anything_traffic_used() -> None:
    fresh = RunnerView("guess:latest", 4 * GIB, 4096, False, False, False, 0.0, 30.0)
    old = RunnerView("used:latest", 4 * GIB, 4096, False, False, False, 3000.0, 1.0)
    view = DaemonView("a", True, frozenset(), {r.key: r for r in (fresh, old)}, 9 * GIB, 3)
    book = _Book({("a", "guess:latest")})
    oracle = PrefetchOracle(RecencyOracle(), book)
    # Just loaded, expensive to reload, confident: still worth less than an old runner.
    assert oracle.reuse("a", fresh) == 0.0
    assert eviction_value(oracle, "a", fresh) < eviction_value(oracle, "a", old)
    plan = plan_room(view, "new:latest", 4 * GIB, lambda r: eviction_value(oracle, "a", r))
    assert plan.victims == ("guess:latest",)  # type: ignore[union-attr]
    # Once a request used it, it is valued like any runner: the old one goes.
    book.unused.clear()
    plan = plan_room(view, "new:latest", 4 * GIB, lambda r: eviction_value(oracle, "a", r))
    assert plan.victims == ("used:latest",)  # type: ignore[union-attr]
