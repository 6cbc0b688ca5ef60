"""``alb replay send``: replay a trace against a live bridge (or any Ollama endpoint).

Each trace line becomes one HTTP request of its endpoint and API (a prompt of about
``prompt_tokens`` words, ``num_predict`` / ``max_tokens`` = ``output_tokens``, the line's
``num_ctx`` and ``stream``), sent at ``ts / speed`` after the start, with at most
``concurrency`` in flight (a line whose time has come waits for a free slot, and the
lag is reported). The session goes in ``X-ALB-Session``. Streaming bodies are read to
the end. Nothing here is simulated: this is the shell that talks to a real server.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from predictor.traces.format import TraceRecord
from replay.report import percentile

__all__ = ["SendReport", "body_for", "send_trace"]


@dataclass(slots=True)
class SendReport:
    """What came back."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    cold: int = 0
    failures: int = 0
    latencies: list[float] = field(default_factory=list)
    max_lag_s: float = 0.0
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Counts and latency percentiles (seconds)."""
        return {
            "sent": self.sent,
            "statuses": dict(sorted(self.statuses.items())),
            "transport_failures": self.failures,
            "cold": self.cold,
            "p50_latency_s": round(percentile(self.latencies, 50), 4),
            "p99_latency_s": round(percentile(self.latencies, 99), 4),
            "max_lag_s": round(self.max_lag_s, 4),
            "wall_s": round(self.wall_s, 3),
        }


def body_for(rec: TraceRecord) -> dict[str, Any]:
    """The request body of one trace line (text of ``prompt_tokens`` words)."""
    text = " ".join(["hello"] * max(rec.prompt_tokens or 8, 1))
    out = rec.output_tokens or 16
    chat = "chat" in rec.endpoint
    body: dict[str, Any] = {"model": rec.model, "stream": rec.stream}
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    if rec.api == "openai":
        body["max_tokens"] = out
    else:
        options: dict[str, Any] = {"num_predict": out}
        if rec.num_ctx is not None:
            options["num_ctx"] = rec.num_ctx
        body["options"] = options
    return body


async def send_trace(
    records: Sequence[TraceRecord],
    url: str,
    *,
    speed: float = 1.0,
    concurrency: int = 32,
    timeout_s: float = 300.0,
    progress: Callable[[int], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> SendReport:
    """Send ``records`` to ``url`` paced by their ``ts`` / ``speed``."""
    if speed <= 0:
        raise ValueError("speed must be > 0")
    report = SendReport()
    if not records:
        return report
    t0 = records[0].ts.timestamp()
    slots = asyncio.Semaphore(concurrency)
    start = time.monotonic()

    async def one(client: httpx.AsyncClient, rec: TraceRecord) -> None:
        try:
            began = time.monotonic()
            headers = {"X-ALB-Session": rec.session} if rec.session else {}
            async with client.stream(
                "POST", rec.endpoint, json=body_for(rec), headers=headers
            ) as resp:
                async for _ in resp.aiter_raw():
                    pass
            report.statuses[resp.status_code] += 1
            if resp.headers.get("x-alb-cold", "").lower() in ("1", "true"):
                report.cold += 1
            report.latencies.append(time.monotonic() - began)
        except httpx.HTTPError:
            report.failures += 1
        finally:
            slots.release()
            if progress is not None:
                progress(1)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with (
        httpx.AsyncClient(
            base_url=url, timeout=timeout_s, limits=limits, transport=transport
        ) as client,
        asyncio.TaskGroup() as tasks,
    ):
        for rec in records:
            due = start + (rec.ts.timestamp() - t0) / speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            report.max_lag_s = max(report.max_lag_s, time.monotonic() - due)
            report.sent += 1
            tasks.create_task(one(client, rec))
    report.wall_s = time.monotonic() - start
    return report
