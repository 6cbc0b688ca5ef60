"""The replayed workload: trace lines as the simulation's requests.

A :class:`Request` is one ``trace.v1`` line reduced to what the simulation needs:
arrival time in seconds from the trace's first request, the model's comparison key
(``bridge.wire.names.key``: ``model-00`` -> ``model-00:latest``, as the bridge and the
daemons compare names), the session, token counts, the client's ``num_ctx`` and the
API surface. Missing token counts get documented defaults (``DEFAULT_PROMPT_TOKENS``,
``DEFAULT_OUTPUT_TOKENS``) so traces without lengths (Azure Functions) still replay.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.wire.names import key as model_key
from predictor.traces.format import TraceRecord, read_trace

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "DEFAULT_PROMPT_TOKENS",
    "Request",
    "load_requests",
    "requests_from_records",
]

DEFAULT_PROMPT_TOKENS = 800
DEFAULT_OUTPUT_TOKENS = 150


@dataclass(frozen=True, slots=True)
class Request:
    """One request of the replay, ``t`` seconds after the trace's first arrival."""

    idx: int
    t: float
    model: str
    session: str
    prompt_tokens: int
    output_tokens: int
    num_ctx: int | None
    openai: bool
    system_prompt_hash: str | None = None


def requests_from_records(records: Iterable[TraceRecord]) -> list[Request]:
    """Requests in arrival order (stable for equal times), times relative to the first."""
    recs = sorted(enumerate(records), key=lambda ir: (ir[1].ts, ir[0]))
    if not recs:
        return []
    t0 = recs[0][1].ts.timestamp()
    out: list[Request] = []
    for idx, (_, rec) in enumerate(recs):
        out.append(
            Request(
                idx=idx,
                t=rec.ts.timestamp() - t0,
                model=model_key(rec.model),
                session=rec.session or rec.api_key_id or "",
                prompt_tokens=rec.prompt_tokens or DEFAULT_PROMPT_TOKENS,
                output_tokens=rec.output_tokens or DEFAULT_OUTPUT_TOKENS,
                num_ctx=rec.num_ctx,
                openai=rec.api == "openai",
                system_prompt_hash=rec.system_prompt_hash,
            )
        )
    return out


def load_requests(path: Path, limit: int | None = None) -> list[Request]:
    """Read a JSONL trace (at most ``limit`` lines) into requests."""
    records: list[TraceRecord] = []
    for rec in read_trace(path):
        if limit is not None and len(records) >= limit:
            break
        records.append(rec)
    return requests_from_records(records)


def models_of(requests: Sequence[Request]) -> list[str]:
    """Model keys in order of first appearance."""
    return list(dict.fromkeys(r.model for r in requests))
