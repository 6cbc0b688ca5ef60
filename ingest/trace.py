"""The replay trace format ``trace.v1`` (``schemas/trace.v1.json``).

A trace is JSON Lines: one request per line, in arrival order, no header. It says
what a client asked for, not what happened, so the same trace can be replayed
against any bridge configuration. ``ts`` is the request's *arrival* time; an
access-log event's ``ts`` is its *finish* time, which ``from_access_log`` converts.
Fields with a default are optional in the schema (readers must accept lines
without them); the rest are required and may be ``null`` where the type says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ingest.messages import AccessLogEvent, Count, Ctx, Hash, Name, as_utc

TRACE_FORMAT = "trace.v1"


class TraceRecord(BaseModel):
    """One request of a replay trace."""

    # A line from a newer writer may carry fields this revision does not know: ignored.
    model_config = ConfigDict(frozen=True, extra="ignore")

    ts: datetime
    session: Name | None
    model: Name
    endpoint: Annotated[str, Field(pattern=r"^/", max_length=256)]
    api: Literal["native", "openai"]
    prompt_tokens: Count | None
    output_tokens: Count | None
    system_prompt_hash: Hash | None
    prefix_hash: Hash | None
    num_ctx: Ctx | None
    stream: bool
    system_prompt_tokens: Count | None = None
    api_key_id: Name | None = None

    @field_validator("ts")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return as_utc(value)

    def to_json(self) -> bytes:
        """One compact line, every field present (without the newline)."""
        return self.model_dump_json().encode()


def from_access_log(event: AccessLogEvent) -> TraceRecord:
    """The request an access-log event records, arrival time = finish - total."""
    return TraceRecord(
        ts=event.ts - timedelta(milliseconds=event.total_ms),
        session=event.session,
        model=event.model,
        endpoint=event.endpoint,
        api=event.api,
        prompt_tokens=event.prompt_tokens,
        output_tokens=event.output_tokens,
        system_prompt_hash=event.system_prompt_hash,
        prefix_hash=event.prefix_hash,
        num_ctx=event.num_ctx_requested,
        stream=event.stream,
        api_key_id=event.api_key_id,
    )


def dump_lines(records: Iterable[TraceRecord]) -> Iterator[bytes]:
    """``record + b"\\n"`` for each record: write them to a ``.jsonl`` file."""
    for record in records:
        yield record.to_json() + b"\n"


def load_lines(lines: Iterable[bytes | str]) -> Iterator[TraceRecord]:
    """Parse a trace's lines (blank lines skipped); ``ValueError`` names the bad line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield TraceRecord.model_validate(orjson.loads(line))
        except ValueError as exc:
            raise ValueError(f"trace line {number}: {exc}") from exc
