"""``bridge.upstream`` against a raw socket server: the exact request bytes the daemon
sees, the reply bytes untouched, and each transport failure in the bridge's tree."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bridge.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from bridge.settings import load_settings
from bridge.upstream import Upstream

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def _server(handler: Handler) -> AsyncIterator[str]:
    """A raw server running ``handler`` per connection. On exit the handlers still running
    (one that sleeps past the test) are cancelled and every connection is closed: 3.11's
    ``Server.wait_closed`` waits for neither, and an accepted socket left open leaks."""
    tasks: set[asyncio.Task[object]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            with contextlib.suppress(asyncio.CancelledError):  # the cancel below
                await handler(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks)
        await server.wait_closed()


@contextlib.asynccontextmanager
async def _upstream(**overrides: float) -> AsyncIterator[Upstream]:
    upstream = Upstream.create(load_settings({}, **overrides))
    try:
        yield upstream
    finally:
        await upstream.aclose()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_the_request_carries_only_the_headers_the_bridge_chooses() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async with _server(handler) as url, _upstream() as upstream:
        status, body = await upstream.call(url, "POST", "/api/chat", {"model": "m"})
    assert (status, body) == (200, b"{}")
    head, _, sent = seen[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /api/chat HTTP/1.1"
    headers = {k.lower(): v.strip() for k, v in (line.split(b":", 1) for line in lines[1:])}
    assert headers[b"host"] == url.removeprefix("http://").encode()
    assert headers[b"accept-encoding"] == b"identity"
    assert headers[b"user-agent"] == b"alb-bridge"
    assert headers[b"content-type"] == b"application/json"
    assert b"cookie" not in headers
    assert sent == b'{"model":"m"}'


async def test_reply_bytes_are_passed_untouched_even_when_compressed() -> None:
    # A gzip content-encoding is not undone: the client gets what the daemon wrote.
    payload = b"\x1f\x8bnot really gzip"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-type: application/x-ndjson\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for part in (payload[:3], payload[3:]):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        writer.close()

    async with _server(handler) as url, _upstream() as upstream:
        resp = await upstream.open(url, "POST", "/api/chat", b"{}")
        try:
            got = b"".join([c async for c in resp.chunks()])
        finally:
            await resp.aclose()
    assert resp.content_type == "application/x-ndjson"
    assert got == payload


async def test_a_refused_connection_is_retriable() -> None:
    async with _upstream() as upstream:
        with pytest.raises(UpstreamUnreachable) as info:
            await upstream.call(f"http://127.0.0.1:{_free_port()}", "GET", "/api/version")
    assert info.value.retriable


async def test_silence_before_the_headers_is_a_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    async with _server(handler) as url, _upstream() as upstream:
        with pytest.raises(UpstreamTimeout) as info:
            await upstream.call(url, "GET", "/api/ps", read_timeout=0.1)
    assert not info.value.retriable


async def test_silence_between_chunks_is_a_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with _server(handler) as url, _upstream(read_timeout=0.1) as upstream:
        resp = await upstream.open(url, "POST", "/api/chat", b"{}")
        chunks = resp.chunks()
        try:
            assert await anext(chunks) == b"abc"
            with pytest.raises(UpstreamTimeout):
                await anext(chunks)
        finally:
            await resp.aclose()


async def test_a_reply_cut_short_is_an_upstream_error_and_closing_early_hangs_up() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        await reader.read()  # EOF: the bridge closed the connection
        closed.set()

    async with _upstream() as upstream:
        async with _server(handler) as url:
            with pytest.raises(UpstreamError):
                await upstream.call(url, "GET", "/api/ps")
        async with _server(slow) as url:
            resp = await upstream.open(url, "POST", "/api/chat", b"{}")
            async for _ in resp.chunks():
                break
            await resp.aclose()  # mid-stream: the daemon must see the hang-up
            await asyncio.wait_for(closed.wait(), 5)
