"""Placement and eviction: pure functions of a fleet snapshot (theory of operation).

The scheduler freezes the fleet into ``DaemonView``s (capacity, budget, the
runners each daemon holds with their size, context, whether anything is in
flight or queued for them, pins, idle time and reload cost) and asks:

``route(views, key, need, size_of)`` — where does a request go?

1. A daemon whose runner of the model fits the request (enough context; for the
   OpenAI surface: loaded without num_ctx), or whose pending load will fit it:
   the one where a newcomer would get a slot soonest (``wait_s``: what is left of a
   copy's load, then the requests ahead drained at its slots per service time; a ready
   copy with a long queue loses to a copy that is nearly loaded, and the other way
   round), then the fewest outstanding requests. No load. A daemon where loading the
   model failed lately (``DaemonView.failing``, a cooldown) gets no load of it while
   another daemon can take the request.
2. Else the daemon where loading costs least: a load that fits in free memory
   beats one that needs evictions; among those that evict, the least value lost;
   then the fewest outstanding requests. Reloading the model's own idle runner
   with another context frees that runner first and counts as evicting it (its
   value is lost): with several daemons, /v1 requests (default context) and
   native ones needing more context end up on different daemons instead of
   reloading one runner back and forth.
3. Else, if some daemon could hold the model once busy runners go idle: wait there.
4. Else ``Reject``: 400 when the request can never fit: on every daemon that has the
   model, its size there is over that daemon's whole budget or at its learned ceiling
   (a load that big failed there for want of memory); else 503 with Retry-After (pinned
   models stand in the way, or the model's loads failed lately where it would fit).

``plan_room(view, key, size, value)`` — which runners to unload so ``size`` bytes fit
under the daemon's budget (capacity - headroom) and its ``max_loaded``: only idle
(nothing in flight or queued), unpinned, not-loading runners of other models,
lowest value first,
least recently used first among equals; victims that turn out unnecessary are
kept. ``None``: not now (busy runners hold the memory); ``NEVER``: the model
cannot fit this daemon even empty (or pins block it for good), or ``size`` is at the
daemon's learned ceiling. The bridge evicts only for a load it knows will fit after
the evictions: under the budget, or, with memory unknown, within what the daemon has
been seen holding at once (``held``). With memory unknown and room for one more
runner, the load goes ahead without evictions whether or not it is known to fit (the
daemon decides; a memory error then teaches the ceiling); ``RoomPlan.proven`` says
whether the fit is known (the driver unloads the model's own runner before a reload
only then).

Value = predicted reuse x reload cost; reuse comes from a ``ReuseOracle`` (the
predictor plugs in here), by default ``RecencyOracle``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from bridge.policy.numctx import Need

#: Seconds a load in progress is expected to take before any load of its model was
#: measured (``Loader.remaining_s``; the replay's mirror of it).
DEFAULT_LOAD_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class RunnerView:
    """One model resident (or being loaded) on a daemon."""

    key: str
    size: int
    ctx: int
    auto: bool
    #: Requests in flight or queued for it: never evicted.
    busy: bool
    pinned: bool
    #: Seconds since it last served a request.
    idle_s: float
    #: Seconds a reload would take (learned load time, else an estimate from size).
    reload_s: float
    #: A load or unload of it is in progress: not a candidate for anything.
    loading: bool = False
    #: Daemons holding this model (this one included): a copy's reuse is shared.
    copies: int = 1
    #: Requests in flight or queued for it, its slots, and the smoothed seconds a
    #: request holds a slot: how long a newcomer would wait here (``wait_s``).
    outstanding: int = 0
    slots: int = 1
    service_s: float = 1.0
    #: Seconds until its load in progress ends (0 when it is ready).
    load_left_s: float = 0.0


def wait_s(r: RunnerView) -> float:
    """Seconds a newcomer would wait for a slot of ``r``: what is left of its load,
    then the requests ahead of it drained at its slots per service time."""
    ahead = max(r.outstanding + 1 - r.slots, 0)
    return r.load_left_s + ahead * r.service_s / max(r.slots, 1)


@dataclass(frozen=True, slots=True)
class Cooldown:
    """A (daemon, model) whose last load failed: no load of it there for ``left_s``."""

    left_s: float
    error: str


@dataclass(frozen=True, slots=True)
class DaemonView:
    """An immutable picture of one daemon for the policies."""

    name: str
    up: bool
    models: frozenset[str]
    runners: Mapping[str, RunnerView]
    #: Bytes the bridge may plan for (capacity - headroom); None = unknown (no limit).
    budget: int | None
    max_loaded: int
    outstanding: int = 0
    #: Models with requests waiting for a load here (joining beats a second load).
    pending: frozenset[str] = frozenset()
    #: Parallel slots a completion model gets on this daemon.
    parallel: int = 1
    #: Smallest load that failed here for want of memory: nothing that big is tried.
    ceiling: int | None = None
    #: Most bytes the daemon was seen holding at once: evidence of what fits.
    held: int = 0
    #: Models whose loads failed here lately, with their cooldowns.
    failing: Mapping[str, Cooldown] = field(default_factory=dict)

    @property
    def used(self) -> int:
        return sum(r.size for r in self.runners.values())


class ReuseOracle(Protocol):
    """How likely a resident model is to be wanted again soon (higher = keep)."""

    def reuse(self, daemon: str, runner: RunnerView) -> float: ...


@dataclass(frozen=True, slots=True)
class RecencyOracle:
    """Until the predictor exists: the more recently used, the likelier reused.
    ``half_life_s``: idle time at which the score halves."""

    half_life_s: float = 300.0

    def reuse(self, daemon: str, runner: RunnerView) -> float:
        return 1.0 / (1.0 + max(runner.idle_s, 0.0) / self.half_life_s)


def eviction_value(oracle: ReuseOracle, daemon: str, runner: RunnerView) -> float:
    """Predicted reuse x reload seconds, shared among the model's copies: of n copies,
    evicting one loses about 1/n of what evicting the only one would."""
    return oracle.reuse(daemon, runner) * max(runner.reload_s, 0.001) / max(runner.copies, 1)


class _Never:
    def __repr__(self) -> str:
        return "NEVER"


NEVER: Final = _Never()


@dataclass(frozen=True, slots=True)
class RoomPlan:
    """Unload ``victims`` (in order), then load; ``freed`` bytes come back."""

    victims: tuple[str, ...] = ()
    freed: int = 0
    value_lost: float = 0.0
    #: The model's own runner is reloaded (a different context).
    reload: bool = False
    #: The load is known to fit after the victims go (budget, or what the daemon held).
    proven: bool = True


def plan_room(
    view: DaemonView,
    key: str,
    size: int,
    value: Callable[[RunnerView], float],
) -> RoomPlan | _Never | None:
    """Make room for ``size`` bytes of ``key`` on ``view`` (see the module doc)."""
    own = view.runners.get(key)
    if own is not None and own.loading:
        return None
    # The model's own runner (a reload) is replaced once its in-flight requests
    # finished: the scheduler drains it first; its queued requests wait for the new one.
    others = {k: r for k, r in view.runners.items() if k != key}
    budget = view.budget
    pinned = [r for r in others.values() if r.pinned]
    pinned_size = sum(r.size for r in pinned)
    if budget is not None and size + pinned_size > budget:
        return NEVER
    if view.ceiling is not None and size >= view.ceiling:
        return NEVER
    if len(pinned) >= view.max_loaded:
        return NEVER
    used = sum(r.size for r in others.values())
    # What the bridge knows fits: the budget, else what the daemon was seen holding.
    known = budget if budget is not None else view.held

    def fits(freed: int, evicted: int, limit: int | None = known) -> bool:
        mem_ok = limit is None or used - freed + size <= limit
        return mem_ok and len(others) - evicted + 1 <= view.max_loaded

    reload = own is not None
    if fits(0, 0, budget):
        return RoomPlan(reload=reload, proven=fits(0, 0))
    candidates = sorted(
        (r for r in others.values() if not (r.busy or r.pinned or r.loading)),
        key=lambda r: (value(r), -r.idle_s, r.key),
    )
    chosen: list[RunnerView] = []
    freed = 0
    for r in candidates:
        chosen.append(r)
        freed += r.size
        if fits(freed, len(chosen)):
            break
    else:
        # Not now: busy runners hold the room, or (memory unknown) no eviction is known
        # to make it fit, and the bridge does not evict on a guess.
        return None
    # Keep any victim the others already make room for (most valuable first).
    for r in sorted(chosen, key=lambda r: (-value(r), r.key)):
        if fits(freed - r.size, len(chosen) - 1):
            chosen.remove(r)
            freed -= r.size
    return RoomPlan(
        victims=tuple(r.key for r in chosen),
        freed=freed,
        value_lost=sum(value(r) for r in chosen),
        reload=reload,
    )


@dataclass(frozen=True, slots=True)
class Serve:
    """Use (or join the pending load of) the model on ``daemon``."""

    daemon: str


@dataclass(frozen=True, slots=True)
class Load:
    """Load the model on ``daemon``; ``plan`` None: wait there until room frees."""

    daemon: str
    plan: RoomPlan | None
    reload: bool = False


@dataclass(frozen=True, slots=True)
class Reject:
    """Nowhere now or ever. ``status`` 400: cannot fit any daemon; 503: try later."""

    status: int
    reason: str
    inputs: Mapping[str, object] = field(default_factory=dict)
    #: Seconds a client should wait before trying again (503 only); None: the default.
    retry_after: float | None = None


Route = Serve | Load | Reject


def route(
    views: Sequence[DaemonView],
    key: str,
    need: Need,
    size_of: Callable[[DaemonView], int],
    oracle: ReuseOracle,
) -> Route | None:
    """Where a request for ``key`` needing ``need`` goes; None when no daemon that
    is up has the model. ``size_of(view)``: bytes the load would take there."""
    holders = [v for v in views if key in v.models or key in v.runners]
    candidates = [v for v in holders if v.up]
    if not candidates:
        return None
    warm = [
        v
        for v in candidates
        if (key in v.runners and need.fits(v.runners[key].ctx, v.runners[key].auto))
        or (key in v.pending and key not in v.failing)
    ]
    if warm:

        def soonest(v: DaemonView) -> tuple[bool, float, int, str]:
            r = v.runners.get(key)
            return (r is None, 0.0 if r is None else wait_s(r), v.outstanding, v.name)

        return Serve(min(warm, key=soonest).name)
    options: list[tuple[tuple[float, ...], Load]] = []
    waits: list[DaemonView] = []
    sizes: dict[str, int] = {}
    for v in candidates:
        if key in v.failing:
            continue  # its loads failed lately: others first (a cooldown)
        size = sizes[v.name] = size_of(v)
        plan = plan_room(v, key, size, lambda r, v=v: eviction_value(oracle, v.name, r))  # type: ignore[misc]
        if plan is NEVER:
            continue
        if plan is None:
            waits.append(v)
            continue
        assert isinstance(plan, RoomPlan)
        # A reload destroys the model's own runner, which other traffic (often the
        # other API: /v1 needs the default context, native requests more) still uses:
        # it counts as an eviction of it, so a load elsewhere wins unless that costs more.
        own = v.runners.get(key) if plan.reload else None
        lost = plan.value_lost + (eviction_value(oracle, v.name, own) if own else 0.0)
        evicts = bool(plan.victims) or own is not None
        cost = (float(evicts), lost, float(v.outstanding))
        options.append(((*cost, float(plan.reload)), Load(v.name, plan, plan.reload)))
    if options:
        return min(options, key=lambda o: (o[0], o[1].daemon))[1]
    if waits:
        best = min(waits, key=lambda v: (v.outstanding, v.name))
        return Load(best.name, None, key in best.runners)
    return _nowhere(holders, candidates, key, need, size_of, sizes)


def _nowhere(  # noqa: PLR0917
    holders: Sequence[DaemonView],
    candidates: Sequence[DaemonView],
    key: str,
    need: Need,
    size_of: Callable[[DaemonView], int],
    sizes: dict[str, int],
) -> Reject:
    """No daemon can take the request now: 400 when it can never fit (on every daemon
    that has the model, answering or not, over the whole budget or at the learned
    ceiling), else 503 with Retry-After."""
    for v in holders:
        if v.name not in sizes:
            sizes[v.name] = size_of(v)
    limits = {v.name: _limit(v) for v in holders}
    budgets = {v.name: v.budget for v in holders}
    never = {
        v.name: sizes[v.name]
        for v in holders
        if (lim := limits[v.name]) is not None
        and (sizes[v.name] > lim[0] or (lim[1] and sizes[v.name] >= lim[0]))
    }
    smallest = min(sizes[v.name] for v in candidates)
    if len(never) == len(holders):
        return Reject(
            400,
            _too_big(key, never, limits),
            {"size": smallest, "sizes": never, "budgets": budgets, "num_ctx": need.tokens},
        )
    cooling = [(v.failing[key], v.name) for v in candidates if key in v.failing]
    if cooling:
        cool, name = min(cooling, key=lambda c: (c[0].left_s, c[1]))
        return Reject(
            503,
            f"loading {key} failed on {name} lately ({cool.error}); it is tried there "
            f"again in {cool.left_s:.0f}s",
            {"size": smallest, "budgets": budgets, "cooldown_s": round(cool.left_s, 3)},
            retry_after=max(cool.left_s, 1.0),
        )
    return Reject(
        503,
        f"no daemon can hold {key} now: pinned models or loads in progress fill them",
        {"size": smallest, "budgets": budgets},
    )


def _limit(v: DaemonView) -> tuple[int, bool] | None:
    """The most a runner may take on ``v`` ever, and whether that figure is a learned
    ceiling (sizes from it up failed) rather than the budget (sizes up to it fit)."""
    if v.ceiling is not None and (v.budget is None or v.ceiling <= v.budget):
        return v.ceiling, True
    return None if v.budget is None else (v.budget, False)


def _too_big(
    key: str, never: Mapping[str, int], limits: Mapping[str, tuple[int, bool] | None]
) -> str:
    """Each daemon's size for the request against its own limit, e.g. "m needs about
    15.9 GiB of memory on gpu1 (budget 10.8 GiB), 29.9 GiB on gpu0 (budget 21.6 GiB)"."""
    rows = sorted(never.items(), key=lambda kv: (kv[1], kv[0]))
    learned = any(lim is not None and lim[1] for lim in limits.values())
    if len({size for _, size in rows}) == 1 and not learned:
        largest = max(lim[0] for lim in limits.values() if lim is not None)
        return (
            f"{key} needs about {_gib(rows[0][1])} of memory but the largest daemon budget "
            f"is {_gib(largest)} (capacity minus headroom)"
        )
    parts = []
    for name, size in rows:
        lim = limits[name]
        assert lim is not None
        what = (
            f"a {_gib(lim[0])} load failed there for want of memory"
            if lim[1]
            else (f"budget {_gib(lim[0])}")
        )
        parts.append(f"{_gib(size)} on {name} ({what})")
    return (
        f"{key} needs about {parts[0].replace(' on ', ' of memory on ', 1)}"
        + "".join(f", {p}" for p in parts[1:])
        + ": more than any daemon can hold (a budget is capacity minus headroom)"
    )


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"
