"""The per-daemon load driver: carries out plans, one operation at a time (theory of operation).

One driver task per daemon (Ollama loads one model at a time per daemon too),
started by ``kick`` when idle. Each step finds a gate whose waiters need a load
(a cold model, or a runner whose context is too small, drained first), asks
``placement.plan_room`` on a fresh snapshot which idle runners to unload,
unloads them (``keep_alive: 0``, confirmed with ``/api/ps``), then loads with
the chosen ``num_ctx``. When nothing can be freed the waiters stay queued; a
release that leaves a model idle while others wait, every unload and every
refresh kicks the driver again. Victims' gates are closed before the first
await, so no request can reach a runner that is being evicted.

A failed load teaches (``health.LoadBook``): a memory error sets the daemon's
ceiling; any other failure (a timeout included) marks the pair failing for a cooldown
and counts against the daemon's breaker. Its waiters are then placed again with what
was learned (``Replaced``: another daemon, or here at a size that fits; a runner the
daemon kept serves on), unless no other daemon could take them: then they get the
error. The model's own runner is unloaded before a reload only when the new size is
known to fit (``RoomPlan.proven``); otherwise the load goes ahead and the daemon
replaces the runner itself, or refuses and keeps it.

``unload_model`` is the explicit unload (admin API, honour-policy clients, idle
unloads): it closes the gate, lets the model's requests finish, then unloads.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Any, Literal

from bridge.coord import Want
from bridge.errors import (
    BadRequest,
    BridgeError,
    Conflict,
    LoadFailed,
    Moved,
    Replaced,
    Unavailable,
)
from bridge.policy import step
from bridge.policy.numctx import Need, openai_default_hint
from bridge.policy.placement import Cooldown, eviction_value, plan_room
from bridge.policy.replicas import Backlog, rebalance
from bridge.policy.sizing import ModelInfo
from bridge.scheduling.fleet import DaemonState
from bridge.scheduling.gate import Gate
from bridge.scheduling.loader import LoadSpec
from bridge.scheduling.residency import GIB, Residency, Target

#: How long an unload asked of a daemon's owner may take, and how often ``/api/ps`` is
#: read meanwhile.
_OWNER_UNLOAD_S = 30.0
_OWNER_POLL_S = 0.05


def _state(key: str, gate: Gate) -> step.GateState:
    """``gate`` for ``bridge.policy.step``: its waiters still waiting (not those already
    refused or cancelled), and their needs."""
    live = [w for w in gate.queue if not w.fut.done()]
    clients = [w.since for w in live if not w.background]
    return step.GateState(
        key=key,
        ready=gate.ready,
        busy=gate.busy > 0,
        hold=gate.hold,
        ctx=gate.ctx,
        auto=gate.auto,
        queued=bool(live),
        needs=tuple(w.need for w in live if w.need is not None),
        since=min(clients) if clients else None,
    )


class Driver:
    """Loads, evictions and explicit unloads on the daemons of one ``Residency``."""

    def __init__(self, r: Residency) -> None:
        self._r = r
        self._dirty: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def kick(self, daemon: str) -> None:
        """Ask ``daemon``'s driver to look for work (starts it when idle)."""
        self._dirty.add(daemon)
        if daemon not in self._tasks:
            self._tasks[daemon] = self._r.loader.spawn(self._drive(daemon))

    async def _drive(self, name: str) -> None:
        try:
            while name in self._dirty:
                self._dirty.discard(name)
                if await self._step(self._r.fleet.get(name)):
                    self._dirty.add(name)
        finally:
            self._tasks.pop(name, None)

    async def _step(self, d: DaemonState) -> bool:
        """Carry out at most one load (with its evictions); True when one ran. The
        decisions are ``bridge.policy.step``'s; this applies them to the gates."""
        r = self._r
        if not r.available(d):
            return False
        if not r.coord.owns(d.name):
            self._ask_owner(d)
            return False
        gates = r.gates_of.get(d.name, {})
        states = [_state(key, g) for key, g in gates.items() if (d.name, key) not in r.ops]
        for state in step.drive_order(states):
            key, gate = state.key, gates[state.key]
            if (d.name, key) in r.ops:  # an earlier gate's await let another op begin
                continue
            want = step.wanted(_state(key, gate))
            if isinstance(want, step.Drain):
                gate.hold = True  # drain: no new slots for the runner being replaced
                continue
            if isinstance(want, step.Reopen):
                gate.open()  # those it drained for left (refused, cancelled): serve on
                continue
            if want is None:
                continue
            if want.reload:
                gate.hold = True
            now = time.monotonic()
            failing = r.book.failing_for(d.name, key, now)
            cooldown = None if failing is None else Cooldown(failing.until - now, failing.error)
            info = None if cooldown is not None else await r.fleet.model_info(key)

            def target(needs: Sequence[Need], info: ModelInfo | None = info) -> Target:
                assert info is not None  # plan_load asks only once the model is described
                return r.target(info, d, list(needs))

            def room(size: int, key: str = key) -> object:
                return plan_room(r.view(d), key, size, r.value_fn(d.name))

            ops = step.plan_load(want, cooldown=cooldown, info=info, target=target, room=room)
            for op in ops:
                if isinstance(op, step.Cool):
                    self._cooling(d, key, gate, op.left_s, op.error, op.reload)
                elif isinstance(op, step.Undescribed):
                    gate.fail(LoadFailed(f"no daemon can describe {key} (/api/show failed)"))
                elif isinstance(op, step.Refuse) and (d.name, key) in r.replicas:
                    self._abandon_copy(d, key, gate, op.target)
                elif isinstance(op, step.Refuse):
                    self._refuse(d, key, gate, op.target, op.which)
                elif isinstance(op, step.Execute):
                    await self._execute(d, gate, op)
                    return True
        return False

    async def _unload_by_owner(self, d: DaemonState, key: str) -> bool:
        """Another replica owns ``d``: ask it to unload ``key`` and wait (as long as an
        unload is confirmed) for ``/api/ps`` to show it gone."""
        r = self._r
        r.coord.admin("unload", key, d.name)
        deadline = time.monotonic() + _OWNER_UNLOAD_S
        while key in d.loaded and time.monotonic() < deadline:
            await asyncio.sleep(_OWNER_POLL_S)
            await r.fleet.refresh_ps(d)
        return key not in d.loaded

    def _ask_owner(self, d: DaemonState) -> None:
        """Another replica owns ``d``: ask it for the loads this one's requests wait
        for (the largest need of each gate; asked again while they wait). Its gates
        open when the owner's load shows in ``/api/ps``."""
        for key, gate in self._r.gates_of.get(d.name, {}).items():
            state = _state(key, gate)
            want = step.wanted(state)
            if isinstance(want, step.Reopen):
                gate.open()
            if not isinstance(want, step.Wanted | step.Drain) or not state.needs:
                continue
            big = max(state.needs, key=lambda n: n.tokens)
            auto = all(n.auto for n in state.needs)
            copy = (d.name, key) in self._r.replicas
            self._r.coord.want(
                Want(d.name, key, big.tokens, auto, big.client_num_ctx, replica=copy)
            )

    def _cooling(  # noqa: PLR0917
        self, d: DaemonState, key: str, gate: Gate, left_s: float, error: str, reload: bool
    ) -> None:
        """Waiters for a load of a pair in its cooldown: placed again elsewhere, else 503."""
        why = f"loading {key} on {d.name} failed lately ({error})"
        err: BridgeError = (
            Replaced(why, retry_after=1)
            if self._r.elsewhere(d, key)
            else Unavailable(f"{why}; it is tried again in {left_s:.0f}s", retry_after=left_s)
        )
        if not reload:
            gate.fail(err)
            return
        for w in list(gate.queue):
            if w.need is not None and not w.fut.done() and not gate.fits(w.need):
                w.fut.set_exception(err)
        gate.open()

    def _refuse(
        self,
        d: DaemonState,
        key: str,
        gate: Gate,
        target: Target,
        which: Literal["openai", "unfit", "all"],
    ) -> None:
        """``target`` can never fit ``d``: queued requests get a 400 — ``openai``: the /v1
        ones (the others may fit a bucket); ``unfit``: those the loaded runner cannot
        serve (it serves the rest); ``all``: every one (the model stays cold)."""
        r = self._r
        room = r.room(d, key)
        ceiling = r.book.ceiling.get(d.name)
        why = f"{key} with num_ctx {target.ctx} needs about {target.size / GIB:.1f} GiB; " + (
            f"a {ceiling / GIB:.1f} GiB load failed on {d.name} for want of memory"
            if ceiling is not None and target.size >= ceiling and (room is None or ceiling <= room)
            else f"{d.name} can plan for {(room or 0) / GIB:.1f} GiB besides pinned models"
        )
        if target.reason == "openai-surface-needs-default-context":
            why += f". {openai_default_hint(r.daemon_default(d))}"
        r.decisions.record("reject", key, d.name, why, size=target.size, num_ctx=target.ctx)
        # Never here, but maybe elsewhere (the room changed since they were placed: a pin
        # arrived, a copy grew): placed again; where it fits nowhere, admission says 400.
        err: BridgeError = Replaced(why, retry_after=1) if r.elsewhere(d, key) else BadRequest(why)
        if which == "all":
            gate.fail(err)
            return
        for w in list(gate.queue):
            n = w.need
            if n is None or w.fut.done():
                continue
            if n.auto if which == "openai" else not gate.fits(n):
                w.fut.set_exception(err)
        if which == "unfit":
            gate.open()

    async def _execute(self, d: DaemonState, gate: Gate, op: step.Execute) -> None:
        key, target, plan, needs = op.key, op.target, op.plan, op.needs
        r = self._r
        now = time.monotonic()
        view = r.view(d, now)
        for v in plan.victims:
            r.gate(d.name, v).close()
            r.ops.add((d.name, v))
        r.ops.add((d.name, key))
        r.targets[(d.name, key)] = target
        reloading = op.reload
        old_ctx, old_auto = gate.ctx, gate.auto
        gate.close()
        try:
            for v in plan.victims:
                rv = view.runners[v]
                r.decisions.record(
                    "evict",
                    v,
                    d.name,
                    f"room for {key}",
                    size=rv.size,
                    idle_s=round(rv.idle_s, 3),
                    reload_s=round(rv.reload_s, 3),
                    value=round(eviction_value(r.oracle, d.name, rv), 6),
                    budget=view.budget,
                    used=view.used,
                    needed=target.size,
                )
                r.metrics.evictions.labels(daemon=d.name, reason="room").inc()
                ok = await r.loader.unload(d, v, "evict")
                r.ops.discard((d.name, v))
                if not ok:
                    raise LoadFailed(f"could not unload {v} from {d.name} to make room for {key}")
            if op.unload_own:
                await r.loader.unload(d, key, "reload")
            elif reloading:
                # No evidence the new size fits: keep the runner; the daemon replaces it
                # if the load can be done, and keeps it if not.
                r.decisions.record(
                    "load", key, d.name, "reload-without-unload", estimated_size=target.size
                )
            reason = (
                "openai-surface-needs-default-context"
                if target.auto and reloading
                else "bigger-context"
                if reloading
                else "request"
            )
            r.decisions.record(
                "num_ctx",
                key,
                d.name,
                reason,
                num_ctx=target.ctx,
                auto=target.auto,
                previous_num_ctx=old_ctx if reloading else None,
                needs=sorted({n.tokens for n in needs})[-5:],
                buckets=list(r.limits.buckets),
                choice=target.reason,
                sent_num_ctx=target.num_ctx,
                daemon_default=r.daemon_default(d).ctx,
                daemon_default_known=r.daemon_default(d).known,
            )
            r.decisions.record(
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
            options: dict[str, Any] = {} if target.num_ctx is None else {"num_ctx": target.num_ctx}
            keep = math.inf if r.settings.keep_alive_policy == "bridge" else None
            await r.loader.load(
                d, key, LoadSpec(keep, options), "reload" if reloading else "request"
            )
            ctx = self._learn(d, key, target)
            gate.last_load_at = time.monotonic()
            # A bucket runner keeps the context it was asked for: requests forwarded to it
            # carry that num_ctx, which must match the load's for Ollama not to reload.
            gate.open(ctx=ctx, auto=target.auto)
            if (d.name, key) in r.replicas:
                self._rebalance(key, d.name)
        except BridgeError as exc:
            await r.fleet.refresh_ps(d)
            r.decisions.record("load", key, d.name, "failed", error=exc.message)
            if not d.up:
                gate.fail(Replaced(f"{d.name} went away while loading {key}", retry_after=1))
            else:
                self._failed(d, key, gate, target, exc)
                row = d.loaded.get(key)
                if reloading and row is not None:  # the daemon kept the old runner
                    gate.open(ctx=int(row.get("context_length") or old_ctx), auto=old_auto)
        finally:
            for v in plan.victims:
                r.ops.discard((d.name, v))
            r.ops.discard((d.name, key))
            r.targets.pop((d.name, key), None)

    def _abandon_copy(self, d: DaemonState, key: str, gate: Gate, target: Target) -> None:
        """A copy that cannot be loaded after all (the requests routed to it need more
        than fits there): no client is refused for it; its waiters are placed again."""
        r = self._r
        r.replicas.discard((d.name, key))
        r.metrics.replicas.labels(action="replicate-failed").inc()
        r.decisions.record(
            "replicate", key, d.name, "abandoned", size=target.size, num_ctx=target.ctx
        )
        if gate.ready:
            gate.hand_back(Replaced(f"the copy of {key} on {d.name} cannot grow", retry_after=1))
            gate.open()
        else:
            gate.fail(Replaced(f"the copy of {key} on {d.name} cannot be loaded", retry_after=1))

    def _rebalance(self, key: str, ready: str) -> None:
        """A copy of ``key`` is ready on ``ready``: the longest queues of the other
        copies are placed again (``replicas.rebalance``), so they spread over the copies."""
        r = self._r
        # Serving copies only: the queue of a copy still loading waits for that load.
        copies = [(d, g) for d, g in r.copies(key) if g.ready]
        backlogs = [Backlog(d.name, g.depth, g.slots, r.service_s(d.name, key)) for d, g in copies]
        gates = {d.name: g for d, g in copies}
        for name in rebalance(backlogs, ready):
            moved = gates[name].hand_back(Moved(f"{key} has a new copy on {ready}"))
            r.decisions.record("replicate", key, name, "rebalanced", moved=moved, to=ready)

    def _failed(
        self, d: DaemonState, key: str, gate: Gate, target: Target, exc: BridgeError
    ) -> None:
        """Learn from a failed load (``LoadBook.failed``), then hand its waiters back to
        be placed again with that knowledge, or give them the error when no other daemon
        could take them and nothing was learned that a smaller load could use."""
        r = self._r
        now = time.monotonic()
        lesson = r.book.failed(d.name, key, target.size, exc.message, now)
        figures = lesson.figures or (None, None)
        if lesson.memory:
            r.decisions.record(
                "load",
                key,
                d.name,
                "memory-ceiling-learned",
                ceiling=lesson.ceiling,
                estimated_size=target.size,
                num_ctx=target.ctx,
                daemon_needed=figures[0],
                daemon_available=figures[1],
                error=exc.message,
            )
        else:
            assert lesson.failing is not None
            r.decisions.record(
                "load",
                key,
                d.name,
                "failing",
                cooldown_s=round(lesson.failing.until - now, 3),
                failures=lesson.failing.count,
                error=exc.message,
            )
        if lesson.memory or r.elsewhere(d, key):
            gate.fail(Replaced(f"loading {key} on {d.name} failed: {exc.message}", retry_after=1))
        else:
            gate.fail(exc)
        if not lesson.memory and r.breakers[d.name].failure(now, exc.message):
            r.circuit_opened(d, exc.message)

    def _learn(self, d: DaemonState, key: str, target: Target) -> int:
        """What the load really gave (``/api/ps``), as ``step.learned`` reads it: the size,
        keyed by the runner's real context, and for a load without num_ctx the daemon's
        default. Returns the context requests are fitted against."""
        r = self._r
        row = d.loaded.get(key) or {}
        info = r.fleet.infos.get(key)
        before = r.daemon_default(d)
        got = step.learned(
            target,
            real_ctx=int(row.get("context_length") or 0),
            trained_ctx=info.context_length if info else 0,
            configured_default=d.spec.default_ctx,
        )
        real = int(row.get("size") or 0)
        r.book.loaded(d.name, key, real or target.size)
        r.book.observe(d.name, sum(int(x.get("size") or 0) for x in d.loaded.values()))
        if got.size_ctx:
            r.sizes.learn(key, got.size_ctx, r.parallel(d, info), real)
            r.metrics.num_ctx_loaded.observe(got.size_ctx)
        if real and (real != target.size or got.size_ctx != target.ctx):
            r.decisions.record(
                "load",
                key,
                d.name,
                "size-learned",
                estimated=target.size,
                actual=real,
                estimated_num_ctx=target.ctx,
                num_ctx=got.size_ctx,
            )
        if got.auto_ctx is not None:
            r.auto_ctx[(d.name, key)] = got.auto_ctx
        if got.configured_differs is not None:
            r.decisions.record(
                "num_ctx",
                key,
                d.name,
                "configured-default-differs",
                configured=d.spec.default_ctx,
                observed=got.configured_differs,
            )
        if got.default_ctx is not None:
            r.default_ctx[d.name] = got.default_ctx
            if before.ctx != got.default_ctx or not before.known:
                r.decisions.record(
                    "num_ctx",
                    key,
                    d.name,
                    "daemon-default-learned",
                    num_ctx=got.default_ctx,
                    assumed=before.ctx,
                )
        return got.serve_ctx

    async def unload_model(
        self, key: str, daemon: str | None, reason: str, *, force: bool = False
    ) -> list[str]:
        """Unload ``key`` (from ``daemon`` or everywhere) once its requests finished;
        returns the daemons it left. ``Conflict`` for a pinned model unless ``force``."""
        r = self._r
        done: list[str] = []
        for d in r.fleet.daemons.values():
            if (daemon is not None and d.name != daemon) or key not in d.loaded:
                continue
            if r.pinned(d.name, key):
                if force:
                    continue
                raise Conflict(f"{key} is pinned on {d.name}: unpin it first")
            if (d.name, key) in r.ops:
                continue
            if not r.coord.owns(d.name):
                if await self._unload_by_owner(d, key):
                    done.append(d.name)
                continue
            gate = r.gate(d.name, key)
            r.ops.add((d.name, key))
            gate.close()
            try:
                while gate.busy:  # noqa: ASYNC110  (its requests finish first)
                    await asyncio.sleep(0.01)
                r.decisions.record("unload", key, d.name, reason)
                if await r.loader.unload(d, key, reason):
                    done.append(d.name)
            finally:
                r.ops.discard((d.name, key))
                if key in d.loaded:
                    gate.open()
                self.kick(d.name)
        return done
