"""One daemon's scheduler, carried out on asyncio (theory of operation).

Mirrors server/sched.go of current Ollama:

* ``acquire`` first tries the loaded runner directly (``getRunner``'s fast path):
  a request for a loaded, compatible model never touches the pending queue, so
  it bypasses ``OLLAMA_MAX_QUEUE`` and waits without bound for a slot.
* Otherwise the request joins the bounded pending queue (full: 503
  ``ErrMaxQueue``). One task drains it, one request at a time, exactly like
  ``processPending``: reuse, or pick a runner to expire (max runners reached,
  options changed, or the new model does not fit) and wait for that unload, or
  load. Loads are sequential, so a cold load blocks other cold loads.
* A load larger than the daemon's whole memory fails at once with Ollama's 500
  "model requires more system memory (X) than is available (Y)"; nothing is unloaded
  for it, and a runner of the model it would have replaced keeps serving.
* A runner is unloaded only when its reference count is zero; asking for an
  eviction of a busy runner marks it ``expire_on_idle`` (Ollama never cuts an
  in-flight request). Idle runners expire after their keep-alive.
* The load is tied to the requesting client: if it disconnects first the load
  is aborted (``load-aborted``).
* With ``unload_linger_s`` (a GPU daemon) an unloaded runner stays listed in
  ``/api/ps``, its memory held, for that long before it is gone; the ``unload`` event
  marks the end.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from ollamasim import scheduler as policy
from ollamasim.clock import Clock
from ollamasim.config import DaemonConfig, FleetConfig, ModelConfig
from ollamasim.durations import MAX_DURATION_NS, NANOS, human_bytes2, parse_keep_alive
from ollamasim.eventlog import EventKind, EventLog, SimEvent
from ollamasim.faults import Faults
from ollamasim.names import normalize
from ollamasim.runner import Runner

ERR_MAX_QUEUE = "server busy, please try again.  maximum pending requests exceeded"
_POLL_S = 0.005  # wall seconds between fault polls while a load hangs


class ScheduleError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Pending:
    model: ModelConfig
    options: policy.RunnerOptions
    keep_alive_ns: int | None
    future: asyncio.Future[Runner]
    abandoned: asyncio.Event = field(default_factory=asyncio.Event)


class Engine:
    def __init__(
        self, fleet: FleetConfig, daemon: DaemonConfig, clock: Clock, faults: Faults, log: EventLog
    ) -> None:
        self.fleet = fleet
        self.daemon = daemon
        self.clock = clock
        self.faults = faults
        self.log = log
        self.models = {m.key: m for m in fleet.models_for(daemon)}
        self.loaded: dict[str, Runner] = {}
        self.loading_size = 0
        self.default_keep_alive_ns = parse_keep_alive(daemon.keep_alive)
        self._pending: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max(daemon.max_queue, 1))
        self._task: asyncio.Task[None] | None = None
        self.crashed = False

    # --- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._process_pending())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for r in self.loaded.values():
            r.cancel_timer()

    # --- queries ---------------------------------------------------------------
    def find_model(self, name: str) -> ModelConfig | None:
        return self.models.get(normalize(name))

    def memory_used(self) -> int:
        return sum(r.size for r in self.loaded.values()) + self.loading_size

    def default_num_ctx(self) -> int:
        return policy.default_num_ctx(self.daemon.memory, self.daemon.context_length)

    def runner_options(
        self, model: ModelConfig, request_options: dict[str, Any]
    ) -> policy.RunnerOptions:
        policy.check_option_types(request_options)
        return policy.resolve_runner_options(
            request_options,
            {**model.parameters, **({"num_ctx": model.num_ctx} if model.num_ctx else {})},
            default_ctx=self.default_num_ctx(),
            train_ctx=model.context_length,
            vision="vision" in model.capabilities,
        )

    def emit(
        self, kind: EventKind, model: str | None, reason: str | None = None, **detail: Any
    ) -> None:
        self.log.append(
            SimEvent(
                kind=kind,
                daemon=self.daemon.name,
                model=model,
                sim_ts=self.clock.now(),
                wall_ts=self.clock.wall(),
                memory_used=self.memory_used(),
                memory_capacity=self.daemon.memory,
                reason=reason,
                detail=detail,
            )
        )

    # --- acquiring and releasing runners ---------------------------------------
    async def acquire(
        self, model: ModelConfig, options: policy.RunnerOptions, keep_alive_ns: int | None
    ) -> tuple[Runner, float]:
        """A runner with one reference for the caller, and the simulated seconds
        spent getting it (``load_duration``). Cancel the caller to abandon."""
        start = self.clock.now()
        runner = self.loaded.get(model.key)
        if (
            runner is not None
            and not runner.unloading
            and not policy.needs_reload(runner.options, options)
        ):
            self._use(runner, keep_alive_ns)
            return runner, 0.0001
        loop = asyncio.get_running_loop()
        pending = _Pending(model, options, keep_alive_ns, loop.create_future())
        try:
            self._pending.put_nowait(pending)
        except asyncio.QueueFull:
            self.emit("rejected", model.key, reason="max-queue")
            raise ScheduleError(503, ERR_MAX_QUEUE) from None
        try:
            runner = await asyncio.shield(pending.future)
        except asyncio.CancelledError:
            pending.abandoned.set()
            if (
                pending.future.done()
                and not pending.future.cancelled()
                and pending.future.exception() is None
            ):
                self.release(pending.future.result())
            raise
        return runner, max(self.clock.now() - start, 0.0001)

    def _use(self, runner: Runner, keep_alive_ns: int | None) -> None:
        runner.ref_count += 1
        runner.cancel_timer()
        if keep_alive_ns is not None:
            runner.keep_alive_ns = keep_alive_ns
        runner.expires_at = None

    def release(self, runner: Runner) -> None:
        runner.ref_count -= 1
        if runner.ref_count > 0 or runner.unloading:
            return
        if runner.expire_on_idle or runner.keep_alive_ns <= 0:
            runner.expire_on_idle = False
            self._expire(runner)
            return
        runner.cancel_timer()
        runner.expires_at = self.clock.now() + runner.keep_alive_ns / NANOS
        if runner.keep_alive_ns < MAX_DURATION_NS:
            delay = self.clock.to_wall(runner.keep_alive_ns / NANOS)
            loop = asyncio.get_running_loop()
            runner.timer = loop.call_later(delay, self._on_timer, runner)

    def _on_timer(self, runner: Runner) -> None:
        runner.timer = None
        runner.unload_reason = "keep_alive-expired"
        self._expire(runner)

    def request_expiration(self, runner: Runner, reason: str) -> None:
        """``requestImmediateExpirationLocked``: now if idle, else when idle."""
        if runner.unloading:
            return  # on its way out already (maybe lingering: its timer ends that)
        runner.cancel_timer()
        runner.keep_alive_ns = 0
        runner.unload_reason = reason
        if runner.ref_count > 0:
            runner.expire_on_idle = True
        else:
            self._expire(runner)

    def unload_requested(self, model: ModelConfig) -> None:
        """``expireRunner``: keep_alive 0 with an empty prompt."""
        runner = self.loaded.get(model.key)
        if runner is not None:
            runner.expires_at = self.clock.now()
            self.request_expiration(runner, "requested")

    def _expire(self, runner: Runner) -> None:
        if runner.ref_count > 0:
            runner.expire_on_idle = True
            return
        if runner.unloading:
            return
        runner.unloading = True
        runner.cancel_timer()
        linger = self.daemon.unload_linger_s
        if linger > 0:  # listed, memory held, until the VRAM is back (a GPU)
            runner.expires_at = self.clock.now()
            loop = asyncio.get_running_loop()
            runner.timer = loop.call_later(self.clock.to_wall(linger), self._gone, runner)
            return
        self._gone(runner)

    def _gone(self, runner: Runner) -> None:
        runner.timer = None
        if self.loaded.get(runner.key) is runner:
            del self.loaded[runner.key]
        self.emit("unload", runner.key, reason=runner.unload_reason, size=runner.size)
        runner.unloaded.set()

    # --- the pending loop --------------------------------------------------------
    async def _process_pending(self) -> None:
        while True:
            pending = await self._pending.get()
            try:
                await self._schedule(pending)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # pragma: no cover - defensive
                if not pending.future.done():
                    pending.future.set_exception(ScheduleError(500, str(exc)))

    async def _schedule(self, p: _Pending) -> None:
        key = p.model.key
        parallel = policy.parallel_for(
            self.daemon.num_parallel,
            completion=not p.model.is_embedding_only,
            family=p.model.family,
        )
        size = policy.runner_size(
            p.model.size, p.model.kv_bytes_per_token, p.options.num_ctx, parallel
        )
        if size > self.daemon.memory:
            # More than the whole daemon: Ollama's memory error, before anything is
            # unloaded for it (the runner it would replace keeps serving).
            msg = (
                f"model requires more system memory ({human_bytes2(size)}) "
                f"than is available ({human_bytes2(self.daemon.memory)})"
            )
            self.emit("load-failed", key, reason="insufficient-memory", size=size)
            p.future.set_exception(ScheduleError(500, msg))
            return
        while not p.abandoned.is_set():
            runner = self.loaded.get(key)
            victim: Runner | None = None
            reason = f"evicted-for-{key}"
            if runner is not None and runner.unloading:
                await runner.unloaded.wait()  # its unload finishes first, then a new load
                continue
            if runner is not None:
                if policy.needs_reload(runner.options, p.options):
                    victim, reason = runner, "reload-options-changed"
                else:
                    self._use(runner, p.keep_alive_ns)
                    p.future.set_result(runner)
                    return
            elif len(self.loaded) >= self.daemon.max_runners:
                victim = self._pick_victim()
            else:
                if policy.fits(self.daemon.memory, self.memory_used(), size):
                    await self._load(p, parallel, size)
                    return
                victim = self._pick_victim()
            if victim is None:
                await asyncio.sleep(0)
                continue
            self.request_expiration(victim, reason)
            await victim.unloaded.wait()
        if not p.future.done():
            p.future.cancel()

    def _pick_victim(self) -> Runner | None:
        cands = [
            policy.UnloadCandidate(r.key, r.keep_alive_ns, r.ref_count)
            for r in self.loaded.values()
        ]
        chosen = policy.pick_runner_to_unload(cands)
        return None if chosen is None else self.loaded[chosen.name]

    async def _load(self, p: _Pending, parallel: int, size: int) -> None:
        key = p.model.key
        seconds = self.daemon.load_fixed_s + p.model.size / self.daemon.load_bandwidth
        seconds *= self.faults.load_factor(key)
        self.loading_size = size
        self.emit("load-start", key, size=size, num_ctx=p.options.num_ctx, expected_s=seconds)
        deadline = self.clock.now() + seconds
        try:
            while True:
                if p.abandoned.is_set():
                    self.loading_size = 0
                    self.emit("load-aborted", key, reason="client-disconnected")
                    p.future.cancel()
                    return
                if self.faults.load_hangs(key):
                    await _wait(p.abandoned, _POLL_S)
                    deadline = max(deadline, self.clock.now())
                    continue
                remaining = self.clock.to_wall(deadline - self.clock.now())
                if remaining <= 0:
                    break
                await _wait(p.abandoned, min(remaining, 0.05))
        except asyncio.CancelledError:
            self.loading_size = 0
            raise
        keep_alive = self.default_keep_alive_ns if p.keep_alive_ns is None else p.keep_alive_ns
        runner = Runner(p.model, p.options, parallel, size, keep_alive)
        runner.ref_count = 1
        self.loading_size = 0
        self.loaded[key] = runner
        self.emit("loaded", key, size=size, num_ctx=p.options.num_ctx, load_s=seconds)
        p.future.set_result(runner)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
