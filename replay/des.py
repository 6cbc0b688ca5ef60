"""A deterministic discrete-event simulation of a fleet replaying a trace.

Theory of operation
-------------------
Time is a float of seconds from the trace's first request. Events sit in one heap
ordered by ``(time, sequence)``, so equal times run in the order they were scheduled
and two runs of the same inputs are identical (nothing here draws a random number
or reads a clock). An event is a callback; it runs with ``Simulation.now`` set to its
time.

The fleet is the fleet file of ``alb sim`` (:class:`ollamasim.config.FleetConfig`):
daemons with memory, parallel slots, ``max_loaded_models``, ``OLLAMA_CONTEXT_LENGTH``,
``keep_alive`` and a load-time model (``load_fixed_s + size / load_bandwidth``, as
``ollamasim.engine``); models with file size, KV bytes per token, trained context and
prefill / generation rates. A request holds one slot of a ready runner for
``prompt / prefill_rate + output / gen_rate`` seconds; its first token comes
``prompt / prefill_rate + 1 / gen_rate`` after it got the slot.

Who decides loads, evictions and num_ctx is the *controller*:

* :class:`replay.ollama_fleet.OllamaFleet` models Ollama's own scheduler with the
  simulator's pure policy functions (``ollamasim.scheduler``).
* :class:`replay.bridge_fleet.BridgeFleet` drives the bridge's real pure policies
  (``bridge.policy.placement.route`` / ``plan_room``, ``bridge.policy.numctx.need_for`` /
  ``bucket``, ``bridge.policy.sizing.SizeBook``) exactly where the bridge's scheduler calls them.

Prediction: when the policy has a predictor, each finished (or refused) request
becomes an :class:`~predictor.core.records.AccessRecord` fed to the core's ``step`` at its
completion time (the access log is written when a request ends), and ``tick`` runs
every ``tick_s``. Prefetch outputs go to the controller; idle timeouts and the eviction
value read the predictor's state through the bridge's own rules
(``predictor.core.advice``: ``keep_alive_after`` and ``estimate_reuse``), as the
embedded bridge does.

Accounting happens between events: the bytes of loaded-but-idle runners are integrated
over time (idle memory-seconds) and every daemon's resident bytes are checked against
its capacity after every event.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ollamasim.config import DaemonConfig, FleetConfig, ModelConfig
from predictor.core import Output, Prefetch, new_state, step, tick
from predictor.core.advice import keep_alive_after
from predictor.core.machine import PredictorState
from predictor.core.records import AccessRecord
from replay.policies import PolicySpec
from replay.report import CONTEXT, FIRST, GONE, ReplayReport, Tally
from replay.workload import Request

__all__ = [
    "BridgeKnobs",
    "Clients",
    "Job",
    "PrefetchJob",
    "ReplicaJob",
    "Runner",
    "Simulation",
]


@dataclass(frozen=True, slots=True)
class BridgeKnobs:
    """The bridge settings the replay uses; defaults are ``bridge.settings.Settings``'s
    (``ALB_HEADROOM``, ``ALB_NUM_CTX_*``, ``ALB_NUM_PREDICT_DEFAULT``, ``ALB_CHARS_PER_TOKEN``,
    ``ALB_QUEUE_CAPACITY`` x ``ALB_HIGH_WATER``) and the prefetch consumer's
    (``ALB_PREFETCH_RATE`` / ``_BURST`` / ``_BUDGET``)."""

    headroom: float = 0.1
    buckets: tuple[int, ...] = (2048, 4096, 8192, 16384, 32768, 65536, 131072)
    num_ctx_min: int = 2048
    num_ctx_max: int = 262144
    num_predict_default: int = 512
    image_tokens: int = 768
    chars_per_token: float = 3.5
    prefer_default: bool = True
    high_water_depth: int = 204
    #: ``ALB_RETRY_AFTER_MAX``.
    retry_after_max: float = 120.0
    prefetch_rate: float = 0.5
    prefetch_burst: int = 3
    prefetch_budget: float = 0.5
    #: ``ALB_REPLICA_MAX`` (0: as many as there are daemons) and ``ALB_REPLICA_IDLE``.
    replica_max: int = 0
    replica_idle_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Clients:
    """How the replayed clients answer a refusal (429, or a 5xx other than 501), as the
    ``openai`` client does (``_base_client``: ``_should_retry``,
    ``_calculate_retry_timeout``): try again after the ``Retry-After`` the answer gave,
    else after an exponential backoff (``backoff_s`` doubling, at most ``backoff_max_s``;
    the client's jitter left out so that replays stay deterministic), at most ``retries``
    times; a ``Retry-After`` longer than ``max_retry_after_s`` (its
    ``MAX_RETRY_AFTER_DELAY``, two minutes) is not waited for: the client gives up at
    once. A request's latency runs from its first try."""

    retries: int = 2
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    max_retry_after_s: float = 120.0

    def retries_after(self, tries: int, retry_after: float | None) -> bool:
        """Whether a request refused on its ``tries``-th try is tried again."""
        if tries > self.retries:
            return False
        return retry_after is None or retry_after <= self.max_retry_after_s

    def wait_s(self, tries: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        return min(self.backoff_s * 2.0 ** (tries - 1), self.backoff_max_s)


def _retryable(status: int) -> bool:
    return status == 429 or (status >= 500 and status != 501)


class Job:
    """A real request: waiting, running or done."""

    __slots__ = (
        "arrival",
        "cold",
        "cold_cause",
        "daemon",
        "need",
        "opts",
        "req",
        "sent",
        "start",
        "tries",
    )

    def __init__(self, req: Request, arrival: float) -> None:
        self.req = req
        #: When the request was first sent (latencies run from here).
        self.arrival = arrival
        #: Tries so far (1 on arrival; a retry after a refusal adds one), and when the
        #: current one was sent.
        self.tries = 1
        self.sent = arrival
        self.cold = False
        #: Why it was cold (``Simulation.cold_cause``; "" while warm).
        self.cold_cause = ""
        self.start: float | None = None
        self.daemon = ""
        self.need: Any = None
        self.opts: Any = None


class PrefetchJob:
    """An accepted prefetch waiting at a model's gate for its (low-priority) load."""

    __slots__ = ("confidence", "expires_at", "model", "need")

    def __init__(self, model: str, confidence: float, expires_at: float) -> None:
        self.model = model
        self.confidence = confidence
        self.expires_at = expires_at
        #: The context need its admission carries (``bridge.policy.numctx.Need``).
        self.need: Any = None


class ReplicaJob:
    """A copy of a hot model waiting at a daemon's gate for its load (holds no slot)."""

    __slots__ = ("model", "need", "sent")

    def __init__(self, model: str, need: Any, sent: float) -> None:
        self.model = model
        self.need = need
        self.sent = sent


class Runner:
    """One model resident (or loading) on one daemon."""

    __slots__ = (
        "active",
        "auto",
        "ctx",
        "daemon",
        "expire_on_idle",
        "keep_alive_s",
        "last_used",
        "model",
        "opts",
        "parallel",
        "prefetch_conf",
        "queue",
        "ready",
        "served",
        "size",
        "timer",
    )

    def __init__(  # noqa: PLR0917
        self, model: str, daemon: str, size: int, ctx: int, auto: bool, parallel: int, now: float
    ) -> None:
        self.model = model
        self.daemon = daemon
        self.size = size
        self.ctx = ctx
        self.auto = auto
        self.parallel = parallel
        self.ready = False
        self.active = 0
        self.queue: deque[Job] = deque()
        self.last_used = now
        self.served = 0
        self.prefetch_conf: float | None = None
        self.timer = 0
        self.keep_alive_s = 0.0
        self.expire_on_idle = False
        self.opts: Any = None

    @property
    def idle(self) -> bool:
        return self.ready and self.active == 0 and not self.queue


class Controller(Protocol):
    """What decides loads and evictions (Ollama's scheduler or the bridge)."""

    def submit(self, job: Job) -> None: ...

    def release(self, runner: Runner) -> None: ...

    def prefetch(self, p: Prefetch) -> None: ...

    def runners(self) -> Iterator[Runner]: ...

    def used(self) -> dict[str, int]: ...


class Simulation:
    """One replay of ``requests`` on ``fleet`` under ``policy`` (see the module doc)."""

    def __init__(
        self,
        fleet: FleetConfig,
        policy: PolicySpec,
        requests: Sequence[Request],
        controller: Callable[[Simulation], Controller],
        *,
        knobs: BridgeKnobs | None = None,
        tick_s: float = 10.0,
        observer: Callable[[Simulation], None] | None = None,
        clients: Clients | None = None,
        slo_s: float = 5.0,
    ) -> None:
        self.fleet = fleet
        self.clients = clients or Clients()
        #: The TTFT the report's SLO attainment counts against.
        self.slo_s = slo_s
        self.policy = policy
        self.requests = requests
        self.knobs = knobs or BridgeKnobs()
        self.tick_s = tick_s
        self.observer = observer
        """Called after every event, before the accounting (``bench.idle_anatomy``)."""
        self.now = 0.0
        self.tally = Tally()
        self.models: dict[str, ModelConfig] = {m.key: m for m in fleet.models}
        #: Models a load has made ready somewhere (``cold_cause``: first use or not).
        self.ever_ready: set[str] = set()
        self.daemon_cfg: dict[str, DaemonConfig] = {d.name: d for d in fleet.daemons}
        self.state: PredictorState | None = (
            new_state(policy.predictor) if policy.predictor is not None else None
        )
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self._finished = 0
        self._idle_bytes = 0
        self._last_t = 0.0
        #: Ollama's scheduler or the bridge's (``replay.simulate`` picks by policy).
        self.controller: Controller = controller(self)

    # --- the event loop -------------------------------------------------------------
    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` at time ``t`` (never before now)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(t, self.now), self._seq, fn, args))

    def run(self) -> ReplayReport:
        """Replay every request; returns the report."""
        total = len(self.requests)
        for req in self.requests:
            self.at(req.t, self._arrive, req)
        if self.state is not None and total:
            self.at(self.tick_s, self._tick)
        heap = self._heap
        while heap and self._finished < total:
            t, _, fn, args = heapq.heappop(heap)
            if t > self.now:
                self.tally.idle_byte_s += self._idle_bytes * (t - self.now)
                self.now = t
            fn(*args)
            self._after_event()
        self.tally.horizon_s = self.now
        for r in self.controller.runners():
            if r.served == 0 and r.ready:
                self.tally.wasted_loads += 1
        return ReplayReport.from_tally(self.policy.name, self.tally, self.slo_s)

    def _after_event(self) -> None:
        if self.observer is not None:
            self.observer(self)
        idle = 0
        for r in self.controller.runners():
            if r.idle:
                idle += r.size
        self._idle_bytes = idle
        for name, used in self.controller.used().items():
            share = used / self.daemon_cfg[name].memory
            self.tally.max_memory_share = max(self.tally.max_memory_share, share)
            if share > 1.0 + 1e-9:
                raise AssertionError(f"{name} holds {used} bytes, above its capacity")

    # --- requests -------------------------------------------------------------------
    def _arrive(self, req: Request) -> None:
        self.tally.requests += 1
        self.controller.submit(Job(req, self.now))

    def _retry(self, job: Job) -> None:
        job.sent = self.now
        self.controller.submit(job)

    def start(self, job: Job, runner: Runner) -> None:
        """``job`` takes a slot of ``runner`` now."""
        model = self.models[runner.model]
        job.start = self.now
        job.daemon = runner.daemon
        runner.active += 1
        runner.served += 1
        runner.last_used = self.now
        runner.timer += 1  # a pending keep-alive expiry no longer applies
        if runner.prefetch_conf is not None:
            runner.prefetch_conf = None
            self.tally.prefetch_hits += 1
        if job.req.prompt_tokens > runner.ctx > 0:
            self.tally.truncated += 1  # the daemon cuts the prompt to its context
        prefill = max(job.req.prompt_tokens, 1) / self.fleet.prefill_rate(model)
        gen = 1.0 / self.fleet.gen_rate(model)
        self.tally.ttfts.append(self.now - job.arrival + prefill + gen)
        self.at(self.now + prefill + job.req.output_tokens * gen, self._finish, job, runner)

    def _finish(self, job: Job, runner: Runner) -> None:
        self.tally.completed += 1
        self.tally.latencies.append(self.now - job.arrival)
        self._count_cold(job)
        self._finished += 1
        self.controller.release(runner)
        self._observe(job, 200)

    def fail(self, job: Job, status: int, retry_after: float | None = None) -> None:
        """``job`` is answered HTTP ``status``: a refusal is tried again (``Clients``)
        until its tries run out; then, or for any other error, the request ends."""
        self._observe(job, status)
        if _retryable(status) and self.clients.retries_after(job.tries, retry_after):
            self.tally.retries += 1
            wait = self.clients.wait_s(job.tries, retry_after)
            job.tries += 1
            job.cold = False
            job.cold_cause = ""
            self.at(self.now + wait, self._retry, job)
            return
        self.tally.errors += 1
        if _retryable(status):
            self.tally.refused_final += 1
        self._count_cold(job)
        self._finished += 1

    def cold_cause(self, model: str, *, ready: bool) -> str:
        """Why a request for ``model`` is cold, where a daemon holds one runner per
        model (Ollama's replay; the bridge's uses ``bridge.policy.cold.cold_cause`` over
        its views): ``ready``, that runner is ready but cannot serve it."""
        if ready:
            return CONTEXT
        return GONE if model in self.ever_ready else FIRST

    def _count_cold(self, job: Job) -> None:
        if job.cold:
            self.tally.cold += 1
            cause = job.cold_cause or GONE
            self.tally.cold_causes[cause] = self.tally.cold_causes.get(cause, 0) + 1

    # --- prediction -----------------------------------------------------------------
    def _observe(self, job: Job, status: int) -> None:
        if self.state is None:
            return
        req = job.req
        record = AccessRecord(
            ts=job.sent,
            session=req.session,
            model=req.model,
            status=status,
            cold=job.cold,
            system_prompt_hash=req.system_prompt_hash,
            num_ctx=req.num_ctx,
            duration_s=self.now - job.sent,
        )
        self.state, out = step(self.state, record)
        self._act(out)

    def _tick(self) -> None:
        assert self.state is not None
        self.state, out = tick(self.state, self.now)
        self._act(out)
        if self._finished < len(self.requests):
            self.at(self.now + self.tick_s, self._tick)

    def _act(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Prefetch):
                self.tally.prefetch_events += 1
                if self.policy.prefetch and out.expires_at > self.now:
                    self.controller.prefetch(out)

    def idle_timeout(self, model: str, *, prefetched: bool = False) -> float:
        """Seconds an idle runner of ``model`` stays loaded (bridge policies): with
        ``keep_alive == "hints"`` the bridge's own rule over the predictor's state
        (``predictor.core.advice.keep_alive_after``: the hybrid histogram's windows, early
        unload below ``unload_below``; ``prefetched``: loaded by a prefetch, unused), at
        most ``idle_unload_after_s``, as the embedded bridge's ``unload_idle``; else
        ``idle_unload_after_s``."""
        policy = self.policy
        if policy.keep_alive == "fixed" or self.state is None:
            return policy.idle_unload_after_s
        return keep_alive_after(
            self.state, model, self.now, policy.idle_unload_after_s, prefetched=prefetched
        )
