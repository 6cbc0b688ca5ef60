"""The scheduler's background work: reconciliation, idle unloads, health.

``Upkeep`` owns two background tasks and reads the state through ``Residency``; what it
needs from the scheduler is two hooks (``UpkeepHooks``: kick a daemon's driver, unload a
model), so it imports neither the scheduler nor the driver.

* ``refresh_loop`` (every ``ALB_REFRESH_INTERVAL``): ``/api/ps`` and ``/api/tags`` of
  every daemon, NVML for the local one, then ``reconcile``, idle unloads and the
  retirement of replicas whose burst is over.
* ``reconcile``: gates follow what the daemons really hold. A model loaded behind
  the bridge's back gets an open gate (its context from ``/api/ps``); one that
  vanished gets a closed gate and, if requests wait for it, a new load. A daemon
  that stopped answering hands its queued requests back to be placed elsewhere.
* ``health_loop`` (every ``ALB_HEALTH_INTERVAL``): a one-token generate through a
  loaded model's free slot (the real request path, not just ``/api/version``, which
  is the fallback when nothing is loaded), feeding each daemon's circuit breaker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from bridge.errors import BridgeError
from bridge.policy.numctx import Need
from bridge.policy.replicas import retirements
from bridge.scheduling.fleet import DaemonState
from bridge.scheduling.residency import Residency
from common.tasks import BackgroundTask


class UpkeepHooks(Protocol):
    """What upkeep asks of the scheduler."""

    def kick(self, daemon: str) -> None: ...

    async def unload_model(
        self, key: str, daemon: str | None, reason: str, *, force: bool = False
    ) -> list[str]: ...


class Upkeep:
    """Reconciliation, idle unloads and health checks, each loop a task of its own."""

    def __init__(self, r: Residency, hooks: UpkeepHooks) -> None:
        self._r = r
        self._hooks = hooks
        self._refresh = BackgroundTask("alb-refresh")
        self._health = BackgroundTask("alb-health")

    def start(self) -> None:
        self._refresh.start(self.refresh_loop())
        self._health.start(self.health_loop())

    async def aclose(self) -> None:
        await self._refresh.stop()
        await self._health.stop()

    async def refresh_loop(self) -> None:
        interval = self._r.settings.refresh_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self._r.fleet.refresh_all()
                await self._r.fleet.read_local_memory()
                self.reconcile()
                self.unload_idle()
                self.retire_replicas()
                self.ask_owners()
            except BridgeError:  # a daemon being down is recorded on its state
                continue

    def reconcile(self) -> None:
        m = self._r.metrics
        for d in self._r.fleet.daemons.values():
            m.daemon_up.labels(daemon=d.name).set(1 if d.up else 0)
            budget = self._r.fleet.budget(d, self._r.settings.headroom)
            if d.capacity is not None:
                m.memory.labels(daemon=d.name, kind="capacity").set(d.capacity)
            if budget is not None:
                m.memory.labels(daemon=d.name, kind="budget").set(budget)
            used = sum(int(r.get("size") or 0) for r in d.loaded.values())
            m.memory.labels(daemon=d.name, kind="used").set(used)
            was_up = self._r.was_up(d.name, d.up)
            if not d.up:
                if was_up:
                    self._went_down(d)
                continue
            if not was_up:
                self._r.decisions.record("health", "", d.name, "answering-again")
                self._r.book.forget(d.name)  # a restarted daemon may not be the one that taught it
            self._r.book.observe(d.name, used)
            for key in d.loaded:
                self._r.gate(d.name, key)
        for (name, key), gate in self._r.gates.items():
            d = self._r.fleet.get(name)
            if not d.up or self._r.busy_op(name, key):
                continue
            row = d.loaded.get(key)
            if row is not None and not gate.ready:
                if self._r.fenced(d, key):
                    continue  # its owner unloads it: a read from before may still show it
                why = (
                    "appeared-behind-the-bridge" if self._r.coord.owns(name) else "loaded-by-owner"
                )
                self._r.decisions.record("load", key, name, why, ps=_ps(row))
                gate.auto = False
                gate.open(ctx=int(row.get("context_length") or 0))
            elif row is None and gate.ready:
                self._r.decisions.record("unload", key, name, "vanished-behind-the-bridge")
                gate.close()
                if gate.depth:
                    self._hooks.kick(name)
            elif row is not None and gate.ready and not gate.auto:
                ctx = int(row.get("context_length") or 0)
                if ctx and ctx != gate.ctx:  # reloaded by someone else with another context
                    self._r.decisions.record(
                        "num_ctx", key, name, "changed-behind-the-bridge", was=gate.ctx, now=ctx
                    )
                    gate.ctx = ctx
        for d in self._r.fleet.daemons.values():
            if d.up and any(g.depth for (n, _), g in self._r.gates.items() if n == d.name):
                self._hooks.kick(d.name)

    def _went_down(self, d: DaemonState) -> None:
        """Close its gates, forget its runners (a restart comes back empty), re-place
        its queued requests."""
        self._r.decisions.record("health", "", d.name, "not-answering", error=d.error)
        for (name, _key), gate in self._r.gates.items():
            if name == d.name:
                gate.close()
        d.loaded = {}
        self._r.replace_waiters(d, f"daemon {d.name} stopped answering: {d.error}")

    def ask_owners(self) -> None:
        """Requests waiting on a daemon another replica owns: its driver asks the owner
        again (a want can be lost with an owner that died)."""
        r = self._r
        for name, gates in r.gates_of.items():
            if not r.coord.owns(name) and any(g.depth for g in gates.values()):
                self._hooks.kick(name)

    def unload_idle(self) -> None:
        """``ALB_RECLAIM=idle``: unload runners idle for longer than their keep-alive
        (``Residency.idle_after``: the embedded predictor's per model, else
        ``ALB_IDLE_UNLOAD_AFTER``); runs every ``ALB_REFRESH_INTERVAL``."""
        s = self._r.settings
        if s.keep_alive_policy != "bridge" or s.reclaim != "idle" or s.idle_unload_after <= 0:
            return
        now = time.monotonic()
        for (name, key), gate in list(self._r.gates.items()):
            if not gate.ready or gate.outstanding or not self._r.coord.owns(name):
                continue
            if self._r.coord.others(name, key):  # another replica's requests are on it
                continue
            idle_after = self._r.idle_after(name, key)
            last = self._r.last_used(name, key) or now
            if (
                idle_after is not None
                and now - last >= idle_after
                and not self._r.pinned(name, key)
                and not self._r.busy_op(name, key)
            ):
                self._r.loader.spawn(self._hooks.unload_model(key, name, "idle"))

    def retire_replicas(self) -> None:
        """Unload copies made by replication that stay idle ``ALB_REPLICA_IDLE`` while
        another copy of the model is loaded (``bridge.policy.replicas.retirements``)."""
        r = self._r
        now = time.monotonic()
        copies: dict[str, list[tuple[str, float, bool]]] = {}
        for d in r.fleet.daemons.values():
            for key in d.loaded:
                gate = r.gates.get((d.name, key))
                busy = gate is None or gate.outstanding > 0 or r.busy_op(d.name, key)
                busy = busy or not r.coord.owns(d.name)  # its owner retires it
                busy = busy or r.coord.others(d.name, key) > 0  # the others use it
                idle = -1.0 if busy else now - (r.last_used(d.name, key) or now)
                replica = (d.name, key) in r.replicas and not r.pinned(d.name, key)
                copies.setdefault(key, []).append((d.name, idle, replica))
        # Forget copies that are gone (evicted, unloaded), not those still being loaded.
        r.replicas = {
            (name, key)
            for name, key in r.replicas
            if key in r.fleet.get(name).loaded
            or (name, key) in r.copying
            or (name, key) in r.targets
            or ((g := r.gates.get((name, key))) is not None and g.depth > 0)
        }
        for retire in retirements(copies, idle_s=r.settings.replica_idle):
            r.replicas.discard((retire.daemon, retire.key))
            r.metrics.replicas.labels(action="retire").inc()
            r.decisions.record(
                "retire-replica",
                retire.key,
                retire.daemon,
                f"idle {retire.idle_s:.0f}s, {retire.copies - 1} other copies loaded",
                idle_s=round(retire.idle_s, 3),
                copies=retire.copies,
            )
            r.loader.spawn(self._hooks.unload_model(retire.key, retire.daemon, "retire-replica"))

    async def health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._r.settings.health_interval)
            now = time.monotonic()
            due = [
                d
                for d in self._r.fleet.daemons.values()
                if self._r.breakers[d.name].wants_probe(now)
            ]
            await asyncio.gather(*(self._check(d) for d in due), return_exceptions=True)

    async def _check(self, d: DaemonState) -> None:
        breaker = self._r.breakers[d.name]
        try:
            what = await self.probe(d)
        except BridgeError as exc:
            self._r.metrics.health_checks.labels(daemon=d.name, outcome="failed").inc()
            if breaker.failure(time.monotonic(), exc.message):
                self._r.circuit_opened(d, exc.message)
            return
        self._r.metrics.health_checks.labels(daemon=d.name, outcome="ok").inc()
        if breaker.success():
            self._r.metrics.breaker_open.labels(daemon=d.name).set(0)
            self._r.decisions.record("health", "", d.name, "circuit-closed", probe=what)
            self._hooks.kick(d.name)

    async def probe(self, d: DaemonState) -> str:
        """One health check of ``d``: a one-token generate on a loaded completion model
        with a free slot (with the runner's own num_ctx, so it never reloads), else
        ``/api/version``. Returns what was probed; raises on a transport failure, a
        timeout or a 5xx (a 4xx says the daemon answers: the model is the problem)."""
        timeout = self._r.settings.health_timeout
        for (name, key), gate in list(self._r.gates.items()):
            if name != d.name or not gate.ready or key not in d.loaded:
                continue
            try:
                caps = await self._r.fleet.capabilities(d, key)
            except BridgeError:
                continue
            if "completion" not in caps or not gate.try_acquire(Need(1)):
                continue
            try:
                options: dict[str, Any] = {"num_predict": 1}
                if not gate.auto and gate.ctx:
                    options["num_ctx"] = gate.ctx
                body: dict[str, Any] = {
                    "model": self._r.fleet.display_name(d, key),
                    "prompt": "ping",
                    "stream": False,
                    "options": options,
                }
                if self._r.settings.keep_alive_policy == "bridge":
                    body["keep_alive"] = -1
                status, raw = await self._r.upstream.call(
                    d.url, "POST", "/api/generate", body, read_timeout=timeout
                )
            finally:
                gate.release()
            if status >= 500:
                raise BridgeError(f"health check of {key} answered {status}")
            if status == 200 and b'"done":true' in raw:
                return f"generate {key}"
            break
        status, _ = await self._r.upstream.call(d.url, "GET", "/api/version", read_timeout=timeout)
        if status != 200:
            raise BridgeError(f"/api/version answered {status}")
        return "version"


def _ps(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in ("size", "size_vram", "context_length", "expires_at")}
