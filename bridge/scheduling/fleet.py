"""What the bridge knows about its daemons.

Per daemon: whether it answers, its model store (``/api/tags``, cached with a
TTL), what it has loaded (``/api/ps`` rows exactly as the daemon wrote them,
refreshed after every load and unload and periodically) and each model's
capabilities (``/api/show``, fetched once per model, one call per daemon however many
requests ask together; needed to load embedding-only models).
Per model: a ``ModelInfo`` (file size, trained context, KV bytes per token) for
the sizing policies. Per daemon memory: ``capacity`` from the configuration,
or from NVML for the daemon running beside the bridge (``spec.local``), where
``external`` is what other processes hold on the GPUs (NVML used minus what
``/api/ps`` says the daemon's runners take). The shell that refreshes all this
lives in ``scheduler``; the policies see it through ``placement.DaemonView``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import BridgeError, UpstreamError
from bridge.policy.sizing import ModelInfo, model_info_from_show
from bridge.scheduling.gpu import GpuReading, read_gpus
from bridge.settings import DaemonSpec
from bridge.upstream import Upstream
from bridge.wire import names


@dataclass
class DaemonState:
    spec: DaemonSpec
    up: bool = False
    error: str = ""
    catalog: dict[str, dict[str, Any]] = field(default_factory=dict)
    catalog_at: float = -1e18
    #: When the ``/api/ps`` read that ``loaded`` comes from was asked (monotonic).
    ps_at: float = -1e18
    loaded: dict[str, dict[str, Any]] = field(default_factory=dict)
    capabilities: dict[str, tuple[str, ...]] = field(default_factory=dict)
    loading: set[str] = field(default_factory=set)
    #: Memory capacity in bytes (configured, or NVML total when local); None = unknown.
    capacity: int | None = None
    #: Bytes other processes hold on a local daemon's GPUs (NVML).
    external: int = 0
    #: Where ``capacity`` came from: ``config``, ``nvml`` or ``unknown``.
    capacity_source: str = "unknown"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def url(self) -> str:
        return self.spec.url


class Fleet:
    """Mutable fleet state plus the I/O that refreshes it."""

    def __init__(
        self,
        specs: tuple[DaemonSpec, ...],
        upstream: Upstream,
        tags_ttl: float,
        *,
        kv_bytes_per_element: float = 2.0,
        gpu_reader: Callable[[], GpuReading] = read_gpus,
    ) -> None:
        self.daemons = {s.name: DaemonState(s) for s in specs}
        self._upstream = upstream
        self._tags_ttl = tags_ttl
        self._tags_lock = asyncio.Lock()
        self._kv_bytes = kv_bytes_per_element
        self._gpu_reader = gpu_reader
        self.gpu: GpuReading | None = None
        self.infos: dict[str, ModelInfo] = {}
        #: The ``/api/show`` in flight per (daemon, model): concurrent first requests
        #: for a model share its answer (or its error) instead of asking again each.
        self._showing: dict[tuple[str, str], asyncio.Task[dict[str, Any]]] = {}
        for d in self.daemons.values():
            if d.spec.memory is not None:
                d.capacity, d.capacity_source = d.spec.memory, "config"

    def get(self, name: str) -> DaemonState:
        return self.daemons[name]

    async def aclose(self) -> None:
        """Cancel the ``/api/show`` calls still in flight (their callers get
        ``CancelledError``, as they would have with the call in their own task)."""
        tasks = list(self._showing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- memory ----------------------------------------------------------------
    async def read_local_memory(self) -> None:
        """NVML for the daemon beside the bridge: capacity = total of every visible
        GPU; ``external`` = NVML used - what its runners take (per /api/ps). Without a
        GPU the configured capacity stays (and the reading says why)."""
        local = [d for d in self.daemons.values() if d.spec.local]
        if not local:
            return
        reading = await asyncio.to_thread(self._gpu_reader)
        self.gpu = reading
        if not reading.gpus:
            return
        used = sum(g.used for g in reading.gpus)
        for d in local:
            d.capacity, d.capacity_source = reading.total, "nvml"
            ours = sum(int(r.get("size_vram") or r.get("size") or 0) for r in d.loaded.values())
            d.external = max(used - ours, 0)

    def budget(self, d: DaemonState, headroom: float) -> int | None:
        """Bytes the bridge may plan for on ``d``: capacity - headroom - others' use."""
        if d.capacity is None:
            return None
        return max(int(d.capacity * (1 - headroom)) - d.external, 0)

    async def model_info(self, key: str) -> ModelInfo | None:
        """File size, trained context and KV bytes per token (cached; None when no
        daemon that is up can describe the model)."""
        info = self.infos.get(key)
        if info is not None:
            return info
        for d in self.daemons.values():
            if d.up and key in d.catalog:
                try:
                    show = await self._show_shared(d, key)
                except BridgeError:
                    continue
                size = int(d.catalog[key].get("size") or 0)
                info = model_info_from_show(key, size, show, self._kv_bytes)
                self.infos[key] = info
                return info
        return None

    def knows(self, key: str) -> bool:
        return any(key in d.catalog for d in self.daemons.values())

    # --- refreshing ------------------------------------------------------------
    async def refresh_ps(self, d: DaemonState) -> None:
        asked = time.monotonic()
        try:
            status, body = await self._upstream.call_json(d.url, "GET", "/api/ps", read_timeout=10)
        except BridgeError as exc:
            self._down(d, exc.message)
            return
        if status != 200 or not isinstance(body, dict):
            self._down(d, f"/api/ps answered {status}")
            return
        if asked < d.ps_at:
            return  # a read asked later has already been applied: this one is older
        rows = body.get("models") or []
        d.loaded = {
            names.key(str(r.get("model") or r.get("name") or "")): r
            for r in rows
            if isinstance(r, dict)
        }
        d.ps_at = asked
        d.up, d.error = True, ""

    async def refresh_tags(self, d: DaemonState, *, force: bool = False) -> None:
        if not force and time.monotonic() - d.catalog_at < self._tags_ttl:
            return
        try:
            status, body = await self._upstream.call_json(
                d.url, "GET", "/api/tags", read_timeout=10
            )
        except BridgeError as exc:
            self._down(d, exc.message)
            return
        if status != 200 or not isinstance(body, dict):
            self._down(d, f"/api/tags answered {status}")
            return
        rows = body.get("models") or []
        d.catalog = {
            names.key(str(r.get("model") or r.get("name") or "")): r
            for r in rows
            if isinstance(r, dict)
        }
        d.catalog_at = time.monotonic()
        d.up, d.error = True, ""

    async def refresh_all(self, *, tags: bool = True, force: bool = False) -> None:
        jobs = [self.refresh_ps(d) for d in self.daemons.values()]
        if tags:
            jobs += [self.refresh_tags(d, force=force) for d in self.daemons.values()]
        await asyncio.gather(*jobs)

    async def ensure_known(self, key: str) -> bool:
        """Is ``key`` in some daemon's store? Refreshes stale catalogs on a miss."""
        if self.knows(key):
            return True
        async with self._tags_lock:
            if self.knows(key):
                return True
            await asyncio.gather(*(self.refresh_tags(d) for d in self.daemons.values()))
        return self.knows(key)

    async def capabilities(self, d: DaemonState, key: str) -> tuple[str, ...]:
        caps = d.capabilities.get(key)
        if caps is not None:
            return caps
        await self._show_shared(d, key)
        return d.capabilities[key]

    async def _show_shared(self, d: DaemonState, key: str) -> dict[str, Any]:
        """``_show``, one call per (daemon, model) at a time: callers that arrive while
        one is in flight wait for its answer or its error. The call runs as its own task
        (bounded by its read timeout), so a caller that is cancelled (a client gone)
        neither cancels the others' answer nor leaves them a ``CancelledError``."""
        k = (d.name, key)
        task = self._showing.get(k)
        if task is None:
            task = asyncio.create_task(self._show(d, key), name=f"alb-show-{key}")
            self._showing[k] = task
            task.add_done_callback(functools.partial(self._shown, k))
        return await asyncio.shield(task)

    def _shown(self, k: tuple[str, str], task: asyncio.Task[dict[str, Any]]) -> None:
        if self._showing.get(k) is task:
            del self._showing[k]
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone before it ended

    async def _show(self, d: DaemonState, key: str) -> dict[str, Any]:
        name = self.display_name(d, key)
        status, body = await self._upstream.call_json(
            d.url, "POST", "/api/show", {"model": name}, read_timeout=30
        )
        if status != 200 or not isinstance(body, dict):
            raise UpstreamError(f"/api/show for {name} answered {status}")
        d.capabilities[key] = tuple(str(c) for c in body.get("capabilities") or ("completion",))
        return body

    @staticmethod
    def display_name(d: DaemonState, key: str) -> str:
        row = d.catalog.get(key) or d.loaded.get(key) or {}
        return str(row.get("model") or row.get("name") or key)

    def _down(self, d: DaemonState, why: str) -> None:
        d.up, d.error = False, why
