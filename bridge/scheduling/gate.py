"""Admission: bounded per-model queues, parallel slots, fair order, Retry-After.

Theory of operation. Every (daemon, model) pair has a ``Gate`` with as many
slots as the daemon runs that model in parallel (``OLLAMA_NUM_PARALLEL``), so
Ollama never holds a request it cannot run, and a request for a loaded model
only ever waits for that model's own slots — never behind another model's
load. While the model is not ready (cold or loading) or every slot is busy,
requests wait in the gate's ``FairQueue``: one FIFO per session, served
round-robin, so one chatty session cannot starve the others. The scheduler refuses
a newcomer when the queue is at the high-water depth, with a Retry-After from
``queueing.retry_hint`` (pure). Waiters are futures; a cancelled waiter either leaves
the queue or, if a slot was already handed to it, hands the slot back.

Context: each waiter carries its ``Need``; the gate knows its runner's context
(``ctx``, ``auto``) and hands slots only to waiters that fit it, in fair order.
Waiters that do not fit stay queued; the scheduler sees them (``unfit``), sets
``hold`` (no new slots: the runner drains) and reloads it with a bigger context.
"""

from __future__ import annotations

import asyncio

from bridge.errors import BridgeError
from bridge.policy.numctx import Need
from bridge.policy.queueing import FairQueue, smooth_service


class Waiter:
    """One queued request: its future, its context need, when it was admitted
    (monotonic) and whether it is background work (a prefetch), which the driver
    serves after the requests of clients (``bridge.policy.step.drive_order``)."""

    __slots__ = ("background", "fut", "internal", "need", "since")

    def __init__(
        self,
        fut: asyncio.Future[None],
        need: Need | None,
        since: float,
        background: bool,
        internal: bool = False,
    ) -> None:
        self.fut = fut
        self.need = need
        self.since = since
        self.background = background
        #: The bridge's own waiter, not a client's (``Gate.internal``).
        self.internal = internal


class Gate:
    """Slots and the waiting queue of one model on one daemon."""

    __slots__ = (
        "_idle",
        "auto",
        "busy",
        "ctx",
        "error",
        "hold",
        "internal",
        "last_load_at",
        "peak",
        "queue",
        "ready",
        "service",
        "slots",
    )

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.busy = 0
        self.ready = False
        self.queue: FairQueue[Waiter] = FairQueue()
        self.error: BridgeError | None = None
        #: Smoothed seconds one request holds a slot here, None until one was served
        #: (``Residency.service_s`` reads it, or the model's other copies' before then).
        self.service: float | None = None
        #: Monotonic time the bridge's last load of this model ended.
        self.last_load_at = -1.0
        #: The runner's context (per sequence) and whether it was loaded without num_ctx.
        self.ctx = 0
        self.auto = False
        #: Draining for a reload: no new slots are handed out.
        self.hold = False
        self._idle: list[asyncio.Future[None]] = []
        #: Most client requests in flight or queued at once since ``take_peak`` last
        #: read it: the replica's demand (``bridge.coord``), which one instant would
        #: understate.
        self.peak = 0
        #: Queued waiters that are the bridge's own, not a client's: the waiter that
        #: drives an admin load, a load another replica wants, a copy's load. They make
        #: the driver load, but are no demand and no queue a client waits behind.
        self.internal = 0

    @property
    def depth(self) -> int:
        return len(self.queue)

    @property
    def outstanding(self) -> int:
        return self.busy + len(self.queue)

    @property
    def queued_clients(self) -> int:
        """Queued requests of clients (``depth`` without the bridge's own waiters)."""
        return len(self.queue) - self.internal

    @property
    def outstanding_clients(self) -> int:
        """Client requests in flight or queued (what admission and demand count)."""
        return self.busy + len(self.queue) - self.internal

    def fits(self, need: Need | None) -> bool:
        return need is None or need.fits(self.ctx, self.auto)

    def unfit(self) -> list[Need]:
        """Needs of queued requests the current runner cannot serve."""
        return [
            w.need
            for w in self.queue
            if w.need is not None and not w.need.fits(self.ctx, self.auto)
        ]

    def needs(self) -> list[Need]:
        return [w.need for w in self.queue if w.need is not None]

    def try_acquire(self, need: Need | None = None) -> bool:
        free = self.ready and not self.hold and self.busy < self.slots and not self.queue
        if free and self.fits(need):
            self.busy += 1
            self.peak = max(self.peak, self.busy)
            return True
        return False

    def take_peak(self) -> int:
        """The peak since the last call (then it starts again from now)."""
        now = self.outstanding_clients
        peak, self.peak = max(self.peak, now), now
        return peak

    async def wait(
        self,
        session: str,
        need: Need | None = None,
        *,
        since: float = 0.0,
        background: bool = False,
        weight: int = 1,
        internal: bool = False,
    ) -> None:
        """Queue until a slot is handed over; raises the load's error if it fails.
        ``since``: when the request was admitted; ``background``: a prefetch;
        ``weight``: the session's turns in the fair queue (a key's priority);
        ``internal``: the bridge's own waiter (``internal``), not counted as demand."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        item = Waiter(fut, need, since, background, internal)
        self.queue.push(session, item, weight)
        self.internal += internal
        self.peak = max(self.peak, self.outstanding_clients)
        # The gate may have opened between admission and now (the caller's task ran
        # later): hand out whatever is free, or this waiter would wait for nobody.
        self._dispatch()
        try:
            await fut
        except BaseException:
            if self.queue.remove(session, item):
                self.internal -= item.internal
            elif _granted(fut):
                self.release()
            raise

    def release(self, held_s: float | None = None) -> None:
        self.busy -= 1
        if held_s is not None:
            self.service = smooth_service(self.service, held_s)
        self._dispatch()
        if not self.busy:
            for fut in self._idle:
                if not fut.done():
                    fut.set_result(None)
            self._idle.clear()

    async def until_idle(self) -> None:
        """Return once no request holds a slot (at once when none does)."""
        if not self.busy:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle.append(fut)
        await fut

    def open(self, ctx: int | None = None, auto: bool | None = None) -> None:
        """The model is loaded (with ``ctx``/``auto`` when given): hand out slots."""
        if ctx is not None:
            self.ctx = ctx
        if auto is not None:
            self.auto = auto
        self.ready, self.error, self.hold = True, None, False
        self._dispatch()

    def resize(self, slots: int) -> None:
        """This replica's share of the daemon's slots changed (``bridge.coord``); a
        smaller share takes effect as requests in flight finish."""
        self.slots = max(slots, 1)
        self._dispatch()

    def close(self) -> None:
        """The model is gone from the daemon; queued requests wait for a new load."""
        self.ready = False

    def fail(self, error: BridgeError) -> None:
        """The load failed: every queued request gets the error."""
        self.ready, self.error, self.hold = False, error, False
        while self.queue:
            fut = self._pop().fut
            if not fut.done():
                fut.set_exception(error)

    def hand_back(self, error: BridgeError) -> int:
        """Every queued request gets ``error`` (to be placed again); the runner keeps
        serving those in flight. Returns how many were handed back."""
        n = 0
        while self.queue:
            fut = self._pop().fut
            if not fut.done():
                fut.set_exception(error)
                n += 1
        return n

    def _pop(self) -> Waiter:
        item = self.queue.pop()
        self.internal -= item.internal
        return item

    def _dispatch(self) -> None:
        while self.ready and not self.hold and self.busy < self.slots and self.queue:
            item = self.queue.pop_first(lambda w: self.fits(w.need))
            if item is None:
                return
            self.internal -= item.internal
            fut = item.fut
            if fut.done():
                continue
            self.busy += 1
            fut.set_result(None)


def _granted(fut: asyncio.Future[None]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None
