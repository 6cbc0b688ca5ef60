"""Reading and writing replay traces in the project's one format, ``trace.v1``.

The format is defined by ``schemas/trace.v1.json`` and its Python model
:class:`ingest.trace.TraceRecord` (JSON Lines, one request per line, arrival order,
``ts`` the arrival time as RFC 3339 UTC, hashes as 64-hex SHA-256). The generators in
this package build ``TraceRecord`` objects from float seconds; this module holds the
few helpers they share and the bridge from a trace to the predictor's records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Literal

from ingest.trace import TraceRecord, dump_lines, load_lines
from predictor.core.records import AccessRecord

__all__ = [
    "DEFAULT_EPOCH",
    "ENDPOINTS",
    "Api",
    "TraceRecord",
    "at",
    "read_trace",
    "sha256_hex",
    "to_access_records",
    "write_trace",
]

Api = Literal["native", "openai"]
ENDPOINTS: dict[Api, tuple[str, str]] = {
    "native": ("/api/chat", "/api/generate"),
    "openai": ("/v1/chat/completions", "/v1/completions"),
}
DEFAULT_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
"""Midnight UTC of the day synthetic traces start on (``ts = 0`` of the generators)."""


def sha256_hex(*parts: str) -> str:
    """SHA-256 (64 lower-case hex digits) of ``parts`` joined by NUL: a stable stand-in
    for the hash of a prompt the generator never writes out."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def at(epoch: datetime, seconds: float) -> datetime:
    """``epoch + seconds``, rounded to the microsecond."""
    return epoch + timedelta(microseconds=round(seconds * 1e6))


def write_trace(records: Iterable[TraceRecord], out: IO[bytes]) -> int:
    """Write JSON Lines; returns how many lines were written."""
    n = 0
    for line in dump_lines(records):
        out.write(line)
        n += 1
    return n


def read_trace(path: Path) -> Iterator[TraceRecord]:
    """Parse a JSONL trace lazily; a bad line raises ``ValueError`` naming it."""
    with path.open("rb") as fh:
        yield from load_lines(fh)


def to_access_records(records: Iterable[TraceRecord]) -> Iterator[AccessRecord]:
    """The predictor's view of a trace: every request as a successful access."""
    for rec in records:
        yield AccessRecord(
            ts=rec.ts.timestamp(),
            session=rec.session or "",
            model=rec.model,
            system_prompt_hash=rec.system_prompt_hash,
            num_ctx=rec.num_ctx,
        )
