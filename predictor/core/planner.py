"""Turning statistics into prefetch and warm-cache decisions, under a budget.

A prefetch is emitted only when all of these hold, checked in this order:

1. the candidate is not the model just requested (``exclude_current``);
2. its blended probability reaches ``confidence_threshold`` and it has been seen at
   least ``min_count`` times after the current model;
3. its expected gap is at most ``max_lead_s`` (longer gaps belong to the histogram's
   pre-warm, which fires at the right time instead of now);
4. no prefetch of the same model was emitted in the last ``cooldown_s`` seconds;
5. fewer than ``max_prefetch_per_minute`` prefetches went out in the current minute
   (minute = ``floor(now / 60)``, the same minutes as the windows).

Candidates are tried most probable first (ties by name), so when the budget runs out
the least likely are the ones dropped. Each prefetch brings up to ``warm_top_n``
warm-cache events for the model's top system prompts whose guaranteed share reaches
``warm_min_share``; they expire with the prefetch.
"""

from __future__ import annotations

from typing import Any

from predictor.core.config import PredictorConfig
from predictor.core.heavy import SpaceSaving
from predictor.core.outputs import Prefetch, WarmCache
from predictor.core.transitions import Candidate

__all__ = ["Gate", "select", "warm_caches"]


class Gate:
    """Budget per minute and cooldown per model."""

    __slots__ = ("last_sent", "minute", "used")

    def __init__(self) -> None:
        self.minute = -1
        self.used = 0
        self.last_sent: dict[str, float] = {}

    def allows(self, cfg: PredictorConfig, model: str, now: float) -> bool:
        """Whether a prefetch of ``model`` may go out at ``now`` (does not spend)."""
        minute = int(now // 60)
        if minute != self.minute:
            self.minute = minute
            self.used = 0
        if self.used >= cfg.max_prefetch_per_minute:
            return False
        last = self.last_sent.get(model)
        return last is None or now - last >= cfg.cooldown_s

    def spend(self, model: str, now: float) -> None:
        """Record that a prefetch of ``model`` went out at ``now``."""
        self.used += 1
        self.last_sent[model] = now

    def forget_before(self, horizon: float) -> None:
        """Drop cooldown entries older than ``horizon`` (keeps the state small)."""
        self.last_sent = {m: t for m, t in self.last_sent.items() if t >= horizon}

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {"minute": self.minute, "used": self.used, "last_sent": self.last_sent}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gate:
        """Inverse of :meth:`to_dict`."""
        gate = cls()
        gate.minute = int(data["minute"])
        gate.used = int(data["used"])
        gate.last_sent = {str(k): float(v) for k, v in data["last_sent"].items()}
        return gate


def warm_caches(
    cfg: PredictorConfig,
    prompts: SpaceSaving | None,
    prefetch: Prefetch,
) -> list[WarmCache]:
    """Warm-cache events that go with ``prefetch`` (see the module docstring)."""
    if prompts is None or cfg.warm_top_n == 0 or prompts.offered == 0:
        return []
    out: list[WarmCache] = []
    for key, guaranteed, _count in prompts.top(cfg.warm_top_n):
        share = guaranteed / prompts.offered
        if share >= cfg.warm_min_share and guaranteed > 0:
            out.append(
                WarmCache(
                    prefetch.model,
                    key,
                    prefetch.expires_at,
                    share,
                    confidence=prefetch.confidence * share,
                    expected_arrival=prefetch.expected_arrival,
                    num_ctx=prefetch.num_ctx,
                )
            )
    return out


def select(
    cfg: PredictorConfig, gate: Gate, *, current: str, candidates: list[Candidate], now: float
) -> list[Candidate]:
    """The candidates to prefetch after a request of ``current`` (spends the gate)."""
    out: list[Candidate] = []
    for cand in candidates:
        if cand.probability < cfg.confidence_threshold:
            break  # sorted by probability: nothing further qualifies
        model = cand.model
        if (cfg.exclude_current and model == current) or cand.count < cfg.min_count:
            continue
        if cand.gap_s > cfg.max_lead_s or not gate.allows(cfg, model, now):
            continue
        gate.spend(model, now)
        out.append(cand)
    return out
