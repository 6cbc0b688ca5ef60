"""Every knob of the predictor core, in one frozen object.

Defaults are ours (see the docstrings of :mod:`predictor.core.transitions` and
:mod:`predictor.core.idle` for what each statistic means); :meth:`PredictorConfig.seed_article`
gives the baseline policy this project started from (global transitions over the last
50 requests, prefetch at confidence >= 0.6) as a configuration of the same core.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ConfigError", "PredictorConfig"]

WindowKind = Literal["time", "count"]
TransitionSource = Literal["session", "arrival"]
ReuseEstimate = Literal["histogram", "rate"]


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the field."""


@dataclass(frozen=True, slots=True)
class PredictorConfig:
    """Configuration of the predictor core (immutable; build a new one to change it)."""

    # --- transition windows -------------------------------------------------------
    window: WindowKind = "time"
    """``time``: the last ``window_minutes`` minutes; ``count``: the last ``count_window``
    transitions (per session: ``session_count_window``)."""
    window_minutes: int = 10
    count_window: int = 50
    session_count_window: int = 20
    transition_source: TransitionSource = "session"
    """``session``: a transition is a session's previous model -> this model;
    ``arrival``: the previous request in arrival order (any session) -> this one, for
    traces without sessions."""
    use_session: bool = True
    """Blend each session's own transitions with the global ones."""
    session_prior: float = 5.0
    """Weight of the global estimate, in pseudo-transitions, against a session's own:
    the session's share is n / (n + session_prior)."""
    max_gap_s: float = 1800.0
    """A session idle longer than this starts afresh (no transition is counted)."""
    session_ttl_s: float = 3600.0
    max_sessions: int = 100_000
    """Least recently seen sessions are dropped beyond this many."""

    # --- estimate -----------------------------------------------------------------
    smoothing: float = 0.1
    """Additive (Lidstone) pseudo-count added to every known model and to one
    "unseen model" slot; 0 gives the maximum-likelihood estimate."""
    min_count: int = 2
    """A next model needs at least this many observed transitions to be prefetched."""

    # --- prefetch policy ----------------------------------------------------------
    confidence_threshold: float = 0.5
    max_prefetch_per_minute: int = 30
    cooldown_s: float = 60.0
    """No second prefetch of the same model within this many seconds."""
    prefetch_slack_s: float = 60.0
    """A prefetch expires this long after its expected arrival."""
    max_lead_s: float = 600.0
    """Transitions whose mean gap is longer than this are left to the idle histogram."""
    exclude_current: bool = True
    """Never prefetch the model that was just requested (it is loaded)."""
    warm_top_n: int = 1
    """Warm-cache events per prefetched model (its top system-prompt hashes)."""
    warm_min_share: float = 0.2
    """A system prompt must carry at least this share of the model's traffic to warm."""
    heavy_hitters: int = 8
    """Space-saving counters per model for system-prompt hashes."""

    # --- hybrid histogram (Shahrad et al., ATC 2020) -----------------------------
    histogram: bool = True
    bin_s: float = 60.0
    range_s: float = 4 * 3600.0
    head_percentile: float = 0.05
    tail_percentile: float = 0.99
    histogram_margin: float = 0.10
    cv_threshold: float = 2.0
    min_samples: int = 10
    oob_threshold: float = 0.5
    """Share of idle times beyond ``range_s`` above which the out-of-range fallback is used."""
    oob_margin: float = 0.15
    oob_memory: int = 8
    """Out-of-range idle times remembered for the fallback forecast (their mean)."""
    fallback_keep_alive_s: float = 4 * 3600.0
    """Keep-alive when the histogram is not representative (the paper: its range)."""
    max_histogram_samples: int = 10_000
    """Halve every bin when the histogram holds this many idle times (ages old data)."""
    recompute_every: int = 8
    """Recompute a model's windows after this many new idle times (1 = every time)."""
    prewarm_prefetch: bool = True
    """Emit a prefetch when a model's pre-warm window (from its histogram) elapses."""

    # --- reuse hints --------------------------------------------------------------
    reuse_horizon_s: float = 300.0
    reuse_hints_on_tick: bool = True
    reuse_estimate: ReuseEstimate = "histogram"
    """How ``reuse_probability`` (the eviction value's reuse) is estimated:
    ``histogram``: from the idle-gap histogram, given how long the model has been idle;
    ``rate``: from its arrival rate over the last ``rate_window_minutes`` minutes,
    ``1 - exp(-rate * reuse_horizon_s)`` (see :mod:`predictor.core.rates`)."""
    rate_window_minutes: int = 15
    unload_below: float = 0.0
    """Unload an idle runner at once (instead of keeping it ``keep_alive``) when its
    model's P(reuse within ``reuse_horizon_s``) is below this; 0 = never. Trades cold
    starts for idle memory (BENCHMARKS.md, "Policies on replayed traces")."""

    def __post_init__(self) -> None:
        positive_ints = {
            "window_minutes": self.window_minutes,
            "count_window": self.count_window,
            "session_count_window": self.session_count_window,
            "max_sessions": self.max_sessions,
            "heavy_hitters": self.heavy_hitters,
            "min_samples": self.min_samples,
            "oob_memory": self.oob_memory,
            "max_histogram_samples": self.max_histogram_samples,
            "recompute_every": self.recompute_every,
            "rate_window_minutes": self.rate_window_minutes,
        }
        for name, value in positive_ints.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        non_negative = {
            "session_prior": self.session_prior,
            "smoothing": self.smoothing,
            "min_count": self.min_count,
            "max_prefetch_per_minute": self.max_prefetch_per_minute,
            "cooldown_s": self.cooldown_s,
            "prefetch_slack_s": self.prefetch_slack_s,
            "max_lead_s": self.max_lead_s,
            "warm_top_n": self.warm_top_n,
            "fallback_keep_alive_s": self.fallback_keep_alive_s,
        }
        for name, fvalue in non_negative.items():
            if fvalue < 0:
                raise ConfigError(f"{name} must be >= 0, got {fvalue}")
        for name, p in {
            "confidence_threshold": self.confidence_threshold,
            "warm_min_share": self.warm_min_share,
            "head_percentile": self.head_percentile,
            "tail_percentile": self.tail_percentile,
            "histogram_margin": self.histogram_margin,
            "oob_threshold": self.oob_threshold,
            "oob_margin": self.oob_margin,
            "unload_below": self.unload_below,
        }.items():
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name} must be within [0, 1], got {p}")
        if self.head_percentile > self.tail_percentile:
            raise ConfigError("head_percentile must not exceed tail_percentile")
        if self.bin_s <= 0 or self.range_s < self.bin_s:
            raise ConfigError("bin_s must be > 0 and range_s >= bin_s")
        if self.window not in ("time", "count"):
            raise ConfigError(f"window must be 'time' or 'count', got {self.window!r}")
        if self.transition_source not in ("session", "arrival"):
            raise ConfigError(
                f"transition_source must be 'session' or 'arrival', got {self.transition_source!r}"
            )
        if self.reuse_estimate not in ("histogram", "rate"):
            raise ConfigError(
                f"reuse_estimate must be 'histogram' or 'rate', got {self.reuse_estimate!r}"
            )
        if self.max_gap_s <= 0 or self.session_ttl_s <= 0 or self.reuse_horizon_s <= 0:
            raise ConfigError("max_gap_s, session_ttl_s and reuse_horizon_s must be > 0")

    @property
    def n_bins(self) -> int:
        """Number of idle-time bins (``range_s / bin_s``, rounded)."""
        return max(1, round(self.range_s / self.bin_s))

    def replace(self, **changes: Any) -> PredictorConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictorConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown predictor settings: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def recommended(cls) -> PredictorConfig:
        """What the bridge and the Faust worker run when not configured: the replay's
        "ours" (BENCHMARKS.md, "Policies on replayed traces"). Differences from the
        field defaults: keep a model without a representative idle histogram 5 minutes,
        as Ollama would (memory pressure and the reuse value decide the rest), not the
        paper's 4 hours; the eviction value's reuse from the model's recent arrival rate,
        P(asked for within 30 s), which ranks models on memory-bound fleets where the
        histogram's P(within 5 min) is ~1 for every popular one."""
        return cls(fallback_keep_alive_s=300.0, reuse_estimate="rate", reuse_horizon_s=30.0)

    @classmethod
    def with_overrides(cls, data: Mapping[str, Any]) -> PredictorConfig:
        """:meth:`recommended` with the fields in ``data`` replaced; unknown keys are an
        error that names them."""
        return cls.from_dict({**cls.recommended().to_dict(), **data})

    @classmethod
    def seed_article(cls) -> PredictorConfig:
        """The project's starting point: global transitions over the last 50 requests
        (the 49 transitions between consecutive ones, in arrival order, whatever their
        gap), maximum-likelihood estimate, prefetch at confidence >= 0.6; no session
        blending, no histogram, no reuse hints, no budget or cooldown."""
        return cls(
            window="count",
            count_window=49,
            transition_source="arrival",
            max_gap_s=1e12,
            use_session=False,
            smoothing=0.0,
            min_count=1,
            confidence_threshold=0.6,
            max_prefetch_per_minute=1_000_000,
            cooldown_s=0.0,
            max_lead_s=1e12,
            histogram=False,
            warm_top_n=0,
            reuse_hints_on_tick=False,
        )
