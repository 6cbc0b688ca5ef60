"""The scheduler: route, admit, wait, release, on top of ``Residency`` (theory of operation).

``admit`` first looks for a free slot where ``route`` would send the request
anyway (the usual case: the model is loaded and a slot is free), without
building any views. Otherwise it freezes the fleet into ``placement.DaemonView``s
and asks ``placement.route`` where the request goes. ``Serve``: take a slot at the
model's ``Gate`` at once, or queue there (refused with 503 and Retry-After above
the high-water mark). ``Load``: queue at that daemon's gate and kick the
daemon's driver (``bridge.scheduling.driver``: plans and carries out loads and evictions,
one at a time per daemon). ``release`` hands the slot back and kicks the driver
only when requests wait on that daemon (an idle model may make room for them).

Module map: ``residency`` (gates, runners, pins, breakers; the snapshots the pure
policies read), ``driver`` (loads, evictions, explicit unloads), ``upkeep``
(reconciliation with ``/api/ps``, idle unloads, health checks), this module
(admission, pins and admin loads, the scheduler's lifecycle).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from bridge.coord import Coordinator, Failure
from bridge.errors import (
    BadRequest,
    BridgeError,
    ModelNotFound,
    Moved,
    Overloaded,
    Replaced,
    Unavailable,
)
from bridge.metrics import Metrics
from bridge.policy.cold import GONE, cold_cause
from bridge.policy.numctx import Need, openai_default_hint
from bridge.policy.placement import DaemonView, Load, Reject, ReuseOracle, route
from bridge.policy.queueing import CopyQueue, CopyWait, retry_hint
from bridge.policy.replicas import Backlog, replicate, worth_a_copy
from bridge.policy.sizing import ModelInfo
from bridge.scheduling.decisions import DecisionLog
from bridge.scheduling.driver import Driver
from bridge.scheduling.fleet import DaemonState, Fleet
from bridge.scheduling.gate import Gate
from bridge.scheduling.loader import LoadSpec
from bridge.scheduling.peers import Peers
from bridge.scheduling.residency import KeepAlive, Residency
from bridge.scheduling.upkeep import Upkeep
from bridge.settings import Settings
from bridge.upstream import Upstream
from bridge.wire import names

#: Placements one admin load goes through (a failed load re-places it, as for requests).
_MAX_PLACEMENTS = 4


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
    need: Need | None = None
    info: ModelInfo | None = None
    #: Placed by ``route`` over every daemon (not ``only`` one): a cold load's place
    #: may still be the first claimer's (``bridge.coord``).
    routed: bool = False
    #: Why it is cold (``bridge.policy.cold``; "" while it is not).
    cause: str = ""
    #: The bridge's own waiter (``admit(internal=True)``), not a client's request.
    internal: bool = False


class Scheduler(Residency):
    """Admission and lifecycle; the state and snapshots are ``Residency``'s."""

    def __init__(  # noqa: PLR0917
        self,
        settings: Settings,
        fleet: Fleet,
        upstream: Upstream,
        metrics: Metrics,
        decisions: DecisionLog,
        oracle: ReuseOracle | None = None,
        keep_alive: KeepAlive | None = None,
        coord: Coordinator | None = None,
    ) -> None:
        super().__init__(settings, fleet, upstream, metrics, decisions, oracle, keep_alive, coord)
        self.driver = Driver(self)
        self.upkeep = Upkeep(self, self)
        #: Models this replica has seen ready (``cold_cause``: a first load or not).
        self.seen_ready: set[str] = set()
        #: Per model, when the last request refused at the high-water mark was told to
        #: come back (``queueing.retry_hint``: the next one's place in line is after it).
        self.promised: dict[str, float] = {}
        self.peers = Peers(self.coord, self)
        self.loader.on_changed = self.coord.changed
        self.loader.quiesce = self.coord.quiesce

    # --- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        await self.fleet.refresh_all(force=True)
        await self.fleet.read_local_memory()
        await self.coord.start(self.peers)
        self.upkeep.reconcile()
        self.upkeep.start()
        for model, daemon in self._settings.pins():
            self.pins.add((names.key(model), daemon))
        for model, daemon in self._settings.pins():
            self.loader.spawn(self._pin_quietly(model, daemon))

    async def aclose(self) -> None:
        await self.coord.aclose()  # hands this replica's daemons to the others first
        await self.upkeep.aclose()
        await self.loader.aclose()
        await self.fleet.aclose()

    # --- admission -----------------------------------------------------------------
    def admit(
        self,
        key: str,
        need: Need | None = None,
        info: ModelInfo | None = None,
        *,
        exclude: frozenset[str] = frozenset(),
        only: str | None = None,
        internal: bool = False,
    ) -> Lease | Ticket:
        """Place the request and take a free slot at once (a ``Lease``), or say where
        it must wait (a ``Ticket``; a load is set in motion). Raises ``Unavailable``
        (no daemon), ``Overloaded`` (high-water mark) or ``BadRequest`` (cannot fit).
        ``internal``: the bridge's own waiter for a load (an admin load, one another
        replica wants, a copy's, a prefetch), no client's request: never refused at
        the high-water mark, which the queue it loads for may well be past."""
        t0 = time.monotonic()
        need = need if need is not None else Need(0)
        lease = self._free_slot(key, need, exclude, only, t0)
        if lease is not None:
            return lease
        # Every daemon is seen (an excluded one as not answering): whether a request can
        # never fit is a question about all of them, not about the ones left to try.
        views = [
            self.view(d, t0) if d.name not in exclude else replace(self.view(d, t0), up=False)
            for d in self.fleet.daemons.values()
            if only is None or d.name == only
        ]

        def size_of(v: DaemonView) -> int:
            if info is None:
                return 0
            return self.target(info, self.fleet.get(v.name), [need]).size

        where = route(views, key, need, size_of, self.oracle)
        if where is None:
            self._metrics.rejections.labels(reason="no-daemon").inc()
            raise Unavailable(f"no daemon that serves {key} is answering", retry_after=5)
        if isinstance(where, Reject):
            raise self._reject(key, where, need)
        d = self.fleet.get(where.daemon)
        gate = self.gate(d.name, key)
        self.used_at[(d.name, key)] = t0
        if gate.try_acquire(need):
            self._metrics.num_ctx_choice("fits-loaded").inc()
            self.seen_ready.add(key)
            return Lease(d, key, gate, False, 0.0, 0.0, t0)
        depth = self.fleet_depth(d, key, gate)
        if not internal and depth >= self._settings.high_water_depth:
            self._metrics.rejections.labels(reason="high-water").inc()
            raise Overloaded(
                f"{key} is overloaded on {d.name}: {depth} requests queued",
                retry_after=self._retry_after(key),
            )
        if isinstance(where, Load):
            choice = "reload" if where.reload else "load"
            self._metrics.num_ctx_choices.labels(choice=choice).inc()
        elif gate.ready and gate.fits(need):
            self._metrics.num_ctx_choices.labels(choice="fits-loaded").inc()
            if gate.slots < d.spec.parallel:
                self.coord.nudge()  # waits at this replica's share: re-divide soon
        cold = not (gate.ready and gate.fits(need))
        ticket = Ticket(
            d, key, gate, cold, t0, need, info, isinstance(where, Load) and only is None
        )
        ticket.internal = internal
        if cold:
            known = key in self.seen_ready
            ticket.cause = cold_cause(views, key, need, daemon=d.name, known=known)
        if only is None and info is not None and self._settings.replication:
            self._replicate(key, need, info, t0)
        return ticket

    def _retry_after(self, key: str) -> float:
        """Retry-After at the high-water mark: the refused request's place in line
        behind every copy's queue (``queueing.retry_hint``), each copy at its own slots
        per service time from the end of its load on. With other replicas, a copy's
        queue is the whole fleet's: this replica's requests and the others'
        (``Coordinator.others``) beyond the daemon's slots, drained by all of them
        (this replica's own queue when that is longer)."""
        hint = retry_hint(
            [
                CopyWait(
                    CopyQueue(
                        g.queued_clients,
                        g.outstanding_clients,
                        g.slots,
                        d.spec.parallel,
                        self.coord.others(d.name, key),
                    ),
                    self.service_s(d.name, key),
                    self.loader.remaining_s(d.name, key),
                )
                for d, g in self.copies(key)
            ],
            now=time.monotonic(),
            promised_at=self.promised.get(key),
            replicas=self.coord.replicas,
            max_s=self._settings.retry_after_max,
        )
        self.promised[key] = hint.promised_at
        return hint.retry_after_s

    def _replicate(self, key: str, need: Need, info: ModelInfo, now: float) -> None:
        """A request waits for ``key``: load a copy elsewhere when the expected wait is
        longer than a load (``bridge.policy.replicas.replicate``)."""
        copies = self.copies(key)
        backlogs = [
            Backlog(d.name, g.depth, g.slots, self.service_s(d.name, key)) for d, g in copies
        ]
        load_s = self.loader.load_seconds(key, info.file_size)
        cap = self._settings.replica_cap(key) or len(self.fleet.daemons)
        if not worth_a_copy(backlogs, load_s=load_s, max_copies=cap):
            return  # the usual case: no daemon needs to be looked at
        views = [self.view(d, now) for d in self.fleet.daemons.values()]

        def size_of(v: DaemonView) -> int:
            return self.target(info, self.fleet.get(v.name), [need]).size

        decision = replicate(
            views,
            key,
            backlogs,
            size_of=size_of,
            oracle=self.oracle,
            load_s=load_s,
            max_copies=cap,
        )
        if decision is None:
            return
        self.replicas.add((decision.daemon, key))
        self._metrics.replicas.labels(action="replicate").inc()
        self.decisions.record(
            "replicate",
            key,
            decision.daemon,
            f"expected wait {decision.wait_s:.1f}s > load {decision.load_s:.1f}s",
            wait_s=round(decision.wait_s, 3),
            load_s=round(decision.load_s, 3),
            copies=decision.copies,
            queued=decision.queued,
            evicts=list(decision.plan.victims),
            value_lost=round(decision.plan.value_lost, 6),
        )
        self.copying.add((decision.daemon, key))
        self.loader.spawn(self._load_copy(key, need, info, decision.daemon))

    async def _load_copy(self, key: str, need: Need, info: ModelInfo, daemon: str) -> None:
        """The copy's load: a waiter at its gate (like a client's, so the driver loads
        it in turn), given back as soon as the copy is ready."""
        try:
            for _ in range(_MAX_PLACEMENTS):
                got = self.admit(key, need, info, only=daemon, internal=True)
                try:
                    lease = got if isinstance(got, Lease) else await self.wait(got, "alb-replica")
                    break
                except Moved:  # its queue was handed back to be placed again: wait on
                    continue
            else:
                raise Unavailable(f"the copy of {key} on {daemon} kept being moved")
        except BridgeError as exc:
            self.replicas.discard((daemon, key))
            self._metrics.replicas.labels(action="replicate-failed").inc()
            self.decisions.record("replicate", key, daemon, "failed", error=exc.message)
            return
        finally:
            self.copying.discard((daemon, key))
        self.release(lease, used=False)

    def _free_slot(
        self, key: str, need: Need, exclude: frozenset[str], only: str | None, now: float
    ) -> Lease | None:
        """The fast path: a free slot where ``route`` would send the request anyway,
        found without freezing the fleet into views; None: ask ``route``.

        ``route`` serves a request from the daemon with the fewest outstanding
        requests among those whose runner of the model fits it. Every such daemon
        holds the model (loaded, or loading), so if the holder with the fewest
        outstanding requests has a free slot that fits, ``route`` picks it too."""
        holders = [
            d
            for d in self.fleet.daemons.values()
            if (key in d.loaded or (d.name, key) in self.targets)
            and d.name not in exclude
            and (only is None or d.name == only)
            and self.available(d)
        ]
        if not holders:
            return None
        d = holders[0]
        if len(holders) > 1:
            d = min(holders, key=lambda h: (self.outstanding(h.name), h.name))
        gate = self.gates.get((d.name, key))
        if gate is None or not gate.try_acquire(need):
            return None
        self.used_at[(d.name, key)] = now
        self._metrics.num_ctx_choice("fits-loaded").inc()
        self.seen_ready.add(key)
        return Lease(d, key, gate, False, 0.0, 0.0, now)

    def _reject(self, key: str, where: Reject, need: Need) -> BridgeError:
        self._metrics.rejections.labels(reason="no-room").inc()
        self._metrics.num_ctx_choices.labels(choice="rejected").inc()
        self.decisions.record(
            "reject", key, "", where.reason, status=where.status, need=need.tokens, **where.inputs
        )
        if where.status == 400:
            budgets = where.inputs.get("budgets")
            if need.auto and isinstance(budgets, dict) and budgets:
                # /v1 cannot ask for less context: say why, and what would help.
                largest = max(budgets, key=lambda n: budgets[n] or 0)
                hint = openai_default_hint(self.daemon_default(self.fleet.get(largest)))
                return BadRequest(f"{where.reason}. {hint}")
            return BadRequest(where.reason)
        return Unavailable(where.reason, retry_after=where.retry_after or 30)

    async def wait(
        self,
        ticket: Ticket,
        session: str,
        spec: LoadSpec | None = None,
        *,
        background: bool = False,
        weight: int = 1,
    ) -> Lease:
        """Queue at the ticket's gate (fairly, by session, ``weight`` turns at a time)
        until a slot is free; ``background``: a prefetch, whose load comes after those
        clients wait for."""
        if ticket.routed and not background:
            got = await self._follow_claim(ticket)
            if isinstance(got, Lease):
                return got
            ticket = got
        d, key, gate = ticket.daemon, ticket.key, ticket.gate
        depth = self._metrics.queue_depth.labels(daemon=d.name, model=key)
        depth.inc()
        try:
            if not gate.ready or not gate.fits(ticket.need):
                self.kick(d.name)  # the driver runs after the waiter is queued
            await gate.wait(
                session,
                ticket.need,
                since=ticket.started_at,
                background=background,
                weight=weight,
                internal=ticket.internal,
            )
        finally:
            depth.dec()
        now = time.monotonic()
        waited = now - ticket.started_at
        cold = ticket.cold or gate.last_load_at > ticket.started_at
        if not (background or ticket.internal):  # a client's request, not the bridge's own
            self._metrics.queue_wait.labels(model=key, cold=str(cold).lower()).observe(waited)
            if cold:
                # Not cold on arrival: the runner it queued for was replaced while it waited.
                self._metrics.cold_starts.labels(cause=ticket.cause or GONE).inc()
        self.seen_ready.add(key)
        self.used_at[(d.name, key)] = now
        ms = waited * 1000
        return Lease(d, key, gate, cold, ms, ms if cold else 0.0, now)

    async def _follow_claim(self, ticket: Ticket) -> Lease | Ticket:
        """A load here was chosen for a model no daemon holds: with other replicas, it
        goes where the first one to claim the model put it (one load, not one per
        replica). The claimed daemon must still be up and serve the model."""
        key, here = ticket.key, ticket.daemon.name
        winner = await self.coord.claim(key, here)
        if winner == here or winner not in self.fleet.daemons:
            return ticket
        there = self.fleet.get(winner)
        if not self.available(there) or (key not in there.catalog and key not in there.loaded):
            return ticket
        self.decisions.record("route", key, winner, "claimed-by-another-replica", chosen=here)
        return self.admit(key, ticket.need, ticket.info, only=winner)

    async def acquire(
        self, key: str, session: str, need: Need | None = None, info: ModelInfo | None = None
    ) -> Lease:
        got = self.admit(key, need, info)
        if isinstance(got, Lease):
            return got
        return await self.wait(got, session)

    def release(self, lease: Lease, *, used: bool = True) -> None:
        now = time.monotonic()
        if used:
            self.used_at[(lease.daemon.name, lease.key)] = now
        gate = lease.gate
        gate.release(now - lease.acquired_at if used else None)
        # The driver only acts on queued requests (a load, or a reload to drain for):
        # a model going idle matters when requests wait on this daemon.
        if gate.hold or (
            (gate.outstanding == 0 or (gate.depth and not gate.busy))
            and self._has_waiters(lease.daemon.name)
        ):
            self.kick(lease.daemon.name)

    def _has_waiters(self, daemon: str) -> bool:
        return any(g.depth for g in self.gates_of.get(daemon, {}).values())

    def report_failure(self, d: DaemonState, why: str) -> None:
        """A request to ``d`` failed in transport: count it and re-check the daemon."""
        if self.breakers[d.name].failure(time.monotonic(), why):
            self.circuit_opened(d, why)
        self.loader.spawn(self._recheck(d))

    async def _recheck(self, d: DaemonState) -> None:
        await self.fleet.refresh_ps(d)
        self.upkeep.reconcile()

    # --- the other replicas (bridge.scheduling.peers) -----------------------------------
    async def recheck(self, daemon: str) -> None:
        """Read ``daemon``'s ``/api/ps`` and follow it (another replica changed it)."""
        d = self.fleet.get(daemon)
        try:
            await self._recheck(d)
        except BridgeError:
            return  # a daemon being down is recorded on its state
        self.kick(daemon)

    def spawn_task(self, coro: object) -> None:
        self.loader.spawn(coro)

    def fail_waiters(self, failure: Failure) -> None:
        """The owner could not load what this replica's requests wait for there."""
        gate = self.gates.get((failure.daemon, failure.model))
        if gate is None or gate.ready or not gate.depth:
            return
        d = self.fleet.get(failure.daemon)
        why = f"{failure.daemon}'s owner: {failure.message}"
        err: BridgeError
        if failure.status == 400:
            err = BadRequest(why)
        elif self.elsewhere(d, failure.model):
            err = Replaced(why, retry_after=1)
        else:
            err = Unavailable(why, retry_after=failure.retry_after or 5)
        gate.fail(err)

    # --- the driver -----------------------------------------------------------------------
    def kick(self, daemon: str) -> None:
        """Ask ``daemon``'s driver to look for work (starts it when idle)."""
        self.driver.kick(daemon)

    async def unload_model(
        self, key: str, daemon: str | None, reason: str, *, force: bool = False
    ) -> list[str]:
        """Unload ``key`` (from ``daemon`` or everywhere) once its requests finished;
        returns the daemons it left. ``Conflict`` for a pinned model unless ``force``."""
        return await self.driver.unload_model(key, daemon, reason, force=force)

    # --- pins and admin loads -----------------------------------------------------------
    async def pin(self, model: str, daemon: str | None, num_ctx: int | None) -> str:
        """Pin ``model`` (on ``daemon``, else wherever placement puts it) and load it
        there; returns the daemon. Raises the bridge's error when it cannot be loaded
        (the pin stays: a later request or restart loads it)."""
        key = names.key(model)
        self.pins.add((key, daemon))
        self.coord.admin("pin", key, daemon)  # every replica keeps the pins
        self.decisions.record("pin", key, daemon or "", "pinned", num_ctx=num_ctx)
        return await self.load_model(key, daemon, num_ctx)

    def unpin(self, key: str, daemon: str | None) -> None:
        """Drop the pin of ``key`` (on ``daemon``; None: every pin of it), everywhere."""
        self.pins.discard((key, daemon))
        if daemon is None:
            self.pins -= {p for p in self.pins if p[0] == key}
        self.coord.admin("unpin", key, daemon)
        self.decisions.record("pin", key, daemon or "", "unpinned")

    async def load_model(self, key: str, daemon: str | None, num_ctx: int | None) -> str:
        """Make sure ``key`` is loaded (on ``daemon``) with at least ``num_ctx``."""
        tokens = num_ctx or self.limits.num_ctx_min
        return await self.load_for(key, daemon, Need(tokens, client_num_ctx=num_ctx))

    async def load_for(self, key: str, daemon: str | None, need: Need) -> str:
        """Make sure ``key`` is loaded (on ``daemon``) for ``need``: an admin load, or a
        load another replica wants on a daemon this one owns (``bridge.coord``)."""
        if not await self.fleet.ensure_known(key):
            raise ModelNotFound(f"model '{key}' not found")
        info = await self.fleet.model_info(key)
        for attempt in range(_MAX_PLACEMENTS):
            got = self.admit(key, need, info, only=daemon, internal=True)
            try:
                lease = got if isinstance(got, Lease) else await self.wait(got, "alb:admin")
            except Replaced:  # its load failed and taught placement something: again
                if attempt == _MAX_PLACEMENTS - 1:
                    raise
                continue
            self.release(lease, used=False)
            return lease.daemon.name
        raise AssertionError("unreachable")

    async def _pin_quietly(self, model: str, daemon: str | None) -> None:
        """A pin from configuration: failures are decision records, not crashes."""
        try:
            await self.pin(model, daemon, None)
        except BridgeError as exc:
            self.decisions.record(
                "pin", names.key(model), daemon or "", "load-failed", error=exc.message
            )
