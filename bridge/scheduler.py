"""The shell around the pure policies: route, admit, load, release.

``acquire`` places a request (``placement.place`` over a fleet snapshot), then
takes a slot at the model's ``Gate``: at once when the model is loaded and a
slot is free; otherwise it waits in the gate's fair queue — refused with 503
and Retry-After above the high-water mark — after making sure the bridge's own
single-flight load is running (``Loader``). The background loop refreshes the
fleet, opens or closes gates for models that appeared or vanished behind the
bridge's back, and (``bridge`` keep-alive policy) unloads models idle longer
than ``idle_unload_after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from bridge.admission import Gate, retry_after
from bridge.errors import BridgeError, Overloaded, Unavailable
from bridge.fleet import DaemonState, Fleet
from bridge.loader import Loader, LoadSpec
from bridge.metrics import Metrics
from bridge.placement import place
from bridge.settings import Settings
from bridge.upstream import Upstream


@dataclass(slots=True)
class Lease:
    """A slot on one daemon for one model, held while the request runs upstream."""

    daemon: DaemonState
    key: str
    gate: Gate
    cold: bool
    queue_ms: float
    load_ms: float
    acquired_at: float


@dataclass(slots=True)
class Ticket:
    """A place in a gate's queue: the model is cold, loading, or its slots are busy."""

    daemon: DaemonState
    key: str
    gate: Gate
    cold: bool
    started_at: float


class Scheduler:
    def __init__(
        self, settings: Settings, fleet: Fleet, upstream: Upstream, metrics: Metrics
    ) -> None:
        self._settings = settings
        self.fleet = fleet
        self._metrics = metrics
        self.gates: dict[tuple[str, str], Gate] = {}
        self._last_used: dict[tuple[str, str], float] = {}
        self.loader = Loader(
            fleet,
            upstream,
            metrics,
            load_timeout=settings.load_timeout,
            on_loaded=self._loaded,
            on_failed=self._failed,
            on_unloaded=self._unloaded,
        )
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        await self.fleet.refresh_all(force=True)
        self._reconcile()
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.loader.aclose()

    # --- admission -----------------------------------------------------------------
    def gate(self, daemon: str, key: str) -> Gate:
        gate = self.gates.get((daemon, key))
        if gate is None:
            d = self.fleet.get(daemon)
            gate = self.gates[(daemon, key)] = Gate(d.spec.parallel)
            gate.ready = key in d.loaded and not self.loader.loading(daemon, key)
            self._last_used.setdefault((daemon, key), time.monotonic())
        return gate

    def outstanding(self) -> dict[tuple[str, str], int]:
        return {op: g.outstanding for op, g in self.gates.items() if g.outstanding}

    def admit(self, key: str) -> Lease | Ticket:
        """Place the request and take a free slot at once (a ``Lease``), or say
        where it must wait (a ``Ticket``, with the load started if needed).
        Raises ``Unavailable`` (no daemon) or ``Overloaded`` (high-water mark)."""
        t0 = time.monotonic()
        where = place(self.fleet.snapshot(self.outstanding()), key)
        if where is None:
            self._metrics.rejections.labels(reason="no-daemon").inc()
            raise Unavailable(f"no daemon that serves {key} is answering", retry_after=5)
        d = self.fleet.get(where[0])
        gate = self.gate(d.name, key)
        self._last_used[(d.name, key)] = t0
        if gate.try_acquire():
            return Lease(d, key, gate, False, 0.0, 0.0, t0)
        if gate.depth >= self._settings.high_water_depth:
            self._metrics.rejections.labels(reason="high-water").inc()
            raise Overloaded(
                f"{key} is overloaded on {d.name}: {gate.depth} requests queued",
                retry_after=retry_after(
                    gate.depth,
                    gate.slots,
                    load_remaining_s=self.loader.remaining_s(d.name, key),
                    service_s=gate.service_s,
                ),
            )
        return Ticket(d, key, gate, not gate.ready, t0)

    async def wait(self, ticket: Ticket, session: str, spec: LoadSpec) -> Lease:
        """Queue at the ticket's gate (fairly, by session) until a slot is free."""
        d, key, gate = ticket.daemon, ticket.key, ticket.gate
        if not gate.ready:
            self.loader.ensure_loaded(d, key, spec, "request")
        depth = self._metrics.queue_depth.labels(daemon=d.name, model=key)
        depth.inc()
        try:
            await gate.wait(session)
        finally:
            depth.dec()
        now = time.monotonic()
        waited = now - ticket.started_at
        cold = ticket.cold or gate.last_load_at > ticket.started_at
        self._metrics.queue_wait.labels(model=key, cold=str(cold).lower()).observe(waited)
        self._last_used[(d.name, key)] = now
        ms = waited * 1000
        return Lease(d, key, gate, cold, ms, ms if cold else 0.0, now)

    async def acquire(self, key: str, session: str, spec: LoadSpec) -> Lease:
        got = self.admit(key)
        if isinstance(got, Lease):
            return got
        return await self.wait(got, session, spec)

    def release(self, lease: Lease) -> None:
        now = time.monotonic()
        self._last_used[(lease.daemon.name, lease.key)] = now
        lease.gate.release(now - lease.acquired_at)

    # --- loader callbacks -------------------------------------------------------------
    def _loaded(self, daemon: str, key: str) -> None:
        gate = self.gate(daemon, key)
        gate.last_load_at = time.monotonic()
        gate.open()

    def _failed(self, daemon: str, key: str, error: BridgeError) -> None:
        self.gate(daemon, key).fail(error)

    def _unloaded(self, daemon: str, key: str) -> None:
        gate = self.gate(daemon, key)
        d = self.fleet.get(daemon)
        if key not in d.loaded:
            gate.close()
        if gate.depth and not gate.ready:
            self.loader.ensure_loaded(d, key, LoadSpec(), "requeued")

    # --- background ----------------------------------------------------------------
    async def _refresh_loop(self) -> None:
        interval = self._settings.refresh_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.fleet.refresh_all()
                self._reconcile()
                self._unload_idle()
            except BridgeError:  # a daemon being down is recorded on its state
                continue

    def _reconcile(self) -> None:
        for d in self.fleet.daemons.values():
            self._metrics.daemon_up.labels(daemon=d.name).set(1 if d.up else 0)
            if not d.up:
                continue
            for key in d.loaded:
                self.gate(d.name, key)
        for (name, key), gate in self.gates.items():
            d = self.fleet.get(name)
            if not d.up or self.loader.loading(name, key):
                continue
            if key in d.loaded and not gate.ready:
                gate.open()
            elif key not in d.loaded and gate.ready:
                gate.close()
                if gate.depth:
                    self.loader.ensure_loaded(d, key, LoadSpec(), "reconcile")

    def _unload_idle(self) -> None:
        idle_after = self._settings.idle_unload_after
        if self._settings.keep_alive_policy != "bridge" or idle_after <= 0:
            return
        now = time.monotonic()
        for (name, key), gate in self.gates.items():
            last = self._last_used.get((name, key), now)
            if gate.ready and gate.outstanding == 0 and now - last >= idle_after:
                gate.close()
                self.loader.unload(self.fleet.get(name), key, "idle")

    def idle_expiry(self, daemon: str, key: str) -> float | None:
        """Monotonic time at which the bridge will unload the model (bridge policy)."""
        if self._settings.keep_alive_policy != "bridge" or self._settings.idle_unload_after <= 0:
            return None
        last = self._last_used.get((daemon, key))
        return None if last is None else last + self._settings.idle_unload_after
