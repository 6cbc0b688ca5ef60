"""Queueing, pure: ``FairQueue`` (weighted round-robin over sessions, FIFO within one),
``copy_depth`` (the queue the high-water mark is judged on) and ``retry_hint``
(the hint a refused request gets), used by the gates (``bridge.scheduling.gate``), the
scheduler and the replay."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

_MIN_RETRY_S = 1.0
_MAX_RETRY_S = 120.0


class FairQueue(Generic[T]):
    """Round-robin over sessions, FIFO within a session. A session's ``weight`` (an API
    key's priority class, 1 by default) is how many of its requests are served in a
    row when its turn comes: a weight-2 session gets two turns to a weight-1's one."""

    __slots__ = ("_by_session", "_credit", "_len", "_order", "_weight")

    def __init__(self) -> None:
        self._by_session: dict[str, deque[T]] = {}
        self._order: deque[str] = deque()
        self._weight: dict[str, int] = {}
        self._credit: dict[str, int] = {}
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def push(self, session: str, item: T, weight: int = 1) -> None:
        q = self._by_session.get(session)
        if q is None:
            q = self._by_session[session] = deque()
            self._order.append(session)
            self._weight[session] = self._credit[session] = max(1, weight)
        q.append(item)
        self._len += 1

    def pop(self) -> T:
        return self._take(self._order.popleft())

    def _take(self, session: str) -> T:
        """The head of ``session`` (already off the order): it keeps the front while it
        has turns left, else goes to the back with its turns renewed."""
        q = self._by_session[session]
        item = q.popleft()
        self._len -= 1
        if not q:
            del self._by_session[session], self._weight[session], self._credit[session]
            return item
        self._credit[session] -= 1
        if self._credit[session] > 0:
            self._order.appendleft(session)
        else:
            self._credit[session] = self._weight[session]
            self._order.append(session)
        return item

    def __iter__(self) -> Iterator[T]:
        for q in self._by_session.values():
            yield from q

    def pop_first(self, pred: Callable[[T], bool]) -> T | None:
        """The first session head (in round-robin order) that ``pred`` accepts."""
        for _ in range(len(self._order)):
            session = self._order[0]
            if pred(self._by_session[session][0]):
                self._order.popleft()
                return self._take(session)
            self._order.rotate(-1)
        return None

    def remove(self, session: str, item: T) -> bool:
        q = self._by_session.get(session)
        if q is None or item not in q:
            return False
        q.remove(item)
        self._len -= 1
        if not q:
            del self._by_session[session], self._weight[session], self._credit[session]
            self._order.remove(session)
        return True


@dataclass(frozen=True, slots=True)
class CopyQueue:
    """One copy of a model as a replica sees it: its own queue (``depth``), its own
    requests in flight or queued (``outstanding``), its share of the slots, the daemon's
    slots, and the other replicas' requests in flight or queued there (``theirs``)."""

    depth: int
    outstanding: int
    share: int
    slots: int
    theirs: int = 0


def copy_depth(c: CopyQueue) -> int:
    """The queue at one copy, every replica's: a copy the others use too queues
    everyone's requests beyond the daemon's slots; one only this replica uses, its own
    queue (a replica's own queue is never counted shorter than it is). The high-water
    mark is judged on this, so N replicas admit one queue's worth, not N."""
    if c.theirs:
        return max(c.depth, c.outstanding + c.theirs - c.slots)
    return c.depth


@dataclass(frozen=True, slots=True)
class CopyWait:
    """One copy of a model as admission's ``Retry-After`` sees it: its queue, the
    smoothed seconds a request holds one of its slots, and what is left of its load
    (0 when it is loaded, or when its load has not started)."""

    queue: CopyQueue
    service_s: float
    load_left_s: float = 0.0

    @property
    def rate(self) -> float:
        """Requests a second it serves once loaded: the daemon's slots where other
        replicas use it too (``copy_depth`` counts their queue), this replica's share
        where only it does."""
        slots = self.queue.slots if self.queue.theirs else self.queue.share
        return max(slots, 1) / max(self.service_s, 1e-3)


def drain_s(copies: Sequence[CopyWait], count: float) -> float:
    """Seconds until ``count`` of the requests queued at the copies have left for a
    slot, each copy serving at its own ``rate`` from the end of its load on (a copy
    being loaded joins when its load is done); at least the soonest load's end."""
    left, t, rate = float(count), 0.0, 0.0
    for c in sorted(copies, key=lambda c: c.load_left_s):
        joins = max(c.load_left_s, 0.0)
        if rate and left <= rate * (joins - t):
            break  # gone before this copy is ready
        left -= rate * (joins - t)
        t, rate = joins, rate + c.rate
    return t + max(left, 0.0) / rate if rate else 0.0


@dataclass(frozen=True, slots=True)
class Hint:
    """A refusal's ``Retry-After`` (whole seconds, 1 to 600) and the time it promised
    (``promised_at``: the next refusal's place in line comes after it)."""

    retry_after_s: float
    promised_at: float


def retry_hint(
    copies: Sequence[CopyWait],
    *,
    now: float,
    promised_at: float | None = None,
    replicas: int = 1,
    max_s: float = _MAX_RETRY_S,
) -> Hint:
    """``Retry-After`` for a request refused at the high-water mark: its place in a line
    behind the queue. The first refused request is told to come back when a seat first
    frees (the first request to leave the copies' queues for a slot); each one refused
    after it, one departure later than the one before (``promised_at``), at the rate
    every copy serves once loaded, so the retries come back spread at the pace the
    queue makes room, not all at once, nor each after the whole queue has drained
    (by then it has filled again and the retry waits it out twice). With ``replicas``
    refusing their own clients, each spaces its own by that many departures. No place
    is promised later than ``max_s`` from now (``ALB_RETRY_AFTER_MAX``: a client that
    will not wait longer, as the ``openai`` client past two minutes, would give up at
    once); past it, the refused are told ``max_s`` as they come. The live scheduler and
    the replay both answer with this."""
    room = now + drain_s(copies, 1)
    rate = sum(c.rate for c in copies)
    step = replicas / rate if rate else _MIN_RETRY_S
    at = room if promised_at is None else max(room, promised_at + step)
    at = min(at, now + max_s)
    # whole seconds, as Retry-After wants, at least one
    return Hint(float(max(math.ceil(at - now), _MIN_RETRY_S)), at)


#: Seconds a request is taken to hold a slot before one was measured for the model.
SERVICE_PRIOR_S = 1.0


def smooth_service(prev: float | None, held_s: float) -> float:
    """A copy's smoothed seconds per request after one more held a slot ``held_s``: the
    first measurement itself, then an exponential average (a fifth on the newest)."""
    return held_s if prev is None else 0.8 * prev + 0.2 * held_s


def service_estimate(own: float | None, model: Iterable[float | None]) -> float:
    """Seconds a request will hold a slot of one copy: its own measurement once it has
    one; before that, the mean of what the model's other copies measured (the same
    model serves at a like pace elsewhere: a prior of its own would make a new copy
    look slower, or faster, than the copy it relieves, and route a burst by the
    difference); ``SERVICE_PRIOR_S`` when no copy has served yet."""
    if own is not None:
        return own
    known = [s for s in model if s is not None]
    return sum(known) / len(known) if known else SERVICE_PRIOR_S
