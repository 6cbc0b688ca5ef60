"""Synthetic traces: sessions that walk model chains, with Zipf popularity, a daily
cycle and bursts. Seeded: the same :class:`SynthParams` always give the same trace.

Theory of operation
-------------------
* **Session arrivals** are a non-homogeneous Poisson process (Lewis-Shedler thinning)
  with rate ``sessions_per_minute * (1 + daily_amplitude * cos(2 pi (h - peak_hour) / 24))``
  at hour of day ``h`` (the trace starts at ``start_hour``), multiplied by
  ``burst_factor`` inside bursts. Bursts start as a Poisson process
  (``bursts_per_hour``) and last ``burst_s``.
* **Models** have Zipf popularity: the model of rank ``r`` (0-based) has weight
  ``1 / (r + 1) ** zipf_s``.
* **Session types**: each of ``session_types`` types has its own successor map, one
  random cycle through all models (so no model is its own successor). A session picks
  its type uniformly and its first model by popularity; then each next request stays on
  the same model with ``stay_prob``, else moves to the type's successor with
  ``chain_strength``, else draws a model by popularity. That is a Markov chain over
  models per session type.
* **Requests** of a session are ``think_s`` apart on average (exponential); a session
  has a geometric number of requests with mean ``mean_requests``.
* Each model has ``prompts_per_model`` system prompts used with Zipf(1) frequencies;
  token counts are log-normal; the API, streaming and num_ctx are drawn per request.
* Times: ``t`` seconds into the trace is ``epoch + start_hour + t`` (RFC 3339 UTC).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from predictor.traces.format import DEFAULT_EPOCH, ENDPOINTS, Api, TraceRecord, at, sha256_hex

__all__ = ["SynthParams", "synthesize"]

NUM_CTX_CHOICES = (2048, 4096, 8192)


@dataclass(frozen=True, slots=True)
class SynthParams:
    """Parameters of :func:`synthesize` (see the module docstring)."""

    seed: int = 0
    epoch: datetime = DEFAULT_EPOCH
    """Midnight of the trace's first day; the trace starts at ``start_hour`` of it."""
    duration_s: float = 3600.0
    models: int = 12
    model_names: Sequence[str] | None = None
    zipf_s: float = 1.1
    session_types: int = 4
    chain_strength: float = 0.7
    stay_prob: float = 0.3
    sessions_per_minute: float = 10.0
    mean_requests: float = 6.0
    think_s: float = 20.0
    start_hour: float = 9.0
    peak_hour: float = 14.0
    daily_amplitude: float = 0.5
    bursts_per_hour: float = 1.0
    burst_factor: float = 4.0
    burst_s: float = 120.0
    prompts_per_model: int = 3
    openai_share: float = 0.3
    stream_share: float = 0.8
    num_ctx_share: float = 0.3
    prompt_median: float = 800.0
    output_median: float = 150.0

    def names(self) -> list[str]:
        """Model names, most popular first."""
        if self.model_names is not None:
            return list(self.model_names)
        return [f"model-{i:02d}" for i in range(self.models)]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad parameter."""
        if len(self.names()) < 2:
            raise ValueError("models: at least 2 models are needed")
        for name in ("chain_strength", "stay_prob", "openai_share", "stream_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if not 0.0 <= self.num_ctx_share <= 1.0 or not 0.0 <= self.daily_amplitude <= 1.0:
            raise ValueError("num_ctx_share and daily_amplitude must be within [0, 1]")
        if self.duration_s <= 0 or self.sessions_per_minute <= 0 or self.mean_requests < 1:
            raise ValueError("duration_s, sessions_per_minute > 0 and mean_requests >= 1")
        if self.session_types < 1 or self.prompts_per_model < 1 or self.burst_factor < 1:
            raise ValueError("session_types, prompts_per_model and burst_factor must be >= 1")


def _zipf_weights(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=float) ** s
    return np.asarray(w / w.sum())


def _bursts(p: SynthParams, rng: np.random.Generator) -> list[tuple[float, float]]:
    count = int(rng.poisson(p.bursts_per_hour * p.duration_s / 3600.0))
    starts = np.sort(rng.uniform(0.0, p.duration_s, size=count))
    return [(float(s), float(s) + p.burst_s) for s in starts]


def _session_starts(p: SynthParams, rng: np.random.Generator) -> list[float]:
    bursts = _bursts(p, rng)
    base = p.sessions_per_minute / 60.0
    peak = base * (1.0 + p.daily_amplitude) * p.burst_factor
    out: list[float] = []
    t = 0.0
    while True:
        t += float(rng.exponential(1.0 / peak))
        if t >= p.duration_s:
            return out
        hour = (p.start_hour + t / 3600.0) % 24.0
        rate = base * (1.0 + p.daily_amplitude * math.cos(2 * math.pi * (hour - p.peak_hour) / 24))
        if any(a <= t < b for a, b in bursts):
            rate *= p.burst_factor
        if rng.random() * peak < rate:
            out.append(t)


def synthesize(p: SynthParams) -> list[TraceRecord]:
    """Generate a trace, sorted by ``ts``."""
    p.validate()
    rng = np.random.default_rng(p.seed)
    names = p.names()
    n = len(names)
    popularity = _zipf_weights(n, p.zipf_s)
    prompt_weights = _zipf_weights(p.prompts_per_model, 1.0)
    successors = []
    for _ in range(p.session_types):
        cycle = rng.permutation(n)
        succ = np.empty(n, dtype=int)
        succ[cycle] = np.roll(cycle, -1)
        successors.append(succ)
    stop = 1.0 / p.mean_requests
    out: list[TraceRecord] = []
    for sid, start in enumerate(_session_starts(p, rng)):
        session = f"sess-{p.seed}-{sid:06d}"
        succ = successors[int(rng.integers(p.session_types))]
        model = int(rng.choice(n, p=popularity))
        t = start
        while t < p.duration_s:
            out.append(
                _request(
                    p,
                    rng=rng,
                    t=t,
                    session=session,
                    model=names[model],
                    prompt_weights=prompt_weights,
                )
            )
            if rng.random() < stop:
                break
            t += float(rng.exponential(p.think_s))
            u = rng.random()
            if u < p.stay_prob:
                pass
            elif u < p.stay_prob + (1.0 - p.stay_prob) * p.chain_strength:
                model = int(succ[model])
            else:
                model = int(rng.choice(n, p=popularity))
    out.sort(key=lambda r: (r.ts, r.session or ""))
    return out


def _request(
    p: SynthParams,
    *,
    rng: np.random.Generator,
    t: float,
    session: str,
    model: str,
    prompt_weights: np.ndarray,
) -> TraceRecord:
    api: Api = "openai" if rng.random() < p.openai_share else "native"
    endpoint = ENDPOINTS[api][0] if rng.random() < 0.8 else ENDPOINTS[api][1]
    prompt_id = int(rng.choice(len(prompt_weights), p=prompt_weights))
    system = sha256_hex("system", model, str(prompt_id))
    num_ctx = None
    if api == "native" and rng.random() < p.num_ctx_share:
        num_ctx = NUM_CTX_CHOICES[int(rng.integers(len(NUM_CTX_CHOICES)))]
    return TraceRecord(
        ts=at(p.epoch, p.start_hour * 3600.0 + t),
        session=session,
        model=model,
        api=api,
        endpoint=endpoint,
        prompt_tokens=max(1, round(float(rng.lognormal(math.log(p.prompt_median), 1.0)))),
        output_tokens=max(1, round(float(rng.lognormal(math.log(p.output_median), 0.8)))),
        system_prompt_hash=system,
        prefix_hash=sha256_hex("prefix", system, session),
        num_ctx=num_ctx,
        stream=bool(rng.random() < p.stream_share),
    )
