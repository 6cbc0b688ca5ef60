"""The shell around the pure policies: route, admit, load, release (theory of operation).

``admit`` freezes the fleet into ``placement.DaemonView``s and asks
``placement.route`` where the request goes. ``Serve``: take a slot at the
model's ``Gate`` at once, or queue there (refused with 503 and Retry-After above
the high-water mark). ``Load``: queue at that daemon's gate and kick the
daemon's *driver*.

One driver task per daemon carries out plans, one operation at a time (Ollama
loads one model at a time per daemon too): it finds a gate whose waiters need
a load (a cold model, or a runner whose context is too small, drained first),
asks ``placement.plan_room`` on a fresh snapshot which idle runners to unload,
unloads them (``keep_alive: 0``, confirmed with ``/api/ps``), then loads with the
chosen ``num_ctx``. When nothing can be freed the waiters stay queued; every
release that leaves a model idle, every unload and every refresh kicks the
driver again. Victims' gates are closed before the first await, so no request
can reach a runner that is being evicted.

Background (``upkeep``): the refresh loop reconciles with ``/api/ps`` (models
loaded or unloaded behind the bridge's back), re-places the queued requests of a
daemon that stopped answering, and unloads idle models (``bridge`` policy); the
health loop probes each daemon through the generate path and drives its
circuit breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

from bridge import names
from bridge.admission import Gate, retry_after
from bridge.decisions import DecisionLog
from bridge.errors import (
    BadRequest,
    BridgeError,
    Conflict,
    LoadFailed,
    Overloaded,
    Replaced,
    Unavailable,
)
from bridge.fleet import DaemonState, Fleet
from bridge.health import Breaker
from bridge.loader import Loader, LoadSpec
from bridge.memory import ModelInfo, SizeBook
from bridge.metrics import Metrics
from bridge.numctx import Calibrator, Limits, Need, bucket
from bridge.placement import (
    NEVER,
    DaemonView,
    Load,
    RecencyOracle,
    Reject,
    ReuseOracle,
    RoomPlan,
    RunnerView,
    eviction_value,
    plan_room,
    route,
)
from bridge.settings import Settings
from bridge.upstream import Upstream

GIB = 1024**3


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


@dataclass(frozen=True, slots=True)
class Target:
    """What a load asks for: per-sequence context, auto (no num_ctx), bytes."""

    ctx: int
    auto: bool
    size: int


def vram_tier_ctx(capacity: int | None) -> int:
    """Ollama's default num_ctx for a daemon of ``capacity`` bytes (routes.go ``Serve``)."""
    if capacity is None:
        return 4096
    return 262144 if capacity >= 47 * GIB else 32768 if capacity >= 23 * GIB else 4096


class Scheduler:
    def __init__(  # noqa: PLR0917
        self,
        settings: Settings,
        fleet: Fleet,
        upstream: Upstream,
        metrics: Metrics,
        decisions: DecisionLog,
        oracle: ReuseOracle | None = None,
    ) -> None:
        self._settings = settings
        self.fleet = fleet
        self._upstream = upstream
        self._metrics = metrics
        self.decisions = decisions
        self.oracle: ReuseOracle = oracle or RecencyOracle()
        self.gates: dict[tuple[str, str], Gate] = {}
        self._last_used: dict[tuple[str, str], float] = {}
        self.loader = Loader(fleet, upstream, metrics, load_timeout=settings.load_timeout)
        self.sizes = SizeBook()
        self.calibrator = Calibrator(settings.chars_per_token)
        self.limits = Limits(
            settings.bucket_list(),
            settings.num_ctx_min,
            settings.num_ctx_max,
            settings.num_predict_default,
            settings.image_tokens,
        )
        self.breakers = {
            name: Breaker(settings.breaker_failures, settings.breaker_cooldown)
            for name in fleet.daemons
        }
        self.pins: set[tuple[str, str | None]] = set()
        #: (daemon, model) with a bridge load/unload in progress: reconcile keeps off.
        self._ops: set[tuple[str, str]] = set()
        self._targets: dict[tuple[str, str], Target] = {}
        #: Context an auto (no num_ctx) load got, per (daemon, model), from /api/ps.
        self._auto_ctx: dict[tuple[str, str], int] = {}
        self._dirty: set[str] = set()
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._was_up: dict[str, bool] = {}

    # --- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        from bridge import upkeep  # noqa: PLC0415  (upkeep imports this module)

        await self.fleet.refresh_all(force=True)
        await self.fleet.read_local_memory()
        upkeep.reconcile(self)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(upkeep.refresh_loop(self)),
            loop.create_task(upkeep.health_loop(self)),
        ]
        for model, daemon in self._settings.pins():
            self.pins.add((names.key(model), daemon))
        for model, daemon in self._settings.pins():
            self.loader.spawn(upkeep.pin_quietly(self, model, daemon))

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.loader.aclose()

    # --- queries -------------------------------------------------------------------
    def gate(self, daemon: str, key: str) -> Gate:
        gate = self.gates.get((daemon, key))
        if gate is None:
            d = self.fleet.get(daemon)
            gate = self.gates[(daemon, key)] = Gate(d.spec.parallel)
            row = d.loaded.get(key)
            if row is not None and (daemon, key) not in self._ops:
                gate.ready = True
                gate.ctx = int(row.get("context_length") or 0)
            self._last_used.setdefault((daemon, key), time.monotonic())
        return gate

    def available(self, d: DaemonState) -> bool:
        return d.up and self.breakers[d.name].allows_traffic(time.monotonic())

    def pinned(self, daemon: str, key: str) -> bool:
        return (key, daemon) in self.pins or (key, None) in self.pins

    def busy_op(self, daemon: str, key: str) -> bool:
        return (daemon, key) in self._ops

    def parallel(self, d: DaemonState, info: ModelInfo | None) -> int:
        return 1 if info is not None and info.embedding_only else d.spec.parallel

    def target(self, info: ModelInfo, d: DaemonState, needs: list[Need]) -> Target:
        """The runner a load for ``needs`` asks for on ``d``."""
        par = self.parallel(d, info)
        default = self._auto_ctx.get((d.name, info.key)) or vram_tier_ctx(d.capacity)
        if info.context_length:
            default = min(default, info.context_length)
        tokens = max((n.tokens for n in needs), default=self.limits.num_ctx_min)
        if any(n.auto for n in needs) or (
            self._settings.num_ctx_prefer_default and tokens <= default
        ):
            return Target(default, True, self.sizes.size(info, default, par))
        ctx = bucket(tokens, self.limits.buckets, info.context_length)
        return Target(ctx, False, self.sizes.size(info, ctx, par))

    def view(self, d: DaemonState, now: float | None = None) -> DaemonView:
        now = time.monotonic() if now is None else now
        runners: dict[str, RunnerView] = {}
        for key, row in d.loaded.items():
            gate = self.gates.get((d.name, key))
            size = int(row.get("size") or 0)
            runners[key] = RunnerView(
                key=key,
                size=size,
                ctx=gate.ctx
                if gate is not None and gate.ready
                else int(row.get("context_length") or 0),
                auto=gate.auto if gate is not None else False,
                busy=gate is not None and gate.outstanding > 0,
                pinned=self.pinned(d.name, key),
                idle_s=now - self._last_used.get((d.name, key), now),
                reload_s=self.loader.load_seconds(key, size),
                loading=(d.name, key) in self._ops,
            )
        for (name, key), t in self._targets.items():
            if name == d.name and key not in runners:
                runners[key] = RunnerView(key, t.size, t.ctx, t.auto, True, False, 0.0, 1.0, True)
        gates = [(k, g) for (n, k), g in self.gates.items() if n == d.name]
        pending = frozenset(
            k for k, g in gates if not g.ready and g.depth and (d.name, k) not in self._ops
        )
        return DaemonView(
            name=d.name,
            up=self.available(d),
            models=frozenset(d.catalog),
            runners=runners,
            budget=self.fleet.budget(d, self._settings.headroom),
            max_loaded=d.spec.max_loaded,
            outstanding=sum(g.outstanding for _, g in gates),
            pending=pending,
            parallel=d.spec.parallel,
        )

    def value_fn(self, daemon: str) -> Any:
        return lambda r: eviction_value(self.oracle, daemon, r)

    # --- admission -----------------------------------------------------------------
    def admit(
        self,
        key: str,
        need: Need | None = None,
        info: ModelInfo | None = None,
        *,
        exclude: frozenset[str] = frozenset(),
        only: str | None = None,
    ) -> Lease | Ticket:
        """Place the request and take a free slot at once (a ``Lease``), or say where
        it must wait (a ``Ticket``; a load is set in motion). Raises ``Unavailable``
        (no daemon), ``Overloaded`` (high-water mark) or ``BadRequest`` (cannot fit)."""
        t0 = time.monotonic()
        need = need if need is not None else Need(0)
        views = [
            self.view(d, t0)
            for d in self.fleet.daemons.values()
            if d.name not in exclude and (only is None or d.name == only)
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
        self._last_used[(d.name, key)] = t0
        if gate.try_acquire(need):
            self._metrics.num_ctx_choices.labels(choice="fits-loaded").inc()
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
        if isinstance(where, Load):
            choice = "reload" if where.reload else "load"
            self._metrics.num_ctx_choices.labels(choice=choice).inc()
        elif gate.ready and gate.fits(need):
            self._metrics.num_ctx_choices.labels(choice="fits-loaded").inc()
        return Ticket(d, key, gate, not (gate.ready and gate.fits(need)), t0, need)

    def _reject(self, key: str, where: Reject, need: Need) -> BridgeError:
        self._metrics.rejections.labels(reason="no-room").inc()
        self._metrics.num_ctx_choices.labels(choice="rejected").inc()
        self.decisions.record(
            "reject", key, "", where.reason, status=where.status, need=need.tokens, **where.inputs
        )
        if where.status == 400:
            return BadRequest(where.reason)
        return Unavailable(where.reason, retry_after=30)

    async def wait(self, ticket: Ticket, session: str, spec: LoadSpec | None = None) -> Lease:
        """Queue at the ticket's gate (fairly, by session) until a slot is free."""
        d, key, gate = ticket.daemon, ticket.key, ticket.gate
        depth = self._metrics.queue_depth.labels(daemon=d.name, model=key)
        depth.inc()
        try:
            if not gate.ready or not gate.fits(ticket.need):
                self.kick(d.name)  # the driver runs after the waiter is queued
            await gate.wait(session, ticket.need)
        finally:
            depth.dec()
        now = time.monotonic()
        waited = now - ticket.started_at
        cold = ticket.cold or gate.last_load_at > ticket.started_at
        self._metrics.queue_wait.labels(model=key, cold=str(cold).lower()).observe(waited)
        self._last_used[(d.name, key)] = now
        ms = waited * 1000
        return Lease(d, key, gate, cold, ms, ms if cold else 0.0, now)

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
            self._last_used[(lease.daemon.name, lease.key)] = now
        gate = lease.gate
        gate.release(now - lease.acquired_at if used else None)
        if gate.outstanding == 0 or gate.hold or (gate.depth and not gate.busy):
            self.kick(lease.daemon.name)

    def report_failure(self, d: DaemonState, why: str) -> None:
        """A request to ``d`` failed in transport: count it and re-check the daemon."""
        if self.breakers[d.name].failure(time.monotonic(), why):
            self.circuit_opened(d, why)
        self.loader.spawn(self._recheck(d))

    async def _recheck(self, d: DaemonState) -> None:
        from bridge import upkeep  # noqa: PLC0415

        await self.fleet.refresh_ps(d)
        upkeep.reconcile(self)

    def circuit_opened(self, d: DaemonState, why: str) -> None:
        self._metrics.breaker_open.labels(daemon=d.name).set(1)
        self.decisions.record("health", "", d.name, "circuit-opened", error=why)
        self.replace_waiters(d, f"daemon {d.name} is failing: {why}")

    def replace_waiters(self, d: DaemonState, why: str) -> None:
        """Hand every request queued on ``d`` back to be placed elsewhere."""
        for (name, _key), gate in self.gates.items():
            if name == d.name and gate.depth:
                gate.fail(Replaced(why, retry_after=1))

    # --- the per-daemon driver ----------------------------------------------------------
    def kick(self, daemon: str) -> None:
        """Ask ``daemon``'s driver to look for work (starts it when idle)."""
        self._dirty.add(daemon)
        if daemon not in self._drivers:
            self._drivers[daemon] = self.loader.spawn(self._drive(daemon))

    async def _drive(self, name: str) -> None:
        try:
            while name in self._dirty:
                self._dirty.discard(name)
                if await self._step(self.fleet.get(name)):
                    self._dirty.add(name)
        finally:
            self._drivers.pop(name, None)

    async def _step(self, d: DaemonState) -> bool:
        """Carry out at most one load (with its evictions); True when one ran."""
        if not self.available(d):
            return False
        for (name, key), gate in list(self.gates.items()):
            if name != d.name or (name, key) in self._ops:
                continue
            reload = gate.ready
            if not reload and gate.depth:
                needs = gate.needs()
            elif reload and gate.unfit():
                gate.hold = True  # drain: no new slots for the runner being replaced
                if gate.busy:
                    continue
                needs = gate.needs()
            else:
                continue
            info = await self.fleet.model_info(key)
            if info is None:
                gate.fail(LoadFailed(f"no daemon can describe {key} (/api/show failed)"))
                continue
            target = self.target(info, d, needs)
            plan = plan_room(self.view(d), key, target.size, self.value_fn(d.name))
            if plan is NEVER:
                budget = self.fleet.budget(d, self._settings.headroom)
                why = (
                    f"{key} with num_ctx {target.ctx} needs about {target.size / GIB:.1f} GiB; "
                    f"{d.name} can plan for {(budget or 0) / GIB:.1f} GiB besides pinned models"
                )
                self.decisions.record(
                    "reject", key, d.name, why, size=target.size, num_ctx=target.ctx
                )
                gate.hold = False
                err = BadRequest(why)
                if reload:
                    for fut, n in list(gate.queue):
                        if n is not None and not gate.fits(n) and not fut.done():
                            fut.set_exception(err)
                    gate.open()
                else:
                    gate.fail(err)
                continue
            if plan is None:
                continue  # busy runners hold the room: wait for a release
            assert isinstance(plan, RoomPlan)
            await self._execute(d, key, gate, target, plan, needs)
            return True
        return False

    async def _execute(  # noqa: PLR0917
        self,
        d: DaemonState,
        key: str,
        gate: Gate,
        target: Target,
        plan: RoomPlan,
        needs: list[Need],
    ) -> None:
        now = time.monotonic()
        view = self.view(d, now)
        for v in plan.victims:
            self.gate(d.name, v).close()
            self._ops.add((d.name, v))
        self._ops.add((d.name, key))
        self._targets[(d.name, key)] = target
        reloading = gate.ready
        old_ctx = gate.ctx
        gate.close()
        try:
            for v in plan.victims:
                r = view.runners[v]
                self.decisions.record(
                    "evict",
                    v,
                    d.name,
                    f"room for {key}",
                    size=r.size,
                    idle_s=round(r.idle_s, 3),
                    reload_s=round(r.reload_s, 3),
                    value=round(eviction_value(self.oracle, d.name, r), 6),
                    budget=view.budget,
                    used=view.used,
                    needed=target.size,
                )
                self._metrics.evictions.labels(daemon=d.name, reason="room").inc()
                ok = await self.loader.unload(d, v, "evict")
                self._ops.discard((d.name, v))
                if not ok:
                    raise LoadFailed(f"could not unload {v} from {d.name} to make room for {key}")
            if reloading:
                await self.loader.unload(d, key, "reload")
            reason = (
                "openai-surface-needs-default-context"
                if target.auto and reloading
                else "bigger-context"
                if reloading
                else "request"
            )
            self.decisions.record(
                "num_ctx",
                key,
                d.name,
                reason,
                num_ctx=target.ctx,
                auto=target.auto,
                previous_num_ctx=old_ctx if reloading else None,
                needs=sorted({n.tokens for n in needs})[-5:],
                buckets=list(self.limits.buckets),
            )
            self.decisions.record(
                "load",
                key,
                d.name,
                "reload" if reloading else "request",
                num_ctx=target.ctx,
                auto=target.auto,
                estimated_size=target.size,
                budget=view.budget,
                used_before=view.used - plan.freed,
                evicted=list(plan.victims),
            )
            options: dict[str, Any] = {} if target.auto else {"num_ctx": target.ctx}
            keep = math.inf if self._settings.keep_alive_policy == "bridge" else None
            await self.loader.load(
                d, key, LoadSpec(keep, options), "reload" if reloading else "request"
            )
            row = d.loaded.get(key) or {}
            ctx = int(row.get("context_length") or 0) or target.ctx
            info = self.fleet.infos.get(key)
            par = self.parallel(d, info)
            real = int(row.get("size") or 0)
            self.sizes.learn(key, target.ctx, par, real)
            if target.auto:
                self._auto_ctx[(d.name, key)] = ctx
            self._metrics.num_ctx_loaded.observe(target.ctx)
            if real and real != target.size:
                self.decisions.record(
                    "load", key, d.name, "size-learned", estimated=target.size, actual=real
                )
            gate.last_load_at = time.monotonic()
            gate.open(ctx=ctx if target.auto else target.ctx, auto=target.auto)
        except BridgeError as exc:
            await self.fleet.refresh_ps(d)
            self.decisions.record("load", key, d.name, "failed", error=exc.message)
            if not d.up:
                gate.fail(Replaced(f"{d.name} went away while loading {key}", retry_after=1))
            else:
                gate.fail(exc)
        finally:
            for v in plan.victims:
                self._ops.discard((d.name, v))
            self._ops.discard((d.name, key))
            self._targets.pop((d.name, key), None)

    # --- explicit operations (admin API, honour-policy unloads, idle unloads) ---------------
    async def unload_model(
        self, key: str, daemon: str | None, reason: str, *, force: bool = False
    ) -> list[str]:
        """Unload ``key`` (from ``daemon`` or everywhere) once its requests finished;
        returns the daemons it left. ``Conflict`` for a pinned model unless ``force``."""
        done: list[str] = []
        for d in self.fleet.daemons.values():
            if (daemon is not None and d.name != daemon) or key not in d.loaded:
                continue
            if self.pinned(d.name, key):
                if force:
                    continue
                raise Conflict(f"{key} is pinned on {d.name}: unpin it first")
            if (d.name, key) in self._ops:
                continue
            gate = self.gate(d.name, key)
            self._ops.add((d.name, key))
            gate.close()
            try:
                while gate.busy:  # noqa: ASYNC110  (its requests finish first)
                    await asyncio.sleep(0.01)
                self.decisions.record("unload", key, d.name, reason)
                if await self.loader.unload(d, key, reason):
                    done.append(d.name)
            finally:
                self._ops.discard((d.name, key))
                if key in d.loaded:
                    gate.open()
                self.kick(d.name)
        return done

    def idle_expiry(self, daemon: str, key: str) -> float | None:
        """Monotonic time at which the bridge will unload the model (bridge policy)."""
        if self._settings.keep_alive_policy != "bridge" or self._settings.idle_unload_after <= 0:
            return None
        if self.pinned(daemon, key):
            return None
        last = self._last_used.get((daemon, key))
        return None if last is None else last + self._settings.idle_unload_after

    def last_used(self, daemon: str, key: str) -> float | None:
        return self._last_used.get((daemon, key))

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    @property
    def upstream(self) -> Upstream:
        return self._upstream

    def was_up(self, name: str, up: bool) -> bool:
        """Record ``up`` for ``name``; returns the previous value (True at first)."""
        before = self._was_up.get(name, True)
        self._was_up[name] = up
        return before
