"""Running one request on a runner: scheduling, generation, timings.

Shared by the native and the OpenAI-compatible handlers. Reported durations
are computed on the simulated clock from the configured rates (prefill for
the uncached part of the prompt, generation per token), so they look like real
Ollama's and do not depend on how busy the test machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.requests import Request

from ollamasim.config import ModelConfig
from ollamasim.durations import NANOS
from ollamasim.engine import Engine
from ollamasim.runner import Runner
from ollamasim.tokens import embed, generate_words, tokenize

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected while its request was being scheduled."""


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; cancel it if the client disconnects first."""
    task: asyncio.Future[T] = asyncio.ensure_future(work)

    async def _disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher: asyncio.Future[None] = asyncio.ensure_future(_disconnected())
    try:
        await asyncio.wait([task, watcher], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            watcher.cancel()
            raise ClientGone
        watcher.cancel()
    return task.result()


@dataclass
class Stats:
    done_reason: str
    load_s: float
    prompt_eval_count: int
    prompt_eval_s: float
    eval_count: int
    eval_s: float
    queue_s: float
    context: list[int] = field(default_factory=list)

    def metrics(self) -> dict[str, int]:
        total = self.load_s + self.queue_s + self.prompt_eval_s + self.eval_s + 0.0002
        return {
            "total_duration": int(total * NANOS),
            "load_duration": int(self.load_s * NANOS),
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": int(self.prompt_eval_s * NANOS),
            "eval_count": self.eval_count,
            "eval_duration": int(self.eval_s * NANOS),
        }


class Job:
    """One scheduled request: owns a reference on its runner until ``finish``."""

    def __init__(self, engine: Engine, runner: Runner, load_s: float, endpoint: str) -> None:
        self.engine = engine
        self.runner = runner
        self.load_s = load_s
        self.endpoint = endpoint
        self._finished = False
        engine.emit("request-start", runner.key, endpoint=endpoint)

    @property
    def model(self) -> ModelConfig:
        return self.runner.model

    def finish(self, *, outcome: str = "ok") -> None:
        if self._finished:
            return
        self._finished = True
        if self.engine.crashed:
            self.engine.emit("request-interrupted", self.runner.key, reason=outcome)
        else:
            self.engine.emit("request-end", self.runner.key, reason=outcome, endpoint=self.endpoint)
        if not self.engine.crashed:
            self.engine.release(self.runner)

    async def generate(
        self, prompt: str, options: dict[str, Any]
    ) -> AsyncGenerator[str | Stats, None]:
        """Yield text pieces (one token each), then the final ``Stats``."""
        engine, model = self.engine, self.model
        tokens = tokenize(prompt)
        t0 = engine.clock.now()
        slot, cached = await self.runner.acquire_slot(tokens)
        generated: list[int] = []
        try:
            queue_s = engine.clock.now() - t0
            prompt_s = max(len(tokens) - cached, 1) / engine.fleet.prefill_rate(model)
            await engine.clock.sleep(prompt_s)
            natural = model.response_tokens
            num_predict = int(options.get("num_predict", -1) or -1)
            count, reason = natural, "stop"
            if 0 < num_predict <= natural:
                count, reason = num_predict, "length"
            seed = int(options.get("seed", -1) or -1)
            words = generate_words(engine.fleet.seed, model.key, prompt, count, seed)
            per_token = 1.0 / engine.fleet.gen_rate(model)
            start = engine.clock.now()
            for i, word in enumerate(words):
                await engine.clock.sleep_until(start + (i + 1) * per_token)
                generated.extend(tokenize(word))
                yield word
            yield Stats(
                done_reason=reason,
                load_s=self.load_s,
                prompt_eval_count=len(tokens),
                prompt_eval_s=prompt_s,
                eval_count=len(words),
                eval_s=len(words) * per_token,
                queue_s=queue_s,
                context=tokens + generated,
            )
        finally:
            self.runner.release_slot(slot, tokens + generated)

    async def embed(self, inputs: list[str], truncate: bool) -> tuple[list[list[float]], int]:
        engine, model = self.engine, self.model
        ctx = min(self.runner.options.num_ctx, model.context_length)
        vectors: list[list[float]] = []
        count = 0
        for text in inputs:
            toks = tokenize(text)
            if len(toks) > ctx:
                if not truncate:
                    raise ValueError("input length exceeds maximum context length")
                toks = toks[:ctx]
            count += len(toks)
            slot, _ = await self.runner.acquire_slot([])
            try:
                await engine.clock.sleep(max(len(toks), 1) / engine.fleet.prefill_rate(model))
            finally:
                self.runner.release_slot(slot, [])
            vectors.append(embed(engine.fleet.seed, model.key, text, model.embedding_length))
        return vectors, count
