"""The HTTP client side: the only module that touches aiohttp and its exceptions.

One ``aiohttp.ClientSession`` per app, created by the lifespan, with explicit
limits and timeouts from settings: connect (waiting for a pooled connection
included), read (the longest silence: before the status line and between two
chunks, ``sock_read``) and an overall backstop (the request deadline). aiohttp
and not httpx, by measurement (``BENCHMARKS.md``): httpx's pool does O(pool)
work per request and collapsed at concurrency 64.

Requests carry only the headers the bridge chooses: ``Host`` is the daemon's own
``host:port`` (Ollama answers 403 to a foreign Host on a loopback listener),
``Accept-Encoding: identity`` and ``auto_decompress=False`` keep the bytes the
daemon wrote, no cookie jar, no redirects followed. Transport failures become
the bridge's error tree; ``retriable`` says whether nothing reached the
daemon's handler yet (the relay retries only before the first byte).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from bridge.errors import (
    BridgeError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from bridge.settings import Settings

_JSON = "application/json"
#: Headers aiohttp would add by itself that the bridge must not send (it sets its own).
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Content-Type")
_USER_AGENT = "alb-bridge"
_KEEPALIVE_S = 30.0


def _reason(exc: BaseException | None) -> str:
    """What went wrong, without the address (clients see these messages)."""
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return type(exc).__name__


def _translate(exc: BaseException, where: str) -> BridgeError:
    """aiohttp's failure as the bridge's error (``retriable``: try again is safe).
    ``where`` names the daemon (never its URL: the message may reach a client)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        # Connecting, or waiting for a free pooled connection, took too long.
        return UpstreamUnreachable(f"cannot reach {where} in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnreachable(f"cannot reach {where}: {_reason(exc.os_error)}")
    if isinstance(exc, TimeoutError):  # sock_read or the overall backstop
        return UpstreamTimeout(f"{where} did not answer in time")
    if isinstance(
        exc,
        aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | aiohttp.ClientPayloadError,
    ):
        # A kept-alive connection the daemon had just closed, or a reply cut short.
        return UpstreamUnreachable(f"connection to {where} broke: {_reason(exc)}")
    return UpstreamError(f"upstream failure at {where}: {_reason(exc)}")


class UpstreamResponse:
    """A streamed upstream response; ``aclose`` always (the relay does)."""

    __slots__ = ("_resp", "_where", "content_type", "status")

    def __init__(self, resp: aiohttp.ClientResponse, where: str) -> None:
        self._resp = resp
        self._where = where
        self.status = resp.status
        self.content_type = resp.headers.get("content-type", _JSON)

    @property
    def content_length(self) -> int | None:
        return self._resp.content_length

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in the pieces the socket delivered."""
        content = self._resp.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc, self._where) from None

    async def read(self) -> bytes:
        """The whole body (sized replies: no per-chunk round trips)."""
        try:
            return await self._resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc, self._where) from None

    async def aclose(self) -> None:
        """Back to the pool when the body was read whole; else the connection is
        closed, which is how the daemon learns that the client went away."""
        if self._resp.content.is_eof():
            self._resp.release()
        else:
            self._resp.close()


class Upstream:
    """Requests to daemons over one shared connection pool."""

    def __init__(self, session: aiohttp.ClientSession, settings: Settings) -> None:
        self._session = session
        self._connect_timeout = settings.connect_timeout
        self._total_timeout = settings.request_timeout
        #: Per-request timeouts (``read_timeout=``), one object per distinct value.
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        #: ``Host`` per daemon base URL (a handful of entries).
        self._hosts: dict[str, str] = {}
        specs = settings.daemon_specs()
        #: How errors name a daemon: ``daemon gpu0``, never its URL.
        self._names = {d.url: f"daemon {d.name}" for d in specs}
        #: ``Authorization`` for daemons whose URL carried credentials (basic auth).
        self._auth = {d.url: d.authorization for d in specs if d.authorization}

    @classmethod
    def create(cls, settings: Settings) -> Upstream:
        """The session and its pool; call inside the running loop (the lifespan)."""
        connector = aiohttp.TCPConnector(
            limit=settings.max_connections,
            limit_per_host=settings.max_connections,
            keepalive_timeout=_KEEPALIVE_S,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=settings.request_timeout,
                connect=settings.connect_timeout,
                sock_connect=settings.connect_timeout,
                sock_read=settings.read_timeout,
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
        )
        return cls(session, settings)

    async def aclose(self) -> None:
        await self._session.close()

    def _timeout(self, read_timeout: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(read_timeout)
        if timeout is None:
            timeout = self._timeouts[read_timeout] = aiohttp.ClientTimeout(
                total=self._total_timeout,
                connect=self._connect_timeout,
                sock_connect=self._connect_timeout,
                sock_read=read_timeout,
            )
        return timeout

    def _host(self, base_url: str) -> str:
        host = self._hosts.get(base_url)
        if host is None:
            host = self._hosts[base_url] = urlsplit(base_url).netloc
        return host

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
        headers = {
            "Host": self._host(base_url),
            "Accept-Encoding": "identity",
            "User-Agent": _USER_AGENT,
        }
        if body is not None:
            headers["Content-Type"] = _JSON
        auth = self._auth.get(base_url)
        if auth is not None:
            headers["Authorization"] = auth
        where = self._names.get(base_url, "the daemon")
        kwargs: dict[str, Any] = {}
        if read_timeout is not None:
            kwargs["timeout"] = self._timeout(read_timeout)
        try:
            resp = await self._session.request(
                method,
                base_url + path,
                data=body,
                headers=headers,
                allow_redirects=False,
                **kwargs,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc, where) from None
        return UpstreamResponse(resp, where)

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
            where = self._names.get(base_url, "the daemon")
            raise UpstreamError(f"{where} answered invalid JSON to {path}") from None
