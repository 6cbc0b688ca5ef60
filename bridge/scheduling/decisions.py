"""Decision records: every load, eviction, rejection and num_ctx choice, with why.

Kept in a bounded in-process ring buffer (``GET /alb/v1/decisions``), shaped like
the ``alb.decisions.v1`` events the events issue will publish unchanged:
``event_id`` (UUID4), ``ts`` (RFC 3339 UTC), ``kind``, ``model``, ``daemon``,
``reason`` and an ``inputs`` object with what the policy looked at.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Kind = Literal[
    "load",
    "evict",
    "unload",
    "reject",
    "num_ctx",
    "route",
    "health",
    "pin",
    "prefetch",
    "warm",
    "replicate",
    "retire-replica",
    "coordination",
]


@dataclass(frozen=True, slots=True)
class Decision:
    kind: Kind
    model: str
    daemon: str
    reason: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    ts: str = field(
        default_factory=lambda: (
            datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )
    )

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "ts": self.ts,
            "kind": self.kind,
            "model": self.model,
            "daemon": self.daemon,
            "reason": self.reason,
            "inputs": dict(self.inputs),
        }


class DecisionLog:
    """The newest ``capacity`` decisions; ``sink`` (optional) sees each one too."""

    def __init__(self, capacity: int, sink: Callable[[Decision], None] | None = None) -> None:
        self._items: deque[Decision] = deque(maxlen=capacity)
        self._sink = sink

    def __len__(self) -> int:
        return len(self._items)

    def record(self, kind: Kind, model: str, daemon: str, reason: str, **inputs: Any) -> Decision:
        d = Decision(kind, model, daemon, reason, inputs)
        self._items.append(d)
        if self._sink is not None:
            self._sink(d)
        return d

    def query(
        self, *, model: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[Decision]:
        """Newest first."""
        out: list[Decision] = []
        for d in reversed(self._items):
            if (model is None or d.model == model) and (kind is None or d.kind == kind):
                out.append(d)
                if len(out) >= limit:
                    break
        return out
