"""The HTTP client side: the only module that touches httpx and its exceptions.

One ``httpx.AsyncClient`` per app (created by the lifespan, explicit limits and
timeouts from settings). Requests carry only the headers the bridge chooses:
``Host`` is the daemon's own ``host:port`` (Ollama answers 403 to a foreign
Host on a loopback listener), ``Accept-Encoding: identity`` keeps the bytes
the daemon wrote. Transport failures become the bridge's error tree; the
``retriable`` flag says whether nothing reached the daemon's handler yet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from bridge.errors import (
    BridgeError,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from bridge.settings import Settings

_JSON = "application/json"


def _translate(exc: httpx.HTTPError, where: str) -> BridgeError:
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
        return UpstreamUnreachable(f"cannot reach {where}: {exc or type(exc).__name__}")
    if isinstance(exc, httpx.PoolTimeout):
        return Unavailable(f"no free upstream connection to {where}", retry_after=1)
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{where} did not answer in time")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return UpstreamUnreachable(f"connection to {where} broke: {exc or type(exc).__name__}")
    return UpstreamError(f"upstream failure at {where}: {exc or type(exc).__name__}")


class UpstreamResponse:
    """A streamed upstream response; ``aclose`` always (the relay does)."""

    __slots__ = ("_resp", "_where", "content_type", "status")

    def __init__(self, resp: httpx.Response, where: str) -> None:
        self._resp = resp
        self._where = where
        self.status = resp.status_code
        self.content_type = resp.headers.get("content-type", _JSON)

    @property
    def content_length(self) -> int | None:
        raw = self._resp.headers.get("content-length")
        return int(raw) if raw is not None and raw.isdigit() else None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.aiter_raw():
                if chunk:
                    yield chunk
        except httpx.HTTPError as exc:
            raise _translate(exc, self._where) from None

    async def read(self) -> bytes:
        parts = [c async for c in self.chunks()]
        return b"".join(parts)

    async def aclose(self) -> None:
        await self._resp.aclose()


class Upstream:
    """Requests to daemons over one shared connection pool."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    @classmethod
    def create(cls, settings: Settings) -> Upstream:
        timeout = httpx.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.read_timeout,
            pool=settings.connect_timeout,
        )
        limits = httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
            keepalive_expiry=30.0,
        )
        client = httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False)
        return cls(client)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def open(
        self,
        base_url: str,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        read_timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send and return once the status line and headers arrived."""
        url = base_url + path
        headers = {
            "host": urlsplit(base_url).netloc,
            "accept-encoding": "identity",
            "user-agent": "alb-bridge",
        }
        if body is not None:
            headers["content-type"] = _JSON
        extensions: dict[str, Any] = {}
        if read_timeout is not None:
            t = self._client.timeout
            extensions["timeout"] = {
                "connect": t.connect,
                "read": read_timeout,
                "write": t.write,
                "pool": t.pool,
            }
        request = self._client.build_request(
            method, url, content=body, headers=headers, extensions=extensions
        )
        try:
            resp = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _translate(exc, base_url) from None
        return UpstreamResponse(resp, base_url)

    async def call(
        self,
        base_url: str,
        method: str,
        path: str,
        payload: Any = None,
        *,
        read_timeout: float | None = None,
    ) -> tuple[int, bytes]:
        """A small request read whole: ``(status, body)``."""
        body = None if payload is None else orjson.dumps(payload)
        resp = await self.open(base_url, method, path, body, read_timeout=read_timeout)
        try:
            return resp.status, await resp.read()
        finally:
            await resp.aclose()

    async def call_json(
        self,
        base_url: str,
        method: str,
        path: str,
        payload: Any = None,
        *,
        read_timeout: float | None = None,
    ) -> tuple[int, Any]:
        status, raw = await self.call(base_url, method, path, payload, read_timeout=read_timeout)
        try:
            return status, orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{base_url}{path} answered invalid JSON") from None
