"""Queueing, pure: ``FairQueue`` (round-robin over sessions, FIFO within one) and
``retry_after`` (the hint a refused request gets), used by the gates
(``bridge.scheduling.gate``) and the replay."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_MIN_RETRY_S = 1.0
_MAX_RETRY_S = 600.0


class FairQueue(Generic[T]):
    """Round-robin over sessions, FIFO within a session."""

    __slots__ = ("_by_session", "_len", "_order")

    def __init__(self) -> None:
        self._by_session: dict[str, deque[T]] = {}
        self._order: deque[str] = deque()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def push(self, session: str, item: T) -> None:
        q = self._by_session.get(session)
        if q is None:
            q = self._by_session[session] = deque()
            self._order.append(session)
        q.append(item)
        self._len += 1

    def pop(self) -> T:
        session = self._order.popleft()
        q = self._by_session[session]
        item = q.popleft()
        if q:
            self._order.append(session)
        else:
            del self._by_session[session]
        self._len -= 1
        return item

    def __iter__(self) -> Iterator[T]:
        for q in self._by_session.values():
            yield from q

    def pop_first(self, pred: Callable[[T], bool]) -> T | None:
        """The first session head (in round-robin order) that ``pred`` accepts."""
        for _ in range(len(self._order)):
            session = self._order[0]
            q = self._by_session[session]
            if pred(q[0]):
                self._order.popleft()
                item = q.popleft()
                if q:
                    self._order.append(session)
                else:
                    del self._by_session[session]
                self._len -= 1
                return item
            self._order.rotate(-1)
        return None

    def remove(self, session: str, item: T) -> bool:
        q = self._by_session.get(session)
        if q is None or item not in q:
            return False
        q.remove(item)
        self._len -= 1
        if not q:
            del self._by_session[session]
            self._order.remove(session)
        return True


def retry_after(
    depth: int,
    slots: int,
    *,
    load_remaining_s: float,
    service_s: float,
) -> float:
    """Seconds until a newcomer would plausibly be admitted.

    The queue drains at ``slots / service_s`` requests per second once the model
    is ready (``load_remaining_s`` from now; 0 when loaded). Clamped to
    [1, 600] s and rounded up to whole seconds, as Retry-After wants.
    """
    rate = max(slots, 1) / max(service_s, 1e-3)
    wait = max(load_remaining_s, 0.0) + depth / rate
    return float(min(max(math.ceil(wait), _MIN_RETRY_S), _MAX_RETRY_S))
