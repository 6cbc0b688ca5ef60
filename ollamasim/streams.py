"""Wire encodings: Go-style JSON, NDJSON lines, SSE events, and framers.

``go_json`` reproduces ``encoding/json``'s output for the values we send:
compact separators, and ``<``, ``>``, ``&``, U+2028, U+2029 escaped as Go's
HTML-safe encoder does (gin's ``c.JSON`` and ``json.Marshal`` both escape).
The framers parse a byte stream without I/O: ``feed(bytes) -> frames`` and
``close()``, which fails on a truncated frame.
"""

from __future__ import annotations

from typing import Any

import orjson

_HTML_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def go_json(value: Any) -> bytes:
    out = orjson.dumps(value)
    for raw, esc in _HTML_ESCAPES:
        if raw in out:
            out = out.replace(raw, esc)
    return out


def ndjson_line(value: Any) -> bytes:
    return go_json(value) + b"\n"


def sse_event(value: Any) -> bytes:
    return b"data: " + go_json(value) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class TruncatedFrame(ValueError):
    pass


class NDJSONFramer:
    """Split a byte stream into JSON objects, one per line."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        return [orjson.loads(line) for line in lines if line.strip()]

    def close(self) -> None:
        if self._buf.strip():
            raise TruncatedFrame(f"stream ended inside a line: {self._buf[:80]!r}")


class SSEFramer:
    """Split an SSE byte stream into ``data`` payloads (str), comments dropped."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[str]:
        self._buf += data.replace(b"\r\n", b"\n")
        *events, self._buf = self._buf.split(b"\n\n")
        out: list[str] = []
        for ev in events:
            datas = [ln[5:].lstrip(b" ") for ln in ev.split(b"\n") if ln.startswith(b"data:")]
            if datas:
                out.append(b"\n".join(datas).decode())
        return out

    def close(self) -> None:
        if self._buf.strip():
            raise TruncatedFrame(f"stream ended inside an event: {self._buf[:80]!r}")
