"""The streaming relay between one client and one daemon (theory of operation).

``Exchange`` is the client side of one request: it writes ASGI messages and
remembers how far the response got (headers sent? upstream bytes sent?), so
a failure is answered correctly at any point: a proper status and body before
the response started, an in-band error frame after (Ollama's final
``{"error": ...}`` NDJSON line, or an SSE event with OpenAI's error object).

``relay`` forwards one request. Streamed bodies (NDJSON, SSE) go through a
framer, so only whole frames are written, one ASGI message per upstream
chunk (flushed at once); the client's bytes equal the daemon's. A stream that
ends without its terminal frame (``done: true`` / ``data: [DONE]``) or inside
a frame is a failure, reported in-band. A request is retried on the same
daemon only while no upstream byte has reached the client: after a transport
error or a 5xx answer. Client disconnects are handled by the caller
(``watch_disconnect`` cancels the handler task; the ``finally`` here closes
the upstream response, which cancels the daemon's work).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import Receive, Send

from bridge.errors import (
    JSON_TYPE,
    Api,
    BodyTooLarge,
    BridgeError,
    UpstreamError,
    UpstreamStatus,
    render,
    stream_error_frame,
)
from bridge.upstream import Upstream, UpstreamResponse
from bridge.wire.framing import End, NDJSONFramer, SSEFramer, TruncatedFrame
from bridge.wire.openai_native import Translator

Headers = list[tuple[bytes, bytes]]

_RETRY_BACKOFF_S = 0.05
HEARTBEAT = b": keep-alive\n\n"


class Exchange:
    """The response side of one client request."""

    __slots__ = (
        "_send",
        "api",
        "client_gone",
        "extra_headers",
        "finished",
        "first_byte_at",
        "limit_headers",
        "sent_upstream_bytes",
        "started",
        "status",
        "tail",
    )

    def __init__(self, send: Send, api: Api) -> None:
        self._send = send
        self.api = api
        self.started = False
        self.finished = False
        self.client_gone = False
        self.sent_upstream_bytes = False
        self.status = 0
        self.first_byte_at: float | None = None
        self.extra_headers: Headers = []
        #: A key's ``x-ratelimit-*`` headers (``bridge.tenancy.quotas``).
        self.limit_headers: tuple[tuple[bytes, bytes], ...] = ()
        #: The last upstream frame (or whole body) sent: its final stats.
        self.tail = b""

    async def start(self, status: int, headers: Headers) -> None:
        self.started = True
        self.status = status
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": headers + self.extra_headers + list(self.limit_headers),
            }
        )

    async def chunk(self, data: bytes, *, upstream: bool = True) -> None:
        if upstream and not self.sent_upstream_bytes:
            self.sent_upstream_bytes = True
            self.first_byte_at = time.monotonic()
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        self.finished = True
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        """A whole response (headers plus one body)."""
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await self.start(status, headers)
        if body:
            self.first_byte_at = time.monotonic()
        await self.end(body)

    async def fail(self, err: BridgeError) -> None:
        """Answer ``err`` in the API's shape, in-band when the response already began."""
        if self.finished or self.client_gone:
            return
        if not self.started:
            status, headers, body = render(err, self.api)
            await self.respond(status, headers, body)
            return
        await self.end(stream_error_frame(err, self.api))


async def read_body(receive: Receive, cap: int) -> bytes:
    """The whole request body; ``BodyTooLarge`` as soon as it passes ``cap``."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        chunk = message.get("body", b"")
        if isinstance(chunk, bytes) and chunk:
            size += len(chunk)
            if size > cap:
                raise BodyTooLarge(f"request body exceeds the limit of {cap} bytes")
            parts.append(chunk)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def watch_disconnect(receive: Receive, ex: Exchange, task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` when the client goes away before the response finished."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not ex.finished:
                ex.client_gone = True
                task.cancel()
            return


def _framer(content_type: str) -> NDJSONFramer | SSEFramer | None:
    if "ndjson" in content_type:
        return NDJSONFramer()
    if "event-stream" in content_type:
        return SSEFramer()
    return None


async def relay(
    upstream: Upstream,
    ex: Exchange,
    base_url: str,
    path: str,
    body: bytes,
    *,
    retries: int,
    on_retry: Callable[[], None],
    method: str = "POST",
    translator: Translator | None = None,
) -> End | None:
    """Forward one request to ``base_url`` and stream the answer to ``ex``; returns
    how a streamed answer ended (``End.ERROR``: the daemon's own in-band error).
    With ``translator`` the daemon answers natively and the client gets the
    translator's OpenAI shape (``bridge.wire.openai_native``)."""
    attempt = 0
    while True:
        try:
            resp = await upstream.open(base_url, method, path, body or None)
        except BridgeError as err:
            if err.retriable and attempt < retries:
                attempt += 1
                on_retry()
                await asyncio.sleep(_RETRY_BACKOFF_S * attempt)
                continue
            raise
        try:
            if translator is None:
                return await _forward(resp, ex)
            return await _forward_translated(resp, ex, translator)
        except BridgeError as err:
            if err.retriable and attempt < retries and not ex.sent_upstream_bytes:
                attempt += 1
                on_retry()
                await asyncio.sleep(_RETRY_BACKOFF_S * attempt)
                continue
            raise
        finally:
            await resp.aclose()


async def _forward(resp: UpstreamResponse, ex: Exchange) -> End | None:
    ctype = resp.content_type.encode("latin-1")
    if resp.status != 200:
        raise UpstreamStatus(resp.status, await resp.read(), resp.content_type)
    framer = _framer(resp.content_type)
    if framer is None:
        data = await resp.read()
        ex.tail = data
        if ex.started:  # heartbeats already went out: nothing left but in-band
            await ex.chunk(data)
            await ex.end()
        else:
            await ex.respond(200, [(b"content-type", ctype)], data)
        return None
    try:
        async for chunk in resp.chunks():
            frames = framer.feed(chunk)
            if not frames:
                continue
            if not ex.started:
                await ex.start(200, [(b"content-type", ctype)])
            ex.tail = frames[-1]
            await ex.chunk(frames[0] if len(frames) == 1 else b"".join(frames))
        framer.close()
    except TruncatedFrame:
        raise UpstreamError("the daemon's stream ended inside a frame") from None
    if framer.terminal is None:
        what = "done: true" if isinstance(framer, NDJSONFramer) else "its [DONE] event"
        raise UpstreamError(f"the daemon's stream ended without {what}")
    if not ex.started:
        await ex.start(200, [(b"content-type", ctype)])
    await ex.end()
    return framer.terminal


_SSE_TYPE = b"text/event-stream"


async def _forward_translated(
    resp: UpstreamResponse, ex: Exchange, translator: Translator
) -> End | None:
    """A native answer, written to the client as Ollama's /v1 layer would write it."""
    if resp.status != 200:
        # Its {"error": "..."} becomes OpenAI's error object when the exchange renders it.
        raise UpstreamStatus(resp.status, await resp.read(), resp.content_type)
    if not translator.stream or "ndjson" not in resp.content_type:
        # Streams too: Ollama answers a request without a prompt (a load) with one
        # JSON object, not NDJSON, even when it was asked to stream.
        data = await resp.read()
        ex.tail = data
        try:
            native = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("the daemon's answer is not JSON") from None
        if not isinstance(native, dict) or "error" in native:
            err = native.get("error") if isinstance(native, dict) else None
            raise UpstreamError(str(err or "the daemon's answer is not an object"))
        if translator.stream:
            if not ex.started:
                await ex.start(200, [(b"content-type", _SSE_TYPE)])
            await ex.chunk(translator.frame(native))
            await ex.end()
            return End.DONE
        body = translator.whole(native)
        if ex.started:
            await ex.chunk(body)
            await ex.end()
        else:
            await ex.respond(200, [(b"content-type", JSON_TYPE)], body)
        return None
    framer = NDJSONFramer()
    try:
        async for chunk in resp.chunks():
            lines = framer.feed(chunk)
            if not lines:
                continue
            out = []
            for line in lines:
                native = orjson.loads(line)
                if not isinstance(native, dict):
                    continue
                if "error" in native:
                    out.append(stream_error_frame(str(native["error"]), Api.OPENAI))
                    break
                ex.tail = line
                out.append(translator.frame(native))
            if not out:
                continue
            if not ex.started:
                await ex.start(200, [(b"content-type", _SSE_TYPE)])
            await ex.chunk(out[0] if len(out) == 1 else b"".join(out))
            if framer.terminal is not None:
                break  # done, or the daemon's error (already written as OpenAI's)
        framer.close()
    except TruncatedFrame:
        raise UpstreamError("the daemon's stream ended inside a frame") from None
    except orjson.JSONDecodeError:
        raise UpstreamError("the daemon's stream has a line that is not JSON") from None
    if framer.terminal is None:
        raise UpstreamError("the daemon's stream ended without done: true")
    await ex.end()
    return framer.terminal


__all__ = ["HEARTBEAT", "End", "Exchange", "read_body", "relay", "watch_disconnect"]
