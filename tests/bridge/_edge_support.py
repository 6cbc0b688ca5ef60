"""Raw HTTP/1.1 over asyncio streams, for the edge and exhaustion tests (the bridge
itself: ``tests.bridge._support.running_bridge``, as ``alb serve`` serves it)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson

from tests.bridge._support import RunningBridge


def port_of(b: RunningBridge) -> int:
    return int(b.base_url.rsplit(":", 1)[1])


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    def json(self) -> object:
        return orjson.loads(self.body)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One response (Content-Length or until close; chunked is not needed here)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = []
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers.append((k.strip().lower(), v.strip()))
    length = next((int(v) for k, v in headers if k == "content-length"), None)
    if length is not None:
        body = await reader.readexactly(length)
    elif status in (204, 304):
        body = b""
    else:
        body = await reader.read()
    return Answer(status, headers, body)


async def exchange(
    port: int,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    host: str = "127.0.0.1",
    source: str | None = None,
    within: float = 10.0,
) -> Answer:
    """One request on a fresh connection, headers exactly as given (plus Content-Length
    for a body); ``Host`` defaults to ``host:port``."""
    given = {k.lower(): v for k, v in (headers or {}).items()}
    given.setdefault("host", f"{host}:{port}")
    if body:
        given.setdefault("content-length", str(len(body)))
    given.setdefault("connection", "close")
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in given.items())
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection(
            host, port, local_addr=(source, 0) if source else None
        )
        try:
            writer.write(head.encode("latin-1") + b"\r\n" + body)
            return await read_answer(reader)
        finally:
            writer.close()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it kept the connection open."""
    try:
        async with asyncio.timeout(seconds):
            return await reader.read()
    except TimeoutError:
        return None
    except ConnectionError:
        return b""
