"""What the core decides: prefetch, warm-cache, keep-alive and reuse hints.

Plain frozen records with times in the same seconds as the input records. ``to_dict``
gives the JSON-ready payload (with a ``type`` tag); the Faust app and the embedded
mode add ``event_id``, ``schema_version``, RFC 3339 ``ts`` and ``producer`` when they
publish, so none of that (nor any clock) is needed here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["KeepAliveHint", "Output", "Prefetch", "ReuseHint", "WarmCache", "output_to_dict"]


@dataclass(frozen=True, slots=True)
class Prefetch:
    """Load ``model`` ahead of an expected request (low priority; drop it after ``expires_at``).

    ``reason`` (snake_case, as ``alb.prefetch.v1`` wants) is ``session_transition`` or
    ``global_transition`` (whichever estimate weighed more; ``source`` is the model
    whose request predicted it) or ``idle_histogram`` (the model's idle-time histogram
    says its next request is near). ``num_ctx`` is the context its traffic usually
    runs with (None when there is no clear majority); ``keep_alive_s`` the histogram's
    keep-alive window when the histogram is representative.
    """

    model: str
    confidence: float
    expected_arrival: float
    expires_at: float
    reason: str
    source: str | None = None
    num_ctx: int | None = None
    keep_alive_s: float | None = None


@dataclass(frozen=True, slots=True)
class WarmCache:
    """Warm ``model``'s prompt cache with the system prompt whose hash is given.

    The bridge looks the prompt up by hash and warms it on the runner as loaded (never
    with a different num_ctx, which would force a reload).
    """

    model: str
    system_prompt_hash: str
    expires_at: float
    share: float
    """Lower bound on this prompt's share of the model's traffic."""
    confidence: float = 0.0
    """P(a request of the model with this prompt by the prefetch's expiry)."""
    expected_arrival: float = 0.0
    num_ctx: int | None = None
    reason: str = "top_system_prompt"


@dataclass(frozen=True, slots=True)
class KeepAliveHint:
    """The hybrid-histogram policy's windows for ``model``.

    ``prewarm_after_s == 0``: keep the model loaded for ``keep_alive_s`` after its last
    request. Otherwise it may be unloaded, should be loaded again ``prewarm_after_s``
    after the last request, and kept for ``keep_alive_s`` from then.
    """

    model: str
    keep_alive_s: float
    prewarm_after_s: float
    pattern: str


@dataclass(frozen=True, slots=True)
class ReuseHint:
    """P(``model`` is requested within ``horizon_s`` of ``at``), for eviction value
    (predicted reuse x reload cost)."""

    model: str
    probability: float
    horizon_s: float
    at: float


Output = Prefetch | WarmCache | KeepAliveHint | ReuseHint

_TYPES: dict[type[Any], str] = {
    Prefetch: "prefetch",
    WarmCache: "warm-cache",
    KeepAliveHint: "keep-alive",
    ReuseHint: "reuse",
}


def output_to_dict(out: Output) -> dict[str, Any]:
    """JSON-ready payload with a ``type`` tag (``prefetch``, ``warm-cache``, ...)."""
    data = dataclasses.asdict(out)
    data["type"] = _TYPES[type(out)]
    return data
