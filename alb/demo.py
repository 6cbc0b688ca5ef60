"""``alb demo``: the same synthetic traffic, straight at Ollama and through the bridge.

Theory of operation. A seeded synthetic trace (``predictor.traces.synth``: sessions
walking model chains, Zipf popularity, a mix of native / OpenAI, streaming and
``num_ctx`` requests) is replayed twice, each time against a fresh simulated fleet
(``ollamasim``, in this process, on loopback) with the same configuration: one
24 GiB GPU, ``OLLAMA_NUM_PARALLEL=2``, three runners at most, and more models than
fit, so cold starts matter. The first replay talks to the daemon directly, as an
app would today; the second goes through ``alb serve`` (a subprocess, so it has its
own interpreter and event loop) with the embedded predictor on.

Everything runs ``1 / TIME_SCALE`` times faster than the trace says: the simulator
scales its clock, the replay its pacing, and the predictor and prefetch settings
their time constants. Latencies are reported in simulated seconds (wall x 10).

A request counts as a cold start when a load of its model finished on the daemon
while it waited (the simulator's event log, so both sides are measured alike). The
table and a PNG (latency and TTFT CDFs) come from one run; nothing is canned.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from ollamasim.eventlog import SimEvent
from ollamasim.names import normalize
from ollamasim.testing import RunningDaemon, running_fleet
from predictor.core.config import PredictorConfig
from predictor.traces.format import TraceRecord
from predictor.traces.synth import SynthParams, synthesize
from replay.report import percentile
from replay.send import body_for

#: Wall seconds per simulated second (the simulator's ``time_scale``).
TIME_SCALE = 0.1
_GIB = 1024**3
_MODELS: tuple[tuple[str, float], ...] = (
    ("llama3.1:8b", 4.9),
    ("qwen2.5:7b", 4.7),
    ("mistral:7b", 4.4),
    ("gemma2:9b", 5.4),
    ("phi3:14b", 7.9),
    ("codellama:13b", 7.4),
    ("llava:7b", 4.7),
    ("deepseek-r1:8b", 4.9),
)
_READY = re.compile(r"bridge listening on (http://\S+)")
_START_TIMEOUT_S = 60.0
_REQUEST_TIMEOUT_S = 120.0


class DemoError(Exception):
    """A failure the CLI reports in one line (no traceback)."""


def fleet_config() -> dict[str, Any]:
    """One simulated 24 GiB GPU holding at most three of eight models."""
    return {
        "time_scale": TIME_SCALE,
        "seed": 7,
        "gen_tokens_per_s": 60,
        "prefill_tokens_per_s": 1500,
        "models": [
            {"name": n, "size": int(gb * 1e9), "context_length": 32768, "kv_bytes_per_token": 65536}
            for n, gb in _MODELS
        ],
        "daemons": [
            {
                "name": "gpu0",
                "memory": 24 * _GIB,
                "load_bandwidth": 2 * _GIB,
                "load_fixed_s": 1.5,
                "num_parallel": 2,
                "keep_alive": "5m",
            }
        ],
    }


def trace(seed: int, duration_s: float) -> list[TraceRecord]:
    """The demo's workload: ``duration_s`` simulated seconds of sessions."""
    params = SynthParams(
        seed=seed,
        duration_s=duration_s,
        model_names=[n for n, _ in _MODELS],
        session_types=2,
        chain_strength=0.8,
        stay_prob=0.2,
        sessions_per_minute=4.0,
        mean_requests=6.0,
        think_s=20.0,
        prompt_median=400.0,
        output_median=40.0,
        bursts_per_hour=2.0,
    )
    return synthesize(params)


def predictor_config(scale: float = TIME_SCALE) -> PredictorConfig:
    """The bridge's default core (``PredictorConfig.recommended``) with every time
    constant compressed like the simulator's clock."""
    base = PredictorConfig.recommended()
    seconds = (
        "max_gap_s", "session_ttl_s", "cooldown_s", "prefetch_slack_s", "max_lead_s",
        "bin_s", "range_s", "fallback_keep_alive_s", "reuse_horizon_s",
    )  # fmt: skip
    return dataclasses.replace(base, **{k: getattr(base, k) * scale for k in seconds})


@dataclass(slots=True)
class Outcome:
    """One replayed request, wall clock."""

    model: str
    sent_at: float
    latency_s: float = 0.0
    ttft_s: float | None = None
    ok: bool = False
    cold: bool = False


@dataclass(slots=True)
class SideResult:
    """One side of the comparison."""

    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    loads: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def latencies(self) -> list[float]:
        return [o.latency_s / TIME_SCALE for o in self.outcomes if o.ok]

    def ttfts(self) -> list[float]:
        return [o.ttft_s / TIME_SCALE for o in self.outcomes if o.ok and o.ttft_s is not None]

    @property
    def errors(self) -> int:
        return sum(not o.ok for o in self.outcomes)

    @property
    def cold(self) -> int:
        return sum(o.cold for o in self.outcomes)

    def row(self) -> dict[str, float]:
        lat, ttft = self.latencies(), self.ttfts()
        return {
            "requests": len(self.outcomes),
            "errors": self.errors,
            "cold": self.cold,
            "loads": self.loads,
            "p50": percentile(lat, 50),
            "p99": percentile(lat, 99),
            "ttft50": percentile(ttft, 50),
            "ttft99": percentile(ttft, 99),
        }


# --- replay ---------------------------------------------------------------------------


def _is_error_line(line: str) -> bool:
    text = line.removeprefix("data:").strip()
    if not text.startswith("{"):
        return False
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "error" in obj


async def _one(client: httpx.AsyncClient, rec: TraceRecord, out: Outcome) -> None:
    headers = {"X-ALB-Session": rec.session} if rec.session else {}
    began = time.monotonic()
    try:
        async with client.stream("POST", rec.endpoint, json=body_for(rec), headers=headers) as r:
            failed = r.status_code != 200
            async for line in r.aiter_lines():
                if not line.strip() or line.startswith(":"):
                    continue  # blank SSE separators and heartbeat comments
                if out.ttft_s is None and rec.stream:
                    out.ttft_s = time.monotonic() - began
                failed = failed or _is_error_line(line)
        out.ok = not failed
    except httpx.HTTPError:
        out.ok = False
    out.latency_s = time.monotonic() - began


async def replay(records: Sequence[TraceRecord], url: str) -> list[Outcome]:
    """Send ``records`` to ``url`` at ``1 / TIME_SCALE`` times the trace's pace."""
    outcomes = [Outcome(normalize(r.model), 0.0) for r in records]
    t0 = records[0].ts.timestamp()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(
            base_url=url, timeout=_REQUEST_TIMEOUT_S, limits=limits, trust_env=False
        ) as client,
        asyncio.TaskGroup() as tasks,
    ):
        start = time.monotonic()
        for rec, out in zip(records, outcomes, strict=True):
            delay = start + (rec.ts.timestamp() - t0) * TIME_SCALE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            out.sent_at = time.time()
            tasks.create_task(_one(client, rec, out))
    return outcomes


def mark_cold(outcomes: Sequence[Outcome], events: Sequence[SimEvent]) -> int:
    """Flag requests that waited for a load of their model; returns the loads seen."""
    loaded: dict[str, list[float]] = {}
    for e in events:
        if e.kind == "loaded" and e.model:
            loaded.setdefault(normalize(e.model), []).append(e.wall_ts)
    for o in outcomes:
        done = o.sent_at + o.latency_s
        o.cold = any(o.sent_at <= t <= done for t in loaded.get(o.model, ()))
    return sum(e.kind == "load-start" for e in events)


# --- the bridge as a subprocess ----------------------------------------------------------


def bridge_env(daemon_url: str) -> dict[str, str]:
    """``alb serve``'s environment: the caller's, minus its ALB_* / OLLAMA_HOST, plus
    the demo fleet and every wall-clock knob compressed like the simulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALB_") and k != "OLLAMA_HOST"}
    speed = 1.0 / TIME_SCALE
    env.update(
        {
            "ALB_HOST": "127.0.0.1",
            "ALB_PORT": "0",
            "ALB_DAEMONS": f"gpu0={daemon_url}?parallel=2&max_loaded=3&memory=24GiB",
            "ALB_PREDICTOR_EMBEDDED": "true",
            "ALB_PREDICTOR_CONFIG": json.dumps(
                {k: v for k, v in predictor_config().to_dict().items() if isinstance(v, float)}
            ),
            "ALB_PREDICTOR_TICK_INTERVAL_S": str(5.0 / speed),
            "ALB_PREFETCH_RATE": str(0.5 * speed),
            "ALB_WARM_RATE": str(2.0 * speed),
            "ALB_REFRESH_INTERVAL": str(5.0 / speed),
            "ALB_IDLE_UNLOAD_AFTER": str(1800.0 / speed),
            "ALB_DRAIN_TIMEOUT": "2",
            "ALB_PRODUCER_ID": "alb-demo",
        }
    )
    return env


@contextlib.asynccontextmanager
async def running_bridge(daemon_url: str) -> AsyncIterator[str]:
    """``python -m alb.cli serve`` on a free port; yields its base URL, then SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "alb.cli", "serve",
        env=bridge_env(daemon_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        url = await asyncio.wait_for(_ready_url(proc.stdout), _START_TIMEOUT_S)
    except (TimeoutError, EOFError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        err = (await proc.stderr.read()).decode(errors="replace").strip().splitlines()
        tail = "; ".join(err[-3:]) or "no output"
        raise DemoError(f"the bridge (alb serve) did not start: {tail}") from None
    drain = asyncio.create_task(proc.stderr.read())  # keep its pipe from filling up
    try:
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        drain.cancel()


async def _ready_url(stdout: asyncio.StreamReader) -> str:
    while True:
        line = await stdout.readline()
        if not line:
            raise EOFError
        m = _READY.search(line.decode(errors="replace"))
        if m:
            return m.group(1)


async def _prefetch_counts(url: str) -> dict[str, float]:
    """The bridge's own prefetch counters (``/metrics``)."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        text = (await client.get(url + "/metrics")).text
    out: dict[str, float] = {"prefetched": 0.0, "hits": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "alb_prefetch_total" and s.labels.get("outcome") == "loaded":
                out["prefetched"] += s.value
            elif s.name == "alb_prefetch_hits_total":
                out["hits"] += s.value
    return out


# --- the two sides ---------------------------------------------------------------------


async def _settle(daemon: RunningDaemon, outcomes: Sequence[Outcome]) -> int:
    await asyncio.sleep(0.2)  # the last request-end lands in the log
    return mark_cold(outcomes, daemon.events())


async def run_direct(records: Sequence[TraceRecord]) -> SideResult:
    async with running_fleet(fleet_config()) as fleet:
        daemon = fleet.daemon("gpu0")
        outcomes = await replay(records, daemon.base_url)
        loads = await _settle(daemon, outcomes)
    return SideResult("Ollama direct", outcomes, loads)


async def run_bridged(records: Sequence[TraceRecord]) -> SideResult:
    async with running_fleet(fleet_config()) as fleet:
        daemon = fleet.daemon("gpu0")
        async with running_bridge(daemon.base_url) as url:
            outcomes = await replay(records, url)
            extra = await _prefetch_counts(url)
        loads = await _settle(daemon, outcomes)
    return SideResult("via the bridge", outcomes, loads, extra)


# --- the report ------------------------------------------------------------------------


def render_table(sides: Sequence[SideResult]) -> Any:
    """The before/after table (a ``rich.table.Table``; fits 80 columns)."""
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="latency and TTFT in simulated seconds (p50 / p99)")
    table.add_column("")
    for col in ("reqs", "errors", "cold starts", "p50", "p99", "TTFT50", "TTFT99"):
        table.add_column(col, justify="right")
    for side in sides:
        r = side.row()
        n = max(int(r["requests"]), 1)
        table.add_row(
            side.name,
            f"{int(r['requests'])}",
            f"{int(r['errors'])}",
            f"{int(r['cold'])} ({100 * r['cold'] / n:.0f}%)",
            f"{r['p50']:.1f}",
            f"{r['p99']:.1f}",
            f"{r['ttft50']:.1f}",
            f"{r['ttft99']:.1f}",
        )
    return table


def write_plot(sides: Sequence[SideResult], out: Path) -> None:
    """Latency and TTFT CDFs of both sides, one PNG (matplotlib, Agg)."""
    import matplotlib as mpl  # noqa: PLC0415

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, what, values in (
        (axes[0], "request latency", SideResult.latencies),
        (axes[1], "time to first token (streams)", SideResult.ttfts),
    ):
        for side in sides:
            xs = sorted(values(side))
            if xs:
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.step(xs, ys, where="post", label=f"{side.name} (cold {side.cold})")
        ax.set_xscale("log")
        ax.set_xlabel(f"{what}, simulated seconds (log)")
        ax.set_ylabel("share of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left")
    fig.suptitle("alb demo: Ollama direct vs. through the bridge (embedded predictor)")
    fig.savefig(out, dpi=110)
    plt.close(fig)


@dataclass(frozen=True, slots=True)
class DemoResult:
    records: int
    sessions: int
    sides: tuple[SideResult, ...]
    out: Path


async def run_demo(seed: int, duration_s: float, out: Path, say: Any = print) -> DemoResult:
    """Replay the trace directly, then through the bridge; write the PNG."""
    records = trace(seed, duration_s)
    if not records:
        raise DemoError(f"the trace for --seed {seed} --duration {duration_s:g} is empty")
    sessions = len({r.session for r in records})
    wall = duration_s * TIME_SCALE
    say(
        f"trace: {len(records)} requests in {sessions} sessions over {duration_s:g} simulated s "
        f"({len(_MODELS)} models, seed {seed}); fleet: one 24 GiB GPU, at most 3 runners; "
        f"time x{1 / TIME_SCALE:g} (~{wall:.0f} s of wall time per side)"
    )
    say("1/2 Ollama direct ...")
    direct = await run_direct(records)
    say("2/2 via the bridge (embedded predictor on) ...")
    bridged = await run_bridged(records)
    sides = (direct, bridged)
    write_plot(sides, out)
    return DemoResult(len(records), sessions, sides, out)


def main(seed: int, duration_s: float, out: Path) -> int:
    """The CLI's body: run, print the table, the prefetch line and the plot's path."""
    from rich.console import Console  # noqa: PLC0415

    console = Console()
    err = Console(stderr=True)
    if not 10 <= duration_s <= 1800:
        err.print("alb demo: --duration must be between 10 and 1800 simulated seconds")
        return 2
    out = out.expanduser()
    if out.suffix.lower() != ".png":
        err.print(f"alb demo: --out must name a .png file, got {str(out)!r}")
        return 2
    existed = out.exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("ab"):  # fail now, not after a minute of replay
            pass
    except OSError as exc:
        err.print(f"alb demo: cannot write {str(out)!r}: {exc.strerror or exc}")
        return 2
    code, message = 0, ""
    try:
        result = asyncio.run(run_demo(seed, duration_s, out, say=console.print))
    except DemoError as exc:
        code, message = 1, str(exc)
    except KeyboardInterrupt:
        code, message = 130, "interrupted"
    except OSError as exc:
        code, message = 1, str(exc)
    if code:
        if not existed:
            out.unlink(missing_ok=True)
        err.print(f"alb demo: {message}")
        return code
    console.print(render_table(result.sides))
    direct, bridged = result.sides
    console.print(
        f"model loads on the daemon: {direct.loads} direct, {bridged.loads} via the bridge "
        f"({int(bridged.extra.get('prefetched', 0))} of them prefetches, "
        f"{int(bridged.extra.get('hits', 0))} used by a request)"
    )
    console.print(f"plot: {out.resolve()}")
    return 0
