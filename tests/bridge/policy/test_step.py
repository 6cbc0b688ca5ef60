"""``bridge.policy.step``: the driver's decisions on snapshots (no sockets, no clock)."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.policy import step
from bridge.policy.numctx import Need, Target
from bridge.policy.placement import NEVER, Cooldown, RoomPlan
from bridge.policy.sizing import ModelInfo

INFO = ModelInfo("m:latest", 4 * 1024**3, 32768, 131072)
NATIVE = Need(8192)
OPENAI = Need(3000, auto=True)


def _gate(**kw: object) -> step.GateState:
    base: dict[str, object] = {
        "key": "m:latest",
        "ready": False,
        "busy": False,
        "hold": False,
        "ctx": 0,
        "auto": False,
        "queued": False,
    }
    base.update(kw)
    return step.GateState(**base)  # type: ignore[arg-type]


def test_a_cold_gate_wants_a_load_only_with_waiters() -> None:
    assert step.wanted(_gate()) is None
    want = step.wanted(_gate(queued=True, needs=(NATIVE,)))
    assert want == step.Wanted("m:latest", (NATIVE,), reload=False)
    # A waiter without a need (nothing to fit) still wants the model loaded.
    assert step.wanted(_gate(queued=True)) == step.Wanted("m:latest", (), reload=False)


def test_a_ready_gate_is_drained_then_reloaded_for_a_waiter_it_cannot_serve() -> None:
    small = {"ready": True, "ctx": 4096, "queued": True, "needs": (Need(2048), NATIVE)}
    assert step.wanted(_gate(busy=True, **small)) == step.Drain("m:latest")
    want = step.wanted(_gate(**small))
    assert want == step.Wanted("m:latest", (Need(2048), NATIVE), reload=True)
    # Every waiter fits: nothing to do, unless it was drained for waiters now gone.
    assert step.wanted(_gate(ready=True, ctx=8192, queued=True, needs=(NATIVE,))) is None
    assert step.wanted(_gate(ready=True, ctx=8192, hold=True)) == step.Reopen("m:latest")


def _target(needs: Sequence[Need]) -> Target:
    # The default-context runner (auto) when a /v1 waiter is among them, else a bucket.
    if any(n.auto for n in needs):
        return Target(32768, True, 9 * 1024**3)
    return Target(8192, False, 5 * 1024**3, num_ctx=8192)


def _plan(**kw: object) -> tuple[step.Op, ...]:
    want = kw.pop("want", step.Wanted("m:latest", (NATIVE,), reload=False))
    room = kw.pop("room", lambda size: RoomPlan())
    return step.plan_load(
        want,  # type: ignore[arg-type]
        cooldown=kw.pop("cooldown", None),  # type: ignore[arg-type]
        info=kw.pop("info", INFO),  # type: ignore[arg-type]
        target=_target,
        room=room,  # type: ignore[arg-type]
    )


def test_a_cooling_pair_or_an_undescribed_model_is_not_loaded() -> None:
    ops = _plan(cooldown=Cooldown(12.0, "boom"))
    assert ops == (step.Cool("m:latest", False, 12.0, "boom"),)
    assert _plan(info=None) == (step.Undescribed("m:latest"),)


def test_the_plan_executes_with_the_victims_and_unloads_its_own_runner_only_when_proven() -> None:
    plan = RoomPlan(victims=("x:latest",), freed=1, reload=True)
    reload = step.Wanted("m:latest", (NATIVE,), reload=True)
    (op,) = _plan(want=reload, room=lambda size: plan)
    assert isinstance(op, step.Execute)
    assert (op.plan, op.target.ctx, op.reload, op.unload_own) == (plan, 8192, True, True)
    unproven = RoomPlan(reload=True, proven=False)
    (op,) = _plan(want=reload, room=lambda size: unproven)
    assert isinstance(op, step.Execute)
    assert not op.unload_own  # the daemon replaces the runner, or keeps it
    assert _plan(room=lambda size: None) == ()  # busy runners hold the room: wait


def test_when_the_default_runner_never_fits_only_the_openai_waiters_are_refused() -> None:
    want = step.Wanted("m:latest", (OPENAI, NATIVE), reload=False)
    # 9 GiB (the default runner) never fits; 5 GiB (the native bucket) does.
    refuse, execute = _plan(
        want=want, room=lambda size: NEVER if size > 8 * 1024**3 else RoomPlan()
    )
    assert refuse == step.Refuse("m:latest", _target([OPENAI]), "openai")
    assert isinstance(execute, step.Execute)
    assert execute.needs == (NATIVE,)
    assert execute.target.ctx == 8192


def test_what_never_fits_is_refused_all_for_a_cold_model_unfit_for_a_loaded_one() -> None:
    never = {"room": lambda size: NEVER}
    (op,) = _plan(**never)
    assert op == step.Refuse("m:latest", _target([NATIVE]), "all")
    (op,) = _plan(want=step.Wanted("m:latest", (NATIVE,), reload=True), **never)
    assert isinstance(op, step.Refuse)
    assert op.which == "unfit"


def test_a_load_without_num_ctx_teaches_the_daemon_default_below_the_trained_context() -> None:
    auto = Target(4096, True, 1, num_ctx=None)
    got = step.learned(auto, real_ctx=8192, trained_ctx=32768, configured_default=None)
    assert (got.serve_ctx, got.size_ctx, got.auto_ctx, got.default_ctx) == (8192, 8192, 8192, 8192)
    # At the trained context, the default is only known to be at least that.
    got = step.learned(auto, real_ctx=32768, trained_ctx=32768, configured_default=None)
    assert got.default_ctx is None
    assert got.auto_ctx == 32768
    # A configured default the load contradicts is reported, not overwritten.
    got = step.learned(auto, real_ctx=8192, trained_ctx=32768, configured_default=4096)
    assert (got.default_ctx, got.configured_differs) == (None, 8192)


def test_a_bucket_load_serves_at_its_own_context_whatever_the_daemon_reports() -> None:
    bucket = Target(8192, False, 1, num_ctx=8192)
    got = step.learned(bucket, real_ctx=8192, trained_ctx=32768, configured_default=None)
    assert (got.serve_ctx, got.auto_ctx, got.default_ctx) == (8192, None, None)
    # Not reported (an older daemon): only the num_ctx sent says what was loaded.
    got = step.learned(bucket, real_ctx=0, trained_ctx=32768, configured_default=None)
    assert (got.serve_ctx, got.size_ctx) == (8192, 8192)
    auto = Target(4096, True, 1, num_ctx=None)
    got = step.learned(auto, real_ctx=0, trained_ctx=32768, configured_default=None)
    assert (got.serve_ctx, got.size_ctx, got.auto_ctx) == (4096, 0, None)


def test_the_driver_serves_the_longest_waiting_client_first_and_prefetches_last() -> None:
    prefetch = _gate(key="p", queued=True, needs=(Need(0),))  # background work only
    late = _gate(key="late", queued=True, since=20.0)
    early = _gate(key="early", queued=True, since=10.0)
    idle = _gate(key="idle", ready=True, hold=True)  # nobody waits: a reopen, last
    order = step.drive_order([idle, prefetch, late, early])
    assert [g.key for g in order] == ["early", "late", "p", "idle"]
    # Equal waits keep the gates' own (creation) order.
    twin = _gate(key="twin", queued=True, since=10.0)
    assert [g.key for g in step.drive_order([twin, early])] == ["twin", "early"]
