"""What is resident where: the scheduler's shared state and the snapshots policies read.

``Residency`` holds one ``Gate`` per (daemon, model), when each was last used,
which (daemon, model) pairs have a bridge load or unload in progress (``ops``:
reconciliation keeps off them) and what those loads aim for (``targets``), the
pins, the daemons' circuit breakers and what failed loads taught (``book``, a
``health.LoadBook``: pairs failing for a cooldown, learned memory ceilings, what each
daemon was seen holding). It answers the questions admission, the
load driver and the background upkeep share: is a daemon available, what
runner would a load ask for (``target``), and ``view``: a daemon frozen into a
``placement.DaemonView`` for the pure policies. ``Scheduler`` builds on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from bridge.coord import Coordinator, Solo
from bridge.errors import Replaced
from bridge.metrics import Metrics
from bridge.policy.health import Breaker, LoadBook
from bridge.policy.numctx import (
    Calibrator,
    DaemonDefault,
    Limits,
    Need,
    Target,
    choose_target,
    daemon_default,
)
from bridge.policy.placement import (
    Cooldown,
    DaemonView,
    RecencyOracle,
    ReuseOracle,
    RunnerView,
    eviction_value,
)
from bridge.policy.queueing import CopyQueue, copy_depth, service_estimate
from bridge.policy.sizing import ModelInfo, SizeBook
from bridge.scheduling.decisions import DecisionLog
from bridge.scheduling.fleet import DaemonState, Fleet
from bridge.scheduling.gate import Gate
from bridge.scheduling.loader import Loader
from bridge.settings import Settings
from bridge.upstream import Upstream

GIB = 1024**3

__all__ = ["GIB", "KeepAlive", "Residency", "Target"]


class KeepAlive(Protocol):
    """Seconds an idle runner of ``model`` on ``daemon`` stays loaded, at most ``cap``."""

    def seconds(self, daemon: str, model: str, cap: float) -> float: ...


class Residency:
    """Gates, runners and their bookkeeping, shared by admission, driver and upkeep."""

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
        self._settings = settings
        #: The other replicas (``bridge.coord``): who owns which daemon.
        self.coord: Coordinator = coord or Solo()
        #: Per-model idle timeout (the embedded predictor's); None: ``idle_unload_after``.
        self.keep_alive = keep_alive
        self.fleet = fleet
        self._upstream = upstream
        self._metrics = metrics
        self.decisions = decisions
        self.oracle: ReuseOracle = oracle or RecencyOracle()
        self.gates: dict[tuple[str, str], Gate] = {}
        #: The same gates by daemon (admission and release look at one daemon's only).
        self.gates_of: dict[str, dict[str, Gate]] = {name: {} for name in fleet.daemons}
        #: Monotonic time each (daemon, model) was last admitted or released.
        self.used_at: dict[tuple[str, str], float] = {}
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
        for name in fleet.daemons:  # closed until it opens: 0, not no data
            metrics.breaker_open.labels(daemon=name).set(0)
        #: What loads taught: failing pairs (cooldowns), memory ceilings, bytes held.
        self.book = LoadBook(settings.load_failure_cooldown, settings.load_failure_cooldown_max)
        self.pins: set[tuple[str, str | None]] = set()
        #: (daemon, model) with a bridge load/unload in progress: reconcile keeps off.
        self.ops: set[tuple[str, str]] = set()
        self.targets: dict[tuple[str, str], Target] = {}
        #: (daemon, model) copies made by replication (``Scheduler.replicate``).
        self.replicas: set[tuple[str, str]] = set()
        #: Copies decided whose load task has not finished: from the decision on, before
        #: the task has run and made the copy's gate, the copy is on its way, not gone.
        self.copying: set[tuple[str, str]] = set()
        #: Context an auto (no num_ctx) load got, per (daemon, model), from /api/ps.
        self.auto_ctx: dict[tuple[str, str], int] = {}
        #: Each daemon's default num_ctx as learned from /api/ps (unless configured).
        self.default_ctx: dict[str, int] = {}
        self._was_up: dict[str, bool] = {}
        #: (daemon, model) another replica's owner is unloading (``Peers.closing``): its
        #: gate opens again only from an ``/api/ps`` read asked after this time (None:
        #: not before the owner's next ``changed``).
        self.fences: dict[tuple[str, str], float | None] = {}

    # --- queries -------------------------------------------------------------------
    def gate(self, daemon: str, key: str) -> Gate:
        gate = self.gates.get((daemon, key))
        if gate is None:
            d = self.fleet.get(daemon)
            gate = self.gates[(daemon, key)] = Gate(self.coord.share(daemon, key, d.spec.parallel))
            self.gates_of.setdefault(daemon, {})[key] = gate
            row = d.loaded.get(key)
            if row is not None and (daemon, key) not in self.ops and not self.fenced(d, key):
                gate.ready = True
                gate.ctx = int(row.get("context_length") or 0)
            self.used_at.setdefault((daemon, key), time.monotonic())
        return gate

    def fenced(self, d: DaemonState, key: str) -> bool:
        """Whether ``key``'s runner on ``d`` must not be trusted from ``d.loaded``: its
        owner (another replica) is unloading it, and no ``/api/ps`` read asked after
        the owner's next change has come back yet (``Peers.closing``)."""
        if (d.name, key) not in self.fences:
            return False
        fence = self.fences[(d.name, key)]
        if fence is None or d.ps_at < fence:
            return True
        del self.fences[(d.name, key)]
        return False

    def copies(self, key: str) -> list[tuple[DaemonState, Gate]]:
        """The daemons holding ``key``: loaded, being loaded, or with a load queued."""
        out = []
        for d in self.fleet.daemons.values():
            gate = self.gates.get((d.name, key))
            if gate is None or not self.available(d):
                continue
            if key in d.loaded or (d.name, key) in self.targets or gate.depth:
                out.append((d, gate))
        return out

    def _holders(self) -> dict[str, int]:
        """Daemons holding each model (loaded), for the copies a runner has."""
        out: dict[str, int] = {}
        for d in self.fleet.daemons.values():
            for key in d.loaded:
                out[key] = out.get(key, 0) + 1
        return out

    def available(self, d: DaemonState) -> bool:
        return d.up and self.breakers[d.name].allows_traffic(time.monotonic())

    def pinned(self, daemon: str, key: str) -> bool:
        return (key, daemon) in self.pins or (key, None) in self.pins

    def busy_op(self, daemon: str, key: str) -> bool:
        return (daemon, key) in self.ops

    def parallel(self, d: DaemonState, info: ModelInfo | None) -> int:
        return 1 if info is not None and info.embedding_only else d.spec.parallel

    def outstanding(self, daemon: str) -> int:
        """Requests in flight or queued on ``daemon``, every model."""
        return sum(g.outstanding for g in self.gates_of.get(daemon, {}).values())

    def daemon_default(self, d: DaemonState) -> DaemonDefault:
        """``d``'s default num_ctx: configured, else learned, else Ollama's VRAM tier."""
        return daemon_default(d.spec.default_ctx, self.default_ctx.get(d.name), d.capacity)

    def room(self, d: DaemonState, key: str) -> int | None:
        """Bytes a runner of ``key`` may take on ``d`` at most: the budget minus the
        pinned runners of other models (``plan_room``'s NEVER line)."""
        budget = self.fleet.budget(d, self._settings.headroom)
        if budget is None:
            return None
        pinned = sum(
            int(row.get("size") or 0)
            for k, row in d.loaded.items()
            if k != key and self.pinned(d.name, k)
        )
        return budget - pinned

    def target(self, info: ModelInfo, d: DaemonState, needs: list[Need]) -> Target:
        """The runner a load for ``needs`` asks for on ``d`` (``numctx.choose_target``)."""
        par = self.parallel(d, info)
        return choose_target(
            needs,
            default=self.daemon_default(d),
            auto_ctx=self.auto_ctx.get((d.name, info.key)),
            model_context=info.context_length,
            limits=self.limits,
            prefer_default=self._settings.num_ctx_prefer_default,
            size=lambda ctx: self.sizes.size(info, ctx, par),
            room=self.room(d, info.key),
        )

    def _backlog(self, daemon: str, key: str, size: int, gate: Gate | None) -> dict[str, Any]:
        """A runner's queue for ``placement.wait_s``: outstanding, slots, service time
        and what is left of its load (a whole load when none has started yet)."""
        if gate is None:
            return {}
        left = 0.0
        if not gate.ready:
            left = self.loader.remaining_s(daemon, key) or self.loader.load_seconds(key, size)
        return {
            "outstanding": gate.outstanding,
            "slots": gate.slots,
            "service_s": self.service_s(daemon, key),
            "load_left_s": left,
        }

    def service_s(self, daemon: str, key: str) -> float:
        """Seconds a request will hold a slot of ``key`` on ``daemon``
        (``queueing.service_estimate``: the gate's own measurement, else the model's
        other copies')."""
        gate = self.gates.get((daemon, key))
        others = (
            g.service
            for name in self.fleet.daemons
            if name != daemon and (g := self.gates.get((name, key))) is not None
        )
        return service_estimate(None if gate is None else gate.service, others)

    def fleet_depth(self, d: DaemonState, key: str, gate: Gate) -> int:
        """``key``'s queue on ``d``, every replica's (``queueing.copy_depth``; while it
        loads, nobody's request holds a slot): what the high-water mark is judged on.
        The bridge's own waiters (``Gate.internal``) are no client's and not counted."""
        slots = d.spec.parallel if gate.ready else 0
        theirs = self.coord.others(d.name, key)
        queued, outstanding = gate.queued_clients, gate.outstanding_clients
        return copy_depth(CopyQueue(queued, outstanding, gate.slots, slots, theirs))

    def view(self, d: DaemonState, now: float | None = None) -> DaemonView:
        now = time.monotonic() if now is None else now
        runners: dict[str, RunnerView] = {}
        held = self._holders()
        for key, row in d.loaded.items():
            gate = self.gates.get((d.name, key))
            size = int(row.get("size") or 0)
            # The others' requests there, as the last round read them: a runner another
            # replica uses is busy and not idle, whatever this replica's own gate says.
            theirs = self.coord.others(d.name, key)
            runners[key] = RunnerView(
                key=key,
                size=size,
                ctx=gate.ctx
                if gate is not None and gate.ready
                else int(row.get("context_length") or 0),
                auto=gate.auto if gate is not None else False,
                busy=theirs > 0 or (gate is not None and gate.outstanding > 0),
                pinned=self.pinned(d.name, key),
                idle_s=0.0 if theirs else now - self.used_at.get((d.name, key), now),
                reload_s=self.loader.load_seconds(key, size),
                loading=(d.name, key) in self.ops,
                copies=held.get(key, 1),
                **self._backlog(d.name, key, size, gate),
            )
        for (name, key), t in self.targets.items():
            if name == d.name and key not in runners:
                gate = self.gates.get((d.name, key))
                runners[key] = RunnerView(
                    key,
                    t.size,
                    t.ctx,
                    t.auto,
                    True,
                    False,
                    0.0,
                    1.0,
                    True,
                    **self._backlog(d.name, key, t.size, gate),
                )
        gates = [(k, g) for (n, k), g in self.gates.items() if n == d.name]
        pending = frozenset(
            k for k, g in gates if not g.ready and g.depth and (d.name, k) not in self.ops
        )
        failing = {
            k: Cooldown(f.until - now, f.error)
            for (n, k), f in self.book.failing.items()
            if n == d.name and f.until > now
        }
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
            ceiling=self.book.ceiling.get(d.name),
            held=self.book.held.get(d.name, 0),
            failing=failing,
        )

    # --- failures ----------------------------------------------------------------------
    def circuit_opened(self, d: DaemonState, why: str) -> None:
        self._metrics.breaker_open.labels(daemon=d.name).set(1)
        self.decisions.record("health", "", d.name, "circuit-opened", error=why)
        self.replace_waiters(d, f"daemon {d.name} is failing: {why}")

    def replace_waiters(self, d: DaemonState, why: str) -> None:
        """Hand every request queued on ``d`` back to be placed elsewhere."""
        for (name, _key), gate in self.gates.items():
            if name == d.name and gate.depth:
                gate.fail(Replaced(why, retry_after=1))

    def elsewhere(self, d: DaemonState, key: str) -> bool:
        """Could another daemon take requests for ``key`` (answering, has the model,
        its loads of it not failing)?"""
        now = time.monotonic()
        return any(
            o.name != d.name
            and self.available(o)
            and (key in o.catalog or key in o.loaded)
            and self.book.failing_for(o.name, key, now) is None
            for o in self.fleet.daemons.values()
        )

    def value_fn(self, daemon: str) -> Callable[[RunnerView], float]:
        return lambda r: eviction_value(self.oracle, daemon, r)

    def idle_expiry(self, daemon: str, key: str) -> float | None:
        """Monotonic time at which the bridge will unload the model (bridge policy)."""
        after = self.idle_after(daemon, key)
        if after is None or self.pinned(daemon, key):
            return None
        last = self.used_at.get((daemon, key))
        return None if last is None else last + after

    def idle_after(self, daemon: str, key: str) -> float | None:
        """Seconds an idle runner of ``key`` stays loaded (``idle`` reclaim): the
        embedded predictor's keep-alive for the model, at most ``ALB_IDLE_UNLOAD_AFTER``;
        without a predictor, that setting. None: the bridge does not unload idle
        runners (``demand`` reclaim, ``honour`` policy, or the setting is 0)."""
        cap = self._settings.idle_unload_after
        s = self._settings
        if s.keep_alive_policy != "bridge" or s.reclaim != "idle" or cap <= 0:
            return None
        return cap if self.keep_alive is None else self.keep_alive.seconds(daemon, key, cap)

    def last_used(self, daemon: str, key: str) -> float | None:
        return self.used_at.get((daemon, key))

    def was_up(self, name: str, up: bool) -> bool:
        """Record ``up`` for ``name``; returns the previous value (True at first)."""
        before = self._was_up.get(name, True)
        self._was_up[name] = up
        return before

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    @property
    def upstream(self) -> Upstream:
        return self._upstream
