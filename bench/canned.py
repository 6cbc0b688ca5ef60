"""A near-free upstream for saturation benchmarks: canned replies for one model, the
simulator for everything else.

Why. At saturation on a small machine the simulator (~160 µs of CPU per request) and
the bridge (~190 µs) share the cores, so a bench measures the machine rather than the
bridge. This server answers ``POST /api/chat`` for ``--model`` with the simulator's
own reply to that request, captured once at start (~15 µs a request: httptools and
one ``transport.write``), and forwards every other request (``/api/ps``, ``/api/tags``,
``/api/show``, loads, other models) to the simulator unchanged, so the bridge sees a
consistent daemon. Used by ``bench/events_rps.py --upstream canned``.

    python -m bench.canned --sim http://127.0.0.1:PORT --port PORT2 --model bench-fast
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aiohttp
import httptools
import orjson
import uvloop

_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date"}


def _response(status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = [f"HTTP/1.1 {status} {reason}"]
    head += [f"{k}: {v}" for k, v in headers if k.lower().encode() not in _HOP]
    head.append(f"content-length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _Conn(asyncio.Protocol):
    def __init__(self, server: Canned) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        #: Replies in request order (forwarded ones finish later than canned ones).
        self._replies: list[asyncio.Future[bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method()
        url, headers, body = self._url, self._headers, b"".join(self._body)
        self._url, self._headers, self._body = b"", [], []
        server = self._server
        if method == b"POST" and url == b"/api/chat" and server.marker in body:
            reply: bytes | None = server.canned
        else:
            reply = None
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._replies.append(fut)
        if reply is not None:
            fut.set_result(reply)
        else:
            task = asyncio.ensure_future(server.forward(method, url, headers, body))
            task.add_done_callback(lambda t: fut.set_result(t.result()))
        fut.add_done_callback(lambda _: self._write_ready())

    def _write_ready(self) -> None:
        while self._replies and self._replies[0].done():
            data = self._replies.pop(0).result()
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(data)


class Canned:
    def __init__(self, sim: str, model: str) -> None:
        self.sim = sim.rstrip("/")
        self.marker = b'"model":"' + model.encode() + b'"'
        self.model = model
        self.canned = b""
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        )
        doc: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": "canned"}],
            "stream": False,
        }
        async with self._session.post(f"{self.sim}/api/chat", json=doc) as r:
            body = await r.read()
            if r.status != 200:
                raise SystemExit(f"canned: the simulator answered {r.status}: {body[:200]!r}")
            self.canned = _response(200, "OK", list(r.headers.items()), body)

    async def forward(
        self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bytes:
        assert self._session is not None
        sent = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in headers
            if k.lower() not in _HOP and k.lower() != b"host"
        }
        try:
            async with self._session.request(
                method.decode(), self.sim + url.decode("latin-1"), headers=sent, data=body
            ) as r:
                data = await r.read()
                return _response(r.status, r.reason or "", list(r.headers.items()), data)
        except aiohttp.ClientError as exc:
            err = orjson.dumps({"error": f"canned: upstream failed: {exc!r}"})
            return _response(502, "Bad Gateway", [("content-type", "application/json")], err)


async def _main(args: argparse.Namespace) -> None:
    server = Canned(args.sim, args.model)
    await server.start()
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: _Conn(server), args.host, args.port, backlog=1024)
    async with srv:
        await srv.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.canned", description=__doc__)
    parser.add_argument("--sim", required=True, help="the simulator's base URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="bench-fast", help="the model answered from cache")
    uvloop.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
