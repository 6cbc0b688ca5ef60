"""The seam for "a request finished" records: the source of the access log.

The bridge calls a ``RecordSink`` once per proxied inference request, whatever its
outcome (answered, refused before a daemon was reached, failed, client gone),
synchronously at the very end of the request. A sink must return at once: the
events pipeline (``bridge.events.pipeline``) only appends the record to a queue and builds
the ``alb.access-log.v1`` event in a background task.

A record holds references, not copies: the parsed body (``doc``) and the request
headers, from which hashes, the session and the requested ``num_ctx`` are derived
off the request path, and the last upstream frame (``tail``), where the token
counts are. It lives in memory only; the event built from it never carries prompt
or completion text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class RequestRecord:
    endpoint: str
    model: str
    status: int
    #: The fairness session the scheduler used (``session_of``).
    session: str
    daemon: str
    cold: bool
    queue_ms: float
    load_ms: float
    ttft_ms: float | None
    total_ms: float
    stream_failed: bool
    #: ``native`` or ``openai``.
    api: str = "native"
    stream: bool = False
    #: Class name of the ``BridgeError`` the request ended with (None: none).
    error: str | None = None
    #: The runner's context when a slot was held (0: unknown).
    num_ctx_applied: int = 0
    #: Wall-clock time (``time.time()``) the request finished.
    finished_at: float = 0.0
    #: The parsed request body (None when it could not be parsed).
    doc: Mapping[str, Any] | None = None
    headers: Sequence[tuple[bytes, bytes]] = ()
    #: The last upstream frame (or the whole body) relayed: the final statistics.
    tail: bytes = b""
    #: The id of the bridge's API key that made the request (``ALB_AUTH=keys``).
    key_id: str | None = None


class RecordSink(Protocol):
    def __call__(self, record: RequestRecord) -> None: ...
