"""Loads and unloads owned by the bridge: the I/O half of a placement plan.

A load runs in a task of the bridge (the scheduler's per-daemon driver), not of
the request that caused it, on the bridge's own upstream connection, so it
survives that client's disconnect — Ollama aborts a load whose requester goes
away. The scheduler runs at most one load per daemon at a time (as Ollama
does), after unloading the plan's victims, so the memory it planned for is free
before the load starts and Ollama's own eviction never has to choose.

Load = ``POST /api/generate {"model": M}`` with no prompt (``done_reason:
"load"``), or ``POST /api/embed {"model": M, "input": []}`` for embedding-only
models (capabilities from ``/api/show``), carrying the bridge's keep_alive and
the chosen ``num_ctx`` (none for an "auto" runner: the daemon's default).
Unload = the same with ``keep_alive: 0``, confirmed by polling ``/api/ps``
(Ollama replies before the runner is gone).

Every confirmed change is reported to ``on_state`` (a ``StateChange``: loaded,
unloaded, evicted, load_failed, with the reason and durations); the lifespan points
it at the events pipeline (``alb.model-state.v1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bridge.errors import BridgeError, LoadFailed, UpstreamStatus, UpstreamTimeout
from bridge.metrics import Metrics
from bridge.policy.placement import DEFAULT_LOAD_S
from bridge.scheduling.fleet import DaemonState, Fleet
from bridge.upstream import Upstream
from bridge.wire import durations

_UNLOAD_POLL_S = 0.02
_UNLOAD_CONFIRM_S = 30.0


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """How to load: keep_alive in seconds (None: the daemon's default) and runner options."""

    keep_alive: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StateChange:
    """A runner changed state on a daemon because of the bridge."""

    daemon: str
    model: str
    state: Literal["loaded", "unloaded", "evicted", "load_failed"]
    reason: str
    load_ms: float | None = None
    #: How long the runner had been resident (None: loaded before the bridge saw it).
    resident_ms: float | None = None
    #: The runner's ``/api/ps`` row (sizes, context) when known.
    row: Mapping[str, Any] = field(default_factory=dict)
    keep_alive_s: float | None = None
    error: str | None = None


class Loader:
    """Bridge-started loads and confirmed unloads, with their timings."""

    def __init__(
        self, fleet: Fleet, upstream: Upstream, metrics: Metrics, *, load_timeout: float
    ) -> None:
        self._fleet = fleet
        self._upstream = upstream
        self._metrics = metrics
        self._load_timeout = load_timeout
        self._started: dict[tuple[str, str], float] = {}
        #: Learned load seconds per model (drives Retry-After and reload cost).
        self.estimate: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loaded_at: dict[tuple[str, str], float] = {}
        #: Told of every load, failed load and unload (the events pipeline).
        self.on_state: Callable[[StateChange], None] | None = None
        #: Told the daemon's name after every load and unload (``Coordinator.changed``:
        #: the other replicas read its ``/api/ps``).
        self.on_changed: Callable[[str, str], None] | None = None
        #: Awaited before every unload (``Coordinator.quiesce``: the other replicas stop
        #: sending the model's requests there and let theirs in flight finish).
        self.quiesce: Callable[[str, str], Awaitable[None]] | None = None

    # --- queries ---------------------------------------------------------------
    def loading(self, daemon: str, key: str) -> bool:
        return (daemon, key) in self._started

    def remaining_s(self, daemon: str, key: str) -> float:
        """Estimated seconds until the load in progress ends (0 when none runs)."""
        started = self._started.get((daemon, key))
        if started is None:
            return 0.0
        estimate = self.estimate.get(key, DEFAULT_LOAD_S)
        return max(estimate - (time.monotonic() - started), 0.5)

    def load_seconds(self, key: str, size: int) -> float:
        """What a (re)load of ``key`` costs: learned, else ~1 s + 2 GiB/s."""
        learned = self.estimate.get(key)
        return learned if learned is not None else 1.0 + size / (2 * 1024**3)

    # --- operations --------------------------------------------------------------
    async def load(self, d: DaemonState, key: str, spec: LoadSpec, reason: str) -> float:
        """Load and wait for ``/api/ps`` to show it; returns the seconds it took."""
        op = (d.name, key)
        t0 = time.monotonic()
        self._started[op] = t0
        d.loading.add(key)
        outcome = "failed"
        try:
            try:
                async with asyncio.timeout(self._load_timeout):
                    await self._send_load(d, key, spec)
                    await self._fleet.refresh_ps(d)
            except TimeoutError:
                outcome = "timeout"
                err = UpstreamTimeout(
                    f"loading {key} on {d.name} took longer than {self._load_timeout:g}s"
                )
                self._tell(StateChange(d.name, key, "load_failed", reason, error=err.message))
                raise err from None
            except BridgeError as exc:
                self._tell(StateChange(d.name, key, "load_failed", reason, error=exc.message))
                raise
            seconds = time.monotonic() - t0
            self.estimate[key] = seconds
            outcome = "ok"
            self._loaded_at[op] = time.monotonic()
            self._tell(
                StateChange(
                    d.name,
                    key,
                    "loaded",
                    reason,
                    load_ms=seconds * 1000,
                    row=d.loaded.get(key) or {},
                    keep_alive_s=spec.keep_alive,
                )
            )
            return seconds
        finally:
            d.loading.discard(key)
            self._started.pop(op, None)
            self._metrics.loads.labels(reason=reason, outcome=outcome).inc()
            self._metrics.load_seconds.labels(model=key, outcome=outcome).observe(
                time.monotonic() - t0
            )

    async def _send_load(self, d: DaemonState, key: str, spec: LoadSpec) -> None:
        name = self._fleet.display_name(d, key)
        caps = await self._fleet.capabilities(d, key)
        payload: dict[str, Any] = {"model": name}
        if spec.keep_alive is not None:
            payload["keep_alive"] = durations.to_wire(spec.keep_alive)
        if spec.options:
            payload["options"] = dict(spec.options)
        if "completion" in caps:
            path = "/api/generate"
        else:
            path, payload["input"] = "/api/embed", []
        status, body = await self._upstream.call(
            d.url, "POST", path, payload, read_timeout=self._load_timeout
        )
        if status != 200:
            err = UpstreamStatus(status, body, "application/json")
            raise LoadFailed(f"loading {name} on {d.name} failed: {err.message}")

    async def unload(self, d: DaemonState, key: str, reason: str) -> bool:
        """``keep_alive: 0``, then poll ``/api/ps`` until the runner is gone; True when
        confirmed. Ollama unloads a runner only once its requests finished."""
        name = self._fleet.display_name(d, key)
        outcome = "failed"
        row = d.loaded.get(key) or {}
        if self.quiesce is not None:
            await self.quiesce(d.name, key)
        try:
            status, _ = await self._upstream.call(
                d.url, "POST", "/api/generate", {"model": name, "keep_alive": 0}, read_timeout=30
            )
            if status == 200:
                deadline = time.monotonic() + _UNLOAD_CONFIRM_S
                while time.monotonic() < deadline:
                    await self._fleet.refresh_ps(d)
                    if key not in d.loaded or not d.up:
                        outcome = "ok" if d.up else "failed"
                        break
                    await asyncio.sleep(_UNLOAD_POLL_S)
        except BridgeError:
            pass
        finally:
            self._metrics.unloads.labels(reason=reason, outcome=outcome).inc()
        if outcome == "ok":
            since = self._loaded_at.pop((d.name, key), None)
            resident = None if since is None else (time.monotonic() - since) * 1000
            state: Literal["evicted", "unloaded"] = "evicted" if reason == "evict" else "unloaded"
            self._tell(StateChange(d.name, key, state, reason, resident_ms=resident, row=row))
        return outcome == "ok"

    def _tell(self, change: StateChange) -> None:
        if self.on_state is not None:
            self.on_state(change)
        if self.on_changed is not None and change.state != "load_failed":
            self.on_changed(change.daemon, change.model)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the loader owns (cancelled by ``aclose``)."""
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
