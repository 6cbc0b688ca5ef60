"""A background reader of bus topics: the lifecycle the bridge's consumers share.

``BusReader`` subscribes (as a member of ``group``), hands every batch to
:meth:`BusReader.consume`, and subscribes again after a failure: at once after a
``CommitFailed`` (the partition moved; its new owner resumes from the commit), after
a growing pause (0.5 s doubling to 10 s) when the bus is unavailable or the subclass
raised. ``ready`` is set while subscribed. The prefetch / warm-cache consumer
(``bridge.events.prefetch_consumer``) and the model-hint reader
(``bridge.events.hints``) are its subclasses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from common.tasks import cancel_and_wait
from ingest.bus import BusError, CommitFailed, Delivery, EventBus, Subscription

__all__ = ["BusReader"]

log = logging.getLogger(__name__)
_BACKOFF_MAX_S = 10.0


class BusReader:
    """Subclasses set what to read in ``__init__`` and implement :meth:`consume`."""

    def __init__(
        self,
        bus: EventBus,
        topics: Sequence[str],
        group: str,
        *,
        name: str,
        from_beginning: bool = True,
        max_records: int = 100,
    ) -> None:
        self._bus = bus
        self.topics = list(topics)
        self.group = group
        self._name = name
        self._from_beginning = from_beginning
        self._max_records = max_records
        #: Set while the member holds its partitions (tests wait for it).
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def consume(self, sub: Subscription, deliveries: list[Delivery]) -> None:
        """Handle one batch (possibly empty: called at least once a second)."""
        raise NotImplementedError

    def subscribed(self, held: bool) -> None:
        """Called when the subscription starts (True) and ends (False)."""

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name=self._name)

    async def aclose(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def run(self) -> None:
        backoff = 0.5
        subscribe = self._bus.subscribe
        while True:
            held = False
            try:
                async with subscribe(
                    self.topics, self.group, from_beginning=self._from_beginning
                ) as sub:
                    self.ready.set()
                    held = True
                    self.subscribed(True)
                    backoff = 0.5
                    while True:
                        await self.consume(sub, await sub.getmany(1.0, self._max_records))
            except CommitFailed as exc:  # rebalanced: the new owner resumes from the commit
                log.info("%s: %s", self._name, exc)
                continue
            except BusError as exc:
                log.warning("%s: bus unavailable (%s); retrying", self._name, exc)
            except Exception:  # a bug: keep reading, but say so
                log.exception("%s failed; subscribing again", self._name)
            finally:
                self.ready.clear()
                if held:
                    self.subscribed(False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
