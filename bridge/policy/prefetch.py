"""Prefetch judgement, pure: whether a prefetch may load, and what a prefetched runner
is worth to eviction.

``judge`` runs a prefetch's acceptance checks on ``placement.route``'s answer (the
room, what it would evict against the prefetch's value, the share of memory unused
prefetched runners may hold); ``TokenBucket`` paces them; ``PrefetchOracle`` ranks an
unused prefetched runner as the least recently used, so any load that needs the room
evicts it first (ModelMesh's rule). A prefetch also never takes what a client waits for:
the driver serves gates where a client (or a replica) waits first
(``step.drive_order``), and a prefetch not yet started gives way when one does. The
live consumer (``bridge.events.prefetch_consumer``) and the replay
(``replay.bridge_fleet``) both call these.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.policy.placement import (
    DaemonView,
    Reject,
    ReuseOracle,
    Route,
    RunnerView,
    Serve,
    eviction_value,
)


class Confidences(Protocol):
    """The confidence of the prefetch that loaded a runner no request used yet."""

    def confidence(self, daemon: str, key: str) -> float | None: ...


@dataclass(frozen=True, slots=True)
class PrefetchOracle:
    """Reuse for eviction: a prefetched runner no request used yet counts as the least
    recently used of all (ModelMesh's rule: a guess never outranks what traffic used),
    so any load that needs the room evicts it first; once used, it is like any other."""

    inner: ReuseOracle
    book: Confidences

    def reuse(self, daemon: str, runner: RunnerView) -> float:
        if self.book.confidence(daemon, runner.key) is not None:
            return 0.0
        return self.inner.reuse(daemon, runner)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate, self._burst, self._clock = rate, float(burst), clock
        self._tokens, self._at = float(burst), clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


@dataclass(frozen=True, slots=True)
class Outcome:
    outcome: str
    daemon: str = ""
    inputs: dict[str, Any] | None = None


ACCEPTED = "accepted"


def judge(
    where: Route | None,
    views: Sequence[DaemonView],
    key: str,
    *,
    confidence: float,
    size_of: Callable[[DaemonView], int],
    reload_s: Callable[[str, int], float],
    oracle: ReuseOracle,
    held: Callable[[str], int],
    budget: Callable[[str], int | None],
    share: float,
) -> Outcome:
    """A prefetch's acceptance checks on ``route``'s answer ``where`` (pure; see the
    module docstring), all but the token bucket: the refusal, else ``ACCEPTED`` with
    the daemon and the decision's inputs. ``held(daemon)``: bytes of prefetched runners
    no request used yet; ``budget(daemon)``: bytes the bridge may plan for (None: no
    limit); ``share``: ``ALB_PREFETCH_BUDGET``."""
    if where is None:
        return Outcome("no_daemon")
    if isinstance(where, Serve):
        return Outcome("already_loaded", where.daemon)
    if isinstance(where, Reject):
        return Outcome("refused_no_room", inputs={"why": where.reason})
    name = where.daemon
    view = next(v for v in views if v.name == name)
    if where.plan is None:
        busy = sorted(k for k, r in view.runners.items() if r.busy and k != key)
        return Outcome("refused_busy", name, {"busy": ",".join(busy)})
    size = size_of(view)
    value = confidence * reload_s(key, size)
    victims = [view.runners[k] for k in where.plan.victims]
    worth = max((eviction_value(oracle, name, r) for r in victims), default=0.0)
    inputs: dict[str, Any] = {
        "size": size,
        "value": round(value, 6),
        "victims": ",".join(where.plan.victims),
        "victims_value": round(worth, 6),
    }
    if worth > value:
        return Outcome("refused_value", name, inputs)
    limit, used = budget(name), held(name)
    if limit is not None and used + size > share * limit:
        return Outcome("over_budget", name, {**inputs, "held": used, "budget": limit})
    return Outcome(ACCEPTED, name, inputs)
