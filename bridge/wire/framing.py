"""Stream framers without I/O: bytes in, whole frames (as raw bytes) out.

The relay feeds every upstream chunk to a framer and forwards only whole
frames, so a client never sees half an NDJSON line or half an SSE event, and
the concatenation of the frames is exactly the upstream's bytes. ``close``
raises ``TruncatedFrame`` when the stream ended inside a frame.

Each framer also reports how the stream ended: NDJSON streams end with an
object carrying ``"done": true`` or with an ``{"error": ...}`` line; SSE streams
end with ``data: [DONE]``. ``terminal`` is None while neither was seen.
"""

from __future__ import annotations

from enum import Enum

import orjson


class TruncatedFrame(ValueError):
    """The stream ended in the middle of a frame."""


class End(Enum):
    DONE = "done"
    ERROR = "error"


class NDJSONFramer:
    """Lines terminated by ``\\n``; a line holds one JSON object."""

    __slots__ = ("_buf", "terminal")

    def __init__(self) -> None:
        self._buf = b""
        self.terminal: End | None = None

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            self._buf = buf
            return []
        self._buf = buf[cut:]
        lines = [part + b"\n" for part in buf[: cut - 1].split(b"\n")]
        for line in lines:
            self._inspect(line)
        return lines

    def _inspect(self, line: bytes) -> None:
        # Cheap substring tests first; a quote inside a JSON string is escaped,
        # so `"done":true` can only match the real key.
        if b'"done":true' in line or b'"error"' in line:
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                return
            if isinstance(value, dict):
                if value.get("done") is True:
                    self.terminal = End.DONE
                elif "error" in value:
                    self.terminal = End.ERROR

    def close(self) -> None:
        if self._buf.strip():
            raise TruncatedFrame(f"stream ended inside a line: {self._buf[:80]!r}")


_SSE_DONE = b"data: [DONE]"


class SSEFramer:
    """Events terminated by a blank line (``\\n\\n`` or ``\\r\\n\\r\\n``)."""

    __slots__ = ("_buf", "terminal")

    def __init__(self) -> None:
        self._buf = b""
        self.terminal: End | None = None

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        events: list[bytes] = []
        start = 0
        while True:
            end, sep = _next_boundary(buf, start)
            if end < 0:
                break
            event = buf[start : end + sep]
            events.append(event)
            self._inspect(event)
            start = end + sep
        self._buf = buf[start:]
        return events

    def _inspect(self, event: bytes) -> None:
        if event.startswith(_SSE_DONE) and event[len(_SSE_DONE) :].strip() == b"":
            self.terminal = End.DONE
        elif event.startswith(b'data: {"error"'):
            self.terminal = End.ERROR

    def close(self) -> None:
        if self._buf.strip():
            raise TruncatedFrame(f"stream ended inside an event: {self._buf[:80]!r}")


def _next_boundary(buf: bytes, start: int) -> tuple[int, int]:
    lf = buf.find(b"\n\n", start)
    crlf = buf.find(b"\r\n\r\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return lf, 2
