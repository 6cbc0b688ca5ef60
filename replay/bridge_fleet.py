"""The bridge's policies, driven by the simulation: the controller of bridge policies.

Theory of operation
-------------------
Everything that decides is the bridge's own pure code, called where the bridge calls
it (``bridge.scheduling.scheduler.Scheduler.admit``, ``bridge.scheduling.driver.Driver._step``,
``bridge.events.prefetch_consumer.Consumer._prefetch``):

* a request's context need is ``bridge.policy.numctx.need_for`` on a stand-in body (a
  prompt of ``prompt_tokens x ALB_CHARS_PER_TOKEN`` characters, the client's ``num_ctx``
  in ``options`` on the native API), so the bridge estimates it as it would the real one;
* where it goes is ``bridge.policy.placement.route`` over ``DaemonView`` snapshots of
  the simulated fleet;
* each daemon's driver, one load at a time, makes the driver's decisions with
  ``bridge.policy.step`` (``wanted``: which gate needs a load or a drain; ``plan_load``:
  refuse, wait or execute, with ``placement.plan_room`` choosing the victims and
  ``numctx.choose_target`` the context; ``learned``: what the finished load teaches,
  the daemon's default ``num_ctx`` included), visiting the gates in ``drive_order``
  (clients' longest wait first, prefetches after), as the live driver does;
* the eviction value is ``bridge.policy.placement.eviction_value`` with the policy's
  ``ReuseOracle``;
* a prefetch is accepted or refused by ``bridge.policy.prefetch.judge`` and the
  consumer's ``TokenBucket`` (on simulated time);
* the high-water mark is judged on ``bridge.policy.queueing.copy_depth`` (clients'
  requests only) and a refusal's ``Retry-After`` is ``queueing.retry_hint`` (its
  place in line behind every copy's queue, from the smoothed service times and the
  estimated load left), as the scheduler answers; a request's cause of a cold start
  is ``bridge.policy.cold.cold_cause``.

What this module adds is the state those decisions are applied to, in place of the
asyncio objects that own sockets: gates are FIFO queues (the bridge's ``FairQueue`` is
round-robin by session: the order one model's waiters are served in differs), unloads
are instant (the simulator's are), idle unloads are timers at the exact expiry (the
bridge checks every ``ALB_REFRESH_INTERVAL``), and ``/api/ps`` reconciliation, health
checks, failed loads and pins are out of scope.

``decisions`` lists the load / evict / unload / reject decisions with the kinds the
bridge's decision log uses; ``tests/replay/test_live_parity.py`` checks that the live
bridge in front of ``ollamasim`` makes the same ones on the same trace.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.errors import BadRequest
from bridge.policy.cold import cold_cause
from bridge.policy.numctx import Limits, Need, Target, choose_target, daemon_default, need_for
from bridge.policy.placement import (
    DEFAULT_LOAD_S,
    DaemonView,
    Load,
    RecencyOracle,
    Reject,
    ReuseOracle,
    Route,
    RunnerView,
    Serve,
    eviction_value,
    plan_room,
    route,
)
from bridge.policy.prefetch import ACCEPTED, PrefetchOracle, TokenBucket, judge
from bridge.policy.queueing import (
    CopyQueue,
    CopyWait,
    copy_depth,
    retry_hint,
    service_estimate,
    smooth_service,
)
from bridge.policy.replicas import Backlog, rebalance, replicate, retirements, worth_a_copy
from bridge.policy.reuse import PredictedReuse
from bridge.policy.sizing import ModelInfo, SizeBook
from bridge.policy.step import (
    Drain,
    Execute,
    GateState,
    Refuse,
    Reopen,
    drive_order,
    learned,
    plan_load,
    wanted,
)
from ollamasim import scheduler as sim_policy
from ollamasim.config import DaemonConfig
from predictor.core import Prefetch
from predictor.core.advice import estimate_reuse
from replay.des import Job, PrefetchJob, ReplicaJob, Runner

if TYPE_CHECKING:
    from replay.des import Simulation

__all__ = ["BridgeFleet", "Decision"]

Waiter = Job | PrefetchJob | ReplicaJob


class _Daemon:
    __slots__ = ("budget", "cfg", "gates", "hold", "op", "runners")

    def __init__(self, cfg: DaemonConfig, headroom: float) -> None:
        self.cfg = cfg
        self.runners: dict[str, Runner] = {}
        self.gates: dict[str, deque[Waiter]] = {}
        self.hold: set[str] = set()
        self.op: str | None = None
        # Fleet.budget: capacity x (1 - headroom); nothing else runs on a simulated GPU.
        self.budget = int(cfg.memory * (1 - headroom))

    def used(self) -> int:
        return sum(r.size for r in self.runners.values())


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision, as the bridge's decision log records it (kind, model, daemon,
    reason; the daemon is empty for a refusal at admission)."""

    kind: str
    model: str
    daemon: str
    reason: str


class _SimEstimate:
    """``bridge.events.predictor.ReuseEstimate`` over the replay's predictor state: the bridge's
    own ``estimate_reuse`` (its evidence bar included) at simulated time."""

    def __init__(self, sim: Simulation) -> None:
        self._sim = sim

    def estimate(self, model: str) -> float | None:
        state = self._sim.state
        return None if state is None else estimate_reuse(state, model, self._sim.now)


class _TimeRecency:
    """The bridge's ``RecencyOracle`` (the view's ``idle_s`` is simulated time)."""

    def __init__(self) -> None:
        self._inner = RecencyOracle()

    def reuse(self, daemon: str, runner: RunnerView) -> float:
        return self._inner.reuse(daemon, runner)


class _Confidences:
    """``bridge.events.prefetch_consumer.PrefetchBook`` over the simulated runners: the
    confidence of an unused prefetched runner."""

    def __init__(self, fleet: BridgeFleet) -> None:
        self._fleet = fleet

    def confidence(self, daemon: str, key: str) -> float | None:
        r = self._fleet.daemons[daemon].runners.get(key)
        return None if r is None else r.prefetch_conf


class BridgeFleet:
    """The controller of every bridge policy (see the module docstring)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        k = sim.knobs
        self.daemons = {d.name: _Daemon(d, k.headroom) for d in sim.fleet.daemons}
        self.limits = Limits(
            k.buckets, k.num_ctx_min, k.num_ctx_max, k.num_predict_default, k.image_tokens
        )
        self.infos = {
            m.key: ModelInfo(
                m.key, m.size, m.context_length, m.kv_bytes_per_token, m.is_embedding_only
            )
            for m in sim.fleet.models
        }
        self.catalog = {
            d.name: frozenset(m.key for m in sim.fleet.models_for(d)) for d in sim.fleet.daemons
        }
        self.sizes = SizeBook()
        self.auto_ctx: dict[tuple[str, str], int] = {}
        #: Each daemon's default num_ctx as loads showed it (``Residency.default_ctx``).
        self.default_ctx: dict[str, int] = {}
        #: The decisions, as the bridge's ``/alb/v1/decisions`` names them.
        self.decisions: list[Decision] = []
        #: When each load started (``Loader._started``: the bridge's estimate runs from it).
        self._load_started: dict[tuple[str, str], float] = {}
        #: Copies made by replication, and each gate's smoothed service seconds
        #: (``Gate.service``; ``service_s`` reads them as ``Residency.service_s`` does).
        self.replicas: set[tuple[str, str]] = set()
        self.service: dict[str, dict[str, float]] = {}  # model -> daemon -> seconds
        self.load_learned: dict[str, float] = {}
        #: ``Scheduler.promised``: per model, the last refusal's promised retry time.
        self.promised: dict[str, float] = {}
        self.last_used: dict[tuple[str, str], float] = {}
        base: ReuseOracle = (
            # the embedded bridge's own: the predictor's P(reuse), recency breaking ties,
            # recency alone while a model's history is thin
            PredictedReuse(_SimEstimate(sim), _TimeRecency())
            if sim.policy.oracle == "predictor"
            else _TimeRecency()
        )
        self.oracle: ReuseOracle = PrefetchOracle(base, _Confidences(self))
        self.bucket = TokenBucket(k.prefetch_rate, k.prefetch_burst, clock=lambda: sim.now)
        self._needs: dict[tuple[int, int | None, bool, int], Need] = {}

    def record(self, kind: str, model: str, daemon: str, reason: str) -> None:
        self.decisions.append(Decision(kind, model, daemon, reason))

    # --- snapshots for the pure policies --------------------------------------------
    def runners(self) -> Iterator[Runner]:
        for d in self.daemons.values():
            yield from d.runners.values()

    def used(self) -> dict[str, int]:
        return {name: d.used() for name, d in self.daemons.items()}

    def load_seconds(self, key: str, size: int) -> float:
        """``Loader.load_seconds``: learned, else ~1 s + 2 GiB/s."""
        learned = self.load_learned.get(key)
        return learned if learned is not None else 1.0 + size / (2 * 1024**3)

    def service_s(self, daemon: str, key: str) -> float:
        """``Residency.service_s``: this copy's smoothed service seconds, else the
        model's other copies' (``queueing.service_estimate``)."""
        copies = self.service.get(key, {})
        others = (s for name, s in copies.items() if name != daemon)
        return service_estimate(copies.get(daemon), others)

    def remaining_s(self, daemon: str, key: str, size: int) -> float:
        """``Loader.remaining_s``: what the bridge expects is left of a load in progress
        (its estimate, not the simulated truth), at least 0.5 s."""
        started = self._load_started.get((daemon, key))
        if started is None:  # not started yet: a whole load (``Residency._backlog``)
            return self.load_seconds(key, size)
        estimate = self.load_learned.get(key, DEFAULT_LOAD_S)
        return max(estimate - (self.sim.now - started), 0.5)

    def view(self, d: _Daemon) -> DaemonView:
        """``Scheduler.view`` over the simulated daemon."""
        now = self.sim.now
        runners: dict[str, RunnerView] = {}
        held: dict[str, int] = {}
        for o in self.daemons.values():
            for k in o.runners:
                held[k] = held.get(k, 0) + 1
        for key, r in d.runners.items():
            q = d.gates.get(key) or ()
            queued = bool(q)
            runners[key] = RunnerView(
                key=key,
                size=r.size,
                ctx=r.ctx,
                auto=r.auto,
                busy=r.active > 0 or queued or not r.ready,
                pinned=False,
                idle_s=now - self.last_used.get((d.cfg.name, key), now),
                reload_s=self.load_seconds(key, r.size),
                loading=not r.ready,
                copies=held.get(key, 1),
                outstanding=r.active + len(q),
                slots=r.parallel,
                service_s=self.service_s(d.cfg.name, key),
                load_left_s=0.0 if r.ready else self.remaining_s(d.cfg.name, key, r.size),
            )
        pending = frozenset(
            k
            for k, q in d.gates.items()
            if q and not (k in d.runners and d.runners[k].ready) and d.op != k
        )
        return DaemonView(
            name=d.cfg.name,
            up=True,
            models=self.catalog[d.cfg.name],
            runners=runners,
            budget=d.budget,
            max_loaded=d.cfg.max_runners,
            outstanding=sum(r.active for r in d.runners.values())
            + sum(len(q) for q in d.gates.values()),
            pending=pending,
            parallel=d.cfg.num_parallel,
        )

    def _parallel(self, d: _Daemon, info: ModelInfo) -> int:
        return 1 if info.embedding_only else d.cfg.num_parallel

    def target(self, info: ModelInfo, d: _Daemon, needs: list[Need]) -> Target:
        """``Residency.target``: the runner a load for ``needs`` asks for on ``d``.

        The daemon's default is what the bridge knows of it (learned from a load without
        num_ctx, else the guess from its memory), the model's learned default context
        ``auto_ctx``; no pins, so the room is the whole budget."""
        par = self._parallel(d, info)
        return choose_target(
            needs,
            default=daemon_default(None, self.default_ctx.get(d.cfg.name), d.cfg.memory),
            auto_ctx=self.auto_ctx.get((d.cfg.name, info.key)),
            model_context=info.context_length,
            limits=self.limits,
            prefer_default=self.sim.knobs.prefer_default,
            size=lambda ctx: self.sizes.size(info, ctx, par),
            room=d.budget,
        )

    def need(self, job: Job) -> Need:
        """``need_for`` on a stand-in body of the request's size (cached)."""
        req = job.req
        info = self.infos[req.model]
        cache_key = (req.prompt_tokens, req.num_ctx, req.openai, info.context_length)
        need = self._needs.get(cache_key)
        if need is None:
            knobs = self.sim.knobs
            chars = round(req.prompt_tokens * knobs.chars_per_token)
            doc: dict[str, object] = {"prompt": "x" * chars}
            if req.num_ctx is not None and not req.openai:
                doc["options"] = {"num_ctx": req.num_ctx}
            need = need_for(
                doc,
                embed=info.embedding_only,
                openai=req.openai,
                model_context=info.context_length,
                chars_per_token=knobs.chars_per_token,
                limits=self.limits,
                # as the live bridge (ALB_OPENAI_NATIVE, on by default): /v1 chat and
                # completions may use a runner at another context, through the native API
                translate=not info.embedding_only,
            )
            self._needs[cache_key] = need
        return need

    def _value_fn(self, d: _Daemon) -> Callable[[RunnerView], float]:
        name = d.cfg.name
        return lambda r: eviction_value(self.oracle, name, r)

    def _route(self, key: str, need: Need) -> tuple[Route | None, list[DaemonView]]:
        info = self.infos[key]
        views = [self.view(d) for d in self.daemons.values()]

        def size_of(v: DaemonView) -> int:
            return self.target(info, self.daemons[v.name], [need]).size

        return route(views, key, need, size_of, self.oracle), views

    # --- requests (Scheduler.admit) -----------------------------------------------------
    def submit(self, job: Job) -> None:
        sim = self.sim
        key = job.req.model
        if key not in self.infos:
            sim.fail(job, 404)
            return
        try:
            need = self.need(job)
        except BadRequest:
            sim.fail(job, 400)
            return
        job.need = need
        where, views = self._route(key, need)
        if where is None:
            sim.fail(job, 503, retry_after=5.0)  # Scheduler.admit: no daemon answering
            return
        if isinstance(where, Reject):
            self.record("reject", key, "", where.reason)
            sim.fail(job, where.status, retry_after=where.retry_after or 30.0)
            return
        assert isinstance(where, Serve | Load)
        d = self.daemons[where.daemon]
        self.last_used[(d.cfg.name, key)] = sim.now
        r = d.runners.get(key)
        q = d.gates.setdefault(key, deque())
        fits = r is not None and r.ready and need.fits(r.ctx, r.auto)
        if fits and r is not None and key not in d.hold and r.active < r.parallel and not q:
            self._start(job, r)
            return
        if copy_depth(self._queue(d, key)) >= sim.knobs.high_water_depth:
            sim.fail(job, 503, retry_after=self._retry_after(key))
            return
        job.cold = not fits
        if job.cold:
            known = key in sim.ever_ready
            job.cold_cause = cold_cause(views, key, need, daemon=where.daemon, known=known)
        q.append(job)
        if job.cold:
            self._cancel_prefetches(d, key)
        self._drive(d)
        if sim.policy.replicate:
            self._replicate(key, need)

    def _queue(self, d: _Daemon, key: str) -> CopyQueue:
        """``Residency.fleet_depth``'s view of ``key``'s gate on ``d``: the clients'
        requests (a prefetch's or a copy's waiter is the bridge's own, no demand)."""
        q = d.gates.get(key) or ()
        r = d.runners.get(key)
        queued = sum(1 for w in q if isinstance(w, Job))
        share = r.parallel if r is not None else self._parallel(d, self.infos[key])
        slots = share if r is not None and r.ready else 0
        return CopyQueue(queued, queued + (r.active if r is not None else 0), share, slots)

    def _retry_after(self, key: str) -> float:
        """``Scheduler._retry_after``: the refused request's place in line behind every
        copy's queue, each drained at its own smoothed service time from the end of its
        load (``queueing.retry_hint``)."""
        hint = retry_hint(
            [
                CopyWait(
                    self._queue(d, key),
                    self.service_s(name, key),
                    # ``Loader.remaining_s``: 0 while no load has started
                    self.remaining_s(name, key, 0) if (name, key) in self._load_started else 0.0,
                )
                for name, d in self.daemons.items()
                if key in d.runners or d.gates.get(key)
            ],
            now=self.sim.now,
            promised_at=self.promised.get(key),
            max_s=self.sim.knobs.retry_after_max,
        )
        self.promised[key] = hint.promised_at
        return hint.retry_after_s

    def _cancel_prefetches(self, d: _Daemon, key: str) -> None:
        """A real request waits for a load here: not-yet-started prefetches give way."""
        for other, q in d.gates.items():
            if other in (key, d.op) or not q:
                continue
            if all(isinstance(w, PrefetchJob) for w in q):
                self.sim.tally.refuse("cancelled")
                q.clear()

    # --- the driver (bridge.scheduling.driver: Driver._step / _execute) ---------------
    def _gate(self, d: _Daemon, key: str) -> GateState:
        """The gate of ``key`` on ``d`` for ``bridge.policy.step`` (as ``driver._state``)."""
        r = d.runners.get(key)
        q = d.gates.get(key) or ()
        clients = [w.sent for w in q if not isinstance(w, PrefetchJob)]
        return GateState(
            key=key,
            ready=r is not None and r.ready,
            busy=r is not None and r.active > 0,
            hold=key in d.hold,
            ctx=0 if r is None else r.ctx,
            auto=r is not None and r.auto,
            queued=bool(q),
            needs=tuple(w.need for w in q),
            since=min(clients) if clients else None,
        )

    def _drive(self, d: _Daemon) -> None:
        """``Driver._step`` until a load starts: the decisions (and the order the gates
        are visited in) are ``bridge.policy.step``'s."""
        sim = self.sim
        if d.op is not None:
            return
        for state in drive_order([self._gate(d, key) for key in d.gates]):
            key = state.key
            q = d.gates[key]
            for stale in [w for w in q if isinstance(w, PrefetchJob) and w.expires_at <= sim.now]:
                q.remove(stale)
                sim.tally.refuse("expired")
            want = wanted(self._gate(d, key))
            if isinstance(want, Drain):
                d.hold.add(key)  # drain: no new slots for the runner being replaced
                continue
            if isinstance(want, Reopen):
                d.hold.discard(key)
                self._dispatch(d, key)
                continue
            if want is None:
                continue
            if want.reload:
                d.hold.add(key)
            info = self.infos[key]

            def target(needs: Sequence[Need], info: ModelInfo = info) -> Target:
                return self.target(info, d, list(needs))

            def room(size: int, key: str = key) -> object:
                return plan_room(self.view(d), key, size, self._value_fn(d))

            for op in plan_load(want, cooldown=None, info=info, target=target, room=room):
                if isinstance(op, Refuse) and (d.cfg.name, key) in self.replicas:
                    self._abandon_copy(d, key)
                elif isinstance(op, Refuse):
                    self._refuse(d, op)
                elif isinstance(op, Execute):
                    self._execute(d, op)
                    return

    def _refuse(self, d: _Daemon, op: Refuse) -> None:
        """``Driver._refuse``: a 400 for the waiters ``op.which`` names (a prefetch among
        them is refused ``no_room``)."""
        key, sim = op.key, self.sim
        q = d.gates[key]
        r = d.runners.get(key)
        self.record("reject", key, d.cfg.name, op.which)
        for w in list(q):
            if op.which == "openai":
                refused = w.need.auto
            else:
                refused = op.which == "all" or r is None or not w.need.fits(r.ctx, r.auto)
            if not refused:
                continue
            q.remove(w)
            if isinstance(w, PrefetchJob):
                sim.tally.refuse("no_room")
            elif isinstance(w, ReplicaJob):
                self.replicas.discard((d.cfg.name, key))
            else:
                sim.fail(w, 400)
        if op.which != "openai":
            d.hold.discard(key)
            self._dispatch(d, key)

    def _execute(self, d: _Daemon, op: Execute) -> None:
        """``Driver._execute``: unload the victims (instant, as the simulator's), then
        load. The model's own runner is replaced by the simulated daemon whether or not
        the bridge unloads it first (``op.unload_own``), as Ollama does."""
        sim = self.sim
        key, target = op.key, op.target
        name = d.cfg.name
        for v in op.plan.victims:
            sim.tally.evictions += 1
            self.record("evict", v, name, f"room for {key}")
            self._unload(d, d.runners[v])
        own = d.runners.get(key)
        if own is not None:
            sim.tally.reloads += 1
            self._unload(d, own)
        self.record("load", key, name, "reload" if op.reload else "request")
        model = sim.models[key]
        info = self.infos[key]
        par = self._parallel(d, info)
        # What the daemon really loads: without num_ctx, its own default context.
        ctx = (
            sim_policy.effective_context(
                sim_policy.default_num_ctx(d.cfg.memory, d.cfg.context_length),
                model.context_length,
            )
            if target.num_ctx is None
            else target.ctx
        )
        size = sim_policy.runner_size(model.size, model.kv_bytes_per_token, ctx, par)
        r = Runner(key, name, size, target.ctx, target.auto, par, sim.now)
        d.runners[key] = r
        d.op = key
        waiters = d.gates.get(key) or ()
        prefetch_only = all(isinstance(w, PrefetchJob) for w in waiters)
        sim.tally.loads += 1
        if (name, key) in self.replicas:
            sim.tally.replica_loads += 1
        elif not prefetch_only:
            sim.tally.demand_loads += 1
        seconds = d.cfg.load_fixed_s + model.size / d.cfg.load_bandwidth
        self._load_started[(name, key)] = sim.now
        sim.at(sim.now + seconds, self._loaded, d, r, target, ctx, seconds, prefetch_only)

    def _loaded(  # noqa: PLR0917
        self,
        d: _Daemon,
        r: Runner,
        target: Target,
        real_ctx: int,
        seconds: float,
        prefetch_only: bool,
    ) -> None:
        key = r.model
        r.ready = True
        self.sim.ever_ready.add(key)
        self._load_started.pop((d.cfg.name, key), None)
        d.op = None
        d.hold.discard(key)
        # ``Driver._learn``: what the daemon reports (``/api/ps``'s context and size).
        got = learned(
            target,
            real_ctx=real_ctx,
            trained_ctx=self.infos[key].context_length,
            configured_default=None,
        )
        if got.size_ctx:
            self.sizes.learn(key, got.size_ctx, r.parallel, r.size)
        if got.auto_ctx is not None:
            self.auto_ctx[(d.cfg.name, key)] = got.auto_ctx
        if got.default_ctx is not None:
            self.default_ctx[d.cfg.name] = got.default_ctx
        r.ctx = got.serve_ctx
        self.load_learned[key] = seconds
        q = d.gates.get(key)
        confidence = max(
            (w.confidence for w in q or () if isinstance(w, PrefetchJob)), default=None
        )
        if prefetch_only and confidence is not None:
            self.sim.tally.prefetch_loads += 1
            r.prefetch_conf = confidence
        self._dispatch(d, key)
        if r.idle:
            self._arm(r)
        if (d.cfg.name, key) in self.replicas:
            self._rebalance(key, d.cfg.name)
        self._drive(d)

    def _dispatch(self, d: _Daemon, key: str) -> None:
        """``Gate._dispatch``: hand free slots to the first waiters that fit."""
        r = d.runners.get(key)
        q = d.gates.get(key)
        if r is None or q is None or not r.ready or key in d.hold:
            return
        for w in [w for w in q if not isinstance(w, Job)]:
            q.remove(w)  # a prefetch or a copy acquires and releases at once (no slot)
        while r.active < r.parallel and q:
            job = next((w for w in q if isinstance(w, Job) and w.need.fits(r.ctx, r.auto)), None)
            if job is None:
                return
            q.remove(job)
            self._start(job, r)

    # --- runners going idle ---------------------------------------------------------------
    def release(self, r: Runner) -> None:
        d = self.daemons[r.daemon]
        r.active -= 1
        self._dispatch(d, r.model)
        if r.idle:
            self._arm(r)
            if (r.daemon, r.model) in self.replicas:
                after = self.sim.knobs.replica_idle_s
                self.sim.at(self.sim.now + after, self._retire, r, r.timer)
        self._drive(d)

    # --- replicas (Scheduler._replicate, Driver._rebalance, Upkeep.retire_replicas) ----
    def _start(self, job: Job, r: Runner) -> None:
        """``sim.start``, and the gate's smoothed service time (``Gate.release``: the
        replay knows a request's hold time when it starts)."""
        model = self.sim.models[r.model]
        held = max(job.req.prompt_tokens, 1) / self.sim.fleet.prefill_rate(model)
        held += job.req.output_tokens / self.sim.fleet.gen_rate(model)
        copies = self.service.setdefault(r.model, {})
        copies[r.daemon] = smooth_service(copies.get(r.daemon), held)
        self.sim.start(job, r)

    def _copies(self, key: str) -> list[Backlog]:
        """``Residency.copies``: each daemon holding ``key`` (loaded, being loaded, or a
        load queued), with its queue."""
        out = []
        for name, d in self.daemons.items():
            q = d.gates.get(key) or ()
            if key in d.runners or q:
                par = d.runners[key].parallel if key in d.runners else d.cfg.num_parallel
                queued = sum(1 for w in q if isinstance(w, Job))
                out.append(Backlog(name, queued, par, self.service_s(name, key)))
        return out

    def _replicate(self, key: str, need: Need) -> None:
        sim = self.sim
        backlogs = self._copies(key)
        info = self.infos[key]
        load_s = self.load_seconds(key, info.file_size)
        cap = sim.knobs.replica_max or len(self.daemons)
        if not worth_a_copy(backlogs, load_s=load_s, max_copies=cap):
            return
        views = [self.view(d) for d in self.daemons.values()]
        decision = replicate(
            views,
            key,
            backlogs,
            size_of=lambda v: self.target(info, self.daemons[v.name], [need]).size,
            oracle=self.oracle,
            load_s=load_s,
            max_copies=cap,
        )
        if decision is None:
            return
        d = self.daemons[decision.daemon]
        self.replicas.add((decision.daemon, key))
        self.record("replicate", key, decision.daemon, "replicate")
        d.gates.setdefault(key, deque()).append(ReplicaJob(key, need, sim.now))
        self._cancel_prefetches(d, key)  # a copy is demand: prefetches give way
        self._drive(d)

    def _abandon_copy(self, d: _Daemon, key: str) -> None:
        """``Driver._abandon_copy``: the copy cannot be loaded; its waiters go elsewhere."""
        self.replicas.discard((d.cfg.name, key))
        self.record("replicate", key, d.cfg.name, "abandoned")
        q = d.gates[key]
        r = d.runners.get(key)
        moved = [
            w for w in q if isinstance(w, Job) and (r is None or not w.need.fits(r.ctx, r.auto))
        ]
        for w in [w for w in q if not isinstance(w, Job)] + moved:
            q.remove(w)
        d.hold.discard(key)
        self._dispatch(d, key)
        for job in moved:
            self.submit(job)

    def _rebalance(self, key: str, ready: str) -> None:
        """A copy is ready: the waiters of the copies whose queue is longer than their
        share are placed again (``submit``: they spread over the copies)."""
        serving = [
            b
            for b in self._copies(key)
            if key in self.daemons[b.daemon].runners and self.daemons[b.daemon].runners[key].ready
        ]
        for name in rebalance(serving, ready):
            q = self.daemons[name].gates[key]
            moved = [w for w in q if isinstance(w, Job)]
            for job in moved:
                q.remove(job)
            for job in moved:
                self.submit(job)

    def _retire(self, r: Runner, token: int) -> None:
        d = self.daemons[r.daemon]
        if r.timer != token or not r.idle or d.runners.get(r.model) is not r or d.op == r.model:
            return
        held = [
            (name, self.sim.now - self.last_used.get((name, r.model), self.sim.now), True)
            if name == r.daemon
            else (name, -1.0, False)
            for name, o in self.daemons.items()
            if r.model in o.runners
        ]
        for retire in retirements({r.model: held}, idle_s=self.sim.knobs.replica_idle_s):
            assert retire.daemon == r.daemon  # the only copy offered as a replica is r
            self.replicas.discard((r.daemon, r.model))
            self.record("retire-replica", r.model, r.daemon, "retire-replica")
            self.record("unload", r.model, r.daemon, "retire-replica")
            self._unload(d, r)
            self._drive(d)

    def _arm(self, r: Runner) -> None:
        """``ALB_RECLAIM=idle``: unload ``r`` after its keep-alive; ``demand``: never
        (an idle runner stays until a load needs its room)."""
        r.timer += 1
        if self.sim.policy.reclaim != "idle":
            return
        after = self.sim.idle_timeout(r.model, prefetched=r.prefetch_conf is not None)
        self.sim.at(self.sim.now + after, self._expire, r, r.timer)

    def _expire(self, r: Runner, token: int) -> None:
        d = self.daemons[r.daemon]
        if r.timer != token or not r.idle or d.runners.get(r.model) is not r or d.op == r.model:
            return
        self.sim.tally.idle_unloads += 1
        self.record("unload", r.model, d.cfg.name, "idle")
        self._unload(d, r)
        self._drive(d)

    def _unload(self, d: _Daemon, r: Runner) -> None:
        del d.runners[r.model]
        self.replicas.discard((d.cfg.name, r.model))
        r.timer += 1
        if r.served == 0:
            self.sim.tally.wasted_loads += 1

    # --- prefetch (bridge.events.prefetch_consumer.Consumer._prefetch) ----------------
    def _prefetch_held(self, name: str) -> int:
        """``PrefetchBook.held``: bytes of prefetched runners no request used yet."""
        return sum(
            r.size for r in self.daemons[name].runners.values() if r.prefetch_conf is not None
        )

    def prefetch(self, p: Prefetch) -> None:
        sim = self.sim
        tally = sim.tally
        key = p.model
        if key not in self.infos:
            tally.refuse("unknown_model")
            return
        for d in self.daemons.values():
            if key in d.runners or d.gates.get(key):
                tally.refuse("already_loaded")
                return
        need = Need(p.num_ctx or 0)
        info = self.infos[key]
        where, views = self._route(key, need)
        verdict = judge(
            where,
            views,
            key,
            confidence=p.confidence,
            size_of=lambda v: self.target(info, self.daemons[v.name], [need]).size,
            reload_s=self.load_seconds,
            oracle=self.oracle,
            held=self._prefetch_held,
            budget=lambda name: self.daemons[name].budget,
            share=sim.knobs.prefetch_budget,
        )
        if verdict.outcome != ACCEPTED:
            tally.refuse(verdict.outcome)
            return
        if not self.bucket.take():
            tally.refuse("rate_limited")
            return
        d = self.daemons[verdict.daemon]
        tally.prefetch_accepted += 1
        self.last_used[(d.cfg.name, key)] = sim.now
        job = PrefetchJob(key, p.confidence, p.expires_at)
        job.need = need  # as the prefetch consumer's admission carries it
        d.gates.setdefault(key, deque()).append(job)
        self._drive(d)
