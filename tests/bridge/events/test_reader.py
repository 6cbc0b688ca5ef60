"""``bridge.events.reader.BusReader``: resubscribes after failures, at once after a lost commit,
after a growing pause when the bus is down; ``ready`` and ``subscribed`` follow it."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self

import pytest

from bridge.events.reader import BusReader
from ingest.bus import BusUnavailable, CommitFailed, Delivery, Subscription


class _Sub:
    def __init__(self, bus: _Bus) -> None:
        self._bus = bus

    async def __aenter__(self) -> Self:
        self._bus.attempts += 1
        if self._bus.down > 0:
            self._bus.down -= 1
            raise BusUnavailable("broker down")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def getmany(self, timeout_s: float, max_records: int = 500) -> list[Delivery]:
        await asyncio.sleep(0)
        return list(self._bus.batches.pop(0)) if self._bus.batches else []

    async def commit(self, delivery: Delivery | None = None) -> None:
        if self._bus.lose_commit:
            self._bus.lose_commit = False
            raise CommitFailed("partition moved")


class _Bus:
    def __init__(self, down: int, batches: list[list[Delivery]]) -> None:
        self.down = down
        self.batches = batches
        self.attempts = 0
        self.lose_commit = True

    def subscribe(self, topics: Any, group_id: str, *, from_beginning: bool = True) -> _Sub:
        return _Sub(self)


class _Reader(BusReader):
    def __init__(self, bus: Any) -> None:
        super().__init__(bus, ["t"], "g", name="test-reader")
        self.seen: list[int] = []
        self.states: list[bool] = []

    async def consume(self, sub: Subscription, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            self.seen.append(d.offset)
            await sub.commit(d)

    def subscribed(self, held: bool) -> None:
        self.states.append(held)


def _delivery(offset: int) -> Delivery:
    return Delivery("t", 0, offset, None, b"{}", 0)


@pytest.mark.timeout(10)
async def test_it_resubscribes_after_an_outage_and_a_lost_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    bus = _Bus(down=3, batches=[[_delivery(0)], [_delivery(1)]])
    reader = _Reader(bus)
    reader.start()
    try:
        while len(reader.seen) < 2:
            await real_sleep(0.001)
        assert reader.ready.is_set()
    finally:
        await reader.aclose()
    # the bus down three times: a growing pause (the zeros are the fake bus's own yields)
    assert [p for p in pauses if p > 0] == [0.5, 1.0, 2.0]
    # offset 0's commit failed: subscribed again at once (no pause), then offset 1
    assert bus.attempts == 5
    assert reader.seen == [0, 1]
    assert reader.states == [True, False, True, False]
    assert not reader.ready.is_set()
