"""Context thrash between /v1 traffic (needs the daemon's default context) and native
requests that need more: with several daemons, a reload of the model's own busy-again
runner counts as evicting it, so the other traffic gets a runner elsewhere."""

from __future__ import annotations

from bridge.policy.numctx import Need
from bridge.policy.placement import DaemonView, Load, RecencyOracle, RunnerView, route

GB = 10**9


def _runner(key: str, ctx: int, *, auto: bool, idle_s: float) -> RunnerView:
    return RunnerView(key, 8 * GB, ctx, auto, False, False, idle_s, 5.0)


def _view(name: str, *runners: RunnerView) -> DaemonView:
    return DaemonView(
        name=name,
        up=True,
        models=frozenset({"m", "o"}),
        runners={r.key: r for r in runners},
        budget=12 * GB,
        max_loaded=3,
    )


def test_v1_loads_beside_a_recently_used_bigger_context_runner_rather_than_reloading_it() -> None:
    # a: m at 16k for native traffic, used a second ago; b: o, idle for an hour, in the way.
    a = _view("a", _runner("m", 16384, auto=False, idle_s=1))
    b = _view("b", _runner("o", 4096, auto=True, idle_s=3600))
    v1 = Need(0, auto=True)
    where = route([a, b], "m", v1, lambda v: 8 * GB, RecencyOracle())
    assert isinstance(where, Load)
    assert (where.daemon, where.reload) == ("b", False)
    assert where.plan is not None
    assert where.plan.victims == ("o",)


def test_a_single_daemon_still_reloads_and_a_stale_runner_is_reloaded_in_place() -> None:
    v1 = Need(0, auto=True)
    alone = route(
        [_view("a", _runner("m", 16384, auto=False, idle_s=1))],
        "m",
        v1,
        lambda v: 8 * GB,
        RecencyOracle(),
    )
    assert isinstance(alone, Load)
    assert (alone.daemon, alone.reload) == ("a", True)
    # The own runner idle for an hour is worth less than a recently used other model.
    a = _view("a", _runner("m", 16384, auto=False, idle_s=3600))
    b = _view("b", _runner("o", 4096, auto=True, idle_s=1))
    where = route([a, b], "m", v1, lambda v: 8 * GB, RecencyOracle())
    assert isinstance(where, Load)
    assert (where.daemon, where.reload) == ("a", True)
