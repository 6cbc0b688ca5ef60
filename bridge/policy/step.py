"""The load driver's decisions, pure: one gate's state in, the operations to carry out out.

The bridge's driver (``bridge.scheduling.driver``) and the replay's simulated bridge
(``replay.bridge_fleet``) both make every load decision here, on their own state, one
load at a time per daemon.

0. ``drive_order(gates)``: the gates where a client waits come first, longest wait
   first, then those where only a prefetch waits, so a load clients wait for is never
   behind a predicted one.

1. ``wanted(gate)``: does the gate need a load? A cold gate with waiters does; a
   ready one does when some waiter needs more context than its runner has, and then
   the runner is drained first (``Drain``: no new slots; the load waits for the
   in-flight requests). A gate drained for waiters that have left serves on
   (``Reopen``).
2. ``plan_load(...)``: what to do for a wanted load. During a failed pair's cooldown,
   nothing (``Cool``: the waiters go elsewhere or get a 503). Without the model's
   description, fail (``Undescribed``). Else the ``Target`` (``numctx.choose_target``,
   passed in as ``target``) and the room for it (``placement.plan_room``, passed in as
   ``room``). When the default-context runner /v1 waiters need can never fit but
   native waiters could use a smaller one, refuse the /v1 waiters only
   (``Refuse(which="openai")``) and plan again for the rest. When nothing can ever
   fit, refuse (``"unfit"``: the waiters the loaded runner cannot serve; ``"all"``:
   every waiter of a cold model). When busy runners hold the room, nothing yet.
   Else ``Execute``: unload the victims, unload the model's own runner first when the
   new size is known to fit (``RoomPlan.proven``; otherwise the daemon replaces it, or
   refuses and keeps it), load.
3. ``learned(...)``: what a finished load teaches, from what the daemon reports
   (``/api/ps``'s ``context_length`` and ``size``): the context to serve at, the context
   to learn the size under, the context a load without ``num_ctx`` got, and the
   daemon's default ``num_ctx`` (a runner loaded without ``num_ctx`` below the model's
   trained context got exactly the default).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from bridge.policy.numctx import Need, Target
from bridge.policy.placement import NEVER, Cooldown, RoomPlan
from bridge.policy.sizing import ModelInfo

__all__ = [
    "Cool",
    "Drain",
    "Execute",
    "GateState",
    "Learned",
    "Op",
    "Refuse",
    "Reopen",
    "Undescribed",
    "Wanted",
    "drive_order",
    "learned",
    "plan_load",
    "wanted",
]


@dataclass(frozen=True, slots=True)
class GateState:
    """One (daemon, model) gate as the driver sees it."""

    key: str
    #: A runner serves through the gate (at ``ctx`` / ``auto``).
    ready: bool
    #: Requests hold slots on the runner.
    busy: bool
    #: Draining for a reload: no new slots are handed out.
    hold: bool
    ctx: int
    auto: bool
    #: Whether anyone waits, and the needs of those who do (in queue order).
    queued: bool
    needs: tuple[Need, ...] = ()
    #: When the longest-waiting client request was admitted (None: no client waits;
    #: only background work such as a prefetch, or nobody).
    since: float | None = None

    def fits(self, need: Need) -> bool:
        return need.fits(self.ctx, self.auto)


@dataclass(frozen=True, slots=True)
class Drain:
    """Stop handing out slots on ``key``'s runner: its waiters need a bigger one, and
    requests are still in flight on it (the reload waits for them)."""

    key: str


@dataclass(frozen=True, slots=True)
class Reopen:
    """``key``'s runner was drained for waiters who have left: serve on."""

    key: str


@dataclass(frozen=True, slots=True)
class Wanted:
    """``key`` needs a load for ``needs``; ``reload``: its runner is replaced (and
    drained: no new slots until the load is done)."""

    key: str
    needs: tuple[Need, ...]
    reload: bool


@dataclass(frozen=True, slots=True)
class Cool:
    """``key``'s loads failed lately here: no load for ``left_s``; its waiters that the
    runner cannot serve go elsewhere or get a 503."""

    key: str
    reload: bool
    left_s: float
    error: str


@dataclass(frozen=True, slots=True)
class Undescribed:
    """No daemon could describe ``key`` (``/api/show``): its waiters get the error."""

    key: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """``target`` can never fit: 400 for the /v1 waiters (``openai``), for the waiters
    the loaded runner cannot serve (``unfit``, it serves the rest), or for every waiter
    (``all``, the model stays cold)."""

    key: str
    target: Target
    which: Literal["openai", "unfit", "all"]


@dataclass(frozen=True, slots=True)
class Execute:
    """Unload ``plan.victims``, then (``unload_own``) the model's own runner, then load
    ``target`` for ``needs``."""

    key: str
    target: Target
    plan: RoomPlan
    needs: tuple[Need, ...]
    reload: bool
    unload_own: bool


Op = Drain | Reopen | Cool | Undescribed | Refuse | Execute


def drive_order(gates: Sequence[GateState]) -> list[GateState]:
    """Step 0: the order the driver visits a daemon's gates in: those where a client
    waits, longest wait first; then those where only background work (a prefetch)
    waits; then the rest (a drained runner to reopen). Ties keep the given order (the
    gates' creation order)."""

    def rank(g: GateState) -> tuple[int, float]:
        if g.since is not None:
            return (0, g.since)
        return (1, 0.0) if g.queued else (2, 0.0)

    return sorted(gates, key=rank)


def wanted(gate: GateState) -> Wanted | Drain | Reopen | None:
    """Step 1 (see the module doc): whether ``gate`` needs a load now."""
    if not gate.ready:
        return Wanted(gate.key, gate.needs, False) if gate.queued else None
    if any(not gate.fits(n) for n in gate.needs):
        return Drain(gate.key) if gate.busy else Wanted(gate.key, gate.needs, True)
    return Reopen(gate.key) if gate.hold else None


def plan_load(
    want: Wanted,
    *,
    cooldown: Cooldown | None,
    info: ModelInfo | None,
    target: Callable[[Sequence[Need]], Target],
    room: Callable[[int], object],
) -> tuple[Op, ...]:
    """Step 2 (see the module doc): the operations for a wanted load, in order; at most
    one ``Execute``, last. ``room(size)`` is ``plan_room`` on a fresh view of the daemon
    (a ``RoomPlan``, ``NEVER``, or None: not now)."""
    key, reload = want.key, want.reload
    if cooldown is not None:
        return (Cool(key, reload, cooldown.left_s, cooldown.error),)
    if info is None:
        return (Undescribed(key),)
    needs = want.needs
    chosen = target(needs)
    plan = room(chosen.size)
    ops: list[Op] = []
    if plan is NEVER and chosen.auto and any(not n.auto for n in needs):
        ops.append(Refuse(key, chosen, "openai"))
        needs = tuple(n for n in needs if not n.auto)
        chosen = target(needs)
        plan = room(chosen.size)
    if plan is NEVER:
        ops.append(Refuse(key, chosen, "unfit" if reload else "all"))
    elif isinstance(plan, RoomPlan):
        ops.append(Execute(key, chosen, plan, needs, reload, reload and plan.proven))
    return tuple(ops)


@dataclass(frozen=True, slots=True)
class Learned:
    """What one finished load teaches (see ``learned``)."""

    #: The context requests are fitted against from now on.
    serve_ctx: int
    #: The context the load's real size is learned under (0: none known).
    size_ctx: int
    #: The context a load without ``num_ctx`` got (None: it sent one, or unknown).
    auto_ctx: int | None
    #: The daemon's default ``num_ctx`` as this load shows it (None: it does not).
    default_ctx: int | None
    #: A configured default that this load contradicts (None: no contradiction).
    configured_differs: int | None


def learned(
    target: Target, *, real_ctx: int, trained_ctx: int, configured_default: int | None
) -> Learned:
    """Step 3 (see the module doc). ``real_ctx``: the runner's context as the daemon
    reports it (0: not reported); ``trained_ctx``: the model's trained context."""
    # Without the daemon's word only an explicit num_ctx says what was loaded.
    ctx = real_ctx or (target.ctx if target.num_ctx is not None else 0)
    auto_ctx = real_ctx if target.num_ctx is None and real_ctx else None
    default_ctx: int | None = None
    differs: int | None = None
    # Below the model's trained context the runner got the default itself (at it, the
    # default is only known to be at least that).
    if auto_ctx is not None and trained_ctx and auto_ctx < trained_ctx:
        if configured_default:
            differs = auto_ctx if auto_ctx != configured_default else None
        else:
            default_ctx = auto_ctx
    serve = ctx or target.ctx
    return Learned(
        serve_ctx=serve if target.auto else target.ctx,
        size_ctx=ctx,
        auto_ctx=auto_ctx,
        default_ctx=default_ctx,
        configured_differs=differs,
    )
