"""A loaded model: its options, reference count, keep-alive and slots.

Each of the runner's ``parallel`` slots remembers the tokens it last processed
(llama.cpp's KV cache). A new sequence takes the free slot sharing the longest
token prefix with its prompt and only evaluates the remainder, at least one
token, as the runner does. ``prompt_eval_count`` still reports the whole
prompt: the runner sets ``numPromptInputs = len(inputs)`` before the cache
trims them (runner/ollamarunner/runner.go ``NewSequence``), so only
``prompt_eval_duration`` shrinks on a cache hit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ollamasim.config import ModelConfig
from ollamasim.scheduler import RunnerOptions
from ollamasim.tokens import common_prefix


@dataclass
class Slot:
    index: int
    tokens: list[int] = field(default_factory=list)
    busy: bool = False


class Runner:
    def __init__(
        self,
        model: ModelConfig,
        options: RunnerOptions,
        parallel: int,
        size: int,
        keep_alive_ns: int,
    ) -> None:
        self.model = model
        self.options = options
        self.parallel = parallel
        self.size = size
        self.keep_alive_ns = keep_alive_ns
        self.ref_count = 0
        self.expire_on_idle = False
        self.unloading = False
        self.expires_at: float | None = None  # simulated epoch seconds
        self.timer: asyncio.TimerHandle | None = None
        self.unload_reason = "keep_alive-expired"
        self.unloaded = asyncio.Event()
        self.slots = [Slot(i) for i in range(parallel)]
        self._slot_free = asyncio.Condition()

    @property
    def key(self) -> str:
        return self.model.key

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    async def acquire_slot(self, prompt: list[int]) -> tuple[Slot, int]:
        """Wait for a free slot; return it and how many prompt tokens it has cached."""
        async with self._slot_free:
            await self._slot_free.wait_for(lambda: any(not s.busy for s in self.slots))
            free = [s for s in self.slots if not s.busy]
            best = max(free, key=lambda s: (common_prefix(s.tokens, prompt), -s.index))
            best.busy = True
            cached = common_prefix(best.tokens, prompt)
            return best, min(cached, max(len(prompt) - 1, 0))

    def release_slot(self, slot: Slot, tokens: list[int]) -> None:
        """Synchronous so it is safe in ``finally`` blocks of cancelled tasks."""
        slot.tokens = tokens
        slot.busy = False
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._slot_free:
            self._slot_free.notify_all()

    def busy_slots(self) -> int:
        return sum(1 for s in self.slots if s.busy)
