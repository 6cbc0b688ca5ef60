"""Ollama's own scheduler, per daemon, for the ``ollama`` policy.

Mirrors ``ollamasim.engine`` (itself a port of Ollama's ``server/sched.go``) with the
simulator's pure policy functions:

* a request for a loaded runner whose options match (``needs_reload``) joins it at
  once, bypassing the pending queue; beyond ``num_parallel`` it waits in the runner;
* anything else goes to the daemon's one FIFO pending queue, served one at a time
  (``OLLAMA_MAX_QUEUE`` deep, the daemon's ``max_queue``: a request that finds it full
  is answered 503 "server busy", as ``sched.go``'s ``GetRunner`` does; the request being
  served, taken off the queue, does not count):
  reload on changed options, evict (``pick_runner_to_unload``: shortest keep_alive
  first, idle first, then by name) when ``max_loaded_models`` or memory is reached,
  then load; a busy victim is unloaded when it goes idle and everything pending waits
  for it (a cold load blocks the other cold loads of that daemon);
* an idle runner unloads ``keep_alive`` after its last request (5 minutes by default).

There is no bridge in front: each model is served by one daemon, chosen once by a
size-balanced static assignment (the largest model first, to the daemon with the fewest
bytes assigned so far), the way a model-affinity load balancer would spread them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ollamasim import scheduler as policy
from ollamasim.config import DaemonConfig, FleetConfig
from ollamasim.durations import NANOS, parse_keep_alive
from predictor.core import Prefetch
from replay.des import Job, Runner

if TYPE_CHECKING:
    from replay.des import Simulation

__all__ = ["OllamaFleet", "static_assignment"]


def static_assignment(fleet: FleetConfig) -> dict[str, str]:
    """Model key -> daemon name (see the module docstring)."""
    assigned = {d.name: 0 for d in fleet.daemons}
    home: dict[str, str] = {}
    for m in sorted(fleet.models, key=lambda m: (-m.size, m.key)):
        options = [d for d in fleet.daemons if m in fleet.models_for(d)]
        if not options:
            continue
        best = min(options, key=lambda d: (assigned[d.name], d.name))
        assigned[best.name] += m.size
        home[m.key] = best.name
    return home


class _Daemon:
    __slots__ = ("cfg", "default_ctx", "keep_alive_ns", "loading", "pending", "runners", "waiting")

    def __init__(self, cfg: DaemonConfig, keep_alive: float | str | None = None) -> None:
        self.cfg = cfg
        self.runners: dict[str, Runner] = {}
        self.pending: deque[Job] = deque()
        self.loading: Runner | None = None
        self.waiting: Runner | None = None
        self.default_ctx = policy.default_num_ctx(cfg.memory, cfg.context_length)
        # OLLAMA_KEEP_ALIVE: negative is forever (MAX_DURATION_NS, as Ollama parses it).
        self.keep_alive_ns = parse_keep_alive(cfg.keep_alive if keep_alive is None else keep_alive)

    def used(self) -> int:
        return sum(r.size for r in self.runners.values())


class OllamaFleet:
    """The ``ollama`` policy's controller."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        keep_alive = sim.policy.ollama_keep_alive
        self.daemons = {d.name: _Daemon(d, keep_alive) for d in sim.fleet.daemons}
        self.home = static_assignment(sim.fleet)

    def runners(self) -> Iterator[Runner]:
        for d in self.daemons.values():
            yield from d.runners.values()

    def used(self) -> dict[str, int]:
        return {name: d.used() for name, d in self.daemons.items()}

    def prefetch(self, p: Prefetch) -> None:
        """Ollama has no prefetch."""

    # --- requests -------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        sim = self.sim
        key = job.req.model
        name = self.home.get(key)
        model = sim.models.get(key)
        if name is None or model is None:
            sim.fail(job, 404)
            return
        d = self.daemons[name]
        options = {} if job.req.openai or job.req.num_ctx is None else {"num_ctx": job.req.num_ctx}
        params = {**model.parameters, **({"num_ctx": model.num_ctx} if model.num_ctx else {})}
        job.opts = policy.resolve_runner_options(
            options, params, default_ctx=d.default_ctx, train_ctx=model.context_length
        )
        job.daemon = name
        r = d.runners.get(key)
        bound = sim.policy.ollama_queue
        if bound is not None and self._waiting_for(d, key) >= bound:
            sim.fail(job, 503)  # a queue limit in front (ollama-max-queue); no Retry-After
            return
        if r is not None and r.ready and not policy.needs_reload(r.opts, job.opts):
            self._use(r, job)
            return
        waiting = len(d.pending) - (1 if d.waiting is not None else 0)
        if waiting >= max(d.cfg.max_queue, 1):
            sim.fail(job, 503)
            return
        job.cold = True
        # Ollama has one runner per model and daemon: a ready one that cannot serve the
        # request (other options, num_ctx) is reloaded.
        job.cold_cause = sim.cold_cause(key, ready=r is not None and r.ready)
        d.pending.append(job)
        self._schedule(d)

    @staticmethod
    def _waiting_for(d: _Daemon, key: str) -> int:
        """Requests for ``key`` waiting on ``d``: pending, or queued in its runner."""
        r = d.runners.get(key)
        queued = len(r.queue) if r is not None else 0
        return queued + sum(1 for j in d.pending if j.req.model == key)

    def _use(self, r: Runner, job: Job) -> None:
        r.timer += 1
        if r.active < r.parallel:
            self.sim.start(job, r)
        else:
            r.queue.append(job)

    def _schedule(self, d: _Daemon) -> None:
        sim = self.sim
        while d.loading is None and d.waiting is None and d.pending:
            job = d.pending[0]
            key = job.req.model
            model = sim.models[key]
            r = d.runners.get(key)
            if r is not None and not policy.needs_reload(r.opts, job.opts):
                d.pending.popleft()
                self._use(r, job)
                continue
            victim: Runner | None = None
            if r is not None:
                victim = r
                sim.tally.reloads += 1
            elif len(d.runners) >= d.cfg.max_runners:
                victim = self._pick(d)
            else:
                parallel = policy.parallel_for(
                    d.cfg.num_parallel,
                    completion=not model.is_embedding_only,
                    family=model.family,
                )
                size = policy.runner_size(
                    model.size, model.kv_bytes_per_token, job.opts.num_ctx, parallel
                )
                if not d.runners and size > d.cfg.memory:
                    d.pending.popleft()
                    sim.fail(job, 500)
                    continue
                if policy.fits(d.cfg.memory, d.used(), size):
                    d.pending.popleft()
                    self._load(d, job, parallel, size)
                    return
                victim = self._pick(d)
            if victim is None:
                d.pending.popleft()
                sim.fail(job, 500)
                continue
            if victim.idle:
                self._unload(d, victim, evicted=True, kick=False)
                continue
            victim.expire_on_idle = True
            d.waiting = victim
            return

    def _pick(self, d: _Daemon) -> Runner | None:
        cands = [
            policy.UnloadCandidate(r.model, int(r.keep_alive_s * NANOS), r.active + len(r.queue))
            for r in d.runners.values()
            if r.ready
        ]
        chosen = policy.pick_runner_to_unload(cands)
        return None if chosen is None else d.runners[chosen.name]

    def _load(self, d: _Daemon, job: Job, parallel: int, size: int) -> None:
        sim = self.sim
        model = sim.models[job.req.model]
        opts = job.opts
        r = Runner(model.key, d.cfg.name, size, opts.num_ctx, opts.num_ctx_auto, parallel, sim.now)
        r.opts = job.opts
        r.keep_alive_s = d.keep_alive_ns / NANOS
        d.runners[model.key] = r
        d.loading = r
        sim.tally.loads += 1
        sim.tally.demand_loads += 1
        seconds = d.cfg.load_fixed_s + model.size / d.cfg.load_bandwidth
        sim.at(sim.now + seconds, self._loaded, d, r, job)

    def _loaded(self, d: _Daemon, r: Runner, job: Job) -> None:
        r.ready = True
        self.sim.ever_ready.add(r.model)
        d.loading = None
        self.sim.start(job, r)
        self._schedule(d)

    # --- runners going idle -----------------------------------------------------------
    def release(self, r: Runner) -> None:
        d = self.daemons[r.daemon]
        r.active -= 1
        if r.queue:
            self.sim.start(r.queue.popleft(), r)
            return
        if r.active > 0:
            return
        if r.expire_on_idle or r.keep_alive_s <= 0:
            self._unload(d, r, evicted=r.expire_on_idle)
            return
        r.timer += 1
        self.sim.at(self.sim.now + r.keep_alive_s, self._expire, d, r, r.timer)

    def _expire(self, d: _Daemon, r: Runner, token: int) -> None:
        if r.timer == token and r.idle and d.runners.get(r.model) is r:
            self.sim.tally.idle_unloads += 1
            self._unload(d, r, evicted=False)

    def _unload(self, d: _Daemon, r: Runner, *, evicted: bool, kick: bool = True) -> None:
        if d.runners.get(r.model) is r:
            del d.runners[r.model]
        r.timer += 1
        if evicted:
            self.sim.tally.evictions += 1
        if r.served == 0:
            self.sim.tally.wasted_loads += 1
        if d.waiting is r:
            d.waiting = None
        if kick:
            self._schedule(d)
