"""``alb serve`` with a suggested change applied at start-up: measure before proposing.

This does not change ``bridge/``; it patches the imported modules in this
process only, so ``bench.overhead --whatif ...`` can put a number on a
suggestion side by side with the unchanged bridge. Patches:

* ``aiohttp``: ``bridge.upstream.Upstream`` sends through one
  ``aiohttp.ClientSession`` instead of ``httpx.AsyncClient`` (same interface:
  ``create``, ``open``, ``aclose``; ``call`` / ``call_json`` are reused), with
  aiohttp's failures translated into the bridge's error tree as
  ``bridge/upstream.py`` does for httpx's;
* ``gc-freeze``: ``gc.collect(); gc.freeze()`` once everything is imported, so a
  full collection no longer walks the start-up heap (see ``bench/sim.py``).

    python -m bench.bridge_whatif --patch aiohttp,gc-freeze serve --host H --port P
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator
from typing import Any, cast

PATCHES = ("aiohttp", "gc-freeze")


class _AiohttpResponse:
    """``bridge.upstream.UpstreamResponse``'s interface over an aiohttp response."""

    __slots__ = ("_resp", "_where", "content_type", "status")

    def __init__(self, resp: Any, where: str) -> None:
        self._resp = resp
        self._where = where
        self.status: int = resp.status
        self.content_type: str = resp.headers.get("content-type", "application/json")

    @property
    def content_length(self) -> int | None:
        length: int | None = self._resp.content_length
        return length

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                if chunk:
                    yield chunk
        except Exception as exc:
            raise _translate(exc, self._where) from None

    async def read(self) -> bytes:
        try:
            data: bytes = await self._resp.read()
        except Exception as exc:
            raise _translate(exc, self._where) from None
        return data

    async def aclose(self) -> None:
        self._resp.release()


def _translate(exc: BaseException, where: str) -> Exception:
    import aiohttp  # noqa: PLC0415

    from bridge.errors import (  # noqa: PLC0415
        UpstreamError,
        UpstreamTimeout,
        UpstreamUnreachable,
    )

    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnreachable(f"cannot reach {where}: {exc}")
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout(f"{where} did not answer in time")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        return UpstreamUnreachable(f"connection to {where} broke: {exc}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamUnreachable(f"connection to {where} broke: {exc}")
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamError(f"upstream failure at {where}: {exc}")
    return exc if isinstance(exc, Exception) else UpstreamError(str(exc))


def _patch_aiohttp() -> None:
    import aiohttp  # noqa: PLC0415

    from bridge import upstream  # noqa: PLC0415

    def create(cls: type[upstream.Upstream], settings: Any) -> upstream.Upstream:
        connector = aiohttp.TCPConnector(
            limit=settings.max_connections,
            limit_per_host=settings.max_connections,
            keepalive_timeout=30.0,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout
            ),
        )
        instance = cls(cast(Any, session))
        instance._connect_timeout = settings.connect_timeout  # type: ignore[attr-defined]
        return instance

    async def aclose(self: upstream.Upstream) -> None:
        session: Any = self._client
        await session.close()

    async def open_(
        self: upstream.Upstream,
        base_url: str,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        read_timeout: float | None = None,
    ) -> _AiohttpResponse:
        headers = {"accept-encoding": "identity", "user-agent": "alb-bridge"}
        if body is not None:
            headers["content-type"] = "application/json"
        kwargs: dict[str, Any] = {}
        if read_timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(
                total=None,
                connect=self._connect_timeout,  # type: ignore[attr-defined]
                sock_read=read_timeout,
            )
        try:
            session: Any = self._client
            resp = await session.request(
                method, base_url + path, data=body, headers=headers, **kwargs
            )
        except Exception as exc:
            raise _translate(exc, base_url) from None
        return _AiohttpResponse(resp, base_url)

    upstream.Upstream.create = classmethod(create)  # type: ignore[method-assign,assignment]
    upstream.Upstream.aclose = aclose  # type: ignore[method-assign]
    upstream.Upstream.open = open_  # type: ignore[method-assign,assignment]


def main() -> None:
    args = sys.argv[1:]
    patches: list[str] = []
    if args[:1] == ["--patch"]:
        patches = [p for p in args[1].split(",") if p]
        args = args[2:]
    for p in patches:
        if p not in PATCHES:
            raise SystemExit(f"unknown patch {p!r}; choose from {PATCHES}")
    from bridge.cli import app  # noqa: PLC0415

    if "aiohttp" in patches:
        _patch_aiohttp()
    if "gc-freeze" in patches:
        import bridge.server  # noqa: F401, PLC0415

        gc.collect()
        gc.freeze()
    sys.argv = ["alb", *args]
    app()


if __name__ == "__main__":
    main()
