"""Minimal pass-through proxies on candidate stacks: the essence of the bridge's hot path.

Every candidate does exactly the same work per request: read the whole request
body, forward it to the upstream with the same method, path and headers (``Host``
rewritten to the upstream's, hop-by-hop headers dropped), then either

* answer with the whole body in one piece when the upstream sent a
  ``Content-Length`` (a non-streaming reply), or
* relay the body chunk by chunk as it arrives, each chunk flushed to the client
  at once (NDJSON / SSE streams), closing the upstream response at the end.

A stack is ``SERVER/CLIENT/APP``:

* SERVER: ``uvicorn-httptools`` (uvloop + httptools), ``uvicorn-h11`` (uvloop + h11),
  ``uvicorn-asyncio`` (stdlib loop + httptools), ``granian`` (Rust server, uvloop);
* CLIENT: ``httpx`` (AsyncClient, default transport, explicit pool limits),
  ``httpx2``, ``httpx-aiohttp`` (httpx API over aiohttp's transport), ``aiohttp``
  (ClientSession);
* APP: ``starlette`` (one catch-all Route), ``fastapi`` (one catch-all api_route),
  ``asgi`` (a bare ASGI callable, the lower bound).

Run one as a process (it serves until SIGTERM)::

    python -m bench.candidates --stack uvicorn-httptools/aiohttp/starlette \\
        --port 9000 --upstream http://127.0.0.1:11434
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Protocol

SERVERS = ("uvicorn-httptools", "uvicorn-h11", "uvicorn-asyncio", "granian")
CLIENTS = ("httpx", "httpx2", "httpx-aiohttp", "aiohttp")
APPS = ("starlette", "fastapi", "asgi")

# Not forwarded in either direction: hop-by-hop (RFC 9110 7.6.1), and the
# framing / identity headers each side sets for itself.
_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"date",
        b"server",
    }
)
#: Connections to the upstream: more than the highest benchmark concurrency.
POOL_SIZE = 512

Headers = list[tuple[bytes, bytes]]
Scope = MutableMapping[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _forwardable(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    return [(k, v) for k, v in headers if k.lower() not in _DROP]


class UpstreamResponse(Protocol):
    """What every client adapter hands back: status, headers and the body."""

    status: int
    headers: Headers
    content_length: int | None

    async def read(self) -> bytes: ...
    def chunks(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


class Upstream(Protocol):
    """One upstream HTTP client, created once at start-up."""

    async def send(
        self, method: str, path: str, headers: Headers, body: bytes
    ) -> UpstreamResponse: ...
    async def aclose(self) -> None: ...


class _HttpxResponse:
    def __init__(self, response: Any) -> None:
        self._r = response
        self.status: int = response.status_code
        self.headers: Headers = _forwardable(response.headers.raw)
        length = response.headers.get("content-length")
        self.content_length = int(length) if length is not None else None

    async def read(self) -> bytes:
        data: bytes = await self._r.aread()
        return data

    def chunks(self) -> AsyncIterator[bytes]:
        it: AsyncIterator[bytes] = self._r.aiter_raw()
        return it

    async def aclose(self) -> None:
        await self._r.aclose()


class _HttpxUpstream:
    """httpx (or its API twin httpx2), optionally over aiohttp's transport."""

    def __init__(self, base_url: str, flavour: str) -> None:
        hx: Any
        if flavour == "httpx2":
            import httpx2 as hx  # noqa: PLC0415
        else:
            import httpx as hx  # noqa: PLC0415
        limits = hx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)
        timeout = hx.Timeout(connect=5.0, read=300.0, write=30.0, pool=30.0)
        if flavour == "httpx-aiohttp":
            from httpx_aiohttp import AiohttpTransport  # noqa: PLC0415

            transport = AiohttpTransport(limits=limits)
            self._client: Any = hx.AsyncClient(
                base_url=base_url, transport=transport, timeout=timeout
            )
        else:
            self._client = hx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout)

    async def send(self, method: str, path: str, headers: Headers, body: bytes) -> _HttpxResponse:
        request = self._client.build_request(method, path, headers=headers, content=body)
        return _HttpxResponse(await self._client.send(request, stream=True))

    async def aclose(self) -> None:
        await self._client.aclose()


class _AiohttpResponse:
    def __init__(self, response: Any) -> None:
        self._r = response
        self.status: int = response.status
        self.headers: Headers = _forwardable(response.raw_headers)
        self.content_length: int | None = response.content_length

    async def read(self) -> bytes:
        data: bytes = await self._r.read()
        return data

    def chunks(self) -> AsyncIterator[bytes]:
        it: AsyncIterator[bytes] = self._r.content.iter_any()
        return it

    async def aclose(self) -> None:
        self._r.release()


class _AiohttpUpstream:
    def __init__(self, base_url: str) -> None:
        import aiohttp  # noqa: PLC0415

        self._base = base_url
        connector = aiohttp.TCPConnector(limit=POOL_SIZE, limit_per_host=POOL_SIZE)
        self._session = aiohttp.ClientSession(
            base_url=base_url,
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=300.0),
        )

    async def send(self, method: str, path: str, headers: Headers, body: bytes) -> _AiohttpResponse:
        str_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        response = await self._session.request(method, path, headers=str_headers, data=body)
        return _AiohttpResponse(response)

    async def aclose(self) -> None:
        await self._session.close()


def make_upstream(client: str, base_url: str) -> Upstream:
    """The upstream adapter for one CLIENT name."""
    if client == "aiohttp":
        return _AiohttpUpstream(base_url)
    if client in ("httpx", "httpx2", "httpx-aiohttp"):
        return _HttpxUpstream(base_url, client)
    raise ValueError(f"unknown client {client!r}; choose from {CLIENTS}")


def _path_of(scope: Scope) -> str:
    path: str = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
    if scope.get("query_string"):
        path += "?" + scope["query_string"].decode("latin-1")
    return path


class _State:
    """The per-process resource the lifespan owns: the upstream client."""

    upstream: Upstream | None = None


def _asgi_app(client: str, base_url: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    state = _State()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    state.upstream = make_upstream(client, base_url)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if state.upstream is not None:
                        await state.upstream.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert state.upstream is not None
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        headers = _forwardable(scope["headers"])
        r = await state.upstream.send(scope["method"], _path_of(scope), headers, body)
        try:
            if r.content_length is not None:
                data = await r.read()
                out = [*r.headers, (b"content-length", str(len(data)).encode())]
                await send({"type": "http.response.start", "status": r.status, "headers": out})
                await send({"type": "http.response.body", "body": data})
                return
            await send({"type": "http.response.start", "status": r.status, "headers": r.headers})
            async for chunk in r.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await r.aclose()

    return app


def _framework_app(app_kind: str, client: str, base_url: str) -> Any:
    from starlette.background import BackgroundTask  # noqa: PLC0415
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import Response, StreamingResponse  # noqa: PLC0415

    state = _State()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        state.upstream = make_upstream(client, base_url)
        try:
            yield
        finally:
            await state.upstream.aclose()

    async def proxy(request: Request) -> Response:
        assert state.upstream is not None
        body = await request.body()
        headers = _forwardable(request.headers.raw)
        r = await state.upstream.send(request.method, _path_of(request.scope), headers, body)
        if r.content_length is not None:
            try:
                data = await r.read()
            finally:
                await r.aclose()
            response = Response(data, status_code=r.status)
            response.raw_headers = [*r.headers, (b"content-length", str(len(data)).encode())]
            return response
        streaming = StreamingResponse(
            r.chunks(), status_code=r.status, background=BackgroundTask(r.aclose)
        )
        streaming.raw_headers = list(r.headers)
        return streaming

    # FastAPI resolves annotations at route creation; with postponed evaluation the
    # locally imported names are not resolvable, so hand it the real classes.
    proxy.__annotations__.update(request=Request, return_=Response)
    methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]
    if app_kind == "fastapi":
        from fastapi import FastAPI  # noqa: PLC0415

        api = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
        api.add_api_route("/{path:path}", proxy, methods=methods, response_model=None)
        return api
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    return Starlette(routes=[Route("/{path:path}", proxy, methods=methods)], lifespan=lifespan)


def build_app(app_kind: str, client: str, base_url: str) -> Any:
    """The ASGI app for one APP / CLIENT pair."""
    if app_kind == "asgi":
        return _asgi_app(client, base_url)
    if app_kind in ("starlette", "fastapi"):
        return _framework_app(app_kind, client, base_url)
    raise ValueError(f"unknown app {app_kind!r}; choose from {APPS}")


def granian_app() -> Any:
    """Factory Granian imports in its worker process; configured through the environment."""
    env = os.environ
    app = build_app(env["ALB_BENCH_APP"], env["ALB_BENCH_CLIENT"], env["ALB_BENCH_UPSTREAM"])
    gc.collect()
    gc.freeze()
    return app


def parse_stack(stack: str) -> tuple[str, str, str]:
    """``SERVER/CLIENT/APP`` -> its three parts, validated."""
    parts = stack.split("/")
    if len(parts) != 3:
        raise ValueError(f"a stack is SERVER/CLIENT/APP, got {stack!r}")
    server, client, app_kind = parts
    for value, allowed in ((server, SERVERS), (client, CLIENTS), (app_kind, APPS)):
        if value not in allowed:
            raise ValueError(f"{value!r} in {stack!r} is not one of {allowed}")
    return server, client, app_kind


def serve(stack: str, port: int, upstream: str, host: str = "127.0.0.1") -> None:
    """Blocking: serve one candidate until SIGTERM / SIGINT.

    Every candidate freezes the objects its imports created (``gc.freeze()``):
    otherwise each full collection walks them all, a 10-20 ms pause of every
    request in flight (see ``bench/sim.py``), and the comparison would be of
    heap sizes rather than of hot paths.
    """
    server, client, app_kind = parse_stack(stack)
    if server == "granian":
        from granian import Granian  # noqa: PLC0415
        from granian.constants import Interfaces, Loops  # noqa: PLC0415

        os.environ.update(
            ALB_BENCH_APP=app_kind, ALB_BENCH_CLIENT=client, ALB_BENCH_UPSTREAM=upstream
        )
        Granian(
            "bench.candidates:granian_app",
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            workers=1,
            runtime_threads=1,
            loop=Loops.uvloop,
            factory=True,
            log_access=False,
        ).serve()
        return
    import uvicorn  # noqa: PLC0415

    app = build_app(app_kind, client, upstream)
    gc.collect()
    gc.freeze()
    loop, http = {
        "uvicorn-httptools": ("uvloop", "httptools"),
        "uvicorn-h11": ("uvloop", "h11"),
        "uvicorn-asyncio": ("asyncio", "httptools"),
    }[server]
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop=loop,
        http=http,
        lifespan="on",
        access_log=False,
        log_level="warning",
        ws="none",
        backlog=2048,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.candidates",
        description="Serve one minimal pass-through proxy candidate (until SIGTERM).",
    )
    parser.add_argument("--stack", required=True, help="SERVER/CLIENT/APP, e.g. %(default)s")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:11434")
    args = parser.parse_args()
    serve(args.stack, args.port, args.upstream)


if __name__ == "__main__":
    main()
