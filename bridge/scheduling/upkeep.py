"""The scheduler's background work: reconciliation, idle unloads, health, pins.

* ``refresh_loop`` (every ``ALB_REFRESH_INTERVAL``): ``/api/ps`` and ``/api/tags`` of
  every daemon, NVML for the local one, then ``reconcile`` and idle unloads.
* ``reconcile``: gates follow what the daemons really hold. A model loaded behind
  the bridge's back gets an open gate (its context from ``/api/ps``); one that
  vanished gets a closed gate and, if requests wait for it, a new load. A daemon
  that stopped answering hands its queued requests back to be placed elsewhere.
* ``health_loop`` (every ``ALB_HEALTH_INTERVAL``): a one-token generate through a
  loaded model's free slot (the real request path, not just ``/api/version``, which
  is the fallback when nothing is loaded), feeding each daemon's circuit breaker.
* ``pin``: load a pinned model (configuration or admin API) and keep it loaded.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bridge.errors import BridgeError, ModelNotFound, Replaced
from bridge.policy.numctx import Need
from bridge.scheduling.fleet import DaemonState
from bridge.scheduling.scheduler import Lease, Scheduler
from bridge.wire import names

#: Placements one admin load goes through (a failed load re-places it, as for requests).
_MAX_PLACEMENTS = 4


async def refresh_loop(s: Scheduler) -> None:
    interval = s.settings.refresh_interval
    while True:
        await asyncio.sleep(interval)
        try:
            await s.fleet.refresh_all()
            await s.fleet.read_local_memory()
            reconcile(s)
            unload_idle(s)
        except BridgeError:  # a daemon being down is recorded on its state
            continue


def reconcile(s: Scheduler) -> None:
    m = s.metrics
    for d in s.fleet.daemons.values():
        m.daemon_up.labels(daemon=d.name).set(1 if d.up else 0)
        budget = s.fleet.budget(d, s.settings.headroom)
        if d.capacity is not None:
            m.memory.labels(daemon=d.name, kind="capacity").set(d.capacity)
        if budget is not None:
            m.memory.labels(daemon=d.name, kind="budget").set(budget)
        used = sum(int(r.get("size") or 0) for r in d.loaded.values())
        m.memory.labels(daemon=d.name, kind="used").set(used)
        was_up = s.was_up(d.name, d.up)
        if not d.up:
            if was_up:
                _went_down(s, d)
            continue
        if not was_up:
            s.decisions.record("health", "", d.name, "answering-again")
            s.book.forget(d.name)  # a restarted daemon may not be the one that taught it
        s.book.observe(d.name, used)
        for key in d.loaded:
            s.gate(d.name, key)
    for (name, key), gate in s.gates.items():
        d = s.fleet.get(name)
        if not d.up or s.busy_op(name, key):
            continue
        row = d.loaded.get(key)
        if row is not None and not gate.ready:
            s.decisions.record("load", key, name, "appeared-behind-the-bridge", ps=_ps(row))
            gate.auto = False
            gate.open(ctx=int(row.get("context_length") or 0))
        elif row is None and gate.ready:
            s.decisions.record("unload", key, name, "vanished-behind-the-bridge")
            gate.close()
            if gate.depth:
                s.kick(name)
        elif row is not None and gate.ready and not gate.auto:
            ctx = int(row.get("context_length") or 0)
            if ctx and ctx != gate.ctx:  # reloaded by someone else with another context
                s.decisions.record(
                    "num_ctx", key, name, "changed-behind-the-bridge", was=gate.ctx, now=ctx
                )
                gate.ctx = ctx
    for d in s.fleet.daemons.values():
        if d.up and any(g.depth for (n, _), g in s.gates.items() if n == d.name):
            s.kick(d.name)


def _ps(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in ("size", "size_vram", "context_length", "expires_at")}


def _went_down(s: Scheduler, d: DaemonState) -> None:
    """Close its gates, forget its runners (a restart comes back empty), re-place
    its queued requests."""
    s.decisions.record("health", "", d.name, "not-answering", error=d.error)
    for (name, _key), gate in s.gates.items():
        if name == d.name:
            gate.close()
    d.loaded = {}
    s.replace_waiters(d, f"daemon {d.name} stopped answering: {d.error}")


def unload_idle(s: Scheduler) -> None:
    """Unload runners idle for longer than their keep-alive (``Residency.idle_after``:
    the embedded predictor's per model, else ``ALB_IDLE_UNLOAD_AFTER``); runs every
    ``ALB_REFRESH_INTERVAL``."""
    if s.settings.keep_alive_policy != "bridge" or s.settings.idle_unload_after <= 0:
        return
    now = time.monotonic()
    for (name, key), gate in list(s.gates.items()):
        if not gate.ready or gate.outstanding:
            continue
        idle_after = s.idle_after(name, key)
        last = s.last_used(name, key) or now
        if (
            idle_after is not None
            and now - last >= idle_after
            and not s.pinned(name, key)
            and not s.busy_op(name, key)
        ):
            s.loader.spawn(s.unload_model(key, name, "idle"))


async def health_loop(s: Scheduler) -> None:
    while True:
        await asyncio.sleep(s.settings.health_interval)
        now = time.monotonic()
        due = [d for d in s.fleet.daemons.values() if s.breakers[d.name].wants_probe(now)]
        await asyncio.gather(*(_check(s, d) for d in due), return_exceptions=True)


async def _check(s: Scheduler, d: DaemonState) -> None:
    breaker = s.breakers[d.name]
    try:
        what = await probe(s, d)
    except BridgeError as exc:
        s.metrics.health_checks.labels(daemon=d.name, outcome="failed").inc()
        if breaker.failure(time.monotonic(), exc.message):
            s.circuit_opened(d, exc.message)
        return
    s.metrics.health_checks.labels(daemon=d.name, outcome="ok").inc()
    if breaker.success():
        s.metrics.breaker_open.labels(daemon=d.name).set(0)
        s.decisions.record("health", "", d.name, "circuit-closed", probe=what)
        s.kick(d.name)


async def probe(s: Scheduler, d: DaemonState) -> str:
    """One health check of ``d``: a one-token generate on a loaded completion model
    with a free slot (with the runner's own num_ctx, so it never reloads), else
    ``/api/version``. Returns what was probed; raises on a transport failure, a
    timeout or a 5xx (a 4xx says the daemon answers: the model is the problem)."""
    timeout = s.settings.health_timeout
    for (name, key), gate in list(s.gates.items()):
        if name != d.name or not gate.ready or key not in d.loaded:
            continue
        try:
            caps = await s.fleet.capabilities(d, key)
        except BridgeError:
            continue
        if "completion" not in caps or not gate.try_acquire(Need(1)):
            continue
        try:
            options: dict[str, Any] = {"num_predict": 1}
            if not gate.auto and gate.ctx:
                options["num_ctx"] = gate.ctx
            body: dict[str, Any] = {
                "model": s.fleet.display_name(d, key),
                "prompt": "ping",
                "stream": False,
                "options": options,
            }
            if s.settings.keep_alive_policy == "bridge":
                body["keep_alive"] = -1
            status, raw = await s.upstream.call(
                d.url, "POST", "/api/generate", body, read_timeout=timeout
            )
        finally:
            gate.release()
        if status >= 500:
            raise BridgeError(f"health check of {key} answered {status}")
        if status == 200 and b'"done":true' in raw:
            return f"generate {key}"
        break
    status, _ = await s.upstream.call(d.url, "GET", "/api/version", read_timeout=timeout)
    if status != 200:
        raise BridgeError(f"/api/version answered {status}")
    return "version"


async def pin(s: Scheduler, model: str, daemon: str | None, num_ctx: int | None) -> str:
    """Pin ``model`` (on ``daemon``, else wherever placement puts it) and load it
    there; returns the daemon. Raises the bridge's error when it cannot be loaded
    (the pin stays: a later request or restart loads it)."""
    key = names.key(model)
    s.pins.add((key, daemon))
    s.decisions.record("pin", key, daemon or "", "pinned", num_ctx=num_ctx)
    return await load(s, key, daemon, num_ctx)


async def load(s: Scheduler, key: str, daemon: str | None, num_ctx: int | None) -> str:
    """Make sure ``key`` is loaded (on ``daemon``) with at least ``num_ctx``."""
    if not await s.fleet.ensure_known(key):
        raise ModelNotFound(f"model '{key}' not found")
    info = await s.fleet.model_info(key)
    tokens = num_ctx or s.limits.num_ctx_min
    need = Need(tokens, client_num_ctx=num_ctx)
    for attempt in range(_MAX_PLACEMENTS):
        got = s.admit(key, need, info, only=daemon)
        try:
            lease = got if isinstance(got, Lease) else await s.wait(got, "alb:admin")
        except Replaced:  # its load failed and taught placement something: again
            if attempt == _MAX_PLACEMENTS - 1:
                raise
            continue
        s.release(lease, used=False)
        return lease.daemon.name
    raise AssertionError("unreachable")


async def pin_quietly(s: Scheduler, model: str, daemon: str | None) -> None:
    """A pin from configuration: failures are decision records, not crashes."""
    try:
        await pin(s, model, daemon, None)
    except BridgeError as exc:
        s.decisions.record("pin", names.key(model), daemon or "", "load-failed", error=exc.message)
