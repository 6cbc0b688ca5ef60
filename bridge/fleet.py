"""What the bridge knows about its daemons.

Per daemon: whether it answers, its model store (``/api/tags``, cached with a
TTL), what it has loaded (``/api/ps`` rows exactly as the daemon wrote them,
refreshed after every load and unload and periodically) and each model's
capabilities (``/api/show``, fetched once, needed to load embedding-only models).
``snapshot`` freezes the state into ``DaemonView``s for the pure policies
(``placement``); the shell that refreshes it lives in ``scheduler``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge import names
from bridge.errors import BridgeError, UpstreamError
from bridge.settings import DaemonSpec
from bridge.upstream import Upstream


@dataclass(frozen=True, slots=True)
class DaemonView:
    """An immutable picture of one daemon for the placement policy."""

    name: str
    up: bool
    models: frozenset[str]
    loaded: frozenset[str]
    loading: frozenset[str]
    outstanding: Mapping[str, int]


@dataclass
class DaemonState:
    spec: DaemonSpec
    up: bool = False
    error: str = ""
    catalog: dict[str, dict[str, Any]] = field(default_factory=dict)
    catalog_at: float = -1e18
    loaded: dict[str, dict[str, Any]] = field(default_factory=dict)
    capabilities: dict[str, tuple[str, ...]] = field(default_factory=dict)
    loading: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def url(self) -> str:
        return self.spec.url


class Fleet:
    """Mutable fleet state plus the I/O that refreshes it."""

    def __init__(self, specs: tuple[DaemonSpec, ...], upstream: Upstream, tags_ttl: float) -> None:
        self.daemons = {s.name: DaemonState(s) for s in specs}
        self._upstream = upstream
        self._tags_ttl = tags_ttl
        self._tags_lock = asyncio.Lock()

    def get(self, name: str) -> DaemonState:
        return self.daemons[name]

    def snapshot(self, outstanding: Mapping[tuple[str, str], int]) -> list[DaemonView]:
        return [
            DaemonView(
                name=d.name,
                up=d.up,
                models=frozenset(d.catalog),
                loaded=frozenset(d.loaded),
                loading=frozenset(d.loading),
                outstanding={k: n for (dn, k), n in outstanding.items() if dn == d.name},
            )
            for d in self.daemons.values()
        ]

    def knows(self, key: str) -> bool:
        return any(key in d.catalog for d in self.daemons.values())

    # --- refreshing ------------------------------------------------------------
    async def refresh_ps(self, d: DaemonState) -> None:
        try:
            status, body = await self._upstream.call_json(d.url, "GET", "/api/ps", read_timeout=10)
        except BridgeError as exc:
            self._down(d, exc.message)
            return
        if status != 200 or not isinstance(body, dict):
            self._down(d, f"/api/ps answered {status}")
            return
        rows = body.get("models") or []
        d.loaded = {
            names.key(str(r.get("model") or r.get("name") or "")): r
            for r in rows
            if isinstance(r, dict)
        }
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
        name = self.display_name(d, key)
        status, body = await self._upstream.call_json(
            d.url, "POST", "/api/show", {"model": name}, read_timeout=30
        )
        if status != 200 or not isinstance(body, dict):
            raise UpstreamError(f"/api/show for {name} answered {status}")
        caps = tuple(str(c) for c in body.get("capabilities") or ("completion",))
        d.capabilities[key] = caps
        return caps

    @staticmethod
    def display_name(d: DaemonState, key: str) -> str:
        row = d.catalog.get(key) or d.loaded.get(key) or {}
        return str(row.get("model") or row.get("name") or key)

    def _down(self, d: DaemonState, why: str) -> None:
        d.up, d.error = False, why
