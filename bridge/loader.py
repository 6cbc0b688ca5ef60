"""Loads and unloads owned by the bridge.

A load runs as a task of the bridge (not of the request that caused it), on
the bridge's own upstream connection, so it survives that client's disconnect
— Ollama aborts a load whose requester goes away. At most one operation runs
per (daemon, model): every request that needs the load awaits the same task
(single flight); an unload in progress is awaited before a new load starts.

Load = ``POST /api/generate {"model": M}`` with no prompt (``done_reason:
"load"``), or ``POST /api/embed {"model": M, "input": []}`` for embedding-only
models (capabilities from ``/api/show``), carrying the bridge's keep_alive and
the runner options of the request that caused it (so the forwarded request
does not force a reload). Unload = the same with ``keep_alive: 0``, confirmed
by polling ``/api/ps`` (Ollama replies before the runner is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge import keepalive
from bridge.errors import BridgeError, LoadFailed, UpstreamStatus, UpstreamTimeout
from bridge.fleet import DaemonState, Fleet
from bridge.metrics import Metrics
from bridge.upstream import Upstream

_DEFAULT_LOAD_ESTIMATE_S = 10.0
_UNLOAD_POLL_S = 0.05
_UNLOAD_CONFIRM_S = 10.0


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """How to load: keep_alive in seconds (None: the daemon's default) and runner options."""

    keep_alive: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


class Loader:
    """Single-flight loads and unloads; callbacks tell the scheduler the outcome."""

    def __init__(
        self,
        fleet: Fleet,
        upstream: Upstream,
        metrics: Metrics,
        *,
        load_timeout: float,
        on_loaded: Callable[[str, str], None],
        on_failed: Callable[[str, str, BridgeError], None],
        on_unloaded: Callable[[str, str], None],
    ) -> None:
        self._fleet = fleet
        self._upstream = upstream
        self._metrics = metrics
        self._load_timeout = load_timeout
        self._on_loaded = on_loaded
        self._on_failed = on_failed
        self._on_unloaded = on_unloaded
        self._ops: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._started: dict[tuple[str, str], float] = {}
        self._estimate: dict[str, float] = {}

    # --- queries ---------------------------------------------------------------
    def loading(self, daemon: str, key: str) -> bool:
        return (daemon, key) in self._started

    def remaining_s(self, daemon: str, key: str) -> float:
        """Estimated seconds until the load in progress ends (0 when none runs)."""
        started = self._started.get((daemon, key))
        if started is None:
            return 0.0
        estimate = self._estimate.get(key, _DEFAULT_LOAD_ESTIMATE_S)
        return max(estimate - (time.monotonic() - started), 0.5)

    # --- operations --------------------------------------------------------------
    def ensure_loaded(self, d: DaemonState, key: str, spec: LoadSpec, reason: str) -> None:
        """Start a load unless one is running; returns at once."""
        op = (d.name, key)
        if op in self._started:
            return
        previous = self._ops.get(op)
        self._started[op] = time.monotonic()
        d.loading.add(key)
        self._spawn(op, self._load(d, key, spec, reason, previous))

    def unload(self, d: DaemonState, key: str, reason: str) -> asyncio.Task[None]:
        op = (d.name, key)
        previous = self._ops.get(op)
        return self._spawn(op, self._unload(d, key, reason, previous))

    async def aclose(self) -> None:
        tasks = list(self._ops.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    def _spawn(self, op: tuple[str, str], coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._ops[op] = task

        def _done(t: asyncio.Task[None]) -> None:
            if self._ops.get(op) is t:
                del self._ops[op]

        task.add_done_callback(_done)
        return task

    async def _load(
        self,
        d: DaemonState,
        key: str,
        spec: LoadSpec,
        reason: str,
        previous: asyncio.Task[None] | None,
    ) -> None:
        op = (d.name, key)
        t0 = time.monotonic()
        outcome = "failed"
        try:
            if previous is not None:
                with contextlib.suppress(BaseException):
                    await previous
            try:
                async with asyncio.timeout(self._load_timeout):
                    await self._send_load(d, key, spec)
                    await self._fleet.refresh_ps(d)
            except TimeoutError:
                outcome = "timeout"
                raise UpstreamTimeout(
                    f"loading {key} on {d.name} took longer than {self._load_timeout:g}s"
                ) from None
            seconds = time.monotonic() - t0
            self._estimate[key] = seconds
            outcome = "ok"
            d.loading.discard(key)
            self._started.pop(op, None)
            self._on_loaded(d.name, key)
        except BridgeError as exc:
            d.loading.discard(key)
            self._started.pop(op, None)
            self._on_failed(d.name, key, exc)
        except BaseException:
            d.loading.discard(key)
            self._started.pop(op, None)
            self._on_failed(d.name, key, LoadFailed(f"loading {key} was cancelled"))
            raise
        finally:
            self._metrics.loads.labels(reason=reason, outcome=outcome).inc()
            self._metrics.load_seconds.labels(model=key, outcome=outcome).observe(
                time.monotonic() - t0
            )

    async def _send_load(self, d: DaemonState, key: str, spec: LoadSpec) -> None:
        name = self._fleet.display_name(d, key)
        caps = await self._fleet.capabilities(d, key)
        payload: dict[str, Any] = {"model": name}
        if spec.keep_alive is not None:
            payload["keep_alive"] = keepalive.to_wire(spec.keep_alive)
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

    async def _unload(
        self, d: DaemonState, key: str, reason: str, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            with contextlib.suppress(BaseException):
                await previous
        name = self._fleet.display_name(d, key)
        outcome = "failed"
        try:
            status, _ = await self._upstream.call(
                d.url, "POST", "/api/generate", {"model": name, "keep_alive": 0}, read_timeout=30
            )
            if status == 200:
                deadline = time.monotonic() + _UNLOAD_CONFIRM_S
                while time.monotonic() < deadline:
                    await self._fleet.refresh_ps(d)
                    if key not in d.loaded:
                        outcome = "ok"
                        break
                    await asyncio.sleep(_UNLOAD_POLL_S)
        except BridgeError:
            pass
        finally:
            self._metrics.unloads.labels(reason=reason, outcome=outcome).inc()
        self._on_unloaded(d.name, key)
