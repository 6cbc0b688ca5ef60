"""The seam for "a request finished" records (the access log of later issues).

The bridge calls a ``RecordSink`` once per proxied request; the events issue
plugs its bus in here. Records never carry prompt or completion text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RequestRecord:
    endpoint: str
    model: str
    status: int
    session: str
    daemon: str
    cold: bool
    queue_ms: float
    load_ms: float
    ttft_ms: float | None
    total_ms: float
    stream_failed: bool


class RecordSink(Protocol):
    def __call__(self, record: RequestRecord) -> None: ...
